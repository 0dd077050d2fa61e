"""Per-shot crystal refinement of a still: orientation and symmetry-constrained cell.

Beam and detector are fixed.  The target is DIALS's stills target: for each
indexed spot the positional residuals (observed − predicted centroid, mm,
weighted by the inverse centroid variance) and Δψ, the rotation that brings
the reciprocal-lattice point onto the Ewald sphere (radians, weighted by a
constant), minimised by Levenberg–Marquardt least squares run entirely in
numba (:func:`stillshot.refine._kernels.lm_refine`: one call per cycle, no
Python in the iterations).  Outliers are rejected between cycles on the
positional residual (:func:`reject_outliers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from stillshot import geometry
from stillshot.models.crystal import b_matrix
from stillshot.refine._kernels import _build_setting, lm_refine, predict_stills_kernel, reject_outliers_kernel

__all__ = [
    "CellParameterisation",
    "CrystalRefinementResult",
    "StillsRefinementOptions",
    "cell_parameterisation",
    "refine_crystal",
    "stills_residuals",
]


@dataclass(frozen=True)
class StillsRefinementOptions:
    """Options of the per-shot crystal refinement.

    Parameters
    ----------
    fix_cell : bool
        Keep the unit cell fixed (orientation only).
    fix_orientation : bool
        Keep the orientation fixed (cell only).
    delpsi_constant : float
        Weight of the Δψ residual (1/rad²), DIALS ``delpsi_constant``.
    outlier_rejection : bool
        Reject outliers between cycles.
    outlier_k : float
        Smallest rejection threshold in σ of the positional residuals
        (see :func:`reject_outliers`).
    min_outlier_px : float
        Never reject spots closer than this to their prediction, px.
    max_iterations : int or None
        Most Levenberg–Marquardt iterations per cycle (None: 100).
    min_nref_per_parameter : int
        Fewest spots per free parameter; below it the cell is fixed.
    cell_restraint_sigma : float
        Relative σ of the restraint of the free cell parameters to a known
        target cell (0: none); used only when a target cell is given.
    """

    fix_cell: bool = False
    fix_orientation: bool = False
    delpsi_constant: float = 1.0e6
    outlier_rejection: bool = True
    outlier_k: float = 2.0
    min_outlier_px: float = 0.5
    max_iterations: int | None = None
    min_nref_per_parameter: int = 1
    cell_restraint_sigma: float = 0.01


@dataclass(frozen=True)
class CellParameterisation:
    """Free cell parameters of a crystal family (monoclinic: unique axis b).

    Attributes
    ----------
    family : str
        a, m, o, t, h or c.
    rhombohedral : bool
        Family h in rhombohedral axes.
    """

    family: str
    rhombohedral: bool = False

    def free(self, cell) -> np.ndarray:
        """The free parameters (Å, degrees) of a cell."""
        a, b, c, al, be, ga = (float(x) for x in cell)
        f = self.family
        if f == "a":
            return np.array([a, b, c, al, be, ga])
        if f == "m":
            return np.array([a, b, c, be])
        if f == "o":
            return np.array([a, b, c])
        if f == "t":
            return np.array([(a + b) / 2, c])
        if f == "h":
            if self.rhombohedral:
                return np.array([(a + b + c) / 3, (al + be + ga) / 3])
            return np.array([(a + b) / 2, c])
        return np.array([(a + b + c) / 3])

    def cell(self, p) -> tuple:
        """The full cell (a, b, c, α, β, γ) from free parameters."""
        f = self.family
        if f == "a":
            return tuple(p)
        if f == "m":
            return (p[0], p[1], p[2], 90.0, p[3], 90.0)
        if f == "o":
            return (p[0], p[1], p[2], 90.0, 90.0, 90.0)
        if f == "t":
            return (p[0], p[0], p[1], 90.0, 90.0, 90.0)
        if f == "h":
            if self.rhombohedral:
                return (p[0], p[0], p[0], p[1], p[1], p[1])
            return (p[0], p[0], p[1], 90.0, 90.0, 120.0)
        return (p[0], p[0], p[0], 90.0, 90.0, 90.0)


def cell_parameterisation(sg: gemmi.SpaceGroup) -> CellParameterisation:
    """The cell parameterisation implied by a space group's crystal system."""
    s = sg.crystal_system_str()
    fam = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t",
           "trigonal": "h", "hexagonal": "h", "cubic": "c"}[s]
    rhombo = fam == "h" and sg.ext == "R"
    return CellParameterisation(fam, rhombo)


#: CellParameterisation.family -> the code of :func:`stillshot.refine._kernels.cell_from_free`.
_FAMILY_CODE = {"a": 0, "m": 1, "o": 2, "t": 3, "h": 4, "c": 5}


def _b_from_cell(cell) -> np.ndarray | None:
    """B matrix (1/Å) of a cell, as :func:`stillshot.models.crystal.b_matrix` (no gemmi object).

    ``B = (O⁻¹)ᵀ`` with O the orthogonalisation matrix (a along x, b in the
    xy plane); None for an impossible cell.
    """
    a, b, c, al, be, ga = cell
    ca, cb, cg = np.cos(np.radians([al, be, ga]))
    sg = np.sin(np.radians(ga))
    vol2 = 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg
    if vol2 <= 0 or sg <= 0 or min(a, b, c) <= 0:
        return None
    o = np.array([[a, b * cg, c * cb],
                  [0.0, b * sg, c * (ca - cb * cg) / sg],
                  [0.0, 0.0, c * np.sqrt(vol2) / sg]])
    return np.linalg.inv(o).T


def _rotation(phi: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (radians)."""
    theta = float(np.linalg.norm(phi))
    if theta < 1e-15:
        return np.eye(3)
    k = phi / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def stills_residuals(A, detector, beam, hkl, panel, xy_px) -> dict:
    """Predicted positions and Δψ of indexed spots under a setting matrix.

    Parameters
    ----------
    A : ndarray (3, 3)
        Setting matrix, 1/Å.
    detector : Detector or PanelArrays
    beam : Beam
    hkl : ndarray (N, 3)
    panel : ndarray (N,)
        Panel of each observed spot (predictions are intersected with it).
    xy_px : ndarray (N, 2)
        Observed centroids, px.

    Returns
    -------
    dict
        ``xy_px`` (N, 2) predicted px, ``xy_mm`` (N, 2), ``s1`` (N, 3),
        ``delpsi`` (N,) radians, ``d_px`` (N, 2) predicted − observed px.
    """
    s1, delpsi = predict_stills_kernel(np.ascontiguousarray(A, dtype=np.float64),
                                       np.ascontiguousarray(beam.s0, dtype=np.float64),
                                       np.ascontiguousarray(np.asarray(hkl, dtype=np.float64).reshape(-1, 3)))
    _, xy_mm, xy_calc, _ = geometry.ray_intersection(detector, s1, panel)
    return {"xy_px": xy_calc, "xy_mm": xy_mm, "s1": s1, "delpsi": delpsi, "d_px": xy_calc - xy_px}


@dataclass(frozen=True)
class CrystalRefinementResult:
    """Outcome of a per-shot crystal refinement.

    Attributes
    ----------
    A : ndarray (3, 3)
        Refined setting matrix, 1/Å.
    used : ndarray (N,) of bool
        Spots kept (not outliers) among those given.
    rmsd_px : float
        Positional RMSD of the kept spots, px.
    rmsd_delpsi_rad : float
        RMS Δψ of the kept spots, radians.
    delpsi : ndarray (N,)
        Δψ of every given spot under the refined model, radians.
    xy_calc_px : ndarray (N, 2)
        Predicted centroids of every given spot, px.
    s1 : ndarray (N, 3)
        Predicted diffracted beams, 1/Å.
    n_outliers : int
    success : bool
    """

    A: np.ndarray
    used: np.ndarray
    rmsd_px: float
    rmsd_delpsi_rad: float
    delpsi: np.ndarray
    xy_calc_px: np.ndarray
    s1: np.ndarray
    n_outliers: int
    success: bool


def refine_crystal(
    A: np.ndarray,
    detector,
    beam,
    hkl: np.ndarray,
    panel: np.ndarray,
    xy_px: np.ndarray,
    var_px: np.ndarray,
    *,
    parameterisation: CellParameterisation,
    options: StillsRefinementOptions = StillsRefinementOptions(),
    target_cell=None,
    delpsi_sigma: np.ndarray | None = None,
) -> CrystalRefinementResult:
    """Refine a crystal's orientation and (symmetry-constrained) cell against one still.

    Parameters
    ----------
    A : ndarray (3, 3)
        Starting setting matrix (1/Å) in the setting whose cell the
        parameterisation describes.
    detector, beam
        Fixed models.
    hkl : ndarray (N, 3)
        Miller indices of the spots.
    panel : ndarray (N,)
    xy_px : ndarray (N, 2)
        Observed centroids, px.
    var_px : ndarray (N, 2)
        Centroid variances, px².
    parameterisation : CellParameterisation
    options : StillsRefinementOptions
    target_cell : sequence of 6 float, optional
        Known cell (Å, degrees): with ``options.cell_restraint_sigma`` > 0 each
        free cell parameter is restrained to it (DIALS's ``tie_to_target``),
        which keeps shots with few spots from trading cell for orientation.
    delpsi_sigma : ndarray (N,), optional
        Expected spread of each spot's Δψ (radians), e.g. the mosaic model's
        ``d/D + η/2``: the Δψ residuals are then weighted by ``1/σ²`` instead of
        the constant ``options.delpsi_constant``.

    Returns
    -------
    CrystalRefinementResult
    """
    pa = geometry.panel_arrays(detector)
    hkl = np.asarray(hkl, dtype=np.float64)
    panel = np.asarray(panel, dtype=np.intp)
    xy_px = np.asarray(xy_px, dtype=np.float64)
    pix = pa.pixel_size[panel]
    obs_mm = geometry.px_to_mm(pa, panel, xy_px)
    var_mm = np.asarray(var_px, dtype=np.float64) * pix**2
    w_xy = 1.0 / np.sqrt(var_mm)
    if delpsi_sigma is None:
        w_psi = np.full(len(hkl), np.sqrt(options.delpsi_constant))
    else:
        w_psi = 1.0 / np.maximum(np.asarray(delpsi_sigma, dtype=np.float64), 1e-6)
    s0 = beam.s0

    # starting point: U0 and the symmetrised cell
    B0_cell = gemmi.UnitCell(*parameterisation.cell(parameterisation.free(_cell_of(A))))
    B0 = b_matrix(B0_cell)
    u, _, vt = np.linalg.svd(A @ np.linalg.inv(B0))
    U0 = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    p0 = parameterisation.free(B0_cell.parameters)
    n_cell = 0 if options.fix_cell else len(p0)
    restraint = None
    if target_cell is not None and options.cell_restraint_sigma > 0:
        restraint = parameterisation.free(target_cell)
    n_rot = 0 if options.fix_orientation else 3

    U0c = np.ascontiguousarray(U0)
    family = _FAMILY_CODE[parameterisation.family]
    rhombo = bool(parameterisation.rhombohedral)
    p0c = np.ascontiguousarray(p0, dtype=np.float64)

    def build(x):
        Ax = _build_setting(np.ascontiguousarray(x, dtype=np.float64), n_rot, n_cell, U0c, p0c, family, rhombo)
        return None if not np.all(np.isfinite(Ax)) else Ax

    hkl_c = np.ascontiguousarray(hkl)
    panel_c = np.ascontiguousarray(panel, dtype=np.int64)
    w_xy_c = np.ascontiguousarray(w_xy)
    obs_c = np.ascontiguousarray(obs_mm)
    s0_c = np.ascontiguousarray(s0, dtype=np.float64)
    dinv = np.ascontiguousarray(pa.d_inverse)

    n = len(hkl)
    used = np.ones(n, dtype=bool)
    x = np.zeros(n_rot + n_cell)
    success = True
    if n_cell and n < options.min_nref_per_parameter * (n_rot + n_cell) + 3:
        n_cell = 0
        x = np.zeros(n_rot)
    rest = np.ascontiguousarray(restraint if (restraint is not None and n_cell) else np.ones(max(n_cell, 1)),
                                dtype=np.float64)
    rsig = float(options.cell_restraint_sigma) if (restraint is not None and n_cell) else 0.0
    max_iter = int(options.max_iterations) if options.max_iterations else 100
    if len(x) and n >= 3:
        for cycle in range(3):
            sel = np.nonzero(used)[0]
            try:
                x_new, _, _, ok = lm_refine(x, n_rot, n_cell, U0c, p0c, family, rhombo, rest, rsig, s0_c,
                                            hkl_c[sel], panel_c[sel], dinv, obs_c[sel], w_xy_c[sel],
                                            np.ascontiguousarray(w_psi[sel]), max_iter, 1e-7, 1e-7)
            except (ValueError, np.linalg.LinAlgError, ZeroDivisionError):
                ok = False
            if not ok or not np.all(np.isfinite(x_new)):
                success = False
                break
            x = x_new
            if not options.outlier_rejection or cycle == 2:
                break
            A_now = build(x)
            if A_now is None:
                success = False
                break
            pred = stills_residuals(A_now, pa, beam, hkl, panel, xy_px)
            new_used = reject_outliers(pred["d_px"], k=options.outlier_k, min_px=options.min_outlier_px)
            if new_used.sum() < max(3, len(x)) or np.array_equal(new_used, used):
                break
            used = new_used
    A_ref = build(x) if len(x) else U0 @ B0
    if A_ref is None:
        A_ref, success = U0 @ B0, False
    pred = stills_residuals(A_ref, pa, beam, hkl, panel, xy_px)
    d2 = np.sum(pred["d_px"][used] ** 2, axis=1)
    rmsd = float(np.sqrt(np.mean(d2))) if used.any() else float("inf")
    rmsd_psi = float(np.sqrt(np.mean(pred["delpsi"][used] ** 2))) if used.any() else float("inf")
    return CrystalRefinementResult(
        A=A_ref, used=used, rmsd_px=rmsd if np.isfinite(rmsd) else float("inf"), rmsd_delpsi_rad=rmsd_psi,
        delpsi=pred["delpsi"], xy_calc_px=pred["xy_px"], s1=pred["s1"], n_outliers=int(n - used.sum()),
        success=success and np.isfinite(rmsd),
    )


def reject_outliers(d_px: np.ndarray, *, k: float = 2.5, min_px: float = 0.5, cycles: int = 8) -> np.ndarray:
    """Inliers of positional residuals: the core that a 2-D Gaussian explains (after Sauter & Poon 2010).

    The residual vectors (predicted − observed) of the inliers are modelled as
    an isotropic 2-D Gaussian around their median.  Spots farther than
    ``max(k·σ, min_px)`` are rejected, σ is re-estimated from the kept spots
    with the truncation corrected (for a Gaussian cut at kσ the kept mean r²
    is ``2σ²·(1 − k²/2·e^{−k²/2}/(1 − e^{−k²/2}))``), and the cycle repeats until
    nothing changes.  A Gaussian sample keeps ``1 − e^{−k²/2}`` of its spots
    (96 % for k = 2.5); wide tails of misindexed or badly predicted spots are
    cut away.

    Parameters
    ----------
    d_px : ndarray (N, 2)
        Predicted − observed positions, px.
    k : float
        Cut in units of σ.
    min_px : float
        Never reject closer than this, px.
    cycles : int
        Most iterations.

    Returns
    -------
    ndarray (N,) of bool
        True for inliers.
    """
    d = np.ascontiguousarray(d_px, dtype=np.float64).reshape(-1, 2)
    return reject_outliers_kernel(d, float(k), float(min_px), int(cycles))


def _cell_of(A: np.ndarray) -> tuple:
    rs = np.linalg.inv(A)
    la, lb, lc = np.linalg.norm(rs, axis=1)
    ang = lambda u, v, x, y: float(np.degrees(np.arccos(np.clip(u @ v / (x * y), -1, 1))))
    return (la, lb, lc, ang(rs[1], rs[2], lb, lc), ang(rs[0], rs[2], la, lc), ang(rs[0], rs[1], la, lb))
