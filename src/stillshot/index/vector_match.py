"""``vector_match``: fast known-cell indexing by matching inter-spot vectors to the cell.

The idea of TakeTwo (Ginn et al. 2016) and of XGANDALF's seeds: differences
between neighbouring reciprocal-lattice points of a shot are short reciprocal
lattice vectors, seen in the lab frame.  Differences are pooled, and their
densest clusters are the shot's shortest lattice vectors.  Each pair of
clusters whose lengths and mutual angle match a pair of the known cell's
reciprocal vectors fixes an orientation; all those orientations are scored at
once against every spot (vectorised), and the best are refined.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.spatial import cKDTree

from stillshot.index.assign import assign_indices, indexed_fraction
from stillshot.index.lattice import closest_rotation, near_any_setting
from stillshot.index.registry import SearchContext, register


def difference_peaks(rlp: np.ndarray, tol: float, *, k: int = 6, max_peaks: int = 12,
                     min_count: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Densest clusters of nearest-neighbour difference vectors.

    Parameters
    ----------
    rlp : ndarray (N, 3)
        Reciprocal-lattice points, 1/Å.
    tol : float
        Cluster radius, 1/Å.
    k : int
        Neighbours per spot.
    max_peaks : int
        Most clusters returned (one of each ± pair).

    Returns
    -------
    peaks : ndarray (P, 3)
        Cluster centres (1/Å).
    counts : ndarray (P,)
        Members per cluster.
    """
    n = len(rlp)
    if n < 3:
        return np.zeros((0, 3)), np.zeros(0)
    kk = min(k + 1, n)
    _, nb = cKDTree(rlp).query(rlp, k=kk)
    diffs = (rlp[nb[:, 1:]] - rlp[:, None, :]).reshape(-1, 3)
    diffs = np.concatenate([diffs, -diffs])
    tree = cKDTree(diffs)
    counts = tree.query_ball_point(diffs, tol, return_length=True)
    order = np.argsort(-counts, kind="stable")
    alive = np.ones(len(diffs), dtype=bool)
    peaks, pc = [], []
    for i in order[: int(np.count_nonzero(counts >= min_count))]:  # counts descend along order
        if not alive[i]:
            continue
        members = tree.query_ball_point(diffs[i], tol)
        centre = diffs[members].mean(axis=0)
        for c in (centre, -centre):
            alive[np.asarray(tree.query_ball_point(c, 2 * tol), dtype=np.intp)] = False
        peaks.append(centre)
        pc.append(len(members))
        if len(peaks) >= max_peaks:
            break
    return np.array(peaks).reshape(-1, 3), np.array(pc)


def _lattice_table(B: np.ndarray, q_max: float) -> np.ndarray:
    """All Miller indices h ≠ 0 with |B·h| ≤ q_max."""
    real = np.linalg.inv(B)
    lim = np.ceil(np.linalg.norm(real, axis=1) * q_max).astype(int)
    grids = np.meshgrid(*(np.arange(-m, m + 1) for m in lim), indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    q = np.linalg.norm(hkl @ B.T, axis=1)
    keep = (q > 0) & (q <= q_max)
    return hkl[keep].astype(np.float64)


def _orbit_representatives(hkl: np.ndarray, rotations: np.ndarray | None) -> np.ndarray:
    """One index of each orbit under the (proper) rotations.

    Friedel mates are not merged: the sign of an observed difference vector is
    fixed, and no proper rotation maps every h to -h.
    """
    if rotations is None or len(rotations) == 0:
        return np.ones(len(hkl), dtype=bool)
    rep = np.zeros(len(hkl), dtype=bool)
    seen: set = set()
    for i, h in enumerate(hkl.astype(int)):
        t = tuple(h)
        if t in seen:
            continue
        rep[i] = True
        for r in rotations:  # proper rotations only: h and -h are not equivalent here
            seen.add(tuple((r @ h).astype(int)))
    return rep


_TABLES: dict = {}


def _table_and_representatives(B: np.ndarray, q_max: float, rotations) -> tuple[np.ndarray, np.ndarray]:
    """Lattice table up to q_max (rounded up to a 0.01 1/Å step) and its orbit representatives, cached."""
    q = float(np.ceil(q_max / 0.01) * 0.01)
    key = (B.tobytes(), q, None if rotations is None else np.asarray(rotations).tobytes())
    hit = _TABLES.get(key)
    if hit is None:
        hkl = _lattice_table(B, q)
        hit = (hkl, _orbit_representatives(hkl, rotations))
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = hit
    return hit


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u × v over the last axis (np.cross without its axis bookkeeping, for small stacks)."""
    out = np.empty(np.broadcast_shapes(u.shape, v.shape))
    out[..., 0] = u[..., 1] * v[..., 2] - u[..., 2] * v[..., 1]
    out[..., 1] = u[..., 2] * v[..., 0] - u[..., 0] * v[..., 2]
    out[..., 2] = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return out


def _frames(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Orthonormal frames (columns) from vector pairs, shape (..., 3, 3)."""
    e1 = u / np.sqrt(np.sum(u * u, axis=-1, keepdims=True))
    e3 = _cross(u, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        e3 /= np.sqrt(np.sum(e3 * e3, axis=-1, keepdims=True))
    e2 = _cross(e3, e1)
    return np.stack([e1, e2, e3], axis=-1)


def fit_orientation(B: np.ndarray, hkl: np.ndarray, rlp: np.ndarray) -> np.ndarray:
    """Rotation U minimising Σ|U·B·h − r|² (Kabsch)."""
    model = hkl @ B.T
    return closest_rotation(rlp.T @ model)


def _fallback(spots, context: SearchContext) -> list[np.ndarray]:
    from stillshot.index.grid_search import search_grid

    return search_grid(spots, context)


def _pair_rotations(p1, p2, l1, l2, qv, qlen, rep, tol1, tol2, tol, max_rotations=5000):
    """Rotations taking matching model vector pairs onto the observed pair (p1, p2); None if none.

    Model vectors u (one per symmetry orbit) and v whose lengths match the
    observed ones and whose angle matches within ``deg(tol/l1 + tol/l2) + 2°``;
    each match gives ``F(p1, p2)·F(u, v)ᵀ`` with F the orthonormal frame of a pair.
    """
    cos_obs = p1 @ p2 / (l1 * l2)
    ang_obs = np.degrees(np.arccos(np.clip(cos_obs, -1, 1)))
    if ang_obs < 15 or ang_obs > 165:
        return None
    m1 = np.nonzero(rep & (np.abs(qlen - l1) <= tol1))[0]
    m2 = np.nonzero(np.abs(qlen - l2) <= tol2)[0]
    if len(m1) == 0 or len(m2) == 0:
        return None
    ang_tol = float(np.degrees(tol / l1 + tol / l2) + 2.0)
    obs = _frames(np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64))
    rot = _pair_rotations_kernel(np.ascontiguousarray(obs), np.ascontiguousarray(qv, dtype=np.float64),
                                 np.ascontiguousarray(qlen, dtype=np.float64), m1.astype(np.int64),
                                 m2.astype(np.int64), float(ang_obs), ang_tol, int(max_rotations))
    return rot if len(rot) else None


@njit(cache=True)
def _pair_rotations_kernel(obs, qv, qlen, m1, m2, ang_obs, ang_tol, max_rotations):  # pragma: no cover - numba
    """Rotations obs·F(qv[i], qv[j])ᵀ for i in m1, j in m2 at the observed angle (empty above max_rotations)."""
    # |angle − ang_obs| ≤ ang_tol as a cosine interval (no arccos per pair)
    c_lo = math.cos(math.radians(min(180.0, ang_obs + ang_tol)))
    c_hi = math.cos(math.radians(max(0.0, ang_obs - ang_tol)))
    n = 0
    for a in range(len(m1)):
        i = m1[a]
        for b in range(len(m2)):
            j = m2[b]
            c = (qv[i, 0] * qv[j, 0] + qv[i, 1] * qv[j, 1] + qv[i, 2] * qv[j, 2]) / (qlen[i] * qlen[j])
            if c_lo <= c <= c_hi:
                n += 1
    if n == 0 or n > max_rotations:
        return np.empty((0, 3, 3))
    out = np.empty((n, 3, 3))
    k = 0
    for a in range(len(m1)):
        i = m1[a]
        for b in range(len(m2)):
            j = m2[b]
            c = (qv[i, 0] * qv[j, 0] + qv[i, 1] * qv[j, 1] + qv[i, 2] * qv[j, 2]) / (qlen[i] * qlen[j])
            if not (c_lo <= c <= c_hi):
                continue
            u0, u1, u2 = qv[i, 0], qv[i, 1], qv[i, 2]
            v0, v1, v2 = qv[j, 0], qv[j, 1], qv[j, 2]
            un = math.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
            e10, e11, e12 = u0 / un, u1 / un, u2 / un
            e30 = u1 * v2 - u2 * v1
            e31 = u2 * v0 - u0 * v2
            e32 = u0 * v1 - u1 * v0
            en = math.sqrt(e30 * e30 + e31 * e31 + e32 * e32)
            if en == 0.0:
                continue
            e30 /= en
            e31 /= en
            e32 /= en
            e20 = e31 * e12 - e32 * e11
            e21 = e32 * e10 - e30 * e12
            e22 = e30 * e11 - e31 * e10
            # model frame M has columns e1, e2, e3; rotation = obs · Mᵀ
            for r in range(3):
                out[k, r, 0] = obs[r, 0] * e10 + obs[r, 1] * e20 + obs[r, 2] * e30
                out[k, r, 1] = obs[r, 0] * e11 + obs[r, 1] * e21 + obs[r, 2] * e31
                out[k, r, 2] = obs[r, 0] * e12 + obs[r, 1] * e22 + obs[r, 2] * e32
            k += 1
    return out[:k]


@register("vector_match", known_cell_only=True)
def search_vector_match(spots, context: SearchContext, *, early_stop: float = 0.6,
                        max_candidates: int = 10, fallback_below: float = 0.3) -> list[np.ndarray]:
    """Candidate bases (rows a, b, c in Å, target setting) from inter-spot vector matching.

    Peak pairs are tried in order of cluster population, six at a time; the
    search stops once an orientation puts ``early_stop`` of the scoring spots
    within 0.2 of a lattice point.  When the difference vectors show too few
    clusters (shots with few spots) or no orientation reaches
    ``fallback_below``, the exhaustive real-space grid search is run too.
    """
    opt = context.options
    B = context.target_B
    if B is None:
        return []
    sel = spots.d >= context.d_min
    rlp = spots.rlp[sel]
    if len(rlp) < 4:
        return []
    recip_len = np.linalg.norm(B, axis=0)
    tol = 0.2 * recip_len.min()
    # the lowest-resolution spots carry the smallest errors: 200 of them find the peaks
    low = rlp[np.argsort(-spots.d[sel], kind="stable")[:200]]
    peaks, counts = difference_peaks(low, tol, max_peaks=10)
    if len(peaks) < 4:  # few spots: differences seldom repeat
        peaks, counts = difference_peaks(low, tol, max_peaks=10, min_count=2)
    # long differences (sparse spots) match too many lattice vectors to be useful
    q_cap = 8.0 * recip_len.max()
    short = np.linalg.norm(peaks, axis=1) <= q_cap
    peaks, counts = peaks[short], counts[short]
    if len(peaks) < 2:
        return _fallback(spots, context)
    plen = np.linalg.norm(peaks, axis=1)
    hkl, rep = _table_and_representatives(B, plen.max() * 1.1 + tol, context.target_rotations)
    if len(hkl) == 0:
        return []
    qv = hkl @ B.T
    qlen = np.linalg.norm(qv, axis=1)
    B_inv = np.linalg.inv(B)
    len_tol = tol + 0.03 * plen
    # score against the lowest-resolution spots (the most reliable ones), at most 150
    score_rlp = rlp[np.argsort(-spots.d[sel], kind="stable")[:150]]
    # unordered pairs suffice: the first vector is matched to one representative of each
    # symmetry orbit, the second to every lattice vector
    pairs = [(i, j) for i in range(len(peaks)) for j in range(i + 1, len(peaks))]
    pairs.sort(key=lambda ij: -counts[ij[0]] * counts[ij[1]])
    all_U, all_score = [], []
    best = 0.0
    for start in range(0, len(pairs), 6):
        batch = []
        for i, j in pairs[start : start + 6]:
            rot = _pair_rotations(peaks[i], peaks[j], plen[i], plen[j], qv, qlen, rep, len_tol[i], len_tol[j], tol)
            if rot is not None:
                batch.append(rot)
        if not batch:
            continue
        U = np.concatenate(batch)
        # (U·B)⁻¹ = B⁻¹·Uᵀ: no stack inversion
        score = indexed_fraction(None, score_rlp, 0.2, inverse=B_inv @ np.swapaxes(U, 1, 2))
        all_U.append(U)
        all_score.append(score)
        best = max(best, float(score.max()))
        # two batches at least, so that a second lattice of the shot is among the candidates
        if best >= early_stop and start >= 6:
            break
    if not all_U:
        return _fallback(spots, context)
    U = np.concatenate(all_U)
    score = np.concatenate(all_score)
    order = np.argsort(-score, kind="stable")
    by_res = rlp[np.argsort(-spots.d[sel], kind="stable")]
    ramp = [(by_res[: max(12, int(f * len(by_res)))], t)
            for f, t in ((0.1, 0.2), (0.1, 0.2), (0.2, 0.2), (0.35, 0.25), (0.6, 0.25), (1.0, opt.hkl_tolerance))]
    out: list[np.ndarray] = []
    kept_A: list[np.ndarray] = []
    rots = context.target_rotations if context.target_rotations is not None else np.eye(3)[None]
    n_max = min(opt.max_candidates, max_candidates)
    for idx in order[: 20 * n_max]:
        if score[idx] < 0.5 * score[order[0]]:
            break
        u = U[idx]
        if kept_A and near_any_setting(u @ B, kept_A, rots, 1.0):
            continue
        # resolution ramp: an orientation a degree or two off assigns low-angle spots
        # correctly; fit those first, then extend to all spots
        for stage, tolerance in ramp:
            h, ok = assign_indices(u @ B, stage, tolerance)
            if ok.sum() < 3:
                continue
            u = fit_orientation(B, h[ok], stage[ok])
        Ai = u @ B
        if kept_A and near_any_setting(Ai, kept_A, rots, 1.0):
            continue
        kept_A.append(Ai)
        out.append(np.linalg.inv(Ai))
        if len(out) >= n_max:
            break
    if best < fallback_below:  # weak evidence (few spots, several lattices): add the exhaustive search
        for basis in _fallback(spots, context):
            if not near_any_setting(np.linalg.inv(basis), kept_A, rots, 1.0):
                kept_A.append(np.linalg.inv(basis))
                out.append(basis)
    return out
