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
a SIGKILL of the runner loses at most the units that were in flight.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellflow._files import append_lines
from cellflow.graph import StageGraph, TaskResult
from cellflow.graph._parts import part_intact
from cellflow.screen.layout import DIMS_FIELD
from cellflow.screen.store import ChunkRecord, FieldKey, Screen, _dims, chunk_digest

__all__ = ["LoggedRows", "StagePlan", "TaskLog", "Unit", "field_id", "input_digests", "plan_stage"]

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


class LoggedRows(Sequence[Mapping[str, Any]]):
    """A unit's table rows held as their JSON text (the task log's), parsed each time they are read.

    The runner keeps every unit's rows from planning (skipped units) or completion until the
    tables are written at the end, stage by stage; as parsed Python objects they took 5-7x the
    bytes of their text (~23 KiB per 520x696 field for autolabel + measure, ~22 GiB at 10^6
    fields). Rows a task returned and rows read back from the log are both held this way, so
    the tables of a resumed run are made from exactly what a fresh run's are made from.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> LoggedRows:
        """The rows' JSON text (arrays as :func:`_json_default` writes them)."""
        return cls(json.dumps([dict(row) for row in rows], default=_json_default))

    def _parsed(self) -> list[Mapping[str, Any]]:
        return [_decoded(row) for row in json.loads(self.text)]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __getitem__(self, index: Any) -> Any:
        return self._parsed()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LoggedRows):
            return self.text == other.text
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LoggedRows({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


#: A ``done`` line as :func:`done_entry` and :meth:`TaskLog.append` write it: its rows last.
_DONE_KEYS = ["unit", "status", "token", "records", "rows"]
_ROWS_KEY = ', "rows": '


def _keep_rows_as_text(entry: dict[str, Any], line: str) -> dict[str, Any]:
    """``entry`` (parsed from ``line``) with its rows as :class:`LoggedRows` sliced from the line.

    Only for lines of the standard form (keys in :data:`_DONE_KEYS` order, records a list of
    lists): there the first ``, "rows": `` of the line is the top-level key (no object comes
    before it, and a quote inside a string is escaped), and the rows' JSON runs to the final
    ``}``. Any other line keeps its parsed rows.
    """
    if (list(entry) != _DONE_KEYS or not isinstance(entry["rows"], list) or not entry["rows"]
            or not all(isinstance(r, list) for r in entry["records"]) or not line.endswith("}\n")):
        return entry
    start = line.find(_ROWS_KEY)
    text = line[start + len(_ROWS_KEY):-2] if start >= 0 else ""
    if not (text.startswith("[") and text.endswith("]")):
        return entry
    entry["rows"] = LoggedRows(text)
    return entry


class TaskLog:
    """The append-only completion log of one stage in a store (see the module docstring)."""

    def __init__(self, screen: Screen, stage: str) -> None:
        self.path = Path(screen.path).joinpath(*_LOG_DIR, f"{stage}.jsonl")

    def load(self) -> dict[str, dict[str, Any]]:
        """The last complete entry of every unit (a torn final line is ignored).

        Only each unit's last line is parsed: the log's lines start ``{"unit": "<id>"``
        (written so by :meth:`append`), which names the unit without parsing the rest, and
        the lines a later one supersedes (every ``pending`` line, earlier runs') are skipped.
        A line of another form is parsed whole; a last line that does not parse makes the
        unit fall back to its latest line that does.
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
                try:
                    line = handle.readline().decode("utf-8")
                    latest[unit] = _keep_rows_as_text(json.loads(line), line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    return self._load_every_line()  # a damaged line: the slow, exact way
        return latest

    def _load_every_line(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break
                try:
                    entry = json.loads(line)
                    latest[entry["unit"]] = entry
                except (json.JSONDecodeError, TypeError, KeyError):
                    continue
        return latest

    def append(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Append entries durably (flushed and fsync'ed before returning).

        Rows given as :class:`LoggedRows` (the last key, as :func:`done_entry` puts them) are
        written as their text, not serialised again.
        """
        lines = "".join(_line(e) for e in entries)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_lines(self.path, lines, sync=True)


def _line(entry: Mapping[str, Any]) -> str:
    rows = entry.get("rows")
    if isinstance(rows, LoggedRows) and list(entry)[-1] == "rows":
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


_ARRAY = "__ndarray__"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.ndim == 1:
        # kept an array through the log (a row's histogram): a list of Python ints would take ~9x the memory
        data = np.ascontiguousarray(value, value.dtype.newbyteorder("<"))
        return {_ARRAY: base64.b64encode(data.tobytes()).decode("ascii"), "dtype": data.dtype.str}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _decoded(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A logged row with its arrays (see :func:`_json_default`) decoded; the row itself when it has none."""
    if not any(isinstance(v, dict) and _ARRAY in v for v in row.values()):
        return row
    return {k: np.frombuffer(base64.b64decode(v[_ARRAY]), np.dtype(v["dtype"])).copy()
            if isinstance(v, dict) and _ARRAY in v else v for k, v in row.items()}


def done_entry(unit: Unit, result: TaskResult) -> dict[str, Any]:
    """The log line of a unit that finished (its rows last, as :class:`LoggedRows` when they are)."""
    rows = result.rows if isinstance(result.rows, LoggedRows) else [dict(row) for row in result.rows]
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
    """A skipped unit's result as recorded (its rows feed the tables like a fresh result's)."""
    records = tuple(ChunkRecord(v, tuple(i), int(d)) for v, i, d in entry.get("records", ()))
    key = unit.fields[0] if len(unit.fields) == 1 else None
    rows = entry.get("rows", ())
    rows = rows if isinstance(rows, LoggedRows) else LoggedRows.of(rows)  # arrays stay encoded until read
    return TaskResult(stage=stage, field=key, records=records, rows=rows)


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
