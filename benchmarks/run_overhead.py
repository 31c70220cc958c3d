"""Per-field overhead of a `cellflow run`: graph building, dask and the store, with the pixels made trivial.

    python benchmarks/run_overhead.py [--wells 96] [--sites 5] [--size 32] [--workers 2]

A synthetic plate of ``wells x sites`` tiny fields (``size`` px square, so the image work
itself is a few milliseconds) runs four stages (illumination, autolabel, score, measure):

1. **in process**: the stages' graphs computed on the synchronous scheduler, one thread
   (the work itself plus the store's reads and writes: the floor);
2. **run**: ``run_spec`` on a LocalCluster of ``--workers`` single-threaded processes, the
   user-facing path (resume planning, ledger and task-log records, tables, report).

Prints graph-building milliseconds per field, the mean task time per stage in both, and
the run's seconds per 1,000 fields; writes benchmarks/results/run_overhead.json. At 10^6
fields per night, each millisecond per field per stage is ~17 minutes.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import tempfile
import time
from pathlib import Path

import dask
from dask.callbacks import Callback

from cellflow.pipeline.execute import plan_graphs
from cellflow.pipeline.runner import run_spec
from cellflow.pipeline.spec import parse_spec
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

RESULTS = Path(__file__).resolve().parent / "results" / "run_overhead.json"
ROWS = "ABCDEFGHIJKLMNOP"


def _spec(store: Path, tables: Path, workers: int) -> dict:
    return {
        "name": "run-overhead",
        "input": {"store": str(store)},
        "stages": {
            "illumination": {"channels": ["DNA"]},
            "autolabel": {"nuclear_channel": "DNA", "diameter_px": 8},
            "score": {"pairs": [["truth_nuclei", "labels_nuclei"]]},
            "measure": {"labels": ["labels_nuclei"], "channels": ["DNA"]},
        },
        "output": {"tables": str(tables)},
        "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1,
                    "dashboard_address": "127.0.0.1:0"},
    }


class _TaskTimes(Callback):  # type: ignore[misc]
    """Wall time of every task, by stage (the key's first word)."""

    def __init__(self) -> None:
        super().__init__()
        self.start: dict[str, float] = {}
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def _pretask(self, key, dsk, state):
        self.start[key] = time.perf_counter()

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key if isinstance(key, str) else key[0]
        self.times[name.split("-")[0]].append(time.perf_counter() - self.start.pop(key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wells", type=int, default=96)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    wells = tuple(f"{ROWS[i // 24]}{i % 24 + 1:02d}" for i in range(args.wells))
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "template.zarr"
        write_synthetic_screen(template, SyntheticSpec(wells=wells, sites=args.sites, shape_yx=(args.size, args.size),
                                                        channels=("DNA",), n_z=1, seed=1))
        n_fields = len(Screen.open(template).fields())

        # 1. in process, synchronous: the floor
        store = Path(tmp) / "inprocess.zarr"
        shutil.copytree(template, store)
        screen = Screen.open(store)
        spec = parse_spec(_spec(store, Path(tmp) / "t1", args.workers))
        start = time.perf_counter()
        planned = plan_graphs(screen, spec)
        build_s = time.perf_counter() - start
        timer = _TaskTimes()
        start = time.perf_counter()
        with timer:
            dask.compute(*[t for p in planned for t in p.graph.tasks], scheduler="sync")
        inprocess_s = time.perf_counter() - start
        inprocess = {stage: 1e3 * sum(v) / len(v) for stage, v in timer.times.items() if len(v) == n_fields}

        # 2. the user-facing run on a LocalCluster
        store = Path(tmp) / "run.zarr"
        shutil.copytree(template, store)
        result = run_spec(parse_spec(_spec(store, Path(tmp) / "t2", args.workers)), progress=False)
        assert result.status == "ok", result.error

    summary = {
        "fields": n_fields, "field_px": args.size, "workers": args.workers,
        "build_ms_per_field": 1e3 * build_s / n_fields,
        "inprocess_task_ms": inprocess,
        "inprocess_s_per_1000_fields": 1e3 * inprocess_s / n_fields,
        "run_seconds": result.seconds,
        "run_s_per_1000_fields": 1e3 * result.seconds["total"] / n_fields,
    }
    print(f"{n_fields} fields of {args.size}x{args.size} px, 4 stages")
    print(f"graph building: {summary['build_ms_per_field']:.2f} ms per field")
    print("in-process task ms: " + ", ".join(f"{k} {v:.1f}" for k, v in inprocess.items()))
    print(f"in process, 1 thread: {summary['inprocess_s_per_1000_fields']:.1f} s per 1000 fields")
    print(f"cellflow run, {args.workers} workers: {summary['run_s_per_1000_fields']:.1f} s per 1000 fields "
          f"({', '.join(f'{k} {v:.1f} s' for k, v in result.seconds.items())})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
