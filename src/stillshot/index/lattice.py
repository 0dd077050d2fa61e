"""Lattice bookkeeping: Niggli reduction, Bravais lattices, known-cell matching, symmetry.

Bases are real-space bases as (3, 3) arrays whose rows are the basis vectors
a, b, c (Å, lab frame), so the setting matrix is ``A = inv(basis)``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import gemmi
import numpy as np

from stillshot.models.crystal import b_matrix, space_group

__all__ = [
    "BRAVAIS_SPACE_GROUPS",
    "BravaisSolution",
    "bravais_lattice",
    "cell_parameters",
    "closest_rotation",
    "match_known_cell",
    "misorientation_deg",
    "near_any_setting",
    "niggli_basis",
    "point_group_rotations",
    "rotation_angle_deg",
    "symmetrised_A",
    "lattice_system",
]

#: Bravais lattice symbol -> the symmorphic space group of its full rotation group.
BRAVAIS_SPACE_GROUPS = {
    "aP": "P 1", "mP": "P 1 2 1", "mC": "C 1 2 1", "oP": "P 2 2 2", "oC": "C 2 2 2",
    "oI": "I 2 2 2", "oF": "F 2 2 2", "tP": "P 4 2 2", "tI": "I 4 2 2", "hR": "R 3 2:H",
    "hP": "P 6 2 2", "cP": "P 4 3 2", "cI": "I 4 3 2", "cF": "F 4 3 2",
}
#: Order of the rotation group of each lattice system (to rank symmetry).
_ORDER = {"a": 1, "m": 2, "o": 4, "t": 8, "h": 12, "c": 24}


def cell_parameters(basis: np.ndarray) -> np.ndarray:
    """(a, b, c, α, β, γ) in Å and degrees of real-space bases.

    Parameters
    ----------
    basis : ndarray (..., 3, 3)
        Rows a, b, c in Å.

    Returns
    -------
    ndarray (..., 6)
    """
    basis = np.asarray(basis, dtype=np.float64)
    a, b, c = basis[..., 0, :], basis[..., 1, :], basis[..., 2, :]
    la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
    with np.errstate(invalid="ignore", divide="ignore"):
        al = np.degrees(np.arccos(np.clip(np.sum(b * c, -1) / (lb * lc), -1, 1)))
        be = np.degrees(np.arccos(np.clip(np.sum(a * c, -1) / (la * lc), -1, 1)))
        ga = np.degrees(np.arccos(np.clip(np.sum(a * b, -1) / (la * lb), -1, 1)))
    return np.stack([la, lb, lc, al, be, ga], axis=-1)


def niggli_basis(basis: np.ndarray) -> np.ndarray:
    """The Niggli-reduced, right-handed basis of the lattice spanned by ``basis``.

    Parameters
    ----------
    basis : ndarray (3, 3)
        Rows a, b, c (Å).

    Returns
    -------
    ndarray (3, 3)
        Reduced rows (Å), same lattice.
    """
    basis = np.asarray(basis, dtype=np.float64)
    if np.linalg.det(basis) < 0:
        basis = -basis
    gv = gemmi.GruberVector(gemmi.UnitCell(*cell_parameters(basis)), "P", True)
    gv.niggli_reduce()
    m = np.array(gv.change_of_basis.rot, dtype=np.float64) / gemmi.Op.DEN
    reduced = np.rint(m.T) @ basis
    if np.linalg.det(reduced) < 0:
        reduced = -reduced
    return reduced


def closest_rotation(m: np.ndarray) -> np.ndarray:
    """The proper rotation closest to ``m`` (polar decomposition)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rotation_angle_deg(r: np.ndarray) -> float:
    """Rotation angle (degrees) of a rotation matrix."""
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


@lru_cache(maxsize=64)
def _rotations_cached(hall: str) -> np.ndarray:
    sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(hall))
    mats = set()
    for op in sg.operations().sym_ops:
        r = np.array(op.rot, dtype=np.int64) // gemmi.Op.DEN
        if round(np.linalg.det(r)) == 1:
            mats.add(tuple(r.T.ravel()))  # acting on column Miller indices
    out = np.array(sorted(mats), dtype=np.float64).reshape(-1, 3, 3)
    out.setflags(write=False)
    return out


def point_group_rotations(sg) -> np.ndarray:
    """Proper rotations of a space group's point group acting on Miller indices.

    Parameters
    ----------
    sg : gemmi.SpaceGroup or str

    Returns
    -------
    ndarray (G, 3, 3)
        Integer-valued matrices ``R`` with ``h' = R·h`` an equivalent index.
    """
    return _rotations_cached(space_group(sg).hall)


def misorientation_deg(A1: np.ndarray, A2: np.ndarray, rotations: np.ndarray | None = None) -> float:
    """Smallest rotation (degrees) taking crystal setting ``A1`` to ``A2``.

    Minimised over symmetry-equivalent settings ``A1·R⁻¹`` (R in ``rotations``,
    acting on Miller indices); the cells may differ slightly (the rotation
    part of ``A2·R·A1⁻¹`` is used).

    Parameters
    ----------
    A1, A2 : ndarray (3, 3)
        Setting matrices (1/Å).
    rotations : ndarray (G, 3, 3), optional
        Point-group rotations (default: identity only).

    Returns
    -------
    float
        Degrees.
    """
    if rotations is None:
        rotations = np.eye(3)[None]
    inv1 = np.linalg.inv(A1)
    return min(rotation_angle_deg(closest_rotation(A2 @ r @ inv1)) for r in rotations)


def near_any_setting(A: np.ndarray, kept, rotations: np.ndarray | None, angle_deg: float) -> bool:
    """True when setting ``A`` is within ``angle_deg`` of a symmetry-equivalent of any of ``kept``.

    Vectorised: ``A_k·R·A⁻¹`` is close to a rotation for every pair, and its
    rotation angle follows from the trace.

    Parameters
    ----------
    A : ndarray (3, 3)
        Setting matrix, 1/Å.
    kept : sequence of ndarray (3, 3)
    rotations : ndarray (G, 3, 3) or None
        Point-group rotations on Miller indices (None: identity only).
    angle_deg : float
    """
    if len(kept) == 0:
        return False
    if rotations is None:
        rotations = np.eye(3)[None]
    K = np.asarray(kept, dtype=np.float64).reshape(-1, 3, 3)
    M = np.einsum("kij,gjl,lm->kgim", K, rotations, np.linalg.inv(A))
    tr = np.trace(M, axis1=2, axis2=3)
    return bool(np.any(tr >= 1.0 + 2.0 * np.cos(np.radians(angle_deg))))


def lattice_system(sg) -> str:
    """Crystal-family letter (a, m, o, t, h, c) of a space group; 'h' covers trigonal."""
    s = space_group(sg).crystal_system_str()
    return {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t",
            "trigonal": "h", "hexagonal": "h", "cubic": "c"}[s]


def symmetrised_cell(params, family: str, rhombohedral: bool = False) -> tuple:
    """Cell parameters averaged onto the metric of a crystal family.

    Parameters
    ----------
    params : sequence of 6 float
        (a, b, c, α, β, γ), Å and degrees.
    family : str
        One of a, m, o, t, h, c (monoclinic: unique axis b).
    rhombohedral : bool
        For family h: the cell is in rhombohedral axes (a=b=c, α=β=γ).
    """
    a, b, c, al, be, ga = (float(x) for x in params)
    if family == "a":
        return (a, b, c, al, be, ga)
    if family == "m":
        return (a, b, c, 90.0, be, 90.0)
    if family == "o":
        return (a, b, c, 90.0, 90.0, 90.0)
    if family == "t":
        m = (a + b) / 2
        return (m, m, c, 90.0, 90.0, 90.0)
    if family == "h":
        if rhombohedral:
            m = (a + b + c) / 3
            ang = (al + be + ga) / 3
            return (m, m, m, ang, ang, ang)
        m = (a + b) / 2
        return (m, m, c, 90.0, 90.0, 120.0)
    m = (a + b + c) / 3
    return (m, m, m, 90.0, 90.0, 90.0)


def symmetrised_A(basis: np.ndarray, family: str, rhombohedral: bool = False) -> np.ndarray:
    """Setting matrix (1/Å) with the cell of ``basis`` made exactly ``family``-symmetric.

    The orientation is the closest rotation to ``inv(basis)·B⁻¹``.
    """
    A = np.linalg.inv(basis)
    cell = gemmi.UnitCell(*symmetrised_cell(cell_parameters(basis), family, rhombohedral))
    B = b_matrix(cell)
    return closest_rotation(A @ np.linalg.inv(B)) @ B


# -- integer transformations ---------------------------------------------------------------

@lru_cache(maxsize=1)
def _unimodular_like() -> tuple[np.ndarray, np.ndarray]:
    """All 3×3 matrices with entries in {-1,0,1} and det in 1..4, with their dets."""
    vals = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=np.float64).reshape(-1, 3, 3)
    det = np.rint(np.linalg.det(vals)).astype(int)
    keep = (det >= 1) & (det <= 4)
    return vals[keep], det[keep]


def _centring(conv: np.ndarray, primitive: np.ndarray, det: int) -> str:
    """Centring letter of a conventional cell given the primitive basis."""
    if det == 1:
        return "P"
    f = primitive @ np.linalg.inv(conv)  # fractional coords of primitive vectors
    # all lattice points in the cell: combos of primitive vectors mod 1
    pts = set()
    for c in itertools.product(range(det), repeat=3):
        v = np.mod(np.asarray(c) @ f, 1.0)
        v = np.where(np.abs(v - 1.0) < 1e-3, 0.0, v)
        pts.add(tuple(np.round(v, 3)))
    pts.discard((0.0, 0.0, 0.0))
    pts = sorted(pts)
    if det == 2 and len(pts) == 1:
        return {(0.5, 0.5, 0.0): "C", (0.0, 0.5, 0.5): "A", (0.5, 0.0, 0.5): "B",
                (0.5, 0.5, 0.5): "I"}.get(pts[0], "?")
    if det == 4 and sorted(pts) == [(0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)]:
        return "F"
    if det == 3 and sorted(pts) == [(0.333, 0.667, 0.667), (0.667, 0.333, 0.333)]:
        return "R"
    return "?"


@dataclass(frozen=True)
class BravaisSolution:
    """A Bravais lattice fitted to a basis.

    Attributes
    ----------
    symbol : str
        Bravais symbol (aP, mP, mC, oP, oC, oI, oF, tP, tI, hP, hR, cP, cI, cF).
    basis : ndarray (3, 3)
        Conventional basis rows (Å), before symmetrisation.
    delta : float
        Metric deviation from the ideal lattice, degrees.
    space_group : gemmi.SpaceGroup
        The lattice's symmorphic rotation group (P422 for tP, ...).
    """

    symbol: str
    basis: np.ndarray
    delta: float
    space_group: gemmi.SpaceGroup


#: Rhombohedral primitive basis (obverse) -> hexagonal axes.
_R_TO_HEX = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


def _prefer_short(conv: np.ndarray, dev: np.ndarray, i: int, red: np.ndarray, det: int) -> np.ndarray:
    """Among cells as good as ``conv[i]`` (same centring, deviation within 0.1°), the shortest."""
    vol = abs(np.linalg.det(conv[i]))
    same = np.nonzero((np.abs(dev - dev[i]) <= 0.1)
                      & (np.abs(np.abs(np.linalg.det(conv)) - vol) < 1e-6 * vol))[0]
    cen = _centring(conv[i], red, det)
    order = same[np.argsort(np.linalg.norm(conv[same], axis=2).sum(axis=1), kind="stable")]
    for j in order[:50]:
        if _centring(conv[j], red, det) == cen:
            return conv[j]
    return conv[i]


def _len_dev_deg(x, y):
    return np.degrees(np.abs(x - y) / ((x + y) / 2)) / 2


def bravais_lattice(basis: np.ndarray, max_delta: float = 5.0) -> list[BravaisSolution]:
    """Bravais lattices compatible with a basis, highest symmetry first.

    Every conventional cell reachable from the Niggli cell by a matrix with
    entries in {-1, 0, 1} is tested against the metric of each Bravais lattice;
    the deviation is the largest angular error (degrees), with length
    mismatches converted to an angle as ``|Δa|/a/2`` radians.

    Parameters
    ----------
    basis : ndarray (3, 3)
        Any basis of the lattice, rows in Å.
    max_delta : float
        Largest accepted deviation, degrees.

    Returns
    -------
    list of BravaisSolution
        At most one per Bravais symbol, sorted by decreasing symmetry then
        deviation; always contains aP.
    """
    red = niggli_basis(basis)
    mats, dets = _unimodular_like()
    conv = mats @ red  # (M, 3, 3)
    p = cell_parameters(conv)
    a, b, c, al, be, ga = (p[:, i] for i in range(6))
    d90 = lambda x: np.abs(x - 90.0)
    tests = {
        "m": np.maximum(d90(al), d90(ga)),
        "o": np.maximum.reduce([d90(al), d90(be), d90(ga)]),
    }
    tests["t"] = np.maximum(tests["o"], _len_dev_deg(a, b))
    tests["h"] = np.maximum.reduce([d90(al), d90(be), np.abs(ga - 120.0), _len_dev_deg(a, b)])
    # rhombohedral lattices: test the primitive rhombohedral metric, convert to hexagonal axes
    rhombo = np.maximum.reduce([_len_dev_deg(a, b), _len_dev_deg(b, c), _len_dev_deg(a, c),
                                np.abs(al - be), np.abs(be - ga), np.abs(al - ga)])
    rhombo = np.where((dets == 1) & (al < 120.0), rhombo, np.inf)
    tests["c"] = np.maximum.reduce([tests["o"], _len_dev_deg(a, b), _len_dev_deg(b, c), _len_dev_deg(a, c)])
    allowed = {"m": "PC", "o": "PCIF", "t": "PI", "h": "P", "c": "PIF"}
    out = [BravaisSolution("aP", red, 0.0, gemmi.SpaceGroup("P 1"))]
    for fam, dev in tests.items():
        ok = np.nonzero(dev <= max_delta)[0]
        if len(ok) == 0:
            continue
        best: dict[str, tuple[float, int]] = {}
        for i in ok[np.argsort(dev[ok], kind="stable")]:
            key_det = int(dets[i])
            if fam == "h" and key_det != 1:
                continue
            if fam in ("m", "t") and key_det not in (1, 2):
                continue
            if fam in ("o", "c") and key_det not in (1, 2, 4):
                continue
            cen = _centring(conv[i], red, key_det)
            if cen not in allowed[fam]:
                continue
            sym = fam + cen
            if sym not in best or (dev[i], dets[i]) < (best[sym][0], dets[best[sym][1]]):
                best[sym] = (float(dev[i]), int(i))
        for sym, (delta, i) in best.items():
            out.append(BravaisSolution(sym, _prefer_short(conv, dev, i, red, int(dets[i])), delta,
                                       gemmi.SpaceGroup(BRAVAIS_SPACE_GROUPS[sym])))
    ok = np.nonzero(rhombo <= max_delta)[0]
    if len(ok):
        i = int(ok[np.argmin(rhombo[ok])])
        out.append(BravaisSolution("hR", _R_TO_HEX @ conv[i], float(rhombo[i]),
                                   gemmi.SpaceGroup(BRAVAIS_SPACE_GROUPS["hR"])))
    # centred monoclinic/orthorhombic cells can need coefficients of 2: search lattice axes
    have = {s.symbol: s for s in out}
    for sol in _axis_solutions(red, max_delta):
        old_sol = have.get(sol.symbol)
        if old_sol is None or sol.delta < old_sol.delta - 1e-6:
            if old_sol is not None:
                out.remove(old_sol)
            out.append(sol)
            have[sol.symbol] = sol
    out.sort(key=lambda s: (-_ORDER[s.symbol[0]], s.delta))
    return out


def _relabel_centring(conv: np.ndarray, red: np.ndarray, det: int, family: str) -> tuple[np.ndarray, str]:
    """Permute axes so that an A/B-centred cell reads as C (orthorhombic: any permutation;
    monoclinic: swap a and c, keeping b)."""
    cen = _centring(conv, red, det)
    if cen in "PCIF":
        return conv, cen
    if family == "m":
        alt = np.array([-conv[2], -conv[1], -conv[0]])  # (c, b, a) with det kept positive
        return alt, _centring(alt, red, det)
    for perm in ((1, 2, 0), (2, 0, 1)):
        alt = conv[list(perm)]
        c = _centring(alt, red, det)
        if c == "C":
            return alt, c
    return conv, cen


def _axis_solutions(red: np.ndarray, max_delta: float) -> list[BravaisSolution]:
    """mP/mC/oP/oC/oI/oF cells built from lattice vectors (coefficients up to 2) at right angles."""
    coeffs = np.array([c for c in itertools.product(range(-2, 3), repeat=3)
                       if any(c) and np.gcd.reduce(np.abs(c)) == 1], dtype=np.float64)
    vecs = coeffs @ red
    lens = np.linalg.norm(vecs, axis=1)
    # one of each ± pair, shortest first
    keep = np.array([tuple(c) > tuple(-c) for c in coeffs])
    vecs, lens = vecs[keep], lens[keep]
    order = np.argsort(lens, kind="stable")
    vecs, lens = vecs[order], lens[order]
    cosang = (vecs @ vecs.T) / np.outer(lens, lens)
    dev = np.abs(np.degrees(np.arccos(np.clip(np.abs(cosang), 0.0, 1.0))) - 90.0)
    perp = dev <= max_delta
    vol_p = abs(np.linalg.det(red))
    out: dict[str, BravaisSolution] = {}

    def consider(symbol, conv, delta):
        cur = out.get(symbol)
        shorter = cur is not None and (np.linalg.norm(conv, axis=1).sum()
                                       < np.linalg.norm(cur.basis, axis=1).sum())
        if cur is None or delta < cur.delta - 1e-6 or (abs(delta - cur.delta) <= 1e-6 and shorter):
            out[symbol] = BravaisSolution(symbol, conv, float(delta), gemmi.SpaceGroup(BRAVAIS_SPACE_GROUPS[symbol]))

    n = len(vecs)
    for ib in range(n):
        partners = np.nonzero(perp[ib])[0]
        if len(partners) < 2:
            continue
        # monoclinic: b = vecs[ib], a and c the shortest independent partners giving det 1 or 2
        found = False
        for ii, ia in enumerate(partners[:12]):
            for ic in partners[ii + 1 : 12]:
                conv = np.array([vecs[ia], vecs[ib], vecs[ic]])
                det = np.linalg.det(conv)
                if abs(det) < 1e-6 * vol_p:
                    continue
                if det < 0:
                    conv = np.array([vecs[ia], vecs[ib], -vecs[ic]])
                ratio = int(round(abs(det) / vol_p))
                if ratio not in (1, 2) or abs(abs(det) / vol_p - ratio) > 1e-3:
                    continue
                conv, cen = _relabel_centring(conv, red, ratio, "m")
                if cen not in "PC":
                    continue
                delta = max(dev[ib, ia], dev[ib, ic])
                consider("m" + cen, conv, delta)
                found = True
                break
            if found:
                break
        # orthorhombic: three mutually perpendicular axes
        for ii, ia in enumerate(partners[:12]):
            if ia < ib:
                continue
            for ic in partners[ii + 1 : 12]:
                if ic < ib or not perp[ia, ic]:
                    continue
                conv = np.array([vecs[ib], vecs[ia], vecs[ic]])
                det = np.linalg.det(conv)
                if det < 0:
                    conv[2] = -conv[2]
                ratio = int(round(abs(det) / vol_p))
                if ratio not in (1, 2, 4) or abs(abs(det) / vol_p - ratio) > 1e-3:
                    continue
                conv, cen = _relabel_centring(conv, red, ratio, "o")
                if cen not in "PCIF":
                    continue
                consider("o" + cen, conv, max(dev[ib, ia], dev[ib, ic], dev[ia, ic]))
    return list(out.values())


def match_known_cell(
    basis: np.ndarray,
    target_cell,
    *,
    relative_length_tolerance: float = 0.1,
    absolute_angle_tolerance: float = 5.0,
    max_coefficient: int = 3,
) -> np.ndarray | None:
    """A basis of the same lattice whose cell matches a target cell.

    Lattice vectors ``n·reduced`` (integer n with entries up to
    ``max_coefficient``) are matched by length to the target a, b, c and then
    by angle; the right-handed triple with the smallest combined deviation is
    returned.

    Parameters
    ----------
    basis : ndarray (3, 3)
        Rows in Å (any basis of the candidate lattice).
    target_cell : sequence of 6 float
        (a, b, c, α, β, γ), Å and degrees.
    relative_length_tolerance : float
    absolute_angle_tolerance : float
        Degrees.
    max_coefficient : int

    Returns
    -------
    ndarray (3, 3) or None
        Rows a, b, c (Å) in the target setting; None when nothing matches.
    """
    red = niggli_basis(basis)
    k = max_coefficient
    coeffs = np.array([c for c in itertools.product(range(-k, k + 1), repeat=3) if any(c)], dtype=np.float64)
    vecs = coeffs @ red
    lens = np.linalg.norm(vecs, axis=1)
    ta, tb, tc, tal, tbe, tga = (float(x) for x in target_cell)
    lists = [np.nonzero(np.abs(lens - t) <= relative_length_tolerance * t)[0] for t in (ta, tb, tc)]
    if any(len(x) == 0 for x in lists):
        return None
    ia, ib, ic = np.meshgrid(*lists, indexing="ij")
    ia, ib, ic = ia.ravel(), ib.ravel(), ic.ravel()
    if len(ia) > 200000:
        return None
    trip = np.stack([vecs[ia], vecs[ib], vecs[ic]], axis=1)
    p = cell_parameters(trip)
    ang_dev = np.maximum.reduce([np.abs(p[:, 3] - tal), np.abs(p[:, 4] - tbe), np.abs(p[:, 5] - tga)])
    len_dev = np.maximum.reduce([np.abs(p[:, i] - t) / t for i, t in enumerate((ta, tb, tc))])
    det = np.linalg.det(trip)
    ok = (ang_dev <= absolute_angle_tolerance) & (det > 1e-6)
    if not np.any(ok):
        return None
    score = ang_dev / max(absolute_angle_tolerance, 1e-9) + len_dev / max(relative_length_tolerance, 1e-9)
    score[~ok] = np.inf
    return trip[int(np.argmin(score))]


def target_B(unit_cell) -> np.ndarray:
    """B matrix (1/Å) of a target cell (a, b, c, α, β, γ)."""
    return b_matrix(gemmi.UnitCell(*unit_cell))
