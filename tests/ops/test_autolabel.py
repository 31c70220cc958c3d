from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cellflow.metrics import score_field
from cellflow.ops.autolabel import (
    CELL_METHODS,
    DECLUMP_METHODS,
    CellParams,
    NucleiParams,
    estimate_diameter,
    project_planes,
    segment_cells,
    segment_nuclei,
    valley_curvature,
)

BACKGROUND, FOREGROUND = 10.0, 100.0


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ellipse(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks. Smoothing (sigma 1 px) and the edge level (0.35 of the step) put the
    edge of a sharp, flat object about half a pixel out: a ~1-px rim on 10-px objects, IoU ~0.95."""
    return float((a & b).sum() / (a | b).sum())


def plane(mask: np.ndarray, *, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A fluorescence-like plane: flat objects on a flat background, optional Gaussian noise."""
    image = np.where(mask, FOREGROUND, BACKGROUND).astype(np.float32)
    if noise:
        image += np.random.default_rng(seed).normal(0, noise, image.shape).astype(np.float32)
    return image


def two_touching_discs(radius: float = 10.0) -> np.ndarray:
    shape = (48, 72)
    return disc(shape, (24, 24), radius) | disc(shape, (24, 24 + 1.7 * radius), radius)


# ---------------------------------------------------------------------------- params
def test_params_round_trip():
    nuclei = NucleiParams(declump="intensity", h_fraction=0.2, edge_level=None, max_diameter_fraction=None)
    assert NucleiParams.from_dict(nuclei.to_dict()) == nuclei
    cells = CellParams(method="gradient", dilation_px=3, threshold=20.0)
    assert CellParams.from_dict(cells.to_dict()) == cells


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"declump": "watershed"}, r"NucleiParams\.declump must be one of \('distance', 'intensity', 'none'\)"),
    ({"smoothing_px": -1}, r"NucleiParams\.smoothing_px must be a finite number >= 0, got -1"),
    ({"threshold_correction": 0}, r"NucleiParams\.threshold_correction must be a finite number > 0"),
    ({"h_fraction": 1.0}, r"NucleiParams\.h_fraction must be a number in \[0, 1\)"),
    ({"edge_level": 1.2}, r"NucleiParams\.edge_level must be a number in \[0, 1\]"),
    ({"edge_percentile": 150}, r"NucleiParams\.edge_percentile must be a number in \(0, 100\]"),
    ({"min_diameter_fraction": 2.0, "max_diameter_fraction": 1.0}, r"NucleiParams\.max_diameter_fraction must be >"),
    ({"fill_holes": "yes"}, r"NucleiParams\.fill_holes must be True or False"),
    ({"valley_depth": 0}, r"NucleiParams\.valley_depth must be a finite number > 0"),
    ({"valley_sigma_px": -1}, r"NucleiParams\.valley_sigma_px must be a finite number > 0"),
])
def test_nuclei_params_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NucleiParams(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "voronoi"}, r"CellParams\.method must be one of"),
    ({"dilation_px": 2.5}, r"CellParams\.dilation_px must be an integer >= 0"),
    ({"distance_weight": float("nan")}, r"CellParams\.distance_weight must be a finite number >= 0"),
])
def test_cell_params_name_the_bad_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CellParams(**kwargs)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"NucleiParams got unknown keys \['diameter'\]"):
        NucleiParams.from_dict({"diameter": 20})


# ---------------------------------------------------------------------------- nuclei: hand-made cases
@pytest.mark.parametrize("declump", ["distance", "intensity"])
def test_two_touching_discs_are_split_in_two(declump):
    mask = two_touching_discs()
    image = plane(mask, noise=2.0)
    if declump == "intensity":  # intensity declumping needs a dimmer neck, as real touching nuclei have
        image = image * (0.6 + 0.4 * (disc(mask.shape, (24, 24), 8) | disc(mask.shape, (24, 41), 8)))
    labels = segment_nuclei(image, diameter_px=20, params=NucleiParams(declump=declump))
    assert labels.dtype == np.uint32
    assert labels.max() == 2
    left, right = labels[24, 20], labels[24, 45]
    assert left != right and left > 0 and right > 0
    assert iou(labels > 0, mask) > 0.93  # the union is the foreground


def test_without_declumping_touching_discs_stay_one():
    labels = segment_nuclei(plane(two_touching_discs()), diameter_px=20, params=NucleiParams(declump="none"))
    assert labels.max() == 1


def test_a_single_elongated_nucleus_is_not_split():
    # Axes 22 x 9 px (aspect 2.4): its distance transform has one ridge, not two peaks.
    mask = ellipse((48, 72), (24, 36), (9, 22))
    labels = segment_nuclei(plane(mask, noise=3.0), diameter_px=28)
    assert labels.max() == 1
    assert iou(labels > 0, mask) > 0.93


def pressed_pair(seam_brightness: float) -> tuple[np.ndarray, np.ndarray]:
    """Two nuclei pressed into one convex ellipse (axes 13 x 26 px, no neck), a 2-px seam across its middle.

    Returns the plane (seam at ``seam_brightness`` x the nucleus's brightness above the
    background, Gaussian noise sd 2, seed 3) and the ellipse's mask.
    """
    mask = ellipse((48, 80), (24, 40), (13, 26))
    image = plane(mask, noise=2.0, seed=3)
    seam = mask & (np.abs(np.indices(mask.shape)[1] - 39.5) < 1)
    image[seam] = BACKGROUND + seam_brightness * (FOREGROUND - BACKGROUND)
    return image, mask


def test_a_seam_splits_a_pressed_pair_the_distance_map_cannot():
    image, mask = pressed_pair(0.4)
    without = segment_nuclei(image, diameter_px=26, params=NucleiParams(valley_depth=None))
    assert without.max() == 1  # one convex blob: the distance map has a single peak
    labels = segment_nuclei(image, diameter_px=26)
    assert labels.max() == 2
    columns = np.indices(mask.shape)[1]
    left, right = labels[24, 25], labels[24, 55]
    assert 0 < left != right > 0
    assert iou(labels == left, mask & (columns < 40)) > 0.85  # cut along the seam, not elsewhere
    assert iou(labels == right, mask & (columns >= 40)) > 0.85


def test_a_shallow_seam_does_not_split_a_nucleus():
    image, _ = pressed_pair(0.7)  # a 30 % dip: texture, not a division
    assert segment_nuclei(image, diameter_px=26).max() == 1
    assert segment_nuclei(image, diameter_px=26, params=NucleiParams(valley_depth=0.1)).max() == 2  # a lower bar


def test_a_dark_nucleolus_does_not_split_its_nucleus():
    """The seam round a dark nucleolus closes on itself; cut out, it would leave an annulus (4 pieces)."""
    image = plane(disc((64, 64), (32, 32), 12), noise=2.0, seed=4)
    image[disc((64, 64), (32, 32), 3.5)] = 20.0
    labels = segment_nuclei(image, diameter_px=24)
    assert labels.max() == 1
    assert labels[32, 32] == 1  # the nucleolus is inside its nucleus (holes filled)


def test_valley_curvature_equals_the_scikit_image_hessian():
    """Oracle: scikit-image's finite-difference Hessian and its eigenvalues, on a seeded random plane."""
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    image = np.random.default_rng(5).gamma(2.0, 20.0, (40, 56)).astype(np.float32)
    for sigma in (1.0, 2.0):
        h = hessian_matrix(image, sigma=sigma, mode="nearest", order="rc", use_gaussian_derivatives=False)
        larger, smaller = hessian_matrix_eigvals(h)
        expected = (larger - np.maximum(smaller, 0)) * sigma**2
        np.testing.assert_allclose(valley_curvature(image, sigma), expected, rtol=1e-4, atol=1e-3)


def test_size_filter_removes_specks_and_keeps_nuclei():
    mask = disc((64, 64), (32, 32), 10)
    mask[5:7, 5:7] = True  # a 4-pixel speck: equivalent diameter 2.3 px < 0.15 x 20 px
    mask[50:52, 55:58] = True
    labels = segment_nuclei(plane(mask), diameter_px=20)
    assert labels.max() == 1 and labels[32, 32] == 1 and labels[6, 6] == 0 and labels[51, 56] == 0


def test_size_filter_removes_objects_far_above_the_diameter():
    mask = disc((120, 120), (60, 60), 50)  # 100 px across, expected 20 px, bound 2 x 20
    params = NucleiParams(declump="none", max_diameter_fraction=2.0)
    assert segment_nuclei(plane(mask), diameter_px=20, params=params).max() == 0


def test_holes_are_filled_and_border_objects_optionally_removed():
    mask = disc((64, 64), (32, 32), 12) & ~disc((64, 64), (32, 32), 3)
    mask |= disc((64, 64), (3, 3), 8)
    labels = segment_nuclei(plane(mask), diameter_px=24)
    assert labels.max() == 2 and labels[32, 32] == labels[32, 40] != 0
    kept = segment_nuclei(plane(mask), diameter_px=24, params=NucleiParams(exclude_border=True))
    assert kept.max() == 1 and kept[0, 0] == 0 and kept[32, 32] == 1


def test_edge_refinement_puts_each_edge_where_its_own_object_fades():
    # A bright and a dim nucleus, both blurred: one global threshold makes the bright
    # one too big and the dim one too small; refinement gives both their true size.
    from scipy import ndimage as ndi

    shape = (64, 96)
    bright, dim = disc(shape, (32, 28), 12), disc(shape, (32, 68), 12)
    image = ndi.gaussian_filter(np.where(bright, 300.0, 0) + np.where(dim, 120.0, 0) + 10.0, 2.0)
    refined = segment_nuclei(image.astype(np.float32), diameter_px=24, params=NucleiParams(edge_level=0.5))
    outline = segment_nuclei(image.astype(np.float32), diameter_px=24, params=NucleiParams(edge_level=None))
    truth = bright.astype(np.uint32) + 2 * dim
    areas = np.bincount(outline.ravel())[1:]
    assert areas[0] > 1.15 * bright.sum() and areas[1] < 0.9 * dim.sum()  # one threshold: too big, too small
    assert score_field(truth, refined).f1[-1] == 1.0  # both IoU > 0.9 (measured 0.955: half a pixel of rim)
    assert score_field(truth, outline).f1[7] == 0.0  # both IoU < 0.85 (measured 0.81, 0.83)


def test_empty_and_flat_planes_give_no_labels():
    assert segment_nuclei(np.full((32, 32), 7.0, np.float32), diameter_px=10).max() == 0
    assert segment_nuclei(np.zeros((32, 32), np.uint16)).max() == 0  # nothing to estimate a diameter from


def test_diameter_is_estimated_when_not_given():
    image = plane(two_touching_discs(radius=10) | disc((48, 72), (8, 64), 6))
    assert segment_nuclei(image).max() == segment_nuclei(image, diameter_px=estimate_diameter(image)).max()
    squares = np.zeros((64, 64), np.float32)
    for y, x in ((16, 16), (16, 48), (48, 32)):
        squares[y - 6:y + 6, x - 6:x + 6] = 1.0
    assert estimate_diameter(squares, smoothing_px=0) == pytest.approx(np.sqrt(4 * 144 / np.pi))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"image must be a 2-D plane \(y, x\), got shape \(2, 8, 8\)"):
        segment_nuclei(np.zeros((2, 8, 8)), diameter_px=5)
    with pytest.raises(ValueError, match=r"segment_nuclei\.diameter_px must be a finite number > 0, got -3"):
        segment_nuclei(np.zeros((8, 8)), diameter_px=-3)
    with pytest.raises(ValueError, match="must be 2-D planes of one shape"):
        segment_cells(np.zeros((8, 8)), np.zeros((8, 9), np.uint32))
    with pytest.raises(ValueError, match=r"planes must be \(z, y, x\) or \(y, x\)"):
        project_planes(np.zeros((1, 2, 8, 8)))


# ---------------------------------------------------------------------------- planes
def test_project_planes_removes_offset_corrects_and_averages():
    planes = np.stack([np.full((4, 6), 300, np.uint16), np.full((4, 6), 500, np.uint16)])
    flat = np.ones((4, 6), np.float32)
    flat[:, :3] = 0.5
    out = project_planes(planes, illumination=flat, offset=100)
    assert out.dtype == np.float32 and out.shape == (4, 6)
    np.testing.assert_allclose(out[:, 3:], 300.0)  # mean of 200 and 400
    np.testing.assert_allclose(out[:, :3], 600.0)  # the dim half is brought up
    np.testing.assert_allclose(project_planes(planes[0], offset=100), 200.0)


# ---------------------------------------------------------------------------- cells
def cell_scene() -> tuple[np.ndarray, np.ndarray]:
    """Two cells sharing a border, and a blob of cytoplasm with no nucleus."""
    shape = (60, 100)
    nuclei = np.zeros(shape, np.uint32)
    nuclei[disc(shape, (30, 22), 5)] = 4
    nuclei[disc(shape, (30, 48), 5)] = 9
    cytoplasm = np.full(shape, 5.0, np.float32)
    cytoplasm[disc(shape, (30, 22), 16)] = 60.0
    cytoplasm[disc(shape, (30, 48), 14)] = 45.0
    cytoplasm[disc(shape, (30, 85), 10)] = 60.0  # debris or a cell whose nucleus is out of focus
    cytoplasm[nuclei > 0] = 20.0  # the cytoplasm stain is dim over the nucleus
    return cytoplasm, nuclei


@pytest.mark.parametrize("method", CELL_METHODS)
def test_cells_grow_from_their_nucleus_and_keep_its_id(method):
    cytoplasm, nuclei = cell_scene()
    cells = segment_cells(cytoplasm, nuclei, params=CellParams(method=method))
    assert cells.dtype == np.uint32
    assert set(np.unique(cells)) == {0, 4, 9}
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])  # a cell contains its whole nucleus
    assert cells[30, 8] == 4 and cells[30, 58] == 9  # and reaches out into its cytoplasm
    for k in (4, 9):  # each cell is one piece
        from scipy import ndimage as ndi

        assert ndi.label(cells == k)[1] == 1


def test_cytoplasm_without_a_nucleus_gets_no_cell():
    cytoplasm, nuclei = cell_scene()
    cells = segment_cells(cytoplasm, nuclei)
    assert np.all(cells[:, 75:] == 0)


def test_no_nuclei_no_cells():
    cytoplasm, nuclei = cell_scene()
    assert segment_cells(cytoplasm, np.zeros_like(nuclei)).max() == 0


def test_cell_border_follows_the_dim_valley_between_cells():
    shape = (40, 80)
    nuclei = np.zeros(shape, np.uint32)
    nuclei[18:22, 18:22] = 1
    nuclei[18:22, 58:62] = 2
    xx = np.indices(shape)[1]
    cytoplasm = (40 + 30 * np.cos((xx - 20) * np.pi / 40) ** 2).astype(np.float32)  # valley at x = 40
    cells = segment_cells(cytoplasm, nuclei, params=CellParams(method="intensity", threshold=1.0))
    boundary = np.flatnonzero(np.diff(cells[20].astype(int)))
    assert len(boundary) == 1 and abs(int(boundary[0]) - 39) <= 1


# ---------------------------------------------------------------------------- real nuclei
def _u2os_fields(root) -> list[tuple[str, np.ndarray, np.ndarray]]:
    with (root / "index.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if (r["height"], r["width"]) == ("520", "696") and r["modality"].startswith("fluorescence")]
    fields = []
    for row in rows:
        image = np.asarray(Image.open(root / row["image"]))
        grey = image[..., :3].mean(axis=-1) if image.ndim == 3 else image  # grey stored as RGB(A)
        fields.append((row["name"], np.rint(grey).astype(np.float32), np.asarray(Image.open(root / row["mask"]))))
    return fields


@functools.cache
def _u2os_scores(root: Path) -> tuple:
    fields = _u2os_fields(root)
    assert len(fields) == 10
    return tuple(score_field(truth, segment_nuclei(image)) for _, image, truth in fields)


@pytest.fixture
def u2os_scores(nuclei_data) -> tuple:
    """Scores of the classical nuclei on the ten U2OS images (computed once per session)."""
    return _u2os_scores(nuclei_data)


def test_classical_nuclei_on_the_ten_u2os_images(u2os_scores):
    """The ten 520 x 696 grey fluorescence images (BBBC039 stand-in), diameter estimated per image.

    Measured: average F1 0.731, F1@0.5 0.835 (0.724 and 0.819 without the seam cut). Asserted about
    0.01 below that, as a regression floor; the 0.75 target is the strict xfail below.
    """
    mean_f1 = float(np.mean([s.f1_mean for s in u2os_scores]))
    assert mean_f1 >= 0.723, f"average F1 {mean_f1:.3f}"
    assert float(np.mean([s.f1[0] for s in u2os_scores])) >= 0.825


@pytest.mark.xfail(strict=True, reason="classical Otsu + watershed reaches 0.731 on these ten, not 0.75: touching "
                                       "nuclei of different brightness merge (see benchmarks/classical_accuracy.py)")
def test_classical_nuclei_reach_the_target_on_u2os(u2os_scores):
    assert float(np.mean([s.f1_mean for s in u2os_scores])) >= 0.75


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cupy_input_gives_the_numpy_labels(cupy):
    image = plane(two_touching_discs(), noise=2.0)
    for declump in DECLUMP_METHODS:
        params = NucleiParams(declump=declump)
        on_gpu = segment_nuclei(cupy.asarray(image), diameter_px=20, params=params)
        assert isinstance(on_gpu, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(on_gpu), segment_nuclei(image, diameter_px=20, params=params))
    cytoplasm, nuclei = cell_scene()
    cells = segment_cells(cupy.asarray(cytoplasm), cupy.asarray(nuclei))
    np.testing.assert_array_equal(cupy.asnumpy(cells), segment_cells(cytoplasm, nuclei))


def test_nuclei_do_not_depend_on_a_camera_offset():
    """HeLa frames sit at ~33000 ADU: the threshold correction must scale the height above the
    dark floor, so adding a constant offset gives the same labels (it gave none before)."""
    rng = np.random.default_rng(33)
    yy, xx = np.mgrid[:120, :160]
    image = np.full((120, 160), 40.0)
    for cy, cx in ((30, 40), (80, 60), (60, 120)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 14**2] += 400
    image += rng.normal(0, 5, image.shape)
    plain = segment_nuclei(image, diameter_px=28)
    shifted = segment_nuclei(image + 33000, diameter_px=28)
    assert plain.max() == 3
    np.testing.assert_array_equal(shifted, plain)


def test_diameter_estimate_is_not_outvoted_by_specks():
    """Few large nuclei and many small bright specks: each blob votes with its area."""
    yy, xx = np.mgrid[:300, :300]
    image = np.zeros((300, 300))
    for cy, cx in ((70, 70), (70, 220), (220, 150)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 30**2] = 100.0  # diameter 60
    for k in range(12):  # 6x6 specks (36 px >= the 20 px vote floor)
        y, x = 10 + 24 * k, 280 - (k % 3) * 8
        image[y:y + 6, x:x + 6] = 100.0
    assert abs(estimate_diameter(image, smoothing_px=0) - 60) < 2
