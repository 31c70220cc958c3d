"""The specification of a synthetic screen: a frozen, validated dataclass.

Re-exported by :mod:`cellflow.screen.synthetic`, which documents the generator.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cellflow._config import check_keys
from cellflow.errors import SpecError
from cellflow.screen.layout import WELL_PATTERN, ScreenLayout

__all__ = ["DEFAULT_CHANNELS", "SYNTHETIC_CHANNELS", "SyntheticSpec"]

#: Channels the generator can render: DNA, a cytoplasm stain, bright-field, and the four
#: non-nuclear Cell Painting stains (endoplasmic reticulum, RNA, actin/Golgi/plasma membrane,
#: mitochondria).
SYNTHETIC_CHANNELS: tuple[str, ...] = ("DNA", "Cyto", "BF", "ER", "RNA", "AGP", "Mito")
#: Channels of a synthetic plate unless the spec names others.
DEFAULT_CHANNELS: tuple[str, ...] = ("DNA", "Cyto", "BF")
_FRACTIONS = ("cluster_fraction", "mitotic_fraction", "micronuclei_fraction", "s_fraction", "g2_fraction")
_POSITIVE = (
    "z_step_um", "interval_min", "pixel_size_um", "nucleus_diameter_um", "psf_sigma_um",
    "dna_brightness_e", "cyto_brightness_e", "bf_brightness_e", "gain_adu_per_e",
)
_NON_NEGATIVE = (
    "nucleus_diameter_cv", "nucleus_irregularity", "cell_spread_um", "division_rate_per_h",
    "diffusion_um2_per_min", "drift_um_per_min", "defocus_blur_per_um", "bf_phase_contrast",
    "background_e", "camera_offset_adu", "read_noise_e",
)


def _fail(name: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"SyntheticSpec.{name} must be {expected}, got {value!r}")


def _wrong_type(name: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"SyntheticSpec.{name} must be {expected}, got {type(value).__name__} {value!r}")


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _wrong_type(name, "an integer", value)
    if value < minimum:
        raise _fail(name, f"an integer >= {minimum}", value)
    return int(value)


def _as_float(name: str, value: Any, *, low: float, high: float = math.inf, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(name, "a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise _fail(name, "a finite number", value)
    if number < low or number > high or (strict and number == low):
        bounds = f"> {low}" if strict else f">= {low}"
        raise _fail(name, bounds + (f" and <= {high}" if math.isfinite(high) else ""), value)
    return number


def _as_names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _wrong_type(name, "a sequence of names", value)
    names = tuple(value)
    if any(not isinstance(v, str) for v in names):
        raise _wrong_type(name, "a sequence of strings", value)
    if not names or any(not v.strip() for v in names) or len(set(names)) != len(names):
        raise _fail(name, "a non-empty sequence of unique, non-blank names", value)
    return names


@dataclass(frozen=True)
class SyntheticSpec:
    """What to synthesise: the screen's coordinates and the look of its cells.

    Parameters
    ----------
    plates, wells : tuple of str
        Plate names and well names (``'A01'`` style).
    sites : int
        Sites per well, numbered ``0 .. sites - 1``.
    shape_yx : (int, int)
        Field size in pixels, each >= 16.
    channels : tuple of str
        Any subset of :data:`SYNTHETIC_CHANNELS` (``DNA``, ``Cyto``, ``BF``, ``ER``, ``RNA``,
        ``AGP``, ``Mito``), in any order; default ``('DNA', 'Cyto', 'BF')``.
    n_z, z_step_um : int, float
        Focal planes at ``(arange(n_z) - (n_z - 1) / 2) * z_step_um``.
    n_t, interval_min : int, float
        Frames at ``arange(n_t) * interval_min`` minutes.
    nuclei_per_field : int
        Mean number of nuclei in a 1024 x 1024 pixel field; scaled with the
        area (the count is Poisson-distributed). Up to ~600 all are placed;
        beyond that, nuclei that find no room are dropped.
    pixel_size_um : float
        Pixel edge in micrometres; object sizes are given in micrometres.
    seed : int
        Seed of the whole screen.
    nucleus_diameter_um, nucleus_diameter_cv : float
        Median G1 nucleus diameter and its log-normal spread.
    nucleus_irregularity : float
        Strength of the low-frequency boundary perturbation.
    cell_spread_um : float
        Median cytoplasm extent beyond the nucleus edge.
    cluster_fraction : float
        Fraction of nuclei placed touching (slightly overlapping) another one.
    mitotic_fraction : float
        Fraction of nuclei drawn condensed and bright (dividing by the next frame).
    micronuclei_fraction : float
        Fraction of nuclei with a micronucleus next to them.
    s_fraction, g2_fraction : float
        Cell-cycle fractions (the rest is G1); their sum must be <= 1.
    g2_fraction_by_well : tuple of (str, float)
        Per-well overrides of ``g2_fraction`` (e.g. a G2-arrest control), for
        testing plate-level readouts such as Z'. A mapping is accepted.
    division_rate_per_h, diffusion_um2_per_min, drift_um_per_min : float
        Time-lapse dynamics: divisions per nucleus per hour, random-walk
        diffusion coefficient and a per-field drift speed.
    psf_sigma_um, defocus_blur_per_um : float
        In-focus blur and extra blur per micrometre of defocus (Gaussian sigmas).
    bf_phase_contrast : float
        Strength of the bright-field defocus contrast per micrometre.
    illumination_falloff : float
        Mean relative intensity drop from the optical axis to the field
        corners, in [0, 0.75] (each plate x channel varies it by +-20 %).
    dna_brightness_e, cyto_brightness_e, bf_brightness_e : float
        Photo-electrons per pixel of an average G1 nucleus, of average
        cytoplasm, and of the bright-field background.
    background_e : float
        Autofluorescence of the fluorescence channels (photo-electrons per pixel).
    camera_offset_adu, gain_adu_per_e, read_noise_e : float
        Camera offset, conversion gain and read noise.

    Raises
    ------
    SpecError
        A value is out of range (a ``ValueError``); the message names the field.
    TypeError
        A value has the wrong type.

    Examples
    --------
    >>> spec = SyntheticSpec(wells=("A01",), sites=1, shape_yx=(128, 128), channels=("DNA",))
    >>> spec.z_um, spec.t_min
    ((-2.0, 0.0, 2.0), (0.0,))
    >>> SyntheticSpec.from_dict(spec.to_dict()) == spec
    True
    """

    plates: tuple[str, ...] = ("P1",)
    wells: tuple[str, ...] = ("A01", "A02")
    sites: int = 4
    shape_yx: tuple[int, int] = (1024, 1024)
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    n_z: int = 3
    z_step_um: float = 2.0
    n_t: int = 1
    interval_min: float = 30.0
    nuclei_per_field: int = 60
    pixel_size_um: float = 0.65
    seed: int = 0
    nucleus_diameter_um: float = 16.0
    nucleus_diameter_cv: float = 0.2
    nucleus_irregularity: float = 0.1
    cell_spread_um: float = 20.0
    cluster_fraction: float = 0.3
    mitotic_fraction: float = 0.03
    micronuclei_fraction: float = 0.05
    s_fraction: float = 0.2
    g2_fraction: float = 0.25
    g2_fraction_by_well: tuple[tuple[str, float], ...] = ()
    division_rate_per_h: float = 0.04
    diffusion_um2_per_min: float = 0.3
    drift_um_per_min: float = 0.05
    psf_sigma_um: float = 0.7
    defocus_blur_per_um: float = 0.6
    bf_phase_contrast: float = 1.0
    illumination_falloff: float = 0.3
    dna_brightness_e: float = 400.0
    cyto_brightness_e: float = 150.0
    bf_brightness_e: float = 8000.0
    background_e: float = 15.0
    camera_offset_adu: float = 100.0
    gain_adu_per_e: float = 1.0
    read_noise_e: float = 1.6

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "plates", _as_names("plates", self.plates))
        wells = _as_names("wells", self.wells)
        bad = [w for w in wells if not WELL_PATTERN.match(w)]
        if bad:
            raise _fail("wells", "names like 'A01' (row letters + 2 digits)", bad)
        set_(self, "wells", wells)
        channels = _as_names("channels", self.channels)
        unknown = [c for c in channels if c not in SYNTHETIC_CHANNELS]
        if unknown:
            raise _fail("channels", f"names from {SYNTHETIC_CHANNELS!r}", unknown)
        set_(self, "channels", channels)
        if isinstance(self.shape_yx, str) or not isinstance(self.shape_yx, Sequence):
            raise _wrong_type("shape_yx", "two integers (y, x)", self.shape_yx)
        shape = tuple(self.shape_yx)
        if len(shape) != 2:
            raise _fail("shape_yx", "two integers (y, x) >= 16", self.shape_yx)
        set_(self, "shape_yx", tuple(_as_int("shape_yx", v, 16) for v in shape))
        for name, minimum in (("sites", 1), ("n_z", 1), ("n_t", 1), ("nuclei_per_field", 0), ("seed", 0)):
            set_(self, name, _as_int(name, getattr(self, name), minimum))
        for name in _POSITIVE:
            set_(self, name, _as_float(name, getattr(self, name), low=0.0, strict=True))
        for name in _NON_NEGATIVE:
            set_(self, name, _as_float(name, getattr(self, name), low=0.0))
        for name in _FRACTIONS:
            set_(self, name, _as_float(name, getattr(self, name), low=0.0, high=1.0))
        set_(self, "illumination_falloff",
             _as_float("illumination_falloff", self.illumination_falloff, low=0.0, high=0.75))
        set_(self, "g2_fraction_by_well", self._checked_overrides())
        for well, g2 in ((None, self.g2_fraction), *self.g2_fraction_by_well):
            if self.s_fraction + g2 > 1.0:
                where = "" if well is None else f" (well {well!r})"
                raise _fail("s_fraction + g2_fraction", f"<= 1{where}", self.s_fraction + g2)

    def _checked_overrides(self) -> tuple[tuple[str, float], ...]:
        raw = self.g2_fraction_by_well
        items = list(raw.items()) if isinstance(raw, Mapping) else list(raw)
        out = []
        for item in items:
            if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
                raise _fail("g2_fraction_by_well", "(well, fraction) pairs or a mapping", raw)
            well, fraction = item
            if well not in self.wells:
                raise _fail("g2_fraction_by_well", f"keyed by wells of the spec {self.wells!r}", well)
            out.append((str(well), _as_float("g2_fraction_by_well", fraction, low=0.0, high=1.0)))
        if len({w for w, _ in out}) != len(out):
            raise _fail("g2_fraction_by_well", "one entry per well", raw)
        return tuple(out)

    @property
    def z_um(self) -> tuple[float, ...]:
        """Focal planes in micrometres, symmetric around focus (0)."""
        return tuple(float(z) for z in (np.arange(self.n_z) - (self.n_z - 1) / 2) * self.z_step_um)

    @property
    def t_min(self) -> tuple[float, ...]:
        """Frame times in minutes."""
        return tuple(float(t) for t in np.arange(self.n_t) * self.interval_min)

    def g2_fraction_for(self, well: str) -> float:
        """G2 fraction of ``well`` (its override, else :attr:`g2_fraction`)."""
        return dict(self.g2_fraction_by_well).get(well, self.g2_fraction)

    def layout(self) -> ScreenLayout:
        """The store layout of this screen; the spec is kept in ``attrs['synthetic_spec']``."""
        return ScreenLayout(
            plates=self.plates, wells=self.wells, sites=tuple(range(self.sites)), channels=self.channels,
            shape_yx=self.shape_yx, t_min=self.t_min, z_um=self.z_um, dtype="uint16",
            pixel_size_um=self.pixel_size_um, attrs={"synthetic_spec": self.to_dict()},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "g2_fraction_by_well":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SyntheticSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys raise :class:`SpecError`."""
        if not isinstance(data, Mapping):
            raise TypeError(f"SyntheticSpec.from_dict expects a mapping, got {type(data).__name__}")
        check_keys(cls, data, error=SpecError)
        return cls(**dict(data))
