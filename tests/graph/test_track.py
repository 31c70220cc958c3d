"""Track stage: one lazy task per site over all its time points, rows equal to the kernel's."""

from __future__ import annotations

import dask
import pandas as pd
import pytest

from cellflow.errors import RegionError
from cellflow.graph import build_track, track_tables
from cellflow.graph._stage import StageGraph
from cellflow.graph.track import TRACK_TABLES, TrackStageParams
from cellflow.live import lineage_table, track_labels, tracks_frame
from cellflow.pipeline.stages import STAGES
from cellflow.screen.synthetic import SyntheticSpec, synthesize_field, write_synthetic_screen

SPEC = SyntheticSpec(
    wells=("A01", "B02"), sites=2, shape_yx=(96, 96), channels=("DNA",), n_z=1, n_t=4, interval_min=15.0,
    nuclei_per_field=600, division_rate_per_h=1.0, seed=5,
)


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    return write_synthetic_screen(tmp_path_factory.mktemp("track") / "movie.zarr", SPEC, scheduler="synchronous")


def test_one_lazy_task_per_site_after_all_its_time_points(screen, no_compute):
    with no_compute():
        fake = {key: dask.delayed(str)(key) for key in screen.fields()}
        after = StageGraph(name="up", outputs=(), tasks=tuple(fake.values()), by_field=fake)
        graph = build_track(screen, TrackStageParams(labels="truth_nuclei"), after=after)
    assert len(fake) == 16 and len(graph.tasks) == 4 and set(graph.by_field) == set(fake)
    for key, task in graph.by_field.items():
        deps = set(task.dask)
        assert {fake[k].key for k in fake if k[:3] == key[:3]} <= deps
        assert not {fake[k].key for k in fake if k[:3] != key[:3]} & deps


def test_rows_match_the_kernel_on_each_sites_movie(screen, tmp_path):
    graph = build_track(screen, TrackStageParams(labels="truth_nuclei"))
    results = [task.compute(scheduler="synchronous") for task in graph.tasks]
    tables, paths = track_tables([row for r in results for row in r.rows], tmp_path)
    tracks = pd.read_parquet(paths["tracks/tracks"])
    assert set(tables) == {"tracks/tracks", "tracks/lineages", "tracks/fields"}
    assert len(pd.read_parquet(paths["tracks/fields"])) == 4
    field = synthesize_field(SPEC, plate="P1", well="B02", site=1)
    expected = tracks_frame(track_labels(field.truth_nuclei), SPEC.t_min)
    got = tracks[(tracks.well == "B02") & (tracks.site == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)
    lineages = pd.read_parquet(paths["tracks/lineages"])
    mine = lineages[(lineages.well == "B02") & (lineages.site == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine[lineage_table(expected).columns], lineage_table(expected), check_dtype=False)


def test_missing_label_variable_and_registry(screen):
    with pytest.raises(RegionError, match="labels_cells"):
        build_track(screen, TrackStageParams(labels="labels_cells"))
    entry = STAGES["track"]
    params = entry.params.from_dict({"labels": "truth_nuclei", "max_gap": 1})
    assert params.tracker.max_gap == 1 and entry.params.from_dict(params.to_dict()) == params
    assert entry.tables is TRACK_TABLES
    with pytest.raises(ValueError, match="unknown keys"):
        entry.params.from_dict({"label": "x"})
