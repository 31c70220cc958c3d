"""Throughput of network segmentation (tiled prediction + watershed) with 1 and 2 worker processes.

A synthetic screen of ``--fields`` fields of 520 x 696 pixels (the BBBC039 size; one DNA
channel, one z plane) is segmented by the ``segment`` stage (:mod:`cellflow.graph.segment`:
prediction and markers + watershed in one task per field; ``--stages predict+labels`` runs
the two stages instead) on cellflow's local cluster (``cluster: {kind: local}``: worker
*processes* with one thread each and cellflow's worker environment),
first with 1 worker, then with 2. Torch runs 1 intra-op thread per worker
(``PredictParams.threads = 1``; each worker reports its setting), so 2 workers use 2 cores.

The model is ``resunet`` width 8 (seeded, untrained) unless ``--model`` names a trained
checkpoint with a ``DNA`` channel; an untrained net gives arbitrary probabilities, so the
watershed's share of the time differs from a trained one's. Each run first warms every
worker up (imports, model load into the per-process cache) on one field per worker, then
times ``--repeats`` passes over all fields; fields/s is fields over the median wall time.

Prints a table and writes ``benchmarks/results/predict_scaling.json``.

Usage::

    python benchmarks/predict_scaling.py [--fields 24] [--workers 1 2] [--tile 512] [--repeats 1]
                                         [--stages segment|predict+labels] [--model CKPT] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cellflow.graph._stage import StageGraph
from cellflow.pipeline.stages import STAGES
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, write_synthetic_screen

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "predict_scaling.json"
FIELD = (520, 696)


def make_screen(root: Path, fields: int) -> Screen:
    """A synthetic screen of ``fields`` fields (wells of up to 4 sites), DNA only, one plane."""
    sites = min(4, fields)
    wells = tuple(f"{'ABCDEFGH'[i // 12]}{i % 12 + 1:02d}" for i in range(-(-fields // sites)))
    spec = SyntheticSpec(shape_yx=FIELD, wells=wells, sites=sites, channels=("DNA",), n_z=1, seed=0)
    return write_synthetic_screen(root / "screen.zarr", spec, scheduler="threads")


def make_model(root: Path) -> str:
    from cellflow.nn.checkpoint import save_checkpoint
    from cellflow.nn.models import build_model
    from cellflow.nn.normalize import Normalization

    torch.manual_seed(0)
    model = build_model("resunet", in_channels=1, classes=3, width=8)
    path = root / "resunet-w8.pt"
    save_checkpoint(path, model, normalization=Normalization("percentile"), channels=["DNA"],
                    class_names=["background", "interior", "boundary"])
    return str(path)


def build(screen: Screen, stages: str, predict: dict[str, Any], fields: Any = None) -> list[StageGraph]:
    """The lazy graphs of the chosen stages over ``fields`` (all by default)."""
    if stages == "segment":
        entry = STAGES["segment"]
        graph = entry.build(screen, entry.params.from_dict({"predict": predict}), fields=fields)
        graph.create_outputs(screen)
        return [graph]
    first = STAGES["predict"].build(screen, STAGES["predict"].params.from_dict(predict), fields=fields)
    first.create_outputs(screen)
    second = STAGES["labels"].build(screen, STAGES["labels"].params.from_dict({}), after=first, fields=fields)
    second.create_outputs(screen)
    return [first, second]


def run_workers(screen: Screen, stages: str, predict: dict[str, Any], workers: int, repeats: int) -> dict[str, Any]:
    """Fields/s on a LocalCluster of ``workers`` single-threaded processes."""
    from distributed import wait

    from cellflow.cluster import cluster_client
    from cellflow.pipeline.spec import ClusterSpec

    # the cluster `cellflow run` starts for `cluster: {kind: local}` (worker environment included)
    spec = ClusterSpec(kind="local", n_workers=workers, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    with cluster_client(spec) as client:
        assert client is not None
        fields = screen.fields()
        # imports and one model load per worker, outside the timing; other params give other task
        # keys, so that no timed task finds its result already in memory
        warm_params = {**predict, "batch_size": predict["batch_size"] + 1}
        warm = client.compute([t for g in build(screen, stages, warm_params, fields[:workers]) for t in g.tasks])
        wait(warm)
        client.cancel(warm)
        seconds = []
        for _ in range(repeats):
            tasks = [t for g in build(screen, stages, predict) for t in g.tasks]
            start = time.perf_counter()
            futures = client.compute(tasks)
            wait(futures)
            seconds.append(time.perf_counter() - start)
            errors = [f.exception() for f in futures if f.status != "finished"]
            if errors:
                raise RuntimeError(f"{len(errors)} tasks failed, e.g. {errors[0]!r}")
            client.cancel(futures)  # forget the results: the next repeat recomputes every task
        # asked in each worker's task thread, where the tasks set it (OpenMP settings are per thread)
        addresses = list(client.scheduler_info()["workers"])
        torch_threads = sorted({client.submit(torch.get_num_threads, workers=[a], pure=False).result()
                                for a in addresses})
        processed = set(client.run(os.getpid).values())
    median = statistics.median(seconds)
    return {"workers": workers, "threads_per_worker": 1, "torch_threads_per_worker": torch_threads,
            "worker_processes": len(processed), "fields": len(fields), "wall_seconds": [round(s, 3) for s in seconds],
            "fields_per_second": round(len(fields) / median, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=24)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--stages", choices=["segment", "predict+labels"], default="segment")
    parser.add_argument("--model", type=Path, default=None, help="a trained checkpoint with a DNA channel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cellflow-scaling-") as tmp:
        root = Path(tmp)
        screen = make_screen(root, args.fields)
        model = str(args.model) if args.model else make_model(root)
        predict = {"model": model, "tile": args.tile, "batch_size": args.batch, "threads": 1}
        rows = [run_workers(screen, args.stages, predict, n, args.repeats) for n in args.workers]
    base = rows[0]["fields_per_second"]
    for row in rows:
        row["speedup"] = round(row["fields_per_second"] / base, 3)
    result = {
        "benchmark": "predict_scaling", "field": list(FIELD), "stages": args.stages, "tile": args.tile,
        "batch": args.batch, "model": str(args.model) if args.model else "resunet width 8, seeded, untrained",
        "repeats": args.repeats, "runs": rows,
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
    }
    print(f"{args.stages} of {args.fields} fields of {FIELD[0]}x{FIELD[1]}, tile {args.tile}, worker processes "
          f"x 1 thread, torch 1 thread each ({os.cpu_count()} CPUs)")
    print(f"{'workers':>7} {'torch thr':>9} {'wall s':>8} {'fields/s':>9} {'speed-up':>9}")
    for row in rows:
        print(f"{row['workers']:>7} {','.join(map(str, row['torch_threads_per_worker'])):>9} "
              f"{statistics.median(row['wall_seconds']):>8.2f} {row['fields_per_second']:>9.3f} "
              f"{row['speedup']:>8.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
