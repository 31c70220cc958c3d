"""The model registry, and the frozen config that names a model and how to build it (checkpoints store it)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cellflow._config import check_keys
from cellflow.nn.models._common import SegmentationModel, checked_int
from cellflow.nn.models.deepcell import DeepCell, deepcell_ensemble
from cellflow.nn.models.resunet import ResUNet
from cellflow.nn.models.unet import UNet

__all__ = ["MODELS", "ModelConfig", "build_model"]

#: Model names and their builders, each called as ``builder(in_channels=, classes=, **options)``.
MODELS: Mapping[str, Callable[..., SegmentationModel]] = MappingProxyType({
    "unet": UNet,
    "resunet": ResUNet,
    "deepcell": DeepCell,
    "deepcell_ensemble": deepcell_ensemble,
})
_SCALARS = (bool, int, float, str, type(None))


def _option_defaults(name: str) -> dict[str, Any]:
    """The keyword options of model ``name`` and their defaults, read from its builder's signature."""
    parameters = inspect.signature(MODELS[name]).parameters.values()
    return {
        p.name: p.default
        for p in sorted(parameters, key=lambda p: p.name)
        if p.kind is p.KEYWORD_ONLY and p.name not in {"in_channels", "classes"}
    }


def _frozen(key: str, value: Any) -> Any:
    """A JSON-able option value, sequences as tuples (so configs compare equal after a JSON trip)."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(key, v) for v in value)
    raise TypeError(f"ModelConfig option {key!r} must be a number, string, bool, None or a list of those, "
                    f"got {value!r}")


def _thawed(value: Any) -> Any:
    return [_thawed(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class ModelConfig:
    """Which network, with which options: what :func:`build_model` needs, and what a checkpoint stores.

    Parameters
    ----------
    name : {'unet', 'resunet', 'deepcell', 'deepcell_ensemble'}
        A key of :data:`MODELS`.
    in_channels : int
        Input channels, >= 1.
    classes : int
        Output classes, >= 2.
    options : mapping of str to JSON-able value
        Keyword options of the model (e.g. ``width``); only the model's own option names are
        accepted. Stored read-only and complete (the model's defaults fill the options not
        given), with sequences as tuples.

    Raises
    ------
    ValueError
        For an unknown model name (listing the known ones), an unknown option (listing the
        model's options) or out-of-range channels or classes.
    TypeError
        For an option value that is not JSON-able.

    Examples
    --------
    >>> config = ModelConfig("unet", in_channels=1, classes=3, options={"width": 16})
    >>> dict(config.options)
    {'levels': 4, 'width': 16}
    >>> ModelConfig.from_dict(config.to_dict()) == config
    True
    >>> config.build().receptive_field
    100
    """

    name: str
    in_channels: int
    classes: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"ModelConfig name must be one of {sorted(MODELS)!r}, got {self.name!r}")
        checked_int("ModelConfig", "in_channels", self.in_channels, 1)
        checked_int("ModelConfig", "classes", self.classes, 2)
        if not isinstance(self.options, Mapping):
            raise TypeError(f"ModelConfig options must be a mapping of option names to values, got {self.options!r}")
        defaults = _option_defaults(self.name)
        unknown = sorted(str(k) for k in self.options if k not in defaults)
        if unknown:
            raise ValueError(
                f"ModelConfig options {unknown!r} are not options of {self.name!r}; known: {list(defaults)!r}"
            )
        # Defaults written out: a stored config rebuilds the same network even if defaults change.
        frozen = {key: _frozen(key, self.options.get(key, default)) for key, default in defaults.items()}
        object.__setattr__(self, "options", MappingProxyType(frozen))

    def __hash__(self) -> int:
        return hash((self.name, self.in_channels, self.classes, tuple(self.options.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        # A mappingproxy does not pickle; the dict round trip does (dask ships configs to workers).
        return (ModelConfig.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "classes": self.classes,
            "options": {key: _thawed(value) for key, value in self.options.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Config from :meth:`to_dict` output, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))

    def build(self) -> SegmentationModel:
        """A freshly initialised model of this config (see :func:`build_model`)."""
        return MODELS[self.name](in_channels=self.in_channels, classes=self.classes, **self.options)


def build_model(name: str, *, in_channels: int, classes: int, **options: Any) -> SegmentationModel:
    """Build a registered network with freshly initialised weights (seed torch to reproduce them).

    Parameters
    ----------
    name : {'unet', 'resunet', 'deepcell', 'deepcell_ensemble'}
        Registered model name.
    in_channels : int
        Input channels (1 nuclear; 3 bright-field planes; 4 Cell Painting; 2 phase + nuclear).
    classes : int
        Output classes, >= 2.
    **options
        The model's keyword options, e.g. ``width``, ``levels`` (see each model class).

    Returns
    -------
    SegmentationModel
        Maps (N, in_channels, H, W) to logits (N, classes, H, W); H and W must be multiples of
        its ``downsampling``. ``model.config`` rebuilds it.

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones) or option, or invalid values.

    Examples
    --------
    >>> model = build_model("resunet", in_channels=4, classes=3)
    >>> model.downsampling, model.receptive_field, model.config.options["width"]
    (8, 72, 8)
    """
    return ModelConfig(name, in_channels, classes, options).build()
