"""Graph builder of the scoring stage: one task per field, rows for the score tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cellflow._config import check_keys
from cellflow.graph._stage import StageGraph, TaskResult, guarded, per_field_graph, require_variables
from cellflow.graph._tables import StageTables
from cellflow.metrics import ScoreOptions, score_stored_field
from cellflow.screen.store import FieldKey, Screen

__all__ = ["SCORE_TABLES", "ScoreParams", "build_score", "score_tables"]


@dataclass(frozen=True)
class ScoreParams:
    """Which (truth, prediction) label variables to compare, and how (Caicedo et al. 2019).

    ``pairs`` lists ``(truth, pred)`` names; each pair's rows carry ``labels = pred``
    and go to their own tables. The dict form also accepts one pair as ``truth``/``pred``.
    """

    pairs: tuple[tuple[str, str], ...] = (("truth_nuclei", "labels_nuclei"),)
    options: ScoreOptions = field(default_factory=ScoreOptions)

    def __post_init__(self) -> None:
        pairs = tuple((str(t), str(p)) for t, p in self.pairs)
        if not pairs:
            raise ValueError("ScoreParams.pairs must name at least one (truth, pred) pair")
        preds = [p for _, p in pairs]
        if len(set(preds)) != len(preds):
            raise ValueError(f"ScoreParams.pairs: each pred may be scored once, got {preds!r}")
        object.__setattr__(self, "pairs", pairs)

    def to_dict(self) -> dict[str, Any]:
        """``pairs`` and the score options."""
        return {"pairs": [list(p) for p in self.pairs], **self.options.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreParams:
        """Inverse of :meth:`to_dict`; ``truth``/``pred`` give a single pair."""
        data = dict(data)
        pairs = data.pop("pairs", None)
        single = {k: data.pop(k) for k in ("truth", "pred") if k in data}
        if pairs is not None and single:
            raise ValueError("ScoreParams: give either 'pairs' or 'truth'/'pred', not both")
        if pairs is None:
            pairs = [(single.get("truth", "truth_nuclei"), single.get("pred", "labels_nuclei"))]
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
            raise ValueError(f"ScoreParams 'pairs' must be a list of [truth, pred], got {pairs!r}")
        check_keys(ScoreOptions, data)
        return cls(pairs=tuple(tuple(p) for p in pairs), options=ScoreOptions.from_dict(data))


@guarded("score")
def _score_task(
    screen: Screen, key: FieldKey, params: ScoreParams, extent: tuple[int, int] | None, *upstream: object
) -> TaskResult:
    rows = tuple(
        {"labels": pred, **score_stored_field(screen, key, truth, pred, extent, params.options)}
        for truth, pred in params.pairs
    )
    return TaskResult(stage="score", field=key, rows=rows)


def build_score(
    screen: Screen,
    params: ScoreParams,
    *,
    after: StageGraph | None = None,
    fields: Iterable[Sequence[Any]] | None = None,
) -> StageGraph:
    """Build (compute nothing) one scoring task per field, after its upstream task.

    Raises
    ------
    RegionError
        A label variable is not in the store (create upstream outputs first).
    """
    require_variables("score", screen, sorted({name for pair in params.pairs for name in pair}))
    return per_field_graph("score", _score_task, screen, params, after=after, fields=fields)


def score_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, params: ScoreParams | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Score rows -> per-field/well/plate tables, one set per scored label variable.

    Tables are keyed ``'<labels>/<level>'`` (e.g. ``'labels_nuclei/wells'``) and written
    to ``out_dir/<labels>/scores_<level>.parquet``.
    """
    return SCORE_TABLES(rows, out_dir, params)


def _score_frames(rows: Sequence[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """Step 1 (:class:`~cellflow.graph._tables.StageTables`): the score rows as one frame."""
    return {"rows": pd.DataFrame(list(rows))} if rows else {}


def _write_score(frames: dict[str, pd.DataFrame], out_dir: Path, params: ScoreParams | None
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Step 2: per label variable, the fields and their per-well and per-plate summaries."""
    if not frames:
        return {}, {}
    from cellflow.metrics import summarise, write_tables

    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    for labels, group in frames["rows"].groupby("labels", sort=True):
        fields = group.drop(columns="labels").reset_index(drop=True)
        for level, path in write_tables(fields, Path(out_dir) / str(labels)).items():
            paths[f"{labels}/{level}"] = path
        tables[f"{labels}/fields"] = fields
        tables[f"{labels}/wells"] = summarise(fields, by=("plate", "well"))
        tables[f"{labels}/plates"] = summarise(fields, by=("plate",))
    return tables, paths


#: The score stage's tables in the runner's two steps.
SCORE_TABLES = StageTables(_score_frames, _write_score)
