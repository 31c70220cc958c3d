"""Cell-type classification by semantic segmentation (Van Valen et al. 2016).

A network classifies every pixel as background, boundary, or the interior of a cell of
type ``i`` (one interior class per type), from e.g. a nuclear and a phase/bright-field
channel. A cell's type is then read from its pixels: the mean probability of each
interior class over the cell (:func:`classify_cells`), and the type with the highest
mean. Targets are :func:`~cellflow.nn.targets.three_class_targets` with the interior
split by type (:func:`celltype_targets`).

:func:`~cellflow.nn.train.train` reads screen stores and trains two or three classes, so
the small in-memory loop here (:func:`train_semantic`) trains any number of classes on
arrays, with the package's models, augmentation and weighted cross-entropy; the
cytoplasm model of :mod:`cellflow.live.cytoplasm` uses it too.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from cellflow.nn.augment import AugmentParams, augment
from cellflow.nn.losses import weighted_cross_entropy
from cellflow.nn.models import SegmentationModel, build_model
from cellflow.nn.predict import whole_image_probabilities
from cellflow.nn.targets import three_class_targets
from cellflow.ops.postprocess import DictParams

__all__ = [
    "SemanticTrainParams",
    "celltype_classes",
    "celltype_targets",
    "classify_cells",
    "predict_probabilities",
    "train_semantic",
]

_BACKGROUND, _INTERIOR, _BOUNDARY = 0, 1, 2  # classes of three_class_targets


def celltype_classes(type_names: Sequence[str]) -> tuple[str, ...]:
    """Class names of the cell-type network: ``('background', 'boundary', 'interior_<type>', ...)``.

    Examples
    --------
    >>> celltype_classes(["A", "B"])
    ('background', 'boundary', 'interior_A', 'interior_B')
    """
    names = [str(n) for n in type_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"type_names must be distinct names, at least one, got {list(type_names)!r}")
    return ("background", "boundary", *(f"interior_{n}" for n in names))


def celltype_targets(
    labels: np.ndarray,
    cell_type: Mapping[int, int],
    *,
    n_types: int,
    boundary_px: int = 1,
    min_area: int = 25,
    boundary_weight: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel classes background 0, boundary 1, interior of type ``i`` ``2 + i``, and weights.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Cell (or nucleus) labels.
    cell_type : mapping of int to int
        Type index in ``[0, n_types)`` of every label present.
    n_types : int
        Number of types, >= 1.
    boundary_px, min_area : int
        As in :func:`~cellflow.nn.targets.three_class_targets`.
    boundary_weight : float
        Weight of boundary pixels (others weigh 1), > 0.

    Returns
    -------
    target : (M, N) ndarray of uint8
    weights : (M, N) ndarray of float32

    Raises
    ------
    ValueError
        A label has no type or a type out of range.

    Examples
    --------
    >>> labels = np.zeros((12, 20), np.int32); labels[1:11, 1:9] = 4; labels[1:11, 11:19] = 9
    >>> target, _ = celltype_targets(labels, {4: 0, 9: 1}, n_types=2, min_area=1)
    >>> int(target[5, 4]), int(target[5, 15]), int(target[1, 1]), int(target[5, 10])
    (2, 3, 1, 1)
    """
    ids = np.unique(labels[labels > 0])
    missing = [int(k) for k in ids if int(k) not in cell_type]
    if missing:
        raise ValueError(f"cell_type has no type for labels {missing[:10]!r}")
    bad = {k: v for k, v in cell_type.items() if not 0 <= v < n_types}
    if bad:
        raise ValueError(f"cell_type values must be in [0, {n_types}), got {bad!r}")
    base, _ = three_class_targets(labels, min_area=min_area, boundary_px=boundary_px, class_weights=(1, 1, 1))
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint8)
    for label, kind in cell_type.items():
        if 0 < label < lut.size:
            lut[label] = 2 + kind
    target = np.where(base == _INTERIOR, lut[labels], np.where(base == _BOUNDARY, 1, _BACKGROUND)).astype(np.uint8)
    weights = np.where(target == 1, np.float32(boundary_weight), np.float32(1.0)).astype(np.float32)
    return target, weights


@dataclass(frozen=True)
class SemanticTrainParams(DictParams):
    """Settings of :func:`train_semantic`.

    Parameters
    ----------
    model : str
        Registered model name (:data:`~cellflow.nn.models.MODELS`).
    model_options : mapping
        The model's options, e.g. ``{"width": 8, "levels": 2}``.
    crop_size, batch_size, steps : int
        Square crop side (a multiple of the model's down-sampling), crops per step, steps.
    learning_rate : float
        Adam's, > 0; decayed by cosine to 0 over the steps.
    flip : bool
        Random flips and 90-degree turns of the crops.
    seed : int

    Examples
    --------
    >>> params = SemanticTrainParams.from_dict({"steps": 10})
    >>> params.steps, SemanticTrainParams.from_dict(params.to_dict()) == params
    (10, True)
    """

    model: str = "unet"
    model_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"width": 8, "levels": 2}))
    crop_size: int = 48
    batch_size: int = 8
    steps: int = 200
    learning_rate: float = 3e-3
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_options", MappingProxyType(dict(self.model_options)))
        for name in ("crop_size", "batch_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"SemanticTrainParams.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.learning_rate, numbers.Real) or not self.learning_rate > 0:
            raise ValueError(f"SemanticTrainParams.learning_rate must be > 0, got {self.learning_rate!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        return {f.name: dict(getattr(self, f.name)) if f.name == "model_options" else getattr(self, f.name)
                for f in fields(self)}


def _check_training_data(images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                         weights: Sequence[np.ndarray], classes: int) -> None:
    if not images or not len(images) == len(targets) == len(weights):
        raise ValueError(f"images, targets and weights must be equally long and non-empty, got "
                         f"{len(images)}, {len(targets)}, {len(weights)}")
    channels = {np.asarray(im).shape[0] for im in images}
    for index, (image, target, weight) in enumerate(zip(images, targets, weights, strict=True)):
        if image.ndim != 3 or target.shape != image.shape[1:] or weight.shape != target.shape:
            raise ValueError(f"field {index}: image must be (C, M, N) and target and weights (M, N), got "
                             f"{image.shape}, {target.shape}, {weight.shape}")
        if int(target.max(initial=0)) >= classes:
            raise ValueError(f"field {index}: target holds class {int(target.max())}, but classes={classes}")
    if len(channels) != 1:
        raise ValueError(f"images must all have the same number of channels, got {sorted(channels)!r}")


def train_semantic(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    weights: Sequence[np.ndarray],
    *,
    classes: int,
    params: SemanticTrainParams | None = None,
) -> SegmentationModel:
    """Train a segmentation network on in-memory fields and per-pixel class targets.

    Each step draws ``batch_size`` seeded random crops (mirror-extended, flipped and turned
    when ``params.flip``), and minimises the weighted cross-entropy with Adam under a cosine
    schedule. The torch RNG is seeded inside :func:`torch.random.fork_rng`, so the caller's
    state is untouched and one seed gives one model on one torch build.

    Parameters
    ----------
    images : sequence of (C, M, N) ndarray of float32
        Normalised input fields.
    targets : sequence of (M, N) ndarray of int
        Classes in ``[0, classes)``.
    weights : sequence of (M, N) ndarray of float32
        Per-pixel loss weights.
    classes : int
        Number of output classes, >= 2.
    params : SemanticTrainParams, optional

    Returns
    -------
    SegmentationModel
        In eval mode, on the CPU.

    Raises
    ------
    ValueError
        Inconsistent shapes or classes out of range.
    """
    params = SemanticTrainParams() if params is None else params
    _check_training_data(images, targets, weights, classes)
    augment_params = AugmentParams(crop_size=params.crop_size, flip=params.flip, rotate90=params.flip,
                                   p_elastic=0.0, p_illumination=0.0, p_blur=0.0, p_intensity=0.0, p_noise=0.0)
    rng = np.random.default_rng(params.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        model = build_model(params.model, in_channels=images[0].shape[0], classes=classes, **params.model_options)
        if params.crop_size % model.downsampling:
            raise ValueError(f"SemanticTrainParams.crop_size must be a multiple of the model's down-sampling "
                             f"{model.downsampling}, got {params.crop_size}")
        optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, params.steps)
        model.train()
        for _ in range(params.steps):
            batch = [augment(images[i], (targets[i], weights[i]), augment_params, rng)
                     for i in rng.integers(len(images), size=params.batch_size)]
            x = torch.from_numpy(np.stack([b[0] for b in batch]))
            y = torch.from_numpy(np.stack([b[1][0] for b in batch]).astype(np.int64))
            w = torch.from_numpy(np.stack([b[1][1] for b in batch]).astype(np.float32))
            loss = weighted_cross_entropy(model(x), y, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def predict_probabilities(model: SegmentationModel, image: np.ndarray) -> np.ndarray:
    """``(classes, M, N)`` probabilities of one normalised ``(C, M, N)`` field (one forward pass)."""
    return whole_image_probabilities(model, np.asarray(image, np.float32))


def classify_cells(probabilities: np.ndarray, cells: np.ndarray, *, type_names: Sequence[str]) -> pd.DataFrame:
    """Per-cell type scores and the winning type from cell-type class probabilities.

    Parameters
    ----------
    probabilities : (2 + T, M, N) ndarray of float
        Classes as :func:`celltype_classes` orders them (background, boundary, one interior
        class per type).
    cells : (M, N) ndarray of int
        The cells to classify (from any segmentation).
    type_names : sequence of str
        The ``T`` type names.

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``label``, ``score_<type>`` (the mean probability of that type's
        interior class over the cell's pixels) and ``cell_type`` (the type of the highest score).

    Raises
    ------
    ValueError
        The shapes or the number of classes disagree.

    Examples
    --------
    >>> cells = np.array([[1, 1, 2, 2]])
    >>> p = np.array([[[0.1, 0.1, 0.1, 0.1]], [[0.1, 0.1, 0.1, 0.1]],
    ...               [[0.7, 0.5, 0.2, 0.3]], [[0.1, 0.3, 0.6, 0.5]]])
    >>> classify_cells(p, cells, type_names=["A", "B"]).round(2).values.tolist()
    [[1, 0.6, 0.2, 'A'], [2, 0.25, 0.55, 'B']]
    """
    names = celltype_classes(type_names)[2:]
    probabilities, cells = np.asarray(probabilities), np.asarray(cells)
    if probabilities.ndim != 3 or probabilities.shape[0] != 2 + len(names) or probabilities.shape[1:] != cells.shape:
        raise ValueError(f"probabilities must be (2 + {len(names)}, M, N) over cells of shape {cells.shape}, "
                         f"got {probabilities.shape}")
    ids = np.unique(cells[cells > 0])
    area = np.maximum(ndi.sum_labels(np.ones(cells.shape), cells, ids), 1)
    scores = np.stack([ndi.sum_labels(probabilities[2 + i], cells, ids) / area for i in range(len(names))], axis=1)
    table = pd.DataFrame({"label": ids.astype(np.int64)})
    for i, name in enumerate(names):
        table[f"score_{name[len('interior_'):]}"] = scores[:, i]
    winners = np.argmax(scores, axis=1) if ids.size else np.zeros(0, np.intp)
    table["cell_type"] = [str(type_names[i]) for i in winners]
    return table
