"""Detector response: per-pixel geometry maps, background profile, defects.

Everything here depends only on the detector (and the beam's polarization),
not on the shot, so a :class:`DetectorMaps` is built once per run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stillshot.models import Beam, Detector

__all__ = ["BackgroundModel", "DetectorMaps", "polarization_factor"]


def polarization_factor(unit_s1: np.ndarray, beam: Beam) -> np.ndarray:
    """Polarization factor of diffracted directions (dimensionless, 0–1).

    ``P = f·(1 - (ŝ1·e)²) + (1 - f)·(1 - (ŝ1·n')²)`` with ``e`` the electric
    vector (in the plane normal to the beam's ``polarization_normal``), ``n'``
    the perpendicular one and ``f`` the polarization fraction.

    Parameters
    ----------
    unit_s1 : ndarray, shape (..., 3)
        Unit diffracted-beam directions.
    beam : Beam

    Returns
    -------
    ndarray, shape (...)
    """
    n = np.asarray(beam.polarization_normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    e = np.cross(n, beam.unit_s0)
    e = e / np.linalg.norm(e)
    f = float(beam.polarization_fraction)
    ce = unit_s1 @ e
    cn = unit_s1 @ n
    return f * (1.0 - ce * ce) + (1.0 - f) * (1.0 - cn * cn)


@dataclass(frozen=True, eq=False)
class BackgroundModel:
    """Smooth diffuse background: a constant plus a solvent ring.

    Parameters
    ----------
    constant : float
        Photons per pixel everywhere (at the solid angle of the beam-axis
        distance).
    ring_amplitude : float
        Peak photons per pixel of the ring.
    ring_resolution : float
        Resolution d of the ring maximum, Å (liquid water: about 3.2 Å).
    ring_width : float
        Gaussian σ of the ring in 1/d, 1/Å.
    """

    constant: float = 0.5
    ring_amplitude: float = 1.0
    ring_resolution: float = 3.2
    ring_width: float = 0.04

    def table(self, t_max: float, n: int = 4096) -> tuple[np.ndarray, float, float]:
        """Photons per pixel tabulated in 1/d from 0 to ``t_max`` (1/Å).

        Returns
        -------
        table : ndarray, shape (n,)
        t0, dt : float
            1/d of the first entry and the step (1/Å).
        """
        dt = max(float(t_max), 1e-6) / (n - 1)
        t = np.arange(n) * dt
        val = self.constant + self.ring_amplitude * np.exp(
            -0.5 * ((t - 1.0 / self.ring_resolution) / self.ring_width) ** 2
        )
        return val, 0.0, dt


class DetectorMaps:
    """Per-pixel maps of a detector used to render every shot.

    Parameters
    ----------
    detector : Detector
        The (true) detector.
    beam : Beam
        Gives the beam direction and polarization (the wavelength is not used).
    dead_fraction, hot_fraction : float
        Fractions of pixels that are dead (always read the pedestal) or hot
        (always read half the saturation level).
    seed : int
        Seed of the defect positions (fixed for a detector, as in life).

    Attributes
    ----------
    two_sin_theta : list of ndarray (float32)
        2·sin θ at every pixel centre (1/d = value/λ).
    geom : list of ndarray (float32)
        Solid angle (relative to a pixel on the beam axis at the mean
        distance) × polarization factor, per pixel.
    dead, hot : list of ndarray of int
        Flat pixel indices of the defects of each panel.
    max_two_sin_theta : float
        The largest 2·sin θ on the detector.
    """

    def __init__(self, detector: Detector, beam: Beam, *, dead_fraction: float = 0.0,
                 hot_fraction: float = 0.0, seed: int = 0):
        self.detector = detector
        ref = detector.distance()
        us0 = beam.unit_s0
        self.two_sin_theta = []
        self.geom = []
        self.dead = []
        self.hot = []
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xDEAD]))
        for panel in detector:
            lab = panel.pixel_lab_coords()
            r = np.linalg.norm(lab, axis=2)
            u = lab / r[..., None]
            cos2t = np.clip(u @ us0, -1.0, 1.0)
            # 2 sin θ = sqrt(2 (1 - cos 2θ))
            self.two_sin_theta.append(np.sqrt(2.0 * (1.0 - cos2t)).astype(np.float32))
            obliq = np.abs(u @ panel.normal)
            solid = obliq * (ref / r) ** 2
            self.geom.append((solid * polarization_factor(u, beam)).astype(np.float32))
            n = panel.n_fast * panel.n_slow
            nd = rng.binomial(n, dead_fraction) if dead_fraction > 0 else 0
            nh = rng.binomial(n, hot_fraction) if hot_fraction > 0 else 0
            pick = rng.choice(n, size=nd + nh, replace=False) if nd + nh else np.zeros(0, dtype=np.int64)
            self.dead.append(np.sort(pick[:nd]))
            self.hot.append(np.sort(pick[nd:]))
        self.max_two_sin_theta = float(max(float(m.max()) for m in self.two_sin_theta))
