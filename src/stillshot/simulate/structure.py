"""True intensities: a seeded random Wilson model, or a user's MTZ.

A symmetry-equivalence class of reflections (Friedel mates included) is
named by a *key*: the lexicographically largest of its members, packed into
one int64.  The random model draws each class's intensity from a pure
function of (key, seed), so any shot can look up any reflection without a
table, and every equivalent gets the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from stillshot.models.crystal import b_matrix, space_group
from stillshot.simulate._kernels import hash_uniforms
from stillshot.symmetry import equivalence_keys, laue_rotations, unpack_keys

__all__ = ["StructureModel", "equivalence_keys", "unpack_keys"]

@dataclass(eq=False)
class StructureModel:
    """True intensities of one crystal form.

    Parameters
    ----------
    unit_cell : tuple of float
        a, b, c (Å), α, β, γ (degrees).
    space_group : str or gemmi.SpaceGroup
    b_factor : float
        Wilson B (Å²): the mean intensity falls as ``exp(-B/(2d²))``.
    seed : int
        Seed of the random model.
    table : (ndarray, ndarray) or None
        ``(sorted keys, intensities)`` of a user's intensities (from an MTZ);
        None for the random model.  Reflections absent from the table have
        intensity 0.

    Notes
    -----
    Random model: acentric intensities are exponential, centric ones are
    ε·Σ·g² with g standard normal, with Σ(d) = exp(-B/(2d²)) and ε gemmi's
    epsilon factor, so <I> = ε at low resolution.  Systematically absent
    reflections have intensity 0 in both models.
    """

    unit_cell: tuple
    space_group: gemmi.SpaceGroup
    b_factor: float = 20.0
    seed: int = 0
    table: tuple | None = None
    _rot: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.space_group = space_group(self.space_group)
        self.unit_cell = tuple(float(v) for v in self.unit_cell)
        self._rot = laue_rotations(self.space_group)
        self._ops = self.space_group.operations()

    @property
    def cell(self) -> gemmi.UnitCell:
        """The gemmi unit cell."""
        return gemmi.UnitCell(*self.unit_cell)

    @property
    def B(self) -> np.ndarray:
        """B matrix (1/Å) of the cell."""
        return b_matrix(self.cell)

    @classmethod
    def from_mtz(cls, path: str, column: str | None = None, **kw) -> "StructureModel":
        """Intensities from an MTZ file (an intensity column, or amplitudes squared).

        Parameters
        ----------
        path : str
            MTZ file.
        column : str, optional
            Column label; default the first of IMEAN, I, I-obs, F, FP, F-obs
            present (amplitudes are squared).
        **kw
            ``b_factor``/``seed`` are ignored; cell and space group come from the file.
        """
        mtz = gemmi.read_mtz_file(str(path))
        labels = [c.label for c in mtz.columns]
        if column is None:
            for cand in ("IMEAN", "I", "I-obs", "F", "FP", "F-obs"):
                if cand in labels:
                    column = cand
                    break
            else:
                raise ValueError(f"{path}: no intensity or amplitude column (have {', '.join(labels)})")
        col = mtz.column_with_label(column)
        if col is None:
            raise ValueError(f"{path}: no column {column!r} (have {', '.join(labels)})")
        data = np.asarray(mtz)
        hkl = data[:, :3].astype(np.int64)
        vals = data[:, labels.index(column)].astype(np.float64)
        if col.type == "F":
            vals = vals**2
        ok = np.isfinite(vals)
        sg = mtz.spacegroup
        model = cls(tuple(mtz.cell.parameters), sg)
        keys = equivalence_keys(hkl[ok], model._rot)
        order = np.argsort(keys)
        model.table = (keys[order], np.maximum(vals[ok][order], 0.0))
        return model

    def keys(self, hkl: np.ndarray) -> np.ndarray:
        """Symmetry-class keys of Miller indices (see :func:`equivalence_keys`)."""
        return equivalence_keys(hkl, self._rot)

    def absent(self, hkl: np.ndarray) -> np.ndarray:
        """True for systematically absent reflections (gemmi)."""
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0, dtype=bool)
        return np.asarray(self._ops.systematic_absences(h), dtype=bool)

    def intensities(self, hkl: np.ndarray) -> np.ndarray:
        """True intensities (arbitrary units, <I> ≈ ε at low resolution) of Miller indices.

        Parameters
        ----------
        hkl : ndarray of int, shape (N, 3)

        Returns
        -------
        ndarray, shape (N,)
            Intensity; 0 for systematic absences (and, with an MTZ, for
            reflections the file lacks).
        """
        h = np.ascontiguousarray(np.asarray(hkl, dtype=np.int32).reshape(-1, 3))
        if len(h) == 0:
            return np.zeros(0)
        keys = self.keys(h)
        if self.table is not None:
            tk, tv = self.table
            pos = np.clip(np.searchsorted(tk, keys), 0, max(len(tk) - 1, 0))
            out = np.where((len(tk) > 0) & (tk[pos] == keys), tv[pos], 0.0) if len(tk) else np.zeros(len(h))
        else:
            u = hash_uniforms(keys.astype(np.uint64), np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF), 2)
            centric = np.asarray(self._ops.centric_flag_array(h), dtype=bool)
            eps = np.asarray(self._ops.epsilon_factor_array(h), dtype=np.float64)
            q = h.astype(np.float64) @ self.B.T
            s2 = np.einsum("ij,ij->i", q, q)
            sigma = eps * np.exp(-0.5 * self.b_factor * s2)
            acentric = -np.log(u[:, 0])
            g = np.sqrt(-2.0 * np.log(u[:, 0])) * np.cos(2.0 * np.pi * u[:, 1])
            out = sigma * np.where(centric, g * g, acentric)
        out = np.asarray(out, dtype=np.float64)
        out[self.absent(h)] = 0.0
        return out

    def asu_reflections(self, d_min: float) -> tuple[np.ndarray, np.ndarray]:
        """Every symmetry-unique, non-absent reflection to ``d_min`` (Å), in gemmi's ASU.

        Returns
        -------
        hkl : ndarray of int32, shape (N, 3)
        intensity : ndarray, shape (N,)
        """
        B = self.B
        real = np.linalg.inv(B)
        lim = np.floor(np.linalg.norm(real, axis=1) / d_min).astype(int)
        grids = [np.arange(-m, m + 1) for m in lim]
        hkl = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, 3)
        q = hkl @ B.T
        qq = np.einsum("ij,ij->i", q, q)
        hkl = hkl[(qq > 0) & (qq <= 1.0 / d_min**2)]
        asu = gemmi.ReciprocalAsu(self.space_group)
        # one representative per class, then gemmi's ASU form of it
        keys = self.keys(hkl)
        _, first = np.unique(keys, return_index=True)
        rep = hkl[first]
        rep = rep[~self.absent(rep)]
        out = np.array([asu.to_asu(list(map(int, h)), self._ops)[0] for h in rep], dtype=np.int32).reshape(-1, 3)
        return out, self.intensities(out)

    def write_mtz(self, path: str, d_min: float, *, title: str = "stillshot simulated truth") -> None:
        """Write the true intensities (and amplitudes) to ``d_min`` (Å) as an MTZ.

        Columns: H, K, L, I (type J, the true intensity, arbitrary units as in
        truth.json's ``intensity.model``) and F = √I (type F).
        """
        hkl, inten = self.asu_reflections(d_min)
        mtz = gemmi.Mtz(with_base=True)
        mtz.title = title
        mtz.spacegroup = self.space_group
        mtz.set_cell_for_all(self.cell)
        mtz.add_dataset("simulated")
        mtz.add_column("I", "J")
        mtz.add_column("F", "F")
        data = np.column_stack([hkl.astype(np.float32), inten.astype(np.float32),
                                np.sqrt(inten).astype(np.float32)])
        mtz.set_data(data)
        mtz.write_to_file(str(path))
