from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellflow.ops import to_host
from cellflow.ops.illumination import (
    ILLUMINATION_METHODS,
    BackgroundSums,
    apply_illumination,
    background_flatness,
    background_mask,
    background_sums,
    estimate_illumination,
    fit_surface,
)
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, true_illumination

OFFSET = 100.0


def rms(estimate: np.ndarray, truth: np.ndarray) -> float:
    """RMS of the relative difference after normalising both to mean 1."""
    ratio = (estimate / estimate.mean()) / (truth / truth.mean())
    return float(np.sqrt(np.mean((ratio - 1) ** 2)))


def quadratic_vignette(shape: tuple[int, int], falloff: float = 0.3) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    r2 = ((y - 0.45 * shape[0]) / shape[0]) ** 2 + ((x - 0.55 * shape[1]) / shape[1]) ** 2
    return 1.0 - falloff * r2 / r2.max()


def blobs(shape: tuple[int, int], n: int, radius: int, seed: int) -> np.ndarray:
    """Boolean mask of ``n`` random discs (stand-ins for cells)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[tuple(rng.integers(0, s, n) for s in shape)] = True
    return ndi.binary_dilation(mask, iterations=radius)


def total_of(parts: list[BackgroundSums]) -> BackgroundSums:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


# ---------------------------------------------------------------------------- hand-checkable kernels
@pytest.mark.parametrize("method", ILLUMINATION_METHODS)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_constant_fields_give_a_constant_function(method, dtype):
    fields = [np.full((40, 56), 350, dtype) for _ in range(3)]
    total = total_of([background_sums(f, block_px=8, offset=OFFSET) for f in fields])
    illumination = estimate_illumination(total, method=method)
    assert illumination.dtype == np.float32 and illumination.shape == (40, 56)
    # Float32 rounding of a constant through a least-squares solve: a few ulps.
    np.testing.assert_allclose(illumination, 1.0, atol=1e-5)
    np.testing.assert_allclose(apply_illumination(fields[0], illumination, offset=OFFSET), 250.0, rtol=1e-5)


@pytest.mark.parametrize("degree", [1, 2])
def test_polynomial_fit_recovers_a_linear_or_quadratic_vignette_exactly(degree):
    y, x = np.mgrid[:20, :24].astype(float)
    surface = 1.0 + 0.01 * y - 0.02 * x + (degree == 2) * (0.001 * x * y - 0.0008 * y**2)
    # Exact in exact arithmetic; 1e-10 leaves room for the least-squares solve.
    np.testing.assert_allclose(fit_surface(surface, basis="polynomial", degree=degree), surface, atol=1e-10)


def test_quadratic_vignette_is_recovered_from_noiseless_fields():
    shape = (96, 128)
    vignette = quadratic_vignette(shape)
    fields = [(300 * vignette + OFFSET).astype(np.float32) for _ in range(2)]
    total = total_of([background_sums(f, block_px=8, offset=OFFSET) for f in fields])
    illumination = estimate_illumination(total, method="polynomial", degree=2)
    # Noiseless data and an exact model: only float32 rounding remains.
    assert rms(illumination, vignette) < 1e-4


@pytest.mark.parametrize("basis", ["spline", "polynomial"])
def test_iterative_fit_excludes_foreground_blobs(basis):
    vignette = quadratic_vignette((60, 60))
    foreground = blobs((60, 60), n=10, radius=5, seed=3)
    noise = np.random.default_rng(0).normal(0.0, 0.01, vignette.shape)
    image = vignette * (1 + noise) + 2.0 * foreground  # blobs: ~16 % of the grid, about 3x the background
    plain = fit_surface(image, basis=basis, degree=2, iterations=0)
    robust = fit_surface(image, basis=basis, degree=2, iterations=5)
    assert foreground.mean() > 0.15
    assert rms(plain, vignette) > 0.1  # the blobs drag a plain fit up
    # With the blobs out, what is left is the 1 % noise averaged by the fit (0.03-0.3 %).
    assert rms(robust, vignette) < 0.01


def test_background_mask_drops_objects_even_where_they_cover_whole_blocks():
    image = np.full((96, 96), 20.0)
    image[20:60, 30:70] = 200.0  # wider than the 16-px reference blocks
    mask = background_mask(image, object_px=64)
    assert not mask[25:55, 35:65].any()
    assert mask[:10].all() and mask[80:].all()


def test_background_sums_handles_partial_blocks_and_saturation():
    image = np.full((37, 50), 200, np.uint8)
    image[0, 0] = 255  # saturated, yet within the tolerance once smoothed: only the rule drops it
    sums = background_sums(image, block_px=8, object_px=16)
    assert sums.total.shape == sums.count.shape == (5, 7)
    assert sums.count.sum() == image.size - 1
    assert sums.count[0, 0] == 63
    assert sums.count[-1, -1] == 5 * 2  # the last block holds 37 - 32 rows and 50 - 48 columns
    np.testing.assert_array_equal(sums.level, 200.0)


def test_sums_add_in_any_grouping_and_refuse_mismatched_fields():
    rng = np.random.default_rng(0)
    parts = [background_sums(rng.poisson(50, (64, 64)) + 100, offset=OFFSET, object_px=32) for _ in range(5)]
    left = total_of(parts)
    tree = (parts[0] + parts[1]) + ((parts[2] + parts[3]) + parts[4])
    assert left.fields == tree.fields == 5
    np.testing.assert_allclose(left.total, tree.total, rtol=1e-12)  # float64 sums of integers: exact
    np.testing.assert_array_equal(left.count, tree.count)
    other = background_sums(np.ones((64, 64)), block_px=16)
    with pytest.raises(ValueError, match=r"cannot add BackgroundSums .* blocks of 8 px .* blocks of 16 px"):
        parts[0] + other


def test_estimate_refuses_empty_sums_and_unknown_methods():
    empty = BackgroundSums(np.zeros((4, 4)), np.zeros((4, 4)), (32, 32), 8)
    with pytest.raises(ValueError, match="no background pixel"):
        estimate_illumination(empty)
    full = BackgroundSums(np.ones((4, 4)), np.ones((4, 4)), (32, 32), 8)
    with pytest.raises(ValueError, match=r"method must be one of \('median', 'spline', 'polynomial'\), got 'mean'"):
        estimate_illumination(full, method="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="basis must be 'spline' or 'polynomial'"):
        fit_surface(np.ones((8, 8)), basis="median")  # type: ignore[arg-type]


def test_apply_illumination_subtracts_offset_then_divides():
    image = np.array([[110, 130], [100, 90]], np.uint16)
    illumination = np.array([[0.5, 1.5], [1.0, 1.0]], np.float32)
    corrected = apply_illumination(image, illumination, offset=OFFSET)
    assert corrected.dtype == np.float32
    np.testing.assert_array_equal(corrected, [[20, 20], [0, -10]])  # below the offset stays negative


def test_flatness_is_zero_for_a_flat_background_and_ignores_foreground():
    rng = np.random.default_rng(1)
    foreground = blobs((64, 64), n=8, radius=3, seed=2)
    images = np.where(foreground, 500.0, 40.0)[None]
    assert background_flatness(images, ~foreground[None]) == 0.0
    shaded = images * quadratic_vignette((64, 64))
    assert background_flatness(shaded, ~foreground[None], block_px=16) > 0.05
    noisy = rng.normal(40.0, 1.0, (4, 64, 64))
    assert background_flatness(noisy, np.ones(noisy.shape, bool)) < 0.01


# ---------------------------------------------------------------------------- synthetic plates
@pytest.fixture(scope="module")
def plate() -> tuple[SyntheticSpec, list]:
    """Six 256x256 fields of one plate, in-focus plane only, with truth."""
    spec = SyntheticSpec(shape_yx=(256, 256), wells=("A01", "A02"), sites=3, n_z=1, seed=5)
    return spec, [synthesize_field(spec, plate="P1", well=w, site=s) for w in spec.wells for s in range(spec.sites)]


def plate_sums(spec: SyntheticSpec, fields: list, c: int) -> BackgroundSums:
    return total_of([background_sums(f.images[0, c, 0], offset=spec.camera_offset_adu) for f in fields])


@pytest.mark.parametrize("method", ILLUMINATION_METHODS)
@pytest.mark.parametrize("channel", ["DNA", "Cyto", "BF"])
def test_estimate_matches_the_true_vignetting_within_3_percent(plate, method, channel):
    spec, fields = plate
    illumination = estimate_illumination(plate_sums(spec, fields, spec.channels.index(channel)), method=method)
    assert abs(float(illumination.mean()) - 1.0) < 1e-5  # normalised to mean 1 over the field
    # The bar is 3 % RMS; at this size the estimate is typically within 0.2-1.2 %.
    assert rms(illumination, true_illumination(spec, plate="P1", channel=channel)) < 0.03


@pytest.mark.parametrize("channel", ["DNA", "Cyto", "BF"])
def test_correction_flattens_the_background_at_least_5_fold(plate, channel):
    spec, fields = plate
    c = spec.channels.index(channel)
    illumination = estimate_illumination(plate_sums(spec, fields, c))
    raw = np.stack([f.images[0, c, 0].astype(np.float32) - spec.camera_offset_adu for f in fields])
    corrected = np.stack([apply_illumination(f.images[0, c, 0], illumination, offset=spec.camera_offset_adu)
                          for f in fields])
    # Background: 10 px (~3 haze sigmas) away from every true cell.
    background = np.stack([~ndi.binary_dilation(f.truth_cells[0] > 0, iterations=10) for f in fields])
    before = background_flatness(raw, background)
    after = background_flatness(corrected, background)
    assert before > 0.05
    assert before / after >= 5.0


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_cupy_kernels_match_numpy(cupy):
    rng = np.random.default_rng(7)
    vignette = quadratic_vignette((128, 160))
    fields = [(rng.poisson(40 * vignette * (1 + 4 * blobs(vignette.shape, 5, 5, s))) + OFFSET).astype(np.uint16)
              for s in range(3)]
    cpu = total_of([background_sums(f, offset=OFFSET, object_px=48) for f in fields])
    gpu = total_of([background_sums(cupy.asarray(f), offset=OFFSET, object_px=48) for f in fields])
    # Same float32 smoothing on both sides up to summation order: the masks may differ
    # at a handful of pixels exactly on the tolerance, hence counts within 0.5 %.
    np.testing.assert_allclose(to_host(gpu.count), cpu.count, rtol=5e-3, atol=1)
    for method in ILLUMINATION_METHODS:
        expected = estimate_illumination(cpu, method=method)
        result = estimate_illumination(gpu, method=method)
        np.testing.assert_allclose(to_host(result), expected, rtol=2e-3)
        np.testing.assert_allclose(
            to_host(apply_illumination(cupy.asarray(fields[0]), result, offset=OFFSET)),
            apply_illumination(fields[0], to_host(result), offset=OFFSET), rtol=1e-6,
        )
