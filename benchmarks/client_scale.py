"""What the run's client holds for a store of N fields: the task logs and the tables' rows.

    python benchmarks/client_scale.py [--units 10000 30000 100000] [--shape 520 696] [--nuclei 600]

A resumed or finishing ``cellflow run`` reads each stage's task log (the last line of every
unit: its token, chunk records and table rows), holds each unit's rows by where they lie in
the log (:class:`~cellflow.pipeline.resume.RowsInLog`, as it holds the rows of units done in
the run), then writes each stage's tables a plate at a time: one plate's rows read back and
parsed, the plates' frames joined, the tables made from them (:mod:`cellflow.pipeline.tables`).
This measures that part alone, at sizes no test could run: real ``done`` lines of the
autolabel and measure stages (from a small synthetic cell-cycle plate run here, 16 fields of
``--shape`` with ``--nuclei`` per 1024² field: ~200 nuclei per 520x696 field) are repeated
under new field names into task logs of N units each, spread over plates of 1536 fields (384
wells x 4 sites); then, in a fresh process per N, :meth:`TaskLog.load` and the tables
(:func:`~cellflow.pipeline.tables.write_tables` with the measure writer) run as the runner
calls them. Prints load and table seconds and the process's peak RSS per N (its VmHWM: the
imports are ~0.4 GiB of it), and the extrapolation to 10^6 fields; writes
benchmarks/results/client_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "client_scale.json"
STAGES = ("autolabel", "measure")


def _source_lines(root: Path, shape: tuple[int, int], nuclei: int) -> dict[str, list[dict]]:
    """``done`` entries of a real 16-field run, per stage."""
    from cellflow.pipeline import parse_spec, run_spec

    wells = ["A01", "A02", "B01", "B02"]
    spec = parse_spec({
        "name": "client-scale-source",
        "input": {"store": str(root / "source.zarr"), "synthetic": {
            "wells": wells, "sites": 4, "shape_yx": list(shape), "channels": ["DNA", "Cyto"], "n_z": 1,
            "nuclei_per_field": nuclei, "seed": 3}},
        "stages": {"illumination": {"method": "median", "object_px": 48},
                   "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
                   "measure": {"labels": ["labels_nuclei", "labels_cells"], "dna_channel": "DNA", "z": "mean",
                               "controls": {"positive": ["A01", "A02"], "negative": ["B01", "B02"]}}},
        "output": {"tables": str(root / "source-tables")},
        "cluster": {"kind": "threads"},
    })
    result = run_spec(spec, progress=False)
    assert result.status == "ok", result.error
    tasks = root / "source.zarr" / "_cellflow" / "tasks"
    return {stage: [e for e in map(json.loads, (tasks / f"{stage}.jsonl").read_text().splitlines())
                    if e["status"] == "done"] for stage in STAGES}


def _write_logs(folder: Path, source: dict[str, list[dict]], units: int) -> int:
    """Task logs of ``units`` fields per stage (a pending and a done line each, as a run writes them)."""
    tasks = folder / "_cellflow" / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    size = 0
    for stage, entries in source.items():
        with open(tasks / f"{stage}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(units):
                entry = json.loads(json.dumps(entries[i % len(entries)]))
                plate, site = f"P{i // 1536:04d}", i % 4
                well = f"{'ABCDEFGHIJKLMNOP'[(i // 4) % 16]}{(i // 64) % 24 + 1:02d}"
                entry["unit"] = f"{plate}/{well}/{site}/0"
                for row in entry["rows"]:
                    row.update(plate=plate, well=well, site=site)
                handle.write(json.dumps({"unit": entry["unit"], "status": "pending", "token": entry["token"]}) + "\n")
                handle.write(json.dumps(entry) + "\n")
        size += (tasks / f"{stage}.jsonl").stat().st_size
    return size


def _measure(folder: Path) -> dict:
    """In this (fresh) process: load every stage's log and write the measure tables from its rows."""
    from cellflow.graph import measure
    from cellflow.graph._tables import StageTables
    from cellflow.pipeline.resume import TaskLog, Unit, entry_result
    from cellflow.pipeline.spec import parse_spec
    from cellflow.pipeline.tables import write_tables

    class _Store:  # TaskLog needs only the store's path
        path = folder

    spec = parse_spec({"name": "x", "input": {"store": str(folder)}, "output": {"tables": str(folder / "tables")},
                       "stages": {"measure": {"labels": ["labels_nuclei", "labels_cells"], "dna_channel": "DNA",
                                              "controls": {"positive": ["A01", "A02"], "negative": ["B01", "B02"]}}}})
    start = time.perf_counter()
    results = []
    for stage in STAGES:
        for unit_id, entry in TaskLog(_Store(), stage).load().items():  # type: ignore[arg-type]
            results.append(entry_result(stage, Unit(unit_id, (), entry["token"]), entry))
    load_s = time.perf_counter() - start
    calls = []  # rows per call of the measure writer's first step: one call per plate, none with all the rows
    steps = measure.MEASURE_TABLES
    measure.MEASURE_TABLES = StageTables(lambda rows: calls.append(len(rows)) or steps.frames(rows), steps.write)
    start = time.perf_counter()
    tables, _ = write_tables(spec, results, folder / "tables")
    tables_s = time.perf_counter() - start
    return {"load_s": load_s, "tables_s": tables_s, "units_loaded": len(results),
            "field_rows": len(tables["measurements/fields"]), "plates": len(set(tables["measurements/fields"].plate)),
            "rows_per_frames_call_max": max(calls), "frames_calls": len(calls),
            "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (on Linux, ru_maxrss keeps the parent's peak through fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--shape", type=int, nargs=2, default=(520, 696))
    parser.add_argument("--nuclei", type=int, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_measure(args.child)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = _source_lines(Path(tmp), tuple(args.shape), args.nuclei)
        for n in args.units:
            folder = Path(tmp) / f"n{n}.zarr"
            log_bytes = _write_logs(folder, source, n)
            child = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True, text=True,
                                   check=True)
            rows.append({"units_per_stage": n, "log_mib": log_bytes / 2**20,
                         **json.loads(child.stdout.strip().splitlines()[-1])})
    print(f"{'fields':>9}{'log MiB':>9}{'load s':>8}{'tables s':>10}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['units_per_stage']:>9}{r['log_mib']:>9.0f}{r['load_s']:>8.1f}{r['tables_s']:>10.1f}"
              f"{r['peak_rss_mib']:>14.0f}")
    if len(rows) >= 2:  # linear in N: the slope between the two largest sizes, carried to 10^6 fields
        a, b = rows[-2], rows[-1]
        dn = b["units_per_stage"] - a["units_per_stage"]
        per_field = {k: (b[k] - a[k]) / dn for k in ("load_s", "tables_s", "peak_rss_mib")}
        million = {k: b[k] + v * (1_000_000 - b["units_per_stage"]) for k, v in per_field.items()}
        print(f"per extra field: {1e6 * per_field['load_s']:.0f} µs load, {1e6 * per_field['tables_s']:.0f} µs "
              f"tables, {1024 * per_field['peak_rss_mib']:.1f} KiB; 10^6 fields: ~{million['load_s']:.0f} s load, "
              f"~{million['tables_s']:.0f} s tables, ~{million['peak_rss_mib'] / 1024:.1f} GiB")
        summary = {"sizes": rows, "per_field": per_field, "extrapolated_1e6": million}
    else:
        summary = {"sizes": rows}
    summary["source"] = {"shape_yx": list(args.shape), "nuclei_per_1024": args.nuclei,
                         "log_bytes_per_field": rows[-1]["log_mib"] * 2**20 / rows[-1]["units_per_stage"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
