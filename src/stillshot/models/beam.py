"""The incident beam."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from stillshot.models.frame import _unit, _vec3

#: Keys of a DIALS beam dict that map onto Beam fields.
_DIALS_KEYS = (
    "direction",
    "wavelength",
    "divergence",
    "sigma_divergence",
    "polarization_normal",
    "polarization_fraction",
    "flux",
    "transmission",
)


@dataclass(frozen=True, eq=False)
class Beam:
    """A monochromatic (or narrow-band) incident beam, DIALS conventions.

    Parameters
    ----------
    wavelength : float
        Central wavelength in Å.
    direction : array_like, shape (3,)
        Unit vector pointing from the sample towards the source (DIALS's
        ``direction``); the beam travels along ``-direction``.
    bandwidth : float
        Fractional full width of the spectrum, Δλ/λ (dimensionless); 0 for a
        monochromatic beam.  Not part of DIALS's beam model: written to
        ``.expt`` only when non-zero.
    divergence, sigma_divergence : float
        Beam divergence in degrees (as DIALS stores them).
    polarization_normal : array_like, shape (3,)
        Normal to the polarization plane.
    polarization_fraction : float
        Fraction of polarization (0–1).
    flux : float
        Photons per second (informational).
    transmission : float
        Attenuator transmission (0–1).
    extra : dict
        Keys of the DIALS dict not modelled here, written back unchanged.
    dict_keys : tuple or None
        Keys of the DIALS dict this beam was read from; ``to_dict`` writes only
        these (older DIALS files omit some).  None writes every key.
    """

    wavelength: float
    direction: np.ndarray = field(default_factory=lambda: _vec3((0.0, 0.0, 1.0)))
    bandwidth: float = 0.0
    divergence: float = 0.0
    sigma_divergence: float = 0.0
    polarization_normal: np.ndarray = field(default_factory=lambda: _vec3((0.0, 1.0, 0.0)))
    polarization_fraction: float = 0.999
    flux: float = 0.0
    transmission: float = 1.0
    extra: dict = field(default_factory=dict)
    dict_keys: tuple | None = None

    def __post_init__(self):
        if not (self.wavelength > 0):
            raise ValueError(f"beam wavelength must be positive, got {self.wavelength} Å")
        object.__setattr__(self, "direction", _unit(self.direction))
        object.__setattr__(self, "polarization_normal", _vec3(self.polarization_normal))

    @property
    def s0(self) -> np.ndarray:
        """Incident wave vector, ``-direction / wavelength`` (1/Å)."""
        return -self.direction / self.wavelength

    @property
    def unit_s0(self) -> np.ndarray:
        """Unit vector along the travelling beam (dimensionless)."""
        return -self.direction

    def with_wavelength(self, wavelength: float) -> "Beam":
        """A copy at another wavelength (Å)."""
        return replace(self, wavelength=float(wavelength))

    def to_dict(self) -> dict:
        """The DIALS ``beam`` dict."""
        d = {
            "direction": self.direction.tolist(),
            "wavelength": self.wavelength,
            "divergence": self.divergence,
            "sigma_divergence": self.sigma_divergence,
            "polarization_normal": self.polarization_normal.tolist(),
            "polarization_fraction": self.polarization_fraction,
            "flux": self.flux,
            "transmission": self.transmission,
        }
        d.update(self.extra)
        if self.dict_keys is not None:
            d = {k: d[k] for k in self.dict_keys if k in d}
        if self.bandwidth:
            d["stillshot_bandwidth"] = self.bandwidth
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Beam":
        """Build from a DIALS ``beam`` dict (unknown keys kept in ``extra``)."""
        extra = {k: v for k, v in d.items() if k not in _DIALS_KEYS and k != "stillshot_bandwidth"}
        kwargs = {k: d[k] for k in _DIALS_KEYS if k in d}
        if "wavelength" not in kwargs:
            raise ValueError("beam dict has no 'wavelength'")
        return cls(bandwidth=d.get("stillshot_bandwidth", 0.0), extra=extra, dict_keys=tuple(d), **kwargs)
