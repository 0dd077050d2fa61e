"""Joint least squares over many still shots: detector groups + every shot's crystal.

The target is DIALS's stills target (``target_stills.py``): for each
reflection the positional residuals ``x_calc - x_obs`` and ``y_calc - y_obs``
(mm, in the panel plane, weighted by the inverse centroid variances) and the
angular residual Δψ (radians, weighted by a constant).  The predicted ray is
DIALS's stills prediction (:func:`stillshot.geometry.predict_stills`).

Parameters are

* the detector: six rigid-body parameters per group at one hierarchy level
  (:class:`~stillshot.refine.detector_params.HierarchyParameterisation`);
* each shot's crystal: three orientation angles ``Phi1..3`` (mrad, about the
  lab x, y, z axes, ``U = Rz·Ry·Rx·U0`` as DIALS) and the free parameters of
  its unit cell under its space group's metric constraints (Å, degrees).

The Jacobian is analytic.  It is never formed as one matrix: its blocks (one
6-column detector block and one crystal block per reflection) are reduced to
the normal equations, and the crystal blocks, which are independent between
shots, are eliminated by the Schur complement (as in bundle adjustment), so a
Levenberg–Marquardt step costs one dense solve in the detector parameters
(≤ a few hundred) plus a small solve per shot: memory and time grow linearly
with the number of shots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np
import scipy.sparse as sp

from stillshot.refine.detector_params import HierarchyParameterisation, rotation_matrices

__all__ = [
    "CellConstraints",
    "JointData",
    "JointProblem",
    "LMResult",
    "cell_constraints",
    "levenberg_marquardt",
    "orthogonal_b_matrices",
    "stills_prediction_derivatives",
]

_LAB_AXES = np.eye(3)


# ----------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class CellConstraints:
    """The free unit-cell parameters of a lattice family.

    Attributes
    ----------
    family : str
        ``a`` triclinic, ``m`` monoclinic (unique axis ``unique``), ``o``
        orthorhombic, ``t`` tetragonal, ``h`` hexagonal / trigonal in
        hexagonal axes, ``r`` rhombohedral axes, ``c`` cubic.
    unique : int
        Unique axis of a monoclinic cell (0 a, 1 b, 2 c).
    """

    family: str
    unique: int = 1

    @property
    def names(self) -> tuple:
        """Parameter names (``a``, ``c``, ``beta`` …)."""
        return {
            "a": ("a", "b", "c", "alpha", "beta", "gamma"),
            "m": ("a", "b", "c", ("alpha", "beta", "gamma")[self.unique]),
            "o": ("a", "b", "c"),
            "t": ("a", "c"),
            "h": ("a", "c"),
            "r": ("a", "alpha"),
            "c": ("a",),
        }[self.family]

    @property
    def n_free(self) -> int:
        """Number of free parameters."""
        return len(self.names)

    def free(self, cell) -> np.ndarray:
        """The free parameters (Å, degrees) of a cell (symmetry-averaged)."""
        a, b, c, al, be, ga = (float(x) for x in cell)
        f = self.family
        if f == "a":
            return np.array([a, b, c, al, be, ga])
        if f == "m":
            return np.array([a, b, c, (al, be, ga)[self.unique]])
        if f == "o":
            return np.array([a, b, c])
        if f in ("t", "h"):
            return np.array([(a + b) / 2.0, c])
        if f == "r":
            return np.array([(a + b + c) / 3.0, (al + be + ga) / 3.0])
        return np.array([(a + b + c) / 3.0])

    def cells(self, p: np.ndarray) -> np.ndarray:
        """Full cells (a, b, c, α, β, γ) from free parameters, shape (E, 6)."""
        p = np.atleast_2d(np.asarray(p, dtype=np.float64))
        n = len(p)
        out = np.empty((n, 6))
        out[:, 3:] = 90.0
        f = self.family
        if f == "a":
            out[:] = p[:, :6]
        elif f == "m":
            out[:, :3] = p[:, :3]
            out[:, 3 + self.unique] = p[:, 3]
        elif f == "o":
            out[:, :3] = p[:, :3]
        elif f in ("t", "h"):
            out[:, 0] = out[:, 1] = p[:, 0]
            out[:, 2] = p[:, 1]
            if f == "h":
                out[:, 5] = 120.0
        elif f == "r":
            out[:, :3] = p[:, :1]
            out[:, 3:] = p[:, 1:2]
        else:
            out[:, :3] = p[:, :1]
        return out


def cell_constraints(space_group: gemmi.SpaceGroup, cell=None) -> CellConstraints:
    """The cell constraints of a space group (in the setting of its symbol).

    Parameters
    ----------
    space_group : gemmi.SpaceGroup
    cell : sequence of float, optional
        The cell (Å, degrees); used to find a monoclinic cell's unique axis
        (the angle furthest from 90°) when the symbol does not say.

    Returns
    -------
    CellConstraints
    """
    system = space_group.crystal_system_str()
    if system == "triclinic":
        return CellConstraints("a")
    if system == "monoclinic":
        q = (space_group.qualifier or "b")[0]
        unique = {"a": 0, "b": 1, "c": 2}.get(q, 1)
        if cell is not None and not space_group.qualifier:
            unique = int(np.argmax(np.abs(np.asarray(cell[3:], float) - 90.0)))
        return CellConstraints("m", unique)
    if system == "orthorhombic":
        return CellConstraints("o")
    if system == "tetragonal":
        return CellConstraints("t")
    if system == "trigonal" and space_group.ext == "R":
        return CellConstraints("r")
    if system in ("trigonal", "hexagonal"):
        return CellConstraints("h")
    return CellConstraints("c")


def orthogonal_b_matrices(cells: np.ndarray) -> np.ndarray:
    """Busing–Levy B matrices (1/Å) of cells, vectorised; equal to ``b_matrix``.

    Parameters
    ----------
    cells : ndarray, shape (E, 6)
        a, b, c in Å and α, β, γ in degrees.

    Returns
    -------
    ndarray, shape (E, 3, 3)
        ``B = O⁻ᵀ`` with ``O`` the orthogonalisation matrix (columns a, b, c;
        a along x, b in the xy plane), as cctbx and gemmi.
    """
    cells = np.atleast_2d(np.asarray(cells, dtype=np.float64))
    a, b, c = cells[:, 0], cells[:, 1], cells[:, 2]
    al, be, ga = (np.radians(cells[:, k]) for k in (3, 4, 5))
    ca, cb, cg, sg = np.cos(al), np.cos(be), np.cos(ga), np.sin(ga)
    cy = (ca - cb * cg) / sg
    cz = np.sqrt(np.maximum(1.0 - cb * cb - cy * cy, 1e-300))
    O = np.zeros((len(cells), 3, 3))
    O[:, 0, 0] = a
    O[:, 0, 1] = b * cg
    O[:, 1, 1] = b * sg
    O[:, 0, 2] = c * cb
    O[:, 1, 2] = c * cy
    O[:, 2, 2] = c * cz
    return np.swapaxes(np.linalg.inv(O), 1, 2)


def _b_and_derivatives(constraints: CellConstraints, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """B (E,3,3) and dB/dp (E, n_free, 3, 3) by central differences (step 1e-5 Å or °)."""
    p = np.atleast_2d(p)
    B = orthogonal_b_matrices(constraints.cells(p))
    n = p.shape[1]
    dB = np.empty((len(p), n, 3, 3))
    h = 1e-5
    for k in range(n):
        dp = np.zeros(n)
        dp[k] = h
        up = orthogonal_b_matrices(constraints.cells(p + dp))
        dB[:, k] = (up - orthogonal_b_matrices(constraints.cells(p - dp))) / (2 * h)
    return B, dB


# ----------------------------------------------------------------------------- prediction
def stills_prediction_derivatives(q: np.ndarray, s0: np.ndarray, derivatives: bool = True):
    """Stills prediction of reciprocal-lattice points and its derivatives by q.

    The rlp ``q`` is rotated onto the Ewald sphere about ``q × ŝ0`` (DIALS's
    ``StillsReflectionPredictor``; see :func:`stillshot.geometry.predict_stills`).

    Parameters
    ----------
    q : ndarray, shape (N, 3)
        Reciprocal-lattice points, 1/Å.
    s0 : ndarray, shape (N, 3)
        Incident beam vectors, 1/Å.
    derivatives : bool
        Also return the derivatives (else they are None).

    Returns
    -------
    s1 : ndarray, shape (N, 3)
        Predicted diffracted beam vectors (1/Å); NaN where undefined.
    delpsi : ndarray, shape (N,)
        Δψ (rad), as ``predict_stills``.
    ds1_dq : ndarray, shape (N, 3, 3)
        ``∂s1_i/∂q_j``.
    dpsi_dq : ndarray, shape (N, 3)
        ``∂Δψ/∂q`` (rad·Å).
    """
    k = np.linalg.norm(s0, axis=1)
    u = s0 / k[:, None]
    qq = np.einsum("ij,ij->i", q, q)
    z = np.einsum("ij,ij->i", q, u)
    qperp = q - z[:, None] * u
    w = np.linalg.norm(qperp, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c0 = qperp / w[:, None]
        a = 0.5 * qq / k
        b = np.sqrt(qq - a * a)
        s1 = s0 + (-a[:, None] * u + b[:, None] * c0)
        delpsi = np.arctan2(-a, b) - np.arctan2(z, w)
        if not derivatives:
            return s1, delpsi, None, None
        # dc0/dq = (I - c0 c0ᵀ)(I - u uᵀ)/|q⊥| = e1 e1ᵀ/|q⊥| with e1 ⊥ u, c0
        e1 = np.cross(u, c0)
        dc0 = e1[:, :, None] * e1[:, None, :] / w[:, None, None]
        da = q / k[:, None]
        db = q * ((1.0 - a / k) / b)[:, None]
        ds1_dq = -u[:, :, None] * da[:, None, :] + c0[:, :, None] * db[:, None, :] + b[:, None, None] * dc0
        dth1 = (-b[:, None] * da + a[:, None] * db) / qq[:, None]
        dthq = (w[:, None] * u - z[:, None] * c0) / qq[:, None]
        dpsi_dq = dth1 - dthq
    return s1, delpsi, ds1_dq, dpsi_dq


# ----------------------------------------------------------------------------- the problem
@dataclass(frozen=True, eq=False)
class JointData:
    """Observations of the joint problem (rows are reflections, sorted by shot).

    Attributes
    ----------
    shot : ndarray of int, shape (N,)
        Shot (experiment) index of each reflection, non-decreasing.
    panel : ndarray of int, shape (N,)
    hkl : ndarray of float, shape (N, 3)
    obs_mm : ndarray, shape (N, 2)
        Observed centroid in the panel plane, mm.
    sqrt_w : ndarray, shape (N, 3)
        Square roots of the weights of the x, y (1/mm) and Δψ (1/rad) residuals.
    s0 : ndarray, shape (E, 3)
        Beam vector of each shot, 1/Å.
    """

    shot: np.ndarray
    panel: np.ndarray
    hkl: np.ndarray
    obs_mm: np.ndarray
    sqrt_w: np.ndarray
    s0: np.ndarray

    @property
    def n_refl(self) -> int:
        """Number of reflections."""
        return len(self.shot)

    @property
    def n_shots(self) -> int:
        """Number of shots."""
        return len(self.s0)


@dataclass(eq=False)
class JointProblem:
    """Detector-group and per-shot crystal parameters, residuals and their Jacobian blocks.

    Parameters
    ----------
    data : JointData
    detector : HierarchyParameterisation
    U0 : ndarray, shape (E, 3, 3)
        Starting orientation matrices.
    constraints : list of CellConstraints
        Cell constraints of each shot.
    cell0 : ndarray, shape (E, n_cell_max)
        Starting free cell parameters (zero-padded).
    fixed : ndarray of bool, shape (n_params,)
        Parameters kept at their starting values.

    Notes
    -----
    The parameter vector is ``[detector (6·G), shot 0 (nc), shot 1 (nc), …]``
    with ``nc = 3 + n_cell_max`` (unused cell slots are always fixed).
    """

    data: JointData
    detector: HierarchyParameterisation
    U0: np.ndarray
    constraints: list
    cell0: np.ndarray
    fixed: np.ndarray = None
    _families: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.fixed is None:
            self.fixed = np.zeros(self.n_params, dtype=bool)
        pad = np.zeros((self.data.n_shots, self.nc), dtype=bool)
        for e, c in enumerate(self.constraints):
            pad[e, 3 + c.n_free:] = True
        self.fixed = np.asarray(self.fixed, dtype=bool).copy()
        self.fixed[self.nd:] |= pad.ravel()
        fams: dict = {}
        for e, c in enumerate(self.constraints):
            fams.setdefault(c, []).append(e)
        self._families = {c: np.asarray(v, dtype=np.intp) for c, v in fams.items()}
        d = self.data
        n = d.n_refl
        self._group = self.detector.panel_group[d.panel]
        rows = np.arange(n)
        self._S_shot = sp.csr_matrix((np.ones(n), (d.shot, rows)), shape=(d.n_shots, n))
        self._S_group = sp.csr_matrix((np.ones(n), (self._group, rows)), shape=(self.detector.n_groups, n))
        pair = self._group.astype(np.int64) * d.n_shots + d.shot
        self._pairs, inv = np.unique(pair, return_inverse=True)
        self._S_pair = sp.csr_matrix((np.ones(n), (inv, rows)), shape=(len(self._pairs), n))

    # -- sizes -------------------------------------------------------------------
    @property
    def nd(self) -> int:
        """Number of detector parameters."""
        return self.detector.n_params

    @property
    def nc(self) -> int:
        """Parameters per shot (3 orientation + padded cell)."""
        return 3 + self.cell0.shape[1]

    @property
    def n_params(self) -> int:
        """Total number of parameters."""
        return self.nd + self.data.n_shots * self.nc

    def initial(self) -> np.ndarray:
        """The starting parameter vector."""
        p = np.zeros(self.n_params)
        pc = p[self.nd:].reshape(self.data.n_shots, self.nc)
        pc[:, 3:] = self.cell0
        return p

    def split(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(detector parameters (6·G,), crystal parameters (E, nc))."""
        return p[: self.nd], p[self.nd:].reshape(self.data.n_shots, self.nc)

    # -- models --------------------------------------------------------------------
    def crystal_matrices(self, pc: np.ndarray, derivatives: bool = False):
        """A = R(φ)·U0·B(cell) per shot, and optionally the pieces of its derivatives.

        Returns
        -------
        A : ndarray, shape (E, 3, 3)
        (only with ``derivatives``) dA : ndarray, shape (E, nc, 3, 3)
            ∂A/∂φk (per mrad) and ∂A/∂cell_j (per Å or degree; zero for padding).
        """
        E = self.data.n_shots
        phi = pc[:, :3] / 1000.0
        R1, dR1 = rotation_matrices(np.broadcast_to(_LAB_AXES[0], (E, 3)), phi[:, 0])
        R2, dR2 = rotation_matrices(np.broadcast_to(_LAB_AXES[1], (E, 3)), phi[:, 1])
        R3, dR3 = rotation_matrices(np.broadcast_to(_LAB_AXES[2], (E, 3)), phi[:, 2])
        R = R3 @ R2 @ R1
        B = np.empty((E, 3, 3))
        dB = np.zeros((E, self.nc - 3, 3, 3)) if derivatives else None
        for c, idx in self._families.items():
            free = pc[idx, 3:3 + c.n_free]
            if derivatives:
                b, db = _b_and_derivatives(c, free)
                dB[idx, : c.n_free] = db
            else:
                b = orthogonal_b_matrices(c.cells(free))
            B[idx] = b
        UB = self.U0 @ B
        A = R @ UB
        if not derivatives:
            return A
        dA = np.empty((E, self.nc, 3, 3))
        dA[:, 0] = (R3 @ R2 @ dR1) @ UB / 1000.0
        dA[:, 1] = (R3 @ dR2 @ R1) @ UB / 1000.0
        dA[:, 2] = (dR3 @ R2 @ R1) @ UB / 1000.0
        RU = R @ self.U0
        dA[:, 3:] = RU[:, None] @ dB
        return A, dA

    # -- residuals -------------------------------------------------------------------
    def evaluate(self, p: np.ndarray, jacobian: bool = True):
        """Weighted residuals and (optionally) their Jacobian blocks.

        Parameters
        ----------
        p : ndarray, shape (n_params,)
        jacobian : bool

        Returns
        -------
        r : ndarray, shape (N, 3)
            Weighted residuals (x, y, Δψ); dimensionless.
        Jd : ndarray, shape (N, 3, 6)
            Derivatives by the reflection's detector group parameters
            (only with ``jacobian``; fixed parameters zeroed).
        Jc : ndarray, shape (N, 3, nc)
            Derivatives by the reflection's shot parameters.
        """
        d = self.data
        pd, pc = self.split(p)
        origin, fast, slow = self.detector.panel_frames(pd)
        D = np.stack([fast, slow, origin], axis=2)
        Dinv = np.linalg.inv(D)
        if jacobian:
            A, dA = self.crystal_matrices(pc, derivatives=True)
        else:
            A = self.crystal_matrices(pc)
        q = (A[d.shot] @ d.hkl[:, :, None])[:, :, 0]
        s0 = d.s0[d.shot]
        if jacobian:
            s1, dpsi, ds1_dq, dpsi_dq = stills_prediction_derivatives(q, s0)
        else:
            s1, dpsi, _, _ = stills_prediction_derivatives(q, s0, derivatives=False)
        Di = Dinv[d.panel]
        v = (Di @ s1[:, :, None])[:, :, 0]
        x = v[:, 0] / v[:, 2]
        y = v[:, 1] / v[:, 2]
        r = np.empty((d.n_refl, 3))
        r[:, 0] = (x - d.obs_mm[:, 0]) * d.sqrt_w[:, 0]
        r[:, 1] = (y - d.obs_mm[:, 1]) * d.sqrt_w[:, 1]
        r[:, 2] = dpsi * d.sqrt_w[:, 2]
        if not jacobian:
            return r
        # d(x, y)/d s1
        dxy_ds1 = np.empty((d.n_refl, 2, 3))
        dxy_ds1[:, 0] = (Di[:, 0] - x[:, None] * Di[:, 2]) / v[:, 2:3]
        dxy_ds1[:, 1] = (Di[:, 1] - y[:, None] * Di[:, 2]) / v[:, 2:3]
        # crystal block
        dq = (dA[d.shot] @ d.hkl[:, None, :, None])[..., 0]  # (N, nc, 3)
        ds1 = dq @ np.swapaxes(ds1_dq, 1, 2)  # (N, nc, 3)
        Jc = np.empty((d.n_refl, 3, self.nc))
        Jc[:, :2] = dxy_ds1 @ np.swapaxes(ds1, 1, 2)
        Jc[:, 2] = (dq @ dpsi_dq[:, :, None])[:, :, 0]
        # detector block
        d_o, d_f, d_s = self.detector.panel_derivatives(pd)
        wv = d_f[d.panel] * v[:, None, 0:1] + d_s[d.panel] * v[:, None, 1:2] + d_o[d.panel] * v[:, None, 2:3]
        dv = -(wv @ np.swapaxes(Di, 1, 2))  # (N, 6, 3)
        Jd = np.zeros((d.n_refl, 3, 6))
        Jd[:, 0] = (dv[:, :, 0] - x[:, None] * dv[:, :, 2]) / v[:, 2:3]
        Jd[:, 1] = (dv[:, :, 1] - y[:, None] * dv[:, :, 2]) / v[:, 2:3]
        Jd *= d.sqrt_w[:, :, None]
        Jc *= d.sqrt_w[:, :, None]
        # fixed parameters
        fd = self.fixed[: self.nd].reshape(-1, 6)[self._group]  # (N, 6)
        Jd[np.broadcast_to(fd[:, None, :], Jd.shape)] = 0.0
        fc = self.fixed[self.nd:].reshape(d.n_shots, self.nc)[d.shot]
        Jc[np.broadcast_to(fc[:, None, :], Jc.shape)] = 0.0
        return r, Jd, Jc

    # -- normal equations ---------------------------------------------------------------
    def normal_equations(self, r: np.ndarray, Jd: np.ndarray, Jc: np.ndarray):
        """Blocks of JᵀJ and Jᵀr.

        Returns
        -------
        Hdd : ndarray, shape (G, 6, 6)
        Hcc : ndarray, shape (E, nc, nc)
        Hdc : ndarray, shape (n_pairs, 6, nc)
            One block per (group, shot) pair that shares reflections.
        gd : ndarray, shape (G, 6)
        gc : ndarray, shape (E, nc)
        """
        nc = self.nc
        n = len(r)
        G = self.detector.n_groups
        E = self.data.n_shots
        Hdd = (self._S_group @ (np.swapaxes(Jd, 1, 2) @ Jd).reshape(n, 36)).reshape(G, 6, 6)
        Hcc = (self._S_shot @ (np.swapaxes(Jc, 1, 2) @ Jc).reshape(n, nc * nc)).reshape(E, nc, nc)
        Hdc = (self._S_pair @ (np.swapaxes(Jd, 1, 2) @ Jc).reshape(n, 6 * nc)).reshape(-1, 6, nc)
        gd = self._S_group @ (np.swapaxes(Jd, 1, 2) @ r[:, :, None])[:, :, 0]
        gc = self._S_shot @ (np.swapaxes(Jc, 1, 2) @ r[:, :, None])[:, :, 0]
        return Hdd, Hcc, Hdc, gd, gc

    def solve_step(self, blocks, damping: float) -> np.ndarray:
        """The damped Gauss–Newton step ``-(H + λ·diag H)⁻¹ g`` by Schur complement.

        Parameters
        ----------
        blocks : tuple
            :meth:`normal_equations` output.
        damping : float
            Marquardt's λ (≥ 0).

        Returns
        -------
        ndarray, shape (n_params,)
        """
        Hdd, Hcc, Hdc, gd, gc = blocks
        nc, E, G = self.nc, self.data.n_shots, self.detector.n_groups
        nd = self.nd
        fd = self.fixed[:nd].reshape(G, 6)
        fc = self.fixed[nd:].reshape(E, nc)
        Hdd = Hdd.copy()
        Hcc = Hcc.copy()
        dd = np.einsum("gii->gi", Hdd)
        dc = np.einsum("eii->ei", Hcc)
        dd_new = np.where(fd, 1.0, dd * (1.0 + damping) + 1e-12 * (1.0 + dd))
        dc_new = np.where(fc | (dc <= 0), 1.0, dc * (1.0 + damping) + 1e-12 * (1.0 + dc))
        idx6 = np.arange(6)
        idxc = np.arange(nc)
        Hdd[:, idx6, idx6] = dd_new
        Hcc[:, idxc, idxc] = dc_new
        Cinv = np.linalg.inv(Hcc)
        # Schur complement S = Hdd - Σ_e B_e C_e⁻¹ B_eᵀ, with the coupling blocks B_e (nd × nc)
        # scattered into dense arrays a chunk of shots at a time (bounded memory)
        g_of = (self._pairs // E).astype(np.intp)
        e_of = (self._pairs % E).astype(np.intp)
        S = np.zeros((nd, nd))
        for g in range(G):
            S[6 * g:6 * g + 6, 6 * g:6 * g + 6] = Hdd[g]
        rhs = -gd.ravel()
        chunk = max(1, int(4_000_000 // max(nd * nc, 1)))
        chunks = []
        for e0 in range(0, E, chunk):
            e1 = min(E, e0 + chunk)
            sel = (e_of >= e0) & (e_of < e1)
            Bc = np.zeros((G, 6, e1 - e0, nc))
            Bc[g_of[sel], :, e_of[sel] - e0, :] = Hdc[sel]
            Bc = Bc.reshape(nd, e1 - e0, nc)
            W = np.einsum("iej,ejk->iek", Bc, Cinv[e0:e1])
            S -= W.reshape(nd, -1) @ Bc.reshape(nd, -1).T
            rhs += W.reshape(nd, -1) @ gc[e0:e1].ravel()
            chunks.append((e0, e1, Bc))
        try:
            x = np.linalg.solve(S, rhs)
        except np.linalg.LinAlgError:
            x = np.linalg.lstsq(S, rhs, rcond=None)[0]
        bx = np.empty((E, nc))
        for e0, e1, Bc in chunks:
            bx[e0:e1] = np.einsum("iek,i->ek", Bc, x)
        y = np.einsum("eij,ej->ei", Cinv, -gc - bx)
        step = np.concatenate([x, y.ravel()])
        step[self.fixed] = 0.0
        return step


# ----------------------------------------------------------------------------- the solver
@dataclass
class LMResult:
    """Outcome of :func:`levenberg_marquardt`.

    Attributes
    ----------
    p : ndarray
        Final parameters.
    cost : float
        Final ½‖r‖².
    initial_cost : float
    iterations : int
        Accepted steps.
    evaluations : int
        Residual evaluations.
    converged : bool
    message : str
    """

    p: np.ndarray
    cost: float
    initial_cost: float
    iterations: int
    evaluations: int
    converged: bool
    message: str


def levenberg_marquardt(
    problem: JointProblem,
    p0: np.ndarray | None = None,
    *,
    max_iterations: int = 100,
    gauss_newton: bool = False,
    ftol: float = 1e-10,
    xtol: float = 1e-10,
) -> LMResult:
    """Minimise ``½‖r(p)‖²`` of a :class:`JointProblem` by Levenberg–Marquardt.

    Parameters
    ----------
    problem : JointProblem
    p0 : ndarray, optional
        Starting parameters (default ``problem.initial()``).
    max_iterations : int
        Most accepted steps.
    gauss_newton : bool
        Start undamped (λ = 0) and damp only when a step fails.
    ftol : float
        Stop when a step lowers the cost by less than this fraction.
    xtol : float
        Stop when the step is smaller than this times the parameter norm.

    Returns
    -------
    LMResult
    """
    p = problem.initial() if p0 is None else np.asarray(p0, dtype=np.float64).copy()
    r, Jd, Jc = problem.evaluate(p)
    cost = 0.5 * float(np.sum(r * r))
    cost0 = cost
    lam = 0.0 if gauss_newton else 1e-3
    n_eval = 1
    it = 0
    message = "maximum iterations reached"
    converged = False
    blocks = problem.normal_equations(r, Jd, Jc)
    while it < max_iterations:
        step = problem.solve_step(blocks, lam)
        p_new = p + step
        r_new = problem.evaluate(p_new, jacobian=False)
        n_eval += 1
        cost_new = 0.5 * float(np.sum(r_new * r_new)) if np.all(np.isfinite(r_new)) else np.inf
        if cost_new <= cost:
            it += 1
            small_step = np.linalg.norm(step) <= xtol * (np.linalg.norm(p) + xtol)
            rel = (cost - cost_new) / max(cost, 1e-300)
            p, cost = p_new, cost_new
            lam = lam / 10.0 if lam > 1e-9 else 0.0
            if rel < ftol or small_step:
                converged, message = True, "cost change below tolerance"
                break
            r, Jd, Jc = problem.evaluate(p)
            n_eval += 1
            blocks = problem.normal_equations(r, Jd, Jc)
        else:
            lam = 1e-4 if lam == 0.0 else lam * 10.0
            if lam > 1e10:
                converged, message = True, "no step lowers the cost"
                break
    return LMResult(p, cost, cost0, it, n_eval, converged, message)
