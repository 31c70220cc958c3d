"""SIGKILL `cellflow run` at random points and resume: the final store must equal a clean run's.

    python benchmarks/kill_resume.py [--kills 5] [--seed 0] [--sites 6] [--workdir /tmp/cellflow-kill]

Each kill comes after a random number of further unit starts (read from the store's
``started.log``), so it lands mid-compute rather than during start-up.

A clean run of a small synthetic plate (illumination -> autolabel -> score, threaded
scheduler) gives the reference. Then the same spec is started as a subprocess in a fresh
folder, killed with SIGKILL after a random delay, and started again, ``--kills`` times,
and finally run to completion. For every kill it counts, from the store's task logs:

* ``in_flight``: units started but not recorded done when the process died;
* ``redone_done``: units recorded done before the kill that the next attempt recomputed
  (must be 0);
* ``redone``: units the next attempt recomputed that an earlier attempt had started
  (must be <= in_flight).

At the end every output chunk's digest (re-hashed from the bytes on disk) and the score
table must equal the clean run's. Prints a table; writes benchmarks/results/kill_resume.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cellflow.screen import Screen
from cellflow.screen.store import chunk_digest

RESULTS = Path(__file__).resolve().parent / "results" / "kill_resume.json"
OUTPUTS = ("illumination", "labels_nuclei", "labels_cells")


def _spec(folder: Path, sites: int) -> Path:
    spec = {
        "name": "kill-resume",
        "input": {"store": str(folder / "plate.zarr"),
                  "synthetic": {"wells": ["A01", "A02", "B01"], "sites": sites, "shape_yx": [256, 320], "n_z": 1,
                                "seed": 11}},
        "stages": {
            "illumination": {"method": "polynomial"},
            "autolabel": {"nuclear_channel": "DNA", "cytoplasm_channel": "Cyto", "diameter_um": 16},
            "score": {"pairs": [["truth_nuclei", "labels_nuclei"], ["truth_cells", "labels_cells"]]},
        },
        "output": {"tables": str(folder / "tables")},
        "cluster": {"kind": "threads"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "cellflow.cli", "run", str(spec), "--no-progress"]


def _digests(store: Path) -> dict[str, np.ndarray]:
    screen = Screen.open(store)
    out = {}
    for name in OUTPUTS:
        array = screen._array(name)
        grid = screen.ledger(name).grid_shape
        digests = np.zeros(grid, np.uint64)
        for index in np.ndindex(*grid):
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, array.chunks, array.shape))
            digests[index] = chunk_digest(np.asarray(array[region]))
        out[name] = digests
    return out


def _log_state(store: Path) -> tuple[set[str], set[str], list[set[str]]]:
    """(units ever started, units whose last line is done, pending sets in order of the attempts)."""
    tasks = store / "_cellflow" / "tasks"
    started = set()
    if (tasks / "started.log").exists():
        started = {line.strip() for line in (tasks / "started.log").read_text().splitlines() if line.strip()}
    done: set[str] = set()
    for log in tasks.glob("*.jsonl"):
        latest: dict[str, str] = {}
        for line in log.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            entry = json.loads(line)
            latest[entry["unit"]] = entry["status"]
        done |= {f"{log.stem} {unit}" for unit, status in latest.items() if status == "done"}
    return started, done, []


def _pending_lines(store: Path) -> list[str]:
    lines = []
    for log in sorted((store / "_cellflow" / "tasks").glob("*.jsonl")):
        for line in log.read_text().splitlines(keepends=True):
            if line.endswith("\n") and '"pending"' in line:
                lines.append(f"{log.stem} {json.loads(line)['unit']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellflow-kill"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)

    clean_spec = _spec(args.workdir / "clean", args.sites)
    start = time.perf_counter()
    subprocess.run(_command(clean_spec), check=True, stdout=subprocess.DEVNULL)
    clean_s = time.perf_counter() - start
    reference = _digests(args.workdir / "clean" / "plate.zarr")
    reference_table = pd.read_parquet(args.workdir / "clean" / "tables" / "labels_nuclei" / "scores_fields.parquet")

    spec = _spec(args.workdir / "killed", args.sites)
    store = args.workdir / "killed" / "plate.zarr"
    rows = []
    done_before: set[str] = set()
    ever_started: set[str] = set()
    seen_pending = 0
    total_units = len(_log_state(args.workdir / "clean" / "plate.zarr")[1])
    started_log = store / "_cellflow" / "tasks" / "started.log"
    for attempt in range(args.kills):
        # a random point: after a random number of further unit starts, so every kill lands mid-compute
        before = len(started_log.read_text().splitlines()) if started_log.exists() else 0
        remaining = total_units - len(done_before)
        target = before + int(rng.integers(1, max(remaining, 2)))
        begin = time.perf_counter()
        process = subprocess.Popen(_command(spec), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and time.perf_counter() - begin < 600:
            if started_log.exists() and len(started_log.read_text().splitlines()) >= target:
                break
            time.sleep(0.01)
        delay = time.perf_counter() - begin
        finished = process.poll() is not None
        if not finished:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        started, done, _ = _log_state(store) if store.exists() else (set(), set(), [])
        pending = _pending_lines(store) if store.exists() else []
        this_attempt = set(pending[seen_pending:])  # what this attempt set out to (re)compute
        seen_pending = len(pending)
        rows.append({
            "attempt": attempt + 1, "killed_after_s": round(delay, 2), "finished_before_kill": finished,
            "planned": len(this_attempt),
            "redone_done": len(this_attempt & done_before),
            "redone": len(this_attempt & ever_started),
            "in_flight_at_kill": len(started - done),
            "done_after": len(done),
        })
        done_before, ever_started = done, ever_started | started
    final = subprocess.run(_command(spec), stdout=subprocess.DEVNULL)
    started, done, _ = _log_state(store)
    pending = _pending_lines(store)
    last = set(pending[seen_pending:])
    rows.append({"attempt": "final", "killed_after_s": None, "finished_before_kill": True, "planned": len(last),
                 "redone_done": len(last & done_before), "redone": len(last & ever_started),
                 "in_flight_at_kill": 0, "done_after": len(done)})
    digests = _digests(store)
    equal = {name: bool(np.array_equal(digests[name], reference[name])) for name in OUTPUTS}
    table = pd.read_parquet(args.workdir / "killed" / "tables" / "labels_nuclei" / "scores_fields.parquet")
    tables_equal = bool(table.equals(reference_table))
    # each resume recomputes at most what was in flight when the previous attempt died
    bounded = all(r["redone"] <= prev["in_flight_at_kill"] for prev, r in itertools.pairwise(rows)) and all(
        r["redone_done"] == 0 for r in rows)

    print(f"clean run: {clean_s:.1f} s; units per run: {len(done)}")
    print(f"{'attempt':>8} {'kill@s':>7} {'planned':>7} {'redone':>6} {'redone_done':>11} {'in_flight':>9} {'done':>5}")
    for r in rows:
        kill = "-" if r["killed_after_s"] is None else f"{r['killed_after_s']:.2f}"
        print(f"{r['attempt']!s:>8} {kill:>7} {r['planned']:>7} {r['redone']:>6} {r['redone_done']:>11} "
              f"{r['in_flight_at_kill']:>9} {r['done_after']:>5}")
    print(f"final exit status {final.returncode}; chunks equal to the clean run: {equal}; "
          f"tables equal: {tables_equal}; recomputation bounded by in-flight: {bounded}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "clean_seconds": clean_s, "units": len(done), "attempts": rows, "chunks_equal": equal,
        "tables_equal": tables_equal, "bounded": bounded, "final_exit": final.returncode,
        "cpu_count": os.cpu_count(), "command": " ".join(sys.argv),
    }, indent=2))
    print(f"wrote {RESULTS}")
    if not (all(equal.values()) and tables_equal and bounded and final.returncode == 0):
        sys.exit(1)


if __name__ == "__main__":
    main()
