"""``cellflow demo``: the main job on an embedded default, end to end on one machine.

It runs the packaged spec ``cellflow/data/demo.yaml`` (also ``specs/demo.yaml``): a
synthetic 4-well plate is illumination-corrected, labelled automatically from its
stains, and scored against its synthetic truth on a local 2-worker dask cluster;
the plate is exported as OME-Zarr HCS for napari. When the real development images
are found (``../shared/data/nuclei`` or ``$CELLFLOW_NUCLEI_DATA``), the classical
baseline is also run and scored on their grey fluorescence images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from cellflow.pipeline.runner import RunResult, run_spec
from cellflow.pipeline.spec import PipelineSpec, parse_spec

__all__ = ["DemoResult", "demo_spec", "find_nuclei_data", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """What the demo made and measured."""

    synthetic: RunResult
    ome_zarr: list[Path]
    real: RunResult | None


def demo_spec(out_dir: str | Path = "cellflow-demo") -> PipelineSpec:
    """The packaged demo spec with its outputs under ``out_dir``."""
    text = resources.files("cellflow").joinpath("data/demo.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    out_dir = Path(out_dir)
    data["input"]["store"] = str(out_dir / "demo.zarr")
    data["output"]["tables"] = str(out_dir / "tables")
    return parse_spec(data, source="cellflow/data/demo.yaml")


def find_nuclei_data() -> Path | None:
    """The real nuclei images: ``$CELLFLOW_NUCLEI_DATA``, else ``../shared/data/nuclei``, if present."""
    candidates = [os.environ.get("CELLFLOW_NUCLEI_DATA"), "../shared/data/nuclei"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "index.csv").is_file():
            return Path(candidate)
    return None


def _real_spec(root: Path, out_dir: Path, cluster: dict[str, Any]) -> PipelineSpec:
    return parse_spec({
        "name": "demo-real-nuclei",
        "input": {
            "store": str(out_dir / "real-nuclei.zarr"), "reuse": False, "nuclei_pairs": str(root),
            "sources": ["dsb2018_stage1_test"], "modalities": ["fluorescence*"],
        },
        "stages": {
            "autolabel": {"nuclear_channel": "image", "illumination": False},
            "score": {"pairs": [["truth_nuclei", "labels_nuclei"]]},
        },
        "output": {"tables": str(out_dir / "tables-real-nuclei")},
        "cluster": cluster,
    }, source="demo (real nuclei)")


def run_demo(
    out_dir: str | Path = "cellflow-demo", *, scheduler: str | None = None, real: bool = True,
    console: Console | None = None, progress: bool = True,
) -> DemoResult:
    """Run the demo spec, export its plate, and score the classical baseline on real images.

    Parameters
    ----------
    out_dir : str or Path
        Folder for the stores, tables and OME-Zarr export (earlier demo outputs in it are replaced).
    scheduler : str, optional
        Address of a running scheduler instead of a local cluster.
    real : bool
        Also run the classical baseline on the real images when they are found.
    """
    from cellflow.screen.ome import export_ome_zarr

    console = console or Console()
    out_dir = Path(out_dir)
    spec = demo_spec(out_dir)
    synthetic = run_spec(spec, scheduler=scheduler, console=console, progress=progress)
    exported = export_ome_zarr(synthetic.screen, out_dir / "demo.ome.zarr", overwrite=True)
    root = find_nuclei_data() if real else None
    real_run = None
    if root is not None:
        console.print(f"classical baseline on the real grey fluorescence images in {root}")
        real_spec = _real_spec(root, out_dir, spec.cluster.model_dump())
        real_run = run_spec(real_spec, scheduler=scheduler, console=console, progress=progress)
    return DemoResult(synthetic=synthetic, ome_zarr=exported, real=real_run)
