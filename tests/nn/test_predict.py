from __future__ import annotations

import numpy as np
import pytest
import torch

from cellflow.nn.checkpoint import save_checkpoint
from cellflow.nn.models import build_model
from cellflow.nn.normalize import Normalization
from cellflow.nn.predict import (
    WINDOW_FLOOR,
    WINDOWS,
    ModelCache,
    blend_window,
    mirror_indices,
    plan_tiles,
    predict_plane,
    set_worker_threads,
    whole_image_probabilities,
)

SHAPE = (100, 130)  # divisible neither by the tiles below nor by D = 8
# Tiling tolerance: tiles and the whole image compute the same sums over the same inputs, in a
# different order (convolution algorithms depend on the input size); float32 rounding of
# O(1) probabilities stays near 1e-7, so 1e-4 leaves a wide margin and still catches any
# wrong pixel (the short-halo control below is > 1e-2).
TOLERANCE = 1e-4


def tiny_model(name: str) -> torch.nn.Module:
    """A seeded tiny network whose outputs vary strongly with the input and its far context.

    Freshly initialised networks give probabilities close to uniform and barely feel the rim of
    their receptive field; doubling every batch-norm gain (each layer amplifies) and scaling the
    last layer makes a wrong context show up as a clear error.
    """
    torch.manual_seed(0)
    options = {
        "unet": {"width": 2},
        "resunet": {"width": 2, "residual_widths": (2, 2, 4)},
        "deepcell": {"width": 2, "dense_width": 2},
    }[name]
    model = build_model(name, in_channels=2, classes=3, **options)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.mul_(10.0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(2.0)
    return model.eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(2, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module", params=["unet", "resunet", "deepcell"])
def model_and_reference(request, image):
    model = tiny_model(request.param)
    return model, whole_image_probabilities(model, image)


# ---------------------------------------------------------------------------- geometry
def test_mirror_indices_match_numpy_reflect_also_far_outside():
    values = np.arange(5)
    padded = np.pad(values, 12, mode="reflect")  # numpy repeats the reflection for long pads
    np.testing.assert_array_equal(values[mirror_indices(-12, 17, 5)], padded)
    assert mirror_indices(-2, 3, 1).tolist() == [0] * 5


@pytest.mark.parametrize("tile", [48, 64, 37, 512])
@pytest.mark.parametrize("factor", [1, 8])
def test_plan_covers_the_plane_with_aligned_origins(tile, factor):
    plan = plan_tiles(SHAPE, tile=tile, halo=30, downsampling=factor)
    assert plan.halo % factor == 0 and plan.halo >= 30
    for origins, kept, size in zip((plan.origins_y, plan.origins_x), plan.tile, SHAPE):
        assert kept % factor == 0
        assert all(o % factor == 0 for o in origins)
        covered = np.zeros(size, bool)
        for o in origins:
            covered[o:o + kept] = True
        assert covered.all()
        assert origins[-1] < size  # no tile is pure padding
    assert all(side % factor == 0 for side in plan.input_shape)


def test_plan_rejects_an_overlap_as_large_as_the_tile():
    with pytest.raises(ValueError, match=r"overlap must be less than the tile 64, got 64"):
        plan_tiles((300, 300), tile=64, halo=8, overlap=64)
    with pytest.raises(ValueError, match=r"tile must be >= 1, got 0"):
        plan_tiles((300, 300), tile=0, halo=8)


# ---------------------------------------------------------------------------- blending
@pytest.mark.parametrize("window", WINDOWS)
def test_window_is_positive_and_normalisation_keeps_a_constant(window):
    weights = blend_window((40, 56), overlap=(16, 24), window=window)
    assert weights.dtype == np.float32
    assert weights.min() >= WINDOW_FLOOR * WINDOW_FLOOR * (1 - 1e-6) and weights.max() <= 1.0
    # Blend a constant prediction over an irregular tiling: the result stays that constant.
    plan = plan_tiles((100, 130), tile=40, halo=0, overlap=16)
    weights = blend_window(plan.tile, overlap=plan.overlap, window=window)
    total, weight_sum = np.zeros((100, 130)), np.zeros((100, 130))
    for y, x in plan.origins:
        w = weights[: 100 - y, : 130 - x] if y + 40 > 100 or x + 40 > 130 else weights
        total[y:y + w.shape[0], x:x + w.shape[1]] += 0.7 * w
        weight_sum[y:y + w.shape[0], x:x + w.shape[1]] += w
    assert weight_sum.min() > 0
    # 0.7 * float32 weights is float32 (NEP 50): the constant is exact to float32 rounding.
    np.testing.assert_allclose(total / weight_sum, 0.7, rtol=1e-6)


def test_unknown_window_is_named():
    with pytest.raises(ValueError, match=r"window must be one of .*got 'hann'"):
        blend_window((8, 8), window="hann")


# ---------------------------------------------------------------------------- tiling invariance
@pytest.mark.parametrize(("tile", "window", "batch_size"), [(48, "cosine", 3), (64, "gaussian", 4), (40, "linear", 1)])
def test_tiled_equals_whole_image_with_the_minimal_halo(model_and_reference, image, tile, window, batch_size):
    model, reference = model_and_reference
    tiled = predict_plane(model, image, tile=tile, halo=model.receptive_radius, window=window, batch_size=batch_size)
    assert tiled.shape == (3, *SHAPE) and tiled.dtype == np.float32
    assert np.abs(tiled - reference).max() <= TOLERANCE
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)


def test_the_halo_defaults_to_the_radius_and_explicit_overlap_works(model_and_reference, image):
    model, reference = model_and_reference
    assert np.abs(predict_plane(model, image, tile=56) - reference).max() <= TOLERANCE
    assert np.abs(predict_plane(model, image, tile=56, overlap=0) - reference).max() <= TOLERANCE
    assert np.abs(predict_plane(model, image, tile=512) - reference).max() <= TOLERANCE  # one tile


def test_a_halo_below_the_radius_changes_the_result(model_and_reference, image):
    """Negative control: the invariance test can fail."""
    model, reference = model_and_reference
    tiled = predict_plane(model, image, tile=48, halo=model.receptive_radius // 4)
    assert np.abs(tiled - reference).max() > 100 * TOLERANCE


def test_whole_image_inference_does_not_depend_on_the_image_origin_phase(image):
    # Cropping D-aligned rows off the top leaves the remaining interior unchanged.
    model = tiny_model("unet")
    full = whole_image_probabilities(model, image)
    cropped = whole_image_probabilities(model, image[:, 8:, :])
    radius = model.receptive_radius
    inner = (slice(None), slice(radius + 8, SHAPE[0] - radius), slice(radius, SHAPE[1] - radius))
    np.testing.assert_allclose(cropped[:, radius:SHAPE[0] - 8 - radius, radius:SHAPE[1] - radius],
                               full[inner], atol=TOLERANCE)


def test_predict_plane_checks_its_inputs(image):
    model = tiny_model("deepcell")
    with pytest.raises(ValueError, match=r"image must be \(C, H, W\) with C = the model's 2 input channels"):
        predict_plane(model, image[:1])
    with pytest.raises(TypeError, match=r"normalised float array, got dtype uint16"):
        predict_plane(model, image.astype(np.uint16))
    with pytest.raises(ValueError, match=r"model must be in eval mode"):
        predict_plane(model.train(), image)


# ---------------------------------------------------------------------------- cache
def test_model_cache_loads_each_checkpoint_once(tmp_path):
    model = tiny_model("deepcell")
    path = tmp_path / "model.pt"
    sha = save_checkpoint(path, model, normalization=Normalization(), channels=["DNA", "Cyto"],
                          class_names=["background", "interior", "boundary"])
    cache = ModelCache()
    first, checkpoint = cache.get(path)
    second, _ = cache.get(str(path))
    assert first is second and cache.loads == 1 and len(cache) == 1
    assert checkpoint.sha256 == sha and not first.training
    cache.clear()
    assert len(cache) == 0 and cache.loads == 0
    with pytest.raises(FileNotFoundError, match="no model file"):
        cache.get(tmp_path / "missing.pt")


def test_set_worker_threads_outside_a_worker_keeps_torch_setting():
    before = torch.get_num_threads()
    assert set_worker_threads() == before
    assert set_worker_threads(before) == before
    with pytest.raises(ValueError, match=r"threads must be >= 1, got 0"):
        set_worker_threads(0)


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_tiles_match_cpu_whole_image(image):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device is available (torch.cuda.is_available() is False)")
    model = tiny_model("unet")
    reference = whole_image_probabilities(model, image)
    model.cuda()
    tiled = predict_plane(model, image, tile=48, device="cuda", channels_last=True)
    # cuDNN convolutions may run in TF32 by default (torch.backends.cudnn.allow_tf32), ~1e-3
    # relative: the cross-device comparison gets that tolerance, not the CPU one.
    assert np.abs(tiled - reference).max() <= 1e-3


@pytest.mark.parametrize("name", ["unet", "resunet", "deepcell"])
def test_fold_batch_norm_keeps_the_function_and_the_geometry(name):
    """Folding is exact algebra (BN in eval mode is affine): outputs agree to float rounding
    (1e-4 on logits of order 1), no BatchNorm follows a convolution any more, the original
    model is untouched, and the receptive radius (the halo) is unchanged."""
    from cellflow.nn.models import build_model
    from cellflow.nn.predict import fold_batch_norm

    torch.manual_seed(1)
    options = {"width": 2, "dense_width": 2} if name == "deepcell" else {"width": 2}
    model = build_model(name, in_channels=1, classes=3, **options)
    for module in model.modules():  # non-trivial running statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    model.eval()
    folded = fold_batch_norm(model)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), atol=1e-4, rtol=0)
    assert folded.receptive_radius == model.receptive_radius
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) < \
        sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(model.train())
