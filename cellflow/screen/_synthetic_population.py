"""The objects of a synthetic field and how they move and divide over time.

A :class:`Population` is a table of objects (nuclei and micronuclei) with
static attributes (shape, DNA content, cell size, texture seed) and per-frame
state (position, alive, mitotic). Rendering it into pixels is the job of
``_synthetic_nuclei`` and ``_synthetic_cells``; nothing here touches an image.

Conventions: positions are ``(y, x)`` in pixels; an angle ``phi`` points along
``(sin phi, cos phi)``; object ``i`` has label ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from cellflow.screen._synthetic_spec import SyntheticSpec

__all__ = ["MICRONUCLEUS", "NUCLEUS", "Population", "directional_radius", "simulate_population"]

NUCLEUS = 0
MICRONUCLEUS = 1

_N_HARMONICS = 4  # boundary perturbation of nuclei: cos(m alpha), m = 2..5
_N_CELL_HARMONICS = 3  # cell outline: m = 1..3
_ATTRS = (
    "kind", "cell", "parent", "radius_px", "axis_ratio", "angle", "harmonics", "content",
    "texture_seed", "cell_radius_px", "cell_harmonics", "cyto_level", "thickness",
)


@dataclass(frozen=True, eq=False)
class Population:
    """Objects of one field over time; row ``i`` is label ``i + 1``.

    Attributes
    ----------
    kind : (N,) int8
        :data:`NUCLEUS` or :data:`MICRONUCLEUS`.
    cell : (N,) int64
        Label of the cell the object belongs to: its own label for a nucleus,
        the host nucleus's label for a micronucleus.
    parent : (N,) int64
        Label of the mother for daughters of a division, else 0.
    radius_px, axis_ratio, angle : (N,) float64
        Equivalent radius, minor/major axis ratio and major-axis angle of the ellipse.
    harmonics : (N, 4) complex128
        Boundary perturbation ``r *= 1 + Re(sum_m c_m exp(i m alpha))``, m = 2..5.
    content : (N,) float64
        Integrated DNA signal (photo-electrons at illumination 1).
    texture_seed : (N,) int64
        Seed of the object's texture, so it keeps its look from frame to frame.
    cell_radius_px : (N,) float64
        Cytoplasm extent beyond the nucleus edge (0 for micronuclei).
    cell_harmonics : (N, 3) complex128
        Cell outline perturbation, m = 1..3.
    cyto_level, thickness : (N,) float64
        Relative cytoplasm stain and optical thickness.
    position : (T, N, 2) float64
        Centre ``(y, x)`` per frame.
    alive, mitotic : (T, N) bool
        Whether the object exists, and whether it is drawn condensed (mitotic).
    """

    kind: np.ndarray
    cell: np.ndarray
    parent: np.ndarray
    radius_px: np.ndarray
    axis_ratio: np.ndarray
    angle: np.ndarray
    harmonics: np.ndarray
    content: np.ndarray
    texture_seed: np.ndarray
    cell_radius_px: np.ndarray
    cell_harmonics: np.ndarray
    cyto_level: np.ndarray
    thickness: np.ndarray
    position: np.ndarray
    alive: np.ndarray
    mitotic: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Labels ``1..N`` as uint32."""
        return np.arange(1, self.kind.size + 1, dtype=np.uint32)


def directional_radius(radius: np.ndarray, axis_ratio: np.ndarray, angle: np.ndarray,
                       phi: np.ndarray) -> np.ndarray:
    """Distance from an ellipse's centre to its edge in direction ``phi`` (broadcasts)."""
    a = radius / np.sqrt(axis_ratio)
    b = radius * np.sqrt(axis_ratio)
    alpha = phi - angle
    return a * b / np.sqrt((b * np.cos(alpha)) ** 2 + (a * np.sin(alpha)) ** 2)


def _complex_harmonics(rng: np.random.Generator, n: int, m: np.ndarray, scale: float) -> np.ndarray:
    amplitude = scale * np.abs(rng.standard_normal((n, m.size))) / m
    return amplitude * np.exp(2j * np.pi * rng.random((n, m.size)))


def _draw_ploidy(rng: np.random.Generator, n: int, s_fraction: float, g2_fraction: float) -> np.ndarray:
    """1 for G1, 2 for G2/M, uniform in between for S phase."""
    u = rng.random(n)
    s_phase = rng.uniform(1.0, 2.0, n)
    return np.where(u < g2_fraction, 2.0, np.where(u < g2_fraction + s_fraction, s_phase, 1.0))


def _draw_nuclei(rng: np.random.Generator, ploidy: np.ndarray, spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """Static attributes of ``len(ploidy)`` nuclei (not yet placed)."""
    n = ploidy.size
    px = spec.pixel_size_um
    median_radius = spec.nucleus_diameter_um / 2.0 / px
    log_sigma = np.sqrt(np.log1p(spec.nucleus_diameter_cv**2))
    g1_content = spec.dna_brightness_e * np.pi * median_radius**2
    return {
        "kind": np.full(n, NUCLEUS, np.int8),
        "cell": np.zeros(n, np.int64),
        "parent": np.zeros(n, np.int64),
        # Replicated nuclei are larger as well as brighter.
        "radius_px": median_radius * np.exp(log_sigma * rng.standard_normal(n)) * ploidy**0.25,
        "axis_ratio": 1.0 - 0.45 * rng.beta(2.0, 3.0, n),
        "angle": rng.uniform(0.0, np.pi, n),
        "harmonics": _complex_harmonics(
            rng, n, np.arange(2, 2 + _N_HARMONICS), 1.5 * spec.nucleus_irregularity
        ),
        # ~5 % CV of the G1 peak, as in a good Hoechst stain.
        "content": g1_content * ploidy * (1.0 + 0.05 * rng.standard_normal(n)),
        "texture_seed": rng.integers(0, 2**62, n),
        "cell_radius_px": spec.cell_spread_um / px * np.exp(0.3 * rng.standard_normal(n)),
        "cell_harmonics": _complex_harmonics(rng, n, np.arange(1, 1 + _N_CELL_HARMONICS), 0.3),
        "cyto_level": np.exp(0.35 * rng.standard_normal(n)),
        "thickness": rng.uniform(0.7, 1.3, n),
    }


def _draw_micronuclei(rng: np.random.Generator, n: int, spec: SyntheticSpec) -> dict[str, np.ndarray]:
    px = spec.pixel_size_um
    g1_content = spec.dna_brightness_e * np.pi * (spec.nucleus_diameter_um / 2.0 / px) ** 2
    zeros = np.zeros(n)
    return {
        "kind": np.full(n, MICRONUCLEUS, np.int8),
        "cell": np.zeros(n, np.int64),
        "parent": np.zeros(n, np.int64),
        "radius_px": rng.uniform(1.0, 2.0, n) / px,  # 2-4 um across
        "axis_ratio": rng.uniform(0.75, 1.0, n),
        "angle": rng.uniform(0.0, np.pi, n),
        "harmonics": np.zeros((n, _N_HARMONICS), complex),
        "content": g1_content * rng.uniform(0.02, 0.06, n),
        "texture_seed": rng.integers(0, 2**62, n),
        "cell_radius_px": zeros,
        "cell_harmonics": np.zeros((n, _N_CELL_HARMONICS), complex),
        "cyto_level": zeros,
        "thickness": zeros,
    }


def _place_nuclei(rng: np.random.Generator, objs: dict[str, np.ndarray], shape_yx: tuple[int, int],
                  cluster_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sequential placement: free nuclei keep a gap, cluster nuclei touch a placed one.

    A cluster nucleus overlaps its partner by 3-20 % of the summed radii along the
    line joining them (the truth gives the overlap to one of them). A nucleus
    that finds no room after 32 tries is dropped, which only happens at
    densities far above the default.
    """
    n = objs["radius_px"].size
    r, q, th = objs["radius_px"], objs["axis_ratio"], objs["angle"]
    shape = np.asarray(shape_yx, float)
    pos = np.zeros((n, 2))
    keep = np.zeros(n, bool)
    tries = 32
    for i in range(n):
        placed = np.flatnonzero(keep)
        clustered = placed.size > 0 and rng.random() < cluster_fraction
        if clustered:
            j = rng.choice(placed)
            phi = rng.uniform(0.0, 2 * np.pi, tries)
            reach = directional_radius(r[j], q[j], th[j], phi) + directional_radius(r[i], q[i], th[i], phi)
            dist = reach * rng.uniform(0.80, 0.97, tries)
            cand = pos[j] + dist[:, None] * np.stack([np.sin(phi), np.cos(phi)], axis=1)
            others, gap = placed[placed != j], 0.9
        else:
            cand = rng.random((tries, 2)) * shape
            others, gap = placed, 1.15
        ok = np.all((cand >= 0) & (cand < shape), axis=1)
        if others.size:
            d = cand[:, None, :] - pos[None, others, :]
            phi_ik = np.arctan2(d[..., 0], d[..., 1])
            reach = directional_radius(r[i], q[i], th[i], phi_ik) + directional_radius(
                r[others], q[others], th[others], phi_ik + np.pi
            )
            ok &= np.all(np.hypot(d[..., 0], d[..., 1]) >= gap * reach + 2.0 * (gap > 1), axis=1)
        hits = np.flatnonzero(ok)
        if hits.size:
            pos[i] = cand[hits[0]]
            keep[i] = True
    return pos[keep], keep


def _attach_micronuclei(rng: np.random.Generator, pos: np.ndarray, objs: dict[str, np.ndarray],
                        hosts: np.ndarray, spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Micronuclei just outside their host, on a side where no other nucleus is closer.

    Returns the host index and the offset from the host centre of each accepted one.
    """
    r, q, th = objs["radius_px"], objs["axis_ratio"], objs["angle"]
    max_micro_radius = 2.0 / spec.pixel_size_um
    kept_hosts, offsets = [], []
    for h in hosts:
        phi = rng.uniform(0.0, 2 * np.pi, 8)
        reach = 1.1 * directional_radius(r[h], q[h], th[h], phi) + max_micro_radius + rng.uniform(1.5, 4.0, 8)
        off = reach[:, None] * np.stack([np.sin(phi), np.cos(phi)], axis=1)
        d = np.hypot(*np.moveaxis(pos[h] + off[:, None, :] - pos[None, :, :], -1, 0))
        d[:, h] = np.inf
        ok = np.all(d > 1.3 * r / np.sqrt(q) + max_micro_radius + 6.0, axis=1)
        hits = np.flatnonzero(ok)
        if hits.size:
            kept_hosts.append(h)
            offsets.append(off[hits[0]])
    return np.asarray(kept_hosts, np.int64), np.asarray(offsets, float).reshape(-1, 2)


def _repel(pos: np.ndarray, radius: np.ndarray, active: np.ndarray, *, overlap: float = 0.85) -> None:
    """Push apart active nuclei closer than ``overlap`` times their summed radii (in place)."""
    idx = np.flatnonzero(active)
    if idx.size < 2:
        return
    r = radius[idx]
    for _ in range(4):
        p = pos[idx]
        pairs = cKDTree(p).query_pairs(2 * overlap * r.max(), output_type="ndarray")
        if pairs.size == 0:
            return
        i, j = pairs[:, 0], pairs[:, 1]
        d = p[i] - p[j]
        dist = np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-6)
        push = np.clip(overlap * (r[i] + r[j]) - dist, 0.0, None) / (2 * dist)
        step = np.zeros_like(p)
        np.add.at(step, i, d * push[:, None])
        np.add.at(step, j, -d * push[:, None])
        pos[idx] = p + step


def _reflect(pos: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Reflect centres back into the field so an object never leaves it."""
    hi = np.asarray(shape_yx, float) - 1.0
    period = 2 * hi
    folded = np.mod(pos, period)
    return np.where(folded > hi, period - folded, folded)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in _ATTRS}


def simulate_population(spec: SyntheticSpec, *, shape_yx: tuple[int, int], g2_fraction: float,
                        rng: np.random.Generator) -> Population:
    """Draw the objects of one field and simulate them over ``spec.n_t`` frames.

    Nuclei divide after one frame drawn mitotic: the mother ends there and two
    G1 daughters with new labels appear next frame, placed touching along the
    mother's major axis. Micronuclei follow their host and end with it.
    """
    height, width = shape_yx
    n0 = int(rng.poisson(spec.nuclei_per_field * height * width / 1024**2))
    mitotic0 = rng.random(n0) < spec.mitotic_fraction
    ploidy = _draw_ploidy(rng, n0, spec.s_fraction, g2_fraction)
    ploidy[mitotic0] = 2.0
    nuclei = _draw_nuclei(rng, ploidy, spec)
    pos, keep = _place_nuclei(rng, nuclei, shape_yx, spec.cluster_fraction)
    nuclei = {k: v[keep] for k, v in nuclei.items()}
    mitotic0 = mitotic0[keep]
    n = pos.shape[0]
    candidates = np.flatnonzero(~mitotic0 & (rng.random(n) < spec.micronuclei_fraction))
    hosts, offsets = _attach_micronuclei(rng, pos, nuclei, candidates, spec)
    micro = _draw_micronuclei(rng, hosts.size, spec)
    nuclei["cell"] = np.arange(1, n + 1)
    micro["cell"] = hosts + 1
    table = _concat([nuclei, micro])
    host = np.concatenate([np.arange(n), hosts])  # row of the nucleus each row follows
    offset = np.concatenate([np.zeros((n, 2)), offsets])
    pos = np.concatenate([pos, pos[hosts] + offsets])
    pos[n:] = np.clip(pos[n:], 0, np.asarray(shape_yx) - 1.0)
    alive = np.ones(pos.shape[0], bool)
    mitotic = np.concatenate([mitotic0, np.zeros(hosts.size, bool)])
    history = [(pos.copy(), alive.copy(), mitotic.copy())]

    p_divide = 1.0 - np.exp(-spec.division_rate_per_h * spec.interval_min / 60.0)
    step_sd = np.sqrt(2 * spec.diffusion_um2_per_min * spec.interval_min) / spec.pixel_size_um
    drift_angle = rng.uniform(0, 2 * np.pi)
    drift = spec.drift_um_per_min * spec.interval_min / spec.pixel_size_um * np.array(
        [np.sin(drift_angle), np.cos(drift_angle)]
    )
    for _ in range(1, spec.n_t):
        is_nucleus = table["kind"] == NUCLEUS
        mothers = np.flatnonzero(alive & mitotic & is_nucleus)
        alive[mothers] = False
        alive &= alive[host]  # micronuclei end with their host
        old = alive.copy()
        moving = old & is_nucleus
        pos[moving] += drift + step_sd * rng.standard_normal((int(moving.sum()), 2))
        if mothers.size:
            daughters = _draw_nuclei(rng, np.ones(2 * mothers.size), spec)
            daughters["cell"] = np.arange(table["kind"].size + 1, table["kind"].size + 1 + 2 * mothers.size)
            daughters["parent"] = np.repeat(mothers + 1, 2)
            m2 = np.repeat(mothers, 2)
            side = np.tile([-1.0, 1.0], mothers.size)
            axis = table["angle"][m2]
            daughters["angle"] = axis + np.pi / 2 + rng.normal(0.0, 0.3, m2.size)
            along = directional_radius(daughters["radius_px"], daughters["axis_ratio"], daughters["angle"], axis)
            unit = np.stack([np.sin(axis), np.cos(axis)], axis=1)
            new_pos = pos[m2] + (side * (along + 1.0))[:, None] * unit
            start = table["kind"].size
            table = _concat([table, daughters])
            host = np.concatenate([host, np.arange(start, start + m2.size)])
            offset = np.concatenate([offset, np.zeros((m2.size, 2))])
            pos = np.concatenate([pos, new_pos])
            alive = np.concatenate([alive, np.ones(m2.size, bool)])
            old = np.concatenate([old, np.zeros(m2.size, bool)])
        is_nucleus = table["kind"] == NUCLEUS
        _repel(pos, table["radius_px"], alive & is_nucleus)
        pos[is_nucleus] = _reflect(pos[is_nucleus], shape_yx)
        pos[~is_nucleus] = np.clip(pos[host[~is_nucleus]] + offset[~is_nucleus], 0, np.asarray(shape_yx) - 1.0)
        # Entering mitosis now means dividing at the next frame.
        mitotic = old & is_nucleus & (rng.random(alive.size) < p_divide)
        history.append((pos.copy(), alive.copy(), mitotic.copy()))
    return _finish(table, history)


def _finish(table: dict[str, np.ndarray],
            history: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Population:
    n = table["kind"].size
    n_t = len(history)
    position = np.zeros((n_t, n, 2))
    alive = np.zeros((n_t, n), bool)
    mitotic = np.zeros((n_t, n), bool)
    for t, (p, a, m) in enumerate(history):
        position[t, : p.shape[0]] = p
        alive[t, : a.size] = a
        mitotic[t, : m.size] = m
    return Population(**table, position=position, alive=alive, mitotic=mitotic & alive)
