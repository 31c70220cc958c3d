"""How well does the illumination stage recover a known vignetting, and how flat is the result?

Writes a synthetic screen (default: 1 plate x 2 wells x 4 sites of 1024x1024,
channels DNA, Cyto and BF) whose per-channel vignetting is known
(:func:`~cellflow.screen.synthetic.true_illumination`), runs the illumination
stage's graph once per smoothing method, and reports per channel and method:

* ``rms_pct``: RMS over the field of ``estimate / truth - 1`` (both mean 1), in %;
* ``flatness``: the coefficient of variation of the background level across the
  field (:func:`~cellflow.ops.illumination.background_flatness`, blocks of 1/16
  of the field, background = pixels more than 10 px from every true cell),
  before and after correction, their ratio, and the same after correcting with
  the *true* function (the floor set by noise and haze, not by the estimate).

Prints a table and writes ``benchmarks/results/illumination_accuracy.json``.

Usage::

    python benchmarks/illumination_accuracy.py [--size 1024] [--wells 2] [--sites 4] [--n-z 1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
from scipy import ndimage as ndi

from cellflow.graph.illumination import IlluminationParams, build_illumination
from cellflow.ops.illumination import ILLUMINATION_METHODS, apply_illumination, background_flatness
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, true_illumination, write_synthetic_screen

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "illumination_accuracy.json"
BACKGROUND_MARGIN_PX = 10  # ~3 haze sigmas (3 um at 0.65 um/px) away from every true cell


def rms_pct(estimate: np.ndarray, truth: np.ndarray) -> float:
    ratio = (estimate / estimate.mean()) / (truth / truth.mean())
    return float(100 * np.sqrt(np.mean((ratio - 1) ** 2)))


def load_fields(screen: Screen) -> tuple[np.ndarray, np.ndarray]:
    """All fields' planes (N, C, Z, Y, X) and background masks (N, Y, X) from the truth."""
    images, background = [], []
    for key in screen.fields():
        where = {"plate": key.plate, "well": key.well, "site": key.site, "t": key.t}
        images.append(screen.read("images", **where))
        cells = screen.read("truth_cells", **where) > 0
        background.append(~ndi.binary_dilation(cells, iterations=BACKGROUND_MARGIN_PX))
    return np.stack(images), np.stack(background)


def evaluate(screen: Screen, spec: SyntheticSpec, method: str, images: np.ndarray, background: np.ndarray) -> dict:
    params = IlluminationParams(method=method)  # type: ignore[arg-type]
    graph = build_illumination(screen, params)
    graph.create_outputs(screen)
    started = time.perf_counter()
    dask.compute(*graph.tasks, scheduler="threads")
    seconds = time.perf_counter() - started
    block = min(spec.shape_yx) // 16
    offset = spec.camera_offset_adu
    rows = []
    for c, channel in enumerate(spec.channels):
        truth = true_illumination(spec, plate="P1", channel=channel)
        for z_index, z in enumerate(spec.z_um):
            estimate = screen.read("illumination", plate="P1", c=channel, z=z)
            planes = images[:, c, z_index]
            raw = planes.astype(np.float32) - np.float32(offset)
            before = background_flatness(raw, background, block_px=block)
            after = background_flatness(apply_illumination(planes, estimate, offset=offset), background, block_px=block)
            floor = background_flatness(apply_illumination(planes, truth, offset=offset), background, block_px=block)
            rows.append({
                "channel": channel, "z_um": z, "method": method, "rms_pct": rms_pct(estimate, truth),
                "flatness_before_pct": 100 * before, "flatness_after_pct": 100 * after,
                "flatness_ratio": before / after, "flatness_true_correction_pct": 100 * floor,
            })
    return {"method": method, "params": params.to_dict(), "seconds": round(seconds, 2), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="field edge in pixels")
    parser.add_argument("--wells", type=int, default=2)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--n-z", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    spec = SyntheticSpec(
        shape_yx=(args.size, args.size), wells=tuple(f"A{i + 1:02d}" for i in range(args.wells)),
        sites=args.sites, n_z=args.n_z, seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        screen = write_synthetic_screen(Path(folder) / "screen.zarr", spec)
        generate_s = time.perf_counter() - started
        images, background = load_fields(screen)
        runs = [evaluate(screen, spec, method, images, background) for method in ILLUMINATION_METHODS]

    n_fields = images.shape[0]
    print(f"Illumination on {n_fields} synthetic {args.size}x{args.size} fields, channels {', '.join(spec.channels)}, "
          f"z {list(spec.z_um)} um; background = more than {BACKGROUND_MARGIN_PX} px from every true cell")
    print(f"{'channel':<8} {'z um':>5} {'method':<11} {'RMS %':>6} {'flat before %':>14} {'after %':>8} "
          f"{'ratio':>7} {'true-corr %':>12}")
    for run in runs:
        for row in run["rows"]:
            print(f"{row['channel']:<8} {row['z_um']:>5.1f} {row['method']:<11} {row['rms_pct']:>6.2f} "
                  f"{row['flatness_before_pct']:>14.2f} {row['flatness_after_pct']:>8.2f} "
                  f"{row['flatness_ratio']:>7.1f} {row['flatness_true_correction_pct']:>12.2f}")
    print("stage time (threads, all channels and planes): "
          + ", ".join(f"{run['method']} {run['seconds']:.1f} s" for run in runs))
    worst_rms = max(row["rms_pct"] for run in runs for row in run["rows"])
    worst_ratio = min(row["flatness_ratio"] for run in runs for row in run["rows"])
    print(f"bars: RMS <= 3 % (worst {worst_rms:.2f} %), flatness ratio >= 5 (worst {worst_ratio:.1f})")
    result = {
        "benchmark": "illumination_accuracy",
        "spec": spec.to_dict(),
        "fields": n_fields,
        "background_margin_px": BACKGROUND_MARGIN_PX,
        "flatness_block_px": min(spec.shape_yx) // 16,
        "runs": runs,
        "worst_rms_pct": worst_rms,
        "worst_flatness_ratio": worst_ratio,
        "generate_seconds": round(generate_s, 2),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
