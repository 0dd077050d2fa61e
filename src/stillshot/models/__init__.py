"""Experimental models: beam, detector hierarchy, crystal, experiments (DIALS conventions)."""

from stillshot.models.beam import Beam
from stillshot.models.crystal import Crystal, b_matrix, space_group
from stillshot.models.detector import Detector, Group, Panel
from stillshot.models.experiment import Experiment, ExperimentList, ImageRef
from stillshot.models.frame import Frame

__all__ = [
    "Beam",
    "Crystal",
    "Detector",
    "Experiment",
    "ExperimentList",
    "Frame",
    "Group",
    "ImageRef",
    "Panel",
    "b_matrix",
    "space_group",
]
