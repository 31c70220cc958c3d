"""Per-object measurements of one field: shape, position and per-channel intensity.

The measurements are scikit-image's :func:`~skimage.measure.regionprops_table`
(cuCIM's on CuPy input, through :mod:`cellflow.ops._backend`); this module only
names the columns, adds the integrated intensity and the nucleus-to-cell link.
Integrated intensity (``intensity_sum_<channel>``) is ``intensity_mean x area``
in float64: of the DNA channel, after camera offset subtraction and flat-field
correction, it is the object's DNA content (Caicedo et al. 2019's cell-cycle readout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cellflow.ops._backend import backend_of, to_host

__all__ = ["SHAPE_COLUMNS", "link_objects", "measure_objects", "touches_border"]

#: Shape and position columns of :func:`measure_objects`, in order (intensity columns follow).
SHAPE_COLUMNS: tuple[str, ...] = (
    "label", "area", "perimeter", "eccentricity", "solidity", "centroid_y", "centroid_x",
    "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
)
_PROPERTIES = ("label", "area", "perimeter", "eccentricity", "solidity", "centroid", "bbox")
_RENAME = {
    "centroid-0": "centroid_y", "centroid-1": "centroid_x",
    "bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1",
}


def _check(labels: Any, images: Mapping[str, Any]) -> None:
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.ndim}-D {labels.dtype}")
    for name, image in images.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"images must be keyed by channel names, got key {name!r}")
        if tuple(image.shape) != tuple(labels.shape):
            raise ValueError(f"images[{name!r}] has shape {tuple(image.shape)}; labels have {tuple(labels.shape)}")


def measure_objects(labels: Any, images: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One row per object of ``labels``: shape, position and intensity in each channel.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Objects, 0 = background; labels need not be consecutive.
    images : mapping of str to (M, N) ndarray
        Channels to measure, by name, on the same backend as ``labels`` (already
        offset-subtracted and flat-field corrected where that matters).

    Returns
    -------
    columns : dict of str to (K,) ndarray
        NumPy columns, one entry per object in increasing label order:
        :data:`SHAPE_COLUMNS` (``area`` and ``perimeter`` in pixels, ``bbox`` half-open),
        then ``intensity_sum_<ch>``, ``intensity_mean_<ch>``, ``intensity_max_<ch>``
        per channel in ``images`` order.

    Raises
    ------
    ValueError
        ``labels`` is not a 2-D integer array, or an image's shape differs from it.

    Examples
    --------
    >>> labels = np.array([[0, 1, 1], [0, 2, 0]], np.uint32)
    >>> cols = measure_objects(labels, {"DNA": np.array([[9, 1, 3], [9, 5, 9]], np.float32)})
    >>> cols["label"].tolist(), cols["area"].tolist(), cols["intensity_sum_DNA"].tolist()
    ([1, 2], [2.0, 1.0], [4.0, 5.0])
    """
    _check(labels, images)
    be = backend_of(labels)
    names = list(images)
    intensity = None
    properties: tuple[str, ...] = _PROPERTIES
    if names:
        intensity = be.xp.stack([images[n].astype(be.xp.float32, copy=False) for n in names], axis=-1)
        properties += ("intensity_mean", "intensity_max")
    table = be.ski("measure").regionprops_table(labels, intensity, properties=properties)
    raw = {key: to_host(value) for key, value in table.items()}
    columns = {_RENAME.get(key, key): raw[key] for key in raw if not key.startswith("intensity_")}
    columns = {name: columns[name] for name in SHAPE_COLUMNS}
    area = columns["area"].astype(np.float64)
    for i, name in enumerate(names):
        mean = raw[f"intensity_mean-{i}"].astype(np.float64)
        columns[f"intensity_sum_{name}"] = mean * area
        columns[f"intensity_mean_{name}"] = mean
        columns[f"intensity_max_{name}"] = raw[f"intensity_max-{i}"].astype(np.float64)
    return columns


def link_objects(labels: Any, covering: Any, index: Any) -> np.ndarray:
    """For each object of ``labels`` in ``index``, the ``covering`` label over most of its pixels.

    Typical use: the cell of each nucleus (``labels`` = nuclei, ``covering`` = cells).
    Background (0) of ``covering`` never wins; an object no covering label touches gets 0.
    Ties go to the smaller covering label.

    Parameters
    ----------
    labels, covering : (M, N) ndarray of int
        Two label images of the same field.
    index : (K,) array_like of int
        Labels of ``labels`` to link, e.g. the ``label`` column of :func:`measure_objects`.

    Returns
    -------
    linked : (K,) ndarray of int64
        On the host.

    Examples
    --------
    >>> nuclei = np.array([[1, 1, 1, 0, 2]])
    >>> cells = np.array([[5, 7, 7, 7, 0]])
    >>> link_objects(nuclei, cells, [1, 2]).tolist()
    [7, 0]
    """
    if tuple(labels.shape) != tuple(covering.shape):
        raise ValueError(f"covering has shape {tuple(covering.shape)}; labels have {tuple(labels.shape)}")
    inner = to_host(labels).ravel().astype(np.int64)
    outer = to_host(covering).ravel().astype(np.int64)
    both = (inner > 0) & (outer > 0)
    pairs, counts = np.unique(np.stack([inner[both], outer[both]]), axis=1, return_counts=True)
    # Sort by (object, count descending, covering label ascending): the first row of each object wins.
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    pairs = pairs[:, order]
    first = np.ones(pairs.shape[1], bool)
    first[1:] = pairs[0, 1:] != pairs[0, :-1]
    winner = dict(zip(pairs[0, first].tolist(), pairs[1, first].tolist()))
    return np.array([winner.get(int(k), 0) for k in np.asarray(index).tolist()], np.int64)


def touches_border(columns: Mapping[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Whether each object's bounding box touches the edge of a field of ``shape``.

    Such objects are cut by the field edge: their area and integrated intensity are partial.

    Examples
    --------
    >>> cols = {"bbox_y0": np.array([0, 2]), "bbox_x0": np.array([3, 2]),
    ...         "bbox_y1": np.array([4, 5]), "bbox_x1": np.array([6, 5])}
    >>> touches_border(cols, (10, 10)).tolist()
    [True, False]
    """
    return np.asarray(
        (columns["bbox_y0"] <= 0) | (columns["bbox_x0"] <= 0)
        | (columns["bbox_y1"] >= shape[0]) | (columns["bbox_x1"] >= shape[1])
    )
