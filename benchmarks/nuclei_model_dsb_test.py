"""Score `cellflow segment` on the 53 grey fluorescence images of dsb2018_stage1_test.

    python benchmarks/nuclei_model_dsb_test.py --model runs/nuclei-model/model.pt [--root ../shared/data/nuclei]

The images are copied into a temporary folder and segmented with the CLI exactly as a
user would (`cellflow segment IN OUT --model CKPT` and `--classical`); every label TIFF is
scored against its mask (Caicedo 2019: average F1 over IoU 0.50..0.90, F1@0.7).
Prints a table and writes benchmarks/results/nuclei_model_dsb_test.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import tifffile

from cellflow.metrics import score_field

RESULTS = Path(__file__).resolve().parent / "results" / "nuclei_model_dsb_test.json"


def _images(root: Path) -> list[dict[str, str]]:
    with open(root / "index.csv") as f:
        rows = [r for r in csv.DictReader(f)
                if r["source"] == "dsb2018_stage1_test" and r["modality"] == "fluorescence (gray)"]
    return rows


def _segment(folder: Path, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "cellflow.cli", "segment", str(folder), str(out), "--workers", "2", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _score(rows: list[dict[str, str]], root: Path, out: Path) -> dict[str, Any]:
    scores = [score_field(iio.imread(root / r["mask"]), tifffile.imread(out / f"{Path(r['image']).stem}.tif"))
              for r in rows]
    groups: dict[str, list[float]] = {}
    for r, s in zip(rows, scores, strict=True):
        groups.setdefault(f"{r['height']}x{r['width']}", []).append(s.f1_mean)
    return {
        "avg_f1": float(np.mean([s.f1_mean for s in scores])),
        "f1_0.5": float(np.mean([s.f1[0] for s in scores])),
        "f1_0.7": float(np.mean([s.f1[4] for s in scores])),
        "merges": int(sum(s.merges for s in scores)),
        "splits": int(sum(s.splits for s in scores)),
        "avg_f1_by_size": {k: {"images": len(v), "avg_f1": float(np.mean(v))} for k, v in sorted(groups.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path("../shared/data/nuclei"))
    parser.add_argument("--no-classical", action="store_true", help="score the model only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args()
    rows = _images(args.root)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dsb_test_grey"
        folder.mkdir()
        for r in rows:
            shutil.copy(args.root / r["image"], folder)
        methods = [("model", ["--model", str(args.model)]), ("classical", ["--classical"])]
        for name, extra in methods[: 1 if args.no_classical else 2]:
            out = Path(tmp) / name
            seconds = _segment(folder, out, extra)
            results[name] = {**_score(rows, args.root, out), "seconds": seconds}
    print(f"{'method':10s} {'avgF1':>6s} {'F1@.5':>6s} {'F1@.7':>6s} {'merges':>6s} {'splits':>6s} {'sec':>6s}")
    for name, r in results.items():
        print(f"{name:10s} {r['avg_f1']:6.3f} {r['f1_0.5']:6.3f} {r['f1_0.7']:6.3f} {r['merges']:6d} "
              f"{r['splits']:6d} {r['seconds']:6.1f}")
    sizes = list(results["model"]["avg_f1_by_size"])
    print("avg F1 by image size: " + "; ".join(
        f"{k} ({results['model']['avg_f1_by_size'][k]['images']}): "
        + " / ".join(f"{r['avg_f1_by_size'][k]['avg_f1']:.3f}" for r in results.values()) for k in sizes)
        + f"  ({' / '.join(results)})")
    args.out.write_text(json.dumps({"images": len(rows), "model": str(args.model), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
