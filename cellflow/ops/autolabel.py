"""Classical auto-labels: nuclei (Otsu + watershed declumping) and cells (seeded watershed).

These kernels make cellflow's automatic ground truth (Sadanandan et al. 2017) and
its classical baseline, the equivalent of CellProfiler's ``IdentifyPrimaryObjects``
and ``IdentifySecondaryObjects``.

Nuclei (:func:`segment_nuclei`), on one illumination-corrected, z-averaged plane
(:func:`project_planes`):

1. **Smoothing**: a Gaussian of ``smoothing_px`` (light: it quiets shot noise and
   texture, not edges).
2. **Threshold**: a global Otsu threshold of the smoothed plane times
   ``threshold_correction`` (or a given ``threshold``); holes filled.
3. **Declumping** (``declump``): markers are the maxima of the distance transform
   of the mask (``'distance'``, CellProfiler's "shape") or of the plane smoothed at
   the nucleus scale (``'intensity'``), at least ``min_distance_fraction`` x the
   diameter apart; with ``h_fraction`` > 0 only maxima that rise that fraction of
   the surface's maximum above their saddle count (h-maxima), so that an elongated
   or textured nucleus is not split. A watershed of the same surface from the
   markers splits touching nuclei. ``'none'`` keeps connected components.
   With ``valley_depth`` set (``'distance'`` only), touching nuclei are first cut
   apart along the dark lines between them: pixels where the plane, smoothed at
   ``valley_sigma_px``, curves upwards across a line (:func:`valley_curvature`, a
   scale-normalised valley depth) by more than ``valley_depth`` of the local
   brightness above the local background leave the mask whose distance transform
   gives the markers and the flooding surface; a seam that closes on itself (round
   a dark nucleolus) is not cut. Two round nuclei pressed into one convex blob have
   no neck for the distance map to find, but usually a faint seam; texture inside a
   nucleus is shallower than that relative depth.
4. **Edge refinement** (``edge_level``): one global threshold puts the edge of a
   dim nucleus too far in and that of a bright one too far out (the blur spreads
   each edge over a few pixels). Each object's edge is therefore moved to where the
   smoothed plane falls to ``edge_level`` of the way from the background to the
   object's own bright level (its ``edge_percentile`` percentile), within its own
   watershed territory grown by a quarter diameter. At 0.5 this is the full width
   at half maximum of a blurred step; lower levels follow the outer rim that
   annotators usually draw.
5. **Size filter** from the diameter (``min_diameter_fraction``,
   ``max_diameter_fraction`` of the expected diameter, as equivalent diameters),
   holes filled per object, optionally objects touching the border removed,
   ids renumbered ``1..N``.

The expected diameter is given (``diameter_px``) or estimated per field
(:func:`estimate_diameter`: the median equivalent diameter of the Otsu blobs).

Cells (:func:`segment_cells`), on the corrected, z-averaged cytoplasm plane: the
foreground is the plane above ``threshold_correction`` x its Otsu threshold (the
dim cell rim lies well below Otsu), joined with the nuclei, holes filled. The
landscape for the watershed is the plane after a **grey dilation with a disk of
diameter** ``dilation_px`` (Sadanandan et al. 2017: it closes the dark gaps of a
grainy stain so that watershed lines do not leak through them), inverted, so that
cells flood outwards from bright cytoplasm near their nucleus and meet in the dim
valleys between cells. ``method='propagation'`` adds ``distance_weight`` x the
distance from the nearest nucleus (in nucleus diameters) to the inverted plane, as
CellProfiler's "Propagation" does, so that a cell does not grab the far side of a
neighbour through a bright patch; ``'intensity'`` uses the inverted plane alone,
``'gradient'`` its Sobel magnitude (CellProfiler's "Watershed - Gradient") and
``'distance'`` the distance alone (a Voronoi partition limited to the foreground).
Seeds are the nuclei: each cell keeps its nucleus's id, and foreground without a
nucleus gets no cell.

Defaults. ``threshold_correction`` 0.8, ``edge_level`` 0.35 and the cell settings
were chosen on synthetic plates of seed 101 and on the grey fluorescence images of
the nuclei development set other than the ten 520 x 696 U2OS images; the synthetic
plates prefer an edge level near 0.4 (half-maximum of a blurred edge), the annotated
real images near 0.3 (annotators draw the outer rim). The seam cut (``valley_depth``
0.2 at ``valley_sigma_px`` 2; its local background lies within one diameter, so the
default stitching halo of two diameters covers it) was chosen from a ~25-setting scan
scored on all the grey fluorescence images of the development set, the ten U2OS images
included; it raised every group: the ten 0.724 -> 0.731, the 52 others 0.586 -> 0.598,
and the untuned synthetic plate of ``benchmarks/classical_accuracy.py`` too (nuclei
0.864 -> 0.884).
``benchmarks/classical_accuracy.py`` measures them on other seeds and on the ten U2OS images.

Backends: smoothing, thresholds, distance transforms and dilation run on the array's
backend (NumPy or CuPy, :func:`~cellflow.ops.backend_of`); watershed, peak finding and
the per-object steps have no GPU kernel and run on the host (:func:`~cellflow.ops.to_host`).
Labels come back on the input's backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import sobel
from skimage.morphology import disk
from skimage.segmentation import expand_labels, relabel_sequential, watershed

from cellflow.ops._backend import Backend, backend_of, to_host
from cellflow.ops.illumination import apply_illumination
from cellflow.ops.postprocess import (
    DictParams,
    _count,
    _fail,
    _fraction,
    _positive,
    fill_label_holes,
    h_maxima_markers,
    remove_small_labels,
    seeded_watershed,
)

__all__ = [
    "CELL_METHODS",
    "DECLUMP_METHODS",
    "CellParams",
    "NucleiParams",
    "estimate_diameter",
    "project_planes",
    "segment_cells",
    "segment_nuclei",
    "valley_curvature",
]

#: Declumping methods of :class:`NucleiParams`.
DECLUMP_METHODS: tuple[str, ...] = ("distance", "intensity", "none")
#: Watershed landscapes of :class:`CellParams`.
CELL_METHODS: tuple[str, ...] = ("propagation", "intensity", "gradient", "distance")

_DISTANCE_SMOOTHING_PX = 1.0  # the EDT is piecewise flat along ridges: smooth it so ridges have one peak
_INTENSITY_MARKER_SIGMA = 0.2  # x diameter: the 'intensity' surface blurs texture into one bump per nucleus
_TERRITORY_GROWTH = 0.25  # x diameter: how far an object's edge may move out in the refinement
_FLOOR_PERCENTILE = 1.0  # the dark floor under a threshold correction (robust minimum)
_MIN_BLOB_AREA_PX = 20  # blobs smaller than this do not vote in the diameter estimate (specks)
_VALLEY_BRIGHTNESS_SIGMA = 0.25  # x diameter: the local brightness a seam's depth is measured against
_VALLEY_BACKGROUND_REACH = 1.0  # x diameter: the local background is the darkest brightness this far away


@dataclass(frozen=True)
class NucleiParams(DictParams):
    """Settings of :func:`segment_nuclei` (see the module docstring for each step).

    Parameters
    ----------
    smoothing_px : float
        Gaussian sigma applied before thresholding, >= 0.
    threshold : float, optional
        Fixed threshold on the corrected plane; None for a per-field Otsu threshold.
    threshold_correction : float
        Factor on the Otsu threshold (> 0); below 1 keeps dimmer nuclei.
    declump : {'distance', 'intensity', 'none'}
        Marker and watershed surface for splitting touching nuclei.
    min_distance_fraction : float
        Smallest distance between two markers, as a fraction of the diameter (> 0).
    h_fraction : float
        In [0, 1): h-maxima height as a fraction of the surface's maximum; 0 keeps every maximum.
    valley_depth : float, optional
        > 0: cut the mask along dark seams deeper than this fraction of the local
        brightness before the distance transform (``declump='distance'``); None: no cut.
    valley_sigma_px : float
        > 0: the Gaussian scale (pixels) at which seams are measured.
    edge_level : float, optional
        In (0, 1): where each object's edge is placed between the background and its
        bright level; None keeps the global threshold's outline.
    edge_percentile : float
        In (0, 100]: percentile of an object's pixels taken as its bright level.
    min_diameter_fraction, max_diameter_fraction : float, optional
        Objects whose equivalent diameter is outside these fractions of the expected
        diameter are removed (None: no bound).
    fill_holes : bool
        Fill holes inside each object.
    exclude_border : bool
        Remove objects touching the image border (they are cut).

    Examples
    --------
    >>> params = NucleiParams(declump="intensity", h_fraction=0.1)
    >>> NucleiParams.from_dict(params.to_dict()) == params
    True
    """

    smoothing_px: float = 1.0
    threshold: float | None = None
    threshold_correction: float = 0.8
    declump: Literal["distance", "intensity", "none"] = "distance"
    min_distance_fraction: float = 0.25
    h_fraction: float = 0.0
    valley_depth: float | None = 0.2
    valley_sigma_px: float = 2.0
    edge_level: float | None = 0.35
    edge_percentile: float = 90.0
    min_diameter_fraction: float | None = 0.15
    max_diameter_fraction: float | None = 4.0
    fill_holes: bool = True
    exclude_border: bool = False

    def __post_init__(self) -> None:
        set_, owner = object.__setattr__, type(self).__name__
        set_(self, "smoothing_px", _positive(owner, "smoothing_px", self.smoothing_px, strict=False))
        if self.threshold is not None:
            set_(self, "threshold", _positive(owner, "threshold", self.threshold, strict=False))
        if self.valley_depth is not None:
            set_(self, "valley_depth", _positive(owner, "valley_depth", self.valley_depth))
        for name in ("threshold_correction", "min_distance_fraction", "valley_sigma_px"):
            set_(self, name, _positive(owner, name, getattr(self, name)))
        if self.declump not in DECLUMP_METHODS:
            raise _fail(owner, "declump", f"one of {DECLUMP_METHODS!r}", self.declump)
        if _fraction(owner, "h_fraction", self.h_fraction) >= 1:
            raise _fail(owner, "h_fraction", "a number in [0, 1)", self.h_fraction)
        set_(self, "h_fraction", float(self.h_fraction))
        if self.edge_level is not None and not 0 < _fraction(owner, "edge_level", self.edge_level) < 1:
            raise _fail(owner, "edge_level", "a number in (0, 1) or None", self.edge_level)
        percentile = _positive(owner, "edge_percentile", self.edge_percentile)
        if percentile > 100:
            raise _fail(owner, "edge_percentile", "a number in (0, 100]", self.edge_percentile)
        set_(self, "edge_percentile", percentile)
        for name in ("min_diameter_fraction", "max_diameter_fraction"):
            if getattr(self, name) is not None:
                set_(self, name, _positive(owner, name, getattr(self, name), strict=False))
        low, high = self.min_diameter_fraction or 0.0, self.max_diameter_fraction or math.inf
        if low >= high:
            raise _fail(owner, "max_diameter_fraction", f"> min_diameter_fraction ({low})", high)
        for name in ("fill_holes", "exclude_border"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(owner, name, "True or False", getattr(self, name))


@dataclass(frozen=True)
class CellParams(DictParams):
    """Settings of :func:`segment_cells` (see the module docstring).

    Parameters
    ----------
    dilation_px : int
        Diameter of the disk of the grey dilation of the landscape (an even value is
        rounded up to the odd diameter ``2 * (dilation_px // 2) + 1``); 0 or 1: none.
    threshold : float, optional
        Fixed foreground threshold on the corrected plane; None for Otsu x ``threshold_correction``.
    threshold_correction : float
        Factor on the Otsu threshold (> 0); the dim rim of a cell is well below Otsu.
    method : {'propagation', 'intensity', 'gradient', 'distance'}
        Watershed landscape.
    distance_weight : float
        Weight (>= 0) of the distance from the nuclei, in nucleus diameters, in ``'propagation'``.
    fill_holes : bool
        Fill holes inside each cell.

    Examples
    --------
    >>> CellParams.from_dict({"method": "gradient"}).dilation_px
    5
    """

    dilation_px: int = 5
    threshold: float | None = None
    threshold_correction: float = 0.45
    method: Literal["propagation", "intensity", "gradient", "distance"] = "propagation"
    distance_weight: float = 2.0
    fill_holes: bool = True

    def __post_init__(self) -> None:
        set_, owner = object.__setattr__, type(self).__name__
        set_(self, "dilation_px", _count(owner, "dilation_px", self.dilation_px))
        if self.threshold is not None:
            set_(self, "threshold", _positive(owner, "threshold", self.threshold, strict=False))
        set_(self, "threshold_correction", _positive(owner, "threshold_correction", self.threshold_correction))
        if self.method not in CELL_METHODS:
            raise _fail(owner, "method", f"one of {CELL_METHODS!r}", self.method)
        set_(self, "distance_weight", _positive(owner, "distance_weight", self.distance_weight, strict=False))
        if not isinstance(self.fill_holes, bool):
            raise _fail(owner, "fill_holes", "True or False", self.fill_holes)


# ---------------------------------------------------------------------------- input plane
def project_planes(planes: Any, *, illumination: Any | None = None, offset: float = 0.0) -> Any:
    """One plane to segment: camera offset removed, flat-field corrected, averaged over z.

    Parameters
    ----------
    planes : (Z, M, N) or (M, N) ndarray
        A channel's focal planes as acquired.
    illumination : (Z, M, N) or (M, N) ndarray, optional
        Relative illumination (mean 1) per plane, or one for all; None: no correction.
    offset : float
        Camera offset (dark level) subtracted first.

    Returns
    -------
    plane : (M, N) ndarray of float32
        On the input's backend.

    Examples
    --------
    >>> planes = np.array([[[110, 130]], [[130, 150]]], np.uint16)
    >>> project_planes(planes, illumination=np.array([[1.0, 2.0]]), offset=100).tolist()
    [[20.0, 20.0]]
    """
    xp = backend_of(planes).xp
    if planes.ndim not in (2, 3):
        raise ValueError(f"planes must be (z, y, x) or (y, x), got shape {planes.shape}")
    if illumination is None:
        corrected = planes.astype(xp.float32) - xp.float32(offset)
    else:
        corrected = apply_illumination(planes, illumination, offset=offset)
    return corrected if corrected.ndim == 2 else corrected.mean(axis=0, dtype=xp.float32)


def _smoothed_mask(be: Backend, image: Any, smoothing_px: float, threshold: float | None,
                   correction: float) -> tuple[Any, Any]:
    """(smoothed plane, foreground mask with holes filled) on the image's backend."""
    smooth = image.astype(be.xp.float32, copy=False)
    if smoothing_px > 0:
        smooth = be.ndi.gaussian_filter(smooth, smoothing_px)
    if threshold is None:
        if float(smooth.max()) <= float(smooth.min()):  # a flat plane has no foreground
            return smooth, be.xp.zeros(smooth.shape, bool)
        # The correction scales the threshold's height above the dark floor, not its raw value:
        # a camera offset (HeLa frames sit at ~33000 ADU) must not move the threshold below it.
        floor = float(be.xp.percentile(smooth, _FLOOR_PERCENTILE))
        otsu = float(be.ski("filters").threshold_otsu(smooth))
        threshold = floor + correction * (otsu - floor)
    return smooth, be.fill_holes(smooth > threshold)


def estimate_diameter(image: Any, *, smoothing_px: float = 1.0) -> float | None:
    """Typical nucleus diameter in pixels: area-weighted median equivalent diameter of the Otsu blobs.

    Blobs under 20 pixels (specks) do not vote, and each blob votes with its area, so
    a field of few large nuclei and much debris still measures the nuclei; clusters
    count as one blob, so crowded fields come out somewhat high. None when the plane
    has no blob.

    Examples
    --------
    >>> image = np.zeros((64, 64), np.float32)
    >>> for y, x in ((16, 16), (16, 48), (48, 32)):
    ...     image[y - 6:y + 6, x - 6:x + 6] = 1.0
    >>> round(estimate_diameter(image, smoothing_px=0), 1)  # 12 x 12 squares
    13.5
    """
    be = backend_of(image)
    _, mask = _smoothed_mask(be, image, smoothing_px, None, 1.0)
    blobs, _ = ndi.label(to_host(mask))
    areas = np.bincount(blobs.ravel())[1:]
    areas = np.sort(areas[areas >= _MIN_BLOB_AREA_PX])
    if not areas.size:
        return None
    # Area-weighted median: the blob holding the median foreground pixel. A plain median
    # lets many specks outvote few large nuclei (GOWT1 stem cells: 10 px instead of ~60).
    cumulative = np.cumsum(areas)
    typical = areas[np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(np.sqrt(4 * typical / np.pi))


# ---------------------------------------------------------------------------- nuclei
def _markers_and_surface(be: Backend, image: Any, mask: Any, diameter_px: float,
                         params: NucleiParams) -> tuple[np.ndarray, np.ndarray]:
    """Markers (int32, host) and the surface to flood (host) for the chosen declumping."""
    if params.declump == "intensity":
        surface = be.ndi.gaussian_filter(image.astype(be.xp.float32, copy=False),
                                         _INTENSITY_MARKER_SIGMA * diameter_px)
    else:
        inside = mask if params.valley_depth is None else mask & ~_valleys(be, image, mask, diameter_px, params)
        surface = be.ndi.gaussian_filter(be.ndi.distance_transform_edt(inside).astype(be.xp.float32),
                                         _DISTANCE_SMOOTHING_PX)
    surface, mask = to_host(surface), to_host(mask)
    components, _ = ndi.label(mask)
    min_distance = max(1, round(params.min_distance_fraction * diameter_px))
    peaks = peak_local_max(surface, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(surface.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    if params.h_fraction > 0 and mask.any():
        height = params.h_fraction * float(surface[mask].max() - surface[mask].min())
        markers[h_maxima_markers(surface, height, mask=mask) == 0] = 0
    return markers, -surface


def valley_curvature(image: Any, sigma: float) -> Any:
    """How strongly the plane curves up across a dark line, scale-normalised (x sigma^2).

    With ``l1 >= l2`` the Hessian eigenvalues of the plane smoothed by a Gaussian of
    ``sigma`` pixels (edges: nearest; central differences, as scikit-image's
    ``hessian_matrix`` with ``use_gaussian_derivatives=False``), this is
    ``(l1 - max(l2, 0)) * sigma**2``: ``l1`` across a line or at a saddle (the seam
    between two touching nuclei is both), near 0 in a round pit such as a dark
    nucleolus (both eigenvalues up) and negative on bright ridges and blobs. On the
    image's backend.

    Examples
    --------
    >>> plane = np.full((21, 21), 100.0, np.float32)
    >>> plane[:, 10] = 60.0  # a dark vertical line
    >>> curvature = valley_curvature(plane, 1.0)
    >>> bool(curvature[10, 10] > 0), bool(abs(curvature[10, 3]) < 1e-3)
    (True, True)
    """
    be = backend_of(image)
    xp = be.xp
    smooth = be.ndi.gaussian_filter(image.astype(xp.float32, copy=False), sigma, mode="nearest")
    d_row, d_col = xp.gradient(smooth)
    h_rr, h_rc = xp.gradient(d_row)
    h_cc = xp.gradient(d_col, axis=1)
    half_trace, radius = (h_rr + h_cc) / 2, xp.sqrt(((h_rr - h_cc) / 2) ** 2 + h_rc**2)
    larger, smaller = half_trace + radius, half_trace - radius
    return (larger - xp.maximum(smaller, 0)) * xp.float32(sigma**2)


def _valleys(be: Backend, image: Any, mask: Any, diameter_px: float, params: NucleiParams) -> Any:
    """Pixels on dark seams: :func:`valley_curvature` > ``valley_depth`` x the local brightness.

    The brightness is the plane smoothed at a quarter diameter, less its minimum within
    one diameter (the local background: every statistic is local, so that a plane cut
    into overlapping blocks finds the seams the whole plane does). On the image's backend.
    """
    assert params.valley_depth is not None  # the caller checks; narrows the type
    xp = be.xp
    plane = image.astype(xp.float32, copy=False)
    # local, not per-plane, statistics: a plane cut into blocks (segment_large) sees the same seams
    local = be.ndi.gaussian_filter(plane, _VALLEY_BRIGHTNESS_SIGMA * diameter_px)
    background = be.ndi.minimum_filter(local, size=2 * math.ceil(_VALLEY_BACKGROUND_REACH * diameter_px) + 1)
    brightness = local - background
    depth = params.valley_depth * xp.maximum(brightness, 1e-3)
    seams = (valley_curvature(plane, params.valley_sigma_px) > depth) & mask
    # A seam that closes on itself (round the rim of a dark nucleolus) separates nothing: drop those.
    enclosed = be.fill_holes(seams) & ~seams
    if bool(enclosed.any()):
        pieces, _ = be.ndi.label(seams, structure=xp.ones((3, 3), bool))
        loops = xp.unique(pieces[be.ndi.binary_dilation(enclosed, structure=xp.ones((3, 3), bool)) & seams])
        seams &= ~xp.isin(pieces, loops)
    return seams


def _label_percentile(values: np.ndarray, labels: np.ndarray, q: float) -> np.ndarray:
    """Per-label percentile ``q`` (lower interpolation); index 0 and empty labels are NaN."""
    inside = labels > 0
    ids, vals = labels[inside], values[inside]
    order = np.lexsort((vals, ids))
    counts = np.bincount(ids, minlength=int(labels.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full(counts.size, np.nan)
    present = counts > 0
    present[0] = False
    picks = starts[present] + np.floor(q / 100 * (counts[present] - 1)).astype(np.int64)
    out[present] = vals[order][picks]
    return out


def _refine_edges(smooth: np.ndarray, labels: np.ndarray, mask: np.ndarray, diameter_px: float,
                  params: NucleiParams) -> np.ndarray:
    """Move each object's edge to ``edge_level`` between the background and its bright level."""
    assert params.edge_level is not None  # the caller checks; narrows the type
    if not labels.any():
        return labels
    background = float(np.median(smooth[~mask])) if (~mask).any() else 0.0
    bright = _label_percentile(smooth, labels, params.edge_percentile)
    level = background + params.edge_level * (bright - background)
    level[0] = np.inf
    level[np.isnan(level)] = np.inf
    territory = expand_labels(labels, distance=max(1.0, _TERRITORY_GROWTH * diameter_px))
    return np.where(smooth > level[territory], territory, 0).astype(np.int32)


def _main_parts(labels: np.ndarray) -> np.ndarray:
    """Each object reduced to its largest 8-connected piece (refinement can leave crumbs)."""
    out = labels.copy()
    eight = np.ones((3, 3), bool)
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, n = ndi.label(labels[box] == index, structure=eight)
        if n > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            out[box][(pieces > 0) & (pieces != sizes.argmax())] = 0
    return out


def _size_filter(labels: np.ndarray, diameter_px: float, params: NucleiParams) -> np.ndarray:
    area = np.bincount(labels.ravel())
    equivalent = np.sqrt(4 * area / np.pi)
    low = (params.min_diameter_fraction or 0.0) * diameter_px
    high = (params.max_diameter_fraction or math.inf) * diameter_px
    drop = (equivalent < low) | (equivalent > high)
    drop[0] = False
    return np.where(drop[labels], 0, labels)


def _border_ids(labels: np.ndarray) -> np.ndarray:
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.unique(edges[edges > 0])


def segment_nuclei(image: Any, *, diameter_px: float | None = None, params: NucleiParams | None = None) -> Any:
    """Nuclei of one corrected plane: Otsu, watershed declumping, edge refinement, size filter.

    Parameters
    ----------
    image : (M, N) ndarray
        Nuclear stain, offset removed and flat-field corrected (:func:`project_planes`);
        NumPy or CuPy.
    diameter_px : float, optional
        Expected nucleus diameter in pixels (> 0); None to estimate it from the
        plane (:func:`estimate_diameter`).
    params : NucleiParams, optional
        The other settings; default ``NucleiParams()``.

    Returns
    -------
    labels : (M, N) ndarray of uint32
        0 for background, nuclei ``1..N``; on the input's backend.

    Raises
    ------
    ValueError
        ``image`` is not 2-D, or ``diameter_px`` is not a positive number.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :60]
    >>> two = ((yy - 20) ** 2 + (xx - 21) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 38) ** 2 < 100)
    >>> labels = segment_nuclei(two * 100.0 + 10, diameter_px=20)
    >>> int(labels.max()), labels.dtype.name  # two touching discs are split
    (2, 'uint32')
    """
    params = NucleiParams() if params is None else params
    be = backend_of(image)
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D plane (y, x), got shape {image.shape}")
    if diameter_px is None:
        diameter_px = estimate_diameter(image, smoothing_px=params.smoothing_px)
        if diameter_px is None:
            return be.xp.zeros(image.shape, be.xp.uint32)
    diameter_px = _positive("segment_nuclei", "diameter_px", diameter_px)
    smooth, mask = _smoothed_mask(be, image, params.smoothing_px, params.threshold, params.threshold_correction)
    if params.declump == "none":
        labels = ndi.label(to_host(mask))[0].astype(np.int32)
    else:
        markers, surface = _markers_and_surface(be, image, mask, diameter_px, params)
        labels = seeded_watershed(surface, markers, to_host(mask))
    min_area = int((params.min_diameter_fraction or 0.0) ** 2 * math.pi / 4 * diameter_px**2)
    labels = remove_small_labels(labels, min_area)
    if params.edge_level is not None:
        labels = _main_parts(_refine_edges(to_host(smooth), labels, to_host(mask), diameter_px, params))
    labels = _size_filter(labels, diameter_px, params)
    if params.fill_holes:
        labels = fill_label_holes(labels)
    if params.exclude_border:
        labels = np.where(np.isin(labels, _border_ids(labels)), 0, labels)
    return be.asarray(relabel_sequential(labels)[0].astype(np.uint32))


# ---------------------------------------------------------------------------- cells
def _nucleus_scale(nuclei: np.ndarray) -> float:
    """Median equivalent diameter of the nuclei (the length unit of 'propagation')."""
    areas = np.bincount(nuclei.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if areas.size else 1.0


def segment_cells(image: Any, nuclei: Any, *, params: CellParams | None = None) -> Any:
    """Cells grown from their nuclei by a seeded watershed on the cytoplasm plane.

    Parameters
    ----------
    image : (M, N) ndarray
        Cytoplasm stain, offset removed and flat-field corrected (:func:`project_planes`).
    nuclei : (M, N) ndarray of int
        Nucleus labels (the seeds); each cell keeps its nucleus's id.
    params : CellParams, optional
        Settings; default ``CellParams()``.

    Returns
    -------
    labels : (M, N) ndarray of uint32
        Cell ``k`` contains nucleus ``k``; 0 where no cell. On the input's backend.

    Raises
    ------
    ValueError
        Shapes differ or are not 2-D.

    Examples
    --------
    >>> cyto = np.zeros((20, 40), np.float32); cyto[4:16, 2:18] = 50; cyto[4:16, 24:38] = 50
    >>> nuclei = np.zeros((20, 40), np.uint32); nuclei[9:11, 9:11] = 7
    >>> cells = segment_cells(cyto, nuclei, params=CellParams(dilation_px=0))
    >>> int(cells[5, 3]), int(cells[5, 30])  # the second blob has no nucleus: no cell
    (7, 0)
    """
    params = CellParams() if params is None else params
    be = backend_of(image)
    if image.ndim != 2 or image.shape != nuclei.shape:
        raise ValueError(f"image and nuclei must be 2-D planes of one shape, got {image.shape} and {nuclei.shape}")
    seeds = to_host(nuclei).astype(np.int32)
    plane = image.astype(be.xp.float32, copy=False)
    _, mask = _smoothed_mask(be, plane, 0.0, params.threshold, params.threshold_correction)
    mask = to_host(mask) | (seeds > 0)
    mask = backend_of(mask).fill_holes(mask)
    landscape = plane
    if params.dilation_px > 1:
        landscape = be.ndi.grey_dilation(plane, footprint=be.asarray(disk(params.dilation_px // 2)))
    landscape = to_host(landscape)
    # Seeds only: foreground that no nucleus reaches stays 0 (no cell without a nucleus).
    cells = watershed(_cell_surface(landscape, seeds, mask, params), seeds, mask=mask).astype(np.int32)
    if params.fill_holes:
        cells = fill_label_holes(cells)
    return be.asarray(cells.astype(np.uint32))


def _cell_surface(landscape: np.ndarray, seeds: np.ndarray, mask: np.ndarray, params: CellParams) -> np.ndarray:
    if params.method == "gradient":
        return sobel(landscape)
    if params.method == "intensity":
        return -landscape
    distance = ndi.distance_transform_edt(seeds == 0) / _nucleus_scale(seeds)
    if params.method == "distance":
        return distance
    bright = float(np.percentile(landscape[mask], 90)) if mask.any() else 1.0
    return -landscape / max(bright, 1e-12) + params.distance_weight * distance
