"""Cells from nuclei: seeded watershed of a cytoplasm image or probability, optional active contours.

Van Valen et al. 2016 segment the cytoplasm from a phase (or bright-field) image plus a
nuclear marker: a network takes both channels, its nuclear prediction gives the seeds,
and a seeded watershed of its cell prediction gives cells linked to their nuclei (cell
``k`` contains nucleus ``k``). Here:

* :func:`cells_from_nuclei` is the kernel: given a plane that is bright inside cells (a
  cytoplasm stain, or a network's cell probability) and nucleus labels, it grows one cell
  per nucleus by :func:`~cellflow.ops.autolabel.segment_cells` (foreground threshold,
  watershed of the plane plus the distance from the nuclei). ``method='active_contour'``
  then refines each cell with a morphological Chan-Vese contour
  (:func:`skimage.segmentation.morphological_chan_vese`) started from the watershed cell
  and bounded to its territory: the watershed cell grown by ``territory_px`` pixels,
  split with its neighbours (:func:`~skimage.segmentation.expand_labels`). Pixels outside
  the territory are set to the background level (the median of the plane outside every
  watershed cell), so a neighbour's cytoplasm does not pull the contour. The refined cell
  keeps the part connected to its nucleus and always contains its nucleus.
* :func:`cytoplasm_targets` makes the network's classes (background, cytoplasm, nucleus)
  and :func:`cells_from_probabilities` turns its output into nuclei and linked cells.
  Train it with :func:`~cellflow.live.celltype.train_semantic` on two-channel
  (nuclear + phase/BF) fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, morphological_chan_vese

from cellflow.ops.autolabel import CellParams, NucleiParams, segment_cells, segment_nuclei

__all__ = [
    "CELL_FROM_NUCLEI_METHODS",
    "CYTOPLASM_CLASSES",
    "cells_from_nuclei",
    "cells_from_probabilities",
    "cytoplasm_targets",
]

#: Methods of :func:`cells_from_nuclei`.
CELL_FROM_NUCLEI_METHODS: tuple[str, ...] = ("watershed", "active_contour")
#: Classes of the two-channel cytoplasm network, in order.
CYTOPLASM_CLASSES: tuple[str, ...] = ("background", "cytoplasm", "nucleus")


def _check(image: Any, nuclei: Any, method: str, territory_px: Any, iterations: Any) -> tuple[np.ndarray, np.ndarray]:
    if method not in CELL_FROM_NUCLEI_METHODS:
        raise ValueError(f"method must be one of {CELL_FROM_NUCLEI_METHODS!r}, got {method!r}")
    image, nuclei = np.asarray(image), np.asarray(nuclei)
    if image.ndim != 2 or image.shape != nuclei.shape:
        raise ValueError(f"image and nuclei must be 2-D planes of one shape, got {image.shape} and {nuclei.shape}")
    if nuclei.dtype.kind not in "ui":
        raise ValueError(f"nuclei must be integer labels, got dtype {nuclei.dtype}")
    for name, value in (("territory_px", territory_px), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return image.astype(np.float32), nuclei


def _refine(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, territory_px: int, iterations: int,
            smoothing: int, lambdas: tuple[float, float]) -> np.ndarray:
    """Chan-Vese refinement of every cell inside its territory (see the module docstring)."""
    territories = expand_labels(cells, territory_px)
    outside = image[cells == 0]
    fill = float(np.median(outside)) if outside.size else float(image.min())
    refined = np.zeros_like(cells)
    for index, box in enumerate(ndi.find_objects(territories), start=1):
        if box is None:
            continue
        inside = territories[box] == index
        crop = np.where(inside, image[box], fill)
        start = cells[box] == index
        if crop.max() <= crop.min() or start.all():
            refined[box][start] = index
            continue
        level_set = morphological_chan_vese(crop, iterations, init_level_set=start, smoothing=smoothing,
                                              lambda1=lambdas[0], lambda2=lambdas[1])
        grown = (level_set > 0) & inside
        nucleus = nuclei[box] == index
        parts, _ = ndi.label(grown | nucleus)
        keep = np.isin(parts, np.unique(parts[nucleus | (start & grown)]))
        keep &= parts > 0
        refined[box][ndi.binary_fill_holes(keep) & inside] = index
    return refined


def cells_from_nuclei(
    image: Any,
    nuclei: Any,
    *,
    method: str = "watershed",
    params: CellParams | None = None,
    territory_px: int = 8,
    iterations: int = 20,
    smoothing: int = 1,
    lambda1: float = 1.0,
    lambda2: float = 8.0,
) -> np.ndarray:
    """One cell per nucleus, cell ``k`` containing nucleus ``k`` (see the module docstring).

    Parameters
    ----------
    image : (M, N) ndarray
        Bright inside cells: a cytoplasm stain (offset removed) or a cell probability.
    nuclei : (M, N) ndarray of int
        Seeds; each nucleus id becomes the id of its cell.
    method : {'watershed', 'active_contour'}
        Seeded watershed only, or refined per cell by Chan-Vese.
    params : CellParams, optional
        Watershed settings (:class:`~cellflow.ops.autolabel.CellParams`); for a probability
        plane pass ``CellParams(threshold=0.5, dilation_px=0)``.
    territory_px : int
        How far (pixels) the contour may move out of the watershed cell, >= 1.
    iterations, smoothing : int
        Chan-Vese iterations (>= 1) and smoothing steps per iteration.
    lambda1, lambda2 : float
        Chan-Vese weights of the inside and outside fits. ``lambda2`` well above
        ``lambda1`` asks for a uniform outside (the background) and lets the dim rim of a
        cell, far from the bright cytoplasm near its nucleus, stay inside; 8 was chosen on
        synthetic fields (seed 0) where 1 shrinks cells to their bright core.

    Returns
    -------
    cells : (M, N) ndarray of uint32

    Raises
    ------
    ValueError
        Shapes differ, or an option is out of range.

    Examples
    --------
    >>> yy, xx = np.mgrid[:40, :60]
    >>> image = ((yy - 20) ** 2 + (xx - 20) ** 2 < 144) * 50.0 + ((yy - 20) ** 2 + (xx - 42) ** 2 < 64) * 50.0
    >>> nuclei = np.zeros((40, 60), np.uint32); nuclei[19:22, 19:22] = 1; nuclei[19:22, 41:44] = 2
    >>> cells = cells_from_nuclei(image, nuclei, params=CellParams(dilation_px=0))
    >>> int(cells[20, 10]), int(cells[20, 47]), int(cells[2, 50])  # one cell per disc, none outside
    (1, 2, 0)
    """
    image, nuclei = _check(image, nuclei, method, territory_px, iterations)
    cells = np.asarray(segment_cells(image, nuclei, params=params)).astype(np.uint32)
    if method == "watershed":
        return cells
    refined = _refine(image, cells, nuclei, int(territory_px), int(iterations), int(smoothing),
                      (float(lambda1), float(lambda2)))
    return refined.astype(np.uint32)


def cytoplasm_targets(
    nuclei: np.ndarray, cells: np.ndarray, *, nucleus_weight: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Classes of the cytoplasm network: background 0, cytoplasm 1, nucleus 2, and weights.

    Nucleus pixels weigh ``nucleus_weight`` (nuclei are the seeds: missing one loses a
    cell); others 1.

    Examples
    --------
    >>> cells = np.array([[0, 3, 3, 3]]); nuclei = np.array([[0, 0, 3, 0]])
    >>> target, weights = cytoplasm_targets(nuclei, cells)
    >>> target.tolist(), weights.tolist()
    ([[0, 1, 2, 1]], [[1.0, 1.0, 2.0, 1.0]])
    """
    nuclei, cells = np.asarray(nuclei), np.asarray(cells)
    if nuclei.shape != cells.shape or nuclei.ndim != 2:
        raise ValueError(f"nuclei and cells must be 2-D labels of one shape, got {nuclei.shape} and {cells.shape}")
    target = np.where(nuclei > 0, 2, (cells > 0).astype(np.uint8)).astype(np.uint8)
    weights = np.where(target == 2, np.float32(nucleus_weight), np.float32(1.0)).astype(np.float32)
    return target, weights


def cells_from_probabilities(
    probabilities: Any,
    *,
    diameter_px: float | None = None,
    method: str = "watershed",
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and linked cells from the cytoplasm network's probabilities.

    Nuclei are :func:`~cellflow.ops.autolabel.segment_nuclei` of ``p(nucleus)`` at
    ``threshold`` (touching nuclei split by the distance transform); cells are
    :func:`cells_from_nuclei` of ``1 - p(background)`` at ``threshold``.

    Parameters
    ----------
    probabilities : (3, M, N) ndarray of float
        Classes as :data:`CYTOPLASM_CLASSES`.
    diameter_px : float, optional
        Expected nucleus diameter; estimated from ``p(nucleus)`` when None.
    method : {'watershed', 'active_contour'}
    threshold : float
        Probability threshold of the nuclei and of the cell foreground, in (0, 1).

    Returns
    -------
    nuclei, cells : (M, N) ndarray of uint32
        Cell ``k`` contains nucleus ``k``.

    Examples
    --------
    >>> p = np.zeros((3, 30, 30), np.float32); p[0] = 1
    >>> p[:, 5:25, 5:25] = np.array([0.0, 1.0, 0.0])[:, None, None]
    >>> p[:, 11:19, 11:19] = np.array([0.0, 0.0, 1.0])[:, None, None]
    >>> nuclei, cells = cells_from_probabilities(p, diameter_px=8)
    >>> int(nuclei.max()), int((cells == 1).sum())
    (1, 400)
    """
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.ndim != 3 or probabilities.shape[0] != len(CYTOPLASM_CLASSES):
        raise ValueError(f"probabilities must be ({len(CYTOPLASM_CLASSES)}, M, N) for classes "
                         f"{CYTOPLASM_CLASSES!r}, got shape {probabilities.shape}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    nucleus_params = NucleiParams(smoothing_px=0.0, threshold=threshold, edge_level=None)
    nuclei = np.asarray(segment_nuclei(probabilities[2], diameter_px=diameter_px, params=nucleus_params))
    cell_params = CellParams(threshold=threshold, dilation_px=0)
    cells = cells_from_nuclei(1.0 - probabilities[0], nuclei, method=method, params=cell_params)
    return nuclei.astype(np.uint32), cells
