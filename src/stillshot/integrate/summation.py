"""Summation integration (and summation + 2-D profile fitting) over circular shoeboxes.

Per reflection, in a square box around the predicted centroid:

* foreground: pixels whose centre is within ``r_fg`` px of the centroid;
* background: pixels beyond ``r_bg`` px, not in any reflection's foreground,
  valid (inside the trusted range, not masked); a plane ``a + b·dx + c·dy``
  is fitted by least squares with iterative rejection of pixels further than
  ``outlier_nsigma`` robust σ (1.4826·MAD, at least the Poisson σ) from it;
* ``I = Σ_fg (c - b)`` in photons (``c = (ADU - pedestal)/gain``) and
  ``var(I) = Σ_fg max(c, 0) + n_fg·σ_read² + σ_b²·sᵀ(XᵀX)⁻¹s``: counting
  statistics of the foreground plus the uncertainty of the plane summed over
  the foreground (σ_b² the background variance per pixel, s the foreground
  sums of (1, dx, dy), X the background design matrix);
* the ``profile`` integrator also fits a pixel-integrated 2-D Gaussian of the
  shot's spot σ: ``I_prf = Σ p(c-b)/v / Σ p²/v`` with ``v = b + I_prf·p``
  (iterated), ``var = Σ a²v`` plus the plane term — the same data with
  optimal weights, which helps weak spots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stillshot.integrate import _kernels as K
from stillshot.integrate.options import IntegrationOptions
from stillshot.integrate.pixels import ShotPixels
from stillshot.integrate.registry import register

__all__ = ["ShoeboxGeometry", "run_kernel", "summation", "profile"]

_COLS = ("I", "var", "bg_mean", "bg_sum", "n_fg", "n_bg", "n_bg_used", "n_valid", "x_obs", "y_obs",
         "var_x", "var_y", "mxx", "myy", "mxy", "I_prf", "var_prf", "bg_var")


@dataclass(frozen=True)
class ShoeboxGeometry:
    """Where and how big each reflection's shoebox is.

    Attributes
    ----------
    panel : ndarray (N,) of int64
    x, y : ndarray (N,)
        Shoebox centre (predicted centroid), px.
    r_fg, r_bg, half_box : ndarray (N,)
        Foreground radius, inner background radius and box half-size, px.
    prf_sigma : ndarray (N,)
        Profile σ for profile fitting, px.
    prf_dx, prf_dy : ndarray (N,)
        Profile centre offset from (x, y), px.
    """

    panel: np.ndarray
    x: np.ndarray
    y: np.ndarray
    r_fg: np.ndarray
    r_bg: np.ndarray
    half_box: np.ndarray
    prf_sigma: np.ndarray
    prf_dx: np.ndarray
    prf_dy: np.ndarray

    @classmethod
    def uniform(cls, panel, x, y, *, r_fg: float, gap: float, width: float, prf_sigma: float = 1.0,
                prf_dx=None, prf_dy=None) -> "ShoeboxGeometry":
        """Every shoebox the same size (px) around the given centres."""
        n = len(x)
        full = lambda v: np.full(n, float(v))  # noqa: E731
        zero = np.zeros(n)
        arr = lambda v, t=np.float64: np.ascontiguousarray(v, dtype=t)  # noqa: E731  (one kernel signature)
        return cls(arr(panel, np.int64), arr(x), arr(y), full(r_fg), full(r_fg + gap), full(r_fg + gap + width),
                   full(prf_sigma), zero if prf_dx is None else arr(prf_dx),
                   zero if prf_dy is None else arr(prf_dy))


def run_kernel(pixels: ShotPixels, geometry: ShoeboxGeometry, options: IntegrationOptions, *,
               profile_fitting: bool, outlier_iterations: int = 3, rows: np.ndarray | None = None) -> dict:
    """Run the shoebox kernel over every reflection of a shot.

    Parameters
    ----------
    pixels : ShotPixels
    geometry : ShoeboxGeometry
    options : IntegrationOptions
        Background and noise settings (read noise in ADU is converted to
        photons with each panel's gain; the median gain is used).
    profile_fitting : bool
        Also fit the Gaussian profile.
    outlier_iterations : int
        Rounds of background outlier rejection.
    rows : ndarray of int, optional
        Integrate only these reflections (every reflection's foreground still
        counts for the overlap test); the returned columns follow ``rows``.

    Returns
    -------
    dict of ndarray
        ``I``, ``var`` (photons, photons²), ``bg_mean`` (photons/px at the
        centre), ``bg_sum`` (photons under the foreground), ``n_fg``,
        ``n_bg``, ``n_bg_used``, ``n_valid``, ``x_obs``, ``y_obs``,
        ``var_x``, ``var_y`` (px, px²), ``mxx``, ``myy``, ``mxy`` (px²),
        ``I_prf``, ``var_prf``, ``bg_var``, ``bbox`` (N, 4) and ``status``
        (``_kernels.BIT_*``).
    """
    g = geometry
    count = np.zeros(len(pixels.raw), dtype=np.int16)
    K.paint_foreground(g.panel, g.x, g.y, g.r_fg, pixels.offsets, pixels.n_fast, pixels.n_slow, count)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        g = ShoeboxGeometry(*(np.ascontiguousarray(getattr(g, f)[rows]) for f in (
            "panel", "x", "y", "r_fg", "r_bg", "half_box", "prf_sigma", "prf_dx", "prf_dy")))
    read_var = (float(options.read_noise) / float(np.median(pixels.gain))) ** 2 if len(pixels.gain) else 0.0
    out, bbox, status = K.integrate_shoeboxes(
        pixels.raw, pixels.static_bad, count, pixels.offsets, pixels.n_fast, pixels.n_slow, pixels.gain,
        pixels.pedestal, pixels.trusted_lo, pixels.trusted_hi, g.panel, g.x, g.y, g.r_fg, g.r_bg,
        g.half_box, read_var, float(options.outlier_nsigma), int(options.min_background_pixels),
        int(outlier_iterations),
        options.background_variance == "empirical", bool(profile_fitting), g.prf_sigma, g.prf_dx, g.prf_dy)
    cols = {name: out[:, i] for i, name in enumerate(_COLS)}
    cols["bbox"] = bbox
    cols["status"] = status
    return cols


@register("summation")
def summation(pixels: ShotPixels, geometry: ShoeboxGeometry, options: IntegrationOptions) -> dict:
    """Summation integration with a local background plane (see the module notes)."""
    return run_kernel(pixels, geometry, options, profile_fitting=False)


@register("profile")
def profile(pixels: ShotPixels, geometry: ShoeboxGeometry, options: IntegrationOptions) -> dict:
    """Summation plus 2-D Gaussian profile fitting (``intensity.prf.*``)."""
    return run_kernel(pixels, geometry, options, profile_fitting=True)
