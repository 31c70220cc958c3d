"""Graph builder of the ``celltype`` stage: per-cell type scores from a cell-type network (Van Valen 2016).

The network is a semantic segmentation model whose classes are ``background``, ``boundary``
and one ``interior_<type>`` class per cell type (:func:`cellflow.live.celltype.celltype_classes`;
trained with :func:`cellflow.live.celltype.train_semantic` and saved with
:func:`cellflow.nn.checkpoint.save_checkpoint`). One task per field predicts the field tile by
tile exactly as the ``predict`` stage does (nothing is stored), then averages each type's
interior probability over every cell of the ``cells`` label variable
(:func:`~cellflow.live.celltype.classify_cells`). Rows, keyed ``plate, well, site, t, label``
with ``score_<type>`` and ``cell_type``, go to a Parquet part per field in the store
(``<store>/tables/celltype/<plate>/<well>_s<site>_t<t>.parquet``, referenced from the task
log: :mod:`cellflow.graph._parts`) and become ``<tables>/celltype/cells.parquet``; the
per-well count and fraction of each type, ``celltype/wells.parquet``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellflow._config import check_keys
from cellflow._files import write_parquet
from cellflow.errors import RegionError
from cellflow.graph._parts import cells_frames, field_part, tables_group
from cellflow.graph._stage import StageGraph, TaskResult, available_variables, guarded
from cellflow.graph._tables import StageTables
from cellflow.graph.predict import FieldPlan, PredictParams, field_probabilities, plan_fields, plan_tasks
from cellflow.live.celltype import classify_cells
from cellflow.nn.checkpoint import Checkpoint
from cellflow.screen.store import FieldKey, Screen

__all__ = ["CELLTYPE_TABLES", "CelltypeParams", "build_celltype", "celltype_tables", "type_names"]

_STAGE = "celltype"
_INTERIOR = "interior_"


@dataclass(frozen=True)
class CelltypeParams:
    """The cell-type network and its tiling (``predict``), and the cells to classify."""

    predict: PredictParams
    cells: str = "labels_cells"

    def __post_init__(self) -> None:
        if isinstance(self.predict, Mapping):
            object.__setattr__(self, "predict", PredictParams.from_dict(self.predict))
        if not isinstance(self.predict, PredictParams):
            raise ValueError(f"CelltypeParams.predict must be PredictParams settings, got {self.predict!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; :meth:`from_dict` inverts it."""
        return {"predict": self.predict.to_dict(), "cells": self.cells}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CelltypeParams:
        """Params from a spec mapping, naming unknown keys."""
        check_keys(cls, data)
        if "predict" not in data:
            raise ValueError("CelltypeParams needs 'predict' with at least 'model' (a cell-type checkpoint)")
        return cls(**dict(data))


def type_names(checkpoint: Checkpoint) -> tuple[str, ...]:
    """The cell types of a cell-type checkpoint, from its class names.

    Raises
    ------
    ValueError
        The classes are not ``background, boundary, interior_<type>...``.
    """
    names = tuple(checkpoint.class_names)
    types = tuple(n[len(_INTERIOR):] for n in names[2:] if n.startswith(_INTERIOR))
    if names[:2] != ("background", "boundary") or not types or len(types) != len(names) - 2:
        raise ValueError(f"a cell-type model has classes ('background', 'boundary', 'interior_<type>', ...); "
                         f"this checkpoint has {names!r}")
    return types


@guarded(_STAGE)
def _celltype_field(screen: Screen, params: CelltypeParams, plan: FieldPlan, *_upstream: Any) -> TaskResult:
    probabilities, checkpoint = field_probabilities(screen, params.predict, plan)
    where = plan.key._asdict()
    cells = screen.read(params.cells, **where)[: probabilities.shape[1], : probabilities.shape[2]]
    table = classify_cells(probabilities, np.asarray(cells), type_names=type_names(checkpoint))
    return TaskResult(stage=_STAGE, field=plan.key, rows=(field_part(screen, _STAGE, plan.key, table),))


def build_celltype(screen: Screen, params: CelltypeParams, *, after: StageGraph | None = None,
                   fields: Iterable[FieldKey] | None = None) -> StageGraph:
    """Build (compute nothing) one cell-type task per field, after its upstream task.

    Raises
    ------
    FileNotFoundError, CheckpointError, ValueError, RegionError
        The model is missing, unusable or not a cell-type model; its channels or the cell
        labels are not in the store.
    """
    checkpoint, plans = plan_fields(screen, params.predict, fields)
    type_names(checkpoint)
    if params.cells not in available_variables(screen, after):
        raise RegionError(f"celltype: {screen.path} has no variable {params.cells!r} (segment the cells first)")
    tables_group(screen)
    return plan_tasks(_STAGE, _celltype_field, screen, params, plans, checkpoint, (), after)


def celltype_tables(rows: Sequence[Mapping[str, Any]], out_dir: Path,
                    params: CelltypeParams | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """``celltype/cells.parquet`` and ``celltype/wells.parquet`` (count and fraction of each type per well)."""
    return CELLTYPE_TABLES(rows, out_dir, params)


def _write_celltype(frames: dict[str, pd.DataFrame], out_dir: Path, params: CelltypeParams | None
                    ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Step 2 (:class:`~cellflow.graph._tables.StageTables`): the cells, and per well a column per type of the run."""
    cells = frames["cells"]
    if cells.empty:
        return {}, {}
    folder = Path(out_dir) / "celltype"
    folder.mkdir(parents=True, exist_ok=True)
    counts = cells.groupby(["plate", "well", "cell_type"]).size().unstack(fill_value=0)
    wells = counts.add_prefix("n_").join(counts.div(counts.sum(axis=1), axis=0).add_prefix("fraction_")).reset_index()
    tables = {"celltype/cells": cells, "celltype/wells": wells}
    paths = {name: folder / f"{name.split('/')[1]}.parquet" for name in tables}
    for name, frame in tables.items():
        write_parquet(paths[name], frame)
    return tables, paths


#: The celltype stage's tables in the runner's two steps.
CELLTYPE_TABLES = StageTables(cells_frames, _write_celltype)
