"""Summaries of a table of field scores per well, plate or any other grouping.

Caicedo et al. 2019 average F1 over images first and over thresholds second: at
each threshold the mean F1 of the group's fields, then the mean of those means.
Both are plain means over complete rows, so the result equals the mean of the
fields' ``f1_mean``; the per-threshold means are kept as ``f1_<t>``. Counts
(TP/FP/FN at the error threshold, missed and true objects per area bin, merges,
splits, extras, objects) are summed, and the miss rate of an area bin is the
group's missed objects over its true objects in that bin (NaN when it has none).
Jaccard and Dice are means over fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["summarise"]

_F1 = re.compile(r"^f1_(?!mean$)")
_MISSED = "missed_area_"
_TRUE = "true_area_"
_SUMMED = re.compile(r"^(tp|fp|fn)_|^(missed_area|true_area)_|^(merges|splits|extra|n_true|n_pred)$")
_MEANS = ("jaccard", "dice")


def summarise(table: pd.DataFrame, by: Sequence[str] = ("plate", "well")) -> pd.DataFrame:
    """Summarise field scores per group (default: per well).

    Parameters
    ----------
    table : pandas.DataFrame
        One row per field, as from :func:`score_screen`: the grouping columns and
        the columns of :meth:`FieldScore.to_row`.
    by : sequence of str
        Grouping columns, e.g. ``('plate', 'well')`` or ``('plate',)``.

    Returns
    -------
    summary : pandas.DataFrame
        One row per group, sorted by ``by``: ``n_fields``; ``f1_<t>`` (mean over
        fields) and ``f1_mean`` (their mean over thresholds); summed counts;
        ``miss_rate_<bin>``; mean ``jaccard`` and ``dice``.

    Raises
    ------
    ValueError
        ``by`` is empty, or a grouping or score column is missing.

    Examples
    --------
    >>> table = pd.DataFrame({"plate": ["P1", "P1"], "well": ["A01", "A01"],
    ...                       "f1_0.50": [1.0, 0.5], "f1_0.90": [0.5, 0.0]})
    >>> summarise(table)[["f1_0.50", "f1_0.90", "f1_mean"]].to_numpy().tolist()
    [[0.75, 0.25, 0.5]]
    """
    by = list(by)
    if not by:
        raise ValueError("summarise: by must name at least one grouping column, got ()")
    missing = [c for c in by if c not in table.columns]
    f1_columns = [c for c in table.columns if _F1.match(str(c))]
    if not f1_columns:
        missing.append("f1_<threshold>")
    if missing:
        raise ValueError(
            f"summarise: table lacks columns {missing!r}; it has {list(map(str, table.columns))!r}"
        )
    summed = [c for c in table.columns if _SUMMED.match(str(c)) and c not in by]
    means = [c for c in _MEANS if c in table.columns]
    grouped = table.groupby(by, sort=True)
    summary = grouped[f1_columns + means].mean()
    summary.insert(0, "n_fields", grouped.size())
    summary.insert(1 + len(f1_columns), "f1_mean", summary[f1_columns].mean(axis=1))
    summary = summary.join(grouped[summed].sum())
    for column in [c for c in summed if c.startswith(_MISSED)]:
        bin_name = column[len(_MISSED):]
        true = summary.get(_TRUE + bin_name)
        if true is not None:
            rate = np.full(len(summary), np.nan)
            np.divide(summary[column].to_numpy(float), true.to_numpy(float), out=rate, where=true.to_numpy() > 0)
            summary[f"miss_rate_{bin_name}"] = rate
    return summary.reset_index()
