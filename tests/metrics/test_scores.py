from __future__ import annotations

import dataclasses
import math
from collections import Counter
from functools import cache

import numpy as np
import pytest

from cellflow.metrics import DEFAULT_THRESHOLDS, FieldScore, ScoreOptions, fscore_curve, score_field
from tests.metrics.oracle import brute_force, disconnected_ids, random_pair

N_CASES = 240


@cache
def _case(seed):
    truth, pred, options = random_pair(seed)
    return truth, pred, options, brute_force(truth, pred, **options)


@pytest.mark.parametrize("seed", range(N_CASES))
def test_field_scores_equal_brute_force(seed):
    truth, pred, options, expected = _case(seed)
    score = score_field(truth, pred, **options)
    assert (score.n_true, score.n_pred) == (len(expected.truth_ids), len(expected.pred_ids))
    assert score.tp.tolist() == expected.tp
    assert score.fp.tolist() == expected.fp
    assert score.fn.tolist() == expected.fn
    # F1, Jaccard, Dice and F-scores are one correctly rounded division of the same
    # integers on both sides (the oracle's via Fraction), so they agree exactly
    assert score.f1.tolist() == expected.f1
    assert score.f1_mean == pytest.approx(sum(expected.f1) / len(expected.f1), abs=1e-12)
    assert score.missed_by_area.tolist() == expected.missed_by_area
    assert score.true_by_area.tolist() == expected.true_by_area
    assert (score.extra, score.merges, score.splits) == (expected.extra, expected.merges, expected.splits)
    assert (score.jaccard, score.dice) == (expected.jaccard, expected.dice)
    assert score.truth_ids.tolist() == expected.truth_ids
    assert score.fscores.tolist() == expected.fscores


def test_oracle_cases_cover_the_awkward_ones():
    seen = Counter()
    for seed in range(N_CASES):
        truth, pred, _, e = _case(seed)
        seen["truth empty"] += not e.truth_ids and bool(e.pred_ids)
        seen["pred empty"] += bool(e.truth_ids) and not e.pred_ids
        seen["both empty"] += not e.truth_ids and not e.pred_ids
        seen["merge"] += e.merges > 0
        seen["split"] += e.splits > 0
        seen["disconnected id"] += bool(disconnected_ids(truth)) or bool(disconnected_ids(pred))
        seen["id > 2**31"] += max([0, *e.truth_ids, *e.pred_ids]) > 2**31
        seen["non-contiguous ids"] += e.truth_ids != list(range(1, len(e.truth_ids) + 1))
        seen["partial F1"] += 0 < e.f1[0] < 1
        seen["IoU exactly at a threshold"] += any(v in {0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9}
                                                  for v in e.iou.values())
        seen["miss in top area bin"] += e.missed_by_area[-1] > 0
        seen[truth.dtype.name] += 1
    assert min(seen.values()) >= 5, seen
    assert {"uint16", "uint32", "int64", "uint64"} <= set(seen)


def _two_objects():
    truth = np.zeros((10, 10), np.uint16)
    truth[0:4, 0:4] = 1  # A, 16 px
    truth[6:10, 6:10] = 2  # B, 16 px
    pred = np.zeros((10, 10), np.uint16)
    pred[0:4, 1:5] = 5  # P: A shifted right by one column
    pred[5:10, 6:10] = 9  # Q: B plus the row above it, 20 px
    return truth, pred


def test_hand_computed_two_objects():
    score = score_field(*_two_objects())
    # IoU(A, P) = 12 / (16 + 16 - 12) = 12/20 = 0.6;  IoU(B, Q) = 16 / (16 + 20 - 16) = 0.8.
    # Matches need IoU > t: both for t <= 0.55; only B-Q for 0.6 <= t <= 0.75 (0.6 > 0.6 is false);
    # none for t >= 0.8.
    assert score.tp.tolist() == [2, 2, 1, 1, 1, 1, 0, 0, 0]
    assert score.fp.tolist() == score.fn.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    # F1 = 2TP / (2TP + FP + FN) = 2TP / 4
    assert score.f1.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    assert score.f1_mean == pytest.approx(4 / 9, abs=1e-15)
    # at IoU 0.7: A is missed (16 px, first area bin) and P is extra
    assert score.missed_by_area.tolist() == [1, 0, 0, 0] and score.true_by_area.tolist() == [2, 0, 0, 0]
    assert (score.extra, score.merges, score.splits) == (1, 0, 0)
    # foreground: |T| = 32, |P| = 36, |T and P| = 12 + 16 = 28, |T or P| = 40
    assert score.jaccard == 28 / 40 and score.dice == 56 / 68
    # best-match Dice: A 2*12/(16+16) = 0.75, B 2*16/(16+20) = 8/9
    assert score.fscores.tolist() == [0.75, 32 / 36]


def test_hand_computed_merge():
    truth = np.zeros((6, 10), np.uint32)
    truth[1:5, 1:5] = 4
    truth[1:5, 5:9] = 8
    pred = np.zeros((6, 10), np.uint32)
    pred[1:5, 1:9] = 1  # one prediction over both nuclei
    score = score_field(truth, pred)
    # each nucleus: IoU = 16 / 32 = 0.5, not > 0.5, so nothing matches at any threshold
    assert score.tp.tolist() == [0] * 9 and score.f1.tolist() == [0.0] * 9
    assert (score.merges, score.splits, score.extra, score.missed) == (1, 0, 1, 2)
    assert score.fscores.tolist() == [2 * 16 / 48] * 2
    assert (score.jaccard, score.dice) == (1.0, 1.0)  # the foreground itself is perfect


def test_hand_computed_uneven_split_still_matches():
    truth = np.zeros((6, 10), np.uint32)
    truth[1:5, 1:9] = 3  # 32 px
    pred = np.zeros((6, 10), np.uint32)
    pred[1:5, 1:7] = 10  # 24 px: IoU 24/32 = 0.75
    pred[1:5, 7:9] = 11  # 8 px: IoU 8/32 = 0.25 (> 0.1, so this is a split)
    score = score_field(truth, pred)
    assert score.tp.tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]
    # t <= 0.7: TP 1, FP 1, FN 0 -> F1 = 2 / 3; above: TP 0, FP 2, FN 1 -> 0
    assert score.f1.tolist() == [2 / 3] * 5 + [0.0] * 4
    assert (score.merges, score.splits, score.extra, score.missed) == (0, 1, 1, 0)
    assert score.fscores.tolist() == [2 * 24 / 56]


def test_area_bins_are_half_open():
    truth = np.zeros((40, 40), np.uint16)
    truth[0:10, 0:25] = 1  # 250 px: second bin [250, 625)
    truth[12:37, 0:25] = 2  # 625 px: third bin [625, 900)
    truth[0:10, 26:40] = 3  # 140 px: first bin
    score = score_field(truth, np.zeros_like(truth))
    assert score.true_by_area.tolist() == [1, 1, 1, 0] and score.missed_by_area.tolist() == [1, 1, 1, 0]
    assert np.array_equal(score.miss_rate, [1.0, 1.0, 1.0, np.nan], equal_nan=True)


def test_empty_images():
    blank = np.zeros((8, 8), np.uint16)
    some = blank.copy()
    some[2:6, 2:6] = 7
    both = score_field(blank, blank)  # defined as perfect agreement
    assert both.f1.tolist() == [1.0] * 9 and both.f1_mean == 1.0
    assert (both.jaccard, both.dice, both.n_true, both.n_pred, both.fscores.size) == (1.0, 1.0, 0, 0, 0)
    only_pred = score_field(blank, some)
    assert only_pred.f1.tolist() == [0.0] * 9 and (only_pred.extra, only_pred.missed) == (1, 0)
    assert only_pred.fp.tolist() == [1] * 9 and (only_pred.jaccard, only_pred.dice) == (0.0, 0.0)
    only_truth = score_field(some, blank)
    assert only_truth.f1.tolist() == [0.0] * 9 and (only_truth.extra, only_truth.missed) == (0, 1)
    assert only_truth.fscores.tolist() == [0.0]


def test_to_row_is_flat_and_follows_the_options_columns():
    score = score_field(*_two_objects())
    row = score.to_row()
    assert tuple(row) == ScoreOptions().columns
    assert list(row)[:10] == [f"f1_{t:.2f}" for t in DEFAULT_THRESHOLDS] + ["f1_mean"]
    assert {k: row[k] for k in ("tp_0.70", "fp_0.70", "fn_0.70", "extra", "merges", "splits")} == {
        "tp_0.70": 1, "fp_0.70": 1, "fn_0.70": 1, "extra": 1, "merges": 0, "splits": 0}
    assert row["missed_area_0_250"] == 1 and row["true_area_0_250"] == 2 and row["true_area_900_inf"] == 0
    assert (row["n_true"], row["n_pred"], row["jaccard"]) == (2, 2, 0.7)
    assert all(type(v) in (int, float) for v in row.values())


def test_field_score_is_immutable():
    score = score_field(*_two_objects())
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.merges = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        score.f1[0] = 0.0
    assert isinstance(score, FieldScore) and score.thresholds == DEFAULT_THRESHOLDS


def test_custom_options_change_names_and_counts():
    score = score_field(*_two_objects(), thresholds=(0.5, 0.75), area_bins=(0, 20, math.inf), error_threshold=0.5)
    row = score.to_row()
    assert [k for k in row if k.startswith("f1_")] == ["f1_0.50", "f1_0.75", "f1_mean"]
    assert "tp_0.50" in row and row["missed_area_0_20"] == 0 and row["extra"] == 0
    assert score_field(*_two_objects(), thresholds=(0.625,)).to_row()["f1_0.625"] == 0.5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(thresholds=(0.4, 0.5)), r"thresholds must be in \[0.5, 1.0\), got 0.4"),
        (dict(thresholds=(0.7, 0.6)), r"thresholds must be non-empty and strictly increasing, got \(0.7, 0.6\)"),
        (dict(thresholds=()), r"thresholds must be non-empty"),
        (dict(thresholds=0.5), r"thresholds must be a sequence of numbers, got 0.5"),
        (dict(area_bins=(0, 250, 900)), r"area_bins must be strictly increasing edges from 0 to inf"),
        (dict(area_bins=(10, math.inf)), r"area_bins must be strictly increasing edges from 0 to inf"),
        (dict(error_threshold=0.3), r"error_threshold must be in \[0.5, 1.0\), got 0.3"),
        (dict(overlap_threshold="a lot"), r"overlap_threshold must be a number, got 'a lot'"),
    ],
)
def test_bad_options_are_refused(options, match):
    blank = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match=match):
        score_field(blank, blank, **options)


def test_options_round_trip_through_a_dict():
    options = ScoreOptions(thresholds=(0.5, 0.9), area_bins=(0, 100, math.inf), overlap_threshold=0.2)
    data = options.to_dict()
    assert data["area_bins"] == [0.0, 100.0, "inf"]
    assert ScoreOptions.from_dict(data) == options
    with pytest.raises(ValueError, match=r"unknown keys \['iou'\]"):
        ScoreOptions.from_dict({"iou": 0.5})


def test_fscore_curve():
    fscores = np.array([0.0, 0.25, 0.5, 0.5, 1.0])
    curve = fscore_curve(fscores)
    assert curve.shape == (101,)
    # at x = 0 every cell counts (>=), at 0.5 three, just above 0.5 one, at 1 one
    assert curve[0] == 100.0 and curve[50] == 60.0 and curve[51] == 20.0 and curve[100] == 20.0
    assert np.all(np.diff(curve) <= 0)
    assert fscore_curve(fscores, x=[0.25, 0.26]).tolist() == [80.0, 60.0]
    assert np.isnan(fscore_curve([], x=[0.5])).all()


def test_fscore_curve_of_a_field():
    score = score_field(*_two_objects())  # F-scores 0.75 and 8/9
    assert fscore_curve(score.fscores, x=[0.7, 0.8, 0.9]).tolist() == [100.0, 50.0, 0.0]
