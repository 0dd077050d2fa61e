"""Integrate one indexed shot: predict, size the shoeboxes, integrate, flag.

::

    result = integrate_shot(experiment, shot.data, IntegrationOptions(), indexed=indexed_rows)
    result.status            # "integrated" or "failed" (with result.reason)
    result.reflections       # ReflectionTable with DIALS column names

Steps
-----
1. The mosaic model: the options' override, else the crystal's
   ``ML_domain_size_ang``/``ML_half_mosaicity_deg``, else estimated from the
   indexed spots' Δψ (:func:`stillshot.refine.mosaic.estimate_mosaic_parameters`),
   else the defaults; the bandpass from the options or the beam.
2. Prediction (:func:`stillshot.integrate.predict.predict_shot`).
3. The spot profile: a first summation pass with generous circles, then σ
   and prediction offsets from the strongest clean reflections
   (:func:`stillshot.integrate.profile.measure_spot_profile`).
4. Shoeboxes: foreground radius ``n_sigma·sqrt(σ² + σ_pos²)`` (at least
   ``min_foreground_radius_px``), a gap, then the background out to the box.
5. The named integrator (:mod:`stillshot.integrate.registry`), then flags.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from stillshot.geometry import predict_stills
from stillshot.integrate import _kernels as K
from stillshot.integrate import registry
from stillshot.integrate.options import IntegrationOptions
from stillshot.integrate.pixels import shot_pixels
from stillshot.integrate.predict import MosaicModel, detector_d_min, predict_shot
from stillshot.integrate.profile import SpotProfile, measure_spot_profile
from stillshot.integrate.summation import ShoeboxGeometry, run_kernel
from stillshot.table import Flags, ReflectionTable

__all__ = ["EDGE", "GOOD_EXCLUDE", "IntegrationResult", "good_reflections", "integrate_shot", "resolve_mosaic"]

#: Flag bit (a stillshot extension; DIALS leaves bit 27 unused): the
#: foreground circle crosses the panel edge, so part of the spot is missing
#: (``foreground_includes_bad_pixels`` is set too, as DIALS would).
EDGE = 1 << 27

#: Flags that make an integrated_sum reflection unfit for merging.
GOOD_EXCLUDE = int(Flags.overloaded | Flags.foreground_includes_bad_pixels | Flags.overlapped_fg) | EDGE

#: Most reflections integrated in the first (profile-measuring) pass.
_PROFILE_ROWS = 1500

_INDEX_FLAGS = int(Flags.indexed | Flags.strong | Flags.used_in_refinement | Flags.reference_spot
                   | Flags.observed)


@dataclass
class IntegrationResult:
    """The integration of one lattice on one shot.

    Attributes
    ----------
    status : str
        ``integrated`` or ``failed``.
    reason : str
        Why it failed ("" when integrated).
    reflections : ReflectionTable
        Integrated reflections (``id`` 0); empty on failure.
    crystal : Crystal or None
        The crystal with the mosaic parameters used written into it.
    profile : SpotProfile or None
        The measured spot profile.
    resolved : dict
        Run-time choices: ``d_min`` (Å), ``mosaic`` (D Å, η degrees,
        bandpass, source), ``spot_sigma_px``, ``foreground_radius_px``, ...
    timings : dict
        Seconds per step.
    """

    status: str
    reason: str = ""
    reflections: ReflectionTable = field(default_factory=ReflectionTable)
    crystal: object = None
    profile: SpotProfile | None = None
    resolved: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def good_reflections(table: ReflectionTable) -> np.ndarray:
    """Rows fit for merging: ``integrated_sum`` and none of :data:`GOOD_EXCLUDE`.

    Parameters
    ----------
    table : ReflectionTable

    Returns
    -------
    ndarray of bool
    """
    if "flags" not in table:
        return np.zeros(len(table), dtype=bool)
    f = table["flags"]
    return ((f & np.uint64(int(Flags.integrated_sum))) != 0) & ((f & np.uint64(GOOD_EXCLUDE)) == 0)


def resolve_mosaic(crystal, beam, options: IntegrationOptions, indexed: ReflectionTable | None = None
                   ) -> tuple[MosaicModel, str]:
    """The mosaic model for prediction and where it came from.

    Parameters
    ----------
    crystal : Crystal
    beam : Beam
    options : IntegrationOptions
    indexed : ReflectionTable, optional
        This lattice's indexed spots (``miller_index``), for a Δψ estimate.

    Returns
    -------
    MosaicModel
    str
        ``options``, ``crystal``, ``indexed`` or ``default``.
    """
    bandpass = float(options.bandpass) if options.bandpass is not None else float(beam.bandwidth or 0.0)
    dom, eta, source = crystal.domain_size_ang, crystal.half_mosaicity_deg, "crystal"
    if dom is None or eta is None or not dom > 0:
        dom, eta, source = None, None, "default"
        if indexed is not None and "miller_index" in indexed and len(indexed) >= 5:
            from stillshot.refine.mosaic import estimate_mosaic_parameters

            hkl = indexed["miller_index"]
            hkl = hkl[np.any(hkl != 0, axis=1)]
            _, delpsi = predict_stills(crystal.A, beam.s0, hkl)
            d = 1.0 / np.linalg.norm(hkl @ crystal.A.T, axis=1)
            est = estimate_mosaic_parameters(d, delpsi)
            if est is not None and est.domain_size_ang > 0:
                dom, eta, source = est.domain_size_ang, est.half_mosaicity_deg, "indexed"
        if dom is None:
            dom, eta = options.default_domain_size_ang, options.default_half_mosaicity_deg
    if options.domain_size_ang is not None:
        dom, source = float(options.domain_size_ang), "options"
    if options.half_mosaicity_deg is not None:
        eta, source = float(options.half_mosaicity_deg), "options"
    return MosaicModel(float(dom), float(eta), bandpass), source


def _first_pass_profile(pixels, table, options: IntegrationOptions) -> tuple[SpotProfile, float]:
    """Spot profile from generous circles around the predictions (px)."""
    panel = table["panel"].astype(np.int64)
    x, y = table["xyzcal.px"][:, 0], table["xyzcal.px"][:, 1]
    r0 = max(options.n_sigma * options.default_spot_sigma_px, 3.0)
    prof = SpotProfile(options.default_spot_sigma_px)
    # the most nearly full reflections hold the strong spots; measure on at most _PROFILE_ROWS of them
    rows = np.argsort(-table["partiality"], kind="stable")[:_PROFILE_ROWS]
    for _ in range(2):
        geom = ShoeboxGeometry.uniform(panel, x, y, r_fg=r0, gap=options.background_gap_px,
                                       width=options.background_width_px)
        cols = run_kernel(pixels, geom, options, profile_fitting=False, outlier_iterations=1, rows=rows)
        bad = K.BIT_FG_BAD | K.BIT_OVERLOADED | K.BIT_OVERLAP_FG | K.BIT_BG_FAILED | K.BIT_SUM_FAILED
        cols["clean"] = (cols["status"] & bad) == 0
        prof = measure_spot_profile(cols, panel[rows], x[rows], y[rows], radius=geom.r_fg[rows],
                                    min_isigma=options.min_strong_isigma,
                                    default_sigma_px=options.default_spot_sigma_px)
        need = options.n_sigma * math.hypot(prof.sigma_px, prof.position_sigma_px)
        if not prof.measured or need <= 0.8 * r0:
            break
        r0 = 1.3 * need
    return prof, r0


def _flags(status: np.ndarray, base: np.ndarray) -> np.ndarray:
    f = base.astype(np.uint64).copy()

    def setf(bit, flag):
        f[(status & bit) != 0] |= np.uint64(int(flag))

    ok = (status & (K.BIT_BG_FAILED | K.BIT_SUM_FAILED)) == 0
    f[ok] |= np.uint64(int(Flags.integrated_sum))
    setf(K.BIT_BG_FAILED, Flags.failed_during_background_modelling)
    setf(K.BIT_SUM_FAILED, Flags.failed_during_summation)
    setf(K.BIT_OVERLOADED, Flags.overloaded)
    setf(K.BIT_FG_BAD, Flags.foreground_includes_bad_pixels)
    setf(K.BIT_BG_BAD, Flags.background_includes_bad_pixels)
    setf(K.BIT_OVERLAP_FG, Flags.overlapped_fg)
    setf(K.BIT_OVERLAP_BG, Flags.overlapped_bg)
    setf(K.BIT_EDGE, EDGE)
    setf(K.BIT_PRF_OK, Flags.integrated_prf)
    setf(K.BIT_PRF_FAILED, Flags.failed_during_profile_fitting)
    return f


def _mark_indexed(table: ReflectionTable, indexed: ReflectionTable | None) -> None:
    """Copy the indexing flags of matching Miller indices onto the predictions."""
    if indexed is None or len(indexed) == 0 or "miller_index" not in indexed or len(table) == 0:
        return
    hkl_i = np.ascontiguousarray(indexed["miller_index"].astype(np.int64))
    flags_i = indexed["flags"] if "flags" in indexed else np.full(len(indexed), int(Flags.indexed), np.uint64)
    key = lambda h: (h[:, 0] + 1024) * 4194304 + (h[:, 1] + 1024) * 2048 + (h[:, 2] + 1024)  # noqa: E731
    ki = key(hkl_i)
    kt = key(table["miller_index"].astype(np.int64))
    order = np.argsort(ki)
    pos = np.searchsorted(ki[order], kt)
    pos = np.clip(pos, 0, max(len(ki) - 1, 0))
    hit = ki[order][pos] == kt
    bits = (flags_i[order][pos] & np.uint64(_INDEX_FLAGS)) | np.uint64(int(Flags.indexed))
    table["flags"] = np.where(hit, table["flags"] | bits, table["flags"]).astype(np.uint64)


def _failed(reason: str, timings: dict, resolved: dict | None = None) -> IntegrationResult:
    return IntegrationResult(status="failed", reason=reason, timings=timings, resolved=resolved or {})


def integrate_shot(experiment, data, options: IntegrationOptions | None = None, *,
                   indexed: ReflectionTable | None = None, mask=None) -> IntegrationResult:
    """Integrate one lattice (experiment) of a still shot.

    Parameters
    ----------
    experiment : Experiment
        Beam, detector and crystal (A in 1/Å; mosaic parameters if known).
    data : sequence of ndarray
        Per-panel pixel arrays (ADU), shape (n_slow, n_fast).
    options : IntegrationOptions, optional
    indexed : ReflectionTable, optional
        This lattice's indexed spots (``miller_index``, ``flags``): their
        flags are copied onto the matching predictions, and their Δψ give
        the mosaic model when the crystal has none.
    mask : sequence of ndarray of bool, optional
        Per-panel good-pixel masks (True: use).

    Returns
    -------
    IntegrationResult
        Never raises for a bad shot: a failure is a status with a reason.
    """
    options = options or IntegrationOptions()
    timings: dict = {}
    t0 = time.perf_counter()
    crystal = experiment.crystal
    if crystal is None:
        return _failed("no crystal model (the shot is not indexed)", timings)
    try:
        integrator = registry.get(options.algorithm)
        beam, detector = experiment.beam, experiment.detector
        mosaic, source = resolve_mosaic(crystal, beam, options, indexed)
        d_min = float(options.d_min) if options.d_min is not None else detector_d_min(detector, beam)
        resolved = {"d_min": d_min, "mosaic": {"domain_size_ang": mosaic.domain_size_ang,
                                               "half_mosaicity_deg": mosaic.half_mosaicity_deg,
                                               "bandpass": mosaic.bandpass, "source": source}}
        table = predict_shot(crystal, beam, detector, mosaic, d_min=d_min, d_max=options.d_max,
                             min_partiality=options.min_partiality, use_envelope=options.use_envelope)
        t1 = time.perf_counter()
        timings["predict"] = t1 - t0
        resolved["n_predicted"] = len(table)
        if len(table) == 0:
            return _failed("no reflections predicted on the detector", timings, resolved)
        pixels = shot_pixels(detector, data, gain=options.gain, mask=mask)
        if options.spot_sigma_px is not None:
            prof = SpotProfile(float(options.spot_sigma_px))
        else:
            prof, _ = _first_pass_profile(pixels, table, options)
        t2 = time.perf_counter()
        timings["profile"] = t2 - t1
        sig_eff = math.hypot(prof.sigma_px, prof.position_sigma_px)
        r_fg = max(options.n_sigma * sig_eff, options.min_foreground_radius_px)
        panel = table["panel"].astype(np.int64)
        x, y = table["xyzcal.px"][:, 0], table["xyzcal.px"][:, 1]
        dx, dy = prof.offsets_for(panel)
        geom = ShoeboxGeometry.uniform(panel, x, y, r_fg=r_fg, gap=options.background_gap_px,
                                       width=options.background_width_px, prf_sigma=sig_eff,
                                       prf_dx=dx, prf_dy=dy)
        cols = integrator(pixels, geom, options)
        t3 = time.perf_counter()
        timings["integrate"] = t3 - t2
        resolved.update({"spot_sigma_px": prof.sigma_px, "spot_sigma_measured": prof.measured,
                         "position_sigma_px": prof.position_sigma_px, "n_strong": prof.n_strong,
                         "foreground_radius_px": r_fg, "algorithm": options.algorithm,
                         "gain": float(np.median(pixels.gain))})
        out = _table(table, cols)
        _mark_indexed(out, indexed)
        n_ok = int(np.count_nonzero(out.get_flags(Flags.integrated_sum)))
        resolved["n_integrated"] = n_ok
        timings["total"] = time.perf_counter() - t0
        new_crystal = replace(crystal, domain_size_ang=mosaic.domain_size_ang,
                              half_mosaicity_deg=mosaic.half_mosaicity_deg)
        if n_ok == 0:
            return IntegrationResult("failed", "no reflection could be integrated", out, new_crystal, prof,
                                     resolved, timings)
        return IntegrationResult("integrated", "", out, new_crystal, prof, resolved, timings)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError, IndexError) as exc:
        timings["total"] = time.perf_counter() - t0
        return _failed(f"integration failed: {exc}", timings)


def _table(pred: ReflectionTable, cols: dict) -> ReflectionTable:
    """Predictions plus the integrated columns (DIALS names)."""
    out = pred.copy()
    n = len(out)
    status = cols["status"]
    ok = (status & (K.BIT_BG_FAILED | K.BIT_SUM_FAILED)) == 0
    zero = lambda a: np.where(np.isfinite(a) & ok, a, 0.0)  # noqa: E731
    out["intensity.sum.value"] = zero(cols["I"])
    out["intensity.sum.variance"] = zero(cols["var"])
    if np.any((status & (K.BIT_PRF_OK | K.BIT_PRF_FAILED)) != 0):
        prf_ok = (status & K.BIT_PRF_OK) != 0
        out["intensity.prf.value"] = np.where(prf_ok, cols["I_prf"], 0.0)
        out["intensity.prf.variance"] = np.where(prf_ok, cols["var_prf"], 0.0)
    out["background.mean"] = np.where(np.isfinite(cols["bg_mean"]), cols["bg_mean"], 0.0)
    out["background.sum.value"] = zero(cols["bg_sum"])
    out["num_pixels.foreground"] = np.nan_to_num(cols["n_fg"]).astype(np.int32)
    out["num_pixels.background"] = np.nan_to_num(cols["n_bg"]).astype(np.int32)
    out["num_pixels.background_used"] = np.nan_to_num(cols["n_bg_used"]).astype(np.int32)
    out["num_pixels.valid"] = np.nan_to_num(cols["n_valid"]).astype(np.int32)
    bbox = np.zeros((n, 6), dtype=np.int32)
    bbox[:, :4] = cols["bbox"]
    bbox[:, 5] = 1
    out["bbox"] = bbox
    has_obs = np.isfinite(cols["x_obs"])
    xyz = out["xyzcal.px"].copy()
    xyz[has_obs, 0] = cols["x_obs"][has_obs]
    xyz[has_obs, 1] = cols["y_obs"][has_obs]
    xyz[:, 2] = 0.5
    out["xyzobs.px.value"] = xyz
    var = np.zeros((n, 3))
    var[:, 0] = np.where(has_obs, cols["var_x"], 0.0)
    var[:, 1] = np.where(has_obs, cols["var_y"], 0.0)
    var[:, 2] = 1.0 / 12.0
    out["xyzobs.px.variance"] = var
    out["flags"] = _flags(status, out["flags"])
    return out
