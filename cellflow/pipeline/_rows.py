"""How the run's client holds a unit's table rows until the tables are written.

The runner keeps every finished unit's rows, from planning (units done before) or completion,
until the stage's tables are written at the end. As parsed Python objects they take 5-7x the
bytes of their JSON text, and the text is ~3.7 KiB of task log per 520x696 field for autolabel
+ measure (``benchmarks/client_scale.py``): GBs at 10^6 fields. So rows are held as one of:

* :class:`RowsInLog`: where they lie in the stage's task log (its path, the byte offset and
  length of the rows' JSON in the unit's ``done`` line, a CRC-32 of those bytes, and the
  plates the rows are of), ~0.2 KiB, read back and parsed only when read. Units recorded done
  in this run and units loaded from the log on resume are both held so: the tables of a
  resumed run are made from exactly the bytes a fresh run's are made from. Task logs only
  grow (nothing in cellflow rewrites one, and one run at a time writes a store), so the bytes
  stay where they were written; the CRC makes a log changed behind the run's back an error,
  never wrong tables.
* :class:`LoggedRows`: the JSON text itself, for rows that are in no log (a unit without a
  token) or in a line of another form.

Both are read-only sequences of row mappings, parsed each time they are iterated, and both know
the plates of their rows without parsing them (the tables are written one plate at a time:
:mod:`cellflow.pipeline.tables`).
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["JsonRows", "LoggedRows", "RowsInLog", "plate_of", "plates_of"]


def plate_of(row: Mapping[str, Any]) -> str:
    """The plate a table row is of, as the tables sort rows (``""`` for a row without one)."""
    return str(row.get("plate", ""))


def plates_of(rows: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The plates of some rows, sorted; read from :class:`JsonRows` without parsing them."""
    if isinstance(rows, JsonRows) and rows.plates is not None:
        return rows.plates
    return tuple(sorted({plate_of(row) for row in rows}))


class JsonRows(Sequence[Mapping[str, Any]]):
    """Table rows held as JSON (see the module docstring); a subclass says where the text is."""

    __slots__ = ()
    #: The plates of the rows (:func:`plates_of`), or None when not known without parsing them.
    plates: tuple[str, ...] | None

    @property
    def text(self) -> str:
        """The rows' JSON text (arrays as :func:`_json_default` writes them)."""
        raise NotImplementedError

    def _parsed(self) -> list[Mapping[str, Any]]:
        return [_decoded(row) for row in json.loads(self.text)]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __getitem__(self, index: Any) -> Any:
        return self._parsed()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, JsonRows):
            return self.text == other.text
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


class LoggedRows(JsonRows):
    """A unit's table rows held as their JSON text (the task log's), parsed each time they are read."""

    __slots__ = ("_text", "plates")

    def __init__(self, text: str, plates: tuple[str, ...] | None = None) -> None:
        self._text = text
        self.plates = plates

    @property
    def text(self) -> str:
        """The rows' JSON text."""
        return self._text

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> LoggedRows:
        """The rows' JSON text (arrays as :func:`_json_default` writes them) and their plates."""
        rows = [dict(row) for row in rows]
        return cls(json.dumps(rows, default=_json_default), plates_of(rows))

    def __repr__(self) -> str:
        return f"LoggedRows({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


class RowsInLog(JsonRows):
    """A unit's table rows held by where their JSON lies in a task log: ``size`` bytes at byte ``offset``.

    Parameters
    ----------
    path : Path
        The task log (one object shared by all the rows of that log).
    offset, size : int
        Where the rows' JSON (``[...]``) lies in the file.
    crc : int
        ``zlib.crc32`` of those bytes, checked on every read.
    plates : tuple of str
        The plates of the rows (:func:`plates_of`).

    Raises
    ------
    RuntimeError
        When read, if the bytes there are no longer those written (the log was changed since).
    """

    __slots__ = ("crc", "offset", "path", "plates", "size")

    def __init__(self, path: Path, offset: int, size: int, crc: int, plates: tuple[str, ...]) -> None:
        self.path, self.offset, self.size, self.crc, self.plates = path, offset, size, crc, plates

    @property
    def text(self) -> str:
        """The rows' JSON, read from the log."""
        descriptor = os.open(self.path, os.O_RDONLY)  # half the time of open(): read once per unit and plate
        try:
            data = os.pread(descriptor, self.size, self.offset)
        finally:
            os.close(descriptor)
        if len(data) != self.size or zlib.crc32(data) != self.crc:
            raise RuntimeError(f"task log {self.path} changed during the run: the {self.size} bytes at {self.offset} "
                               "are not the table rows written there; run again (done units are read from the log "
                               "as it is now)")
        return data.decode("utf-8")

    def __repr__(self) -> str:
        return f"RowsInLog({str(self.path)!r}, offset={self.offset}, size={self.size}, plates={self.plates!r})"


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
