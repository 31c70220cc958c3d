"""Training specs with labelling stages: auto labels from the stains, then a network on another modality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cellflow.cli import main
from cellflow.nn.checkpoint import load_checkpoint
from cellflow.pipeline.spec import load_train_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["brightfield-autotrain", "cellpainting-autotrain", "cells-autotrain"])
def test_shipped_autotrain_specs_validate(name):
    spec = load_train_spec(ROOT / "specs" / f"{name}.yaml")
    labelling = spec.labelling()
    assert labelling is not None and list(labelling.stages) == ["illumination", "autolabel"]
    params = spec.params()
    assert params.target.startswith("labels_") and "DNA" not in params.channels  # learns another modality


def test_train_runs_the_labelling_stages_then_trains_and_resumes_them(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "specs" / "brightfield-autotrain.yaml").read_text())
    data["input"]["store"] = str(tmp_path / "plate.zarr")
    data["input"]["synthetic"].update(wells=["A01", "B01"], sites=1, shape_yx=[96, 96])
    data["train"].update(epochs=1, steps_per_epoch=2, crop_size=64, batch_size=2, model_options={"width": 4},
                         validation_wells=["B01"])
    data["model_dir"] = str(tmp_path / "model")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["train", str(path)]) == 0
    checkpoint = load_checkpoint(tmp_path / "model" / "model.pt")
    assert checkpoint.channels == ("BF@z0", "BF@z1", "BF@z2")
    assert checkpoint.metadata["params"]["target"] == "labels_nuclei"
    summary = json.loads((tmp_path / "model" / "labels" / "run.json").read_text())
    assert summary["stages"]["autolabel"]["done"] == 2
    capsys.readouterr()
    assert main(["train", str(path)]) == 0  # the labels are not made twice
    summary = json.loads((tmp_path / "model" / "labels" / "run.json").read_text())
    assert summary["stages"]["autolabel"] == {**summary["stages"]["autolabel"], "done": 0, "skipped": 2}


def test_unknown_labelling_stage_names_the_line(tmp_path):
    from cellflow.errors import SpecError

    path = tmp_path / "spec.yaml"
    path.write_text("name: x\ninput:\n  store: p.zarr\nstages:\n  autolabell: {}\ntrain: {channels: [BF]}\n")
    with pytest.raises(SpecError, match=r"spec\.yaml:5: stages\.autolabell: unknown stage 'autolabell'"):
        load_train_spec(path)
