"""What every segmentation network shares: its contract, its geometry, and how that is measured.

Geometry is computed, not declared. Each model describes, in :meth:`SegmentationModel.footprint`,
which input rows feed a run of output rows, by walking its own layers backwards with
:func:`layer_footprint` (the receptive-field recurrence ``r += (k - 1) * jump`` written as
interval arithmetic, so that it is exact for every output position, not only on average) and
taking the union where branches meet. Outputs of a network that down-samples by ``D`` do not all
see the same input window: pooling and up-sampling floor positions, so the window of output row
``y`` depends on ``y mod D``. :func:`receptive_field` is the widest window over those ``D``
phases, :func:`receptive_radius` the farthest any output reaches from its own position (the halo
a tile needs), :func:`downsampling` the product of the strides of the encoder.
:func:`empirical_receptive_field` measures the same thing with gradients, as a check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from cellflow.nn.models._registry import ModelConfig

__all__ = [
    "SegmentationModel",
    "conv_bn_relu",
    "downsampling",
    "empirical_footprints",
    "empirical_receptive_field",
    "layer_footprint",
    "receptive_field",
    "receptive_radius",
]

Interval = tuple[int, int]
#: Layers that map each pixel to itself (in space): they leave a footprint unchanged.
_POINTWISE = (nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout2d)


def checked_int(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a TypeError/ValueError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner} {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, got {value!r}")
    return value


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """A "same"-padded convolution (odd kernel), batch norm and ReLU; no conv bias (BN has one)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _axis(value: Any, axis: int) -> int:
    """One axis of a layer's ``int | tuple`` size parameter (torch types them loosely)."""
    return int(value if isinstance(value, int) else value[axis])


def layer_footprint(layer: nn.Module, interval: Interval, axis: int = 0) -> Interval:
    """Input positions (along ``axis``: 0 rows, 1 columns) that output positions ``interval`` read.

    Parameters
    ----------
    layer : torch.nn.Module
        A convolution, transposed convolution, max pool, nearest up-sampling, zero padding,
        point-wise layer (batch norm, ReLU, ...) or an ``nn.Sequential`` of those.
    interval : (int, int)
        First and last output position (inclusive). Positions may be negative or past the end:
        the answer is for an unbounded image, which is what a receptive field means.
    axis : {0, 1}
        Height (0) or width (1).

    Returns
    -------
    (int, int)
        First and last input position (inclusive) that any of those outputs depends on.

    Raises
    ------
    TypeError
        For a layer whose geometry is not known here (a model must walk it itself).

    Examples
    --------
    >>> layer_footprint(nn.Conv2d(1, 1, 3, padding=1), (5, 5))
    (4, 6)
    >>> layer_footprint(nn.MaxPool2d(2), (3, 3))
    (6, 7)
    >>> layer_footprint(nn.Upsample(scale_factor=2), (6, 7))
    (3, 3)
    """
    lo, hi = interval
    if isinstance(layer, nn.Sequential):
        for inner in reversed(layer):
            lo, hi = layer_footprint(inner, (lo, hi), axis)
        return lo, hi
    if isinstance(layer, _POINTWISE):
        return lo, hi
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        padding = layer.padding
        if isinstance(padding, str):
            raise TypeError(f"layer_footprint needs integer padding, got {padding!r} in {layer!r}")
        k, s = _axis(layer.kernel_size, axis), _axis(layer.stride, axis)
        d, p = _axis(layer.dilation, axis), _axis(padding, axis)
        return lo * s - p, hi * s - p + d * (k - 1)
    if isinstance(layer, nn.ConvTranspose2d):
        # out = in * s - p + d * t for taps t in [0, k): invert for the inputs that reach [lo, hi].
        k, s = _axis(layer.kernel_size, axis), _axis(layer.stride, axis)
        d, p = _axis(layer.dilation, axis), _axis(layer.padding, axis)
        return -((d * (k - 1) - lo - p) // s), (hi + p) // s
    if isinstance(layer, nn.Upsample):
        factor = layer.scale_factor
        factor = factor if isinstance(factor, (int, float)) else factor[axis]  # type: ignore[index]
        if layer.mode != "nearest" or factor != int(factor):
            raise TypeError(f"layer_footprint knows nearest up-sampling by an integer factor only, got {layer!r}")
        return lo // int(factor), hi // int(factor)
    if isinstance(layer, nn.ZeroPad2d):
        before = layer.padding[2] if axis == 0 else layer.padding[0]
        return lo - before, hi - before
    raise TypeError(f"layer_footprint does not know the geometry of {type(layer).__name__}")


def union(*intervals: Interval) -> Interval:
    """The smallest interval holding all of ``intervals`` (branches that meet read both)."""
    return min(i[0] for i in intervals), max(i[1] for i in intervals)


def stride_product(modules: Iterable[nn.Module]) -> int:
    """Product of the strides (along rows) of the strided convolutions and pools in ``modules``."""
    factor = 1
    for module in modules:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
            factor *= _axis(module.stride, 0)
    return factor


class SegmentationModel(nn.Module):
    """Base of cellflow's networks: (N, C, H, W) images in, (N, classes, H, W) logits out.

    Subclasses set ``name`` (their registry key), ``in_channels``, ``classes`` and
    ``downsampling``, keep their constructor options in ``_options`` and implement
    :meth:`footprint` by walking their own layers.
    """

    name: ClassVar[str]
    in_channels: int
    classes: int
    _options: dict[str, Any]

    @property
    def downsampling(self) -> int:
        """Total down-sampling factor ``D``: input height and width must be multiples of it."""
        raise NotImplementedError

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Input positions that output positions ``interval`` depend on (see :func:`layer_footprint`)."""
        raise NotImplementedError

    @property
    def receptive_field(self) -> int:
        """Widest input window (pixels) of one output pixel, over all positions; see :func:`receptive_field`."""
        return max(hi - lo + 1 for _, (lo, hi) in self._phases())

    @property
    def receptive_radius(self) -> int:
        """Farthest input pixel (pixels) that an output pixel depends on, measured from itself."""
        return max(max(y - lo, hi - y) for y, (lo, hi) in self._phases())

    def _phases(self) -> list[tuple[int, Interval]]:
        # The footprint of output y is that of y mod D shifted by a multiple of D.
        return [(y, self.footprint((y, y), axis)) for axis in (0, 1) for y in range(self.downsampling)]

    @property
    def config(self) -> ModelConfig:
        """The :class:`~cellflow.nn.models.ModelConfig` that :func:`build_model` rebuilds this model from."""
        from cellflow.nn.models._registry import ModelConfig  # the registry imports the models

        return ModelConfig(self.name, self.in_channels, self.classes, self._options)

    def check_input(self, image: torch.Tensor) -> None:
        """Raise a ValueError unless ``image`` is (N, in_channels, H, W) with H, W multiples of ``D``."""
        shape = tuple(image.shape)
        if image.ndim != 4 or shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), got {shape!r}"
            )
        factor = self.downsampling
        height, width = shape[2:]
        if height % factor or width % factor:
            fixed = (-(-height // factor) * factor, -(-width // factor) * factor)
            raise ValueError(
                f"{type(self).__name__} input shape {shape!r}: height and width must be multiples of the "
                f"down-sampling factor {factor}; pad {height} x {width} to {fixed[0]} x {fixed[1]}"
            )

    def predict_proba(self, image: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities over classes, (N, classes, H, W): ``softmax(self(image), dim=1)``."""
        return torch.softmax(self(image), dim=1)


def receptive_field(model: SegmentationModel) -> int:
    """The receptive field of ``model`` in pixels: the full extent of the input an output pixel reads.

    Derived from the model's layers by interval arithmetic (:func:`layer_footprint`). For a network
    that down-samples by ``D`` the window's size and placement depend on the output position
    modulo ``D``; this is the widest of those windows, along either axis.

    Examples
    --------
    >>> from cellflow.nn.models import build_model
    >>> receptive_field(build_model("deepcell", in_channels=1, classes=3, width=2, dense_width=2))
    61
    """
    return model.receptive_field


def receptive_radius(model: SegmentationModel) -> int:
    """How far (pixels) an output pixel's input reaches from its own position: the halo tiles need.

    Equals ``(receptive_field - 1) // 2`` for a window centred on its pixel (deepcell: 30 for
    61). Pooling and up-sampling floor positions, which moves the window of some output phases
    off centre, so for unet (field 100, radius 51) and resunet (field 72, radius 38) a halo of
    ``receptive_field // 2`` would be too small.
    """
    return model.receptive_radius


def downsampling(model: SegmentationModel) -> int:
    """Total down-sampling factor ``D`` of ``model``; input height and width must be multiples of it.

    Examples
    --------
    >>> from cellflow.nn.models import build_model
    >>> downsampling(build_model("unet", in_channels=1, classes=2, width=2, levels=4))
    8
    """
    return model.downsampling


def empirical_footprints(
    model: SegmentationModel,
    in_channels: int | None = None,
    *,
    size: int | None = None,
    samples: int = 4,
    seed: int = 0,
) -> list[tuple[Interval, Interval]]:
    """Measure with gradients which input each output phase reads: the check of :meth:`~SegmentationModel.footprint`.

    The model is put in eval mode for the measurement (batch norm then is a fixed per-channel
    affine map, so samples do not interact) and restored after. ``samples`` random images (not
    zeros, so that ReLUs and max pools pass gradient along many paths) are each repeated ``D``
    times in a batch; from copy ``k`` the class logits of the output pixel ``(c + k, c + k)``
    near the centre are summed and back-propagated, and the bounding box of ``|grad| > 0`` over
    the samples is the input window of phase ``k``. Max pooling sends gradient to one pixel per
    window, so one image can leave the rim of a thin network's window dark; the union over a few
    images closes it. With "same" zero padding the measurement is exact once no window touches
    the border, which is checked.

    Parameters
    ----------
    model : SegmentationModel
        The network; its parameters are not changed and get no ``.grad``.
    in_channels : int, optional
        Input channels; by default ``model.in_channels``.
    size : int, optional
        Side of the square input, a multiple of ``D``; by default the smallest multiple of
        ``D`` that is at least ``2 * receptive_field + 2 * D``.
    samples : int
        Random images whose supports are united, >= 1.
    seed : int
        Seed of the random images (a private generator: the global RNG is untouched).

    Returns
    -------
    list of ((int, int), (int, int))
        For each phase ``k`` in ``range(D)``: the first and last input row, and column, read by
        output pixel ``(k, k)`` (positions relative to a grid origin at a multiple of ``D``,
        as :meth:`~SegmentationModel.footprint` reports them).

    Raises
    ------
    ValueError
        If ``size`` is not a multiple of ``D``, or too small for the windows to fit inside.
    """
    channels = model.in_channels if in_channels is None else in_channels
    checked_int("empirical_footprints", "samples", samples, 1)
    factor = model.downsampling
    if size is None:
        size = factor * math.ceil((2 * model.receptive_field + 2 * factor) / factor)
    if size % factor:
        raise ValueError(f"empirical_footprints size must be a multiple of {factor}, got {size!r}")
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((samples, channels, size, size), generator=generator).repeat_interleave(factor, dim=0)
    image.requires_grad_(True)
    centre = factor * (size // (2 * factor))
    was_training = model.training
    model.eval()
    try:
        logits = model(image)
        picked = [logits[n, :, centre + n % factor, centre + n % factor].sum() for n in range(len(image))]
        (grad,) = torch.autograd.grad(torch.stack(picked).sum(), image)
    finally:
        model.train(was_training)
    support = (grad.abs().sum(dim=1) > 0).reshape(samples, factor, size, size).any(dim=0)
    footprints: list[tuple[Interval, Interval]] = []
    for k in range(factor):
        rows = torch.nonzero(support[k].any(dim=1)).flatten().tolist()
        cols = torch.nonzero(support[k].any(dim=0)).flatten().tolist()
        if not rows:
            raise ValueError(f"empirical_footprints found no gradient for output pixel {centre + k}")
        if min(rows[0], cols[0]) == 0 or max(rows[-1], cols[-1]) == size - 1:
            raise ValueError(f"empirical_footprints size {size} is too small: a window reaches the border")
        footprints.append(((rows[0] - centre, rows[-1] - centre), (cols[0] - centre, cols[-1] - centre)))
    return footprints


def empirical_receptive_field(
    model: SegmentationModel,
    in_channels: int | None = None,
    *,
    size: int | None = None,
    samples: int = 4,
    seed: int = 0,
) -> tuple[int, int]:
    """Measure the receptive field with gradients: (height, width) of the input that moves one output.

    The widest window over the ``D`` output phases measured by :func:`empirical_footprints`
    (whose parameters these are), comparable with :func:`receptive_field`.

    Returns
    -------
    (int, int)
        Measured receptive field height and width in pixels.

    Examples
    --------
    >>> from cellflow.nn.models import build_model
    >>> empirical_receptive_field(build_model("deepcell", in_channels=1, classes=2, width=4, dense_width=4))
    (61, 61)
    """
    footprints = empirical_footprints(model, in_channels, size=size, samples=samples, seed=seed)
    return (
        max(rows[1] - rows[0] + 1 for rows, _ in footprints),
        max(cols[1] - cols[0] + 1 for _, cols in footprints),
    )
