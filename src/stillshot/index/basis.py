"""Shared pieces of the basis-vector searches: direction grids, vector refinement, bases."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from stillshot.index.assign import indexed_fraction
from stillshot.index.lattice import niggli_basis


@lru_cache(maxsize=8)
def hemisphere_directions(spacing_rad: float) -> np.ndarray:
    """Near-uniform unit vectors on the upper hemisphere (z ≥ 0), Fibonacci lattice.

    Parameters
    ----------
    spacing_rad : float
        Typical angle between neighbouring directions, radians.

    Returns
    -------
    ndarray (M, 3)
    """
    n = max(16, int(round(2.0 * np.pi / spacing_rad**2)))
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # uniform in z on (0, 1]
    phi = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z * z)
    out = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    out.setflags(write=False)
    return out


def refine_vector(v: np.ndarray, rlp: np.ndarray, *, tolerance: float = 0.25,
                  cycles: int = 3) -> tuple[np.ndarray, int]:
    """Least-squares refinement of a real-space lattice vector against rlps.

    Spots with ``v·r`` within ``tolerance`` of an integer n are fitted to
    ``v·r = n``.

    Parameters
    ----------
    v : ndarray (3,)
        Vector, Å.
    rlp : ndarray (N, 3)
        1/Å.

    Returns
    -------
    v : ndarray (3,)
    n_used : int
        Spots used in the last cycle.
    """
    v = np.asarray(v, dtype=np.float64)
    used = 0
    for _ in range(cycles):
        p = rlp @ v
        n = np.rint(p)
        ok = np.abs(p - n) <= tolerance
        used = int(ok.sum())
        if np.count_nonzero(n[ok]) < 3:  # only the zero plane: the vector is undetermined
            return v, 0
        if used < 4:
            break
        sol, *_ = np.linalg.lstsq(rlp[ok], n[ok], rcond=None)
        if not np.all(np.isfinite(sol)):
            break
        v = sol
    return v, used


def unique_vectors(vectors: np.ndarray, scores: np.ndarray, *, angle_deg: float = 5.0,
                   length_rel: float = 0.1, max_vectors: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Best-scoring vectors with near-duplicates (parallel or anti-parallel, similar length) dropped.

    A vector parallel to a kept one whose length is within ``length_rel`` of an
    integer multiple of the kept length is treated as a duplicate (a harmonic).
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[np.ndarray] = []
    kept_s: list[float] = []
    cos_lim = np.cos(np.radians(angle_deg))
    for i in order:
        v = vectors[i]
        lv = np.linalg.norm(v)
        dup = False
        for w in kept:
            lw = np.linalg.norm(w)
            if abs(v @ w) / (lv * lw) >= cos_lim:
                ratio = max(lv, lw) / min(lv, lw)
                if abs(ratio - round(ratio)) <= length_rel * round(ratio):
                    dup = True
                    break
        if not dup:
            kept.append(v)
            kept_s.append(float(scores[i]))
            if len(kept) >= max_vectors:
                break
    return np.array(kept).reshape(-1, 3), np.array(kept_s)


def bases_from_vectors(vectors: np.ndarray, rlp: np.ndarray, *, min_volume: float, max_vectors: int = 15,
                       max_bases: int = 10, tolerance: float = 0.3) -> list[np.ndarray]:
    """Candidate bases from triples of basis vectors, ranked by the fraction of spots indexed.

    Parameters
    ----------
    vectors : ndarray (K, 3)
        Candidate real-space vectors, Å, best first.
    rlp : ndarray (N, 3)
        Reciprocal-lattice points used for ranking, 1/Å.
    min_volume : float
        Smallest cell volume, Å³.

    Returns
    -------
    list of ndarray (3, 3)
        Niggli-reduced bases (rows, Å), best first, distinct lattices.
    """
    vec = vectors[:max_vectors]
    triples = np.array(list(itertools.combinations(range(len(vec)), 3)), dtype=np.intp).reshape(-1, 3)
    if len(triples) == 0:
        return []
    bases = vec[triples]  # (T, 3, 3)
    vol = np.abs(np.linalg.det(bases))
    lens = np.linalg.norm(bases, axis=2).prod(axis=1)
    ok = (vol >= min_volume) & (vol >= 0.1 * lens)  # not nearly coplanar
    bases = bases[ok]
    if len(bases) == 0:
        return []
    sign = np.sign(np.linalg.det(bases))
    bases = bases * sign[:, None, None]
    frac = indexed_fraction(None, rlp, tolerance, inverse=bases)  # (bases⁻¹)⁻¹ = bases
    # prefer small cells among equally good ones: a supercell indexes everything too
    vol = np.abs(np.linalg.det(bases))
    order = np.lexsort((vol, -np.round(frac, 2)))
    out: list[np.ndarray] = []
    seen: list[np.ndarray] = []
    for i in order:
        red = niggli_basis(bases[i])
        if any(np.allclose(red, s, rtol=0.03, atol=0.5) or np.allclose(red, -s, rtol=0.03, atol=0.5) for s in seen):
            continue
        seen.append(red)
        out.append(red)
        if len(out) >= max_bases:
            break
    return out
