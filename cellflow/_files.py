"""Writing files so that a kill or a full disk never leaves half of one.

Every result file cellflow writes outside the zarr store (label and probability TIFFs,
Parquet tables, ``run.json``, the plate view, reports) goes through :func:`write_atomic`:
it is written beside its target under a hidden temporary name and renamed over it only
when complete, so a reader (or a rerun that skips existing files) sees the old file or
the new one, never a truncated one, and nothing is left behind when the write fails.
Logs that only grow (task logs, the screen's run list) go through :func:`append_lines`,
which starts on a fresh line when an earlier append was torn, so a torn line never
swallows the next one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["append_lines", "write_atomic", "write_parquet", "write_text_atomic"]


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create ``path`` whole or not at all: ``write(tmp)`` writes a temporary file, then it is renamed.

    Parameters
    ----------
    path : str or Path
        The target; its folder must exist. An existing file is replaced only by a complete one.
    write : callable
        Writes the content to the path it is given (e.g. ``lambda p: frame.to_parquet(p)``).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = write_atomic(target, lambda p: p.write_text("whole"))
    >>> target.read_text(), sorted(q.name for q in target.parent.iterdir())
    ('whole', ['a.txt'])
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")  # no reader globs it
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of a UTF-8 text."""
    return write_atomic(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_parquet(path: str | Path, frame: Any) -> Path:
    """:func:`write_atomic` of a pandas DataFrame as Parquet (without its index)."""
    return write_atomic(path, lambda partial: frame.to_parquet(partial, index=False))


def append_lines(path: str | Path, text: str | bytes, *, sync: bool = False) -> int:
    """Append ``text`` (whole lines, each ending in a newline; bytes are UTF-8) to ``path``, creating it if needed.

    If the file does not end in a newline (an earlier append was torn by a kill or a full
    disk), a newline is written first, so the torn line stays alone and the new lines
    are read intact. ``sync``: flush and fsync before returning (durable against a kill).

    Returns
    -------
    int
        The byte offset in the file at which ``text`` begins (after that newline, if any).

    Examples
    --------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> append_lines(log, "one\\n"), append_lines(log, b"two\\n")
    (0, 4)
    >>> _ = log.write_bytes(log.read_bytes() + b"torn")  # an append torn by a kill
    >>> append_lines(log, "three\\n"), log.read_text()
    (13, 'one\\ntwo\\ntorn\\nthree\\n')
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    path = Path(path)
    if not data:
        return path.stat().st_size if path.exists() else 0
    with open(path, "a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                data = b"\n" + data
                size += 1
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    return size
