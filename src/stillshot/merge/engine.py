"""The merging procedure: ambiguity → scaling → post-refinement → error model → merge → statistics.

:func:`merge_observations` takes the flat :class:`~stillshot.merge.observations.Observations`
of a run and returns a :class:`MergeResult` with the merged intensities and
amplitudes, the half-sets, the per-shot parameters and the statistics.  It
reads no files and prints nothing; what it resolved at run time (space
group, cell, ambiguity choices, error model, rejected shots) is in
``MergeResult.log`` and the result's fields.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import gemmi
import numpy as np

from stillshot.merge.ambiguity import AmbiguityReport, resolve_ambiguity
from stillshot.merge.error_model import ErrorModel, fit_error_model
from stillshot.merge.merging import reject_outliers, weighted_merge, wilson_outliers
from stillshot.merge.observations import Observations
from stillshot.merge.scaling import ShotModel, initial_parameters, initial_scales, refine_shots
from stillshot.merge.statistics import MergingStatistics, merging_statistics
from stillshot.merge.symmetry import MergeSymmetry, ambiguity_operators
from stillshot.merge.truncate import french_wilson, shell_mean_intensity
from stillshot.models.crystal import space_group

__all__ = ["MergeOptions", "MergeResult", "ReferenceIntensities", "merge_observations"]

_PARAM_GROUPS = {"scale": (0,), "b_factor": (1,), "orientation": (2, 3), "mosaic": (4, 5)}


@dataclass(frozen=True)
class MergeOptions:
    """Options of :func:`merge_observations` (the ``merge`` parameter scopes).

    Parameters
    ----------
    space_group : str or None
        Merge in this space group (None: the crystals' most common one).
    unit_cell : tuple or None
        a, b, c (Å), α, β, γ (degrees) of the merged cell (None: the median
        of the crystals' cells).
    d_min, d_max : float or None
        Resolution limits, Å.
    ambiguity : {"auto", "brehm_diederichs", "reference", "none"}
        Indexing-ambiguity resolution (auto: against the reference when one
        is given, else Brehm–Diederichs; nothing when the lattice has no
        ambiguity).
    ambiguity_max_obliquity : float
        Degrees (gemmi's twin-law search).
    ambiguity_max_pairwise_shots : int
        Shots in the pairwise step of Brehm–Diederichs.
    scaling_model : {"KB", "K", "none"}
        Per-shot scale and B factor, scale only, or nothing.
    scaling_cycles : int
        Scale-and-merge cycles.
    partiality : {"auto", "given", "model", "none"}
        Partiality used without post-refinement: integration's column
        (given; auto when present), the model at the crystals' parameters,
        or none (Monte-Carlo averaging).
    postrefinement : bool
        Refine per-shot partiality parameters against the merged data.
    postrefinement_cycles : int
    postrefinement_parameters : tuple of str
        Among ``scale``, ``b_factor``, ``orientation``, ``mosaic``.
    prior_rotation_deg : float
        Width of the prior on the orientation corrections, degrees.
    prior_ln_width : float
        Width of the priors on ln σ_dom and ln η.
    prior_b_factor : float
        Width of the prior on per-shot B, Å².
    fractional_model_error : float
        Model error in the refinement weights (dimensionless).
    min_partiality : float
        Observations with a smaller partiality are not merged.
    error_model : {"ev11", "none"}
        Fit σ' = sdfac·sqrt(σ² + sdb·I + (sdadd·I)²), or keep integration's σ.
    variance_model : {"predicted", "observed"}
        σ² of an observation: its background variance (integration's
        variance less the measured counts) plus the intensity the merged
        model predicts (``predicted``, unbiased weights for weak data), or
        integration's variance as it is.
    outlier_zmax : float
        Outlier rejection threshold (normalised deviation; ≤ 0: none).
    outlier_wilson_ratio : float
        Observations stronger than this many times the mean intensity of
        their resolution shell (beyond 5σ) are rejected (≤ 0: none).
    min_obs_per_shot : int
        Shots with fewer observations are rejected.
    n_bins : int
        Resolution shells of the statistics.
    half_set_seed : int
        Seed of the random half-set split (by shot).
    seed : int
        Seed of ambiguity resolution and subsampling.
    default_domain_size_ang, default_half_mosaicity_deg : float
        Mosaic model (Å, degrees) of crystals that carry none.
    """

    space_group: str | None = None
    unit_cell: tuple | None = None
    d_min: float | None = None
    d_max: float | None = None
    ambiguity: str = "auto"
    ambiguity_max_obliquity: float = 3.0
    ambiguity_max_pairwise_shots: int = 1500
    scaling_model: str = "KB"
    scaling_cycles: int = 3
    partiality: str = "auto"
    postrefinement: bool = False
    postrefinement_cycles: int = 3
    postrefinement_parameters: tuple = ("scale", "b_factor", "orientation", "mosaic")
    prior_rotation_deg: float = 0.05
    prior_ln_width: float = 1.0
    prior_b_factor: float = 30.0
    fractional_model_error: float = 0.1
    min_partiality: float = 0.4
    error_model: str = "ev11"
    variance_model: str = "predicted"
    outlier_zmax: float = 6.0
    outlier_wilson_ratio: float = 40.0
    min_obs_per_shot: int = 10
    n_bins: int = 10
    half_set_seed: int = 0
    seed: int = 0
    default_domain_size_ang: float = 2000.0
    default_half_mosaicity_deg: float = 0.02


@dataclass(frozen=True)
class ReferenceIntensities:
    """Reference intensities (e.g. from an MTZ) for ambiguity resolution and scaling.

    Attributes
    ----------
    hkl : ndarray of int, shape (M, 3)
    intensity : ndarray, shape (M,)
        Intensities (amplitudes squared for an F column).
    """

    hkl: np.ndarray
    intensity: np.ndarray


@dataclass(eq=False)
class MergeResult:
    """Everything a merge produced.

    Attributes
    ----------
    symmetry : MergeSymmetry
    hkl : ndarray of int32, shape (U, 3)
        Merged reflections, gemmi ASU.
    d : ndarray, shape (U,)
        Å.
    intensity, sigma : ndarray, shape (U,)
        Merged intensities (units of a full reflection on a shot of scale 1) and σ.
    n_obs : ndarray of int, shape (U,)
    amplitude, sigma_amplitude : ndarray, shape (U,)
        French–Wilson F and σF.
    half_intensity, half_sigma : ndarray, shape (2, U)
        The half-sets (NaN where a half has no observation).
    half_n_obs : ndarray of int, shape (2, U)
    statistics : MergingStatistics
    shot_parameters : ndarray, shape (S, 6)
        ln G, B (Å²), rotations about x, y (rad), ln σ_dom (ln 1/Å), ln η (ln rad).
    shot_accepted : ndarray of bool, shape (S,)
    shot_half : ndarray of int, shape (S,)
        0 or 1.
    shot_n_obs : ndarray of int, shape (S,)
        Observations merged per shot.
    ambiguity : AmbiguityReport or None
    error_model : ErrorModel
    observations : Observations
        The input, reindexed into the merged setting.
    obs_class : ndarray of int, shape (N,)
        Merged reflection of each observation (-1: none, e.g. absences).
    obs_used : ndarray of bool, shape (N,)
        Merged (not rejected, above the partiality limit, accepted shot).
    obs_scale : ndarray, shape (N,)
        Scale × partiality applied to each observation.
    obs_partiality : ndarray, shape (N,)
    log : list of str
        What was resolved at run time.
    """

    symmetry: MergeSymmetry
    hkl: np.ndarray
    d: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray
    n_obs: np.ndarray
    amplitude: np.ndarray
    sigma_amplitude: np.ndarray
    half_intensity: np.ndarray
    half_sigma: np.ndarray
    half_n_obs: np.ndarray
    statistics: MergingStatistics
    shot_parameters: np.ndarray
    shot_accepted: np.ndarray
    shot_half: np.ndarray
    shot_n_obs: np.ndarray
    ambiguity: AmbiguityReport | None
    error_model: ErrorModel
    observations: Observations
    obs_class: np.ndarray
    obs_used: np.ndarray
    obs_scale: np.ndarray
    obs_partiality: np.ndarray
    log: list = field(default_factory=list)

    def summary(self) -> dict:
        """JSON-ready summary of the run-time choices (for merging_stats.json)."""
        P = self.shot_parameters[self.shot_accepted]
        return {
            "space_group": self.symmetry.space_group.hm,
            "unit_cell": list(self.symmetry.unit_cell.parameters),
            "n_shots": int(len(self.shot_accepted)),
            "n_shots_accepted": int(self.shot_accepted.sum()),
            "n_observations": int(self.obs_used.sum()),
            "n_unique": int(np.isfinite(self.intensity).sum()),
            "error_model": self.error_model.as_dict(),
            "ambiguity": self.ambiguity.as_dict() if self.ambiguity is not None else None,
            "shot_scale_median": float(np.exp(np.median(P[:, 0]))) if len(P) else None,
            "shot_b_factor_median": float(np.median(P[:, 1])) if len(P) else None,
            "log": list(self.log),
        }


def _symmetrised_cell(params: np.ndarray, sg: gemmi.SpaceGroup) -> gemmi.UnitCell:
    """Cell parameters (Å, degrees) averaged onto the metric constraints of the crystal system."""
    a, b, c, al, be, ga = (float(v) for v in params)
    system = sg.crystal_system_str()
    if system in ("tetragonal",):
        a = b = 0.5 * (a + b)
        al = be = ga = 90.0
    elif system == "trigonal" and sg.ext == "R":
        a = b = c = (a + b + c) / 3.0
        al = be = ga = (al + be + ga) / 3.0
    elif system in ("trigonal", "hexagonal"):
        a = b = 0.5 * (a + b)
        al = be = 90.0
        ga = 120.0
    elif system == "cubic":
        a = b = c = (a + b + c) / 3.0
        al = be = ga = 90.0
    elif system == "orthorhombic":
        al = be = ga = 90.0
    elif system == "monoclinic":
        al = ga = 90.0
    return gemmi.UnitCell(a, b, c, al, be, ga)


def _choose_symmetry(obs: Observations, options: MergeOptions, log: list) -> MergeSymmetry:
    if options.space_group:
        sg = space_group(str(options.space_group))
    else:
        if not obs.space_groups:
            raise ValueError("no crystals to merge")
        name, _ = Counter(obs.space_groups).most_common(1)[0]
        sg = space_group(name)
        log.append(f"space group {sg.xhm()} (from the crystals)")
        if sg.is_centrosymmetric():
            log.append(f"the crystals' space group {sg.xhm()} is centrosymmetric (a Laue group, as DIALS "
                       "writes after indexing); give symmetry.space_group for the MTZ files")
    if options.unit_cell:
        cell = gemmi.UnitCell(*[float(v) for v in options.unit_cell])
    else:
        cell = _symmetrised_cell(np.median(obs.unit_cells, axis=0), sg)
        log.append("unit cell " + ", ".join(f"{v:.3f}" for v in cell.parameters) + " (median of the crystals)")
    return MergeSymmetry(sg, cell)


def _reference_per_class(symmetry: MergeSymmetry, reference: ReferenceIntensities, class_keys: np.ndarray):
    """Reference intensity of each merged class (NaN where the reference lacks it), and (keys, I) sorted."""
    h = np.asarray(reference.hkl, dtype=np.int64).reshape(-1, 3)
    vals = np.asarray(reference.intensity, dtype=np.float64)
    ok = np.isfinite(vals)
    keys = symmetry.keys(h[ok])
    order = np.argsort(keys)
    rk, rv = keys[order], vals[ok][order]
    if len(rk) == 0:
        return np.full(len(class_keys), np.nan), (rk, rv)
    pos = np.clip(np.searchsorted(rk, class_keys), 0, len(rk) - 1)
    return np.where(rk[pos] == class_keys, rv[pos], np.nan), (rk, rv)


def merge_observations(obs: Observations, options: MergeOptions | None = None, *,
                       reference: ReferenceIntensities | None = None) -> MergeResult:
    """Scale, post-refine and merge a run's observations.

    Parameters
    ----------
    obs : Observations
        From :func:`~stillshot.merge.observations.observations_from_integrated`.
    options : MergeOptions, optional
    reference : ReferenceIntensities, optional
        Resolves indexing ambiguities against these intensities and scales
        every shot against them (instead of against the merged data).

    Returns
    -------
    MergeResult

    Raises
    ------
    ValueError
        When there is nothing to merge.
    """
    opt = options or MergeOptions()
    log: list[str] = []
    if obs.n_obs == 0 or obs.n_shots == 0:
        raise ValueError("no integrated observations to merge")
    symmetry = _choose_symmetry(obs, opt, log)
    S = obs.n_shots
    keep = np.ones(obs.n_obs, dtype=bool)
    if opt.d_min is not None:
        keep &= obs.d >= opt.d_min
    if opt.d_max is not None:
        keep &= obs.d <= opt.d_max
    obs = obs.select(keep)
    n_per_shot = np.bincount(obs.shot, minlength=S)
    accepted = n_per_shot >= opt.min_obs_per_shot
    if (~accepted).any():
        log.append(f"{int((~accepted).sum())} shots with fewer than {opt.min_obs_per_shot} observations rejected")
    if not accepted.any():
        raise ValueError(f"no shot has {opt.min_obs_per_shot} or more observations")

    # -- indexing ambiguity ---------------------------------------------------------
    report = None
    ops = ambiguity_operators(symmetry.space_group, symmetry.unit_cell, max_obliquity=opt.ambiguity_max_obliquity)
    ref_sorted = None
    if reference is not None:
        _, ref_sorted = _reference_per_class(symmetry, reference, np.zeros(0, dtype=np.int64))
    if len(ops) > 1 and opt.ambiguity != "none":
        use_ref = reference is not None and opt.ambiguity in ("auto", "reference")
        if opt.ambiguity == "reference" and reference is None:
            raise ValueError("ambiguity resolution against a reference needs a reference")
        sel = accepted[obs.shot]
        report = resolve_ambiguity(symmetry, ops, obs.shot[sel], obs.hkl[sel], obs.d[sel], obs.intensity[sel], S,
                                   reference=ref_sorted if use_ref else None,
                                   max_pairwise_shots=opt.ambiguity_max_pairwise_shots, seed=opt.seed)
        mats = np.stack([ops[max(c, 0)].matrix for c in report.choice])
        obs = obs.reindexed(mats)
        unresolved = accepted & (report.choice < 0)
        if unresolved.any():
            accepted &= ~unresolved
            log.append(f"{int(unresolved.sum())} shots rejected (indexing ambiguity unresolved: too few "
                       "common reflections)")
        log.append(f"indexing ambiguity ({', '.join(op.triplet for op in ops)}) resolved by {report.method}: "
                   + ", ".join(f"{k}: {v}" for k, v in report.counts.items()))
    elif len(ops) > 1:
        log.append("indexing ambiguity present but not resolved (symmetry.ambiguity=none)")

    # -- classes ------------------------------------------------------------------------
    keys = symmetry.keys(obs.hkl)
    absent = symmetry.absent(obs.hkl)
    uniq, first = np.unique(keys, return_index=True)
    cls = np.searchsorted(uniq, keys)
    U = len(uniq)
    base_use = accepted[obs.shot] & ~absent
    obs_eps = symmetry.epsilon(obs.hkl)
    ref_class = None
    if reference is not None:
        ref_class, _ = _reference_per_class(symmetry, reference, uniq)
        log.append(f"scaling against the reference ({int(np.isfinite(ref_class).sum())} of {U} reflections)")

    # -- scaling --------------------------------------------------------------------------
    P0 = initial_parameters(obs, default_domain_size_ang=opt.default_domain_size_ang,
                            default_half_mosaicity_deg=opt.default_half_mosaicity_deg)
    mode = opt.partiality
    if mode == "auto":
        mode = "given" if np.isfinite(obs.partiality).any() else "model"
    model = ShotModel(obs, mode, P0)
    I, V = obs.intensity, obs.variance
    em = ErrorModel()
    predicted_var = opt.variance_model == "predicted"
    if opt.variance_model not in ("predicted", "observed"):
        raise ValueError(f"unknown variance model {opt.variance_model!r}")
    Vb = np.maximum(V - np.maximum(I, 0.0), np.maximum(0.05 * V, 1e-6 * float(np.median(V)))) if predicted_var else V

    def merge(model_, P, em_, prev=None, use=None, zmax=opt.outlier_zmax):
        g = model_.g(P)
        p = model_.partiality(P)
        u = base_use & (p >= opt.min_partiality) & (g > 0) & np.isfinite(g)
        if use is not None:
            u &= use
        gs = np.where(u, g, 1.0)
        pred = gs * prev[cls] if prev is not None else np.maximum(I, 0.0)
        pred = np.where(np.isfinite(pred), pred, np.maximum(I, 0.0))
        var = em_.variance(Vb + np.maximum(pred, 0.0) if predicted_var else V, pred)
        x = I / gs
        v = var / gs**2
        # integration's own σ here: the model-based one grows with a merged value the outlier inflated
        u &= ~wilson_outliers(x, V / gs**2, obs.d, obs_eps, u, ratio=opt.outlier_wilson_ratio)
        kept = reject_outliers(cls, U, x, v, zmax=zmax, use=u) if zmax and zmax > 0 else u
        mean, mvar, n = weighted_merge(cls, U, x, v, kept)
        return mean, mvar, n, kept, x, v, g, p

    P = P0.copy()
    if opt.scaling_model != "none":
        free = (True, opt.scaling_model == "KB", False, False, False, False)
        prior = np.array([np.inf, opt.prior_b_factor, np.inf, np.inf, np.inf, np.inf])
        if ref_class is not None:
            current = ref_class
        else:
            # start: shots put on a common scale by their mean intensity, then merged
            mean_I = np.bincount(obs.shot, weights=np.where(base_use, I, 0.0), minlength=S) / np.maximum(
                np.bincount(obs.shot, weights=base_use.astype(float), minlength=S), 1)
            P[:, 0] = np.log(np.where(mean_I > 0, mean_I, np.nanmedian(mean_I[mean_I > 0]) if (mean_I > 0).any() else 1.0))
            current = merge(model, P, em, zmax=0)[0]
        P = initial_scales(model, P, I, Vb, current[cls], poisson=predicted_var,
                           fractional_error=opt.fractional_model_error)
        for _cycle in range(max(opt.scaling_cycles, 1)):
            P, n_used = refine_shots(model, P, I, Vb, current[cls], free=free, prior_sigma=prior, prior_centre=P0,
                                     use=base_use, fractional_error=opt.fractional_model_error,
                                     poisson=predicted_var)
            if ref_class is None:
                current = merge(model, P, em)[0]
        log.append(f"scaling ({opt.scaling_model}, partiality {mode}): {opt.scaling_cycles} cycles")
    else:
        current = merge(model, P, em)[0]

    # -- post-refinement --------------------------------------------------------------------
    if opt.postrefinement:
        pr_model = ShotModel(obs, "model", P0)
        free = np.zeros(6, dtype=bool)
        for name in opt.postrefinement_parameters:
            if name not in _PARAM_GROUPS:
                raise ValueError(f"unknown post-refinement parameter {name!r} (known: {', '.join(_PARAM_GROUPS)})")
            free[list(_PARAM_GROUPS[name])] = True
        rot = np.radians(opt.prior_rotation_deg)
        prior = np.array([np.inf, opt.prior_b_factor, rot, rot, opt.prior_ln_width, opt.prior_ln_width])
        centre = P.copy()
        centre[:, 2:] = P0[:, 2:]
        if ref_class is None:
            current = merge(pr_model, P, em)[0]
        P = initial_scales(pr_model, P, I, Vb, current[cls], poisson=predicted_var,
                           fractional_error=opt.fractional_model_error)
        for _cycle in range(max(opt.postrefinement_cycles, 1)):
            P, n_used = refine_shots(pr_model, P, I, Vb, current[cls], free=tuple(free), prior_sigma=prior,
                                     prior_centre=centre, use=base_use,
                                     fractional_error=opt.fractional_model_error, poisson=predicted_var)
            if ref_class is None:
                current = merge(pr_model, P, em)[0]
        model = pr_model
        mode = "model"
        log.append(f"post-refinement ({', '.join(opt.postrefinement_parameters)}): {opt.postrefinement_cycles} cycles")

    bad = ~np.all(np.isfinite(P), axis=1)
    if bad.any():
        accepted &= ~bad
        base_use &= accepted[obs.shot]
        log.append(f"{int(bad.sum())} shots rejected (scaling diverged)")

    # -- error model and final merge ------------------------------------------------------------
    if opt.error_model == "ev11":
        if ref_class is not None:
            current = merge(model, P, em)[0]
        g_now = model.g(P)
        u_now = base_use & (model.partiality(P) >= opt.min_partiality) & (g_now > 0)
        for _ in range(2):
            pred_now = np.maximum(np.where(np.isfinite(current[cls]), g_now * current[cls], 0.0), 0.0)
            v_fit = Vb + pred_now if predicted_var else V
            em = fit_error_model(cls, U, I, v_fit, g_now, current, use=u_now, seed=opt.seed)
            current = merge(model, P, em, prev=current)[0]
        log.append(f"error model sdfac={em.sdfac:.3f} sdb={em.sdb:.3f} sdadd={em.sdadd:.4f}")
    elif opt.error_model != "none":
        raise ValueError(f"unknown error model {opt.error_model!r}")
    mean, mvar, n, kept, x, v, g, p = merge(model, P, em, prev=current if opt.error_model == "ev11" else None)

    # -- half-sets (random split by shot) ----------------------------------------------------------
    rng = np.random.default_rng(opt.half_set_seed)
    shot_half = np.zeros(S, dtype=np.int64)
    acc_idx = np.nonzero(accepted)[0]
    perm = rng.permutation(acc_idx)
    shot_half[perm[len(perm) // 2:]] = 1
    half_I = np.full((2, U), np.nan)
    half_V = np.full((2, U), np.nan)
    half_n = np.zeros((2, U), dtype=np.int64)
    for h in (0, 1):
        sel = kept & (shot_half[obs.shot] == h)
        half_I[h], half_V[h], half_n[h] = weighted_merge(cls, U, x, v, sel)

    # -- ASU, amplitudes, statistics ---------------------------------------------------------------
    rep = obs.hkl[first]
    asu, _ = symmetry.to_asu(rep)
    d = symmetry.d_spacing(asu)
    measured = n > 0
    sigma = np.sqrt(mvar)
    eps = symmetry.epsilon(asu)
    F = np.full(U, np.nan)
    sF = np.full(U, np.nan)
    if measured.any():
        prior_sigma = shell_mean_intensity(d[measured], mean[measured], eps[measured])
        F[measured], sF[measured] = french_wilson(mean[measured], sigma[measured], prior_sigma,
                                                  symmetry.centric(asu[measured]))
    hkl_out = asu[measured & ~symmetry.absent(asu)]
    keep_u = measured & ~symmetry.absent(asu)
    d_lo = float(d[keep_u].max()) if opt.d_max is None else float(opt.d_max)
    d_hi = float(d[keep_u].min()) if opt.d_min is None else float(opt.d_min)
    possible = symmetry.complete_set(d_hi * (1 - 1e-9), d_lo * (1 + 1e-9))
    stats = merging_statistics(d[keep_u], mean[keep_u], sigma[keep_u], n[keep_u], half_I[0][keep_u],
                               half_I[1][keep_u], symmetry.d_spacing(possible), n_bins=opt.n_bins)
    obs_class = np.full(obs.n_obs, -1, dtype=np.int64)
    remap = np.full(U, -1, dtype=np.int64)
    remap[keep_u] = np.arange(int(keep_u.sum()))
    obs_class[:] = remap[cls]
    shot_n = np.bincount(obs.shot[kept], minlength=S)
    return MergeResult(
        symmetry=symmetry, hkl=hkl_out.astype(np.int32), d=d[keep_u], intensity=mean[keep_u], sigma=sigma[keep_u],
        n_obs=n[keep_u], amplitude=F[keep_u], sigma_amplitude=sF[keep_u],
        half_intensity=half_I[:, keep_u], half_sigma=np.sqrt(half_V[:, keep_u]), half_n_obs=half_n[:, keep_u],
        statistics=stats, shot_parameters=P, shot_accepted=accepted, shot_half=shot_half, shot_n_obs=shot_n,
        ambiguity=report, error_model=em, observations=obs, obs_class=obs_class, obs_used=kept,
        obs_scale=g, obs_partiality=p, log=log,
    )
