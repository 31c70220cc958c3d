from __future__ import annotations

import pytest

from cellflow.screen import ScreenLayout


def _layout(**kw):
    base = dict(plates=("P1",), wells=("A01", "B12"), sites=(0, 1), channels=("DNA", "Cyto"), shape_yx=(64, 80))
    base.update(kw)
    return ScreenLayout(**base)


def test_dict_round_trip_and_shapes():
    layout = _layout(t_min=(0, 30, 60), z_um=(-2, 0, 2), tile_yx=(32, 1024), attrs={"instrument": "x"})
    again = ScreenLayout.from_dict(layout.to_dict())
    assert again == layout
    assert again.attrs == {"instrument": "x"}
    assert layout.images_shape == (1, 2, 2, 3, 2, 3, 64, 80)
    # the tile is clipped to the field, never larger than it
    assert layout.chunk_yx == (32, 80)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(wells=("A1",)), r"wells must look like 'A01'.*'A1'"),
        (dict(wells=("A01", "A01")), r"wells has duplicate values \['A01'\]"),
        (dict(sites=(-1,)), r"sites must be >= 0"),
        (dict(channels=()), r"channels must not be empty"),
        (dict(channels=(" ",)), r"channels must not contain blank names"),
        (dict(t_min=(0, 30, 20)), r"t_min must be strictly increasing"),
        (dict(dtype="int64"), r"dtype must be one of .*'int64'"),
        (dict(pixel_size_um=0), r"pixel_size_um must be > 0, got 0"),
        (dict(shape_yx=(0, 10)), r"shape_yx must be two positive integers"),
        (dict(tile_yx=(2048, 256)), r"tile_yx must be <= 1024"),
    ],
)
def test_invalid_layouts_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _layout(**kw)


def test_from_dict_rejects_unknown_keys():
    d = _layout().to_dict()
    d["well_names"] = ["A01"]
    with pytest.raises(ValueError, match=r"unknown keys \['well_names'\]"):
        ScreenLayout.from_dict(d)
