from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from cellflow.metrics import score_field
from cellflow.ops.postprocess import (
    PostprocessParams,
    fill_label_holes,
    h_maxima_markers,
    label_markers,
    probabilities_to_labels,
    remove_small_labels,
    seeded_watershed,
)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Label images equal up to renumbering (a one-to-one map between ids, 0 to 0)."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float) -> np.ndarray:
    """Labels of discs; where two overlap, the later one wins (they touch along a line)."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def probabilities_of(labels: np.ndarray, ring_px: int = 2) -> np.ndarray:
    """(background, interior, boundary) one-hot from labels: the boundary is a ``ring_px`` inner ring."""
    boundary = find_boundaries(labels, mode="inner")
    if ring_px > 1:
        boundary = ndi.binary_dilation(boundary, iterations=ring_px - 1) & (labels > 0)
    interior = (labels > 0) & ~boundary
    return np.stack([labels == 0, interior, boundary]).astype(np.float32)


def noisy(probabilities: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add Gaussian noise and renormalise to a distribution per pixel."""
    rng = np.random.default_rng(seed)
    p = np.clip(probabilities + rng.normal(0, sigma, probabilities.shape), 1e-3, None)
    return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


def random_objects(shape: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """Touching, non-overlapping blobs: a Voronoi partition of random seeds cut to discs."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(12, np.array(shape) - 12, (n, 2))
    yy, xx = np.indices(shape)
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    owner = d2.argmin(axis=0)
    radius = rng.uniform(7, 11, n)
    inside = d2.min(axis=0) <= radius[owner] ** 2
    labels = np.where(inside, owner + 1, 0).astype(np.int32)
    return remove_small_labels(labels, 30)


# ---------------------------------------------------------------------------- params
def test_params_round_trip_and_name_the_bad_field():
    params = PostprocessParams(foreground_threshold=0.4, marker_threshold=0.8, h=0.1, min_area=10)
    assert PostprocessParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match=r"PostprocessParams\.foreground_threshold must be a number in \[0, 1\]"):
        PostprocessParams(foreground_threshold=1.5)
    with pytest.raises(ValueError, match=r"PostprocessParams\.marker_threshold must be >= foreground_threshold"):
        PostprocessParams(foreground_threshold=0.6, marker_threshold=0.5)
    with pytest.raises(ValueError, match=r"PostprocessParams\.min_area must be an integer >= 0"):
        PostprocessParams(min_area=-1)
    with pytest.raises(ValueError, match=r"unknown keys \['min_size'\]"):
        PostprocessParams.from_dict({"min_size": 3})


# ---------------------------------------------------------------------------- hand-made cases
def test_clean_three_class_case_is_recovered_exactly():
    truth = discs((48, 64), [(24, 18), (24, 34), (24, 50)], 8.5)  # three touching discs in a row
    labels = probabilities_to_labels(probabilities_of(truth), PostprocessParams(min_area=1))
    assert labels.dtype == np.uint32 and labels.max() == 3
    assert same_partition(labels, truth)


def test_clean_interior_only_case_splits_at_the_gap():
    truth = discs((40, 60), [(20, 18), (20, 40)], 9.0)
    interior = ndi.binary_erosion(truth > 0, iterations=2) & ~ndi.binary_dilation(
        find_boundaries(truth, mode="inner"), iterations=1)
    soft = ndi.gaussian_filter(interior.astype(np.float32), 1.0)  # the network is never sharp
    soft[truth > 0] = np.maximum(soft[truth > 0], 0.55)  # but it sees all the foreground
    labels = probabilities_to_labels(soft, PostprocessParams(marker_threshold=0.8))
    assert labels.max() == 2
    score = score_field(truth, labels)
    assert score.f1[0] == 1.0  # both objects matched at IoU 0.5


def test_two_class_softmax_reads_the_interior_channel():
    truth = discs((30, 30), [(15, 15)], 8)
    interior = (truth > 0).astype(np.float32)
    labels = probabilities_to_labels(np.stack([1 - interior, interior]), PostprocessParams(min_area=1))
    assert same_partition(labels, truth)


def test_small_objects_are_removed_and_holes_filled():
    probabilities = probabilities_of(discs((40, 40), [(12, 12)], 8), ring_px=1)
    probabilities[:, 30:32, 30:32] = np.array([0, 1, 0], np.float32)[:, None, None]  # a 4-pixel speck
    probabilities[:, 12, 12] = (1, 0, 0)  # a one-pixel hole in the middle of the object
    labels = probabilities_to_labels(probabilities, PostprocessParams(min_area=10))
    assert labels.max() == 1 and labels[31, 31] == 0 and labels[12, 12] == 1


def test_h_maxima_merge_shallow_bumps_only():
    line = np.array([[0, 3, 2.5, 3, 0, 5, 0]], float)
    assert h_maxima_markers(line, 1.0).tolist() == [[0, 1, 1, 1, 0, 2, 0]]
    assert h_maxima_markers(line, 0.4).max() == 3
    assert h_maxima_markers(line, 1.0, mask=line < 4).max() == 1


def test_h_markers_from_probabilities_split_two_bumps():
    yy, xx = np.indices((30, 50))
    interior = np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / 40) + np.exp(-((yy - 15) ** 2 + (xx - 35) ** 2) / 40)
    labels = probabilities_to_labels(interior.astype(np.float32), PostprocessParams(
        foreground_threshold=0.2, marker_threshold=0.2, h=0.3))
    assert labels.max() == 2


def test_helpers_on_tiny_arrays():
    assert remove_small_labels(np.array([[1, 1, 0, 2]]), 2).tolist() == [[1, 1, 0, 0]]
    ring = np.ones((5, 5), np.int32)
    ring[2, 2] = 0
    assert fill_label_holes(ring)[2, 2] == 1
    shared = np.array([[1, 1, 2, 2], [1, 0, 0, 2], [1, 1, 2, 2]])
    assert fill_label_holes(shared)[1, 1] == 0  # a hole enclosed by two objects is no one's
    assert label_markers(np.array([[1, 0, 1], [0, 0, 0]], bool)).tolist() == [[1, 0, 2], [0, 0, 0]]
    mask = np.array([[1, 1, 0, 1]], bool)
    markers = np.array([[1, 0, 0, 0]], np.int32)
    assert seeded_watershed(np.zeros((1, 4)), markers, mask).tolist() == [[1, 1, 0, 2]]


@pytest.mark.parametrize("shape", [(1, 40, 40), (4, 40, 40), (40,)])
def test_bad_shapes_are_named(shape):
    with pytest.raises(ValueError, match=r"probabilities must be .* got shape"):
        probabilities_to_labels(np.zeros(shape, np.float32))


def test_complex_input_is_a_type_error():
    with pytest.raises(TypeError, match="real array"):
        probabilities_to_labels(np.zeros((3, 8, 8), np.complex64))


# ---------------------------------------------------------------------------- recovery from noise
@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_probabilities_recover_the_instances(seed):
    truth = random_objects((160, 200), 60, seed)
    probabilities = noisy(probabilities_of(truth), sigma=0.25, seed=seed)
    labels = probabilities_to_labels(probabilities, PostprocessParams(min_area=20))
    score = score_field(truth, labels)
    # Every object is found at IoU 0.5. Independent noise of sd 0.25 per pixel and class
    # flips rim pixels between classes, moving the edge of these small objects (radius
    # 7-11 px) by about a pixel: IoU 0.75-0.9, so the tightest thresholds lose a few
    # matches (measured mean over seeds 0-2: 0.94-0.96).
    assert score.f1[0] == 1.0
    assert score.f1_mean >= 0.9


def test_dtype_and_values_do_not_depend_on_float_width():
    truth = random_objects((80, 80), 15, 3)
    p = noisy(probabilities_of(truth), 0.2, 3)
    a = probabilities_to_labels(p)
    b = probabilities_to_labels(p.astype(np.float64))
    assert a.dtype == b.dtype == np.uint32 and np.array_equal(a, b)


@pytest.mark.gpu
def test_cupy_input_gives_cupy_labels_equal_to_numpy(cupy):
    truth = random_objects((96, 96), 20, 4)
    p = noisy(probabilities_of(truth), 0.2, 4)
    on_gpu = probabilities_to_labels(cupy.asarray(p))
    assert isinstance(on_gpu, cupy.ndarray)
    assert np.array_equal(cupy.asnumpy(on_gpu), probabilities_to_labels(p))


def _shrink_oracle(labels, px):
    """Brute force: drop a pixel if any background pixel lies within chessboard distance px."""
    out = labels.copy()
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            if labels[y, x] == 0:
                continue
            window = labels[max(y - px, 0):y + px + 1, max(x - px, 0):x + px + 1]
            if (window == 0).any():
                out[y, x] = 0
    return out


@pytest.mark.parametrize("px", [1, 2])
def test_shrink_labels_matches_brute_force(px):
    from cellflow.ops.postprocess import shrink_labels

    rng = np.random.default_rng(px)
    labels = np.zeros((23, 31), np.int32)
    for k in range(1, 7):
        y, x = rng.integers(0, 20), rng.integers(0, 28)
        labels[y:y + rng.integers(3, 9), x:x + rng.integers(3, 9)] = k
    np.testing.assert_array_equal(shrink_labels(labels, px), _shrink_oracle(labels, px))


def test_shrink_px_undoes_the_outward_boundary_band_of_three_class_targets():
    from cellflow.nn.targets import three_class_targets

    labels = np.zeros((40, 60), np.int32)
    labels[5:20, 5:25] = 1
    labels[5:20, 25:45] = 2
    labels[25:36, 10:30] = 3
    target = three_class_targets(labels, boundary_px=1)[0]
    probabilities = np.stack([target == c for c in range(3)]).astype(np.float32)
    grown = probabilities_to_labels(probabilities, PostprocessParams(min_area=1))
    exact = probabilities_to_labels(probabilities, PostprocessParams(min_area=1, shrink_px=1))
    assert (grown > 0).sum() > (labels > 0).sum()  # without the shrink the band outside the contour is kept
    np.testing.assert_array_equal(exact > 0, labels > 0)
