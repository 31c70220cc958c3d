from __future__ import annotations

import json

import numpy as np
import pytest

from cellflow.nn.augment import (
    AugmentParams,
    augment,
    elastic_deform,
    mirror_crop,
    random_crop,
    random_displacement,
    warp,
)
from cellflow.nn.targets import three_class_targets

GEOMETRY_ONLY = dict(p_elastic=0.0, p_illumination=0.0, p_blur=0.0, p_intensity=0.0, p_noise=0.0)
INTENSITY_ONLY = dict(flip=False, rotate90=False, p_elastic=0.0, p_illumination=1.0, p_blur=1.0,
                      p_intensity=1.0, p_noise=1.0)


def blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """uint16 labels: random discs with scattered ids (later discs overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.uint16)
    for cy, cx, r, label in zip(*rng.uniform(0, 1, (3, 12)), rng.choice(60000, 12, replace=False) + 1):
        labels[(yy - cy * shape[0]) ** 2 + (xx - cx * shape[1]) ** 2 <= (4 + 6 * r) ** 2] = label
    return labels


def image_of(labels: np.ndarray) -> np.ndarray:
    """A (2, H, W) image that is a deterministic, injective-enough function of the label at each pixel."""
    ids = labels.astype(np.float64)
    return np.stack([ids % 251 + 3.0, (ids * 7) % 101 - 50.0]).astype(np.float32)


def sample(shape: tuple[int, int] = (40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labels = blobs(shape, seed)
    target, weights = three_class_targets(labels, min_area=1)
    return image_of(labels), labels, target, weights


def dihedral(array: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of the last two axes."""
    turns = [np.rot90(array, k, axes=(-2, -1)) for k in range(4)]
    return turns + [np.flip(t, axis=-1) for t in turns]


# ---------------------------------------------------------------------------- params
def test_params_round_trip_through_json_and_name_bad_fields():
    params = AugmentParams(crop_size=64, crop_overhang=10, gain_range=(0.5, 2.0), p_noise=0.0)
    assert AugmentParams.from_dict(params.to_dict()) == params
    assert AugmentParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params  # lists back to pairs
    with pytest.raises(ValueError, match=r"AugmentParams.p_blur must be a number in \[0.0, 1.0\], got 1.5"):
        AugmentParams(p_blur=1.5)
    with pytest.raises(ValueError, match=r"AugmentParams.gain_range must be a number in \(0.0, inf\), got 0"):
        AugmentParams(gain_range=(0, 2))
    with pytest.raises(ValueError, match=r"AugmentParams.noise_range must be a pair \(min, max\) with min <= max"):
        AugmentParams(noise_range=(0.2, 0.1))
    with pytest.raises(ValueError, match=r"AugmentParams.crop_size must be an integer >= 1, got 0"):
        AugmentParams(crop_size=0)
    with pytest.raises(ValueError, match=r"AugmentParams.flip must be True or False, got 1"):
        AugmentParams(flip=1)
    with pytest.raises(ValueError, match=r"AugmentParams.illumination_strength must be a number in \[0.0, "):
        AugmentParams(illumination_strength=1.0)
    with pytest.raises(ValueError, match=r"unknown keys \['p_flip'\]"):
        AugmentParams.from_dict({"p_flip": 0.5})


def test_inputs_are_validated():
    image, labels, *_ = sample()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"targets\[1\] must be an array whose last two axes are the image's"):
        augment(image, (labels, labels[:-1]), AugmentParams(), rng)
    with pytest.raises(ValueError, match=r"image must be a real \(C, H, W\) NumPy array, got shape \(40, 40\)"):
        augment(image[0], (labels,), AugmentParams(), rng)
    with pytest.raises(ValueError, match=r"targets must be a tuple of arrays, got ndarray"):
        augment(image, labels, AugmentParams(), rng)
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator"):
        augment(image, (labels,), AugmentParams(), 0)
    with pytest.raises(TypeError, match=r"params must be an AugmentParams, got dict"):
        augment(image, (labels,), {}, rng)
    with pytest.raises(ValueError, match=r"size must be a positive int or a pair of them, got 0"):
        random_crop(image, (labels,), 0, rng)
    with pytest.raises(ValueError, match=r"overhang must be an integer >= 0, got -1"):
        random_crop(image, (labels,), 8, rng, overhang=-1)
    with pytest.raises(ValueError, match=r"displacement must have shape \(2, 40, 40\), got \(2, 40, 39\)"):
        warp(image, (labels,), np.zeros((2, 40, 39)))


# ---------------------------------------------------------------------------- crops
@pytest.mark.parametrize("top, left", [(0, 0), (-3, 4), (5, -7), (-20, -25), (14, 30), (-40, 33)])
def test_mirror_crop_equals_a_crop_of_numpy_reflect_padding(top, left):
    array = np.arange(3 * 9 * 7).reshape(3, 9, 7)
    size = (12, 15)
    pad = 60  # more than several field widths: reflections of reflections
    padded = np.pad(array, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    expected = padded[:, top + pad:top + pad + size[0], left + pad:left + pad + size[1]]
    crop = mirror_crop(array, top, left, size)
    np.testing.assert_array_equal(crop, expected)
    assert crop.flags.c_contiguous


def test_mirror_crop_of_a_single_row_repeats_it():
    np.testing.assert_array_equal(mirror_crop(np.array([[4, 5]]), -2, 0, (3, 2)), [[4, 5]] * 3)


@pytest.mark.parametrize("shape, size, overhang", [((40, 40), 24, None), ((30, 50), (20, 36), 5), ((10, 12), 32, 4)])
def test_random_crop_is_a_window_of_the_reflected_field(shape, size, overhang):
    image, labels, target, weights = sample(shape, seed=1)
    h, w = (size, size) if isinstance(size, int) else size
    reach = min(h, w) // 2 if overhang is None else overhang
    allowed = []  # the origins the docstring promises, per axis
    for extent, window in zip(shape, (h, w)):
        if window <= extent + 2 * reach:
            allowed.append(range(-reach, extent + reach - window + 1))
        else:  # a window wider than the field and its overhangs covers the whole field
            allowed.append(range(extent - window, 1))
    pad = max(h, w)  # >= how far any allowed window reaches out
    padded = np.pad(labels, pad, mode="reflect")
    origins = set()
    for seed in range(40):
        out, (out_labels, out_target, out_weights) = random_crop(image, (labels, target, weights), size,
                                                                 np.random.default_rng(seed), overhang=overhang)
        assert out.shape == (2, h, w) and out_labels.shape == (h, w) and out_labels.dtype == np.uint16
        np.testing.assert_array_equal(out, image_of(out_labels))
        # A small field's reflection repeats, so a crop can match several windows: take one allowed.
        hits = _windows_equal_to(padded, out_labels, pad, allowed)
        assert hits, "the crop is no allowed window of the reflected field"
        np.testing.assert_array_equal(out_target, mirror_crop(target, *hits[0], (h, w)))
        np.testing.assert_array_equal(out_weights, np.array([1, 1, 10], np.float32)[out_target])
        origins.add(hits[0])
    assert any(top < 0 or left < 0 for top, left in origins)  # some crops reach into the mirrored extension
    assert len(origins) > 10


def _windows_equal_to(padded: np.ndarray, crop: np.ndarray, pad: int, allowed: list[range]) -> list[tuple[int, int]]:
    """(top, left), in field coordinates and within ``allowed``, of every window of ``padded`` equal to ``crop``."""
    windows = np.lib.stride_tricks.sliding_window_view(padded, crop.shape)
    rows, cols = (slice(r.start + pad, r.stop + pad) for r in allowed)
    hits = np.argwhere((windows[rows, cols] == crop).all(axis=(-2, -1)))
    return [(int(y) + allowed[0].start, int(x) + allowed[1].start) for y, x in hits]


# ---------------------------------------------------------------------------- flips, rotations
@pytest.mark.parametrize("shape", [(32, 32), (24, 36)])
def test_flips_and_rotations_keep_image_and_targets_aligned(shape):
    image, labels, target, weights = sample(shape, seed=2)
    params = AugmentParams(**GEOMETRY_ONLY)
    seen = set()
    for seed in range(48):
        out, (out_labels, out_target, out_weights) = augment(image, (labels, target, weights), params,
                                                             np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image_of(out_labels))  # pixel for pixel
        matches = [k for k, t in enumerate(dihedral(labels)) if t.shape == out_labels.shape
                   and np.array_equal(t, out_labels)]
        assert len(matches) == 1
        k = matches[0]
        np.testing.assert_array_equal(out_target, dihedral(target)[k])
        np.testing.assert_array_equal(out_weights, dihedral(weights)[k])
        assert all(a.flags.c_contiguous for a in (out, out_labels, out_target, out_weights))
        seen.add(k)
    # All 8 transforms of a square; only the 4 that keep the shape of a rectangle.
    assert seen == (set(range(8)) if shape[0] == shape[1] else {0, 2, 4, 6})


def test_crop_then_geometry_keeps_alignment():
    image, labels, target, _ = sample((50, 45), seed=3)
    one_hot = (np.arange(3)[:, None, None] == target).astype(np.float32)  # a (K, H, W) target moves too
    params = AugmentParams(crop_size=32, **GEOMETRY_ONLY)
    for seed in range(20):
        out, (out_labels, out_target, out_one_hot) = augment(image.astype(np.uint16) if seed % 2 else image,
                                                             (labels, target, one_hot), params,
                                                             np.random.default_rng(seed))
        assert out.shape == (2, 32, 32) and out.dtype == np.float32 and out_one_hot.shape == (3, 32, 32)
        np.testing.assert_array_equal(out[0], image_of(out_labels)[0])
        np.testing.assert_array_equal(out_one_hot, (np.arange(3)[:, None, None] == out_target))
        assert set(np.unique(out_labels)) <= set(np.unique(labels))


# ---------------------------------------------------------------------------- elastic
def test_elastic_warp_keeps_ids_and_the_image_label_relation():
    image, labels, target, weights = sample((64, 64), seed=4)
    displacement = random_displacement((64, 64), np.random.default_rng(5), displacement_px=3.0, smoothness_px=8.0)
    assert displacement.std(axis=(1, 2)) == pytest.approx([3.0, 3.0])
    out, (out_labels, out_target, out_weights) = warp(image, (labels, target, weights), displacement)
    assert out.dtype == np.float32 and out_labels.dtype == labels.dtype
    assert not np.array_equal(out_labels, labels)  # it did move things
    assert set(np.unique(out_labels)) <= set(np.unique(labels))  # nearest neighbour: no new ids
    assert set(np.unique(out_target)) <= {0, 1, 2} and set(np.unique(out_weights)) <= {1.0, 10.0}
    np.testing.assert_array_equal(out_weights, np.array([1, 1, 10], np.float32)[out_target])  # moved together

    # Independent reference: the source s = p + d(p) in the field extended by np.pad(mode="reflect").
    pad = 32  # > max |d| (about 4 standard deviations)
    assert np.abs(displacement).max() < pad
    padded = np.pad(labels, pad, mode="reflect")
    source = np.indices((64, 64)) + displacement + pad
    nearest = padded[tuple(np.rint(source).astype(int))]
    np.testing.assert_array_equal(out_labels, nearest)
    base = np.floor(source).astype(int)
    corners = np.stack([padded[base[0] + dy, base[1] + dx] for dy in (0, 1) for dx in (0, 1)])
    # Bilinear: a convex mix of f at the 4 corners around s. Where they all carry one
    # label (away from label edges, most of the field) the image equals f(label) up to
    # float32 rounding of the weights (~1e-5 on values <= 255); elsewhere it lies
    # between the corners' values.
    uniform = (corners == corners[0]).all(axis=0)
    assert uniform.mean() > 0.8
    np.testing.assert_allclose(out[:, uniform], image_of(out_labels)[:, uniform], atol=1e-4)
    values = np.stack([image_of(c) for c in corners])  # (4, C, H, W)
    assert (out >= values.min(axis=0) - 1e-4).all() and (out <= values.max(axis=0) + 1e-4).all()
    assert not np.allclose(out, image_of(out_labels), atol=1e-3)  # label edges really are interpolated

    # elastic_deform is warp by random_displacement, drawn from the same generator.
    again = elastic_deform(image, (labels,), np.random.default_rng(5), displacement_px=3.0, smoothness_px=8.0)
    np.testing.assert_array_equal(again[0], out)
    np.testing.assert_array_equal(again[1][0], out_labels)


def test_elastic_in_augment_is_seeded_and_keeps_ids():
    image, labels, target, _ = sample((48, 48), seed=6)
    params = AugmentParams(p_elastic=1.0, p_illumination=0, p_blur=0, p_intensity=0, p_noise=0, crop_size=40)
    out_a, (labels_a, _) = augment(image, (labels, target), params, np.random.default_rng(1))
    out_b, (labels_b, _) = augment(image, (labels, target), params, np.random.default_rng(1))
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert set(np.unique(labels_a)) <= set(np.unique(labels))


# ---------------------------------------------------------------------------- intensity
def test_intensity_transforms_touch_the_image_only():
    image, labels, target, weights = sample((40, 40), seed=7)
    params = AugmentParams(**INTENSITY_ONLY)
    for seed in range(6):
        out, (out_labels, out_target, out_weights) = augment(image, (labels, target, weights), params,
                                                             np.random.default_rng(seed))
        np.testing.assert_array_equal(out_labels, labels)
        np.testing.assert_array_equal(out_target, target)
        np.testing.assert_array_equal(out_weights, weights)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert not np.allclose(out, image)


@pytest.mark.parametrize("poisson", [0.0, 1.0])
def test_noise_has_the_documented_scale(poisson):
    # A flat 10 on a 0 background, noise only, sigma fixed at 0.1 channel stds.
    image = np.zeros((1, 200, 200), np.float32)
    image[0, :, 100:] = 10.0  # std of the channel: 5
    params = AugmentParams(flip=False, rotate90=False, p_elastic=0, p_illumination=0, p_blur=0, p_intensity=0,
                           p_noise=1.0, noise_range=(0.1, 0.1), poisson_fraction=poisson)
    out, _ = augment(image, (), params, np.random.default_rng(0))
    noise = out - image
    bright_std = 0.1 * np.sqrt(5 * 10) if poisson else 0.1 * 5  # 0.707 / 0.5
    dark_std = 0.0 if poisson else 0.1 * 5
    # 20000 samples per half: the sample std is within ~1% (3 standard errors ~ 1.5%)
    assert noise[0, :, 100:].std() == pytest.approx(bright_std, rel=0.03)
    assert noise[0, :, :100].std() == pytest.approx(dark_std, rel=0.03, abs=1e-6)


def test_illumination_is_smooth_multiplicative_and_bounded():
    image = np.ones((2, 64, 48), np.float32)
    params = AugmentParams(flip=False, rotate90=False, p_elastic=0, p_illumination=1.0, illumination_strength=0.3,
                           p_blur=0, p_intensity=0, p_noise=0)
    out, _ = augment(image, (), params, np.random.default_rng(3))
    np.testing.assert_array_equal(out[0], out[1])  # one field for all channels
    assert 0.7 - 1e-6 <= out.min() and out.max() <= 1.3 + 1e-6 and out.std() > 0.005
    assert np.abs(np.diff(out[0], axis=0)).max() < 0.05 and np.abs(np.diff(out[0], axis=1)).max() < 0.05


# ---------------------------------------------------------------------------- seeds
def test_same_seed_same_output_different_seed_different_output():
    image, labels, target, weights = sample((48, 48), seed=8)
    params = AugmentParams(crop_size=40, p_elastic=1.0, p_illumination=1.0, p_blur=1.0, p_intensity=1.0,
                           p_noise=1.0)

    def run(seed: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        return augment(image, (labels, target, weights), params, np.random.default_rng(seed))

    first, again, other = run(11), run(11), run(12)
    np.testing.assert_array_equal(first[0], again[0])
    for a, b in zip(first[1], again[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1][0], other[1][0])


def test_zoom_crop_by_two_over_the_whole_field_repeats_every_pixel():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, (16, 16)).astype(np.uint16)
    image = rng.random((1, 16, 16)).astype(np.float32)
    from cellflow.nn.augment import zoom_crop

    out, (zoomed,) = zoom_crop(image, (labels,), 32, 2.0, rng, overhang=0)  # window 16 = the field: origin 0
    np.testing.assert_array_equal(zoomed, np.kron(labels, np.ones((2, 2), np.uint16)))
    # bilinear at p/2 - 1/4: the mean of 2x2 output blocks (away from the mirrored edge) is the input pixel
    blocks = out[0, 2:-2, 2:-2].reshape(14, 2, 14, 2).mean(axis=(1, 3))
    assert np.abs(blocks - image[0, 1:-1, 1:-1]).max() < 0.5


def test_augment_with_zoom_scales_object_areas():
    labels = np.zeros((96, 96), np.uint16)
    labels[40:56, 40:56] = 1
    image = (labels > 0).astype(np.float32)[None]
    params = AugmentParams(crop_size=96, crop_overhang=0, p_scale=1.0, scale_range=(2.0, 2.0), p_elastic=0.0,
                           p_illumination=0, p_blur=0, p_intensity=0, p_noise=0)
    areas = []
    for seed in range(20):
        _, (out,) = augment(image, (labels,), params, np.random.default_rng(seed))
        areas.append(int((out == 1).sum()))
    # a 48-px window of the 96-px field always holds part of the 16x16 square or none; whole ones are 4x larger
    assert max(areas) == 4 * 16 * 16
    with pytest.raises(ValueError, match="scale_range"):
        AugmentParams(p_scale=0.5, scale_range=(0.0, 2.0))
