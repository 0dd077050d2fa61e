"""Right-handed planar frames (fast axis, slow axis, origin) and their composition.

A frame is what DIALS/dxtbx calls a panel's "d matrix": two orthonormal in-plane
axes and an origin, all in mm in the frame of the parent (the lab frame for a
root).  A child's global frame is ``R_parent @ local + origin_parent`` where
``R_parent`` has the parent's fast, slow and normal axes as its columns, exactly
as dxtbx's ``VirtualPanelFrame.update_global_frame`` composes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _vec3(values) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(3)
    arr.setflags(write=False)
    return arr


def _unit(values) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(3)
    norm = np.linalg.norm(arr)
    if norm == 0:
        raise ValueError("a frame axis has zero length")
    if abs(norm - 1.0) > 1e-12:
        arr = arr / norm
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Frame:
    """A planar frame: unit fast and slow axes and an origin.

    Parameters
    ----------
    fast : array_like, shape (3,)
        Unit fast axis (dimensionless).
    slow : array_like, shape (3,)
        Unit slow axis (dimensionless), orthogonal to ``fast``.
    origin : array_like, shape (3,)
        Origin in mm.
    """

    fast: np.ndarray
    slow: np.ndarray
    origin: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "fast", _unit(self.fast))
        object.__setattr__(self, "slow", _unit(self.slow))
        object.__setattr__(self, "origin", _vec3(self.origin))
        if abs(float(self.fast @ self.slow)) > 1e-6:
            raise ValueError(
                f"fast axis {self.fast.tolist()} and slow axis {self.slow.tolist()} are not orthogonal"
            )

    @classmethod
    def identity(cls) -> "Frame":
        """The lab frame: fast = x, slow = y, origin at 0."""
        return cls((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))

    @property
    def normal(self) -> np.ndarray:
        """Unit normal, fast × slow (dimensionless)."""
        return np.cross(self.fast, self.slow)

    @property
    def rotation(self) -> np.ndarray:
        """3×3 matrix whose columns are fast, slow and normal."""
        return np.column_stack([self.fast, self.slow, self.normal])

    @property
    def d_matrix(self) -> np.ndarray:
        """DIALS's d matrix: columns fast, slow, origin (mm)."""
        return np.column_stack([self.fast, self.slow, self.origin])

    def compose(self, local: "Frame") -> "Frame":
        """Global frame of a child given in this frame's coordinates."""
        rot = self.rotation
        return Frame(rot @ local.fast, rot @ local.slow, rot @ local.origin + self.origin)

    def relative(self, global_frame: "Frame") -> "Frame":
        """Local frame, in this frame's coordinates, of a frame given globally."""
        rot_t = self.rotation.T
        return Frame(
            rot_t @ global_frame.fast,
            rot_t @ global_frame.slow,
            rot_t @ (global_frame.origin - self.origin),
        )

    def is_identity(self, tol: float = 0.0) -> bool:
        """True when this frame is the lab frame (within ``tol``)."""
        ident = Frame.identity()
        return all(
            np.allclose(a, b, rtol=0, atol=tol)
            for a, b in ((self.fast, ident.fast), (self.slow, ident.slow), (self.origin, ident.origin))
        )
