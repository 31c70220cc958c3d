"""Plan, run and record a spec's stages: skip what is done, record each unit as it finishes.

:func:`plan_graphs` builds each stage over every field once (lazy; it only discovers
the stage's units and their tokens, :mod:`cellflow.pipeline.resume`), then again over
the fields whose units are not done, chained to the previous stage's graph of the
same kind. :func:`execute_plans` computes those units in one dask graph and, as they
finish, on the client (the store's single writer): marks the chunks they wrote in the
variable ledgers, then appends their ``done`` lines to the stages' task logs, or a
``failed`` line and quarantines the unit's fields. A unit's failure never stops the others,
except a failure every later unit would share: a full or read-only file system
(:func:`cellflow.errors.halts_run`), or results the cluster can no longer deliver (its
scheduler lost). Then the run stops (:attr:`Execution.stopped`), the units still running
are cancelled and, like the ones that hit it, left ``pending`` to be redone by the next
run; no field is quarantined for it.
Units that finished while the previous ones were being recorded are recorded together
(one ledger write per variable, one fsync per stage), so the client keeps up with many
workers; a kill loses at most the group being written, whose units are redone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cellflow._files import append_lines
from cellflow._signals import interrupts_deferred
from cellflow.cluster import compute
from cellflow.errors import halts_run
from cellflow.graph import StageGraph, TaskResult
from cellflow.pipeline.resume import (
    LoggedRows,
    StagePlan,
    TaskLog,
    Unit,
    done_entry,
    failed_entry,
    field_id,
    input_digests,
    pending_entry,
    plan_stage,
)
from cellflow.pipeline.spec import PipelineSpec
from cellflow.screen.store import ChunkLedger, ChunkRecord, Screen

__all__ = ["PlannedStage", "Quarantine", "execute_plans", "plan_graphs"]


@dataclass
class PlannedStage:
    """A stage's plan (units done and to do) and the graph of the units to do."""

    name: str
    plan: StagePlan
    graph: StageGraph

    def pending(self) -> list[tuple[Unit, Any]]:
        """(unit, delayed) for every unit to compute."""
        if not self.graph.by_field:
            return [(self.plan.todo[0], task) for task in self.graph.tasks] if self.plan.todo else []
        return [(unit, self.graph.by_field[unit.fields[0]]) for unit in self.plan.todo]


@dataclass(frozen=True)
class Quarantine:
    """A field a stage could not process, and why."""

    stage: str
    field: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        """The run report's row: stage, plate, well, site, t, error."""
        plate, well, site, t = self.field.split("/") if self.field.count("/") == 3 else ("", "", "", "")
        return {"stage": self.stage, "plate": plate, "well": well, "site": int(site) if site else None,
                "t": float(t) if t else None, "field": self.field, "error": self.error}


def plan_graphs(screen: Screen, spec: PipelineSpec, *, resume: bool = True, verify: bool = False,
                replace: bool = False) -> list[PlannedStage]:
    """Build and plan every stage in spec order, creating output variables as it goes (lazy).

    ``replace``: a stage may take over a variable another stage wrote (else that raises
    :class:`~cellflow.errors.StoreExistsError` before anything runs).
    """
    inputs = input_digests(screen)
    planned: list[PlannedStage] = []
    previous_full: StageGraph | None = None
    previous_run: StageGraph | None = None
    upstream: dict[Any, str] = {}
    written: set[str] = set()  # what the stages so far write: downstream stages run after those writes
    for name, entry, params in spec.stage_entries():
        if previous_full is not None and previous_run is not None:
            chain = frozenset(written - {v.name for v in previous_full.outputs})
            whole = previous_run is previous_full
            previous_full = dataclasses.replace(previous_full, written_before=chain)
            previous_run = previous_full if whole else dataclasses.replace(previous_run, written_before=chain)
        full = entry.build(screen, params, after=previous_full)
        full.create_outputs(screen, replace=replace)
        plan = plan_stage(screen, name, params, full, upstream=upstream, inputs=inputs, resume=resume, verify=verify)
        if not full.by_field:  # a stage without per-field results: one unit, always run
            plan.todo = [Unit(id="*", fields=(), token="")]
            graph = full
        elif not plan.todo:
            graph = StageGraph(name, full.outputs, (), {})
        elif not plan.skipped and previous_run is previous_full:
            graph = full
        else:
            graph = entry.build(screen, params, after=previous_run, fields=[f for u in plan.todo for f in u.fields])
        planned.append(PlannedStage(name, plan, graph))
        written |= {v.name for v in full.outputs}
        upstream = plan.token_of
        previous_full, previous_run = full, graph
    return planned


class _Completions(Callback):  # type: ignore[misc]
    """Threaded scheduler: hands each finished unit to the recorder, in the scheduler's thread."""

    def __init__(self, units: dict[Any, tuple[str, Unit]], record: Callable[..., None],
                 started: Callable[[str, Unit], None]) -> None:
        super().__init__()
        self._units = units
        self._record = record
        self._started = started

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        if key in self._units:
            self._started(*self._units[key])

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._units:
            stage, unit = self._units[key]
            self._record(stage, unit, result)


@dataclass
class Execution:
    """What :func:`execute_plans` did."""

    results: list[TaskResult] = field(default_factory=list)
    quarantined: list[Quarantine] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    finished_s: dict[str, float] = field(default_factory=dict)
    chunks_written: dict[str, int] = field(default_factory=dict)
    #: Why the run stopped before every unit finished, said to the user ("the file system cannot
    #: take more writes: ...", "the connection to the dask scheduler was lost: ..."), else None.
    stopped: str | None = None
    #: What to do before running again (e.g. "free space"), when there is something to do.
    remedy: str = ""


class _Stop(Exception):
    """Raised in the threaded scheduler's callback to stop computing (see :attr:`Execution.stopped`)."""


def _stop_for_storage(execution: Execution, detail: str) -> None:
    """Stop the run: the store's file system is full or read-only (``detail`` says where it showed)."""
    if execution.stopped is None:
        execution.stopped = f"the file system cannot take more writes: {detail}"
        execution.remedy = "free space (or make it writable)"


class _Recorder:
    """Client-side bookkeeping of finished units (the store's single writer)."""

    def __init__(self, screen: Screen, stages: Sequence[PlannedStage], advance: Callable[[str], None],
                 on_unit: Callable[[str, Unit, TaskResult], None] | None, execution: Execution | None = None) -> None:
        self.screen = screen
        self.logs = {s.name: TaskLog(screen, s.name) for s in stages}
        self.execution = Execution() if execution is None else execution
        self.advance = advance
        self.on_unit = on_unit
        self.start = time.perf_counter()
        self.started_path = Path(screen.path) / "_cellflow" / "tasks" / "started.log"
        self.ledgers: dict[str, ChunkLedger] = {}  # each keeps its zarr array open between marks
        for s in stages:
            self.execution.counts[s.name] = {"units": len(s.plan.units), "skipped": len(s.plan.skipped),
                                             "done": 0, "quarantined": 0}
            self.execution.results.extend(result for _, result in s.plan.skipped)  # rows only (entry_result)

    def started(self, stage: str, unit: Unit) -> None:
        """Note a unit's start, ``<stage> <unit id>`` (not fsync'ed: only kill-and-resume accounting reads it)."""
        append_lines(self.started_path, f"{stage} {unit.id}\n")

    def record(self, stage: str, unit: Unit, result: Any) -> None:
        """Record one finished unit (see :meth:`record_many`)."""
        self.record_many([(stage, unit, result)])

    def record_many(self, finished: Sequence[tuple[str, Unit, Any]]) -> None:
        """Record units that finished together: one ledger write per variable, one fsync'ed append per stage.

        Group commit: the cost of a record is mostly per write (a ledger chunk's read-modify-write,
        an fsync), so units that finished while the previous group was being written go in one.
        The order per unit is kept: its chunks are in the ledgers before its ``done`` line is in
        the task log, so a kill anywhere leaves no ``done`` unit with unrecorded chunks.
        """
        with interrupts_deferred():  # the task log and the counts in run.json never disagree
            self._record_many(finished)

    def _record_many(self, finished: Sequence[tuple[str, Unit, Any]]) -> None:
        results = [(stage, unit, _as_result(stage, result)) for stage, unit, result in finished]
        for stage, unit, result in results:
            if result.halt:
                _stop_for_storage(self.execution, f"{result.error} in {stage} {unit.id}")
        results = [(stage, unit, result) for stage, unit, result in results if not result.halt]  # left pending
        # what is kept until the tables are written: the rows as their log text (LoggedRows), then, once
        # their line is in the task log, by where they lie there (RowsInLog; a unit without a token has no
        # line); not the chunk records: they go into the ledgers and the task log below, and are never read
        # again (~0.5 KiB a unit held for the whole run)
        kept = [dataclasses.replace(result, records=(), rows=LoggedRows.of(result.rows) if result.rows else ())
                if result.error is None else result for _, _, result in results]
        by_variable: dict[str, list[ChunkRecord]] = defaultdict(list)
        for _, _, result in results:
            if result.error is None:
                for record in result.records:
                    by_variable[record.variable].append(record)
        for name, records in by_variable.items():
            if name not in self.ledgers:
                self.ledgers[name] = self.screen.ledger(name)
            self.ledgers[name].mark(records)  # the writes returned before the tasks did
            self.execution.chunks_written[name] = self.execution.chunks_written.get(name, 0) + len(records)
        entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        logged: dict[str, list[int]] = defaultdict(list)  # per stage, the index in kept of each entry
        for i, ((stage, unit, result), compact) in enumerate(zip(results, kept)):
            if unit.token:  # the unit's chunk records, and its rows as held (their log text)
                entries[stage].append(done_entry(unit, dataclasses.replace(compact, records=result.records))
                                      if result.error is None else failed_entry(unit, result.error))
                logged[stage].append(i)
        for stage, lines in entries.items():
            for i, rows in zip(logged[stage], self.logs[stage].append(lines)):
                if rows is not None:
                    kept[i] = dataclasses.replace(kept[i], rows=rows)
        for (stage, unit, result), compact in zip(results, kept):
            counts = self.execution.counts[stage]
            if result.error is None:
                counts["done"] += 1
            else:
                counts["quarantined"] += 1
                self.execution.quarantined.extend(Quarantine(stage, field_id(f), result.error) for f in unit.fields)
            self.execution.results.append(compact)
            self.execution.finished_s[stage] = time.perf_counter() - self.start
            self.advance(stage)
            if self.on_unit is not None:
                self.on_unit(stage, unit, result)


class _Lost(NamedTuple):
    """A unit whose result the cluster could not deliver (cancelled, connection lost): not its field's fault."""

    error: str


def _outcome(future: Any) -> Any:
    """A future's result, or its error as an exception, or :class:`_Lost`; never raised (Ctrl-C still stops)."""
    from distributed.comm.core import CommClosedError

    try:
        return future.result()
    except (concurrent.futures.CancelledError, asyncio.CancelledError, CommClosedError) as error:
        return _Lost(" ".join(f"{type(error).__name__}: {error}".split()).rstrip("."))
    except Exception as error:  # e.g. KilledWorker: the unit killed its workers; recorded as its failure
        return RuntimeError(f"{type(error).__name__}: {error}")


def _as_result(stage: str, result: Any) -> TaskResult:
    """A unit's return value as a TaskResult (an exception or a stray value becomes its error)."""
    if isinstance(result, TaskResult):
        return result
    return TaskResult(stage=stage, error=str(result) if isinstance(result, BaseException) else
                      f"task returned {type(result).__name__}, not a TaskResult")


def execute_plans(
    screen: Screen,
    stages: Sequence[PlannedStage],
    client: Any,
    console: Console,
    *,
    show: bool = True,
    retries: int = 2,
    on_unit: Callable[[str, Unit, TaskResult], None] | None = None,
    execution: Execution | None = None,
) -> Execution:
    """Compute every stage's pending units in one graph, recording each as it finishes.

    ``execution``: an :class:`Execution` to fill in (and return) as units finish, so that a
    caller interrupted mid-run (Ctrl-C, :class:`~cellflow.errors.Terminated`) still knows
    what was done.

    ``client`` None runs on the threaded scheduler. ``retries``: how often the distributed
    scheduler re-runs a unit whose worker died (a task that raises is quarantined by the
    stage's own guard, :func:`cellflow.graph.guarded`, not retried blindly).
    """
    pending = [(s.name, unit, task) for s in stages for unit, task in s.pending()]
    for s in stages:  # whatever these units did before no longer counts
        TaskLog(screen, s.name).append(pending_entry(u) for u in s.plan.todo if u.token)
    with Progress(
        TextColumn("{task.description:>22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as progress:
        bars = {s.name: progress.add_task(
            f"{s.name}" + (f" ({len(s.plan.skipped)} done before)" if s.plan.skipped else ""),
            total=len(s.plan.units), completed=len(s.plan.skipped)) for s in stages}
        recorder = _Recorder(screen, stages, lambda stage: progress.advance(bars[stage]), on_unit, execution)
        if not pending:
            return recorder.execution
        if client is None:
            units = {task.key: (stage, unit) for stage, unit, task in pending}

            def record(stage: str, unit: Unit, result: Any) -> None:
                try:
                    recorder.record(stage, unit, result)
                except OSError as error:
                    if not halts_run(error):
                        raise
                    _stop_for_storage(recorder.execution, f"{type(error).__name__}: {error} (recording results)")
                if recorder.execution.stopped is not None:
                    raise _Stop(recorder.execution.stopped)

            try:
                with _Completions(units, record, recorder.started):
                    compute(*[task for _, _, task in pending], scheduler="threads")
            except _Stop:
                pass
            return recorder.execution
        from distributed import as_completed

        futures = client.compute([task for _, _, task in pending], retries=retries)
        owner = {f.key: (stage, unit) for f, (stage, unit, _) in zip(futures, pending)}
        # Each batch is every unit that finished while the previous batch was being recorded (one
        # at a time when the client keeps up); its results come back in one gather.
        for batch in as_completed(futures).batches():
            ok = [f for f in batch if f.status == "finished"]
            try:
                results = client.gather(ok)
            except Exception:  # a result lost since (its worker died): each on its own, never the whole run
                results = [_outcome(f) for f in ok]
            finished = [(*owner[f.key], result) for f, result in zip(ok, results)]
            # the others: the worker died more often than allowed or an unguarded raise (the unit's
            # own problem: quarantined), or cancelled: we never cancel while going on, so the
            # cluster did (the scheduler connection was lost)
            finished += [(*owner[f.key], _outcome(f)) for f in batch if f.status != "finished"]
            # a result the cluster could not deliver stops the run; its unit stays pending for the
            # next run instead of being blamed on its field
            lost = [result for _, _, result in finished if isinstance(result, _Lost)]
            try:
                recorder.record_many([item for item in finished if not isinstance(item[2], _Lost)])
            except OSError as error:
                if not halts_run(error):
                    raise
                _stop_for_storage(recorder.execution, f"{type(error).__name__}: {error} (recording results)")
            if lost and recorder.execution.stopped is None:
                recorder.execution.stopped = ("the dask cluster could not deliver the work (the connection to its "
                                              f"scheduler was lost?): {lost[0].error}")
                recorder.execution.remedy = "check the scheduler (its pod, its node, the network)"
            if recorder.execution.stopped is not None:
                with contextlib.suppress(Exception):  # best effort: the scheduler may be gone
                    client.cancel(futures)  # the rest would fail the same way
                break
        return recorder.execution
