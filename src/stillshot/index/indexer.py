"""Indexing one still: search, candidate choice, refinement, Bravais lattice, several lattices."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import gemmi
import numpy as np

from stillshot.index import registry
from stillshot.index.assign import assign_indices
from stillshot.index.lattice import (
    bravais_lattice,
    cell_parameters,
    lattice_system,
    match_known_cell,
    misorientation_deg,
    niggli_basis,
    point_group_rotations,
    symmetrised_A,
    target_B,
)
from stillshot.index.options import IndexingOptions
from stillshot.index.spots import Spots, auto_d_min, nearest_neighbour_max_cell, prepare_spots
from stillshot.models.crystal import Crystal, space_group
from stillshot.refine.mosaic import MosaicParameters, estimate_mosaic_parameters, ewald_proximal_volume
from stillshot.refine.stills import (
    CellParameterisation,
    StillsRefinementOptions,
    cell_parameterisation,
    refine_crystal,
    reject_outliers,
    stills_residuals,
)
from stillshot.table import Flags, OpaqueColumnsDropped, ReflectionTable

__all__ = ["IndexResult", "Lattice", "index_spots", "index_still"]

#: DIALS's model expansion factor for the ML mosaic parameters written to the crystal.
_MOSAIC_EXPANSION = 1.4


@dataclass
class Lattice:
    """One lattice found on a shot.

    Attributes
    ----------
    crystal : Crystal
        Refined crystal (space group: the known one, or the lattice's rotation group).
    bravais : str
        Bravais lattice symbol (tP, hP, ...).
    spot_index : ndarray (K,) of int
        Positions (in the shot's :class:`Spots`) of the indexed spots.
    hkl : ndarray (K, 3) of int
    used : ndarray (K,) of bool
        Kept in refinement (not outliers).
    xy_calc_px, xy_calc_mm, delpsi, s1 : ndarray
        Predictions for the indexed spots (px; mm; radians; 1/Å).
    rmsd_px, rmsd_delpsi_rad : float
    fraction_indexed : float
        Indexed fraction of the spots searched for this lattice.
    mosaic : MosaicParameters or None
    ewald_proximal_volume : float
        1/Å³ (NaN without mosaic parameters).
    """

    crystal: Crystal
    bravais: str
    spot_index: np.ndarray
    hkl: np.ndarray
    used: np.ndarray
    xy_calc_px: np.ndarray
    xy_calc_mm: np.ndarray
    delpsi: np.ndarray
    s1: np.ndarray
    rmsd_px: float
    rmsd_delpsi_rad: float
    fraction_indexed: float
    mosaic: MosaicParameters | None
    ewald_proximal_volume: float

    @property
    def n_indexed(self) -> int:
        """Number of indexed spots (outliers included)."""
        return int(len(self.spot_index))


@dataclass
class IndexResult:
    """Outcome of indexing one shot.

    Attributes
    ----------
    status : str
        ``indexed`` or ``not_indexed``.
    reason : str
        Why the shot is not indexed ("" when indexed).
    lattices : list of Lattice
    spots : Spots or None
    resolved : dict
        Values chosen at run time (method, d_min, max_cell, candidates scored).
    """

    status: str
    reason: str = ""
    lattices: list = field(default_factory=list)
    spots: Spots | None = None
    resolved: dict = field(default_factory=dict)

    @property
    def n_indexed(self) -> int:
        """Indexed spots over all lattices."""
        return sum(lat.n_indexed for lat in self.lattices)

    def reflections(self, identifiers: list[str] | None = None,
                    table: ReflectionTable | None = None) -> ReflectionTable:
        """The indexed spots as a DIALS-style reflection table (``id`` = lattice number).

        Parameters
        ----------
        identifiers : list of str, optional
            Experiment identifier of each lattice (for the table's identifiers map).
        table : ReflectionTable, optional
            The strong-spot table the spots came from; its columns are carried over.
        """
        parts = []
        for i, lat in enumerate(self.lattices):
            rows = self.spots.row[lat.spot_index]
            if table is not None:
                with warnings.catch_warnings():  # shoeboxes of strong spots are not carried over
                    warnings.simplefilter("ignore", OpaqueColumnsDropped)
                    t = table.select(rows)
            else:
                t = ReflectionTable({"panel": self.spots.panel[lat.spot_index],
                                     "xyzobs.px.value": np.column_stack([self.spots.xy_px[lat.spot_index],
                                                                         np.zeros(lat.n_indexed)])})
            n = lat.n_indexed
            sp = self.spots
            t["id"] = np.full(n, i, dtype=np.int32)
            t["miller_index"] = lat.hkl.astype(np.int32)
            t["xyzcal.px"] = np.column_stack([lat.xy_calc_px, np.zeros(n)])
            t["xyzcal.mm"] = np.column_stack([lat.xy_calc_mm, np.zeros(n)])
            t["s1"] = lat.s1
            t["delpsical.rad"] = lat.delpsi
            t["rlp"] = sp.rlp[lat.spot_index]
            t["xyzobs.mm.value"] = np.column_stack([sp.xy_mm[lat.spot_index], np.zeros(n)])
            t["xyzobs.mm.variance"] = np.column_stack([sp.var_mm[lat.spot_index], np.zeros(n)])
            if "flags" in t:
                flags = np.asarray(t["flags"], dtype=np.uint64)
            else:
                flags = np.full(n, int(Flags.strong), np.uint64)
            flags = flags | np.uint64(int(Flags.indexed))
            flags = np.where(lat.used, flags | np.uint64(int(Flags.used_in_refinement)), flags)
            t["flags"] = flags.astype(np.uint64)
            parts.append(t)
        out = ReflectionTable.concat(parts) if parts else ReflectionTable()
        if identifiers is not None:
            out.identifiers = {i: ident for i, ident in enumerate(identifiers)}
        return out


@dataclass
class _Target:
    cell: tuple | None
    sg: gemmi.SpaceGroup | None
    B: np.ndarray | None
    rotations: np.ndarray | None
    param: CellParameterisation | None


def _target(options: IndexingOptions) -> _Target:
    sg = space_group(options.space_group) if options.space_group else None
    if options.unit_cell is None:
        return _Target(None, sg, None, point_group_rotations(sg) if sg else None, None)
    cell = tuple(float(x) for x in options.unit_cell)
    if sg is None:
        # no space group: the lattice symmetry of the given cell
        sols = bravais_lattice(np.linalg.inv(target_B(cell)), max_delta=0.05)
        same = [s for s in sols if np.allclose(cell_parameters(s.basis), cell, atol=1e-3)]
        sg = same[0].space_group if same else gemmi.SpaceGroup("P 1")
    return _Target(cell, sg, target_B(cell), point_group_rotations(sg), cell_parameterisation(sg))


def _within_tolerance(cell, target, options: IndexingOptions) -> bool:
    p = np.asarray(cell, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    return bool(np.all(np.abs(p[:3] - t[:3]) <= options.relative_length_tolerance * t[:3])
                and np.all(np.abs(p[3:] - t[3:]) <= options.absolute_angle_tolerance))


@dataclass
class _Candidate:
    A: np.ndarray
    sg: gemmi.SpaceGroup
    bravais: str
    hkl: np.ndarray
    sel: np.ndarray  # positions in spots
    ref: object
    fraction: float
    volume: float
    mosaic: MosaicParameters | None = None
    ewald: float = float("nan")
    param: CellParameterisation | None = None
    raw_mosaic: MosaicParameters | None = None


def _refine_candidate(A, spots: Spots, pool: np.ndarray, param: CellParameterisation, experiment,
                      options: IndexingOptions, ropt: StillsRefinementOptions, cycles: int = 2,
                      mosaic: MosaicParameters | None = None):
    """Assign, refine, reassign.

    With ``mosaic``, each Δψ residual is weighted by the inverse square of the
    Bragg envelope's half-width at the spot's resolution (Sauter 2014) instead
    of the constant weight.

    Returns
    -------
    tuple or None
        (A, hkl, sel, used, predictions, rmsd_px, rmsd_delpsi_rad), or None when
        too few spots index or the refinement fails.
    """
    det, beam = experiment.detector, experiment.beam
    ref = None
    sel = np.zeros(0, dtype=np.intp)
    hkl = np.zeros((0, 3), dtype=np.int32)
    for cycle in range(cycles):
        h, ok = assign_indices(A, spots.rlp[pool], options.hkl_tolerance)
        sel = pool[ok]
        hkl = h[ok]
        if len(sel) < 3:
            return None
        fit = sel
        if options.d_min_refine:
            keep = spots.d[sel] >= options.d_min_refine
            if keep.sum() >= 6:
                fit = sel[keep]
        hfit = hkl if fit is sel else hkl[spots.d[sel] >= options.d_min_refine]
        sigma = mosaic.half_width_rad(spots.d[fit]) if mosaic is not None else None
        ref = refine_crystal(A, det, beam, hfit, spots.panel[fit], spots.xy_px[fit], spots.var_px[fit],
                             parameterisation=param, options=ropt, target_cell=options.unit_cell,
                             delpsi_sigma=sigma)
        if not ref.success:
            return None
        A = ref.A
    # final predictions for every indexed spot
    h, ok = assign_indices(A, spots.rlp[pool], options.hkl_tolerance)
    sel, hkl = pool[ok], h[ok]
    if len(sel) < 3:
        return None
    pred = stills_residuals(A, det, beam, hkl, spots.panel[sel], spots.xy_px[sel])
    dist = np.linalg.norm(pred["d_px"], axis=1)
    dist = np.where(np.isfinite(dist), dist, np.inf)
    if ropt.outlier_rejection:
        used = reject_outliers(pred["d_px"], k=ropt.outlier_k, min_px=ropt.min_outlier_px)
    else:
        used = np.isfinite(dist)
    if used.sum() < 3:
        return None
    rmsd = float(np.sqrt(np.mean(dist[used] ** 2)))
    rmsd_psi = float(np.sqrt(np.mean(pred["delpsi"][used] ** 2)))
    return A, hkl, sel, used, pred, rmsd, rmsd_psi


def index_spots(experiment, spots: Spots, options: IndexingOptions,
                refinement: StillsRefinementOptions | None = None) -> IndexResult:
    """Index prepared spots of one shot.

    Parameters
    ----------
    experiment : Experiment
        The shot's beam and detector (its crystal, if any, is ignored).
    spots : Spots
    options : IndexingOptions
    refinement : StillsRefinementOptions, optional

    Returns
    -------
    IndexResult
        ``not_indexed`` with a reason when no acceptable lattice is found (a
        numerical failure on degenerate input is a reason too, never an
        exception).
    """
    try:
        return _index_spots(experiment, spots, options, refinement)
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
        return IndexResult("not_indexed", f"numerical failure: {exc}", spots=spots)


def _index_spots(experiment, spots: Spots, options: IndexingOptions,
                 refinement: StillsRefinementOptions | None) -> IndexResult:
    ropt = refinement or StillsRefinementOptions(outlier_rejection=options.candidate_outlier_rejection)
    resolved: dict = {"method": options.method}
    n = len(spots)
    if n < max(options.min_spots, 3):
        return IndexResult("not_indexed", f"too few spots ({n} < {options.min_spots})", spots=spots, resolved=resolved)
    try:
        search = registry.get(options.method)
    except KeyError as exc:
        return IndexResult("not_indexed", str(exc.args[0]), spots=spots, resolved=resolved)
    target = _target(options)
    if registry.needs_known_cell(options.method) and target.cell is None:
        return IndexResult("not_indexed", f"method {options.method} needs indexing.known_symmetry.unit_cell",
                           spots=spots, resolved=resolved)
    lattices: list[Lattice] = []
    pool = np.arange(n)
    reason = ""
    while len(lattices) < options.max_lattices:
        sub = spots.subset(pool)
        d_min = options.d_min or auto_d_min(sub.d)
        if options.max_cell:
            max_cell = float(options.max_cell)
        elif target.cell is not None:
            max_cell = 1.5 * max(target.cell[:3])
        else:
            max_cell = nearest_neighbour_max_cell(sub.rlp[sub.d >= d_min])
            if not np.isfinite(max_cell):
                max_cell = 300.0
            max_cell = float(np.clip(max_cell, 2 * options.min_cell, 1000.0))
        resolved.setdefault("d_min", []).append(round(d_min, 3))
        resolved.setdefault("max_cell", []).append(round(max_cell, 2))
        ctx = registry.SearchContext(options, target.B, target.rotations, max_cell, d_min)
        bases = search(sub, ctx)
        resolved.setdefault("n_candidates", []).append(len(bases))
        cand, why = _choose(bases, spots, pool, experiment, options, ropt, target, lattices)
        if cand is None:
            reason = why
            break
        _final_refinement(cand, spots, pool, experiment, options, ropt)
        crystal = Crystal(cand.A, cand.sg,
                          half_mosaicity_deg=cand.mosaic.half_mosaicity_deg if cand.mosaic else None,
                          domain_size_ang=cand.mosaic.domain_size_ang if cand.mosaic else None)
        A, hkl, sel, used, pred, rmsd, rmsd_psi = cand.ref
        lattices.append(Lattice(crystal, cand.bravais, sel, hkl, used, pred["xy_px"], pred["xy_mm"],
                                pred["delpsi"], pred["s1"], rmsd, rmsd_psi, cand.fraction, cand.mosaic,
                                cand.ewald))
        pool = np.setdiff1d(pool, sel)
        if len(pool) < max(options.min_spots, 3) or len(pool) <= options.recycle_unindexed_reflections_cutoff * n:
            break
    if not lattices:
        return IndexResult("not_indexed", reason or "no candidate lattice", spots=spots, resolved=resolved)
    return IndexResult("indexed", "", lattices, spots, resolved)


def _choose(bases, spots, pool, experiment, options, ropt, target: _Target, previous):
    """Convert, refine and score candidate bases; the best acceptable one or (None, reason)."""
    if not bases:
        return None, "no candidate lattice"
    known_setting = registry.needs_known_cell(options.method)
    cands: list[_Candidate] = []
    reasons = []
    # settings and a quick (unrefined) score for every candidate
    starts = []
    for basis in bases:
        if target.cell is not None:
            if known_setting and _within_tolerance(cell_parameters(basis), target.cell, options):
                conv = basis
            else:
                conv = match_known_cell(basis, target.cell,
                                        relative_length_tolerance=options.relative_length_tolerance,
                                        absolute_angle_tolerance=options.absolute_angle_tolerance)
            if conv is None:
                reasons.append("tolerance")
                continue
            fam = target.param
            A0 = symmetrised_A(conv, fam.family, fam.rhombohedral)
        else:
            A0 = np.linalg.inv(niggli_basis(basis))
        _, ok = assign_indices(A0, spots.rlp[pool], options.hkl_tolerance)
        starts.append((int(ok.sum()), A0))
    starts.sort(key=lambda x: -x[0])
    accepted_quick = None
    for n_quick, A0 in starts[: options.max_candidates]:
        # refine every plausible candidate: stop once the rest index clearly fewer spots
        # than an accepted one (without refine_all_candidates: after the first acceptable)
        if accepted_quick is not None and (not options.refine_all_candidates or n_quick < 0.8 * accepted_quick):
            break
        if target.cell is not None:
            out = _refine_candidate(A0, spots, pool, target.param, experiment, options, ropt)
            if out is None:
                reasons.append("refinement")
                continue
            if not _within_tolerance(cell_parameters(np.linalg.inv(out[0])), target.cell, options):
                reasons.append("tolerance")
                continue
            sg, bravais, param = target.sg, _bravais_symbol(target.sg), target.param
        else:
            out = _refine_candidate(A0, spots, pool, CellParameterisation("a"), experiment, options, ropt)
            if out is None:
                reasons.append("refinement")
                continue
            out, sg, bravais = _apply_bravais(out, spots, pool, experiment, options, ropt, target.sg)
            param = cell_parameterisation(sg)
        A = out[0]
        sel, used, rmsd = out[2], out[3], out[5]
        if any(misorientation_deg(lat.crystal.A, A, point_group_rotations(lat.crystal.space_group))
               < options.minimum_angular_separation for lat in previous
               if np.allclose(cell_parameters(np.linalg.inv(A))[:3],
                              lat.crystal.cell_parameters[:3], rtol=0.05)):
            reasons.append("duplicate")
            continue
        # volume per lattice point: a centred conventional cell is no supercell
        cands.append(_Candidate(A, sg, bravais, out[1], sel, out, fraction=len(sel) / len(pool),
                                volume=abs(np.linalg.det(np.linalg.inv(A))) / len(sg.operations().cen_ops),
                                param=param))
        if rmsd > options.rmsd_max_px:
            reasons.append(f"rmsd {rmsd:.2f} px > {options.rmsd_max_px:g} px")
        elif accepted_quick is None:
            accepted_quick = n_quick
    good = [c for c in cands if c.ref[5] <= options.rmsd_max_px]
    if not good:
        if cands:
            best = min(cands, key=lambda c: c.ref[5])
            return None, f"high RMSD ({best.ref[5]:.2f} px > {options.rmsd_max_px:g} px)"
        if "tolerance" in reasons:
            return None, "no candidate within the known-cell tolerances"
        return None, "no candidate lattice could be refined"
    for c in good:
        A, hkl, sel, used, pred, rmsd, rmsd_psi = c.ref
        raw = estimate_mosaic_parameters(spots.d[sel][used], pred["delpsi"][used], expansion=1.0)
        if raw is not None:
            c.ewald = ewald_proximal_volume(raw, experiment.beam.wavelength,
                                            options.ewald_proximity_resolution_cutoff)
            c.mosaic = raw.expanded(_MOSAIC_EXPANSION)
            c.raw_mosaic = raw
    if options.ewald_proximal_volume_max > 0:
        ok = [c for c in good if not (c.ewald > options.ewald_proximal_volume_max)]
        if not ok:
            return None, "Ewald-proximal volume too large"
        good = ok
    best_frac = max(c.fraction for c in good)
    short = [c for c in good if c.fraction >= best_frac - 0.05]
    vmin = min(c.volume for c in short)
    short.sort(key=lambda c: (round(c.volume / vmin, 1), -len(point_group_rotations(c.sg)), c.ref[5]))
    return short[0], ""


def _final_refinement(cand: _Candidate, spots, pool, experiment, options, ropt) -> None:
    """Refine the chosen lattice once more with Δψ weighted by its own mosaic model.

    The Δψ of a spot scatters within the Bragg envelope ``d/D + η/2``, wider at
    low resolution when the domain size dominates; weighting each Δψ residual
    by that envelope (Sauter 2014) rather than a constant improves the
    orientation.  The result is kept when it is acceptable (RMSD) and indexes
    as many spots; the mosaic parameters are re-estimated from it.
    """
    if cand.raw_mosaic is None or cand.param is None:
        return
    out = _refine_candidate(cand.A, spots, pool, cand.param, experiment, options, ropt, cycles=1,
                            mosaic=cand.raw_mosaic)
    if out is None or out[5] > options.rmsd_max_px or len(out[2]) < 0.97 * len(cand.sel):
        return
    if options.unit_cell is not None and not _within_tolerance(cell_parameters(np.linalg.inv(out[0])),
                                                               options.unit_cell, options):
        return
    A, hkl, sel, used, pred, rmsd, rmsd_psi = out
    prev = cand.raw_mosaic
    raw = estimate_mosaic_parameters(spots.d[sel][used], pred["delpsi"][used], expansion=1.0,
                                     domain_size_start=prev.domain_size_ang,
                                     eta_start_rad=2.0 * np.radians(prev.half_mosaicity_deg))
    cand.A, cand.hkl, cand.sel, cand.ref = A, hkl, sel, out
    cand.fraction = len(sel) / len(pool)
    if raw is not None:
        cand.raw_mosaic = raw
        cand.mosaic = raw.expanded(_MOSAIC_EXPANSION)
        cand.ewald = ewald_proximal_volume(raw, experiment.beam.wavelength, options.ewald_proximity_resolution_cutoff)


def _bravais_symbol(sg: gemmi.SpaceGroup) -> str:
    fam = lattice_system(sg)
    cen = sg.centring_type()
    if fam == "h":
        return "hR" if cen == "R" else "hP"
    if fam in "mo" and cen in "AB":
        cen = "C"
    return fam + cen


def _apply_bravais(out, spots, pool, experiment, options, ropt, sg_known):
    """Choose the Bravais lattice of a P1-refined solution and refine in it."""
    A_p1, rmsd_p1 = out[0], out[5]
    sols = bravais_lattice(np.linalg.inv(A_p1), options.max_delta)
    if sg_known is not None:
        want = _bravais_symbol(sg_known)
        sols = [s for s in sols if s.symbol == want] + [s for s in sols if s.symbol == "aP"]
    for sol in sols:
        if sol.symbol == "aP":
            return out, gemmi.SpaceGroup("P 1") if sg_known is None else sg_known, "aP"
        sg = sol.space_group if sg_known is None else sg_known
        param = cell_parameterisation(sg)
        A0 = symmetrised_A(sol.basis, param.family, param.rhombohedral)
        new = _refine_candidate(A0, spots, pool, param, experiment, options, ropt)
        if new is None:
            continue
        if new[5] <= 1.5 * rmsd_p1 + 0.3 and len(new[2]) >= 0.9 * len(out[2]):
            return new, sg, sol.symbol
    return out, gemmi.SpaceGroup("P 1"), "aP"


def index_still(experiment, strong: ReflectionTable, options: IndexingOptions, rows=None,
                refinement: StillsRefinementOptions | None = None) -> IndexResult:
    """Index the strong spots of one shot.

    Parameters
    ----------
    experiment : Experiment
        Beam and detector of the shot.
    strong : ReflectionTable
        Strong spots (``panel``, ``xyzobs.px.value``, optionally variances).
    options : IndexingOptions
    rows : array_like of int, optional
        Rows of ``strong`` belonging to this shot (default: all).
    refinement : StillsRefinementOptions, optional

    Returns
    -------
    IndexResult
    """
    spots = prepare_spots(experiment.detector, experiment.beam, strong, rows)
    return index_spots(experiment, spots, options, refinement)
