"""Smooth surfaces on a grid: robust tensor-product fits (B-splines, polynomials) and median smoothing.

The fitting half of :mod:`cellflow.ops.illumination`, kept apart because it knows
nothing of images or illumination: it fits a weighted grid of samples. Kernels
take NumPy or CuPy arrays; the small basis matrices are built on the host from
coordinates only and moved to the samples' backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy.interpolate import BSpline

from cellflow.ops._backend import Backend, backend_of

__all__ = ["Basis", "fit_surface", "fit_surface_at", "median_smooth"]

Basis = Literal["spline", "polynomial"]

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_MEDIAN_FRACTION = 4  # robust outlier reference: median filter over a quarter of the grid
_SPLINE_PENALTY = 1e-4  # weight of the P-spline smoothness penalty relative to the data
_ALWAYS_INLIER = 0.01  # samples within 1 % of a reference are never outliers


def fit_surface(values: Any, *, weights: Any | None = None, basis: Basis = "spline", knots: int = 3,
                degree: int = 4, iterations: int = 5, outlier_sigma: float = 3.0) -> Any:
    """Iteratively fit a smooth surface to ``values``, dropping outliers (foreground) each round.

    Parameters
    ----------
    values : (M, N) ndarray
        Samples on a regular grid; NaN where missing.
    weights : (M, N) ndarray, optional
        Inverse variances (e.g. pixel counts); zero where missing. Default all ones.
    basis : {'spline', 'polynomial'}
        Cubic B-splines with ``knots`` interior knots per axis (``knots + 4``
        functions per axis), or Legendre polynomials of total degree ``degree``.
    iterations : int
        Rounds of outlier removal, each followed by a refit (0: one plain weighted
        least-squares fit).
    outlier_sigma : float
        A sample whose standardised residual ``(value - reference) * sqrt(weight)``
        exceeds this many robust standard deviations (1.4826 x the median absolute
        residual), on either side, is left out of the next fit. It is tested against
        two references: the previous fit (at first a quadratic trend), and that fit
        plus a median filter of its residuals over a quarter of the grid, which a
        cluster of outliers smaller than half the window cannot pull. Samples within
        1 % of a reference always stay (noiseless data have a MAD near 0).

    Returns
    -------
    surface : (M, N) ndarray of float64
        The fit evaluated on the grid.

    Examples
    --------
    >>> y, x = np.mgrid[:20, :20]
    >>> ramp = 1.0 + 0.02 * y - 0.01 * x
    >>> bool(np.allclose(fit_surface(ramp, basis="polynomial", degree=1), ramp))
    True
    """
    be = backend_of(values)
    xp = be.xp
    weights = xp.ones(values.shape) if weights is None else weights
    if basis not in ("spline", "polynomial"):
        raise ValueError(f"basis must be 'spline' or 'polynomial', got {basis!r}")
    grid = [np.arange(n, dtype=float) for n in values.shape]
    return fit_surface_at(be, values, weights, grid, grid, values.shape, kind=basis, knots=knots, degree=degree,
                          iterations=iterations, outlier_sigma=outlier_sigma)


def _basis(kind: str, x: np.ndarray, n: int, *, knots: int, degree: int) -> np.ndarray:
    """1-D basis functions on the pixel domain ``[-0.5, n - 0.5]`` evaluated at ``x``."""
    lo, hi = -0.5, n - 0.5
    if kind == "polynomial":
        return np.polynomial.legendre.legvander(2 * (x - lo) / (hi - lo) - 1, degree)
    order = 3
    interior = np.linspace(lo, hi, knots + 2)[1:-1]
    t = np.concatenate([np.full(order + 1, lo), interior, np.full(order + 1, hi)])
    return BSpline.design_matrix(x, t, order).toarray()


def _second_differences(n: int) -> np.ndarray:
    """(n - 2, n) matrix of second differences (empty when n < 3)."""
    return np.diff(np.eye(n), 2, axis=0)


def _design(kind: str, samples: Sequence[np.ndarray], shape: Sequence[int], *, knots: int,
            degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Tensor-product design matrix at ``samples``, its smoothness penalty, kept terms and per-axis degrees.

    Polynomial degrees are capped per axis at the number of samples minus one.
    Spline coefficients carry a faint second-difference penalty (P-splines, Eilers
    and Marx 1996) so that a region left without samples, e.g. a corner covered by
    cells in every field, is bridged smoothly instead of left undetermined; it is
    zero for a constant surface.
    """
    axis_degree = [min(degree, s.size - 1) for s in samples]
    by, bx = (_basis(kind, s, n, knots=knots, degree=d) for s, n, d in zip(samples, shape, axis_degree))
    ky, kx = by.shape[1], bx.shape[1]
    iy, ix = np.meshgrid(np.arange(ky), np.arange(kx), indexing="ij")
    columns = (np.ones(iy.shape, bool) if kind == "spline" else iy + ix <= degree).ravel()
    design = np.einsum("ia,jb->ijab", by, bx).reshape(by.shape[0] * bx.shape[0], ky * kx)[:, columns]
    if kind == "spline":
        penalty = np.vstack([np.kron(_second_differences(ky), np.eye(kx)),
                             np.kron(np.eye(ky), _second_differences(kx))])
    else:
        penalty = np.zeros((0, design.shape[1]))
    return design, penalty, columns, axis_degree


def fit_surface_at(be: Backend, values: Any, weights: Any, samples: Sequence[np.ndarray], points: Sequence[np.ndarray],
         shape: Sequence[int], *, kind: str, knots: int, degree: int, iterations: int,
         outlier_sigma: float) -> Any:
    """Robust weighted fit of ``values`` (sampled at ``samples`` y, x), evaluated at ``points`` y, x.

    The engine of :func:`fit_surface`; ``samples`` and ``points`` are pixel
    coordinates along y and x on the domain ``[-0.5, shape - 0.5]``, so a grid of
    block means can be fitted at the blocks' centres and evaluated at every pixel.
    """
    xp = be.xp
    design_np, penalty_np, columns, axis_degree = _design(kind, samples, shape, knots=knots, degree=degree)
    design, penalty = be.asarray(design_np), be.asarray(penalty_np)
    v = values.astype(xp.float64).ravel()
    w = xp.where(xp.isfinite(v), weights.astype(xp.float64).ravel(), 0.0)
    v = xp.where(w > 0, v, 0.0)
    valid = w > 0

    def solve(keep: Any) -> Any:
        # Normal equations: K x K with K <= (knots + 4)^2, whatever the number of blocks;
        # the B-spline and Legendre bases keep them well conditioned, and lstsq on the
        # small system still copes with a rank-deficient one.
        weighted = design * xp.where(keep, w, 0.0)[:, None]
        normal = design.T @ weighted
        normal += _SPLINE_PENALTY * xp.trace(normal) / normal.shape[0] * (penalty.T @ penalty)
        return xp.linalg.lstsq(normal, weighted.T @ v, rcond=None)[0]

    solution = solve(valid)
    if iterations:
        fitted = fit_surface_at(be, values, weights, samples, samples, shape, kind="polynomial", knots=0, degree=2,
                                iterations=0, outlier_sigma=outlier_sigma).ravel()
    for _ in range(iterations):
        # A flexible fit can bend onto a cluster of outliers, which then never stand out
        # from it; so a sample is also judged against a robust reference: the fit plus
        # a median filter of its residuals (filtering residuals, not values, keeps the
        # median from shaving the curved vignetting at the corners).
        smoothed = median_smooth(be, xp.where(valid, v - fitted, xp.nan).reshape(values.shape),
                                  size=min(values.shape) // _MEDIAN_FRACTION)
        outlier = _outliers(be, v, w, valid, fitted, outlier_sigma)
        outlier |= _outliers(be, v, w, valid, fitted + smoothed.ravel(), outlier_sigma)
        solution = solve(valid & ~outlier)
        fitted = design @ solution
    ey, ex = (be.asarray(_basis(kind, p, n, knots=knots, degree=d)) for p, n, d in zip(points, shape, axis_degree))
    coef = xp.zeros(columns.size)
    coef[be.asarray(np.flatnonzero(columns))] = solution
    return ey @ coef.reshape(ey.shape[1], ex.shape[1]) @ ex.T


def _outliers(be: Backend, v: Any, w: Any, valid: Any, reference: Any, outlier_sigma: float) -> Any:
    """Valid samples more than ``outlier_sigma`` robust standard deviations from ``reference``, either side."""
    residual = (v - reference) * be.xp.sqrt(w)  # standardised: weights are inverse variances
    scale = _MAD_TO_SIGMA * be.xp.median(be.xp.abs(residual[valid]))
    close = be.xp.abs(v - reference) <= _ALWAYS_INLIER * be.xp.abs(reference)  # noiseless data: MAD near 0
    return valid & (be.xp.abs(residual) > outlier_sigma * scale) & ~close


def median_smooth(be: Backend, level: Any, *, size: int) -> Any:
    """Fill NaN samples from their nearest neighbour, then median filter ``size`` wide.

    Edges are repeated, not mirrored: mirroring a slope at the edge of the field
    would bend the median towards the inside value.
    """
    missing = ~be.xp.isfinite(level)
    if bool(missing.any()):
        indices = be.ndi.distance_transform_edt(missing, return_distances=False, return_indices=True)
        level = level[tuple(indices)]
    size = max(1, size) | 1  # odd, so the window is centred
    return be.ndi.median_filter(level, size=size, mode="nearest")
