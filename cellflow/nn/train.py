"""Training a segmentation network on screen stores, validated by object-level F1 each epoch.

:func:`train` draws seeded, augmented mirror-extended crops from the training fields
(:mod:`cellflow.nn._sampler`), minimises the weighted cross-entropy of the class targets
(:func:`~cellflow.nn.targets.three_class_targets` or
:func:`~cellflow.nn.targets.two_class_targets`, whose weight maps carry the class
weights), and after every epoch segments each held-out validation field whole (reflect-padded
to a multiple of the network's down-sampling, then
:func:`~cellflow.ops.postprocess.probabilities_to_labels`) and scores it against the truth
with :func:`~cellflow.metrics.score_field`. The mean F1 over IoU thresholds (Caicedo et al.
2019), averaged over the validation fields, drives early stopping and picks the checkpoint.

Determinism. On the CPU, one seed gives the same history and the same weights: the
weights are initialised from ``torch`` seeded inside :func:`torch.random.fork_rng` (the
caller's global RNG is left as it was), every sample comes from one
:class:`numpy.random.Generator`, and ``torch.use_deterministic_algorithms(True)`` is set for
the run and restored afterwards. Results depend on the torch build and the number of
threads. On CUDA (with bf16 autocast) deterministic algorithms are not forced, since several
CUDA kernels have no deterministic version and cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set
before the process starts: GPU runs are seeded but not bit-reproducible.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from cellflow._config import check_keys
from cellflow._files import write_text_atomic
from cellflow.metrics import score_field
from cellflow.nn._sampler import FieldRef, FieldSampler, as_screens, input_planes, split_fields
from cellflow.nn.augment import AugmentParams
from cellflow.nn.checkpoint import save_checkpoint, stack_channel_names
from cellflow.nn.losses import weighted_cross_entropy
from cellflow.nn.models import ModelConfig, SegmentationModel
from cellflow.nn.normalize import Normalization
from cellflow.nn.targets import THREE_CLASSES, TWO_CLASSES
from cellflow.ops.postprocess import DictParams, PostprocessParams, probabilities_to_labels
from cellflow.screen.store import Screen

__all__ = ["OPTIMIZERS", "SCHEDULES", "EpochRecord", "TrainParams", "TrainResult", "split_fields", "train"]

OPTIMIZERS = ("adam", "rmsprop")
SCHEDULES = ("none", "step", "cosine")
_Z_MODES = ("mean", "all")
_DEVICES = ("cpu", "cuda")
_NESTED: dict[str, type[DictParams]] = {
    "normalization": Normalization, "augment": AugmentParams, "postprocess": PostprocessParams,
}


def _fail(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"TrainParams.{name} must be {expected}, got {value!r}")


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def _choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise _fail(name, f"one of {tuple(choices)!r}", value)


def _names(name: str, value: Any, *, allow_none: bool) -> tuple[str, ...] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value \
            or not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise _fail(name, "a non-empty list of distinct names", value)
    return tuple(value)


def _sites(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise _fail(name, "a non-empty list of site numbers", value)
    return tuple(_int(name, v, 0) for v in value)


@dataclass(frozen=True)
class TrainParams:
    """How to train: model, data, targets, augmentation, optimisation and validation split.

    Parameters
    ----------
    model : str
        A registered model name (:data:`~cellflow.nn.models.MODELS`). Default ``'resunet'``.
    model_options : mapping
        The model's keyword options (e.g. ``{"width": 8}``); input channels and classes
        come from ``channels``/``z`` and ``classes``.
    channels : sequence of str
        Input channels, by name in the store (``["DNA"]``, ``["BF"]``).
    z : {'mean', 'all'}
        Average the z planes of each channel, or stack them as channels (e.g. a 3-plane
        bright-field stack gives 3 input channels).
    target : str
        Label variable the class targets are computed from (``truth_nuclei``, or an
        auto-generated ``labels_nuclei``).
    truth : str
        Label variable validation is scored against; the ``target`` when the store lacks it.
    classes : {2, 3}
        Background/interior(/boundary) targets.
    min_area : int
        Objects smaller than this (pixels) become background in the targets.
    normalization, augment, postprocess : Normalization, AugmentParams, PostprocessParams
        Input normalisation (per whole field), augmentation (its ``crop_size`` must be
        None: the crop is ``crop_size`` below) and validation post-processing (default
        ``shrink_px=1``, undoing the three-class targets' outer boundary band; it is stored
        in the checkpoint and is what the ``labels`` and ``segment`` stages use by default).
    crop_size : int
        Side of the square training crops; a multiple of the model's down-sampling.
    batch_size, epochs, steps_per_epoch : int
    optimizer : {'adam', 'rmsprop'}
        RMSprop as in Sadanandan et al. 2017, or Adam.
    learning_rate, weight_decay : float
    schedule : {'none', 'step', 'cosine'}
        Learning-rate schedule per step: constant; x0.1 at 1/3 and 2/3 of the epochs;
        cosine decay to 0 over all steps.
    patience : int or None
        Stop after this many epochs without a better validation F1; None never stops early.
    seed : int
    train_wells, train_sites : sequence or None
        Restrict training to these wells / sites (after the validation fields are removed).
    validation_wells, validation_sites : sequence or None
        The validation fields are those in these wells and sites; when both are None, a
        seeded ``validation_fraction`` of all fields (at least one).
    validation_fraction : float
        In (0, 1).
    device : {'cpu', 'cuda'}
        ``'cuda'`` trains with bf16 autocast.
    init_from : str, optional
        A checkpoint of the same architecture to start from (fine-tuning), else a
        seeded random initialisation.
    ignore_area_ratio, ignore_solidity : float, optional
        Training on auto labels: objects larger than ``ignore_area_ratio`` × the field's
        median area, or less solid than ``ignore_solidity``, are likely merges and are left
        out of the loss with a 2-pixel margin (:func:`~cellflow.nn.targets.suspect_objects`).
        Validation is unaffected.
    screen_weights : sequence of float, optional
        Share of the training crops drawn from each screen, in the order the screens are
        given (e.g. ``[1, 1]``: half from a few real fields, half from many synthetic ones);
        weights need not sum to 1. None: every training field is equally likely.

    Raises
    ------
    ValueError
        A field is out of range; the message names it.

    Examples
    --------
    >>> params = TrainParams(channels=["DNA"], model_options={"width": 4}, epochs=2)
    >>> TrainParams.from_dict(params.to_dict()) == params
    True
    """

    model: str = "resunet"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    channels: Sequence[str] = ("DNA",)
    z: str = "mean"
    target: str = "truth_nuclei"
    truth: str = "truth_nuclei"
    classes: int = 3
    min_area: int = 25
    normalization: Normalization = field(default_factory=Normalization)
    augment: AugmentParams = field(default_factory=AugmentParams)
    #: Three classes: the targets' boundary band runs one pixel outside each contour, so the
    #: validation (and, through the checkpoint, every later use) shrinks objects by it.
    postprocess: PostprocessParams = field(default_factory=lambda: PostprocessParams(shrink_px=1))
    crop_size: int = 256
    batch_size: int = 8
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    epochs: int = 50
    steps_per_epoch: int = 100
    patience: int | None = 10
    seed: int = 0
    train_wells: Sequence[str] | None = None
    train_sites: Sequence[int] | None = None
    validation_wells: Sequence[str] | None = None
    validation_sites: Sequence[int] | None = None
    validation_fraction: float = 0.25
    device: str = "cpu"
    init_from: str | None = None
    ignore_area_ratio: float | None = None
    ignore_solidity: float | None = None
    screen_weights: Sequence[float] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        _choice("classes", self.classes, (2, 3))
        try:  # checks the name and options (in_channels is fixed by the data at train time)
            config = ModelConfig(self.model, 1, self.classes, self.model_options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"TrainParams.model / model_options: {error}") from None
        set_(self, "model_options", MappingProxyType(dict(config.options)))
        set_(self, "channels", _names("channels", self.channels, allow_none=False))
        _choice("z", self.z, _Z_MODES)
        for name in ("target", "truth"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _fail(name, "a label variable name", getattr(self, name))
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise _fail(name, f"a {cls.__name__}", getattr(self, name))
        if self.augment.crop_size is not None:
            raise _fail("augment.crop_size", "None (set TrainParams.crop_size instead)", self.augment.crop_size)
        for name, minimum in (("min_area", 0), ("crop_size", 8), ("batch_size", 1), ("epochs", 1),
                              ("steps_per_epoch", 1), ("seed", 0)):
            set_(self, name, _int(name, getattr(self, name), minimum))
        if self.patience is not None:
            set_(self, "patience", _int("patience", self.patience, 1))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, _DEVICES)
        self._check_rates()
        self._check_split()
        self._check_screen_weights()

    def _check_screen_weights(self) -> None:
        weights = self.screen_weights
        if weights is None:
            return
        expected = "None or a non-empty list of finite numbers >= 0, not all 0"
        if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence) or not weights:
            raise _fail("screen_weights", expected, weights)
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
                raise _fail("screen_weights", expected, weights)
        if not any(weights):
            raise _fail("screen_weights", expected, weights)
        object.__setattr__(self, "screen_weights", tuple(float(w) for w in weights))

    def _check_rates(self) -> None:
        for name, low_open in (("learning_rate", True), ("weight_decay", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value < 0 or (low_open and value == 0):
                raise _fail(name, "a finite number > 0" if low_open else "a finite number >= 0", value)
            object.__setattr__(self, name, float(value))
        fraction = self.validation_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
            raise _fail("validation_fraction", "a number in (0, 1)", fraction)
        object.__setattr__(self, "validation_fraction", float(fraction))
        for name, low in (("ignore_area_ratio", 1.0), ("ignore_solidity", 0.0)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value <= (
                    math.inf if name == "ignore_area_ratio" else 1.0):
                raise _fail(name, "None or a number > 1" if low else "None or a number in (0, 1]", value)
            object.__setattr__(self, name, float(value))

    def _check_split(self) -> None:
        set_ = object.__setattr__
        for name in ("train_wells", "validation_wells"):
            set_(self, name, _names(name, getattr(self, name), allow_none=True))
        for name in ("train_sites", "validation_sites"):
            set_(self, name, _sites(name, getattr(self, name)))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def model_config(self, in_channels: int) -> ModelConfig:
        """The network's config for ``in_channels`` input channels."""
        return ModelConfig(self.model, in_channels, self.classes, self.model_options)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-able dict (nested params as dicts, sequences as lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NESTED:
                value = value.to_dict()
            elif f.name == "model_options":
                value = ModelConfig(self.model, 1, self.classes, value).to_dict()["options"]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return json.loads(json.dumps(out))  # tuples inside nested params become lists too

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainParams:
        """Params from :meth:`to_dict` output or a YAML spec, naming unknown keys."""
        check_keys(cls, data)
        values = dict(data)
        for name, nested in _NESTED.items():
            if isinstance(values.get(name), Mapping):
                values[name] = nested.from_dict(values[name])
        return cls(**values)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, validation F1 (mean over fields), learning rate at its end."""

    epoch: int
    loss: float
    val_f1: float
    learning_rate: float
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    ``checkpoint`` holds the weights of ``best_epoch`` (1-based); ``initial_f1`` is the
    validation F1 of the untrained network, the baseline the history is read against.
    """

    checkpoint: Path
    sha256: str
    history: tuple[EpochRecord, ...]
    best_epoch: int
    best_f1: float
    initial_f1: float
    train_fields: tuple[tuple[Any, ...], ...]
    validation_fields: tuple[tuple[Any, ...], ...]


# ---------------------------------------------------------------------------- validation
def _pad_to(image: np.ndarray, factor: int) -> np.ndarray:
    pad = [(0, 0)] + [(0, -n % factor) for n in image.shape[-2:]]
    return np.pad(image, pad, mode="reflect" if min(image.shape[-2:]) > factor else "symmetric")


@torch.no_grad()
def _validation_f1(model: SegmentationModel, sampler: FieldSampler, truths: Sequence[np.ndarray],
                   params: TrainParams, device: torch.device) -> float:
    """Mean over the fields of the F1 averaged over IoU thresholds, each field segmented whole."""
    model.eval()
    scores = []
    for index, truth in enumerate(truths):
        image = sampler.field(index).image
        padded = torch.from_numpy(_pad_to(image, model.downsampling))[None].to(device)
        with _autocast(device):
            logits = model(padded)
        probabilities = torch.softmax(logits.float(), dim=1)[0, :, : image.shape[1], : image.shape[2]]
        labels = probabilities_to_labels(probabilities.cpu().numpy(), params.postprocess)
        scores.append(score_field(truth, labels).f1_mean)
    model.train()
    return float(np.mean(scores))


# ---------------------------------------------------------------------------- optimisation
def _autocast(device: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _optimizer(model: torch.nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)


def _lr_factor(params: TrainParams) -> Callable[[int], float]:
    """Learning-rate multiplier of step ``s`` (0-based) for the schedule."""
    total = params.epochs * params.steps_per_epoch
    if params.schedule == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
    if params.schedule == "step":
        return lambda s: 0.1 ** min(2, (3 * s) // total)
    return lambda s: 1.0


@contextmanager
def _reproducible(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG; deterministic algorithms on the CPU (restored on exit)."""
    previous = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)


def _device(params: TrainParams) -> torch.device:
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("TrainParams.device is 'cuda' but torch sees no CUDA device; use device='cpu'")
    return torch.device(params.device)


# ---------------------------------------------------------------------------- the loop
def _metadata(params: TrainParams, model: SegmentationModel, screens: Sequence[Screen],
              training: Sequence[FieldRef], validation: Sequence[FieldRef]) -> dict[str, Any]:
    train_records = [ref.record for ref in training]
    val_records = [ref.record for ref in validation]
    digest = hashlib.sha256(json.dumps([train_records, val_records]).encode()).hexdigest()
    return {
        "architecture": model.config.to_dict(),
        "channels": list(params.channels), "z": params.z, "classes": params.classes,
        "normalization": params.normalization.to_dict(),
        "receptive_field": model.receptive_field, "receptive_radius": model.receptive_radius,
        "downsampling": model.downsampling,
        "data": {"screens": [{"screen_id": s.screen_id, "path": str(s.path)} for s in screens],
                 "train_fields": train_records, "validation_fields": val_records, "fields_sha256": digest},
        "params": params.to_dict(), "seed": params.seed, "torch_version": torch.__version__,
    }


def _load_initial_weights(model: SegmentationModel, path: str) -> None:
    """Start from a checkpoint's weights (fine-tuning); its architecture must be the model's."""
    from cellflow.nn.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    if checkpoint.model.to_dict() != model.config.to_dict():
        raise _fail("init_from", f"a checkpoint of the same architecture {model.config.to_dict()!r}",
                    f"{path} ({checkpoint.model.to_dict()!r})")
    model.load_state_dict(dict(checkpoint.state_dict))


def _checked_crop(params: TrainParams, model: SegmentationModel) -> None:
    if params.crop_size % model.downsampling:
        raise _fail("crop_size", f"a multiple of the model's down-sampling factor {model.downsampling}",
                    params.crop_size)


def train(
    screen_or_screens: Screen | str | Path | Sequence[Screen | str | Path],
    params: TrainParams,
    *,
    out: str | Path,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a network on screen stores; keep the checkpoint of the best validation F1.

    Parameters
    ----------
    screen_or_screens : Screen, path, or a sequence of them
        Stores to draw training and validation fields from (fields of all of them pooled).
    params : TrainParams
    out : str or Path
        Folder for ``model.pt`` (the best checkpoint, replaced as it improves) and
        ``history.json``.
    log : callable, optional
        Called with one line of text per epoch.

    Returns
    -------
    TrainResult
        Checkpoint path and SHA-256, per-epoch history, best epoch and F1, the untrained
        network's F1, and the fields used.

    Raises
    ------
    ValueError
        A channel or label variable is not in a store (naming what it has), the field
        selection is empty, ``crop_size`` does not suit the model, or CUDA is missing.
    """
    started = time.perf_counter()
    screens = as_screens(screen_or_screens)
    planes = {input_planes(screen, params.channels, params.z) for screen in screens}
    if len(planes) != 1:
        raise ValueError(f"train: the screens give different numbers of input planes {sorted(planes)!r}")
    for screen in screens:
        if params.target not in screen.variables:
            raise ValueError(f"TrainParams.target {params.target!r} is not a variable of {screen.path}; "
                             f"it has {list(screen.variables)!r}")
    training, validation = split_fields(screens, params)
    probabilities = _field_probabilities(screens, training, params)
    device = _device(params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "model.pt"
    sampler, val_sampler = _sampler(training, params, training=True), _sampler(validation, params)
    sampler.probabilities = probabilities
    truths = [_truth(ref, params, val_sampler, index) for index, ref in enumerate(validation)]
    with _reproducible(params.seed, device):
        model = params.model_config(planes.pop()).build().to(device)
        if params.init_from is not None:
            _load_initial_weights(model, params.init_from)
        _checked_crop(params, model)
        metadata = _metadata(params, model, screens, training, validation)
        history, best, initial_f1, sha = _fit(model, sampler, val_sampler, truths, params, device,
                                              checkpoint=checkpoint, metadata=metadata, started=started, log=log)
    best_epoch, best_f1 = best
    write_text_atomic(out / "history.json", json.dumps([asdict(r) for r in history], indent=1))
    return TrainResult(
        checkpoint=checkpoint, sha256=sha, history=tuple(history), best_epoch=best_epoch, best_f1=best_f1,
        initial_f1=initial_f1, train_fields=tuple(tuple(r.record) for r in training),
        validation_fields=tuple(tuple(r.record) for r in validation),
    )


def _field_probabilities(screens: Sequence[Screen], training: Sequence[FieldRef],
                         params: TrainParams) -> np.ndarray | None:
    """Per training field, the chance a crop comes from it (``params.screen_weights``), or None (uniform)."""
    weights = params.screen_weights
    if weights is None:
        return None
    if len(weights) != len(screens):
        raise _fail("screen_weights", f"one weight per screen ({len(screens)})", list(weights))
    index = {id(screen): i for i, screen in enumerate(screens)}
    owner = np.array([index[id(ref.screen)] for ref in training])
    counts = np.bincount(owner, minlength=len(screens))
    if not any(weights[i] > 0 and counts[i] > 0 for i in range(len(screens))):
        raise _fail("screen_weights", "a weight > 0 for a screen with training fields", list(weights))
    per_field = np.array([weights[i] / counts[i] for i in owner])
    return per_field / per_field.sum()


def _sampler(fields: Sequence[FieldRef], params: TrainParams, *, training: bool = False) -> FieldSampler:
    ignore = (params.ignore_area_ratio, params.ignore_solidity) if training else (None, None)
    return FieldSampler(fields, channels=params.channels, z=params.z, variable=params.target,
                        classes=params.classes, min_area=params.min_area, normalization=params.normalization,
                        ignore_area_ratio=ignore[0], ignore_solidity=ignore[1])


def _truth(ref: FieldRef, params: TrainParams, sampler: FieldSampler, index: int) -> np.ndarray:
    """The validation truth of field ``index``: ``params.truth`` when the store has it, else the target."""
    labels = sampler.field(index).labels
    if params.truth == params.target or params.truth not in ref.screen.variables:
        return labels
    full = ref.screen.read(params.truth, **ref.key._asdict())
    return full[: labels.shape[0], : labels.shape[1]]  # the extent crop, as for the target


def _step(model: SegmentationModel, batch: tuple[np.ndarray, ...], optimizer: torch.optim.Optimizer,
          device: torch.device) -> float:
    images, target, weights = (torch.from_numpy(a).to(device) for a in batch)
    with _autocast(device):
        logits = model(images)
    loss = weighted_cross_entropy(logits.float(), target, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _fit(model: SegmentationModel, sampler: FieldSampler, val_sampler: FieldSampler, truths: Sequence[np.ndarray],
         params: TrainParams, device: torch.device, *, checkpoint: Path, metadata: dict[str, Any],
         started: float, log: Callable[[str], None] | None,
         ) -> tuple[list[EpochRecord], tuple[int, float], float, str]:
    rng = np.random.default_rng([params.seed, 0])
    optimizer = _optimizer(model, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(params))
    initial_f1 = _validation_f1(model, val_sampler, truths, params, device)
    history: list[EpochRecord] = []
    best, stale = (0, -math.inf), 0
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(1, params.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        losses = []
        for _ in range(params.steps_per_epoch):
            batch = sampler.batch(rng, size=params.batch_size, crop_size=params.crop_size, params=params.augment)
            losses.append(_step(model, batch, optimizer, device))
            schedule.step()
        f1 = _validation_f1(model, val_sampler, truths, params, device)
        record = EpochRecord(epoch, float(np.mean(losses)), f1, float(schedule.get_last_lr()[0]),
                             time.perf_counter() - epoch_start)
        history.append(record)
        if log is not None:
            log(f"epoch {epoch}/{params.epochs}: loss {record.loss:.4f}, validation F1 {f1:.4f}")
        if f1 > best[1]:
            best, stale = (epoch, f1), 0
            meta = {**metadata, "best_epoch": epoch, "initial_f1": initial_f1,
                    "validation_f1": [r.val_f1 for r in history], "loss": [r.loss for r in history],
                    "wall_time_s": time.perf_counter() - started}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            _save(checkpoint, model, params, meta)  # on each improvement: an interrupted run keeps its best
        else:
            stale += 1
            if params.patience is not None and stale >= params.patience:
                break
    model.load_state_dict(best_state)
    meta = {**metadata, "best_epoch": best[0], "initial_f1": initial_f1,
            "validation_f1": [r.val_f1 for r in history], "loss": [r.loss for r in history],
            "wall_time_s": time.perf_counter() - started}
    return history, best, initial_f1, _save(checkpoint, model, params, meta)


def _save(path: Path, model: SegmentationModel, params: TrainParams, metadata: dict[str, Any]) -> str:
    return save_checkpoint(path, model, normalization=params.normalization,
                           channels=_channel_names(params, model.in_channels),
                           class_names=THREE_CLASSES if params.classes == 3 else TWO_CLASSES,
                           metadata=metadata, overwrite=True)


def _channel_names(params: TrainParams, in_channels: int) -> list[str]:
    """Checkpoint channel names: the channels, or ``DNA@z0, DNA@z1, ...`` when z planes are stacked."""
    if params.z == "mean":
        return list(params.channels)
    return stack_channel_names(params.channels, in_channels // len(params.channels))
