"""Does chunked segmentation with stitching reproduce a whole-plane segmentation?

Bar (issue): on a 4096 x 4096 synthetic plane, >= 99.5 % of objects are identical to a
whole-plane watershed.

One synthetic DNA plane of 4096 x 4096 (``synthesize_field`` at that size, one z plane,
the default nucleus look, seed 3) at ``nuclei_per_field=960`` per 1024 x 1024: crowded
(the generator finds room for about 800 per 1024^2, ~12 000 nuclei in all, 16 x the
default 60), so that many objects and clusters cross chunk borders.
Generating it takes minutes on a busy 2-core machine; ``--cache`` keeps it between runs.
``--tile`` builds the plane from 16 fields of 1024 x 1024 instead, rolled by 512 pixels so
that the seams fall midway between 1024-chunk borders (synthetic fields keep nuclei off
their own edges: unrolled, few objects would cross the borders).
It is made flat with its true illumination and offset (:func:`project_planes`), then
segmented twice with one kernel, :func:`~cellflow.ops.autolabel.segment_nuclei` with
``diameter_px=25`` and one threshold for the whole plane (the default rule, floor + 0.8 x
(Otsu - floor), computed once on the whole smoothed plane), so that both paths run the
same parameters:

* whole: the kernel on the whole plane;
* stitched: :func:`~cellflow.graph.stitch.segment_large` on 1024 x 1024 and 512 x 512
  chunks, halo ``halo_for_diameter(25)`` = 50.

Two kernels: ``local`` (no edge refinement: every step is local) and ``refined`` (the
default edge refinement, whose background level is the median of the block's background,
a per-block statistic, so exact agreement is not expected near it).

Reported per run: objects in the whole-plane result, the fraction with an identical object
(the same pixel set) in the stitched result, the fraction matched at IoU > 0.9, the same
identical fraction among objects crossing a chunk border, objects cut (a whole-plane object
crossing a border whose pixels carry more than one stitched id), objects duplicated (a
whole-plane object holding more than half of each of two or more stitched objects), and the
stitched object count. Prints a table and writes ``benchmarks/results/stitch_agreement.json``.

Usage::

    python benchmarks/stitch_agreement.py [--size 4096] [--chunks 1024 512] [--seed 3] [--density 960] [--tile]
        [--cache PLANE.npy] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from cellflow.graph.stitch import halo_for_diameter, segment_large
from cellflow.metrics import overlaps
from cellflow.ops.autolabel import NucleiParams, project_planes, segment_nuclei
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, true_illumination

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stitch_agreement.json"
DIAMETER_PX = 25
BAR = 0.995


def make_plane(size: int, seed: int, *, tile: bool, density: int) -> tuple[np.ndarray, float, str]:
    """The plane, the seconds it took and how it was made."""
    started = time.perf_counter()
    side = 1024 if tile else size
    per_side = size // side
    spec = SyntheticSpec(wells=("A01",), sites=per_side**2, shape_yx=(side, side), channels=("DNA",), n_z=1,
                         nuclei_per_field=density, seed=seed)
    flat = true_illumination(spec, plate="P1", channel="DNA")
    fields = [project_planes(synthesize_field(spec, plate="P1", well="A01", site=site).images[0, 0],
                             illumination=flat, offset=spec.camera_offset_adu) for site in range(per_side**2)]
    plane = np.block([fields[r * per_side:(r + 1) * per_side] for r in range(per_side)])
    if tile:  # seams midway between chunk borders, so that the chunk borders cut through fields
        plane = np.roll(plane, (side // 2, side // 2), axis=(0, 1))
    return plane, time.perf_counter() - started, describe(size, tile=tile, density=density)


def describe(size: int, *, tile: bool, density: int) -> str:
    tiles = f"{(size // 1024) ** 2} tiled synthesize_field 1024^2 fields, rolled by 512"
    how = tiles if tile else f"one synthesize_field {size}^2 field"
    return how + f", DNA, n_z=1, nuclei_per_field={density} (per 1024^2), true flat-field applied"


def plane_threshold(plane: np.ndarray, params: NucleiParams) -> float:
    """segment_nuclei's own threshold rule, computed once on the whole plane."""
    smooth = ndi.gaussian_filter(plane, params.smoothing_px)
    floor = float(np.percentile(smooth, 1.0))
    return floor + params.threshold_correction * (float(threshold_otsu(smooth)) - floor)


def agreement(whole: np.ndarray, stitched: np.ndarray, chunk: int) -> dict[str, Any]:
    found = overlaps(whole, stitched)
    n = found.truth_ids.size
    same = (found.intersection == found.truth_area[found.pair_truth]) & (
        found.intersection == found.pred_area[found.pair_pred])
    identical = np.zeros(n, bool)
    identical[found.pair_truth[same]] = True
    matched = np.zeros(n, bool)
    matched[found.pair_truth[found.iou > 0.9]] = True
    pieces = np.bincount(found.pair_truth, minlength=n)
    halves = found.intersection * 2 > found.pred_area[found.pair_pred]
    held = np.bincount(found.pair_truth[halves], minlength=n)
    crossing = np.zeros(n, bool)
    for position, (ys, xs) in enumerate(ndi.find_objects(whole)):
        if ys is not None:  # ids are 1..n from segment_nuclei
            crossing[position] = (ys.start // chunk != (ys.stop - 1) // chunk) or (
                xs.start // chunk != (xs.stop - 1) // chunk)
    return {
        "objects_whole": int(n),
        "objects_stitched": int(found.pred_ids.size),
        "identical_fraction": float(identical.mean()),
        "iou_gt_0.9_fraction": float(matched.mean()),
        "objects_crossing_borders": int(crossing.sum()),
        "identical_fraction_crossing": float(identical[crossing].mean()) if crossing.any() else 1.0,
        "cut": int(np.sum(crossing & (pieces > 1))),
        "duplicated": int(np.sum(held > 1)),
        "not_identical": int(n - identical.sum()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache is not None and args.cache.is_file():
        plane, seconds_synth = np.load(args.cache), None
        how = f"{describe(args.size, tile=args.tile, density=args.density)} (cached in {args.cache})"
    else:
        plane, seconds_synth, how = make_plane(args.size, args.seed, tile=args.tile, density=args.density)
        if args.cache is not None:
            np.save(args.cache, plane)
    halo = halo_for_diameter(DIAMETER_PX)
    rows = []
    for kernel_name, edge_level in (("local", None), ("refined", NucleiParams().edge_level)):
        params = NucleiParams(edge_level=edge_level)
        params = NucleiParams(edge_level=edge_level, threshold=plane_threshold(plane, params))

        def kernel(block: np.ndarray, params: NucleiParams = params) -> np.ndarray:
            return segment_nuclei(block, diameter_px=DIAMETER_PX, params=params)

        started = time.perf_counter()
        whole = kernel(plane)
        seconds_whole = time.perf_counter() - started
        for chunk in args.chunks:
            started = time.perf_counter()
            labels = segment_large(da.from_array(plane, chunks=chunk), kernel, halo=halo)
            with dask.config.set(scheduler="threads", num_workers=args.workers):
                stitched = labels.compute()
            row = {"kernel": kernel_name, "chunk": chunk, "halo": halo, "threshold": params.threshold,
                   "seconds_whole": round(seconds_whole, 1),
                   "seconds_stitched": round(time.perf_counter() - started, 1)}
            row.update(agreement(whole, stitched, chunk))
            rows.append(row)
            print(_line(row), flush=True)
    return {
        "bar": f">= {BAR:.1%} of whole-plane objects identical", "size": args.size, "seed": args.seed,
        "plane": how,
        "diameter_px": DIAMETER_PX, "workers": args.workers,
        "seconds_synthesis": None if seconds_synth is None else round(seconds_synth, 1),
        "rows": rows, "passes_bar": {f"{r['kernel']}/{r['chunk']}": r["identical_fraction"] >= BAR for r in rows},
        "cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
    }


HEADER = (f"{'kernel':8} {'chunk':>5} {'objects':>7} {'identical':>9} {'IoU>0.9':>8} {'crossing':>8} "
          f"{'ident.cross':>11} {'cut':>4} {'dup':>4} {'stitched':>8} {'t_whole':>7} {'t_stitch':>8}")


def _line(r: dict[str, Any]) -> str:
    return (f"{r['kernel']:8} {r['chunk']:5d} {r['objects_whole']:7d} {r['identical_fraction']:9.2%} "
            f"{r['iou_gt_0.9_fraction']:8.2%} {r['objects_crossing_borders']:8d} "
            f"{r['identical_fraction_crossing']:11.2%} {r['cut']:4d} {r['duplicated']:4d} "
            f"{r['objects_stitched']:8d} {r['seconds_whole']:7.1f} {r['seconds_stitched']:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--density", type=int, default=960, help="nuclei_per_field (mean nuclei per 1024^2)")
    parser.add_argument("--tile", action="store_true", help="tile 1024^2 fields instead of one large field")
    parser.add_argument("--cache", type=Path, help="a .npy file to reuse the plane from (written if missing)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(HEADER, flush=True)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
