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

import functools
import hashlib
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from cellflow.errors import RegionError, StoreExistsError, halts_run
from cellflow.metrics import field_extents, select_fields
from cellflow.screen.store import ChunkRecord, FieldKey, Screen

__all__ = [
    "StageGraph",
    "TaskResult",
    "VariableSpec",
    "available_variables",
    "field_tasks",
    "guarded",
    "merge_results",
    "per_field_graph",
    "require_variables",
    "upstream_of",
    "written_upstream",
]

_Task = TypeVar("_Task", bound=Callable[..., Any])

#: Tries of a task that raises OSError (a flaky network file system) before it is quarantined.
IO_ATTEMPTS = 3


#: Variable attribute naming the stage that writes the variable.
PRODUCER_ATTR = "cellflow_stage"


@dataclass(frozen=True)
class VariableSpec:
    """A variable a stage writes: created (idempotently) before the stage runs."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    coords: Mapping[str, Sequence[Any]] | None = None
    attrs: Mapping[str, Any] | None = None
    fill_value: Any = 0

    def create(self, screen: Screen, *, producer: str | None = None, replace: bool = False) -> None:
        """Add the variable to ``screen`` unless an identical one exists.

        ``producer`` (a stage name) is recorded in the variable's :data:`PRODUCER_ATTR`. A
        variable another stage wrote is never taken over silently: that raises
        :class:`~cellflow.errors.StoreExistsError` unless ``replace`` (then the new producer
        is recorded). Variables of stores from before producers were recorded are taken over.
        """
        if producer is not None and self.name in screen.variables:
            earlier = screen.variable_attrs(self.name).get(PRODUCER_ATTR)
            if earlier is None:  # made before producers were recorded: this stage owns it from now on
                screen.update_variable_attrs(self.name, {PRODUCER_ATTR: producer})
            elif earlier != producer:
                if not replace:
                    raise StoreExistsError(
                        f"{self.name!r} in {screen.path} was written by the {earlier!r} stage; the {producer!r} stage "
                        f"would replace it: give that stage another output name, or pass --overwrite to replace it")
                screen.update_variable_attrs(self.name, {**(self.attrs or {}), PRODUCER_ATTR: producer})
        attrs = {**(self.attrs or {}), **({PRODUCER_ATTR: producer} if producer is not None else {})}
        screen.add_variable(
            self.name, dims=self.dims, dtype=self.dtype, coords=self.coords, attrs=attrs,
            fill_value=self.fill_value, exist_ok=True,
        )


@dataclass(frozen=True)
class TaskResult:
    """What one task did: chunks written, table rows, and the field it was about."""

    stage: str
    field: FieldKey | None = None
    records: tuple[ChunkRecord, ...] = ()
    rows: Sequence[Mapping[str, Any]] = ()  # a tuple of dicts, or the runner's LoggedRows
    error: str | None = None
    #: The error is the machine's (disk full, read-only: :data:`HALT_ERRNOS`), not the field's:
    #: the runner stops, and the unit is left to be redone, not quarantined.
    halt: bool = False


@dataclass(frozen=True)
class StageGraph:
    """A stage's lazy tasks plus the variables they write."""

    name: str
    outputs: tuple[VariableSpec, ...]
    tasks: tuple[Delayed, ...]
    by_field: Mapping[FieldKey, Delayed] = field(default_factory=dict)
    #: Variables that the stages before this one in the same run write (set by the runner): a
    #: stage built ``after`` this graph runs after those writes too, through the dependency chain.
    written_before: frozenset[str] = frozenset()

    def create_outputs(self, screen: Screen, *, replace: bool = False) -> None:
        """Create every output variable (client side, before computing), recording this stage as its producer.

        Raises :class:`~cellflow.errors.StoreExistsError` when another stage wrote one of them,
        unless ``replace``.
        """
        for spec in self.outputs:
            spec.create(screen, producer=self.name, replace=replace)


def _field_of(args: Sequence[Any]) -> FieldKey | None:
    for arg in args:
        if isinstance(arg, FieldKey):
            return arg
        key = getattr(arg, "key", None)
        if isinstance(key, FieldKey):
            return key
    return None


def _describe(error: BaseException) -> str:
    """``Type: message`` and where it was raised (file:line of the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def guarded(stage: str) -> Callable[[_Task], _Task]:
    """Make a per-field task fail *softly*: its field is quarantined and the run goes on.

    The wrapped task returns ``TaskResult(stage, field, error=...)`` instead of raising,
    so one bad field never takes down the graph (dask would otherwise cancel every
    dependent task and the threaded scheduler would stop the whole run). A task whose
    upstream result carries an error is not run at all (its result says which stage
    failed). ``OSError`` is retried up to :data:`IO_ATTEMPTS` times; other errors are
    deterministic (bad pixels, a bad model) and quarantine at once. A full or read-only
    file system (:func:`halts_run`) is not retried and marks the result ``halt``: the
    runner stops rather than quarantine every later field for the same reason. A worker
    that dies is a different matter: dask retries its tasks elsewhere (``retries`` on compute).
    """

    def wrap(task: _Task) -> _Task:
        @functools.wraps(task)
        def run(*args: Any, **kwargs: Any) -> Any:
            key = _field_of(args)
            failed = [a for a in args if isinstance(a, TaskResult) and a.error is not None]
            if failed:
                return TaskResult(stage=stage, field=key, error=f"not run: {failed[0].stage} failed: {failed[0].error}",
                                  halt=failed[0].halt)
            for attempt in range(1, IO_ATTEMPTS + 1):
                try:
                    return task(*args, **kwargs)
                except Exception as error:  # quarantine: reported with its field, the run goes on
                    halt = halts_run(error)
                    if isinstance(error, OSError) and not halt and attempt < IO_ATTEMPTS:
                        continue  # a flaky file system: try again
                    return TaskResult(stage=stage, field=key, error=_describe(error), halt=halt)
            raise AssertionError("unreachable")

        return run  # type: ignore[return-value]

    return wrap


def merge_results(stage: str, results: Sequence[TaskResult | None]) -> TaskResult:
    """One result for a group of tasks (e.g. a plate's illumination): records and rows joined, errors too."""
    done = [r for r in results if r is not None]
    errors = [r.error for r in done if r.error is not None]
    return TaskResult(
        stage=stage, records=tuple(rec for r in done for rec in r.records),
        rows=tuple(row for r in done for row in r.rows), error="; ".join(errors) if errors else None,
        halt=any(r.halt for r in done),
    )


def written_upstream(after: StageGraph | None) -> set[str]:
    """The variables that the upstream stages of the run write: ``after`` and every stage before it."""
    return set() if after is None else {v.name for v in after.outputs} | set(after.written_before)


def available_variables(screen: Screen, after: StageGraph | None) -> set[str]:
    """The variables a stage may read: those in the store and those its upstream stages will write."""
    return set(screen.variables) | written_upstream(after)


def require_variables(stage: str, screen: Screen, names: Iterable[str]) -> None:
    """Raise a RegionError naming the first of ``names`` that is not a variable of the store."""
    for name in names:
        if name not in screen.variables:
            raise RegionError(f"{stage}: {screen.path} has no variable {name!r}; it has {list(screen.variables)!r}")


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
    token = tokenize(str(screen.path), params, getattr(task, "__qualname__", repr(task)))
    calls = {key: (screen, key, params, extents.get(key)) for key in select_fields(screen, fields)}
    by_field = field_tasks(name, token, task, calls, after)
    return StageGraph(name=name, outputs=outputs, tasks=tuple(by_field.values()), by_field=by_field)


def field_tasks(stage: str, token: str, task: Callable[..., Any], calls: Mapping[FieldKey, tuple[Any, ...]],
                after: StageGraph | None) -> dict[FieldKey, Delayed]:
    """One task per field, ``task(*calls[key], *upstream)``, all in one graph layer.

    Equivalent to ``dask.delayed(task)(*args, *upstream_of(after, key))`` per field, but
    built as a single layer, ``{stage}-{token}-{build}``, that every returned ``Delayed``
    shares: no per-call traversal of the arguments and no per-call copy of the upstream
    graph, so building costs microseconds per field instead of milliseconds (10^5-10^6
    fields per run). The arguments travel inside a :func:`functools.partial`, so dask
    never mistakes one of them for a task or a key. Task keys are
    ``{stage}-{token}-{build}-{plate}-{well}-{site}-{t}``: ``token`` must identify everything
    the tasks compute from (store, params, model); ``build`` is a hash of the fields and of
    their upstream keys.
    """
    befores = {key: upstream_of(after, key) for key in calls}
    # The same stage built over other fields or after another upstream graph (a resumed run's
    # subset) is another layer with other keys: two versions can never shadow each other.
    build = hashlib.sha1(repr([(key, [d.key for d in b]) for key, b in befores.items()]).encode()).hexdigest()[:16]
    layer_name = f"{stage}-{token}-{build}"
    layer: dict[Any, Any] = {}  # dask's Key: str here
    upstream: dict[Any, Any] = {}  # key -> Delayed
    keys: dict[FieldKey, str] = {}
    for key, args in calls.items():
        name = f"{layer_name}-{key.plate}-{key.well}-{key.site}-{key.t:g}"
        before = befores[key]
        upstream.update((d.key, d) for d in before)
        layer[name] = (functools.partial(task, *args), *(d.key for d in before))
        keys[key] = name
    graph = HighLevelGraph.from_collections(layer_name, layer, dependencies=list(upstream.values()))
    return {key: Delayed(name, graph, layer=layer_name) for key, name in keys.items()}
