"""Image file readers for ingest: headers without pixels, and checked pixel reads.

TIFF goes through tifffile; everything else (PNG, ...) through Pillow. A file is read
as ``(planes, y, x)``: every TIFF page (or leading axis of a stack) is a plane, RGB(A)
samples are reduced to one channel by :func:`reduce_rgb`. :func:`read_checked` is the
one place where a file's pixels are compared with what the store expects; whatever
goes wrong raises :class:`BadFile`, whose ``reason`` ends up in the ingest report.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from cellflow.errors import IngestError, RegionError
from cellflow.screen._ingest_pattern import RGB_METHODS
from cellflow.screen.store import cast_lossless

__all__ = ["BadFile", "ImageHeader", "PlaneSpec", "is_colour", "read_checked", "read_header", "reduce_rgb",
           "store_dtype"]

_TIFF_SUFFIXES = (".tif", ".tiff")
# Pillow mode -> (NumPy dtype, samples per pixel) of np.asarray(image).
_PIL_MODES: dict[str, tuple[str, int]] = {
    "1": ("bool", 1), "L": ("uint8", 1), "LA": ("uint8", 2), "P": ("uint8", 3), "PA": ("uint8", 4),
    "RGB": ("uint8", 3), "RGBA": ("uint8", 4), "I;16": ("uint16", 1), "I;16L": ("uint16", 1),
    "I;16B": ("uint16", 1), "I;16N": ("uint16", 1), "I": ("int32", 1), "F": ("float32", 1),
}
# tifffile axis letters that may be read as focal planes: Z, and unnamed pages (Q shaped, I ImageJ).
_Z_AXES = "ZQI"
_AXIS_NAMES = {"C": "channels", "T": "time points", "R": "tiles", "P": "phases", "H": "lifetime bins",
               "E": "lambda", "A": "angles", "V": "views", "L": "exposures", "M": "mosaic tiles"}
# Luminance weights of ITU-R BT.709, as in skimage.color.rgb2gray.
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721])


class BadFile(IngestError):
    """One input file cannot be ingested; ``reason`` says why (without the path)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across distributed workers
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageHeader:
    """What a file holds, read without its pixels.

    ``samples`` is 1 for grey, 2 for grey + alpha (alpha dropped), 3 RGB, 4 RGBA.
    ``plane_axes`` names what the planes run along, in tifffile's letters (``'Z'`` focus,
    ``'C'`` channel, ``'T'`` time, ``'Q'``/``'I'`` unnamed pages; ``''`` for one plane).
    """

    path: str
    n_planes: int
    shape_yx: tuple[int, int]
    dtype: np.dtype[Any]
    samples: int
    plane_axes: str = ""

    def z_problem(self) -> str | None:
        """Why the file's planes cannot be z planes (a channel or time axis), or None.

        Every ingest path reads a file's pages as focal planes; channels or time points
        stacked in one file would be mixed into one z-stack (and averaged by a z-projection).

        Examples
        --------
        >>> ImageHeader("a.tif", 3, (8, 8), np.dtype("uint16"), 1, "C").z_problem().split(";")[0]
        "holds 3 planes along axis 'C' (channels)"
        >>> ImageHeader("a.tif", 3, (8, 8), np.dtype("uint16"), 1, "Z").z_problem() is None
        True
        """
        others = [axis for axis in self.plane_axes if axis not in _Z_AXES]
        if self.n_planes <= 1 or not others:
            return None
        named = ", ".join(_AXIS_NAMES.get(axis, "unknown") for axis in others)
        return (f"holds {self.n_planes} planes along axis {''.join(others)!r} ({named}); cellflow reads a file's "
                "pages as z planes, so each file must hold one channel and one time point: save one file per "
                "channel and time point")


@dataclass(frozen=True)
class PlaneSpec:
    """What every file of one ingest must look like.

    ``reference`` is the file the expectation came from (named in reasons), ``variable``
    the store variable the pixels go to.
    """

    n_planes: int
    shape_yx: tuple[int, int]
    dtype: np.dtype[Any]
    rgb: str | None
    reference: str
    variable: str = "images"


def store_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Store dtype for a file dtype: 8-bit -> uint8, other integers -> uint16, floats -> float32.

    Integer files wider than 16 bits are stored as uint16 when their values fit (checked
    per file on reading).
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype("float32")
    if dtype.kind == "b" or dtype.itemsize == 1:
        return np.dtype("uint8")
    return np.dtype("uint16")


def reduce_rgb(pixels: np.ndarray, method: str) -> np.ndarray:
    """Reduce ``(..., S)`` RGB(A) samples to one channel; alpha is ignored.

    Parameters
    ----------
    pixels : (..., 3) or (..., 4) ndarray
        RGB or RGBA samples.
    method : {'mean', 'luminance', 'max', 'red', 'green', 'blue'}
        ``mean`` of R, G, B (exact for grey images, where R = G = B); ``luminance``
        0.2125 R + 0.7154 G + 0.0721 B (BT.709, as ``skimage.color.rgb2gray``); ``max``
        of R, G, B; or one of the three. Integer results are rounded to nearest.

    Returns
    -------
    reduced : (...) ndarray
        Same dtype as ``pixels``.

    Examples
    --------
    >>> reduce_rgb(np.array([[[10, 20, 31, 255]]], np.uint8), "mean")
    array([[20]], dtype=uint8)
    """
    if method not in RGB_METHODS:
        raise IngestError(f"rgb must be one of {RGB_METHODS!r}, got {method!r}")
    rgb = pixels[..., :3]
    if method in ("red", "green", "blue"):
        return np.ascontiguousarray(rgb[..., ("red", "green", "blue").index(method)])
    if method == "max":
        return rgb.max(axis=-1)
    weights = _LUMINANCE if method == "luminance" else np.full(3, 1 / 3)
    reduced = rgb.astype(np.float64) @ weights
    if pixels.dtype.kind in "iub":
        reduced = np.rint(reduced)
    return reduced.astype(pixels.dtype)


# ---------------------------------------------------------------------------- headers
def _tiff_layout(series: list[Any]) -> tuple[tuple[int, ...], str]:
    """Shape and axes of all the image data in a TIFF: one series, or equal ones stacked."""
    first = series[0]
    if len(series) == 1:
        return tuple(first.shape), first.axes
    if any(s.shape != first.shape or s.dtype != first.dtype or s.axes != first.axes for s in series):
        raise ValueError(f"its {len(series)} image series differ in shape or type")
    return (len(series), *first.shape), "Q" + first.axes


def _tiff_reader(path: Path) -> Generator[Any, None, None]:
    """Yield the header, then (if resumed) the ``(planes, y, x[, samples])`` pixels; one open."""
    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        shape, axes = _tiff_layout(series)
        samples = shape[axes.index("S")] if "S" in axes else 1
        planes = [(n, a) for n, a in zip(shape, axes) if a != "S"]
        if len(planes) < 2:
            raise ValueError(f"expected a 2D image or a stack of them, got shape {shape} (axes {axes!r})")
        stacked = [(n, a) for n, a in planes[:-2] if n > 1]  # length-1 axes (a 1-channel hyperstack) say nothing
        yield ImageHeader(str(path), math.prod(n for n, _ in stacked), (planes[-2][0], planes[-1][0]),
                          np.dtype(series[0].dtype), samples, "".join(a for _, a in stacked))
        data = series[0].asarray() if len(series) == 1 else np.stack([s.asarray() for s in series])
    data = data.reshape(shape)
    if "S" in axes:
        data = np.moveaxis(data, axes.index("S"), -1)
    yield data.reshape(-1, *data.shape[-3 if "S" in axes else -2 :])


def _pil_reader(path: Path) -> Generator[Any, None, None]:
    """As :func:`_tiff_reader`, for the formats Pillow reads (one plane)."""
    with Image.open(path) as image:
        if image.mode not in _PIL_MODES:
            raise ValueError(f"unsupported image mode {image.mode!r}")
        dtype, samples = _PIL_MODES[image.mode]
        yield ImageHeader(str(path), 1, (image.height, image.width), np.dtype(dtype), samples)
        if image.mode in ("P", "PA"):
            data = np.asarray(image.convert("RGBA" if image.mode == "PA" else "RGB"))
        else:
            data = np.asarray(image)
    yield data.astype(data.dtype.newbyteorder("="), copy=False)[np.newaxis]


_NOTES = threading.local()
_LOG = logging.getLogger("cellflow.ingest")


class _DecoderNotes(logging.Filter):
    """tifffile's warnings about a file this thread is reading go into its report, not the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        notes = getattr(_NOTES, "notes", None)
        if notes is None:
            return True
        notes.append(record.getMessage())
        return False


logging.getLogger("tifffile").addFilter(_DecoderNotes())


@contextmanager
def _decoder_notes(path: Path, stage: str) -> Iterator[None]:
    """Turn a decoder's failure into :class:`BadFile`, with the decoder's own warnings in the reason."""
    previous = getattr(_NOTES, "notes", None)
    notes: list[str] = []
    _NOTES.notes = notes
    try:
        yield
    except BadFile:
        raise
    # Decoders raise many types (ValueError, OSError, SyntaxError, struct.error, KeyError...)
    # for a damaged file; whichever it is, the file is bad and the reason is kept.
    except Exception as exc:
        said = f"; tifffile: {'; '.join(notes)}" if notes else ""
        raise BadFile(path, f"cannot read {stage} ({type(exc).__name__}: {exc}{said})") from exc
    finally:
        _NOTES.notes = previous
    for note in notes:  # the file was read all the same
        _LOG.debug("%s: tifffile: %s", path, note)


def _open(path: Path) -> tuple[ImageHeader, Generator[Any, None, None]]:
    """A file's header and the open reader that yields its pixels next."""
    reader = _tiff_reader(path) if path.suffix.lower() in _TIFF_SUFFIXES else _pil_reader(path)
    with _decoder_notes(path, "header"):
        return next(reader), reader
    raise AssertionError("unreachable")  # the context manager re-raises; narrows the type for mypy


def read_header(path: str | Path) -> ImageHeader:
    """Planes, size, dtype and samples of an image file, without reading its pixels.

    Raises
    ------
    BadFile
        The file cannot be opened or does not hold an image cellflow can store.
    """
    header, reader = _open(Path(path))
    reader.close()
    return header


# ---------------------------------------------------------------------------- pixels
def _decode(path: Path, rgb: str | None, notes: list[str] | None = None) -> np.ndarray:
    """``(planes, y, x)`` pixels of a file, RGB(A) reduced with ``rgb``; a colour file noted in ``notes``."""
    header, reader = _open(path)
    try:
        problem = header.z_problem()
        if problem is not None:
            raise BadFile(path, problem)
        if header.samples >= 3 and rgb is None:
            raise BadFile(
                path, f"is RGB(A) ({header.samples} samples per pixel); set rgb= to one of "
                f"{RGB_METHODS!r} in the FilenamePattern to reduce it to one channel"
            )
        with _decoder_notes(path, "pixels"):  # as in _open: any decoder failure makes the file bad
            data = next(reader)
    finally:
        reader.close()
    if header.samples == 2:
        return np.ascontiguousarray(data[..., 0])
    if header.samples < 3:
        return data
    if notes is not None and is_colour(data):
        notes.append(f"colour image (R, G, B differ), reduced to one channel by {rgb!r}")
    return reduce_rgb(data, str(rgb))


def is_colour(pixels: np.ndarray) -> bool:
    """Whether RGB(A) ``pixels`` (samples last) differ between R, G and B (a grey image stored as RGB does not).

    Examples
    --------
    >>> grey = np.full((2, 2, 3), 7, np.uint8)
    >>> is_colour(grey), is_colour(grey + np.array([0, 0, 1], np.uint8))
    (False, True)
    """
    return not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]))


def read_checked(path: str | Path, spec: PlaneSpec, *, notes: list[str] | None = None) -> np.ndarray:
    """Read a file's ``(planes, y, x)`` pixels and check them against ``spec``.

    ``notes``, when given, gets a line (without the path) if the file is a colour image,
    so that a reduction chosen by default is never silent.

    Parameters
    ----------
    path : str or Path
        Image file.
    spec : PlaneSpec
        Expected planes, size and store dtype, and the RGB reduction.

    Returns
    -------
    pixels : (spec.n_planes, Y, X) ndarray of spec.dtype

    Raises
    ------
    BadFile
        Unreadable, truncated, wrong size or number of planes, values that do not fit
        the store dtype, or only NaN.
    """
    path = Path(path)
    data = _decode(path, spec.rgb, notes)
    if data.shape[-2:] != spec.shape_yx:
        size = "x".join(map(str, data.shape[-2:]))
        expected = "x".join(map(str, spec.shape_yx))
        raise BadFile(path, f"is {size} pixels; expected {expected} like {spec.reference}")
    if data.shape[0] != spec.n_planes:
        raise BadFile(
            path, f"has {data.shape[0]} planes (pages); expected {spec.n_planes} like {spec.reference}"
        )
    if data.dtype.kind == "f" and data.size:
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad == data.size:
            raise BadFile(path, "holds only NaN or infinite values")
        if bad and np.dtype(spec.dtype).kind != "f":  # a float store keeps NaN as "no data"; an integer one cannot
            raise BadFile(path, f"holds {bad} NaN or infinite pixels of {data.size}; the store holds {spec.dtype}")
    try:
        return cast_lossless(spec.variable, data, spec.dtype)
    except RegionError as exc:
        raise BadFile(path, f"{data.dtype} pixels do not fit the store: {exc}") from exc
