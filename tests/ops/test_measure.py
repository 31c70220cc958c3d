from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from cellflow.ops.measure import SHAPE_COLUMNS, link_objects, measure_objects, touches_border


def random_labels(seed: int, shape: tuple[int, int] = (48, 56), n: int = 14) -> np.ndarray:
    """Non-consecutive labels: random seeds grown by a few pixels, some ids skipped."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    seeds[ys, xs] = rng.choice(np.arange(1, 4 * n), n, replace=False)
    return expand_labels(seeds, 4).astype(np.uint32)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_measure_objects_matches_eager_regionprops(seed, dtype):
    labels = random_labels(seed)
    rng = np.random.default_rng(seed + 10)
    images = {"DNA": rng.integers(0, 4000, labels.shape).astype(dtype),
              "Cyto": rng.integers(0, 900, labels.shape).astype(dtype)}
    got = measure_objects(labels, images)
    ref = regionprops_table(labels, properties=("label", "area", "perimeter", "eccentricity", "solidity",
                                                "centroid", "bbox"))
    index = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(got["label"], index)
    for ours, theirs in [("area", "area"), ("perimeter", "perimeter"), ("eccentricity", "eccentricity"),
                         ("solidity", "solidity"), ("centroid_y", "centroid-0"), ("centroid_x", "centroid-1"),
                         ("bbox_y0", "bbox-0"), ("bbox_x0", "bbox-1"), ("bbox_y1", "bbox-2"), ("bbox_x1", "bbox-3")]:
        np.testing.assert_allclose(got[ours], ref[theirs], rtol=1e-12, err_msg=ours)
    for name, image in images.items():
        image = image.astype(np.float64)
        # Sums in float64 from scipy: independent of regionprops; float32 means agree to ~1e-7 relative.
        np.testing.assert_allclose(got[f"intensity_sum_{name}"], ndimage.sum_labels(image, labels, index), rtol=1e-6)
        np.testing.assert_allclose(got[f"intensity_mean_{name}"], ndimage.mean(image, labels, index), rtol=1e-6)
        np.testing.assert_array_equal(got[f"intensity_max_{name}"], ndimage.maximum(image, labels, index))
    assert list(got)[: len(SHAPE_COLUMNS)] == list(SHAPE_COLUMNS)


def test_measure_objects_empty_and_no_channels():
    got = measure_objects(np.zeros((8, 9), np.uint32), {"DNA": np.ones((8, 9), np.float32)})
    assert all(v.size == 0 for v in got.values()) and "intensity_sum_DNA" in got
    assert list(measure_objects(random_labels(3), {})) == list(SHAPE_COLUMNS)


@pytest.mark.parametrize(("labels", "images", "match"), [
    (np.zeros((4, 4), np.float32), {}, r"labels must be a 2-D integer array, got 2-D float32"),
    (np.zeros((4, 4, 2), np.uint32), {}, r"labels must be a 2-D integer array, got 3-D"),
    (np.zeros((4, 4), np.uint32), {"DNA": np.zeros((4, 5))}, r"images\['DNA'\] has shape \(4, 5\); labels have"),
])
def test_measure_objects_rejects_bad_input(labels, images, match):
    with pytest.raises(ValueError, match=match):
        measure_objects(labels, images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_link_objects_is_the_majority_cell(seed):
    nuclei = random_labels(seed, n=10)
    cells = random_labels(seed + 100, n=6)
    cells[:, :5] = 0  # some nuclei partly or wholly outside any cell
    index = np.unique(nuclei[nuclei > 0])
    expected = []
    for k in index:  # brute force: count each covering label under the nucleus
        under = cells[nuclei == k]
        under = under[under > 0]
        if under.size == 0:
            expected.append(0)
            continue
        values, counts = np.unique(under, return_counts=True)
        expected.append(int(values[np.argmax(counts)]))  # np.unique sorts: ties go to the smaller label
    np.testing.assert_array_equal(link_objects(nuclei, cells, index), expected)


def test_link_objects_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"covering has shape \(3, 3\); labels have \(2, 2\)"):
        link_objects(np.zeros((2, 2), int), np.zeros((3, 3), int), [])


def test_touches_border_brute_force():
    labels = random_labels(4)
    cols = measure_objects(labels, {})
    edge = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist()) - {0}
    assert set(cols["label"][touches_border(cols, labels.shape)].tolist()) == edge
