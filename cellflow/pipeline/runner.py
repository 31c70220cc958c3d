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
5. Table rows (scores) are written as Parquet with per-well/plate summaries, and a
   ``run.json`` summary beside them.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import pandas as pd
from dask.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cellflow.errors import SpecError
from cellflow.graph import StageGraph, TaskResult
from cellflow.pipeline.spec import ClusterSpec, InputSpec, PipelineSpec
from cellflow.screen.store import ChunkRecord, Screen

__all__ = [
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
    """What a run did."""

    screen: Screen
    tables: dict[str, pd.DataFrame]
    table_paths: dict[str, Path]
    tasks: dict[str, int]
    chunks_recorded: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    dashboard: str | None = None


def prepare_input(spec: InputSpec, *, scheduler: Any = None) -> Screen:
    """Open the input store, or create it from the source the spec names.

    Raises
    ------
    SpecError
        The store does not exist and the spec names no source to create it from.
    """
    store = Path(spec.store)
    if store.exists() and spec.reuse:
        return Screen.open(store)
    if spec.synthetic is not None:
        from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

        synthetic = SyntheticSpec.from_dict(spec.synthetic)
        return write_synthetic_screen(store, synthetic, overwrite=store.exists(), scheduler=scheduler)
    if spec.nuclei_pairs is not None or spec.folder is not None:
        from cellflow.screen.ingest import ingest, ingest_nuclei_pairs

        if spec.nuclei_pairs is not None:
            ingest_nuclei_pairs(
                spec.nuclei_pairs, store, sources=spec.sources, modalities=spec.modalities,
                overwrite=store.exists(), scheduler=scheduler,
            )
        else:
            assert spec.folder is not None and spec.pattern is not None  # InputSpec guarantees both
            ingest(spec.folder, store, pattern=spec.pattern, overwrite=store.exists(), scheduler=scheduler)
        return Screen.open(store)
    raise SpecError(f"input.store {store} does not exist and the spec names no synthetic/nuclei_pairs/folder source")


@contextmanager
def cluster_client(spec: ClusterSpec, *, address: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for the spec's cluster (None for the threaded scheduler).

    ``address`` (the CLI's ``--scheduler``) overrides the spec.
    """
    if address is not None:
        spec = spec.model_copy(update={"kind": "address", "address": address})
    if spec.kind == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if spec.kind == "address":
        with Client(spec.address) as client:
            yield client
        return
    with LocalCluster(
        n_workers=spec.n_workers, threads_per_worker=spec.threads_per_worker, processes=True,
        memory_limit=spec.memory_limit, dashboard_address=spec.dashboard_address, host="127.0.0.1",
    ) as cluster, Client(cluster) as client:
        yield client


def build_graphs(screen: Screen, spec: PipelineSpec) -> list[StageGraph]:
    """Build every stage's graph in spec order (lazy), creating output variables as it goes."""
    graphs: list[StageGraph] = []
    previous: StageGraph | None = None
    for _name, entry, params in spec.stage_entries():
        graph = entry.build(screen, params, after=previous)
        graph.create_outputs(screen)
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
                return list(dask.compute(*tasks, scheduler="threads"))
        from distributed import as_completed

        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[TaskResult | None] = [None] * len(futures)
        for future in as_completed(futures):
            results[index[future.key]] = future.result()
            advance(stage_of[future.key])
        return [r for r in results if r is not None]


def record_chunks(screen: Screen, results: Sequence[TaskResult]) -> dict[str, int]:
    """Mark the chunks the tasks wrote as complete in each variable's ledger (client side)."""
    by_variable: dict[str, list[ChunkRecord]] = defaultdict(list)
    for result in results:
        for record in result.records:
            by_variable[record.variable].append(record)
    return {name: screen.ledger(name).mark(records) for name, records in sorted(by_variable.items())}


def _tables(
    spec: PipelineSpec, results: Sequence[TaskResult], out_dir: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, Path]]:
    """Each stage's rows through its registered table writer (``StageEntry.tables``)."""
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, Path] = {}
    for name, entry, params in spec.stage_entries():
        writer = entry.tables
        if writer is None:
            continue
        rows = [row for r in results if r.stage == name and r.error is None for row in r.rows]
        stage_tables, stage_paths = writer(rows, out_dir, params)
        tables.update(stage_tables)
        paths.update(stage_paths)
    return tables, paths


def run_spec(
    spec: PipelineSpec, *, scheduler: str | None = None, console: Console | None = None, progress: bool = True
) -> RunResult:
    """Run a pipeline spec end to end.

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

    Returns
    -------
    RunResult
    """
    console = console or Console()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with cluster_client(spec.cluster, address=scheduler) as client:
        dashboard = None if client is None else client.dashboard_link
        if dashboard:
            console.print(f"dask dashboard: {dashboard}")
        screen = prepare_input(spec.input, scheduler=None if client is None else client)
        seconds["input"] = time.perf_counter() - start
        start = time.perf_counter()
        graphs = build_graphs(screen, spec)
        seconds["build"] = time.perf_counter() - start
        start = time.perf_counter()
        results = execute_graphs(graphs, client, console, progress)
        seconds["compute"] = time.perf_counter() - start
    chunks = record_chunks(screen, results)
    tables, paths = _tables(spec, results, Path(spec.output.tables))
    result = RunResult(
        screen=screen, tables=tables, table_paths=paths, tasks={g.name: len(g.tasks) for g in graphs},
        chunks_recorded=chunks, seconds=seconds, dashboard=dashboard,
    )
    _write_summary(spec, result)
    return result


def _write_summary(spec: PipelineSpec, result: RunResult) -> Path:
    out = Path(spec.output.tables)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "spec": spec.model_dump(mode="json"),
        "store": str(result.screen.path),
        "screen_id": result.screen.screen_id,
        "tasks": result.tasks,
        "chunks_recorded": result.chunks_recorded,
        "seconds": result.seconds,
        "tables": {k: str(v) for k, v in result.table_paths.items()},
    }
    path = out / "run.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
