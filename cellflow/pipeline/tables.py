"""The run's tables: each stage's rows through its table writer, one plate at a time.

The run's client holds each done unit's rows by where they lie in the stage's task log
(:mod:`cellflow.pipeline._rows`), knowing their plates without reading them. Here a stage's
rows are read back a plate at a time: the rows of one plate, parsed and sorted by well, site
and t, become that plate's frames (step 1 of the stage's
:class:`~cellflow.graph._tables.StageTables`); then the plates' frames are joined and the
stage's tables made from them (step 2), once. So the client holds one plate's parsed rows
(as Python objects, ~14 KiB a 520x696 field for measure) plus the columnar frames, not the
parsed rows of every field of the run, and the tables are those that one call of the writer
on all the rows, sorted by plate, well, site and t, makes. When the plates' frames cannot be
joined exactly (a column typed differently in two plates, :func:`~cellflow.graph._tables.join_frames`:
no cellflow stage makes such rows), the stage's tables are made from all its rows at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellflow.graph import TaskResult
from cellflow.graph._tables import StageTables, join_plate_frames
from cellflow.pipeline._rows import plate_of, plates_of
from cellflow.pipeline.spec import PipelineSpec

__all__ = ["stage_tables", "write_tables"]

_ORDER = ("plate", "well", "site", "t")


def _field_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """How rows are sorted for the tables (results arrive in completion order: tables must not depend on it)."""
    return tuple(str(row.get(k, "")) if k in ("plate", "well") else float(row.get(k, 0) or 0) for k in _ORDER)


def _sorted(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=_field_order)


def stage_tables(
    tables: StageTables, results: Sequence[TaskResult], out_dir: Path, params: Any
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """One stage's tables from the rows of its ``results`` (done ones), read a plate at a time.

    Returns
    -------
    tables, paths : dict
        As ``tables(rows, out_dir, params)`` gives them for all the rows sorted by plate, well,
        site and t.
    """
    held: dict[str, list[Sequence[Mapping[str, Any]]]] = defaultdict(list)  # plate -> the rows of its units
    for result in results:
        for plate in plates_of(result.rows):
            held[plate].append(result.rows)
    if not held:
        return tables([], out_dir, params)
    per_plate = [tables.frames(_sorted(row for rows in held[plate] for row in rows if plate_of(row) == plate))
                 for plate in sorted(held)]
    frames = join_plate_frames(per_plate)
    del per_plate
    if frames is None:  # the plates' columns are not typed alike: only all the rows at once make the same tables
        return tables(_sorted(row for result in results for row in result.rows), out_dir, params)
    return tables.write(frames, out_dir, params)


def write_tables(
    spec: PipelineSpec, results: Sequence[TaskResult], out_dir: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Each stage's rows through its registered table writer (``StageEntry.tables``), in spec order."""
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    for name, entry, params in spec.stage_entries():
        writer = entry.tables
        if writer is None:
            continue
        done = [r for r in results if r.stage == name and r.error is None]
        stage, stage_paths = stage_tables(writer, done, out_dir, params)
        tables.update(stage)
        paths.update(stage_paths)
    return tables, paths
