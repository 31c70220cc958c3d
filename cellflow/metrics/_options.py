"""The settings of a scoring run, validated once, and the table columns they imply."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cellflow._config import check_keys

__all__ = ["DEFAULT_AREA_BINS", "DEFAULT_THRESHOLDS", "ScoreOptions"]

#: IoU thresholds of Caicedo et al. 2019: 0.50, 0.55, ..., 0.90. Written out rather than
#: computed with ``np.arange``, whose 0.6000000000000001 would turn an IoU of exactly
#: 0.6 (e.g. 3/5) into a miss at "0.60".
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
#: Edges (pixels) of the true-object area bins of Caicedo et al. 2019:
#: [0, 250), [250, 625), [625, 900), [900, inf).
DEFAULT_AREA_BINS: tuple[float, ...] = (0.0, 250.0, 625.0, 900.0, math.inf)


def _number(name: str, value: Any, low: float, high: float, *, high_ok: bool = False) -> float:
    """``value`` as a float in [low, high) (or [low, high] if ``high_ok``), else a ValueError."""
    try:
        number = float(value)  # also reads 'inf', as written by to_dict
    except (TypeError, ValueError):
        raise ValueError(f"ScoreOptions.{name} must be a number, got {value!r}") from None
    if not (low <= number < high or (high_ok and number == high)):
        raise ValueError(f"ScoreOptions.{name} must be in [{low}, {high}{']' if high_ok else ')'}, got {value!r}")
    return number


def _threshold_name(t: float) -> str:
    """'0.50' for 0.5; more digits only when two decimals would not give ``t`` back."""
    text = f"{t:.2f}"
    return text if float(text) == t else f"{t:.6g}"


def _bin_name(low: float, high: float) -> str:
    return f"{low:g}_{high:g}"


@dataclass(frozen=True)
class ScoreOptions:
    """How fields are scored (Caicedo et al. 2019 by default).

    Parameters
    ----------
    thresholds : tuple of float
        IoU thresholds, strictly increasing, each in [0.5, 1). A true and a predicted
        object match at ``t`` when IoU > t; ``t >= 0.5`` makes matches one-to-one.
    area_bins : tuple of float
        Edges of the true-object area bins in pixels, strictly increasing, from 0 to
        ``inf`` so that every object falls in exactly one bin ``[edge_i, edge_i+1)``.
    error_threshold : float
        IoU threshold in [0.5, 1) at which missed and extra objects are counted.
    overlap_threshold : float
        IoU in [0, 1) above which an overlap counts towards merges and splits.

    Examples
    --------
    >>> ScoreOptions().columns[:2]
    ('f1_0.50', 'f1_0.55')
    >>> ScoreOptions.from_dict(ScoreOptions().to_dict()) == ScoreOptions()
    True
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    area_bins: tuple[float, ...] = DEFAULT_AREA_BINS
    error_threshold: float = 0.7
    overlap_threshold: float = 0.1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        thresholds = tuple(_number("thresholds", t, 0.5, 1.0) for t in _sequence("thresholds", self.thresholds))
        if not thresholds or not _increasing(thresholds):
            raise ValueError(
                f"ScoreOptions.thresholds must be non-empty and strictly increasing, got {self.thresholds!r}"
            )
        set_(self, "thresholds", thresholds)
        edges = tuple(
            _number("area_bins", e, 0.0, math.inf, high_ok=True) for e in _sequence("area_bins", self.area_bins)
        )
        if len(edges) < 2 or edges[0] != 0 or edges[-1] != math.inf or not _increasing(edges):
            raise ValueError(
                "ScoreOptions.area_bins must be strictly increasing edges from 0 to inf, "
                f"e.g. (0, 250, 625, 900, inf), got {self.area_bins!r}"
            )
        set_(self, "area_bins", edges)
        set_(self, "error_threshold", _number("error_threshold", self.error_threshold, 0.5, 1.0))
        set_(self, "overlap_threshold", _number("overlap_threshold", self.overlap_threshold, 0.0, 1.0))
        names = self.threshold_names
        if len(set(names)) != len(names):
            raise ValueError(f"ScoreOptions.thresholds {thresholds!r} are too close to name apart")

    @property
    def threshold_names(self) -> tuple[str, ...]:
        """Thresholds as written in column names ('0.50', '0.55', ...)."""
        return tuple(_threshold_name(t) for t in self.thresholds)

    @property
    def bin_names(self) -> tuple[str, ...]:
        """Area bins as written in column names ('0_250', ..., '900_inf')."""
        return tuple(_bin_name(a, b) for a, b in itertools.pairwise(self.area_bins))

    @property
    def columns(self) -> tuple[str, ...]:
        """Keys of :meth:`FieldScore.to_row`, in order: the schema of a field table."""
        error = _threshold_name(self.error_threshold)
        return (
            *(f"f1_{n}" for n in self.threshold_names), "f1_mean",
            f"tp_{error}", f"fp_{error}", f"fn_{error}",
            *(f"missed_area_{b}" for b in self.bin_names), *(f"true_area_{b}" for b in self.bin_names),
            "merges", "splits", "extra", "jaccard", "dice", "n_true", "n_pred",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``inf`` as the string 'inf'); :meth:`from_dict` inverts it."""
        return {
            "thresholds": list(self.thresholds),
            "area_bins": [e if e != math.inf else "inf" for e in self.area_bins],
            "error_threshold": self.error_threshold,
            "overlap_threshold": self.overlap_threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreOptions:
        """Options from :meth:`to_dict` output, naming unknown keys."""
        check_keys(cls, data)
        return cls(**dict(data))


def _increasing(values: Sequence[float]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def _sequence(name: str, value: Any) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"ScoreOptions.{name} must be a sequence of numbers, got {value!r}")
    return tuple(value)
