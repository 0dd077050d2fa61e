"""Pixel masks: trusted range, static geometry masks, user and bad-pixel maps.

A mask is a tuple of boolean arrays, one per panel, shape (n_slow, n_fast),
True for pixels that may be used (DIALS's convention).  The static part (panel
border, untrusted rectangles, resolution limits, ice rings, user masks and
dead/hot-pixel maps) depends only on the models and options and is cached per
detector; the trusted-range part depends on each image's values.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

import numpy as np

__all__ = [
    "ice_ring_d_spacings",
    "pixel_inv_d2",
    "radial_bins",
    "static_mask",
    "trusted_mask",
]

_ROWS = 256  # rows per chunk when evaluating per-pixel geometry
_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()


def _cached(key, keep, build):
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit[1]
    value = build()
    with _LOCK:
        # keep the objects whose ids are in the key alive, so the ids stay unique
        _CACHE[key] = (keep, value)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _beam_direction(beam) -> np.ndarray:
    s0 = np.asarray(beam.s0, dtype=np.float64)
    return s0 / np.linalg.norm(s0)


def _pixel_rows(panel, j0: int, j1: int) -> np.ndarray:
    """Lab positions (mm) of the centres of rows j0..j1-1 of a panel, shape (j1-j0, n_fast, 3)."""
    fx, fy = panel.pixel_size
    i = (np.arange(panel.n_fast) + 0.5) * fx
    j = (np.arange(j0, j1) + 0.5) * fy
    return (np.asarray(panel.origin)[None, None, :] + i[None, :, None] * np.asarray(panel.fast_axis)
            + j[:, None, None] * np.asarray(panel.slow_axis))


def pixel_inv_d2(panel, beam, j0: int = 0, j1: int | None = None) -> np.ndarray:
    """1/d² (Å⁻²) at the centres of pixel rows j0..j1-1 of a panel.

    Parameters
    ----------
    panel : Panel
    beam : Beam
    j0, j1 : int
        Row range (default: the whole panel).

    Returns
    -------
    ndarray, shape (j1-j0, n_fast)
        ``(2 - 2 cos 2θ) / λ²``.
    """
    j1 = panel.n_slow if j1 is None else j1
    lab = _pixel_rows(panel, j0, j1)
    cos2t = lab @ _beam_direction(beam) / np.linalg.norm(lab, axis=2)
    return (2.0 - 2.0 * cos2t) / beam.wavelength ** 2


def ice_ring_d_spacings(unit_cell, space_group, d_min: float) -> np.ndarray:
    """Distinct d-spacings (Å) of the allowed reflections of a cell down to d_min.

    Parameters
    ----------
    unit_cell : sequence of 6 float
        a, b, c (Å), α, β, γ (degrees).
    space_group : str
        Symbol or number (hexagonal ice: "194", P6₃/mmc).
    d_min : float
        Å.

    Returns
    -------
    ndarray
        Sorted descending, rounded to 1e-4 Å to merge equal rings.
    """
    import gemmi

    cell = gemmi.UnitCell(*unit_cell)
    sg = gemmi.find_spacegroup_by_name(str(space_group))
    if sg is None:
        raise ValueError(f"unknown space group {space_group!r}")
    ops = sg.operations()
    hmax = [int(math.ceil(v / d_min)) for v in (cell.a, cell.b, cell.c)]
    out = set()
    for h in range(-hmax[0], hmax[0] + 1):
        for k in range(-hmax[1], hmax[1] + 1):
            for l in range(-hmax[2], hmax[2] + 1):
                if h == k == l == 0:
                    continue
                d = cell.calculate_d([h, k, l])
                if d >= d_min and not ops.is_systematically_absent([h, k, l]):
                    out.add(round(d, 4))
    return np.array(sorted(out, reverse=True))


def static_mask(detector, beam, options, *, user_mask=None, bad_pixels=None):
    """The image-independent part of the mask, one boolean array per panel (cached).

    Parameters
    ----------
    detector : Detector
    beam : Beam
    options : FilterOptions
        Uses ``border``, ``d_min``, ``d_max`` and the ice-ring options.
    user_mask : tuple of ndarray, optional
        True for usable pixels.
    bad_pixels : tuple of ndarray, optional
        True (nonzero) for dead or hot pixels.

    Returns
    -------
    tuple of ndarray of bool
        Read-only arrays; untrusted rectangles of the panels are also applied.
    """
    key = ("static", id(detector), tuple(np.round(beam.s0, 12)), options.border, options.d_min,
           options.d_max, options.ice_rings, options.ice_unit_cell, options.ice_space_group,
           options.ice_width, options.ice_d_min, id(user_mask), id(bad_pixels))
    keep = (detector, user_mask, bad_pixels)
    return _cached(key, keep, lambda: _build_static(detector, beam, options, user_mask, bad_pixels))


def _build_static(detector, beam, options, user_mask, bad_pixels):
    rings = None
    if options.ice_rings:
        d_min = options.ice_d_min
        if d_min is None:
            d_min = _detector_d_min(detector, beam)
        d = ice_ring_d_spacings(options.ice_unit_cell, options.ice_space_group, max(d_min, 0.5))
        rings = 1.0 / d ** 2
    out = []
    for p, panel in enumerate(detector):
        m = np.ones(panel.shape, dtype=bool)
        for f0, s0, f1, s1 in panel.mask:
            m[s0:s1, f0:f1] = False
        b = int(options.border)
        if b > 0:
            m[:b, :] = False
            m[-b:, :] = False
            m[:, :b] = False
            m[:, -b:] = False
        if user_mask is not None:
            m &= np.asarray(user_mask[p], dtype=bool)
        if bad_pixels is not None:
            m &= ~np.asarray(bad_pixels[p], dtype=bool)
        if options.d_min is not None or options.d_max is not None or rings is not None:
            for j0 in range(0, panel.n_slow, _ROWS):
                j1 = min(j0 + _ROWS, panel.n_slow)
                q = pixel_inv_d2(panel, beam, j0, j1)
                ok = np.ones(q.shape, dtype=bool)
                if options.d_min is not None:
                    ok &= q <= 1.0 / options.d_min ** 2
                if options.d_max is not None:
                    ok &= q >= 1.0 / options.d_max ** 2
                if rings is not None:
                    half = 0.5 * options.ice_width
                    idx = np.searchsorted(rings, q)
                    lo = rings[np.clip(idx - 1, 0, len(rings) - 1)]
                    hi = rings[np.clip(idx, 0, len(rings) - 1)]
                    near = np.minimum(np.abs(q - lo), np.abs(q - hi))
                    ok &= near > half
                m[j0:j1] &= ok
        m.setflags(write=False)
        out.append(m)
    return tuple(out)


def _detector_d_min(detector, beam) -> float:
    best = np.inf
    for panel in detector:
        ny = panel.n_slow
        corners = []
        for j in (0, ny - 1):
            q = pixel_inv_d2(panel, beam, j, j + 1)[0]
            corners.extend([q[0], q[-1]])
        best = min(best, 1.0 / math.sqrt(max(corners)))
    return float(best)


def trusted_mask(panel, data) -> np.ndarray:
    """Pixels whose raw value lies strictly inside the panel's trusted range.

    Parameters
    ----------
    panel : Panel
    data : ndarray
        Raw panel data (ADU).

    Returns
    -------
    ndarray of bool
    """
    lo, hi = panel.trusted_range
    if lo < hi:
        return (data > lo) & (data < hi)
    return np.ones(data.shape, dtype=bool)


def radial_bins(detector, beam, *, bin_width: float = 1.0):
    """Radial bin of every pixel: distance from the beam axis in px, binned (cached).

    Parameters
    ----------
    detector : Detector
    beam : Beam
    bin_width : float
        px.

    Returns
    -------
    bins : tuple of ndarray of int32
        Per panel, shape (n_slow, n_fast).
    n_bins : int
    """
    key = ("radial", id(detector), tuple(np.round(beam.s0, 12)), float(bin_width))
    return _cached(key, detector, lambda: _build_radial(detector, beam, bin_width))


def _build_radial(detector, beam, bin_width):
    u = _beam_direction(beam)
    out = []
    nmax = 0
    for panel in detector:
        px = float(np.mean(panel.pixel_size))
        rb = np.empty(panel.shape, dtype=np.int32)
        for j0 in range(0, panel.n_slow, _ROWS):
            j1 = min(j0 + _ROWS, panel.n_slow)
            lab = _pixel_rows(panel, j0, j1)
            along = lab @ u
            perp = np.sqrt(np.maximum(np.einsum("...i,...i", lab, lab) - along ** 2, 0.0))
            rb[j0:j1] = (perp / px / bin_width).astype(np.int32)
        nmax = max(nmax, int(rb.max()) + 1)
        rb.setflags(write=False)
        out.append(rb)
    return tuple(out), nmax
