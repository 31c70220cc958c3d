"""Stages with per-object rows (track, ktr, measure) keep them in table parts, not in the task log;
a part deleted after its unit ran makes exactly that unit run again, and the tables come out whole."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellflow.graph.measure import read_objects
from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.resume import TaskLog


def _spec(tmp_path: Path):
    return parse_spec({
        "name": "parts",
        "input": {"store": str(tmp_path / "movie.zarr"),
                  "synthetic": {"wells": ["A01", "B01"], "sites": 1, "shape_yx": [96, 128], "channels": ["DNA", "Cyto"],
                                "n_z": 1, "n_t": 3, "interval_min": 10, "nuclei_per_field": 600, "seed": 5}},
        "stages": {"illumination": {"method": "polynomial"},
                   "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
                   "track": {"labels": "labels_nuclei", "max_distance": 20},
                   "ktr": {"channel": "Cyto", "method": "cytoplasm"},
                   "measure": {"labels": ["labels_nuclei"], "dna_channel": "DNA"}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })


def test_object_rows_live_in_parts_and_a_deleted_part_is_redone(tmp_path):
    spec = _spec(tmp_path)
    first = run_spec(spec, progress=False)
    assert first.status == "ok", first.error
    screen = first.screen
    logs = {stage: TaskLog(screen, stage).load() for stage in ("track", "ktr", "measure")}
    for stage, entries in logs.items():  # every done line references its parts instead of holding the objects
        rows = [row for entry in entries.values() for row in entry["rows"]]
        assert rows and all(entry["status"] == "done" for entry in entries.values()), stage
        assert all("part" in row for row in rows if row.get("table", "tracks") != "fields"), stage
        assert not any("ratio_nuclear_cytoplasmic" in row or "track_id" in row for row in rows), stage
    n_cells = len(first.tables["ktr/cells"])
    assert n_cells > 30 and sum(r["part_rows"] for e in logs["ktr"].values() for r in e["rows"]) == n_cells

    # delete one part of each stage: those units (and only they) run again
    _ktr_unit, ktr_entry = sorted(logs["ktr"].items())[1]
    _track_unit, track_entry = sorted(logs["track"].items())[0]
    _measure_unit, measure_entry = sorted(logs["measure"].items())[2]
    for entry in (ktr_entry, track_entry, measure_entry):
        Path(entry["rows"][0]["part"]).unlink()
    again = run_spec(spec, progress=False)
    assert again.status == "ok", again.error
    redone = {name: (s["done"], s["skipped"]) for name, s in again.stages.items()}
    assert redone == {"illumination": (0, 1), "autolabel": (0, 6), "track": (1, 1), "ktr": (1, 5),
                      "measure": (1, 5)}, redone
    for name in ("ktr/cells", "ktr/tracks", "tracks/tracks", "tracks/lineages", "tracks/fields",
                 "measurements/fields", "measurements/wells"):
        pd.testing.assert_frame_equal(again.tables[name], first.tables[name], obj=name)
    assert all(Path(e["rows"][0]["part"]).is_file() for e in (ktr_entry, track_entry, measure_entry))
    assert len(read_objects(screen, "labels_nuclei")) == int(first.tables["measurements/fields"]["n_objects"].sum())
