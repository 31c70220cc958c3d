"""Build a run's HTML report from its ``run.json``, its Parquet tables and its screen store.

:func:`build_report` reads what a run left behind and writes ``<run_dir>/report.html``.
Every section is optional: a key missing from ``run.json`` (older runners wrote only
``spec, store, screen_id, tasks, chunks_recorded, seconds, tables``), a table not written or
a store moved away makes its section say so instead of failing the report.

Sadanandan curve. The score tables hold per-field scores only, so per-cell F-scores
(each true object's best pixel F-score, Sadanandan et al. 2017) are recomputed from the
store's truth and prediction labels for up to ``max_score_fields`` fields per scored pair
(evenly spaced over the fields); without the store, the curve falls back to per-field
``f1_mean`` from the field score table, and the section says which was drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cellflow._files import write_text_atomic
from cellflow.errors import CellflowError
from cellflow.report import plots
from cellflow.report.html import FigureView, Section, TableView, render_report, table_view

__all__ = ["ReportError", "build_report", "load_summary"]

NOT_RECORDED = "not recorded"
_STAGE_COLUMNS = ("tasks", "done", "skipped", "quarantined", "seconds", "chunks_written", "fields_per_s")
_MAX_HEATMAPS = 8
_CLUSTER_KEYS = ("kind", "workers", "n_workers", "threads_per_worker", "address")


class ReportError(CellflowError, ValueError):
    """A run folder cannot be reported on (no or unreadable ``run.json``)."""


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``run_dir/run.json``.

    Raises
    ------
    ReportError
        ``run_dir`` holds no ``run.json``, or it is not a JSON object.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ReportError(
            f"{Path(run_dir)} holds no run.json; give the run's output.tables folder (where `cellflow run` "
            "wrote run.json)"
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path} must hold a JSON object, got {type(summary).__name__}")
    return summary


def _figure(title: str, make: Callable[[], Any], caption: str = "") -> FigureView:
    figure = make()
    return FigureView(title=title, png=plots.png_bytes(figure), caption=caption)


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` when it is a mapping, else an empty one (a key not recorded)."""
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# ------------------------------------------------------------------ header, stages, quarantine
def _header(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    seconds = _mapping(summary, "seconds")
    total = seconds.get("total", sum(float(v) for v in seconds.values() if isinstance(v, (int, float))) or None)
    cluster = _mapping(summary, "cluster")
    cluster_text = ", ".join(f"{k} {cluster[k]}" for k in _CLUSTER_KEYS if cluster.get(k) is not None) or None
    spec = _mapping(summary, "spec")
    why = [("why it stopped", _text(summary["error"]))] if summary.get("error") else []  # failed, interrupted
    return [
        *why,
        ("run", _text(summary.get("run_id"))),
        ("spec", _text(spec.get("name")) + (f" ({summary['spec_path']})" if summary.get("spec_path") else "")),
        ("exit code", _text(summary.get("exit_code"))),
        ("started", _text(summary.get("started"))),
        ("finished", _text(summary.get("finished"))),
        ("total seconds", _text(None if total is None else float(total))),
        ("store", _text(summary.get("store"))),
        ("screen id", _text(summary.get("screen_id"))),
        ("cluster", _text(cluster_text)),
        ("dashboard", _text(summary.get("dashboard"))),
    ]


def _stages_section(summary: Mapping[str, Any]) -> Section:
    tables: list[TableView] = []
    notes: list[str] = []
    stages = summary.get("stages")
    if isinstance(stages, Mapping) and stages:
        rows = [{"stage": name, **{c: info.get(c) for c in _STAGE_COLUMNS}} for name, info in stages.items()
                if isinstance(info, Mapping)]
        tables.append(table_view(pd.DataFrame(rows), "Per stage: tasks, outcomes, time, throughput"))
    elif isinstance(summary.get("tasks"), Mapping):
        rows = [{"stage": k, "tasks": v} for k, v in summary["tasks"].items()]
        tables.append(table_view(pd.DataFrame(rows), "Tasks per stage"))
        notes.append(f"Per-stage outcomes, timings and throughput: {NOT_RECORDED} by this runner.")
    else:
        notes.append(f"Stages: {NOT_RECORDED}.")
    chunks = summary.get("chunks_recorded")
    if isinstance(chunks, Mapping) and chunks:
        tables.append(table_view(pd.DataFrame({"variable": list(chunks), "chunks": list(chunks.values())}),
                                 "Chunks recorded per variable"))
    seconds = summary.get("seconds")
    if isinstance(seconds, Mapping) and seconds:
        tables.append(table_view(pd.DataFrame({"phase": list(seconds), "seconds": list(seconds.values())}),
                                 "Wall time per phase"))
    else:
        notes.append(f"Phase timings: {NOT_RECORDED}.")
    return Section("Stages", "stages", notes=tuple(notes), tables=tuple(tables))


def _quarantine_section(summary: Mapping[str, Any]) -> Section:
    quarantined = summary.get("quarantined")
    if not isinstance(quarantined, list):
        return Section("Quarantined fields", "quarantined", notes=(f"Quarantined fields: {NOT_RECORDED}.",))
    if not quarantined:
        return Section("Quarantined fields", "quarantined", notes=("No field was quarantined.",))
    frame = pd.DataFrame([q for q in quarantined if isinstance(q, Mapping)])
    return Section("Quarantined fields", "quarantined",
                   notes=(f"{len(frame)} field task(s) failed and were set aside; the rest of the run finished.",),
                   tables=(table_view(frame, "Quarantined field tasks and their errors"),))


# ------------------------------------------------------------------ scores
def _score_tables(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, dict[str, pd.DataFrame]]:
    """label variable -> level -> score table, from run.json's table list and the folder itself."""
    paths: dict[tuple[str, str], Path] = {}
    for found in sorted(run_dir.glob("*/scores_*.parquet")):
        paths[(found.parent.name, found.stem.removeprefix("scores_"))] = found
    for key, value in _mapping(summary, "tables").items():
        labels, _, level = str(key).partition("/")
        path = Path(str(value))
        if path.name.startswith("scores_") and path.is_file():
            paths.setdefault((labels, level), path)
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    for (labels, level), path in sorted(paths.items()):
        tables.setdefault(labels, {})[level] = pd.read_parquet(path)
    return tables


def _score_pairs(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(truth, pred) pairs of the spec's score stage, [] when not recorded or unreadable."""
    raw = _mapping(_mapping(summary, "spec"), "stages").get("score", ())
    if not isinstance(raw, Mapping | None):
        return []
    from cellflow.graph.score import ScoreParams

    try:
        return list(ScoreParams.from_dict(raw or {}).pairs)
    except (TypeError, ValueError):
        return []


def _cell_fscores(screen: Any, pairs: Sequence[tuple[str, str]], max_fields: int) -> dict[str, np.ndarray]:
    """Per-cell best-match F-scores of each pair, pooled over up to ``max_fields`` evenly spaced fields."""
    from cellflow.metrics import field_extents, score_field

    fields = screen.fields()
    if not fields:
        return {}
    chosen = [fields[i] for i in np.unique(np.linspace(0, len(fields) - 1, min(max_fields, len(fields))).astype(int))]
    extents = field_extents(screen)
    scores: dict[str, np.ndarray] = {}
    for truth, pred in pairs:
        if truth not in screen.variables or pred not in screen.variables:
            continue
        pooled = []
        for key in chosen:
            extent = extents.get(key)
            crop = (slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
            where = key._asdict()
            pooled.append(score_field(screen.read(truth, **where)[crop], screen.read(pred, **where)[crop]).fscores)
        scores[pred] = np.concatenate(pooled)
    return scores


def _scores_section(run_dir: Path, summary: Mapping[str, Any], screen: Any, max_fields: int) -> Section:
    tables = _score_tables(run_dir, summary)
    if not tables:
        return Section("Scores", "scores", notes=("No score tables in this run (no score stage, or none written).",))
    views: list[TableView] = []
    for labels, levels in tables.items():
        for level in ("plates", "wells"):
            if level in levels:
                views.append(table_view(_score_view(levels[level]), f"{labels}: scores per {level[:-1]}"))
    fields = {labels: levels["fields"] for labels, levels in tables.items() if "fields" in levels}
    figures = [
        _figure("F1 vs IoU threshold", lambda: plots.f1_curves(fields),
                "Mean over fields of F1 at each IoU match threshold (Caicedo et al. 2019, Fig. 2a)."),
        _figure("Errors", lambda: plots.error_panels(fields),
                "Left: percentage of true objects missed (IoU ≤ error threshold) per true-object area bin, pooled "
                "over fields. Right: merges, splits and extra objects summed over fields (Caicedo et al. 2019, "
                "Figs. 3–4)."),
    ]
    notes: list[str] = []
    cell_scores = _cell_fscores(screen, _score_pairs(summary), max_fields) if screen is not None else {}
    if cell_scores:
        figures.append(_figure("Percentage of cells vs F-score", lambda: plots.fscore_curves(cell_scores),
                               f"For each true cell, the best pixel F-score (Dice) with any predicted object; the "
                               f"curve is the percentage of cells whose F-score is at least x (Sadanandan et al. "
                               f"2017, Fig. 2), from up to {max_fields} fields read from the store."))
    elif fields:
        field_scores = {k: v["f1_mean"].to_numpy(float) for k, v in fields.items() if "f1_mean" in v}
        figures.append(_figure("Percentage of fields vs F1", lambda: plots.fscore_curves(field_scores, what="fields"),
                               "Per-cell F-scores need the store's labels, which were not readable; this is the "
                               "percentage of fields whose mean F1 is at least x."))
        notes.append("Per-cell F-scores: store labels not readable; the curve is drawn per field instead.")
    for labels, levels in tables.items():
        wells = levels.get("wells")
        if wells is not None and {"plate", "well", "f1_mean"} <= set(wells.columns):
            figures.append(_figure(f"{labels}: mean F1 per well", partial(plots.plate_heatmap, wells, "f1_mean")))
    return Section("Scores", "scores", notes=tuple(notes), tables=tuple(views), figures=tuple(figures))


def _score_view(frame: pd.DataFrame) -> pd.DataFrame:
    wanted = ["plate", "well", "n_fields", "f1_mean", "f1_0.50", "f1_0.70", "f1_0.90", "n_true", "n_pred",
              "merges", "splits", "extra", "jaccard", "dice"]
    return frame[[c for c in wanted if c in frame.columns]]


# ------------------------------------------------------------------ measurements
#: Per-well columns that are bookkeeping or one bin of a histogram, not a readout to map.
_NOT_MAPPED = re.compile(r"^(plate|well|labels|n_fields|dna_hist_.*)$")


def _mapped_readouts(wells: pd.DataFrame, zprime: pd.DataFrame | None, limit: int) -> list[str]:
    """The per-well readouts worth a plate map: the Z' table's first, then the others that vary across wells."""
    numeric = [c for c in wells.columns if not _NOT_MAPPED.match(str(c)) and wells[c].dtype.kind in "iuf"]
    varying = [c for c in numeric if wells[c].nunique(dropna=True) > 1]  # a constant map shows nothing
    assay = [] if zprime is None or "readout" not in zprime else [str(r) for r in zprime["readout"].unique()]
    ordered = [c for c in assay if c in varying] + [c for c in varying if c not in assay]
    return ordered[:limit]


def _zprime_caption(zprime: pd.DataFrame | None, labels: str | None, readout: str) -> str:
    if zprime is None or not {"readout", "z_prime"} <= set(zprime.columns):
        return ""
    rows = zprime[zprime["readout"] == readout]
    if labels is not None and "labels" in rows:
        rows = rows[rows["labels"] == labels]
    values = [f"{v:.2f}" for v in rows["z_prime"] if np.isfinite(v)]
    return f"Z' between the control wells: {', '.join(values)}." if values else ""


def _measurements_section(run_dir: Path) -> Section:
    folder = run_dir / "measurements"
    found = {name: folder / f"{name}.parquet" for name in ("zprime", "wells", "fields")}
    found = {k: v for k, v in found.items() if v.is_file()}
    if not found:
        return Section("Measurements", "measurements", notes=("No measurement tables in this run.",))
    views: list[TableView] = []
    long_views: list[TableView] = []
    figures: list[FigureView] = []
    zprime = pd.read_parquet(found["zprime"]) if "zprime" in found else None
    if zprime is not None:
        views.append(table_view(zprime, "Z' factor per readout (positive vs negative control wells)"))
    if "wells" in found:
        wells = pd.read_parquet(found["wells"])
        long_views.append(table_view(wells, "Readouts per well", max_rows=100))
        if {"plate", "well"} <= set(wells.columns):
            # one map per labels variable: their rows share the wells, and one map holds one value per well
            groups = ([(str(k), g) for k, g in wells.groupby("labels", sort=True)] if "labels" in wells.columns
                      else [(None, wells)])
            per_group = max(_MAX_HEATMAPS // len(groups), 1)
            for labels, group in groups:
                for readout in _mapped_readouts(group, zprime, per_group):
                    title = f"{labels}: {readout} per well" if labels is not None else f"{readout} per well"
                    figures.append(_figure(title, partial(plots.plate_heatmap, group, readout),
                                           _zprime_caption(zprime, labels, readout)))
    if "fields" in found:
        long_views.append(table_view(pd.read_parquet(found["fields"]), "Readouts per field", max_rows=50))
    return Section("Measurements", "measurements", tables=tuple(views), figures=tuple(figures),
                   long_tables=tuple(long_views))


# ------------------------------------------------------------------ store images
def _open_store(summary: Mapping[str, Any]) -> tuple[Any, str]:
    """(Screen or None, why not)."""
    store = summary.get("store")
    if not store:
        return None, f"store path {NOT_RECORDED}"
    from cellflow.screen.store import Screen

    try:
        return Screen.open(store), ""
    except (CellflowError, OSError, KeyError, ValueError) as error:
        return None, f"store {store} could not be opened: {error}"


def _illumination_section(screen: Any, why: str) -> Section:
    if screen is None:
        return Section("Illumination", "illumination", notes=(f"Illumination maps not shown: {why}.",))
    if "illumination" not in screen.variables:
        return Section("Illumination", "illumination", notes=("The store has no illumination variable.",))
    data = screen.dataset()["illumination"].load()  # dims (plate, c, z, y, x); a few small planes
    maps = {}
    middle = data.sizes["z"] // 2
    for plate in data["plate"].values:
        for channel in data["c"].values:
            plane = data.sel(plate=plate, c=channel).isel(z=middle)
            maps[f"{plate} {channel} (z={float(plane['z']):g})"] = plane.values
    return Section("Illumination", "illumination", figures=(
        _figure("Illumination functions", lambda: plots.illumination_maps(maps),
                "Relative illumination per plate and channel (middle z plane); corrected = (image - offset) / map."),
    ))


def _section(title: str, anchor: str, build: Callable[..., Section], *args: Any, **kwargs: Any) -> Section:
    """One section, or a note of why it could not be built: a damaged chunk or table loses that section, not the page.

    The report is read after an overnight run to find out what went wrong; a store with
    one unreadable chunk is exactly when it must still be written.
    """
    try:
        return build(*args, **kwargs)
    except Exception as error:
        return Section(title, anchor, notes=(f"This section could not be built: {type(error).__name__}: {error}",))


def _overlay_channel(summary: Mapping[str, Any], channels: Sequence[str]) -> str:
    stages = _mapping(_mapping(summary, "spec"), "stages")
    wanted = _mapping(stages, "autolabel").get("nuclear_channel")
    return str(wanted) if wanted in channels else ("DNA" if "DNA" in channels else str(channels[0]))


def _overlays_section(summary: Mapping[str, Any], screen: Any, why: str, *, max_wells: int,
                      sites_per_well: int) -> Section:
    if screen is None:
        return Section("Segmentation overlays", "overlays", notes=(f"Overlays not shown: {why}.",))
    variables = screen.variables
    labels = next((v for v in ("labels_nuclei", "labels_cells") if v in variables),
                  next((v for v in variables if v.startswith("labels_")), None))
    if labels is None or "images" not in variables:
        return Section("Segmentation overlays", "overlays", notes=("The store has no images or label variable.",))
    channel = _overlay_channel(summary, list(screen.layout.channels))
    by_well: dict[tuple[str, str], list[Any]] = {}
    for key in screen.fields():
        by_well.setdefault((key.plate, key.well), []).append(key)
    figures = []
    unreadable: list[str] = []
    for (plate, well), keys in list(by_well.items())[:max_wells]:
        tiles = []
        for key in keys[:sites_per_well]:
            where = key._asdict()
            try:
                image = screen.read("images", c=channel, **where).max(axis=0)  # (z, y, x) -> max projection
                tiles.append((f"site {key.site}, t {key.t:g}", image, screen.read(labels, **where)))
            except Exception as error:  # a damaged chunk: this field is left out and named, the rest are shown
                unreadable.append(f"{plate} {well} site {key.site} t {key.t:g}: {type(error).__name__}: {error}")
        if not tiles:
            continue
        figures.append(_figure(f"{plate} {well}", partial(plots.overlay_montage, tiles),
                               f"{channel} (max over z, 1–99.5 percentile scaled) with {labels} boundaries in red."))
    notes: tuple[str, ...] = () if len(by_well) <= max_wells else (f"First {max_wells} of {len(by_well)} wells shown.",)
    notes += tuple(f"Not shown, unreadable: {text}" for text in unreadable)
    return Section("Segmentation overlays", "overlays", notes=notes, figures=tuple(figures))


# ------------------------------------------------------------------ models, training, provenance
def _models(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    models = summary.get("models")
    if isinstance(models, list):
        return [dict(m) for m in models if isinstance(m, Mapping)]
    stages = _mapping(_mapping(summary, "spec"), "stages")
    return [{"stage": name, "path": raw["model"]} for name, raw in stages.items()
            if isinstance(raw, Mapping) and isinstance(raw.get("model"), str)]


def _history(model_path: Path) -> dict[str, Any] | None:
    """Training history: ``history.json`` beside the checkpoint, else the checkpoint's metadata."""
    beside = model_path.parent / "history.json"
    if beside.is_file():
        records = json.loads(beside.read_text())
        return {"loss": [r["loss"] for r in records], "validation_f1": [r["val_f1"] for r in records]}
    if not model_path.is_file():
        return None
    from cellflow.nn.checkpoint import load_checkpoint

    try:
        metadata = load_checkpoint(model_path).metadata
    except (CellflowError, OSError, ValueError):
        return None
    return dict(metadata) if "loss" in metadata or "validation_f1" in metadata else None


def _training_section(summary: Mapping[str, Any]) -> Section:
    models = _models(summary)
    if not models:
        return Section("Training", "training", notes=("No model was used in this run.",))
    figures, notes = [], []
    for model in models:
        history = _history(Path(str(model.get("path"))))
        if history is None:
            notes.append(f"{model.get('path')}: no training history found.")
            continue
        figures.append(_figure(f"Training of {model.get('path')}", partial(plots.training_curves, history),
                               "Mean training loss and validation F1 per epoch."))
    return Section("Training", "training", notes=tuple(notes), figures=tuple(figures))


def _provenance_section(summary: Mapping[str, Any]) -> Section:
    views, notes = [], []
    models = _models(summary)
    if models:
        views.append(table_view(pd.DataFrame(models), "Models"))
    versions = summary.get("versions")
    if isinstance(versions, Mapping) and versions:
        views.append(table_view(pd.DataFrame({"package": list(versions), "version": list(map(str, versions.values()))}),
                                "Versions"))
    else:
        notes.append(f"Versions: {NOT_RECORDED}.")
    tables = summary.get("tables")
    if isinstance(tables, Mapping) and tables:
        views.append(table_view(pd.DataFrame({"table": list(tables), "path": list(map(str, tables.values()))}),
                                "Tables written"))
    spec = summary.get("spec")
    text = yaml.safe_dump(spec, sort_keys=False) if spec is not None else ""
    if not text:
        notes.append(f"Spec: {NOT_RECORDED}.")
    return Section("Provenance", "provenance", notes=tuple(notes), tables=tuple(views), text=text)


def _screen_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in a screen store's ``_cellflow/runs.jsonl`` (none if ``path`` is not a store)."""
    log = path / "_cellflow" / "runs.jsonl"
    if not log.is_file():
        return []
    runs = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill
    return [r for r in runs if (Path(r.get("tables", "")) / "run.json").is_file()]


def _runs_section(runs: Sequence[Mapping[str, Any]]) -> Section:
    frame = pd.DataFrame([{k: r.get(k) for k in ("run_id", "spec", "status", "exit_code", "started", "finished",
                                                 "quarantined", "tables")} for r in runs])
    return Section(title="Runs of this screen", anchor="runs",
                   notes=("Every run recorded on this store, oldest first; the sections below are the latest run's.",),
                   tables=(table_view(frame, "runs"),))


def build_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    max_wells: int = 4,
    sites_per_well: int = 4,
    max_score_fields: int = 32,
) -> Path:
    """Write the HTML report of a run.

    Parameters
    ----------
    run_dir : str or Path
        The run's ``output.tables`` folder, holding ``run.json`` and the tables; or a screen
        store, for the screen's report (every run on it, the latest one in full), written to
        ``<store>/report.html`` by default.
    out : str or Path, optional
        Report file; default ``run_dir/report.html``.
    max_wells, sites_per_well : int
        Overlay montages: how many wells, and fields per well.
    max_score_fields : int
        Fields per scored pair whose per-cell F-scores are recomputed from the store.

    Returns
    -------
    Path
        The report file.

    Raises
    ------
    ReportError
        ``run_dir`` holds no readable ``run.json``.
    """
    from cellflow import __version__

    run_dir = Path(run_dir)
    runs = _screen_runs(run_dir)
    store_dir = None
    if runs:  # a screen store: its latest run, and the list of every run on it
        store_dir, run_dir = run_dir, Path(runs[-1]["tables"])
    summary = load_summary(run_dir)
    screen, why = _open_store(summary)
    sections = [
        *([_section("Runs of this screen", "runs", _runs_section, runs)] if runs else []),
        _section("Stages", "stages", _stages_section, summary),
        _section("Quarantined fields", "quarantined", _quarantine_section, summary),
        _section("Scores", "scores", _scores_section, run_dir, summary, screen, max_score_fields),
        _section("Measurements", "measurements", _measurements_section, run_dir),
        _section("Illumination", "illumination", _illumination_section, screen, why),
        _section("Segmentation overlays", "overlays", _overlays_section, summary, screen, why, max_wells=max_wells,
                 sites_per_well=sites_per_well),
        _section("Training", "training", _training_section, summary),
        _section("Provenance", "provenance", _provenance_section, summary),
    ]
    spec = _mapping(summary, "spec")
    title = f"cellflow run report: {spec.get('name', run_dir.name)}"
    if store_dir is not None:
        title = f"cellflow screen report: {store_dir.name} ({len(runs)} runs; latest shown)"
    page = render_report(title=title, status=str(summary.get("status", NOT_RECORDED)), header=_header(summary),
                         sections=sections, generator=__version__)
    target = (store_dir or run_dir) / "report.html" if out is None else Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, page)
    return target
