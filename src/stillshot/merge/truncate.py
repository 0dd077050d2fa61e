"""Amplitudes from intensities: French & Wilson (1978).

The posterior of the true intensity J ≥ 0 given a measurement I ± σ is the
Wilson prior (acentric ``exp(−J/Σ)/Σ``, centric
``exp(−J/2Σ)/sqrt(2πΣJ)``, with Σ = ε·⟨I/ε⟩ of the resolution shell) times
a Gaussian likelihood.  F = E[√J] and σF = sqrt(E[J] − F²) are computed by
quadrature on a grid in F = √J for all reflections at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["french_wilson", "shell_mean_intensity"]


def shell_mean_intensity(d: np.ndarray, intensity: np.ndarray, epsilon: np.ndarray, *,
                         n_bins: int = 20, min_per_bin: int = 40) -> np.ndarray:
    """Σ = ε·⟨I/ε⟩ of each reflection's resolution bin (smooth; floored at a small positive value).

    Parameters
    ----------
    d : ndarray
        Resolution, Å.
    intensity : ndarray
    epsilon : ndarray
        Symmetry enhancement factors.
    n_bins : int
        Most bins (fewer when there are few reflections).
    min_per_bin : int
    """
    n = len(d)
    if n == 0:
        return np.zeros(0)
    nb = int(max(1, min(n_bins, n // max(min_per_bin, 1))))
    s2 = 1.0 / d**2
    edges = np.quantile(s2, np.linspace(0, 1, nb + 1))
    b = np.clip(np.searchsorted(edges, s2, side="right") - 1, 0, nb - 1)
    mean = np.bincount(b, weights=intensity / epsilon, minlength=nb) / np.maximum(np.bincount(b, minlength=nb), 1)
    centres = np.bincount(b, weights=s2, minlength=nb) / np.maximum(np.bincount(b, minlength=nb), 1)
    floor = max(1e-6 * float(np.abs(mean).max()), 1e-12)
    mean = np.maximum(mean, floor)
    if nb > 1:
        smooth = np.exp(np.interp(s2, centres, np.log(mean)))
    else:
        smooth = np.full(n, mean[0])
    return epsilon * smooth


def french_wilson(intensity: np.ndarray, sigma: np.ndarray, sigma_prior: np.ndarray, centric: np.ndarray, *,
                  n_grid: int = 160, chunk: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """French–Wilson amplitudes.

    Parameters
    ----------
    intensity, sigma : ndarray, shape (N,)
        Merged intensities and their σ (σ > 0).
    sigma_prior : ndarray, shape (N,)
        Wilson Σ of each reflection (ε included), same units as intensity.
    centric : ndarray of bool, shape (N,)
    n_grid : int
        Quadrature points.
    chunk : int
        Reflections per block (memory).

    Returns
    -------
    F, sigF : ndarray, shape (N,)
        √(intensity units); NaN where the input is not finite.
    """
    I = np.asarray(intensity, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    Sg = np.maximum(np.asarray(sigma_prior, dtype=np.float64), 1e-12)
    cen = np.asarray(centric, dtype=bool)
    F = np.full(len(I), np.nan)
    sF = np.full(len(I), np.nan)
    ok = np.isfinite(I) & np.isfinite(s) & (s > 0)
    idx = np.nonzero(ok)[0]
    u = (np.arange(n_grid) + 0.5) / n_grid
    for start in range(0, len(idx), chunk):
        j = idx[start:start + chunk]
        Ij, sj, Sj, cj = I[j], s[j], Sg[j], cen[j]
        flo = np.sqrt(np.maximum(Ij - 8.0 * sj, 0.0))
        fhi = np.sqrt(np.maximum(Ij, 0.0) + 8.0 * sj)
        f = flo[:, None] + u[None, :] * (fhi - flo)[:, None]
        J = f * f
        loglik = -0.5 * ((Ij[:, None] - J) / sj[:, None]) ** 2
        logprior = np.where(cj[:, None], -J / (2.0 * Sj[:, None]), np.log(np.maximum(f, 1e-300)) - J / Sj[:, None])
        lp = loglik + logprior
        lp -= lp.max(axis=1, keepdims=True)
        w = np.exp(lp)
        z = w.sum(axis=1)
        ef = (w * f).sum(axis=1) / z
        ej = (w * J).sum(axis=1) / z
        F[j] = ef
        sF[j] = np.sqrt(np.maximum(ej - ef**2, 0.0))
    return F, sF
