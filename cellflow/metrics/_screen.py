"""Scoring a whole screen: one dask task per field, and the Parquet tables it yields.

:func:`score_graph` only builds the graph: the fields, their extents and the score
options are read and checked on the client, so a bad argument fails before
anything runs; each task then reads its two label images, crops them and calls
the :func:`~cellflow.metrics.score_field` kernel. The output schema (the row keys)
is fixed by the options before anything runs, and :func:`score_screen` checks
every returned row against it.

Stores built from images of different sizes keep each image at the top-left of a
zero-padded field and its true size in the per-field variables ``extent_y`` and
``extent_x``. When both exist, each field is cropped to its extent before scoring;
an extent of 0 (no image recorded) leaves the field whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import dask
import pandas as pd
from dask.delayed import Delayed

from cellflow._files import write_parquet
from cellflow.errors import RegionError, SchemaError
from cellflow.metrics._matching import overlaps
from cellflow.metrics._options import DEFAULT_AREA_BINS, DEFAULT_THRESHOLDS, ScoreOptions
from cellflow.metrics._scores import score_overlaps
from cellflow.metrics._summary import summarise
from cellflow.screen.layout import DIMS_FIELD
from cellflow.screen.store import FieldKey, Screen

__all__ = [
    "TABLE_NAMES",
    "field_extents",
    "score_graph",
    "score_screen",
    "score_stored_field",
    "select_fields",
    "write_tables",
]

#: File names written by :func:`write_tables`, by level.
TABLE_NAMES = {"fields": "scores_fields.parquet", "wells": "scores_wells.parquet", "plates": "scores_plates.parquet"}
_EXTENT = ("extent_y", "extent_x")


def score_stored_field(
    screen: Screen, field: FieldKey, truth: str, pred: str, extent: tuple[int, int] | None, options: ScoreOptions
) -> dict[str, Any]:
    """Read one field's two label images from the store, crop them to ``extent``, score them.

    Returns the field keys ``plate, well, site, t`` followed by ``options.columns``.
    """
    where = field._asdict()
    crop = (slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
    found = overlaps(screen.read(truth, **where)[crop], screen.read(pred, **where)[crop])
    return {**where, **score_overlaps(found, options).to_row()}


def field_extents(screen: Screen) -> dict[FieldKey, tuple[int, int]]:
    """Positive (extent_y, extent_x) per field, when the store records them."""
    if not all(name in screen.variables for name in _EXTENT):
        return {}
    whole = dict.fromkeys(DIMS_FIELD, slice(None))
    ey, ex = (screen.read(name, **whole) for name in _EXTENT)
    everything = screen.fields(acquired_only=False)  # storage order = C order of the field dims
    if ey.size != len(everything) or ey.shape != ex.shape:
        raise SchemaError(
            f"{screen.path}: extent_y {ey.shape} and extent_x {ex.shape} must both have one value per field "
            f"(plate, well, site, t), {len(everything)} in all"
        )
    return {
        key: (int(y), int(x)) for key, y, x in zip(everything, ey.ravel(), ex.ravel()) if y > 0 and x > 0
    }


def select_fields(screen: Screen, fields: Iterable[Sequence[Any]] | None) -> list[FieldKey]:
    """``fields`` as checked FieldKeys (every acquired field when None)."""
    if fields is None:
        return screen.fields()
    known = set(screen.fields(acquired_only=False))
    keys = []
    for field in fields:
        key = FieldKey(str(field[0]), str(field[1]), int(field[2]), float(field[3]))
        if key not in known:
            raise RegionError(f"fields: {tuple(field)!r} is not a field of {screen.path}")
        keys.append(key)
    return keys


def score_graph(
    screen: Screen,
    *,
    truth: str = "truth_nuclei",
    pred: str = "labels_nuclei",
    fields: Iterable[Sequence[Any]] | None = None,
    options: ScoreOptions | None = None,
) -> list[Delayed]:
    """Build, without computing, one delayed scoring task per field.

    Parameters
    ----------
    screen : Screen
        The store holding both label variables.
    truth, pred : str
        Names of the true and predicted label variables, dims (plate, well, site, t, y, x).
    fields : iterable of (plate, well, site, t), optional
        Fields to score; default every acquired field.
    options : ScoreOptions, optional
        Score settings; default Caicedo et al. 2019.

    Returns
    -------
    tasks : list of dask.delayed.Delayed
        One per field, in ``fields`` order; each computes to a dict with the keys
        ``plate, well, site, t`` and ``options.columns``.

    Raises
    ------
    RegionError
        A variable or a field is not in the store.
    """
    options = ScoreOptions() if options is None else options
    for name in (truth, pred):
        if name not in screen.variables:
            raise RegionError(f"{screen.path} has no variable {name!r}; it has {list(screen.variables)!r}")
    extents = field_extents(screen)
    score = dask.delayed(score_stored_field, pure=True)
    return [score(screen, key, truth, pred, extents.get(key), options) for key in select_fields(screen, fields)]


def score_screen(
    screen: Screen,
    *,
    truth: str = "truth_nuclei",
    pred: str = "labels_nuclei",
    fields: Iterable[Sequence[Any]] | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    area_bins: Sequence[float] = DEFAULT_AREA_BINS,
    error_threshold: float = 0.7,
    overlap_threshold: float = 0.1,
    scheduler: Any = None,
) -> pd.DataFrame:
    """Score every field of a screen; one row per field.

    Parameters
    ----------
    screen : Screen
        The store holding both label variables.
    truth, pred : str
        Names of the true and predicted label variables.
    fields : iterable of (plate, well, site, t), optional
        Fields to score; default every acquired field.
    thresholds, area_bins, error_threshold, overlap_threshold
        As for :func:`~cellflow.metrics.score_field`.
    scheduler : optional
        Passed to ``dask.compute``: a scheduler name, a ``distributed.Client``, or
        None for dask's default (the active Client, if any).

    Returns
    -------
    table : pandas.DataFrame
        Columns ``plate, well, site, t`` and :attr:`ScoreOptions.columns`, rows in
        field order.

    Raises
    ------
    RegionError
        A variable or a field is not in the store.
    ValueError
        An option is out of range, or labels are not integers (from a task).
    """
    options = ScoreOptions.from_dict({
        "thresholds": thresholds, "area_bins": area_bins,
        "error_threshold": error_threshold, "overlap_threshold": overlap_threshold,
    })
    tasks = score_graph(screen, truth=truth, pred=pred, fields=fields, options=options)
    rows = dask.compute(*tasks, scheduler=scheduler) if tasks else ()
    columns = [*DIMS_FIELD, *options.columns]
    for row in rows:
        if list(row) != columns:  # the schema was fixed before running: a mismatch is a bug
            raise RuntimeError(f"score task returned keys {list(row)!r}, expected {columns!r}")
    return pd.DataFrame(list(rows), columns=columns)


def write_tables(table: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write the field table and its per-well and per-plate summaries as Parquet.

    Parameters
    ----------
    table : pandas.DataFrame
        Field scores from :func:`score_screen`.
    out_dir : str or Path
        Folder to write into (created if needed); existing tables are replaced.

    Returns
    -------
    paths : dict of str to Path
        ``{'fields': .../scores_fields.parquet, 'wells': ..., 'plates': ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "fields": table, "wells": summarise(table, by=("plate", "well")), "plates": summarise(table, by=("plate",)),
    }
    paths = {}
    for level, frame in tables.items():
        paths[level] = out_dir / TABLE_NAMES[level]
        write_parquet(paths[level], frame)
    return paths
