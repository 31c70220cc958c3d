"""Rows held by where they lie in a task log: found where append() wrote them, and never silently others."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellflow.graph import TaskResult
from cellflow.pipeline.resume import LoggedRows, RowsInLog, TaskLog, Unit, done_entry, failed_entry, pending_entry
from cellflow.screen.store import FieldKey


class _Store:
    def __init__(self, path):
        self.path = path


def _rows(rng: np.random.Generator, plates: list[str]) -> list[dict]:
    return [{"plate": str(rng.choice(plates)), "well": "A01", "x": float(rng.normal()), "s": "ünï \"q\" , \"rows\": [",
             "hist": rng.integers(0, 9, int(rng.integers(0, 6))).astype(np.int32)}
            for _ in range(int(rng.integers(1, 4)))]


def _same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "hist"} == {k: v for k, v in w.items() if k != "hist"}
        np.testing.assert_array_equal(g["hist"], w["hist"])


@pytest.mark.parametrize("torn", [False, True])
def test_rows_are_found_where_append_wrote_them(tmp_path, torn):
    """append() says where each done line's rows went (the file's size before, plus the lines before them in the
    batch, plus the newline written after a torn line); load() finds the same places (reading only last lines, or
    every line when one does not parse: the torn one); other lines get None."""
    rng = np.random.default_rng(21)
    log = TaskLog(_Store(tmp_path), "measure")  # type: ignore[arg-type]
    expected = {}
    for batch in range(4):
        if batch == 2 and torn:
            with log.path.open("ab") as handle:
                handle.write(b'{"unit": "torn", "status": "do')  # a kill mid-write
        entries, rows_of = [], []
        for i in range(int(rng.integers(1, 6))):
            unit = Unit(f"P{i % 2}/A{batch:02d}/{i}/0", (FieldKey("P1", "A01", i, 0.0),), f"t{batch}{i}")
            rows = _rows(rng, ["P1", "P2"])
            kind = rng.integers(0, 4)
            if kind == 0:
                entries.append(pending_entry(unit))
            elif kind == 1:
                entries.append(failed_entry(unit, "ValueError: bad"))
            else:
                entries.append(done_entry(unit, TaskResult(stage="measure", rows=LoggedRows.of(rows))))
            rows_of.append(rows if kind > 1 else None)
        held = log.append(entries)
        assert len(held) == len(entries)
        for entry, rows, place in zip(entries, rows_of, held):
            if rows is None:
                assert place is None
                expected.pop(entry["unit"], None)
                continue
            assert isinstance(place, RowsInLog) and place.plates == tuple(sorted({r["plate"] for r in rows}))
            _same(list(place), rows)
            expected[entry["unit"]] = (rows, place)
    loaded = log.load()
    assert expected and set(expected) <= set(loaded)
    for unit, (rows, place) in expected.items():
        back = loaded[unit]["rows"]
        assert (back.offset, back.size, back.crc, back.plates) == (place.offset, place.size, place.crc, place.plates)
        _same(list(back), rows)
        assert back.plates is place.plates  # one tuple per set of plates, shared, not one per unit
    assert len({id(v["rows"].plates) for v in loaded.values() if isinstance(v.get("rows"), RowsInLog)}) <= 3


@pytest.mark.parametrize("change", ["compacted", "edited"])
def test_rows_of_a_log_changed_behind_the_run_are_an_error_not_other_rows(tmp_path, change):
    """Task logs only grow; if one were rewritten (compacted: its lines move) or edited in place (same length), the
    rows held by place must not be read from there: the CRC of the bytes tells."""
    log = TaskLog(_Store(tmp_path), "score")  # type: ignore[arg-type]
    units = [Unit(f"P1/A0{i}/0/0", (FieldKey("P1", f"A0{i}", 0, 0.0),), "t") for i in range(3)]
    log.append(pending_entry(u) for u in units)
    held = log.append([done_entry(u, TaskResult(stage="score", rows=LoggedRows.of(
        [{"plate": "P1", "well": u.id[3:6], "f1": 0.5 + i / 10}]))) for i, u in enumerate(units)])
    assert [row["f1"] for place in held for row in place] == [0.5, 0.6, 0.7]
    lines = log.path.read_text().splitlines(keepends=True)
    if change == "compacted":  # only the last line of each unit kept: the done lines move up
        log.path.write_text("".join(lines[3:]))
    else:
        log.path.write_text("".join(lines).replace('"f1": 0.6', '"f1": 0.9'))
    with pytest.raises(RuntimeError, match="changed during the run"):
        list(held[1])
    if change == "edited":
        assert [row["f1"] for row in held[0]] == [0.5]  # the bytes of the others are as written
        assert json.loads(log.path.read_text().splitlines()[4])["rows"][0]["f1"] == 0.9
