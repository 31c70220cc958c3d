"""The shape of a screen: plates, wells, sites, time, channels, z and the field size.

A :class:`ScreenLayout` is the validated, immutable description from which a store
is created. It is the single place where coordinate values are checked, so code
inside cellflow can trust any layout it is handed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellflow._config import check_keys

__all__ = [
    "DIMS_FIELD",
    "DIMS_IMAGES",
    "DIMS_LABELS",
    "FIELD_DIMS",
    "MAX_TILE",
    "WELL_PATTERN",
    "ScreenLayout",
    "well_position",
]

#: Dimensions of the ``images`` variable, in storage order.
DIMS_IMAGES: tuple[str, ...] = ("plate", "well", "site", "t", "c", "z", "y", "x")
#: Dimensions that identify one acquired field (one ``acquired`` entry).
DIMS_FIELD: tuple[str, ...] = ("plate", "well", "site", "t")
FIELD_DIMS = DIMS_FIELD
#: Dimensions of every ``labels_*`` and ``truth_*`` variable.
DIMS_LABELS: tuple[str, ...] = ("plate", "well", "site", "t", "y", "x")
#: Largest chunk edge in y and x (pixels).
MAX_TILE = 1024
#: Well names: one or two row letters and a two-digit column (A01 ... P24, AA01 ... AF48).
WELL_PATTERN = re.compile(r"^[A-Z]{1,2}[0-9]{2}$")

_DTYPES = ("uint8", "uint16", "float32")


def _unique(name: str, values: Sequence[Any]) -> None:
    if len(values) == 0:
        raise ValueError(f"ScreenLayout.{name} must not be empty")
    seen: set[Any] = set()
    dupes = [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    if dupes:
        raise ValueError(f"ScreenLayout.{name} has duplicate values {dupes!r}; each must be unique")


def _pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"ScreenLayout.{name} must be two positive integers (y, x), got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ScreenLayout:
    """Coordinates and geometry of a screen.

    Parameters
    ----------
    plates : tuple of str
        Plate names (barcodes).
    wells : tuple of str
        Well names such as ``'A01'``; one or two row letters and two column digits.
    sites : tuple of int
        Site (field) numbers within a well.
    channels : tuple of str
        Channel names, for example ``('DNA', 'Cyto', 'BF')``.
    shape_yx : (int, int)
        Field size in pixels.
    t_min : tuple of float
        Acquisition times in minutes, strictly increasing.
    z_um : tuple of float
        Focal planes in micrometres.
    dtype : {'uint8', 'uint16', 'float32'}
        Pixel type of ``images``.
    pixel_size_um : float
        Pixel edge in micrometres.
    tile_yx : (int, int)
        Chunk size in y and x, at most 1024; clipped to the field size.
    attrs : mapping
        Extra acquisition metadata stored in the store's attributes (JSON-able).

    Examples
    --------
    >>> layout = ScreenLayout(plates=("P1",), wells=("A01",), sites=(0,),
    ...                       channels=("DNA",), shape_yx=(256, 256))
    >>> layout.images_shape
    (1, 1, 1, 1, 1, 1, 256, 256)
    """

    plates: tuple[str, ...]
    wells: tuple[str, ...]
    sites: tuple[int, ...]
    channels: tuple[str, ...]
    shape_yx: tuple[int, int]
    t_min: tuple[float, ...] = (0.0,)
    z_um: tuple[float, ...] = (0.0,)
    dtype: str = "uint16"
    pixel_size_um: float = 1.0
    tile_yx: tuple[int, int] = (MAX_TILE, MAX_TILE)
    attrs: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "plates", tuple(str(p) for p in self.plates))
        set_(self, "wells", tuple(str(w) for w in self.wells))
        set_(self, "sites", tuple(int(s) for s in self.sites))
        set_(self, "channels", tuple(str(c) for c in self.channels))
        set_(self, "t_min", tuple(float(t) for t in self.t_min))
        set_(self, "z_um", tuple(float(z) for z in self.z_um))
        set_(self, "shape_yx", _pair("shape_yx", self.shape_yx))
        set_(self, "tile_yx", _pair("tile_yx", self.tile_yx))
        set_(self, "attrs", dict(self.attrs))
        for name in ("plates", "wells", "sites", "channels", "t_min", "z_um"):
            _unique(name, getattr(self, name))
        for name in ("plates", "channels"):
            blank = [v for v in getattr(self, name) if not v.strip()]
            if blank:
                raise ValueError(f"ScreenLayout.{name} must not contain blank names, got {blank!r}")
        bad = [w for w in self.wells if not WELL_PATTERN.match(w)]
        if bad:
            raise ValueError(
                f"ScreenLayout.wells must look like 'A01' (row letters + 2 digits), got {bad!r}"
            )
        if any(s < 0 for s in self.sites):
            raise ValueError(f"ScreenLayout.sites must be >= 0, got {self.sites!r}")
        if any(b <= a for a, b in zip(self.t_min, self.t_min[1:])):
            raise ValueError(f"ScreenLayout.t_min must be strictly increasing, got {self.t_min!r}")
        if not all(np.isfinite(self.t_min)) or not all(np.isfinite(self.z_um)):
            raise ValueError("ScreenLayout.t_min and z_um must be finite numbers")
        if self.dtype not in _DTYPES:
            raise ValueError(f"ScreenLayout.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        px = float(self.pixel_size_um)
        if not np.isfinite(px) or px <= 0:
            raise ValueError(f"ScreenLayout.pixel_size_um must be > 0, got {self.pixel_size_um!r}")
        set_(self, "pixel_size_um", px)
        if max(self.tile_yx) > MAX_TILE:
            raise ValueError(f"ScreenLayout.tile_yx must be <= {MAX_TILE}, got {self.tile_yx!r}")

    @property
    def images_shape(self) -> tuple[int, ...]:
        """Shape of the ``images`` variable in :data:`DIMS_IMAGES` order."""
        return (
            len(self.plates), len(self.wells), len(self.sites), len(self.t_min),
            len(self.channels), len(self.z_um), *self.shape_yx,
        )

    @property
    def chunk_yx(self) -> tuple[int, int]:
        """Chunk edge in y and x: ``tile_yx`` clipped to the field."""
        return (min(self.tile_yx[0], self.shape_yx[0]), min(self.tile_yx[1], self.shape_yx[1]))

    def coords(self) -> dict[str, np.ndarray]:
        """Coordinate arrays keyed by dimension name (strings as ``object`` arrays)."""
        return {
            "plate": np.array(self.plates, dtype=object),
            "well": np.array(self.wells, dtype=object),
            "site": np.array(self.sites, dtype=np.int64),
            "t": np.array(self.t_min, dtype=np.float64),
            "c": np.array(self.channels, dtype=object),
            "z": np.array(self.z_um, dtype=np.float64),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        return {
            "plates": list(self.plates), "wells": list(self.wells), "sites": list(self.sites),
            "channels": list(self.channels), "shape_yx": list(self.shape_yx),
            "t_min": list(self.t_min), "z_um": list(self.z_um), "dtype": self.dtype,
            "pixel_size_um": self.pixel_size_um, "tile_yx": list(self.tile_yx),
            "attrs": dict(self.attrs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScreenLayout:
        """Build a layout from :meth:`to_dict` output, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


_WELL_NAME = re.compile(r"^([A-Z]{1,2})([0-9]{1,3})$")


def well_position(well: str) -> tuple[int, int]:
    """Zero-based (row, column) of a well name: 'A01' -> (0, 0), 'B03' -> (1, 2), 'AA01' -> (26, 0).

    Raises
    ------
    ValueError
        ``well`` is not row letters followed by a column number.

    Examples
    --------
    >>> well_position("B03"), well_position("P24")
    ((1, 2), (15, 23))
    """
    match = _WELL_NAME.match(str(well))
    if match is None or int(match.group(2)) < 1:
        raise ValueError(f"well must be row letters + column number like 'B03', got {well!r}")
    letters, number = match.groups()
    row = 0
    for letter in letters:
        row = row * 26 + (ord(letter) - ord("A") + 1)
    return row - 1, int(number) - 1
