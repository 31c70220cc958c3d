from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellflow.metrics import score_field
from cellflow.nn.targets import (
    DEFAULT_CLASS_WEIGHTS,
    TWO_CLASSES,
    balanced_class_weights,
    class_weight_vector,
    three_class_targets,
    two_class_targets,
)
from cellflow.ops.postprocess import PostprocessParams, probabilities_to_labels

EIGHT = np.ones((3, 3), bool)


def square(shape: tuple[int, int], top: int, left: int, side: int, value: int = 1) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    labels[top:top + side, left:left + side] = value
    return labels


def one_hot(target: np.ndarray, n_classes: int = 3) -> np.ndarray:
    return (np.arange(n_classes)[:, None, None] == target[None]).astype(np.float32)


def random_objects(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """Touching, non-overlapping blobs: a Voronoi partition of random seeds cut to discs (area >= 100)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(14, np.array(shape) - 14, (n, 2))
    yy, xx = np.indices(shape)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    owner = d2.argmin(axis=0)
    radius = rng.uniform(8, 13, n)
    labels = np.where(d2.min(axis=0) <= radius[owner] ** 2, owner + 1, 0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    labels[(areas < 100)[labels]] = 0
    return labels.astype(np.int32)


# ---------------------------------------------------------------------------- three classes, by hand
def test_single_square_boundary_is_the_one_in_one_out_ring():
    # A 10 x 10 square at rows/cols 5..14 of a 20 x 20 field. Contour: its outermost
    # ring (rows 5 and 14, cols 5 and 14). Boundary: the contour, the ring just inside
    # (rows/cols 6..13 minus 7..12) and the ring just outside (4..15 minus 5..14), i.e.
    # the 12 x 12 square at 4..15 minus the 6 x 6 square at 7..12: 144 - 36 = 108 pixels.
    labels = square((20, 20), 5, 5, 10, value=3)
    target, weights = three_class_targets(labels)
    expected = np.zeros((20, 20), np.uint8)
    expected[4:16, 4:16] = 2
    expected[7:13, 7:13] = 1
    np.testing.assert_array_equal(target, expected)
    assert target.dtype == np.uint8 and weights.dtype == np.float32
    assert np.count_nonzero(target == 2) == 108 == 12 * 10 - 12
    assert np.count_nonzero(target == 1) == 36
    assert np.count_nonzero((target == 2) & (labels == 0)) == 44  # the outer ring: 12*12 - 10*10
    np.testing.assert_array_equal(weights, np.where(target == 2, 10.0, 1.0).astype(np.float32))


def test_boundary_px_widens_the_ring_both_ways():
    labels = square((24, 24), 4, 4, 16)
    target, _ = three_class_targets(labels, boundary_px=2)
    expected = np.zeros((24, 24), np.uint8)
    expected[2:22, 2:22] = 2  # 2 px out
    expected[7:17, 7:17] = 1  # contour at 4 and 19, 2 px in: interior 7..16
    np.testing.assert_array_equal(target, expected)
    thin, _ = three_class_targets(labels, boundary_px=0)
    assert np.array_equal(thin == 2, (labels > 0) & ~ndi.binary_erosion(labels > 0))


def test_the_image_edge_is_not_a_contour():
    labels = square((12, 12), 0, 0, 8)  # touches the top and left edges
    target, _ = three_class_targets(labels)
    expected = np.zeros((12, 12), np.uint8)
    expected[:9, :9] = 2
    expected[:6, :6] = 1  # the contour is only at row 7 and column 7: interior up to 5
    np.testing.assert_array_equal(target, expected)


def test_touching_objects_are_separated_by_the_boundary():
    labels = np.zeros((16, 26), np.int32)
    labels[3:13, 3:13] = 1
    labels[3:13, 13:23] = 2  # touching along columns 12 | 13
    target, _ = three_class_targets(labels)
    interior, n = ndi.label(target == 1, structure=EIGHT)
    assert n == 2
    # Each interior is the square minus 2 px on every side (its own contour + 1 in).
    np.testing.assert_array_equal(target[5:11, 5:11], 1)
    np.testing.assert_array_equal(target[5:11, 15:21], 1)
    np.testing.assert_array_equal(target[:, 11:15], np.where(labels[:, 11:15] > 0, 2, target[:, 11:15]))
    assert set(np.unique(labels[interior == 1])) == {1} and set(np.unique(labels[interior == 2])) == {2}


def test_small_objects_are_dropped_and_count_all_their_blobs():
    labels = np.zeros((30, 30), np.int32)
    labels[2:6, 2:7] = 5  # 20 px: dropped
    labels[10:20, 10:20] = 9  # 100 px: kept
    labels[25:28, 2:6] = 11  # two blobs of 12 and 14 px, 26 in total: kept
    labels[25:27, 20:27] = 11
    target, weights = three_class_targets(labels)
    assert not target[:8, :9].any()
    np.testing.assert_array_equal(weights[:8, :9], 1.0)
    assert (target[labels == 11] > 0).all()
    assert (target[labels == 9] > 0).all()


def test_non_contiguous_ids_and_dtypes_give_the_same_targets():
    labels = random_objects((64, 64), 10, seed=3)
    base = three_class_targets(labels)
    ids = np.unique(labels)[1:]
    scattered = np.zeros_like(labels, dtype=np.uint64)
    for i, new in zip(ids, 7 + 2**40 + 1000 * ids[::-1].astype(np.uint64)):
        scattered[labels == i] = new
    for variant in (scattered, labels.astype(np.uint16), labels.astype(np.int64)):
        target, weights = three_class_targets(variant)
        np.testing.assert_array_equal(target, base[0])
        np.testing.assert_array_equal(weights, base[1])


def test_class_weights_by_name_or_sequence():
    labels = square((20, 20), 5, 5, 10)
    target, weights = three_class_targets(labels, class_weights={"background": 0.5, "boundary": 4})
    np.testing.assert_array_equal(weights, np.array([0.5, 1.0, 4.0], np.float32)[target])
    assert DEFAULT_CLASS_WEIGHTS == (1.0, 1.0, 10.0)
    assert class_weight_vector((2, 3), TWO_CLASSES).tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match=r"unknown classes \['edge'\]"):
        class_weight_vector({"edge": 2.0})
    with pytest.raises(ValueError, match=r"class_weights must hold one weight per class"):
        class_weight_vector((1.0, 2.0))
    with pytest.raises(ValueError, match=r"class_weights\[2\] must be a finite number >= 0, got -1"):
        class_weight_vector((1.0, 1.0, -1))
    with pytest.raises(ValueError, match=r"must not all be 0"):
        class_weight_vector((0, 0, 0))


@pytest.mark.parametrize("function", [three_class_targets, two_class_targets])
def test_labels_are_validated(function):
    with pytest.raises(ValueError, match=r"labels must be a 2-D array of integers, got shape \(2, 3, 4\)"):
        function(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match=r"labels must be a 2-D array of integers.*dtype float32"):
        function(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"labels must be a 2-D NumPy array of integers, got list"):
        function([[0, 1]])
    with pytest.raises(ValueError, match=r"labels must be >= 0"):
        function(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"min_area must be an integer >= 0, got -1"):
        function(np.zeros((4, 4), np.int32), min_area=-1)


def test_three_class_options_are_validated():
    with pytest.raises(ValueError, match=r"boundary_px must be an integer >= 0, got 1.5"):
        three_class_targets(np.zeros((4, 4), np.int32), boundary_px=1.5)


# ---------------------------------------------------------------------------- round trip
def test_postprocess_inverts_three_class_targets():
    """probabilities_to_labels(one_hot(targets(labels))) gives back the labels.

    The only pixels allowed to change are the outer boundary ring: the boundary
    class reaches 1 px into the background, so the recovered objects are the true
    ones grown by at most 1 px (ties between two objects split by the watershed),
    plus any background pocket that ring closes off (postprocess fills holes).
    Inside the true foreground the partition is the same except at boundary pixels
    between touching objects (see below); F1 at IoU 0.5 is then 1
    for objects of >= 100 px (growing a disc of radius r >= 5.6 by 1 px keeps IoU
    above (r / (r + 1))**2 > 0.7). The bar is F1 >= 0.95.
    """
    labels = random_objects((128, 128), 30, seed=0)
    assert len(np.unique(labels)) > 15
    target, _ = three_class_targets(labels)
    recovered = probabilities_to_labels(one_hot(target), PostprocessParams(min_area=25))
    score = score_field(labels, recovered, thresholds=(0.5,))
    assert score.f1[0] >= 0.95
    assert score.f1[0] == 1.0
    # Grown by the outer ring, plus background pockets that the ring closes off
    # (postprocess fills holes in the foreground).
    grown = ndi.binary_fill_holes(ndi.binary_dilation(labels > 0, structure=EIGHT))
    assert ((recovered > 0) <= grown).all() and ((labels > 0) <= (recovered > 0)).all()
    # Exact up to boundary pixels: within each true object, every pixel not given the
    # object's recovered id lies in the boundary band, where the watershed floods a flat
    # plateau between two markers and breaks ties by its queue order (~1% of pixels).
    matched = set()
    for object_id in np.unique(labels)[1:]:
        mask = labels == object_id
        owner = np.bincount(recovered[mask]).argmax()
        assert owner not in matched
        matched.add(owner)
        assert (target[mask & (recovered != owner)] == 2).all()
        assert (recovered[mask & (target == 1)] == owner).all()


# ---------------------------------------------------------------------------- two classes
def test_two_class_gap_between_touching_objects():
    labels = np.zeros((10, 16), np.int32)
    labels[2:8, 2:8] = 4
    labels[2:8, 8:14] = 6
    labels[0, 15] = 1  # 1 px: dropped by min_area
    target, _ = two_class_targets(labels)
    expected = (labels > 1).astype(np.uint8)
    expected[:, 7:9] = 0  # 1 px taken from each side of the contact
    np.testing.assert_array_equal(target, expected)
    assert ndi.label(target, structure=EIGHT)[1] == 2


def test_two_class_diagonal_contact_is_cut_in_eight_connectivity():
    labels = np.zeros((12, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[6:11, 6:11] = 2  # touches 1 only at the corner (5, 5)-(6, 6)
    target, _ = two_class_targets(labels, min_area=1)
    assert target[5, 5] == 0 and target[6, 6] == 0
    assert ndi.label(target, structure=EIGHT)[1] == 2


def test_two_class_weights_by_hand():
    # 4 x 4 map, 4 foreground px: n = 16, n_fg = 4, n_bg = 12, f = 3.
    # w_bg = 16 / (4 * 12) = 1/3, w_fg = 3 * 16 / (4 * 4) = 3;
    # totals: background 12 * 1/3 = 4, foreground 4 * 3 = 12 (ratio 3), sum 16.
    foreground = np.zeros((4, 4), bool)
    foreground[1:3, 1:3] = True
    weights = balanced_class_weights(foreground, foreground_weight=3.0)
    np.testing.assert_allclose(weights, np.where(foreground, 3.0, 1 / 3), rtol=1e-6)
    # Balanced only (f = 1): both classes total n / 2 = 8.
    balanced = balanced_class_weights(foreground, foreground_weight=1.0)
    np.testing.assert_allclose([balanced[foreground].sum(), balanced[~foreground].sum()], [8.0, 8.0], rtol=1e-6)


@pytest.mark.parametrize("factor", [1.0, 3.0, 0.5])
def test_two_class_weights_balance_then_favour_the_foreground(factor):
    labels = random_objects((96, 80), 12, seed=5)
    target, weights = two_class_targets(labels, foreground_weight=factor)
    fg, bg = weights[target == 1].sum(dtype=np.float64), weights[target == 0].sum(dtype=np.float64)
    assert 0 < np.count_nonzero(target) < target.size
    # float32 weights summed over ~7700 px: relative error well under 1e-5
    np.testing.assert_allclose(fg / bg, factor, rtol=1e-5)
    np.testing.assert_allclose(fg + bg, target.size, rtol=1e-5)
    assert len(np.unique(weights[target == 1])) == 1 and len(np.unique(weights[target == 0])) == 1


def test_two_class_weights_without_one_class_are_ones():
    target, weights = two_class_targets(np.zeros((5, 5), np.int32))
    assert not target.any()
    np.testing.assert_array_equal(weights, 1.0)
    target, weights = two_class_targets(np.ones((6, 6), np.int32), min_area=1)
    assert target.all()
    np.testing.assert_array_equal(weights, 1.0)
    with pytest.raises(ValueError, match=r"foreground_weight must be a finite number > 0, got 0"):
        two_class_targets(np.ones((6, 6), np.int32), foreground_weight=0)


def test_suspect_objects_flag_merges_by_size_and_shape():
    from skimage.draw import disk

    from cellflow.nn.targets import ignore_suspect_objects, suspect_objects

    labels = np.zeros((80, 120), np.int32)
    for k, (y, x) in enumerate([(15, 15), (15, 45), (15, 75), (50, 15)], start=1):  # single round nuclei
        labels[disk((y, x), 8, shape=labels.shape)] = k
    labels[disk((55, 70), 8, shape=labels.shape)] = 9  # two touching nuclei merged into one object
    labels[disk((55, 85), 8, shape=labels.shape)] = 9
    # solidity: 0.96 for a pixelated disc, 0.906 for the touching pair (a dumbbell is not convex)
    assert suspect_objects(labels, solidity=0.93).tolist() == [9]
    assert suspect_objects(labels, area_ratio=1.5).tolist() == [9]  # and twice the median area
    assert suspect_objects(labels).size == 0  # nothing asked, nothing flagged
    weights = ignore_suspect_objects(np.ones(labels.shape, np.float32), labels, np.array([9]), margin_px=2)
    grown = ndi.binary_dilation(labels == 9, structure=np.ones((3, 3), bool), iterations=2)
    assert (weights[grown] == 0).all() and (weights[~grown] == 1).all()
