"""Schema of a cellflow screen: which variables exist, their dimensions and types.

:func:`validate_dataset` checks an opened (lazy) dataset against the schema and
raises one :class:`~cellflow.errors.SchemaError` that lists every problem, so a
user fixes a broken store in one pass instead of one error at a time.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from cellflow.errors import SchemaError
from cellflow.screen.layout import DIMS_FIELD, DIMS_IMAGES, DIMS_LABELS, MAX_TILE, WELL_PATTERN

__all__ = [
    "KNOWN_DIMS",
    "LABEL_PREFIXES",
    "SCHEMA_VERSION",
    "VARIABLE_NAME",
    "schema_problems",
    "validate_dataset",
    "variable_problems",
]

#: Bumped when the on-disk layout changes incompatibly.
SCHEMA_VERSION = 1
#: Dimensions a variable may use without declaring extra coordinates.
KNOWN_DIMS: tuple[str, ...] = DIMS_IMAGES
#: Allowed variable names: lower-case identifiers, not starting with an underscore.
VARIABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# Fixed dimensions for the variables whose meaning the engine relies on.
_FIXED_DIMS: dict[str, tuple[str, ...]] = {
    "images": DIMS_IMAGES,
    "acquired": DIMS_FIELD,
    "illumination": ("plate", "c", "z", "y", "x"),
    "probabilities": ("plate", "well", "site", "t", "class", "y", "x"),
}
#: Prefixes of instance-label variables (uint, dims DIMS_LABELS).
LABEL_PREFIXES: tuple[str, ...] = ("labels_", "truth_")


def variable_problems(name: str, dims: tuple[Hashable, ...], dtype: np.dtype[Any]) -> list[str]:
    """Problems with a variable's name, dimensions or dtype under the schema.

    Parameters
    ----------
    name : str
        Variable name.
    dims : tuple of str
        Its dimensions in storage order.
    dtype : numpy dtype
        Its element type.

    Returns
    -------
    problems : list of str
        Human-readable problems; empty when the variable conforms.
    """
    problems: list[str] = []
    if not VARIABLE_NAME.match(name) or name in KNOWN_DIMS:
        problems.append(
            f"variable name {name!r} must be a lower-case identifier that is not a dimension name"
        )
    dtype = np.dtype(dtype)
    expected = _FIXED_DIMS.get(name)
    if name.startswith(LABEL_PREFIXES):
        expected = DIMS_LABELS
        if dtype.kind != "u":
            problems.append(f"variable {name!r}: labels must be unsigned integers, got dtype {dtype}")
    if expected is not None and tuple(dims) != expected:
        problems.append(f"variable {name!r}: expected dims {expected}, got {tuple(dims)}")
    if name == "acquired" and dtype != np.bool_:
        problems.append(f"variable 'acquired': expected dtype bool, got {dtype}")
    if name == "images" and dtype.kind not in "uf":
        problems.append(f"variable 'images': expected unsigned integer or float pixels, got {dtype}")
    return problems


def _coord_problems(ds: xr.Dataset) -> list[str]:
    problems: list[str] = []
    for dim in ("plate", "well", "site", "t", "c", "z"):
        if dim not in ds.coords:
            problems.append(f"coordinate {dim!r} is missing")
            continue
        values = ds[dim].values
        if len(set(values.tolist())) != values.size:
            problems.append(f"coordinate {dim!r} has duplicate values {values.tolist()!r}")
    if "well" in ds.coords:
        bad = [w for w in ds["well"].values.tolist() if not WELL_PATTERN.match(str(w))]
        if bad:
            problems.append(f"coordinate 'well' must look like 'A01', got {bad!r}")
    if "site" in ds.coords and ds["site"].dtype.kind not in "iu":
        problems.append(f"coordinate 'site' must hold integers, got dtype {ds['site'].dtype}")
    if "t" in ds.coords:
        t = np.asarray(ds["t"].values, dtype=float)
        if np.any(np.diff(t) <= 0):
            problems.append(f"coordinate 't' (minutes) must be strictly increasing, got {t.tolist()!r}")
    return problems


def _chunk_problems(ds: xr.Dataset) -> list[str]:
    problems: list[str] = []
    images = ds.get("images")
    if images is None or images.chunks is None:
        return problems
    for dim, chunks in zip(images.dims, images.chunks):
        if dim in ("y", "x"):
            if max(chunks) > MAX_TILE:
                problems.append(f"variable 'images': {dim} chunks must be <= {MAX_TILE}, got {max(chunks)}")
        elif max(chunks) != 1:
            problems.append(f"variable 'images': dim {dim!r} must be chunked by 1 (one plane per chunk)")
    return problems


def _attr_problems(attrs: Mapping[str, Any]) -> list[str]:
    px = attrs.get("pixel_size_um")
    if not isinstance(px, (int, float)) or isinstance(px, bool) or not px > 0:
        return [f"attribute 'pixel_size_um' must be a positive number, got {px!r}"]
    return []


def schema_problems(ds: xr.Dataset) -> list[str]:
    """Every way ``ds`` departs from the cellflow screen schema (empty if none)."""
    problems: list[str] = []
    for required in ("images", "acquired"):
        if required not in ds.data_vars:
            problems.append(f"variable {required!r} is missing")
    for name, var in ds.data_vars.items():
        problems.extend(variable_problems(str(name), var.dims, var.dtype))
    problems.extend(_coord_problems(ds))
    problems.extend(_chunk_problems(ds))
    problems.extend(_attr_problems(ds.attrs))
    return problems


def validate_dataset(ds: xr.Dataset, *, source: str = "dataset") -> None:
    """Raise :class:`SchemaError` listing every schema problem of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        A screen, typically from :meth:`cellflow.screen.Screen.dataset`.
    source : str
        What to call it in the message (the store path).

    Raises
    ------
    SchemaError
        If any problem is found; the message lists them all.
    """
    problems = schema_problems(ds)
    if problems:
        listing = "\n  - ".join(problems)
        raise SchemaError(f"{source} is not a valid cellflow screen:\n  - {listing}")
