"""The four non-nuclear Cell Painting stains (Bray et al. 2016) of a synthetic frame.

Each stain is drawn from the same cells and nuclei as DNA and Cyto, so labels made
from the DNA channel fit them exactly. What each one shows, and so what a network
can learn nuclei from when the DNA channel is left out (Sadanandan et al. 2017):

* ``ER`` (concanavalin A): a reticular cytoplasm stain, densest at the nuclear
  envelope and fading towards the cell edge; the nucleus itself is nearly dark, so
  nuclei show as holes ringed by the brightest ER.
* ``RNA`` (SYTO 14): nucleoli (1-4 bright spots per nucleus), a moderate diffuse
  nucleoplasm and a weak cytoplasm: the stain closest to a nuclear one.
* ``AGP`` (phalloidin + WGA: actin, Golgi, plasma membrane): bright cell outlines
  and borders between touching cells, one compact Golgi blob beside each nucleus,
  fibrous cytoplasm; dim over the nucleus.
* ``Mito`` (MitoTracker): punctate, perinuclear cytoplasm; nuclei dark.

Levels are relative to ``cyto_brightness_e`` and each cell's stain level, like Cyto.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from cellflow.screen._synthetic_cells import CellTerritories
from cellflow.screen._synthetic_random import smooth_noise, stable_rng

__all__ = ["PAINTING_CHANNELS", "painting_signal", "painting_textures"]

#: The non-nuclear Cell Painting channels the generator can render.
PAINTING_CHANNELS: tuple[str, ...] = ("ER", "RNA", "AGP", "Mito")

_NUCLEOLUS_RADIUS_UM = 0.9
_GOLGI_RADIUS_UM = 1.6


def painting_textures(key: tuple[int, str, str, int], channel: str, shape: tuple[int, int],
                      pixel_size_um: float) -> np.ndarray:
    """Static texture fields of one field and stain (fine, coarse), zero mean, unit variance."""
    rng = stable_rng(*key, "painting-texture", channel)
    scales = {"ER": (0.5, 2.0), "RNA": (0.6, 3.0), "AGP": (0.4, 1.5), "Mito": (0.35, 1.2)}[channel]
    return np.stack([smooth_noise(rng, shape, s / pixel_size_um) for s in scales])


def _disc_sum(shape: tuple[int, int], centres: np.ndarray, weights: np.ndarray, radius_px: float) -> np.ndarray:
    """Sum of soft discs (Gaussian of ``radius_px``) at ``centres`` (N, 2) with ``weights``."""
    out = np.zeros(shape, np.float32)
    if len(centres):
        iy = np.clip(np.rint(centres[:, 0]).astype(np.intp), 0, shape[0] - 1)
        ix = np.clip(np.rint(centres[:, 1]).astype(np.intp), 0, shape[1] - 1)
        np.add.at(out, (iy, ix), weights.astype(np.float32))
        out = ndi.gaussian_filter(out, max(radius_px, 0.5)) * np.float32(2 * np.pi * max(radius_px, 0.5) ** 2)
    return out


def _nuclear_geometry(nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels present, their centroids (N, 2), their equivalent radii) of a label image."""
    ids = np.unique(nuclei)
    ids = ids[ids > 0]
    if not ids.size:
        return ids, np.zeros((0, 2)), np.zeros(0)
    centres = np.asarray(ndi.center_of_mass(np.ones_like(nuclei, np.float32), nuclei, ids), float).reshape(-1, 2)
    areas = ndi.sum_labels(np.ones_like(nuclei, np.float32), nuclei, ids)
    return ids, centres, np.sqrt(np.asarray(areas) / np.pi)


def _nucleoli(key: tuple[int, str, str, int], nuclei: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """1-4 bright soft spots inside every nucleus, placed the same way in every frame of a field."""
    ids, centres, radii = _nuclear_geometry(nuclei)
    spots, weights = [], []
    for label, centre, radius in zip(ids, centres, radii):
        rng = stable_rng(*key, "nucleoli", int(label))
        count = int(rng.integers(1, 5))
        angle = rng.uniform(0, 2 * np.pi, count)
        reach = radius * np.sqrt(rng.uniform(0.0, 0.35, count))
        spots.append(centre + np.stack([np.sin(angle), np.cos(angle)], axis=1) * reach[:, None])
        weights.append(rng.uniform(0.7, 1.3, count))
    if not spots:
        return np.zeros(nuclei.shape, np.float32)
    radius_px = _NUCLEOLUS_RADIUS_UM / pixel_size_um
    field = _disc_sum(nuclei.shape, np.concatenate(spots), np.concatenate(weights), radius_px)
    return field * (nuclei > 0)


def _golgi(key: tuple[int, str, str, int], nuclei: np.ndarray, cells: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """One compact blob just outside each nucleus, on a side fixed per cell."""
    ids, centres, radii = _nuclear_geometry(nuclei)
    angle = np.array([stable_rng(*key, "golgi", int(label)).uniform(0, 2 * np.pi) for label in ids])
    offset = radii + _GOLGI_RADIUS_UM / pixel_size_um
    where = centres + np.stack([np.sin(angle), np.cos(angle)], axis=1) * offset[:, None] if ids.size else centres
    blobs = _disc_sum(nuclei.shape, where, np.ones(len(ids)), _GOLGI_RADIUS_UM / pixel_size_um)
    return blobs * ((cells > 0) & (nuclei == 0))


def painting_signal(channel: str, territories: CellTerritories, nuclei: np.ndarray, *, key: tuple[int, str, str, int],
                    level: np.ndarray, brightness_e: float, texture: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Noise-free signal (photo-electrons) of one Cell Painting stain in one frame.

    Parameters
    ----------
    channel : {'ER', 'RNA', 'AGP', 'Mito'}
    territories : CellTerritories
    nuclei : (Y, X) ndarray of uint32
    key : (seed, plate, well, site)
        Places nucleoli and Golgi the same way in every frame of a field.
    level : (L,) ndarray of float
        Per cell label: relative stain intensity.
    brightness_e : float
        Photo-electrons per pixel of an average cell, mid-cytoplasm.
    texture : (2, Y, X) ndarray of float32
        :func:`painting_textures` of this field and stain.
    pixel_size_um : float

    Returns
    -------
    signal : (Y, X) ndarray of float32
    """
    if channel not in PAINTING_CHANNELS:
        raise ValueError(f"channel must be one of {PAINTING_CHANNELS!r}, got {channel!r}")
    cells, depth = territories.cells, territories.depth
    inside_cell = (cells > 0).astype(np.float32)
    nucleus = nuclei > 0
    near = np.exp(territories.dist_px * np.float32(-pixel_size_um / 3.0))  # within ~3 um of the envelope
    fine, coarse = texture[0], texture[1]
    if channel == "ER":
        reticulum = np.clip(1.0 + 0.45 * fine + 0.2 * coarse, 0.1, None)
        profile = (0.25 + 0.75 * (1.0 - depth) ** 2) * (1.0 + 1.2 * near) * reticulum
        profile = np.where(nucleus, 0.08, profile)
    elif channel == "RNA":
        cytoplasm = 0.3 * (1.0 - depth) * np.clip(1.0 + 0.2 * fine, 0.2, None)
        nucleoplasm = 0.9 * np.clip(1.0 + 0.15 * coarse, 0.3, None)
        profile = np.where(nucleus, nucleoplasm, cytoplasm) + 3.0 * _nucleoli(key, nuclei, pixel_size_um)
    elif channel == "AGP":
        edges = find_boundaries(cells, connectivity=1, mode="inner") & (cells > 0)  # outlines, both sides
        membrane = ndi.gaussian_filter(edges.astype(np.float32), 0.6) * 4.0
        fibres = 0.35 * np.clip(1.0 + 0.6 * fine, 0.0, None) * (1.0 - 0.5 * depth)
        golgi = 4.0 * _golgi(key, nuclei, cells, pixel_size_um)
        profile = np.where(nucleus, 0.12, fibres + golgi) + membrane
    else:  # Mito
        puncta = np.clip(fine - 0.4, 0.0, None) * 2.5 + 0.1 * np.clip(1.0 + coarse, 0.0, None)
        profile = np.where(nucleus, 0.04, puncta * (1.0 - depth) ** 0.7 * (1.0 + 0.8 * near))
    signal = np.float32(brightness_e) * level[cells].astype(np.float32) * profile.astype(np.float32) * inside_cell
    return signal.astype(np.float32)
