from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
from dask.delayed import Delayed

from cellflow.graph import StageGraph
from cellflow.graph.illumination import (
    ILLUMINATION_DIMS,
    IlluminationParams,
    build_illumination,
    correct,
    resolve_offset,
)
from cellflow.ops.illumination import apply_illumination
from cellflow.screen.store import Screen
from cellflow.screen.synthetic import SyntheticSpec, true_illumination, write_synthetic_screen

SPEC = SyntheticSpec(shape_yx=(192, 160), wells=("A01", "A02"), sites=2, n_z=2, channels=("DNA", "BF"), seed=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("illumination") / "source.zarr"
    write_synthetic_screen(path, SPEC, scheduler="synchronous")
    return path


@pytest.fixture
def screen(source, tmp_path) -> Screen:
    """A fresh copy of the small synthetic screen (4 fields, 2 channels, 2 planes) per test."""
    return Screen.open(shutil.copytree(source, tmp_path / "screen.zarr"))


def run(screen: Screen, graph: StageGraph, **compute) -> tuple:
    graph.create_outputs(screen)
    results = dask.compute(*graph.tasks, **compute)
    screen.ledger("illumination").mark(r for result in results for r in result.records)
    return results


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "gaussian"}, r"IlluminationParams.method must be one of \('median', 'spline', 'polynomial'\), got 'gaussian'"),
        ({"block_px": 0}, r"IlluminationParams.block_px must be an integer >= 1, got 0"),
        ({"block_px": 8.0}, r"IlluminationParams.block_px must be an integer >= 1, got 8.0"),
        ({"iterations": -1}, r"IlluminationParams.iterations must be an integer >= 0"),
        ({"knots": True}, r"IlluminationParams.knots must be an integer >= 0, got True"),
        ({"degree": 11}, r"IlluminationParams.degree must be an integer <= 10"),
        ({"filter_size_px": 0}, r"IlluminationParams.filter_size_px must be > 0, got 0"),
        ({"outlier_sigma": float("nan")}, r"IlluminationParams.outlier_sigma must be a finite number, got nan"),
        ({"tolerance": 1.0}, r"IlluminationParams.tolerance must be a fraction in \(0, 1\), got 1.0"),
        ({"object_px": 0}, r"IlluminationParams.object_px must be an integer >= 1"),
        ({"channels": "DNA"}, r"IlluminationParams.channels must be a sequence of channel names"),
        ({"channels": ("DNA", "DNA")}, r"IlluminationParams.channels must be a non-empty sequence of unique"),
        ({"channels": ()}, r"IlluminationParams.channels must be a non-empty sequence"),
        ({"offset": -1}, r"IlluminationParams.offset must be >= 0, got -1"),
        ({"offset": "100"}, r"IlluminationParams.offset must be a finite number, got '100'"),
        ({"split_every": 1}, r"IlluminationParams.split_every must be an integer >= 2"),
    ],
)
def test_params_name_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        IlluminationParams(**changes)


def test_params_round_trip_through_json():
    params = IlluminationParams(method="polynomial", degree=3, channels=["DNA"], offset=100, filter_size_px=64)
    data = json.loads(json.dumps(params.to_dict()))
    assert IlluminationParams.from_dict(data) == params
    assert params.channels == ("DNA",) and params.offset == 100.0
    assert IlluminationParams.from_dict(IlluminationParams().to_dict()) == IlluminationParams()
    with pytest.raises(ValueError, match=r"IlluminationParams got unknown keys \['blocks'\]"):
        IlluminationParams.from_dict({"blocks": 8})


def test_offset_comes_from_params_then_metadata(screen):
    assert resolve_offset(screen, IlluminationParams()) == SPEC.camera_offset_adu  # from the synthetic spec
    assert resolve_offset(screen, IlluminationParams(offset=0)) == 0.0


# ---------------------------------------------------------------------------- graph
def test_building_computes_nothing(screen, no_compute):
    upstream = StageGraph("ingest", (), tuple(dask.delayed(lambda: None)() for _ in range(2)))
    with no_compute():
        graph = build_illumination(screen, IlluminationParams(split_every=2), after=upstream)
        assert graph.name == "illumination"
        assert len(graph.tasks) == 1 * 2 * 2  # plate x channel x z
        assert all(isinstance(t, Delayed) for t in graph.tasks)
        (spec,) = graph.outputs
        assert (spec.name, spec.dims, spec.dtype) == ("illumination", ILLUMINATION_DIMS, "float32")
        assert set(graph.by_field) == set(screen.fields())
        # every field's read waits for the upstream stage
        keys = set(graph.tasks[0].__dask_graph__())
        assert {t.key for t in upstream.tasks} <= keys
        assert "illumination" not in screen.variables  # outputs are created by the runner, not the builder


def test_threaded_run_writes_every_plane_close_to_the_truth(screen):
    results = run(screen, build_illumination(screen, IlluminationParams()), scheduler="threads")
    rows = [row for r in results for row in r.rows]
    assert {(row["c"], row["z"]) for row in rows} == {(c, z) for c in SPEC.channels for z in SPEC.z_um}
    assert all(row["fields"] == 4 and 0.5 < row["background_fraction"] <= 1 for row in rows)
    assert screen.ledger("illumination").completed().all()
    for c in SPEC.channels:
        truth = true_illumination(SPEC, plate="P1", channel=c)
        for z in SPEC.z_um:
            estimate = screen.read("illumination", plate="P1", c=c, z=z)
            assert estimate.dtype == np.float32
            assert abs(estimate.mean() - 1) < 1e-5
            # The bar is 3 % RMS; 4 small fields land at 0.3-1.5 %.
            assert np.sqrt(np.mean((estimate / truth - 1) ** 2)) < 0.03


def test_channels_and_fields_select_what_is_estimated(screen):
    fields = [f for f in screen.fields() if f.well == "A01"]
    results = run(screen, build_illumination(screen, IlluminationParams(channels=("BF",)), fields=fields))
    assert [row["c"] for r in results for row in r.rows] == ["BF", "BF"]
    assert all(row["fields"] == 2 for r in results for row in r.rows)
    assert np.isnan(screen.read("illumination", plate="P1", c="DNA", z=SPEC.z_um[0])).all()  # never written
    with pytest.raises(ValueError, match=r"IlluminationParams.channels \['GFP'\] are not in the screen"):
        build_illumination(screen, IlluminationParams(channels=("GFP",)))


def test_distributed_run_equals_the_threaded_one(source, tmp_path):
    distributed = pytest.importorskip("distributed")
    params = IlluminationParams(method="spline", split_every=3)
    threaded = Screen.open(shutil.copytree(source, tmp_path / "threaded.zarr"))
    run(threaded, build_illumination(threaded, params), scheduler="threads")
    remote = Screen.open(shutil.copytree(source, tmp_path / "distributed.zarr"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster):
        run(remote, build_illumination(remote, params))
    # The graph fixes the order of every sum, so the two runs agree bit for bit.
    np.testing.assert_array_equal(remote.read("illumination"), threaded.read("illumination"))


# ---------------------------------------------------------------------------- correct
def test_correct_is_lazy_and_matches_the_kernel(screen, no_compute):
    run(screen, build_illumination(screen, IlluminationParams()))
    ds = screen.dataset()
    with no_compute():
        corrected = correct(ds["images"], ds["illumination"], offset=SPEC.camera_offset_adu)
    assert corrected.dims == ds["images"].dims and corrected.dtype == np.float32
    assert corrected.chunks == ds["images"].chunks
    field = dict(plate="P1", well="A02", site=1, t=0.0, c="BF", z=SPEC.z_um[1])
    expected = apply_illumination(screen.read("images", **field), screen.read("illumination", plate="P1", c="BF",
                                  z=SPEC.z_um[1]), offset=SPEC.camera_offset_adu)
    np.testing.assert_array_equal(corrected.sel(field).values, expected)


def test_correct_selects_and_rescales(screen):
    run(screen, build_illumination(screen, IlluminationParams()))
    ds = screen.dataset()
    images = ds["images"].sel(plate="P1", c="DNA", well="A01")  # scalar plate and channel
    floor = correct(images, ds["illumination"], offset=SPEC.camera_offset_adu, rescale="min")
    assert floor.dims == images.dims
    raw = images.values.astype(np.float32) - np.float32(SPEC.camera_offset_adu)
    assert (np.abs(floor.values) <= np.abs(raw) + 1e-3).all()  # never brighter than the raw signal
    with pytest.raises(ValueError, match=r"rescale must be one of \('mean', 'max', 'min'\), got 'peak'"):
        correct(images, ds["illumination"], rescale="peak")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="illumination must have dims"):
        correct(images, ds["illumination"].isel(z=0))
    with pytest.raises(ValueError, match="illumination has no function for some of the images'"):
        correct(images, ds["illumination"].sel(c=["BF"]))
