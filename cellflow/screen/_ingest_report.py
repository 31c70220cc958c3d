"""The outcome of an ingest: what was written, what failed and why, what was skipped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zarr

from cellflow._config import check_keys
from cellflow.errors import IngestError

__all__ = ["REPORT_ATTR", "IngestReport"]

#: Root attribute of the store that holds the report of the ingest that filled it.
REPORT_ATTR = "cellflow_ingest"
_SHOWN = 20  # lines listed per section in summary(); the rest are counted


def _listing(title: str, lines: Sequence[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"  {line}" for line in lines[:_SHOWN]]
    if len(lines) > _SHOWN:
        shown.append(f"  ... and {len(lines) - _SHOWN} more")
    return [f"{title}:", *shown]


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did.

    Attributes
    ----------
    store : str
        Path of the store written.
    n_files : int
        Files that were to be read (images, and masks for paired data).
    n_fields : int
        Fields (plate, well, site, t) in the store's layout.
    n_fields_ingested : int
        Fields written completely and marked acquired.
    failed : tuple of (str, str)
        ``(path, reason)`` for every bad file; its field is not acquired.
    skipped : tuple of str
        Files that did not match the pattern (not errors); hidden files are not listed.
    notes : tuple of str
        Remarks that are not failures, such as an image without a mask.
    """

    store: str
    n_files: int
    n_fields: int
    n_fields_ingested: int
    failed: tuple[tuple[str, str], ...] = ()
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "store", str(self.store))
        set_(self, "failed", tuple((str(p), str(r)) for p, r in self.failed))
        set_(self, "skipped", tuple(str(p) for p in self.skipped))
        set_(self, "notes", tuple(str(n) for n in self.notes))

    @property
    def ok(self) -> bool:
        """True when no file failed."""
        return not self.failed

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        lines = [
            f"ingested {self.n_fields_ingested} of {self.n_fields} fields from {self.n_files} files "
            f"into {self.store}"
        ]
        lines += _listing(f"{len(self.failed)} bad files (their fields are not acquired)",
                          [f"{p}: {r}" for p, r in self.failed])
        lines += _listing(f"{len(self.skipped)} files skipped (not matching the pattern)", self.skipped)
        lines += _listing("notes", self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        data = asdict(self)
        data["failed"] = [list(f) for f in self.failed]
        data["skipped"] = list(self.skipped)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestReport:
        """Build a report from :meth:`to_dict` output."""
        check_keys(cls, data, error=IngestError)
        return cls(**dict(data))

    def save(self) -> None:
        """Store the report in the root attributes of :attr:`store` under ``cellflow_ingest``."""
        zarr.open_group(self.store, mode="r+").attrs[REPORT_ATTR] = self.to_dict()

    @classmethod
    def load(cls, store: str | Path) -> IngestReport:
        """The report saved in a store by the ingest that wrote it.

        Raises
        ------
        IngestError
            The store holds no ingest report.
        """
        attrs = zarr.open_group(store, mode="r").attrs
        if REPORT_ATTR not in attrs:
            raise IngestError(f"{store} holds no ingest report (no {REPORT_ATTR!r} attribute)")
        return cls.from_dict(attrs[REPORT_ATTR])  # type: ignore[arg-type]
