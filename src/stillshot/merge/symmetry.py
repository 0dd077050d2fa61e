"""Symmetry for merging: Laue-class equivalence, gemmi's ASU, indexing ambiguities.

Reflections are merged with Friedel mates together (the Laue class of the
space group).  Millions of observations are mapped to their class with
:func:`equivalence_keys` (pure numpy: the largest packed index over the
orbit); the few thousand unique classes are then put into gemmi's reciprocal
ASU (:class:`gemmi.ReciprocalAsu`), which is what the MTZ files carry.

An indexing ambiguity exists when the lattice has more symmetry than the
point group (P6₃, P4, P3, ...): a shot can be indexed equally well as ``h``
or ``M·h`` for each coset representative ``M`` of the point group in the
lattice group.  :func:`ambiguity_operators` asks gemmi for them
(:func:`gemmi.find_twin_laws`, which returns exactly these coset
representatives for a merohedral lattice).
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from stillshot.symmetry import equivalence_keys, laue_rotations, unpack_keys

__all__ = [
    "AmbiguityOperator",
    "MergeSymmetry",
    "ambiguity_operators",
    "coset_table",
    "equivalence_keys",
    "laue_rotations",
    "unpack_keys",
]

@dataclass(frozen=True)
class AmbiguityOperator:
    """A reindexing operator ``h' = M·h`` (Miller indices as column vectors).

    Attributes
    ----------
    matrix : ndarray of int, shape (3, 3)
    triplet : str
        gemmi's hkl triplet, e.g. ``"k,h,-l"``.
    """

    matrix: np.ndarray
    triplet: str

    def apply(self, hkl: np.ndarray) -> np.ndarray:
        """Reindexed Miller indices (N, 3)."""
        return (np.asarray(hkl, dtype=np.int64) @ self.matrix.T).astype(np.int32)

    def apply_to_A(self, A: np.ndarray) -> np.ndarray:
        """The setting matrix (1/Å) that predicts the same spots with reindexed hkl: ``A·M⁻¹``."""
        return np.asarray(A) @ np.linalg.inv(self.matrix.astype(np.float64))


def _op_matrix(op: gemmi.Op) -> np.ndarray:
    cols = [op.apply_to_hkl(list(e)) for e in np.eye(3, dtype=int).tolist()]
    return np.array(cols, dtype=np.int64).T


def ambiguity_operators(space_group: gemmi.SpaceGroup, unit_cell: gemmi.UnitCell, *,
                        max_obliquity: float = 3.0) -> list[AmbiguityOperator]:
    """Indexing-ambiguity operators of a space group and cell, identity first.

    Parameters
    ----------
    space_group : gemmi.SpaceGroup
    unit_cell : gemmi.UnitCell
        a, b, c (Å), α, β, γ (degrees).
    max_obliquity : float
        Largest obliquity (degrees) for a lattice operator to count (as in
        gemmi/cctbx twin-law searches).

    Returns
    -------
    list of AmbiguityOperator
        One coset representative per alternative indexing; length 1 when
        there is no ambiguity.
    """
    ops = [AmbiguityOperator(np.eye(3, dtype=np.int64), "h,k,l")]
    for op in gemmi.find_twin_laws(unit_cell, space_group, float(max_obliquity), False):
        ops.append(AmbiguityOperator(_op_matrix(op), op.as_hkl().triplet()))
    return ops


def coset_table(operators: list[AmbiguityOperator], rotations: np.ndarray) -> np.ndarray:
    """Which operator ``M_a⁻¹·M_b`` is, modulo the Laue group: ``table[a, b] = k``.

    Parameters
    ----------
    operators : list of AmbiguityOperator
        Identity first.
    rotations : ndarray of int, shape (R, 3, 3)
        The Laue group (:func:`laue_rotations`).

    Returns
    -------
    ndarray of int, shape (K, K)
    """
    probe = np.array([[3, 7, 11], [5, 2, 13], [1, 9, 4], [8, 3, 2]], dtype=np.int64)
    ref = np.stack([equivalence_keys(probe @ op.matrix.T, rotations) for op in operators])
    K = len(operators)
    table = np.zeros((K, K), dtype=np.int64)
    for a, oa in enumerate(operators):
        inv = np.rint(np.linalg.inv(oa.matrix.astype(np.float64))).astype(np.int64)
        for b, ob in enumerate(operators):
            m = inv @ ob.matrix
            keys = equivalence_keys(probe @ m.T, rotations)
            hit = np.nonzero((ref == keys).all(axis=1))[0]
            if len(hit) != 1:
                raise ValueError("ambiguity operators do not form a group modulo the Laue group")
            table[a, b] = hit[0]
    return table


class MergeSymmetry:
    """Space group and cell of a merge, with the hkl bookkeeping.

    Parameters
    ----------
    space_group : gemmi.SpaceGroup
    unit_cell : gemmi.UnitCell
        The merged cell: a, b, c (Å), α, β, γ (degrees).
    """

    def __init__(self, space_group: gemmi.SpaceGroup, unit_cell: gemmi.UnitCell):
        self.space_group = space_group
        self.unit_cell = unit_cell
        self.ops = space_group.operations()
        self.rotations = laue_rotations(space_group)
        self.asu = gemmi.ReciprocalAsu(space_group)

    def keys(self, hkl: np.ndarray) -> np.ndarray:
        """Equivalence-class keys (int64) of Miller indices (N, 3)."""
        return equivalence_keys(hkl, self.rotations)

    def to_asu(self, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """gemmi's ASU index and MTZ ``M/ISYM`` of each Miller index.

        Parameters
        ----------
        hkl : ndarray of int, shape (N, 3)

        Returns
        -------
        asu : ndarray of int32, shape (N, 3)
        isym : ndarray of int32, shape (N,)
            Odd for I(+), even for I(−), as in MTZ files.
        """
        h = np.asarray(hkl, dtype=np.int32).reshape(-1, 3)
        uniq, inv = np.unique(h, axis=0, return_inverse=True)
        out = np.empty_like(uniq)
        isym = np.empty(len(uniq), dtype=np.int32)
        for i, row in enumerate(uniq.tolist()):
            a, s = self.asu.to_asu(row, self.ops)
            out[i] = a
            isym[i] = s
        inv = inv.reshape(-1)
        return out[inv], isym[inv]

    def d_spacing(self, hkl: np.ndarray) -> np.ndarray:
        """Resolution d (Å) of Miller indices in the merged cell."""
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0)
        return np.asarray(self.unit_cell.calculate_d_array(h), dtype=np.float64)

    def absent(self, hkl: np.ndarray) -> np.ndarray:
        """True for systematic absences."""
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.ops.systematic_absences(h), dtype=bool)

    def centric(self, hkl: np.ndarray) -> np.ndarray:
        """True for centric reflections."""
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self.ops.centric_flag_array(h), dtype=bool)

    def epsilon(self, hkl: np.ndarray) -> np.ndarray:
        """Symmetry enhancement factor ε of Miller indices."""
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0)
        return np.asarray(self.ops.epsilon_factor_without_centering_array(h), dtype=np.float64)

    def complete_set(self, d_min: float, d_max: float = 0.0) -> np.ndarray:
        """Every unique, non-absent reflection in ``[d_min, d_max]`` (Å; 0: no low limit), in the ASU."""
        h = np.asarray(gemmi.make_miller_array(self.unit_cell, self.space_group, float(d_min),
                                               float(d_max), True), dtype=np.int32).reshape(-1, 3)
        return h[~self.absent(h)]
