"""Result files are written whole or not at all; append-only logs survive a torn line."""

from __future__ import annotations

import errno
import json

import pandas as pd
import pytest

from cellflow._files import append_lines, write_atomic, write_parquet, write_text_atomic


def _disk_full_after(nbytes: int):
    def write(path):
        with open(path, "wb") as handle:
            handle.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "labels.tif"
    write_text_atomic(target, "old, complete")
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, _disk_full_after(100))
    assert target.read_text() == "old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        write_atomic(tmp_path / "new.parquet", _disk_full_after(10))
    assert list(tmp_path.iterdir()) == []


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"well": ["A01", "B02"], "f1": [0.5, 0.75]})
    write_parquet(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)


def test_append_after_a_torn_line_starts_a_fresh_line(tmp_path):
    log = tmp_path / "log.jsonl"
    append_lines(log, json.dumps({"unit": "a"}) + "\n", sync=True)
    with open(log, "a", encoding="utf-8") as handle:  # an append torn by a kill or a full disk
        handle.write('{"unit": "b", "sta')
    append_lines(log, json.dumps({"unit": "c"}) + "\n" + json.dumps({"unit": "d"}) + "\n")
    lines = log.read_text().splitlines()
    assert lines == ['{"unit": "a"}', '{"unit": "b", "sta', '{"unit": "c"}', '{"unit": "d"}']


def test_task_log_keeps_the_lines_after_a_torn_one(tmp_path):
    from cellflow.pipeline.resume import TaskLog
    from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

    screen = write_synthetic_screen(tmp_path / "s.zarr", SyntheticSpec(wells=("A01",), sites=1, shape_yx=(32, 32),
                                                                         channels=("DNA",), n_z=1, seed=0))
    log = TaskLog(screen, "autolabel")
    log.append([{"unit": "u1", "status": "done", "token": "t1"}])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"unit": "u2", "status": "do')
    log.append([{"unit": "u3", "status": "done", "token": "t3"}])
    entries = log.load()
    assert set(entries) == {"u1", "u3"} and entries["u3"]["token"] == "t3"


def test_plate_view_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch, caplog):
    import cellflow.pipeline.monitor as monitor
    from cellflow.pipeline import parse_spec, run_spec

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(monitor, "write_text_atomic", full)
    spec = parse_spec({
        "name": "view",
        "input": {"store": str(tmp_path / "p.zarr"),
                  "synthetic": {"wells": ["A01"], "sites": 2, "shape_yx": [64, 64], "n_z": 1, "seed": 1,
                                "channels": ["DNA"]}},
        "stages": {"autolabel": {"nuclear_channel": "DNA", "diameter_um": 16}},
        "output": {"tables": str(tmp_path / "tables")},
        "cluster": {"kind": "threads"},
    })
    with caplog.at_level("WARNING", logger="cellflow.pipeline.monitor"):
        result = run_spec(spec, progress=False)
    assert result.status == "ok" and result.stages["autolabel"]["done"] == 2
    assert sum("plate view" in r.getMessage() for r in caplog.records) == 1  # said once, not per unit
