"""Scores of one field: F1 over IoU thresholds, the error taxonomy, pixel and per-cell scores.

Definitions follow the papers they come from:

* **F1 at IoU thresholds** (Caicedo et al. 2019, Cytometry A 95:952): at each
  t in 0.50, 0.55, ..., 0.90 a true and a predicted object match when IoU > t;
  TP = matched pairs, FP = unmatched predictions, FN = unmatched true objects,
  F1 = 2TP / (2TP + FP + FN); the field's score is the mean over thresholds. Two
  empty images score F1 = 1; one empty side and one not score 0.
* **Error taxonomy** (same paper), at IoU 0.7 unless told otherwise: *missed*
  objects are the true objects without a match (FN), counted per true-object area
  bin; *extra* objects are the predictions without a match (FP); a *merge* is a
  prediction that overlaps more than one true object with IoU > 0.1, a *split* a
  true object that overlaps more than one prediction with IoU > 0.1.
* **Jaccard index and Dice** (Van Valen et al. 2016) of the foreground masks
  ``truth > 0`` and ``pred > 0``: |A ∩ B| / |A ∪ B| and 2|A ∩ B| / (|A| + |B|),
  both 1 when neither image has foreground.
* **Per-cell F-score** (Sadanandan et al. 2017): for each true object the pixel
  F-score (Dice) with the prediction that maximises it, 0 if it touches none;
  :func:`fscore_curve` gives the percentage of true cells at or above each level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellflow.metrics._matching import Overlaps, count_matches, f1_score, overlaps
from cellflow.metrics._options import DEFAULT_AREA_BINS, DEFAULT_THRESHOLDS, ScoreOptions

__all__ = ["FieldScore", "fscore_curve", "score_field", "score_overlaps"]


def _frozen(array: Any, dtype: Any) -> np.ndarray:
    out = np.array(array, dtype=dtype)  # a copy, so freezing it touches nobody else's array
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class FieldScore:
    """Every score of one field (see the module docstring for definitions).

    Arrays are read-only. Compare scores through :meth:`to_row`.

    Attributes
    ----------
    options : ScoreOptions
        The settings the field was scored with.
    n_true, n_pred : int
        Number of true and predicted objects.
    tp, fp, fn : (n_thresholds,) ndarray of int64
        True positives, false positives, false negatives at each IoU threshold.
    f1 : (n_thresholds,) ndarray of float64
        F1 at each threshold.
    missed_by_area, true_by_area : (n_bins,) ndarray of int64
        True objects unmatched at the error threshold, and all true objects, per
        area bin.
    extra : int
        Predictions unmatched at the error threshold (= FP there).
    merges, splits : int
        Predictions overlapping > 1 true object, true objects overlapping > 1
        prediction, with IoU > ``options.overlap_threshold``.
    jaccard, dice : float
        Foreground Jaccard index and Dice coefficient.
    truth_ids : (n_true,) ndarray
        Sorted ids of the true objects.
    fscores : (n_true,) ndarray of float64
        Best-match pixel F-score of each true object, in ``truth_ids`` order.
    """

    options: ScoreOptions
    n_true: int
    n_pred: int
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    f1: np.ndarray
    missed_by_area: np.ndarray
    true_by_area: np.ndarray
    extra: int
    merges: int
    splits: int
    jaccard: float
    dice: float
    truth_ids: np.ndarray
    fscores: np.ndarray

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The IoU thresholds of ``tp``, ``fp``, ``fn`` and ``f1``."""
        return self.options.thresholds

    @property
    def f1_mean(self) -> float:
        """Mean F1 over the thresholds: the field's score."""
        return float(np.mean(self.f1))

    @property
    def missed(self) -> int:
        """True objects unmatched at the error threshold (FN there)."""
        return int(self.missed_by_area.sum())

    @property
    def miss_rate(self) -> np.ndarray:
        """(n_bins,) fraction of true objects missed per area bin; NaN for an empty bin."""
        rate = np.full(self.true_by_area.shape, np.nan)
        np.divide(self.missed_by_area, self.true_by_area, out=rate, where=self.true_by_area > 0)
        return rate

    def to_row(self) -> dict[str, float | int]:
        """One flat row for a table, keyed by ``options.columns`` (Python scalars)."""
        matched = self.n_true - self.missed
        values: list[float | int] = [
            *(float(v) for v in self.f1), self.f1_mean,
            matched, self.extra, self.missed,
            *(int(v) for v in self.missed_by_area), *(int(v) for v in self.true_by_area),
            self.merges, self.splits, self.extra, self.jaccard, self.dice, self.n_true, self.n_pred,
        ]
        return dict(zip(self.options.columns, values, strict=True))


def _pixel_scores(found: Overlaps) -> tuple[float, float]:
    """Foreground Jaccard and Dice; both 1.0 when neither image has foreground."""
    truth = int(found.truth_area.sum())
    pred = int(found.pred_area.sum())
    both = int(found.intersection.sum())
    if truth + pred == 0:
        return 1.0, 1.0
    return both / (truth + pred - both), 2 * both / (truth + pred)


def _best_fscores(found: Overlaps) -> np.ndarray:
    """Per true object, the largest Dice with any prediction (0 if it touches none)."""
    areas = found.truth_area[found.pair_truth] + found.pred_area[found.pair_pred]
    best = np.zeros(found.truth_ids.size, dtype=np.float64)
    np.maximum.at(best, found.pair_truth, 2 * found.intersection / areas)
    return best


def _more_than_one(index: np.ndarray, size: int) -> int:
    """How many of ``size`` objects appear more than once in ``index``."""
    return int(np.count_nonzero(np.bincount(index, minlength=size) > 1))


def score_overlaps(found: Overlaps, options: ScoreOptions) -> FieldScore:
    """Score a field from its :class:`Overlaps` (the kernel behind :func:`score_field`)."""
    n_true, n_pred = found.truth_ids.size, found.pred_ids.size
    iou = found.iou
    tp = count_matches(found, np.asarray(options.thresholds))
    matched = np.zeros(n_true, dtype=bool)
    matched[found.pair_truth[iou > options.error_threshold]] = True
    area_bin = np.searchsorted(options.area_bins, found.truth_area, side="right") - 1
    n_bins = len(options.area_bins) - 1
    touching = iou > options.overlap_threshold
    jaccard, dice = _pixel_scores(found)
    return FieldScore(
        options=options, n_true=n_true, n_pred=n_pred,
        tp=_frozen(tp, np.int64), fp=_frozen(n_pred - tp, np.int64), fn=_frozen(n_true - tp, np.int64),
        f1=_frozen(f1_score(tp, n_true, n_pred), np.float64),
        missed_by_area=_frozen(np.bincount(area_bin[~matched], minlength=n_bins), np.int64),
        true_by_area=_frozen(np.bincount(area_bin, minlength=n_bins), np.int64),
        extra=n_pred - int(np.count_nonzero(matched)),  # matching is one-to-one: matched truths = matched preds
        merges=_more_than_one(found.pair_pred[touching], n_pred),
        splits=_more_than_one(found.pair_truth[touching], n_true),
        jaccard=jaccard, dice=dice,
        truth_ids=_frozen(found.truth_ids, found.truth_ids.dtype), fscores=_frozen(_best_fscores(found), np.float64),
    )


def score_field(
    truth: Any,
    pred: Any,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    area_bins: Sequence[float] = DEFAULT_AREA_BINS,
    error_threshold: float = 0.7,
    overlap_threshold: float = 0.1,
) -> FieldScore:
    """Score a predicted label image against the truth, as in Caicedo et al. 2019.

    Parameters
    ----------
    truth, pred : (M, N) ndarray of int
        Label images of one field, same shape, any integer dtype; 0 is background.
        Ids need not be contiguous; an id covering several blobs is one object.
    thresholds : sequence of float
        IoU thresholds, strictly increasing, in [0.5, 1); a match is IoU > t.
    area_bins : sequence of float
        Edges of the true-object area bins (pixels), from 0 to ``inf``.
    error_threshold : float
        IoU threshold, in [0.5, 1), of the missed and extra object counts.
    overlap_threshold : float
        IoU above which an overlap counts towards merges and splits.

    Returns
    -------
    FieldScore
        F1 per threshold and its mean, the error taxonomy, pixel Jaccard and Dice,
        and per-cell F-scores.

    Raises
    ------
    ValueError
        Shapes differ, labels are not integers or are negative, or an option is
        out of range.

    Examples
    --------
    >>> truth = np.zeros((8, 8), np.uint16); truth[:4, :4] = 1; truth[4:, 4:] = 2
    >>> pred = np.zeros((8, 8), np.uint16); pred[:4, :3] = 7
    >>> score = score_field(truth, pred)
    >>> score.tp.tolist()  # IoU(1, 7) = 12 / 16 = 0.75 > t for t < 0.75
    [1, 1, 1, 1, 1, 0, 0, 0, 0]
    >>> round(score.f1_mean, 4), score.to_row()["fn_0.70"]
    (0.3704, 1)
    """
    options = ScoreOptions.from_dict({
        "thresholds": thresholds, "area_bins": area_bins,
        "error_threshold": error_threshold, "overlap_threshold": overlap_threshold,
    })
    return score_overlaps(overlaps(truth, pred), options)


def fscore_curve(fscores: Any, x: Any = None) -> np.ndarray:
    """Percentage of true cells whose best-match F-score is at least ``x``.

    Parameters
    ----------
    fscores : (n,) array_like of float
        Per-cell F-scores (:attr:`FieldScore.fscores`, possibly pooled over fields).
    x : (k,) array_like of float, optional
        F-score levels; default ``np.linspace(0, 1, 101)``.

    Returns
    -------
    percent : (k,) ndarray of float64
        ``100 * mean(fscores >= x_i)`` for each level; NaN everywhere when there are
        no cells.

    Examples
    --------
    >>> fscore_curve([0.2, 0.8, 0.9, 1.0], x=[0.0, 0.5, 0.9, 1.0]).tolist()
    [100.0, 75.0, 50.0, 25.0]
    """
    levels = np.linspace(0.0, 1.0, 101) if x is None else np.asarray(x, dtype=np.float64)
    scores = np.sort(np.asarray(fscores, dtype=np.float64).ravel())
    if scores.size == 0:
        return np.full(levels.shape, np.nan)
    at_least = scores.size - np.searchsorted(scores, levels, side="left")
    return 100.0 * at_least / scores.size
