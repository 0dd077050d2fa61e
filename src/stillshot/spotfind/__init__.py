"""Spot finding, hit finding and detector calibration inputs.

* :func:`find_spots` (shot -> :class:`SpotFindingResult`) is the entry point;
  options come from :func:`options_from_params`.
* Threshold algorithms are chosen by name from a registry
  (:mod:`stillshot.spotfind.threshold`): ``dispersion_extended`` (DIALS's
  default), ``dispersion`` and ``radial`` (peakfinder8-like).
* Masks (:mod:`~stillshot.spotfind.masks`), calibration lookups
  (:mod:`~stillshot.spotfind.calibration`), spot measurement and filters
  (:mod:`~stillshot.spotfind.spots`); hot loops are numba kernels in
  :mod:`~stillshot.spotfind._kernels`.
"""

from stillshot.spotfind.calibration import Lookup, calibrate, load_lookup, load_panel_arrays
from stillshot.spotfind.finder import SpotFindingResult, find_spots, find_spots_in_arrays, is_hit
from stillshot.spotfind.options import (
    DispersionOptions,
    FilterOptions,
    RadialOptions,
    SpotFinderOptions,
    options_from_params,
)
from stillshot.spotfind.threshold import algorithm_names, get_algorithm, register

__all__ = [
    "DispersionOptions",
    "FilterOptions",
    "Lookup",
    "RadialOptions",
    "SpotFinderOptions",
    "SpotFindingResult",
    "algorithm_names",
    "calibrate",
    "find_spots",
    "find_spots_in_arrays",
    "get_algorithm",
    "is_hit",
    "load_lookup",
    "load_panel_arrays",
    "options_from_params",
    "register",
]
