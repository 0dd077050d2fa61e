"""Per-shot mosaic parameters from the Δψ distribution (Sauter et al. 2014, Acta D 70:3299).

The model: a reflection of resolution ``d`` is observed when its rotation Δψ
from the exact Bragg condition lies in ``|Δψ| ≤ (d·α + η)/2`` with
``α = 2/D`` (D the effective mosaic domain size, Å) and η the full mosaic
spread (radians).  With a smoothed box likelihood for the observed Δψ of the
indexed spots, maximising the likelihood over (α, η) gives D and η/2 — the
numbers DIALS writes as ``ML_domain_size_ang`` and ``ML_half_mosaicity_deg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stillshot.refine._kernels import mosaic_nelder_mead


@dataclass(frozen=True)
class MosaicParameters:
    """Effective mosaic parameters of one lattice.

    Attributes
    ----------
    domain_size_ang : float
        Effective mosaic domain size D, Å.
    half_mosaicity_deg : float
        Half mosaic spread η/2, degrees.
    """

    domain_size_ang: float
    half_mosaicity_deg: float

    def expanded(self, factor: float) -> "MosaicParameters":
        """The model widened by ``factor`` (η/2 × factor, D / factor), as DIALS writes it."""
        return MosaicParameters(self.domain_size_ang / factor, self.half_mosaicity_deg * factor)

    def half_width_rad(self, d) -> np.ndarray:
        """Half-width of the Bragg envelope ``d/D + η/2`` (radians) at resolution d (Å)."""
        return np.asarray(d) / self.domain_size_ang + np.radians(self.half_mosaicity_deg)


_ESCALATE = 10.0


def _negloglik(x: np.ndarray, d: np.ndarray, psi: np.ndarray) -> float:
    """Negative log-likelihood at x = (log α, log η): the numpy reference of the numba kernel
    :func:`stillshot.refine._kernels.mosaic_negloglik` that the fit uses."""
    alpha, eta = np.exp(x)
    w = (d * alpha + eta) / 2.0
    b = _ESCALATE / w
    # log of fx·gx with fx = (1/2w)/(1+e^{b(psi+w)})·(1+e^E), gx = 1/(1+e^{-b(psi-w)})·(1+e^E)
    lf = -np.log(2.0 * w) - np.logaddexp(0.0, b * (psi + w))
    lg = -np.logaddexp(0.0, -b * (psi - w))
    const = 2.0 * np.logaddexp(0.0, _ESCALATE)
    return float(-np.sum(lf + lg + const))


def estimate_mosaic_parameters(d: np.ndarray, delpsi: np.ndarray, *, domain_size_start: float = 2000.0,
                               eta_start_rad: float = 1e-3, expansion: float = 1.4) -> MosaicParameters | None:
    """Maximum-likelihood domain size and half-mosaicity from Δψ of indexed spots.

    Parameters
    ----------
    d : ndarray (N,)
        Resolution of each spot, Å.
    delpsi : ndarray (N,)
        Δψ of each spot under the refined model, radians.
    domain_size_start : float
        Starting D, Å.
    eta_start_rad : float
        Starting full mosaic spread, radians.
    expansion : float
        Model expansion factor (DIALS's 1.4): η/2 is multiplied and D divided by it.

    Returns
    -------
    MosaicParameters or None
        None with fewer than 5 spots or when the fit fails.
    """
    d = np.asarray(d, dtype=np.float64)
    psi = np.asarray(delpsi, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(psi)
    d, psi = d[ok], psi[ok]
    if len(d) < 5:
        return None
    if len(d) > 1000:  # a deterministic, resolution-spread subset is plenty for two parameters
        keep = np.argsort(d, kind="stable")[np.linspace(0, len(d) - 1, 1000).astype(int)]
        d, psi = d[keep], psi[keep]
    # a start that already contains most spots keeps the fit away from the flat region
    spread = max(float(np.percentile(np.abs(psi), 90)), 1e-5)
    eta0 = max(eta_start_rad, spread)
    x0 = np.log([2.0 / domain_size_start, eta0])
    # scipy's Nelder–Mead (xatol 1e-3, fatol 1e-5, maxiter 300) step for step, in numba
    x, _ = mosaic_nelder_mead(np.ascontiguousarray(x0, dtype=np.float64), np.ascontiguousarray(d),
                              np.ascontiguousarray(psi), _ESCALATE, 1e-3, 1e-5, 300)
    if not np.all(np.isfinite(x)):
        return None
    alpha, eta = np.exp(x)
    # DIALS expands the ML model by a fixed factor so that predictions cover the observations
    return MosaicParameters(domain_size_ang=float(2.0 / alpha) / expansion,
                            half_mosaicity_deg=float(np.degrees(eta / 2.0)) * expansion)


def ewald_proximal_volume(mosaic: MosaicParameters, wavelength: float, d_min: float = 2.0, n: int = 100) -> float:
    """Volume of reciprocal space (1/Å³) near the Ewald sphere where spots are predicted.

    The measure DIALS's stills indexer uses to reject over-fitted candidates
    (Sauter et al. 2014): the shell between the Ewald sphere (radius 1/λ) and
    a sphere enlarged by 1/D, plus the volume swept by the mosaic spread η
    (growing as ``η·sin φ /(2λ)`` with the scattering angle φ), over the cap up
    to the scattering angle of ``d_min``.

    Parameters
    ----------
    mosaic : MosaicParameters
    wavelength : float
        Å.
    d_min : float
        Resolution limit of the integral, Å (``ewald_proximity_resolution_cutoff``).
    n : int
        Integration steps.

    Returns
    -------
    float
        1/Å³.
    """
    r_l = 1.0 / wavelength
    tt = 2.0 * np.arcsin(min(1.0, wavelength / (2.0 * d_min)))
    part = np.pi * (2.0 / 3.0) * (1.0 - np.cos(tt))
    r_p = r_l + 1.0 / mosaic.domain_size_ang
    shell = part * (r_p**3 - r_l**3)
    eta = 2.0 * np.radians(mosaic.half_mosaicity_deg)
    phi = np.arange(n) / n * tt
    inner = (r_p + eta * r_l * np.sin(phi) / 2.0) ** 3 - r_p**3
    mosaic_vol = (2.0 / 3.0) * np.pi * float(np.sum(inner * np.sin(phi)) * tt / n)
    return float(shell + mosaic_vol)
