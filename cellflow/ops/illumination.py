"""Illumination correction: estimate a flat-field from many fields of a plate, and apply it.

After Sadanandan et al. 2017 and CellProfiler's ``CorrectIlluminationCalculate``:
the illumination function of one plate x channel x z plane is a robust average of
all its fields, smoothed, normalised to mean 1; a field is corrected by dividing
it by the function (after subtracting the camera offset).

The average: block sums of background pixels
--------------------------------------------
Each field contributes a :class:`BackgroundSums`: on a grid of ``block_px``
blocks, the sum and the count of its *background* pixels (camera offset
subtracted). Sums add, so any number of fields is reduced by a tree of ``+``
and memory stays at two small grids whatever the number of fields (10^4-10^6).
The plate's estimate is ``total / count`` per block: the mean background level.

Why a mean of background pixels, and not a per-field block percentile or median
that is then averaged: the camera adds Poisson noise whose spread grows as the
square root of the signal, so a low percentile sits ``~z * sqrt(level)`` below
the level and its ratio between a dim corner and the bright centre is not the
illumination ratio (10-15 % off at 15 photo-electrons of background). The mean
of the background pixels is unbiased whatever the noise. What makes it robust
is the foreground exclusion (:func:`background_mask`): a pixel counts as
background when its lightly smoothed value lies within ``tolerance`` (relative)
of the local background level, on either side. That level is the 10th
percentile of small blocks, opened (min then max filter) over ``object_px`` so
that blocks covered by a cell take their neighbours' background while the slow
vignetting is kept. The test is relative, so it classifies alike under a dim corner and the bright
centre; it is symmetric, so it drops bright fluorescent cells and the dark and
bright features of transmitted light (bright-field) alike, and clipping the
noise symmetrically does not bias the mean. Saturated pixels never count.
Foreground that slips through is random from field to field; the smoothing
below removes what is left of it. The approach needs some background: on
confluent fields (cells over ~80 % of a channel's field) no block has any, and
an estimate from all pixels (CellProfiler's "regular" mode) would be needed.

Smoothing (``method``)
----------------------
``'median'``
    CellProfiler style: a median filter of ``filter_size_px`` over the block
    means (empty blocks filled from their nearest neighbour), then linear
    interpolation to full resolution.
``'spline'``, ``'polynomial'``
    An iterative, weighted least-squares fit of a smooth surface that excludes
    foreground (:func:`fit_surface`): a tensor product of cubic B-splines with
    ``knots`` interior knots per axis, or of Legendre polynomials of total degree
    ``degree``, weighted by the blocks' pixel counts. After each fit, blocks
    whose residual (standardised by the count) lies beyond ``outlier_sigma``
    robust standard deviations (1.4826 x MAD) are left out and the surface
    refitted, ``iterations`` times. The test is two-sided, so it serves the
    bright foreground of fluorescence and the dark and bright one of
    bright-field alike. A flexible spline can bend onto a cluster of
    contaminated blocks (at a corner, where few blocks fix it) and then never
    sees them as outliers; so a block is also tested against a robust
    reference, the fit plus a median filter of its residuals over a quarter of
    the grid. The surface is then evaluated at every pixel: smooth by
    construction, with no interpolation grid.

Normalisation: the function is divided by its mean over all pixels of the
field, so it is 1 on average and correcting keeps a field's mean brightness.

Every kernel takes NumPy or CuPy arrays (:func:`~cellflow.ops.backend_of`);
the small basis matrices are built on the host from coordinates only.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y, x = np.mgrid[:64, :64]
>>> vignette = 1.1 - 0.2 * ((y - 30) ** 2 + (x - 34) ** 2) / 32**2
>>> fields = [rng.poisson(200 * vignette) + 100 for _ in range(4)]
>>> parts = [background_sums(f, block_px=8, offset=100, object_px=16) for f in fields]
>>> sums = parts[0] + parts[1] + parts[2] + parts[3]
>>> illumination = estimate_illumination(sums, method="polynomial", degree=2)
>>> truth = vignette / vignette.mean()
>>> bool(np.sqrt(np.mean((illumination / truth - 1) ** 2)) < 0.01)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cellflow.ops._backend import Backend, backend_of
from cellflow.ops._surface import fit_surface, fit_surface_at, median_smooth

__all__ = [
    "ILLUMINATION_METHODS",
    "BackgroundSums",
    "apply_illumination",
    "background_flatness",
    "background_mask",
    "background_sums",
    "estimate_illumination",
    "fit_surface",
]

#: Smoothing methods of :func:`estimate_illumination`.
ILLUMINATION_METHODS: tuple[str, ...] = ("median", "spline", "polynomial")
Method = Literal["median", "spline", "polynomial"]

_REFERENCE_QUANTILE = 10.0  # percentile of a small block taken as its background reference
_REFERENCE_BLOCKS_PER_OBJECT = 6  # reference blocks across the largest object


@dataclass(frozen=True, eq=False)
class BackgroundSums:
    """Sums and counts of background pixels on a grid of blocks: the reducible partial.

    Attributes
    ----------
    total : (NY, NX) ndarray of float64
        Sum of background pixel values (offset subtracted) per block.
    count : (NY, NX) ndarray of float64
        Number of background pixels per block.
    shape_yx : (int, int)
        Size of the fields in pixels.
    block_px : int
        Block edge in pixels; ``NY = ceil(Y / block_px)``, the last block may be partial.
    fields : int
        Number of fields summed.
    """

    total: Any
    count: Any
    shape_yx: tuple[int, int]
    block_px: int
    fields: int = 1

    def __add__(self, other: BackgroundSums) -> BackgroundSums:
        if (self.shape_yx, self.block_px) != (other.shape_yx, other.block_px):
            raise ValueError(
                f"cannot add BackgroundSums of fields {self.shape_yx} in blocks of {self.block_px} px "
                f"to fields {other.shape_yx} in blocks of {other.block_px} px"
            )
        return BackgroundSums(self.total + other.total, self.count + other.count, self.shape_yx, self.block_px,
                              self.fields + other.fields)

    @property
    def background_fraction(self) -> float:
        """Fraction of all summed pixels that counted as background."""
        return float(self.count.sum()) / (self.fields * self.shape_yx[0] * self.shape_yx[1])

    @property
    def level(self) -> Any:
        """Mean background level per block (NaN where a block has no background pixel)."""
        xp = backend_of(self.total).xp
        return xp.where(self.count > 0, self.total / xp.maximum(self.count, 1), xp.nan)


# ---------------------------------------------------------------------------- per field
def background_mask(signal: Any, *, tolerance: float = 0.2, smooth_sigma_px: float = 2.0,
                    object_px: int = 96) -> Any:
    """Pixels that look like background: within ``tolerance`` of the local background level.

    The local level is a morphological opening, wider than any object, of the
    low quantile of small blocks of the lightly smoothed plane: blocks covered
    by objects are replaced by their neighbourhood's background, while the slow
    vignetting is kept.

    Parameters
    ----------
    signal : (Y, X) ndarray
        One plane, camera offset already subtracted.
    tolerance : float
        Largest relative departure ``|smoothed / level - 1|`` of a background pixel.
    smooth_sigma_px : float
        Gaussian sigma applied before the test, so that shot noise does not decide it.
    object_px : int
        Size of the largest foreground objects (cells, clusters) in pixels: the
        width of the opening.

    Returns
    -------
    mask : (Y, X) ndarray of bool
        True for background.

    Examples
    --------
    >>> image = np.full((32, 32), 10.0)
    >>> image[8:14, 8:14] = 100.0
    >>> mask = background_mask(image, object_px=16)
    >>> bool(mask[0, 0]), bool(mask[10, 10])
    (True, False)
    """
    be = backend_of(signal)
    smooth = be.ndi.gaussian_filter(signal.astype(be.xp.float32, copy=False), smooth_sigma_px, mode="nearest")
    block = max(1, min(int(object_px) // _REFERENCE_BLOCKS_PER_OBJECT, *signal.shape))
    grid = _block_percentile(be, smooth, block, _REFERENCE_QUANTILE)
    width = -(-int(object_px) // block) | 1  # blocks, odd so that the opening is centred
    grid = be.ndi.grey_opening(grid, size=(width, width), mode="nearest")
    reference = _upsample(be, grid, signal.shape, block)
    return (reference > 0) & (be.xp.abs(smooth - reference) <= tolerance * reference)


def background_sums(image: Any, *, block_px: int = 8, offset: float = 0.0, tolerance: float = 0.2,
                    smooth_sigma_px: float = 2.0, object_px: int = 96) -> BackgroundSums:
    """One field's contribution to the illumination estimate.

    Parameters
    ----------
    image : (Y, X) ndarray
        One plane as acquired (integer or float).
    block_px : int
        Block edge of the result grid in pixels.
    offset : float
        Camera offset (dark level) subtracted first: it is not lit, so it must not
        be divided out later.
    tolerance, smooth_sigma_px, object_px
        Foreground exclusion, see :func:`background_mask`.

    Returns
    -------
    BackgroundSums
        Sums and counts of the background pixels, float64 on the image's backend.
        Saturated pixels (the integer dtype's maximum) are never counted.
    """
    be = backend_of(image)
    xp = be.xp
    signal = image.astype(xp.float32) - xp.float32(offset)
    mask = background_mask(signal, tolerance=tolerance, smooth_sigma_px=smooth_sigma_px, object_px=object_px)
    if image.dtype.kind in "ui":
        mask &= image < np.iinfo(image.dtype).max
    total = _block_sum(be, xp.where(mask, signal, 0).astype(xp.float64), block_px)
    count = _block_sum(be, mask.astype(xp.float64), block_px)
    return BackgroundSums(total, count, (int(image.shape[0]), int(image.shape[1])), int(block_px))


# ---------------------------------------------------------------------------- per plate
def estimate_illumination(sums: BackgroundSums, *, method: Method = "spline", filter_size_px: float | None = None,
                          iterations: int = 5, knots: int = 3, degree: int = 4,
                          outlier_sigma: float = 3.0) -> Any:
    """The illumination function from a plate's summed background: smoothed, mean 1.

    Parameters
    ----------
    sums : BackgroundSums
        The sum of every field's :func:`background_sums`.
    method : {'median', 'spline', 'polynomial'}
        Smoothing (see the module docstring).
    filter_size_px : float, optional
        Median filter edge in pixels (``'median'`` only); default an eighth of the
        shorter field side. Rounded to an odd number of blocks.
    iterations, knots, degree, outlier_sigma
        Surface fit (``'spline'``, ``'polynomial'``), see :func:`fit_surface`.

    Returns
    -------
    illumination : (Y, X) ndarray of float32
        Relative illumination, mean 1 over the field.

    Raises
    ------
    ValueError
        Unknown ``method``, or no block holds a background pixel.
    """
    be = backend_of(sums.total)
    level = sums.level
    if not bool(be.xp.any(sums.count > 0)):
        raise ValueError("no background pixel in any field: cannot estimate the illumination "
                         "(are all fields empty, saturated or fully covered by cells?)")
    y_px, x_px = (_block_centres(n, sums.block_px) for n in sums.shape_yx)
    if method == "median":
        size_px = min(sums.shape_yx) / 8 if filter_size_px is None else filter_size_px
        grid = median_smooth(be, level, size=round(size_px / sums.block_px))
        surface = _upsample(be, grid, sums.shape_yx, sums.block_px)
    elif method in ("spline", "polynomial"):
        pixels = [np.arange(n, dtype=float) for n in sums.shape_yx]
        surface = fit_surface_at(be, level, sums.count, (y_px, x_px), pixels, sums.shape_yx, kind=method,
                                 knots=knots, degree=degree, iterations=iterations, outlier_sigma=outlier_sigma)
    else:
        raise ValueError(f"method must be one of {ILLUMINATION_METHODS!r}, got {method!r}")
    return _unit_mean(be, surface)


# ---------------------------------------------------------------------------- apply
def apply_illumination(image: Any, illumination: Any, *, offset: float = 0.0) -> Any:
    """Flat-field correct one block: ``(image - offset) / illumination``, as float32.

    Parameters
    ----------
    image : (..., Y, X) ndarray
        Pixels as acquired.
    illumination : (Y, X) ndarray
        Relative illumination of the same plate, channel and z (broadcast over leading dims).
    offset : float
        Camera offset (dark level), subtracted before dividing: it is added by the
        camera after the light, so it is not shaded by the illumination.

    Returns
    -------
    corrected : (..., Y, X) ndarray of float32
        Values below the offset stay negative (unbiased noise), they are not clipped.

    Examples
    --------
    >>> apply_illumination(np.array([[110, 130]], np.uint16), np.array([[0.5, 1.5]]), offset=100)
    array([[20., 20.]], dtype=float32)
    """
    xp = backend_of(image).xp
    signal = image.astype(xp.float32) - xp.float32(offset)
    return signal / illumination.astype(xp.float32, copy=False)


def background_flatness(images: Any, background: Any, *, block_px: int = 32, min_fraction: float = 0.1) -> float:
    """Unevenness of the background across the field: coefficient of variation of its level.

    The level of a block is the mean of its background pixels, per field where at
    least ``min_fraction`` of the block is background, averaged over the fields.
    The mean, not the median: at a few tens of counts the median of integer pixels
    moves in whole-count steps, a few percent of the level. A perfectly flat
    background scores 0; vignetting with a 30 % corner fall-off about 0.07-0.10.

    Parameters
    ----------
    images : (N, Y, X) ndarray
        Fields of one plate x channel x z, offset subtracted (raw or corrected).
    background : (N, Y, X) ndarray of bool
        True where a pixel is background (e.g. far from every true cell).
    block_px : int
        Block edge in pixels.
    min_fraction : float
        Smallest background fraction of a block for it to count in a field.

    Returns
    -------
    float
        ``std / mean`` of the block levels (NaN blocks left out).

    Examples
    --------
    >>> y, x = np.mgrid[:64, :64]
    >>> shaded = np.stack([100.0 * (1 - 0.002 * x)])
    >>> flat = np.ones_like(shaded, bool)
    >>> round(background_flatness(shaded, flat), 3), background_flatness(np.ones((1, 64, 64)), flat)
    (0.034, 0.0)
    """
    be = backend_of(images)
    xp = be.xp
    sums = xp.stack([_block_sum(be, xp.where(m, f, 0).astype(xp.float64), block_px)
                     for f, m in zip(images, background)])
    counts = xp.stack([_block_sum(be, m.astype(xp.float64), block_px) for m in background])
    area = _block_sum(be, xp.ones(images.shape[1:]), block_px)
    enough = counts >= min_fraction * area
    per_field = xp.where(enough, sums / xp.maximum(counts, 1), 0.0)
    fields = enough.sum(axis=0)
    level = (per_field.sum(axis=0) / xp.maximum(fields, 1))[fields > 0]
    return float(level.std() / level.mean())


# ---------------------------------------------------------------------------- helpers
def _block_sum(be: Backend, array: Any, block: int) -> Any:
    """Sum over ``block`` x ``block`` tiles; the last row/column of tiles may be partial (zero padded)."""
    ny, nx = (-(-n // block) for n in array.shape)
    padded = be.xp.pad(array, ((0, ny * block - array.shape[0]), (0, nx * block - array.shape[1])))
    return padded.reshape(ny, block, nx, block).sum(axis=(1, 3))


def _block_percentile(be: Backend, array: Any, block: int, q: float) -> Any:
    """Percentile ``q`` of every tile (partial tiles padded by mirroring their own pixels)."""
    ny, nx = (-(-n // block) for n in array.shape)
    pad = ((0, ny * block - array.shape[0]), (0, nx * block - array.shape[1]))
    tiles = be.xp.pad(array, pad, mode="symmetric").reshape(ny, block, nx, block).transpose(0, 2, 1, 3)
    return be.xp.percentile(tiles.reshape(ny, nx, block * block), q, axis=-1)


def _block_centres(n: int, block: int) -> np.ndarray:
    """Pixel coordinate of the centre of each block along an axis of ``n`` pixels."""
    start = np.arange(0, n, block, dtype=float)
    return (start + np.minimum(start + block, n) - 1) / 2


def _upsample(be: Backend, grid: Any, shape_yx: tuple[int, ...], block: int) -> Any:
    """Linear interpolation of a block grid to every pixel (constant beyond the outer centres)."""
    wy, wx = (be.asarray(_hat_basis(np.arange(n, dtype=float), _block_centres(n, block))) for n in shape_yx)
    return wy @ grid.astype(wy.dtype) @ wx.T


def _hat_basis(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Linear interpolation weights of samples at ``centres``, evaluated at ``x``: (len(x), len(centres))."""
    weights = np.zeros((x.size, centres.size))
    if centres.size == 1:
        weights[:, 0] = 1.0
        return weights
    position = np.interp(x, centres, np.arange(centres.size, dtype=float))
    lower = np.minimum(np.floor(position).astype(int), centres.size - 2)
    frac = position - lower
    rows = np.arange(x.size)
    weights[rows, lower] = 1.0 - frac
    weights[rows, lower + 1] = frac
    return weights


def _unit_mean(be: Backend, surface: Any) -> Any:
    mean = float(surface.mean())
    if not np.isfinite(mean) or mean <= 0:
        raise ValueError(f"the estimated illumination has mean {mean!r}; expected a positive level "
                         "(is the camera offset larger than the background?)")
    return (surface / mean).astype(be.xp.float32)
