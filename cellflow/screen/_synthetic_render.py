"""Turn a simulated population into the frames of one field: truth and channels.

Random streams are split by purpose (cell outlines, cytoplasm texture, camera
noise per channel and frame), so a channel's pixels do not depend on which
other channels are requested or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cellflow.screen._synthetic_cells import (
    CellTerritories,
    cell_territories,
    cyto_signal,
    optical_thickness,
)
from cellflow.screen._synthetic_nuclei import NucleusTemplate, nucleus_template, stamp_nuclei
from cellflow.screen._synthetic_optics import (
    brightfield_plane,
    camera,
    defocus_sigma_px,
    fluorescence_plane,
    phase_laplacian,
)
from cellflow.screen._synthetic_painting import PAINTING_CHANNELS, painting_signal, painting_textures
from cellflow.screen._synthetic_population import NUCLEUS, Population
from cellflow.screen._synthetic_random import smooth_noise, stable_rng

if TYPE_CHECKING:
    from cellflow.screen._synthetic_spec import SyntheticSpec

__all__ = ["render_field"]

FieldKey = tuple[int, str, str, int]  # (seed, plate, well, site)

_MITOTIC_CELL_REACH = 0.3  # mitotic cells round up ...
_MITOTIC_CYTO = 1.5  # ... and look brighter
_WARP_SIGMA_UM = 5.0  # correlation length of the cell-outline wobble
_WARP_AMPLITUDE_UM = 2.0
_NUCLEAR_ABSORBANCE = 0.015  # bright-field absorbance of an average G1 nucleus
_EDGE_SCATTER = 0.08
# Wide-field haze: a fraction of the light lands far from focus (out-of-focus
# planes of the cell, scattering); it softens edges and lights up gaps between
# touching objects, as in real wide-field images.
_HAZE_FRACTION = 0.12
_HAZE_SIGMA_UM = 3.0


def _lut(values: np.ndarray) -> np.ndarray:
    """Per-label lookup table: index 0 (background) is zero, label k is row k - 1."""
    pad = np.zeros((1, *values.shape[1:]), values.dtype)
    return np.concatenate([pad, values])


@dataclass(frozen=True, eq=False)
class _Frame:
    """Truth and noise-free ingredients of one frame."""

    nuclei: np.ndarray  # (Y, X) uint32 nucleus labels
    dna: np.ndarray  # (Y, X) float32 in-focus DNA signal
    territories: CellTerritories
    cyto_level: np.ndarray  # per label, mitotic cells brighter
    thickness: np.ndarray  # per label


def _frame(spec: SyntheticSpec, pop: Population, t: int, static: dict[str, np.ndarray],
           templates: dict[tuple[int, bool], NucleusTemplate]) -> _Frame:
    """Draw the nuclei alive at frame ``t`` and grow their cells.

    ``templates`` caches each object's look per (index, mitotic) across frames.
    """
    alive = np.flatnonzero(pop.alive[t])
    mitotic = pop.mitotic[t]
    centres = np.clip(np.rint(pop.position[t, alive]), 0, np.asarray(spec.shape_yx) - 1).astype(np.intp)
    drawn = []
    for i in alive:
        key = (int(i), bool(mitotic[i]))
        if key not in templates:
            templates[key] = nucleus_template(pop, int(i), mitotic=key[1], pixel_size_um=spec.pixel_size_um)
        drawn.append(templates[key])
    nuclei, dna = stamp_nuclei(spec.shape_yx, (alive + 1).astype(np.uint32), centres, drawn)
    mitotic_lut = _lut(mitotic)
    territories = cell_territories(
        nuclei,
        seeds=_lut(pop.kind == NUCLEUS),
        cell_of=_lut(pop.cell.astype(np.uint32)),
        centre_yx=_lut(pop.position[t]),
        reach_px=_lut(pop.cell_radius_px) * np.where(mitotic_lut, _MITOTIC_CELL_REACH, 1.0),
        harmonics=_lut(pop.cell_harmonics),
        warp_yx=static["warp"],
    )
    return _Frame(
        nuclei=nuclei, dna=dna, territories=territories,
        cyto_level=_lut(pop.cyto_level) * np.where(mitotic_lut, _MITOTIC_CYTO, 1.0),
        thickness=_lut(pop.thickness),
    )


def _static_fields(spec: SyntheticSpec, key: FieldKey) -> dict[str, np.ndarray]:
    """Per-field random fields that stay put over time (outline wobble, cytoplasm grain)."""
    px = spec.pixel_size_um
    shape = spec.shape_yx
    rng = stable_rng(*key, "cell-outlines")
    warp = np.stack([smooth_noise(rng, shape, _WARP_SIGMA_UM / px) for _ in range(2)])
    static = {"warp": warp * np.float32(_WARP_AMPLITUDE_UM / px)}
    if "Cyto" in spec.channels:
        rng = stable_rng(*key, "cyto-texture")
        static["cyto_texture"] = np.stack([smooth_noise(rng, shape, s / px) for s in (0.8, 4.0)])
    for channel in PAINTING_CHANNELS:
        if channel in spec.channels:
            static[f"{channel}_texture"] = painting_textures(key, channel, shape, px)
    return static


def _plane_sigma_px(spec: SyntheticSpec, z_um: float) -> float:
    return defocus_sigma_px(
        abs(z_um), psf_sigma_um=spec.psf_sigma_um, blur_per_um=spec.defocus_blur_per_um,
        pixel_size_um=spec.pixel_size_um,
    )


def _fluorescence_stack(spec: SyntheticSpec, signal: np.ndarray) -> list[np.ndarray]:
    """The signal blurred for every z plane, plus haze and background; +-z share one blur."""
    haze = fluorescence_plane(signal, _HAZE_SIGMA_UM / spec.pixel_size_um) * np.float32(_HAZE_FRACTION)
    haze += np.float32(spec.background_e)
    signal = signal * np.float32(1.0 - _HAZE_FRACTION)
    blurred: dict[float, np.ndarray] = {}
    for z in spec.z_um:
        if abs(z) not in blurred:
            blurred[abs(z)] = fluorescence_plane(signal, _plane_sigma_px(spec, z)) + haze
    return [blurred[abs(z)] for z in spec.z_um]


def _brightfield_stack(spec: SyntheticSpec, frame: _Frame) -> list[np.ndarray]:
    """Bright-field planes: faint edges and nuclear absorbance in focus, phase halos out of it."""
    thickness = fluorescence_plane(optical_thickness(frame.territories, frame.nuclei, thickness=frame.thickness), 1.0)
    edges = np.hypot(*np.gradient(fluorescence_plane(thickness, 1.5)))
    lit = np.float32(spec.bf_brightness_e) * (1.0 - np.clip(_EDGE_SCATTER * edges, 0.0, 0.5))
    absorbance = np.float32(_NUCLEAR_ABSORBANCE / spec.dna_brightness_e) * frame.dna
    per_depth: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    planes = []
    for z in spec.z_um:
        if abs(z) not in per_depth:
            sigma = _plane_sigma_px(spec, z)
            transmitted = lit * (1.0 - np.clip(fluorescence_plane(absorbance, sigma), 0.0, 0.5))
            per_depth[abs(z)] = (transmitted, phase_laplacian(thickness, sigma) if z else transmitted)
        transmitted, laplacian = per_depth[abs(z)]
        planes.append(brightfield_plane(transmitted, laplacian, z_um=z, phase_contrast=spec.bf_phase_contrast))
    return planes


def render_field(spec: SyntheticSpec, pop: Population, *, key: FieldKey,
                 illumination: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every frame of one field.

    Returns
    -------
    images : (T, C, Z, Y, X) ndarray of uint16
    truth_nuclei, truth_cells : (T, Y, X) ndarray of uint32
    """
    shape = spec.shape_yx
    n_t, n_c, n_z = spec.n_t, len(spec.channels), spec.n_z
    images = np.empty((n_t, n_c, n_z, *shape), np.uint16)
    truth_nuclei = np.empty((n_t, *shape), np.uint32)
    truth_cells = np.empty((n_t, *shape), np.uint32)
    static = _static_fields(spec, key)
    templates: dict[tuple[int, bool], NucleusTemplate] = {}
    for t in range(n_t):
        frame = _frame(spec, pop, t, static, templates)
        truth_nuclei[t] = frame.nuclei
        truth_cells[t] = frame.territories.cells
        for c, channel in enumerate(spec.channels):
            if channel == "BF":
                planes = _brightfield_stack(spec, frame)
            elif channel == "DNA":
                planes = _fluorescence_stack(spec, frame.dna)
            elif channel in PAINTING_CHANNELS:
                signal = painting_signal(
                    channel, frame.territories, frame.nuclei, key=key, level=frame.cyto_level,
                    brightness_e=spec.cyto_brightness_e, texture=static[f"{channel}_texture"],
                    pixel_size_um=spec.pixel_size_um,
                )
                planes = _fluorescence_stack(spec, signal)
            else:
                cyto = cyto_signal(
                    frame.territories, frame.nuclei, level=frame.cyto_level,
                    brightness_e=spec.cyto_brightness_e, texture=static["cyto_texture"],
                    pixel_size_um=spec.pixel_size_um,
                )
                planes = _fluorescence_stack(spec, cyto)
            rng = stable_rng(*key, "camera", channel, t)
            for z, plane in enumerate(planes):
                images[t, c, z] = camera(
                    rng, plane * illumination[channel], offset_adu=spec.camera_offset_adu,
                    gain_adu_per_e=spec.gain_adu_per_e, read_noise_e=spec.read_noise_e,
                )
    return images, truth_nuclei, truth_cells
