"""Writing scanned files into a new store: one dask task per field, bookkeeping on the client.

Each task reads every file of its field, and only when all of them are good writes
the field with :meth:`Screen.write` and returns the chunk records. A field with a bad
file writes nothing and returns the files and reasons. The client then marks the good
fields acquired and records their chunks in the ledger (the store's concurrency
contract: bookkeeping has one writer, after the data writes returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np

from cellflow.cluster import compute
from cellflow.errors import IngestError
from cellflow.screen._ingest_pattern import FilenamePattern
from cellflow.screen._ingest_read import BadFile, ImageHeader, PlaneSpec, read_checked
from cellflow.screen._ingest_report import IngestReport
from cellflow.screen._ingest_table import FileTable, first_header, scan
from cellflow.screen.layout import MAX_TILE, ScreenLayout
from cellflow.screen.store import ChunkRecord, FieldKey, Screen

__all__ = ["FieldResult", "finish", "ingest", "run_fields"]


class FieldResult(NamedTuple):
    """What one field task returns: its chunk records, or the bad files and reasons."""

    field: FieldKey
    records: tuple[ChunkRecord, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


class _Plane(NamedTuple):
    path: str
    c: int  # channel position
    z: int  # first z position the file fills


def _field_name(field: FieldKey) -> str:
    return f"plate={field.plate} well={field.well} site={field.site} t={field.t:g}"


def _ingest_field(
    screen: Screen, field: FieldKey, planes: Sequence[_Plane], spec: PlaneSpec, shape_cz: tuple[int, int]
) -> FieldResult:
    """Read all files of one field, then write it; a bad file means nothing is written."""
    data = np.zeros((*shape_cz, *spec.shape_yx), dtype=spec.dtype)
    failed: list[tuple[str, str]] = []
    for plane in planes:
        try:
            pixels = read_checked(plane.path, spec)
        except BadFile as bad:
            failed.append((bad.path, bad.reason))
            continue
        data[plane.c, plane.z : plane.z + len(pixels)] = pixels
    if failed:
        return FieldResult(field, failed=tuple(failed))
    records = screen.write("images", data, plate=field.plate, well=field.well, site=field.site, t=field.t)
    expected = shape_cz[0] * shape_cz[1] // spec.n_planes
    notes: tuple[str, ...] = ()
    if len(planes) < expected:
        notes = (f"{_field_name(field)}: {expected - len(planes)} of {expected} files missing; planes left 0",)
    return FieldResult(field, records=tuple(records), notes=notes)


def run_fields(tasks: Sequence[Any], scheduler: Any) -> list[FieldResult]:
    """Compute delayed field tasks with ``scheduler`` (None: dask's default or the active Client)."""
    return list(compute(*tasks, scheduler=scheduler)) if tasks else []


def finish(
    screen: Screen, results: Sequence[FieldResult], *, variables: Sequence[str], n_files: int,
    skipped: Sequence[str] = (), notes: Sequence[str] = (), failed: Sequence[tuple[str, str]] = (),
) -> IngestReport:
    """Client side: mark good fields acquired, record their chunks, save and return the report.

    ``failed``: files refused before any field task ran (path, reason), reported with the fields' bad files.
    """
    good = [r for r in results if not r.failed]
    screen.set_acquired([r.field for r in good])
    records = [rec for r in good for rec in r.records]
    for name in variables:
        screen.ledger(name).mark(records)
    report = IngestReport(
        store=str(screen.path), n_files=n_files, n_fields=len(results),
        n_fields_ingested=len(good), failed=(*(f for r in results for f in r.failed), *failed),
        skipped=tuple(skipped), notes=(*notes, *(n for r in results for n in r.notes)),
    )
    report.save()
    return report


def ingest(
    folder: str | Path,
    store_path: str | Path,
    *,
    pattern: FilenamePattern | str,
    overwrite: bool = False,
    update: bool = False,
    scheduler: Any = None,
    pixel_size_um: float = 1.0,
    tile_yx: tuple[int, int] = (MAX_TILE, MAX_TILE),
) -> IngestReport:
    """Ingest a folder of TIFF/PNG files into a new screen store (or add new files to one), in parallel.

    Parameters
    ----------
    folder : str or Path
        Folder of image files, searched recursively; hidden files are ignored.
    store_path : str or Path
        The new store.
    pattern : FilenamePattern or str
        How names map to coordinates: a pattern, a built-in name (``'bbbc'``,
        ``'imagexpress'``, ``'cellflow'``) or a brace template.
    overwrite : bool
        Replace an existing cellflow store at ``store_path`` (never anything else).
    update : bool
        When ``store_path`` exists (made by an ingest of this folder with this pattern):
        add the files of fields it has not acquired yet instead of refusing — the plates,
        wells, sites and later time points an acquisition added since (the store grows,
        :meth:`Screen.extend`), and fields whose files were bad before. Fields already
        acquired are not read again; nothing in the store is replaced. A file that does
        not fit the store (another size, dtype, channel or z plane) is reported as bad.
    scheduler : optional
        Anything ``dask.compute`` accepts: None (dask's default, or the active
        ``distributed.Client``), ``'threads'``, ``'sync'``, a ``Client``...
    pixel_size_um : float
        Pixel edge in micrometres.
    tile_yx : (int, int)
        Chunk size in y and x, at most 1024.

    Returns
    -------
    report : IngestReport
        Also saved in the store's root attributes under ``cellflow_ingest``.

    Raises
    ------
    IngestError
        No file matches, duplicate coordinates, or no file is readable. A bad file does
        not raise: it is named in ``report.failed`` and its field is not acquired.
    StoreExistsError
        ``store_path`` exists and ``overwrite`` is false.

    Notes
    -----
    The field size, planes per file and dtype come from the header of the first
    readable file; the store dtype is uint8 for 8-bit files, uint16 for other integers
    and float32 for floats. Without a z field a file's pages are its z planes.
    """
    if update and overwrite:
        raise IngestError("give update (add new files to the store) or overwrite (replace the store), not both")
    table = scan(folder, pattern)
    if update and Path(store_path).exists():
        return _add_new_fields(Screen.open(store_path), table, scheduler)
    header = first_header(table)
    spec = table.plane_spec(header)
    layout = ScreenLayout(
        **table.coordinates(header), shape_yx=header.shape_yx, dtype=str(spec.dtype),
        pixel_size_um=pixel_size_um, tile_yx=tile_yx,
        attrs={"ingest_folder": str(folder), "ingest_pattern": table.pattern.to_dict()},
    )
    screen = Screen.create(store_path, layout, overwrite=overwrite)
    tasks = [
        dask.delayed(_ingest_field, pure=True)(screen, field, planes, spec, shape_cz)
        for field, planes, shape_cz in _field_plan(table, layout)
    ]
    return finish(screen, run_fields(tasks, scheduler), variables=["images"], n_files=len(table),
                  skipped=table.skipped)


def _add_new_fields(screen: Screen, table: FileTable, scheduler: Any) -> IngestReport:
    """The ``update`` ingest: grow ``screen`` by the table's new coordinates, ingest its unacquired fields."""
    layout = screen.layout
    made_with = dict(layout.attrs).get("ingest_pattern")
    if made_with != table.pattern.to_dict():
        raise IngestError(
            f"{screen.path} was not made by an ingest with this pattern ({made_with or 'no folder ingest'} vs "
            f"{table.pattern.to_dict()}); only new files of the same naming can be added to it")
    files = table.files
    z_values = files["z"] if not table.z_from_pages else None
    misfits: list[tuple[str, str]] = []
    fits = files["channel"].isin(layout.channels)
    for path, channel in zip(files["path"][~fits], files["channel"][~fits]):
        misfits.append((str(path), f"channel {channel!r} is not one of the store's channels {list(layout.channels)}"))
    if z_values is not None:
        z_fits = z_values.isin(layout.z_um)
        for path, z in zip(files["path"][fits & ~z_fits], z_values[fits & ~z_fits]):
            misfits.append((str(path), f"z {z:g} um is not one of the store's planes {list(layout.z_um)}"))
        fits &= z_fits
    last_t = max(layout.t_min)
    early = fits & ~files["t"].isin(layout.t_min) & (files["t"] <= last_t)
    for path, t in zip(files["path"][early], files["t"][early]):
        misfits.append((str(path), f"time point {t:g} min is new but not after the store's last ({last_t:g} min): "
                                   "a time-lapse store only grows forward in time"))
    fits &= ~early
    kept = replace(table, files=files[fits].reset_index(drop=True))
    coordinates = kept.coordinates(ImageHeader("", len(layout.z_um), layout.shape_yx, np.dtype(layout.dtype), 1))
    screen = screen.extend(plates=coordinates["plates"], wells=coordinates["wells"], sites=coordinates["sites"],
                           t_min=coordinates["t_min"])
    spec = PlaneSpec(n_planes=len(layout.z_um) if table.z_from_pages else 1, shape_yx=layout.shape_yx,
                     dtype=np.dtype(layout.dtype), rgb=table.pattern.rgb, reference=f"the store {screen.path}")
    acquired = set(screen.fields())
    plan = [item for item in _field_plan(kept, screen.layout) if item[0] not in acquired]
    tasks = [dask.delayed(_ingest_field, pure=True)(screen, field, planes, spec, shape_cz)
             for field, planes, shape_cz in plan]
    new_files = sum(len(planes) for _, planes, _ in plan)
    note = (f"update: {len(acquired)} fields were already in the store (not read again); "
            f"{len(plan)} new or not yet acquired fields from {new_files} files")
    return finish(screen, run_fields(tasks, scheduler), variables=["images"], n_files=new_files,
                  skipped=table.skipped, notes=(note,), failed=misfits)


def _field_plan(
    table: FileTable, layout: ScreenLayout
) -> list[tuple[FieldKey, tuple[_Plane, ...], tuple[int, int]]]:
    """Per field: its key, its files with channel and z positions, and (channels, z planes)."""
    c_at = {c: i for i, c in enumerate(layout.channels)}
    z_at = {z: i for i, z in enumerate(layout.z_um)}
    shape_cz = (len(layout.channels), len(layout.z_um))
    plan = []
    grouped = table.files.groupby(["plate", "well", "site", "t"], sort=False)
    for (plate, well, site, t), rows in grouped:
        planes = tuple(_Plane(p, c_at[c], z_at[z]) for p, c, z in zip(rows["path"], rows["channel"], rows["z"]))
        plan.append((FieldKey(str(plate), str(well), int(site), float(t)), planes, shape_cz))
    return plan
