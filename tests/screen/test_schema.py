from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from cellflow.errors import SchemaError
from cellflow.screen import Screen, ScreenLayout, schema_problems, validate_dataset


@pytest.fixture
def dataset(tmp_path):
    layout = ScreenLayout(plates=("P1",), wells=("A01",), sites=(0, 1), channels=("DNA",), shape_yx=(40, 50))
    return Screen.create(tmp_path / "s.zarr", layout).dataset()


def test_fresh_store_is_valid(dataset):
    assert schema_problems(dataset) == []
    validate_dataset(dataset)


def test_missing_images_and_acquired(dataset):
    with pytest.raises(SchemaError, match=r"(?s)variable 'images' is missing.*variable 'acquired' is missing"):
        validate_dataset(dataset.drop_vars(["images", "acquired"]), source="x.zarr")


def test_error_names_the_source(dataset):
    with pytest.raises(SchemaError, match=r"^bad\.zarr is not a valid cellflow screen"):
        validate_dataset(dataset.drop_vars("acquired"), source="bad.zarr")


def test_images_wrong_dims(dataset):
    bad = dataset.assign(images=dataset.images.isel(z=0, drop=True))
    with pytest.raises(SchemaError, match=r"variable 'images': expected dims \('plate', 'well'"):
        validate_dataset(bad)


def test_labels_must_be_unsigned(dataset):
    labels = xr.DataArray(np.zeros((1, 1, 2, 1, 40, 50), np.int32), dims=("plate", "well", "site", "t", "y", "x"))
    with pytest.raises(SchemaError, match=r"'labels_nuclei': labels must be unsigned integers, got dtype int32"):
        validate_dataset(dataset.assign(labels_nuclei=labels))


def test_truth_wrong_dims(dataset):
    truth = xr.DataArray(np.zeros((1, 1, 2, 40, 50), np.uint32), dims=("plate", "well", "site", "y", "x"))
    with pytest.raises(SchemaError, match=r"'truth_cells': expected dims \('plate', 'well', 'site', 't', 'y', 'x'\)"):
        validate_dataset(dataset.assign(truth_cells=truth))


def test_bad_coordinates(dataset):
    bad = dataset.assign_coords(well=["A1"], t=[0.0])
    with pytest.raises(SchemaError, match=r"coordinate 'well' must look like 'A01', got \['A1'\]"):
        validate_dataset(bad)
    bad = dataset.assign_coords(site=[0.5, 1.5])
    with pytest.raises(SchemaError, match=r"coordinate 'site' must hold integers, got dtype float64"):
        validate_dataset(bad)
    bad = dataset.assign_coords(site=[1, 1])
    with pytest.raises(SchemaError, match=r"coordinate 'site' has duplicate values \[1, 1\]"):
        validate_dataset(bad)


def test_pixel_size_attr(dataset):
    bad = dataset.copy()
    bad.attrs = {**bad.attrs, "pixel_size_um": -1}
    with pytest.raises(SchemaError, match=r"attribute 'pixel_size_um' must be a positive number, got -1"):
        validate_dataset(bad)


def test_chunking_rules(dataset):
    rechunked = dataset.assign(images=dataset.images.chunk({"site": 2}))
    with pytest.raises(SchemaError, match=r"dim 'site' must be chunked by 1"):
        validate_dataset(rechunked)
