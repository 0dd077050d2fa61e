"""Integrated tables made from simulator truth (no images): test and benchmark data for merging.

:func:`integrated_from_truth` plays integration for simulated shots: it
takes each lattice's true partial intensities (photons), perturbs the
crystal model the way indexing would (a small orientation error about
random axes, mis-estimated mosaic parameters), predicts partialities from
that estimated model, and measures each reflection with Poisson noise on
spot + background, an imperfect background estimate and an optional
multiplicative model error.  The result is an
(:class:`~stillshot.models.ExperimentList`, :class:`~stillshot.table.ReflectionTable`)
pair with the columns integration writes, plus the truth needed to check
merging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from stillshot.merge.partiality import (
    bandpass_coefficient,
    domain_sigma,
    excitation_error,
    mosaic_sigma,
    partiality,
    rlp_sigma,
)
from stillshot.merge.symmetry import AmbiguityOperator
from stillshot.models import Crystal, Experiment, ExperimentList
from stillshot.table import Flags, ReflectionTable

__all__ = ["SyntheticIntegration", "integrated_from_truth"]


@dataclass(frozen=True)
class SyntheticIntegration:
    """How the simulated 'integration' errs.

    Parameters
    ----------
    orientation_error_deg : float
        σ of the indexing orientation error about each of the lab x and y
        axes, degrees.
    mosaic_error : float
        σ of the log-normal error of the estimated domain size and mosaic
        half-width (dimensionless).
    background_photons : float
        Background photons under a spot's foreground.
    background_ratio : float
        Foreground/background pixel ratio (the background estimate's relative variance).
    model_error : float
        Multiplicative error of each measurement (σ, dimensionless), not in
        the reported variance.
    min_predicted_partiality : float
        Reflections the estimated model gives a smaller partiality are not integrated.
    seed : int
    """

    orientation_error_deg: float = 0.02
    mosaic_error: float = 0.3
    background_photons: float = 10.0
    background_ratio: float = 0.1
    model_error: float = 0.03
    min_predicted_partiality: float = 0.05
    seed: int = 0


def integrated_from_truth(simulator, indices, settings: SyntheticIntegration | None = None, *,
                          ambiguity_operators: list[AmbiguityOperator] | None = None):
    """Simulated integrated experiments and reflections for shots of a simulator.

    Parameters
    ----------
    simulator : stillshot.simulate.Simulator
    indices : iterable of int
        Shot numbers.
    settings : SyntheticIntegration, optional
    ambiguity_operators : list of AmbiguityOperator, optional
        When given, every lattice is reported in a random one of these
        settings (hkl ``M·h``, crystal ``A·M⁻¹``), as an indexer would.

    Returns
    -------
    experiments : ExperimentList
        One experiment per lattice, with the estimated crystal model.
    reflections : ReflectionTable
        ``miller_index``, ``id``, ``d``, ``intensity.sum.value``,
        ``intensity.sum.variance``, ``partiality`` (estimated), ``lp``,
        ``s1``, ``xyzcal.px``, ``xyzobs.px.value`` (= the true centroid), ``panel``,
        ``flags`` and the truth columns
        ``intensity.true_partial``, ``intensity.model``, ``partiality.true``.
    truth : dict
        ``operator`` (int array: the operator each experiment was reported
        in) and ``scale`` (photons per unit intensity of each lattice).
    """
    st = settings or SyntheticIntegration()
    rng = np.random.default_rng(np.random.SeedSequence([int(st.seed), 0x1E7]))
    experiments = ExperimentList()
    tables = []
    ops_used = []
    scales = []
    for index in indices:
        truth = simulator.draw(int(index))
        refl = truth.reflections
        for k, lat in enumerate(truth.lattices):
            rows = np.nonzero(np.asarray(refl["id"]) == k)[0] if refl.nrows else np.zeros(0, dtype=int)
            c = lat.crystal
            dR = Rotation.from_rotvec(np.radians(st.orientation_error_deg) * np.array(
                [rng.standard_normal(), rng.standard_normal(), 0.0])).as_matrix()
            A_est = dR @ c.A
            dom_est = float(c.domain_size_ang) * math.exp(st.mosaic_error * rng.standard_normal())
            eta_est = float(c.half_mosaicity_deg) * math.exp(st.mosaic_error * rng.standard_normal())
            hkl = np.asarray(refl["miller_index"])[rows].astype(np.int64)
            beam = truth.beam
            r = hkl.astype(np.float64) @ A_est.T
            s0 = np.broadcast_to(beam.s0, r.shape)
            rlen = np.linalg.norm(r, axis=1)
            p_est = partiality(excitation_error(r, s0), rlp_sigma(
                rlen, domain_sigma(dom_est), mosaic_sigma(eta_est), bandpass_coefficient(beam.wavelength, beam.bandwidth)))
            sel = (p_est >= st.min_predicted_partiality) & ~np.asarray(refl["in_gap"])[rows]
            rows, hkl, p_est = rows[sel], hkl[sel], p_est[sel]
            true_partial = np.asarray(refl["intensity.partial"])[rows]
            n = len(rows)
            signal = true_partial * np.maximum(1.0 + st.model_error * rng.standard_normal(n), 0.0)
            bg = st.background_photons
            counts = rng.poisson(signal + bg).astype(np.float64)
            bg_est = bg + math.sqrt(bg * st.background_ratio) * rng.standard_normal(n)
            inten = counts - bg_est
            var = np.maximum(counts, 1.0) + bg * st.background_ratio
            op_index = 0
            A_rep = A_est
            if ambiguity_operators:
                op_index = int(rng.integers(len(ambiguity_operators)))
                op = ambiguity_operators[op_index]
                hkl = op.apply(hkl).astype(np.int64)
                A_rep = op.apply_to_A(A_est)
            crystal = Crystal(A_rep, c.space_group, half_mosaicity_deg=eta_est, domain_size_ang=dom_est)
            exp_id = len(experiments)
            experiments.append(Experiment(beam=beam, detector=simulator.detector, crystal=crystal))
            ops_used.append(op_index)
            scales.append(lat.scale)
            flags = np.full(n, int(Flags.predicted | Flags.integrated_sum), dtype=np.uint64)
            pol = np.asarray(refl["polarization"])[rows]
            tables.append(ReflectionTable({
                "miller_index": hkl.astype(np.int32),
                "id": np.full(n, exp_id, dtype=np.int32),
                "d": np.asarray(refl["d"])[rows],
                "intensity.sum.value": inten,
                "intensity.sum.variance": var,
                "partiality": p_est,
                "lp": 1.0 / pol,
                "s1": np.asarray(refl["s1"])[rows],
                "xyzcal.px": np.asarray(refl["xyzcal.px"])[rows],
                "xyzobs.px.value": np.asarray(refl["xyzcal.px"])[rows],
                "panel": np.asarray(refl["panel"])[rows],
                "flags": flags,
                "intensity.true_partial": true_partial,
                "intensity.model": np.asarray(refl["intensity.model"])[rows],
                "partiality.true": np.asarray(refl["partiality"])[rows],
            }))
    table = ReflectionTable.concat(tables) if tables else ReflectionTable.empty(0)
    table.identifiers = {i: e.identifier for i, e in enumerate(experiments)}
    return experiments, table, {"operator": np.array(ops_used, dtype=np.int64), "scale": np.array(scales)}
