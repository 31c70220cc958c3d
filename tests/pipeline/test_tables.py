"""The run's tables are written a plate at a time from rows held in the task logs, and are exactly the tables
that one call of each stage's writer on all its rows (sorted by plate, well, site, t) made before."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellflow.graph import TaskResult
from cellflow.graph._parts import field_part
from cellflow.graph._tables import StageTables, join_plate_frames
from cellflow.live.celltype import classify_cells
from cellflow.pipeline import parse_spec, run_spec
from cellflow.pipeline.resume import LoggedRows, RowsInLog, TaskLog, Unit, entry_result
from cellflow.pipeline.stages import STAGES
from cellflow.pipeline.tables import stage_tables
from cellflow.screen.store import FieldKey

WRITERS = ("track", "ktr", "measure", "score")  # in spec order: ktr joins the tracks table written before it


def _spec(tmp_path: Path):
    return parse_spec({
        "name": "plates",
        "input": {"store": str(tmp_path / "two.zarr"),
                  "synthetic": {"plates": ["P1", "P2"], "wells": ["A01", "A02", "B01", "B02"], "sites": 1,
                                "shape_yx": [96, 128], "channels": ["DNA", "Cyto"], "n_z": 1, "n_t": 2,
                                "interval_min": 10, "nuclei_per_field": 600, "seed": 7}},
        "stages": {"illumination": {"method": "polynomial"},
                   "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
                   "track": {"labels": "labels_nuclei", "max_distance": 20},
                   "ktr": {"channel": "Cyto", "method": "cytoplasm"},
                   "measure": {"labels": ["labels_nuclei", "labels_cells"], "dna_channel": "DNA",
                               "controls": {"positive": ["A01", "A02"], "negative": ["B01", "B02"]}},
                   "score": {"pairs": [["truth_nuclei", "labels_nuclei"], ["truth_cells", "labels_cells"]]}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A threaded run on a two-plate store, with the results its runner held when it wrote the tables."""
    import cellflow.pipeline.runner as runner

    tmp_path = tmp_path_factory.mktemp("plates")
    held = []

    def capture(spec, results, out_dir):
        held.extend(results)
        return real(spec, results, out_dir)

    real = runner.write_tables
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "write_tables", capture)
        result = run_spec(_spec(tmp_path), progress=False)
    assert result.status == "ok", result.error
    return tmp_path, result, held


def _old_order(row):
    """The sort of the runner's former _tables (one list of all of a stage's rows)."""
    return tuple(str(row.get(k, "")) if k in ("plate", "well") else float(row.get(k, 0) or 0)
                 for k in ("plate", "well", "site", "t"))


def _one_call(stage: str, results, out_dir: Path, params):
    rows = [row for r in results if r.stage == stage and r.error is None for row in r.rows]
    rows.sort(key=_old_order)
    return STAGES[stage].tables(rows, out_dir, params)


def _assert_same_tables(got, expected, got_dir: Path, expected_dir: Path) -> None:
    (tables, paths), (want, want_paths) = got, expected
    assert list(tables) == list(want) and list(paths) == list(want_paths)
    for key, frame in want.items():
        pd.testing.assert_frame_equal(tables[key], frame, obj=key)
        assert isinstance(tables[key].index, pd.RangeIndex), key
    for key, path in want_paths.items():
        assert paths[key].relative_to(got_dir) == path.relative_to(expected_dir)
        pd.testing.assert_frame_equal(pd.read_parquet(paths[key]), pd.read_parquet(path), obj=key)


def test_a_runs_client_holds_its_rows_as_places_in_the_task_logs_and_writes_the_former_tables(run, tmp_path):
    """After a run, every done unit's rows are held as a reference to the task log (no row text), and the run's
    tables equal one writer call per stage on all the rows; a resumed run (everything skipped) writes them again."""
    folder, result, held = run
    screen = result.screen
    per_stage = {stage: [r for r in held if r.stage == stage and r.error is None] for stage in WRITERS}
    for stage, results in per_stage.items():
        referenced = [r.rows for r in results if isinstance(r.rows, RowsInLog)]
        assert referenced and all(isinstance(r.rows, RowsInLog) or r.rows == () for r in results), stage
        log = TaskLog(screen, stage).path
        for rows in referenced:
            assert rows.path == log and not hasattr(rows, "_text") and not hasattr(rows, "__dict__")
            assert sys.getsizeof(rows) < 100 and rows.plates in {("P1",), ("P2",)}
    assert {p for r in held for p in getattr(r.rows, "plates", ())} == {"P1", "P2"}
    # nor chunk records: they are in the ledgers and the task logs (where a resume reads them), not in memory
    assert held and all(r.records == () for r in held)
    in_logs = 0
    for stage in result.stages:
        done = [e for e in map(json.loads, TaskLog(screen, stage).path.read_text().splitlines())
                if e.get("status") == "done"]
        in_logs += sum(len(e["records"]) for e in done)
    assert in_logs == sum(result.chunks_recorded.values()) > 0
    old_dir = tmp_path / "old"
    spec = _spec(folder)
    params = {name: p for name, _, p in spec.stage_entries()}
    keys = []
    for stage in WRITERS:
        expected = _one_call(stage, held, old_dir, params[stage])
        got = ({k: v for k, v in result.tables.items() if k in expected[0]},
               {k: v for k, v in result.table_paths.items() if k in expected[1]})
        _assert_same_tables(got, expected, folder / "tables", old_dir)
        keys += list(expected[0])
    assert list(result.tables) == keys
    import cellflow.pipeline.runner as runner

    held_again: list[TaskResult] = []
    real = runner.write_tables
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "write_tables", lambda spec, results, out: (held_again.extend(results),
                                                                          real(spec, results, out))[1])
        again = run_spec(spec, progress=False)
    assert again.status == "ok" and all(s["done"] == 0 for s in again.stages.values()), again.stages
    assert len(held_again) == len(held) and all(r.records == () for r in held_again)  # resumed: rows only too
    assert list(again.tables) == list(result.tables)
    for key, frame in result.tables.items():
        pd.testing.assert_frame_equal(again.tables[key], frame, obj=key)


def _celltype_results(tmp_path: Path) -> list[TaskResult]:
    """Hand-made celltype results of two plates (parts of random cells; plate P2 has no cell of type 'C')."""
    rng = np.random.default_rng(11)

    class _Store:
        path = tmp_path / "store.zarr"

    out = []
    for plate in ("P1", "P2"):
        for well in ("A01", "B03"):
            for site in (0, 1):
                key = FieldKey(plate, well, site, 0.0)
                cells = rng.integers(0, 5, (12, 12))
                probabilities = rng.random((5, 12, 12))
                if plate == "P2":
                    probabilities[4] = 0.0
                table = classify_cells(probabilities, cells, type_names=["A", "B", "C"])
                row = field_part(_Store(), "celltype", key, table)  # type: ignore[arg-type]
                out.append(TaskResult(stage="celltype", field=key, rows=LoggedRows.of([row])))
    return out


def _results(run, stage: str, tmp_path: Path) -> list[TaskResult]:
    """The stage's results as a resumed run holds them, in a shuffled order; two units' rows merged into one unit
    that spans both plates."""
    if stage == "celltype":
        results = _celltype_results(tmp_path)
    else:
        results = [entry_result(stage, Unit(unit, (), entry["token"]), entry)
                   for unit, entry in TaskLog(run[1].screen, stage).load().items()]
    rng = np.random.default_rng(5)
    results = [results[i] for i in rng.permutation(len(results))]
    first = next(i for i, r in enumerate(results) if r.rows and r.rows.plates == ("P1",))
    second = next(i for i, r in enumerate(results) if r.rows and r.rows.plates == ("P2",))
    both = LoggedRows.of([*results[second].rows, *results[first].rows])
    assert both.plates == ("P1", "P2")
    results[first] = TaskResult(stage=stage, rows=both)
    del results[second]
    return results


@pytest.mark.parametrize("stage", [*WRITERS, "celltype"])
def test_each_writer_plate_by_plate_equals_one_call_on_all_rows(run, stage, tmp_path):
    """The oracle: for each writer, frames made a plate at a time (each call sees one plate's rows) and joined give
    the tables and Parquet files of one call on all the rows sorted by field, including a unit spanning plates."""
    folder, result, _ = run
    params = {name: p for name, _, p in _spec(folder).stage_entries()}.get(stage)
    results = _results(run, stage, tmp_path)
    got_dir, want_dir = tmp_path / "plate_wise", tmp_path / "one_call"
    if stage == "ktr":  # ktr joins the run's tracks table
        for out in (got_dir, want_dir):
            (out / "tracks").mkdir(parents=True)
            shutil.copy(result.table_paths["tracks/tracks"], out / "tracks" / "tracks.parquet")
    steps = STAGES[stage].tables
    seen: list[set[str]] = []

    def frames(rows):
        seen.append({row["plate"] for row in rows})
        return steps.frames(rows)

    got = stage_tables(StageTables(frames, steps.write), results, got_dir, params)
    assert seen == [{"P1"}, {"P2"}]  # one plate at a time, and no fallback to all the rows at once
    want = _one_call(stage, results, want_dir, params)
    assert want[0]
    _assert_same_tables(got, want, got_dir, want_dir)


def test_plates_whose_columns_are_typed_differently_are_written_from_all_rows_at_once(run, tmp_path):
    """A column all None in one plate's rows (object) and float in another's: joining the plates' frames would make
    it object, one call float64; the runner then makes the tables from all the rows at once."""
    folder, _, _ = run
    params = {name: p for name, _, p in _spec(folder).stage_entries()}["measure"]
    results = []
    for unit, entry in TaskLog(run[1].screen, "measure").load().items():
        rows = [dict(row) for row in entry_result("measure", Unit(unit, (), ""), entry).rows]
        for row in rows:
            if row["plate"] == "P1":
                row["dna_content_median"] = None
        results.append(TaskResult(stage="measure", rows=LoggedRows.of(rows)))
    steps = STAGES["measure"].tables
    per_plate = [steps.frames(sorted((row for r in results for row in r.rows if row["plate"] == plate),
                                     key=_old_order)) for plate in ("P1", "P2")]
    assert join_plate_frames(per_plate) is None
    naive = pd.concat([f["summaries"] for f in per_plate], ignore_index=True)
    calls = []

    def frames(rows):
        calls.append(len(rows))
        return steps.frames(rows)

    got = stage_tables(StageTables(frames, steps.write), results, tmp_path / "a", params)
    want = _one_call("measure", results, tmp_path / "b", params)
    assert calls[-1] == sum(calls[:-1]) and len(calls) == 3  # two plates, then all the rows
    assert want[0]["measurements/fields"]["dna_content_median"].dtype == np.float64
    assert naive["dna_content_median"].dtype == object  # what joining would have written
    _assert_same_tables(got, want, tmp_path / "a", tmp_path / "b")
