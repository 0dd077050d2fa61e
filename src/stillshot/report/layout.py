"""The detector drawn flat: every panel at its lab position projected on the detector plane.

The drawing plane is perpendicular to the panels' mean normal.  Its axes are
the lab x and y axes projected on it, so a detector with fast = +x and
slow = -y (the usual DIALS layout) is drawn as DIALS's image viewer shows it,
fast to the right and slow downwards, with lab y pointing up the page.
Coordinates on the page are mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stillshot.models import Detector, Panel

__all__ = ["DetectorLayout"]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True, eq=False)
class DetectorLayout:
    """Projection of a detector's panels onto its mean plane.

    Parameters
    ----------
    detector : Detector

    Attributes
    ----------
    normal : ndarray, shape (3,)
        Unit normal of the drawing plane (mean panel normal).
    ex, ey : ndarray, shape (3,)
        Unit lab vectors of the page's x (right) and y (up) directions.
    centre : ndarray, shape (3,)
        Lab point (mm) drawn at page (0, 0): the panels' mean origin projected
        on the plane through panel 0's origin.
    """

    detector: Detector

    def __post_init__(self):
        normals = np.array([p.normal for p in self.detector])
        ref = normals[0]
        aligned = normals * np.sign(normals @ ref)[:, None]
        n = _unit(aligned.sum(axis=0))
        ex = np.array([1.0, 0.0, 0.0]) - n[0] * n
        if np.linalg.norm(ex) < 1e-6:
            ex = self.detector[0].fast_axis - (self.detector[0].fast_axis @ n) * n
        ex = _unit(ex)
        ey = np.array([0.0, 1.0, 0.0]) - n[1] * n - (np.array([0.0, 1.0, 0.0]) @ ex) * ex
        if np.linalg.norm(ey) < 1e-6:
            ey = np.cross(n, ex)
        ey = _unit(ey)
        object.__setattr__(self, "normal", n)
        object.__setattr__(self, "ex", ex)
        object.__setattr__(self, "ey", ey)
        object.__setattr__(self, "centre", np.zeros(3))

    # -- projections -----------------------------------------------------------------
    def project(self, lab: np.ndarray) -> np.ndarray:
        """Lab points (..., 3), mm, to page coordinates (..., 2), mm."""
        p = np.asarray(lab, dtype=np.float64) - self.centre
        return np.stack([p @ self.ex, p @ self.ey], axis=-1)

    def panel_affine(self, index: int) -> np.ndarray:
        """3x3 affine matrix taking panel pixel coordinates (x, y, 1), px, to the page, mm.

        Pixel coordinates follow the pixel-edge convention (the centre of
        pixel i is at i + 0.5).
        """
        p: Panel = self.detector[index]
        pf, ps = (float(v) for v in p.pixel_size)
        o = self.project(p.origin)
        f = self.project(p.origin + p.fast_axis * pf) - o
        s = self.project(p.origin + p.slow_axis * ps) - o
        return np.array([[f[0], s[0], o[0]], [f[1], s[1], o[1]], [0.0, 0.0, 1.0]])

    def px_to_page(self, panel: np.ndarray, xy_px: np.ndarray) -> np.ndarray:
        """Pixel positions (n, 2) on panels (n,) to page coordinates (n, 2), mm."""
        panel = np.asarray(panel, dtype=np.int64).reshape(-1)
        xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
        out = np.full((len(panel), 2), np.nan)
        for k in np.unique(panel):
            if not 0 <= k < len(self.detector):
                continue
            sel = panel == k
            m = self.panel_affine(int(k))
            out[sel] = xy[sel] @ m[:2, :2].T + m[:2, 2]
        return out

    def vector_to_page(self, panel: np.ndarray, dxy_px: np.ndarray) -> np.ndarray:
        """Displacements (n, 2) in px on panels (n,) to page displacements (n, 2), mm."""
        panel = np.asarray(panel, dtype=np.int64).reshape(-1)
        d = np.asarray(dxy_px, dtype=np.float64).reshape(-1, 2)
        out = np.full((len(panel), 2), np.nan)
        for k in np.unique(panel):
            if not 0 <= k < len(self.detector):
                continue
            sel = panel == k
            out[sel] = d[sel] @ self.panel_affine(int(k))[:2, :2].T
        return out

    def panel_corners(self, index: int) -> np.ndarray:
        """The four page corners (4, 2) of panel ``index``, mm, in drawing order."""
        p = self.detector[index]
        corners = np.array([[0, 0], [p.n_fast, 0], [p.n_fast, p.n_slow], [0, p.n_slow]], dtype=np.float64)
        return self.px_to_page(np.full(4, index), corners)

    def extent(self, margin: float = 0.02) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of all panels on the page, mm, with a relative margin."""
        c = np.concatenate([self.panel_corners(i) for i in range(len(self.detector))])
        lo, hi = c.min(axis=0), c.max(axis=0)
        pad = margin * float(max(hi - lo))
        return (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)

    def beam_centre(self, s0: np.ndarray) -> np.ndarray | None:
        """Page position (2,) where the direct beam ``s0`` crosses the detector plane, or None."""
        p0 = self.detector[0]
        s0 = np.asarray(s0, dtype=np.float64)
        den = s0 @ self.normal
        if abs(den) < 1e-12:
            return None
        t = (p0.origin @ self.normal) / den
        if t <= 0:
            return None
        return self.project(t * s0)

    def pixel_size_mm(self) -> float:
        """Smallest pixel size over the panels, mm."""
        return float(min(min(p.pixel_size) for p in self.detector))
