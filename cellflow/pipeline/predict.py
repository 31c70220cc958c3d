"""``cellflow predict``: a trained network's class probabilities for a store or a folder of images.

For a store, the ``predict`` stage (:mod:`cellflow.graph.predict`) writes ``probabilities``
into it. For a folder, the images are ingested into a screen store (one field per file, any
sizes), predicted by the same dask graph, and written back as one float32 TIFF per input,
``<stem>_prob.tif``, classes first ``(classes, height, width)``, cropped to the input's size
— the counterpart of ``cellflow segment``'s ``<stem>.tif`` label files, sharing its folder
handling (:func:`~cellflow.pipeline.segment.run_on_images`): existing outputs stop the run
before any work unless ``overwrite``; an unreadable image is reported and the rest are
predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from cellflow.graph.predict import PredictParams
from cellflow.pipeline.segment import TiffExport, folder_model_inputs, run_on_images
from cellflow.pipeline.spec import ClusterSpec

__all__ = ["PROBABILITY_TIFFS", "PredictResult", "predict"]

#: Folder output of ``cellflow predict``: ``<stem>_prob.tif``, float32, classes first.
PROBABILITY_TIFFS = TiffExport("probabilities", "_prob", "probability")


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` produced.

    Attributes
    ----------
    store : Path
        The store holding ``probabilities`` (the input store, or the intermediate one).
    probability_files : tuple of Path
        One ``<stem>_prob.tif`` per readable input image (folder input; empty for a store).
    failed : tuple of (str, str)
        Input files that could not be read, or whose field failed (a blank or NaN image), with the reason.
    skipped : tuple of str
        Files of a folder input that are not images it reads, or are in its sub-folders.
    notes : tuple of str
        Things said of readable inputs (a colour image reduced by the mean of R, G and B).
    """

    store: Path
    probability_files: tuple[Path, ...]
    failed: tuple[tuple[str, str], ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def predict(
    source: str | Path,
    output: str | Path | None,
    params: PredictParams,
    *,
    cluster: ClusterSpec | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    keep_store: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    rgb: str = "mean",
) -> PredictResult:
    """Predict class probabilities of a folder of images (TIFFs to ``output``) or of a store (into it).

    Parameters
    ----------
    source : str or Path
        A folder of ``.tif``/``.png``/``.jpg`` images (float images kept as float32), or a screen store.
    output : str or Path or None
        For a folder: the folder for the probability TIFFs (created). For a store: None.
    params : PredictParams
        The checkpoint and the tiling (tile, halo, batch size, device ...). A folder's images
        are stored as the checkpoint's one input channel (:func:`~cellflow.pipeline.segment.folder_model_inputs`;
        a network trained on z-stacks reads each multi-page TIFF's planes, ``z='all'``).
    cluster : ClusterSpec, optional
        Where to run (default: a local 2-worker cluster bound to 127.0.0.1).
    scheduler : str, optional
        Address of a running scheduler (overrides ``cluster``).
    overwrite : bool
        Replace existing probability files.
    keep_store : str or Path, optional
        Keep the intermediate store of a folder run here (default: a temporary one).
    console : rich.console.Console, optional
    progress : bool
        Show progress bars.
    rgb : str
        How a folder's RGB(A) images become one channel, as for :func:`~cellflow.pipeline.segment.segment`.

    Returns
    -------
    PredictResult

    Raises
    ------
    ValueError
        ``output`` is given for a store.
    StoreExistsError
        Probability files exist and ``overwrite`` is false.
    IngestError
        ``source`` is neither a folder of images nor a store, or nothing in it is readable.
    FileNotFoundError, CheckpointError
        The model file is missing or unusable.
    """
    source = Path(source)
    if output is not None and (source / "zarr.json").is_file():
        raise ValueError(f"output is for a folder of images; {source} is a store and gets `probabilities` "
                         "written into it: leave output out")
    inputs = None if (source / "zarr.json").is_file() else folder_model_inputs(params.model)
    if inputs is not None and inputs.planes > 1:
        params = replace(params, z="all")  # the network's inputs are a folder image's z planes
    result = run_on_images(
        source, output, {"predict": params.to_dict()}, export=PROBABILITY_TIFFS, cluster=cluster,
        scheduler=scheduler, overwrite=overwrite, keep_store=keep_store, console=console, progress=progress,
        rgb=rgb, inputs=inputs,
    )
    return PredictResult(store=result.store, probability_files=result.label_files, failed=result.failed,
                         skipped=result.skipped, notes=result.notes)
