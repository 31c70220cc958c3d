"""Helpers shared by the frozen config dataclasses (their dict round trip)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["check_keys"]


def check_keys(owner: type, data: Mapping[str, Any], *, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming every key of ``data`` that is not a field of dataclass ``owner``.

    Examples
    --------
    >>> @dataclasses.dataclass
    ... class P:
    ...     size: int = 1
    >>> check_keys(P, {"size": 2})
    >>> check_keys(P, {"sise": 2})
    Traceback (most recent call last):
    ...
    ValueError: P got unknown keys ['sise']; expected some of ['size']
    """
    known = {f.name for f in dataclasses.fields(owner)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{owner.__name__} got unknown keys {unknown!r}; expected some of {sorted(known)!r}")
