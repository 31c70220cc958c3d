"""Ingest of paired image/mask folders: ``SOURCE/images/NAME.{png,tif}`` + ``SOURCE/masks/NAME.png``.

This is the layout of the real nuclei development set (``shared/data/nuclei``) and of
most public segmentation benchmarks. Images of one store must share one size, so every
image is stored at the top-left of a field of the largest size and zero-padded; its
true size is kept in ``extent_y`` / ``extent_x``.
"""

from __future__ import annotations

import csv
import fnmatch
import itertools
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np
import zarr

from cellflow.errors import IngestError
from cellflow.screen._ingest_pattern import RGB_METHODS, natural_key
from cellflow.screen._ingest_read import BadFile, PlaneSpec, read_checked, read_header
from cellflow.screen._ingest_report import IngestReport
from cellflow.screen._ingest_table import visible_files
from cellflow.screen._ingest_write import FieldResult, finish, run_fields
from cellflow.screen.layout import DIMS_FIELD, DIMS_LABELS, MAX_TILE, ScreenLayout
from cellflow.screen.store import FieldKey, Screen

__all__ = ["CHANNEL", "MAX_PAIRS_PER_PLATE", "ingest_images", "ingest_nuclei_pairs", "well_names"]

#: The one channel of a paired store, whatever the modality.
CHANNEL = "image"
#: Wells per plate (= per source folder).
MAX_PAIRS_PER_PLATE = 1536
_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")  # JPEG: lossy, but some instruments export it
_COLUMNS = 24


class _Planes(NamedTuple):
    """How many z planes every image of an ingest has, and the file that set it (named in reasons)."""

    n: int
    reference: str


class _Pair(NamedTuple):
    source: str
    name: str
    image: str
    mask: str | None
    modality: str


def well_names(n: int) -> tuple[str, ...]:
    """The first ``n`` wells in row-major order, 24 columns per row.

    Rows are A-P, then AA-AF (the rows of a 1536-well plate), then AG, AH, ... so that
    up to 1536 names (64 rows) exist.

    Examples
    --------
    >>> well_names(26)[-3:]
    ('A24', 'B01', 'B02')
    """
    if n > MAX_PAIRS_PER_PLATE:
        raise IngestError(f"a source folder may hold at most {MAX_PAIRS_PER_PLATE} images, got {n}")
    letters = string.ascii_uppercase
    rows = [*letters[:16], *(a + b for a, b in itertools.product(letters, letters))]
    return tuple(f"{rows[i // _COLUMNS]}{i % _COLUMNS + 1:02d}" for i in range(n))


def _read_index(root: Path) -> dict[tuple[str, str], str] | None:
    """``(source, name) -> modality`` from ``index.csv``, or None without one."""
    path = root / "index.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"source", "name", "modality"} - set(rows[0] if rows else {})
    if missing:
        raise IngestError(f"{path} lacks the columns {sorted(missing)!r}")
    return {(r["source"], r["name"]): r["modality"] for r in rows}


def _source_pairs(
    folder: Path, index: dict[tuple[str, str], str] | None
) -> tuple[list[_Pair], list[str]]:
    """Image/mask pairs of one source folder (sorted by name) and the files skipped."""
    images: dict[str, Path] = {}
    skipped: list[str] = []
    for path in visible_files(folder / "images"):
        if path.parent != folder / "images" or path.suffix.lower() not in _IMAGE_SUFFIXES:
            skipped.append(str(path))
        elif path.stem in images:
            raise IngestError(f"{images[path.stem]} and {path} have the same name; keep one")
        else:
            images[path.stem] = path
    masks = {p.stem: p for p in visible_files(folder / "masks") if p.suffix.lower() in _IMAGE_SUFFIXES}
    skipped += [str(p) for stem, p in sorted(masks.items()) if stem not in images]
    pairs = [
        _Pair(folder.name, stem, str(path), str(masks[stem]) if stem in masks else None,
              (index or {}).get((folder.name, stem), ""))
        for stem, path in sorted(images.items(), key=lambda item: natural_key(item[0]))
    ]
    return pairs, skipped


def _select(
    root: Path, index: dict[tuple[str, str], str] | None,
    sources: Sequence[str] | None, modalities: Sequence[str] | None,
) -> tuple[list[_Pair], list[str]]:
    found = sorted((d.name for d in root.iterdir() if not d.name.startswith(".") and (d / "images").is_dir()),
                   key=natural_key)
    if isinstance(sources, str) or isinstance(modalities, str):
        raise TypeError("sources and modalities must be sequences of str, not one str")
    unknown = sorted(set(sources or ()) - set(found))
    if unknown:
        raise IngestError(f"sources {unknown!r} are not in {root}; it has {found!r}")
    if modalities is not None:
        if index is None:
            raise IngestError(f"selecting modalities needs {root / 'index.csv'}, which is missing")
        known = sorted(set(index.values()))
        unmatched = sorted(m for m in modalities if not fnmatch.filter(known, m))
        if unmatched:
            raise IngestError(f"modalities {unmatched!r} match nothing; index.csv has {known!r}")
    pairs: list[_Pair] = []
    skipped: list[str] = []
    for source in found if sources is None else [s for s in found if s in set(sources)]:
        found_pairs, found_skipped = _source_pairs(root / source, index)
        pairs += [p for p in found_pairs
                  if modalities is None or any(fnmatch.fnmatchcase(p.modality, m) for m in modalities)]
        skipped += found_skipped
    if not pairs:
        raise IngestError(f"no image/mask pairs selected in {root} (sources={sources!r}, modalities={modalities!r})")
    return pairs, skipped


def _write_field_variable(screen: Screen, name: str, values: np.ndarray, dtype: str, fill: Any) -> None:
    """A small per-field variable, one chunk, written whole by the client."""
    group = zarr.open_group(screen.path, mode="r+")
    array = group.create_array(name, shape=values.shape, chunks=values.shape, dtype=dtype,
                               fill_value=fill, dimension_names=DIMS_FIELD)
    array[...] = values


def _ingest_pair(
    screen: Screen, field: FieldKey, pair: _Pair, shape_yx: tuple[int, int], store_yx: tuple[int, int],
    dtype: str = "uint16", planes: _Planes | None = None, rgb: str | None = None,
) -> FieldResult:
    """Read an image (``shape_yx``, ``planes`` z planes) and its mask, then write both zero-padded to ``store_yx``.

    ``rgb``: the reduction a user chose for a folder of images; a colour image reduced by its
    default ``'mean'`` is noted (its channels may be different stains). None: a dataset's
    pairs, reduced by the mean without a note (its colour images are histology).
    """
    n_planes, reference = (1, pair.image) if planes is None else planes
    image_spec = PlaneSpec(n_planes, shape_yx, np.dtype(dtype), rgb or "mean", reference)
    colour: list[str] = []
    try:
        image = read_checked(pair.image, image_spec, notes=colour if rgb == "mean" else None)
        truth = None
        if pair.mask is not None:
            mask_spec = PlaneSpec(1, shape_yx, np.dtype("uint32"), None, pair.image, "truth_nuclei")
            truth = read_checked(pair.mask, mask_spec)[0]
    except BadFile as bad:
        return FieldResult(field, failed=((bad.path, bad.reason),))
    where = {"plate": field.plate, "well": field.well, "site": field.site, "t": field.t}
    padded = np.zeros((n_planes, *store_yx), dtype=image.dtype)
    padded[:, : shape_yx[0], : shape_yx[1]] = image
    records = screen.write("images", padded[np.newaxis], **where)
    if truth is not None:
        padded_truth = np.zeros(store_yx, dtype=np.uint32)
        padded_truth[: truth.shape[0], : truth.shape[1]] = truth
        records += screen.write("truth_nuclei", padded_truth, **where)
    notes = tuple(f"{pair.image}: {note}; to use one colour channel instead (e.g. blue for DAPI or Hoechst), "
                  "give --rgb blue (rgb='blue' in Python)" for note in colour)
    return FieldResult(field, records=tuple(records), notes=notes)


def ingest_nuclei_pairs(
    root: str | Path,
    store_path: str | Path,
    *,
    sources: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    overwrite: bool = False,
    scheduler: Any = None,
) -> IngestReport:
    """Ingest ``SOURCE/images/NAME.{png,tif}`` + ``SOURCE/masks/NAME.png`` pairs into a store.

    Each source folder is a plate; its images, in natural name order, fill wells A01,
    A02, ... (24 per row, see :func:`well_names`) at site 0, t 0, channel ``'image'``
    (one channel for every modality; select by the ``modality`` variable). Images are
    stored as uint16 (8-bit values unchanged; float32 when any image is floating point) at
    the top-left of a field of the largest
    image size, zero-padded; RGB(A) images are reduced to the rounded mean of R, G and B,
    which is exact for grey images stored as RGB. Masks become ``truth_nuclei`` (uint32),
    pixel for pixel.

    Per-field variables (dims plate, well, site, t): ``extent_y``, ``extent_x`` (int32,
    the image's true size; 0 for wells without an image), ``source_name`` (str, NAME) and,
    when ``root/index.csv`` exists, ``modality`` (str, its modality column).

    Parameters
    ----------
    root : str or Path
        Folder holding one sub-folder per source.
    store_path : str or Path
        The new store.
    sources : sequence of str, optional
        Source folders to ingest (default: all).
    modalities : sequence of str, optional
        Keep pairs whose ``index.csv`` modality matches one of these shell-style
        patterns (e.g. ``'fluorescence*'``).
    overwrite : bool
        Replace an existing cellflow store at ``store_path``.
    scheduler : optional
        As for :func:`cellflow.screen.ingest.ingest`.

    Returns
    -------
    report : IngestReport
        Bad files in ``failed``; images without a mask (ingested without truth) in ``notes``.

    Raises
    ------
    IngestError
        Unknown source or modality, nothing selected, or no image readable.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root} is not a folder")
    index = _read_index(root)
    pairs, skipped = _select(root, index, sources, modalities)
    return _ingest_pairs(root, pairs, skipped, store_path, with_modality=index is not None,
                         overwrite=overwrite, scheduler=scheduler)


def folder_images(folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """The images directly in ``folder`` by stem (natural name order) and the other files in it.

    Cheap (names only, no file is read): :func:`cellflow.pipeline.segment.run_on_images`
    calls it before starting a cluster, so that a wrong folder is named at once.

    Raises
    ------
    IngestError
        ``folder`` does not exist or is not a folder, two images share a stem, or it has
        no image directly in it (the message names its sub-folders that have images).
    """
    folder = Path(folder)
    if not folder.exists():
        raise IngestError(f"{folder} does not exist")
    if not folder.is_dir():
        raise IngestError(f"{folder} is not a folder")
    images: dict[str, Path] = {}
    skipped: list[str] = []
    nested: dict[str, int] = {}
    for path in visible_files(folder):
        image = path.suffix.lower() in _IMAGE_SUFFIXES
        if path.parent != folder or not image:
            skipped.append(str(path))
            if image:
                top = path.relative_to(folder).parts[0]
                nested[top] = nested.get(top, 0) + 1
        elif path.stem in images:
            raise IngestError(f"{images[path.stem]} and {path} have the same name; keep one")
        else:
            images[path.stem] = path
    if not images:
        where = ""
        if nested:
            listed = ", ".join(f"{name}/ has {count}" for name, count in sorted(nested.items())[:5])
            plural = "s" if len(nested) > 1 else ""
            where = (f"; its sub-folder{plural} {listed}: give {'one of them' if plural else 'that folder'}"
                     " (sub-folders are not searched)")
        raise IngestError(f"no .png/.tif/.jpg images directly in {folder}{where}")
    return dict(sorted(images.items(), key=lambda item: natural_key(item[0]))), skipped


def ingest_images(
    folder: str | Path, store_path: str | Path, *, rgb: str = "mean", channel: str = CHANNEL,
    overwrite: bool = False, scheduler: Any = None,
) -> IngestReport:
    """Ingest a flat folder of images of any sizes, one field per file (no truth).

    The layout is that of :func:`ingest_nuclei_pairs` with one source, the folder:
    plate = folder name, wells A01, A02, ... in natural name order, images zero-padded
    to the largest size with their true size in ``extent_y``/``extent_x`` and the file
    stem in ``source_name``. This is how ``cellflow segment FOLDER OUT`` reads its input.

    A multi-page TIFF is a z-stack: its pages are the field's z planes (``z`` = 0, 1, ...
    as plane numbers). One store holds one depth, the one most files have; a file of
    another depth, or whose pages are channels or time points (ImageJ/OME axes), is
    reported in ``failed`` with the reason, and the rest are ingested.

    RGB(A) files are reduced to one channel by ``rgb`` (:func:`~cellflow.screen.ingest.reduce_rgb`: ``'mean'``,
    exact for grey images stored as RGB; or ``'red'``, ``'green'``, ``'blue'``, ``'max'``,
    ``'luminance'``). With the default, each file whose R, G and B differ (a colour
    composite of several stains) is named in the report's ``notes``.

    ``channel`` names the store's one channel (``'image'``; a network's input channel, such
    as ``'BF'``, so that a model trained on a plate's store reads the folder's images).

    Raises
    ------
    IngestError
        ``folder`` is not a folder, or has no image in it.
    """
    if rgb not in RGB_METHODS:
        raise IngestError(f"rgb must be one of {RGB_METHODS!r}, got {rgb!r}")
    folder = Path(folder)
    images, skipped = folder_images(folder)
    pairs = [_Pair(folder.name, stem, str(path), None, "") for stem, path in images.items()]
    return _ingest_pairs(folder, pairs, skipped, store_path, with_modality=False, with_truth=False,
                         overwrite=overwrite, scheduler=scheduler, rgb=rgb, channel=channel)


def _ingest_pairs(
    root: Path, pairs: list[_Pair], skipped: list[str], store_path: str | Path, *, with_modality: bool,
    with_truth: bool = True, overwrite: bool, scheduler: Any, rgb: str | None = None, channel: str = CHANNEL,
) -> IngestReport:
    by_plate = {s: [p for p in pairs if p.source == s] for s in dict.fromkeys(p.source for p in pairs)}
    wells = well_names(max(len(v) for v in by_plate.values()))
    headers: dict[str, Any] = {}
    for pair in pairs:
        try:
            headers[pair.image] = read_header(pair.image)
        except BadFile as bad:
            headers[pair.image] = bad
    planes = _stack_depth(headers)
    readable = [h for h in headers.values() if not isinstance(h, BadFile)]
    sizes = [h.shape_yx for h in readable]
    if not sizes:
        first = next(iter(headers.values()))
        raise IngestError(f"none of the {len(pairs)} selected images in {root} can be ingested; first: {first}")
    # Integer images are stored as uint16; one floating-point image makes it float32 for all,
    # which holds every 8- and 16-bit value exactly (a float image is never refused or rounded).
    dtype = "float32" if any(np.dtype(h.dtype).kind == "f" for h in readable) else "uint16"
    layout = ScreenLayout(
        plates=tuple(by_plate), wells=wells, sites=(0,), channels=(channel,),
        shape_yx=(max(s[0] for s in sizes), max(s[1] for s in sizes)), dtype=dtype,
        tile_yx=(MAX_TILE, MAX_TILE), attrs={"ingest_folder": str(root)},
        z_um=tuple(float(z) for z in range(planes.n)),
    )
    screen = Screen.create(store_path, layout, overwrite=overwrite)
    if with_truth:
        screen.add_variable("truth_nuclei", dims=DIMS_LABELS, dtype="uint32")
    _write_pair_variables(screen, layout, by_plate, headers, with_modality=with_modality)
    results: list[FieldResult] = []
    tasks = []
    for plate, plate_pairs in by_plate.items():
        for well, pair in zip(wells, plate_pairs):
            field = FieldKey(plate, well, 0, 0.0)
            header = headers[pair.image]
            if isinstance(header, BadFile):
                results.append(FieldResult(field, failed=((header.path, header.reason),)))
            else:
                tasks.append(dask.delayed(_ingest_pair, pure=True)(
                    screen, field, pair, header.shape_yx, layout.shape_yx, dtype, planes, rgb))
    results += run_fields(tasks, scheduler)
    notes = [f"{p.image} has no mask in masks/; ingested without truth" for p in pairs
             if with_truth and p.mask is None]
    notes += [f"{p.image} is not in index.csv; its modality is ''" for p in pairs
              if with_modality and not p.modality]
    return finish(screen, results, variables=["images", "truth_nuclei"] if with_truth else ["images"],
                  n_files=len(pairs) + sum(p.mask is not None for p in pairs), skipped=skipped, notes=notes)


def _stack_depth(headers: dict[str, Any]) -> _Planes:
    """The z depth of the ingest: the plane count most of the readable files have (ties: the first file's).

    Marks the files that cannot join it as bad in ``headers``: planes along a channel or time
    axis, or another number of planes than the depth (each reason names the file that set it).
    One odd file is reported; it never decides the layout of the rest.
    """
    for path, header in headers.items():
        if not isinstance(header, BadFile) and header.z_problem() is not None:
            headers[path] = BadFile(path, str(header.z_problem()))
    readable = [h for h in headers.values() if not isinstance(h, BadFile)]
    if not readable:
        return _Planes(1, "")
    counts = Counter(h.n_planes for h in readable)  # insertion order: the first file wins a tie
    depth = max(counts, key=counts.__getitem__)
    reference = next(h.path for h in readable if h.n_planes == depth)
    for path, header in headers.items():
        if not isinstance(header, BadFile) and header.n_planes != depth:
            stack = "single planes" if depth == 1 else f"z-stacks of {depth} planes"
            headers[path] = BadFile(path, f"has {header.n_planes} planes (pages); expected {depth} like {reference} "
                                          f"(most images here are {stack}; one ingest holds one z depth)")
    return _Planes(depth, reference)


def _write_pair_variables(
    screen: Screen, layout: ScreenLayout, by_plate: dict[str, list[_Pair]],
    headers: dict[str, Any], *, with_modality: bool,
) -> None:
    shape = (len(layout.plates), len(layout.wells), 1, 1)
    extent = np.zeros((2, *shape), dtype=np.int32)
    names = np.full(shape, "", dtype=object)
    modality = np.full(shape, "", dtype=object)
    for i, plate_pairs in enumerate(by_plate.values()):
        for j, pair in enumerate(plate_pairs):
            header = headers[pair.image]
            if not isinstance(header, BadFile):
                extent[:, i, j, 0, 0] = header.shape_yx
            names[i, j, 0, 0] = pair.name
            modality[i, j, 0, 0] = pair.modality
    _write_field_variable(screen, "extent_y", extent[0], "int32", 0)
    _write_field_variable(screen, "extent_x", extent[1], "int32", 0)
    _write_field_variable(screen, "source_name", names, "str", "")
    if with_modality:
        _write_field_variable(screen, "modality", modality, "str", "")
