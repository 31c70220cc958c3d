"""``cellflow segment``: the everyday entry point, a store or a folder of images in, labels out.

For a folder, the images are ingested into a screen store (one field per file, any
sizes, multi-page TIFFs as z-stacks; :func:`~cellflow.screen.ingest.ingest_images`), segmented by the same dask
graph as ``cellflow run`` on the same cluster options, and written back as one
uint32 label TIFF per input, with the input's stem, cropped to the input's size.
For a store, the labels are written into the store itself.

Nothing is overwritten silently: an existing label file stops the run before any
work unless ``overwrite`` is given. A file that cannot be read is named in the
report; every other image is still segmented.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from dask.base import tokenize
from rich.console import Console

from cellflow._files import write_atomic
from cellflow.cluster import compute
from cellflow.errors import IngestError, StorageFullError, StoreExistsError, halts_run
from cellflow.graph import StageGraph, TaskResult
from cellflow.graph._stage import field_tasks
from cellflow.pipeline.lock import command_line, store_lock
from cellflow.pipeline.resume import field_id
from cellflow.pipeline.runner import build_graphs, cluster_client, execute_graphs, record_chunks
from cellflow.pipeline.spec import ClusterSpec, InputSpec, PipelineSpec
from cellflow.screen._ingest_nuclei import _IMAGE_SUFFIXES as IMAGE_SUFFIXES
from cellflow.screen._ingest_nuclei import CHANNEL
from cellflow.screen._ingest_pattern import RGB_METHODS
from cellflow.screen.store import FieldKey, Screen

__all__ = ["LABEL_TIFFS", "FolderInputs", "SegmentResult", "TiffExport", "folder_model_inputs", "run_on_images",
           "segment"]

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class SegmentResult:
    """What ``segment`` produced."""

    store: Path
    label_files: tuple[Path, ...]
    failed: tuple[tuple[str, str], ...]
    objects: dict[str, int]
    skipped: tuple[str, ...] = ()  # files of a folder input that are not images it reads (or in sub-folders)
    notes: tuple[str, ...] = ()  # things said of readable inputs (a colour image reduced by the mean of R, G, B)


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


@contextmanager
def _work_store(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="cellflow-segment-") as tmp:
        yield Path(tmp) / "segment.zarr"


@dataclass(frozen=True)
class TiffExport:
    """How a folder run writes its per-image outputs: which variable, file suffix, and dtype."""

    variable: str
    suffix: str
    kind: str  # "label" or "probability", for messages

    def path(self, out_dir: Path, stem: str) -> Path:
        """The output file of the input named ``stem``."""
        return out_dir / f"{stem}{self.suffix}.tif"


LABEL_TIFFS = TiffExport("labels_nuclei", "", "label")


def _planned_outputs(folder: Path, output: Path, overwrite: bool, export: TiffExport) -> None:
    stems = [p.stem for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    clashes = [export.path(output, s) for s in stems if export.path(output, s).exists()]
    if clashes and not overwrite:
        raise StoreExistsError(
            f"{len(clashes)} {export.kind} file(s) already exist in {output}, e.g. {clashes[0]}; "
            "pass --overwrite to replace"
        )


def _write_tiff(screen: Screen, variable: str, key: FieldKey, extent: tuple[int, int], path: Path) -> int | str:
    """Write one field's ``variable`` cropped to its extent; the object count (labels) or the classes.

    A full or read-only disk is returned as its message (the client says it once), not raised.
    """
    data = screen.read(variable, **key._asdict())[..., : extent[0], : extent[1]]
    try:
        if variable.startswith("labels_"):
            labels = np.ascontiguousarray(data, dtype=np.uint32)
            write_atomic(path, lambda partial: tifffile.imwrite(partial, labels, compression="zlib"))
            return int(np.unique(data[data > 0]).size)
        # one grey page per class (never RGB, whatever the number of classes)
        probabilities = np.ascontiguousarray(data, dtype=np.float32)
        write_atomic(path, lambda partial: tifffile.imwrite(partial, probabilities, photometric="minisblack",
                                                            compression="zlib"))
        return int(data.shape[0])
    except OSError as error:
        if not halts_run(error):
            raise
        return f"{type(error).__name__}: {error}"


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
    rgb: str = "mean",
) -> SegmentResult:
    """Segment a folder of images (labels to ``output``) or a store (labels into it).

    Parameters
    ----------
    source : str or Path
        A folder of ``.tif``/``.png``/``.jpg`` images (float images kept as float32), or a screen store.
    output : str or Path or None
        For a folder: the folder for the label TIFFs (created). For a store: None.
    params : AutolabelParams, optional
        Classical segmentation settings (``nuclear_channel`` is ``'image'`` for folders).
    model : str or Path, optional
        A checkpoint: segment with the network instead (tiled prediction, then markers +
        watershed on its probabilities). Give exactly one of ``params`` and ``model``. A
        folder's images are stored as the network's one input channel, and read as z-stacks
        when it was trained on them (:func:`folder_model_inputs`).
    tile : int
        Tile edge for the network (pixels).
    cluster : ClusterSpec, optional
        Where to run (default: a local 2-worker cluster bound to 127.0.0.1).
    scheduler : str, optional
        Address of a running scheduler (overrides ``cluster``).
    overwrite : bool
        Replace existing label files, or for a store the variables the run writes.
    keep_store : str or Path, optional
        Keep the intermediate store of a folder run here (default: a temporary one).
    rgb : str
        How a folder's RGB(A) images become one channel (``'mean'``, ``'red'``, ``'green'``,
        ``'blue'``, ``'max'``, ``'luminance'``); colour images reduced by the default mean
        are named in ``SegmentResult.notes``.

    Returns
    -------
    SegmentResult

    Raises
    ------
    StoreExistsError
        Label files exist, or the store already holds a variable the run writes, and
        ``overwrite`` is false.
    IngestError
        ``source`` is neither a folder of images nor a store, or nothing in it is readable.
    """
    if (params is None) == (model is None):
        raise ValueError("segment: give exactly one of params (classical) and model (a checkpoint)")
    if model is None:
        return run_on_images(source, output, {"autolabel": params.to_dict()}, export=LABEL_TIFFS, cluster=cluster,
                             scheduler=scheduler, overwrite=overwrite, keep_store=keep_store, console=console,
                             progress=progress, rgb=rgb)
    predict: dict[str, Any] = {"model": str(model), "tile": tile}
    inputs = None if _is_store(Path(source)) else folder_model_inputs(model)
    if inputs is not None and inputs.planes > 1:
        predict["z"] = "all"
    return run_on_images(source, output, {"predict": predict, "labels": {}}, export=LABEL_TIFFS, cluster=cluster,
                         scheduler=scheduler, overwrite=overwrite, keep_store=keep_store, console=console,
                         progress=progress, rgb=rgb, inputs=inputs)


@dataclass(frozen=True)
class FolderInputs:
    """How a folder's images must be stored for a network to read them: its one channel, and its z planes."""

    channel: str
    planes: int  # > 1: the network takes z-stacks of this many planes as its channels (z='all')


def folder_model_inputs(model: str | Path) -> FolderInputs:
    """The store channel (and z depth) a folder's images get so that ``model`` reads them.

    A folder has one channel per image, so the network must take one store channel: ``'image'``
    for a model trained on a folder, ``'BF'`` for one trained on a plate's bright field, with
    ``planes`` > 1 when it was trained on z-stacks (inputs ``'BF@z0'``, ``'BF@z1'``, ...).

    Raises
    ------
    IngestError
        The model takes several store channels.
    FileNotFoundError, CheckpointError
        As :func:`~cellflow.nn.checkpoint.load_checkpoint`.
    """
    from cellflow.nn.checkpoint import load_checkpoint, store_channel

    names = load_checkpoint(model).channels
    channels = list(dict.fromkeys(store_channel(name) for name in names))
    if len(channels) != 1:
        raise IngestError(f"model {model} takes channels {list(names)!r}; a folder holds one channel per image: "
                          "ingest the images into a store (cellflow ingest --pattern) and give that store")
    stacked = sum(name != channels[0] for name in names)
    return FolderInputs(channels[0], stacked if stacked else 1)


def run_on_images(
    source: str | Path,
    output: str | Path | None,
    stages: dict[str, dict[str, Any]],
    *,
    export: TiffExport,
    cluster: ClusterSpec | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    keep_store: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    rgb: str = "mean",
    inputs: FolderInputs | None = None,
) -> SegmentResult:
    """Run pipeline ``stages`` on a store (in place) or a folder of images (one TIFF each out).

    The shared core of :func:`segment` and :func:`~cellflow.pipeline.predict.predict`: for a
    folder, refuse to overwrite existing outputs (unless ``overwrite``), ingest the images
    into a store (unreadable files are reported, the rest go on), run the stages, and write
    ``export.variable`` of each field, cropped to its image's size, to ``export.path``.
    Other parameters as for :func:`segment`; ``SegmentResult.objects`` holds the object count
    per label file, or the number of classes per probability file. ``inputs``: the channel name
    and z depth a network needs of a folder's images (:func:`folder_model_inputs`); default
    channel ``'image'``, any depth.
    """
    from cellflow.screen.ingest import folder_images, ingest_images
    from cellflow.screen.store import Screen

    source = Path(source)
    console = console or Console()
    cluster = cluster or ClusterSpec()
    as_store = _is_store(source)
    if not as_store:
        if source.is_file():
            raise IngestError(f"{source} is a file; give the folder of images it is in (or a screen store)")
        folder_images(source)  # a wrong folder is named now, not after a cluster has started
        if rgb not in RGB_METHODS:
            raise IngestError(f"rgb must be one of {', '.join(RGB_METHODS)}; got {rgb!r}")
    out_dir = None if as_store or output is None else Path(output)
    if not as_store:
        if out_dir is None:
            raise IngestError(f"the folder {source} needs an output folder for the {export.kind} files")
        _planned_outputs(source, out_dir, overwrite, export)
    with _work_store(None if keep_store is None else Path(keep_store)) as store, \
            (store_lock(source, command_line()) if as_store else nullcontext()), \
            cluster_client(cluster, address=scheduler) as client:
        if client is not None:
            console.print(f"dask dashboard: {client.dashboard_link}")
        failed: tuple[tuple[str, str], ...] = ()
        skipped: tuple[str, ...] = ()
        notes: tuple[str, ...] = ()
        if as_store:
            store = source
        else:
            report = ingest_images(source, store, rgb=rgb, channel=CHANNEL if inputs is None else inputs.channel,
                                   overwrite=keep_store is not None and overwrite, scheduler=client)
            failed, skipped, notes = report.failed, report.skipped, report.notes
            depth = len(Screen.open(store).layout.z_um)
            if inputs is not None and inputs.planes > 1 and depth != inputs.planes:
                raise IngestError(f"the network takes z-stacks of {inputs.planes} planes (one multi-page TIFF per "
                                  f"image), but the images in {source} have {depth} plane(s) each")
        screen = Screen.open(store)
        spec = PipelineSpec(
            name="segment", input=InputSpec(store=store), stages=stages, cluster=cluster,
        )
        existing = set(screen.variables) if as_store else set()

        def refuse_replacing(graph: StageGraph) -> None:  # a store's own results are never replaced silently
            clash = [o.name for o in graph.outputs if o.name in existing]
            if clash and not overwrite:
                raise StoreExistsError(
                    f"{store} already holds {', '.join(map(repr, clash))} (e.g. auto labels from the stains), "
                    "which this run would replace: pass --overwrite to do so, or run on a copy of the store")

        graphs = build_graphs(screen, spec, before_create=refuse_replacing, replace=overwrite)
        results = execute_graphs(graphs, client, console, progress)
        record_chunks(screen, results)
        halted = next((r for r in results if r.halt), None)
        if halted is not None:  # every field would fail the same way: not the images' fault
            raise StorageFullError(
                f"{halted.error}: {store} cannot take more writes. " + (
                    "The fields done are in it; free space (or make it writable) and run again with --overwrite"
                    if as_store else
                    f"No label file was written to {out_dir}; free space (or give --keep-store DIR on a disk "
                    "with room for the work store) and run again"))
        # A field whose task failed (a blank or NaN image, a bug) is reported with its file and
        # gets no output file: an empty label image would read as "no nuclei here".
        errors = _first_errors(results)
        failed += _quarantined(screen, errors, None if as_store else source)
        files, counts = ((), {}) if out_dir is None else _export_tiffs(screen, out_dir, client, export,
                                                                       skip=set(errors))
    return SegmentResult(store=Path(store), label_files=files, failed=failed, objects=counts, skipped=skipped,
                         notes=notes)


def _first_errors(results: list[TaskResult]) -> dict[FieldKey, str]:
    """Per field, the error of the first stage that failed on it (its downstream stages say 'not run')."""
    errors: dict[FieldKey, str] = {}
    for result in results:
        if result.error is not None and result.field is not None:
            if result.field not in errors or errors[result.field].startswith("not run: "):
                errors[result.field] = f"{result.stage}: {result.error}"
    return errors


def _quarantined(screen: Any, errors: dict[FieldKey, str], folder: Path | None) -> tuple[tuple[str, str], ...]:
    """(the field's input file, or the store and field id; the reason) for every failed field."""
    if not errors:
        return ()
    if folder is None:
        return tuple((f"{screen.path} field {field_id(key)}", reason) for key, reason in errors.items())
    names = _source_names(screen)
    paths = {p.stem: str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return tuple((paths.get(names[key], f"{folder}/{names[key]}"), reason) for key, reason in errors.items())


def _source_names(screen: Screen, ds: Any = None) -> dict[FieldKey, str]:
    """Each field's source file stem (``source_name``), for every field of a folder's store."""
    ds = screen.dataset() if ds is None else ds
    return {k: str(v) for k, v in zip(screen.fields(acquired_only=False), ds.source_name.values.ravel())}


def _export_tiffs(
    screen: Screen, out_dir: Path, client: Any, export: TiffExport, *, skip: Collection[FieldKey] = ()
) -> tuple[tuple[Path, ...], dict[str, int]]:
    """One TIFF per acquired field, named by its source file's stem, cropped to its extent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = screen.dataset()
    every = screen.fields(acquired_only=False)
    names = _source_names(screen, ds)
    sizes = {k: (int(y), int(x)) for k, y, x in zip(every, ds.extent_y.values.ravel(), ds.extent_x.values.ravel())}
    keys = [key for key in screen.fields() if key not in skip]
    files = tuple(export.path(out_dir, names[key]) for key in keys)
    token = tokenize(str(screen.path), export.variable, str(out_dir), sorted(skip))
    tasks = field_tasks("export", token, _write_tiff, {
        key: (screen, export.variable, key, sizes[key], path) for key, path in zip(keys, files)
    }, None)
    found = compute(*tasks.values(), scheduler="threads" if client is None else client)
    full = [n for n in found if isinstance(n, str)]
    if full:
        raise StorageFullError(
            f"{full[0]}: {len(files) - len(full)} of {len(files)} {export.kind} files were written to {out_dir} "
            "(each one whole), the others not; free space (or make it writable) and run again with --overwrite")
    return files, {names[key]: int(n) for key, n in zip(keys, found)}
