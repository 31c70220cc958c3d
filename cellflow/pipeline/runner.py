"""Run a validated spec: prepare the input store, build one dask graph, run it, record it.

Steps, all on the client:

1. The input store is opened, or created (synthetic plate, nuclei pairs, a folder).
2. A cluster is started (or joined) as the spec says; its dashboard link is printed
   (bound to 127.0.0.1 unless the spec says otherwise).
3. Each stage's builder adds its lazy tasks to the graph, chained through ``after``;
   its output variables are created (metadata only) before the next stage is built.
4. The whole graph is computed; as tasks finish, a rich progress bar advances per
   stage, and the chunks each task wrote are recorded in the store's ledgers (after
   the write returned: the ledger never claims a chunk that is not on disk).
5. Table rows (scores) are written as Parquet with per-well/plate summaries, reading
   the rows back from the task logs a plate at a time (:mod:`cellflow.pipeline.tables`),
   and a ``run.json`` summary beside them.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import zarr
from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cellflow._files import append_lines, write_text_atomic
from cellflow.cluster import compute
from cellflow.errors import SpecError, StorageFullError, StoreExistsError, Terminated, halts_run
from cellflow.graph import StageGraph, TaskResult
from cellflow.pipeline.spec import ClusterSpec, InputSpec, PipelineSpec
from cellflow.pipeline.tables import write_tables
from cellflow.screen._ingest_report import IngestReport
from cellflow.screen.store import ChunkRecord, Screen

__all__ = [
    "EXIT_CODES",
    "RunResult",
    "build_graphs",
    "cluster_client",
    "execute_graphs",
    "prepare_input",
    "record_chunks",
    "run_spec",
]


@dataclass(frozen=True)
class RunResult:
    """What a run did. ``status``: 'ok', 'quarantined', 'failed' or 'interrupted' (:data:`EXIT_CODES`)."""

    screen: Screen
    tables: dict[str, pd.DataFrame]
    table_paths: dict[str, Path]
    tasks: dict[str, int]
    chunks_recorded: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    dashboard: str | None = None
    status: str = "ok"
    quarantined: tuple[dict[str, Any], ...] = ()
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all done, 3 finished with quarantined fields, 1 failed."""
        return EXIT_CODES[self.status]


def prepare_input(spec: InputSpec, *, scheduler: Any = None, console: Console | None = None) -> Screen:
    """Open the input store, or create it from the source the spec names.

    With ``folder`` and ``add_new_files``, an existing store first takes the fields the
    folder has gained since; ``console`` is told what was added.

    Raises
    ------
    SpecError
        The store does not exist and the spec names no source to create it from.
    """
    store = Path(spec.store)
    if store.exists() and spec.reuse:
        if spec.folder is not None and spec.add_new_files:
            return _add_new_files(spec, store, scheduler, console)
        return Screen.open(store)
    if store.exists():
        _check_replaceable(store, spec)
    source = ("synthetic screen" if spec.synthetic is not None else
              f"{spec.nuclei_pairs}" if spec.nuclei_pairs is not None else f"{spec.folder}")
    if console is not None:  # a plate's ingest or synthesis takes minutes: say what is going on
        console.print(f"creating {store} from {source}" + (" (progress: the dask dashboard)" if scheduler else ""),
                      highlight=False)
    start = time.perf_counter()
    screen = _create_input(spec, store, scheduler)
    if console is not None:
        console.print(f"{store}: {len(screen.fields())} fields in {time.perf_counter() - start:.0f} s",
                      highlight=False)
    group = zarr.open_group(store, mode="r+")
    meta = dict(group.attrs["cellflow"])  # type: ignore[arg-type]
    group.attrs["cellflow"] = {**meta, "source": _source_fingerprint(spec)}
    return screen


#: Where an ingest's bad files are kept, relative to the store.
INGEST_REPORT = Path("_cellflow") / "ingest.json"


def ingest_failures(screen: Screen) -> list[dict[str, Any]]:
    """The files the store's ingest could not read, as quarantine rows (stage ``ingest``)."""
    path = Path(screen.path) / INGEST_REPORT
    if not path.is_file():
        return []
    failed = json.loads(path.read_text()).get("failed", [])
    return [{"stage": "ingest", "plate": None, "well": None, "site": None, "t": None, "field": file,
             "error": reason} for file, reason in failed]


def _add_new_files(spec: InputSpec, store: Path, scheduler: Any, console: Console | None) -> Screen:
    """Ingest what the acquisition added to the spec's folder since the store was made (``add_new_files``)."""
    from cellflow.screen.ingest import ingest

    assert spec.folder is not None and spec.pattern is not None  # InputSpec guarantees both
    report = ingest(spec.folder, store, pattern=spec.pattern, update=True, scheduler=scheduler)
    _save_ingest_report(store, report)  # the bad files now: fixed ones drop out, still bad ones stay
    if console is not None and (report.n_fields_ingested or report.failed):
        added = (f"added {report.n_fields_ingested} new fields to {store}" if report.n_fields_ingested
                 else "no new fields")
        bad = f"; {len(report.failed)} bad files, not analysed (listed at the end)" if report.failed else ""
        console.print(f"{spec.folder}: {added}{bad}", highlight=False)
    return Screen.open(store)


def _save_ingest_report(store: Path, report: IngestReport) -> None:
    """Keep an ingest's bad files with the store: every later run (and its report) lists them."""
    write_text_atomic(store / INGEST_REPORT, json.dumps(
        {"failed": [list(f) for f in report.failed], "notes": list(report.notes)}, indent=1))


def _source_fingerprint(spec: InputSpec) -> str:
    """What a store was made from (the input section without its location): same source, same fingerprint."""
    data = spec.model_dump(mode="json", exclude={"store", "reuse"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _check_replaceable(store: Path, spec: InputSpec) -> None:
    """Refuse to re-create ``store`` unless it was made from this same input (never lose another screen).

    Raises
    ------
    StoreExistsError
        ``store`` holds a screen made from another source, or a store of unknown origin.
    """
    try:
        found = Screen.open(store, validate=False).attrs["cellflow"].get("source")
    except Exception:
        found = None
    if found != _source_fingerprint(spec):
        raise StoreExistsError(
            f"input.store {store} holds another screen (made from a different input, or not by a cellflow run); "
            "refusing to overwrite it: choose another input.store, set input.reuse: true to analyse it, "
            "or delete it yourself"
        )


def _create_input(spec: InputSpec, store: Path, scheduler: Any) -> Screen:
    if spec.synthetic is not None:
        from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

        synthetic = SyntheticSpec.from_dict(spec.synthetic)
        return write_synthetic_screen(store, synthetic, overwrite=store.exists(), scheduler=scheduler)
    if spec.nuclei_pairs is not None or spec.folder is not None:
        from cellflow.screen.ingest import ingest, ingest_nuclei_pairs

        if spec.nuclei_pairs is not None:
            report = ingest_nuclei_pairs(
                spec.nuclei_pairs, store, sources=spec.sources, modalities=spec.modalities,
                overwrite=store.exists(), scheduler=scheduler,
            )
        else:
            assert spec.folder is not None and spec.pattern is not None  # InputSpec guarantees both
            report = ingest(spec.folder, store, pattern=spec.pattern, overwrite=store.exists(), scheduler=scheduler)
        _save_ingest_report(store, report)
        return Screen.open(store)
    raise SpecError(f"input.store {store} does not exist and the spec names no synthetic/nuclei_pairs/folder source")


@contextmanager
def cluster_client(spec: ClusterSpec, *, address: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for the spec's cluster (None for the threaded scheduler).

    ``address`` (the CLI's ``--scheduler``) overrides the spec. See :func:`cellflow.cluster.cluster_client`.
    """
    from cellflow.cluster import cluster_client as start_cluster

    with start_cluster(spec, address=address) as client:
        yield client


def build_graphs(screen: Screen, spec: PipelineSpec, *, before_create: Callable[[StageGraph], None] | None = None,
                 replace: bool = False) -> list[StageGraph]:
    """Build every stage's graph in spec order (lazy), creating output variables as it goes.

    ``before_create`` sees each stage's graph before its outputs are created (and may raise);
    ``replace`` lets a stage take over a variable another stage wrote.
    """
    graphs: list[StageGraph] = []
    previous: StageGraph | None = None
    for _name, entry, params in spec.stage_entries():
        graph = entry.build(screen, params, after=previous)
        if before_create is not None:
            before_create(graph)
        graph.create_outputs(screen, replace=replace)
        graphs.append(graph)
        previous = graph
    return graphs


class _StageProgress(Callback):  # type: ignore[misc]
    """Advances the rich progress bar as the threaded scheduler finishes stage tasks."""

    def __init__(self, stage_of: dict[Any, str], advance: Any) -> None:
        super().__init__()
        self._stage_of = stage_of
        self._advance = advance

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._stage_of:
            self._advance(self._stage_of[key])


def execute_graphs(graphs: Sequence[StageGraph], client: Any, console: Console, show: bool) -> list[TaskResult]:
    """Compute every stage's tasks in one go (threads if ``client`` is None), with progress per stage."""
    tasks = [t for g in graphs for t in g.tasks]
    stage_of = {t.key: g.name for g in graphs for t in g.tasks}
    with Progress(
        TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not show, transient=False,
    ) as progress:
        bars = {g.name: progress.add_task(g.name, total=len(g.tasks)) for g in graphs}

        def advance(stage: str) -> None:
            progress.advance(bars[stage])

        if client is None:
            with _StageProgress(stage_of, advance):
                return list(compute(*tasks, scheduler="threads"))
        from distributed import as_completed

        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[TaskResult | None] = [None] * len(futures)
        for batch in as_completed(futures, with_results=True).batches():  # results gathered in the background
            for future, result in batch:
                results[index[future.key]] = result
                advance(stage_of[future.key])
        return [r for r in results if r is not None]


def record_chunks(screen: Screen, results: Sequence[TaskResult]) -> dict[str, int]:
    """Mark the chunks the tasks wrote as complete in each variable's ledger (client side)."""
    by_variable: dict[str, list[ChunkRecord]] = defaultdict(list)
    for result in results:
        for record in result.records:
            by_variable[record.variable].append(record)
    return {name: screen.ledger(name).mark(records) for name, records in sorted(by_variable.items())}


def run_spec(
    spec: PipelineSpec,
    *,
    scheduler: str | None = None,
    console: Console | None = None,
    progress: bool = True,
    resume: bool = True,
    verify: bool = False,
    spec_path: str | Path | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Run a pipeline spec end to end, resuming whatever an earlier run of it left done.

    Parameters
    ----------
    spec : PipelineSpec
        A validated spec (:func:`~cellflow.pipeline.load_spec`).
    scheduler : str, optional
        Address of a running scheduler; overrides ``spec.cluster``.
    console : rich.console.Console, optional
        Where to print the dashboard link and progress.
    progress : bool
        Show the progress bars.
    resume : bool
        Skip units of work recorded done with the same parameters and inputs
        (:mod:`cellflow.pipeline.resume`); False recomputes everything.
    verify : bool
        When resuming, re-hash every recorded chunk's bytes too.
    spec_path : path, optional
        The spec's file, for the report.
    overwrite : bool
        Let a stage replace a variable another stage wrote (e.g. the spec's ``autolabel``
        over a model's ``labels_nuclei``); without it that stops the run before anything runs.

    Returns
    -------
    RunResult
        ``status`` is ``'ok'``, ``'quarantined'`` (some fields failed; see
        ``quarantined``) or ``'failed'`` (a stage produced nothing, the disk filled up,
        or the run broke).

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C, or :class:`~cellflow.errors.Terminated` (SIGTERM), after the units that
        finished are recorded, ``run.json`` says ``interrupted`` and the cluster is shut down.
    """
    from cellflow.pipeline.execute import Execution, execute_plans, plan_graphs
    from cellflow.pipeline.lock import store_lock
    from cellflow.pipeline.monitor import PlateView

    console = console or Console()
    seconds: dict[str, float] = {}
    started = _now()
    begin = start = time.perf_counter()
    screen: Screen | None = None
    execution = Execution()
    planned: list[Any] = []
    dashboard = None
    failure: str | None = None
    interrupted: str | None = None
    view: Any = None
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    out_dir = Path(spec.output.tables)
    _check_tables_folder(out_dir, Path(spec.input.store))
    try:
        with ExitStack() as stack:
            store = Path(spec.input.store)
            what = f"cellflow run {spec_path or spec.name}"
            locked = (store / "zarr.json").is_file()
            if locked:  # one writing run per store (cellflow.pipeline.lock)
                stack.enter_context(store_lock(store, what))
            client: Any = None
            cluster_started = False

            def start_cluster() -> None:  # when there is work for it: a rerun with nothing to do starts none
                nonlocal client, cluster_started, dashboard
                if cluster_started:
                    return
                client = stack.enter_context(cluster_client(spec.cluster, address=scheduler))
                cluster_started = True
                dashboard = None if client is None else client.dashboard_link
                if dashboard:
                    console.print(f"dask dashboard: {dashboard}")

            if not (Path(spec.input.store).exists() and spec.input.reuse):
                start_cluster()  # the input is made (ingest, synthesis) on the cluster
            screen = prepare_input(spec.input, scheduler=client, console=console)
            if not locked:  # the store was made just now
                stack.enter_context(store_lock(store, what))
            seconds["input"] = time.perf_counter() - start
            start = time.perf_counter()
            planned = plan_graphs(screen, spec, resume=resume, verify=verify, replace=overwrite)
            seconds["build"] = time.perf_counter() - start
            if any(s.plan.todo for s in planned):
                start_cluster()
            else:
                console.print(f"nothing to do: all {sum(len(s.plan.units) for s in planned)} units are recorded "
                              "done with these parameters and inputs (no cluster started)")
            view = PlateView(screen, planned, out_dir, dashboard=dashboard)
            console.print(f"plate view: {view.html_path}")
            start = time.perf_counter()
            execute_plans(
                screen, planned, client, console, show=progress, retries=int(getattr(spec.cluster, "retries", 2)),
                on_unit=view.update, execution=execution,
            )
            seconds["compute"] = time.perf_counter() - start
            view.finish()
        if execution.stopped is None:  # a stopped run's tables would be partial (and its disk may be full)
            tables, paths = write_tables(spec, execution.results, out_dir)
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM (Terminated): what finished is recorded and kept
        interrupted = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted (Ctrl-C)"
        if view is not None:
            view.finish()  # the plate view stops refreshing
        raise
    except Exception as error:  # the run broke: say so in run.json, then let the caller see it
        failure = f"{type(error).__name__}: {error}"
        if halts_run(error):  # e.g. the tables' disk filled up after the units were done and recorded
            raise StorageFullError(
                f"{failure}; the units recorded done are kept in {spec.input.store}; free space (or make it "
                f"writable) and run `cellflow run {spec_path or 'SPEC'}` again: it skips what is done") from error
        raise
    finally:
        seconds["total"] = time.perf_counter() - begin
        bad_files = ingest_failures(screen) if screen is not None else []
        status = "interrupted" if interrupted else _status(execution, failure)
        if status == "ok" and bad_files:
            status = "quarantined"
        result = RunResult(
            screen=screen, tables=tables, table_paths=paths,  # type: ignore[arg-type]
            tasks={s.name: len(s.plan.units) for s in planned},
            chunks_recorded=dict(execution.chunks_written), seconds=seconds, dashboard=dashboard,
            status=status, quarantined=(*bad_files, *(q.to_dict() for q in execution.quarantined)),
            stages=_stage_summary(planned, execution),
            error=failure if failure is not None else _stopped_message(execution, planned, spec_path, interrupted),
        )
        if interrupted:
            console.print(f"[yellow]{result.error}[/yellow]", highlight=False)
        if screen is not None or failure is not None:
            try:
                _write_summary(spec, result, started=started, spec_path=spec_path)
            except OSError as error:  # (a full disk) the run's results and status stand; say what is missing
                console.print(f"[yellow]run summary not written[/yellow]: {type(error).__name__}: {error}")
    return result


def _check_tables_folder(out_dir: Path, store: Path) -> None:
    """Refuse to write a run's tables over those of a run on another store.

    Raises
    ------
    StoreExistsError
        ``out_dir/run.json`` records a different store.
    """
    summary = out_dir / "run.json"
    if not summary.is_file():
        return
    try:
        previous = json.loads(summary.read_text()).get("store")
    except (OSError, ValueError):
        previous = None
    if previous and Path(previous).resolve() != store.resolve():
        raise StoreExistsError(
            f"output.tables {out_dir} holds the tables of a run on another store ({previous}); "
            f"refusing to overwrite them with the tables of {store}: choose another output.tables"
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stopped_message(execution: Any, planned: Sequence[Any], spec_path: str | Path | None,
                     interrupted: str | None = None) -> str | None:
    """What to tell the user when the run stopped early (a full disk, a lost scheduler, Ctrl-C, SIGTERM), else None."""
    if execution.stopped is None and interrupted is None:
        return None
    done = sum(c["done"] + c["skipped"] for c in execution.counts.values())
    total = sum(len(s.plan.units) for s in planned)
    rerun = f"run `cellflow run {spec_path or 'SPEC'}` again: it skips what is done and redoes the rest"
    if interrupted is not None:
        return f"{interrupted}: {done} of {total} units are done and kept; {rerun}"
    remedy = f"{execution.remedy} and " if execution.remedy else ""
    return f"stopped: {execution.stopped}. {done} of {total} units are done and kept; {remedy}{rerun}"


def _status(execution: Any, failure: str | None) -> str:
    if failure is not None or execution.stopped is not None:
        return "failed"
    if any(c["units"] and not (c["done"] or c["skipped"]) for c in execution.counts.values()):
        return "failed"  # a stage produced nothing at all
    return "quarantined" if execution.quarantined else "ok"


#: ``cellflow run`` exit status per run status (130: stopped by Ctrl-C or SIGTERM, as shells report Ctrl-C).
EXIT_CODES: dict[str, int] = {"ok": 0, "quarantined": 3, "failed": 1, "interrupted": 130}


def _stage_summary(planned: Sequence[Any], execution: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for stage in planned:
        counts = execution.counts.get(stage.name, {"units": len(stage.plan.units), "skipped": 0, "done": 0,
                                                   "quarantined": 0})
        finished = execution.finished_s.get(stage.name, 0.0)
        fields_done = sum(len(u.fields) for u in stage.plan.todo) if counts["done"] else 0
        out[stage.name] = {
            "tasks": counts["units"], "done": counts["done"], "skipped": counts["skipped"],
            "quarantined": counts["quarantined"], "seconds": round(finished, 3),
            "fields_per_s": round(fields_done / finished, 3) if finished > 0 and fields_done else None,
        }
    return out


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata
    import platform

    versions = {"python": platform.python_version()}
    for package in ("cellflow", "numpy", "dask", "distributed", "zarr", "xarray", "scikit-image", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _models(spec: PipelineSpec) -> list[dict[str, str]]:
    from cellflow.nn.checkpoint import file_sha256

    models = []
    for name, raw in spec.stages.items():
        found = [(raw or {}).get("model"), ((raw or {}).get("predict") or {}).get("model")]
        for path in filter(None, found):
            entry = {"stage": name, "path": str(path)}
            try:
                from cellflow.nn.checkpoint import load_checkpoint

                checkpoint = load_checkpoint(path)
                entry.update(sha256=checkpoint.sha256, architecture=checkpoint.model.name)
            except Exception:  # the report says what it could not read; the stage reported the error itself
                entry.update(sha256=file_sha256(path) if Path(path).is_file() else "", architecture="unreadable")
            models.append(entry)
    return models


def _write_summary(spec: PipelineSpec, result: RunResult, *, started: str, spec_path: str | Path | None) -> Path:
    out = Path(spec.output.tables)
    out.mkdir(parents=True, exist_ok=True)
    screen = result.screen
    summary = {
        "run_id": f"{started.replace('-', '').replace(':', '')}-{uuid.uuid4().hex[:6]}",
        "spec": spec.model_dump(mode="json"),
        "spec_path": None if spec_path is None else str(spec_path),
        "store": str(screen.path if screen is not None else spec.input.store),
        "screen_id": None if screen is None else screen.screen_id,
        "started": started, "finished": _now(),
        "status": result.status, "exit_code": EXIT_CODES[result.status], "error": result.error,
        "versions": _versions(),
        "dashboard": result.dashboard,
        "cluster": spec.cluster.model_dump(mode="json"),
        "stages": result.stages,
        "tasks": result.tasks,
        "chunks_recorded": result.chunks_recorded,
        "seconds": result.seconds,
        "quarantined": list(result.quarantined),
        "tables": {k: str(v) for k, v in result.table_paths.items()},
        "models": _models(spec),
        "illumination": screen is not None and "illumination" in screen.variables,
    }
    path = out / "run.json"
    write_text_atomic(path, json.dumps(summary, indent=2, default=str))
    if screen is not None:  # the screen's list of runs (its report lists them)
        line = {"run_id": summary["run_id"], "spec": spec.name, "status": result.status,
                "exit_code": summary["exit_code"], "started": started, "finished": summary["finished"],
                "quarantined": len(result.quarantined), "tables": str(out.resolve())}
        runs = Path(screen.path) / "_cellflow" / "runs.jsonl"
        append_lines(runs, json.dumps(line) + "\n")
    return path
