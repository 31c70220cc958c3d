from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import expand_labels

from cellflow.metrics import iou_matrix, overlaps
from tests.metrics.oracle import brute_force, random_pair

N_CASES = 240
DEFAULTS = dict(thresholds=(0.5,), area_bins=(0, float("inf")), error_threshold=0.7, overlap_threshold=0.1)


def _expected_matrix(expected):
    ious = np.zeros((len(expected.truth_ids), len(expected.pred_ids)))
    for i, a in enumerate(expected.truth_ids):
        for j, b in enumerate(expected.pred_ids):
            ious[i, j] = float(expected.iou.get((a, b), 0))
    return ious


@pytest.mark.parametrize("seed", range(N_CASES))
def test_iou_matrix_equals_brute_force(seed):
    truth, pred, _ = random_pair(seed)
    expected = brute_force(truth, pred, **DEFAULTS)
    ious, truth_ids, pred_ids = iou_matrix(truth, pred)
    assert truth_ids.tolist() == expected.truth_ids and pred_ids.tolist() == expected.pred_ids
    assert truth_ids.dtype == truth.dtype and pred_ids.dtype == pred.dtype
    # both sides divide the same two integers, each correctly rounded: equality is exact
    np.testing.assert_array_equal(ious, _expected_matrix(expected))


def test_many_objects_equal_brute_force():
    # ~80 touching objects per side, so each object overlaps several others
    rng = np.random.default_rng(7)
    seeds = np.zeros((96, 96), np.uint32)
    seeds[rng.integers(0, 96, 80), rng.integers(0, 96, 80)] = rng.choice(np.arange(1, 10_000), 80, replace=False)
    truth = expand_labels(seeds, 8)
    pred = np.roll(expand_labels(seeds, 6), (2, -1), axis=(0, 1)) * np.uint32(3)
    expected = brute_force(truth, pred, **DEFAULTS)
    ious, truth_ids, pred_ids = iou_matrix(truth, pred)
    assert truth_ids.tolist() == expected.truth_ids and pred_ids.tolist() == expected.pred_ids
    np.testing.assert_array_equal(ious, _expected_matrix(expected))


def test_hand_computed_ious_with_odd_ids_and_a_two_blob_object():
    truth = np.zeros((6, 10), np.uint32)
    truth[0:2, 0:2] = 3  # 4 px
    truth[4:6, 8:10] = 3  # the same object, a second blob: 8 px in all
    truth[0:3, 5:8] = 2**31 + 5  # 9 px
    pred = np.zeros((6, 10), np.uint32)
    pred[0:2, 0:2] = 17  # covers only the first blob of 3
    pred[0:3, 6:9] = 4  # 3x3 shifted right by one column over 2**31 + 5
    ious, truth_ids, pred_ids = iou_matrix(truth, pred)
    assert truth_ids.tolist() == [3, 2**31 + 5] and pred_ids.tolist() == [4, 17]
    # 3 vs 17: 4 shared / (8 + 4 - 4) = 1/2; 2**31+5 vs 4: 6 shared / (9 + 9 - 6) = 1/2
    np.testing.assert_array_equal(ious, [[0.0, 0.5], [0.5, 0.0]])


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int64, np.uint64, np.int32, np.uint8])
def test_any_integer_dtype_gives_the_same_matrix(dtype):
    truth, pred, _ = random_pair(13)  # uint32 ids below 60, some of them 2**31+5 or not
    keep = lambda a: np.where(a < 60, a, 0)  # noqa: E731 -- ids every dtype can hold
    truth, pred = keep(truth.astype(np.int64)), keep(pred.astype(np.int64))
    reference = iou_matrix(truth, pred)
    got = iou_matrix(truth.astype(dtype), pred.astype(dtype))
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)
    assert got[1].dtype == dtype


def test_huge_ids_take_the_sorting_path_and_agree():
    truth, pred, _ = random_pair(4)
    small = iou_matrix(truth, pred)
    # an order-preserving relabel to ids far beyond what a bincount table could hold
    huge_t = np.where(truth > 0, truth.astype(np.uint64) * np.uint64(2**40) + np.uint64(7), 0).astype(np.uint64)
    huge_p = np.where(pred > 0, pred.astype(np.uint64) + np.uint64(2**63), 0).astype(np.uint64)
    ious, truth_ids, pred_ids = iou_matrix(huge_t, huge_p)
    np.testing.assert_array_equal(ious, small[0])
    np.testing.assert_array_equal(truth_ids, small[1].astype(np.uint64) * np.uint64(2**40) + np.uint64(7))
    np.testing.assert_array_equal(pred_ids, small[2].astype(np.uint64) + np.uint64(2**63))


@pytest.mark.parametrize(
    ("truth_objects", "pred_objects", "shape"), [(False, False, (0, 0)), (False, True, (1, 0)), (True, False, (1, 0))]
)
def test_empty_sides(truth_objects, pred_objects, shape):
    blank = np.zeros((5, 5), np.uint16)
    one = blank.copy()
    one[1:3, 1:3] = 9
    truth, pred = (one if truth_objects else blank), (one if pred_objects else blank)
    ious, truth_ids, pred_ids = iou_matrix(truth, pred)
    assert ious.shape == (int(truth_objects), int(pred_objects))
    assert truth_ids.size == truth_objects and pred_ids.size == pred_objects
    found = overlaps(truth, pred)
    assert found.intersection.size == 0 and found.iou.size == 0


def test_zero_size_and_full_foreground_images():
    ious, truth_ids, _ = iou_matrix(np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8))
    assert ious.shape == (0, 0) and truth_ids.size == 0
    full = np.full((3, 3), 5, np.uint16)  # no background at all on either side
    ious, truth_ids, pred_ids = iou_matrix(full, full * 2)
    assert ious.tolist() == [[1.0]] and truth_ids.tolist() == [5] and pred_ids.tolist() == [10]


def test_overlaps_areas_and_unions():
    truth = np.array([[1, 1, 1, 0], [2, 2, 0, 0]], np.uint8)
    pred = np.array([[0, 4, 4, 4], [4, 0, 0, 0]], np.uint8)
    found = overlaps(truth, pred)
    assert found.truth_area.tolist() == [3, 2] and found.pred_area.tolist() == [4]
    # pairs in (truth, pred) order: (1, 4) share 2 px, union 3 + 4 - 2 = 5; (2, 4) share 1, union 5
    assert found.pair_truth.tolist() == [0, 1] and found.pair_pred.tolist() == [0, 0]
    assert found.intersection.tolist() == [2, 1] and found.union.tolist() == [5, 5]


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"same shape, got truth \(4, 4\) and pred \(4, 5\)"):
        iou_matrix(np.zeros((4, 4), np.uint16), np.zeros((4, 5), np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_non_integer_labels_are_refused(dtype):
    labels = np.zeros((3, 3), np.uint16)
    with pytest.raises(ValueError, match=rf"pred must be an integer label image .*got dtype {np.dtype(dtype)}"):
        iou_matrix(labels, labels.astype(dtype))


def test_negative_labels_are_refused():
    truth = np.zeros((3, 3), np.int32)
    truth[1, 1] = -1
    with pytest.raises(ValueError, match=r"truth must hold labels >= 0 .*got minimum -1"):
        iou_matrix(truth, np.zeros((3, 3), np.int32))
