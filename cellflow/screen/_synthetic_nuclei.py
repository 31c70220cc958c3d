"""Nucleus templates (mask + DNA signal patch) and stamping them into a frame.

Each object is drawn in its own bounding box, never over the full frame, so
the cost grows with the number of objects, not with the field size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from cellflow.screen._synthetic_population import MICRONUCLEUS, Population

__all__ = ["NucleusTemplate", "nucleus_template", "stamp_nuclei"]

# How a nucleus changes when drawn mitotic (condensed chromatin): smaller, more
# elongated (metaphase plate), more irregular and much more contrasted texture.
_MITOTIC_RADIUS = 0.72
_MITOTIC_AXIS_RATIO = 0.6
_MITOTIC_IRREGULARITY = 2.0


@dataclass(frozen=True, eq=False)
class NucleusTemplate:
    """One object's footprint around its centre pixel.

    Attributes
    ----------
    mask : (h, w) ndarray of bool
        Pixels that belong to the object.
    signal : (h, w) ndarray of float32
        DNA signal; sums to the object's content.
    half : int
        The centre pixel is at ``(half, half)``; ``h == w == 2 * half + 1``.
    """

    mask: np.ndarray
    signal: np.ndarray
    half: int


def _nucleoli(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, radius: float,
              pixel_size_um: float) -> np.ndarray:
    """Multiplicative factor with 1-4 darker round spots inside the nucleus."""
    factor = np.ones(yy.shape)
    for _ in range(int(rng.integers(1, 5))):
        rho = 0.55 * radius * np.sqrt(rng.random())
        phi = rng.uniform(0, 2 * np.pi)
        sigma = rng.uniform(0.6, 1.1) / pixel_size_um
        d2 = (yy - rho * np.sin(phi)) ** 2 + (xx - rho * np.cos(phi)) ** 2
        factor *= 1.0 - rng.uniform(0.25, 0.5) * np.exp(-d2 / (2 * sigma**2))
    return factor


def nucleus_template(pop: Population, index: int, *, mitotic: bool, pixel_size_um: float) -> NucleusTemplate:
    """Rasterise object ``index`` of ``pop`` around a centre pixel.

    The outline is an ellipse with a low-frequency radial perturbation; the
    signal is a flat-topped dome times smoothed-noise texture and, for
    interphase nuclei, darker nucleoli. The texture is seeded by the object,
    so a nucleus looks the same in every frame.
    """
    rng = np.random.default_rng([int(pop.texture_seed[index]), int(mitotic)])
    micro = pop.kind[index] == MICRONUCLEUS
    radius = float(pop.radius_px[index])
    q = float(pop.axis_ratio[index])
    harmonics = pop.harmonics[index]
    if mitotic:
        radius, q = radius * _MITOTIC_RADIUS, max(0.3, q * _MITOTIC_AXIS_RATIO)
        harmonics = harmonics * _MITOTIC_IRREGULARITY
    a = radius / np.sqrt(q)
    half = int(np.ceil(a * (1.0 + np.abs(harmonics).sum()))) + 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    rho = np.hypot(yy, xx)
    alpha = np.arctan2(yy, xx) - pop.angle[index]
    b = radius * np.sqrt(q)
    edge = a * b / np.sqrt((b * np.cos(alpha)) ** 2 + (a * np.sin(alpha)) ** 2)
    m = np.arange(2, 2 + harmonics.size)
    edge = edge * (1.0 + np.real(np.exp(1j * alpha[..., None] * m) @ harmonics))
    coverage = np.clip(edge - rho + 0.5, 0.0, 1.0)  # one-pixel anti-aliased rim
    s = np.clip(rho / edge, 0.0, 1.0)
    profile = coverage * (0.7 + 0.3 * np.sqrt(1.0 - s**2))
    fine_sigma = 0.8 if mitotic else 1.2
    fine = ndi.gaussian_filter(rng.standard_normal(rho.shape), fine_sigma)
    fine /= max(fine.std(), 1e-12)
    coarse = ndi.gaussian_filter(rng.standard_normal(rho.shape), max(radius / 2.5, 1.0))
    coarse /= max(coarse.std(), 1e-12)
    amplitude = 0.05 if micro else (0.4 if mitotic else 0.13)
    texture = np.clip(1.0 + amplitude * fine + 0.08 * coarse, 0.05, None)
    if not micro and not mitotic:
        texture *= _nucleoli(rng, yy, xx, radius, pixel_size_um)
    signal = profile * texture
    signal *= pop.content[index] / signal.sum()
    return NucleusTemplate(mask=coverage >= 0.5, signal=signal.astype(np.float32), half=half)


def _window(centre: int, half: int, size: int) -> tuple[slice, slice] | None:
    """Frame slice and template slice of a template centred at ``centre``; None if outside."""
    lo, hi = centre - half, centre + half + 1
    if hi <= 0 or lo >= size:
        return None
    return slice(max(lo, 0), min(hi, size)), slice(max(lo, 0) - lo, 2 * half + 1 - (hi - min(hi, size)))


def stamp_nuclei(shape_yx: tuple[int, int], labels: np.ndarray, centres: np.ndarray,
                 templates: list[NucleusTemplate]) -> tuple[np.ndarray, np.ndarray]:
    """Draw templates into a label image and a DNA signal image.

    Larger objects are drawn first, so where two overlap the smaller one owns
    the shared pixels in the labels; the signals add up (stacked chromatin is
    brighter). Every object keeps at least its centre pixel, so each label
    drawn is present in the truth.

    Parameters
    ----------
    shape_yx : (int, int)
        Frame shape.
    labels : (K,) ndarray of uint32
        Label of each template.
    centres : (K, 2) ndarray of int
        Centre pixel ``(y, x)`` of each template, inside the frame.
    templates : list of NucleusTemplate

    Returns
    -------
    label_image : (Y, X) ndarray of uint32
    signal : (Y, X) ndarray of float32
    """
    label_image = np.zeros(shape_yx, np.uint32)
    signal = np.zeros(shape_yx, np.float32)
    order = np.argsort([-int(t.mask.sum()) for t in templates], kind="stable")
    for k in order:
        tpl = templates[k]
        wy = _window(int(centres[k, 0]), tpl.half, shape_yx[0])
        wx = _window(int(centres[k, 1]), tpl.half, shape_yx[1])
        if wy is None or wx is None:
            continue
        frame = (wy[0], wx[0])
        patch = (wy[1], wx[1])
        signal[frame] += tpl.signal[patch]
        np.putmask(label_image[frame], tpl.mask[patch], labels[k])
    if labels.size:
        present = np.bincount(label_image.ravel(), minlength=int(labels.max()) + 1)
        lost = present[labels] == 0
        label_image[centres[lost, 0], centres[lost, 1]] = labels[lost]
    return label_image, signal
