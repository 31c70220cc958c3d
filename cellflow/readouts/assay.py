"""Plate readouts from per-field summaries: DNA-content histograms, 4N fraction, Z'-factor.

DNA content (integrated nuclear intensity of the DNA channel) is summarised per field
as a sparse histogram on a fixed log2 grid of :data:`BINS_PER_OCTAVE` bins per
doubling (:func:`dna_histogram`): a few hundred numbers per field whatever the
scale of the intensities, and summable, so a plate's histogram is the sum of its
fields' and the client never reads the object tables.

Cell cycle (Caicedo et al. 2019). On a log scale G1 (2N) and G2/M (4N) nuclei are
two peaks one octave apart. The G1 peak of a plate is the robust mode of its
smoothed histogram (:func:`g1_peak`); nuclei whose content exceeds
``threshold x peak`` (default 1.5, midway between 2N and 4N on a linear scale) are
called 4N. Counting bins by their centre, a call is off by at most one bin
(2**(1/64) - 1 = 1.1 % of content) at the threshold.

Assay quality. :func:`z_prime` is Zhang et al. (1999)'s Z'-factor of per-well
values of positive and negative control wells.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cellflow._config import check_keys

__all__ = [
    "BINS_PER_OCTAVE",
    "READOUTS",
    "Controls",
    "PloidyParams",
    "dna_histogram",
    "fraction_4n",
    "g1_peak",
    "well_table",
    "z_prime",
    "zprime_table",
]

#: Resolution of the log2 DNA-content grid: bin ``b`` holds contents in [2**(b/64), 2**((b+1)/64)).
BINS_PER_OCTAVE = 64
#: Per-well readouts that :func:`zprime_table` rates.
READOUTS: tuple[str, ...] = ("n_objects", "area_mean", "dna_content_mean", "fraction_4n")
_KEYS = ("labels", "plate", "well")


def _fail(owner: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


def _positive(owner: str, name: str, value: Any, *, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= low:
        raise _fail(owner, name, f"a finite number > {low:g}", value)
    return float(value)


@dataclass(frozen=True)
class PloidyParams:
    """How nuclei are called 2N or 4N from their DNA content.

    Parameters
    ----------
    threshold : float
        Nuclei above ``threshold x`` the plate's G1 peak are 4N; in (1, 2).
    smoothing_octaves : float
        Gaussian sigma, in octaves (log2 units), of the histogram smoothing before the mode.
    g1_min_height : float
        The mode may be the G2 peak of a plate where most cells arrest in G2; a local
        maximum one octave below with at least this fraction of its height is then the G1 peak.
    histogram_edges : tuple of float
        Edges, in units of the G1 peak, of the per-well histogram bins (plus one
        overflow bin above the last edge).
    exclude_border : bool
        Leave nuclei cut by the field edge (partial content) out of DNA-content readouts.

    Examples
    --------
    >>> PloidyParams.from_dict(PloidyParams(threshold=1.6).to_dict()) == PloidyParams(threshold=1.6)
    True
    """

    threshold: float = 1.5
    smoothing_octaves: float = 0.05
    g1_min_height: float = 0.25
    histogram_edges: tuple[float, ...] = tuple(float(e) for e in np.arange(0.0, 4.01, 0.25))
    exclude_border: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        threshold = _positive("PloidyParams", "threshold", self.threshold, low=1.0)
        if threshold >= 2.0:
            raise _fail("PloidyParams", "threshold", "a number in (1, 2) (between 2N and 4N)", self.threshold)
        set_(self, "threshold", threshold)
        set_(self, "smoothing_octaves", _positive("PloidyParams", "smoothing_octaves", self.smoothing_octaves))
        set_(self, "g1_min_height", _positive("PloidyParams", "g1_min_height", self.g1_min_height))
        edges = tuple(float(e) for e in self.histogram_edges) if isinstance(self.histogram_edges, Sequence) else ()
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 0:
            raise _fail("PloidyParams", "histogram_edges", "at least two increasing numbers >= 0", self.histogram_edges)
        set_(self, "histogram_edges", edges)
        if not isinstance(self.exclude_border, bool):
            raise _fail("PloidyParams", "exclude_border", "True or False", self.exclude_border)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict; :meth:`from_dict` inverts it."""
        return {"threshold": self.threshold, "smoothing_octaves": self.smoothing_octaves,
                "g1_min_height": self.g1_min_height, "histogram_edges": list(self.histogram_edges),
                "exclude_border": self.exclude_border}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PloidyParams:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class Controls:
    """Positive and negative control wells (applied to every plate) for the Z'-factor.

    Examples
    --------
    >>> Controls.from_dict({"positive": ["A01", "A02"], "negative": ["B01", "B02"]}).positive
    ('A01', 'A02')
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            value = getattr(self, name)
            wells = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
            if len(wells) < 2 or any(not isinstance(w, str) for w in wells) or len(set(wells)) != len(wells):
                raise _fail("Controls", name, "a list of at least two distinct well names (for a SD)", value)
            object.__setattr__(self, name, wells)
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise _fail("Controls", "negative", "wells that are not positive controls", both)

    def to_dict(self) -> dict[str, Any]:
        """``{'positive': [...], 'negative': [...]}``."""
        return {"positive": list(self.positive), "negative": list(self.negative)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Controls:
        """Inverse of :meth:`to_dict`, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


# ---------------------------------------------------------------------------- histograms
def dna_histogram(content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse histogram of DNA contents on the log2 grid (positive contents only).

    Returns
    -------
    bins : (B,) ndarray of int64
        Occupied bins, increasing: bin ``b`` holds contents in ``[2**(b/64), 2**((b+1)/64))``.
    counts : (B,) ndarray of int64

    Examples
    --------
    >>> dna_histogram(np.array([1.0, 1.001, 2.0, -3.0]))
    (array([ 0, 64]), array([2, 1]))
    """
    content = np.asarray(content, np.float64)
    positive = content[content > 0]
    bins, counts = np.unique(np.floor(np.log2(positive) * BINS_PER_OCTAVE).astype(np.int64), return_counts=True)
    return bins, counts.astype(np.int64)


def _dense(bins: np.ndarray, counts: np.ndarray) -> tuple[int, np.ndarray]:
    """(first bin, dense counts) of a sparse histogram whose bins may repeat."""
    start = int(bins.min())
    return start, np.bincount(bins - start, weights=counts).astype(np.float64)


def g1_peak(bins: np.ndarray, counts: np.ndarray, params: PloidyParams | None = None) -> float:
    """DNA content of the G1 (2N) peak: the robust mode of a sparse log2 histogram.

    Parameters
    ----------
    bins, counts : (B,) ndarray of int
        A histogram from :func:`dna_histogram`, or several concatenated (bins may repeat).
    params : PloidyParams, optional

    Returns
    -------
    peak : float
        Content at the centre of the peak bin; NaN for an empty histogram.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> content = np.concatenate([rng.normal(1000, 50, 600), rng.normal(2000, 100, 300)])
    >>> round(g1_peak(*dna_histogram(content)) / 1000, 1)
    1.0
    """
    params = params or PloidyParams()
    bins, counts = np.asarray(bins, np.int64), np.asarray(counts, np.float64)
    if bins.size == 0 or counts.sum() <= 0:
        return math.nan
    start, dense = _dense(bins, counts)
    sigma = params.smoothing_octaves * BINS_PER_OCTAVE
    smooth = ndimage.gaussian_filter1d(np.pad(dense, int(4 * sigma) + 1), sigma, mode="constant")
    pad = int(4 * sigma) + 1
    mode = int(np.argmax(smooth))
    # An octave below the mode, a local maximum high enough is the G1 peak of a G2-arrested plate.
    lo, hi = max(mode - BINS_PER_OCTAVE - BINS_PER_OCTAVE // 4, 1), mode - BINS_PER_OCTAVE + BINS_PER_OCTAVE // 4
    if hi > lo:
        below = lo + int(np.argmax(smooth[lo:hi]))
        local = smooth[below] >= smooth[below - 1] and smooth[below] >= smooth[below + 1]
        if local and smooth[below] >= params.g1_min_height * smooth[mode]:
            mode = below
    return float(2.0 ** ((start + mode - pad + 0.5) / BINS_PER_OCTAVE))


def _centres(bins: np.ndarray) -> np.ndarray:
    return np.asarray(2.0 ** ((np.asarray(bins, np.float64) + 0.5) / BINS_PER_OCTAVE))


def fraction_4n(bins: np.ndarray, counts: np.ndarray, peak: float, threshold: float = 1.5) -> tuple[int, float]:
    """(count, fraction) of contents above ``threshold x peak`` in a sparse log2 histogram.

    Examples
    --------
    >>> fraction_4n(*dna_histogram(np.array([1.0, 1.1, 1.9, 2.1])), peak=1.0)
    (2, 0.5)
    """
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    above = int(counts[_centres(bins) > threshold * peak].sum())
    return above, (above / total if total else math.nan)


def _relative_histogram(bins: np.ndarray, counts: np.ndarray, peak: float, edges: Sequence[float]) -> np.ndarray:
    """Counts per bin of content / peak between ``edges`` (the last bin is the overflow)."""
    where = np.digitize(_centres(bins) / peak, edges) - 1  # -1 below the first edge, len(edges)-1 overflow
    keep = where >= 0
    return np.bincount(where[keep], weights=np.asarray(counts)[keep], minlength=len(edges)).astype(np.int64)


def _edge_names(edges: Sequence[float]) -> list[str]:
    return [f"dna_hist_{a:g}_{b:g}" for a, b in zip(edges, (*edges[1:], math.inf))]


def _concat(series: pd.Series) -> np.ndarray:
    parts = [np.asarray(v, np.int64) for v in series]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------- tables
def well_table(fields: pd.DataFrame, params: PloidyParams | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-well readouts, and the fields with their 4N calls filled in.

    Parameters
    ----------
    fields : DataFrame
        One row per (labels, field) as returned by the measure stage: ``labels``,
        ``plate``, ``well``, ``n_objects``, ``area_sum``, ``dna_n``, ``dna_content_sum``,
        ``dna_bins``, ``dna_counts`` (sparse histogram lists).
    params : PloidyParams, optional

    Returns
    -------
    wells : DataFrame
        One row per (labels, plate, well): ``n_fields``, ``n_objects``, ``area_mean``,
        ``dna_n``, ``dna_content_mean``, ``g1_peak`` (of the plate), ``dna_content_mean_g1``
        (mean / peak), ``n_4n``, ``fraction_4n``, then histogram counts
        ``dna_hist_<lo>_<hi>`` in units of the G1 peak.
    fields : DataFrame
        The input plus ``g1_peak``, ``n_4n`` and ``fraction_4n``.
    """
    params = params or PloidyParams()
    fields = fields.copy()
    peaks = {
        key: g1_peak(_concat(group["dna_bins"]), _concat(group["dna_counts"]), params)
        for key, group in fields.groupby(["labels", "plate"], sort=True)
    }
    fields["g1_peak"] = [peaks[(lab, plate)] for lab, plate in zip(fields["labels"], fields["plate"])]
    calls = [fraction_4n(b, c, p, params.threshold)
             for b, c, p in zip(fields["dna_bins"], fields["dna_counts"], fields["g1_peak"])]
    fields["n_4n"] = [n for n, _ in calls]
    fields["fraction_4n"] = [f for _, f in calls]
    rows = []
    for (labels, plate, well), group in fields.groupby(list(_KEYS), sort=True):
        peak = peaks[(labels, plate)]
        bins, counts = _concat(group["dna_bins"]), _concat(group["dna_counts"])
        n, dna_n = int(group["n_objects"].sum()), int(group["dna_n"].sum())
        mean = float(group["dna_content_sum"].sum()) / dna_n if dna_n else math.nan
        n_4n = int(group["n_4n"].sum())
        row = {"labels": labels, "plate": plate, "well": well, "n_fields": len(group), "n_objects": n,
               "area_mean": float(group["area_sum"].sum()) / n if n else math.nan, "dna_n": dna_n,
               "dna_content_mean": mean, "g1_peak": peak, "dna_content_mean_g1": mean / peak,
               "n_4n": n_4n, "fraction_4n": n_4n / int(counts.sum()) if counts.sum() else math.nan}
        hist = _relative_histogram(bins, counts, peak, params.histogram_edges) if bins.size and peak > 0 else \
            np.zeros(len(params.histogram_edges), np.int64)
        row.update(zip(_edge_names(params.histogram_edges), hist.tolist()))
        rows.append(row)
    return pd.DataFrame(rows), fields


def z_prime(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """Zhang et al. (1999)'s Z'-factor: ``1 - 3 (sd_p + sd_n) / |mean_p - mean_n|``.

    Standard deviations are sample SDs (``ddof=1``). NaN values are ignored.

    Parameters
    ----------
    positive, negative : (n,) array_like of float
        Per-well values of the positive and negative control wells, at least two each.

    Returns
    -------
    z : float
        1 for a perfect assay, > 0.5 excellent, <= 0 no separation; ``-inf`` when the
        means are equal and the SDs are not both 0, NaN when both are.

    Raises
    ------
    ValueError
        Fewer than two finite values in a group.

    Examples
    --------
    >>> round(z_prime([19.0, 20.0, 21.0], [1.0, 2.0, 3.0]), 4)  # 1 - 3 (1 + 1) / 18
    0.6667
    """
    groups = []
    for name, values in (("positive", positive), ("negative", negative)):
        array = np.asarray(values, np.float64)
        array = array[np.isfinite(array)]
        if array.size < 2:
            raise ValueError(f"z_prime: {name} needs at least two finite values, got {np.asarray(values).tolist()!r}")
        groups.append(array)
    (mp, sp), (mn, sn) = ((g.mean(), g.std(ddof=1)) for g in groups)
    spread, gap = 3.0 * (sp + sn), abs(mp - mn)
    if gap == 0:
        return math.nan if spread == 0 else -math.inf
    return float(1.0 - spread / gap)


def zprime_table(wells: pd.DataFrame, controls: Controls, readouts: Sequence[str] = READOUTS) -> pd.DataFrame:
    """Z'-factor of each readout per (labels, plate) from the per-well table.

    Returns
    -------
    DataFrame
        Columns ``labels, plate, readout, z_prime, pos_mean, pos_sd, neg_mean, neg_sd, n_pos, n_neg``;
        groups lacking two control wells of each kind are left out.
    """
    rows = []
    for (labels, plate), group in wells.groupby(["labels", "plate"], sort=True):
        pos = group[group["well"].isin(controls.positive)]
        neg = group[group["well"].isin(controls.negative)]
        for readout in readouts:
            p, n = pos[readout].dropna().to_numpy(float), neg[readout].dropna().to_numpy(float)
            if p.size < 2 or n.size < 2:
                continue
            rows.append({"labels": labels, "plate": plate, "readout": readout, "z_prime": z_prime(p, n),
                         "pos_mean": p.mean(), "pos_sd": p.std(ddof=1), "neg_mean": n.mean(),
                         "neg_sd": n.std(ddof=1), "n_pos": p.size, "n_neg": n.size})
    columns = ["labels", "plate", "readout", "z_prime", "pos_mean", "pos_sd", "neg_mean", "neg_sd", "n_pos", "n_neg"]
    return pd.DataFrame(rows, columns=columns)
