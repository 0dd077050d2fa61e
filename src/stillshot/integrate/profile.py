"""The spot profile of a shot, measured on its strongest reflections.

Shoeboxes are sized from it (foreground radius = n·σ) and the optional
profile fitting uses it as a 2-D Gaussian of that σ.  Two numbers come from
the strong spots:

* σ (px): from the background-subtracted second moments inside the
  foreground circle, corrected for the truncation of a Gaussian at the circle
  radius and for the pixel size (a pixel adds 1/12 px² per axis);
* the positional error of the predictions: the per-panel median offset of
  observed from predicted centroids and the rms scatter about it (px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SpotProfile", "measure_spot_profile", "truncated_gaussian_sigma"]


@dataclass(frozen=True)
class SpotProfile:
    """The spot profile of one shot.

    Attributes
    ----------
    sigma_px : float
        Gaussian σ of a spot, px.
    position_sigma_px : float
        Per-axis rms scatter of observed about predicted centroids after the
        per-panel offsets, px.
    panel_offsets : dict of int to (float, float)
        Median (x, y) offset observed − predicted per panel, px (panels with
        enough strong spots; the rest use ``global_offset``).
    global_offset : (float, float)
        Median offset over all strong spots, px.
    n_strong : int
        Number of reflections measured.
    measured : bool
        False when σ is the default (too few strong spots).
    """

    sigma_px: float
    position_sigma_px: float = 0.0
    panel_offsets: dict = field(default_factory=dict)
    global_offset: tuple = (0.0, 0.0)
    n_strong: int = 0
    measured: bool = False

    def offsets_for(self, panel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-reflection (dx, dy) offsets, px, for panel indices."""
        panel = np.asarray(panel, dtype=np.int64)
        dx = np.full(len(panel), float(self.global_offset[0]))
        dy = np.full(len(panel), float(self.global_offset[1]))
        for p, (ox, oy) in self.panel_offsets.items():
            sel = panel == p
            dx[sel] = ox
            dy[sel] = oy
        return dx, dy


def truncated_gaussian_sigma(moment: float, radius: float) -> float:
    """σ of a circular 2-D Gaussian whose per-axis second moment inside ``radius`` is ``moment``.

    Parameters
    ----------
    moment : float
        Measured per-axis second moment, px² (``(m_xx + m_yy)/2``).
    radius : float
        Radius of the circle the moment was measured in, px.

    Returns
    -------
    float
        σ in px (``sqrt(moment)`` when the truncation is negligible; the
        largest σ the circle can tell apart otherwise).
    """
    if moment <= 0:
        return 0.0
    s2 = moment
    for _ in range(50):
        u = radius * radius / (2.0 * s2)
        if u > 50:
            factor = 1.0
        else:
            e = math.exp(-u)
            factor = 1.0 - u * e / (1.0 - e)
        if factor < 0.2:
            break
        new = moment / factor
        if abs(new - s2) < 1e-6 * s2:
            s2 = new
            break
        s2 = new
    return math.sqrt(min(s2, (radius / 1.5) ** 2))


def measure_spot_profile(cols: dict, panel: np.ndarray, x_cal: np.ndarray, y_cal: np.ndarray, *,
                         radius: np.ndarray, min_isigma: float, default_sigma_px: float,
                         min_spots: int = 5, min_panel_spots: int = 3) -> SpotProfile:
    """Spot σ and prediction offsets from a first integration pass.

    Parameters
    ----------
    cols : dict of ndarray
        The first pass's ``I``, ``var``, ``mxx``, ``myy``, ``x_obs``, ``y_obs``
        and ``clean`` (bool: no bad, overloaded or overlapped pixel).
    panel : ndarray (N,) of int
    x_cal, y_cal : ndarray (N,)
        Predicted centroids, px.
    radius : ndarray (N,)
        Foreground radius of the pass, px.
    min_isigma : float
        Strong spots have I/σ at least this (the strongest 100 are used).
    default_sigma_px : float
        σ when fewer than ``min_spots`` strong spots exist, px.
    min_spots, min_panel_spots : int
        Fewest strong spots for a measurement, and for a per-panel offset.

    Returns
    -------
    SpotProfile
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        isig = cols["I"] / np.sqrt(cols["var"])
    ok = cols["clean"] & np.isfinite(isig) & np.isfinite(cols["mxx"]) & np.isfinite(cols["x_obs"])
    ok &= isig >= min_isigma
    idx = np.nonzero(ok)[0]
    if len(idx) > 100:
        idx = idx[np.argsort(-isig[idx])[:100]]
    if len(idx) < min_spots:
        return SpotProfile(sigma_px=float(default_sigma_px), n_strong=int(len(idx)), measured=False)
    mom = 0.5 * (cols["mxx"][idx] + cols["myy"][idx])
    r = float(np.median(radius[idx]))
    sig = truncated_gaussian_sigma(float(np.median(mom)), r)
    sig = math.sqrt(max(sig * sig - 1.0 / 12.0, 0.04))
    dx = cols["x_obs"][idx] - x_cal[idx]
    dy = cols["y_obs"][idx] - y_cal[idx]
    gx, gy = float(np.median(dx)), float(np.median(dy))
    p = np.asarray(panel)[idx]
    offsets = {}
    rx = dx - gx
    ry = dy - gy
    for q in np.unique(p):
        sel = p == q
        if sel.sum() >= min_panel_spots:
            ox, oy = float(np.median(dx[sel])), float(np.median(dy[sel]))
            offsets[int(q)] = (ox, oy)
            rx[sel] = dx[sel] - ox
            ry[sel] = dy[sel] - oy
    # per-axis σ from the median squared distance (χ²₂ median = 2 ln 2)
    pos = math.sqrt(float(np.median(rx * rx + ry * ry)) / (2.0 * math.log(2.0)))
    return SpotProfile(sigma_px=float(sig), position_sigma_px=float(pos), panel_offsets=offsets,
                       global_offset=(gx, gy), n_strong=int(len(idx)), measured=True)
