"""Miller-index symmetry shared by every stage: Laue-class rotations and equivalence keys.

Millions of reflections are mapped to their symmetry class with
:func:`equivalence_keys` (pure numpy: the largest packed index over the orbit),
so that simulation, merging and statistics group them the same way.
"""

from __future__ import annotations

import gemmi
import numpy as np

__all__ = ["equivalence_keys", "laue_rotations", "unpack_keys"]

_OFF = 1024  # |h|, |k|, |l| must stay below this


def laue_rotations(space_group: gemmi.SpaceGroup) -> np.ndarray:
    """Integer rotations of the Laue class acting on Miller indices.

    Parameters
    ----------
    space_group : gemmi.SpaceGroup

    Returns
    -------
    ndarray of int64, shape (R, 3, 3)
        Matrices ``R`` with ``h' = h·R`` (row vectors), Friedel (−R) included.
    """
    mats = {tuple(np.array(op.rot, dtype=np.int64).ravel() // op.DEN)
            for op in space_group.operations().sym_ops}
    rots = [np.array(m, dtype=np.int64).reshape(3, 3) for m in sorted(mats)]
    rots += [-r for r in rots]
    return np.stack(rots)


def equivalence_keys(hkl: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """One int64 key per symmetry class: the largest packed member of the orbit.

    Parameters
    ----------
    hkl : ndarray of int, shape (N, 3)
    rotations : ndarray of int, shape (R, 3, 3)
        From :func:`laue_rotations`.

    Returns
    -------
    ndarray of int64, shape (N,)
    """
    h = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    best = np.full(len(h), np.iinfo(np.int64).min, dtype=np.int64)
    for r in rotations:
        eq = h @ r + _OFF
        packed = (eq[:, 0] * (2 * _OFF) + eq[:, 1]) * (2 * _OFF) + eq[:, 2]
        np.maximum(best, packed, out=best)
    return best


def unpack_keys(keys: np.ndarray) -> np.ndarray:
    """The Miller index a key was packed from (one member of the class), shape (N, 3)."""
    k = np.asarray(keys, dtype=np.int64)
    l_ = k % (2 * _OFF) - _OFF
    k2 = k // (2 * _OFF)
    return np.stack([k2 // (2 * _OFF) - _OFF, k2 % (2 * _OFF) - _OFF, l_], axis=1)
