"""The runner: one lazy graph from a spec, the same results on threads and on a process cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cellflow.graph import StageGraph
from cellflow.pipeline import build_graphs, load_spec, parse_spec, prepare_input, run_spec
from cellflow.screen import Screen

ROOT = Path(__file__).resolve().parents[2]


def _spec_with(path: Path, **updates):
    """A shipped spec with its file locations moved (the rest exactly as shipped)."""
    data = yaml.safe_load(path.read_text())
    for dotted, value in updates.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse_spec(data, source=str(path))


def _labels(screen: Screen, name: str) -> dict:
    return {key: screen.read(name, **key._asdict()) for key in screen.fields()}


@pytest.mark.slow
def test_nuclei_fluorescence_spec_same_tables_on_local_cluster_and_threads(tmp_path, nuclei_data):
    """The issue's bar: specs/nuclei-fluorescence.yaml on a 2-worker LocalCluster gives the same
    tables (and labels) as a threaded run."""
    path = ROOT / "specs" / "nuclei-fluorescence.yaml"
    shipped = load_spec(path)
    assert shipped.cluster.kind == "local" and shipped.cluster.n_workers == 2
    moved = {"input.store": str(tmp_path / "screen.zarr"), "input.nuclei_pairs": str(nuclei_data)}
    on_cluster = run_spec(_spec_with(path, **moved, **{"output.tables": str(tmp_path / "cluster")}), progress=False)
    assert on_cluster.dashboard and on_cluster.dashboard.startswith("http://127.0.0.1:")
    cluster_labels = _labels(on_cluster.screen, "labels_nuclei")
    threaded = run_spec(
        _spec_with(path, **moved, **{"output.tables": str(tmp_path / "threads"), "cluster.kind": "threads"}),
        progress=False, resume=False,  # recompute on threads (a resumed run would skip every unit)
    )
    assert threaded.dashboard is None
    assert on_cluster.tasks == threaded.tasks == {"autolabel": 74, "score": 74}
    assert set(on_cluster.tables) == set(threaded.tables) == {
        "labels_nuclei/fields", "labels_nuclei/wells", "labels_nuclei/plates"}
    for key in on_cluster.tables:
        pd.testing.assert_frame_equal(on_cluster.tables[key], threaded.tables[key])
    for level in ("fields", "wells", "plates"):
        a = pd.read_parquet(tmp_path / "cluster" / "labels_nuclei" / f"scores_{level}.parquet")
        b = pd.read_parquet(tmp_path / "threads" / "labels_nuclei" / f"scores_{level}.parquet")
        pd.testing.assert_frame_equal(a, b)
    threaded_labels = _labels(threaded.screen, "labels_nuclei")
    assert cluster_labels.keys() == threaded_labels.keys()
    for key in cluster_labels:
        np.testing.assert_array_equal(cluster_labels[key], threaded_labels[key])
    # every written chunk is in the ledger
    ledger = threaded.screen.ledger("labels_nuclei").completed()
    assert int(ledger.sum()) == threaded.chunks_recorded["labels_nuclei"] > 0


@pytest.fixture
def demo_store(tmp_path):
    spec = parse_spec({
        "name": "t",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": ["A01", "B01"], "sites": 2, "shape_yx": [192, 256], "n_z": 1, "seed": 5}},
        "stages": {
            "illumination": {"method": "polynomial"},
            "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
            "score": {"pairs": [["truth_nuclei", "labels_nuclei"], ["truth_cells", "labels_cells"]]},
        },
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })
    return spec, prepare_input(spec.input)


def test_building_the_whole_graph_computes_nothing(demo_store, no_compute):
    spec, screen = demo_store
    with no_compute():
        graphs = build_graphs(screen, spec)
    assert [g.name for g in graphs] == ["illumination", "autolabel", "score"]
    assert all(isinstance(g, StageGraph) for g in graphs)
    assert [len(g.tasks) for g in graphs] == [3, 4, 4]  # one per channel (1 plate, 1 z); one per field
    # outputs exist (metadata only) but nothing was written into them
    assert {"illumination", "labels_nuclei", "labels_cells"} <= set(screen.variables)
    assert not screen.ledger("labels_nuclei").completed().any()
    assert not any((screen.path / "labels_nuclei").rglob("c/*"))


def test_threaded_run_scores_both_label_pairs(demo_store):
    spec, screen = demo_store
    result = run_spec(spec, progress=False)
    assert set(result.tables) == {f"{v}/{lvl}" for v in ("labels_nuclei", "labels_cells")
                                  for lvl in ("fields", "wells", "plates")}
    fields = result.tables["labels_nuclei/fields"]
    assert len(fields) == 4 and fields["f1_mean"].between(0, 1).all() and fields["n_pred"].gt(0).all()
    summary = (Path(spec.output.tables) / "run.json").read_text()
    assert screen.screen_id in summary
