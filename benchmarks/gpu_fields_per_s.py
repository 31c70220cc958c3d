"""Fields per second of each architecture on one device, next to its roofline floor (issue 5).

    python benchmarks/gpu_fields_per_s.py [--device cuda] [--batch 8] [--repeats 20] [--out PATH]
    python benchmarks/gpu_fields_per_s.py --device cpu --batch 1 --repeats 2     # a smoke test anywhere

For each architecture (as benchmarked on CPU: unet width 32, resunet width 8, deepcell width 64)
the model is prepared as the engine prepares it (batch norm folded into the convolutions,
channels-last) and run on batches of 520 x 696 fields (padded to the down-sampling factor),
under bfloat16 autocast on CUDA (float32 on CPU), in ``torch.inference_mode``. Reported:

* **fields/s**: measured, after a warm-up, synchronised (median of ``--repeats`` batches);
* **FLOPs per field**: counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward;
* **bytes per field**: what every convolution must at least read and write (its input, output
  and weights, once each, at the compute dtype's width), from forward hooks;
* **roofline floor**: per field ``max(FLOPs / matrix rate, bytes / bandwidth)``, with the
  device's matrix rate measured by a large matmul in the compute dtype and its bandwidth by a
  large device-to-device copy; and the fields/s ceiling it implies, and the fraction reached.

Prints a table and writes ``benchmarks/results/gpu_fields_per_s.json`` (or ``--out``).
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
from torch.utils.flop_counter import FlopCounterMode

from cellflow.nn.models import build_model
from cellflow.nn.predict import fold_batch_norm

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_fields_per_s.json"
FIELD = (520, 696)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "unet": {"width": 32},
    "resunet": {"width": 8},
    "deepcell": {"width": 64},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def matrix_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Measured FLOP/s of a ``size``³ matmul in ``dtype``."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _timed(lambda: a @ b, device, 5)
    return 2 * size**3 / seconds


def bandwidth(device: torch.device, megabytes: int) -> float:
    """Measured bytes/s of a device-to-device copy (read + write counted)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = _timed(lambda: target.copy_(source), device, 5)
    return 2 * source.numel() / seconds


def conv_bytes(model: torch.nn.Module, image: torch.Tensor, itemsize: int) -> int:
    """Bytes every convolution must move at least: input + output + weights, once each."""
    total = 0

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        weights = sum(p.numel() for p in module.parameters(recurse=False))
        total += (inputs[0].numel() + output.numel() + weights) * itemsize

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return total


def measure(name: str, options: dict[str, Any], *, device: torch.device, batch: int, repeats: int,
            rate: float, bytes_per_s: float) -> dict[str, Any]:
    model = build_model(name, in_channels=1, classes=3, **options).eval()
    factor = int(model.downsampling)
    shape = tuple(-(-n // factor) * factor for n in FIELD)
    model = fold_batch_norm(model).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    one = torch.randn(1, 1, *shape, device=device).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(one)
    flops = counter.get_total_flops()
    moved = conv_bytes(model, one, torch.finfo(dtype).bits // 8)
    images = torch.randn(batch, 1, *shape, device=device).contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            model(images)

    seconds = _timed(run, device, repeats)
    floor = max(flops / rate, moved / bytes_per_s)
    return {
        "model": name, "options": options, "input": list(shape), "batch": batch, "dtype": str(dtype),
        "fields_per_s": batch / seconds, "flops_per_field": flops, "bytes_per_field": moved,
        "floor_seconds_per_field": floor, "bound": "compute" if flops / rate >= moved / bytes_per_s else "memory",
        "ceiling_fields_per_s": 1 / floor, "fraction_of_ceiling": (batch / seconds) * floor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--matmul", type=int, default=8192, help="side of the matmul measuring the matrix rate")
    parser.add_argument("--copy-mb", type=int, default=1024, help="MiB copied to measure the bandwidth")
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rate = matrix_rate(device, dtype, args.matmul)
    bytes_per_s = bandwidth(device, args.copy_mb)
    rows = [measure(name, ARCHITECTURES[name], device=device, batch=args.batch, repeats=args.repeats, rate=rate,
                    bytes_per_s=bytes_per_s) for name in args.models]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{name}: matmul {rate / 1e12:.1f} TFLOP/s ({dtype}), copy {bytes_per_s / 1e9:.0f} GB/s; "
          f"520x696 fields, batch {args.batch}")
    print(f"{'model':<9} {'fields/s':>9} {'GFLOP/field':>12} {'MB/field':>9} {'bound':>8} {'ceiling':>9} "
          f"{'reached':>8}")
    for r in rows:
        print(f"{r['model']:<9} {r['fields_per_s']:>9.1f} {r['flops_per_field'] / 1e9:>12.1f} "
              f"{r['bytes_per_field'] / 1e6:>9.1f} {r['bound']:>8} {r['ceiling_fields_per_s']:>9.1f} "
              f"{r['fraction_of_ceiling']:>8.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": name, "matrix_flops_per_s": rate, "bandwidth_bytes_per_s": bytes_per_s,
                                    "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
