"""Miller-index assignment with a tolerance."""

from __future__ import annotations

import numpy as np
from numba import njit


def fractional_indices(A: np.ndarray, rlp: np.ndarray) -> np.ndarray:
    """Fractional Miller indices ``A⁻¹·r`` of reciprocal-lattice points, shape (N, 3)."""
    return np.asarray(rlp, dtype=np.float64) @ np.linalg.inv(A).T


def assign_indices(A: np.ndarray, rlp: np.ndarray, tolerance: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-integer Miller indices of spots, with a tolerance and uniqueness.

    A spot is indexed when every component of its fractional index lies within
    ``tolerance`` of an integer and the integer index is not (0, 0, 0); when two
    spots get the same index, only the one closer to the lattice point keeps it.

    Parameters
    ----------
    A : ndarray (3, 3)
        Setting matrix, 1/Å.
    rlp : ndarray (N, 3)
        Reciprocal-lattice points, 1/Å.
    tolerance : float
        Largest |fractional - integer| per component.

    Returns
    -------
    hkl : ndarray (N, 3) of int32
        Indices (0, 0, 0 where not indexed).
    indexed : ndarray (N,) of bool
    """
    frac = fractional_indices(A, rlp)
    hkl = np.rint(frac)
    err = np.abs(frac - hkl)
    ok = np.all(err <= tolerance, axis=1) & np.any(hkl != 0, axis=1)
    if np.any(ok):
        dist = np.linalg.norm((frac - hkl) @ np.asarray(A).T, axis=1)
        idx = np.nonzero(ok)[0]
        keys = hkl[idx].astype(np.int64)
        order = np.lexsort((dist[idx], keys[:, 2], keys[:, 1], keys[:, 0]))
        k_sorted = keys[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = np.any(k_sorted[1:] != k_sorted[:-1], axis=1)
        ok[:] = False
        ok[idx[order[first]]] = True
    hkl = np.where(ok[:, None], hkl, 0).astype(np.int32)
    return hkl, ok


def indexed_fraction(A_stack: np.ndarray | None, rlp: np.ndarray, tolerance: float, *,
                     inverse: np.ndarray | None = None) -> np.ndarray:
    """Fraction of spots within ``tolerance`` of a lattice point, for many settings at once.

    Parameters
    ----------
    A_stack : ndarray (M, 3, 3) or None
        Setting matrices, 1/Å (None when ``inverse`` is given).
    rlp : ndarray (N, 3)
    tolerance : float
    inverse : ndarray (M, 3, 3), optional
        The inverses of the setting matrices, when the caller has them cheaply
        (``B⁻¹·Uᵀ`` for ``A = U·B``).

    Returns
    -------
    ndarray (M,)
    """
    if inverse is None:
        inverse = np.linalg.inv(np.asarray(A_stack, dtype=np.float64))
    inv = np.ascontiguousarray(np.asarray(inverse, dtype=np.float64).reshape(-1, 3, 3))
    r = np.ascontiguousarray(rlp, dtype=np.float64)
    if len(r) == 0:
        return np.zeros(len(inv))
    return _count_indexed(inv, r, float(tolerance)) / len(r)


@njit(cache=True)
def _count_indexed(inv, rlp, tol):  # pragma: no cover - numba
    m = inv.shape[0]
    n = rlp.shape[0]
    out = np.zeros(m)
    for k in range(m):
        c = 0
        for i in range(n):
            x, y, z = rlp[i, 0], rlp[i, 1], rlp[i, 2]
            f0 = inv[k, 0, 0] * x + inv[k, 0, 1] * y + inv[k, 0, 2] * z
            if abs(f0 - np.rint(f0)) > tol:
                continue
            f1 = inv[k, 1, 0] * x + inv[k, 1, 1] * y + inv[k, 1, 2] * z
            if abs(f1 - np.rint(f1)) > tol:
                continue
            f2 = inv[k, 2, 0] * x + inv[k, 2, 1] * y + inv[k, 2, 2] * z
            if abs(f2 - np.rint(f2)) > tol:
                continue
            c += 1
        out[k] = c
    return out
