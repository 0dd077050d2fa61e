"""The crystal model: A = U·B, space group and mosaicity."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import gemmi
import numpy as np

_CRYSTAL_KEYS = (
    "__id__",
    "real_space_a",
    "real_space_b",
    "real_space_c",
    "space_group_hall_symbol",
    "ML_half_mosaicity_deg",
    "ML_domain_size_ang",
    "mosaicity",
)


def space_group_from_hall(hall: str) -> gemmi.SpaceGroup:
    """The gemmi space group for a Hall symbol (as DIALS writes it)."""
    ops = gemmi.symops_from_hall(hall)
    sg = gemmi.find_spacegroup_by_ops(ops)
    if sg is None:
        raise ValueError(f"unrecognised Hall symbol {hall!r}")
    return sg


def space_group(symbol: str | gemmi.SpaceGroup) -> gemmi.SpaceGroup:
    """A gemmi space group from a Hermann–Mauguin name, number or Hall symbol."""
    if isinstance(symbol, gemmi.SpaceGroup):
        return symbol
    text = str(symbol).strip()
    try:
        return gemmi.SpaceGroup(text)
    except (ValueError, RuntimeError):
        pass
    try:
        return space_group_from_hall(text)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"unknown space group {symbol!r}") from exc


def b_matrix(cell: gemmi.UnitCell) -> np.ndarray:
    """Busing–Levy B matrix (1/Å) for a unit cell, in the DIALS/cctbx convention.

    ``B`` is upper triangular (the fractionalisation matrix transposed), so the
    reciprocal basis vectors a*, b*, c* are its columns and ``B·h`` is the
    reciprocal-lattice point of ``h`` in the crystal's Cartesian frame.
    """
    return np.array(cell.frac.mat, dtype=np.float64).T


@dataclass(frozen=True, eq=False)
class Crystal:
    """A crystal lattice orientation with its space group.

    Parameters
    ----------
    A : ndarray, shape (3, 3)
        Setting matrix ``U·B`` in 1/Å: the columns are a*, b*, c* in the lab
        frame, and the reciprocal-lattice point of ``h`` is ``A @ h``.
    space_group : gemmi.SpaceGroup
        The crystal's space group.
    half_mosaicity_deg : float or None
        Half-width of the mosaic rotation distribution, degrees (Sauter 2014's η/2;
        DIALS ``ML_half_mosaicity_deg``).
    domain_size_ang : float or None
        Mosaic block size in Å (DIALS ``ML_domain_size_ang``).
    extra : dict
        Unmodelled keys of the DIALS crystal dict (e.g. ``B_covariance``).
    """

    A: np.ndarray
    space_group: gemmi.SpaceGroup
    half_mosaicity_deg: float | None = None
    domain_size_ang: float | None = None
    extra: dict = field(default_factory=dict)
    real_space: np.ndarray | None = None

    def __post_init__(self):
        a = np.array(self.A, dtype=np.float64).reshape(3, 3)
        if abs(np.linalg.det(a)) < 1e-20:
            raise ValueError("crystal A matrix is singular")
        a.setflags(write=False)
        object.__setattr__(self, "A", a)
        if self.real_space is None:
            rs = np.linalg.inv(a)
        else:
            rs = np.array(self.real_space, dtype=np.float64).reshape(3, 3)
        rs.setflags(write=False)
        object.__setattr__(self, "real_space", rs)

    # -- construction ----------------------------------------------------------
    @classmethod
    def from_cell_and_U(cls, cell, U: np.ndarray, space_group_symbol="P1", **kw) -> "Crystal":
        """Crystal from a unit cell (a, b, c in Å; α, β, γ in degrees) and a rotation U."""
        uc = cell if isinstance(cell, gemmi.UnitCell) else gemmi.UnitCell(*cell)
        return cls(np.asarray(U) @ b_matrix(uc), space_group(space_group_symbol), **kw)

    @classmethod
    def from_real_space(cls, a, b, c, space_group_symbol="P1", **kw) -> "Crystal":
        """Crystal from real-space basis vectors a, b, c in Å (lab frame)."""
        rs = np.array([a, b, c], dtype=np.float64)
        return cls(np.linalg.inv(rs), space_group(space_group_symbol), real_space=rs, **kw)

    # -- derived quantities ---------------------------------------------------------
    @property
    def unit_cell(self) -> gemmi.UnitCell:
        """The unit cell (a, b, c in Å; α, β, γ in degrees)."""
        a, b, c = self.real_space
        la, lb, lc = (float(np.linalg.norm(v)) for v in (a, b, c))
        ang = lambda u, v, lu, lv: float(np.degrees(np.arccos(np.clip(u @ v / (lu * lv), -1, 1))))
        return gemmi.UnitCell(la, lb, lc, ang(b, c, lb, lc), ang(a, c, la, lc), ang(a, b, la, lb))

    @property
    def cell_parameters(self) -> tuple:
        """(a, b, c, α, β, γ) in Å and degrees."""
        return tuple(self.unit_cell.parameters)

    @property
    def B(self) -> np.ndarray:
        """Upper-triangular B matrix (1/Å) of this crystal's unit cell."""
        return b_matrix(self.unit_cell)

    @property
    def U(self) -> np.ndarray:
        """Orientation matrix ``A·B⁻¹`` (a proper rotation)."""
        return self.A @ np.linalg.inv(self.B)

    def rlp(self, hkl: np.ndarray) -> np.ndarray:
        """Reciprocal-lattice points ``A @ h`` (1/Å) for hkl rows, shape (N, 3)."""
        return np.asarray(hkl, dtype=np.float64) @ self.A.T

    def with_A(self, A: np.ndarray) -> "Crystal":
        """A copy with a new setting matrix (1/Å)."""
        return replace(self, A=np.asarray(A), real_space=None)

    # -- DIALS dict -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The DIALS ``crystal`` dict."""
        a, b, c = self.real_space
        d = {
            "__id__": "crystal",
            "real_space_a": a.tolist(),
            "real_space_b": b.tolist(),
            "real_space_c": c.tolist(),
            "space_group_hall_symbol": self._hall_symbol(),
        }
        d.update({k: v for k, v in self.extra.items() if k != "_hall_as_read"})
        if self.half_mosaicity_deg is not None:
            d["ML_half_mosaicity_deg"] = self.half_mosaicity_deg
        if self.domain_size_ang is not None:
            d["ML_domain_size_ang"] = self.domain_size_ang
        return d

    def _hall_symbol(self) -> str:
        """The Hall symbol as read (if it still names this space group) or gemmi's."""
        as_read = self.extra.get("_hall_as_read")
        if as_read is not None and space_group_from_hall(as_read).number == self.space_group.number:
            return as_read
        return self.space_group.hall

    @classmethod
    def from_dict(cls, d: dict) -> "Crystal":
        """Build from a DIALS ``crystal`` dict."""
        rs = np.array([d["real_space_a"], d["real_space_b"], d["real_space_c"]], dtype=np.float64)
        hall = d.get("space_group_hall_symbol", " P 1")
        extra = {k: v for k, v in d.items() if k not in _CRYSTAL_KEYS}
        if "mosaicity" in d:
            extra["mosaicity"] = d["mosaicity"]
        sg = space_group_from_hall(hall)
        crystal = cls(
            np.linalg.inv(rs),
            sg,
            half_mosaicity_deg=d.get("ML_half_mosaicity_deg"),
            domain_size_ang=d.get("ML_domain_size_ang"),
            extra=extra,
            real_space=rs,
        )
        if hall != sg.hall:
            crystal.extra["_hall_as_read"] = hall
        return crystal
