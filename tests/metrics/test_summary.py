from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.metrics import ScoreOptions, score_field, summarise
from tests.metrics.oracle import random_pair


def _table(n_fields=12, seed0=0):
    """Field rows from random pairs, spread over 2 plates x 2 wells (3 sites each)."""
    rows = []
    for i in range(n_fields):
        truth, pred, _ = random_pair(seed0 + i)
        score = score_field(truth, pred, area_bins=(0, 10, 40, 100, float("inf")))
        rows.append({"plate": f"P{i // 6}", "well": ("A01", "B02")[i // 3 % 2], "site": i % 3, "t": 0.0,
                     **score.to_row()})
    return pd.DataFrame(rows)


def test_average_f1_is_the_mean_over_thresholds_of_the_mean_over_fields():
    table = _table()
    wells = summarise(table)
    assert wells[["plate", "well"]].to_numpy().tolist() == [["P0", "A01"], ["P0", "B02"], ["P1", "A01"], ["P1", "B02"]]
    assert wells["n_fields"].tolist() == [3, 3, 3, 3]
    f1_columns = [f"f1_{t:.2f}" for t in ScoreOptions().thresholds]
    for (plate, well), fields in table.groupby(["plate", "well"]):
        got = wells[(wells.plate == plate) & (wells.well == well)].iloc[0]
        per_threshold = [fields[c].mean() for c in f1_columns]
        assert [got[c] for c in f1_columns] == pytest.approx(per_threshold, abs=1e-15)
        assert got["f1_mean"] == pytest.approx(np.mean(per_threshold), abs=1e-15)
        # ... which equals the mean of the fields' own means
        assert got["f1_mean"] == pytest.approx(fields["f1_mean"].mean(), abs=1e-12)
        for column in ("merges", "splits", "extra", "tp_0.70", "missed_area_0_10", "true_area_100_inf", "n_true"):
            assert got[column] == fields[column].sum()
        assert got["jaccard"] == pytest.approx(fields["jaccard"].mean(), abs=1e-15)


def test_miss_rates_pool_the_counts_and_are_nan_for_empty_bins():
    table = pd.DataFrame({
        "plate": ["P1", "P1", "P2"], "well": ["A01", "A01", "A01"], "f1_0.50": [1.0, 0.0, 0.5],
        "missed_area_0_250": [1, 2, 0], "true_area_0_250": [4, 2, 0],
        "missed_area_250_inf": [0, 0, 0], "true_area_250_inf": [1, 0, 3],
    })
    plates = summarise(table, by=("plate",))
    # P1: (1 + 2) / (4 + 2) = 0.5 in the first bin; P2 has no object in it
    assert plates["missed_area_0_250"].tolist() == [3, 0] and plates["true_area_0_250"].tolist() == [6, 0]
    np.testing.assert_array_equal(plates["miss_rate_0_250"], [0.5, np.nan])
    np.testing.assert_array_equal(plates["miss_rate_250_inf"], [0.0, 0.0])
    assert plates["f1_mean"].tolist() == [0.5, 0.5]


def test_empty_table_gives_an_empty_summary():
    table = _table(2).iloc[:0]
    summary = summarise(table, by=("plate",))
    assert len(summary) == 0 and {"plate", "n_fields", "f1_mean", "miss_rate_0_10"} <= set(summary.columns)


@pytest.mark.parametrize(
    ("by", "match"),
    [(("plate", "row"), r"lacks columns \['row'\]"), ((), r"by must name at least one grouping column")],
)
def test_bad_groupings_are_refused(by, match):
    with pytest.raises(ValueError, match=match):
        summarise(_table(2), by=by)


def test_a_table_without_f1_is_refused():
    with pytest.raises(ValueError, match=r"lacks columns \['f1_<threshold>'\]"):
        summarise(pd.DataFrame({"plate": ["P1"], "well": ["A01"], "merges": [1]}))
