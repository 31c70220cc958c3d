"""Graph builder of the scoring stage: one task per field, rows for the score tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask

from cellflow._config import check_keys
from cellflow.errors import RegionError
from cellflow.graph._stage import StageGraph, TaskResult, upstream_of
from cellflow.metrics import ScoreOptions, field_extents, score_stored_field, select_fields
from cellflow.screen.store import FieldKey, Screen

__all__ = ["ScoreParams", "build_score"]


@dataclass(frozen=True)
class ScoreParams:
    """Which label variables to compare, and how (Caicedo et al. 2019 by default)."""

    truth: str = "truth_nuclei"
    pred: str = "labels_nuclei"
    options: ScoreOptions = field(default_factory=ScoreOptions)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict: ``truth``, ``pred`` and the score options."""
        return {"truth": self.truth, "pred": self.pred, **self.options.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        data = dict(data)
        names = {k: data.pop(k) for k in ("truth", "pred") if k in data}
        check_keys(ScoreOptions, data)
        return cls(**names, options=ScoreOptions.from_dict(data))


def _score_task(
    screen: Screen, key: FieldKey, params: ScoreParams, extent: tuple[int, int] | None, *upstream: object
) -> TaskResult:
    row = score_stored_field(screen, key, params.truth, params.pred, extent, params.options)
    return TaskResult(stage="score", field=key, rows=(row,))


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
    for name in (params.truth, params.pred):
        if name not in screen.variables:
            raise RegionError(f"score: {screen.path} has no variable {name!r}; it has {list(screen.variables)!r}")
    extents = field_extents(screen)
    task = dask.delayed(_score_task, pure=True)
    by_field = {
        key: task(screen, key, params, extents.get(key), *upstream_of(after, key))
        for key in select_fields(screen, fields)
    }
    return StageGraph(name="score", outputs=(), tasks=tuple(by_field.values()), by_field=by_field)
