"""Data augmentation for training: one random transform applied to an image and its targets.

Geometric transforms move the image ``(C, H, W)`` and every target (a label image,
a class map, a weight map: anything whose last two axes are ``(H, W)``) together,
pixel for pixel. Intensity transforms touch the image only. All randomness comes
from the :class:`numpy.random.Generator` passed in, so a seed reproduces a sample.

In the order :func:`augment` applies them:

1. **Mirror-extended random crop** (Sadanandan et al. 2017), :func:`random_crop`:
   the field is extended by reflection (NumPy's ``mode="reflect"``: the edge pixel
   is not repeated, ``d c b | a b c d | c b a``), and a ``crop_size`` window is taken
   at a uniform random offset such that it reaches at most ``crop_overhang`` pixels
   beyond the field on each side. Crops near the edge stay full-size, and a field
   smaller than the crop still gives a full crop. The extension is never built:
   indices are reflected (:func:`mirror_crop`). A mirrored copy of an object keeps
   its id, so an id may then cover two blobs (the targets of
   :mod:`cellflow.nn.targets` allow that, and do not put a boundary at the field's
   edge, so targets computed before the crop stay right after it).
2. **Flips and 90-degree rotations**: each axis flipped with probability 1/2, then
   rotated by ``k * 90`` degrees, ``k`` uniform in 0..3. A non-square image is only
   rotated by 0 or 180 degrees, so a batch keeps one shape.
3. **Elastic deformation**, :func:`elastic_deform` (:func:`warp` by
   :func:`random_displacement`): a displacement field of Gaussian noise smoothed
   with ``elastic_smoothness_px`` and scaled to a standard deviation of
   ``elastic_displacement_px`` pixels. The image is resampled
   bilinearly; targets by nearest neighbour, so label ids and classes are never
   interpolated (a warped label image holds a subset of the original ids).
   Samples outside the field are reflected, as for the crop.
4. **Illumination**: the image is multiplied by one smooth field ``1 + a F``
   shared by all channels, ``F`` a bicubic interpolation of a random 4 x 4 grid
   scaled to ``max |F| = 1``, ``a`` uniform in ``[0, illumination_strength]``.
5. **Blur**: a Gaussian of ``sigma`` uniform in ``blur_sigma_range`` (pixels), per
   channel, in ``(y, x)``.
6. **Gain and offset** per channel: ``x * g + o * s``, ``g`` log-uniform in
   ``gain_range``, ``o`` uniform in ``offset_range`` and ``s`` the channel's
   standard deviation, so offsets are relative to the channel's contrast.
7. **Noise**: ``sigma`` uniform in ``noise_range``; with probability
   ``poisson_fraction`` shot-like noise of standard deviation
   ``sigma * sqrt(s * (x - min))`` (variance proportional to the signal above the
   channel's minimum), else Gaussian of standard deviation ``sigma * s``; the two
   agree one ``s`` above the minimum.

Intensity transforms act on whatever scale the image has; augment *after*
:func:`~cellflow.nn.normalize.normalize`, since a gain and offset applied before a
percentile normalisation cancel out. The image comes back as float32 and every
array as a C-contiguous copy (ready for :func:`torch.from_numpy`). NumPy only:
augmentation runs in data-loader workers on the CPU.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from scipy import ndimage as ndi

from cellflow.ops.postprocess import DictParams

__all__ = [
    "AugmentParams", "augment", "elastic_deform", "mirror_crop", "random_crop", "random_displacement", "warp",
    "zoom_crop",
]

_ILLUMINATION_GRID = 4  # control points per axis of the smooth illumination field


# ---------------------------------------------------------------------------- params
def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"AugmentParams.{name} must be {expected}, got {value!r}")


def _number(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else math.nan
    if not math.isfinite(number) or number < low or (low_open and number == low) or number > high:
        bounds = f"{'(' if low_open else '['}{low}, {high}{']' if math.isfinite(high) else ')'}"
        raise _fail(name, f"a number in {bounds}", value)
    return number


def _range(name: str, value: Any, *, low: float, low_open: bool = False) -> tuple[float, float]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise _fail(name, "a pair (min, max)", value)
    first, second = (_number(name, v, low=low, low_open=low_open) for v in value)
    if first > second:
        raise _fail(name, "a pair (min, max) with min <= max", value)
    return first, second


def _size(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


@dataclass(frozen=True)
class AugmentParams(DictParams):
    """What :func:`augment` does and how strongly; validated here, trusted everywhere else.

    Parameters
    ----------
    crop_size : int or None
        Side of the square mirror-extended random crop, or None for no crop.
    crop_overhang : int or None
        How far (pixels) a crop may reach beyond the field on each side; None for
        ``crop_size // 2`` (the crop's centre is then anywhere in the field).
    flip, rotate90 : bool
        Random flips of each axis; random multiples of 90 degrees.
    p_elastic : float
        Probability of an elastic deformation.
    elastic_displacement_px : float
        Standard deviation of the displacement (pixels), >= 0.
    elastic_smoothness_px : float
        Gaussian sigma smoothing the displacement (pixels), > 0.
    p_illumination : float
        Probability of a smooth multiplicative illumination field.
    illumination_strength : float
        Largest relative amplitude ``a`` of the field, in [0, 1).
    p_blur : float
        Probability of a Gaussian blur.
    blur_sigma_range : (float, float)
        Range of the blur's sigma (pixels), >= 0.
    p_intensity : float
        Probability of a per-channel gain and offset.
    gain_range : (float, float)
        Range of the gain, > 0 (drawn log-uniformly).
    offset_range : (float, float)
        Range of the offset, in channel standard deviations.
    p_noise : float
        Probability of noise.
    noise_range : (float, float)
        Range of the noise level, in channel standard deviations, >= 0.
    poisson_fraction : float
        Probability that the noise is shot-like rather than Gaussian.
    p_scale : float
        Probability of a zoom: a crop of ``crop_size / s`` pixels resampled to
        ``crop_size``, so objects appear ``s`` times larger (no zoom without a crop).
    scale_range : (float, float)
        Range of the zoom factor ``s``, > 0 (drawn log-uniformly).

    All probabilities are in [0, 1]. See the module docstring for the formulas.

    Raises
    ------
    ValueError
        A field is out of range; the message names it.

    Examples
    --------
    >>> params = AugmentParams(crop_size=128, p_elastic=0.0)
    >>> AugmentParams.from_dict(params.to_dict()) == params
    True
    """

    crop_size: int | None = None
    crop_overhang: int | None = None
    flip: bool = True
    rotate90: bool = True
    p_elastic: float = 0.5
    elastic_displacement_px: float = 3.0
    elastic_smoothness_px: float = 10.0
    p_illumination: float = 0.3
    illumination_strength: float = 0.3
    p_blur: float = 0.2
    blur_sigma_range: tuple[float, float] = (0.5, 1.5)
    p_intensity: float = 0.5
    gain_range: tuple[float, float] = (0.8, 1.25)
    offset_range: tuple[float, float] = (-0.1, 0.1)
    p_noise: float = 0.3
    noise_range: tuple[float, float] = (0.0, 0.1)
    poisson_fraction: float = 0.5
    p_scale: float = 0.0
    scale_range: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.crop_size is not None:
            set_(self, "crop_size", _size("crop_size", self.crop_size, minimum=1))
        if self.crop_overhang is not None:
            set_(self, "crop_overhang", _size("crop_overhang", self.crop_overhang, minimum=0))
        for name in ("flip", "rotate90"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "True or False", getattr(self, name))
        for name in ("p_elastic", "p_illumination", "p_blur", "p_intensity", "p_noise", "poisson_fraction", "p_scale"):
            set_(self, name, _number(name, getattr(self, name), low=0.0, high=1.0))
        set_(self, "elastic_displacement_px", _number("elastic_displacement_px", self.elastic_displacement_px, low=0.0))
        set_(self, "elastic_smoothness_px",
             _number("elastic_smoothness_px", self.elastic_smoothness_px, low=0.0, low_open=True))
        set_(self, "illumination_strength", _number("illumination_strength", self.illumination_strength,
                                                    low=0.0, high=math.nextafter(1.0, 0.0)))
        set_(self, "blur_sigma_range", _range("blur_sigma_range", self.blur_sigma_range, low=0.0))
        set_(self, "gain_range", _range("gain_range", self.gain_range, low=0.0, low_open=True))
        set_(self, "offset_range", _range("offset_range", self.offset_range, low=-math.inf))
        set_(self, "noise_range", _range("noise_range", self.noise_range, low=0.0))
        set_(self, "scale_range", _range("scale_range", self.scale_range, low=0.0, low_open=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Params from :meth:`to_dict` output or a YAML spec (lists become pairs), naming unknown keys."""
        return super().from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------------------- geometry
def _reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Indices into an axis of length ``n`` as NumPy's ``pad(mode="reflect")`` extends it, any distance out."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index >= n, period - index, index)


def mirror_crop(array: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """The ``size`` window at ``(top, left)`` of ``array`` extended by reflection over its last two axes.

    Equals ``np.pad(array, pad, mode="reflect")[..., top + pad:top + pad + h, left + pad:left + pad + w]``
    for any ``pad`` large enough; ``top`` and ``left`` may be negative or beyond the array.

    Parameters
    ----------
    array : (..., H, W) ndarray
    top, left : int
        Origin of the window in the array's coordinates.
    size : (int, int)
        ``(h, w)`` of the window.

    Returns
    -------
    crop : (..., h, w) ndarray
        Same dtype as ``array``, C-contiguous.

    Examples
    --------
    >>> mirror_crop(np.arange(4)[None], 0, -2, (1, 8))
    array([[2, 1, 0, 1, 2, 3, 2, 1]])
    """
    h, w = array.shape[-2:]
    rows = _reflect_index(np.arange(top, top + size[0]), h)
    cols = _reflect_index(np.arange(left, left + size[1]), w)
    return np.ascontiguousarray(array[..., rows[:, None], cols[None, :]])


def _check_pair(image: np.ndarray, targets: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype.kind not in "fiub":
        raise ValueError(
            f"image must be a real (C, H, W) NumPy array, got "
            f"{f'shape {image.shape} and dtype {image.dtype}' if isinstance(image, np.ndarray) else type(image)}"
        )
    if isinstance(targets, np.ndarray) or not isinstance(targets, Sequence):
        raise ValueError(f"targets must be a tuple of arrays, got {type(targets).__name__}")
    for index, target in enumerate(targets):
        if not isinstance(target, np.ndarray) or target.ndim < 2 or target.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"targets[{index}] must be an array whose last two axes are the image's {image.shape[-2:]}, got "
                f"{target.shape if isinstance(target, np.ndarray) else type(target).__name__}"
            )
    return image, tuple(targets)


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}")
    return rng


def random_crop(
    image: np.ndarray,
    targets: Sequence[np.ndarray],
    size: int | tuple[int, int],
    rng: np.random.Generator,
    *,
    overhang: int | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The same mirror-extended random window of an image and its targets.

    The window's origin is uniform over the positions where it reaches at most
    ``overhang`` pixels beyond the field on each side; a window wider than the field
    plus both overhangs is placed uniformly among the positions where it covers the
    whole field. Pixels beyond the field are reflected (see :func:`mirror_crop`).

    Parameters
    ----------
    image : (C, H, W) ndarray
    targets : tuple of (..., H, W) ndarray
    size : int or (int, int)
        Window ``(h, w)``; an int for a square.
    rng : numpy.random.Generator
    overhang : int, optional
        Default ``min(size) // 2``.

    Returns
    -------
    image : (C, h, w) ndarray
    targets : tuple of (..., h, w) ndarray
        Dtypes kept.

    Raises
    ------
    ValueError
        Shapes disagree, or ``size`` / ``overhang`` are out of range.
    TypeError
        ``rng`` is not a Generator.
    """
    image, targets = _check_pair(image, targets)
    rng = _check_rng(rng)
    crop_size = _crop_size(size)
    reach = min(crop_size) // 2 if overhang is None else overhang
    if not _is_int(reach) or reach < 0:
        raise ValueError(f"overhang must be an integer >= 0, got {overhang!r}")
    origin = []
    for extent, window in zip(image.shape[-2:], crop_size, strict=True):
        first, last = -int(reach), extent + int(reach) - window
        if last < first:  # the window is wider than the field and both overhangs: it must cover the field
            first, last = extent - window, 0
        origin.append(int(rng.integers(first, last + 1)))
    top, left = origin
    return (mirror_crop(image, top, left, crop_size),
            tuple(mirror_crop(target, top, left, crop_size) for target in targets))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _crop_size(size: Any) -> tuple[int, int]:
    pair = (size, size) if _is_int(size) else tuple(size) if isinstance(size, Sequence) else ()
    if len(pair) != 2 or not all(_is_int(s) and s >= 1 for s in pair):
        raise ValueError(f"size must be a positive int or a pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def _flip_rotate(arrays: list[np.ndarray], rng: np.random.Generator, params: AugmentParams) -> list[np.ndarray]:
    if params.flip:
        for axis, flip in zip((-2, -1), rng.random(2) < 0.5):
            if flip:
                arrays = [np.flip(a, axis=axis) for a in arrays]
    if params.rotate90:
        h, w = arrays[0].shape[-2:]
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
        arrays = [np.rot90(a, k, axes=(-2, -1)) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def random_displacement(shape: tuple[int, int], rng: np.random.Generator, *, displacement_px: float,
                        smoothness_px: float) -> np.ndarray:
    """A smooth random displacement field for :func:`warp`.

    Each component is white Gaussian noise smoothed by a Gaussian of
    ``smoothness_px`` (periodic, so the field has no edge effect) and rescaled to a
    standard deviation of ``displacement_px``.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)``.
    rng : numpy.random.Generator
    displacement_px : float
        Standard deviation of each component, pixels.
    smoothness_px : float
        Sigma of the smoothing, pixels, > 0.

    Returns
    -------
    displacement : (2, H, W) ndarray of float64
        ``(dy, dx)``.
    """
    displacement = _check_rng(rng).standard_normal((2, *shape))
    for component in displacement:
        ndi.gaussian_filter(component, smoothness_px, output=component, mode="wrap")
        std = component.std()
        component *= displacement_px / std if std > 0 else 0.0
    return displacement


def warp(image: np.ndarray, targets: Sequence[np.ndarray],
         displacement: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Resample an image (bilinear) and its targets (nearest) at ``p + displacement(p)``.

    Output pixel ``p`` takes the value at ``s = p + d(p)``: the image the bilinear
    mix of the 4 pixels around ``s``, a target the value of the nearest one
    (``round(s)``), so label ids, classes and weights are only ever copied. Beyond
    the field, pixels are reflected (NumPy ``"reflect"``, SciPy ``"mirror"``).

    Parameters
    ----------
    image : (C, H, W) ndarray
    targets : tuple of (..., H, W) ndarray
    displacement : (2, H, W) ndarray of float
        ``(dy, dx)`` per output pixel, e.g. from :func:`random_displacement`.

    Returns
    -------
    image : (C, H, W) ndarray of float32
    targets : tuple of (..., H, W) ndarray
        Dtypes kept.
    """
    image, targets = _check_pair(image, targets)
    shape = image.shape[-2:]
    if displacement.shape != (2, *shape):
        raise ValueError(f"displacement must have shape {(2, *shape)}, got {displacement.shape}")
    return _resample(image, targets, np.indices(shape, dtype=np.float64) + displacement)


def _resample(image: np.ndarray, targets: Sequence[np.ndarray],
              coords: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Image (bilinear) and targets (nearest) sampled at ``coords`` (2, h, w), reflected beyond the field."""
    shape = image.shape[-2:]
    warped = np.stack([ndi.map_coordinates(channel.astype(np.float32, copy=False), coords, order=1, mode="mirror")
                       for channel in image])
    rows = _reflect_index(np.rint(coords[0]).astype(np.intp), shape[0])
    cols = _reflect_index(np.rint(coords[1]).astype(np.intp), shape[1])
    return warped.astype(np.float32, copy=False), tuple(np.ascontiguousarray(t[..., rows, cols]) for t in targets)


def zoom_crop(
    image: np.ndarray,
    targets: Sequence[np.ndarray],
    size: int,
    scale: float,
    rng: np.random.Generator,
    *,
    overhang: int | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """A random ``size / scale`` window resampled to ``size``: objects look ``scale`` times larger.

    Output pixel ``p`` samples the window at ``(p + 0.5) / scale - 0.5`` (pixel centres
    map onto pixel centres); the image bilinearly, targets by nearest neighbour.

    Examples
    --------
    >>> image = np.arange(64, dtype=np.float32).reshape(1, 8, 8); labels = np.ones((8, 8), np.uint8)
    >>> out, (lab,) = zoom_crop(image, (labels,), 8, 2.0, np.random.default_rng(0), overhang=0)
    >>> out.shape, lab.shape, bool((lab == 1).all())
    ((1, 8, 8), (8, 8), True)
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    window = max(1, math.ceil(size / scale))
    image, targets = random_crop(image, targets, window, rng, overhang=overhang)
    axis = (np.arange(size, dtype=np.float64) + 0.5) / scale - 0.5
    coords = np.stack(np.meshgrid(axis, axis, indexing="ij"))
    return _resample(image, targets, coords)


def elastic_deform(
    image: np.ndarray,
    targets: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    displacement_px: float,
    smoothness_px: float,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Warp an image (bilinear) and its targets (nearest) by one smooth random displacement.

    :func:`warp` by :func:`random_displacement`; see them for the parameters.

    Returns
    -------
    image : (C, H, W) ndarray of float32
    targets : tuple of (..., H, W) ndarray
        Dtypes kept; a label image holds a subset of its ids.
    """
    image, targets = _check_pair(image, targets)
    displacement = random_displacement(image.shape[-2:], rng, displacement_px=displacement_px,
                                       smoothness_px=smoothness_px)
    return warp(image, targets, displacement)


# ---------------------------------------------------------------------------- intensity (image only)
def _channel_scale(image: np.ndarray) -> np.ndarray:
    """(C, 1, 1) standard deviation of each channel, 1 for a flat channel."""
    std = image.std(axis=(-2, -1), dtype=np.float64, keepdims=True)
    return np.where(std > 0, std, 1.0)


def _illumination_field(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    grid = rng.uniform(-1.0, 1.0, (_ILLUMINATION_GRID, _ILLUMINATION_GRID))
    coords = np.stack(np.meshgrid(*(np.linspace(0, _ILLUMINATION_GRID - 1, n) for n in shape), indexing="ij"))
    field = ndi.map_coordinates(grid, coords, order=3, mode="nearest")
    peak = np.abs(field).max()
    amplitude = rng.uniform(0.0, strength)
    return 1.0 + amplitude * (field / peak if peak > 0 else field)


def _intensity(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    out = image.astype(np.float64)
    if rng.random() < params.p_illumination:
        out *= _illumination_field(out.shape[-2:], rng, params.illumination_strength)
    if rng.random() < params.p_blur:
        sigma = rng.uniform(*params.blur_sigma_range)
        out = ndi.gaussian_filter(out, (0.0, sigma, sigma), mode="mirror")
    if rng.random() < params.p_intensity:
        n = out.shape[0]
        low_gain, high_gain = (math.log(g) for g in params.gain_range)
        gain = np.exp(rng.uniform(low_gain, high_gain, size=(n, 1, 1)))
        low_offset, high_offset = params.offset_range
        offset = rng.uniform(low_offset, high_offset, size=(n, 1, 1))
        out = out * gain + offset * _channel_scale(out)
    if rng.random() < params.p_noise:
        sigma = rng.uniform(*params.noise_range)
        scale = _channel_scale(out)
        if rng.random() < params.poisson_fraction:
            above_min = out - out.min(axis=(-2, -1), keepdims=True)
            std = sigma * np.sqrt(scale * above_min)
        else:
            std = sigma * scale
        out = out + std * rng.standard_normal(out.shape)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- all together
def augment(
    image: np.ndarray,
    targets: Sequence[np.ndarray],
    params: AugmentParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """One random augmentation of an image and its targets (see the module docstring).

    Parameters
    ----------
    image : (C, H, W) ndarray
        Any real dtype; best already normalised.
    targets : tuple of (..., H, W) ndarray
        Label images, class maps, weight maps: moved with the image, never
        interpolated, untouched by intensity transforms.
    params : AugmentParams
    rng : numpy.random.Generator
        The only source of randomness: one seed, one result.

    Returns
    -------
    image : (C, h, w) ndarray of float32
        ``(h, w)`` is ``(crop_size, crop_size)`` with a crop, else ``(H, W)``
        (non-square images are turned by 0 or 180 degrees only).
    targets : tuple of (..., h, w) ndarray
        Dtypes kept; label images hold a subset of the original ids.

    Raises
    ------
    ValueError
        Shapes disagree.
    TypeError
        ``params`` is not an :class:`AugmentParams` or ``rng`` not a Generator.

    Examples
    --------
    >>> image = np.zeros((2, 40, 50), np.float32); labels = np.zeros((40, 50), np.uint16)
    >>> out, (out_labels,) = augment(image, (labels,), AugmentParams(crop_size=32), np.random.default_rng(0))
    >>> out.shape, out.dtype, out_labels.shape, out_labels.dtype
    ((2, 32, 32), dtype('float32'), (32, 32), dtype('uint16'))
    """
    if not isinstance(params, AugmentParams):
        raise TypeError(f"params must be an AugmentParams, got {type(params).__name__}")
    image, targets = _check_pair(image, targets)
    rng = _check_rng(rng)
    if params.crop_size is not None and params.p_scale > 0 and rng.random() < params.p_scale:
        low, high = np.log(params.scale_range)
        scale = float(np.exp(rng.uniform(low, high)))
        image, targets = zoom_crop(image, targets, params.crop_size, scale, rng, overhang=params.crop_overhang)
    elif params.crop_size is not None:
        image, targets = random_crop(image, targets, params.crop_size, rng, overhang=params.crop_overhang)
    image, *rest = _flip_rotate([image, *targets], rng, params)
    targets = tuple(rest)
    if rng.random() < params.p_elastic:
        image, targets = elastic_deform(image, targets, rng, displacement_px=params.elastic_displacement_px,
                                        smoothness_px=params.elastic_smoothness_px)
    return _intensity(image, rng, params), targets
