"""From a network's per-pixel probabilities to instance labels, and the label clean-ups it shares.

A segmentation network (U-Net, ResUNet, DeepCell) predicts per pixel either three
classes, ``(background, interior, boundary)``, or one interior probability. The
boundary class is what separates touching objects: it is thin where they touch, so
the interior probability is split into one blob per object. Post-processing turns
that into labels in four steps:

1. **Foreground**: ``1 - p(background) > foreground_threshold`` (three classes) or
   ``p(interior) > foreground_threshold`` (one class). Holes are filled.
2. **Markers**: connected components of ``p(interior) > marker_threshold``; with
   ``h > 0``, the h-maxima of the (lightly smoothed) interior probability instead,
   so a blob with two bumps deeper than ``h`` gives two markers. Markers smaller
   than ``min_marker_area`` are dropped (noise).
3. **Watershed** from the markers, limited to the foreground, on the boundary
   probability (three classes: the ridge between two objects is where the boundary
   class peaks) or on the inverted interior probability (one class). Foreground
   components that hold no marker become objects of their own, so nothing the
   network called foreground is silently lost.
4. **Clean-up**: objects smaller than ``min_area`` are removed, holes inside each
   object filled, and ids renumbered ``1..N``.

Watershed has no GPU kernel (neither cupyx nor cuCIM has one): the probabilities
are moved to the host with :func:`~cellflow.ops.to_host`, and the labels are
returned on the input's backend.

The clean-ups :func:`fill_label_holes`, :func:`remove_small_labels`,
:func:`label_markers` and :func:`seeded_watershed` are shared with the classical
auto-labeller (:mod:`cellflow.ops.autolabel`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import reconstruction
from skimage.segmentation import relabel_sequential, watershed

from cellflow._config import check_keys
from cellflow.ops._backend import backend_of, to_host

__all__ = [
    "DictParams",
    "PostprocessParams",
    "fill_label_holes",
    "h_maxima_markers",
    "label_markers",
    "probabilities_to_labels",
    "remove_small_labels",
    "seeded_watershed",
    "shrink_labels",
]

_MARKER_SMOOTHING_PX = 1.0  # h-maxima are taken on a lightly smoothed probability (pixel noise)


def _fail(owner: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


def _fraction(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise _fail(owner, name, "a number in [0, 1]", value)
    return float(value)


def _positive(owner: str, name: str, value: Any, *, strict: bool = True) -> float:
    """``value`` as a finite float > 0 (``strict``) or >= 0, else a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (strict and value == 0):
        raise _fail(owner, name, f"a finite number {'>' if strict else '>='} 0", value)
    return float(value)


def _count(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise _fail(owner, name, "an integer >= 0", value)
    return int(value)


class DictParams:
    """Mixin of the flat frozen params dataclasses: the dict round trip YAML specs use."""

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict; :meth:`from_dict` inverts it."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class PostprocessParams(DictParams):
    """Settings of :func:`probabilities_to_labels`; validated here, trusted everywhere else.

    Parameters
    ----------
    foreground_threshold : float
        In [0, 1]. A pixel is foreground when ``1 - p(background)`` (three classes)
        or ``p(interior)`` (one class) exceeds it.
    marker_threshold : float
        In [0, 1]. Markers are the connected components of ``p(interior) > marker_threshold``
        (ignored when ``h > 0``). Should be >= ``foreground_threshold``.
    h : float
        In [0, 1]. When > 0, markers are the h-maxima of the interior probability:
        peaks that rise at least ``h`` above the saddle to any higher peak.
    min_marker_area : int
        Markers with fewer pixels are dropped.
    min_area : int
        Objects with fewer pixels are removed at the end.
    fill_holes : bool
        Fill holes inside each object.
    shrink_px : int
        Pixels removed from each object where it meets the background, at the end.
        Three-class targets (:func:`~cellflow.nn.targets.three_class_targets`) put the
        boundary band ``boundary_px`` pixels *outside* the true contour too, so the
        predicted foreground is that much too large; set ``shrink_px = boundary_px``
        (training does, and checkpoints carry it).

    Raises
    ------
    ValueError
        A value is out of range; the message names the field.

    Examples
    --------
    >>> params = PostprocessParams(marker_threshold=0.7, min_area=20)
    >>> PostprocessParams.from_dict(params.to_dict()) == params
    True
    """

    foreground_threshold: float = 0.5
    marker_threshold: float = 0.6
    h: float = 0.0
    min_marker_area: int = 4
    min_area: int = 16
    fill_holes: bool = True
    shrink_px: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        owner = type(self).__name__
        for name in ("foreground_threshold", "marker_threshold", "h"):
            set_(self, name, _fraction(owner, name, getattr(self, name)))
        for name in ("min_marker_area", "min_area", "shrink_px"):
            set_(self, name, _count(owner, name, getattr(self, name)))
        if not isinstance(self.fill_holes, bool):
            raise _fail(owner, "fill_holes", "True or False", self.fill_holes)
        if self.marker_threshold < self.foreground_threshold:
            raise _fail(owner, "marker_threshold", f">= foreground_threshold ({self.foreground_threshold})",
                        self.marker_threshold)


# ---------------------------------------------------------------------------- shared clean-ups
def remove_small_labels(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Labels with objects of fewer than ``min_area`` pixels set to 0 (ids kept).

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2]])
    >>> remove_small_labels(labels, 2).tolist()
    [[1, 1, 0, 0]]
    """
    if min_area <= 1 or labels.size == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


def shrink_labels(labels: np.ndarray, px: int) -> np.ndarray:
    """Objects with the ``px`` pixels nearest the background (chessboard distance) removed.

    Where two objects touch nothing is removed: only contact with the background
    counts. Pixels on the image border are not treated as next to background.

    Examples
    --------
    >>> labels = np.zeros((7, 9), np.int32); labels[1:6, 1:4] = 1; labels[1:6, 4:8] = 2
    >>> shrink_labels(labels, 1)[3].tolist()
    [0, 0, 1, 1, 2, 2, 2, 0, 0]
    """
    if px <= 0 or not labels.any():
        return labels
    distance = ndi.distance_transform_cdt(labels != 0, metric="chessboard")
    return np.where(distance > px, labels, 0).astype(labels.dtype, copy=False)


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every object with its own id (background enclosed by one object).

    Holes enclosed by two or more objects together are left as they are.

    Examples
    --------
    >>> ring = np.ones((5, 5), np.int32); ring[2, 2] = 0
    >>> int(fill_label_holes(ring)[2, 2])
    1
    """
    out = labels.copy()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        crop = out[padded]
        filled = ndi.binary_fill_holes(labels[padded] == index)
        crop[filled & (crop == 0)] = index
    return out


def label_markers(seeds: np.ndarray, *, min_area: int = 0) -> np.ndarray:
    """Connected components (8-connected) of a boolean seed mask, small ones dropped, ids 1..N."""
    markers, _ = ndi.label(seeds, structure=np.ones((3, 3), bool))
    markers = remove_small_labels(markers, min_area)
    return relabel_sequential(markers)[0].astype(np.int32)


def h_maxima_markers(surface: np.ndarray, h: float, *, mask: np.ndarray | None = None) -> np.ndarray:
    """Markers at the h-maxima of ``surface``: one per peak rising ``h`` above its saddle.

    The h-maxima transform reconstructs ``surface - h`` under ``surface`` (by
    dilation); the regional maxima of the result are the peaks of ``surface`` whose
    dynamic is at least ``h``. Shallow bumps (texture, noise, an elongated object's
    ridge) merge into their neighbour's peak instead of giving a marker of their own.

    Parameters
    ----------
    surface : (M, N) ndarray of float
        E.g. a distance transform or a probability.
    h : float
        Minimum dynamic (height above the saddle), > 0.
    mask : (M, N) ndarray of bool, optional
        Markers are kept only inside it.

    Returns
    -------
    markers : (M, N) ndarray of int32
        One id per h-maximum region (8-connected), 0 elsewhere.

    Examples
    --------
    >>> line = np.array([[0, 3, 2.5, 3, 0, 5, 0]], float)
    >>> h_maxima_markers(line, 1.0).tolist()  # the 0.5-deep dip does not split the first peak
    [[0, 1, 1, 1, 0, 2, 0]]
    """
    surface = np.asarray(surface, dtype=np.float64)
    floor = surface.min() if surface.size else 0.0
    shifted = surface - floor  # reconstruction needs the seed <= the mask everywhere
    hmax = reconstruction(np.maximum(shifted - h, 0.0), shifted, method="dilation")
    # Regional maxima of the reconstruction: where lowering it a little changes nothing around.
    step = 1e-6 * max(float(h), 1e-12)
    peaks = (hmax - reconstruction(hmax - step, hmax, method="dilation")) > step / 2
    if mask is not None:
        peaks &= mask
    return label_markers(peaks)


def seeded_watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray, *,
                     compactness: float = 0.0) -> np.ndarray:
    """Watershed of ``surface`` from ``markers`` inside ``mask``; marker-free components kept.

    Components of ``mask`` that no marker reaches become objects of their own
    (numbered after the markers), so the foreground is never silently dropped.

    Returns
    -------
    labels : (M, N) ndarray of int32
    """
    labels = watershed(surface, markers, mask=mask, compactness=compactness).astype(np.int32)
    orphans = mask & (labels == 0)
    if orphans.any():
        extra, _ = ndi.label(orphans, structure=np.ones((3, 3), bool))
        labels = np.where(orphans, extra + labels.max(), labels).astype(np.int32)
    return labels


# ---------------------------------------------------------------------------- probabilities -> labels
def _split_classes(probabilities: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(interior, boundary or None, foreground score) as float32 host arrays."""
    probabilities = to_host(probabilities)
    if probabilities.dtype.kind not in "fiub":
        raise TypeError(f"probabilities must be a real array, got dtype {probabilities.dtype}")
    array = probabilities.astype(np.float32, copy=False)
    if array.ndim == 2:
        return array, None, array
    if array.ndim == 3 and array.shape[0] == 3:
        return array[1], array[2], 1.0 - array[0]
    if array.ndim == 3 and array.shape[0] == 2:
        return array[1], None, array[1]
    raise ValueError(
        "probabilities must be (y, x) interior probabilities, (2, y, x) background/interior or "
        f"(3, y, x) background/interior/boundary, got shape {probabilities.shape}"
    )


def probabilities_to_labels(probabilities: Any, params: PostprocessParams | None = None) -> Any:
    """Instance labels from a network's class probabilities (see the module docstring).

    Parameters
    ----------
    probabilities : (3, M, N), (2, M, N) or (M, N) ndarray
        ``(background, interior, boundary)``, ``(background, interior)`` or the
        interior probability alone, in [0, 1]; NumPy or CuPy.
    params : PostprocessParams, optional
        Thresholds and sizes; default :class:`PostprocessParams()`.

    Returns
    -------
    labels : (M, N) ndarray of uint32
        0 for background, objects ``1..N``; on the input's backend.

    Raises
    ------
    ValueError
        ``probabilities`` has an unsupported shape.
    TypeError
        ``probabilities`` is not a real array.

    Examples
    --------
    >>> p = np.zeros((3, 5, 10), np.float32); p[0] = 1
    >>> for x0 in (0, 5):  # two touching 5 x 5 objects: a boundary ring around a 3 x 3 interior
    ...     p[:, :, x0:x0 + 5] = np.array([0, 0, 1])[:, None, None]
    ...     p[:, 1:4, x0 + 1:x0 + 4] = np.array([0, 1, 0])[:, None, None]
    >>> probabilities_to_labels(p, PostprocessParams(min_area=1))[2].tolist()
    [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    """
    params = PostprocessParams() if params is None else params
    be = backend_of(probabilities)
    interior, boundary, foreground_score = _split_classes(probabilities)
    foreground = foreground_score > params.foreground_threshold
    if params.fill_holes:
        foreground = backend_of(foreground).fill_holes(foreground)
    if params.h > 0:
        smooth = ndi.gaussian_filter(interior, _MARKER_SMOOTHING_PX)
        markers = h_maxima_markers(smooth, params.h, mask=foreground & (interior > params.foreground_threshold))
        markers = remove_small_labels(markers, params.min_marker_area)
    else:
        markers = label_markers(interior > params.marker_threshold, min_area=params.min_marker_area)
    markers[~foreground] = 0
    surface = boundary if boundary is not None else -interior
    labels = seeded_watershed(surface, markers, foreground)
    if params.shrink_px:
        labels = shrink_labels(labels, params.shrink_px)
    labels = remove_small_labels(labels, params.min_area)
    if params.fill_holes:
        labels = fill_label_holes(labels)
    labels = relabel_sequential(labels)[0].astype(np.uint32)
    return be.asarray(labels)
