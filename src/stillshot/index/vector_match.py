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

import numpy as np
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
    for i in order:
        if not alive[i] or counts[i] < min_count:
            continue
        members = tree.query_ball_point(diffs[i], tol)
        centre = diffs[members].mean(axis=0)
        for c in (centre, -centre):
            for j in tree.query_ball_point(c, 2 * tol):
                alive[j] = False
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


def _frames(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Orthonormal frames (columns) from vector pairs, shape (..., 3, 3)."""
    e1 = u / np.linalg.norm(u, axis=-1, keepdims=True)
    e3 = np.cross(u, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        e3 /= np.linalg.norm(e3, axis=-1, keepdims=True)
    e2 = np.cross(e3, e1)
    return np.stack([e1, e2, e3], axis=-1)


def fit_orientation(B: np.ndarray, hkl: np.ndarray, rlp: np.ndarray) -> np.ndarray:
    """Rotation U minimising Σ|U·B·h − r|² (Kabsch)."""
    model = hkl @ B.T
    return closest_rotation(rlp.T @ model)


def _fallback(spots, context: SearchContext) -> list[np.ndarray]:
    from stillshot.index.grid_search import search_grid

    return search_grid(spots, context)


def _pair_rotations(p1, p2, l1, l2, qv, qlen, rep, tol1, tol2, tol, max_rotations=5000):
    """Rotations taking matching model vector pairs onto the observed pair (p1, p2); None if none."""
    cos_obs = p1 @ p2 / (l1 * l2)
    ang_obs = np.degrees(np.arccos(np.clip(cos_obs, -1, 1)))
    if ang_obs < 15 or ang_obs > 165:
        return None
    m1 = np.nonzero(rep & (np.abs(qlen - l1) <= tol1))[0]
    m2 = np.nonzero(np.abs(qlen - l2) <= tol2)[0]
    if len(m1) == 0 or len(m2) == 0:
        return None
    c = (qv[m1] @ qv[m2].T) / np.outer(qlen[m1], qlen[m2])
    ang = np.degrees(np.arccos(np.clip(c, -1, 1)))
    ang_tol = np.degrees(tol / l1 + tol / l2) + 2.0
    a1, a2 = np.nonzero(np.abs(ang - ang_obs) <= ang_tol)
    if len(a1) == 0 or len(a1) > max_rotations:
        return None
    model = _frames(qv[m1[a1]], qv[m2[a2]])
    obs = _frames(p1, p2)
    rot = obs[None] @ np.swapaxes(model, 1, 2)
    rot = rot[np.all(np.isfinite(rot), axis=(1, 2))]
    return rot if len(rot) else None


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
        score = indexed_fraction(U @ B, score_rlp, 0.2)
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
