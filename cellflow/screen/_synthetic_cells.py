"""Cell territories around nuclei, the cytoplasm stain and optical thickness.

A cell is the set of pixels whose nearest nucleus is its own (a Voronoi
partition measured from nucleus edges, so big nuclei get big cells), limited
by a per-cell, direction-dependent reach. Both the partition and the reach
are looked up at smoothly displaced coordinates, which makes the outlines and
the borders between touching cells irregular instead of straight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["CellTerritories", "cell_territories", "cyto_signal", "optical_thickness"]


@dataclass(frozen=True, eq=False)
class CellTerritories:
    """Cells of one frame.

    Attributes
    ----------
    cells : (Y, X) ndarray of uint32
        Cell labels (the id of the cell's nucleus), 0 = background.
    dist_px : (Y, X) ndarray of float32
        Distance to the owning nucleus's edge (0 inside it).
    depth : (Y, X) ndarray of float32
        ``dist_px`` over the cell's reach in that direction: 0 at the nucleus,
        1 at the cell edge.
    """

    cells: np.ndarray
    dist_px: np.ndarray
    depth: np.ndarray


def cell_territories(nuclei: np.ndarray, *, seeds: np.ndarray, cell_of: np.ndarray, centre_yx: np.ndarray,
                     reach_px: np.ndarray, harmonics: np.ndarray, warp_yx: np.ndarray) -> CellTerritories:
    """Grow cells from nuclei.

    Parameters
    ----------
    nuclei : (Y, X) ndarray of uint32
        Nucleus and micronucleus labels.
    seeds : (L,) ndarray of bool
        Per label (index 0 unused): whether it seeds a cell (nuclei, not micronuclei).
    cell_of : (L,) ndarray of uint32
        Per label: the cell it belongs to (itself for a nucleus, the host for a micronucleus).
    centre_yx : (L, 2) ndarray of float
        Per label: centre used for the direction of the reach.
    reach_px : (L,) ndarray of float
        Per label: mean cytoplasm extent beyond the nucleus edge.
    harmonics : (L, M) ndarray of complex
        Per label: outline perturbation ``reach *= 1 + Re(sum_m c_m exp(i m theta))``, m = 1..M.
    warp_yx : (2, Y, X) ndarray of float32
        Displacement (pixels) at which the partition and reach are looked up.

    Returns
    -------
    CellTerritories
    """
    shape = nuclei.shape
    main = np.where(seeds[nuclei], nuclei, 0).astype(np.uint32)
    if not main.any():
        zeros = np.zeros(shape, np.float32)
        cells = np.where(nuclei > 0, cell_of[nuclei], 0).astype(np.uint32)
        return CellTerritories(cells, zeros, zeros.copy())
    dist, (iy, ix) = ndi.distance_transform_edt(main == 0, return_indices=True)
    yy, xx = np.indices(shape, dtype=np.float32)
    sy = np.clip(np.rint(yy + warp_yx[0]), 0, shape[0] - 1).astype(np.intp)
    sx = np.clip(np.rint(xx + warp_yx[1]), 0, shape[1] - 1).astype(np.intp)
    owner = main[iy[sy, sx], ix[sy, sx]]
    dist_px = dist[sy, sx].astype(np.float32)
    vy = yy - centre_yx[owner, 0].astype(np.float32)
    vx = xx - centre_yx[owner, 1].astype(np.float32)
    norm = np.maximum(np.hypot(vy, vx), 1e-3)
    direction = ((vx + 1j * vy) / norm).astype(np.complex64)  # exp(i theta)
    wobble = np.zeros(shape, np.float32)
    power = np.ones(shape, np.complex64)
    for m in range(harmonics.shape[1]):
        power *= direction
        wobble += np.real(power * harmonics[owner, m].astype(np.complex64))
    reach = reach_px[owner].astype(np.float32) * np.maximum(1.0 + wobble, 0.2)
    inside = (dist_px < reach) | (main > 0)
    owner = np.where(main > 0, main, np.where(inside, owner, 0)).astype(np.uint32)
    micro = (nuclei > 0) & (main == 0)
    owner[micro] = cell_of[nuclei[micro]]
    dist_px[main > 0] = 0.0
    depth = np.clip(dist_px / np.maximum(reach, 1.0), 0.0, 1.0)
    return CellTerritories(cells=owner, dist_px=dist_px, depth=depth)


def cyto_signal(territories: CellTerritories, nuclei: np.ndarray, *, level: np.ndarray, brightness_e: float,
                texture: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Cytoplasm stain: brighter around the nucleus, dimmer towards the cell edge, textured.

    Parameters
    ----------
    territories : CellTerritories
    nuclei : (Y, X) ndarray of uint32
        Nucleus labels (the stain is weaker over nuclei).
    level : (L,) ndarray of float
        Per cell label: relative stain intensity.
    brightness_e : float
        Photo-electrons per pixel of an average cell, mid-cytoplasm.
    texture : (2, Y, X) ndarray of float32
        Fine and coarse zero-mean unit-variance noise.
    pixel_size_um : float

    Returns
    -------
    signal : (Y, X) ndarray of float32
    """
    depth = territories.depth
    perinuclear = np.exp(territories.dist_px * np.float32(-pixel_size_um / 4.0))  # ER/Golgi within ~4 um
    profile = (0.3 + 0.7 * (1.0 - depth) ** 1.5) * (1.0 + 0.6 * perinuclear)
    grain = np.clip(1.0 + 0.22 * texture[0] + 0.18 * texture[1], 0.2, None)
    signal = np.float32(brightness_e) * level[territories.cells].astype(np.float32) * profile * grain
    signal[nuclei > 0] *= np.float32(0.55)
    return signal


def optical_thickness(territories: CellTerritories, nuclei: np.ndarray, *, thickness: np.ndarray) -> np.ndarray:
    """Relative optical path length: a low dome over each cell, higher over the nucleus.

    The cell keeps a rim (~25 % of its thickness) at its edge, which is what
    makes cell outlines visible in bright-field.
    """
    depth = territories.depth
    dome = 0.25 + 0.75 * np.sqrt(np.clip(1.0 - depth**2, 0.0, 1.0))
    level = thickness[territories.cells].astype(np.float32)
    return (level * dome * (territories.cells > 0) + 0.8 * (nuclei > 0)).astype(np.float32)
