"""A shot's pixels gathered for the kernels: one flat buffer plus per-panel constants."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

__all__ = ["ShotPixels", "shot_pixels"]

_MASK_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class ShotPixels:
    """All panels of one shot in one flat buffer.

    Attributes
    ----------
    raw : ndarray (P_total,)
        Raw pixel values, ADU (panel p at ``offsets[p]``, row-major (slow, fast)).
    static_bad : ndarray (P_total,) of bool
        Pixels never used: panel mask rectangles (gaps) and the caller's mask.
    offsets, n_fast, n_slow : ndarray (P,) of int64
        Panel layout.
    gain : ndarray (P,)
        ADU per photon.
    pedestal : ndarray (P,)
        ADU offset subtracted before dividing by the gain.
    trusted_lo, trusted_hi : ndarray (P,)
        Trusted range, ADU (valid: lo < value < hi; value ≥ hi is overloaded).
    """

    raw: np.ndarray
    static_bad: np.ndarray
    offsets: np.ndarray
    n_fast: np.ndarray
    n_slow: np.ndarray
    gain: np.ndarray
    pedestal: np.ndarray
    trusted_lo: np.ndarray
    trusted_hi: np.ndarray


def _static_mask(detector) -> np.ndarray:
    """Flat bool map of the panels' mask rectangles (cached per detector)."""
    try:
        cached = _MASK_CACHE.get(detector)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    parts = []
    for p in detector:
        m = np.zeros(p.shape, dtype=bool)
        for f0, s0, f1, s1 in p.mask:
            m[int(s0):int(s1), int(f0):int(f1)] = True
        parts.append(m.ravel())
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
    flat.setflags(write=False)
    try:
        _MASK_CACHE[detector] = flat
    except TypeError:
        pass
    return flat


def shot_pixels(detector, data, *, gain: float | None = None, mask=None) -> ShotPixels:
    """Gather a shot's per-panel arrays into one flat buffer.

    Parameters
    ----------
    detector : Detector
        Panels in the same order as ``data`` (gain, pedestal, trusted range, mask).
    data : sequence of ndarray
        Per panel, shape (n_slow, n_fast), ADU (any numeric dtype).
    gain : float, optional
        ADU per photon for every panel (default: each panel's ``gain``).
    mask : sequence of ndarray of bool, optional
        Per-panel pixels to use (True: good), e.g. a DIALS-style mask.

    Returns
    -------
    ShotPixels
    """
    panels = list(detector)
    if len(data) != len(panels):
        raise ValueError(f"the shot has {len(data)} panel arrays, the detector {len(panels)} panels")
    sizes = np.array([p.n_fast * p.n_slow for p in panels], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    arrays = [np.asarray(a) for a in data]
    for a, p in zip(arrays, panels):
        if a.shape != p.shape:
            raise ValueError(f"panel {p.name}: data shape {a.shape} differs from the geometry {p.shape}")
    dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.float64
    if dtype.kind not in "iuf":
        dtype = np.float64
    if dtype.kind == "u" or (dtype.kind == "i" and dtype.itemsize > 4):
        dtype = np.float64
    raw = np.concatenate([a.ravel() for a in arrays]).astype(dtype, copy=False)
    bad = _static_mask(detector)
    if mask is not None:
        good = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in mask])
        bad = bad | ~good
    g = np.array([float(gain) if gain is not None else float(p.gain) for p in panels])
    if np.any(~(g > 0)):
        raise ValueError("panel gain must be positive (ADU per photon)")
    return ShotPixels(
        raw=raw,
        static_bad=bad,
        offsets=offsets,
        n_fast=np.array([p.n_fast for p in panels], dtype=np.int64),
        n_slow=np.array([p.n_slow for p in panels], dtype=np.int64),
        gain=g,
        pedestal=np.array([float(p.pedestal) for p in panels]),
        trusted_lo=np.array([float(p.trusted_range[0]) for p in panels]),
        trusted_hi=np.array([float(p.trusted_range[1]) for p in panels]),
    )
