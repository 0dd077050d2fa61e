"""Integration of indexed still shots: prediction with a per-shot mosaic model and
bandpass, partiality estimates, shoeboxes sized from the spot profile, summation
with a local background plane, optional 2-D profile fitting, flags.

::

    from stillshot.integrate import IntegrationOptions, integrate_shot

    result = integrate_shot(experiment, shot.data, IntegrationOptions(algorithm="summation"))
    if result.status == "integrated":
        table = result.reflections        # DIALS column names, intensities in photons

Integrators are chosen by name from :mod:`stillshot.integrate.registry`
(``summation``, ``profile``).  Intensities are in photons (ADU minus the panel
pedestal, divided by the gain), variances in photons².  Select reflections for
merging with :func:`good_reflections` (``integrated_sum`` and none of
overloaded, foreground bad pixels, overlapped foreground, :data:`EDGE`).
"""

from stillshot.integrate.integrator import (
    EDGE,
    GOOD_EXCLUDE,
    IntegrationResult,
    good_reflections,
    integrate_shot,
    resolve_mosaic,
)
from stillshot.integrate.options import IntegrationOptions
from stillshot.integrate.predict import MosaicModel, detector_d_min, partiality_sigma, predict_shot
from stillshot.integrate.profile import SpotProfile
from stillshot.integrate.registry import names as integrator_names

__all__ = [
    "EDGE",
    "GOOD_EXCLUDE",
    "IntegrationOptions",
    "IntegrationResult",
    "MosaicModel",
    "SpotProfile",
    "detector_d_min",
    "good_reflections",
    "integrate_shot",
    "integrator_names",
    "partiality_sigma",
    "predict_shot",
    "resolve_mosaic",
]
