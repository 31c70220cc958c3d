"""The figures of a run report, each a function of plain tables or arrays returning a Figure.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly
(never ``pyplot``), so no global figure state is kept and no display is needed;
:func:`png_bytes` renders one to PNG. The figures follow the papers the scores come
from:

* :func:`f1_curves` — F1 against the IoU match threshold, one line per label variable
  (Caicedo et al. 2019, Cytometry A 95:952, Fig. 2a): the mean over fields of each
  ``f1_<t>`` column of a field score table.
* :func:`error_panels` — missed nuclei by true-object area (the miss rate of each area
  bin, pooled over fields) and merges, splits and extra objects per label variable
  (Caicedo et al. 2019, Figs. 3–4).
* :func:`fscore_curves` — percentage of cells (y) whose score is at least x (x)
  (Sadanandan et al. 2017, Sci. Rep. 7:7860, Fig. 2), from any per-cell (or per-field)
  scores, via :func:`cellflow.metrics.fscore_curve`.
* :func:`plate_heatmap`, :func:`illumination_maps`, :func:`overlay_montage`,
  :func:`training_curves`.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # a headless backend; the report never opens a window

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cellflow.metrics import fscore_curve
from cellflow.screen.layout import well_position

__all__ = [
    "PLATE_FORMATS",
    "error_panels",
    "f1_curves",
    "fscore_curves",
    "illumination_maps",
    "overlay_montage",
    "overlay_rgb",
    "plate_grid",
    "plate_heatmap",
    "png_bytes",
    "training_curves",
    "well_position",
]

#: Standard plate formats as (rows, columns), smallest first; a plate is drawn on the
#: smallest one its wells fit, else on the rows x columns its wells span.
PLATE_FORMATS: tuple[tuple[int, int], ...] = ((8, 12), (16, 24), (32, 48))
_F1 = re.compile(r"^f1_([0-9.]+)$")
_MISSED = "missed_area_"
_TRUE = "true_area_"
_DPI = 100


def png_bytes(figure: Figure, *, dpi: int = _DPI) -> bytes:
    """Render ``figure`` to PNG bytes (``figsize * dpi`` pixels) with the Agg canvas."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _figure(width_in: float, height_in: float) -> Figure:
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
    axes.set_axis_off()


# ------------------------------------------------------------------ scores
def f1_curves(fields: Mapping[str, pd.DataFrame]) -> Figure:
    """F1 against the IoU threshold, one line per label variable (Caicedo 2019, Fig. 2a).

    Parameters
    ----------
    fields : mapping of str to pandas.DataFrame
        Label variable -> field score table with columns ``f1_<t>`` (e.g. ``f1_0.50``).
        Each line is the mean over the table's rows of each ``f1_<t>`` column.

    Returns
    -------
    matplotlib.figure.Figure
        One Axes; line ``i`` has x = thresholds, y = mean F1.
    """
    figure = _figure(5.5, 3.6)
    axes = figure.add_subplot()
    for name, table in fields.items():
        columns = [(float(m.group(1)), c) for c in table.columns if (m := _F1.match(str(c)))]
        if not columns or table.empty:
            continue
        columns.sort()
        axes.plot([t for t, _ in columns], [float(table[c].mean()) for _, c in columns], marker="o", label=name)
    if not axes.lines:
        _empty(axes, "no score tables")
        return figure
    axes.set(xlabel="IoU threshold", ylabel="F1 (mean over fields)", ylim=(0, 1.02), title="F1 vs IoU threshold")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _bin_label(name: str) -> str:
    low, _, high = name.partition("_")
    return f"≥{low}" if high == "inf" else f"{low}–{high}"


def error_panels(fields: Mapping[str, pd.DataFrame]) -> Figure:
    """Missed objects by area and merges/splits/extras per label variable (Caicedo 2019, Figs. 3–4).

    Parameters
    ----------
    fields : mapping of str to pandas.DataFrame
        Label variable -> field score table with ``missed_area_<bin>``, ``true_area_<bin>``,
        ``merges``, ``splits``, ``extra`` columns (missing columns are skipped).

    Returns
    -------
    matplotlib.figure.Figure
        Left Axes: grouped bars of the miss rate (%) per area bin = 100 × Σ missed / Σ true
        (bars of empty bins are NaN). Right Axes: grouped bars of summed merges, splits, extra.
    """
    figure = _figure(9.0, 3.6)
    left, right = figure.subplots(1, 2)
    names = list(fields)
    width = 0.8 / max(len(names), 1)
    for i, (name, table) in enumerate(fields.items()):
        bins = [str(c)[len(_MISSED):] for c in table.columns if str(c).startswith(_MISSED)]
        if bins:
            missed = np.array([table[_MISSED + b].sum() for b in bins], dtype=float)
            true = np.array([table.get(_TRUE + b, pd.Series(dtype=float)).sum() for b in bins], dtype=float)
            rate = np.full(len(bins), np.nan)
            np.divide(100.0 * missed, true, out=rate, where=true > 0)
            left.bar(np.arange(len(bins)) + i * width, rate, width, label=name)
            left.set_xticks(np.arange(len(bins)) + width * (len(names) - 1) / 2, [_bin_label(b) for b in bins])
        kinds = [k for k in ("merges", "splits", "extra") if k in table.columns]
        if kinds:
            right.bar(np.arange(len(kinds)) + i * width, [float(table[k].sum()) for k in kinds], width, label=name)
            right.set_xticks(np.arange(len(kinds)) + width * (len(names) - 1) / 2, kinds)
    if not left.patches:
        _empty(left, "no area bins")
    else:
        left.set(xlabel="true object area (px)", ylabel="missed (%)", title="Missed objects by size")
        left.legend()
    if not right.patches:
        _empty(right, "no merge/split counts")
    else:
        right.set(ylabel="objects (all fields)", title="Merges, splits, extras")
        right.legend()
    return figure


def fscore_curves(scores: Mapping[str, Sequence[float] | np.ndarray], *, what: str = "cells") -> Figure:
    """Percentage of ``what`` whose score is at least x, per label variable (Sadanandan 2017, Fig. 2).

    Parameters
    ----------
    scores : mapping of str to (n,) array_like of float
        Label variable -> scores in [0, 1] (per-cell best-match F-scores, or per-field F1).
    what : str
        The y-axis noun ('cells', 'fields').

    Returns
    -------
    matplotlib.figure.Figure
        One Axes; each line has x = ``linspace(0, 1, 101)`` and y = ``fscore_curve(scores)``.
    """
    figure = _figure(5.5, 3.6)
    axes = figure.add_subplot()
    levels = np.linspace(0.0, 1.0, 101)
    for name, values in scores.items():
        if np.asarray(values).size:
            axes.plot(levels, fscore_curve(values, levels), label=f"{name} (n={np.asarray(values).size})")
    if not axes.lines:
        _empty(axes, "no scores")
        return figure
    axes.set(xlabel="F-score", ylabel=f"{what} with F-score ≥ x (%)", xlim=(0, 1), ylim=(0, 101),
             title=f"Percentage of {what} vs F-score")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


# ------------------------------------------------------------------ plates
def plate_grid(wells: Sequence[str], values: Sequence[float]) -> np.ndarray:
    """Values laid out on the plate: a (rows, columns) float array, NaN where no well has a value.

    The grid is the smallest of :data:`PLATE_FORMATS` the wells fit on, else the rows x
    columns they span.

    Raises
    ------
    ValueError
        A well is named twice (its second value would hide the first), a name is malformed, or
        the lengths differ.

    Examples
    --------
    >>> grid = plate_grid(["A01", "B03"], [1.0, 2.0])
    >>> grid.shape, float(grid[0, 0]), float(grid[1, 2]), int(np.isnan(grid).sum())
    ((8, 12), 1.0, 2.0, 94)
    """
    if len(wells) != len(values):
        raise ValueError(f"plate_grid: {len(wells)} wells but {len(values)} values")
    twice = sorted(w for w, n in Counter(wells).items() if n > 1)
    if twice:  # one value per well: a second would silently paint over the first
        raise ValueError(f"plate_grid: well(s) {', '.join(twice[:5])} given more than once; a plate map takes one "
                         "value per well (a table with several rows per well, e.g. one per labels variable, must be "
                         "drawn one group at a time)")
    positions = [well_position(w) for w in wells]
    rows = max((r for r, _ in positions), default=0) + 1
    cols = max((c for _, c in positions), default=0) + 1
    shape = next(((r, c) for r, c in PLATE_FORMATS if rows <= r and cols <= c), (rows, cols))
    grid = np.full(shape, np.nan)
    for (r, c), value in zip(positions, values, strict=True):
        grid[r, c] = value
    return grid


def _row_name(row: int) -> str:
    name = ""
    row += 1
    while row:
        row, rest = divmod(row - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def plate_heatmap(wells: pd.DataFrame, value: str, *, cmap: str = "viridis") -> Figure:
    """One heat map per plate of a per-well value, wells at their plate rows x columns.

    Parameters
    ----------
    wells : pandas.DataFrame
        Columns ``plate``, ``well`` and ``value``; one row per well.
    value : str
        The column to draw.
    cmap : str
        Matplotlib colour map; wells without a value are left blank.

    Returns
    -------
    matplotlib.figure.Figure
        One Axes per plate (sorted) holding one image of :func:`plate_grid`, with a colour bar
        shared by all plates (same colour scale).

    Raises
    ------
    ValueError
        A column is missing, a well name is malformed or a plate names a well twice.
    """
    missing = [c for c in ("plate", "well", value) if c not in wells.columns]
    if missing:
        raise ValueError(f"plate_heatmap: table lacks columns {missing!r}; it has {list(wells.columns)!r}")
    plates = sorted(wells["plate"].astype(str).unique())
    grids = [plate_grid(list(g["well"].astype(str)), list(g[value].astype(float)))
             for _, g in wells.assign(plate=wells["plate"].astype(str)).groupby("plate", sort=True)]
    finite = [g[np.isfinite(g)] for g in grids]
    low = min((float(f.min()) for f in finite if f.size), default=0.0)
    high = max((float(f.max()) for f in finite if f.size), default=1.0)
    rows, cols = max((g.shape for g in grids), default=(8, 12))
    n = max(len(grids), 1)
    well_in = min(0.32, 3.6 / cols)  # any plate format: 5.6 in wide, two maps side by side in the report
    figure = _figure((2.0 + well_in * cols) * min(n, 2), 0.9 + well_in * rows * math.ceil(n / 2))
    axes_list = np.atleast_1d(figure.subplots(math.ceil(n / 2), min(n, 2), squeeze=False)).ravel()
    image = None
    for axes, plate, grid in zip(axes_list, plates, grids):
        axes.set_facecolor("#e6e6e6")  # wells without a value
        image = axes.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high if high > low else low + 1)
        axes.set_title(f"{plate}: {value}")
        axes.set_xticks(range(grid.shape[1]), [str(c + 1) for c in range(grid.shape[1])], fontsize=7)
        axes.set_yticks(range(grid.shape[0]), [_row_name(r) for r in range(grid.shape[0])], fontsize=7)
    for axes in axes_list[len(grids):]:
        axes.set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=list(axes_list[:len(grids)]), shrink=0.8, label=value)
    return figure


# ------------------------------------------------------------------ images
def _scaled(image: np.ndarray, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """``image`` mapped to [0, 1] between its ``low`` and ``high`` percentiles."""
    values = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
    if hi <= lo:
        return np.zeros(values.shape)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def overlay_rgb(image: np.ndarray, labels: np.ndarray, *, colour: tuple[int, int, int] = (255, 64, 64)) -> np.ndarray:
    """A grey, percentile-scaled (1–99.5 %) image with label boundaries painted in ``colour``.

    Parameters
    ----------
    image : (M, N) ndarray
        Intensities.
    labels : (M, N) ndarray of int
        Label image; its boundaries (``skimage.segmentation.find_boundaries``, mode 'inner')
        are painted.

    Returns
    -------
    rgb : (M, N, 3) ndarray of uint8

    Raises
    ------
    ValueError
        Shapes differ or are not 2-D.
    """
    from skimage.segmentation import find_boundaries

    image, labels = np.asarray(image), np.asarray(labels)
    if image.ndim != 2 or image.shape != labels.shape:
        raise ValueError(f"overlay_rgb: image {image.shape} and labels {labels.shape} must be the same 2-D shape")
    grey = np.round(_scaled(image) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[find_boundaries(labels, mode="inner")] = colour
    return rgb


def overlay_montage(tiles: Sequence[tuple[str, np.ndarray, np.ndarray]], *, columns: int = 4) -> Figure:
    """A grid of :func:`overlay_rgb` panels, each titled.

    Parameters
    ----------
    tiles : sequence of (title, (M, N) image, (M, N) labels)
    columns : int
        Panels per row.
    """
    n = max(len(tiles), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    figure = _figure(3.0 * cols, 3.1 * rows)
    axes_list = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).ravel()
    for axes, (title, image, labels) in zip(axes_list, tiles):
        axes.imshow(overlay_rgb(image, labels), interpolation="nearest")
        axes.set_title(title, fontsize=8)
    for axes in axes_list:
        axes.set_axis_off()
    if not tiles:
        _empty(axes_list[0], "no fields")
    return figure


def illumination_maps(maps: Mapping[str, np.ndarray]) -> Figure:
    """One panel per illumination function (title -> (M, N) relative illumination), shared colour scale."""
    n = max(len(maps), 1)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    figure = _figure(3.2 * cols + 0.8, 3.0 * rows)
    axes_list = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).ravel()
    finite = [np.asarray(m, float)[np.isfinite(m)] for m in maps.values()]
    low = min((float(f.min()) for f in finite if f.size), default=0.0)
    high = max((float(f.max()) for f in finite if f.size), default=1.0)
    image = None
    for axes, (title, data) in zip(axes_list, maps.items()):
        image = axes.imshow(data, cmap="magma", vmin=low, vmax=high if high > low else low + 1e-6)
        axes.set_title(title, fontsize=9)
    for axes in axes_list:
        axes.set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=list(axes_list), shrink=0.8, label="relative illumination")
    else:
        _empty(axes_list[0], "no illumination")
    return figure


def training_curves(history: Mapping[str, Any]) -> Figure:
    """Training loss and validation F1 per epoch (epochs 1..n).

    Parameters
    ----------
    history : mapping
        ``loss`` and/or ``validation_f1``: one value per epoch; ``initial_f1`` (optional,
        a float) is drawn as a dashed line at epoch 0.
    """
    figure = _figure(9.0, 3.2)
    left, right = figure.subplots(1, 2)
    loss = list(history.get("loss", []))
    f1 = list(history.get("validation_f1", []))
    if loss:
        left.plot(range(1, len(loss) + 1), loss, marker=".")
        left.set(xlabel="epoch", ylabel="training loss", title="Loss")
    else:
        _empty(left, "no loss recorded")
    if f1:
        right.plot(range(1, len(f1) + 1), f1, marker=".", label="validation F1")
        initial = history.get("initial_f1")
        if isinstance(initial, (int, float)):
            right.axhline(float(initial), linestyle="--", color="grey", label="untrained")
        right.set(xlabel="epoch", ylabel="F1", ylim=(0, 1.02), title="Validation F1")
        right.legend()
    else:
        _empty(right, "no validation F1 recorded")
    return figure
