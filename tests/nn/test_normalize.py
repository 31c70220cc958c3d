from __future__ import annotations

import numpy as np
import pytest

from cellflow.nn.normalize import NORMALIZATION_METHODS, Normalization, normalize
from cellflow.ops import to_host

HELA_OFFSET = 33000  # ADU: the camera offset the HeLa frames sit at


def cells_image(seed: int = 0, shape: tuple[int, ...] = (2, 48, 40)) -> np.ndarray:
    """uint16 fluorescence-like channels: dim background, bright blobs, shot noise (no offset)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape[-2:])
    signal = np.zeros(shape, np.float64)
    for channel in range(shape[0]):
        for cy, cx in rng.uniform(5, np.array(shape[-2:]) - 5, (6, 2)):
            signal[channel] += 800 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    return rng.poisson(signal + 100).astype(np.uint16)


# ---------------------------------------------------------------------------- params
def test_params_round_trip_and_validation():
    for method in NORMALIZATION_METHODS:
        norm = Normalization(method, low=0.5, high=99.5, eps=1e-3)
        assert Normalization.from_dict(norm.to_dict()) == norm
    assert Normalization().method == "percentile"
    with pytest.raises(ValueError, match=r"Normalization.method must be one of \('median', 'unit_minus_median', "
                                         r"'percentile'\), got 'minmax'"):
        Normalization("minmax")
    with pytest.raises(ValueError, match=r"Normalization.high must be in \(low, 100\]"):
        Normalization(low=50, high=40)
    with pytest.raises(ValueError, match=r"Normalization.low must be in \[0, 100\), got -1"):
        Normalization(low=-1)
    with pytest.raises(ValueError, match=r"Normalization.eps must be > 0, got 0"):
        Normalization(eps=0)
    with pytest.raises(ValueError, match=r"Normalization.low must be a finite number, got nan"):
        Normalization(low=float("nan"))
    with pytest.raises(ValueError, match=r"unknown keys \['lo'\]"):
        Normalization.from_dict({"lo": 1.0})


def test_inputs_are_validated():
    with pytest.raises(ValueError, match=r"image must be a real \(C, M, N\) or \(M, N\) array, got shape \(4,\)"):
        normalize(np.zeros(4), Normalization())
    with pytest.raises(ValueError, match=r"dtype complex128"):
        normalize(np.zeros((3, 3), complex), Normalization())
    with pytest.raises(TypeError, match=r"norm must be a Normalization, got dict"):
        normalize(np.zeros((3, 3)), {"method": "median"})


# ---------------------------------------------------------------------------- percentile
def test_percentile_maps_the_percentiles_to_exactly_0_and_1():
    # 1001 distinct values 0..1000: with linear interpolation the 1st percentile is
    # element 0.01 * 1000 = 10 and the 99.8th is element 998, both pixel values.
    values = np.random.default_rng(0).permutation(1001).astype(np.uint16) + HELA_OFFSET
    image = values.reshape(1, 7, 143)
    out = normalize(image, Normalization("percentile", low=1.0, high=99.8))
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out[image == HELA_OFFSET + 10].item() == 0.0
    assert out[image == HELA_OFFSET + 998].item() == 1.0
    np.testing.assert_allclose(out, (image.astype(np.float64) - HELA_OFFSET - 10) / 988, rtol=1e-6, atol=1e-7)
    assert out.min() < 0 and out.max() > 1  # not clipped


def test_channels_are_normalised_independently():
    image = cells_image(1)
    image[1] = image[1] * 3 + 500
    norm = Normalization("percentile")
    out = normalize(image, norm)
    for channel in range(2):
        np.testing.assert_array_equal(out[channel], normalize(image[channel], norm))
        low, high = np.percentile(image[channel].astype(np.float64), [1.0, 99.8])
        np.testing.assert_allclose(out[channel], (image[channel] - low) / (high - low), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["percentile", "unit_minus_median"])
def test_a_constant_offset_changes_nothing(method):
    image = cells_image(2)
    norm = Normalization(method)
    # Statistics are taken in float64, where uint16 values and their sums are exact;
    # only the final float32 rounding differs (~6e-8 relative), hence the tolerance.
    np.testing.assert_allclose(normalize(image + HELA_OFFSET, norm), normalize(image, norm), rtol=0, atol=1e-6)
    np.testing.assert_allclose(normalize(image * 2.5, norm), normalize(image, norm), rtol=0, atol=1e-6)


def test_unit_minus_median_by_hand():
    image = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 10.0]])  # min 0, max 10, median 2.5
    expected = image / 10 - 0.25
    np.testing.assert_allclose(normalize(image, Normalization("unit_minus_median")), expected, atol=1e-7)


# ---------------------------------------------------------------------------- median
def test_median_divides_by_the_median_and_ignores_a_gain():
    image = cells_image(3).astype(np.float64)
    out = normalize(image, Normalization("median"))
    np.testing.assert_allclose(np.median(out, axis=(1, 2)), 1.0, rtol=1e-6)
    # A gain (brighter illumination) changes nothing: what Van Valen et al. want it for.
    np.testing.assert_allclose(normalize(image * 4.0, Normalization("median")), out, rtol=1e-6)


def test_median_is_not_offset_invariant_it_squeezes_the_contrast():
    image = cells_image(4)
    plain = normalize(image, Normalization("median"))
    offset = normalize(image + HELA_OFFSET, Normalization("median"))
    # (x + c) / (median + c): the spread shrinks by median / (median + c), ~300x here.
    median = np.median(image, axis=(1, 2))
    ratio = np.std(offset, axis=(1, 2)) / np.std(plain, axis=(1, 2))
    np.testing.assert_allclose(ratio, median / (median + HELA_OFFSET), rtol=1e-4)
    expected = (image + float(HELA_OFFSET)) / (median + HELA_OFFSET)[:, None, None]
    np.testing.assert_allclose(offset, expected, rtol=1e-6)
    # The blobs are > 10x the background without the offset, < 1.1x with it.
    assert plain.max() > 10 and offset.max() < 1.1


def test_median_zero_falls_back_to_the_mean_then_to_one():
    sparse = np.zeros((2, 10, 10), np.float32)
    sparse[0, :2] = 5.0  # median 0, mean 1
    out = normalize(sparse, Normalization("median"))
    np.testing.assert_array_equal(out[0], sparse[0])  # divided by the mean, 1.0
    np.testing.assert_array_equal(out[1], 0.0)  # all zero: divided by 1
    sparse[0, :2] = 10.0  # mean 2
    np.testing.assert_array_equal(normalize(sparse, Normalization("median"))[0], sparse[0] / 2)


@pytest.mark.parametrize("method", NORMALIZATION_METHODS)
def test_a_flat_channel_gives_finite_output(method):
    flat = np.full((1, 6, 6), 7, np.uint16)
    out = normalize(flat, Normalization(method))
    assert np.isfinite(out).all()
    if method != "median":
        np.testing.assert_array_equal(out, 0.0)


# ---------------------------------------------------------------------------- CuPy
@pytest.mark.gpu
@pytest.mark.parametrize("method", NORMALIZATION_METHODS)
def test_cupy_matches_numpy(method, cupy):
    image = cells_image(5) + HELA_OFFSET
    norm = Normalization(method)
    gpu = normalize(cupy.asarray(image), norm)
    assert isinstance(gpu, cupy.ndarray) and gpu.dtype == np.float32
    # Same float64 statistics on both; reductions may sum in another order (~1e-12).
    np.testing.assert_allclose(to_host(gpu), normalize(image, norm), rtol=1e-6, atol=1e-6)
