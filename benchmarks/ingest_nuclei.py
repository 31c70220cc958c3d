"""Time the ingest of the real nuclei pairs (``shared/data/nuclei``) into a screen store.

Prints one row per scheduler (wall seconds, fields, files, MB of pixels read) and writes
the same as JSON. Usage::

    python benchmarks/ingest_nuclei.py [--root PATH] [--repeat N] [--json PATH] [--distributed]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cellflow.screen import Screen
from cellflow.screen.ingest import ingest_nuclei_pairs

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei"


def _time_one(root: Path, scheduler: Any, repeat: int) -> dict[str, Any]:
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = ingest_nuclei_pairs(root, Path(tmp) / "nuclei.zarr", scheduler=scheduler)
            times.append(time.perf_counter() - start)
            extent = Screen(report.store).dataset()
            pixels = int((extent.extent_y * extent.extent_x).sum())
    return {
        "seconds_median": float(np.median(times)), "seconds_all": times, "fields": report.n_fields_ingested,
        "files": report.n_files, "failed": len(report.failed), "megapixels": pixels / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "ingest_nuclei.json")
    parser.add_argument("--distributed", action="store_true", help="also time a 2-process LocalCluster")
    args = parser.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    for name in ("sync", "threads"):
        rows[name] = _time_one(args.root, name, args.repeat)
    if args.distributed:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            rows["distributed-2proc"] = _time_one(args.root, client, args.repeat)
    print(f"{'scheduler':<20}{'seconds':>10}{'fields':>8}{'files':>7}{'Mpx':>8}{'failed':>8}")
    for name, row in rows.items():
        print(f"{name:<20}{row['seconds_median']:>10.2f}{row['fields']:>8}{row['files']:>7}"
              f"{row['megapixels']:>8.1f}{row['failed']:>8}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "python": platform.python_version(), "root": str(args.root),
            "repeat": args.repeat}
    args.json.write_text(json.dumps({"benchmark": "ingest_nuclei", **meta, "results": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
