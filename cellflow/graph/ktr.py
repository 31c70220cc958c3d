"""Graph builder of the ``ktr`` stage: kinase-reporter nuclear/cytoplasmic ratios per cell and frame.

One task per field reads the reporter channel (z planes averaged), the nucleus labels and,
when the store has them, the cell labels, and calls :func:`cellflow.live.ktr.ktr_ratios`
(Van Valen et al. 2016). Its rows (one per nucleus, keyed ``plate, well, site, t, label``)
go to a Parquet part in the store (``<store>/tables/ktr/<plate>/<well>_s<site>_t<t>.parquet``,
referenced from the task log: :mod:`cellflow.graph._parts`) and become
``<tables>/ktr/cells.parquet``; when the run also tracked the nuclei
(``<tables>/tracks/tracks.parquet``, the ``track`` stage), ``ktr/tracks.parquet`` joins
every row to its track, so a cell's ratio can be followed over time; ``ktr/wells.parquet``
holds the median ratio per well and frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellflow._config import check_keys
from cellflow._files import write_parquet
from cellflow.errors import RegionError
from cellflow.graph._parts import cells_frames, field_part, tables_group
from cellflow.graph._stage import StageGraph, TaskResult, available_variables, guarded, per_field_graph
from cellflow.graph._tables import StageTables
from cellflow.live.ktr import KTR_METHODS, join_tracks, ktr_ratios
from cellflow.screen.store import FieldKey, Screen

__all__ = ["KTR_TABLES", "KtrParams", "build_ktr", "ktr_tables"]

_STAGE = "ktr"


@dataclass(frozen=True)
class KtrParams:
    """Which reporter, which labels, and how the cytoplasm is measured (see :func:`ktr_ratios`).

    ``cells`` None: use ``labels_cells`` when the store has it, else nuclei only (the
    ring method); ``""``: nuclei only. ``background``: subtracted from the reporter before the means (e.g. the
    camera offset plus the dark level).
    """

    channel: str = "KTR"
    nuclei: str = "labels_nuclei"
    cells: str | None = None
    method: str = "ring"
    ring_radius_px: int = 4
    ring_gap_px: int = 1
    nuclear_erosion_px: int = 2
    cell_erosion_px: int = 1
    min_cytoplasm_px: int = 20
    background: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in KTR_METHODS:
            raise ValueError(f"KtrParams.method must be one of {KTR_METHODS!r}, got {self.method!r}")
        for name in ("ring_radius_px", "ring_gap_px", "nuclear_erosion_px", "cell_erosion_px", "min_cytoplasm_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"KtrParams.{name} must be an integer >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KtrParams:
        """Params from a spec mapping, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


@guarded(_STAGE)
def _ktr_field(screen: Screen, key: FieldKey, params: KtrParams, extent: tuple[int, int] | None,
               *upstream: object) -> TaskResult:
    cells_variable = params.cells
    where = key._asdict()
    crop = (Ellipsis, slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
    reporter = screen.read("images", c=params.channel, **where)[crop].astype(np.float32).mean(axis=0)
    nuclei = screen.read(params.nuclei, **where)[crop]
    cells = screen.read(cells_variable, **where)[crop] if cells_variable else None
    table = ktr_ratios(
        reporter, nuclei, cells, method=params.method, ring_radius_px=params.ring_radius_px,
        ring_gap_px=params.ring_gap_px, nuclear_erosion_px=params.nuclear_erosion_px,
        cell_erosion_px=params.cell_erosion_px, min_cytoplasm_px=params.min_cytoplasm_px,
        background=params.background,
    )
    return TaskResult(stage=_STAGE, field=key, rows=(field_part(screen, _STAGE, key, table),))


def build_ktr(screen: Screen, params: KtrParams, *, after: StageGraph | None = None,
              fields: Iterable[Sequence[Any]] | None = None) -> StageGraph:
    """Build (compute nothing) one KTR task per field, after its upstream task.

    Raises
    ------
    RegionError
        The reporter channel or a label variable is missing.
    """
    channels = [str(c) for c in screen.coords()["c"]]
    if params.channel not in channels:
        raise RegionError(f"ktr: channel {params.channel!r} is not in {screen.path}; it has {channels!r}")
    available = available_variables(screen, after)
    if params.nuclei not in available:
        raise RegionError(f"ktr: {screen.path} has no variable {params.nuclei!r} (label the nuclei first)")
    if params.cells and params.cells not in available:
        raise RegionError(f"ktr: {screen.path} has no variable {params.cells!r}")
    cells = params.cells if params.cells is not None else ("labels_cells" if "labels_cells" in available else "")
    if not cells and params.method != "ring":
        raise RegionError(f"ktr: method {params.method!r} needs cell labels; the store has none (use 'ring')")
    tables_group(screen)
    return per_field_graph(_STAGE, _ktr_field, screen, replace(params, cells=cells), after=after, fields=fields)


def ktr_tables(rows: Sequence[Mapping[str, Any]], out_dir: Path,
               params: KtrParams | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """``ktr/cells.parquet`` (+ ``ktr/tracks.parquet`` when the run tracked, ``ktr/wells.parquet``)."""
    return KTR_TABLES(rows, out_dir, params)


def _write_ktr(frames: dict[str, pd.DataFrame], out_dir: Path, params: KtrParams | None
               ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Step 2 (:class:`~cellflow.graph._tables.StageTables`): the cells, joined to the run's tracks when it
    tracked, and their per-well medians per frame."""
    cells = frames["cells"]
    if cells.empty:
        return {}, {}
    folder = Path(out_dir) / "ktr"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"ktr/cells": cells}
    tracks_file = Path(out_dir) / "tracks" / "tracks.parquet"
    if tracks_file.is_file():
        tables["ktr/tracks"] = join_tracks(cells, pd.read_parquet(tracks_file))
    tables["ktr/wells"] = (cells.groupby(["plate", "well", "t"], sort=True)["ratio_nuclear_cytoplasmic"]
                           .agg(ratio_median="median", cells="count").reset_index())
    paths = {}
    for name, frame in tables.items():
        paths[name] = folder / f"{name.split('/')[1]}.parquet"
        write_parquet(paths[name], frame)
    return tables, paths


#: The ktr stage's tables in the runner's two steps.
KTR_TABLES = StageTables(cells_frames, _write_ktr)
