"""Spot-finding options: plain frozen dataclasses, built once from the parameter tree.

Algorithms take these objects, never a :class:`~stillshot.config.Params`;
:func:`options_from_params` is the one place that reads
``spotfinder.*`` and ``dispatch.hit_finder.*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stillshot.config import is_auto

__all__ = [
    "DispersionOptions",
    "FilterOptions",
    "RadialOptions",
    "SpotFinderOptions",
    "options_from_params",
]


@dataclass(frozen=True)
class DispersionOptions:
    """Options of the dispersion and dispersion_extended thresholds (DIALS names).

    Attributes
    ----------
    gain : float or None
        Flat gain (ADU per photon) multiplying each panel's (format's) gain;
        None: the panel gain alone, and DIALS's gain-free formulas where that
        is 1 (see :func:`stillshot.spotfind.threshold.effective_gain`).
    kernel_size : (int, int)
        Box half sizes (slow, fast) in px.
    sigma_background, sigma_strong : float
    min_local : int
        Fewest valid pixels in a box; <= 0: the whole box.
    global_threshold : float or "auto"
        ADU; ``"auto"`` estimates it per shot (DIALS's elbow method).
    """

    gain: float | None = None
    kernel_size: tuple = (3, 3)
    sigma_background: float = 6.0
    sigma_strong: float = 3.0
    min_local: int = 2
    global_threshold: float | str = 0.0


@dataclass(frozen=True)
class RadialOptions:
    """Options of the radial (peakfinder8-like) threshold.

    Attributes
    ----------
    threshold : float
        Absolute threshold (ADU).
    min_snr : float
        Pixel and peak signal-to-noise ratio.
    min_pix_count, max_pix_count : int
        Pixel count limits of a peak.
    local_bg_radius : int
        Width (px) of the local background frame around a peak.
    bin_width : float
        Radial bin width (px).
    iterations : int
        Sigma-clipping iterations.
    """

    threshold: float = 800.0
    min_snr: float = 5.0
    min_pix_count: int = 2
    max_pix_count: int = 200
    local_bg_radius: int = 3
    bin_width: float = 1.0
    iterations: int = 5


@dataclass(frozen=True)
class FilterOptions:
    """Pixel and spot filters.

    Attributes
    ----------
    min_spot_size : int or None
        None: 3 for ``SENSOR_PAD`` panels, 6 otherwise (DIALS's Auto).
    max_spot_size : int
    max_separation : float
        Largest peak-to-centroid distance (px).
    max_strong_pixel_fraction : float
    d_min, d_max : float or None
        Resolution limits (Å) applied to pixels.
    border : int
        Unused edge of every panel (px).
    ice_rings : bool
    ice_unit_cell : tuple
    ice_space_group : str
    ice_width : float
        Full ring width in 1/d² (Å⁻²).
    ice_d_min : float or None
    """

    min_spot_size: int | None = None
    max_spot_size: int = 1000
    max_separation: float = 2.0
    max_strong_pixel_fraction: float = 0.25
    d_min: float | None = None
    d_max: float | None = None
    border: int = 0
    ice_rings: bool = False
    ice_unit_cell: tuple = (4.498, 4.498, 7.338, 90.0, 90.0, 120.0)
    ice_space_group: str = "194"
    ice_width: float = 0.002
    ice_d_min: float | None = None


@dataclass(frozen=True)
class SpotFinderOptions:
    """Everything spot finding and hit finding need.

    Attributes
    ----------
    algorithm : str
        Name in the threshold registry.
    dispersion : DispersionOptions
    radial : RadialOptions
    filter : FilterOptions
    min_spots : int
        A shot with at least this many spots is a hit.
    max_spots : int or None
        A shot with more spots than this is not a hit.
    background_margin : int
        Frame (px) around a spot's bounding box used for its local background.
    """

    algorithm: str = "dispersion_extended"
    dispersion: DispersionOptions = field(default_factory=DispersionOptions)
    radial: RadialOptions = field(default_factory=RadialOptions)
    filter: FilterOptions = field(default_factory=FilterOptions)
    min_spots: int = 16
    max_spots: int | None = None
    background_margin: int = 2


def _opt(value):
    return None if value is None or is_auto(value) else value


def options_from_params(params) -> SpotFinderOptions:
    """Spot-finding options from a resolved parameter tree.

    Parameters
    ----------
    params : Params
        With a ``spotfinder`` scope (:func:`stillshot.config.common.spotfinder_scope`)
        and, optionally, ``dispatch.hit_finder``.

    Returns
    -------
    SpotFinderOptions
    """
    sf = params.spotfinder
    d = sf.threshold.dispersion
    r = sf.threshold.radial
    f = sf.filter
    gt = d.global_threshold
    dispersion = DispersionOptions(
        gain=_opt(d.gain),
        kernel_size=tuple(int(v) for v in d.kernel_size),
        sigma_background=float(d.sigma_background),
        sigma_strong=float(d.sigma_strong),
        min_local=int(d.min_local),
        global_threshold="auto" if is_auto(gt) else float(gt or 0.0),
    )
    radial = RadialOptions(
        threshold=float(r.threshold),
        min_snr=float(r.min_snr),
        min_pix_count=int(r.min_pix_count),
        max_pix_count=int(r.max_pix_count),
        local_bg_radius=int(r.local_bg_radius),
    )
    ice = f.ice_rings
    filt = FilterOptions(
        min_spot_size=_opt(f.min_spot_size),
        max_spot_size=int(f.max_spot_size),
        max_separation=float(f.max_separation),
        max_strong_pixel_fraction=float(f.max_strong_pixel_fraction),
        d_min=_opt(f.d_min),
        d_max=_opt(f.d_max),
        border=int(f.border or 0),
        ice_rings=bool(ice.filter),
        ice_unit_cell=tuple(float(v) for v in ice.unit_cell),
        ice_space_group=str(ice.space_group),
        ice_width=float(ice.width),
        ice_d_min=_opt(ice.d_min),
    )
    min_spots, max_spots = 16, None
    dispatch = getattr(params, "dispatch", None)
    if dispatch is not None:
        hf = dispatch.hit_finder
        min_spots = int(hf.minimum_number_of_reflections) if hf.enable else 0
        max_spots = _opt(hf.maximum_number_of_reflections)
    return SpotFinderOptions(
        algorithm=str(sf.threshold.algorithm),
        dispersion=dispersion,
        radial=radial,
        filter=filt,
        min_spots=min_spots,
        max_spots=max_spots,
    )
