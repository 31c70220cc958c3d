"""Per-object rows as Parquet parts in the store, referenced from the task log.

A stage whose task makes one row per object (a cell's KTR ratio, its type, a track) writes
those rows as one Parquet *part* per unit under ``<store>/tables/<stage>/…`` and returns a
small **reference row** instead of the rows themselves: ``part`` (the file), ``part_rows``,
``part_bytes`` and ``part_sha256``. The task log then holds a few hundred bytes per unit,
not megabytes (a 48-frame movie's tracks were ~2.7 MB per site), so resuming a plate reads
a small log and the client holds no per-object rows until the stage's tables are written,
by reading the parts back (:func:`parts_frame`).

A unit is only skipped on resume while its parts are intact (:func:`part_intact`: the file is
there with the recorded size, and with ``verify`` the recorded SHA-256): a part deleted or
replaced since makes the unit run again instead of silently leaving its objects out.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import zarr

from cellflow._files import write_parquet
from cellflow.graph._tables import stacked
from cellflow.screen.store import FieldKey, Screen

__all__ = ["PART_KEYS", "cells_frames", "field_part", "keyed_part", "part_intact", "parts_frame", "tables_group",
           "write_part"]

#: The keys of a reference row that point to its part (bookkeeping, not readouts).
PART_KEYS = ("part", "part_rows", "part_bytes", "part_sha256")


def tables_group(screen: Screen) -> None:
    """Make ``<store>/tables`` a zarr group (client side, before tasks write parts under it), so
    zarr skips it quietly when listing the store."""
    group = zarr.open_group(screen.path, mode="r+").require_group("tables")
    if "description" not in group.attrs:
        group.attrs["description"] = ("Parquet tables of cellflow stages: objects/<labels>/<plate>/<part>.parquet "
                                      "(measure), <stage>/<plate>/<part>.parquet (ktr, celltype, tracks)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_part(path: str | Path, frame: pd.DataFrame) -> dict[str, Any]:
    """Write ``frame`` as a Parquet part (atomically: whole or not at all); its reference row keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(path, frame)
    return {"part": str(path), "part_rows": len(frame), "part_bytes": path.stat().st_size,
            "part_sha256": _sha256(path)}


def keyed_part(path: str | Path, keys: Mapping[str, Any], table: pd.DataFrame) -> dict[str, Any]:
    """Write ``table`` with the ``keys`` columns put first (e.g. plate, well, site) as a part; its
    reference row, keys included."""
    table = pd.concat([pd.DataFrame(dict(keys), index=table.index), table.drop(columns=list(keys), errors="ignore")],
                      axis=1)
    return {**keys, **write_part(path, table)}


def field_part(screen: Screen, stage: str, key: FieldKey, table: pd.DataFrame) -> dict[str, Any]:
    """Write one field's per-object ``table`` (its key columns put first) as the part
    ``<store>/tables/<stage>/<plate>/<well>_s<site>_t<t>.parquet``; the field's reference row."""
    path = Path(screen.path) / "tables" / stage / key.plate / f"{key.well}_s{key.site}_t{key.t:g}.parquet"
    return keyed_part(path, key._asdict(), table)


def part_intact(row: Mapping[str, Any], *, verify: bool = False) -> bool:
    """Whether a reference row's part is still as written (size; with ``verify`` also the SHA-256).

    A row without ``part`` refers to nothing and is intact.
    """
    if "part" not in row:
        return True
    path = Path(str(row["part"]))
    try:
        if path.stat().st_size != int(row.get("part_bytes", -1)):
            return False
        return not verify or _sha256(path) == row.get("part_sha256")
    except OSError:
        return False


def parts_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The per-object rows behind reference rows, in the rows' order, as one DataFrame.

    Rows without ``part`` (kept inline by an older cellflow) are taken as they are.

    Raises
    ------
    FileNotFoundError
        A part is missing (deleted after its unit was recorded: run again, which redoes it).
    """
    frames: list[pd.DataFrame] = []
    inline: list[Mapping[str, Any]] = []
    for row in rows:
        if "part" not in row:
            inline.append(row)
            continue
        if inline:
            frames.append(pd.DataFrame(list(inline)))
            inline = []
        path = Path(str(row["part"]))
        if not path.is_file():
            raise FileNotFoundError(f"table part {path} is missing (deleted since its unit ran?); run again: the "
                                    "run redoes the units whose parts are gone")
        frames.append(pd.read_parquet(path))
    if inline:
        frames.append(pd.DataFrame(list(inline)))
    filled = [f for f in frames if len(f)]
    if not filled:
        return frames[0] if frames else pd.DataFrame()
    with warnings.catch_warnings():  # parts whose column is all-NA in one of them: the concatenation is as intended
        warnings.simplefilter("ignore", FutureWarning)
        return stacked(filled)


def cells_frames(rows: Iterable[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Step 1 (:class:`~cellflow.graph._tables.StageTables`) of a stage whose rows reference a part of cells
    per field (ktr, celltype): the cells, as one frame."""
    return {"cells": parts_frame(rows)}
