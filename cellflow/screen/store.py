"""A screen store: one xarray Dataset in one zarr v3 store.

Layout on disk (zarr v3, no consolidated metadata, which v3 does not specify)::

    screen.zarr/
      zarr.json                   root attrs: pixel_size_um, cellflow{schema_version, screen_id, layout}
      images/                     (plate, well, site, t, c, z, y, x), one plane x tile per chunk
      acquired/                   (plate, well, site, t) bool
      plate/ well/ site/ t/ c/ z/ coordinates
      labels_nuclei/ truth_nuclei/ ...   derived variables, same chunking in y/x
      _cellflow/ledger/<var>/     chunk ledger: uint64 content digest per chunk, 0 = not complete

Concurrency contract. Data chunks are written by many workers at once, each to
its own chunks (``images`` is chunked one plane x tile, so fields never share a
chunk). The small bookkeeping arrays (``acquired`` and the ledgers) are written
by one process only, the client, after the data writes have returned: that
ordering is what makes a ledger entry mean "this chunk is durably written".
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from cellflow.errors import RegionError, SchemaError, StoreExistsError
from cellflow.screen.layout import DIMS_FIELD, DIMS_IMAGES, ScreenLayout
from cellflow.screen.schema import SCHEMA_VERSION, validate_dataset, variable_problems

__all__ = ["ChunkLedger", "ChunkRecord", "FieldKey", "Screen", "chunk_digest", "open_screen"]

_LEDGER_CHUNK_ENTRIES = 65_536  # uint64 digests per ledger chunk at most (512 KiB)
_LEDGER_GROUP = "_cellflow/ledger"
_LABEL_DIMS = ("plate", "well", "c")  # string-labelled dims
_NUMERIC_DIMS = ("site", "t", "z")  # number-labelled dims


class FieldKey(NamedTuple):
    """One acquired field: plate, well, site and time (minutes)."""

    plate: str
    well: str
    site: int
    t: float


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk that a write covered: its index in the chunk grid and content digest."""

    variable: str
    index: tuple[int, ...]
    digest: int


def chunk_digest(block: np.ndarray) -> int:
    """Content digest of one chunk: blake2b-64 over dtype, shape and bytes; never 0.

    Examples
    --------
    >>> chunk_digest(np.zeros((2, 2), np.uint8)) == chunk_digest(np.zeros((2, 2), np.uint8))
    True
    >>> chunk_digest(np.zeros((2, 2), np.uint8)) == chunk_digest(np.zeros((4,), np.uint8))
    False
    """
    block = np.ascontiguousarray(block)
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{block.dtype.str}{block.shape}".encode())
    h.update(block.data.cast("B"))
    return int.from_bytes(h.digest(), "little") or 1


def _is_cellflow_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return "cellflow" in attrs


#: Handles unpickled in this process, by (path, screen id, generation): see :meth:`Screen.__reduce__`.
_HANDLES: OrderedDict[tuple[str, str, int], Screen] = OrderedDict()
_HANDLES_MAX = 16
_HANDLES_LOCK = threading.Lock()


def _shared_handle(path: str, screen_id: str | None, generation: int = 0) -> Screen:
    """This process's handle on the store at ``path`` created as ``screen_id`` (made on first use).

    ``generation`` counts the store's :meth:`Screen.extend` calls: a handle cached before the
    store grew would hold the old shapes and coordinates, so a grown store gets new handles.
    """
    if screen_id is None:  # the sender never learnt the id: nothing safe to share
        return Screen(path)
    key = (path, screen_id, generation)
    with _HANDLES_LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            handle = _HANDLES[key] = Screen(path)
            handle._screen_id = screen_id
            handle._generation = generation
            while len(_HANDLES) > _HANDLES_MAX:
                _HANDLES.popitem(last=False)
        else:
            _HANDLES.move_to_end(key)
        return handle


class Screen:
    """Handle on a screen store. Cheap to pickle: it carries only the path and the store's id.

    Create one with :meth:`create` or :meth:`open`; read lazily with
    :meth:`dataset`; write chunk-aligned regions with :meth:`write`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._coords: dict[str, np.ndarray] | None = None
        self._arrays: dict[tuple[str, str], zarr.Array] = {}
        self._screen_id: str | None = None
        self._generation = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # Every dask task carries the screen; unpickled naively, each task on a worker would
        # get a fresh handle and re-open the group, its coordinates and every array it touches
        # (~5 ms each; measured: 60-70 ms per task instead of ~16 ms in one process). So a
        # worker process keeps one handle per store, keyed by path *and* the random id fixed
        # when the store was created: a store re-created at the same path is a new key.
        # The id is read once per sending handle (only from a store that exists).
        screen_id = self._screen_id
        if screen_id is None and (self.path / "zarr.json").is_file():
            screen_id = self.screen_id  # cached on this handle from now on (with the generation)
        return (_shared_handle, (str(self.path), screen_id, self._generation))

    def __repr__(self) -> str:
        return f"Screen({str(self.path)!r})"

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | Path, layout: ScreenLayout, *, overwrite: bool = False) -> Screen:
        """Create an empty store (metadata only; no pixel chunk is written).

        Parameters
        ----------
        path : str or Path
            Folder of the new zarr v3 store.
        layout : ScreenLayout
            Coordinates and geometry.
        overwrite : bool
            Replace an existing *cellflow* store at ``path``. A folder that is not a
            cellflow store is never removed.

        Raises
        ------
        StoreExistsError
            ``path`` exists and ``overwrite`` is false, or it is not a cellflow store.
        """
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise StoreExistsError(
                    f"{path} already exists; pass overwrite=True to replace it, or choose a new path"
                )
            if not _is_cellflow_store(path):
                raise StoreExistsError(
                    f"{path} exists and is not a cellflow screen store; refusing to overwrite it"
                )
            shutil.rmtree(path)
        chunks = (1, 1, 1, 1, 1, 1, *layout.chunk_yx)
        images = da.zeros(layout.images_shape, dtype=layout.dtype, chunks=chunks)
        acquired = np.zeros(layout.images_shape[:4], dtype=bool)
        ds = xr.Dataset(
            {"images": (DIMS_IMAGES, images), "acquired": (DIMS_FIELD, acquired)},
            coords=layout.coords(),
        )
        ds.attrs = {
            "pixel_size_um": layout.pixel_size_um,
            "cellflow": {
                "schema_version": SCHEMA_VERSION,
                "screen_id": uuid.uuid4().hex,
                "layout": layout.to_dict(),
            },
        }
        encoding = {"images": {"chunks": chunks, "fill_value": 0}}
        ds.to_zarr(path, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path, *, validate: bool = True) -> Screen:
        """Open an existing store, checking it against the schema.

        Raises
        ------
        FileNotFoundError
            Nothing at ``path``.
        SchemaError
            ``path`` is not a cellflow store or breaks the schema.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no screen store at {path}")
        if not _is_cellflow_store(path):
            raise SchemaError(f"{path} is not a cellflow screen store (no 'cellflow' attributes in zarr.json)")
        screen = cls(path)
        if validate:
            validate_dataset(screen.dataset(), source=str(path))
        return screen

    # ------------------------------------------------------------------ reading
    def dataset(self) -> xr.Dataset:
        """The whole screen as a lazy, dask-backed Dataset (one dask chunk per zarr chunk)."""
        return xr.open_zarr(self.path, consolidated=False, zarr_format=3, chunks={})

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes of the store."""
        return dict(zarr.open_group(self.path, mode="r").attrs)

    @property
    def screen_id(self) -> str:
        """Random identifier fixed when the store was created (read once per handle)."""
        if self._screen_id is None:
            meta = self.attrs["cellflow"]
            self._screen_id = str(meta["screen_id"])
            self._generation = int(meta.get("generation", 0))
        return self._screen_id

    @property
    def layout(self) -> ScreenLayout:
        """The layout the store was created with."""
        return ScreenLayout.from_dict(self.attrs["cellflow"]["layout"])

    def variable_attrs(self, name: str) -> dict[str, Any]:
        """Attributes of the data variable ``name``, as stored now (not from the handle cache)."""
        return dict(zarr.open_group(self.path, mode="r")[name].attrs)

    def update_variable_attrs(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` (JSON-able) into the attributes of the data variable ``name``."""
        array = zarr.open_group(self.path, mode="r+")[name]
        assert isinstance(array, zarr.Array), f"{name} is not an array"
        array.update_attributes(dict(attrs))

    @property
    def variables(self) -> tuple[str, ...]:
        """Names of the data variables (not coordinates, not bookkeeping)."""
        arrays = list(zarr.open_group(self.path, mode="r").arrays())  # one listing (each reads every array's metadata)
        coords = set(DIMS_IMAGES) | self._extra_coord_names(arrays)
        return tuple(sorted(n for n, _ in arrays if n not in coords))

    @staticmethod
    def _extra_coord_names(arrays: Sequence[tuple[str, zarr.Array]]) -> set[str]:
        return {n for n, a in arrays if _dims(a) == (n,)}

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinate values by dimension (read once per handle)."""
        coords = self._coords  # one read: another thread may reset the attribute (_coord_values)
        if coords is None:
            arrays = list(zarr.open_group(self.path, mode="r").arrays())
            extra = self._extra_coord_names(arrays)
            coords = {n: _plain(np.asarray(a[...])) for n, a in arrays if n in extra}
            self._coords = coords
        return coords

    def _array(self, name: str, mode: str = "r") -> zarr.Array:
        # Opening a group re-reads its metadata (~5 ms); a handle keeps the arrays it
        # opened. Shapes, chunks and dtypes never change after creation, so the cache stays
        # valid for the life of the store (Screen.create(overwrite=True) gives a new handle);
        # attributes may change: variable_attrs reads them fresh.
        access: Literal["r", "r+"] = "r" if mode == "r" else "r+"
        key = (name, access)
        if key not in self._arrays:
            group = zarr.open_group(self.path, mode=access)
            if name not in group or not isinstance(group[name], zarr.Array):
                raise RegionError(f"{self.path} has no variable {name!r}; it has {list(self.variables)!r}")
            self._arrays[key] = group[name]  # type: ignore[assignment]
        return self._arrays[key]

    def read(self, name: str, **where: Any) -> np.ndarray:
        """Read one region eagerly, selected as in :meth:`write`."""
        array = self._array(name)
        selection, _ = self._selection(name, array, where)
        return np.asarray(array[selection])

    def fields(self, *, acquired_only: bool = True) -> list[FieldKey]:
        """Fields in storage order; only the acquired ones unless ``acquired_only`` is false."""
        c = self.coords()
        mask = np.asarray(self._array("acquired")[...]) if acquired_only else None
        keys = []
        for idx in itertools.product(*(range(len(c[d])) for d in DIMS_FIELD)):
            if mask is None or mask[idx]:
                p, w, s, t = (c[d][i] for d, i in zip(DIMS_FIELD, idx))
                keys.append(FieldKey(str(p), str(w), int(s), float(t)))
        return keys

    # ------------------------------------------------------------------ variables
    def add_variable(
        self,
        name: str,
        *,
        dims: Sequence[str],
        dtype: str | np.dtype[Any],
        fill_value: Any = 0,
        chunks: Mapping[str, int] | None = None,
        coords: Mapping[str, Sequence[Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> None:
        """Add an empty derived variable (metadata only), chunked like ``images``.

        Parameters
        ----------
        name : str
            Variable name, e.g. ``'labels_nuclei'``.
        dims : sequence of str
            Dimensions; those of ``images`` take their sizes from it, any other
            must be given in ``coords``.
        dtype : str or numpy dtype
            Element type.
        fill_value : scalar
            Value of never-written chunks.
        chunks : mapping, optional
            Chunk size per dim; defaults: 1 for plate/well/site/t/c/z, the images
            tile for y/x, the full length for extra dims.
        coords : mapping, optional
            Values of extra dims (e.g. ``{'class': ['background', 'interior']}``).
        attrs : mapping, optional
            Variable attributes (JSON-able).
        exist_ok : bool
            Return quietly when an identical variable exists.

        Raises
        ------
        SchemaError
            The name, dims or dtype break the schema, or a differing variable exists.
        """
        dims = tuple(dims)
        dtype = np.dtype(dtype)
        problems = variable_problems(name, dims, dtype)
        if problems:
            raise SchemaError("; ".join(problems))
        coords = dict(coords or {})
        group = zarr.open_group(self.path, mode="r+")
        if name in group:
            existing = group[name]
            same = isinstance(existing, zarr.Array) and _dims(existing) == dims and existing.dtype == dtype
            if exist_ok and same:
                return
            raise SchemaError(f"variable {name!r} already exists in {self.path}")
        images = self._array("images")
        size = dict(zip(DIMS_IMAGES, images.shape))
        tile = dict(zip(DIMS_IMAGES, images.chunks))
        shape, chunk_shape = [], []
        for dim in dims:
            if dim in size:
                shape.append(size[dim])
                chunk_shape.append(tile[dim])
            elif dim in coords:
                shape.append(len(coords[dim]))
                chunk_shape.append(len(coords[dim]))
            else:
                raise SchemaError(f"variable {name!r}: dim {dim!r} is not a screen dim; give its values in coords")
            if chunks and dim in chunks:
                chunk_shape[-1] = int(chunks[dim])
        for dim, values in coords.items():
            if dim not in group:
                values_arr = np.asarray(values, dtype=object if isinstance(values[0], str) else None)
                dt = "str" if values_arr.dtype == object else values_arr.dtype
                coord = group.create_array(dim, shape=(len(values_arr),), dtype=dt, dimension_names=(dim,))
                coord[...] = values_arr
        group.create_array(
            name, shape=tuple(shape), chunks=tuple(chunk_shape), dtype=dtype,
            fill_value=fill_value, dimension_names=dims, attributes=dict(attrs or {}),
        )
        self._coords = None

    def extend(self, **new: Sequence[Any]) -> Screen:
        """Append coordinate values along ``plates``, ``wells``, ``sites`` or ``t_min``; a fresh handle.

        Every variable with that dim (images, acquired, labels, ...) and its chunk ledger
        grows; the new fields read as never written (fill values) and are not acquired.
        Values already present are ignored. Existing fields keep their positions, so
        their data, ledgers and recorded work stay valid: this is how a store takes the
        plates and wells an acquisition adds overnight. New time points must come after
        the existing ones (time-lapse stages read frames in order). Client-side, one
        writer, with no run of the store in progress.

        Raises
        ------
        ValueError
            A key other than the four, or time points before the last one stored.
        """
        dims = {"plates": "plate", "wells": "well", "sites": "site", "t_min": "t"}
        unknown = sorted(set(new) - set(dims))
        if unknown:
            raise ValueError(f"Screen.extend: {unknown} cannot grow; only {sorted(dims)}")
        layout = self.layout
        added: dict[str, list[Any]] = {}
        for key, values in new.items():
            have = list(getattr(layout, key))
            fresh = [v for v in dict.fromkeys(values) if v not in have]
            if key == "t_min" and fresh and have and min(fresh) <= max(have):
                raise ValueError(f"Screen.extend: new time points {fresh} must come after the last stored one "
                                 f"({max(have):g} min); a time-lapse is read in order")
            if fresh:
                added[dims[key]] = fresh
        if not added:
            return self
        changes: dict[str, Any] = {key: (*getattr(layout, key), *added[dim])
                                   for key, dim in dims.items() if dim in added}
        grown = replace(layout, **changes)
        size = dict(zip(DIMS_FIELD, (len(grown.plates), len(grown.wells), len(grown.sites), len(grown.t_min))))
        group = zarr.open_group(self.path, mode="r+")
        coords = grown.coords()
        for name, array in list(group.arrays()):
            names = _dims(array)
            if names in {(d,) for d in added}:  # a coordinate: its new labels at the end
                old = array.shape[0]
                array.resize((size[names[0]],))
                array[old:] = coords[names[0]][old:]
            elif any(d in added for d in names):
                array.resize(tuple(size.get(d, n) if d in added else n for d, n in zip(names, array.shape)))
                ledger = f"{_LEDGER_GROUP}/{name}"
                if ledger in group:
                    grid = tuple(-(-n // c) for n, c in zip(array.shape, array.chunks))
                    group[ledger].resize(grid)  # type: ignore[union-attr]
        meta = dict(group.attrs["cellflow"])  # type: ignore[arg-type]
        meta.update(layout=grown.to_dict(), generation=int(meta.get("generation") or 0) + 1)  # type: ignore[arg-type]
        group.attrs["cellflow"] = meta
        return Screen(self.path)

    # ------------------------------------------------------------------ writing
    def _coord_values(self, dim: str) -> np.ndarray | None:
        """Coordinate values of ``dim`` (None if it has none), re-read once if not in this handle's copy."""
        values = self.coords().get(dim)
        if values is None:  # another handle (the client) may have added this dim since we read them
            self._coords = None
            values = self.coords().get(dim)
        return values

    def _position(self, dim: str, label: Any) -> int:
        values = self._coord_values(dim)
        if values is None:
            raise RegionError(f"{self.path} has no coordinate values for dim {dim!r}")
        if dim in _LABEL_DIMS:
            hits = np.flatnonzero(values == str(label))
        elif dim in _NUMERIC_DIMS:
            hits = np.flatnonzero(np.isclose(values.astype(float), float(label), rtol=0, atol=1e-6))
        else:
            hits = np.flatnonzero(values == label)
        if hits.size != 1:
            raise RegionError(f"{dim}={label!r} is not in {self.path}; it has {values.tolist()!r}")
        return int(hits[0])

    def _selection(
        self, name: str, array: zarr.Array, where: Mapping[str, Any]
    ) -> tuple[tuple[int | slice, ...], tuple[str, ...]]:
        dims = _dims(array)
        unknown = sorted(set(where) - set(dims))
        if unknown:
            raise RegionError(f"variable {name!r} has dims {dims}; cannot select on {unknown!r}")
        selection: list[int | slice] = []
        kept: list[str] = []
        for dim, n, chunk in zip(dims, array.shape, array.chunks):
            if dim in where:
                value = where[dim]
                if isinstance(value, slice):
                    start, stop, step = value.indices(n)
                    if step != 1:
                        raise RegionError(f"{dim}: slices must have step 1, got {value!r}")
                    if start % chunk or (stop % chunk and stop != n) or stop <= start:
                        raise RegionError(
                            f"variable {name!r}: {dim}={start}:{stop} is not aligned to its chunks of {chunk}"
                        )
                    selection.append(slice(start, stop))
                    kept.append(dim)
                    continue
                pos = self._position(dim, value) if self._coord_values(dim) is not None else int(value)
                if chunk != 1:
                    raise RegionError(f"variable {name!r}: {dim} is chunked by {chunk}; write whole chunks")
                selection.append(pos)
            elif dim in DIMS_FIELD and n == 1:
                selection.append(0)
            elif dim in DIMS_FIELD:
                raise RegionError(f"variable {name!r}: say which {dim} to write ({dim}=...)")
            else:
                selection.append(slice(0, n))
                kept.append(dim)
        return tuple(selection), tuple(kept)

    def write(self, name: str, data: np.ndarray, **where: Any) -> list[ChunkRecord]:
        """Write a chunk-aligned region of a variable, selected by coordinate labels.

        Every dim named in ``where`` is selected: by label for plate/well/site/t/c/z
        (a scalar drops the dim), by an aligned ``slice`` of positions otherwise.
        Unnamed dims are written whole, except that plate/well/site/t of length 1
        may be left out. ``data`` has the kept dims in storage order.

        Parameters
        ----------
        name : str
            Variable to write.
        data : ndarray
            Values; cast to the variable's dtype when lossless.
        **where
            Selection, e.g. ``plate='P1', well='A01', site=0, t=0.0``.

        Returns
        -------
        records : list of ChunkRecord
            The chunks written and their digests, for the caller's ledger.

        Raises
        ------
        RegionError
            Unknown variable or label, unaligned region, wrong shape or dtype.
        """
        array = self._array(name, mode="r+")
        selection, kept = self._selection(name, array, where)
        expected = tuple(
            (s.stop - s.start) for s in selection if isinstance(s, slice)
        )
        data = np.asarray(data)
        if data.shape != expected:
            raise RegionError(
                f"variable {name!r}: data for dims {kept} must have shape {expected}, got {data.shape}"
            )
        data = cast_lossless(name, data, array.dtype)
        array[selection] = data
        return self._records(name, array, selection, data)

    def _records(
        self, name: str, array: zarr.Array, selection: tuple[int | slice, ...], data: np.ndarray
    ) -> list[ChunkRecord]:
        ranges: list[range] = []
        for sel, chunk in zip(selection, array.chunks):
            if isinstance(sel, int):
                ranges.append(range(sel // chunk, sel // chunk + 1))
            else:
                ranges.append(range(sel.start // chunk, -(-sel.stop // chunk)))
        records = []
        for index in itertools.product(*ranges):
            local: list[slice] = []
            full_shape: list[int] = []  # the chunk as stored, singleton dims included
            for sel, chunk, i in zip(selection, array.chunks, index):
                if isinstance(sel, slice):
                    local.append(slice(i * chunk - sel.start, min((i + 1) * chunk, sel.stop) - sel.start))
                    full_shape.append(local[-1].stop - local[-1].start)
                else:
                    full_shape.append(1)
            block = data[tuple(local)].reshape(full_shape)
            records.append(ChunkRecord(name, tuple(index), chunk_digest(block)))
        return records

    def set_acquired(self, fields: Iterable[Sequence[Any]], value: bool = True) -> None:
        """Mark fields ``(plate, well, site, t)`` as acquired. Client-side, one writer."""
        positions = [[self._position(d, v) for d, v in zip(DIMS_FIELD, f)] for f in fields]
        if not positions:
            return
        array = self._array("acquired", mode="r+")
        array.set_coordinate_selection(tuple(np.array(positions).T), value)

    def ledger(self, name: str) -> ChunkLedger:
        """The completion ledger of variable ``name``."""
        return ChunkLedger(self, name)


def _dims(array: zarr.Array) -> tuple[str, ...]:
    """Dimension names of a zarr v3 array (empty for arrays without them)."""
    return tuple(getattr(array.metadata, "dimension_names", None) or ())


def _plain(values: np.ndarray) -> np.ndarray:
    """Strings as an ``object`` array of ``str`` (zarr returns NumPy's StringDType)."""
    if values.dtype.kind in "TUO":
        return np.array([str(v) for v in values.tolist()], dtype=object)
    return values


def cast_lossless(name: str, data: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``data`` as ``dtype`` when no value changes, else :class:`RegionError` naming ``name``.

    Safe casts always pass; integer narrowing passes when every value fits;
    float to float is allowed (the variable's precision is the contract).
    """
    if data.dtype == dtype:
        return data
    if np.can_cast(data.dtype, dtype, "safe"):
        return data.astype(dtype)
    if data.dtype.kind in "iub" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
            return data.astype(dtype)
        raise RegionError(
            f"variable {name!r}: values {data.min()}..{data.max()} do not fit its dtype {dtype}"
        )
    if data.dtype.kind == "f" and dtype.kind == "f":
        return data.astype(dtype)
    raise RegionError(f"variable {name!r} holds {dtype}; cannot store {data.dtype} without loss")


class ChunkLedger:
    """Which chunks of a variable are complete, with the digest of what was written.

    Stored as a uint64 zarr array shaped like the variable's chunk grid under
    ``_cellflow/ledger/<name>``; 0 means "not complete". Written by one process
    (the client) only, after the data chunk writes have returned.
    """

    def __init__(self, screen: Screen, name: str) -> None:
        self.screen = screen
        self.name = name
        self._key = f"{_LEDGER_GROUP}/{name}"
        self._writable: zarr.Array | None = None  # opened by the first mark, reused by the next ones

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of chunks along each dim of the variable."""
        array = self.screen._array(self.name)
        return tuple(-(-n // c) for n, c in zip(array.shape, array.chunks))

    def _ledger(self, *, create: bool, writable: bool = False) -> zarr.Array | None:
        group = zarr.open_group(self.screen.path, mode="r+" if create or writable else "r")
        if self._key in group:
            return group[self._key]  # type: ignore[return-value]
        if not create:
            return None
        grid = self.grid_shape
        # One plate per chunk and as many of the next dim (wells) as fit in _LEDGER_CHUNK_ENTRIES:
        # each mark is a read-modify-write per chunk touched, so a group of units finishing in
        # different wells costs one write, not one per well; 512 KiB bounds a write's size.
        per_row = math.prod(grid[2:])
        rows = max(1, min(grid[1], _LEDGER_CHUNK_ENTRIES // max(per_row, 1))) if len(grid) > 1 else 1
        chunks = tuple(1 if i == 0 else rows if i == 1 else n for i, n in enumerate(grid))
        return group.create_array(self._key, shape=grid, chunks=chunks, dtype="uint64", fill_value=0)

    def digests(self) -> np.ndarray:
        """uint64 array of the chunk grid's shape; 0 where not complete."""
        array = self._ledger(create=False)
        if array is None:
            return np.zeros(self.grid_shape, dtype=np.uint64)
        return np.asarray(array[...])

    def completed(self) -> np.ndarray:
        """Boolean chunk grid: True where the chunk is recorded complete."""
        return self.digests() != 0

    def mark(self, records: Iterable[ChunkRecord]) -> int:
        """Record chunks as complete; returns how many were recorded."""
        records = [r for r in records if r.variable == self.name]
        if not records:
            return 0
        if self._writable is None:
            self._writable = self._ledger(create=True)
        array = self._writable
        assert array is not None  # created above; narrows the type for mypy
        latest = {r.index: r.digest for r in records}  # a later record of a chunk wins
        where = tuple(np.array(list(latest)).T)
        array.set_coordinate_selection(where, np.array(list(latest.values()), dtype=np.uint64))
        return len(latest)

    def clear(self, indices: Iterable[tuple[int, ...]] | None = None) -> None:
        """Forget the given chunks (all when ``indices`` is None)."""
        array = self._ledger(create=False, writable=True)
        if array is None:
            return
        if indices is None:
            array[...] = 0
            return
        where = [tuple(i) for i in indices]
        if where:
            array.set_coordinate_selection(tuple(np.array(where).T), np.uint64(0))


def open_screen(path: str | Path, *, validate: bool = True) -> xr.Dataset:
    """Open a screen store as a lazy Dataset (shortcut for ``Screen.open(path).dataset()``)."""
    return Screen.open(path, validate=validate).dataset()
