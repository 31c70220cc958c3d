"""One error hierarchy for cellflow.

Every class also subclasses the builtin that callers would naturally catch
(``ValueError`` for bad values, ``FileExistsError`` for refused overwrites), so
``except ValueError`` keeps working while ``except CellflowError`` catches all
of ours.
"""

from __future__ import annotations

import errno

__all__ = [
    "HALT_ERRNOS",
    "CellflowError",
    "FieldQualityError",
    "IngestError",
    "RegionError",
    "SchemaError",
    "SpecError",
    "StorageFullError",
    "StoreBusyError",
    "StoreExistsError",
    "Terminated",
    "halts_run",
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


class StorageFullError(CellflowError, OSError):
    """The disk cellflow writes to is full or read-only; what was written is kept, the rest can be redone."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: a Kubernetes eviction, a batch scheduler's time limit).

    Raised in the main thread by the handler the command line installs
    (:func:`cellflow.cli.main`), so a terminated run ends as an interrupted one does (Ctrl-C):
    finished units kept and recorded, ``run.json`` saying ``interrupted``, the cluster shut
    down, instead of dying without a word.
    """


#: OSError numbers that say the *machine* cannot take more writes (disk full, quota, read-only
#: file system), not that an input is bad: every later field would fail the same way, so runs
#: stop instead of quarantining the rest of the plate.
HALT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def halts_run(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, is a full or read-only file system.

    Examples
    --------
    >>> halts_run(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> halts_run(OSError(errno.EIO, "Input/output error"))
    False
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in HALT_ERRNOS:
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
