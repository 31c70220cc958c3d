"""Runs on one long-lived cluster (``cellflow run --scheduler ADDRESS``): workers keep one store handle per
process, so a later run that adds a variable with a new dim, or a store re-created at the same path, must
still give exactly what a fresh threaded run gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from distributed import Client, LocalCluster

from cellflow.nn.checkpoint import save_checkpoint
from cellflow.nn.models import build_model
from cellflow.nn.normalize import Normalization
from cellflow.pipeline.runner import run_spec
from cellflow.pipeline.spec import parse_spec
from cellflow.screen.store import Screen

SYNTHETIC = {"wells": ["A01"], "sites": 2, "shape_yx": [64, 80], "n_z": 1, "channels": ["DNA"], "nuclei_per_field": 6}


def _spec(store: Path, tables: Path, stages: dict, seed: int):
    # seed 2 is another plate of another geometry: a handle on the seed-1 store cannot read or write it right
    geometry = {"sites": 3, "shape_yx": [72, 96]} if seed == 2 else {}
    synthetic = {**SYNTHETIC, **geometry, "seed": seed}
    return parse_spec({"name": "long-lived", "input": {"store": str(store), "synthetic": synthetic},
                       "stages": stages, "output": {"tables": str(tables)}, "cluster": {"kind": "threads"}})


def _read_all(screen: Screen, name: str) -> list[np.ndarray]:
    return [screen.read(name, **key._asdict()) for key in screen.fields()]


def test_runs_on_one_cluster_equal_fresh_threaded_runs(tmp_path):
    torch.manual_seed(0)
    model = build_model("resunet", in_channels=1, classes=3, width=2)
    save_checkpoint(tmp_path / "m.pt", model, normalization=Normalization("percentile"), channels=["DNA"],
                    class_names=["background", "interior", "boundary"])
    autolabel = {"autolabel": {"nuclear_channel": "DNA", "diameter_px": 10}}
    predict = {"predict": {"model": str(tmp_path / "m.pt"), "tile": 32}}

    def threaded(name, stages, seed):  # the reference: a fresh process-local run on its own store
        result = run_spec(_spec(tmp_path / f"{name}.zarr", tmp_path / f"{name}-tables", stages, seed), progress=False)
        assert result.status == "ok"
        return result.screen

    reference_labels = threaded("ref1", autolabel, 1)
    reference_probabilities = threaded("ref2", predict, 1)
    reference_relabelled = threaded("ref3", autolabel, 2)

    store = tmp_path / "shared.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0",
                      host="127.0.0.1") as cluster, Client(cluster):
        def on_cluster(stages, seed, tables):
            result = run_spec(_spec(store, tmp_path / tables, stages, seed), scheduler=cluster.scheduler_address,
                              progress=False)
            assert result.status == "ok", result.quarantined
            return result.screen

        screen = on_cluster(autolabel, 1, "t1")  # the worker now holds a handle on this store
        for got, expected in zip(_read_all(screen, "labels_nuclei"), _read_all(reference_labels, "labels_nuclei")):
            np.testing.assert_array_equal(got, expected)
        # a second run adds `probabilities` and its new `class` dim, written through the same worker handle
        screen = on_cluster(predict, 1, "t2")
        for got, expected in zip(_read_all(screen, "probabilities"),
                                 _read_all(reference_probabilities, "probabilities")):
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        # the store re-created at the same path from another plate: the old handle must not serve it
        shutil.rmtree(store)
        shutil.rmtree(tmp_path / "t1")
        screen = on_cluster(autolabel, 2, "t1")
        for got, expected in zip(_read_all(screen, "labels_nuclei"),
                                 _read_all(reference_relabelled, "labels_nuclei")):
            np.testing.assert_array_equal(got, expected)
