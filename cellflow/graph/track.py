"""Track stage: one task per (plate, well, site) over all its time points -> ``tracks`` tables.

Graph (built lazily)::

    site ─ read labels at every t ─ track (cellflow.live) ─ growth ─ rows

Tracking needs a site's whole movie, so unlike per-field stages a task covers
every acquired ``t`` of one site and waits for the upstream tasks of all those
fields (``after.by_field[key]`` for each key, else all upstream tasks). Each field
key of the site maps to its site's task in ``by_field``. The stage writes no
variable. Its tracks and lineages (a row per track) go to Parquet parts in the store,
``<store>/tables/track/<labels>/<plate>/<well>_s<site>_{tracks,lineages}.parquet``, referenced
from the task log (:mod:`cellflow.graph._parts`); its rows carry a ``table`` column
(``tracks``, ``lineages``: the references; ``fields``: the site's summary) that
:func:`track_tables` turns into ``out_dir/tracks/<table>.parquet``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
from dask.delayed import Delayed

from cellflow._config import check_keys
from cellflow._files import write_parquet
from cellflow.graph._parts import keyed_part, parts_frame, tables_group
from cellflow.graph._stage import StageGraph, TaskResult, require_variables, upstream_of
from cellflow.graph._tables import StageTables
from cellflow.live import TrackParams, field_summary, lineage_table, track_labels, tracks_frame
from cellflow.metrics import field_extents, select_fields
from cellflow.screen.store import FieldKey, Screen

__all__ = ["TRACK_TABLES", "TrackStageParams", "build_track", "track_tables"]

_STAGE = "track"
_TABLES = ("tracks", "lineages", "fields")


@dataclass(frozen=True)
class TrackStageParams:
    """Which label variable to track, and the tracker's settings (:class:`~cellflow.live.TrackParams`)."""

    labels: str = "labels_nuclei"
    tracker: TrackParams = field(default_factory=TrackParams)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, str) or not self.labels:
            raise ValueError(f"TrackStageParams.labels must be a variable name, got {self.labels!r}")

    def to_dict(self) -> dict[str, Any]:
        """``labels`` and the tracker's fields, flat."""
        return {"labels": self.labels, **self.tracker.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackStageParams:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        labels = data.pop("labels", "labels_nuclei")
        check_keys(TrackParams, data)
        return cls(labels=labels, tracker=TrackParams.from_dict(data))


def _track_site(
    screen: Screen, keys: tuple[FieldKey, ...], params: TrackStageParams, extent: tuple[int, int] | None,
    *upstream: object,
) -> TaskResult:
    crop = (slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
    movie = np.stack([screen.read(params.labels, **key._asdict())[crop] for key in keys])
    tracks = tracks_frame(track_labels(movie, params.tracker), [key.t for key in keys])
    lineages = lineage_table(tracks)
    site = {"plate": keys[0].plate, "well": keys[0].well, "site": keys[0].site}
    rows: list[dict[str, Any]] = []
    for table, frame in (("tracks", tracks), ("lineages", lineages)):  # per-track rows: a part each, not the log
        path = (Path(screen.path) / "tables" / _STAGE / params.labels / keys[0].plate
                / f"{keys[0].well}_s{keys[0].site}_{table}.parquet")
        rows.append({"table": table, **keyed_part(path, site, frame)})
    rows.append({"table": "fields", **site, "labels": params.labels, "n_t": len(keys),
                 **field_summary(tracks, lineages)})
    return TaskResult(stage=_STAGE, field=keys[0], rows=tuple(rows))


def build_track(
    screen: Screen,
    params: TrackStageParams,
    *,
    after: StageGraph | None = None,
    fields: Iterable[Sequence[Any]] | None = None,
) -> StageGraph:
    """Build (compute nothing) one tracking task per (plate, well, site), over its time points.

    Raises
    ------
    RegionError
        The label variable is not in the store (create upstream outputs first).
    """
    require_variables("track", screen, [params.labels])
    sites: dict[tuple[str, str, int], list[FieldKey]] = defaultdict(list)
    for key in select_fields(screen, fields):
        sites[(key.plate, key.well, key.site)].append(key)
    extents = field_extents(screen)
    task = dask.delayed(_track_site, pure=True)
    by_field: dict[FieldKey, Delayed] = {}
    tasks = []
    for site_keys in sites.values():
        keys = tuple(sorted(site_keys, key=lambda k: k.t))
        upstream = list({d.key: d for key in keys for d in upstream_of(after, key)}.values())
        delayed = task(screen, keys, params, extents.get(keys[0]), *upstream)
        tasks.append(delayed)
        by_field.update(dict.fromkeys(keys, delayed))
    tables_group(screen)
    return StageGraph(name=_STAGE, outputs=(), tasks=tuple(tasks), by_field=by_field)


def track_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, params: TrackStageParams | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Track rows -> ``tracks/{tracks,lineages,fields}`` tables, written as Parquet under ``out_dir/tracks``."""
    return TRACK_TABLES(rows, out_dir, params)


def _track_frames(rows: Sequence[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Step 1 (:class:`~cellflow.graph._tables.StageTables`): the rows behind each table's reference rows."""
    if not rows:
        return {}
    return {name: parts_frame(row for row in rows if row["table"] == name) for name in _TABLES}


def _write_track(frames: dict[str, pd.DataFrame], out_dir: Path, params: TrackStageParams | None
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Step 2: each table without its ``table`` column, as Parquet."""
    if not frames:
        return {}, {}
    folder = Path(out_dir) / "tracks"
    folder.mkdir(parents=True, exist_ok=True)
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    for name in _TABLES:
        table = frames[name].drop(columns="table", errors="ignore")
        path = folder / f"{name}.parquet"
        write_parquet(path, table)
        tables[f"tracks/{name}"], paths[f"tracks/{name}"] = table, path
    return tables, paths


#: The track stage's tables in the runner's two steps.
TRACK_TABLES = StageTables(_track_frames, _write_track)
