"""Synthetic live-cell fields with known per-cell truth, built on :func:`~cellflow.screen.synthetic.synthesize_field`.

Two generators take the nuclei and cells of a synthetic field and give each cell a
property whose true value is known, so that a readout can be scored against it:

* :func:`synthesize_ktr_field`: a kinase-translocation-reporter (KTR) channel. Cell ``k``
  gets a cytoplasmic level ``c_k`` (log-normal) and a nuclear/cytoplasmic ratio ``r_k``
  (log-uniform in ``ratio_range``); its nucleus is drawn at ``r_k c_k`` and the rest of
  the cell (micronuclei included) at ``c_k``, on a flat background. The plane is blurred
  by a Gaussian point-spread function and gets Poisson shot noise. ``r_k`` is the ratio
  of the noise-free, unblurred signal above the background.
* :func:`synthesize_coculture_field`: a two-type co-culture for cell-type classification.
  Each cell is type A or B (seeded coin flips). Type B nuclei carry bright chromocentres
  (DNA foci, as mouse nuclei do) and type B cells absorb more light in bright-field, so
  the two types differ in nuclear texture and in their bright-field appearance; type A
  keeps the look of the base generator. The changes are applied to the base field's
  photo-electron signal (offset removed) as smooth multiplicative maps, so the camera
  noise of the base field is scaled with the signal.

Micronuclei of the base field (nucleus labels that are not cell labels) are not returned
as nuclei here: their pixels belong to their host cell.

Determinism: a field depends on the spec, ``(plate, well, site)`` and the generator's own
options only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cellflow.screen.synthetic import SyntheticSpec, synthesize_field

__all__ = [
    "COCULTURE_TYPES",
    "CocultureField",
    "KtrField",
    "synthesize_coculture_field",
    "synthesize_ktr_field",
]

#: Cell-type names of :func:`synthesize_coculture_field`, in class order.
COCULTURE_TYPES: tuple[str, ...] = ("A", "B")

_CHROMOCENTRE_SIGMA_PX = 1.0  # foci a few pixels across
_CHROMOCENTRE_DENSITY = 0.02  # foci per nuclear pixel
_CHROMOCENTRE_GAIN = 2.5  # peak brightness of a focus over the nucleoplasm (x)
_TYPE_B_NUCLEOPLASM = 0.6  # DNA between the foci (x the base signal)
_TYPE_B_ABSORBANCE = 0.25  # extra bright-field absorbance of type B cells
_EDGE_SMOOTHING_PX = 1.0  # the multiplicative maps are smoothed: no sharp synthetic edges


@dataclass(frozen=True, eq=False)
class KtrField:
    """A synthetic KTR field with per-cell truth.

    Attributes
    ----------
    reporter : (M, N) ndarray of float32
        Reporter intensity in photo-electrons (background included).
    nuclei, cells : (M, N) ndarray of uint32
        Nucleus ``k`` lies in cell ``k``; micronuclei are part of their cell.
    ratio : dict of int to float
        True nuclear/cytoplasmic ratio of each cell's reporter.
    cytoplasm_level : dict of int to float
        True cytoplasmic level above the background, photo-electrons per pixel.
    background : float
        The flat background level.
    """

    reporter: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    ratio: dict[int, float]
    cytoplasm_level: dict[int, float]
    background: float


@dataclass(frozen=True, eq=False)
class CocultureField:
    """A synthetic two-type co-culture field.

    Attributes
    ----------
    image : (2, M, N) ndarray of float32
        DNA and bright-field planes (the base field's middle plane), offset removed.
    nuclei, cells : (M, N) ndarray of uint32
        Nucleus ``k`` lies in cell ``k``.
    cell_type : dict of int to int
        Index into :data:`COCULTURE_TYPES` of each cell.
    """

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    cell_type: dict[int, int]


def _rng(spec: SyntheticSpec, plate: str, well: str, site: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, site, zlib.crc32(f"{plate}/{well}/{purpose}".encode())])


def _base(spec: SyntheticSpec, plate: str, well: str, site: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images of frame 0 (C, Z, M, N), nuclei without micronuclei, cells)."""
    field = synthesize_field(spec, plate=plate, well=well, site=site)
    cells = field.truth_cells[0]
    nuclei = field.truth_nuclei[0]
    host_ids = np.unique(cells[cells > 0])
    nuclei = np.where(np.isin(nuclei, host_ids), nuclei, 0).astype(np.uint32)
    return field.images[0], nuclei, cells


def _lut(values: dict[int, float], size: int) -> np.ndarray:
    table = np.zeros(size + 1, np.float64)
    for label, value in values.items():
        table[label] = value
    return table


def synthesize_ktr_field(
    spec: SyntheticSpec,
    *,
    plate: str,
    well: str,
    site: int,
    ratio_range: tuple[float, float] = (0.3, 3.0),
    cytoplasm_level_e: float = 300.0,
    background_e: float = 20.0,
    blur_sigma_px: float = 0.8,
) -> KtrField:
    """A KTR reporter plane on the cells of a synthetic field, with each cell's true ratio.

    Parameters
    ----------
    spec : SyntheticSpec
        Base field (its first frame); only its truth labels are used.
    plate, well, site
        Which field of ``spec``.
    ratio_range : (float, float)
        Nuclear/cytoplasmic ratios are drawn log-uniformly in this range (> 0).
    cytoplasm_level_e : float
        Median cytoplasmic level (photo-electrons per pixel); cells vary log-normally (sigma 0.3).
    background_e : float
        Flat background level.
    blur_sigma_px : float
        Gaussian point-spread function, >= 0.

    Returns
    -------
    KtrField

    Raises
    ------
    ValueError
        A range or level is out of bounds.

    Examples
    --------
    >>> spec = SyntheticSpec(wells=("A01",), sites=1, shape_yx=(64, 64), n_z=1, channels=("DNA",),
    ...                      nuclei_per_field=1500, pixel_size_um=1.3)
    >>> field = synthesize_ktr_field(spec, plate="P1", well="A01", site=0)
    >>> field.reporter.shape, sorted(field.ratio) == sorted(set(field.cells.flat) - {0})
    ((64, 64), True)
    """
    low, high = ratio_range
    if not 0 < low <= high:
        raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
    if cytoplasm_level_e <= 0 or background_e < 0 or blur_sigma_px < 0:
        raise ValueError(
            "cytoplasm_level_e must be > 0, background_e and blur_sigma_px >= 0, got "
            f"{cytoplasm_level_e!r}, {background_e!r}, {blur_sigma_px!r}"
        )
    _, nuclei, cells = _base(spec, plate, well, site)
    rng = _rng(spec, plate, well, site, "ktr")
    labels = [int(k) for k in np.unique(cells[cells > 0])]
    ratio = {k: float(np.exp(rng.uniform(np.log(low), np.log(high)))) for k in labels}
    level = {k: float(cytoplasm_level_e * np.exp(rng.normal(0.0, 0.3))) for k in labels}
    size = int(max(cells.max(), nuclei.max()))
    cyto = _lut(level, size)
    nuclear = cyto * _lut(ratio, size)
    signal = np.where(nuclei > 0, nuclear[nuclei], cyto[cells])
    if blur_sigma_px > 0:
        signal = ndi.gaussian_filter(signal, blur_sigma_px, mode="nearest")
    reporter = rng.poisson(signal + background_e).astype(np.float32)
    return KtrField(reporter, nuclei, cells, ratio, level, float(background_e))


def _chromocentres(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Bright foci inside ``mask``: peak 1 over 0, Gaussian of :data:`_CHROMOCENTRE_SIGMA_PX`."""
    points = np.zeros(mask.shape, np.float32)
    inside = np.flatnonzero(mask)
    if inside.size:
        chosen = rng.choice(inside, size=max(1, int(_CHROMOCENTRE_DENSITY * inside.size)), replace=False)
        points.flat[chosen] = 1.0
    foci = ndi.gaussian_filter(points, _CHROMOCENTRE_SIGMA_PX)
    return foci / np.float32(1.0 / (2 * np.pi * _CHROMOCENTRE_SIGMA_PX**2))


def synthesize_coculture_field(
    spec: SyntheticSpec, *, plate: str, well: str, site: int, type_b_fraction: float = 0.5
) -> CocultureField:
    """A two-type co-culture field (DNA + bright-field) with the type of every cell.

    Parameters
    ----------
    spec : SyntheticSpec
        Base field; ``spec.channels`` must hold ``'DNA'`` and ``'BF'``.
    plate, well, site
        Which field of ``spec``.
    type_b_fraction : float
        Probability that a cell is of type B, in [0, 1].

    Returns
    -------
    CocultureField

    Raises
    ------
    ValueError
        The spec lacks a channel, or ``type_b_fraction`` is out of range.

    Examples
    --------
    >>> spec = SyntheticSpec(wells=("A01",), sites=1, shape_yx=(64, 64), n_z=1, channels=("DNA", "BF"),
    ...                      nuclei_per_field=1500, pixel_size_um=1.3)
    >>> field = synthesize_coculture_field(spec, plate="P1", well="A01", site=0)
    >>> field.image.shape, set(field.cell_type.values()) <= {0, 1}
    ((2, 64, 64), True)
    """
    missing = [c for c in ("DNA", "BF") if c not in spec.channels]
    if missing:
        raise ValueError(f"spec.channels must include 'DNA' and 'BF', got {spec.channels!r} (missing {missing!r})")
    if not 0 <= type_b_fraction <= 1:
        raise ValueError(f"type_b_fraction must be in [0, 1], got {type_b_fraction!r}")
    images, nuclei, cells = _base(spec, plate, well, site)
    rng = _rng(spec, plate, well, site, "coculture")
    labels = [int(k) for k in np.unique(cells[cells > 0])]
    cell_type = {k: int(rng.random() < type_b_fraction) for k in labels}
    is_b = _lut({k: float(v) for k, v in cell_type.items()}, int(cells.max()))
    cells_b = is_b[cells] > 0
    nuclei_b = cells_b & (nuclei > 0)
    plane = spec.n_z // 2
    dna = images[spec.channels.index("DNA"), plane].astype(np.float32) - np.float32(spec.camera_offset_adu)
    bf = images[spec.channels.index("BF"), plane].astype(np.float32) - np.float32(spec.camera_offset_adu)
    smooth_b = ndi.gaussian_filter(nuclei_b.astype(np.float32), _EDGE_SMOOTHING_PX)
    texture = _TYPE_B_NUCLEOPLASM + _CHROMOCENTRE_GAIN * _chromocentres(rng, nuclei_b)
    dna = dna * (1.0 + smooth_b * (texture - 1.0))
    absorbance = ndi.gaussian_filter(cells_b.astype(np.float32), _EDGE_SMOOTHING_PX) * _TYPE_B_ABSORBANCE
    bf = bf * (1.0 - absorbance)
    return CocultureField(np.stack([dna, bf]).astype(np.float32), nuclei, cells, cell_type)
