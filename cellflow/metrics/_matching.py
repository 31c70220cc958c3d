"""Object matching between a true and a predicted label image, by intersection over union.

Everything here comes from one joint histogram of label pairs: each pixel
contributes to the cell (its true label, its predicted label), background (0)
included. The histogram's margins are the object areas, its cells off the
background row and column are the intersections, and union = area_true +
area_pred - intersection. No loop over objects: the cost is a few passes over the
pixels (``np.bincount`` when the label ids are small, ``np.unique`` when they are
not) plus work proportional to the number of overlapping pairs.

Why matching at IoU > t, t >= 0.5, is one-to-one (so there is no assignment
problem). Let a true object A overlap two different predictions P and Q with
IoU(A, P) > 1/2 and IoU(A, Q) > 1/2. Since |A ∪ P| >= |A|,
|A ∩ P| = IoU(A, P) |A ∪ P| > |A| / 2, and likewise |A ∩ Q| > |A| / 2. A pixel
carries one predicted label, so A ∩ P and A ∩ Q are disjoint subsets of A and
|A| >= |A ∩ P| + |A ∩ Q| > |A|, a contradiction. The same argument with the roles
swapped shows that a prediction matches at most one true object. Hence the pairs
with IoU > t are already a matching, and TP(t) is simply their number.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Overlaps", "check_labels", "count_matches", "f1_score", "iou_matrix", "overlaps"]

# np.bincount over ids up to this many times the number of values (plus a floor) is
# cheaper than sorting them with np.unique; above it the dense table would waste memory.
_DENSE_FACTOR = 4
_DENSE_FLOOR = 1 << 16


class Overlaps(NamedTuple):
    """The non-background content of the joint label histogram of one field.

    ``truth_ids`` and ``pred_ids`` are sorted; ``pair_truth`` and ``pair_pred`` index
    into them and, with ``intersection``, list every overlapping pair once.
    """

    truth_ids: np.ndarray  # (T,) label ids of the true objects
    truth_area: np.ndarray  # (T,) int64 pixels per true object
    pred_ids: np.ndarray  # (P,)
    pred_area: np.ndarray  # (P,)
    pair_truth: np.ndarray  # (K,) intp, position in truth_ids
    pair_pred: np.ndarray  # (K,) intp, position in pred_ids
    intersection: np.ndarray  # (K,) int64 pixels shared by the pair

    @property
    def union(self) -> np.ndarray:
        """(K,) int64 pixels in either object of each pair."""
        return self.truth_area[self.pair_truth] + self.pred_area[self.pair_pred] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """(K,) float64 intersection over union of each pair, in (0, 1]."""
        return self.intersection / self.union


def check_labels(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of label images and return them as arrays.

    Raises
    ------
    ValueError
        The shapes differ, a dtype is not an integer type, or a label is negative.
    """
    arrays = []
    for name, labels in (("truth", truth), ("pred", pred)):
        array = np.asarray(labels)
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be an integer label image (0 = background), got dtype {array.dtype}; "
                "round or cast it to an unsigned integer type first"
            )
        if array.dtype.kind == "i" and array.size and int(array.min()) < 0:
            raise ValueError(f"{name} must hold labels >= 0 (0 = background), got minimum {int(array.min())}")
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"truth and pred must have the same shape, got truth {arrays[0].shape} and pred {arrays[1].shape}"
        )
    return arrays[0], arrays[1]


def _distinct(values: np.ndarray, *, inverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sorted distinct values of a flat non-negative integer array, their counts, and
    (if ``inverse``) each element's position among them."""
    top = int(values.max()) if values.size else 0
    if top <= _DENSE_FACTOR * values.size + _DENSE_FLOOR:
        small = values.astype(np.intp, copy=False)
        counts = np.bincount(small, minlength=1)
        ids = np.flatnonzero(counts)
        position = None
        if inverse:
            lookup = np.zeros(top + 1, dtype=np.intp)
            lookup[ids] = np.arange(ids.size)
            position = lookup[small]
        return ids.astype(values.dtype), counts[ids].astype(np.int64), position
    if not inverse:
        ids, counts = np.unique(values, return_counts=True)
        return ids, counts.astype(np.int64), None
    # Large ids: sort, then find each value among the few distinct ones; about twice as
    # fast as np.unique(return_inverse=True), which argsorts every pixel.
    ids = np.unique(values)
    position = np.searchsorted(ids, values).astype(np.intp, copy=False)
    return ids, np.bincount(position, minlength=ids.size).astype(np.int64), position


def overlaps(truth: Any, pred: Any) -> Overlaps:
    """Objects, areas and pairwise intersections of two label images.

    Parameters
    ----------
    truth, pred : (M, N) ndarray of int
        Label images of one field (any shape, the same for both; any integer dtype);
        0 is background. Ids need not be contiguous and an id may cover several
        disconnected blobs: it is one object.

    Returns
    -------
    Overlaps
        Sorted object ids and areas of each side, and every overlapping pair.

    Raises
    ------
    ValueError
        As :func:`check_labels`.
    """
    truth, pred = check_labels(truth, pred)
    t_ids, t_count, t_pos = _distinct(truth.ravel(), inverse=True)
    p_ids, p_count, p_pos = _distinct(pred.ravel(), inverse=True)
    assert t_pos is not None and p_pos is not None  # inverse=True; narrows the type for mypy
    n_pred_all = p_ids.size
    codes, pixels, _ = _distinct(t_pos * n_pred_all + p_pos, inverse=False)
    rows, cols = np.divmod(codes.astype(np.intp, copy=False), max(n_pred_all, 1))
    # Position 0 holds the background when it is present; objects start after it.
    t_skip = int(t_ids.size > 0 and t_ids[0] == 0)
    p_skip = int(p_ids.size > 0 and p_ids[0] == 0)
    both = (rows >= t_skip) & (cols >= p_skip)
    return Overlaps(
        truth_ids=t_ids[t_skip:], truth_area=t_count[t_skip:],
        pred_ids=p_ids[p_skip:], pred_area=p_count[p_skip:],
        pair_truth=(rows[both] - t_skip).astype(np.intp), pair_pred=(cols[both] - p_skip).astype(np.intp),
        intersection=pixels[both],
    )


def iou_matrix(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection over union of every true object with every predicted object.

    Parameters
    ----------
    truth, pred : (M, N) ndarray of int
        Label images of one field, same shape, any integer dtype; 0 is background.

    Returns
    -------
    ious : (T, P) ndarray of float64
        ``ious[i, j]`` is the IoU of true object ``truth_ids[i]`` and predicted object
        ``pred_ids[j]``; 0 where they do not touch.
    truth_ids : (T,) ndarray
        Sorted ids of the true objects (background excluded), dtype of ``truth``.
    pred_ids : (P,) ndarray
        Sorted ids of the predicted objects, dtype of ``pred``.

    Raises
    ------
    ValueError
        Shapes differ, a dtype is not integer, or a label is negative.

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 0], [1, 1, 0, 7]], dtype=np.uint16)
    >>> pred = np.array([[5, 5, 5, 0], [5, 5, 5, 0]], dtype=np.uint16)
    >>> ious, truth_ids, pred_ids = iou_matrix(truth, pred)
    >>> ious.tolist(), truth_ids.tolist(), pred_ids.tolist()
    ([[0.6666666666666666], [0.0]], [1, 7], [5])
    """
    found = overlaps(truth, pred)
    ious = np.zeros((found.truth_ids.size, found.pred_ids.size), dtype=np.float64)
    ious[found.pair_truth, found.pair_pred] = found.iou
    return ious, found.truth_ids, found.pred_ids


def count_matches(found: Overlaps, thresholds: np.ndarray) -> np.ndarray:
    """True positives at each threshold: the number of pairs with IoU > t (strictly).

    Valid for t >= 0.5 only, where such pairs form a one-to-one matching (module
    docstring); the caller checks the thresholds.

    Returns
    -------
    tp : (len(thresholds),) ndarray of int64
    """
    iou = np.sort(found.iou)
    return (iou.size - np.searchsorted(iou, thresholds, side="right")).astype(np.int64)


def f1_score(tp: np.ndarray, n_true: int, n_pred: int) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) with FP = n_pred - TP and FN = n_true - TP.

    Two empty images agree perfectly, so F1 = 1 when there is no object on either
    side (0 / 0 otherwise undefined); when only one side is empty F1 = 0.
    """
    tp = np.asarray(tp, dtype=np.int64)
    if n_true == 0 and n_pred == 0:
        return np.ones(tp.shape, dtype=np.float64)
    return 2 * tp / (n_true + n_pred)  # 2TP + FP + FN = n_true + n_pred
