"""Per-track growth, lineages and a segmentation-consistency check of tracked objects.

* **Growth rate**: the instantaneous specific growth rate ``d ln(area) / dt`` per
  hour along each track (``numpy.gradient``: central differences inside a track,
  one-sided at its ends; time points may be uneven, e.g. across a closed gap).
  Exponential growth ``area = a0 exp(k t)`` gives ``k`` at every frame.
* **Division time** of a track that divides: the time of its last frame (the
  mother's last appearance). **Cell-cycle duration**: a track's division time
  minus its mother's, for tracks born by division that divide again.
* **Segmentation consistency** (Van Valen et al. 2016, PLoS Comput. Biol.
  12:e1005177): a cell's area should not jump between consecutive frames; the
  fraction of cells whose area changes by ``>= threshold`` (30 %) relative to
  the earlier frame at least once flags unstable segmentation or wrong links.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellflow.live.track import Tracks

__all__ = ["area_jumps", "field_summary", "growth_rates", "lineage_table", "segmentation_consistency",
           "tracks_frame"]

#: Relative area change between consecutive frames that counts as a jump.
JUMP_THRESHOLD = 0.3


def _groups(track_id: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row order sorted by (track, time) and the positions of each track in it."""
    order = np.lexsort((time, track_id))
    bounds = np.flatnonzero(np.diff(track_id[order])) + 1
    return order, np.split(np.arange(order.size), bounds)


def growth_rates(track_id: np.ndarray, t_min: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Instantaneous specific growth rate ``d ln(area)/dt`` in 1/h of every row.

    Parameters
    ----------
    track_id, t_min, area : (N,) ndarray
        Track of each row, its time in minutes and its area (> 0).

    Returns
    -------
    rate : (N,) ndarray of float64
        NaN for tracks seen in one frame only.

    Examples
    --------
    >>> t = np.array([0.0, 30.0, 60.0])
    >>> growth_rates(np.ones(3, int), t, 100 * np.exp(0.5 * t / 60)).round(6).tolist()
    [0.5, 0.5, 0.5]
    """
    track_id, t_min = np.asarray(track_id), np.asarray(t_min, float)
    log_area = np.log(np.asarray(area, float))
    rate = np.full(track_id.size, np.nan)
    order, groups = _groups(track_id, t_min)
    for group in groups:
        rows = order[group]
        if rows.size >= 2:
            rate[rows] = np.gradient(log_area[rows], t_min[rows] / 60.0)
    return rate


def area_jumps(
    track_id: np.ndarray, frame: np.ndarray, area: np.ndarray, *, threshold: float = JUMP_THRESHOLD
) -> np.ndarray:
    """Whether each row's area changes by ``>= threshold`` (relative) at its track's next frame.

    Only consecutive frames count (``frame + 1`` in the same track); rows
    without one are False.

    Examples
    --------
    >>> area_jumps(np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([100.0, 125.0, 170.0])).tolist()
    [False, True, False]
    """
    track_id, frame, area = np.asarray(track_id), np.asarray(frame), np.asarray(area, float)
    jump = np.zeros(track_id.size, bool)
    order = np.lexsort((frame, track_id))
    current, following = order[:-1], order[1:]
    consecutive = (track_id[current] == track_id[following]) & (frame[following] == frame[current] + 1)
    change = np.abs(area[following] - area[current]) / area[current]
    jump[current[consecutive & (change >= threshold)]] = True
    return jump


def segmentation_consistency(
    track_id: np.ndarray, frame: np.ndarray, area: np.ndarray, *, threshold: float = JUMP_THRESHOLD
) -> float:
    """Fraction of cells (tracks with two consecutive frames) whose area jumps at least once.

    Lower is better; NaN when no track spans two consecutive frames.

    Examples
    --------
    >>> track = np.array([1, 1, 2, 2, 3])
    >>> segmentation_consistency(track, np.array([0, 1, 0, 1, 0]), np.array([10.0, 20.0, 10.0, 11.0, 5.0]))
    0.5
    """
    track_id, frame = np.asarray(track_id), np.asarray(frame)
    jump = area_jumps(track_id, frame, area, threshold=threshold)
    order = np.lexsort((frame, track_id))
    current, following = order[:-1], order[1:]
    consecutive = (track_id[current] == track_id[following]) & (frame[following] == frame[current] + 1)
    cells = np.unique(track_id[current[consecutive]])
    if cells.size == 0:
        return float("nan")
    return float(np.isin(cells, track_id[jump]).mean())


def tracks_frame(tracks: Tracks, times_min: Sequence[float]) -> pd.DataFrame:
    """One row per tracked object per frame, with growth columns.

    Columns: ``frame, t`` (minutes), ``label, track_id, parent_track_id, area,
    centroid_y, centroid_x, growth_rate_per_h, area_jump``.
    """
    t_min = np.asarray(times_min, float)[tracks.frame]
    return pd.DataFrame({
        "frame": tracks.frame, "t": t_min, "label": tracks.label, "track_id": tracks.track_id,
        "parent_track_id": tracks.parent_track_id, "area": tracks.area,
        "centroid_y": tracks.centroid[:, 0], "centroid_x": tracks.centroid[:, 1],
        "growth_rate_per_h": growth_rates(tracks.track_id, t_min, tracks.area),
        "area_jump": area_jumps(tracks.track_id, tracks.frame, tracks.area),
    })


def lineage_table(tracks: pd.DataFrame) -> pd.DataFrame:
    """One row per track: span, parent, children, division time and cell-cycle duration.

    Parameters
    ----------
    tracks : DataFrame
        As from :func:`tracks_frame` (uses ``track_id, parent_track_id, t,
        area, growth_rate_per_h``).

    Returns
    -------
    DataFrame
        ``track_id, parent_track_id, first_t, last_t, n_frames, n_children,
        area_mean, growth_rate_per_h`` (mean), ``division_t`` (NaN unless it
        divides) and ``cycle_min`` (NaN unless born by division and dividing).
    """
    grouped = tracks.groupby("track_id", sort=True)
    table = pd.DataFrame({
        "parent_track_id": grouped["parent_track_id"].first(),
        "first_t": grouped["t"].min(), "last_t": grouped["t"].max(), "n_frames": grouped.size(),
        "area_mean": grouped["area"].mean(), "growth_rate_per_h": grouped["growth_rate_per_h"].mean(),
    })
    children = table.groupby("parent_track_id").size()
    table["n_children"] = children.reindex(table.index, fill_value=0).to_numpy()
    table["division_t"] = table["last_t"].where(table["n_children"] > 0)
    mother_division = table["division_t"].reindex(table["parent_track_id"]).to_numpy()
    table["cycle_min"] = table["division_t"] - mother_division
    return table.reset_index()


def field_summary(tracks: pd.DataFrame, lineages: pd.DataFrame) -> dict[str, Any]:
    """One field's counts and means: tracks, divisions, cell cycle, growth and consistency."""
    return {
        "n_objects": len(tracks),
        "n_tracks": len(lineages),
        "n_divisions": int((lineages["n_children"] > 0).sum()),
        "cycle_min_mean": float(lineages["cycle_min"].mean()) if lineages["cycle_min"].notna().any() else np.nan,
        "growth_rate_per_h_mean": (
            float(tracks["growth_rate_per_h"].mean()) if tracks["growth_rate_per_h"].notna().any() else np.nan
        ),
        "area_jump_fraction": segmentation_consistency(
            tracks["track_id"].to_numpy(), tracks["frame"].to_numpy(), tracks["area"].to_numpy()
        ),
    }
