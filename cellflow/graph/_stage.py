"""The contract between a stage's graph builder and the runner.

A builder is a thin function ``build_<stage>(screen, params, *, after=None, fields=None)
-> StageGraph``. It computes nothing: it declares the variables it will write
(:class:`VariableSpec`, created by the client before anything runs) and returns
dask ``Delayed`` tasks. Each task writes its own chunk-aligned regions and returns a
:class:`TaskResult` with the chunk records it wrote (the client marks them in the
ledger, after the writes) and any table rows.

Stages chain through ``after``: a downstream task depends on the upstream task of
the same field when there is one (``StageGraph.by_field``), else on all upstream
tasks. The dependency is an ordering barrier only; data flows through the store,
so a stage whose upstream is already complete can run on its own (resume).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
from dask.delayed import Delayed

from cellflow.metrics import field_extents, select_fields
from cellflow.screen.store import ChunkRecord, FieldKey, Screen

__all__ = ["StageGraph", "TaskResult", "VariableSpec", "per_field_graph", "upstream_of"]


@dataclass(frozen=True)
class VariableSpec:
    """A variable a stage writes: created (idempotently) before the stage runs."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    coords: Mapping[str, Sequence[Any]] | None = None
    attrs: Mapping[str, Any] | None = None
    fill_value: Any = 0

    def create(self, screen: Screen) -> None:
        """Add the variable to ``screen`` unless an identical one exists."""
        screen.add_variable(
            self.name, dims=self.dims, dtype=self.dtype, coords=self.coords, attrs=self.attrs,
            fill_value=self.fill_value, exist_ok=True,
        )


@dataclass(frozen=True)
class TaskResult:
    """What one task did: chunks written, table rows, and the field it was about."""

    stage: str
    field: FieldKey | None = None
    records: tuple[ChunkRecord, ...] = ()
    rows: tuple[Mapping[str, Any], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class StageGraph:
    """A stage's lazy tasks plus the variables they write."""

    name: str
    outputs: tuple[VariableSpec, ...]
    tasks: tuple[Delayed, ...]
    by_field: Mapping[FieldKey, Delayed] = field(default_factory=dict)

    def create_outputs(self, screen: Screen) -> None:
        """Create every output variable (client side, before computing)."""
        for spec in self.outputs:
            spec.create(screen)


def upstream_of(after: StageGraph | None, key: FieldKey | None = None) -> tuple[Delayed, ...]:
    """The upstream tasks a task for ``key`` must wait for (none without ``after``)."""
    if after is None:
        return ()
    if key is not None and key in after.by_field:
        return (after.by_field[key],)
    return after.tasks


def per_field_graph(
    name: str,
    task: Callable[..., TaskResult],
    screen: Screen,
    params: Any,
    *,
    after: StageGraph | None,
    fields: Iterable[Sequence[Any]] | None,
    outputs: tuple[VariableSpec, ...] = (),
) -> StageGraph:
    """One ``task(screen, key, params, extent, *upstream)`` per field, each after its upstream task.

    ``extent`` is the field's valid (height, width) for padded stores, else None.
    """
    extents = field_extents(screen)
    delayed = dask.delayed(task, pure=True)
    by_field = {
        key: delayed(screen, key, params, extents.get(key), *upstream_of(after, key))
        for key in select_fields(screen, fields)
    }
    return StageGraph(name=name, outputs=outputs, tasks=tuple(by_field.values()), by_field=by_field)
