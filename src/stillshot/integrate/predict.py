"""Which reflections a still shot excites, where they land, and how partial they are.

The mosaic/partiality model (the same as :mod:`stillshot.simulate`'s, so that
simulated truth and estimates agree):

* a reflection h with reciprocal-lattice point ``r = A·h`` has excitation
  error ``ε = |s0 + r| - 1/λ`` (1/Å);
* its partiality is ``p = exp(-ε² / (2σ²))`` with
  ``σ² = (0.4247/D)² + (|r|·η/1.1774)² + (|r|²·λ·Δ/(2·2.3548))²``: mosaic
  blocks of size D (Å; reciprocal-space FWHM 1/D), half mosaic angle η
  (radians, HWHM; DIALS ``ML_half_mosaicity_deg``) and the beam bandpass Δ
  (fractional FWHM Δλ/λ);
* a reflection is *excited* when ``p ≥ min_partiality``, or when its rotation
  Δψ from the Bragg condition lies inside the Sauter (2014) envelope
  ``|Δψ| ≤ d/D + η`` that DIALS's stills predictor uses with the same
  ``ML_*`` parameters;
* its predicted centroid is DIALS's stills prediction (the rlp rotated onto
  the Ewald sphere about ``r × ŝ0``) intersected with the detector (first
  panel in panel order, as :func:`stillshot.geometry.ray_intersection`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stillshot.geometry import mm_to_px, panel_arrays, predict_stills
from stillshot.integrate import _kernels as K
from stillshot.table import Flags, ReflectionTable

__all__ = ["MosaicModel", "detector_d_min", "partiality_sigma", "predict_shot"]

_FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
_HWHM_TO_SIGMA = 1.0 / 1.1774100225154747


@dataclass(frozen=True)
class MosaicModel:
    """Per-shot mosaic model used for prediction and partiality.

    Attributes
    ----------
    domain_size_ang : float
        Mosaic block size D, Å (DIALS ``ML_domain_size_ang``).
    half_mosaicity_deg : float
        Half mosaic angle η, degrees (DIALS ``ML_half_mosaicity_deg``).
    bandpass : float
        Fractional FWHM of the spectrum, Δλ/λ (dimensionless).
    """

    domain_size_ang: float
    half_mosaicity_deg: float
    bandpass: float = 0.0

    def __post_init__(self):
        if not self.domain_size_ang > 0:
            raise ValueError(f"mosaic domain size must be positive, got {self.domain_size_ang} Å")
        if self.half_mosaicity_deg < 0 or self.bandpass < 0:
            raise ValueError("half mosaicity and bandpass must be ≥ 0")


def partiality_sigma(rlp_length: np.ndarray, wavelength: float, mosaic: MosaicModel) -> np.ndarray:
    """Gaussian σ of the excitation-error profile (1/Å) at reciprocal radius |r| (1/Å).

    Parameters
    ----------
    rlp_length : ndarray
        |r| = 1/d, 1/Å.
    wavelength : float
        Å.
    mosaic : MosaicModel

    Returns
    -------
    ndarray
        σ in 1/Å.
    """
    r = np.asarray(rlp_length, dtype=np.float64)
    eta = math.radians(mosaic.half_mosaicity_deg) * _HWHM_TO_SIGMA
    s_dom = _FWHM_TO_SIGMA / mosaic.domain_size_ang
    s_bw = 0.5 * wavelength * mosaic.bandpass * _FWHM_TO_SIGMA
    return np.sqrt(s_dom**2 + (r * eta) ** 2 + (r * r * s_bw) ** 2)


def detector_d_min(detector, beam) -> float:
    """Resolution (Å) at the detector's outermost pixel corner.

    Parameters
    ----------
    detector : Detector
    beam : Beam

    Returns
    -------
    float
        d in Å.
    """
    pa = panel_arrays(detector)
    us0 = beam.unit_s0
    best = 1e-12
    for p in range(pa.n_panels):
        for fx in (0.0, 1.0):
            for fy in (0.0, 1.0):
                lab = pa.origin[p] + fx * pa.size_mm[p, 0] * pa.fast[p] + fy * pa.size_mm[p, 1] * pa.slow[p]
                c = float(np.clip(lab @ us0 / np.linalg.norm(lab), -1.0, 1.0))
                best = max(best, math.sqrt(max(2.0 * (1.0 - c), 0.0)))
    return beam.wavelength / best


def predict_shot(crystal, beam, detector, mosaic: MosaicModel, *, d_min: float, d_max: float | None = None,
                 min_partiality: float = 0.01, use_envelope: bool = True) -> ReflectionTable:
    """Excited reflections of one lattice on one still shot.

    Parameters
    ----------
    crystal : Crystal
        Setting matrix A (1/Å).
    beam : Beam
        Wavelength (Å) and direction.
    detector : Detector
    mosaic : MosaicModel
        Domain size (Å), half mosaic angle (degrees), bandpass (Δλ/λ).
    d_min : float
        High-resolution limit, Å.
    d_max : float, optional
        Low-resolution limit, Å.
    min_partiality : float
        Smallest estimated partiality predicted (0–1).
    use_envelope : bool
        Also predict reflections inside the Sauter/DIALS Δψ envelope
        ``|Δψ| ≤ d/D + η``.

    Returns
    -------
    ReflectionTable
        ``miller_index``, ``panel``, ``s1`` (1/Å), ``xyzcal.px``,
        ``xyzcal.mm``, ``delpsical.rad``, ``rlp`` (1/Å), ``d`` (Å),
        ``excitation`` (ε, 1/Å), ``partiality`` (0–1) and ``flags``
        (``predicted``); ``id`` is 0.  Sorted by panel, then slow, fast.
    """
    A = np.asarray(crystal.A, dtype=np.float64)
    s0 = beam.s0
    wl = beam.wavelength
    qmax = 1.0 / d_min
    sig_max = float(partiality_sigma(np.array([qmax]), wl, mosaic)[0])
    eps_part = sig_max * math.sqrt(-2.0 * math.log(min(max(min_partiality, 1e-12), 0.999999)))
    eta_rad = math.radians(mosaic.half_mosaicity_deg)
    # Δψ envelope → excitation: a rotation Δψ moves the rlp by about |r|·Δψ off the sphere
    eps_env = (1.0 / mosaic.domain_size_ang + qmax * eta_rad) * 1.05 if use_envelope else 0.0
    eps_max = max(eps_part, eps_env)
    real = np.linalg.inv(A)
    lim = np.floor(np.linalg.norm(real, axis=1) / d_min).astype(np.int64)
    hkl = K.ewald_candidates(A, s0, d_min, lim, eps_max)
    q = hkl.astype(np.float64) @ A.T
    qlen = np.linalg.norm(q, axis=1)
    if d_max is not None:
        keep = qlen >= 1.0 / d_max
        hkl, q, qlen = hkl[keep], q[keep], qlen[keep]
    eps = np.linalg.norm(q + s0, axis=1) - np.linalg.norm(s0)
    part = np.exp(-0.5 * (eps / partiality_sigma(qlen, wl, mosaic)) ** 2)
    s1, delpsi = predict_stills(None, s0, rlp=q)
    excited = part >= min_partiality
    if use_envelope:
        excited |= np.abs(delpsi) <= (1.0 / qlen) / mosaic.domain_size_ang + eta_rad
    excited &= np.isfinite(delpsi)
    hkl, q, qlen, eps, part, s1, delpsi = (a[excited] for a in (hkl, q, qlen, eps, part, s1, delpsi))
    pa = panel_arrays(detector)
    panel, xy_mm = K.first_panel_hits(pa.d_inverse, pa.size_mm, np.ascontiguousarray(s1))
    valid = panel >= 0
    hkl, q, qlen, eps, part, s1, delpsi = (a[valid] for a in (hkl, q, qlen, eps, part, s1, delpsi))
    panel, xy_mm = panel[valid], xy_mm[valid]
    xy_px = mm_to_px(pa, panel, xy_mm) if len(panel) else np.zeros((0, 2))
    order = np.lexsort((xy_px[:, 0], xy_px[:, 1], panel))
    n = len(order)
    z = np.zeros((n, 1))
    table = ReflectionTable(
        {
            "miller_index": hkl[order],
            "id": np.zeros(n, dtype=np.int32),
            "panel": panel[order].astype(np.uint64),
            "s1": s1[order],
            "xyzcal.px": np.hstack([xy_px[order], z]),
            "xyzcal.mm": np.hstack([xy_mm[order], z]),
            "delpsical.rad": delpsi[order],
            "rlp": q[order],
            "d": 1.0 / qlen[order],
            "excitation": eps[order],
            "partiality": part[order],
            "flags": np.full(n, int(Flags.predicted), dtype=np.uint64),
        }
    )
    return table
