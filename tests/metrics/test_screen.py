from __future__ import annotations

import os

import dask
import numpy as np
import pandas as pd
import pytest
from dask.delayed import Delayed
from distributed import Client, LocalCluster, get_task_stream

from cellflow.errors import RegionError
from cellflow.metrics import TABLE_NAMES, score_field, score_graph, score_screen, summarise, write_tables
from cellflow.screen import DIMS_FIELD, DIMS_LABELS, Screen, ScreenLayout
from tests.conftest import ComputeForbidden
from tests.metrics.oracle import random_labels

LAYOUT = ScreenLayout(
    plates=("P1", "P2"), wells=("A01", "B02"), sites=(0, 1), channels=("DNA",),
    shape_yx=(40, 36), t_min=(0.0, 30.0), tile_yx=(16, 24),  # tiles that do not divide the field
)
UNACQUIRED = ("P2", "B02", 1, 30.0)


def _pair(seed):
    """A truth and a prediction (part copied, shifted and relabelled, part random) for one field."""
    rng = np.random.default_rng(seed)
    truth = random_labels(rng, LAYOUT.shape_yx, np.uint32, n_max=8, max_edge=12)
    pred = np.roll(truth, (1, int(rng.integers(-2, 3))), axis=(0, 1)) * np.uint32(2)
    pred[rng.integers(0, 30):, :] = random_labels(rng, LAYOUT.shape_yx, np.uint32)[-1]  # junk rows at the bottom
    return truth, pred


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    screen = Screen.create(tmp_path_factory.mktemp("metrics") / "screen.zarr", LAYOUT)
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    screen.add_variable("labels_nuclei", dims=DIMS_LABELS, dtype="uint32")
    fields = [f for f in screen.fields(acquired_only=False) if tuple(f) != UNACQUIRED]
    for i, field in enumerate(fields):
        truth, pred = _pair(i)
        screen.write("truth_nuclei", truth, **field._asdict())
        screen.write("labels_nuclei", pred, **field._asdict())
    screen.set_acquired(fields)
    return screen


def _eager(screen, fields=None, extents=None):
    rows = []
    for field in fields or screen.fields():
        where = field._asdict()
        truth, pred = screen.read("truth_nuclei", **where), screen.read("labels_nuclei", **where)
        if extents and extents.get(tuple(field)):
            ey, ex = extents[tuple(field)]
            truth, pred = truth[:ey, :ex], pred[:ey, :ex]
        rows.append({**where, **score_field(truth, pred).to_row()})
    return pd.DataFrame(rows)


def test_threaded_scores_equal_eager_scores(screen):
    table = score_screen(screen, scheduler="threads")
    assert len(table) == 15 and UNACQUIRED not in set(map(tuple, table[list(DIMS_FIELD)].to_numpy().tolist()))
    assert table["n_true"].sum() > 50 and 0 < table["f1_mean"].mean() < 1  # scores that say something
    pd.testing.assert_frame_equal(table, _eager(screen))


def test_distributed_processes_give_the_identical_table(screen):
    threaded = score_screen(screen, scheduler="threads")
    # dashboard_address=None still binds the scheduler's HTTP server to :8787 and warns when that
    # port is taken (another cluster on this machine); "127.0.0.1:0" takes any free loopback port.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            with get_task_stream(client) as stream:
                distributed = score_screen(screen, scheduler=client)
            workers = {t["worker"] for t in stream.data if "score_stored_field" in str(t["key"])}
            worker_pids = client.run(os.getpid)
    assert workers <= set(worker_pids) and len(workers) >= 1  # scored by worker processes,
    assert os.getpid() not in worker_pids.values()  # not by this one
    pd.testing.assert_frame_equal(distributed, threaded)


def test_building_the_graph_computes_nothing(screen, no_compute):
    with no_compute():
        tasks = score_graph(screen)
        assert len(tasks) == 15 and all(isinstance(t, Delayed) for t in tasks)
        assert len({t.key for t in tasks}) == 15  # one task per field
        with pytest.raises(ComputeForbidden):
            score_screen(screen)  # the guard is live: scoring does compute
    rows = dask.compute(*tasks, scheduler="synchronous")
    pd.testing.assert_frame_equal(pd.DataFrame(list(rows)), _eager(screen))


def test_selected_fields_and_options(screen):
    fields = [("P2", "A01", 0, 30), ("P1", "B02", 1, 0.0)]
    table = score_screen(screen, fields=fields, thresholds=(0.5, 0.8), scheduler="synchronous")
    assert table[list(DIMS_FIELD)].to_numpy().tolist() == [["P2", "A01", 0, 30.0], ["P1", "B02", 1, 0.0]]
    assert [c for c in table.columns if c.startswith("f1_")] == ["f1_0.50", "f1_0.80", "f1_mean"]


def test_fields_are_cropped_to_their_extent(tmp_path):
    screen = Screen.create(tmp_path / "padded.zarr", LAYOUT)
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    screen.add_variable("labels_nuclei", dims=DIMS_LABELS, dtype="uint32")
    fields = screen.fields(acquired_only=False)[:3]
    extents = {tuple(fields[0]): (25, 20), tuple(fields[1]): (40, 36)}  # the third records no extent (0)
    for i, field in enumerate(fields):
        truth, pred = _pair(100 + i)
        pred[30:, 24:] = 7  # an extra object in the padding of the first field
        screen.write("truth_nuclei", truth, **field._asdict())
        screen.write("labels_nuclei", pred, **field._asdict())
    screen.set_acquired(fields)
    extent = np.zeros((2, *LAYOUT.images_shape[:4]), np.int32)
    for key, (ey, ex) in extents.items():
        index = tuple(np.flatnonzero(screen.coords()[d] == v)[0] for d, v in zip(DIMS_FIELD, key))
        extent[(slice(None), *index)] = ey, ex
    for name, values in zip(("extent_y", "extent_x"), extent):
        screen.add_variable(name, dims=DIMS_FIELD, dtype="int32", chunks=dict.fromkeys(DIMS_FIELD, 2))
        screen.write(name, values, **dict.fromkeys(DIMS_FIELD, slice(None)))
    table = score_screen(screen, scheduler="synchronous")
    pd.testing.assert_frame_equal(table, _eager(screen, extents=extents))
    whole = _eager(screen)
    assert table["n_pred"][0] < whole["n_pred"][0]  # the padding object is gone
    assert table.iloc[1:].equals(whole.iloc[1:])  # full-size extent and no extent: the whole field


def test_write_tables(screen, tmp_path):
    table = score_screen(screen, scheduler="synchronous")
    paths = write_tables(table, tmp_path / "scores")
    assert {k: p.name for k, p in paths.items()} == TABLE_NAMES
    pd.testing.assert_frame_equal(pd.read_parquet(paths["fields"]), table)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["wells"]), summarise(table, by=("plate", "well")))
    plates = pd.read_parquet(paths["plates"])
    pd.testing.assert_frame_equal(plates, summarise(table, by=("plate",)))
    assert plates["n_fields"].tolist() == [8, 7]


def test_unknown_variables_and_fields_are_refused_while_building(screen):
    with pytest.raises(RegionError, match=r"has no variable 'labels_cells'; it has \["):
        score_graph(screen, pred="labels_cells")
    with pytest.raises(RegionError, match=r"fields: \('P3', 'A01', 0, 0.0\) is not a field of"):
        score_graph(screen, fields=[("P3", "A01", 0, 0.0)])
    with pytest.raises(ValueError, match=r"thresholds must be in \[0.5"):
        score_screen(screen, thresholds=(0.3,))


def test_a_screen_with_no_acquired_field_gives_an_empty_table(tmp_path):
    screen = Screen.create(tmp_path / "empty.zarr", LAYOUT)
    screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    screen.add_variable("labels_nuclei", dims=DIMS_LABELS, dtype="uint32")
    table = score_screen(screen)
    assert len(table) == 0 and list(table.columns[:5]) == ["plate", "well", "site", "t", "f1_0.50"]
