"""``cellflow demo``: the main job on an embedded default, end to end on one machine.

Today it synthesizes a small plate with ground truth, checks the store, summarises
it per well with a lazy dask graph, and exports it as OME-Zarr HCS for napari.
Later stages (illumination correction, segmentation, scoring) join as they land.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dask
import numpy as np
import pandas as pd

from cellflow.screen.store import Screen

if TYPE_CHECKING:
    from cellflow.screen.synthetic import SyntheticSpec

__all__ = ["DemoResult", "demo_spec", "run_demo", "well_summary"]


def demo_spec() -> SyntheticSpec:
    """The embedded default plate: 4 wells x 2 sites, DNA/Cyto/BF x 3 z, 512x512."""
    from cellflow.screen.synthetic import SyntheticSpec

    return SyntheticSpec(
        plates=("DEMO",), wells=("A01", "A02", "B01", "B02"), sites=2, shape_yx=(512, 512),
        channels=("DNA", "Cyto", "BF"), n_z=3, seed=2017,
    )


@dataclass(frozen=True)
class DemoResult:
    """What the demo made and measured."""

    store: Path
    ome_zarr: list[Path]
    summary: pd.DataFrame
    seconds: dict[str, float]


def _field_counts(screen: Screen, variable: str, plate: str, well: str, site: int, t: float) -> int:
    labels = screen.read(variable, plate=plate, well=well, site=site, t=t)
    return int(np.unique(labels[labels > 0]).size)


def well_summary(screen: Screen, *, scheduler: str | None = None) -> pd.DataFrame:
    """Per-well table: fields, mean intensity per channel, ground-truth object counts.

    Intensities come from one lazy xarray reduction over the acquired fields;
    object counts from one delayed task per field. Both run in one ``dask.compute``.

    Parameters
    ----------
    screen : Screen
        An opened screen store.
    scheduler : str, optional
        Passed to ``dask.compute``.

    Returns
    -------
    summary : pandas.DataFrame
        One row per (plate, well) with ``fields``, ``intensity_mean_<channel>`` and,
        for each ``truth_*`` variable, ``<name>_count`` (objects summed over fields).
    """
    ds = screen.dataset()
    acquired = ds.acquired
    images = ds.images.where(acquired)
    means = images.mean(dim=("site", "t", "z", "y", "x"))
    truths = [v for v in screen.variables if v.startswith("truth_")]
    fields = screen.fields()
    counts = {
        name: [dask.delayed(_field_counts)(screen, name, *f) for f in fields] for name in truths
    }
    means, counts = dask.compute(means, counts, scheduler=scheduler)
    rows = []
    for plate in ds.plate.values:
        for well in ds.well.values:
            in_well = [i for i, f in enumerate(fields) if f.plate == plate and f.well == well]
            if not in_well:
                continue
            row: dict[str, object] = {"plate": str(plate), "well": str(well), "fields": len(in_well)}
            for c in ds.c.values:
                row[f"intensity_mean_{c}"] = float(means.sel(plate=plate, well=well, c=c))
            for name in truths:
                row[f"{name}_count"] = int(sum(counts[name][i] for i in in_well))
            rows.append(row)
    return pd.DataFrame(rows)


def run_demo(out_dir: str | Path, *, scheduler: str | None = None, overwrite: bool = True) -> DemoResult:
    """Synthesize a 4-well plate, validate, summarise and export it.

    Parameters
    ----------
    out_dir : str or Path
        Folder for ``demo.zarr`` and ``demo.ome.zarr``.
    scheduler : str, optional
        ``dask.compute`` scheduler (or None for the active client / threads).
    overwrite : bool
        Replace the outputs of an earlier demo in ``out_dir`` (only cellflow stores are
        ever replaced).

    Returns
    -------
    DemoResult
    """
    from cellflow.screen.ome import export_ome_zarr
    from cellflow.screen.synthetic import write_synthetic_screen

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    screen = write_synthetic_screen(out_dir / "demo.zarr", demo_spec(), overwrite=overwrite, scheduler=scheduler)
    seconds["synthesize"] = time.perf_counter() - start
    start = time.perf_counter()
    screen = Screen.open(screen.path)  # schema check of what was written
    summary = well_summary(screen, scheduler=scheduler)
    seconds["summarise"] = time.perf_counter() - start
    start = time.perf_counter()
    exported = export_ome_zarr(screen, out_dir / "demo.ome.zarr", overwrite=overwrite, scheduler=scheduler)
    seconds["export"] = time.perf_counter() - start
    return DemoResult(store=screen.path, ome_zarr=list(exported), summary=summary, seconds=seconds)
