"""The live plate view: per-well progress and running cell counts, beside the Dask dashboard.

While a run computes, :class:`PlateView` rewrites two files in the run's table folder
(atomically, at most every ``interval_s`` seconds, and once at the end):

* ``progress.json``: per stage the units done / skipped / quarantined / total; per
  plate and well the fields finished by the last stage, the fields quarantined, and
  the running object counts summed from the stages' rows (``nuclei``, ``cells``,
  ``objects``, ``n_objects``).
* ``progress.html``: the same as a page with one plate map per plate (wells coloured
  by completion, red where a field is quarantined, the cell count written in each
  well) that reloads itself every few seconds. It is a static file: no server, no
  port, so nothing listens beyond what the Dask dashboard already does.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellflow._files import write_text_atomic
from cellflow.graph import TaskResult
from cellflow.pipeline.resume import Unit
from cellflow.screen.layout import well_position
from cellflow.screen.store import Screen

__all__ = ["COUNT_COLUMNS", "PlateView"]

_log = logging.getLogger(__name__)

#: Row columns summed into a well's running object counts.
COUNT_COLUMNS = ("nuclei", "cells", "objects", "n_objects")

def _position(well: str) -> tuple[int, int] | None:
    """(row, column) of a plate well name, None for other names (an image folder's)."""
    try:
        return well_position(well)
    except ValueError:
        return None


class PlateView:
    """Progress per well of a running screen, written as JSON and a self-refreshing HTML page."""

    def __init__(self, screen: Screen, stages: Sequence[Any], out_dir: Path, *, dashboard: str | None = None,
                 interval_s: float = 2.0) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.json_path = out_dir / "progress.json"
        self.html_path = out_dir / "progress.html"
        self.dashboard = dashboard
        self.interval_s = interval_s
        self.last_stage = stages[-1].name if stages else None
        self.stage_counts = {s.name: {"units": len(s.plan.units), "skipped": len(s.plan.skipped), "done": 0,
                                      "quarantined": 0} for s in stages}
        self.total: dict[tuple[str, str], int] = defaultdict(int)
        for key in screen.fields():
            self.total[(key.plate, key.well)] += 1
        self.finished: dict[tuple[str, str], int] = defaultdict(int)
        self.failed: dict[tuple[str, str], int] = defaultdict(int)
        self.counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for stage in stages:
            for unit, result in stage.plan.skipped:
                self._add(stage.name, unit, result, skipped=True)
        self._written = 0.0
        self.write_error: str | None = None  # the first failure to write the view, if any
        self._write()

    def _add(self, stage: str, unit: Unit, result: TaskResult, *, skipped: bool = False) -> None:
        for row in result.rows:
            if "plate" in row and "well" in row:
                well = (str(row["plate"]), str(row["well"]))
                for column in COUNT_COLUMNS:
                    if isinstance(row.get(column), (int, float)):
                        self.counts[well][f"{stage}.{column}"] += int(row[column])
        if stage != self.last_stage:
            return
        for key in unit.fields:
            target = self.failed if result.error is not None else self.finished
            target[(key.plate, key.well)] += 1

    def update(self, stage: str, unit: Unit, result: TaskResult) -> None:
        """Account for a finished unit; rewrite the files if ``interval_s`` has passed."""
        counts = self.stage_counts[stage]
        counts["quarantined" if result.error is not None else "done"] += 1
        self._add(stage, unit, result)
        if time.monotonic() - self._written >= self.interval_s:
            self._write()

    def finish(self) -> None:
        """Write the final state."""
        self._write(final=True)

    def snapshot(self) -> dict[str, Any]:
        """What ``progress.json`` holds."""
        wells = [
            {"plate": plate, "well": well, "fields": total, "finished": self.finished[(plate, well)],
             "quarantined": self.failed[(plate, well)], "counts": dict(self.counts[(plate, well)])}
            for (plate, well), total in sorted(self.total.items())
        ]
        return {"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dashboard": self.dashboard,
                "stages": self.stage_counts, "wells": wells}

    def _write(self, *, final: bool = False) -> None:
        """Rewrite the files; a view that cannot be written (disk full) never stops the run it watches."""
        snapshot = self.snapshot()
        try:
            write_text_atomic(self.json_path, json.dumps(snapshot, indent=1))
            write_text_atomic(self.html_path, _page(snapshot, refresh=not final))
        except OSError as error:
            if self.write_error is None:
                _log.warning("plate view %s not updated: %s", self.html_path, error)
            self.write_error = f"{type(error).__name__}: {error}"
        self._written = time.monotonic()




def _colour(well: dict[str, Any]) -> str:
    if well["quarantined"]:
        return "#e45756"
    if not well["fields"]:
        return "#eeeeee"
    done = (well["finished"]) / well["fields"]
    shade = int(235 - 150 * done)
    return f"rgb({shade},{int(235 - 60 * done)},{shade})"


def _page(snapshot: dict[str, Any], *, refresh: bool) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cellflow plate view</title>",
        "<meta http-equiv='refresh' content='5'>" if refresh else "",
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 4px;font-size:11px;text-align:center;min-width:34px}"
        "</style></head><body>",
        f"<h1>cellflow plate view</h1><p>updated {esc(snapshot['updated'])}"
        + ("" if refresh else " (run finished)") + "</p>",
    ]
    if snapshot["dashboard"]:
        parts.append(f"<p>Dask dashboard: <a href='{esc(snapshot['dashboard'])}'>{esc(snapshot['dashboard'])}</a></p>")
    parts.append("<table><tr><th>stage</th><th>done</th><th>done before</th><th>quarantined</th><th>units</th></tr>")
    for name, c in snapshot["stages"].items():
        parts.append(f"<tr><td>{esc(name)}</td><td>{c['done']}</td><td>{c['skipped']}</td>"
                     f"<td>{c['quarantined']}</td><td>{c['units']}</td></tr>")
    parts.append("</table>")
    by_plate: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for well in snapshot["wells"]:
        by_plate[well["plate"]].append(well)
    for plate, wells in by_plate.items():
        placed = {_position(w["well"]): w for w in wells}
        parts.append(f"<h2>plate {esc(plate)}</h2>")
        if None in placed or not placed:
            parts.append("<table>" + "".join(
                f"<tr><td>{esc(w['well'])}</td><td style='background:{_colour(w)}'>{w['finished']}/{w['fields']}"
                f"</td><td>{_count_text(w)}</td></tr>" for w in wells) + "</table>")
            continue
        rows = max(p[0] for p in placed if p) + 1
        cols = max(p[1] for p in placed if p) + 1
        parts.append("<table><tr><th></th>" + "".join(f"<th>{c + 1}</th>" for c in range(cols)) + "</tr>")
        for r in range(rows):
            cells = []
            for c in range(cols):
                w = placed.get((r, c))
                if w is None:
                    cells.append("<td></td>")
                else:
                    title = esc(f"{w['well']}: {w['finished']}/{w['fields']} fields, {w['quarantined']} quarantined")
                    cells.append(f"<td title='{title}' style='background:{_colour(w)}'>{_count_text(w)}</td>")
            parts.append(f"<tr><th>{chr(ord('A') + r) if r < 26 else r + 1}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _count_text(well: dict[str, Any]) -> str:
    counts = well["counts"]
    cells = [v for k, v in counts.items() if k.endswith(".cells")] or [v for k, v in counts.items()
                                                                        if k.endswith(".nuclei")]
    return str(max(cells)) if cells else ""
