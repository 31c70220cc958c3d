"""``cellflow segment``: the everyday entry point, a store or a folder of images in, labels out.

For a folder, the images are ingested into a screen store (one field per file, any
sizes; :func:`~cellflow.screen.ingest.ingest_images`), segmented by the same dask
graph as ``cellflow run`` on the same cluster options, and written back as one
uint32 label TIFF per input, with the input's stem, cropped to the input's size.
For a store, the labels are written into the store itself.

Nothing is overwritten silently: an existing label file stops the run before any
work unless ``overwrite`` is given. A file that cannot be read is named in the
report; every other image is still segmented.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import tifffile
from rich.console import Console

from cellflow.errors import IngestError, StoreExistsError
from cellflow.pipeline.runner import build_graphs, cluster_client, execute_graphs, record_chunks
from cellflow.pipeline.spec import ClusterSpec, InputSpec, PipelineSpec
from cellflow.screen.store import FieldKey, Screen

__all__ = ["SegmentResult", "segment"]

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class SegmentResult:
    """What ``segment`` produced."""

    store: Path
    label_files: tuple[Path, ...]
    failed: tuple[tuple[str, str], ...]
    objects: dict[str, int]


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


@contextmanager
def _work_store(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="cellflow-segment-") as tmp:
        yield Path(tmp) / "segment.zarr"


def _planned_outputs(folder: Path, output: Path, overwrite: bool) -> None:
    stems = [p.stem for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    clashes = [output / f"{s}.tif" for s in stems if (output / f"{s}.tif").exists()]
    if clashes and not overwrite:
        raise StoreExistsError(
            f"{len(clashes)} label file(s) already exist in {output}, e.g. {clashes[0]}; pass --overwrite to replace"
        )


def _write_tiff(screen: Screen, variable: str, key: FieldKey, extent: tuple[int, int], path: Path) -> int:
    labels = screen.read(variable, **key._asdict())[: extent[0], : extent[1]]
    tifffile.imwrite(path, np.ascontiguousarray(labels, dtype=np.uint32), compression="zlib")
    return int(np.unique(labels[labels > 0]).size)


def segment(
    source: str | Path,
    output: str | Path | None,
    *,
    params: Any = None,
    model: str | Path | None = None,
    tile: int = 512,
    cluster: ClusterSpec | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    keep_store: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> SegmentResult:
    """Segment a folder of images (labels to ``output``) or a store (labels into it).

    Parameters
    ----------
    source : str or Path
        A folder of ``.tif``/``.png`` images, or a screen store.
    output : str or Path or None
        For a folder: the folder for the label TIFFs (created). For a store: None.
    params : AutolabelParams, optional
        Classical segmentation settings (``nuclear_channel`` is ``'image'`` for folders).
    model : str or Path, optional
        A checkpoint: segment with the network instead (tiled prediction, then markers +
        watershed on its probabilities). Give exactly one of ``params`` and ``model``.
    tile : int
        Tile edge for the network (pixels).
    cluster : ClusterSpec, optional
        Where to run (default: a local 2-worker cluster bound to 127.0.0.1).
    scheduler : str, optional
        Address of a running scheduler (overrides ``cluster``).
    overwrite : bool
        Replace existing label files.
    keep_store : str or Path, optional
        Keep the intermediate store of a folder run here (default: a temporary one).

    Returns
    -------
    SegmentResult

    Raises
    ------
    StoreExistsError
        Label files exist and ``overwrite`` is false.
    IngestError
        ``source`` is neither a folder of images nor a store, or nothing in it is readable.
    """
    from cellflow.screen.ingest import ingest_images
    from cellflow.screen.store import Screen

    if (params is None) == (model is None):
        raise ValueError("segment: give exactly one of params (classical) and model (a checkpoint)")
    stages = (
        {"autolabel": params.to_dict()} if model is None
        else {"predict": {"model": str(model), "tile": tile}, "labels": {}}
    )
    source = Path(source)
    console = console or Console()
    cluster = cluster or ClusterSpec()
    as_store = _is_store(source)
    if not as_store and not source.is_dir():
        raise IngestError(f"{source} is neither a folder of images nor a screen store")
    out_dir = None if as_store or output is None else Path(output)
    if not as_store:
        if out_dir is None:
            raise IngestError(f"segmenting the folder {source} needs an OUTPUT folder for the label files")
        _planned_outputs(source, out_dir, overwrite)
    with _work_store(None if keep_store is None else Path(keep_store)) as store, \
            cluster_client(cluster, address=scheduler) as client:
        if client is not None:
            console.print(f"dask dashboard: {client.dashboard_link}")
        failed: tuple[tuple[str, str], ...] = ()
        if as_store:
            store = source
        else:
            report = ingest_images(source, store, overwrite=keep_store is not None and overwrite, scheduler=client)
            failed = report.failed
        screen = Screen.open(store)
        spec = PipelineSpec(
            name="segment", input=InputSpec(store=store), stages=stages, cluster=cluster,
        )
        graphs = build_graphs(screen, spec)
        results = execute_graphs(graphs, client, console, progress)
        record_chunks(screen, results)
        files, counts = ((), {}) if out_dir is None else _export_label_tiffs(screen, out_dir, client)
    return SegmentResult(store=Path(store), label_files=files, failed=failed, objects=counts)


def _export_label_tiffs(screen: Screen, out_dir: Path, client: Any) -> tuple[tuple[Path, ...], dict[str, int]]:
    """One uint32 TIFF per acquired field, named by its source file's stem, cropped to its extent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = screen.dataset()
    every = screen.fields(acquired_only=False)
    names = {k: str(v) for k, v in zip(every, ds.source_name.values.ravel())}
    sizes = {k: (int(y), int(x)) for k, y, x in zip(every, ds.extent_y.values.ravel(), ds.extent_x.values.ravel())}
    files = tuple(out_dir / f"{names[key]}.tif" for key in screen.fields())
    tasks = [
        dask.delayed(_write_tiff)(screen, "labels_nuclei", key, sizes[key], path)
        for key, path in zip(screen.fields(), files)
    ]
    found = dask.compute(*tasks, scheduler="threads" if client is None else client)
    return files, {p.stem: int(n) for p, n in zip(files, found)}
