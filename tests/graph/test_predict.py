from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import torch
import zarr

from cellflow.graph.predict import PredictParams, build_predict, field_input
from cellflow.nn.checkpoint import save_checkpoint
from cellflow.nn.models import build_model
from cellflow.nn.normalize import Normalization, normalize
from cellflow.nn.predict import MODEL_CACHE, predict_plane
from cellflow.screen.layout import DIMS_FIELD
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

SMALL = SyntheticSpec(shape_yx=(100, 130), wells=("A01",), sites=2, n_z=3, channels=("DNA", "BF"),
                      nuclei_per_field=300, seed=3)
CLASSES = ["background", "interior", "boundary"]
NORM = Normalization("percentile", low=1, high=99)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "source.zarr"
    write_synthetic_screen(path, SMALL, scheduler="synchronous")
    return path


@pytest.fixture
def screen(source, tmp_path) -> Screen:
    """A fresh copy of the small synthetic screen (2 fields of 100 x 130, DNA + BF, 3 planes)."""
    return Screen.open(shutil.copytree(source, tmp_path / "screen.zarr"))


def checkpoint(path: Path, channels: list[str], *, name: str = "unet") -> str:
    torch.manual_seed(0)
    options = {"width": 2} if name == "unet" else {"width": 2, "dense_width": 2}
    model = build_model(name, in_channels=len(channels), classes=3, **options)
    save_checkpoint(path, model, normalization=NORM, channels=channels, class_names=CLASSES)
    return str(path)


def run(screen: Screen, graph) -> tuple:
    graph.create_outputs(screen)
    results = dask.compute(*graph.tasks, scheduler="synchronous")
    screen.ledger("probabilities").mark([r for result in results for r in result.records])
    return results


def eager(screen: Screen, params: PredictParams, key, channels, extent=None) -> np.ndarray:
    module, ckpt = MODEL_CACHE.get(params.model, channels_last=params.channels_last)
    image = normalize(field_input(screen, key, channels, params.z, extent), ckpt.normalization)
    return predict_plane(module, image, tile=params.tile, halo=params.halo, window=params.window,
                         batch_size=params.batch_size, channels_last=params.channels_last)


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize(("changes", "message"), [
    ({"model": ""}, r"PredictParams\.model must be the path of a checkpoint"),
    ({"tile": 0}, r"PredictParams\.tile must be an int >= 1, got 0"),
    ({"halo": -1}, r"PredictParams\.halo must be an int >= 0 or None, got -1"),
    ({"window": "hann"}, r"PredictParams\.window must be one of"),
    ({"batch_size": 2.0}, r"PredictParams\.batch_size must be an int >= 1, got 2\.0"),
    ({"amp": "yes"}, r"PredictParams\.amp must be True or False"),
    ({"z": "median"}, r"PredictParams\.z must be one of \('mean', 'max', 'all'\) or a plane number"),
])
def test_params_name_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        PredictParams(**{"model": "m.pt", **changes})


def test_params_round_trip_through_json():
    params = PredictParams(model="m.pt", tile=256, halo=64, window="gaussian", z=1, threads=2)
    assert PredictParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(ValueError, match=r"PredictParams got unknown keys \['tiles'\]"):
        PredictParams.from_dict({"model": "m.pt", "tiles": 3})


# ---------------------------------------------------------------------------- graph
def test_builder_is_lazy_and_writes_what_predict_plane_gives(screen, tmp_path, no_compute):
    params = PredictParams(model=checkpoint(tmp_path / "m.pt", ["DNA"]), tile=48, batch_size=3)
    with no_compute():
        graph = build_predict(screen, params)
    assert len(graph.tasks) == 2 and set(graph.by_field) == set(screen.fields())
    MODEL_CACHE.clear()
    results = run(screen, graph)
    assert MODEL_CACHE.loads == 1  # two fields, one load in this process
    assert screen.coords()["class"].tolist() == CLASSES
    for result in results:
        key = result.field
        stored = screen.read("probabilities", plate=key.plate, well=key.well, site=key.site, t=key.t)
        assert stored.shape == (3, 100, 130) and stored.dtype == np.float32
        np.testing.assert_array_equal(stored, eager(screen, params, key, ["DNA"]))
        assert result.rows[0]["model_sha256"] == MODEL_CACHE.get(params.model, channels_last=params.channels_last)[1].sha256
    assert MODEL_CACHE.loads == 1
    assert screen.ledger("probabilities").completed().all()


def test_all_z_planes_feed_a_bright_field_model(screen, tmp_path):
    params = PredictParams(model=checkpoint(tmp_path / "bf.pt", ["BF"] * 3, name="deepcell"), tile=64, z="all")
    (result,) = run(screen, build_predict(screen, params, fields=[screen.fields()[1]]))
    key = result.field
    stored = screen.read("probabilities", plate=key.plate, well=key.well, site=key.site, t=key.t)
    assert field_input(screen, key, ["BF"], "all").shape == (3, 100, 130)
    np.testing.assert_array_equal(stored, eager(screen, params, key, ["BF"]))


def test_only_the_valid_extent_is_predicted(screen, tmp_path):
    group = zarr.open_group(screen.path, mode="r+")
    for name, size in (("extent_y", 70), ("extent_x", 90)):
        array = group.create_array(name, shape=(1, 1, 2, 1), chunks=(1, 1, 2, 1), dtype="int32",
                                   fill_value=0, dimension_names=DIMS_FIELD)
        array[...] = size
    params = PredictParams(model=checkpoint(tmp_path / "m.pt", ["DNA"]), tile=48, z=2)
    results = run(Screen.open(screen.path), build_predict(Screen.open(screen.path), params))
    key = results[0].field
    stored = screen.read("probabilities", plate=key.plate, well=key.well, site=key.site, t=key.t)
    assert not stored[:, 70:].any() and not stored[:, :, 90:].any()
    np.testing.assert_array_equal(stored[:, :70, :90], eager(screen, params, key, ["DNA"], (70, 90)))


def test_channel_mismatches_name_model_and_store(screen, tmp_path):
    missing = PredictParams(model=checkpoint(tmp_path / "c.pt", ["DNA", "Cyto"]))
    with pytest.raises(ValueError, match=r"needs channels \['DNA', 'Cyto'\], but \['Cyto'\] are not in .*"
                                         r"which has \['DNA', 'BF'\]"):
        build_predict(screen, missing)
    planes = PredictParams(model=checkpoint(tmp_path / "bf.pt", ["BF", "BF"]), z="all")
    with pytest.raises(ValueError, match=r"takes 2 input channels, but z='all' gives 3 from channels \['BF'\] "
                                         r"with 3 z planes"):
        build_predict(screen, planes)
    with pytest.raises(FileNotFoundError, match="no model file"):
        build_predict(screen, PredictParams(model=str(tmp_path / "none.pt")))


def test_checkpoint_from_training_with_stacked_planes_reads_its_store_channel(tmp_path):
    """Training names stacked z planes 'BF@z0..2'; the predictor reads channel 'BF', all planes."""
    import torch

    from cellflow.graph.predict import PredictParams, build_predict
    from cellflow.nn.checkpoint import load_checkpoint, save_checkpoint, stack_channel_names
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization
    from cellflow.screen import Screen, ScreenLayout

    layout = ScreenLayout(plates=("P",), wells=("A01",), sites=(0,), channels=("BF",), shape_yx=(48, 64),
                          z_um=(-2.0, 0.0, 2.0))
    screen = Screen.create(tmp_path / "s.zarr", layout)
    rng = np.random.default_rng(4)
    screen.write("images", rng.integers(0, 4000, (1, 3, 48, 64), dtype=np.uint16), plate="P", well="A01", site=0)
    screen.set_acquired([("P", "A01", 0, 0.0)])
    torch.manual_seed(0)
    model = build_model("resunet", in_channels=3, classes=3).eval()
    save_checkpoint(tmp_path / "m.pt", model, normalization=Normalization(), channels=stack_channel_names(["BF"], 3),
                    class_names=["background", "interior", "boundary"])
    assert load_checkpoint(tmp_path / "m.pt").channels == ("BF@z0", "BF@z1", "BF@z2")
    graph = build_predict(screen, PredictParams(model=str(tmp_path / "m.pt"), z="all", tile=32))
    graph.create_outputs(screen)
    (result,) = dask.compute(*graph.tasks, scheduler="synchronous")
    assert result.records and screen.read("probabilities", plate="P", well="A01", site=0).sum() > 0
