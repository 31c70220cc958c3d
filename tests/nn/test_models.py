"""Tests of cellflow.nn.models: geometry measured against gradients, shapes, the DeepCell
dense/patch equivalence, the ensemble average, config and checkpoint round trips.

Networks are built at tiny widths so that the file runs in seconds on two CPU cores; the
geometry (receptive field, down-sampling) does not depend on the width.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cellflow.nn.models import (
    MODELS,
    PATCH_SIZE,
    DeepCell,
    DeepCellEnsemble,
    ModelConfig,
    ResUNet,
    UNet,
    build_model,
    downsampling,
    empirical_footprints,
    empirical_receptive_field,
    receptive_field,
    receptive_radius,
)
from cellflow.nn.models._common import layer_footprint

#: Tiny widths of each architecture (resunet keeps the paper's residual widths 16, 16, 64, so
#: the bottom shortcut is projected: 32 maps in, 64 out).
TINY = {
    "unet": {"width": 4},
    "resunet": {"width": 4},
    "deepcell": {"width": 4, "dense_width": 8},
}
#: (in_channels, classes): nuclear; bright-field z planes; Cell Painting; phase + nuclear.
CHANNELS_CLASSES = [(1, 2), (3, 3), (4, 2), (2, 3)]


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Weights are drawn from torch's global RNG; inputs from seeded private generators.
    # Nothing here draws from NumPy's RNG.
    torch.manual_seed(0)


def randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every batch norm non-trivial statistics and affine parameters, so eval mode is not ~identity."""
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            n = layer.num_features
            assert layer.running_mean is not None and layer.running_var is not None
            layer.running_mean.copy_(0.5 * torch.randn(n, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            with torch.no_grad():
                layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
                layer.bias.copy_(0.2 * torch.randn(n, generator=generator))


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "factor", "field", "radius"),
    [
        ("unet", {}, 8, 100, 51),
        ("unet", {"levels": 3}, 4, 44, 23),
        ("unet", {"levels": 5}, 16, 204, 107),
        ("resunet", {}, 8, 72, 38),
        ("resunet", {"residual_blocks": 0}, 8, 40, 22),
        ("deepcell", {}, 1, 61, 30),
        ("deepcell_ensemble", {"members": 2}, 1, 61, 30),
    ],
)
def test_reported_geometry(name, options, factor, field, radius):
    # The textbook recurrence r += (k - 1) * jump along the deepest path gives unet 44, 96, 200
    # (levels 3, 4, 5; e.g. levels 4: 68 at the bottom, then the decoder adds 8+8, 4+4, 2+2),
    # resunet 70 and 38, deepcell 61. Pooling and up-sampling floor positions, so the window
    # of some output phases is a few pixels wider than that average-case figure: the pinned
    # values are the widest phase, as the gradients of the next test confirm.
    model = build_model(name, in_channels=1, classes=2, **{**TINY.get(name, {"width": 2, "dense_width": 2}), **options})
    assert downsampling(model) == model.downsampling == factor
    assert receptive_field(model) == model.receptive_field == field
    assert receptive_radius(model) == model.receptive_radius == radius


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("in_channels", "classes"), [(1, 2), (3, 3)])
def test_receptive_field_matches_gradient(name, in_channels, classes):
    model = build_model(name, in_channels=in_channels, classes=classes, **TINY[name])
    factor = model.downsampling
    measured = empirical_footprints(model)
    # Every output phase reads exactly the window the layer walk derives, not only the widest.
    assert measured == [(model.footprint((k, k), 0), model.footprint((k, k), 1)) for k in range(factor)]
    assert empirical_receptive_field(model) == (model.receptive_field, model.receptive_field)
    assert max(max(k - lo, hi - k) for k, ((lo, hi), _) in enumerate(measured)) == model.receptive_radius
    assert model.training  # measured in eval mode, then restored


def test_deepcell_field_is_the_paper_patch():
    model = build_model("deepcell", in_channels=2, classes=3, width=2, dense_width=2)
    assert model.receptive_field == PATCH_SIZE == 61
    assert model.footprint((0, 0)) == (-30, 30)  # centred: the 61 x 61 patch around the pixel


def test_empirical_refuses_a_small_input():
    model = build_model("deepcell", in_channels=1, classes=2, width=2, dense_width=2)
    with pytest.raises(ValueError, match="size 40 is too small"):
        empirical_receptive_field(model, size=40)
    unet = build_model("unet", in_channels=1, classes=2, width=2)
    with pytest.raises(ValueError, match="size must be a multiple of 8, got 250"):
        empirical_receptive_field(unet, size=250)


def test_layer_footprint_rules():
    assert layer_footprint(nn.Conv2d(1, 1, 3, padding=1), (0, 0)) == (-1, 1)
    assert layer_footprint(nn.Conv2d(1, 1, 4, dilation=8), (0, 0)) == (0, 24)
    assert layer_footprint(nn.MaxPool2d(2), (1, 2)) == (2, 5)
    assert layer_footprint(nn.ConvTranspose2d(1, 1, 2, stride=2), (3, 4)) == (1, 2)
    assert layer_footprint(nn.ConvTranspose2d(1, 1, 3, stride=1, padding=1), (0, 0)) == (-1, 1)
    assert layer_footprint(nn.Upsample(scale_factor=2), (3, 4)) == (1, 2)
    assert layer_footprint(nn.ZeroPad2d((1, 2, 3, 4)), (0, 0), axis=0) == (-3, -3)
    assert layer_footprint(nn.ZeroPad2d((1, 2, 3, 4)), (0, 0), axis=1) == (-1, -1)
    with pytest.raises(TypeError, match="does not know the geometry of AvgPool2d"):
        layer_footprint(nn.AvgPool2d(2), (0, 0))
    with pytest.raises(TypeError, match="nearest up-sampling"):
        layer_footprint(nn.Upsample(scale_factor=2, mode="bilinear"), (0, 0))


# --- shapes and input checks ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize(("in_channels", "classes"), CHANNELS_CLASSES)
def test_output_shape(name, in_channels, classes):
    model = build_model(name, in_channels=in_channels, classes=classes, **TINY[name])
    factor = model.downsampling
    height, width = (2 * factor, 3 * factor) if factor > 1 else (13, 17)
    image = torch.randn(2, in_channels, height, width)
    logits = model(image)  # training mode: batch statistics
    assert logits.shape == (2, classes, height, width)
    assert logits.dtype == torch.float32
    probabilities = model.eval().predict_proba(image)
    assert probabilities.shape == (2, classes, height, width)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, height, width))


@pytest.mark.parametrize(("model_class", "factor"), [(UNet, 8), (ResUNet, 8)])
def test_size_not_a_multiple_of_downsampling(model_class, factor):
    model = model_class(in_channels=1, classes=2, width=2)
    with pytest.raises(ValueError, match=rf"\(1, 1, 20, 24\).*multiples of the down-sampling factor {factor}; "
                                         r"pad 20 x 24 to 24 x 24"):
        model(torch.zeros(1, 1, 20, 24))


@pytest.mark.parametrize("name", sorted(TINY))
def test_wrong_channels_or_rank(name):
    model = build_model(name, in_channels=3, classes=2, **TINY[name])
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(1, 1, 16, 16\)"):
        model(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(3, 16, 16\)"):
        model(torch.zeros(3, 16, 16))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"in_channels": 0, "classes": 2}, ValueError, "UNet in_channels must be >= 1, got 0"),
        ({"in_channels": 1, "classes": 1}, ValueError, "UNet classes must be >= 2, got 1"),
        ({"in_channels": 1, "classes": 2, "width": 2.5}, TypeError, "UNet width must be an int, got 2.5"),
        ({"in_channels": 1, "classes": 2, "levels": 0}, ValueError, "UNet levels must be >= 1, got 0"),
        ({"in_channels": True, "classes": 2}, TypeError, "UNet in_channels must be an int, got True"),
    ],
)
def test_invalid_unet_options(options, error, match):
    with pytest.raises(error, match=match):
        UNet(**options)


def test_invalid_resunet_residual_widths():
    with pytest.raises(ValueError, match=r"residual_widths must be three ints .* got \(16, 64\)"):
        ResUNet(in_channels=1, classes=2, residual_widths=(16, 64))


# --- DeepCell: dense output == patch classifier ---------------------------------------------


def test_deepcell_dense_equals_patch_classifier():
    generator = torch.Generator().manual_seed(1)
    model = DeepCell(in_channels=2, classes=3, width=6, dense_width=10)
    randomise_batch_norm(model, generator)
    model.eval()
    image = torch.randn(1, 2, 40, 45, generator=generator)
    with torch.no_grad():
        dense = model(image)
        padded = F.pad(image, (30, 30, 30, 30))  # zeros, as the dense model pads
        pixels = [(0, 0), (39, 44), (0, 44), (17, 3), (20, 22), (25, 40)]
        patches = torch.cat([padded[:, :, y : y + PATCH_SIZE, x : x + PATCH_SIZE] for y, x in pixels])
        patch_logits = model.classify_patches(patches)
    expected = torch.stack([dense[0, :, y, x] for y, x in pixels])
    # The same float32 products summed in another order (dilated dense vs strided patch
    # convolutions, ~600-term sums of O(1) values): differences of order 1e-6.
    torch.testing.assert_close(patch_logits, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zeros


def test_deepcell_patch_shape_is_checked():
    model = DeepCell(in_channels=2, classes=3, width=2, dense_width=2)
    with pytest.raises(ValueError, match=r"patches of shape \(N, \*\(2, 61, 61\)\), got \(1, 2, 60, 61\)"):
        model.classify_patches(torch.zeros(1, 2, 60, 61))


# --- ensemble -------------------------------------------------------------------------------


def test_ensemble_averages_member_probabilities():
    ensemble = build_model("deepcell_ensemble", in_channels=2, classes=3, width=3, dense_width=4)
    assert isinstance(ensemble, DeepCellEnsemble)
    assert len(ensemble.members) == 5  # the paper's ensemble size is the default
    generator = torch.Generator().manual_seed(2)
    randomise_batch_norm(ensemble, generator)
    ensemble.eval()
    image = torch.randn(2, 2, 12, 9, generator=generator)
    with torch.no_grad():
        by_hand = sum(torch.softmax(m(image), dim=1) for m in ensemble.members) / 5
        probabilities = ensemble.predict_proba(image)
        logits = ensemble(image)
    # Float32 softmax/log/exp round trips: agreement to a few ulp of values <= 1.
    torch.testing.assert_close(probabilities, by_hand, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.exp(), by_hand, rtol=0, atol=1e-6)
    # Members differ, so the average is not any one member's output.
    first = torch.softmax(ensemble.members[0](image), dim=1)
    assert (first - by_hand).abs().max() > 1e-3


def test_ensemble_members_must_agree():
    members = [DeepCell(in_channels=1, classes=2, width=2, dense_width=2),
               DeepCell(in_channels=1, classes=3, width=2, dense_width=2)]
    with pytest.raises(ValueError, match=r"agree on \(in_channels, classes\), got \[\(1, 2\), \(1, 3\)\]"):
        DeepCellEnsemble(members)
    with pytest.raises(ValueError, match="one or more SegmentationModel"):
        DeepCellEnsemble([])


def test_ensemble_of_mixed_members_has_no_config():
    members = [DeepCell(in_channels=1, classes=2, width=2, dense_width=2), UNet(in_channels=1, classes=2, width=2)]
    ensemble = DeepCellEnsemble(members)
    assert ensemble.downsampling == 8 and ensemble.receptive_field == 100  # the union of the members'
    with pytest.raises(ValueError, match="only when its members are DeepCells with equal options"):
        _ = ensemble.config


# --- config, registry, checkpoints ----------------------------------------------------------


def test_registry_names():
    assert sorted(MODELS) == ["deepcell", "deepcell_ensemble", "resunet", "unet"]


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig("unet", 1, 3, {"width": 4, "levels": 5}),
        ModelConfig("resunet", 4, 2, {"width": 4, "residual_widths": [8, 8, 32]}),
        ModelConfig("deepcell", 2, 3),
        ModelConfig("deepcell_ensemble", 3, 2, {"members": 2, "width": 2, "dense_width": 2}),
    ],
)
def test_model_config_round_trip(config):
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config)
    assert pickle.loads(pickle.dumps(config)) == config
    model = config.build()
    assert model.config == config
    assert type(model) is type(build_model(config.name, in_channels=config.in_channels, classes=config.classes,
                                           **config.options))


def test_model_config_writes_defaults_out():
    assert ModelConfig("unet", 1, 2) == ModelConfig("unet", 1, 2, {"width": 32, "levels": 4})
    assert ModelConfig("resunet", 1, 2, {"width": 4}).to_dict()["options"] == {
        "levels": 4, "residual_blocks": 2, "residual_widths": [16, 16, 64], "width": 4,
    }
    assert dict(build_model("deepcell_ensemble", in_channels=1, classes=2, members=2, width=2).config.options) == {
        "dense_width": 200, "members": 2, "width": 2,
    }


def test_model_config_is_read_only():
    config = ModelConfig("unet", 1, 2, {"width": 4})
    with pytest.raises(TypeError):
        config.options["width"] = 8  # type: ignore[index]
    assert config.options["width"] == 4


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: build_model("unet3d", in_channels=1, classes=2), ValueError,
         r"name must be one of \['deepcell', 'deepcell_ensemble', 'resunet', 'unet'\], got 'unet3d'"),
        (lambda: build_model("unet", in_channels=1, classes=2, depth=3), ValueError,
         r"options \['depth'\] are not options of 'unet'; known: \['levels', 'width'\]"),
        (lambda: ModelConfig.from_dict({"name": "unet", "in_channels": 1, "classes": 2, "weights": 1}), ValueError,
         r"ModelConfig got unknown keys \['weights'\]"),
        (lambda: ModelConfig("unet", 1, 2, {"width": {"a": 1}}), TypeError, "option 'width' must be a number"),
        (lambda: ModelConfig("unet", 1, 1), ValueError, "ModelConfig classes must be >= 2, got 1"),
        (lambda: ModelConfig("unet", 1, 2, [("width", 4)]), TypeError,  # type: ignore[arg-type]
         "options must be a mapping"),
    ],
)
def test_model_config_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", [*sorted(TINY), "deepcell_ensemble"])
def test_state_dict_round_trip(name, tmp_path):
    options = {**TINY.get(name, {"width": 2, "dense_width": 2, "members": 2})}
    model = build_model(name, in_channels=2, classes=3, **options)
    randomise_batch_norm(model, torch.Generator().manual_seed(3))
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    other = model.config.build()  # fresh weights from the same config
    image = torch.randn(1, 2, 16, 24)
    model.eval()
    other.eval()
    with torch.no_grad():
        assert not torch.equal(model(image), other(image))
        other.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(model(image), other(image))
