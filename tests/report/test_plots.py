"""Report figures: each plot's data checked against hand-computed values, and the PNGs they render."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from PIL import Image

from cellflow.report import plots


def _png_array(figure) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(plots.png_bytes(figure))).convert("RGB"))


def test_png_bytes_has_the_figure_size_in_pixels():
    figure = plots.f1_curves({})
    image = Image.open(io.BytesIO(plots.png_bytes(figure, dpi=100)))
    assert image.format == "PNG" and image.size == (550, 360)  # 5.5 x 3.6 in at 100 dpi


def test_f1_curves_are_field_means_per_threshold_in_threshold_order():
    table = pd.DataFrame({"f1_0.90": [0.5, 0.0], "f1_0.50": [1.0, 0.5], "f1_mean": [0.75, 0.25], "n_true": [3, 4]})
    other = pd.DataFrame({"f1_0.50": [0.2], "f1_0.90": [0.1]})
    axes = plots.f1_curves({"labels_nuclei": table, "labels_cells": other}).axes[0]
    assert [line.get_label() for line in axes.lines] == ["labels_nuclei", "labels_cells"]
    np.testing.assert_allclose(axes.lines[0].get_xydata(), [[0.5, 0.75], [0.9, 0.25]])
    np.testing.assert_allclose(axes.lines[1].get_xydata(), [[0.5, 0.2], [0.9, 0.1]])


def test_error_panels_pool_miss_rates_over_fields_and_sum_merges():
    table = pd.DataFrame({
        "missed_area_0_250": [1, 2], "missed_area_250_inf": [0, 0],
        "true_area_0_250": [2, 6], "true_area_250_inf": [0, 0],
        "merges": [1, 2], "splits": [0, 5], "extra": [4, 0],
    })
    left, right = plots.error_panels({"a": table}).axes[:2]
    rates = [p.get_height() for p in left.patches]
    assert rates[0] == pytest.approx(100 * 3 / 8) and np.isnan(rates[1])  # empty bin: no rate
    assert [t.get_text() for t in left.get_xticklabels()] == ["0–250", "≥250"]
    assert [p.get_height() for p in right.patches] == [3.0, 5.0, 4.0]


def test_fscore_curves_give_the_percentage_at_or_above_each_level():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=37)
    line = plots.fscore_curves({"m": scores}).axes[0].lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    brute = [100.0 * np.count_nonzero(scores >= level) / scores.size for level in x]
    np.testing.assert_allclose(y, brute)
    assert x[0] == 0 and x[-1] == 1 and line.get_label() == "m (n=37)"


@pytest.mark.parametrize(("well", "expected"), [("A01", (0, 0)), ("B03", (1, 2)), ("P24", (15, 23)),
                                               ("AA01", (26, 0)), ("AF48", (31, 47))])
def test_well_position(well, expected):
    assert plots.well_position(well) == expected


@pytest.mark.parametrize("bad", ["1A", "A", "a01", "A00", ""])
def test_well_position_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="row letters"):
        plots.well_position(bad)


def test_plate_grid_picks_the_smallest_standard_plate():
    assert plots.plate_grid(["H12"], [1.0]).shape == (8, 12)
    assert plots.plate_grid(["I01"], [1.0]).shape == (16, 24)
    assert plots.plate_grid(["A25"], [1.0]).shape == (32, 48)
    grid = plots.plate_grid(["B03", "A01"], [7.0, 5.0])
    expected = np.full((8, 12), np.nan)
    expected[1, 2], expected[0, 0] = 7.0, 5.0
    np.testing.assert_array_equal(grid, expected)


def test_plate_heatmap_pixels_follow_the_values_on_a_shared_scale():
    wells = pd.DataFrame({"plate": ["P1", "P1", "P1"], "well": ["A01", "A02", "B01"], "n": [0.0, 1.0, 2.0]})
    figure = plots.plate_heatmap(wells, "n")
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array().filled(np.nan)[:2, :2], [[0.0, 1.0], [2.0, np.nan]])
    pixels = _png_array(figure)
    height = pixels.shape[0]
    viridis = colormaps["viridis"]
    for (row, col), value in {(0, 0): 0.0, (0, 1): 1.0, (1, 0): 2.0}.items():
        x, y = axes.transData.transform((col, row))  # display coords, origin bottom-left
        seen = pixels[round(height - y), round(x)].astype(int)
        expected = np.round(np.array(viridis(value / 2.0)[:3]) * 255).astype(int)
        assert np.abs(seen - expected).max() <= 3, (row, col, seen, expected)


def test_plate_heatmap_one_axes_per_plate_and_missing_column():
    wells = pd.DataFrame({"plate": ["P2", "P1"], "well": ["A01", "A01"], "v": [1.0, 2.0]})
    figure = plots.plate_heatmap(wells, "v")
    titles = [a.get_title() for a in figure.axes if a.images]
    assert titles == ["P1: v", "P2: v"]
    with pytest.raises(ValueError, match=r"lacks columns \['x'\]"):
        plots.plate_heatmap(wells, "x")


def test_overlay_rgb_paints_the_inner_boundary_on_a_scaled_grey_image():
    image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 3
    rgb = plots.overlay_rgb(image, labels, colour=(255, 0, 0))
    ring = labels > 0
    ring[3:5, 3:5] = False  # a square's inner boundary: its outermost pixels
    assert (rgb[ring] == [255, 0, 0]).all()
    grey = rgb[~ring]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()
    assert rgb[0, 0, 0] == 0 and rgb[7, 7, 0] == 255  # below the 1st / above the 99.5th percentile
    assert np.all(np.diff(rgb[0, :, 1].astype(int)) >= 0)  # brightness follows the intensity
    with pytest.raises(ValueError, match="same 2-D shape"):
        plots.overlay_rgb(image, labels[:4])


def test_overlay_montage_and_illumination_maps_show_their_inputs():
    rng = np.random.default_rng(1)
    tiles = [(f"site {i}", rng.uniform(size=(16, 20)), np.zeros((16, 20), int)) for i in range(5)]
    figure = plots.overlay_montage(tiles, columns=4)
    shown = [a for a in figure.axes if a.images]
    assert len(shown) == 5 and [a.get_title() for a in shown] == [t[0] for t in tiles]
    maps = {"P1 DNA": rng.uniform(0.8, 1.2, (12, 12)), "P1 Cyto": rng.uniform(0.5, 1.5, (12, 12))}
    figure = plots.illumination_maps(maps)
    images = [a.images[0] for a in figure.axes if a.images]
    np.testing.assert_array_equal(images[1].get_array(), maps["P1 Cyto"])
    low = min(m.min() for m in maps.values())
    assert all(im.get_clim()[0] == pytest.approx(low) for im in images)  # one colour scale for all


def test_training_curves_plot_loss_and_f1_per_epoch():
    history = {"loss": [0.9, 0.5, 0.4], "validation_f1": [0.2, 0.6, 0.7], "initial_f1": 0.1}
    left, right = plots.training_curves(history).axes[:2]
    np.testing.assert_allclose(left.lines[0].get_xydata(), [[1, 0.9], [2, 0.5], [3, 0.4]])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [0.2, 0.6, 0.7])
    assert right.lines[1].get_ydata()[0] == 0.1  # the untrained baseline


def test_plate_grid_refuses_a_well_given_twice():
    """Two values for one well (say one per labels variable) would be painted over each other silently."""
    with pytest.raises(ValueError, match="A02 given more than once"):
        plots.plate_grid(["A01", "A02", "A02"], [1.0, 2.0, 3.0])
    wells = pd.DataFrame({"plate": ["P1", "P1", "P2"], "well": ["A01", "A01", "A01"], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="A01 given more than once"):
        plots.plate_heatmap(wells, "v")
