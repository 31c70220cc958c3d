"""Kinase-translocation-reporter (KTR) readouts: per-cell nuclear/cytoplasmic intensity ratios.

A KTR moves out of the nucleus when its kinase is active (Regot et al. 2014), so the
ratio of its nuclear to its cytoplasmic intensity, per cell and frame, reads out kinase
activity (Van Valen et al. 2016 use the cytoplasmic/nuclear ratio; both are returned).

Regions, per nucleus ``k`` (all intensities after subtracting ``background``):

* **nucleus**: nucleus ``k`` eroded by ``nuclear_erosion_px`` pixels (its blurred rim
  mixes nuclear and cytoplasmic signal); the whole nucleus when erosion would empty it.
  With ``cells``, each cell is likewise eroded by ``cell_erosion_px`` before its
  cytoplasm is taken (its rim mixes with the background or the neighbour).
* **cytoplasm**, by ``method``:

  - ``'ring'``: pixels at more than ``ring_gap_px`` and at most ``ring_gap_px +
    ring_radius_px`` pixels (Euclidean) from nucleus ``k``, split between neighbouring
    nuclei as :func:`skimage.segmentation.expand_labels` splits them, never within
    ``ring_gap_px`` of any nucleus; with ``cells``, only pixels of cell ``k``. The
    standard readout when only nuclei are segmented.
  - ``'cytoplasm'``: cell ``k`` minus every pixel within ``ring_gap_px`` of a nucleus
    (needs ``cells``); the mean over the whole segmented cytoplasm.
  - ``'gmm'``: a two-component Gaussian mixture fitted (EM, :func:`fit_gmm_1d`) to the
    intensities of the ``'cytoplasm'`` pixels; the cytoplasm is the mean of the heavier
    component (the one holding most pixels), or the plain mean when one Gaussian fits as
    well by BIC (:func:`gmm_level`). Van Valen et al. 2016 used it so that a
    cytoplasm mask that overlaps background, the nuclear blur or a neighbour does not bias
    the level: such pixels fall in the lighter component.

The ratio is ``nuclear mean / cytoplasmic level``; a cell with fewer than
``min_cytoplasm_px`` cytoplasm pixels or a level that is not positive gets NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, find_boundaries

__all__ = ["KTR_COLUMNS", "KTR_METHODS", "TRACK_KEYS", "fit_gmm_1d", "gmm_level", "join_tracks", "ktr_ratios"]

#: Cytoplasm estimates of :func:`ktr_ratios`.
KTR_METHODS: tuple[str, ...] = ("ring", "cytoplasm", "gmm")
#: Columns of the table :func:`ktr_ratios` returns.
KTR_COLUMNS: tuple[str, ...] = (
    "label", "nucleus_area", "cytoplasm_area", "nuclear_intensity_mean", "cytoplasm_intensity",
    "ratio_nuclear_cytoplasmic", "ratio_cytoplasmic_nuclear",
)
#: Keys joining per-frame tables with a tracks table.
TRACK_KEYS: tuple[str, ...] = ("plate", "well", "site", "t", "label")

_EM_ITERATIONS = 200
_EM_TOLERANCE = 1e-8
_MIN_GMM_PIXELS = 8  # fewer pixels cannot support two Gaussians: plain mean instead


def _check_inputs(reporter: Any, nuclei: Any, cells: Any | None, method: str,
                  sizes: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if method not in KTR_METHODS:
        raise ValueError(f"method must be one of {KTR_METHODS!r}, got {method!r}")
    reporter, nuclei = np.asarray(reporter), np.asarray(nuclei)
    if reporter.ndim != 2 or reporter.dtype.kind not in "uif":
        raise ValueError(f"reporter must be a real (M, N) array, got shape {reporter.shape} dtype {reporter.dtype}")
    arrays = {"nuclei": nuclei} if cells is None else {"nuclei": nuclei, "cells": np.asarray(cells)}
    for name, array in arrays.items():
        if array.shape != reporter.shape or array.dtype.kind not in "ui":
            raise ValueError(f"{name} must be integer labels of the reporter's shape {reporter.shape}, "
                             f"got shape {array.shape} dtype {array.dtype}")
    if cells is None and method != "ring":
        raise ValueError(f"method {method!r} needs cells (the segmented cytoplasm); pass cells or use method='ring'")
    for name, value in sizes.items():
        low = 1 if name == "ring_radius_px" else 0
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return reporter.astype(np.float64), nuclei, None if cells is None else arrays["cells"]


def _eroded(labels: np.ndarray, erosion_px: int) -> np.ndarray:
    """Each object minus its pixels within ``erosion_px`` of its edge; an object that would vanish stays whole.

    The edge is where the object meets the background or another object, not the image border.
    """
    if erosion_px == 0:
        return labels
    inner = (labels > 0) & ~find_boundaries(labels, mode="inner")
    kept = np.where(ndi.distance_transform_edt(inner) > erosion_px - 1, labels, 0)
    return np.where(np.isin(labels, np.unique(kept)), kept, labels)


def _cytoplasm_regions(nuclei: np.ndarray, cells: np.ndarray | None, method: str, radius: int,
                       gap: int) -> np.ndarray:
    """Labels of each nucleus's cytoplasm region (see the module docstring)."""
    near = expand_labels(nuclei, gap) if gap > 0 else nuclei
    if method == "ring":
        region = np.where(near == 0, expand_labels(nuclei, gap + radius), 0)
        return region if cells is None else np.where(region == cells, region, 0)
    assert cells is not None  # checked at the edge
    return np.where(near == 0, cells, 0)


def fit_gmm_1d(values: np.ndarray, *, components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Maximum-likelihood Gaussian mixture of 1-D values by expectation-maximisation.

    Starts from means at evenly spaced quantiles and the overall variance; variances have
    a floor of 1e-6 x the overall variance (a component cannot collapse onto one value).

    Parameters
    ----------
    values : (K,) ndarray of float
        At least ``components`` values.
    components : int
        Number of Gaussians, >= 1.

    Returns
    -------
    weights, means, variances : (components,) ndarray of float64
        Sorted by mean.
    log_likelihood : float
        Of the values under the fitted mixture.

    Raises
    ------
    ValueError
        Too few values.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> values = np.concatenate([rng.normal(10, 1, 300), rng.normal(30, 2, 100)])
    >>> weights, means, _, _ = fit_gmm_1d(values)
    >>> np.round(weights, 2).tolist(), np.round(means).tolist()
    ([0.75, 0.25], [10.0, 30.0])
    """
    x = np.asarray(values, np.float64).ravel()
    if components < 1 or x.size < components:
        raise ValueError(f"fit_gmm_1d needs components >= 1 and at least that many values, "
                         f"got components={components!r} and {x.size} values")
    total_var = float(x.var()) or 1.0
    floor = 1e-6 * total_var
    means = np.quantile(x, (np.arange(components) + 0.5) / components)
    variances = np.full(components, total_var)
    weights = np.full(components, 1.0 / components)
    previous = -np.inf
    for _ in range(_EM_ITERATIONS):
        log_p = np.log(weights) - 0.5 * (np.log(2 * np.pi * variances) + (x[:, None] - means) ** 2 / variances)
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        likelihood = float(log_norm.sum())
        if likelihood - previous <= _EM_TOLERANCE * abs(likelihood):
            break
        previous = likelihood
        resp = np.exp(log_p - log_norm)
        mass = resp.sum(axis=0) + 1e-300
        weights = mass / x.size
        means = (resp * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((resp * (x[:, None] - means) ** 2).sum(axis=0) / mass, floor)
    order = np.argsort(means)
    return weights[order], means[order], variances[order], likelihood


def gmm_level(values: np.ndarray) -> float:
    """The cytoplasm level of a region's pixel values: the mean of the heavier of two Gaussians.

    The two-component mixture is kept only when it explains the values better than one
    Gaussian by the Bayesian information criterion (``BIC = -2 log L + p log n``, with
    ``p = 3 k - 1`` parameters); a clean region (one level plus noise) would otherwise be
    split into two halves of its noise, and the heavier half's mean is biased.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> clean = rng.normal(100, 10, 400)
    >>> float(round(gmm_level(clean) / clean.mean(), 6))  # one Gaussian: the plain mean
    1.0
    >>> mixed = np.concatenate([clean, rng.normal(10, 3, 100)])  # a fifth is background
    >>> bool(abs(gmm_level(mixed) - 100) < 2), bool(mixed.mean() < 85)
    (True, True)
    """
    x = np.asarray(values, np.float64).ravel()
    if x.size < _MIN_GMM_PIXELS:
        return float(x.mean()) if x.size else float("nan")
    weights, means, _, two = fit_gmm_1d(x, components=2)
    _, _, _, one = fit_gmm_1d(x, components=1)
    if -2 * two + 5 * np.log(x.size) >= -2 * one + 2 * np.log(x.size):
        return float(x.mean())
    return float(means[int(np.argmax(weights))])


def _gmm_levels(values: np.ndarray, regions: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per id, the mean of the heavier of two Gaussians fitted to its region's values."""
    order = np.argsort(regions.ravel(), kind="stable")
    sorted_ids = regions.ravel()[order]
    sorted_values = values.ravel()[order]
    starts = np.searchsorted(sorted_ids, ids, side="left")
    stops = np.searchsorted(sorted_ids, ids, side="right")
    levels = np.full(ids.size, np.nan)
    for i, (start, stop) in enumerate(zip(starts, stops, strict=True)):
        levels[i] = gmm_level(sorted_values[start:stop])
    return levels


def ktr_ratios(
    reporter: Any,
    nuclei: Any,
    cells: Any | None = None,
    *,
    method: str = "ring",
    ring_radius_px: int = 4,
    ring_gap_px: int = 1,
    nuclear_erosion_px: int = 2,
    cell_erosion_px: int = 1,
    min_cytoplasm_px: int = 20,
    background: float = 0.0,
) -> pd.DataFrame:
    """Per-nucleus KTR nuclear/cytoplasmic intensity ratios (see the module docstring).

    Parameters
    ----------
    reporter : (M, N) ndarray
        The reporter channel of one frame.
    nuclei : (M, N) ndarray of int
        Nucleus labels.
    cells : (M, N) ndarray of int, optional
        Cell labels, cell ``k`` containing nucleus ``k``; required by ``'cytoplasm'`` and
        ``'gmm'``, clips the ring for ``'ring'``.
    method : {'ring', 'cytoplasm', 'gmm'}
        How the cytoplasmic level is measured.
    ring_radius_px : int
        Width of the ring, >= 1 (``'ring'``).
    ring_gap_px : int
        Pixels next to any nucleus left out of the cytoplasm, >= 0 (all methods).
    nuclear_erosion_px : int
        Rim of each nucleus left out of its mean, >= 0.
    cell_erosion_px : int
        Rim of each cell (against the background or another cell) left out of its
        cytoplasm, >= 0; used with ``cells``.
    min_cytoplasm_px : int
        Cells with fewer cytoplasm pixels measured get a NaN ratio (a rounded-up mitotic
        cell is all nucleus), >= 0.
    background : float
        Subtracted from the reporter first (camera offset plus background light).

    Returns
    -------
    pandas.DataFrame
        One row per nucleus id, columns :data:`KTR_COLUMNS`: ``label``, ``nucleus_area``
        and ``cytoplasm_area`` (pixels measured), ``nuclear_intensity_mean``,
        ``cytoplasm_intensity`` (the level the method estimates),
        ``ratio_nuclear_cytoplasmic`` and its inverse ``ratio_cytoplasmic_nuclear``.

    Raises
    ------
    ValueError
        Shapes or dtypes disagree, an option is out of range, or ``cells`` is missing.

    Examples
    --------
    >>> nuclei = np.zeros((30, 30), np.uint32); nuclei[10:20, 10:20] = 3
    >>> reporter = np.where(nuclei > 0, 30.0, 10.0)
    >>> table = ktr_ratios(reporter, nuclei, ring_radius_px=3)
    >>> table[["label", "ratio_nuclear_cytoplasmic"]].values.tolist()
    [[3.0, 3.0]]
    """
    values, nuclei, cells = _check_inputs(reporter, nuclei, cells, method, {
        "ring_radius_px": ring_radius_px, "ring_gap_px": ring_gap_px,
        "nuclear_erosion_px": nuclear_erosion_px, "cell_erosion_px": cell_erosion_px,
        "min_cytoplasm_px": min_cytoplasm_px})
    values = values - float(background)
    ids = np.unique(nuclei[nuclei > 0])
    measured = _eroded(nuclei, int(nuclear_erosion_px))
    if cells is not None:
        cells = _eroded(cells, int(cell_erosion_px))
    regions = _cytoplasm_regions(nuclei, cells, method, int(ring_radius_px), int(ring_gap_px))
    nuclear_area = ndi.sum_labels(np.ones_like(values), measured, ids)
    nuclear_mean = ndi.sum_labels(values, measured, ids) / np.maximum(nuclear_area, 1)
    cyto_area = ndi.sum_labels(np.ones_like(values), regions, ids)
    if method == "gmm":
        level = _gmm_levels(values, regions, ids)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            level = ndi.sum_labels(values, regions, ids) / cyto_area
    positive = np.isfinite(level) & (level > 0) & (cyto_area >= min_cytoplasm_px)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(positive, nuclear_mean / np.where(positive, level, 1.0), np.nan)
    return pd.DataFrame({
        "label": ids.astype(np.int64), "nucleus_area": nuclear_area.astype(np.int64),
        "cytoplasm_area": cyto_area.astype(np.int64), "nuclear_intensity_mean": nuclear_mean,
        "cytoplasm_intensity": level, "ratio_nuclear_cytoplasmic": ratio,
        "ratio_cytoplasmic_nuclear": 1.0 / ratio,
    }, columns=list(KTR_COLUMNS))


def join_tracks(measurements: pd.DataFrame, tracks: pd.DataFrame | None = None, *,
                keys: Sequence[str] = TRACK_KEYS) -> pd.DataFrame:
    """Attach track ids to per-frame measurements (e.g. stacked :func:`ktr_ratios` tables).

    Parameters
    ----------
    measurements : pandas.DataFrame
        One row per object and frame, with the columns ``keys`` (``plate, well, site, t,
        label``) besides the measurements.
    tracks : pandas.DataFrame, optional
        Columns ``keys`` and ``track_id``: which track each object of each frame belongs
        to. None returns ``measurements`` unchanged (sorted by ``keys``).
    keys : sequence of str
        Join keys.

    Returns
    -------
    pandas.DataFrame
        ``measurements`` with a ``track_id`` column (missing tracks as ``<NA>``, nullable
        integers), sorted by field, ``track_id`` and ``t``: each track's time series in order.

    Raises
    ------
    ValueError
        A table lacks a key column, or ``tracks`` maps one object of one frame to two tracks.

    Examples
    --------
    >>> frames = pd.DataFrame({"plate": "P1", "well": "A01", "site": 0, "t": [0, 0, 1],
    ...                        "label": [1, 2, 5], "ratio_nuclear_cytoplasmic": [1.0, 2.0, 1.5]})
    >>> tracks = pd.DataFrame({"plate": "P1", "well": "A01", "site": 0, "t": [0, 1],
    ...                        "label": [1, 5], "track_id": [7, 7]})
    >>> join_tracks(frames, tracks)[["t", "label", "track_id"]].values.tolist()
    [[0, 1, 7], [1, 5, 7], [0, 2, <NA>]]
    """
    keys = list(keys)
    missing = [k for k in keys if k not in measurements.columns]
    if missing:
        raise ValueError(f"measurements must have the columns {keys!r}; missing {missing!r}")
    if tracks is None:
        return measurements.sort_values(keys, kind="stable").reset_index(drop=True)
    missing = [k for k in [*keys, "track_id"] if k not in tracks.columns]
    if missing:
        raise ValueError(f"tracks must have the columns {[*keys, 'track_id']!r}; missing {missing!r}")
    links = tracks[[*keys, "track_id"]]
    if links.duplicated(keys).any():
        raise ValueError(f"tracks maps an object of a frame to more than one track_id (duplicate {keys!r} rows)")
    joined = measurements.drop(columns=["track_id"], errors="ignore").merge(links, on=keys, how="left")
    joined["track_id"] = joined["track_id"].astype("Int64")
    field_keys = [k for k in keys if k not in ("t", "label")]
    return joined.sort_values([*field_keys, "track_id", "t"], kind="stable", na_position="last").reset_index(drop=True)
