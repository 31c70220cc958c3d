"""Registry of the stages a spec can name, in the order users usually list them.

Each entry points at a params class (a frozen dataclass with ``from_dict``/``to_dict``)
and a graph builder ``build(screen, params, *, after=None, fields=None) -> StageGraph``.
They are imported on first use, so reading a spec does not import every stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cellflow.graph._tables import StageTables

__all__ = ["STAGES", "StageEntry"]


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StageEntry:
    """Where a stage's params class and graph builder live."""

    name: str
    params_target: str
    build_target: str
    doc: str
    #: ``"module:NAME"`` of the :class:`~cellflow.graph._tables.StageTables` turning the stage's table
    #: rows into Parquet tables (frames from rows, then tables from frames; called, both:
    #: ``tables(rows, out_dir, params) -> (dict[str, DataFrame], dict[str, Path])``, keys
    #: ``'<group>/<level>'``); None for stages that return no rows.
    tables_target: str | None = None

    @property
    def params(self) -> Any:
        """The params class."""
        return _load(self.params_target)

    @property
    def build(self) -> Callable[..., Any]:
        """The graph builder."""
        return _load(self.build_target)  # type: ignore[no-any-return]

    @property
    def tables(self) -> StageTables | None:
        """The table writer, or None."""
        return None if self.tables_target is None else _load(self.tables_target)  # type: ignore[no-any-return]


STAGES: dict[str, StageEntry] = {
    entry.name: entry
    for entry in (
        StageEntry(
            "illumination", "cellflow.graph.illumination:IlluminationParams",
            "cellflow.graph.illumination:build_illumination",
            "illumination function per plate x channel x z -> `illumination`",
        ),
        StageEntry(
            "autolabel", "cellflow.graph.autolabel:AutolabelParams", "cellflow.graph.autolabel:build_autolabel",
            "classical nuclei (Otsu + watershed) and cells (seeded watershed) -> `labels_nuclei`, `labels_cells`",
        ),
        StageEntry(
            "predict", "cellflow.graph.predict:PredictParams", "cellflow.graph.predict:build_predict",
            "tiled, blended DCNN probabilities from a checkpoint -> `probabilities`",
        ),
        StageEntry(
            "labels", "cellflow.graph.postprocess:LabelParams", "cellflow.graph.postprocess:build_labels",
            "instances from stored probabilities (markers + watershed) -> `labels_nuclei`",
        ),
        StageEntry(
            "segment", "cellflow.graph.segment:SegmentParams", "cellflow.graph.segment:build_segment",
            "predict + labels in one task per field (probabilities kept in memory) -> `labels_nuclei`",
        ),
        StageEntry(
            "score", "cellflow.graph.score:ScoreParams", "cellflow.graph.score:build_score",
            "Caicedo 2019 object-level scores of `pred` against `truth` -> score tables",
            tables_target="cellflow.graph.score:SCORE_TABLES",
        ),
        StageEntry(
            "track", "cellflow.graph.track:TrackStageParams", "cellflow.graph.track:build_track",
            "time-lapse tracking (LAP linking, gap closing, divisions) of a label variable per site -> track tables",
            tables_target="cellflow.graph.track:TRACK_TABLES",
        ),
        StageEntry(
            "ktr", "cellflow.graph.ktr:KtrParams", "cellflow.graph.ktr:build_ktr",
            "kinase-reporter nuclear/cytoplasmic ratio per cell and frame (ring, cytoplasm or GMM) -> ktr tables",
            tables_target="cellflow.graph.ktr:KTR_TABLES",
        ),
        StageEntry(
            "cells", "cellflow.graph.cells:CellsParams", "cellflow.graph.cells:build_cells",
            "cells grown from nuclei over a cytoplasm/bright-field channel or a probability class "
            "(watershed or active contour) -> `labels_cells`",
        ),
        StageEntry(
            "celltype", "cellflow.graph.celltype:CelltypeParams", "cellflow.graph.celltype:build_celltype",
            "per-cell type scores from a cell-type network (one interior class per type) -> celltype tables",
            tables_target="cellflow.graph.celltype:CELLTYPE_TABLES",
        ),
        StageEntry(
            "measure", "cellflow.graph.measure:MeasureParams", "cellflow.graph.measure:build_measure",
            "per-object shape/intensity/DNA content -> Parquet object parts in the store; "
            "field/well tables, 4N fraction, Z'",
            tables_target="cellflow.graph.measure:MEASURE_TABLES",
        ),
    )
}
