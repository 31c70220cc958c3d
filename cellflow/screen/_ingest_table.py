"""Scanning a folder into a table of files with coordinates, and a lazy view of their pixels."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from cellflow.errors import IngestError
from cellflow.screen._ingest_pattern import FilenamePattern, natural_key
from cellflow.screen._ingest_read import BadFile, ImageHeader, PlaneSpec, read_checked, read_header, store_dtype
from cellflow.screen.layout import DIMS_IMAGES

__all__ = ["COLUMNS", "FileTable", "as_pattern", "first_header", "lazy_images", "scan", "visible_files"]

#: Columns of :attr:`FileTable.files`: ``t`` in minutes, ``z`` in µm.
COLUMNS: tuple[str, ...] = ("path", "plate", "well", "site", "t", "channel", "z")
_PLANE_KEYS = ("plate", "well", "site", "t", "channel", "z")


def as_pattern(pattern: FilenamePattern | str) -> FilenamePattern:
    """A :class:`FilenamePattern`, or a str naming a built-in pattern or holding a template."""
    if isinstance(pattern, FilenamePattern):
        return pattern
    if isinstance(pattern, str):
        return FilenamePattern.named(pattern) if pattern in FilenamePattern.names() else FilenamePattern(pattern)
    raise TypeError(f"pattern must be a FilenamePattern or a str, got {type(pattern).__name__}")


def visible_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, skipping hidden files and folders (``.name``)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def _well_key(well: str) -> tuple[int, str]:
    return (len(well), well)  # A01..P24 before AA01..AF48


@dataclass(frozen=True, eq=False)
class FileTable:
    """The image files of a folder with their coordinates.

    Attributes
    ----------
    folder : Path
        The scanned folder.
    pattern : FilenamePattern
        The pattern the names were matched with.
    files : pandas.DataFrame
        One row per file, columns :data:`COLUMNS` (``t`` in minutes, ``z`` in µm), sorted
        by plate, well, site, t, channel and z; no two rows share coordinates.
    skipped : tuple of str
        Files that did not match the pattern.
    """

    folder: Path
    pattern: FilenamePattern
    files: pd.DataFrame
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files)

    @property
    def z_from_pages(self) -> bool:
        """True when the pattern has no z field, so a file's pages are its z planes."""
        return "z" not in self.pattern.fields

    def plane_spec(self, header: ImageHeader) -> PlaneSpec:
        """What every file must look like, taken from one file's header."""
        return PlaneSpec(
            n_planes=header.n_planes if self.z_from_pages else 1, shape_yx=header.shape_yx,
            dtype=store_dtype(header.dtype), rgb=self.pattern.rgb, reference=header.path,
        )

    def coordinates(self, header: ImageHeader) -> dict[str, tuple[Any, ...]]:
        """Coordinate values for a :class:`~cellflow.screen.ScreenLayout`, in order."""
        f = self.files
        if self.z_from_pages:
            z_um = tuple(i * self.pattern.z_step_um for i in range(header.n_planes))
        else:
            z_um = tuple(sorted(set(f["z"].tolist())))
        return {
            "plates": tuple(sorted(set(f["plate"].tolist()), key=natural_key)),
            "wells": tuple(sorted(set(f["well"].tolist()), key=_well_key)),
            "sites": tuple(sorted(set(f["site"].tolist()))),
            "t_min": tuple(sorted(set(f["t"].tolist()))),
            "channels": tuple(sorted(set(f["channel"].tolist()), key=self.pattern.channel_order)),
            "z_um": z_um,
        }


def _check_duplicates(rows: list[dict[str, Any]]) -> None:
    seen: dict[tuple[Any, ...], str] = {}
    for row in rows:
        key = tuple(row[k] for k in _PLANE_KEYS)
        if key in seen:
            where = ", ".join(f"{k}={v!r}" for k, v in zip(_PLANE_KEYS, key))
            raise IngestError(
                f"files {seen[key]} and {row['path']} have the same coordinates ({where}); "
                "make the pattern capture what tells them apart"
            )
        seen[key] = row["path"]


def scan(folder: str | Path, pattern: FilenamePattern | str) -> FileTable:
    """Match every visible file under ``folder`` (recursively) against ``pattern``.

    Parameters
    ----------
    folder : str or Path
        Folder of image files; hidden files and folders are ignored.
    pattern : FilenamePattern or str
        A pattern, the name of a built-in one, or a template.

    Returns
    -------
    table : FileTable
        Matching files with coordinates; non-matching ones in ``table.skipped``.

    Raises
    ------
    IngestError
        ``folder`` is not a folder, no file matches, a matched value is not a valid
        coordinate, or two files have the same coordinates (both are named).
    """
    folder = Path(folder)
    pattern = as_pattern(pattern)
    if not folder.is_dir():
        raise IngestError(f"{folder} is not a folder")
    default_plate = folder.resolve().name
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in visible_files(folder):
        name = path.relative_to(folder).as_posix() if pattern.matches_path else path.name
        coords = pattern.coordinates(name, default_plate=default_plate)
        if coords is None:
            skipped.append(str(path))
        else:
            rows.append({"path": str(path), **coords})
    if not rows:
        shown = f"; skipped e.g. {skipped[:3]!r}" if skipped else ""
        raise IngestError(
            f"no file in {folder} matches the pattern {pattern.template or pattern.regex!r} "
            f"({len(skipped)} files skipped{shown})"
        )
    _check_duplicates(rows)
    rows.sort(key=lambda r: (
        natural_key(r["plate"]), _well_key(r["well"]), r["site"], r["t"],
        pattern.channel_order(r["channel"]), r["z"],
    ))
    return FileTable(folder, pattern, pd.DataFrame(rows, columns=list(COLUMNS)), tuple(skipped))


def first_header(table: FileTable) -> ImageHeader:
    """Header of the first file (in table order) whose header can be read and whose pages can be z planes.

    A file of channels or time points (refused when its pixels are read) never sets the
    layout, so it cannot make every other file of the plate look wrong.

    Raises
    ------
    IngestError
        No file's header can be read; the first reason is given.
    """
    first_failure: BadFile | None = None
    for path in table.files["path"]:
        try:
            header = read_header(path)
        except BadFile as bad:
            first_failure = first_failure or bad
            continue
        problem = header.z_problem()
        if problem is None:
            return header
        first_failure = first_failure or BadFile(path, problem)
    raise IngestError(f"none of the {len(table)} files in {table.folder} can be read; first: {first_failure}")


def _read_block(paths: np.ndarray, spec: PlaneSpec, shape: tuple[int, ...]) -> np.ndarray:
    """The chunk of one file (``paths`` holds its path, or '' where no file exists)."""
    path = str(paths.item())
    return read_checked(path, spec).reshape(shape) if path else np.zeros(shape, spec.dtype)


def lazy_images(table: FileTable) -> xr.DataArray:
    """All files of ``table`` as one lazy array; nothing but one header is read.

    Parameters
    ----------
    table : FileTable
        From :func:`scan`.

    Returns
    -------
    images : (plate, well, site, t, c, z, y, x) xarray.DataArray
        Dask-backed, one chunk (one read) per file; planes without a file are zeros.
        Shape and dtype come from the header of the first readable file; computing a
        chunk whose file does not match raises :class:`BadFile`.
    """
    header = first_header(table)
    spec = table.plane_spec(header)
    coords = table.coordinates(header)
    names = ("plates", "wells", "sites", "t_min", "channels", "z_um")
    index = [{v: i for i, v in enumerate(coords[n])} for n in names]
    grid = [len(coords[n]) for n in names]
    grid[-1] //= spec.n_planes  # a file of N pages fills N z planes
    paths = np.full(grid, "", dtype=object)
    for row in table.files.itertuples(index=False):
        paths[tuple(ix[getattr(row, k)] for ix, k in zip(index, _PLANE_KEYS))] = row.path
    block_shape = (1, 1, 1, 1, 1, spec.n_planes, *spec.shape_yx)
    chunks = (*((1,) * n for n in grid[:5]), (spec.n_planes,) * grid[5], *((n,) for n in spec.shape_yx))
    images = da.map_blocks(
        _read_block, da.from_array(paths, chunks=1), spec, block_shape, new_axis=[6, 7],
        chunks=chunks, dtype=spec.dtype, meta=np.empty((0,) * 8, dtype=spec.dtype),
        name=f"ingest-read-{tokenize(paths, spec)}",
    )
    dims = dict(zip(("plate", "well", "site", "t", "c", "z"), names))
    return xr.DataArray(
        images, dims=DIMS_IMAGES, name="images",
        coords={d: np.asarray(coords[n], dtype=object if d in ("plate", "well", "c") else None)
                for d, n in dims.items()},
    )
