"""Refinement: per-shot crystal refinement (:mod:`stillshot.refine.stills`) and mosaic
parameters (:mod:`stillshot.refine.mosaic`); joint detector metrology lives in its own module."""

from stillshot.refine.mosaic import MosaicParameters, ewald_proximal_volume, estimate_mosaic_parameters
from stillshot.refine.stills import (
    CrystalRefinementResult,
    StillsRefinementOptions,
    cell_parameterisation,
    refine_crystal,
    stills_residuals,
)

__all__ = [
    "CrystalRefinementResult",
    "MosaicParameters",
    "StillsRefinementOptions",
    "cell_parameterisation",
    "estimate_mosaic_parameters",
    "ewald_proximal_volume",
    "refine_crystal",
    "stills_residuals",
]
