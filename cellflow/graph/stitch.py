"""Segmenting a large plane chunk by chunk: per-chunk segmentation with a halo, then stitching.

:func:`segment_large` runs a per-plane segmentation kernel (``segment``, e.g.
:func:`~cellflow.ops.autolabel.segment_nuclei` with a fixed diameter and threshold) on
every chunk of a dask plane and stitches the results so that no object is cut or
duplicated at chunk borders. Graph (built lazily, nothing is read until it runs)::

    chunk + halo ─ segment ─ owned objects ─┬─ overlaps with each neighbour ─┐
    chunk + halo ─ segment ─ owned objects ─┤                                ├─ resolve (one lookup table)
    ...                                     ┘                                ┘        │
    3 x 3 neighbours' owned objects + lookup table ─ compose ─ output chunk ─────────┘

Algorithm
---------
1. **Halo.** Each chunk's *core* (its own pixels) is grown by ``halo`` pixels on every
   side (clipped at the plane's edges) and ``segment`` runs on that *extended block*.
   A segmentation is local: a pixel's label depends on the image within some context
   radius. An object is segmented as on the whole plane when it and its context fit in
   the extended block, so ``halo`` should be at least one object diameter plus the
   kernel's context (smoothing, marker spacing): :func:`halo_for_diameter` gives twice
   the diameter. Extended blocks are sliced from the plane directly rather than with
   ``dask.array.overlap``, which rechunks chunks smaller than the depth and would move
   the chunk boundaries that the output must keep.
2. **Ownership.** An object of a block is *owned* by it when its centroid lies in the
   block's core (half-open boxes, tested in exact integer arithmetic, so every block
   decides the same way for the same pixel set). Other objects are dropped: they belong
   to a neighbour, which sees them with more context. Owned objects are numbered
   ``1..n`` per block; block ``k``'s ids are made unique plate-wide by the offset
   ``n_0 + ... + n_{k-1}`` (integers, never packed through strings).
3. **IoU consensus.** Two versions of one object can both be owned when their
   centroids fall on either side of a border (the blocks saw slightly different
   context). For every pair of neighbouring blocks (8-connectivity) the overlaps of
   their owned objects are counted in the intersection of their extended blocks (each
   object lies in its own extended block, so the intersections are exact); pairs with
   IoU > ``iou_threshold`` are the same object. The graph of these pairs is reduced to
   connected components (as in dask-image's label stitching), and each component keeps
   one version, the *winner*: the one farthest from the cut edges of its extended block
   (most context; ties to the lower id). The others are dropped.
4. **One relabel.** A single lookup table maps each (offset) id to its final id: winners
   to ``1..M`` in id order, everything else to 0.
5. **Compose.** An output chunk is painted from the owned objects of its own and its
   8 neighbours' extended blocks (an object lies within ``halo`` of its owner's core,
   and ``halo`` is at most the size of any interior chunk, so no farther block can
   reach it). Where two kept objects claim one pixel (distinct objects whose versions
   overlap: the conflicting pieces of an object split differently by two blocks), the
   pixel goes to the object with the higher priority, the same order as in step 3
   (margin to the cut edges, then the lower id), so every chunk decides alike.

Guarantees. With an exact, local kernel and a halo covering an object plus its context,
every object is segmented identically in every block that contains it, owned by exactly
one block, and painted whole: the stitched labels equal the whole-plane labels up to
renumbering. Otherwise the result differs only near borders, and steps 3 and 5 keep
objects neither duplicated nor double-painted. Ids are unique and ``<= M``; an object
that loses every pixel to conflicts leaves a gap in ``1..M``. An object wider than the
halo allows is truncated at its extended block's edge (increase ``halo``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
from dask import delayed
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Resolution",
    "compose_chunk",
    "halo_for_diameter",
    "owned_objects",
    "pair_overlaps",
    "resolve_objects",
    "segment_large",
]

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open), in plane coordinates

_LABEL_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
#: Offsets to the 8 neighbours whose pairs are counted once (the other 4 are their mirrors).
_FORWARD = ((0, 1), (1, -1), (1, 0), (1, 1))


class Resolution(NamedTuple):
    """The plate-wide decision of step 3-4, indexed by offset id (0 = background)."""

    offsets: np.ndarray  # (B,) int64: block k's owned object j has offset id offsets[k] + j
    lookup: np.ndarray  # (N + 1,) final id of each offset id, 0 = dropped
    priority: np.ndarray  # (N + 1,) int64, distinct for every object; higher wins a pixel


# ---------------------------------------------------------------------------- kernels (NumPy, no dask)
def owned_objects(labels: np.ndarray, *, core: Box, cut: tuple[bool, bool, bool, bool]) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """The objects of one extended block whose centroid lies in its core, numbered ``1..n``.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Labels of the extended block, 0 = background; an id is one object.
    core : (y0, y1, x0, x1)
        The core, in the block's coordinates (half-open).
    cut : (top, bottom, left, right) of bool
        Which edges of the block are cut from a larger plane (not the plane's own edge).

    Returns
    -------
    owned : (M, N) ndarray of uint32
        Owned objects renumbered ``1..n`` in the order of their ids, 0 elsewhere.
    area : (n,) ndarray of int64
        Pixels per owned object.
    margin : (n,) ndarray of int64
        Distance in pixels from each owned object's bounding box to the nearest cut edge
        (``M + N`` when no edge is cut): how much context the block had around it.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2, 2, 2]])
    >>> owned, area, margin = owned_objects(labels, core=(0, 1, 0, 3), cut=(False, False, False, True))
    >>> owned.tolist(), area.tolist(), margin.tolist()
    ([[1, 1, 0, 0, 0, 0]], [2], [4])
    """
    labels = np.asarray(labels)
    flat = labels.ravel().astype(np.intp, copy=False)
    size = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=size)
    rows, cols = np.indices(labels.shape, dtype=np.int64)
    sum_y = np.bincount(flat, weights=rows.ravel(), minlength=size).round().astype(np.int64)
    sum_x = np.bincount(flat, weights=cols.ravel(), minlength=size).round().astype(np.int64)
    y0, y1, x0, x1 = core
    # centroid in [y0, y1) x [x0, x1)  <=>  y0 * area <= sum_y < y1 * area: exact integers
    keep = (area > 0) & (y0 * area <= sum_y) & (sum_y < y1 * area) & (x0 * area <= sum_x) & (sum_x < x1 * area)
    keep[0] = False
    kept = np.flatnonzero(keep)
    renumber = np.zeros(size, np.uint32)
    renumber[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    owned = renumber[flat].reshape(labels.shape)
    return owned, area[kept].astype(np.int64), _margins(owned, kept.size, cut)


def _margins(owned: np.ndarray, n: int, cut: tuple[bool, bool, bool, bool]) -> np.ndarray:
    height, width = owned.shape
    far = height + width
    margin = np.full(n, far, np.int64)
    for index, box in enumerate(ndi.find_objects(owned, max_label=n)):
        if box is None:
            continue
        ys, xs = box
        gaps = (ys.start, height - ys.stop, xs.start, width - xs.stop)
        margin[index] = min((gap for gap, is_cut in zip(gaps, cut) if is_cut), default=far)
    return margin


def pair_overlaps(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of objects of two label crops of one region that share pixels.

    Parameters
    ----------
    labels_a, labels_b : (M, N) ndarray of int
        Labels of the same pixels from two blocks, 0 = background.

    Returns
    -------
    ids_a, ids_b : (K,) ndarray of int64
        The ids of each overlapping pair (both non-zero), sorted by ``ids_a`` then ``ids_b``.
    intersection : (K,) ndarray of int64
        Pixels the pair shares.

    Examples
    --------
    >>> a = np.array([[1, 1, 2, 0]]); b = np.array([[3, 3, 3, 3]])
    >>> [x.tolist() for x in pair_overlaps(a, b)]
    [[1, 2], [3, 3], [2, 1]]
    """
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"labels_a and labels_b must have one shape, got {labels_a.shape} and {labels_b.shape}")
    a, b = labels_a.ravel().astype(np.int64), labels_b.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts.astype(np.int64)


def resolve_objects(areas: Sequence[np.ndarray], margins: Sequence[np.ndarray],
                    pairs: Sequence[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]], *,
                    iou_threshold: float, dtype: Any = np.uint32) -> Resolution:
    """IoU consensus over all blocks: one lookup table from offset ids to final ids.

    Parameters
    ----------
    areas, margins : sequence of (n_k,) ndarray of int64
        Per block, its owned objects' areas and margins (:func:`owned_objects`).
    pairs : sequence of (k, m, ids_k, ids_m, intersection)
        Overlaps between the owned objects of blocks ``k`` and ``m`` (:func:`pair_overlaps`).
    iou_threshold : float
        Versions with IoU above it are one object.
    dtype : {uint32, uint64}
        Dtype of the final ids.

    Returns
    -------
    Resolution

    Raises
    ------
    ValueError
        There are more objects than ``dtype`` can number.

    Examples
    --------
    >>> same = (0, 1, np.array([1]), np.array([1]), np.array([9]))  # IoU 9 / 11
    >>> found = resolve_objects([np.array([10, 4]), np.array([10])], [np.array([5, 9]), np.array([7])],
    ...                         [same], iou_threshold=0.5)
    >>> found.lookup.tolist()  # block 1's version has more context: block 0's is dropped
    [0, 0, 1, 2]
    """
    counts = np.array([len(a) for a in areas], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(counts.sum())
    area = np.concatenate([[0], *areas]).astype(np.int64)
    margin = np.concatenate([[-1], *margins]).astype(np.int64)
    ids = np.arange(total + 1, dtype=np.int64)
    priority = margin * (total + 1) + (total - ids)  # margin first, then the lower id
    edges = [(offsets[k] + ia, offsets[m] + ib, inter) for k, m, ia, ib, inter in pairs]
    first = np.concatenate([[0], *(e[0] for e in edges)]).astype(np.int64)
    second = np.concatenate([[0], *(e[1] for e in edges)]).astype(np.int64)
    inter = np.concatenate([[0], *(e[2] for e in edges)]).astype(np.int64)
    same = inter > iou_threshold * (area[first] + area[second] - inter)
    graph = coo_matrix((np.ones(int(same.sum()), np.int8), (first[same], second[same])), shape=(total + 1,) * 2)
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((priority, component))  # within a component, ascending priority
    last = np.r_[component[order][1:] != component[order][:-1], True]
    keep = np.zeros(total + 1, bool)
    keep[order[last]] = True
    keep[0] = False
    dtype = np.dtype(dtype)
    if int(keep.sum()) > np.iinfo(dtype).max:
        raise ValueError(f"dtype {dtype} cannot number {int(keep.sum())} objects; use dtype=np.uint64")
    lookup = np.zeros(total + 1, dtype)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=dtype)
    return Resolution(offsets, lookup, priority)


def compose_chunk(shape: tuple[int, int], layers: Sequence[tuple[int, np.ndarray, tuple[slice, slice]]],
                  resolution: Resolution) -> np.ndarray:
    """Paint one output chunk from its neighbours' owned objects through the lookup table.

    Parameters
    ----------
    shape : (M, N)
        The chunk's shape.
    layers : sequence of (block, owned, where)
        ``owned`` is a crop of block ``block``'s owned labels lying at ``where`` in the chunk.
    resolution : Resolution
        From :func:`resolve_objects`.

    Returns
    -------
    labels : (M, N) ndarray of the lookup table's dtype
        Where kept objects overlap, the one with the higher priority.

    Examples
    --------
    >>> found = Resolution(np.array([0, 1]), np.array([0, 1, 2], np.uint32), np.array([-1, 5, 7]))
    >>> layers = [(0, np.array([[1, 1]]), np.s_[:, :2]), (1, np.array([[1, 1]]), np.s_[:, 1:])]
    >>> compose_chunk((1, 3), layers, found).tolist()
    [[1, 2, 2]]
    """
    out = np.zeros(shape, resolution.lookup.dtype)
    best = np.full(shape, -1, np.int64)
    for block, owned, where in layers:
        local = owned.astype(np.int64)
        offset_ids = np.where(local > 0, local + resolution.offsets[block], 0)
        ids = resolution.lookup[offset_ids]
        rank = np.where(ids > 0, resolution.priority[offset_ids], -1)
        take = rank > best[where]
        out[where][take] = ids[take]
        best[where][take] = rank[take]
    return out


# ---------------------------------------------------------------------------- graph builder
def halo_for_diameter(diameter_px: float, *, factor: float = 2.0) -> int:
    """Halo depth for objects of ``diameter_px``: ``ceil(factor * diameter_px)``.

    Examples
    --------
    >>> halo_for_diameter(25)
    50
    """
    if isinstance(diameter_px, bool) or not isinstance(diameter_px, numbers.Real) or not diameter_px > 0:
        raise ValueError(f"diameter_px must be a number > 0, got {diameter_px!r}")
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not factor >= 1:
        raise ValueError(f"factor must be a number >= 1, got {factor!r}")
    return math.ceil(factor * diameter_px)


def _check(image: Any, segment: Any, halo: Any, iou_threshold: Any, dtype: Any) -> np.dtype:
    if not isinstance(image, da.Array):
        raise TypeError(f"image must be a dask array, got {type(image).__name__}; wrap it with dask.array.from_array")
    if image.ndim != 2:
        raise ValueError(f"image must be a 2-D plane (y, x), got shape {image.shape}")
    if not callable(segment):
        raise TypeError(f"segment must be a callable plane -> labels, got {segment!r}")
    if isinstance(halo, bool) or not isinstance(halo, numbers.Integral) or halo < 1:
        raise ValueError(f"halo must be an integer >= 1, got {halo!r}")
    for axis, sizes in zip("yx", image.chunks):
        if any(size < halo for size in sizes[1:-1]):
            raise ValueError(f"halo ({halo}) must not exceed any interior chunk along {axis}, got chunks "
                             f"{sizes}; rechunk to larger chunks or lower the halo")
    if (isinstance(iou_threshold, bool) or not isinstance(iou_threshold, numbers.Real)
            or not 0 < float(iou_threshold) < 1):
        raise ValueError(f"iou_threshold must be a number in (0, 1), got {iou_threshold!r}")
    if np.dtype(dtype) not in _LABEL_DTYPES:
        raise ValueError(f"dtype must be uint32 or uint64, got {dtype!r}")
    return np.dtype(dtype)


def _segment_block(image: np.ndarray, segment: Callable[[np.ndarray], Any], core: Box,
                   cut: tuple[bool, bool, bool, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.asarray(segment(image))
    if labels.shape != image.shape or labels.dtype.kind not in "iu":
        raise ValueError(f"segment must return integer labels of its input's shape {image.shape}, "
                         f"got {labels.dtype} of shape {labels.shape}")
    return owned_objects(labels, core=core, cut=cut)


class _Spilled(NamedTuple):
    """A block's owned labels saved to a scratch ``.npy`` file (read back memory-mapped)."""

    path: str


def _spill(labels: np.ndarray, path: str) -> _Spilled:
    np.save(path, np.ascontiguousarray(labels))
    return _Spilled(path)


def _labels_of(owned: np.ndarray | _Spilled) -> np.ndarray:
    return np.load(owned.path, mmap_mode="r") if isinstance(owned, _Spilled) else owned


def _crop(labels: np.ndarray | _Spilled, where: tuple[slice, slice]) -> np.ndarray:
    return np.array(_labels_of(labels)[where])


def _compose(shape: tuple[int, int], blocks: Sequence[int], owned: Sequence[np.ndarray | _Spilled],
             sources: Sequence[tuple[slice, slice]], targets: Sequence[tuple[slice, slice]],
             resolution: Resolution) -> np.ndarray:
    layers = [(block, np.asarray(_labels_of(labels)[source]), target)
              for block, labels, source, target in zip(blocks, owned, sources, targets)]
    return compose_chunk(shape, layers, resolution)


def _resolve(areas: Sequence[np.ndarray], margins: Sequence[np.ndarray], keys: Sequence[tuple[int, int]],
             found: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], iou_threshold: float,
             dtype: np.dtype) -> Resolution:
    pairs = [(k, m, *overlap) for (k, m), overlap in zip(keys, found)]
    return resolve_objects(areas, margins, pairs, iou_threshold=iou_threshold, dtype=dtype)


def _local(box: Box, inside: Box) -> tuple[slice, slice]:
    """``box`` in the coordinates of ``inside`` (``box`` must lie within it)."""
    return slice(box[0] - inside[0], box[1] - inside[0]), slice(box[2] - inside[2], box[3] - inside[2])


def _intersect(a: Box, b: Box) -> Box:
    return max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3])


def segment_large(image: da.Array, segment: Callable[[np.ndarray], Any], *, halo: int,
                  iou_threshold: float = 0.5, dtype: Any = np.uint32, scratch: str | Path | None = None) -> da.Array:
    """Segment a large plane chunk by chunk with a halo and stitch the chunks (module docstring).

    Parameters
    ----------
    image : (Y, X) dask array
        The plane; its chunks are the units of work and of the output.
    segment : callable
        ``segment(block) -> labels``: a (M, N) NumPy block to (M, N) integer labels,
        0 = background. It should not depend on the block's size or statistics (give a
        fixed threshold and diameter) for the result to match a whole-plane run.
    halo : int
        Pixels of context on every side of a chunk, >= 1 and at most any interior chunk's
        size; about twice the object diameter (:func:`halo_for_diameter`).
    iou_threshold : float
        In (0, 1): versions of an object from two chunks with IoU above it are one object.
    dtype : {uint32, uint64}
        Dtype of the labels.
    scratch : path, optional
        A folder (must exist, e.g. a temporary one) where each block's owned labels wait,
        as ``.npy`` files, for the plane-wide resolution: memory then holds only the chunks
        being worked on and the thin halo strips, not the whole plane's labels (about 4
        bytes per pixel otherwise). The folder must outlive the computation.

    Returns
    -------
    labels : (Y, X) dask array of ``dtype``
        Unique ids plate-wide, chunked like ``image``; lazy.

    Raises
    ------
    TypeError
        ``image`` is not a dask array or ``segment`` not callable.
    ValueError
        ``image`` is not 2-D, ``halo`` is not an integer in [1, interior chunk size],
        ``iou_threshold`` is not in (0, 1), or ``dtype`` is not uint32/uint64.

    Examples
    --------
    >>> plane = np.zeros((40, 60)); plane[15:25, 25:35] = 1  # one square on a chunk corner
    >>> labels = segment_large(da.from_array(plane, chunks=20), lambda b: ndi.label(b > 0.5)[0], halo=12)
    >>> np.unique(labels.compute()).tolist(), labels.dtype.name
    ([0, 1], 'uint32')
    """
    dtype = _check(image, segment, halo, iou_threshold, dtype)
    cores, exts = _geometry(image.shape, image.chunks, halo)
    index = {key: n for n, key in enumerate(cores)}
    owned, areas, margins = {}, [], []
    for key, ext in exts.items():
        block = image[ext[0]:ext[1], ext[2]:ext[3]]
        cut = (ext[0] > 0, ext[1] < image.shape[0], ext[2] > 0, ext[3] < image.shape[1])
        core = _local(cores[key], ext)
        owned[key], area, margin = delayed(_segment_block, nout=3, pure=True)(
            block.rechunk(block.shape), segment, (core[0].start, core[0].stop, core[1].start, core[1].stop), cut)
        if scratch is not None:
            owned[key] = delayed(_spill, pure=True)(owned[key], str(Path(scratch) / f"owned_{key[0]}_{key[1]}.npy"))
        areas.append(area)
        margins.append(margin)
    keys, found = [], []
    for (i, j), ext in exts.items():
        for other in ((i + di, j + dj) for di, dj in _FORWARD if (i + di, j + dj) in exts):
            shared = _intersect(ext, exts[other])
            keys.append((index[i, j], index[other]))
            found.append(delayed(pair_overlaps, pure=True)(
                delayed(_crop, pure=True)(owned[i, j], _local(shared, ext)),
                delayed(_crop, pure=True)(owned[other], _local(shared, exts[other]))))
    resolution = delayed(_resolve, pure=True)(areas, margins, keys, found, float(iou_threshold), dtype)
    grid = (len(image.chunks[0]), len(image.chunks[1]))
    return da.block([[_output_chunk((i, j), cores, exts, index, owned, resolution, dtype) for j in range(grid[1])]
                     for i in range(grid[0])])


def _geometry(shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...],
              halo: int) -> tuple[dict[tuple[int, int], Box], dict[tuple[int, int], Box]]:
    """Each chunk's core and extended block, in plane coordinates, keyed by block index."""
    ybounds, xbounds = (np.concatenate([[0], np.cumsum(c)]).astype(int).tolist() for c in chunks)
    cores: dict[tuple[int, int], Box] = {}
    exts: dict[tuple[int, int], Box] = {}
    for i in range(len(chunks[0])):
        for j in range(len(chunks[1])):
            y0, y1, x0, x1 = ybounds[i], ybounds[i + 1], xbounds[j], xbounds[j + 1]
            cores[i, j] = (y0, y1, x0, x1)
            exts[i, j] = (max(0, y0 - halo), min(shape[0], y1 + halo), max(0, x0 - halo), min(shape[1], x1 + halo))
    return cores, exts


def _output_chunk(key: tuple[int, int], cores: dict[tuple[int, int], Box], exts: dict[tuple[int, int], Box],
                  index: dict[tuple[int, int], int], owned: dict[tuple[int, int], Any], resolution: Any,
                  dtype: np.dtype) -> da.Array:
    """One lazy output chunk, painted from the 3 x 3 blocks around it."""
    core = cores[key]
    shape = (core[1] - core[0], core[3] - core[2])
    near = [(key[0] + di, key[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (key[0] + di, key[1] + dj) in exts]
    shared = [_intersect(core, exts[n]) for n in near]
    chunk = delayed(_compose, pure=True)(
        shape, [index[n] for n in near], [owned[n] for n in near],
        [_local(box, exts[n]) for box, n in zip(shared, near)], [_local(box, core) for box in shared], resolution)
    return da.from_delayed(chunk, shape=shape, dtype=dtype, meta=np.empty((0, 0), dtype))
