"""The partiality model used for scaling and post-refinement.

A reciprocal-lattice point ``r = R·A·h`` (1/Å; ``R`` a small per-shot
correction rotation about the lab x and y axes, perpendicular to the beam)
has the excitation error ``ε = |s0 + r| − 1/λ`` (1/Å).  Its partiality is
Gaussian in ε (Sauter 2015; White 2013),

    p = exp(−ε² / (2σ²)),   σ² = σ_dom² + (|r|·η)² + (|r|²·b)²,

with ``σ_dom = 0.4247/D`` from the mosaic block size D (Å), η the Gaussian
angular mosaic spread (radians; η = η½ / 1.1774 for a half-width η½) and
``b = λ·Δ/(2·2.3548)`` from the bandpass Δ (FWHM, Δλ/λ).  Rotations about
the beam axis do not change ε and are not parameterised.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FWHM_TO_SIGMA",
    "HWHM_TO_SIGMA",
    "bandpass_coefficient",
    "domain_sigma",
    "excitation_error",
    "mosaic_sigma",
    "partiality",
    "rlp_sigma",
    "small_rotations",
]

FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
HWHM_TO_SIGMA = 1.0 / 1.1774100225154747


def domain_sigma(domain_size_ang: np.ndarray) -> np.ndarray:
    """Excitation-error width σ_dom (1/Å) of mosaic blocks of size D (Å): ``0.4247/D``."""
    return FWHM_TO_SIGMA / np.asarray(domain_size_ang, dtype=np.float64)


def mosaic_sigma(half_mosaicity_deg: np.ndarray) -> np.ndarray:
    """Gaussian angular spread η (radians) of a mosaic half-width η½ (degrees, HWHM)."""
    return np.radians(np.asarray(half_mosaicity_deg, dtype=np.float64)) * HWHM_TO_SIGMA


def bandpass_coefficient(wavelength: np.ndarray, bandpass: np.ndarray) -> np.ndarray:
    """``b = λ·Δ·σ/FWHM/2`` (Å) of a spectrum of fractional FWHM Δ at wavelength λ (Å)."""
    return 0.5 * np.asarray(wavelength, dtype=np.float64) * np.asarray(bandpass, dtype=np.float64) * FWHM_TO_SIGMA


def rlp_sigma(r_len: np.ndarray, sig_dom: np.ndarray, eta: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """σ of the excitation error (1/Å).

    Parameters
    ----------
    r_len : ndarray
        |r|, 1/Å.
    sig_dom : ndarray
        Domain-size width, 1/Å.
    eta : ndarray
        Angular spread, radians.
    bw : ndarray
        Bandpass coefficient, Å (:func:`bandpass_coefficient`).
    """
    return np.sqrt(sig_dom**2 + (r_len * eta) ** 2 + (r_len**2 * bw) ** 2)


def excitation_error(r: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """``ε = |s0 + r| − |s0|`` (1/Å) for rows of r and s0 (1/Å), shape (N, 3) each."""
    s1 = s0 + r
    return np.sqrt(np.einsum("ij,ij->i", s1, s1)) - np.sqrt(np.einsum("ij,ij->i", s0, s0))


def partiality(eps: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian partiality ``exp(−ε²/(2σ²))`` (1 on the Ewald sphere)."""
    return np.exp(-0.5 * (eps / sigma) ** 2)


def small_rotations(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Ry(ry)·Rx(rx)`` about the lab x and y axes (radians), shape (S, 3, 3)."""
    rx = np.asarray(rx, dtype=np.float64)
    ry = np.asarray(ry, dtype=np.float64)
    cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    n = len(rx)
    out = np.zeros((n, 3, 3))
    # Ry·Rx
    out[:, 0, 0] = cy
    out[:, 0, 1] = sy * sx
    out[:, 0, 2] = sy * cx
    out[:, 1, 1] = cx
    out[:, 1, 2] = -sx
    out[:, 2, 0] = -sy
    out[:, 2, 1] = cy * sx
    out[:, 2, 2] = cy * cx
    return out
