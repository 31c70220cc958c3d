"""Tiled inference, side by side: cellflow's ``predict_plane`` against MONAI's ``sliding_window_inference``.

Same model (``resunet`` of :mod:`cellflow.nn.models`, width 8, 1 input channel, 3 classes,
seeded, eval mode, ``torch.inference_mode``), same plane (a smooth random field of
``--size`` x ``--size`` pixels, default 2048), same network input window (``--window``
pixels a side, default 256), Gaussian blending for both (sigma = window / 8 in both), the
same tiles per forward pass (``--batch``), CPU, ``--threads`` torch threads.

How the two tile the plane:

* MONAI runs the network on windows of ``window`` pixels placed with a fractional
  ``--overlap`` (default 0.25, MONAI's default) and blends the *whole* window output.
* cellflow runs the network on inputs of the same ``window`` pixels, but keeps only the
  centre ``tile = window - 2 * halo`` (halo = the model's receptive radius rounded up to its
  down-sampling factor) and blends the kept windows (``--cellflow-overlap`` pixels apart,
  default 0: with a full halo tiling is exact and needs no overlap to hide seams). Adjacent
  network inputs then overlap by ``2 * halo`` pixels.

Two cellflow rows: ``cellflow`` runs the model exactly as MONAI gets it; ``cellflow-fast``
runs what a predict-stage worker runs with ``PredictParams(channels_last=True)``: the cached
model with its batch norms folded into the convolutions (:func:`~cellflow.nn.predict.fold_batch_norm`,
which :class:`~cellflow.nn.predict.ModelCache` always does) and channels-last tensors.
The speed-up is MONAI's time over each cellflow row's.

Timing: wall seconds of one call, numpy plane in, numpy probabilities out, median of
``--repeats`` (round-robin over the methods) after one warm-up call each. Seam error:
``max |tiled - whole|`` against one forward pass over the whole plane
(:func:`~cellflow.nn.predict.whole_image_probabilities`, the plane mirrored by the halo at
its borders). If the whole plane does not fit (``--whole-max``), both
methods are re-run on the largest centred crop that does and compared there. The error is
given over the interior (pixels at least ``halo`` from the plane's edge: MONAI pads
convolutions with zeros at the plane border while the reference mirrors it, a border
convention rather than a seam) and over the full plane.

Prints a table and writes ``benchmarks/results/tiled_vs_monai.json``.

Usage::

    python benchmarks/tiled_vs_monai.py [--size 2048] [--window 256] [--overlap 0.25] [--batch 4]
                                        [--repeats 3] [--threads 2] [--whole-max 2048] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from cellflow.nn.models import build_model
from cellflow.nn.predict import fold_batch_norm, predict_plane, whole_image_probabilities

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tiled_vs_monai.json"


def machine(threads: int) -> dict[str, Any]:
    """Machine and library versions for the JSON record."""
    import monai

    return {
        "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
        "monai": monai.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def make_plane(size: int) -> np.ndarray:
    """A smooth, roughly normalised random plane (1, size, size) float32, seeded."""
    rng = np.random.default_rng(0)
    blobs = ndi.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 4)
    plane = blobs / blobs.std() + 0.1 * rng.normal(size=(size, size)).astype(np.float32)
    return plane[None].astype(np.float32)


def cellflow_runner(model: torch.nn.Module, window: int, overlap: int, batch: int, *,
                    channels_last: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """cellflow tiled inference with network inputs of ``window`` pixels (kept tile + 2 halo)."""
    factor, radius = int(model.downsampling), int(model.receptive_radius)  # type: ignore[arg-type]
    halo = -(-radius // factor) * factor
    tile = window - 2 * halo
    if tile < factor:
        raise SystemExit(f"--window {window} leaves no kept tile around a halo of {halo}; use a larger window")

    def run(image: np.ndarray) -> np.ndarray:
        return predict_plane(model, image, tile=tile, halo=halo, overlap=overlap, batch_size=batch, window="gaussian",
                             channels_last=channels_last)

    return run


def monai_runner(model: torch.nn.Module, window: int, overlap: float, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """MONAI sliding-window inference of the model's softmax probabilities, Gaussian blending."""
    from monai.inferers import sliding_window_inference

    def run(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = sliding_window_inference(
                torch.from_numpy(image)[None], roi_size=(window, window), sw_batch_size=batch,
                predictor=model.predict_proba,  # type: ignore[arg-type]
                overlap=overlap, mode="gaussian", sigma_scale=0.125,
            )
        return out[0].numpy()  # type: ignore[index]

    return run


def time_all(runners: dict[str, Callable[[np.ndarray], np.ndarray]], image: np.ndarray,
             repeats: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Wall seconds of ``repeats`` calls of each runner after one warm-up call each, and the outputs.

    The repeats go round-robin over the runners, so that a change in the machine's load (a
    shared machine) falls on all of them alike rather than on one.
    """
    outputs = {name: run(image) for name, run in runners.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run(image)
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def seam_errors(outputs: dict[str, np.ndarray], whole: np.ndarray, margin: int) -> dict[str, dict[str, float]]:
    """max |output - whole| over the full plane and over the interior (``margin`` from the edges)."""
    inner = (slice(None), slice(margin, -margin or None), slice(margin, -margin or None))
    return {name: {"full": float(np.abs(out - whole).max()), "interior": float(np.abs(out - whole)[inner].max())}
            for name, out in outputs.items()}


def windows_of(size: int, window: int, stride: int) -> int:
    """Windows per axis of a sliding window with this stride (MONAI's count)."""
    return 1 + max(0, -(-(size - window) // stride))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="plane side, pixels")
    parser.add_argument("--window", type=int, default=256, help="network input side for both, pixels")
    parser.add_argument("--overlap", type=float, default=0.25, help="MONAI's fractional window overlap")
    parser.add_argument("--cellflow-overlap", type=int, default=0, help="cellflow's kept-window overlap, pixels")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass (both)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--whole-max", type=int, default=2048, help="largest side of the whole-image reference")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resunet", in_channels=1, classes=3, width=8).eval()
    plane = make_plane(args.size)
    fast = fold_batch_norm(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    runners = {
        "cellflow": cellflow_runner(model, args.window, args.cellflow_overlap, args.batch),
        "cellflow-fast": cellflow_runner(fast, args.window, args.cellflow_overlap, args.batch, channels_last=True),
        "monai": monai_runner(model, args.window, args.overlap, args.batch),
        # for transparency: MONAI handed the model cellflow's engine prepares (folded, channels-last)
        "monai-fast": monai_runner(fast, args.window, args.overlap, args.batch),
    }
    seconds, outputs = time_all(runners, plane, args.repeats)
    crop = min(args.size, args.whole_max)
    if crop < args.size:  # the reference does not fit: compare both methods on a centred crop
        start = (args.size - crop) // 2
        plane = np.ascontiguousarray(plane[:, start:start + crop, start:start + crop])
        outputs = {name: run(plane) for name, run in runners.items()}
    whole = whole_image_probabilities(model, plane)
    halo = -(-int(model.receptive_radius) // int(model.downsampling)) * int(model.downsampling)
    errors = seam_errors(outputs, whole, halo)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    tile = args.window - 2 * halo
    result_windows = windows_of(args.size, args.window, max(1, int(args.window * (1 - args.overlap)))) ** 2
    result = {
        "benchmark": "tiled_vs_monai", "size": args.size, "window": args.window, "batch": args.batch,
        "model": {"name": "resunet", "width": 8, "receptive_radius": int(model.receptive_radius),
                  "downsampling": int(model.downsampling), "halo": halo},
        "monai": {"overlap": args.overlap, "windows": windows_of(args.size, args.window,
                                                                 max(1, int(args.window * (1 - args.overlap)))) ** 2},
        "cellflow": {"tile": tile, "kept_overlap": args.cellflow_overlap,
                     "windows": windows_of(args.size, tile, tile - args.cellflow_overlap) ** 2},
        "cellflow-fast": {"tile": tile, "kept_overlap": args.cellflow_overlap, "fold_batch_norm": True,
                          "channels_last": True,
                          "windows": windows_of(args.size, tile, tile - args.cellflow_overlap) ** 2},
        "reference_side": crop, "repeats": args.repeats,
        "wall_seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
        "wall_seconds_median": {k: round(v, 4) for k, v in median.items()},
        "monai-fast": {"overlap": args.overlap, "fold_batch_norm": True, "channels_last": True,
                       "windows": result_windows},
        "speedup_over_monai": {k: round(median["monai"] / median[k], 3) for k in runners},
        "seam_error": errors, "machine": machine(args.threads),
    }
    print(f"Tiled inference of a {args.size}x{args.size} plane, resunet width 8, window {args.window}, batch "
          f"{args.batch}, {args.threads} threads, median of {args.repeats} (reference {crop}x{crop})")
    print(f"{'method':<14} {'windows':>8} {'wall s':>8} {'vs MONAI':>9} {'seam err (interior)':>20} "
          f"{'seam err (full)':>16}")
    for name in runners:
        ratio = median["monai"] / median[name]
        print(f"{name:<14} {result[name]['windows']:>8} {median[name]:>8.3f} {ratio:>8.2f}x "
              f"{errors[name]['interior']:>20.2e} {errors[name]['full']:>16.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
