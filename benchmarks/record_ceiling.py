"""How many finished units per second can the run's client record? (the single writer's ceiling)

    python benchmarks/record_ceiling.py [--wells 96] [--sites 10] [--workers 2] [--repeats 2]

Every unit of a ``cellflow run`` is recorded on the client when it finishes: its chunks are
marked in the variable ledgers, then its ``done`` line is appended (fsync'ed) to the stage's
task log (:mod:`cellflow.pipeline.execute`). On many GPUs the fields finish faster than on
this machine's cores, so the client's recording rate bounds a whole cluster's throughput.

This benchmark takes the pixels out: one stage of ``wells x sites`` units on a LocalCluster
of ``--workers`` single-threaded processes, each unit returning at once with one chunk record
(the field's ``images`` chunk, re-marked with its own digest: the store is unchanged) — so the
units per second measured is the recording path's (plus dask's per-task cost), not the
work's. The same units computed with no recording at all (``client.compute`` + gather) give
dask's own ceiling next to it.

Prints a table and writes benchmarks/results/record_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
from rich.console import Console

from cellflow.cluster import cluster_client
from cellflow.graph import StageGraph, TaskResult
from cellflow.pipeline.execute import PlannedStage, execute_plans
from cellflow.pipeline.resume import StagePlan, TaskLog, Unit, field_id
from cellflow.pipeline.spec import ClusterSpec
from cellflow.screen.store import ChunkRecord, FieldKey, Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

RESULTS = Path(__file__).resolve().parent / "results" / "record_ceiling.json"
ROWS = "ABCDEFGHIJKLMNOP"


def _finished(stage: str, key: FieldKey, record: ChunkRecord) -> TaskResult:
    return TaskResult(stage=stage, field=key, records=(record,))


def _stage(screen: Screen, name: str) -> PlannedStage:
    """One unit per field; each task returns its field's ``images`` chunk record, doing nothing else."""
    digests = screen.ledger("images").digests()
    coords = screen.coords()
    wells, sites = list(coords["well"]), list(coords["site"])
    units, by_field = [], {}
    for key in screen.fields():
        index = (0, wells.index(key.well), sites.index(key.site)) + (0,) * (digests.ndim - 3)
        record = ChunkRecord(variable="images", index=index, digest=int(digests[index]))
        units.append(Unit(id=field_id(key), fields=(key,), token=f"{name}-{field_id(key)}"))
        by_field[key] = dask.delayed(_finished, pure=False)(name, key, record)
    plan = StagePlan(name=name, units=units, todo=list(units))
    graph = StageGraph(name=name, outputs=(), tasks=tuple(by_field.values()), by_field=by_field)
    return PlannedStage(name=name, plan=plan, graph=graph)


def _one(screen: Screen, client: Any, name: str) -> dict[str, float]:
    stage = _stage(screen, name)
    n = len(stage.plan.units)
    start = time.perf_counter()
    futures = client.compute(list(stage.graph.tasks))
    client.gather(futures)
    bare = time.perf_counter() - start
    del futures
    stage = _stage(screen, name + "r")
    start = time.perf_counter()
    execution = execute_plans(screen, [stage], client, Console(quiet=True), show=False)
    recorded = time.perf_counter() - start
    done = execution.counts[stage.name]["done"]
    lines = TaskLog(screen, stage.name).load()
    assert done == n and all(e["status"] == "done" for e in lines.values()) and len(lines) == n, "lost a unit"
    return {"units": n, "dask_units_per_s": n / bare, "recorded_units_per_s": n / recorded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wells", type=int, default=96)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    wells = tuple(f"{ROWS[i // 24]}{i % 24 + 1:02d}" for i in range(args.wells))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "plate.zarr"
        write_synthetic_screen(store, SyntheticSpec(wells=wells, sites=args.sites, shape_yx=(16, 16),
                                                     channels=("DNA",), n_z=1, seed=1))
        screen = Screen.open(store)
        before = screen.ledger("images").digests().copy()
        spec = ClusterSpec(kind="local", n_workers=args.workers, threads_per_worker=1,
                           dashboard_address="127.0.0.1:0")
        with cluster_client(spec) as client:
            _one(screen, client, "warmup")
            for repeat in range(args.repeats):
                runs.append(_one(screen, client, f"run{repeat}"))
        assert np.array_equal(screen.ledger("images").digests(), before), "the ledger changed"
    print(f"{runs[0]['units']} units, {args.workers} workers x 1 thread, tasks that do nothing")
    print(f"{'repeat':>6} {'dask alone, units/s':>20} {'recorded, units/s':>18}")
    for i, run in enumerate(runs):
        print(f"{i:>6} {run['dask_units_per_s']:>20.0f} {run['recorded_units_per_s']:>18.0f}")
    result = {"benchmark": "record_ceiling", "wells": args.wells, "sites": args.sites, "workers": args.workers,
              "runs": runs, "python": platform.python_version(), "machine": platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
