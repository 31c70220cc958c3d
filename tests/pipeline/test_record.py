"""The run's client records finished units in groups (group commit): same ledgers, logs and counts as one at a time."""

from __future__ import annotations

import shutil

import dask
import numpy as np
import pytest
from rich.console import Console

from cellflow.cluster import cluster_client
from cellflow.graph import StageGraph, TaskResult
from cellflow.pipeline.execute import PlannedStage, _Recorder, execute_plans
from cellflow.pipeline.resume import StagePlan, TaskLog, Unit, field_id
from cellflow.pipeline.spec import ClusterSpec
from cellflow.screen import Screen, ScreenLayout
from cellflow.screen.store import ChunkLedger, FieldKey

LAYOUT = ScreenLayout(plates=("P1", "P2"), wells=("A01", "A02", "B01"), sites=(0, 1), channels=("DNA",),
                      shape_yx=(24, 24), tile_yx=(24, 24))
KEYS = [FieldKey(p, w, s, 0.0) for p in LAYOUT.plates for w in LAYOUT.wells for s in LAYOUT.sites]


@pytest.fixture
def store(tmp_path):
    """A store whose fields were written, with each field's records (the ledger not yet marked)."""
    screen = Screen.create(tmp_path / "a.zarr", LAYOUT)
    rng = np.random.default_rng(3)
    records = {key: screen.write("images", rng.integers(0, 4000, (1, 1, 24, 24), dtype=np.uint16),
                                 plate=key.plate, well=key.well, site=key.site, t=key.t) for key in KEYS}
    return screen, records


def _unit(stage: str, key: FieldKey, token: bool = True) -> Unit:
    return Unit(id=field_id(key), fields=(key,), token=f"{stage}-{field_id(key)}" if token else "")


def _planned(name: str, units: list[Unit]) -> PlannedStage:
    plan = StagePlan(name=name, units=units, todo=list(units))
    return PlannedStage(name=name, plan=plan, graph=StageGraph(name=name, outputs=(), tasks=()))


def _finished(records):
    """A mixed group: done units of two stages across plates and wells, two failures, one unit without a token."""
    out = []
    for i, key in enumerate(KEYS):
        stage = "first" if i % 2 == 0 else "second"
        if i == 3:
            out.append((stage, _unit(stage, key), TaskResult(stage=stage, field=key, error="ValueError: bad field")))
        elif i == 6:
            out.append((stage, _unit(stage, key), RuntimeError("worker died")))  # a raw exception, not a result
        else:
            out.append((stage, _unit(stage, key, token=i != 8), TaskResult(stage=stage, field=key,
                                                                          records=tuple(records[key]))))
    return out


def _state(screen: Screen, recorder: _Recorder) -> dict:
    execution = recorder.execution
    return {
        "ledger": screen.ledger("images").digests(),
        "logs": {s: TaskLog(screen, s).load() for s in ("first", "second")},
        "counts": execution.counts,
        "quarantined": sorted((q.stage, q.field, q.error) for q in execution.quarantined),
        "results": sorted((r.stage, str(r.field), r.error or "") for r in execution.results),
        "chunks": execution.chunks_written,
    }


def test_a_group_records_what_recording_one_at_a_time_records(store, tmp_path):
    screen, records = store
    copy = Screen.open(shutil.copytree(screen.path, tmp_path / "b.zarr"))
    finished = _finished(records)
    stages = [_planned(s, [u for st, u, _ in finished if st == s]) for s in ("first", "second")]
    grouped, single = (_Recorder(s, stages, lambda stage: None, None) for s in (screen, copy))
    grouped.record_many(finished)
    for item in reversed(finished):  # another order, one by one
        single.record(*item)
    a, b = _state(screen, grouped), _state(copy, single)
    np.testing.assert_array_equal(a.pop("ledger"), b.pop("ledger"))
    assert a == b
    # and against the expected content, worked out independently of the recorder
    expected = np.zeros(screen.ledger("images").grid_shape, np.uint64)
    for i, key in enumerate(KEYS):
        if i not in (3, 6):
            for r in records[key]:
                expected[r.index] = r.digest
    np.testing.assert_array_equal(screen.ledger("images").digests(), expected)
    logs = a["logs"]
    assert {u: e["status"] for u, e in logs["second"].items()}[field_id(KEYS[3])] == "failed"
    assert logs["first"][field_id(KEYS[6])]["status"] == "failed"
    assert field_id(KEYS[8]) not in logs["first"]  # no token: nothing to resume, nothing logged
    assert sum(len(v) for v in logs.values()) == len(KEYS) - 1
    assert a["counts"]["first"]["done"] + a["counts"]["second"]["done"] == len(KEYS) - 2
    assert a["quarantined"] == sorted([("second", field_id(KEYS[3]), "ValueError: bad field"),
                                       ("first", field_id(KEYS[6]), "worker died")])


def test_a_group_whose_ledger_write_fails_logs_none_of_its_units_done(store, monkeypatch):
    """A kill between the ledger write and the log append can only leave units to redo, never a done
    line whose chunks are not in the ledger."""
    screen, records = store
    finished = _finished(records)
    stages = [_planned(s, [u for st, u, _ in finished if st == s]) for s in ("first", "second")]
    recorder = _Recorder(screen, stages, lambda stage: None, None)

    def killed(self, records):
        raise KeyboardInterrupt("killed while writing the ledger")

    monkeypatch.setattr(ChunkLedger, "mark", killed)
    with pytest.raises(KeyboardInterrupt):
        recorder.record_many(finished)
    assert TaskLog(screen, "first").load() == {} and TaskLog(screen, "second").load() == {}


def _returns(stage: str, key: FieldKey, records) -> TaskResult:
    if key.well == "A02" and key.site == 1 and key.plate == "P2":
        raise OSError("an unguarded task raised")
    return TaskResult(stage=stage, field=key, records=tuple(records))


@pytest.mark.parametrize("gather_fails", [False, True])
def test_units_finishing_on_a_cluster_are_each_recorded_once(store, monkeypatch, gather_fails):
    """Through execute_plans on a real 2-worker LocalCluster: every unit's chunks and line, the
    unguarded failure quarantined, the rest done — also when a group's gather fails (a result lost
    to a dying worker), where each unit is then fetched on its own."""
    screen, records = store
    if gather_fails:
        from distributed import Client

        def lost(self, futures, *args, **kwargs):
            raise OSError("lost a result")

        monkeypatch.setattr(Client, "gather", lost)
    units = [_unit("only", key) for key in KEYS]
    by_field = {key: dask.delayed(_returns, pure=False)("only", key, records[key]) for key in KEYS}
    stage = PlannedStage(name="only", plan=StagePlan(name="only", units=units, todo=list(units)),
                         graph=StageGraph(name="only", outputs=(), tasks=tuple(by_field.values()), by_field=by_field))
    spec = ClusterSpec(kind="local", n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    with cluster_client(spec) as client:
        execution = execute_plans(screen, [stage], client, Console(quiet=True), show=False, retries=0)
    bad = FieldKey("P2", "A02", 1, 0.0)
    assert execution.counts["only"] == {"units": len(KEYS), "skipped": 0, "done": len(KEYS) - 1, "quarantined": 1}
    [quarantine] = execution.quarantined
    assert quarantine.field == field_id(bad) and quarantine.error.startswith("OSError: an unguarded task raised")
    log = TaskLog(screen, "only").load()
    assert {u: e["status"] for u, e in log.items()} == {
        field_id(k): ("failed" if k == bad else "done") for k in KEYS}
    expected = np.zeros(screen.ledger("images").grid_shape, np.uint64)
    for key in KEYS:
        if key != bad:
            for r in records[key]:
                expected[r.index] = r.digest
    np.testing.assert_array_equal(screen.ledger("images").digests(), expected)
    lines = (screen.path / "_cellflow" / "tasks" / "only.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(KEYS)  # one pending line per unit at the start, one result line each


def _every_line(path):
    """Independent reference for TaskLog.load: parse every line, the last parseable entry of a unit wins."""
    import json

    latest = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                entry = json.loads(line)
                latest[entry["unit"]] = entry
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
    return latest


@pytest.mark.parametrize("seed", range(40))
def test_task_log_load_equals_parsing_every_line(store, seed):
    """Random logs: units with quotes, backslashes and non-ASCII in their ids, pending/done/failed lines,
    reruns, foreign and damaged lines, a torn last line."""
    import json

    screen, _ = store
    rng = np.random.default_rng(seed)
    log = TaskLog(screen, f"random{seed}")
    units = ["P1/A01/0/0", 'P"2/B01/1/0', "P\\3/C02/0/15", "Plaque-é/D04/2/0", "P5/E05/0/0"]
    lines = []
    for _ in range(int(rng.integers(1, 60))):
        unit = units[int(rng.integers(len(units)))]
        kind = int(rng.integers(6))
        if kind == 0:
            lines.append(json.dumps({"unit": unit, "status": "pending", "token": "t"}) + "\n")
        elif kind in (1, 2):
            lines.append(json.dumps({"unit": unit, "status": "done", "token": str(rng.integers(9)),
                                     "records": [["v", [0, 1], "7"]], "rows": [{"n": int(rng.integers(5))}]}) + "\n")
        elif kind == 3:
            lines.append(json.dumps({"unit": unit, "status": "failed", "token": "t", "error": "x"}) + "\n")
        elif kind == 4:  # damaged in the middle, but with the usual start
            good = json.dumps({"unit": unit, "status": "done", "token": "t"})
            lines.append(good[: int(rng.integers(len('{"unit": "') + 1, len(good)))] + "\n")
        else:  # another form: keys in another order, or no unit at all
            lines.append(json.dumps({"status": "done", "unit": unit, "token": "z"} if rng.random() < 0.5
                                    else {"note": "not a unit"}) + "\n")
    text = "".join(lines)
    if rng.random() < 0.5:
        text += json.dumps({"unit": units[0], "status": "done", "token": "torn"})[:20]  # killed mid-write
    log.path.parent.mkdir(parents=True, exist_ok=True)
    log.path.write_text(text, encoding="utf-8")
    assert log.load() == _every_line(log.path)


def test_a_rows_arrays_come_back_from_the_task_log_as_the_same_arrays(tmp_path):
    """A skipped unit's rows are read back from the log: a 1-D numeric array (a field's DNA histogram) must come
    back as an array of the same dtype and values (as a list of Python ints it took ~9x the memory), other
    values as JSON gives them."""
    from cellflow.pipeline.resume import done_entry, entry_result

    rng = np.random.default_rng(4)
    row = {"plate": "P1", "n": np.int64(7), "bins": rng.integers(-50, 3000, 200).astype(np.int32),
           "counts": rng.integers(0, 9, 200).astype(np.uint16), "weights": rng.normal(size=5),
           "empty": np.zeros(0, np.int64), "grid": np.arange(4).reshape(2, 2), "plain": [1, 2]}
    unit = Unit(id="P1/A01/0/0", fields=(FieldKey("P1", "A01", 0, 0.0),), token="t")

    class _Store:
        path = tmp_path

    log = TaskLog(_Store(), "measure")  # type: ignore[arg-type]
    log.append([done_entry(unit, TaskResult(stage="measure", rows=(row,)))])
    (back,) = entry_result("measure", unit, log.load()[unit.id]).rows
    assert set(back) == set(row)
    for key in ("bins", "counts", "weights", "empty"):
        assert isinstance(back[key], np.ndarray) and back[key].dtype == row[key].dtype, key
        np.testing.assert_array_equal(back[key], row[key])
        back[key][...] = 0  # an array of its own, writable
    assert back["n"] == 7 and back["grid"] == [[0, 1], [2, 3]] and back["plain"] == [1, 2] and back["plate"] == "P1"


def test_rows_kept_as_log_text_are_written_and_read_back_exactly(tmp_path):
    """The runner keeps rows as their JSON text (LoggedRows), then by where they lie in the log (RowsInLog): the
    log line it writes from that text must be the line json.dumps writes from the rows, append() must say where each
    line's rows went and load() find the same place, even when a row holds a nested "rows" key or a string that
    looks like the key; a line of another form keeps its parsed rows."""
    import json

    from cellflow.pipeline.resume import LoggedRows, RowsInLog, _json_default, _line, done_entry, entry_result

    rng = np.random.default_rng(12)
    tricky = ['a, "rows": [1]}', 'quote " and \\ slash', "ünïcode", '{"rows": []}']

    def random_rows() -> list[dict]:
        return [{"plate": "P1", "i": int(rng.integers(0, 9)), "x": float(rng.normal()), "s": str(rng.choice(tricky)),
                 "nested": {"k": None, "rows": [int(rng.integers(0, 5))]}, "hist": rng.integers(0, 99, 5)}
                for _ in range(int(rng.integers(0, 4)))]

    class _Store:
        path = tmp_path

    log = TaskLog(_Store(), "s")  # type: ignore[arg-type]
    expected = {}
    for i in range(40):
        unit = Unit(id=f'P1/A{i:02d}/0/0' if i % 7 else f'odd "id" {i}', fields=(FieldKey("P1", "A01", 0, 0.0),),
                    token=f"tok{i}")
        rows = random_rows()
        plain = done_entry(unit, TaskResult(stage="s", rows=tuple(rows)))
        kept = done_entry(unit, TaskResult(stage="s", rows=LoggedRows.of(rows)))
        assert _line(kept) == json.dumps(plain, default=_json_default) + "\n"  # same bytes either way
        (held,) = log.append([kept])
        assert isinstance(held, RowsInLog) and held.text == kept["rows"].text and held.plates == (("P1",) if rows
                                                                                                    else ())
        expected[unit.id] = (rows, held)
    reordered = {"rows": [{"a": 1}], "unit": "other", "status": "done", "token": "t", "records": []}
    with log.path.open("a") as handle:
        handle.write(json.dumps(reordered) + "\n")
    loaded = log.load()
    for unit_id, (rows, held) in expected.items():
        got = list(entry_result("s", Unit(unit_id, (), "t"), loaded[unit_id]).rows)
        assert len(got) == len(rows)
        for g, r in zip(got, rows):
            assert {k: v for k, v in g.items() if k != "hist"} == {k: v for k, v in r.items() if k != "hist"}
            np.testing.assert_array_equal(g["hist"], r["hist"])
        if rows:
            back = loaded[unit_id]["rows"]
            assert isinstance(back, RowsInLog) and (back.path, back.offset, back.size, back.crc, back.plates) == (
                held.path, held.offset, held.size, held.crc, held.plates)
    assert loaded["other"]["rows"] == [{"a": 1}] and not isinstance(loaded["other"]["rows"], RowsInLog)
