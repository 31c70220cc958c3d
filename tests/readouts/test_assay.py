from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cellflow.readouts import Controls, PloidyParams, dna_histogram, fraction_4n, g1_peak, well_table, z_prime
from cellflow.readouts.assay import zprime_table


def test_z_prime_hand_computed():
    # pos mean 10, sample sd 1 (values 9, 10, 11); neg mean 4, sd 2 (2, 4, 6): 1 - 3 * 3 / 6 = -0.5
    assert z_prime([9.0, 10.0, 11.0], [2.0, 4.0, 6.0]) == pytest.approx(-0.5, abs=1e-12)
    # sd 0.5 each (1.5, 2.5 -> sd 0.7071...): 1 - 3 * (2 * sqrt(0.5)) / 20
    assert z_prime([21.5, 22.5], [1.5, 2.5, math.nan]) == pytest.approx(1 - 6 * math.sqrt(0.5) / 20, abs=1e-12)
    assert z_prime([3.0, 3.0], [3.0, 3.0]) != z_prime([3.0, 3.0], [3.0, 3.0])  # NaN: no spread, no gap
    assert z_prime([2.0, 4.0], [2.0, 4.0]) == -math.inf


def test_z_prime_needs_two_values():
    with pytest.raises(ValueError, match=r"z_prime: negative needs at least two finite values, got \[1.0, nan\]"):
        z_prime([1.0, 2.0], [1.0, math.nan])


def _cycle(rng: np.random.Generator, n: int, g1: float, g2_fraction: float, s_fraction: float = 0.2) -> np.ndarray:
    u = rng.random(n)
    ploidy = np.where(u < g2_fraction, 2.0, np.where(u < g2_fraction + s_fraction, rng.uniform(1, 2, n), 1.0))
    return g1 * ploidy * (1 + 0.05 * rng.standard_normal(n))


@pytest.mark.parametrize(("g1", "g2_fraction"), [(1000.0, 0.25), (37.0, 0.1), (5e5, 0.6)])
def test_g1_peak_and_4n_fraction_recover_the_truth(g1, g2_fraction):
    rng = np.random.default_rng(7)
    content = _cycle(rng, 4000, g1, g2_fraction)
    bins, counts = dna_histogram(content)
    peak = g1_peak(bins, counts)
    # The mode of a 5 % CV peak, smoothed by 0.05 octave, on 1.1 % bins: within 3 %.
    assert peak == pytest.approx(g1, rel=0.03)
    n, fraction = fraction_4n(bins, counts, peak)
    # Against the exact count at the same threshold: off by at most the cells of the threshold's bin.
    exact = int(np.sum(content > 1.5 * peak))
    assert abs(n - exact) <= int(np.sum(np.abs(content / (1.5 * peak) - 1) < 0.012))
    assert fraction == pytest.approx(n / content.size)


def test_dna_histogram_is_log2_binned():
    bins, counts = dna_histogram(np.array([2.0**3, 2.0**3 * 1.005, 2.0**3 * 1.02, 0.0]))
    assert bins.tolist() == [192, 193] and counts.tolist() == [2, 1]


def test_g1_peak_of_an_empty_histogram_is_nan():
    assert math.isnan(g1_peak(np.zeros(0, int), np.zeros(0, int)))


def _fields(rng: np.random.Generator, wells: dict[str, float], sites: int = 2) -> tuple[pd.DataFrame, dict]:
    rows, contents = [], {}
    for well, g2 in wells.items():
        for site in range(sites):
            content = _cycle(rng, 300, 1000.0, g2)
            contents[(well, site)] = content
            bins, counts = dna_histogram(content)
            rows.append({"labels": "labels_nuclei", "plate": "P1", "well": well, "site": site, "t": 0.0,
                         "n_objects": content.size + 3, "area_sum": 50.0 * (content.size + 3), "dna_n": content.size,
                         "dna_content_sum": content.sum(), "dna_bins": bins.tolist(), "dna_counts": counts.tolist()})
    return pd.DataFrame(rows), contents


def test_well_table_aggregates_fields():
    rng = np.random.default_rng(3)
    fields, contents = _fields(rng, {"A01": 0.1, "A02": 0.5})
    params = PloidyParams(histogram_edges=(0.0, 0.5, 1.25, 1.75))
    wells, annotated = well_table(fields, params)
    everything = np.concatenate(list(contents.values()))
    peak = g1_peak(*dna_histogram(everything))
    assert wells["g1_peak"].tolist() == [peak, peak]
    for _, row in wells.iterrows():
        content = np.concatenate([contents[(row["well"], s)] for s in range(2)])
        assert row["n_objects"] == content.size + 6 and row["n_fields"] == 2
        assert row["area_mean"] == pytest.approx(50.0)
        assert row["dna_content_mean"] == pytest.approx(content.mean())
        assert row["fraction_4n"] == pytest.approx(np.mean(content > 1.5 * peak), abs=0.01)
        ratio = content / peak
        expected = [np.sum(ratio < 0.5), np.sum((ratio >= 0.5) & (ratio < 1.25)),
                    np.sum((ratio >= 1.25) & (ratio < 1.75)), np.sum(ratio >= 1.75)]
        got = [row[c] for c in ("dna_hist_0_0.5", "dna_hist_0.5_1.25", "dna_hist_1.25_1.75", "dna_hist_1.75_inf")]
        assert sum(got) == content.size
        np.testing.assert_allclose(got, expected, atol=0.01 * content.size)  # bin-centre rounding at the edges
    assert annotated.groupby("well")["n_4n"].sum().tolist() == wells["n_4n"].tolist()


def test_zprime_table_per_plate_and_readout():
    wells = pd.DataFrame({"labels": "labels_nuclei", "plate": "P1", "well": ["A01", "A02", "A03", "B01", "B02"],
                          "n_objects": [10, 12, 11, 3, 5], "fraction_4n": [0.5, 0.6, 0.55, 0.2, 0.1]})
    table = zprime_table(wells, Controls(positive=("A01", "A02", "A03"), negative=("B01", "B02")),
                         readouts=("n_objects", "fraction_4n"))
    assert table["readout"].tolist() == ["n_objects", "fraction_4n"]
    row = table.iloc[1]
    assert row["z_prime"] == pytest.approx(z_prime([0.5, 0.6, 0.55], [0.2, 0.1]))
    assert (row["n_pos"], row["n_neg"]) == (3, 2) and row["neg_mean"] == pytest.approx(0.15)


@pytest.mark.parametrize(("kind", "data", "match"), [
    (PloidyParams, {"threshold": 2.0}, r"PloidyParams\.threshold must be a number in \(1, 2\)"),
    (PloidyParams, {"histogram_edges": [1, 0.5]}, r"PloidyParams\.histogram_edges must be at least two increasing"),
    (PloidyParams, {"colour": 1}, r"PloidyParams got unknown keys \['colour'\]"),
    (Controls, {"positive": ["A01"], "negative": ["B01", "B02"]}, r"Controls\.positive must be a list of at least two"),
    (Controls, {"positive": ["A01", "B01"], "negative": ["B01", "B02"]}, r"Controls\.negative must be wells that are"),
])
def test_params_validation(kind, data, match):
    with pytest.raises(ValueError, match=match):
        kind.from_dict(data)
