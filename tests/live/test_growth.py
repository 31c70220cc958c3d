"""Growth rates, area jumps, consistency and lineages against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellflow.live import area_jumps, growth_rates, lineage_table, segmentation_consistency


def test_growth_rate_of_exponential_growth_with_uneven_times_and_two_tracks():
    t = np.array([0.0, 20.0, 60.0, 0.0, 30.0, 90.0])
    track = np.array([4, 4, 4, 2, 2, 9])
    k = {4: 0.9, 2: -0.3}  # 1/h
    area = np.array([50 * np.exp(k.get(int(i), 0.0) * ti / 60) for i, ti in zip(track, t)])
    rate = growth_rates(track, t, area)
    np.testing.assert_allclose(rate[:5], [0.9, 0.9, 0.9, -0.3, -0.3], rtol=1e-12)
    assert np.isnan(rate[5])  # a single frame has no rate


def test_growth_rate_central_difference_by_hand():
    # ln areas 0, ln 2, ln 2 at 0, 60, 120 min: one-sided at the ends, central inside.
    rate = growth_rates(np.ones(3, int), np.array([0.0, 60.0, 120.0]), np.array([1.0, 2.0, 2.0]))
    np.testing.assert_allclose(rate, [np.log(2), np.log(2) / 2, 0.0])


def test_area_jumps_only_between_consecutive_frames_of_a_track():
    track = np.array([1, 1, 1, 1, 2, 2])
    frame = np.array([0, 1, 2, 4, 0, 1])
    area = np.array([100.0, 131.0, 100.0, 300.0, 100.0, 71.0])
    # 100->131: +31 %; 131->100: -23.7 %; 100 at 2 -> 300 at 4 is not consecutive; 100->71: -29 %
    assert area_jumps(track, frame, area).tolist() == [True, False, False, False, False, False]
    assert area_jumps(track, frame, area, threshold=0.2).tolist() == [True, True, False, False, True, False]


def test_segmentation_consistency_counts_cells_not_frames():
    track = np.array([1, 1, 1, 2, 2, 3, 3, 4])
    frame = np.array([0, 1, 2, 0, 1, 0, 2, 0])
    area = np.array([10.0, 20.0, 40.0, 10.0, 11.0, 10.0, 50.0, 10.0])
    # cells with a consecutive pair: 1 (jumps twice) and 2 (no jump); 3 has a gap only, 4 one frame
    assert segmentation_consistency(track, frame, area) == 0.5
    assert np.isnan(segmentation_consistency(np.array([1]), np.array([0]), np.array([5.0])))


def test_lineage_table_division_times_and_cycle_durations():
    rows = [  # track, parent, t
        (1, 0, 0.0), (1, 0, 30.0),
        (2, 1, 60.0), (2, 1, 90.0), (2, 1, 120.0),
        (3, 1, 60.0), (3, 1, 90.0),
        (4, 2, 150.0), (5, 2, 150.0),
    ]
    tracks = pd.DataFrame(rows, columns=["track_id", "parent_track_id", "t"])
    tracks["area"] = 100.0
    tracks["growth_rate_per_h"] = 0.0
    table = lineage_table(tracks).set_index("track_id")
    assert table["n_children"].tolist() == [2, 2, 0, 0, 0]
    assert table["division_t"].tolist()[:2] == [30.0, 120.0]
    assert table["cycle_min"].iloc[1] == pytest.approx(90.0)  # 120 - 30
    assert table["cycle_min"].drop(index=2).isna().all()
    assert table.loc[2, "n_frames"] == 3 and table.loc[2, "first_t"] == 60.0
