"""Per-shot scale, B factor and partiality post-refinement against a reference.

Every observation is modelled as

    I_obs ≈ G_s · exp(−B_s / (2d²)) · p(h; θ_s) · I_ref(h),

with per-shot parameters ``θ_s = (ln G, B, r_x, r_y, ln σ_dom, ln η)``
(Sauter 2015; CrystFEL partialator): scale, Wilson B (Å²), a small crystal
rotation about the lab x and y axes (radians, perpendicular to the beam)
and the mosaic widths of :mod:`stillshot.merge.partiality`.  All shots are
refined at once by a batched Levenberg–Marquardt (one small normal matrix
per shot, assembled with ``bincount``), with Huber weights against
outliers and weak Gaussian priors that hold ill-determined parameters near
their starting values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stillshot.merge.observations import Observations
from stillshot.merge.partiality import (
    bandpass_coefficient,
    domain_sigma,
    mosaic_sigma,
    partiality,
    rlp_sigma,
)

__all__ = ["PARAMETERS", "ShotModel", "initial_parameters", "initial_scales", "refine_shots"]

#: Names of the per-shot parameters, in column order.
PARAMETERS = ("ln_scale", "b_factor", "rot_x", "rot_y", "ln_sigma_domain", "ln_eta")
_FD_STEP = np.array([0.0, 0.0, 2e-6, 2e-6, 1e-4, 1e-4])


def initial_parameters(obs: Observations, *, default_domain_size_ang: float = 2000.0,
                       default_half_mosaicity_deg: float = 0.02) -> np.ndarray:
    """Starting per-shot parameters (S, 6): G = 1, B = 0, no rotation, the crystals' mosaic model.

    Parameters
    ----------
    obs : Observations
    default_domain_size_ang : float
        Mosaic block size (Å) for crystals that carry none.
    default_half_mosaicity_deg : float
        Mosaic half-width (degrees) for crystals that carry none (or zero).
    """
    S = obs.n_shots
    P = np.zeros((S, 6))
    dom = np.where(np.isfinite(obs.domain_size_ang) & (obs.domain_size_ang > 0), obs.domain_size_ang,
                   default_domain_size_ang)
    eta = np.where(np.isfinite(obs.half_mosaicity_deg) & (obs.half_mosaicity_deg > 0), obs.half_mosaicity_deg,
                   default_half_mosaicity_deg)
    P[:, 4] = np.log(domain_sigma(dom))
    P[:, 5] = np.log(mosaic_sigma(eta))
    return P


@dataclass(eq=False)
class ShotModel:
    """Evaluates the per-observation model for per-shot parameters.

    Parameters
    ----------
    obs : Observations
        Hkl and A in the merged indexing (after ambiguity resolution).
    partiality_mode : {"model", "given", "none"}
        ``model``: from the parameters (post-refinement); ``given``:
        integration's partiality column (NaN → model at the start values);
        ``none``: p = 1 (Monte-Carlo averaging).
    P0 : ndarray, shape (S, 6)
        Starting parameters (used for ``given`` where integration gave none).
    """

    obs: Observations
    partiality_mode: str
    P0: np.ndarray

    def __post_init__(self):
        o = self.obs
        self.inv_d2 = 1.0 / o.d**2
        self.r0 = np.einsum("nij,nj->ni", o.A[o.shot], o.hkl.astype(np.float64))
        self.rlen = np.linalg.norm(self.r0, axis=1)
        self.s0 = o.s0[o.shot]
        self.inv_wl = np.linalg.norm(self.s0, axis=1)
        self.bw = bandpass_coefficient(o.wavelength, o.bandpass)[o.shot]
        if self.partiality_mode == "given":
            p = o.partiality.copy()
            missing = ~np.isfinite(p)
            if missing.any():
                p[missing] = self.model_partiality(self.P0)[missing]
            self.given = np.clip(p, 0.0, 1.0)
        elif self.partiality_mode not in ("model", "none"):
            raise ValueError(f"unknown partiality mode {self.partiality_mode!r}")

    @property
    def refines_partiality(self) -> bool:
        """True when the rotation and mosaic parameters change the model."""
        return self.partiality_mode == "model"

    def model_partiality(self, P: np.ndarray) -> np.ndarray:
        """Partiality of every observation for parameters P (S, 6)."""
        shot = self.obs.shot
        x, y, z = self.r0[:, 0], self.r0[:, 1], self.r0[:, 2]
        if np.any(P[:, 2:4] != 0.0):
            # r = Ry(ry)·Rx(rx)·r0 (see partiality.small_rotations), per observation
            rx, ry = P[shot, 2], P[shot, 3]
            cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
            y1 = cx * y - sx * z
            z1 = sx * y + cx * z
            x, y, z = cy * x + sy * z1, y1, -sy * x + cy * z1
        s1x, s1y, s1z = self.s0[:, 0] + x, self.s0[:, 1] + y, self.s0[:, 2] + z
        eps = np.sqrt(s1x * s1x + s1y * s1y + s1z * s1z) - self.inv_wl
        sig = rlp_sigma(self.rlen, np.exp(P[shot, 4]), np.exp(P[shot, 5]), self.bw)
        return partiality(eps, sig)

    def partiality(self, P: np.ndarray) -> np.ndarray:
        """Partiality of every observation under the chosen mode."""
        if self.partiality_mode == "model":
            return self.model_partiality(P)
        if self.partiality_mode == "given":
            return self.given
        return np.ones(self.obs.n_obs)

    def scale(self, P: np.ndarray) -> np.ndarray:
        """``G·exp(−B/(2d²))`` of every observation."""
        shot = self.obs.shot
        return np.exp(P[shot, 0] - 0.5 * P[shot, 1] * self.inv_d2)

    def g(self, P: np.ndarray) -> np.ndarray:
        """Scale × partiality of every observation (observed ≈ g·I)."""
        return self.scale(P) * self.partiality(P)


def initial_scales(model: ShotModel, P: np.ndarray, intensity: np.ndarray, variance: np.ndarray,
                   reference: np.ndarray, *, poisson: bool = True, fractional_error: float = 0.1,
                   n_iterations: int = 4) -> np.ndarray:
    """Parameters with ln G set by iteratively reweighted linear least squares (B kept).

    Parameters
    ----------
    model : ShotModel
    P : ndarray, shape (S, 6)
    intensity : ndarray, shape (N,)
        Observed intensities, photons.
    variance : ndarray, shape (N,)
        Variances, photons² (with ``poisson``: the background part only).
    reference : ndarray, shape (N,)
        Reference intensity of each observation's class (NaN: none).
    poisson : bool
        Add the predicted intensity to each variance (Poisson statistics of
        the model rather than of the measurement).
    fractional_error : float
        Model error in the weights (dimensionless).
    n_iterations : int

    Returns
    -------
    ndarray, shape (S, 6)
    """
    S = len(P)
    shot = model.obs.shot
    ref = np.where(np.isfinite(reference), np.maximum(reference, 0.0), 0.0)
    m0 = model.partiality(P) * np.exp(-0.5 * P[shot, 1] * model.inv_d2) * ref
    out = P.copy()
    G = np.exp(P[:, 0])
    for it in range(n_iterations):
        m = G[shot] * m0
        var = variance + (np.maximum(m, 0.0) if poisson and it > 0 else 0.0) + (fractional_error * m) ** 2 * (it > 0)
        if poisson and it == 0:
            var = variance + np.maximum(intensity, 0.0)
        w = 1.0 / var
        num = np.bincount(shot, weights=w * intensity * m0, minlength=S)
        den = np.bincount(shot, weights=w * m0 * m0, minlength=S)
        ok = (num > 0) & (den > 0)
        G = np.where(ok, num / np.where(ok, den, 1.0), G)
    out[:, 0] = np.log(G)
    return out


def refine_shots(model: ShotModel, P: np.ndarray, intensity: np.ndarray, variance: np.ndarray,
                 reference: np.ndarray, *, free: tuple = (True, True, False, False, False, False),
                 prior_sigma: np.ndarray | None = None, prior_centre: np.ndarray | None = None,
                 use: np.ndarray | None = None, n_iterations: int = 20, huber: float = 3.0,
                 fractional_error: float = 0.1, poisson: bool = True,
                 tolerance: float = 1e-4, b_limit: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Batched Levenberg–Marquardt refinement of the per-shot parameters.

    Parameters
    ----------
    model : ShotModel
    P : ndarray, shape (S, 6)
        Starting parameters.
    intensity, variance : ndarray, shape (N,)
        Observed intensities (photons) and their variances (photons²; the
        background part only with ``poisson``).
    reference : ndarray, shape (N,)
        Reference intensity of each observation's class (NaN: not used).
    free : tuple of 6 bool
        Which parameters are refined (order of :data:`PARAMETERS`).
    prior_sigma : ndarray, shape (6,), optional
        Widths of Gaussian priors on each parameter (inf: none); units of
        the parameter (Å² for B, radians for rotations).
    prior_centre : ndarray, shape (S, 6), optional
        Prior centres (default: the starting parameters).
    use : ndarray of bool, shape (N,), optional
        Observations taking part.
    n_iterations : int
    huber : float
        Huber threshold on normalised residuals.
    fractional_error : float
        Model error added to each observation's variance as
        ``(fractional_error·model)²`` (dimensionless).
    poisson : bool
        ``variance`` is the background part only: the model intensity is
        added to it (Poisson statistics of the prediction, which keeps
        weak measurements from being weighted by their own noise).
    tolerance : float
        Stop when an iteration lowers the total cost by less than this fraction.
    b_limit : float
        Per-shot B factors are kept within ±b_limit, Å².

    Returns
    -------
    P : ndarray, shape (S, 6)
        Refined parameters.
    n_used : ndarray of int, shape (S,)
        Observations each shot was refined against.
    """
    S = len(P)
    shot = model.obs.shot
    free = np.asarray(free, dtype=bool)
    if not model.refines_partiality:
        free = free & np.array([True, True, False, False, False, False])
    prior_sigma = np.full(6, np.inf) if prior_sigma is None else np.asarray(prior_sigma, dtype=np.float64)
    centre = P.copy() if prior_centre is None else np.asarray(prior_centre, dtype=np.float64)
    pw = np.where(np.isfinite(prior_sigma), 1.0 / prior_sigma**2, 0.0)
    ref = np.where(np.isfinite(reference), np.maximum(reference, 0.0), np.nan)
    ok = np.isfinite(ref) & (variance > 0)
    if use is not None:
        ok &= use
    n_used = np.bincount(shot[ok], minlength=S)
    ref = np.where(ok, ref, 0.0)
    idx = np.nonzero(free)[0]
    P = P.copy()
    lam = np.full(S, 1e-3)

    def evaluate(Pc):
        p = model.partiality(Pc)
        sc = model.scale(Pc)
        return sc * p * ref, sc, p

    def costs(resid2_w, Pc):
        c = np.bincount(shot, weights=resid2_w, minlength=S)
        c += ((Pc - centre) ** 2 * pw).sum(axis=1)
        return c

    for _ in range(n_iterations):
        m, sc, p = evaluate(P)
        var_eff = variance + (fractional_error * m) ** 2 + (np.maximum(m, 0.0) if poisson else 0.0)
        z = (intensity - m) / np.sqrt(var_eff)
        hub = np.where(np.abs(z) > huber, huber / np.maximum(np.abs(z), 1e-300), 1.0)
        w = np.where(ok, hub / var_eff, 0.0)
        r = intensity - m
        cost0 = costs(w * r * r, P)
        J = np.zeros((len(m), 6))
        J[:, 0] = m
        J[:, 1] = -0.5 * model.inv_d2 * m
        for k in idx:
            if k < 2:
                continue
            Pk = P.copy()
            Pk[:, k] += _FD_STEP[k]
            pk = model.partiality(Pk)
            J[:, k] = sc * ref * (pk - p) / _FD_STEP[k]
        H = np.zeros((S, 6, 6))
        g = np.zeros((S, 6))
        for a in idx:
            g[:, a] = np.bincount(shot, weights=w * J[:, a] * r, minlength=S) + pw[a] * (centre[:, a] - P[:, a])
            for b in idx:
                if b < a:
                    continue
                hab = np.bincount(shot, weights=w * J[:, a] * J[:, b], minlength=S)
                H[:, a, b] = hab
                H[:, b, a] = hab
            H[:, a, a] += pw[a]
        fixed = np.nonzero(~free)[0]
        for a in fixed:
            H[:, a, a] = 1.0
        diag = np.einsum("sii->si", H)
        improved_any = False
        for _attempt in range(4):
            Hd = H + (lam[:, None] * np.maximum(diag, 1e-12))[:, :, None] * np.eye(6)[None] + 1e-12 * np.eye(6)[None]
            try:
                step = np.linalg.solve(Hd, g[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.zeros_like(g)
                for s in range(S):
                    step[s] = np.linalg.lstsq(Hd[s], g[s], rcond=None)[0]
            step[:, ~free] = 0.0
            step[n_used < 2] = 0.0
            step[:, 0] = np.clip(step[:, 0], -2.0, 2.0)
            Pn = P + step
            Pn[:, 1] = np.clip(Pn[:, 1], -b_limit, b_limit)
            mn, _, _ = evaluate(Pn)
            rn = intensity - mn
            cost1 = costs(w * rn * rn, Pn)
            better = (cost1 < cost0) & np.isfinite(cost1)
            P[better] = Pn[better]
            lam = np.where(better, lam * 0.3, lam * 5.0)
            lam = np.clip(lam, 1e-7, 1e7)
            if better.any():
                improved_any = True
            if better.all() or not (~better & (n_used >= 2)).any():
                break
            # retry only the shots that did not improve
            g = np.where(better[:, None], 0.0, g)
        if not improved_any:
            break
        total0 = float(cost0.sum())
        total1 = float(costs(w * (intensity - evaluate(P)[0]) ** 2, P).sum())
        if total0 - total1 < tolerance * max(total0, 1e-300):
            break
    return P, n_used
