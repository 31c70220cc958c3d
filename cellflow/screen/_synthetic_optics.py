"""Optics and camera of a synthetic screen: illumination, defocus, bright-field, noise.

Units: signals are expected photo-electrons per pixel at illumination 1; the
camera turns them into ADU (``electrons * gain + offset + read noise``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "brightfield_plane", "camera", "defocus_sigma_px", "fluorescence_plane", "illumination_field", "phase_laplacian",
]

_UINT16_MAX = 65535
_EXACT_POISSON_BELOW = 10.0  # photo-electrons; see _shot_noise


def illumination_field(rng: np.random.Generator, shape_yx: tuple[int, int], falloff: float) -> np.ndarray:
    """Smooth vignetting with an off-centre optical axis, normalised to mean 1.

    A separable anisotropic Gaussian whose axis is shifted by up to 10 % of the
    field from its centre; its value at the field corners is ``1 - falloff``
    (+- 20 %) of the peak on average.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape_yx : (int, int)
    falloff : float
        Mean relative drop from the peak to the corners, in [0, 1).

    Returns
    -------
    illumination : (Y, X) ndarray of float32, mean 1
    """
    falloff = float(np.clip(falloff * rng.uniform(0.8, 1.2), 0.0, 0.95))
    axes = []
    anisotropy = rng.uniform(0.85, 1.15)
    for n, stretch in zip(shape_yx, (anisotropy, 1.0 / anisotropy)):
        centre = (n - 1) / 2 + rng.uniform(-0.1, 0.1) * n
        axes.append((np.arange(n) - centre, stretch))
    half_diagonal2 = (shape_yx[0] / 2) ** 2 + (shape_yx[1] / 2) ** 2
    # exp(-(R^2)/(2 s^2)) = 1 - falloff at the half diagonal R.
    two_s2 = half_diagonal2 / max(-np.log1p(-falloff), 1e-12)
    gy, gx = (np.exp(-(c**2) / (two_s2 * k**2)) for c, k in axes)
    field = np.outer(gy.astype(np.float32), gx.astype(np.float32))
    return field / np.float32(field.mean(dtype=np.float64))


def defocus_sigma_px(z_um: float, *, psf_sigma_um: float, blur_per_um: float, pixel_size_um: float) -> float:
    """Gaussian blur (pixels) of a plane ``z_um`` away from focus: PSF and defocus in quadrature."""
    return float(np.hypot(psf_sigma_um, blur_per_um * z_um) / pixel_size_um)


def fluorescence_plane(signal: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a signal by the PSF at one focal plane (zero padding: nothing outside the field)."""
    return ndi.gaussian_filter(signal, sigma_px, mode="constant", truncate=3.0)


def phase_laplacian(thickness: np.ndarray, sigma_px: float) -> np.ndarray:
    """Laplacian of the optical thickness seen at blur ``sigma_px`` (at least 1 pixel).

    A discrete Laplacian of the blurred thickness: its kernel sums to exactly
    zero, so defocus moves light around without changing the mean (a truncated
    Gaussian-Laplacian kernel does not, and would brighten every cell).
    """
    return ndi.laplace(ndi.gaussian_filter(thickness, max(sigma_px, 1.0), mode="nearest", truncate=3.0))


def brightfield_plane(transmitted: np.ndarray, laplacian: np.ndarray, *, z_um: float,
                      phase_contrast: float) -> np.ndarray:
    """Transmitted-light image of a phase object at defocus ``z_um``.

    Transport of intensity, to first order: ``I(z) = I0 (1 - k z lap(phi))``,
    so cells and nuclei turn bright with a dark halo on one side of focus and
    dark with a bright halo on the other; in focus (``z = 0``) only ``I0`` is
    left, whose faint edges and nuclear absorbance the caller puts in
    ``transmitted``.

    Parameters
    ----------
    transmitted : (Y, X) ndarray of float32
        In-focus intensity ``I0`` (photo-electrons per pixel).
    laplacian : (Y, X) ndarray of float32
        :func:`phase_laplacian` of the optical thickness at this plane's blur.
    z_um : float
        Defocus in micrometres, signed.
    phase_contrast : float
        Strength ``k`` of the defocus term per micrometre.

    Returns
    -------
    signal : (Y, X) ndarray of float32
    """
    if z_um == 0:
        return transmitted
    return transmitted * np.clip(1.0 - np.float32(phase_contrast * z_um) * laplacian, 0.05, None)


def _shot_noise(rng: np.random.Generator, mean_e: np.ndarray) -> np.ndarray:
    """Poisson photo-electrons.

    Drawn exactly where the mean is below 10; elsewhere by the Cornish-Fisher
    expansion ``m + sqrt(m) z + (z**2 - 1) / 6``, which matches the Poisson
    mean, variance (to 0.06 e-^2) and skewness at a third of the cost of an
    exact draw. The camera rounds to integers afterwards anyway.
    """
    z = rng.standard_normal(mean_e.shape, dtype=np.float32)
    electrons = mean_e + np.sqrt(mean_e) * z + (z * z - np.float32(1.0)) * np.float32(1.0 / 6.0)
    dim = mean_e < _EXACT_POISSON_BELOW
    if dim.any():
        electrons[dim] = rng.poisson(mean_e[dim])
    return np.maximum(electrons, 0.0, out=electrons)


def camera(rng: np.random.Generator, mean_e: np.ndarray, *, offset_adu: float, gain_adu_per_e: float,
           read_noise_e: float) -> np.ndarray:
    """Shot noise, gain, offset and read noise; rounded and clipped to uint16.

    Parameters
    ----------
    rng : numpy.random.Generator
    mean_e : (Y, X) ndarray of float32
        Expected photo-electrons per pixel (illumination included), >= 0.
    offset_adu, gain_adu_per_e, read_noise_e : float
        Camera offset (ADU), conversion gain (ADU per electron) and read noise (electrons).

    Returns
    -------
    image : (Y, X) ndarray of uint16
    """
    electrons = _shot_noise(rng, np.maximum(mean_e, 0.0))
    electrons += np.float32(read_noise_e) * rng.standard_normal(mean_e.shape, dtype=np.float32)
    adu = electrons * np.float32(gain_adu_per_e) + np.float32(offset_adu)
    return np.clip(np.rint(adu), 0, _UINT16_MAX).astype(np.uint16)
