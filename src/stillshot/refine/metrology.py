"""Detector metrology: joint refinement of the detector hierarchy over many indexed shots.

This is the ``cspad.cbf_metrology`` / ``dials.refine`` (hierarchy_level=N)
step of a serial-crystallography run.  The groups of the detector hierarchy
at one level move as rigid bodies (:mod:`stillshot.refine.detector_params`)
while every shot's crystal orientation and symmetry-constrained unit cell are
refined with them against DIALS's stills target (:mod:`stillshot.refine.joint`).

The procedure follows ``dials.refine``:

1. predict every indexed reflection with the starting models;
2. reject outliers once, with Tukey's rule on the x and y residuals (the
   columns DIALS uses for stills),
   separately per panel (and optionally per shot); a job with fewer than
   ``min_num_obs`` reflections is rejected whole, as DIALS does;
3. fix parameters that too few reflections inform (auto-reduction), naming
   them;
4. minimise by sparse Levenberg–Marquardt;
5. report RMSDs per panel and per hierarchy level before and after.

:func:`refine_protocol` runs levels in turn (e.g. 0, then 1, then 2), each
starting from the previous result (optionally re-indexing in between).

Still shots cannot see a rotation of the whole detector about the beam made
together with the same rotation of every crystal: that combination is left
where the starting models put it (Levenberg–Marquardt damping keeps it
there), so compare refined and true geometries modulo that rotation.
Likewise, collective moves of all groups along the beam trade against the
unit cells (only the tan 2θ curvature and Δψ separate them): refine
in-plane parameters only (fix ``Dist``, ``Tau2``, ``Tau3``) when the
detector is known to be flat.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field, replace

import numpy as np

from stillshot import geometry
from stillshot.models import Detector, ExperimentList
from stillshot.refine.detector_params import PARAMETER_NAMES, HierarchyParameterisation
from stillshot.refine.joint import (
    JointData,
    JointProblem,
    LMResult,
    cell_constraints,
    levenberg_marquardt,
    orthogonal_b_matrices,
    stills_prediction_derivatives,
)
from stillshot.table import Flags, ReflectionTable

__all__ = [
    "GroupRMSD",
    "MetrologyOptions",
    "MetrologyResult",
    "experiment_index",
    "refine_metrology",
    "refine_protocol",
    "rmsd_by_level",
    "tukey_outliers",
]


@dataclass(frozen=True)
class MetrologyOptions:
    """Options of the metrology refinement (DIALS's names in brackets).

    Parameters
    ----------
    hierarchy_level : int
        Level whose groups move as rigid bodies (``detector.hierarchy_level``).
    fix_detector : tuple of str
        Detector parameters kept fixed: ``all``, ``position`` (Dist, Shift1,
        Shift2), ``orientation`` (Tau1–3), ``distance`` (Dist), ``in_plane``
        (everything but Shift1, Shift2 and Tau1) (``detector.fix``).
    fix_list : tuple of str
        Further parameters to fix, by name or shell pattern: ``Tau2``,
        ``D0Q1*``, ``D0Q0S1.Dist`` (``detector.fix_list``).
    fix_crystal : tuple of str
        ``all``, ``cell`` or ``orientation`` (``crystal.fix``).
    delpsi_constant : float
        Weight of the Δψ residual, 1/rad² (``weighting_strategy.delpsi_constant``).
    weighting : str
        ``stills``/``statistical`` (x, y weights 1/σ² of the centroids, mm⁻²)
        or ``constant`` (every weight ``constant_weight``).
    constant_weight : float
        Weight with the constant strategy.
    outlier_algorithm : str
        ``tukey`` or ``null`` (``outlier.algorithm``; ``auto`` and
        ``sauter_poon`` mean tukey here).
    separate_panels : bool
        Outlier rejection per panel (``outlier.separate_panels``).
    separate_experiments : bool
        Outlier rejection per shot (``outlier.separate_experiments``).
    iqr_multiplier : float
        Tukey's multiplier of the interquartile range (``outlier.tukey.iqr_multiplier``).
    min_num_obs : int
        Jobs with fewer reflections are rejected whole
        (``outlier.minimum_number_of_reflections``).
    min_nref_per_parameter : int
        Parameters informed by fewer reflections are fixed (or their
        reflections removed, or refinement fails: ``auto_reduction_action``).
    auto_reduction_action : str
        ``fix``, ``remove`` or ``fail``.
    max_iterations : int
        Most accepted Levenberg–Marquardt steps.
    engine : str
        ``LevMar``/``SparseLevMar`` (damped) or ``GaussNewton``.
    """

    hierarchy_level: int = 0
    fix_detector: tuple = ()
    fix_list: tuple = ()
    fix_crystal: tuple = ()
    delpsi_constant: float = 1.0e6
    weighting: str = "stills"
    constant_weight: float = 1.0
    outlier_algorithm: str = "tukey"
    separate_panels: bool = True
    separate_experiments: bool = False
    iqr_multiplier: float = 1.5
    min_num_obs: int = 20
    min_nref_per_parameter: int = 3
    auto_reduction_action: str = "fix"
    max_iterations: int = 100
    engine: str = "LevMar"


@dataclass(frozen=True)
class GroupRMSD:
    """Positional RMSDs of the reflections on one group (or panel).

    Attributes
    ----------
    name : str
    n : int
        Reflections used.
    rmsd_x_px, rmsd_y_px, rmsd_px : float
        RMSD of x, of y, and of the distance ``sqrt(Δx² + Δy²)``, px (NaN
        when ``n`` is 0).
    """

    name: str
    n: int
    rmsd_x_px: float
    rmsd_y_px: float
    rmsd_px: float


@dataclass
class MetrologyResult:
    """Outcome of :func:`refine_metrology`.

    Attributes
    ----------
    experiments : ExperimentList
        The experiments with the refined (shared) detector and crystals.
    reflections : ReflectionTable
        The input table with ``xyzcal.mm``, ``xyzcal.px``, ``delpsical.rad``
        and ``s1`` of the refined models, ``used_in_refinement`` set on the
        reflections used and ``centroid_outlier`` on the rejected ones.
    detector : Detector
        The refined detector.
    level : int
        The hierarchy level refined.
    parameter_names : list of str
        Detector parameter names (``GROUP.Dist`` …).
    parameter_values : ndarray
        Refined detector parameters (mm, mrad), relative to the start.
    fixed_parameters : list of str
        Parameters fixed, detector ones by name and crystals as
        ``experiment N: Phi1..3, cell`` — with the reason.
    n_reflections : int
        Reflections used (after outlier rejection).
    n_outliers : int
    n_parameters : int
        Free parameters.
    rmsd_before, rmsd_after : dict
        ``{"x_px", "y_px", "xy_px", "x_mm", "y_mm", "delpsi_deg", "n"}``.
    levels_before, levels_after : dict of int to list of GroupRMSD
        Per hierarchy level (the deepest is per panel).
    solver : LMResult
    timings : dict of str to float
        Seconds per step.
    notes : list of str
        Anything worth telling the user (auto-reduction, shared detector
        checks).
    """

    experiments: ExperimentList
    reflections: ReflectionTable
    detector: Detector
    level: int
    parameter_names: list
    parameter_values: np.ndarray
    fixed_parameters: list
    n_reflections: int
    n_outliers: int
    n_parameters: int
    rmsd_before: dict
    rmsd_after: dict
    levels_before: dict
    levels_after: dict
    solver: LMResult
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers
def experiment_index(table: ReflectionTable, experiments: ExperimentList) -> np.ndarray:
    """Experiment (list position) of every row; -1 for rows of unknown experiments.

    The ``id`` column is mapped through the table's identifiers when it has
    them, else taken as the list position (as DIALS does).
    """
    ids = np.asarray(table["id"], dtype=np.int64) if "id" in table else np.zeros(len(table), dtype=np.int64)
    if table.identifiers:
        pos = {ident: i for i, ident in enumerate(experiments.identifiers())}
        lut = {k: pos.get(v, -1) for k, v in table.identifiers.items()}
        out = np.array([lut.get(int(i), -1) for i in ids], dtype=np.int64) if len(ids) else ids
    else:
        out = ids.copy()
    out[(out < 0) | (out >= len(experiments))] = -1
    return out


def _tukey_hinges(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tukey's lower and upper hinges of each column (R's ``fivenum``, as DIALS)."""
    srt = np.sort(block, axis=0)
    n = len(srt)
    half = n // 2 + 1 if n % 2 else n // 2
    lower, upper = srt[:half], srt[n - half:]

    def median(x):
        m = len(x)
        return x[m // 2] if m % 2 else 0.5 * (x[m // 2] + x[m // 2 - 1])

    return median(lower), median(upper)


def tukey_outliers(columns: np.ndarray, jobs: np.ndarray, *, iqr_multiplier: float = 1.5,
                   min_num_obs: int = 20) -> np.ndarray:
    """Tukey's rule per job: values beyond the hinges by more than k·(upper − lower hinge).

    Parameters
    ----------
    columns : ndarray, shape (N, C)
        Residuals (one column per kind; any units).
    jobs : ndarray of int, shape (N,)
        Job label of each row (panel, or panel and shot).
    iqr_multiplier : float
        k (1.5 is Tukey's rule).
    min_num_obs : int
        A job with fewer rows is flagged whole (DIALS's behaviour).

    Returns
    -------
    ndarray of bool, shape (N,)
        True for outliers.
    """
    columns = np.asarray(columns, dtype=np.float64)
    out = np.zeros(len(columns), dtype=bool)
    order = np.argsort(jobs, kind="stable")
    labels, starts = np.unique(jobs[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for a, b in zip(starts, ends):
        rows = order[a:b]
        if len(rows) < min_num_obs:
            out[rows] = True
            continue
        block = columns[rows]
        q1, q3 = _tukey_hinges(block)
        cut = iqr_multiplier * (q3 - q1)
        bad = np.any((block > q3 + cut) | (block < q1 - cut), axis=1)
        out[rows[bad]] = True
    return out


def _group_rmsds(names, keys, n_keys, dx_px, dy_px) -> list[GroupRMSD]:
    n = np.bincount(keys, minlength=n_keys)
    sx = np.bincount(keys, weights=dx_px**2, minlength=n_keys)
    sy = np.bincount(keys, weights=dy_px**2, minlength=n_keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        rx, ry, rxy = np.sqrt(sx / n), np.sqrt(sy / n), np.sqrt((sx + sy) / n)
    return [GroupRMSD(str(names[k]), int(n[k]), float(rx[k]), float(ry[k]), float(rxy[k])) for k in range(n_keys)]


def rmsd_by_level(detector: Detector, panel: np.ndarray, dx_px: np.ndarray, dy_px: np.ndarray) -> dict:
    """Positional RMSDs per group at every level of the hierarchy.

    Parameters
    ----------
    detector : Detector
    panel : ndarray of int, shape (N,)
    dx_px, dy_px : ndarray, shape (N,)
        Residuals, px.

    Returns
    -------
    dict of int to list of GroupRMSD
        Level 0 (whole detector) … the panel level.
    """
    panel = np.asarray(panel, dtype=np.intp)
    out = {}
    for level in range(detector.max_hierarchy_level() + 1):
        groups = detector.groups_at_level(level)
        lut = np.empty(len(detector), dtype=np.intp)
        for g, grp in enumerate(groups):
            lut[grp.panel_indices()] = g
        out[level] = _group_rmsds([g.name for g in groups], lut[panel], len(groups), dx_px, dy_px)
    return out


def _summary(dx_mm, dy_mm, dpsi, pix) -> dict:
    n = len(dx_mm)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "x_mm": nan, "y_mm": nan, "x_px": nan, "y_px": nan, "xy_px": nan, "delpsi_deg": nan}
    dxp, dyp = dx_mm / pix[:, 0], dy_mm / pix[:, 1]
    return {
        "n": int(n),
        "x_mm": float(np.sqrt(np.mean(dx_mm**2))),
        "y_mm": float(np.sqrt(np.mean(dy_mm**2))),
        "x_px": float(np.sqrt(np.mean(dxp**2))),
        "y_px": float(np.sqrt(np.mean(dyp**2))),
        "xy_px": float(np.sqrt(np.mean(dxp**2 + dyp**2))),
        "delpsi_deg": float(np.degrees(np.sqrt(np.mean(dpsi**2)))),
    }


def _fixed_detector_mask(names: tuple, fix: tuple, fix_list: tuple) -> np.ndarray:
    """(G, 6) mask of detector parameters fixed by ``fix`` and ``fix_list``."""
    G = len(names)
    mask = np.zeros((G, 6), dtype=bool)
    fix = set(fix or ())
    cols = {
        "all": range(6),
        "position": (0, 1, 2),
        "orientation": (3, 4, 5),
        "distance": (0,),
        "in_plane": (0, 4, 5),
    }
    for key in fix:
        if key not in cols:
            raise ValueError(f"unknown detector fix option {key!r}; options: {', '.join(cols)}")
        mask[:, list(cols[key])] = True
    for pattern in fix_list or ():
        pattern = str(pattern).strip()
        if not pattern:
            continue
        hit = False
        for g, gname in enumerate(names):
            for k, pname in enumerate(PARAMETER_NAMES):
                full = f"{gname}.{pname}"
                if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(pname, pattern) or \
                        fnmatch.fnmatchcase(gname, pattern):
                    mask[g, k] = True
                    hit = True
        if not hit:
            raise ValueError(f"detector.fix_list entry {pattern!r} matches no parameter "
                             f"(names are GROUP.{'/'.join(PARAMETER_NAMES)}, e.g. {names[0]}.Tau2)")
    return mask


# ----------------------------------------------------------------------------- the refinement
def _select_rows(table: ReflectionTable, exp_of: np.ndarray) -> np.ndarray:
    hkl = np.asarray(table["miller_index"]).reshape(-1, 3)
    ok = (exp_of >= 0) & np.any(hkl != 0, axis=1)
    if "flags" in table:
        flags = np.asarray(table["flags"]).astype(np.uint64)
        indexed = (flags & np.uint64(Flags.indexed)) != 0
        if indexed.any():
            ok &= indexed
        ok &= (flags & np.uint64(Flags.excluded_for_refinement)) == 0
    obs = np.asarray(table["xyzobs.px.value"] if "xyzobs.mm.value" not in table else table["xyzobs.mm.value"])
    ok &= np.all(np.isfinite(obs[:, :2]), axis=1)
    return np.nonzero(ok)[0]


def refine_metrology(experiments: ExperimentList, table: ReflectionTable,
                     options: MetrologyOptions = MetrologyOptions()) -> MetrologyResult:
    """Refine the detector hierarchy at one level jointly with every shot's crystal.

    Parameters
    ----------
    experiments : ExperimentList
        Indexed experiments (one crystal each) sharing one detector (the
        first experiment's detector is used for all; the others must have the
        same number of panels).
    table : ReflectionTable
        Indexed reflections: ``id``, ``panel``, ``miller_index``,
        ``xyzobs.px.value`` (px) and, if present, ``xyzobs.mm.value`` and
        ``xyzobs.mm.variance`` (mm, mm²; used as given, as DIALS does).
    options : MetrologyOptions

    Returns
    -------
    MetrologyResult

    Raises
    ------
    ValueError
        No usable reflections, experiments without crystals, or
        auto-reduction with ``action=fail`` finding too few reflections.
    """
    t_start = time.perf_counter()
    timings: dict = {}
    notes: list = []
    if len(experiments) == 0:
        raise ValueError("no experiments to refine")
    if any(e.crystal is None for e in experiments):
        raise ValueError("every experiment needs a crystal (give indexed experiments)")
    detector = experiments[0].detector
    for e in experiments.detectors()[1:]:
        if len(e) != len(detector):
            raise ValueError("experiments have detectors with different numbers of panels")
    if len(experiments.detectors()) > 1:
        notes.append(f"{len(experiments.detectors())} detector models found: all shots refined with the first")
    level = int(options.hierarchy_level)
    hp = HierarchyParameterisation.from_detector(detector, level)

    # -- observations -------------------------------------------------------------------
    exp_of = experiment_index(table, experiments)
    rows = _select_rows(table, exp_of)
    if len(rows) == 0:
        raise ValueError("no indexed reflections of these experiments to refine against")
    rows = rows[np.argsort(exp_of[rows], kind="stable")]
    shot = exp_of[rows]
    panel = np.asarray(table["panel"], dtype=np.intp)[rows]
    if panel.max() >= len(detector):
        raise ValueError(f"reflection panel {panel.max()} does not exist on a {len(detector)}-panel detector")
    pix = np.array([p.pixel_size for p in detector.panels], dtype=np.float64)[panel]
    if "xyzobs.mm.value" in table:
        obs_mm = np.asarray(table["xyzobs.mm.value"], dtype=np.float64)[rows, :2]
    else:
        obs_mm = geometry.px_to_mm(detector, panel, np.asarray(table["xyzobs.px.value"])[rows])
    var = None
    if "xyzobs.mm.variance" in table:
        var = np.asarray(table["xyzobs.mm.variance"], dtype=np.float64)[rows, :2]
    elif "xyzobs.px.variance" in table:
        var = np.asarray(table["xyzobs.px.variance"], dtype=np.float64)[rows, :2] * pix**2
    if var is None or not np.all(var > 0):
        default = (0.25 * pix) ** 2
        var = default if var is None else np.where(var > 0, var, default)
    sqrt_w = np.empty((len(rows), 3))
    if options.weighting == "constant":
        sqrt_w[:] = np.sqrt(options.constant_weight)
    else:
        sqrt_w[:, :2] = 1.0 / np.sqrt(var)
        sqrt_w[:, 2] = np.sqrt(options.delpsi_constant)
    s0 = np.array([e.beam.s0 for e in experiments])
    hkl = np.asarray(table["miller_index"], dtype=np.float64)[rows]

    # -- crystals -------------------------------------------------------------------------
    constraints, cells, U0 = [], [], []
    for e in experiments:
        cr = e.crystal
        cons = cell_constraints(cr.space_group, cr.cell_parameters)
        free = cons.free(cr.cell_parameters)
        B = orthogonal_b_matrices(cons.cells(free[None]))[0]
        M = np.asarray(cr.A) @ np.linalg.inv(B)
        u, _, vt = np.linalg.svd(M)  # nearest rotation (exact for a consistent crystal)
        U = u @ vt
        if np.linalg.det(U) < 0:
            raise ValueError("a crystal's setting matrix is left-handed")
        constraints.append(cons)
        cells.append(free)
        U0.append(U)
    nmax = max(len(c) for c in cells)
    cell0 = np.zeros((len(cells), nmax))
    for i, c in enumerate(cells):
        cell0[i, : len(c)] = c

    # -- fixing ----------------------------------------------------------------------------
    G = hp.n_groups
    E = len(experiments)
    nc = 3 + nmax
    fixed_d = _fixed_detector_mask(hp.names, tuple(options.fix_detector), tuple(options.fix_list))
    fixed_c = np.zeros((E, nc), dtype=bool)
    cfix = set(options.fix_crystal or ())
    if "all" in cfix or "orientation" in cfix:
        fixed_c[:, :3] = True
    if "all" in cfix or "cell" in cfix:
        fixed_c[:, 3:] = True
    data = JointData(shot=shot, panel=panel, hkl=hkl, obs_mm=obs_mm, sqrt_w=sqrt_w, s0=s0)
    fixed = np.concatenate([fixed_d.ravel(), fixed_c.ravel()])
    problem = JointProblem(data, hp, np.array(U0), constraints, cell0, fixed)
    p0 = problem.initial()
    timings["setup"] = time.perf_counter() - t_start

    # -- outliers ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    r0 = problem.evaluate(p0, jacobian=False) / sqrt_w
    finite = np.all(np.isfinite(r0), axis=1)
    outlier = ~finite
    if options.outlier_algorithm not in ("null", None):
        jobs = np.zeros(len(rows), dtype=np.int64)
        if options.separate_panels:
            jobs = jobs * len(detector) + panel
        if options.separate_experiments:
            jobs = jobs * E + shot
        sub = np.nonzero(finite)[0]
        outlier[sub] |= tukey_outliers(r0[sub, :2], jobs[sub], iqr_multiplier=options.iqr_multiplier,
                                       min_num_obs=options.min_num_obs)
    inlier = ~outlier
    timings["outliers"] = time.perf_counter() - t0

    # -- auto-reduction ------------------------------------------------------------------------
    fixed_names: list = []
    nref_group = np.bincount(hp.panel_group[panel[inlier]], minlength=G)
    nref_shot = np.bincount(shot[inlier], minlength=E)
    low_g = nref_group < options.min_nref_per_parameter
    low_e = nref_shot < options.min_nref_per_parameter
    free_d = ~fixed_d
    free_c = ~fixed_c & ~problem.fixed[problem.nd:].reshape(E, nc)
    low_g &= free_d.any(axis=1)
    low_e &= free_c.any(axis=1)
    if low_g.any() or low_e.any():
        what = [f"{hp.names[g]} ({nref_group[g]} reflections)" for g in np.nonzero(low_g)[0]]
        what += [f"experiment {e} ({nref_shot[e]} reflections)" for e in np.nonzero(low_e)[0]]
        if options.auto_reduction_action == "fail":
            raise ValueError(f"too few reflections (< {options.min_nref_per_parameter} per parameter) for: "
                             + ", ".join(what))
        for g in np.nonzero(low_g)[0]:
            fixed_names += [f"{hp.names[g]}.{n}" for k, n in enumerate(PARAMETER_NAMES) if free_d[g, k]]
        for e in np.nonzero(low_e)[0]:
            fixed_names.append(f"experiment {e}: crystal")
        fixed_d[low_g] = True
        fixed_c[low_e] = True
        notes.append(f"auto-reduction ({options.auto_reduction_action}): too few reflections "
                     f"(< {options.min_nref_per_parameter} per parameter) for " + ", ".join(what))
        if options.auto_reduction_action == "remove":
            drop = low_g[hp.panel_group[panel]] | low_e[shot]
            inlier &= ~drop

    # -- the solve -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    keep = np.nonzero(inlier)[0]
    data_in = JointData(shot=shot[keep], panel=panel[keep], hkl=hkl[keep], obs_mm=obs_mm[keep],
                        sqrt_w=sqrt_w[keep], s0=s0)
    fixed = np.concatenate([fixed_d.ravel(), fixed_c.ravel()])
    # shots left without reflections keep their crystal
    fixed_c_all = fixed.reshape(-1)[problem.nd:].reshape(E, nc)
    fixed_c_all[np.bincount(shot[keep], minlength=E) == 0] = True
    solver_problem = JointProblem(data_in, hp, np.array(U0), constraints, cell0, fixed)
    n_free = int((~solver_problem.fixed).sum())
    lm = levenberg_marquardt(solver_problem, p0, max_iterations=int(options.max_iterations),
                             gauss_newton=options.engine == "GaussNewton")
    timings["refine"] = time.perf_counter() - t0

    # -- results -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    pd, pc = solver_problem.split(lm.p)
    new_detector = hp.apply(detector, pd)
    A = solver_problem.crystal_matrices(pc)
    new_experiments = ExperimentList(
        replace(e, detector=new_detector, crystal=e.crystal.with_A(A[i])) for i, e in enumerate(experiments)
    )
    r_after = problem.evaluate(lm.p, jacobian=False) / sqrt_w
    pix_in = pix[inlier]
    before = _summary(r0[inlier, 0], r0[inlier, 1], r0[inlier, 2], pix_in)
    after = _summary(r_after[inlier, 0], r_after[inlier, 1], r_after[inlier, 2], pix_in)
    levels_before = rmsd_by_level(detector, panel[inlier], r0[inlier, 0] / pix_in[:, 0], r0[inlier, 1] / pix_in[:, 1])
    levels_after = rmsd_by_level(new_detector, panel[inlier], r_after[inlier, 0] / pix_in[:, 0],
                                 r_after[inlier, 1] / pix_in[:, 1])
    out_table = _updated_table(table, rows, inlier, outlier, new_experiments, new_detector, shot, panel, hkl)
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    return MetrologyResult(
        experiments=new_experiments,
        reflections=out_table,
        detector=new_detector,
        level=level,
        parameter_names=hp.parameter_names(),
        parameter_values=pd.copy(),
        fixed_parameters=fixed_names,
        n_reflections=int(inlier.sum()),
        n_outliers=int(outlier.sum()),
        n_parameters=n_free,
        rmsd_before=before,
        rmsd_after=after,
        levels_before=levels_before,
        levels_after=levels_after,
        solver=lm,
        timings=timings,
        notes=notes,
    )


def _updated_table(table, rows, inlier, outlier, experiments, detector, shot, panel, hkl) -> ReflectionTable:
    """The input table with predictions of the refined models and refinement flags."""
    out = table.copy()
    n = len(out)
    A = np.array([e.crystal.A for e in experiments])
    q = (A[shot] @ hkl[:, :, None])[:, :, 0]
    s0 = np.array([e.beam.s0 for e in experiments])[shot]
    s1, dpsi, _, _ = stills_prediction_derivatives(q, s0, derivatives=False)
    _, xy_mm, xy_px, _ = geometry.ray_intersection(detector, s1, panel=panel)

    def column(name, width):
        if name in out:
            arr = np.array(out[name], dtype=np.float64)
        else:
            arr = np.zeros((n, width)) if width > 1 else np.zeros(n)
        return arr

    cal_mm = column("xyzcal.mm", 3)
    cal_px = column("xyzcal.px", 3)
    s1_col = column("s1", 3)
    dp_col = column("delpsical.rad", 1)
    cal_mm[rows, :2] = xy_mm
    cal_px[rows, :2] = xy_px
    s1_col[rows] = s1
    dp_col[rows] = dpsi
    out["xyzcal.mm"] = cal_mm
    out["xyzcal.px"] = cal_px
    out["s1"] = s1_col
    out["delpsical.rad"] = dp_col
    flags = np.asarray(out["flags"], dtype=np.uint64).copy() if "flags" in out else np.zeros(n, dtype=np.uint64)
    flags &= ~np.uint64(Flags.used_in_refinement | Flags.centroid_outlier)
    flags[rows[inlier]] |= np.uint64(Flags.used_in_refinement)
    flags[rows[outlier]] |= np.uint64(Flags.centroid_outlier)
    out["flags"] = flags
    return out


def refine_protocol(experiments: ExperimentList, table: ReflectionTable, levels,
                    options: MetrologyOptions = MetrologyOptions(), reindex=None) -> list[MetrologyResult]:
    """Refine hierarchy levels in turn, each from the previous result.

    Parameters
    ----------
    experiments : ExperimentList
    table : ReflectionTable
    levels : sequence of int
        E.g. ``(0, 1, 2)``.
    options : MetrologyOptions
        ``hierarchy_level`` is replaced by each level in turn.
    reindex : callable, optional
        ``reindex(detector) -> (experiments, table)``: re-index the run with
        the geometry refined so far (called between levels, not after the
        last); the next level refines against what it returns.

    Returns
    -------
    list of MetrologyResult
        One per level; the last holds the final models.
    """
    results = []
    current, current_table = experiments, table
    levels = [int(v) for v in levels]
    for i, level in enumerate(levels):
        res = refine_metrology(current, current_table, replace(options, hierarchy_level=level))
        results.append(res)
        current = res.experiments
        if reindex is not None and i < len(levels) - 1:
            current, current_table = reindex(res.detector)
            res.notes.append(f"re-indexed with this geometry: {len(current)} lattices, "
                             f"{len(current_table)} indexed reflections for the next level")
    return results
