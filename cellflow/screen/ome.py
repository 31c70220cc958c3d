"""Export a screen to OME-Zarr HCS plates and import such plates back.

Layout on disk (OME-Zarr 0.5 on zarr v3, one folder per plate)::

    out/
      <plate>.ome.zarr/           ome.plate: rows, columns, wells, field_count, name
        B/07/                     ome.well: images [{"path": "0"}, {"path": "1"}, ...]
          0/                      one image per *site* (field of view), the path is the site number
            0/  (1/ ...)          (t, c, z, y, x) arrays, level 0 first; chunks = the store's tiles
            labels/<variable>/0   (t, 1, 1, y, x) label image, e.g. labels/truth_nuclei

``out`` is always a folder holding one ``<plate>.ome.zarr`` per plate, even for a
one-plate screen, so the path of a plate never depends on how many plates there
are. Axes are ``t`` (minute), ``c``, ``z``, ``y``, ``x`` (micrometer); the scale
and translation of ``t`` and ``z`` describe evenly spaced coordinates, and the
exact cellflow coordinates travel in a ``cellflow`` attribute next to ``ome``
(the layout on the plate, the acquired times on each image), so a cellflow
round trip is exact while any OME-Zarr reader sees standard metadata.

The metadata is written here rather than with ``ome_zarr.writer``: the JSON is
small and fixed by the spec, and cellflow then needs ``ome-zarr`` (an optional
extra whose pins conflict with others) only to *test* conformance. Reading and
checking plates for import lives in :mod:`cellflow.screen._ome_read`.

A site is exported when any of its times was acquired; times never acquired
read as zeros and are listed out of ``acquired_t``. Sites never acquired are
absent from their well, wells with no acquired site from the plate, and a plate
with no acquired site is not written.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cellflow.cluster import compute
from cellflow.errors import StoreExistsError
from cellflow.screen._ome_read import (
    LABEL_PREFIXES,
    TCZYX,
    WELL_PARTS,
    OMEImage,
    find_plates,
    is_ome_plate,
    label_dtypes,
    merge_layouts,
    read_plane,
    read_plate,
)
from cellflow.screen.layout import DIMS_LABELS, ScreenLayout
from cellflow.screen.store import ChunkRecord, Screen

__all__ = ["OME_VERSION", "export_ome_zarr", "import_ome_zarr"]

#: OME-Zarr (NGFF) version written by :func:`export_ome_zarr`.
OME_VERSION = "0.5"

_PALETTE = ("0000FF", "00FF00", "FF0000", "FF00FF", "FFFF00", "00FFFF", "FFFFFF")


# ====================================================================== export
def export_ome_zarr(
    screen: Screen | str | Path,
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    levels: int = 1,
    overwrite: bool = False,
    scheduler: Any = None,
) -> list[Path]:
    """Write each plate of a screen as an OME-Zarr 0.5 HCS plate.

    Parameters
    ----------
    screen : Screen or path
        The screen store to export.
    out : str or Path
        Folder that receives one ``<plate>.ome.zarr`` per plate (created if needed).
    labels : sequence of str, optional
        ``labels_*`` / ``truth_*`` variables to export as OME labels of every image;
        all of them by default, none for ``[]``.
    levels : int
        Resolution levels: 1 writes full resolution only; each further level halves
        y and x (mean for images, nearest for labels).
    overwrite : bool
        Replace existing OME-Zarr plates at the target paths. Anything at a target
        path that is not an OME-Zarr plate is never removed.
    scheduler : optional
        Dask scheduler for the pixel copy (``None``: dask's default).

    Returns
    -------
    paths : list of Path
        The plates written, in the order of the screen's plates.

    Raises
    ------
    StoreExistsError
        A target plate exists and ``overwrite`` is false, or it is not an OME-Zarr plate.
    ValueError
        Unknown label variable, bad ``levels``, a plate name unfit for a folder name,
        or no acquired field at all.

    Examples
    --------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> layout = ScreenLayout(plates=("P1",), wells=("B07",), sites=(0,), channels=("DNA",),
    ...                       shape_yx=(32, 32))
    >>> screen = Screen.create(tmp / "screen.zarr", layout)
    >>> _ = screen.write("images", np.ones((1, 1, 32, 32), np.uint16), well="B07", site=0)
    >>> screen.set_acquired([("P1", "B07", 0, 0.0)])
    >>> [p.name for p in export_ome_zarr(screen, tmp / "ome")]
    ['P1.ome.zarr']
    >>> import_ome_zarr(tmp / "ome", tmp / "back.zarr").fields()
    [FieldKey(plate='P1', well='B07', site=0, t=0.0)]
    """
    screen = screen if isinstance(screen, Screen) else Screen.open(screen)
    layout = screen.layout
    label_names = _label_variables(screen, labels)
    _check_levels(levels, layout.shape_yx)
    acquired = _acquired_sites(screen)
    if not acquired:
        raise ValueError(f"{screen.path} has no acquired field; there is nothing to export")
    targets = {plate: Path(out) / f"{_plate_folder(plate)}.ome.zarr" for plate in acquired}
    _claim(targets.values(), overwrite=overwrite)
    ds = screen.dataset()
    jobs = []
    for p, plate in enumerate(layout.plates):
        if plate in acquired:
            jobs += _plan_plate(ds, layout, p, acquired[plate], targets[plate], label_names, levels)
    _, lows, highs = dask.compute(
        [job.writes for job in jobs], [job.low for job in jobs], [job.high for job in jobs],
        scheduler=scheduler,
    )
    for job, low, high in zip(jobs, lows, highs):
        job.group.attrs.update({**job.attrs, "ome": {**job.attrs["ome"], "omero": _omero(layout, low, high)}})
    return [targets[plate] for plate in layout.plates if plate in targets]


@dataclass(frozen=True)
class _ImageJob:
    """One image being exported: its group, attributes to write once the pixels are in, and work."""

    group: zarr.Group
    attrs: dict[str, Any]
    writes: list[Any]
    low: da.Array
    high: da.Array


def _label_variables(screen: Screen, labels: Sequence[str] | None) -> tuple[str, ...]:
    available = tuple(v for v in screen.variables if v.startswith(LABEL_PREFIXES))
    if labels is None:
        return available
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of variable names, got the string {labels!r}")
    missing = [name for name in labels if name not in available]
    if missing:
        raise ValueError(
            f"labels {missing!r} are not labels_*/truth_* variables of {screen.path}; "
            f"it has {list(available)!r}"
        )
    return tuple(labels)


def _check_levels(levels: int, shape_yx: tuple[int, int]) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    if min(shape_yx) >> (levels - 1) < 1:
        raise ValueError(f"levels={levels} halves a field of {shape_yx} below one pixel; use fewer levels")


def _acquired_sites(screen: Screen) -> dict[str, dict[tuple[str, int], list[float]]]:
    """Acquired times per (well, site) per plate, in storage order."""
    sites: dict[str, dict[tuple[str, int], list[float]]] = {}
    for key in screen.fields():
        sites.setdefault(key.plate, {}).setdefault((key.well, key.site), []).append(key.t)
    return sites


def _plate_folder(plate: str) -> str:
    if plate in (".", "..") or any(ch in plate for ch in '/\\:*?"<>|') or plate != plate.strip():
        raise ValueError(f"plate name {plate!r} cannot name a folder; rename the plate to export it")
    return plate


def _claim(targets: Iterable[Path], *, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, remove) existing plates before anything is written."""
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise StoreExistsError(
            f"OME-Zarr output {[str(t) for t in existing]} already exists; "
            "pass overwrite=True to replace it, or choose another folder"
        )
    foreign = [str(t) for t in existing if not is_ome_plate(t)]
    if foreign:
        raise StoreExistsError(f"{foreign} exists and is not an OME-Zarr plate; refusing to overwrite it")
    for target in existing:
        shutil.rmtree(target)


def _well_parts(well: str) -> tuple[str, str]:
    match = WELL_PARTS.match(well)
    assert match is not None  # ScreenLayout validated every well name
    return match.group(1), match.group(2)


def _plate_attrs(plate: str, layout: ScreenLayout, sites: Collection[tuple[str, int]]) -> dict[str, Any]:
    wells = list(dict.fromkeys(well for well, _ in sites))
    rows = sorted({_well_parts(w)[0] for w in wells}, key=lambda r: (len(r), r))
    columns = sorted({_well_parts(w)[1] for w in wells}, key=int)
    field_count = max(sum(1 for w, _ in sites if w == well) for well in wells)
    well_dicts = []
    for well in wells:
        row, column = _well_parts(well)
        well_dicts.append({"path": f"{row}/{column}", "rowIndex": rows.index(row),
                           "columnIndex": columns.index(column)})
    plate_meta = {
        "name": plate, "rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
        "wells": well_dicts, "field_count": field_count,
        "version": OME_VERSION,  # redundant with ome.version; ome-zarr's writer adds it too
    }
    cellflow = {"layout": replace(layout, plates=(plate,)).to_dict()}
    return {"ome": {"version": OME_VERSION, "plate": plate_meta}, "cellflow": cellflow}


def _plan_plate(
    ds: xr.Dataset, layout: ScreenLayout, p: int, sites: dict[tuple[str, int], list[float]],
    target: Path, label_names: Sequence[str], levels: int,
) -> list[_ImageJob]:
    root = zarr.open_group(target, mode="w-", zarr_format=3)
    root.attrs.update(_plate_attrs(layout.plates[p], layout, sites))
    jobs = []
    for well in dict.fromkeys(w for w, _ in sites):
        row, column = _well_parts(well)
        well_group = root.require_group(row).create_group(column)
        well_sites = [s for w, s in sites if w == well]
        well_group.attrs.update({"ome": {"version": OME_VERSION,
                                         "well": {"images": [{"path": str(s)} for s in well_sites]}}})
        for site in well_sites:
            where = (p, layout.wells.index(well), layout.sites.index(site))
            group = well_group.create_group(str(site))
            images = ds["images"].data[where]
            writes = _plan_pyramid(group, images, layout, levels, _mean_half)
            if label_names:
                _plan_labels(group, ds, where, layout, label_names, levels, writes)
            attrs = {
                "ome": {"version": OME_VERSION,
                        "multiscales": [_multiscale(layout, levels, f"{layout.plates[p]}/{well}/{site}")]},
                "cellflow": {"acquired_t": sites[(well, site)]},
            }
            low, high = images.min(axis=(0, 2, 3, 4)), images.max(axis=(0, 2, 3, 4))
            jobs.append(_ImageJob(group, attrs, writes, low, high))
    return jobs


def _plan_labels(
    group: zarr.Group, ds: xr.Dataset, where: tuple[int, int, int], layout: ScreenLayout,
    label_names: Sequence[str], levels: int, writes: list[Any],
) -> None:
    labels_group = group.create_group("labels")
    labels_group.attrs.update({"ome": {"version": OME_VERSION, "labels": list(label_names)}})
    for name in label_names:
        label_group = labels_group.create_group(name)
        data = ds[name].data[where][:, None, None]  # (t, y, x) -> (t, 1, 1, y, x)
        writes += _plan_pyramid(label_group, data, layout, levels, _nearest_half)
        label_group.attrs.update({"ome": {
            "version": OME_VERSION,
            "multiscales": [_multiscale(layout, levels, name)],
            "image-label": {"version": OME_VERSION, "source": {"image": "../../"}},
        }})


def _mean_half(level: da.Array) -> da.Array:
    """Halve y and x by 2x2 means (odd edges dropped), keeping the dtype."""
    even = level[..., : level.shape[-2] // 2 * 2, : level.shape[-1] // 2 * 2]
    even = even.rechunk({3: _even(even.chunksize[3]), 4: _even(even.chunksize[4])})
    mean = da.coarsen(np.mean, even.astype(np.float64), {3: 2, 4: 2})
    return (mean.round() if level.dtype.kind in "iu" else mean).astype(level.dtype)


def _nearest_half(level: da.Array) -> da.Array:
    """Halve y and x by keeping every other pixel (labels must not be averaged)."""
    return level[..., : level.shape[-2] // 2 * 2 : 2, : level.shape[-1] // 2 * 2 : 2]


def _even(n: int) -> int:
    return max(2, n // 2 * 2)


def _plan_pyramid(group: zarr.Group, data: da.Array, layout: ScreenLayout, levels: int, half: Any) -> list[Any]:
    """Create the arrays of every level (metadata only) and return the lazy pixel copies."""
    writes = []
    for k in range(levels):
        if k:
            data = half(data)
        chunks = (1, 1, 1, min(layout.chunk_yx[0], data.shape[3]), min(layout.chunk_yx[1], data.shape[4]))
        array = group.create_array(
            str(k), shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0, dimension_names=TCZYX
        )
        # dask chunks equal the zarr chunks, so no two tasks write one chunk and no lock is needed
        writes.append(da.store(data.rechunk(chunks), array, lock=False, compute=False))  # type: ignore[arg-type]
    return writes


def _spacing(values: Sequence[float]) -> float:
    """Scale of an evenly spaced axis; the exact values travel in the cellflow attributes."""
    step = (values[-1] - values[0]) / (len(values) - 1) if len(values) > 1 else 1.0
    return step if step > 0 else 1.0


def _multiscale(layout: ScreenLayout, levels: int, name: str) -> dict[str, Any]:
    axes = [{"name": "t", "type": "time", "unit": "minute"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    datasets = []
    for k in range(levels):
        px = layout.pixel_size_um * 2**k
        shift = layout.pixel_size_um * (2**k - 1) / 2  # centre of the 2^k x 2^k block of level 0
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [_spacing(layout.t_min), 1.0, _spacing(layout.z_um), px, px]},
            {"type": "translation", "translation": [layout.t_min[0], 0.0, layout.z_um[0], shift, shift]},
        ]})
    return {"name": name, "axes": axes, "datasets": datasets}


def _omero(layout: ScreenLayout, low: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    """Channel names and display windows (the field's own range) for viewers."""
    dtype = np.dtype(layout.dtype)
    limits = np.iinfo(dtype) if dtype.kind in "iu" else None
    channels = []
    for i, name in enumerate(layout.channels):
        # NaN or inf (float images) is not JSON: fall back to a unit window
        start, end = (float(low[i]), float(high[i])) if np.isfinite([low[i], high[i]]).all() else (0.0, 1.0)
        window = {"min": float(limits.min) if limits else start, "max": float(limits.max) if limits else end,
                  "start": start, "end": end}
        color = _PALETTE[i % len(_PALETTE)] if len(layout.channels) > 1 else "FFFFFF"
        channels.append({"label": name, "color": color, "active": True, "window": window})
    return {"channels": channels, "rdefs": {"model": "color"}}


# ====================================================================== import
def import_ome_zarr(
    path: str | Path, store_path: str | Path, *, overwrite: bool = False, scheduler: Any = None
) -> Screen:
    """Read OME-Zarr HCS plates (0.4 or 0.5) into a new cellflow store.

    Parameters
    ----------
    path : str or Path
        One ``.ome.zarr`` plate, or a folder whose entries include such plates
        (what :func:`export_ome_zarr` writes).
    store_path : str or Path
        The cellflow store to create.
    overwrite : bool
        Replace an existing cellflow store at ``store_path``.
    scheduler : optional
        Dask scheduler for the pixel copy (``None``: dask's default).

    Returns
    -------
    screen : Screen
        Plates and wells from the plate metadata (well ``B/7`` becomes ``'B07'``),
        sites from the image paths (``'3'`` is site 3; non-numeric paths are
        numbered in order), t, c, z and the pixel size from the multiscales and
        omero metadata, labels as ``labels_*``/``truth_*`` variables (other label
        names get a ``labels_`` prefix). Imported fields are marked acquired and
        their chunks recorded in the ledgers. Plates written by
        :func:`export_ome_zarr` come back with their exact cellflow layout.

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    IngestError
        No plate found, or metadata that cellflow cannot represent (axes beyond
        tczyx, anisotropic pixels, 3-D labels, plates that disagree).
    StoreExistsError
        ``store_path`` exists and ``overwrite`` is false.
    """
    plates = [read_plate(p) for p in find_plates(Path(path))]
    layout = merge_layouts(plates)
    dtypes = label_dtypes(plates)
    screen = Screen.create(store_path, layout, overwrite=overwrite)
    for name, dtype in dtypes.items():
        screen.add_variable(name, dims=DIMS_LABELS, dtype=dtype)
    tasks, fields = [], []
    for plate in plates:
        for image in plate.images:
            for i, t in enumerate(plate.layout.t_min):
                if image.acquired_t is None or np.isclose(image.acquired_t, t, rtol=0, atol=1e-6).any():
                    key = (plate.layout.plates[0], image.well, image.site, t)
                    tasks.append(dask.delayed(_import_plane)(screen, key, image, i))
                    fields.append(key)
    records = [r for batch in compute(*tasks, scheduler=scheduler) for r in batch]
    # bookkeeping last, from this process only: the store's concurrency contract
    screen.set_acquired(fields)
    for name in sorted({r.variable for r in records}):
        screen.ledger(name).mark(r for r in records if r.variable == name)
    return screen


def _import_plane(
    screen: Screen, key: tuple[str, str, int, float], image: OMEImage, t_index: int
) -> list[ChunkRecord]:
    """Copy one field at one time, with its labels, into the store (a worker task)."""
    where = dict(zip(("plate", "well", "site", "t"), key))
    records = screen.write("images", read_plane(image.image, t_index), **where)
    for name, array in image.labels:
        records += screen.write(name, read_plane(array, t_index)[0, 0], **where)
    return records
