"""Pure geometry shared by every stage: pixels, millimetres, s1, reciprocal-lattice points.

Conventions are those of DIALS/dxtbx (see DESIGN.md):

* pixel ``(x, y)`` (x fast, y slow, px) has its centre at ``x + 0.5``; the
  in-plane millimetre position of pixel-edge coordinate ``(x, y)`` is
  ``(x·px_fast, y·px_slow)``, optionally corrected for parallax exactly as
  dxtbx's ``ParallaxCorrectedPxMmStrategy`` does;
* the lab point of an in-plane position is ``origin + x_mm·fast + y_mm·slow``;
* the diffracted beam vector is ``s1 = lab / |lab| / λ`` (1/Å) and the
  reciprocal-lattice point (rlp) is ``r = s1 - s0`` (1/Å);
* a crystal's rlp of Miller index ``h`` is ``A·h``; for stills the predicted
  ray is DIALS's ``StillsReflectionPredictor``: the rlp is rotated onto the
  Ewald sphere about ``e1 = (r × ŝ0)/|r × ŝ0|`` and the signed angle of that
  rotation is Δψ (``delpsical.rad``).

Every function takes arrays and returns new arrays; panel-dependent constants
are gathered once per detector into :class:`PanelArrays` (cached).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PanelArrays",
    "panel_arrays",
    "px_to_mm",
    "mm_to_px",
    "mm_to_lab",
    "lab_to_s1",
    "spots_to_s1",
    "spots_to_rlp",
    "s1_to_rlp",
    "predict_stills",
    "ray_intersection",
    "generate_indices",
    "predict_reflections",
    "resolution",
    "d_spacing",
]


@dataclass(frozen=True, eq=False)
class PanelArrays:
    """Per-panel geometry of a detector stacked into arrays (P = number of panels).

    Attributes
    ----------
    origin, fast, slow, normal : ndarray, shape (P, 3)
        Lab-frame origin (mm) and unit axes; ``normal = fast × slow``.
    d_matrix : ndarray, shape (P, 3, 3)
        Columns fast, slow, origin (mm) — DIALS's d matrix.
    d_inverse : ndarray, shape (P, 3, 3)
        Inverse of ``d_matrix`` (maps a ray to homogeneous in-plane mm).
    pixel_size : ndarray, shape (P, 2)
        (fast, slow) pixel size in mm.
    image_size : ndarray, shape (P, 2)
        (n_fast, n_slow) in px.
    size_mm : ndarray, shape (P, 2)
        Panel extent in mm.
    mu : ndarray, shape (P,)
        Linear attenuation coefficient used for parallax (1/mm); 0 where the
        panel uses the simple (uncorrected) px↔mm mapping.
    t0 : ndarray, shape (P,)
        Sensor thickness used for parallax (mm).
    parallax_normal : ndarray, shape (P, 3)
        Unit normal pointing away from the sample (dxtbx flips ``fast × slow``
        when the origin lies behind it).
    """

    origin: np.ndarray
    fast: np.ndarray
    slow: np.ndarray
    normal: np.ndarray
    d_matrix: np.ndarray
    d_inverse: np.ndarray
    pixel_size: np.ndarray
    image_size: np.ndarray
    size_mm: np.ndarray
    mu: np.ndarray
    t0: np.ndarray
    parallax_normal: np.ndarray

    @property
    def n_panels(self) -> int:
        """Number of panels."""
        return int(self.origin.shape[0])

    @property
    def has_parallax(self) -> bool:
        """True when any panel applies a parallax correction."""
        return bool(np.any(self.mu > 0))


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _parallax_constants(panel) -> tuple[float, float]:
    """(mu in 1/mm, t0 in mm) of a panel's px↔mm strategy; (0, 0) for the simple one."""
    strategy = panel.px_mm_strategy or {}
    if strategy.get("type") not in ("ParallaxCorrectedPxMmStrategy", "OffsetParallaxCorrectedPxMmStrategy"):
        return 0.0, 0.0
    mu = float(strategy.get("mu", panel.mu))
    t0 = float(strategy.get("t0", panel.thickness))
    if mu > 0 and t0 > 0:
        return mu, t0
    return 0.0, 0.0


def panel_arrays(detector) -> PanelArrays:
    """Stacked per-panel geometry of ``detector`` (cached per detector object).

    Parameters
    ----------
    detector : stillshot.models.Detector
        The detector (its panels' global frames are used).

    Returns
    -------
    PanelArrays
    """
    try:
        cached = _CACHE.get(detector)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    panels = list(detector)
    origin = np.array([p.origin for p in panels], dtype=np.float64).reshape(-1, 3)
    fast = np.array([p.fast_axis for p in panels], dtype=np.float64).reshape(-1, 3)
    slow = np.array([p.slow_axis for p in panels], dtype=np.float64).reshape(-1, 3)
    normal = np.cross(fast, slow)
    dmat = np.stack([fast, slow, origin], axis=2)
    dinv = np.linalg.inv(dmat)
    pix = np.array([p.pixel_size for p in panels], dtype=np.float64).reshape(-1, 2)
    size = np.array([p.image_size for p in panels], dtype=np.float64).reshape(-1, 2)
    consts = np.array([_parallax_constants(p) for p in panels], dtype=np.float64).reshape(-1, 2)
    sign = np.where(np.einsum("ij,ij->i", origin, normal) < 0, -1.0, 1.0)
    arrays = PanelArrays(
        origin=origin,
        fast=fast,
        slow=slow,
        normal=normal,
        d_matrix=dmat,
        d_inverse=dinv,
        pixel_size=pix,
        image_size=size,
        size_mm=size * pix,
        mu=consts[:, 0],
        t0=consts[:, 1],
        parallax_normal=normal * sign[:, None],
    )
    try:
        _CACHE[detector] = arrays
    except TypeError:
        pass
    return arrays


def _as_arrays(detector) -> PanelArrays:
    return detector if isinstance(detector, PanelArrays) else panel_arrays(detector)


def _panel_index(panel, n: int) -> np.ndarray:
    idx = np.asarray(panel, dtype=np.intp)
    if idx.ndim == 0:
        idx = np.full(n, int(idx), dtype=np.intp)
    return idx


def _attenuation_offset(pa: PanelArrays, idx: np.ndarray, xy_mm: np.ndarray) -> np.ndarray:
    """dxtbx's parallax shift (mm, in-plane) at in-plane mm positions; zero for simple panels."""
    mu = pa.mu[idx]
    out = np.zeros_like(xy_mm)
    use = mu > 0
    if not np.any(use):
        return out
    i = idx[use]
    xy = xy_mm[use]
    lab = pa.origin[i] + xy[:, :1] * pa.fast[i] + xy[:, 1:2] * pa.slow[i]
    unit = lab / np.linalg.norm(lab, axis=1, keepdims=True)
    cos_t = np.einsum("ij,ij->i", unit, pa.parallax_normal[i])
    t0 = pa.t0[i]
    m = mu[use]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        o = 1.0 / m - (t0 / cos_t + 1.0 / m) * np.exp(-m * t0 / cos_t)
    o = np.where(cos_t > 0, o, 0.0)
    out[use, 0] = np.einsum("ij,ij->i", unit, pa.fast[i]) * o
    out[use, 1] = np.einsum("ij,ij->i", unit, pa.slow[i]) * o
    return out


def px_to_mm(detector, panel, xy_px) -> np.ndarray:
    """Pixel to in-plane millimetre coordinates, with dxtbx's parallax correction.

    Parameters
    ----------
    detector : Detector or PanelArrays
    panel : int or array_like of int, shape (N,)
        Panel index of each position.
    xy_px : array_like, shape (N, 2) (or (N, 3): the third column is ignored)
        (x, y) in px (pixel-edge convention: the centre of pixel i is i + 0.5).

    Returns
    -------
    ndarray, shape (N, 2)
        In-plane (x, y) in mm, as dxtbx's ``Panel.pixel_to_millimeter``.
    """
    pa = _as_arrays(detector)
    xy = np.atleast_2d(np.asarray(xy_px, dtype=np.float64))[:, :2]
    idx = _panel_index(panel, len(xy))
    mm = xy * pa.pixel_size[idx]
    if pa.has_parallax:
        mm = mm - _attenuation_offset(pa, idx, mm)
    return mm


def mm_to_px(detector, panel, xy_mm) -> np.ndarray:
    """In-plane millimetre to pixel coordinates (dxtbx's ``millimeter_to_pixel``).

    Parameters
    ----------
    detector : Detector or PanelArrays
    panel : int or array_like of int, shape (N,)
    xy_mm : array_like, shape (N, 2)
        In-plane (x, y) in mm.

    Returns
    -------
    ndarray, shape (N, 2)
        (x, y) in px.
    """
    pa = _as_arrays(detector)
    xy = np.atleast_2d(np.asarray(xy_mm, dtype=np.float64))[:, :2]
    idx = _panel_index(panel, len(xy))
    if pa.has_parallax:
        xy = xy + _attenuation_offset(pa, idx, xy)
    return xy / pa.pixel_size[idx]


def mm_to_lab(detector, panel, xy_mm) -> np.ndarray:
    """In-plane millimetre coordinates to lab-frame points (mm), shape (N, 3)."""
    pa = _as_arrays(detector)
    xy = np.atleast_2d(np.asarray(xy_mm, dtype=np.float64))[:, :2]
    idx = _panel_index(panel, len(xy))
    return pa.origin[idx] + xy[:, :1] * pa.fast[idx] + xy[:, 1:2] * pa.slow[idx]


def lab_to_s1(lab, wavelength: float) -> np.ndarray:
    """Diffracted-beam vectors ``lab/|lab|/λ`` (1/Å) for lab points (mm), shape (N, 3)."""
    lab = np.atleast_2d(np.asarray(lab, dtype=np.float64))
    return lab / (np.linalg.norm(lab, axis=1, keepdims=True) * float(wavelength))


def spots_to_s1(detector, beam, panel, xy_px) -> tuple[np.ndarray, np.ndarray]:
    """Observed diffracted-beam vectors of spot centroids.

    Parameters
    ----------
    detector : Detector or PanelArrays
    beam : Beam
    panel : int or array_like of int, shape (N,)
    xy_px : array_like, shape (N, 2) or (N, 3)
        Centroids in px (``xyzobs.px.value``).

    Returns
    -------
    xy_mm : ndarray, shape (N, 2)
        In-plane positions in mm (``xyzobs.mm.value`` x, y).
    s1 : ndarray, shape (N, 3)
        ``s1`` in 1/Å, length 1/λ.
    """
    xy_mm = px_to_mm(detector, panel, xy_px)
    lab = mm_to_lab(detector, panel, xy_mm)
    return xy_mm, lab_to_s1(lab, beam.wavelength)


def s1_to_rlp(s1, s0) -> np.ndarray:
    """Reciprocal-lattice points ``s1 - s0`` (1/Å)."""
    return np.atleast_2d(np.asarray(s1, dtype=np.float64)) - np.asarray(s0, dtype=np.float64)


def spots_to_rlp(detector, beam, panel, xy_px) -> np.ndarray:
    """Reciprocal-lattice points (1/Å, lab frame) of spot centroids given in px, shape (N, 3)."""
    _, s1 = spots_to_s1(detector, beam, panel, xy_px)
    return s1 - beam.s0


def d_spacing(rlp) -> np.ndarray:
    """Resolution ``1/|r|`` in Å of reciprocal-lattice points (inf at the origin)."""
    norm = np.linalg.norm(np.atleast_2d(np.asarray(rlp, dtype=np.float64)), axis=1)
    with np.errstate(divide="ignore"):
        return 1.0 / norm


def resolution(detector, beam, panel, xy_px) -> np.ndarray:
    """Resolution d (Å) at pixel positions: ``λ / (2 sin θ)``.

    Parameters
    ----------
    detector : Detector or PanelArrays
    beam : Beam
    panel : int or array_like of int
    xy_px : array_like, shape (N, 2)
        Positions in px.

    Returns
    -------
    ndarray, shape (N,)
        d in Å (inf on the direct beam).
    """
    return d_spacing(spots_to_rlp(detector, beam, panel, xy_px))


def _normalise(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return v / n


def predict_stills(A, s0, hkl=None, *, rlp=None) -> tuple[np.ndarray, np.ndarray]:
    """Still-shot ray prediction (DIALS ``StillsRayPredictor``).

    Each reciprocal-lattice point ``q = A·h`` is rotated onto the Ewald sphere
    about ``e1 = q × ŝ0`` (the smallest rotation that brings it there); the
    signed rotation angle is Δψ.

    Parameters
    ----------
    A : array_like, shape (3, 3)
        Setting matrix U·B (1/Å); ignored when ``rlp`` is given.
    s0 : array_like, shape (3,)
        Incident beam vector (1/Å).
    hkl : array_like, shape (N, 3), optional
        Miller indices.
    rlp : array_like, shape (N, 3), optional
        Reciprocal-lattice points (1/Å) instead of ``A`` and ``hkl``.

    Returns
    -------
    s1 : ndarray, shape (N, 3)
        Predicted diffracted-beam vectors (1/Å), NaN where no prediction
        exists (q = 0, q ∥ s0, or |q| ≥ 2/λ).
    delpsi : ndarray, shape (N,)
        Δψ in radians (DIALS ``delpsical.rad``), NaN where undefined.
    """
    s0 = np.asarray(s0, dtype=np.float64)
    if rlp is None:
        q = np.atleast_2d(np.asarray(hkl, dtype=np.float64)) @ np.asarray(A, dtype=np.float64).T
    else:
        q = np.atleast_2d(np.asarray(rlp, dtype=np.float64))
    s0_len = np.linalg.norm(s0)
    us0 = s0 / s0_len
    wavelength = 1.0 / s0_len
    e1 = _normalise(np.cross(q, us0))
    c0 = _normalise(np.cross(us0, e1))
    qq = np.einsum("ij,ij->i", q, q)
    a = 0.5 * qq * wavelength
    with np.errstate(invalid="ignore"):
        b = np.sqrt(qq - a * a)
    r = -a[:, None] * us0 + b[:, None] * c0
    q0 = _normalise(q)
    q1 = _normalise(np.cross(q0, e1))
    delpsi = -np.arctan2(np.einsum("ij,ij->i", r, q1), np.einsum("ij,ij->i", r, q0))
    s1 = _normalise(s0 + r) * s0_len
    return s1, delpsi


def ray_intersection(detector, s1, panel=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where diffracted rays hit the detector.

    Parameters
    ----------
    detector : Detector or PanelArrays
    s1 : array_like, shape (N, 3)
        Ray directions (any length).
    panel : int or array_like of int, optional
        Intersect with these panels (as DIALS does when refining against
        observed spots); when None, the first panel (in panel order) whose
        extent contains the hit is used, as dxtbx's
        ``Detector.get_ray_intersection``.

    Returns
    -------
    panel : ndarray of int, shape (N,)
        Panel index (-1 where the ray misses every panel).
    xy_mm : ndarray, shape (N, 2)
        In-plane mm (``xyzcal.mm``), NaN on a miss.
    xy_px : ndarray, shape (N, 2)
        Pixel coordinates (``xyzcal.px``), parallax-corrected as dxtbx.
    valid : ndarray of bool, shape (N,)
        True where the ray hits the front of a panel (and, when ``panel`` is
        None, inside it).
    """
    pa = _as_arrays(detector)
    s1 = np.atleast_2d(np.asarray(s1, dtype=np.float64))
    n = len(s1)
    if panel is not None:
        idx = _panel_index(panel, n)
        v = np.einsum("nij,nj->ni", pa.d_inverse[idx], s1)
        valid = v[:, 2] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = v[:, :2] / v[:, 2:3]
        xy[~valid] = np.nan
    else:
        v = np.einsum("pij,nj->pni", pa.d_inverse, s1)
        with np.errstate(divide="ignore", invalid="ignore"):
            xy_all = v[..., :2] / v[..., 2:3]
            size = pa.size_mm[:, None, :]
            inside = (v[..., 2] > 0) & np.all((xy_all >= 0) & (xy_all <= size), axis=2)
        valid = inside.any(axis=0)
        idx = np.where(valid, np.argmax(inside, axis=0), -1)
        xy = np.full((n, 2), np.nan)
        xy[valid] = xy_all[idx[valid], np.nonzero(valid)[0]]
    xy_px = np.full((n, 2), np.nan)
    if np.any(valid):
        xy_px[valid] = mm_to_px(pa, idx[valid], xy[valid])
    idx = np.where(valid, idx, -1)
    return idx, xy, xy_px, valid


def generate_indices(A, d_min: float, d_max: float | None = None) -> np.ndarray:
    """All Miller indices with resolution between ``d_min`` and ``d_max`` (Å).

    Parameters
    ----------
    A : array_like, shape (3, 3)
        Setting matrix (1/Å).
    d_min : float
        High-resolution limit, Å.
    d_max : float, optional
        Low-resolution limit, Å (default: none).

    Returns
    -------
    ndarray of int, shape (N, 3)
        Indices (excluding 0,0,0), any order.
    """
    A = np.asarray(A, dtype=np.float64)
    real = np.linalg.inv(A)  # rows a, b, c (Å)
    lim = np.floor(np.linalg.norm(real, axis=1) / d_min).astype(int)
    h = np.arange(-lim[0], lim[0] + 1)
    k = np.arange(-lim[1], lim[1] + 1)
    l_ = np.arange(-lim[2], lim[2] + 1)
    hkl = np.stack(np.meshgrid(h, k, l_, indexing="ij"), axis=-1).reshape(-1, 3)
    q = hkl @ A.T
    qq = np.einsum("ij,ij->i", q, q)
    keep = (qq > 0) & (qq <= 1.0 / d_min**2)
    if d_max is not None:
        keep &= qq >= 1.0 / d_max**2
    return hkl[keep]


def predict_reflections(
    A,
    detector,
    beam,
    *,
    d_min: float,
    max_excitation: float | None = None,
    max_delpsi: float | None = None,
    hkl=None,
) -> dict:
    """Predict still-shot reflections that reach the detector.

    A reflection is predicted when its reciprocal-lattice point lies within
    ``max_excitation`` (1/Å) of the Ewald sphere, or within ``max_delpsi``
    (rad) of it in rotation, or both when both are given.

    Parameters
    ----------
    A : array_like, shape (3, 3)
        Setting matrix (1/Å).
    detector : Detector or PanelArrays
    beam : Beam
    d_min : float
        Resolution limit, Å.
    max_excitation : float, optional
        Largest distance of the rlp from the Ewald sphere, ``| |s0 + r| - 1/λ |`` (1/Å).
    max_delpsi : float, optional
        Largest |Δψ|, radians.
    hkl : array_like, shape (N, 3), optional
        Indices to consider (default: all to ``d_min``).

    Returns
    -------
    dict of ndarray
        ``miller_index`` (N, 3) int, ``panel`` (N,), ``s1`` (N, 3),
        ``xyzcal.mm`` (N, 3) and ``xyzcal.px`` (N, 3) (third column 0),
        ``delpsical.rad`` (N,), ``rlp`` (N, 3), ``excitation`` (N,) in 1/Å.
    """
    if max_excitation is None and max_delpsi is None:
        raise ValueError("predict_reflections needs max_excitation or max_delpsi")
    A = np.asarray(A, dtype=np.float64)
    if hkl is None:
        hkl = generate_indices(A, d_min)
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    s0 = beam.s0
    q = hkl @ A.T
    exc = np.linalg.norm(q + s0, axis=1) - np.linalg.norm(s0)
    keep = np.ones(len(hkl), dtype=bool)
    if max_excitation is not None:
        keep &= np.abs(exc) <= max_excitation
    hkl, q, exc = hkl[keep], q[keep], exc[keep]
    s1, delpsi = predict_stills(None, s0, rlp=q)
    keep = np.isfinite(delpsi)
    if max_delpsi is not None:
        keep &= np.abs(delpsi) <= max_delpsi
    hkl, q, exc, s1, delpsi = hkl[keep], q[keep], exc[keep], s1[keep], delpsi[keep]
    panel, xy_mm, xy_px, valid = ray_intersection(detector, s1)
    z = np.zeros((int(valid.sum()), 1))
    return {
        "miller_index": hkl[valid].astype(np.int32),
        "panel": panel[valid],
        "s1": s1[valid],
        "xyzcal.mm": np.hstack([xy_mm[valid], z]),
        "xyzcal.px": np.hstack([xy_px[valid], z]),
        "delpsical.rad": delpsi[valid],
        "rlp": q[valid],
        "excitation": exc[valid],
    }
