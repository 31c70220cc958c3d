"""cellflow predict: a folder of images in, one float32 <stem>_prob.tif per image out, equal to
whole-image inference of the same model; a store in, `probabilities` written into it."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from cellflow.cli import main
from cellflow.nn.checkpoint import save_checkpoint
from cellflow.nn.models import build_model
from cellflow.nn.normalize import Normalization, normalize
from cellflow.nn.predict import whole_image_probabilities
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

NORM = Normalization("percentile", low=1, high=99)
CLASSES = ["background", "interior", "boundary"]
# Different sizes (the store pads to the largest; outputs must be cropped back), a TIFF and a PNG.
IMAGES = {"a01": ((70, 90), ".tif"), "b02": ((57, 64), ".png")}


def _model(channels: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("unet", in_channels=len(channels), classes=3, width=2).eval()


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, _model(["image"]), normalization=NORM, channels=["image"], class_names=CLASSES)
    return path


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(7)
    out = tmp_path / "in"
    out.mkdir()
    for stem, (shape, suffix) in IMAGES.items():
        image = rng.integers(0, 4000, size=shape).astype(np.uint16)
        if suffix == ".tif":
            tifffile.imwrite(out / f"{stem}{suffix}", image)
        else:
            iio.imwrite(out / f"{stem}{suffix}", image)
    return out


def _cli(*args: object) -> int:
    return main([str(a) for a in args])


def test_folder_probabilities_equal_whole_image_inference(folder, model_path, tmp_path):
    """Tiles of 32 over 57..90-pixel images (several tiles each, the last ones clipped) must equal
    one whole-image pass within 1e-4, the tiling bar of cellflow.nn.predict (float32 rounding of
    convolutions summed in different orders)."""
    out = tmp_path / "out"
    assert _cli("predict", folder, "--model", model_path, "--out", out, "--tile", 32, "--batch", 3,
                "--workers", 0) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}_prob.tif" for stem in IMAGES)
    model = _model(["image"])
    for stem, (shape, suffix) in IMAGES.items():
        image = iio.imread(folder / f"{stem}{suffix}")
        expected = whole_image_probabilities(model, normalize(image[None].astype(np.float32), NORM))
        written = tifffile.imread(out / f"{stem}_prob.tif")
        assert written.dtype == np.float32 and written.shape == (3, *shape)
        np.testing.assert_allclose(written, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(written.sum(axis=0), 1.0, atol=1e-5)  # softmax over classes


def test_a_corrupt_image_is_reported_and_the_rest_predicted(folder, model_path, tmp_path, capsys):
    bad = folder / "c03.tif"
    tifffile.imwrite(bad, np.ones((40, 40), np.uint16))
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    assert _cli("predict", folder, "--model", model_path, "--out", out, "--tile", 64, "--workers", 0) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}_prob.tif" for stem in IMAGES)
    assert "not predicted" in capsys.readouterr().out


def test_existing_outputs_are_never_overwritten_silently(folder, model_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victim = out / "a01_prob.tif"
    victim.write_bytes(b"precious")
    assert _cli("predict", folder, "--model", model_path, "--out", out, "--workers", 0) == 2
    assert "1 probability file(s) already exist" in capsys.readouterr().out
    assert victim.read_bytes() == b"precious" and not (out / "b02_prob.tif").exists()
    assert _cli("predict", folder, "--model", model_path, "--out", out, "--workers", 0, "--overwrite") == 0
    assert tifffile.imread(victim).shape == (3, *IMAGES["a01"][0])


def test_model_is_required_and_named(folder, tmp_path, capsys):
    assert _cli("predict", folder, "--out", tmp_path / "out") == 2
    assert "--model CKPT is required" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_store_gets_probabilities_of_the_predict_stage(tmp_path):
    spec = SyntheticSpec(shape_yx=(48, 60), wells=("A01",), sites=1, channels=("DNA",), nuclei_per_field=4, seed=1)
    screen = write_synthetic_screen(tmp_path / "s.zarr", spec, scheduler="synchronous")
    model_path = tmp_path / "dna.pt"
    model = _model(["DNA"])
    save_checkpoint(model_path, model, normalization=NORM, channels=["DNA"], class_names=CLASSES)
    assert _cli("predict", screen.path, "--model", model_path, "--out", tmp_path / "x", "--workers", 0) == 2
    assert _cli("predict", screen.path, "--model", model_path, "--tile", 32, "--workers", 0) == 0
    screen = Screen.open(screen.path)
    (key,) = screen.fields()
    image = screen.read("images", **key._asdict(), c="DNA").astype(np.float32).mean(axis=0)  # z: 'mean'
    expected = whole_image_probabilities(model, normalize(image[None], NORM))
    np.testing.assert_allclose(screen.read("probabilities", **key._asdict()), expected, atol=1e-4, rtol=0)
