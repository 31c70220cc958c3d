"""Training targets from instance labels: the inverse of :mod:`cellflow.ops.postprocess`.

A segmentation network is trained on per-pixel classes and a per-pixel weight map
derived from a ground-truth label image. Two schemes are built here; both are
NumPy kernels on one ``(M, N)`` label image (no dask, no torch).

**Three classes** (Caicedo et al. 2019), :func:`three_class_targets`:
background ``0``, interior ``1``, boundary ``2``.

- The *contour* of the objects is the set of object pixels with a 4-neighbour of a
  different value (background or another id). The image edge is **not** a contour:
  an object cut by the field (or a crop) goes on beyond it, so it gets no boundary
  there; this also keeps targets consistent under mirror-extended crops.
- The *boundary* is every pixel within Chebyshev distance ``boundary_px`` of the
  contour, i.e. the contour dilated by a ``(2 boundary_px + 1)`` square: the contour
  plus ``boundary_px`` pixels inwards and ``boundary_px`` outwards (into background
  or the neighbouring object). With the default ``boundary_px=1`` an isolated
  ``s x s`` square has a boundary of ``(s + 2)**2 - (s - 4)**2 = 12 s - 12`` pixels
  and an interior of ``(s - 4)**2``. Between two touching objects the band is
  ``2 (boundary_px + 1)`` = 4 px wide, so their interiors never touch.
- Interior = object pixels not in the boundary; background = the rest.
- Per-pixel weights are ``class_weights[target]``, default ``(1, 1, 10)``.

**Two classes** (Sadanandan et al. 2017), :func:`two_class_targets`:
background ``0``, interior ``1``. Object pixels that have an 8-neighbour of a
*different object* become background, so touching objects are separated by a
2-px gap (1 px taken from each), and no two objects' remaining pixels are
8-connected (the connectivity :func:`~cellflow.ops.postprocess.label_markers` uses).
The weights balance the two classes and then favour the foreground, see
:func:`balanced_class_weights`.

In both schemes an *object* is one id: ids need not be contiguous, and an id may
cover several blobs. Objects with fewer than ``min_area`` pixels in total are
dropped (become background) before anything else.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

from cellflow.ops.postprocess import remove_small_labels

__all__ = [
    "DEFAULT_CLASS_WEIGHTS",
    "THREE_CLASSES",
    "TWO_CLASSES",
    "balanced_class_weights",
    "class_weight_vector",
    "ignore_suspect_objects",
    "suspect_objects",
    "three_class_targets",
    "two_class_targets",
]

THREE_CLASSES: tuple[str, ...] = ("background", "interior", "boundary")
TWO_CLASSES: tuple[str, ...] = ("background", "interior")
# Caicedo et al. 2019 weight the rare boundary class 10x.
DEFAULT_CLASS_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 10.0)

_FOUR_NEIGHBOURS = ndi.generate_binary_structure(2, 1)
_EIGHT_NEIGHBOURS = ndi.generate_binary_structure(2, 2)


# ---------------------------------------------------------------------------- validation
def _check_labels(labels: Any) -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"labels must be a 2-D NumPy array of integers, got {type(labels).__name__}")
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be a 2-D array of integers, got shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 is background), got a minimum of {labels.min()}")
    return labels


def _check_count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def class_weight_vector(config: Mapping[str, float] | Sequence[float] | None,
                        classes: Sequence[str] = THREE_CLASSES) -> np.ndarray:
    """One weight per class, from a spec's mapping by class name or a sequence in class order.

    Parameters
    ----------
    config : mapping of str to float, sequence of float or None
        ``{"boundary": 10}`` (classes not named get 1), ``(1, 1, 10)`` (one per
        class, in the order of ``classes``), or None for all ones.
    classes : sequence of str
        Class names in class-index order, e.g. :data:`THREE_CLASSES`.

    Returns
    -------
    weights : (len(classes),) ndarray of float32

    Raises
    ------
    ValueError
        An unknown class name, a sequence of the wrong length, a weight that is not
        a finite number >= 0, or weights that are all 0.

    Examples
    --------
    >>> class_weight_vector({"boundary": 10}).tolist()
    [1.0, 1.0, 10.0]
    >>> class_weight_vector((2, 1), TWO_CLASSES).tolist()
    [2.0, 1.0]
    """
    classes = tuple(classes)
    if config is None:
        values = [1.0] * len(classes)
    elif isinstance(config, Mapping):
        unknown = sorted(set(config) - set(classes))
        if unknown:
            raise ValueError(f"class_weights got unknown classes {unknown!r}; expected some of {list(classes)!r}")
        values = [_check_weight(f"class_weights[{name!r}]", config.get(name, 1.0)) for name in classes]
    elif isinstance(config, Sequence) and not isinstance(config, str):
        if len(config) != len(classes):
            raise ValueError(
                f"class_weights must hold one weight per class {list(classes)!r}, got {list(config)!r}"
            )
        values = [_check_weight(f"class_weights[{i}]", v) for i, v in enumerate(config)]
    else:
        raise ValueError(f"class_weights must be a mapping, a sequence or None, got {config!r}")
    if not any(values):
        raise ValueError(f"class_weights must not all be 0, got {values!r}")
    return np.asarray(values, dtype=np.float32)


# ---------------------------------------------------------------------------- kernels
def _kept_objects(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Ids renumbered 1..K (same partition; any integer dtype, any id size), small objects set to 0."""
    compact = relabel_sequential(labels)[0].astype(np.int64, copy=False)
    return remove_small_labels(compact, min_area)


def _differs_from_neighbour(labels: np.ndarray, structure: np.ndarray, *, ignore_zero: bool) -> np.ndarray:
    """Pixels with a neighbour (in ``structure``) of another value; the image edge is no neighbour.

    With ``ignore_zero``, background neighbours do not count (only other objects do).
    Grey dilation and erosion use ``mode="nearest"``, so pixels beyond the edge copy
    the edge and never differ.
    """
    if ignore_zero:
        # Background as -1 for the max and as max + 1 for the min: it never wins either.
        # (Not the dtype's extreme: SciPy's grey morphology overflows on it.)
        as_signed = labels.astype(np.int64, copy=False)
        above = int(as_signed.max(initial=0)) + 1
        high = ndi.grey_dilation(np.where(labels == 0, -1, as_signed), footprint=structure, mode="nearest")
        low = ndi.grey_erosion(np.where(labels == 0, above, as_signed), footprint=structure, mode="nearest")
        return (labels > 0) & ((high != as_signed) | (low != as_signed))
    high = ndi.grey_dilation(labels, footprint=structure, mode="nearest")
    low = ndi.grey_erosion(labels, footprint=structure, mode="nearest")
    return (high != labels) | (low != labels)


def three_class_targets(
    labels: np.ndarray,
    *,
    min_area: int = 25,
    boundary_px: int = 1,
    class_weights: Mapping[str, float] | Sequence[float] = DEFAULT_CLASS_WEIGHTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Background / interior / boundary classes and their weight map (Caicedo et al. 2019).

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, 0 for background; ids need not be contiguous.
    min_area : int
        Objects (ids) with fewer pixels become background. Default 25.
    boundary_px : int
        The boundary is the contour plus ``boundary_px`` pixels in and out (see the
        module docstring). Default 1, a 3-px band around an isolated object.
    class_weights : mapping or sequence of float
        Per-class weights for background, interior, boundary (see
        :func:`class_weight_vector`). Default ``(1, 1, 10)``.

    Returns
    -------
    target : (M, N) ndarray of uint8
        0 background, 1 interior, 2 boundary.
    weights : (M, N) ndarray of float32
        ``class_weights[target]``.

    Raises
    ------
    ValueError
        ``labels`` is not a 2-D array of non-negative integers, or an option is out
        of range; the message names it.

    Examples
    --------
    >>> labels = np.zeros((9, 9), np.int32); labels[1:8, 1:8] = 4
    >>> target, weights = three_class_targets(labels, min_area=1)
    >>> print(target)
    [[2 2 2 2 2 2 2 2 2]
     [2 2 2 2 2 2 2 2 2]
     [2 2 2 2 2 2 2 2 2]
     [2 2 2 1 1 1 2 2 2]
     [2 2 2 1 1 1 2 2 2]
     [2 2 2 1 1 1 2 2 2]
     [2 2 2 2 2 2 2 2 2]
     [2 2 2 2 2 2 2 2 2]
     [2 2 2 2 2 2 2 2 2]]
    >>> float(weights[0, 0]), float(weights[4, 4])
    (10.0, 1.0)
    """
    labels = _check_labels(labels)
    min_area = _check_count("min_area", min_area, minimum=0)
    boundary_px = _check_count("boundary_px", boundary_px, minimum=0)
    weight_of = class_weight_vector(class_weights, THREE_CLASSES)
    kept = _kept_objects(labels, min_area)
    contour = _differs_from_neighbour(kept, _FOUR_NEIGHBOURS, ignore_zero=False) & (kept > 0)
    boundary = contour
    if boundary_px > 0 and contour.any():
        boundary = ndi.binary_dilation(contour, structure=_EIGHT_NEIGHBOURS, iterations=boundary_px)
    target = np.where(boundary, np.uint8(2), (kept > 0).astype(np.uint8))
    return target, weight_of[target]


def balanced_class_weights(foreground: np.ndarray, *, foreground_weight: float = 3.0) -> np.ndarray:
    """Weights that balance background and foreground, then favour the foreground.

    With ``n`` pixels, ``n_fg`` foreground and ``n_bg`` background ones, and
    ``f = foreground_weight``:

    1. balance: ``w_bg = n / (2 n_bg)``, ``w_fg = n / (2 n_fg)``, so each class
       totals ``n / 2``;
    2. favour: multiply ``w_fg`` by ``f`` (foreground total / background total = f);
    3. normalise by ``2 / (1 + f)`` so the weights sum to ``n`` (mean weight 1):

    ``w_bg = n / ((1 + f) n_bg)``, ``w_fg = f n / ((1 + f) n_fg)``.

    When one class is absent, every pixel weighs 1.

    Parameters
    ----------
    foreground : (M, N) ndarray of bool
    foreground_weight : float
        ``f`` above, > 0. Default 3 (Sadanandan et al. 2017).

    Returns
    -------
    weights : (M, N) ndarray of float32

    Examples
    --------
    >>> foreground = np.zeros((4, 4), bool); foreground[:2, :2] = True
    >>> weights = balanced_class_weights(foreground)
    >>> float(weights[0, 0]), round(float(weights[3, 3]), 6), float(weights.sum())
    (3.0, 0.333333, 16.0)
    """
    if isinstance(foreground_weight, bool) or not isinstance(foreground_weight, numbers.Real) \
            or not math.isfinite(foreground_weight) or foreground_weight <= 0:
        raise ValueError(f"foreground_weight must be a finite number > 0, got {foreground_weight!r}")
    n = foreground.size
    n_fg = int(np.count_nonzero(foreground))
    n_bg = n - n_fg
    if n_fg == 0 or n_bg == 0:
        return np.ones(foreground.shape, np.float32)
    f = float(foreground_weight)
    w_bg = n / ((1.0 + f) * n_bg)
    w_fg = f * n / ((1.0 + f) * n_fg)
    return np.where(foreground, w_fg, w_bg).astype(np.float32)


def two_class_targets(
    labels: np.ndarray,
    *,
    foreground_weight: float = 3.0,
    min_area: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Background / interior classes with touching objects split by a gap (Sadanandan et al. 2017).

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, 0 for background; ids need not be contiguous.
    foreground_weight : float
        Extra weight of the foreground after balancing, > 0; see
        :func:`balanced_class_weights` for the formula. Default 3.
    min_area : int
        Objects (ids) with fewer pixels become background. Default 25.

    Returns
    -------
    target : (M, N) ndarray of uint8
        0 background (including the gaps between touching objects), 1 interior.
    weights : (M, N) ndarray of float32
        Sum to ``M * N``; foreground total = ``foreground_weight`` x background total.

    Raises
    ------
    ValueError
        ``labels`` is not a 2-D array of non-negative integers, or an option is out
        of range; the message names it.

    Examples
    --------
    >>> labels = np.zeros((3, 6), np.int32); labels[:, :3] = 1; labels[:, 3:] = 2
    >>> print(two_class_targets(labels, min_area=1)[0])
    [[1 1 0 0 1 1]
     [1 1 0 0 1 1]
     [1 1 0 0 1 1]]
    """
    labels = _check_labels(labels)
    min_area = _check_count("min_area", min_area, minimum=0)
    kept = _kept_objects(labels, min_area)
    touching = _differs_from_neighbour(kept, _EIGHT_NEIGHBOURS, ignore_zero=True)
    foreground = (kept > 0) & ~touching
    return foreground.astype(np.uint8), balanced_class_weights(foreground, foreground_weight=foreground_weight)


def suspect_objects(labels: np.ndarray, *, area_ratio: float | None = None,
                    solidity: float | None = None) -> np.ndarray:
    """Ids of automatically labelled objects that are probably wrong: merges, mostly.

    Classical auto labels (Otsu + watershed) err systematically where touching nuclei are
    merged into one object: it is larger than its neighbours and not convex. Training on
    such objects teaches the network to merge too.

    Parameters
    ----------
    labels : (M, N) ndarray of int
    area_ratio : float, optional
        Objects larger than ``area_ratio`` times the median object area are suspect.
    solidity : float, optional
        Objects with solidity (area / convex hull area) below it are suspect.

    Returns
    -------
    ids : (K,) ndarray of int

    Examples
    --------
    >>> labels = np.zeros((20, 40), np.int32)
    >>> labels[2:6, 2:6] = 1; labels[2:6, 10:14] = 2; labels[10:18, 10:34] = 3
    >>> suspect_objects(labels, area_ratio=2.0).tolist()
    [3]
    """
    from skimage.measure import regionprops

    props = regionprops(np.asarray(labels))
    if not props:
        return np.zeros(0, np.int64)
    areas = np.array([p.area for p in props], float)
    bad = np.zeros(len(props), bool)
    if area_ratio is not None:
        bad |= areas > area_ratio * np.median(areas)
    if solidity is not None:
        bad |= np.array([p.solidity for p in props]) < solidity
    return np.array([p.label for p, b in zip(props, bad) if b], np.int64)


def ignore_suspect_objects(weights: np.ndarray, labels: np.ndarray, ids: np.ndarray, *,
                           margin_px: int = 2) -> np.ndarray:
    """``weights`` with the suspect objects (and ``margin_px`` around them) set to 0: left out of the loss.

    Examples
    --------
    >>> labels = np.zeros((1, 9), np.int32); labels[0, 4] = 7
    >>> ignore_suspect_objects(np.ones((1, 9), np.float32), labels, np.array([7]), margin_px=1).tolist()
    [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]
    """
    if ids.size == 0:
        return weights
    mask = np.isin(labels, ids)
    if margin_px > 0:
        mask = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=margin_px)
    out = weights.copy()
    out[mask] = 0
    return out
