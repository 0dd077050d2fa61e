"""Rigid-body parameterisation of the groups of a detector hierarchy at one level.

Every group at hierarchy level ``level`` (0: the whole detector; for a CSPAD
1: quadrants, 2: sensors, 3: ASICs) moves as one rigid body with DIALS's six
parameters, in DIALS's units and order:

``Dist``    translation along the group's starting normal (mm)
``Shift1``  translation along the group's starting fast axis (mm)
``Shift2``  translation along the group's starting slow axis (mm)
``Tau1``    rotation about the normal (mrad)
``Tau2``    rotation about the fast axis (mrad)
``Tau3``    rotation about the slow axis (mrad)

The rotation ``R = R(d2, τ3)·R(d1, τ2)·R(dn, τ1)`` turns the group about its
*pivot*, the centre of its panels at the start (so that shifts and rotations
are nearly uncorrelated), and the translation ``t = Dist·dn + Shift1·d1 +
Shift2·d2`` follows.  A panel of the group with starting frame ``(o, f, s)``
moves to ``(c + R(o - c) + t, R f, R s)``; all parameters zero is the
starting detector.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stillshot.models.detector import Detector, Group
from stillshot.models.frame import Frame

__all__ = ["PARAMETER_NAMES", "HierarchyParameterisation", "rotation_matrices"]

#: Names of the six parameters of each group, in order (DIALS's names).
PARAMETER_NAMES = ("Dist", "Shift1", "Shift2", "Tau1", "Tau2", "Tau3")


def _cross_matrix(k: np.ndarray) -> np.ndarray:
    """Matrices ``[k]×`` for axes ``k`` of shape (..., 3)."""
    z = np.zeros(k.shape[:-1])
    return np.stack(
        [
            np.stack([z, -k[..., 2], k[..., 1]], axis=-1),
            np.stack([k[..., 2], z, -k[..., 0]], axis=-1),
            np.stack([-k[..., 1], k[..., 0], z], axis=-1),
        ],
        axis=-2,
    )


def rotation_matrices(axes: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation matrices about unit ``axes`` by ``angles`` and their angle derivatives.

    Parameters
    ----------
    axes : ndarray, shape (..., 3)
        Unit rotation axes.
    angles : ndarray, shape (...)
        Angles in radians (right-handed).

    Returns
    -------
    R : ndarray, shape (..., 3, 3)
    dR : ndarray, shape (..., 3, 3)
        ``dR/dangle = [k]× R`` (per radian).
    """
    k = _cross_matrix(np.asarray(axes, dtype=np.float64))
    a = np.asarray(angles, dtype=np.float64)[..., None, None]
    eye = np.broadcast_to(np.eye(3), k.shape)
    kk = k @ k
    R = eye + np.sin(a) * k + (1.0 - np.cos(a)) * kk
    return R, k @ R


@dataclass(frozen=True, eq=False)
class HierarchyParameterisation:
    """Six rigid-body parameters per group at one level of a detector hierarchy.

    Build with :meth:`from_detector`.

    Attributes
    ----------
    level : int
        Hierarchy level of the groups.
    names : tuple of str
        Group names (``groups_at_level`` order).
    panel_group : ndarray of int, shape (P,)
        Group index of every panel.
    group_panels : tuple of tuple of int
        Panel indices of every group.
    pivot : ndarray, shape (G, 3)
        Rotation centre of every group (mm, lab): the mean of its panels' centres.
    axes : ndarray, shape (G, 3, 3)
        Rows d1 (fast), d2 (slow), dn (normal) of every group's starting frame.
    origin, fast, slow : ndarray, shape (P, 3)
        Starting panel frames (mm; unit axes).
    """

    level: int
    names: tuple
    panel_group: np.ndarray
    group_panels: tuple
    pivot: np.ndarray
    axes: np.ndarray
    origin: np.ndarray
    fast: np.ndarray
    slow: np.ndarray

    @classmethod
    def from_detector(cls, detector: Detector, level: int) -> "HierarchyParameterisation":
        """The parameterisation of ``detector``'s groups at ``level``.

        Parameters
        ----------
        detector : Detector
        level : int
            0 (whole detector) … ``detector.max_hierarchy_level()`` (one group
            per panel).

        Raises
        ------
        ValueError
            ``level`` is negative or deeper than the panels.
        """
        top = detector.max_hierarchy_level()
        if level < 0 or level > max(top, 0):
            raise ValueError(f"hierarchy level {level} does not exist: this detector has levels 0–{top}")
        groups = detector.groups_at_level(level)
        n_panels = len(detector)
        panel_group = np.full(n_panels, -1, dtype=np.intp)
        origin = np.array([p.origin for p in detector.panels], dtype=np.float64)
        fast = np.array([p.fast_axis for p in detector.panels], dtype=np.float64)
        slow = np.array([p.slow_axis for p in detector.panels], dtype=np.float64)
        size = np.array([np.asarray(p.image_size, float) * np.asarray(p.pixel_size, float) for p in detector.panels])
        centres = origin + 0.5 * size[:, :1] * fast + 0.5 * size[:, 1:] * slow
        pivots, axes, members = [], [], []
        for g, group in enumerate(groups):
            idx = group.panel_indices()
            panel_group[idx] = g
            members.append(tuple(idx))
            pivots.append(centres[idx].mean(axis=0))
            fr = group.frame
            axes.append(np.stack([fr.fast, fr.slow, fr.normal]))
        return cls(
            level=int(level),
            names=tuple(g.name for g in groups),
            panel_group=panel_group,
            group_panels=tuple(members),
            pivot=np.array(pivots),
            axes=np.array(axes),
            origin=origin,
            fast=fast,
            slow=slow,
        )

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.names)

    @property
    def n_params(self) -> int:
        """Number of parameters, 6 per group."""
        return 6 * self.n_groups

    def parameter_names(self) -> list[str]:
        """``GROUPNAME.Dist`` … one per parameter, in vector order."""
        return [f"{g}.{n}" for g in self.names for n in PARAMETER_NAMES]

    def _transforms(self, p: np.ndarray):
        """Per-group R (G,3,3), dR/dτk (G,3,3,3) per rad, and t (G,3) for parameters p."""
        p = np.asarray(p, dtype=np.float64).reshape(self.n_groups, 6)
        d1, d2, dn = self.axes[:, 0], self.axes[:, 1], self.axes[:, 2]
        tau = p[:, 3:] / 1000.0
        R1, dR1 = rotation_matrices(dn, tau[:, 0])
        R2, dR2 = rotation_matrices(d1, tau[:, 1])
        R3, dR3 = rotation_matrices(d2, tau[:, 2])
        R32 = R3 @ R2
        R = R32 @ R1
        dR = np.stack([R32 @ dR1, R3 @ dR2 @ R1, dR3 @ R2 @ R1], axis=1)
        t = p[:, :1] * dn + p[:, 1:2] * d1 + p[:, 2:3] * d2
        return R, dR, t

    def panel_frames(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Panel origins (mm) and fast and slow axes for parameters ``p``, each (P, 3)."""
        R, _, t = self._transforms(p)
        g = self.panel_group
        c = self.pivot[g]
        origin = c + np.einsum("pij,pj->pi", R[g], self.origin - c) + t[g]
        fast = np.einsum("pij,pj->pi", R[g], self.fast)
        slow = np.einsum("pij,pj->pi", R[g], self.slow)
        return origin, fast, slow

    def panel_derivatives(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Derivatives of every panel's origin, fast and slow axis by its group's parameters.

        Returns
        -------
        d_origin, d_fast, d_slow : ndarray, shape (P, 6, 3)
            Per panel, the derivative by its group's Dist, Shift1, Shift2 (per
            mm) and Tau1, Tau2, Tau3 (per mrad).
        """
        _, dR, _ = self._transforms(p)
        g = self.panel_group
        n = len(g)
        d_origin = np.zeros((n, 6, 3))
        d_fast = np.zeros((n, 6, 3))
        d_slow = np.zeros((n, 6, 3))
        d_origin[:, 0] = self.axes[g, 2]
        d_origin[:, 1] = self.axes[g, 0]
        d_origin[:, 2] = self.axes[g, 1]
        rel = self.origin - self.pivot[g]
        dRg = dR[g] / 1000.0  # per mrad
        d_origin[:, 3:] = np.einsum("pkij,pj->pki", dRg, rel)
        d_fast[:, 3:] = np.einsum("pkij,pj->pki", dRg, self.fast)
        d_slow[:, 3:] = np.einsum("pkij,pj->pki", dRg, self.slow)
        return d_origin, d_fast, d_slow

    def apply(self, detector: Detector, p: np.ndarray) -> Detector:
        """The detector with every group moved by parameters ``p``.

        The hierarchy is kept: each group's *local* frame is replaced (its
        sub-groups and panels move with it), so the result writes back to
        ``.expt`` with the same tree.

        Parameters
        ----------
        detector : Detector
            The detector this parameterisation was built from.
        p : ndarray, shape (6·G,)

        Returns
        -------
        Detector
        """
        R, _, t = self._transforms(p)
        groups = detector.groups_at_level(self.level)
        new_global = []
        for k, group in enumerate(groups):
            fr = group.frame
            c = self.pivot[k]
            new_global.append(Frame(R[k] @ fr.fast, R[k] @ fr.slow, c + R[k] @ (fr.origin - c) + t[k]))
        panels = list(detector.panels)
        counter = [0]

        def rebuild(node, depth: int, parent: Frame):
            # parent: the (new) global frame of the node's parent
            moved = depth == self.level if isinstance(node, Group) else depth <= self.level
            if moved:  # a group at `level` (or a panel standing as its own group)
                frame = new_global[counter[0]]
                counter[0] += 1
                local = parent.relative(frame)
            else:
                local = node.local_frame if isinstance(node, Group) else panels[node].local_frame
                frame = parent.compose(local)
            if isinstance(node, Group):
                kids = tuple(rebuild(c, depth + 1, frame) for c in node.children)
                return Group(node.name, frame, local, kids, node.extra)
            panels[node] = replace(panels[node], frame=frame, local_frame=local)
            return node

        ident = Frame.identity()
        root = rebuild(detector.root, 0, ident)
        return Detector(tuple(panels), root)
