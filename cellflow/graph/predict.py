"""Predict stage: a trained network's class probabilities for every field -> ``probabilities``.

Graph (built lazily, nothing is read until it runs)::

    field ─ read the checkpoint's channels ─ z planes (mean / max / one / all) ─ normalise ─ tiles ─ write

One task per field (:func:`build_predict`). A task takes the model from its process's cache
(:data:`~cellflow.nn.predict.MODEL_CACHE`: one load per worker process and checkpoint), reads the
checkpoint's channels from ``images`` (C, Z, Y, X), reduces or stacks the z planes as
:attr:`PredictParams.z` says, normalises with the checkpoint's :class:`~cellflow.nn.normalize.Normalization`,
predicts tile by tile (:func:`~cellflow.nn.predict.predict_plane`) and writes
``probabilities`` (plate, well, site, t, class, y, x; float32; ``class`` labelled with the
checkpoint's class names).

Z planes. ``'mean'`` and ``'max'`` project each channel's planes; an int picks plane number
``z`` (position, not micrometres); ``'all'`` stacks every plane of every channel as input
channels, channel-major (``[c0 z0, c0 z1, ..., c1 z0, ...]``): a bright-field model trained on
3 planes has ``in_channels = 3`` and the checkpoint's channels name ``'BF'`` (once, or once per
plane). The checkpoint's distinct channel names times the planes must equal the model's inputs.

Padded fields (``extent_y`` / ``extent_x``): only the valid extent is normalised and
predicted; the padding stays 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dask.base import tokenize

from cellflow._config import check_keys
from cellflow.graph._stage import StageGraph, TaskResult, VariableSpec, field_tasks, guarded
from cellflow.metrics import field_extents, select_fields
from cellflow.nn.checkpoint import Checkpoint, load_checkpoint, store_channel
from cellflow.nn.normalize import normalize
from cellflow.nn.predict import WINDOWS, cached_model, predict_plane, set_worker_threads
from cellflow.ops.qc import check_planes
from cellflow.screen.store import FieldKey, Screen

__all__ = ["FieldPlan", "PredictParams", "build_predict", "field_probabilities", "plan_fields", "plan_tasks"]

_STAGE = "predict"
_OUTPUT = "probabilities"
_DIMS = ("plate", "well", "site", "t", "class", "y", "x")
_Z_MODES = ("mean", "max", "all")


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"PredictParams.{name} must be {expected}, got {value!r}")


def _positive_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(name, f"an int >= {minimum}" + (" or None" if optional else ""), value)
    return value


@dataclass(frozen=True)
class PredictParams:
    """Settings of the predict stage; validated here, trusted everywhere else.

    Parameters
    ----------
    model : str
        Path of the checkpoint (:func:`~cellflow.nn.checkpoint.save_checkpoint`).
    tile : int
        Side of a tile's kept window, >= 1 (see :func:`~cellflow.nn.predict.plan_tiles`).
    halo : int, optional
        Context around each tile, >= 0; None: the model's receptive radius (exact tiling).
    overlap : int, optional
        Overlap of adjacent tiles, >= 0; None: twice the halo, at most half the tile.
    window : {'cosine', 'linear', 'gaussian'}
        Blending window.
    batch_size : int
        Tiles per forward pass, >= 1.
    device : str
        Torch device of the workers, e.g. ``'cpu'`` or ``'cuda'``.
    amp : bool
        bfloat16 autocast (GPU).
    channels_last : bool
        Channels-last memory layout (default): faster convolutions on GPU and, with
        oneDNN, about 2x on CPU too (``benchmarks/tiled_vs_monai.py``).
    threads : int, optional
        Torch CPU threads per worker process; None: cores / tasks per worker inside a
        distributed worker, torch's default elsewhere (:func:`~cellflow.nn.predict.set_worker_threads`).
    z : {'mean', 'max', 'all'} or int
        How z planes become the model's input (see the module docstring).

    Raises
    ------
    ValueError
        A value is out of range; the message names the field.

    Examples
    --------
    >>> params = PredictParams(model="models/nuclei.pt", tile=256, z="all")
    >>> PredictParams.from_dict(params.to_dict()) == params
    True
    """

    model: str
    tile: int = 512
    halo: int | None = None
    overlap: int | None = None
    window: str = "cosine"
    batch_size: int = 4
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = True
    threads: int | None = None
    z: str | int = "mean"

    def __post_init__(self) -> None:
        if not isinstance(self.model, (str, Path)) or not str(self.model).strip():
            raise _fail("model", "the path of a checkpoint", self.model)
        object.__setattr__(self, "model", str(self.model))
        _positive_int("tile", self.tile, 1)
        _positive_int("halo", self.halo, 0, optional=True)
        _positive_int("overlap", self.overlap, 0, optional=True)
        _positive_int("batch_size", self.batch_size, 1)
        _positive_int("threads", self.threads, 1, optional=True)
        if self.window not in WINDOWS:
            raise _fail("window", f"one of {WINDOWS!r}", self.window)
        if not isinstance(self.device, str) or not self.device.strip():
            raise _fail("device", "a torch device such as 'cpu' or 'cuda'", self.device)
        for name in ("amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "True or False", getattr(self, name))
        z_ok = self.z in _Z_MODES if isinstance(self.z, str) else (
            isinstance(self.z, int) and not isinstance(self.z, bool) and self.z >= 0)
        if not z_ok:
            raise _fail("z", f"one of {_Z_MODES!r} or a plane number >= 0", self.z)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict; :meth:`from_dict` inverts it."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictParams:
        """Params from :meth:`to_dict` output (or a YAML spec), naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


@dataclass(frozen=True)
class FieldPlan:
    """What one field's task needs besides the screen and the params, fixed on the client."""

    key: FieldKey
    channels: tuple[str, ...]  # distinct checkpoint channels, in order
    extent: tuple[int, int] | None


# ---------------------------------------------------------------------------- client side
def _input_channels(screen: Screen, params: PredictParams, checkpoint: Checkpoint) -> tuple[str, ...]:
    """The checkpoint's distinct channels, checked against the store and the model's inputs."""
    available = [str(c) for c in screen.coords()["c"]]
    wanted = [store_channel(c) for c in checkpoint.channels]  # 'BF@z1' (stacked planes) reads 'BF'
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(f"model {params.model} needs channels {list(checkpoint.channels)!r}, but {missing!r} "
                         f"are not in {screen.path}, which has {available!r}")
    distinct = tuple(dict.fromkeys(wanted))
    planes = len(screen.coords()["z"])
    if isinstance(params.z, int) and params.z >= planes:
        raise ValueError(f"PredictParams.z is plane {params.z}, but {screen.path} has {planes} z planes")
    inputs = len(distinct) * planes if params.z == "all" else len(checkpoint.channels)
    if params.z != "all" and len(distinct) != len(wanted):
        raise ValueError(f"model {params.model} lists channels {list(checkpoint.channels)!r} more than once; "
                         "that means z planes as channels: use PredictParams.z='all'")
    if inputs != checkpoint.model.in_channels:
        raise ValueError(f"model {params.model} takes {checkpoint.model.in_channels} input channels, but "
                         f"z={params.z!r} gives {inputs} from channels {list(distinct)!r} with {planes} z planes "
                         f"of {screen.path}")
    return distinct


def _check_classes(screen: Screen, checkpoint: Checkpoint) -> None:
    stored = screen.coords().get("class")
    if stored is not None and [str(c) for c in stored] != list(checkpoint.class_names):
        raise ValueError(f"{screen.path} already has probabilities of classes {[str(c) for c in stored]!r}; "
                         f"the model predicts {list(checkpoint.class_names)!r}")


def plan_fields(screen: Screen, params: PredictParams,
                fields: Iterable[FieldKey] | None = None) -> tuple[Checkpoint, tuple[FieldPlan, ...]]:
    """Client side of a per-field prediction: the checkpoint (names and sizes; nothing is
    built) and one :class:`FieldPlan` per field, after checking the model against the store.

    Raises
    ------
    As :func:`build_predict`, except for the classes check.
    """
    checkpoint = load_checkpoint(params.model)
    channels = _input_channels(screen, params, checkpoint)
    extents = field_extents(screen)
    return checkpoint, tuple(FieldPlan(key, channels, extents.get(key)) for key in select_fields(screen, fields))


def build_predict(screen: Screen, params: PredictParams, *, after: StageGraph | None = None,
                  fields: Iterable[FieldKey] | None = None) -> StageGraph:
    """Lazy tasks that predict every field's class probabilities with a trained network.

    Parameters
    ----------
    screen : Screen
    params : PredictParams
    after : StageGraph, optional
        Upstream stage; each field's task waits for that field's upstream task.
    fields : iterable of (plate, well, site, t), optional
        Fields to predict; default every acquired field.

    Returns
    -------
    StageGraph
        ``probabilities``, float32 with dims (plate, well, site, t, class, y, x); one task per
        field, each returning a :class:`TaskResult` with its chunk records and one row.

    Raises
    ------
    FileNotFoundError, CheckpointError
        The model file is missing or unusable.
    ValueError
        The model's channels are not in the store or do not match its inputs, or the store
        holds probabilities of other classes.
    RegionError
        A field is not in the screen.
    """
    checkpoint, plans = plan_fields(screen, params, fields)
    _check_classes(screen, checkpoint)
    output = VariableSpec(
        _OUTPUT, _DIMS, "float32", coords={"class": list(checkpoint.class_names)},
        attrs={"description": "class probabilities of a trained network (softmax, tiled and blended)",
               "model_sha256": checkpoint.sha256,
               # how the model's training turned these into labels: the labels stage's default
               "postprocess": dict(checkpoint.metadata.get("params", {}).get("postprocess") or {})},
    )
    return plan_tasks(_STAGE, _predict_field, screen, params, plans, checkpoint, (output,), after)


def plan_tasks(stage: str, task: Callable[..., TaskResult], screen: Screen, params: Any,
               plans: Iterable[FieldPlan], checkpoint: Checkpoint, outputs: tuple[VariableSpec, ...],
               after: StageGraph | None) -> StageGraph:
    """One ``task(screen, params, plan, *upstream)`` per field plan, named by the stage, the
    store, the params and the checkpoint's hash, each after its field's upstream task."""
    token = tokenize(str(screen.path), params.to_dict(), checkpoint.sha256)
    by_field = field_tasks(stage, token, task, {plan.key: (screen, params, plan) for plan in plans}, after)
    return StageGraph(stage, outputs, tuple(by_field.values()), by_field)


# ---------------------------------------------------------------------------- task body
def field_input(screen: Screen, key: FieldKey, channels: Iterable[str], z: str | int,
                extent: tuple[int, int] | None = None) -> np.ndarray:
    """A field's raw network input (C, Y, X) float32, before normalisation; cropped to ``extent``.

    Channels are read in order, each (Z, Y, X), and their planes reduced (``'mean'``,
    ``'max'``), picked (an int) or stacked (``'all'``, channel-major).
    """
    crop = (Ellipsis, slice(0, extent[0]), slice(0, extent[1])) if extent else (Ellipsis,)
    stacks = []
    for channel in channels:
        planes = screen.read("images", plate=key.plate, well=key.well, site=key.site, t=key.t, c=channel)[crop]
        check_planes(planes, what=f"field {key.plate}/{key.well}/{key.site}/{key.t:g} channel {channel!r}")
        planes = planes.astype(np.float32)
        if z == "mean":
            stacks.append(planes.mean(axis=0, keepdims=True))
        elif z == "max":
            stacks.append(planes.max(axis=0, keepdims=True))
        elif z == "all":
            stacks.append(planes)
        else:
            stacks.append(planes[int(z)][None])
    return np.concatenate(stacks, axis=0)


def field_probabilities(screen: Screen, params: PredictParams, plan: FieldPlan) -> tuple[np.ndarray, Checkpoint]:
    """One field's class probabilities (classes, extent) with this process's cached model.

    Runs in a worker: sets the torch threads, takes the model from the per-process cache,
    reads and normalises the field's input and predicts it tile by tile.
    """
    set_worker_threads(params.threads)
    model, checkpoint = cached_model(params.model, device=params.device, channels_last=params.channels_last)
    image = normalize(field_input(screen, plan.key, plan.channels, params.z, plan.extent), checkpoint.normalization)
    probabilities = predict_plane(
        model, image, tile=params.tile, halo=params.halo, overlap=params.overlap, batch_size=params.batch_size,
        window=params.window, device=params.device, amp=params.amp, channels_last=params.channels_last,
    )
    return probabilities, checkpoint


@guarded(_STAGE)
def _predict_field(screen: Screen, params: PredictParams, plan: FieldPlan, *_upstream: Any) -> TaskResult:
    """Task: predict one field and write its probabilities."""
    probabilities, checkpoint = field_probabilities(screen, params, plan)
    key = plan.key
    full = np.zeros((len(checkpoint.class_names), *screen.layout.shape_yx), np.float32)
    full[:, : probabilities.shape[1], : probabilities.shape[2]] = probabilities
    where = key._asdict()
    records = screen.write(_OUTPUT, full, **where)
    row = {**where, "model_sha256": checkpoint.sha256, "height": probabilities.shape[1],
           "width": probabilities.shape[2]}
    return TaskResult(stage=_STAGE, field=key, records=tuple(records), rows=(row,))
