"""Reading OME-Zarr HCS plates (0.4 or 0.5) into checked descriptions: the import side of ``ome``.

Everything a plate says is read and checked here, before any store is created:
plate -> wells -> images (sites) -> level-0 arrays and labels, then one
:class:`~cellflow.screen.layout.ScreenLayout` per plate and one merged layout.
Only :func:`read_plane` touches pixels; it runs in the import's worker tasks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellflow.errors import IngestError
from cellflow.screen.layout import MAX_TILE, ScreenLayout
from cellflow.screen.schema import LABEL_PREFIXES, VARIABLE_NAME

__all__ = [
    "LABEL_PREFIXES", "TCZYX", "WELL_PARTS", "OMEArray", "OMEImage", "OMEPlate",
    "find_plates", "is_ome_plate", "label_dtypes", "merge_layouts", "read_plane", "read_plate",
]

#: Axes of an OME image in cellflow's order.
TCZYX = ("t", "c", "z", "y", "x")
#: Prefixes of the variables that hold labels.
#: A cellflow well name split into OME row and column names: 'B07' -> ('B', '07').
WELL_PARTS = re.compile(r"^([A-Z]{1,2})([0-9]{2})$")
_MINUTES = {"millisecond": 1 / 60000, "second": 1 / 60, "minute": 1.0, "hour": 60.0, "day": 1440.0}
_MICROMETRES = {"nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "meter": 1e6}


def is_ome_plate(path: Path) -> bool:
    """Whether ``path`` is a zarr group (v3 or v2) with OME ``plate`` metadata."""
    for meta in (path / "zarr.json", path / ".zattrs"):
        try:
            attrs = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        attrs = attrs.get("attributes", attrs)
        return "plate" in attrs.get("ome", attrs)
    return False


@dataclass(frozen=True)
class OMEArray:
    """A level-0 OME array: where it is, its axes (a subset of tczyx), shape, dtype and chunks."""

    path: Path
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1


@dataclass(frozen=True)
class OMEImage:
    """One field of view of an OME plate and its labels, keyed by cellflow variable name."""

    path: Path
    well: str
    site: int
    image: OMEArray
    labels: tuple[tuple[str, OMEArray], ...]
    acquired_t: tuple[float, ...] | None


@dataclass(frozen=True)
class OMEPlate:
    """One plate: its layout (one plate name) and its images."""

    layout: ScreenLayout
    images: tuple[OMEImage, ...]


def _attrs(path: Path) -> dict[str, Any]:
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except (FileNotFoundError, ValueError) as error:
        raise IngestError(f"{path} is not a zarr group ({error})") from error


def _ome(path: Path) -> dict[str, Any]:
    """OME attributes of a group: under ``ome`` in 0.5 (zarr v3), top level in 0.4."""
    attrs = _attrs(path)
    return dict(attrs.get("ome", attrs))


def find_plates(path: Path) -> list[Path]:
    """``path`` itself when it is a plate, else the plates directly inside it (sorted)."""
    if not path.exists():
        raise FileNotFoundError(f"no OME-Zarr plate at {path}")
    if is_ome_plate(path):
        return [path]
    plates = sorted(p for p in path.iterdir() if p.is_dir() and is_ome_plate(p)) if path.is_dir() else []
    if not plates:
        raise IngestError(f"{path} is neither an OME-Zarr HCS plate nor a folder of them (no 'plate' metadata)")
    return plates


def read_plate(path: Path) -> OMEPlate:
    """Read and check a plate's metadata (no pixels), naming the plate in every error."""
    try:
        return _read_plate(path)
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise IngestError(f"plate {path}: malformed OME metadata ({type(error).__name__}: {error})") from error


def _read_plate(path: Path) -> OMEPlate:
    meta = _ome(path)["plate"]
    name = str(meta.get("name") or path.name.removesuffix(".zarr").removesuffix(".ome"))
    rows = [r["name"] for r in meta["rows"]]
    columns = [c["name"] for c in meta["columns"]]
    images: list[OMEImage] = []
    for well_meta in meta["wells"]:
        well = _well_name(path, rows[well_meta["rowIndex"]], columns[well_meta["columnIndex"]])
        well_path = path / well_meta["path"]
        for n, image_meta in enumerate(_ome(well_path)["well"]["images"]):
            site = int(image_meta["path"]) if str(image_meta["path"]).isdigit() else n
            images.append(_read_image(well_path / image_meta["path"], well, site))
    if not images:
        raise IngestError(f"plate {path} has no images")
    keys = [(i.well, i.site) for i in images]
    if len(set(keys)) != len(keys):
        raise IngestError(f"plate {path}: two images map to the same (well, site) in {keys!r}")
    hint = _attrs(path).get("cellflow", {}).get("layout")
    return OMEPlate(_plate_layout(path, name, images, hint), tuple(images))


def _well_name(plate: Path, row: str, column: str) -> str:
    well = f"{row}{int(column):02d}" if column.isdigit() else f"{row}{column}"
    if not WELL_PARTS.match(well):
        raise IngestError(f"plate {plate}: well {row}/{column} does not give a well name like 'B07'")
    return well


def _read_image(path: Path, well: str, site: int) -> OMEImage:
    image = _level0(path)
    labels = []
    if (path / "labels").is_dir():
        for label in _ome(path / "labels").get("labels", []):
            array = _level0(path / "labels" / label)
            expected = (image.size("t"), 1, 1, image.size("y"), image.size("x"))
            if tuple(array.size(a) for a in TCZYX) != expected:
                raise IngestError(f"{array.path}: labels must be (t, 1, 1, y, x) = {expected}, got {array.shape}")
            labels.append((_label_variable(label), array))
    acquired = _attrs(path).get("cellflow", {}).get("acquired_t")
    return OMEImage(path, well, site, image, tuple(labels), None if acquired is None else tuple(acquired))


def _multiscale0(path: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    attrs = _ome(path)
    if not attrs.get("multiscales"):
        raise IngestError(f"{path} has no 'multiscales' metadata")
    multiscale = attrs["multiscales"][0]
    axes = tuple(a if isinstance(a, str) else a["name"] for a in multiscale.get("axes", TCZYX))
    if not set(axes) <= set(TCZYX) or not {"y", "x"} <= set(axes) or len(set(axes)) != len(axes):
        raise IngestError(f"{path}: cellflow reads axes y, x and any of t, c, z; got {axes!r}")
    return multiscale, axes


def _level0(path: Path) -> OMEArray:
    multiscale, axes = _multiscale0(path)
    array_path = path / multiscale["datasets"][0]["path"]
    array = zarr.open_array(array_path, mode="r")
    return OMEArray(array_path, axes, tuple(array.shape), np.dtype(array.dtype), tuple(array.chunks))


def _label_variable(name: str) -> str:
    if name.startswith(LABEL_PREFIXES) and VARIABLE_NAME.match(name):
        return name
    return "labels_" + (re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "0")


def _plate_layout(path: Path, name: str, images: list[OMEImage], hint: dict[str, Any] | None) -> ScreenLayout:
    first = images[0].image
    odd = [str(i.image.path) for i in images if (i.image.shape, i.image.dtype) != (first.shape, first.dtype)]
    if odd:
        raise IngestError(f"plate {path}: images {odd} differ in shape or dtype from {first.path}")
    t_min, z_um, pixel_size_um = _geometry(images[0].path, first)
    derived = dict(
        plates=(name,), wells=tuple(dict.fromkeys(i.well for i in images)),
        sites=tuple(sorted({i.site for i in images})), channels=_channel_names(images[0].path, first),
        shape_yx=(first.size("y"), first.size("x")), t_min=t_min, z_um=z_um, dtype=str(first.dtype),
        pixel_size_um=pixel_size_um,
        tile_yx=(min(first.chunks[first.axes.index("y")], MAX_TILE),
                 min(first.chunks[first.axes.index("x")], MAX_TILE)),
    )
    try:
        layout = ScreenLayout(**derived)  # type: ignore[arg-type]
        if hint is not None:  # written by export_ome_zarr: exact coordinates, all wells and sites
            layout = replace(ScreenLayout.from_dict(hint), plates=(name,))
    except ValueError as error:
        raise IngestError(f"plate {path}: {error}") from error
    if hint is not None:
        _check_hint(path, layout, derived, images)
    return layout


def _check_hint(path: Path, layout: ScreenLayout, derived: dict[str, Any], images: list[OMEImage]) -> None:
    same = (layout.channels == derived["channels"] and layout.shape_yx == derived["shape_yx"]
            and layout.dtype == derived["dtype"] and len(layout.t_min) == len(derived["t_min"])
            and len(layout.z_um) == len(derived["z_um"]))
    if not same or any(i.well not in layout.wells or i.site not in layout.sites for i in images):
        raise IngestError(f"plate {path}: its 'cellflow' layout attribute disagrees with its OME metadata")


def _geometry(path: Path, image: OMEArray) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """t (minutes), z (micrometres) and pixel size from the level-0 coordinate transformations."""
    multiscale, _ = _multiscale0(path)
    transforms = multiscale["datasets"][0].get("coordinateTransformations", [])
    n = len(image.axes)
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), [1.0] * n)
    shift = next((t["translation"] for t in transforms if t.get("type") == "translation"), [0.0] * n)
    units = {a["name"]: a.get("unit") for a in multiscale.get("axes", []) if isinstance(a, dict)}

    def factor(axis: str, table: dict[str, float], default: str) -> float:
        unit = units.get(axis) or default
        if unit not in table:
            raise IngestError(f"{path}: axis {axis!r} has unit {unit!r}; cellflow reads {sorted(table)}")
        return table[unit]

    def values(axis: str, table: dict[str, float], default: str) -> tuple[float, ...]:
        if axis not in image.axes:
            return (0.0,)
        i, f = image.axes.index(axis), factor(axis, table, default)
        return tuple(float(shift[i] + scale[i] * k) * f for k in range(image.shape[i]))

    y, x = (float(scale[image.axes.index(a)]) * factor(a, _MICROMETRES, "micrometer") for a in "yx")
    if not np.isclose(y, x, rtol=1e-6):
        raise IngestError(f"{path}: pixels are {y} x {x} um; cellflow needs square pixels")
    return values("t", _MINUTES, "minute"), values("z", _MICROMETRES, "micrometer"), x


def _channel_names(path: Path, image: OMEArray) -> tuple[str, ...]:
    channels = _ome(path).get("omero", {}).get("channels", [])
    names = tuple(str(c.get("label", "")) for c in channels)
    if len(names) != image.size("c") or any(not n.strip() for n in names) or len(set(names)) != len(names):
        return tuple(f"c{i}" for i in range(image.size("c")))
    return names


def merge_layouts(plates: list[OMEPlate]) -> ScreenLayout:
    """One layout for all plates: they must agree on channels, t, z, field size, dtype and pixel size."""
    first = plates[0].layout
    names = [p.layout.plates[0] for p in plates]
    if len(set(names)) != len(names):
        raise IngestError(f"the plates to import repeat names: {names!r}")
    for plate in plates[1:]:
        for field in ("channels", "shape_yx", "dtype", "t_min", "z_um", "pixel_size_um"):
            a, b = getattr(first, field), getattr(plate.layout, field)
            numeric = field in ("t_min", "z_um", "pixel_size_um")
            if np.shape(a) != np.shape(b) or (not np.allclose(a, b) if numeric else a != b):
                raise IngestError(f"plates {names[0]!r} and {plate.layout.plates[0]!r} differ in {field}: "
                                  f"{a!r} vs {b!r}; import them into separate stores")
    wells = tuple(dict.fromkeys(w for p in plates for w in p.layout.wells))
    sites = tuple(dict.fromkeys(s for p in plates for s in p.layout.sites))
    return replace(first, plates=tuple(names), wells=wells, sites=sites)


def label_dtypes(plates: list[OMEPlate]) -> dict[str, np.dtype[Any]]:
    """Unsigned dtype of each label variable (signed OME labels map to the unsigned type of their size)."""
    dtypes: dict[str, np.dtype[Any]] = {}
    for plate in plates:
        for image in plate.images:
            for name, array in image.labels:
                if array.dtype.kind not in "iu":
                    raise IngestError(f"{array.path}: labels must be integers, got {array.dtype}")
                unsigned = np.dtype(f"u{array.dtype.itemsize}")
                dtypes[name] = np.promote_types(dtypes.get(name, unsigned), unsigned)
    return dtypes


def read_plane(array: OMEArray, t_index: int) -> np.ndarray:
    """One time point of an OME array as (c, z, y, x)."""
    data = zarr.open_array(array.path, mode="r")
    block = np.asarray(data[tuple(t_index if a == "t" else slice(None) for a in array.axes)])
    axes = [a for a in array.axes if a != "t"]
    for axis in ("c", "z"):
        if axis not in axes:
            block, axes = block[np.newaxis], [axis, *axes]
    return block.transpose([axes.index(a) for a in ("c", "z", "y", "x")])
