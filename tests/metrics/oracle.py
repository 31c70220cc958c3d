"""An independent brute-force scorer and a generator of awkward label-image pairs.

The oracle shares no code with :mod:`cellflow.metrics`: plain Python loops over every
(true id, predicted id) pair, boolean masks for intersections and unions, exact
fractions for IoU and every comparison, matches taken straight from the definition
(IoU > t) with no appeal to the one-to-one argument (it is checked instead), and its
own counting of merges, splits, misses per area bin and extras.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import ndimage as ndi

INF = float("inf")


@dataclass
class Expected:
    truth_ids: list[int]
    pred_ids: list[int]
    iou: dict[tuple[int, int], Fraction]
    tp: list[int]
    fp: list[int]
    fn: list[int]
    f1: list[float]
    missed_by_area: list[int]
    true_by_area: list[int]
    extra: int
    merges: int
    splits: int
    jaccard: float
    dice: float
    fscores: list[float]


def brute_force(truth, pred, thresholds, area_bins, error_threshold, overlap_threshold) -> Expected:
    """Score one pair the slow, obvious way. Thresholds are read as exact decimals."""
    truth_ids = sorted({int(v) for v in truth.ravel().tolist()} - {0})
    pred_ids = sorted({int(v) for v in pred.ravel().tolist()} - {0})
    masks_t = {a: truth == a for a in truth_ids}
    masks_p = {b: pred == b for b in pred_ids}
    area_t = {a: int(m.sum()) for a, m in masks_t.items()}
    iou: dict[tuple[int, int], Fraction] = {}
    dice: dict[tuple[int, int], Fraction] = {}
    for a in truth_ids:
        for b in pred_ids:
            inter = int(np.logical_and(masks_t[a], masks_p[b]).sum())
            union = int(np.logical_or(masks_t[a], masks_p[b]).sum())
            if inter:
                iou[a, b] = Fraction(inter, union)
                dice[a, b] = Fraction(2 * inter, area_t[a] + int(masks_p[b].sum()))

    def matches(t):
        cut = Fraction(str(t))
        pairs = [(a, b) for (a, b), v in iou.items() if v > cut]
        # the definition alone; check that it is a matching rather than assume it
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})
        return pairs

    tp, fp, fn, f1 = [], [], [], []
    for t in thresholds:
        pairs = matches(t)
        n_tp = len(pairs)
        n_fp = len([b for b in pred_ids if all(b != q for _, q in pairs)])
        n_fn = len([a for a in truth_ids if all(a != p for p, _ in pairs)])
        tp.append(n_tp), fp.append(n_fp), fn.append(n_fn)
        f1.append(1.0 if n_tp + n_fp + n_fn == 0 else float(Fraction(2 * n_tp, 2 * n_tp + n_fp + n_fn)))

    at_error = matches(error_threshold)
    matched_t = [a for a, _ in at_error]
    matched_p = [b for _, b in at_error]
    n_bins = len(area_bins) - 1
    missed_by_area = [0] * n_bins
    true_by_area = [0] * n_bins
    for a in truth_ids:
        for k in range(n_bins):
            if area_bins[k] <= area_t[a] < area_bins[k + 1]:
                true_by_area[k] += 1
                if a not in matched_t:
                    missed_by_area[k] += 1
    extra = len([b for b in pred_ids if b not in matched_p])

    cut = Fraction(str(overlap_threshold))
    merges = sum(1 for b in pred_ids if len([a for a in truth_ids if iou.get((a, b), 0) > cut]) > 1)
    splits = sum(1 for a in truth_ids if len([b for b in pred_ids if iou.get((a, b), 0) > cut]) > 1)

    fg_t, fg_p = truth > 0, pred > 0
    both, either = int((fg_t & fg_p).sum()), int((fg_t | fg_p).sum())
    jaccard = 1.0 if either == 0 else float(Fraction(both, either))
    total = int(fg_t.sum()) + int(fg_p.sum())
    dice_px = 1.0 if total == 0 else float(Fraction(2 * both, total))
    fscores = [float(max([dice[a, b] for b in pred_ids if (a, b) in dice], default=Fraction(0))) for a in truth_ids]
    return Expected(truth_ids, pred_ids, iou, tp, fp, fn, f1, missed_by_area, true_by_area, extra,
                    merges, splits, jaccard, dice_px, fscores)


# ---------------------------------------------------------------------------------- cases
_DTYPES = (np.uint16, np.uint32, np.int64, np.uint64)
_BIG_IDS = {np.uint16: (65535, 40000), np.uint32: (2**31 + 5, 2**32 - 1),
            np.int64: (2**31 + 5, 2**62 + 11), np.uint64: (2**31 + 5, 2**64 - 2)}


def _ids(rng, n, dtype):
    """n distinct, non-contiguous ids, sometimes huge."""
    pool = sorted(int(v) for v in rng.choice(np.arange(1, 60), size=n, replace=False))
    if rng.random() < 0.5 and n:
        pool[-1] = _BIG_IDS[dtype][int(rng.integers(2))]
    return pool


def _blob(rng, shape, labels, value, max_edge):
    """Paint a rectangle or a disc of ``value`` somewhere (possibly over others)."""
    h, w = (int(rng.integers(1, min(max_edge, n) + 1)) for n in shape)
    y, x = int(rng.integers(0, shape[0] - h + 1)), int(rng.integers(0, shape[1] - w + 1))
    if rng.random() < 0.5:
        labels[y:y + h, x:x + w] = value
    else:
        yy, xx = np.ogrid[:h, :w]
        disc = (yy - (h - 1) / 2) ** 2 / (h / 2) ** 2 + (xx - (w - 1) / 2) ** 2 / (w / 2) ** 2 <= 1
        labels[y:y + h, x:x + w][disc] = value


def random_labels(rng, shape, dtype, n_max=9, max_edge=14):
    labels = np.zeros(shape, dtype=dtype)
    for value in _ids(rng, int(rng.integers(0, n_max + 1)), dtype):
        for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):  # several blobs, one id
            _blob(rng, shape, labels, dtype(value), max_edge)
    return labels


def _relabel(rng, labels, dtype):
    ids = [int(v) for v in np.unique(labels) if v != 0]
    new = _ids(rng, len(ids), dtype) if len(ids) < 59 else ids
    rng.shuffle(new)
    out = np.zeros(labels.shape, dtype=dtype)
    for old, value in zip(ids, new):
        out[labels == dtype(old)] = dtype(value)
    return out


def _transform(rng, pred, dtype, kind):
    ids = [int(v) for v in np.unique(pred) if v != 0]
    if kind == "shift":
        return np.roll(pred, tuple(int(v) for v in rng.integers(-3, 4, size=2)), axis=(0, 1))
    if kind == "grow" and ids:
        grown = ndi.grey_dilation(pred, size=(3, 3))
        return np.where(pred == 0, grown, pred).astype(dtype)
    if kind == "shrink":
        return np.where(ndi.grey_erosion(pred, size=(3, 3)) == pred, pred, 0).astype(dtype)
    if kind == "merge" and len(ids) >= 2:
        a, b = (dtype(ids[i]) for i in rng.choice(len(ids), size=2, replace=False))
        return np.where(pred == b, a, pred).astype(dtype)
    if kind == "split" and ids:
        a = dtype(ids[int(rng.integers(len(ids)))])
        ys, _ = np.nonzero(pred == a)
        cut = int(rng.integers(ys.min(), ys.max() + 1))
        fresh = max(ids) + 1 if max(ids) < np.iinfo(dtype).max else min(set(range(1, 100)) - set(ids))
        out = pred.copy()
        out[(pred == a) & (np.arange(pred.shape[0])[:, None] >= cut)] = dtype(fresh)
        return out
    if kind == "noise":
        out = pred.copy()
        for _ in range(int(rng.integers(1, 4))):
            _blob(rng, pred.shape, out, dtype(int(rng.integers(60, 90))), 8)
        return out
    return pred


def random_pair(seed):
    """A truth/prediction pair for oracle tests, with options suited to its size."""
    rng = np.random.default_rng(seed)
    dtype = _DTYPES[seed % len(_DTYPES)]
    shape = tuple(int(v) for v in rng.integers(12, 41, size=2))
    mode = seed % 10
    truth = np.zeros(shape, dtype) if mode == 0 else random_labels(rng, shape, dtype)
    if mode in (0, 1):
        pred = np.zeros(shape, dtype) if rng.random() < 0.6 else random_labels(rng, shape, dtype)
    elif mode == 2:
        pred = random_labels(rng, shape, dtype)  # unrelated
    else:
        pred = _relabel(rng, truth, dtype)
        for kind in rng.choice(["shift", "grow", "shrink", "merge", "split", "noise", "none"],
                               size=int(rng.integers(1, 4))):
            pred = _transform(rng, pred, dtype, str(kind))
    if seed % 3 == 0:
        truth, pred = pred, truth  # what is a merge one way is a split the other
    options = dict(
        thresholds=(0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
        area_bins=(0, 250, 625, 900, INF) if seed % 2 else (0, 10, 40, 100, INF),
        error_threshold=(0.7, 0.5, 0.85)[seed % 3],
        overlap_threshold=(0.1, 0.0, 0.25)[seed % 3],
    )
    return truth, pred, options


def disconnected_ids(labels):
    """Ids whose pixels form more than one 4-connected blob."""
    return [int(v) for v in np.unique(labels) if v != 0 and ndi.label(labels == v)[1] > 1]
