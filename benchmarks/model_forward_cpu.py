"""How long does one forward pass over a 520 x 696 field take on a CPU, per architecture?

Each model of :mod:`cellflow.nn.models` is built at its default width (1 input channel,
3 classes), put in eval mode, and run under ``torch.inference_mode`` on one random field of
520 x 696 pixels (the BBBC039 U2OS size), zero padded up to a multiple of the model's
down-sampling factor, batch 1, with ``torch.set_num_threads(2)``. After warm-up runs the
median of a few timed runs is reported: wall seconds and process CPU seconds (CPU is roughly
wall x threads when both threads are busy). The table also gives parameters, receptive field,
receptive radius (the halo a tile needs) and down-sampling factor.

Prints a table and writes ``benchmarks/results/model_forward_cpu.json``.

Usage::

    python benchmarks/model_forward_cpu.py [--models unet resunet deepcell] [--repeats 7] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cellflow.nn.models import MODELS, build_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_forward_cpu.json"
FIELD = (520, 696)
THREADS = 2


def padded(size: int, factor: int) -> int:
    """``size`` rounded up to a multiple of ``factor``."""
    return -(-size // factor) * factor


def time_model(name: str, *, repeats: int, warmup: int) -> dict[str, Any]:
    """Build ``name`` at its defaults and time forward passes over one padded field."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, classes=3).eval()
    factor = model.downsampling
    shape = (padded(FIELD[0], factor), padded(FIELD[1], factor))
    image = torch.zeros(1, 1, *shape)
    image[..., : FIELD[0], : FIELD[1]] = torch.rand(1, 1, *FIELD, generator=torch.Generator().manual_seed(0))
    wall, cpu = [], []
    with torch.inference_mode():
        for run in range(warmup + repeats):
            started_wall, started_cpu = time.perf_counter(), time.process_time()
            logits = model(image)
            if run >= warmup:
                wall.append(time.perf_counter() - started_wall)
                cpu.append(time.process_time() - started_cpu)
    assert logits.shape == (1, 3, *shape)
    return {
        "model": name,
        "options": dict(model.config.to_dict()["options"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "receptive_field": model.receptive_field,
        "receptive_radius": model.receptive_radius,
        "downsampling": factor,
        "input_shape": list(shape),
        "wall_seconds_median": round(statistics.median(wall), 4),
        "cpu_seconds_median": round(statistics.median(cpu), 4),
        "wall_seconds": [round(t, 4) for t in wall],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["unet", "resunet", "deepcell"], choices=sorted(MODELS))
    parser.add_argument("--repeats", type=int, default=7, help="timed runs (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    rows = [time_model(name, repeats=args.repeats, warmup=args.warmup) for name in args.models]
    result = {
        "benchmark": "model_forward_cpu",
        "field": list(FIELD),
        "batch": 1,
        "in_channels": 1,
        "classes": 3,
        "threads": THREADS,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "models": rows,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    print(f"Forward pass over one {FIELD[0]} x {FIELD[1]} field, batch 1, {THREADS} threads, "
          f"median of {args.repeats} after {args.warmup} warm-up (torch {torch.__version__})")
    print(f"{'model':<18} {'options':<62} {'params':>9} {'RF':>4} {'radius':>6} {'D':>3} "
          f"{'input':>9} {'wall s':>7} {'CPU s':>7}")
    for row in rows:
        options = " ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in row["options"].items())
        print(f"{row['model']:<18} {options:<62} {row['parameters']:>9,} {row['receptive_field']:>4} "
              f"{row['receptive_radius']:>6} {row['downsampling']:>3} "
              f"{'x'.join(map(str, row['input_shape'])):>9} {row['wall_seconds_median']:>7.3f} "
              f"{row['cpu_seconds_median']:>7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
