"""Resumable, idempotent runs: which units of work are done, and which must be (re)done.

A stage's **unit** is what one of its delayed results covers: one field for most
stages, a whole plate for illumination (its fields share one ``by_field`` entry).
Each unit has a **token**, a SHA-256 of everything its output depends on:

* the stage name and its parameters (``params.to_dict()``) and the cellflow version (an
  upgrade recomputes rather than mixing results of two versions),
* the content hash of any file a parameter names (a model checkpoint),
* the tokens of the upstream stage's units for the same fields, and
* the ledger digests of the input image chunks of its fields.

So a changed parameter invalidates that stage's units and, through the token chain,
exactly the dependent units downstream; a re-ingested image invalidates its field's
units in every stage and nothing else.

Completion is recorded in a per-stage append-only **task log**
(``<store>/_cellflow/tasks/<stage>.jsonl``), one JSON line per event, the last line of
a unit winning: ``pending`` before a unit is (re)computed, ``done`` (with the chunk
records it wrote and its table rows) after its writes returned and the chunk ledger
was marked, or ``failed`` (with the error). A unit is skipped on resume only if its
last line is ``done`` with the same token, every chunk it wrote still carries the
recorded digest in the store's ledger (and, with ``verify``, re-hashing the chunk's
bytes gives that digest), and every table part its rows reference is still there with
its recorded size (and SHA-256, with ``verify``; :mod:`cellflow.graph._parts`). A line
torn by a kill is ignored. Lines are flushed and fsync'ed before the client goes on, so
a SIGKILL of the runner loses at most the units that were in flight. Until the tables are
written, the client holds a done unit's rows by where they lie in its ``done`` line
(:class:`RowsInLog`, :mod:`cellflow.pipeline._rows`), not in memory.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellflow._files import append_lines
from cellflow.graph import StageGraph, TaskResult
from cellflow.graph._parts import part_intact
from cellflow.pipeline._rows import JsonRows, LoggedRows, RowsInLog, _json_default, plates_of
from cellflow.screen.layout import DIMS_FIELD
from cellflow.screen.store import FieldKey, Screen, _dims, chunk_digest

__all__ = ["LoggedRows", "RowsInLog", "StagePlan", "TaskLog", "Unit", "field_id", "input_digests", "plan_stage"]

_LOG_DIR = ("_cellflow", "tasks")


def field_id(key: FieldKey) -> str:
    """``plate/well/site/t``: a field's name in logs and reports."""
    return f"{key.plate}/{key.well}/{key.site}/{key.t:g}"


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Unit:
    """One delayed result of a stage: the fields it covers and its token."""

    id: str
    fields: tuple[FieldKey, ...]
    token: str


#: A ``done`` line as :func:`done_entry` and :meth:`TaskLog.append` write it: its rows last.
_DONE_KEYS = ["unit", "status", "token", "records", "rows"]
_ROWS_KEY = ', "rows": '


def _rows_slice(entry: Mapping[str, Any], line: bytes) -> tuple[int, int] | None:
    """Where the rows' JSON of ``entry`` (parsed from ``line``) lies in the line: (start, end) bytes.

    Only for lines of the standard form (keys in :data:`_DONE_KEYS` order, records a list of
    lists, rows a non-empty list of objects): there the first ``, "rows": `` of the line is the
    top-level key (no object comes before it, and a quote inside a string is escaped), and the
    rows' JSON runs to the final ``}``. None for any other line (it keeps its parsed rows).
    """
    if (list(entry) != _DONE_KEYS or not isinstance(entry["rows"], list) or not entry["rows"]
            or not all(isinstance(r, dict) for r in entry["rows"])
            or not all(isinstance(r, list) for r in entry["records"]) or not line.endswith(b"}\n")):
        return None
    start = line.find(_ROWS_KEY.encode())
    if start < 0:
        return None
    start += len(_ROWS_KEY)
    end = len(line) - 2
    return (start, end) if line[start:start + 1] == b"[" and line[end - 1:end] == b"]" else None


class TaskLog:
    """The append-only completion log of one stage in a store (see the module docstring).

    :meth:`load` and :meth:`append` give the rows of ``done`` lines as :class:`RowsInLog`:
    held by where they lie in this file, not in memory.
    """

    def __init__(self, screen: Screen, stage: str) -> None:
        self.path = Path(screen.path).joinpath(*_LOG_DIR, f"{stage}.jsonl")
        self._plates: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per set of plates, shared

    def _rows_at(self, offset: int, data: bytes, plates: tuple[str, ...]) -> RowsInLog:
        """The rows whose JSON ``data`` was written at byte ``offset`` of this log."""
        return RowsInLog(self.path, offset, len(data), zlib.crc32(data), self._plates.setdefault(plates, plates))

    def load(self) -> dict[str, dict[str, Any]]:
        """The last complete entry of every unit (a torn final line is ignored).

        Only each unit's last line is parsed: the log's lines start ``{"unit": "<id>"``
        (written so by :meth:`append`), which names the unit without parsing the rest, and
        the lines a later one supersedes (every ``pending`` line, earlier runs') are skipped.
        A line of another form is parsed whole; a last line that does not parse makes the
        unit fall back to its latest line that does. The rows of a standard ``done`` line
        come as :class:`RowsInLog`, those of any other line as parsed.
        """
        if not self.path.exists():
            return {}
        last: dict[str, int] = {}  # unit -> byte offset of its last line (lines are not kept: ~GBs at 10^6 units)
        with open(self.path, "rb") as handle:
            offset = 0
            for raw in handle:
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    break  # torn by a kill mid-write
                line = raw.decode("utf-8", errors="replace")
                unit = _unit_of(line)
                if unit is None:
                    try:
                        entry = json.loads(line)
                        unit = entry["unit"]
                    except (json.JSONDecodeError, TypeError, KeyError):
                        continue
                last[unit] = start
            latest: dict[str, dict[str, Any]] = {}
            for unit, start in sorted(last.items(), key=lambda item: item[1]):  # one forward pass over the file
                handle.seek(start)
                raw = handle.readline()
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return self._load_every_line()  # a damaged line: the slow, exact way
                latest[unit] = self._held(entry, raw, start)
        return latest

    def _load_every_line(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        with open(self.path, "rb") as handle:
            offset = 0
            for raw in handle:
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    break
                try:
                    line, exact = raw.decode("utf-8"), True
                except UnicodeDecodeError:
                    line, exact = raw.decode("utf-8", errors="replace"), False
                try:
                    entry = json.loads(line)
                    latest[entry["unit"]] = self._held(entry, raw, start) if exact else entry
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue
        return latest

    def _held(self, entry: dict[str, Any], line: bytes, start: int) -> dict[str, Any]:
        """``entry``, parsed from ``line`` (at byte ``start``), with its rows as :class:`RowsInLog` where it can."""
        where = _rows_slice(entry, line)
        if where is not None:
            entry["rows"] = self._rows_at(start + where[0], line[where[0]:where[1]], plates_of(entry["rows"]))
        return entry

    def append(self, entries: Iterable[Mapping[str, Any]]) -> list[RowsInLog | None]:
        """Append entries durably (flushed and fsync'ed before returning); where their rows now lie.

        Rows given as :class:`LoggedRows` (the last key, as :func:`done_entry` puts them) are
        written as their text, not serialised again, and come back as :class:`RowsInLog` (None
        for every other entry): the file's size before the append (:func:`append_lines` says
        where the text went) plus the lengths of the lines before it in the batch.
        """
        entries = list(entries)
        lines = [_line(e).encode("utf-8") for e in entries]
        if not lines:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        offset = append_lines(self.path, b"".join(lines), sync=True)
        held: list[RowsInLog | None] = []
        for entry, line in zip(entries, lines):
            rows = entry.get("rows")
            if isinstance(rows, JsonRows) and list(entry)[-1] == "rows":  # the line ends with their text (_line)
                end = len(line) - 2
                start = end - len(rows.text.encode("utf-8"))
                held.append(self._rows_at(offset + start, line[start:end], plates_of(rows)))
            else:
                held.append(None)
            offset += len(line)
        return held


def _line(entry: Mapping[str, Any]) -> str:
    rows = entry.get("rows")
    if isinstance(rows, JsonRows) and list(entry)[-1] == "rows":
        head = json.dumps({k: v for k, v in entry.items() if k != "rows"}, default=_json_default)
        return f"{head[:-1]}{_ROWS_KEY}{rows.text}}}\n"
    return json.dumps(dict(entry), default=_json_default) + "\n"


_LINE_START = '{"unit": "'


def _unit_of(line: str) -> str | None:
    """The unit id of a log line as :meth:`TaskLog.append` writes it; None when not in that form."""
    if not line.startswith(_LINE_START):
        return None
    end = line.find('"', len(_LINE_START))
    unit = line[len(_LINE_START):end]
    return None if end < 0 or "\\" in unit else unit  # an escaped character: let json read it


def done_entry(unit: Unit, result: TaskResult) -> dict[str, Any]:
    """The log line of a unit that finished (its rows last, as held when they are :class:`LoggedRows`)."""
    rows = result.rows if isinstance(result.rows, JsonRows) else [dict(row) for row in result.rows]
    return {
        "unit": unit.id, "status": "done", "token": unit.token,
        "records": [[r.variable, list(r.index), str(r.digest)] for r in result.records],
        "rows": rows,
    }


def failed_entry(unit: Unit, error: str) -> dict[str, Any]:
    """The log line of a unit whose task failed (its fields are quarantined)."""
    return {"unit": unit.id, "status": "failed", "token": unit.token, "error": error}


def pending_entry(unit: Unit) -> dict[str, Any]:
    """The log line written before a unit is (re)computed: whatever was done before no longer counts."""
    return {"unit": unit.id, "status": "pending", "token": unit.token}


def entry_result(stage: str, unit: Unit, entry: Mapping[str, Any]) -> TaskResult:
    """A skipped unit's result as recorded: its rows feed the tables like a fresh result's.

    Without its chunk records: planning checked them against the ledgers from ``entry`` (they are
    in the ledgers and stay in the log), and nothing reads them again, so the runner does not hold
    them for the run (~0.5 KiB a unit).
    """
    key = unit.fields[0] if len(unit.fields) == 1 else None
    rows = entry.get("rows", ())
    if not isinstance(rows, JsonRows):  # a line of another form: its rows as text (arrays stay encoded until read)
        rows = LoggedRows.of(rows) if rows else ()
    return TaskResult(stage=stage, field=key, rows=rows)


# ---------------------------------------------------------------------------- tokens
def input_digests(screen: Screen, variable: str = "images") -> dict[FieldKey, str]:
    """Per field, a hash of the ledger digests of its ``variable`` chunks ("" without a ledger)."""
    if variable not in screen.variables:
        return {}
    digests = screen.ledger(variable).digests()
    array = screen._array(variable)
    dims = _dims(array)
    out: dict[FieldKey, str] = {}
    for key in screen.fields():
        index: list[Any] = [slice(None)] * digests.ndim
        for dim, value in zip(DIMS_FIELD, key):
            if dim in dims:
                axis = dims.index(dim)
                index[axis] = screen._position(dim, value) // array.chunks[axis]
        out[key] = hashlib.sha256(np.ascontiguousarray(digests[tuple(index)]).tobytes()).hexdigest()
    return out


def _file_hashes(params: Any) -> dict[str, str]:
    """SHA-256 of every existing file a parameter names (a model checkpoint, say)."""
    from cellflow.nn.checkpoint import file_sha256

    hashes: dict[str, str] = {}

    def visit(value: Any) -> None:
        if isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, (str, Path)) and len(str(value)) < 4096:
            path = Path(value)
            try:
                if path.is_file():
                    hashes[str(value)] = file_sha256(path)
            except OSError:
                pass

    visit(params.to_dict() if hasattr(params, "to_dict") else {})
    return hashes


def _groups(graph: StageGraph) -> list[tuple[Any, tuple[FieldKey, ...]]]:
    """(delayed, fields) per distinct delayed result of ``graph.by_field``, fields sorted."""
    groups: dict[int, tuple[Any, list[FieldKey]]] = {}
    for key, task in graph.by_field.items():
        groups.setdefault(id(task), (task, []))[1].append(key)
    return [(task, tuple(sorted(keys))) for task, keys in groups.values()]


def _unit_id(fields: Sequence[FieldKey]) -> str:
    if len(fields) == 1:
        return field_id(fields[0])
    plates = sorted({f.plate for f in fields})
    digest = hashlib.sha256("\n".join(field_id(f) for f in fields).encode()).hexdigest()[:16]
    return f"{','.join(plates)}#{len(fields)}:{digest}"


@dataclass
class StagePlan:
    """A stage's units, which of them are done, and the graph of the rest."""

    name: str
    units: list[Unit]
    skipped: list[tuple[Unit, TaskResult]] = field(default_factory=list)
    todo: list[Unit] = field(default_factory=list)
    token_of: dict[FieldKey, str] = field(default_factory=dict)


def _still_valid(screen: Screen, entry: Mapping[str, Any], ledgers: dict[str, np.ndarray], verify: bool) -> bool:
    if not all(part_intact(row, verify=verify) for row in entry.get("rows", ())):
        return False  # a table part it wrote was deleted or changed since
    for variable, index, digest in entry.get("records", ()):
        if variable not in ledgers:
            if variable not in screen.variables:
                return False
            ledgers[variable] = screen.ledger(variable).digests()
        grid = ledgers[variable]
        index = tuple(index)
        if len(index) != grid.ndim or any(i >= n for i, n in zip(index, grid.shape)):
            return False
        if int(grid[index]) != int(digest):
            return False
        if verify and chunk_digest(_read_chunk(screen, variable, index)) != int(digest):
            return False
    return True


def _read_chunk(screen: Screen, variable: str, index: tuple[int, ...]) -> np.ndarray:
    array = screen._array(variable)
    region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
    return np.asarray(array[region])


def plan_stage(
    screen: Screen,
    name: str,
    params: Any,
    full: StageGraph,
    *,
    upstream: Mapping[FieldKey, str],
    inputs: Mapping[FieldKey, str],
    resume: bool,
    verify: bool = False,
) -> StagePlan:
    """Units of ``full`` (a stage built over every field) with their tokens; split into skipped and to-do.

    Parameters
    ----------
    upstream : mapping of FieldKey to str
        The previous stage's unit token of each field ({} for the first stage).
    inputs : mapping of FieldKey to str
        :func:`input_digests` of the store.
    resume : bool
        False: every unit is to do (a fresh run over the same store).
    verify : bool
        Also re-hash every recorded chunk's bytes (slow, thorough).
    """
    from cellflow import __version__

    base = {"stage": name, "params": params.to_dict() if hasattr(params, "to_dict") else repr(params),
            "files": _file_hashes(params), "cellflow": __version__}
    plan = StagePlan(name=name, units=[])
    log = TaskLog(screen, name).load() if resume else {}
    ledgers: dict[str, np.ndarray] = {}
    for _task, fields in _groups(full):
        token = _sha({**base, "upstream": [upstream.get(f, "") for f in fields],
                      "inputs": [inputs.get(f, "") for f in fields]})
        unit = Unit(id=_unit_id(fields), fields=fields, token=token)
        plan.units.append(unit)
        plan.token_of.update(dict.fromkeys(fields, token))
        entry = log.get(unit.id)
        if (entry is not None and entry.get("status") == "done" and entry.get("token") == token
                and _still_valid(screen, entry, ledgers, verify)):
            plan.skipped.append((unit, entry_result(name, unit, entry)))
        else:
            plan.todo.append(unit)
    return plan
