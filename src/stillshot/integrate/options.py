"""Options of the integration stage (built by the CLI from ``integration``/``prediction``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IntegrationOptions"]


@dataclass(frozen=True)
class IntegrationOptions:
    """Everything the integration of one shot depends on.

    Parameters
    ----------
    algorithm : str
        Integrator name in :mod:`stillshot.integrate.registry` (``summation``
        or ``profile``: summation plus 2-D profile fitting, the default — on
        simulated truth it lowers the error of weak spots by a quarter and
        raises the partiality-corrected CC; see benchmarks/integrate.py).
    d_min, d_max : float or None
        Resolution limits of the prediction, Å (None for ``d_min``: the
        detector corner).
    min_partiality : float
        Smallest estimated partiality predicted (0–1).
    use_envelope : bool
        Also predict inside DIALS's Δψ envelope ``|Δψ| ≤ d/D + η``.
    domain_size_ang, half_mosaicity_deg : float or None
        Override the crystal's mosaic model (Å, degrees); None: the crystal's
        own, else estimated from the indexed spots' Δψ, else the defaults.
    default_domain_size_ang, default_half_mosaicity_deg : float
        Used when nothing better is known (Å, degrees).
    bandpass : float or None
        Spectrum FWHM Δλ/λ; None: the beam's ``bandwidth``.
    spot_sigma_px : float or None
        Gaussian σ of the spot profile, px; None: measured on the shot's
        strongest reflections.
    default_spot_sigma_px : float
        σ used when too few strong reflections are found to measure it, px.
    n_sigma : float
        Foreground radius in units of the (positional-error broadened) σ.
    min_foreground_radius_px : float
        Smallest foreground radius, px.
    background_gap_px : float
        Gap between the foreground circle and the background, px.
    background_width_px : float
        Width of the background region beyond the gap, px (the box is a
        square of half-size radius + gap + width).
    outlier_nsigma : float
        Background outlier rejection threshold, σ (robust MAD scale, at least
        the Poisson σ).
    min_background_pixels : int
        Fewest background pixels for a plane fit.
    background_variance : str
        ``poisson`` (mean background + read noise, as DIALS) or
        ``empirical`` (at least the residual mean square of the plane).
    gain : float or None
        ADU per photon; None: each panel's ``gain``.
    read_noise : float
        Read noise σ per pixel, ADU.
    min_strong_isigma : float
        I/σ of the reflections the spot profile is measured on.
    """

    algorithm: str = "profile"
    d_min: float | None = None
    d_max: float | None = None
    min_partiality: float = 0.01
    use_envelope: bool = True
    domain_size_ang: float | None = None
    half_mosaicity_deg: float | None = None
    default_domain_size_ang: float = 2000.0
    default_half_mosaicity_deg: float = 0.05
    bandpass: float | None = None
    spot_sigma_px: float | None = None
    default_spot_sigma_px: float = 1.0
    n_sigma: float = 3.5
    min_foreground_radius_px: float = 1.5
    background_gap_px: float = 1.0
    background_width_px: float = 3.0
    outlier_nsigma: float = 4.0
    min_background_pixels: int = 10
    background_variance: str = "poisson"
    gain: float | None = None
    read_noise: float = 0.0
    min_strong_isigma: float = 20.0

    def __post_init__(self):
        if self.n_sigma <= 0 or self.background_width_px <= 0 or self.background_gap_px < 0:
            raise ValueError("n_sigma and background_width_px must be > 0, background_gap_px ≥ 0")
        if self.background_variance not in ("poisson", "empirical"):
            raise ValueError(f"background_variance must be poisson or empirical, got {self.background_variance!r}")
        if self.gain is not None and not self.gain > 0:
            raise ValueError(f"gain must be positive (ADU per photon), got {self.gain}")
