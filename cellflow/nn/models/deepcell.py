"""DeepCell of Van Valen et al. 2016 (PLoS Comput Biol 12:e1005177), run fully convolutionally.

The network is a patch classifier: a 61 x 61 patch goes through the layers of their 61x61 net
(convolutions 3x3, 4x4, max pool 2x2, 3x3, 3x3, pool, 3x3, 3x3, pool, a 4x4 convolution to
``dense_width`` maps, a 1x1 "dense" layer and a 1x1 layer to the classes), each convolution but
the last followed by batch norm and ReLU, and gives the class logits of the patch's centre pixel.
Valid convolutions shrink 61 to exactly 1, which is why the field is 61.

Classifying every pixel's patch separately repeats almost all the work. With d-regularly sparse
kernels (Li et al. 2014, used by Van Valen et al.) the same weights give every pixel's logits in
one pass: each pooling gets stride 1 instead of 2, and every layer after it is dilated by the
product of the strides removed before it (1, 2, 4, 8). The input is zero padded by 30 on each
side so that output pixel ``(y, x)`` is the classification of the 61 x 61 patch centred on
``(y, x)`` of the zero-padded image, for every pixel, with a down-sampling factor of 1 ("same"
size out, any H and W). :meth:`DeepCell.classify_patches` runs the same layers as the patch
classifier, the equivalence the tests check; it holds in eval mode (in training mode batch
statistics differ between a batch of patches and a whole image).

:class:`DeepCellEnsemble` averages the softmax probabilities of several networks (the paper
trains 5); its ``forward`` returns the log of that average, which are logits whose softmax is
the average, so ``predict_proba`` and everything downstream treat it like any other model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from cellflow.nn.models._common import Interval, SegmentationModel, checked_int, layer_footprint, union

__all__ = ["PATCH_SIZE", "DeepCell", "DeepCellEnsemble", "deepcell_ensemble"]

#: Receptive field (patch side) of the Van Valen et al. 61x61 network.
PATCH_SIZE = 61
#: That network's layers: convolution kernel sizes, and "pool" for 2x2 max pooling (stride 2 in
#: the patch classifier). The last convolution outputs ``dense_width`` maps.
_PLAN: tuple[int | str, ...] = (3, 4, "pool", 3, 3, "pool", 3, 3, "pool", 4)


def _dense_layers(in_channels: int, width: int, dense_width: int) -> list[nn.Module]:
    """The plan as dense (stride-1, dilated) layers, without the input padding."""
    layers: list[nn.Module] = []
    dilation, channels = 1, in_channels
    convs = sum(isinstance(step, int) for step in _PLAN)
    for step in _PLAN:
        if step == "pool":
            layers.append(nn.MaxPool2d(2, stride=1, dilation=dilation))
            dilation *= 2  # the stride removed here reappears as dilation in every later layer
            continue
        assert isinstance(step, int)
        convs -= 1
        out = dense_width if convs == 0 else width
        layers += [
            nn.Conv2d(channels, out, step, dilation=dilation, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return layers


class DeepCell(SegmentationModel):
    """DeepCell 61x61 patch classifier run densely: (N, in_channels, H, W) -> logits (N, classes, H, W).

    Parameters
    ----------
    in_channels : int
        Input channels (e.g. 2 for phase + nuclear).
    classes : int
        Output classes, >= 2 (paper: background, interior, edge).
    width : int
        Feature maps of the convolutional layers (paper: 64).
    dense_width : int
        Maps of the 4x4 convolution and the 1x1 dense layer (paper: 200).

    Examples
    --------
    >>> model = DeepCell(in_channels=2, classes=3, width=4, dense_width=8).eval()
    >>> model(torch.zeros(1, 2, 37, 50)).shape
    torch.Size([1, 3, 37, 50])
    >>> model.downsampling, model.receptive_field, model.receptive_radius
    (1, 61, 30)
    """

    name = "deepcell"

    def __init__(self, *, in_channels: int, classes: int, width: int = 64, dense_width: int = 200) -> None:
        super().__init__()
        self.in_channels = checked_int("DeepCell", "in_channels", in_channels, 1)
        self.classes = checked_int("DeepCell", "classes", classes, 2)
        checked_int("DeepCell", "width", width, 1)
        checked_int("DeepCell", "dense_width", dense_width, 1)
        self._options = {"width": width, "dense_width": dense_width}
        layers = _dense_layers(in_channels, width, dense_width)
        first, last = layer_footprint(nn.Sequential(*layers), (0, 0))  # valid convolutions: (0, 60)
        pad = (last - first) // 2
        self.features = nn.Sequential(nn.ZeroPad2d(pad), *layers)
        self.head = nn.Sequential(
            nn.Conv2d(dense_width, dense_width, 1, bias=False),
            nn.BatchNorm2d(dense_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(dense_width, classes, 1),
        )
        # The architecture fixes the field; this checks that the layers above build exactly it.
        if self.receptive_field != PATCH_SIZE or self.receptive_radius != PATCH_SIZE // 2:
            raise AssertionError(f"DeepCell layers give a field of {self.receptive_field}, not {PATCH_SIZE}")

    @property
    def downsampling(self) -> int:
        """1: dense outputs for any H and W."""
        return 1

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes, H, W): pixel (y, x) classified from the 61 x 61 patch centred on it."""
        self.check_input(image)
        return self.head(self.features(image))

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Input positions that output positions ``interval`` depend on."""
        return layer_footprint(self.features, layer_footprint(self.head, interval, axis), axis)

    def classify_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of the centre pixels of ``patches`` (N, in_channels, 61, 61).

        The patch classifier of the paper, with the weights of this model: the same layers
        without dilation and with the poolings strided by 2, and no padding.
        """
        expected = (self.in_channels, PATCH_SIZE, PATCH_SIZE)
        if patches.ndim != 4 or tuple(patches.shape[1:]) != expected:
            raise ValueError(f"DeepCell.classify_patches expects patches of shape (N, *{expected}), "
                             f"got {tuple(patches.shape)!r}")
        x = patches
        for layer in [*self.features, *self.head]:
            if isinstance(layer, nn.ZeroPad2d):
                continue
            if isinstance(layer, nn.Conv2d):
                x = F.conv2d(x, layer.weight, layer.bias)
            elif isinstance(layer, nn.MaxPool2d):
                x = F.max_pool2d(x, layer.kernel_size, stride=layer.kernel_size)
            else:
                x = layer(x)
        return x.flatten(1)


class DeepCellEnsemble(SegmentationModel):
    """Average of the softmax probabilities of several networks (Van Valen et al.: 5 DeepCells).

    ``forward`` returns ``log(mean_k softmax(member_k(image)))``, (N, classes, H, W): logits
    whose softmax is the averaged probabilities, so :meth:`predict_proba` returns that average.

    Parameters
    ----------
    models : sequence of SegmentationModel
        The members, at least one, with equal ``in_channels`` and ``classes``. The field is
        the union of theirs, the down-sampling factor the least common multiple.

    Examples
    --------
    >>> members = [DeepCell(in_channels=1, classes=2, width=2, dense_width=2) for _ in range(3)]
    >>> ensemble = DeepCellEnsemble(members).eval()
    >>> ensemble.predict_proba(torch.zeros(1, 1, 8, 8)).sum(dim=1).allclose(torch.ones(1, 8, 8))
    True
    """

    name = "deepcell_ensemble"

    def __init__(self, models: Sequence[SegmentationModel]) -> None:
        super().__init__()
        members = list(models)
        if not members or not all(isinstance(m, SegmentationModel) for m in members):
            raise ValueError(f"DeepCellEnsemble models must be one or more SegmentationModel, got {models!r}")
        kinds = {(m.in_channels, m.classes) for m in members}
        if len(kinds) != 1:
            raise ValueError(f"DeepCellEnsemble members must agree on (in_channels, classes), got {sorted(kinds)!r}")
        self.members = nn.ModuleList(members)
        self.in_channels, self.classes = kinds.pop()

    def _members(self) -> list[SegmentationModel]:
        return [cast(SegmentationModel, m) for m in self.members]

    @property
    def _options(self) -> dict[str, Any]:  # type: ignore[override]
        configs = {(m.config.name, tuple(m.config.options.items())) for m in self._members()}
        if len(configs) != 1 or next(iter(configs))[0] != DeepCell.name:
            raise ValueError("DeepCellEnsemble has a ModelConfig only when its members are DeepCells "
                             f"with equal options, got {sorted(configs)!r}")
        return {"members": len(self.members), **dict(configs.pop()[1])}

    @property
    def downsampling(self) -> int:
        """Least common multiple of the members' factors."""
        return math.lcm(*(m.downsampling for m in self._members()))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``log`` of the members' averaged softmax probabilities, (N, classes, H, W)."""
        self.check_input(image)
        log_probabilities = torch.stack([F.log_softmax(m(image), dim=1) for m in self._members()])
        return torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.members))

    def footprint(self, interval: Interval, axis: int = 0) -> Interval:
        """Union of the members' footprints."""
        return union(*(m.footprint(interval, axis) for m in self._members()))


def deepcell_ensemble(
    *, in_channels: int, classes: int, members: int = 5, width: int = 64, dense_width: int = 200
) -> DeepCellEnsemble:
    """An ensemble of ``members`` independently initialised :class:`DeepCell` networks.

    Parameters
    ----------
    in_channels, classes, width, dense_width
        As for :class:`DeepCell`.
    members : int
        Number of networks, >= 1 (paper: 5).

    Returns
    -------
    DeepCellEnsemble
    """
    count = checked_int("deepcell_ensemble", "members", members, 1)
    return DeepCellEnsemble([
        DeepCell(in_channels=in_channels, classes=classes, width=width, dense_width=dense_width) for _ in range(count)
    ])
