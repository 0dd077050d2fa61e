"""Error model: inflate integration σ so that merged deviations are unit normal.

The corrected variance of observation i is (Aimless / CrystFEL style)

    σ'² = sdfac² · (σ² + sdb·Ĩ + (sdadd·Ĩ)²),

where Ĩ = g·⟨I⟩ is the intensity the merged model predicts for the
observation (photons; using the prediction rather than the measurement keeps
weak, noisy observations from being weighted by their own noise).  The
three parameters are fitted so that the normalised deviations from the
leave-one-out mean have unit variance in every bin of Ĩ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from stillshot.merge.merging import leave_one_out

__all__ = ["ErrorModel", "fit_error_model"]

#: Squared deviations are clipped here (robust against outliers) ...
_CLIP = 9.0
#: ... where a unit normal has E[min(z², 9)] = this.
_CLIPPED_MEAN = 0.9940


@dataclass(frozen=True)
class ErrorModel:
    """σ'² = sdfac²(σ² + sdb·Ĩ + (sdadd·Ĩ)²).

    Attributes
    ----------
    sdfac : float
        Overall multiplier (dimensionless).
    sdb : float
        Coefficient of the predicted intensity (photons).
    sdadd : float
        Fractional error (dimensionless).
    """

    sdfac: float = 1.0
    sdb: float = 0.0
    sdadd: float = 0.0

    def variance(self, variance: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Corrected variances (photons²) of observations with integration variance and predicted I."""
        ip = np.maximum(np.asarray(predicted, dtype=np.float64), 0.0)
        v = self.sdfac**2 * (variance + self.sdb * ip + (self.sdadd * ip) ** 2)
        return np.maximum(v, 1e-6 * variance)

    def as_dict(self) -> dict:
        """JSON-ready parameters."""
        return {"sdfac": self.sdfac, "sdb": self.sdb, "sdadd": self.sdadd}


def fit_error_model(index: np.ndarray, n_classes: int, intensity: np.ndarray, variance: np.ndarray,
                    g: np.ndarray, merged: np.ndarray, *, use: np.ndarray | None = None, n_bins: int = 20,
                    max_obs: int = 100_000, seed: int = 0) -> ErrorModel:
    """Fit sdfac, sdb and sdadd to the scatter of observations about their class means.

    Parameters
    ----------
    index : ndarray of int, shape (N,)
        Class of each observation.
    n_classes : int
    intensity, variance : ndarray, shape (N,)
        Observed (partial) intensities and integration variances, photons.
    g : ndarray, shape (N,)
        Scale × partiality of each observation (observed ≈ g·⟨I⟩).
    merged : ndarray, shape (n_classes,)
        Current merged intensities (for the predictions Ĩ).
    use : ndarray of bool, optional
        Observations taking part.
    n_bins : int
        Bins of predicted intensity.
    max_obs : int
        At most this many observations (a seeded random subset) are used.
    seed : int

    Returns
    -------
    ErrorModel
        The identity model when there are too few repeated observations.
    """
    use = np.ones(len(intensity), dtype=bool) if use is None else np.asarray(use, dtype=bool)
    use = use & (g > 1e-3)
    x = np.where(use, intensity / np.where(g > 0, g, 1.0), 0.0)
    v = np.where(use, variance / np.where(g > 0, g, 1.0) ** 2, 1.0)
    mu, vmu = leave_one_out(index, n_classes, x, v, use)
    sel = np.nonzero(use & np.isfinite(mu))[0]
    if len(sel) < 10 * n_bins:
        return ErrorModel()
    if len(sel) > max_obs:
        sel = np.random.default_rng(seed).choice(sel, max_obs, replace=False)
        sel.sort()
    gi = g[sel]
    resid = intensity[sel] - gi * mu[sel]
    var = variance[sel]
    pred = np.maximum(gi * merged[index[sel]], 0.0)
    pred = np.where(np.isfinite(pred), pred, 0.0)
    vmu_obs = gi**2 * vmu[sel]
    edges = np.quantile(pred, np.linspace(0, 1, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    live = counts >= 5

    def objective(q):
        sdfac, sdb, sdadd = np.exp(q[0]), abs(q[1]), abs(q[2])
        vtot = sdfac**2 * (var + sdb * pred + (sdadd * pred) ** 2 + vmu_obs)
        d2 = np.minimum(resid**2 / vtot, _CLIP)
        mean = np.bincount(bins, weights=d2, minlength=n_bins)[live] / counts[live]
        return float((np.log(mean / _CLIPPED_MEAN) ** 2).sum())

    best = None
    for start in ([0.0, 0.0, 0.0], [0.3, 0.5, 0.1]):
        res = minimize(objective, np.array(start), method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 400})
        if best is None or res.fun < best.fun:
            best = res
    q = best.x
    return ErrorModel(float(np.exp(q[0])), float(abs(q[1])), float(abs(q[2])))
