"""The spots of one shot prepared for indexing: reciprocal-lattice points and friends."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from stillshot import geometry


@dataclass(frozen=True, eq=False)
class Spots:
    """Observed spots of one shot, in the arrays every indexing step uses.

    Attributes
    ----------
    rlp : ndarray (N, 3)
        Reciprocal-lattice points ``s1 - s0`` (1/Å, lab frame).
    s1 : ndarray (N, 3)
        Observed diffracted-beam vectors (1/Å).
    xy_px : ndarray (N, 2)
        Centroids (px).
    xy_mm : ndarray (N, 2)
        Centroids (mm, in the panel plane).
    var_px : ndarray (N, 2)
        Centroid variances (px²); a floor of (0.25 px)² is applied.
    var_mm : ndarray (N, 2)
        The same in mm².
    panel : ndarray (N,) of int
    d : ndarray (N,)
        Resolution, Å.
    row : ndarray (N,) of int
        Row of each spot in the table it came from.
    """

    rlp: np.ndarray
    s1: np.ndarray
    xy_px: np.ndarray
    xy_mm: np.ndarray
    var_px: np.ndarray
    var_mm: np.ndarray
    panel: np.ndarray
    d: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return len(self.rlp)

    def subset(self, sel) -> "Spots":
        """The spots selected by a boolean mask or index array."""
        return Spots(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def prepare_spots(detector, beam, table, rows=None) -> Spots:
    """Reciprocal-lattice points of a shot's spots.

    Parameters
    ----------
    detector : Detector
    beam : Beam
    table : ReflectionTable
        Needs ``panel`` and ``xyzobs.px.value``; ``xyzobs.px.variance`` is used
        when present.
    rows : array_like of int, optional
        The rows of ``table`` that belong to the shot (default: all).

    Returns
    -------
    Spots
    """
    rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.intp)
    panel = np.asarray(table["panel"], dtype=np.intp)[rows]
    xyz = np.asarray(table["xyzobs.px.value"], dtype=np.float64)[rows]
    xy = xyz[:, :2].copy()
    if "xyzobs.px.variance" in table:
        var = np.asarray(table["xyzobs.px.variance"], dtype=np.float64)[rows][:, :2].copy()
    else:
        var = np.zeros_like(xy)
    var = np.where(np.isfinite(var), var, 0.0)
    var = np.maximum(var, 0.0625)
    xy_mm, s1 = geometry.spots_to_s1(detector, beam, panel, xy)
    rlp = s1 - beam.s0
    d = geometry.d_spacing(rlp)
    var_mm = var * geometry.panel_arrays(detector).pixel_size[panel] ** 2
    return Spots(rlp, s1, xy, xy_mm, var, var_mm, panel, d, rows)


def nearest_neighbour_max_cell(rlp: np.ndarray, *, percentile: float = 5.0,
                               multiplier: float = 2.0) -> float:
    """Longest cell length (Å) suggested by rlp nearest-neighbour distances.

    The distance between neighbouring reciprocal-lattice points is at least the
    shortest reciprocal lattice vector, ~1/(longest cell length); the low
    percentile of the nearest-neighbour distances gives that with some
    protection against split spots (DIALS's ``find_max_cell`` idea).

    Parameters
    ----------
    rlp : ndarray (N, 3)
        Reciprocal-lattice points, 1/Å.
    percentile : float
        Percentile of the nearest-neighbour distances used.
    multiplier : float
        Safety factor applied to the resulting length.

    Returns
    -------
    float
        Suggested max_cell, Å (NaN with fewer than 2 spots).
    """
    if len(rlp) < 2:
        return float("nan")
    dist, _ = cKDTree(rlp).query(rlp, k=2)
    nn = dist[:, 1]
    nn = nn[nn > 1e-5]  # identical points (split spots) say nothing
    if len(nn) == 0:
        return float("nan")
    return float(multiplier / np.percentile(nn, percentile))


def auto_d_min(d: np.ndarray, *, n_min: int = 300, fraction: float = 0.5) -> float:
    """Resolution limit (Å) for a basis search: the lowest-angle half of the spots, at least ``n_min``.

    High-angle spots of a still carry larger reciprocal-space errors (their
    distance from the Ewald sphere grows with |r|), so a search uses the
    ``max(n_min, fraction·N)`` spots of lowest resolution (all when there are
    fewer).

    Parameters
    ----------
    d : ndarray (N,)
        Spot resolutions, Å.
    n_min : int
        Fewest spots kept.
    fraction : float
        Fraction of the spots kept when that is more than ``n_min``.

    Returns
    -------
    float
        d_min in Å.
    """
    d = np.sort(np.asarray(d)[np.isfinite(d)])[::-1]
    if len(d) == 0:
        return 0.0
    n = max(n_min, int(fraction * len(d)))
    return float(d[min(len(d), n) - 1])
