"""Tracker kernels against brute force, hand-made movies and a synthetic time-lapse with known lineage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cellflow.live import TrackParams, solve_assignment, track_labels
from cellflow.live.evaluate import score_tracking
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field


def _disc(image: np.ndarray, centre: tuple[float, float], radius: float, label: int) -> None:
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = label


def _movie(frames: list[list[tuple[tuple[float, float], float, int]]], shape=(60, 60)) -> np.ndarray:
    movie = np.zeros((len(frames), *shape), np.uint16)
    for t, objects in enumerate(frames):
        for centre, radius, label in objects:
            _disc(movie[t], centre, radius, label)
    return movie


def _track_of(tracks, frame: int, label: int) -> int:
    return int(tracks.track_id[(tracks.frame == frame) & (tracks.label == label)][0])


def _brute_force(cost, row_alt, col_alt) -> float:
    n, m = cost.shape
    best = np.inf
    for k in range(min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                total = sum(cost[r, c] for r, c in zip(rows, cols))
                total += row_alt[[r for r in range(n) if r not in rows]].sum()
                total += col_alt[[c for c in range(m) if c not in cols]].sum()
                best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_solve_assignment_is_the_cheapest_partial_matching(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 5, 2)
    cost = rng.uniform(0, 3, (n, m))
    cost[rng.random((n, m)) < 0.3] = np.inf
    row_alt, col_alt = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    rows, cols = solve_assignment(cost, row_alt, col_alt)
    assert len(set(rows)) == rows.size and len(set(cols)) == cols.size
    total = cost[rows, cols].sum() + np.delete(row_alt, rows).sum() + np.delete(col_alt, cols).sum()
    assert total == pytest.approx(_brute_force(cost, row_alt, col_alt))


def test_global_assignment_keeps_identities_of_two_close_objects():
    # A's nearest object at t=1 is B's successor; nearest-neighbour linking would give
    # it to A and leave B unlinked (too far from A's successor); the LAP keeps both.
    movie = _movie([
        [((30, 20), 3, 1), ((30, 30), 3, 2)],
        [((30, 24), 3, 7), ((30, 15), 3, 8)],
    ])
    tracks = track_labels(movie, TrackParams(max_distance=12, overlap_weight=0.0))
    # truth: A (30,20) -> (30,15) [5 px], B (30,30) -> (30,24) [6 px]; A's nearest is (30,24) [4 px]
    assert _track_of(tracks, 0, 1) == _track_of(tracks, 1, 8)
    assert _track_of(tracks, 0, 2) == _track_of(tracks, 1, 7)
    assert set(tracks.parent_track_id) == {0}


@pytest.mark.parametrize(("max_gap", "closed"), [(1, True), (0, False)])
def test_gap_of_one_frame_is_closed_only_when_allowed(max_gap, closed):
    still = ((45, 45), 5, 9)
    movie = _movie([
        [((15, 15), 5, 1), still], [((17, 16), 5, 1), still], [still], [((21, 18), 5, 4), still],
    ])
    tracks = track_labels(movie, TrackParams(max_gap=max_gap))
    first, last = _track_of(tracks, 0, 1), _track_of(tracks, 3, 4)
    assert (first == last) is closed
    assert _track_of(tracks, 1, 1) == first
    assert len({_track_of(tracks, t, 9) for t in range(4)}) == 1


def test_division_gives_two_daughter_tracks_with_the_mother_as_parent():
    bystander = ((10, 50), 5, 3)
    movie = _movie([
        [((30, 30), 6, 1), bystander], [((30, 31), 6, 1), bystander],
        [((30, 23), 5, 5), ((30, 39), 5, 6), bystander], [((30, 22), 5, 5), ((30, 40), 5, 6), bystander],
    ])
    tracks = track_labels(movie, TrackParams(daughter_area_ratio=(0.3, 2.0)))
    mother = _track_of(tracks, 0, 1)
    assert _track_of(tracks, 1, 1) == mother
    daughters = {_track_of(tracks, 2, 5), _track_of(tracks, 2, 6)}
    assert len(daughters) == 2 and mother not in daughters
    for daughter in daughters:
        assert set(tracks.parent_track_id[tracks.track_id == daughter]) == {mother}
        assert tracks.frame[tracks.track_id == daughter].tolist() == [2, 3]
    assert tracks.frame[tracks.track_id == mother].tolist() == [0, 1]
    assert set(tracks.parent_track_id[tracks.track_id == _track_of(tracks, 0, 3)]) == {0}


def test_birth_at_the_border_starts_a_track_without_parent():
    movie = _movie([
        [((30, 30), 6, 1)], [((30, 31), 6, 1)], [((30, 32), 6, 1), ((30, 2), 4, 2)], [((30, 33), 6, 1), ((30, 4), 5, 2)],
    ])
    tracks = track_labels(movie)
    newcomer = _track_of(tracks, 2, 2)
    assert newcomer == _track_of(tracks, 3, 2) != _track_of(tracks, 2, 1)
    assert set(tracks.parent_track_id) == {0}
    assert len({_track_of(tracks, t, 1) for t in range(4)}) == 1


def test_synthetic_timelapse_links_and_divisions_on_truth_labels():
    spec = SyntheticSpec(
        wells=("A01",), sites=3, shape_yx=(256, 256), channels=("DNA",), n_z=1, n_t=10, interval_min=10.0,
        nuclei_per_field=600, division_rate_per_h=0.5, mitotic_fraction=0.05, seed=0,
    )
    found = {"links_true": 0, "links_found": 0, "divisions_true": 0, "divisions_predicted": 0, "divisions_found": 0}
    for site in range(3):
        field = synthesize_field(spec, plate="P1", well="A01", site=site)
        score = score_tracking(track_labels(field.truth_nuclei), field.truth_nuclei, field.lineage)
        found["links_true"] += score["links_true"]
        found["links_found"] += round(score["link_accuracy"] * score["links_true"])
        found["divisions_true"] += score["divisions_true"]
        found["divisions_predicted"] += score["divisions_predicted"]
        found["divisions_found"] += round(score["division_recall"] * score["divisions_true"])
    assert found["divisions_true"] >= 20  # the movie does contain divisions
    assert found["links_found"] / found["links_true"] >= 0.95
    f1 = 2 * found["divisions_found"] / (found["divisions_true"] + found["divisions_predicted"])
    assert f1 >= 0.8


def test_track_params_round_trip_and_errors():
    params = TrackParams(max_gap=3, daughter_area_ratio=(0.4, 3.0))
    assert TrackParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="max_gap"):
        TrackParams(max_gap=-1)
    with pytest.raises(ValueError, match="daughter_area_ratio"):
        TrackParams(daughter_area_ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match="unknown keys"):
        TrackParams.from_dict({"max_dist": 3})
    with pytest.raises(ValueError, match=r"\(T, Y, X\)"):
        track_labels(np.zeros((4, 4), np.uint16))
