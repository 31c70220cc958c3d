"""One error hierarchy for cellflow.

Every class also subclasses the builtin that callers would naturally catch
(``ValueError`` for bad values, ``FileExistsError`` for refused overwrites), so
``except ValueError`` keeps working while ``except CellflowError`` catches all
of ours.
"""

from __future__ import annotations

__all__ = [
    "CellflowError",
    "FieldQualityError",
    "IngestError",
    "RegionError",
    "SchemaError",
    "SpecError",
    "StoreBusyError",
    "StoreExistsError",
]


class CellflowError(Exception):
    """Base class of every error cellflow raises on purpose."""


class SchemaError(CellflowError, ValueError):
    """A screen store or dataset does not follow the cellflow schema."""


class SpecError(CellflowError, ValueError):
    """A pipeline spec or a configuration value is invalid."""


class IngestError(CellflowError, ValueError):
    """An input file or folder cannot be ingested."""


class RegionError(CellflowError, ValueError):
    """A write does not address a valid, chunk-aligned region of a variable."""


class StoreExistsError(CellflowError, FileExistsError):
    """Creating a store would overwrite an existing one."""


class FieldQualityError(CellflowError, ValueError):
    """A field's pixels cannot be analysed: blank, saturated, or not finite."""


class StoreBusyError(CellflowError, RuntimeError):
    """Another cellflow run is writing the store (it holds the store's run lock)."""
