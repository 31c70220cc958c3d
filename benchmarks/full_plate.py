"""A whole plate the way a screen runs it: `cellflow run` from the command line, then again.

    python benchmarks/full_plate.py [--wells 384] [--sites 4] [--shape 520 696] [--workers 2]

A synthetic cell-cycle plate (DNA + Cyto; column 1 arrested in G2 as the positive control,
column 24 the negative) of ``wells x sites`` fields goes through illumination correction,
automatic nuclei and cells, and per-object measurements, as ``cellflow run SPEC`` in a
subprocess on a local cluster of ``--workers`` single-threaded workers. Then the same
command again, which must find everything done (the scheduled job that runs every night
over a plate already finished). Prints and writes (benchmarks/results/full_plate.json):

* each run's wall time, its phases (input = synthesis, build, compute) and fields per hour,
* the peak resident memory of the largest process of each run (client or worker),
* the status, quarantined fields, the Z' of each assay readout, the report's size,
* the task log's bytes per field (what a store of 10^6 fields would hold).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

RESULTS = Path(__file__).resolve().parent / "results" / "full_plate.json"
ROWS = "ABCDEFGHIJKLMNOP"


def _spec(root: Path, wells: list[str], sites: int, shape: tuple[int, int], workers: int) -> dict:
    positive = [w for w in wells if w.endswith("01")]
    negative = [w for w in wells if w.endswith(f"{max(int(w[1:]) for w in wells):02d}")]
    return {
        "name": "full-plate",
        "input": {"store": str(root / "screen.zarr"), "synthetic": {
            "plates": ["P1"], "wells": wells, "sites": sites, "shape_yx": list(shape), "channels": ["DNA", "Cyto"],
            "n_z": 1, "nuclei_per_field": 300, "g2_fraction": 0.2, "g2_fraction_by_well": dict.fromkeys(positive, 0.6),
            "seed": 11}},
        "stages": {
            "illumination": {"method": "median", "object_px": 48},
            "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
            "measure": {"labels": ["labels_nuclei", "labels_cells"], "dna_channel": "DNA", "z": "mean",
                        "controls": {"positive": positive, "negative": negative}, "ploidy": {"threshold": 1.5}},
        },
        "output": {"tables": str(root / "tables")},
        "cluster": {"kind": "local", "n_workers": workers, "threads_per_worker": 1,
                    "dashboard_address": "127.0.0.1:0"},
    }


def _run(spec_path: Path) -> dict:
    """`cellflow run SPEC` in a child process: wall seconds, exit code, peak RSS of its largest process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cellflow", "run", str(spec_path), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": time.perf_counter() - start, "exit": child.returncode,
            "peak_rss_mib": usage.ru_maxrss / 1024, "output": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wells", type=int, default=384)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=2, default=(520, 696))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    columns = 24 if args.wells > 96 else 12
    wells = [f"{ROWS[i // columns]}{i % columns + 1:02d}" for i in range(args.wells)]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec_path = root / "full-plate.yaml"
        spec_path.write_text(yaml.safe_dump(_spec(root, wells, args.sites, tuple(args.shape), args.workers)))
        runs = [_run(spec_path)]
        first = json.loads((root / "tables" / "run.json").read_text())
        runs.append(_run(spec_path))
        again = json.loads((root / "tables" / "run.json").read_text())
        zprime = pd.read_parquet(root / "tables" / "measurements" / "zprime.parquet")
        logs = sorted((root / "screen.zarr" / "_cellflow" / "tasks").glob("*.jsonl"))
        log_bytes = sum(p.stat().st_size for p in logs)
        report_bytes = (root / "tables" / "report.html").stat().st_size
    n_fields = args.wells * args.sites
    summary = {
        "wells": args.wells, "sites": args.sites, "fields": n_fields, "shape_yx": list(args.shape),
        "workers": args.workers,
        "first": {"wall_s": runs[0]["wall_s"], "exit": runs[0]["exit"], "status": first.get("status"),
                  "seconds": first.get("seconds"), "quarantined": len(first.get("quarantined", [])),
                  "fields_per_hour": 3600 * n_fields / runs[0]["wall_s"], "peak_rss_mib": runs[0]["peak_rss_mib"]},
        "again": {"wall_s": runs[1]["wall_s"], "exit": runs[1]["exit"], "status": again.get("status"),
                  "seconds": again.get("seconds"), "peak_rss_mib": runs[1]["peak_rss_mib"],
                  "nothing_to_do": "nothing to do" in runs[1]["output"]},
        "zprime": {f"{r.labels}/{r.readout}": round(float(r.z_prime), 3) for r in zprime.itertuples()},
        "task_log_bytes_per_field": log_bytes / n_fields,
        "report_mib": report_bytes / 2**20,
    }
    print(f"{n_fields} fields ({args.wells} wells x {args.sites} sites) of {args.shape[0]}x{args.shape[1]} px, "
          f"DNA + Cyto; illumination, autolabel (nuclei, cells), measure; {args.workers} workers")
    print(f"{'run':<8}{'exit':>5}{'wall s':>9}{'input s':>9}{'compute s':>11}{'fields/h':>10}{'peak RSS MiB':>14}")
    for name, run in (("first", summary["first"]), ("again", summary["again"])):
        seconds = run["seconds"] or {}
        rate = f"{run.get('fields_per_hour', 0):>10.0f}" if "fields_per_hour" in run else f"{'-':>10}"
        print(f"{name:<8}{run['exit']:>5}{run['wall_s']:>9.1f}{seconds.get('input', 0):>9.1f}"
              f"{seconds.get('compute', 0):>11.1f}{rate}{run['peak_rss_mib']:>14.0f}")
    print(f"status {summary['first']['status']}, quarantined {summary['first']['quarantined']}; "
          f"second run: {summary['again']['status']}, nothing to do: {summary['again']['nothing_to_do']}")
    print("Z': " + ", ".join(f"{k} {v:.2f}" for k, v in summary["zprime"].items()))
    print(f"task log {summary['task_log_bytes_per_field']:.0f} bytes per field; report {summary['report_mib']:.1f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
