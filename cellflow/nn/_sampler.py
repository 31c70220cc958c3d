"""Training samples drawn lazily from screen stores: one field read once, crops drawn per batch.

A :class:`FieldSampler` holds the fields it may draw from; the first time a field is needed
it reads the field's channels and target labels with :meth:`Screen.read`, crops them to the
field's extent (when the store records ``extent_y`` / ``extent_x``), normalises the image,
computes the class targets and weight map, and keeps all of it. Each batch then draws, from
the one :class:`numpy.random.Generator` it is given, a field per sample and a mirror-extended
random crop with augmentation (:func:`~cellflow.nn.augment.augment`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellflow.metrics import field_extents
from cellflow.nn.augment import AugmentParams, augment
from cellflow.nn.normalize import Normalization, normalize
from cellflow.nn.targets import ignore_suspect_objects, suspect_objects, three_class_targets, two_class_targets
from cellflow.screen.store import FieldKey, Screen

if TYPE_CHECKING:
    from cellflow.nn.train import TrainParams

__all__ = ["FieldData", "FieldRef", "FieldSampler", "as_screens", "input_planes", "read_field", "split_fields"]


@dataclass(frozen=True)
class FieldRef:
    """One field of one screen store."""

    screen: Screen
    key: FieldKey

    @property
    def record(self) -> list[Any]:
        """JSON-able identity: ``[screen_id, plate, well, site, t]``."""
        return [self.screen.screen_id, *self.key]


@dataclass(frozen=True, eq=False)
class FieldData:
    """A field ready for training or validation (cropped to its extent)."""

    image: np.ndarray  # (C, M, N) float32, normalised
    labels: np.ndarray  # (M, N) target label image
    target: np.ndarray  # (M, N) uint8 classes
    weights: np.ndarray  # (M, N) float32


def input_planes(screen: Screen, channels: Sequence[str], z: str) -> int:
    """Network input channels for ``channels`` of ``screen``: one per channel, times the z planes for ``z='all'``.

    Raises
    ------
    ValueError
        A channel is not in the store (the message lists the store's channels).
    """
    known = [str(c) for c in screen.coords()["c"]]
    missing = [c for c in channels if c not in known]
    if missing:
        raise ValueError(f"TrainParams.channels {missing!r} are not channels of {screen.path}; it has {known!r}")
    return len(channels) * (len(screen.coords()["z"]) if z == "all" else 1)


def _extent_crop(ref: FieldRef, extents: dict[FieldKey, tuple[int, int]]) -> tuple[slice, slice]:
    if ref.key in extents:
        ey, ex = extents[ref.key]
        return slice(0, ey), slice(0, ex)
    return slice(None), slice(None)


def read_field(ref: FieldRef, *, channels: Sequence[str], z: str, variable: str,
               extents: dict[FieldKey, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The raw ``(C, M, N)`` input image and the ``(M, N)`` labels of ``variable``, cropped to the extent.

    ``z='mean'`` averages the z planes of each channel; ``z='all'`` stacks them as channels
    (channel-major: channel 0's planes first).
    """
    where = ref.key._asdict()
    images = ref.screen.read("images", **where)  # (c, z, y, x)
    known = [str(c) for c in ref.screen.coords()["c"]]
    stack = images[[known.index(c) for c in channels]].astype(np.float32)
    planes = stack.mean(axis=1) if z == "mean" else stack.reshape(-1, *stack.shape[-2:])
    labels = ref.screen.read(variable, **where)
    crop = _extent_crop(ref, extents)
    return planes[(slice(None), *crop)], labels[crop]


class FieldSampler:
    """Fields prepared once and cached; seeded augmented crops drawn from them.

    Parameters
    ----------
    fields : sequence of FieldRef
    channels : sequence of str
    z : {'mean', 'all'}
    variable : str
        Label variable the class targets are computed from.
    classes : {2, 3}
    min_area : int
        Objects smaller than this become background in the targets.
    normalization : Normalization
        Applied to each whole field (after the extent crop).
    """

    def __init__(self, fields: Sequence[FieldRef], *, channels: Sequence[str], z: str, variable: str,
                 classes: int, min_area: int, normalization: Normalization,
                 ignore_area_ratio: float | None = None, ignore_solidity: float | None = None) -> None:
        self.fields = tuple(fields)
        self._channels = tuple(channels)
        self._z = z
        self._variable = variable
        self._classes = classes
        self._min_area = min_area
        self._normalization = normalization
        self._ignore = (ignore_area_ratio, ignore_solidity)
        self._cache: dict[int, FieldData] = {}
        self._extents: dict[Screen, dict[FieldKey, tuple[int, int]]] = {}
        #: Chance of drawing each field for a crop (sums to 1); None: uniform.
        self.probabilities: np.ndarray | None = None

    def _screen_extents(self, screen: Screen) -> dict[FieldKey, tuple[int, int]]:
        if screen not in self._extents:
            self._extents[screen] = field_extents(screen)
        return self._extents[screen]

    def field(self, index: int) -> FieldData:
        """Field ``index``, read and prepared on first use."""
        if index not in self._cache:
            ref = self.fields[index]
            raw, labels = read_field(ref, channels=self._channels, z=self._z, variable=self._variable,
                                     extents=self._screen_extents(ref.screen))
            if self._classes == 3:
                target, weights = three_class_targets(labels, min_area=self._min_area)
            else:
                target, weights = two_class_targets(labels, min_area=self._min_area)
            if self._ignore != (None, None):  # suspect auto labels (merges) are left out of the loss
                suspects = suspect_objects(labels, area_ratio=self._ignore[0], solidity=self._ignore[1])
                weights = ignore_suspect_objects(weights, labels, suspects)
            image = normalize(raw, self._normalization)
            self._cache[index] = FieldData(image=image, labels=labels, target=target, weights=weights)
        return self._cache[index]

    def batch(self, rng: np.random.Generator, *, size: int, crop_size: int,
              params: AugmentParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``size`` augmented crops: images (B, C, h, w) float32, targets (B, h, w) int64, weights (B, h, w) float32."""
        params = replace(params, crop_size=crop_size)
        images, targets, weights = [], [], []
        for _ in range(size):
            if self.probabilities is None:
                index = int(rng.integers(len(self.fields)))
            else:
                index = int(rng.choice(len(self.fields), p=self.probabilities))
            data = self.field(index)
            image, (target, weight) = augment(data.image, (data.target, data.weights), params, rng)
            images.append(image)
            targets.append(target.astype(np.int64))
            weights.append(weight)
        return np.stack(images), np.stack(targets), np.stack(weights)


# ---------------------------------------------------------------------------- fields
def as_screens(screen_or_screens: Screen | str | Path | Sequence[Screen | str | Path]) -> list[Screen]:
    items = [screen_or_screens] if isinstance(screen_or_screens, (Screen, str, Path)) else list(screen_or_screens)
    if not items:
        raise ValueError("train: screen_or_screens must name at least one screen store, got none")
    return [item if isinstance(item, Screen) else Screen.open(item) for item in items]


def _matches(ref: FieldRef, wells: Sequence[str] | None, sites: Sequence[int] | None) -> bool:
    return (wells is None or ref.key.well in wells) and (sites is None or ref.key.site in sites)


def split_fields(screens: Sequence[Screen], params: TrainParams) -> tuple[list[FieldRef], list[FieldRef]]:
    """(training, validation) fields of ``screens``: disjoint, each non-empty.

    Raises
    ------
    ValueError
        The selection leaves no training or no validation field.
    """
    every = [FieldRef(screen, key) for screen in screens for key in screen.fields()]
    if params.validation_wells is not None or params.validation_sites is not None:
        held = [_matches(ref, params.validation_wells, params.validation_sites) for ref in every]
    else:
        rng = np.random.default_rng([params.seed, 1])  # its own stream: the split does not move the crops
        count = max(1, round(params.validation_fraction * len(every)))
        chosen = set(rng.permutation(len(every))[:count].tolist()) if len(every) > 1 else set()
        held = [i in chosen for i in range(len(every))]
    validation = [ref for ref, h in zip(every, held, strict=True) if h]
    training = [ref for ref, h in zip(every, held, strict=True)
                if not h and _matches(ref, params.train_wells, params.train_sites)]
    if not training or not validation:
        raise ValueError(
            f"TrainParams field selection gives {len(training)} training and {len(validation)} validation "
            f"fields out of {len(every)}; both need at least one (check train_wells/train_sites, "
            "validation_wells/validation_sites, validation_fraction)"
        )
    return training, validation
