"""Ground-truth still shots: the test and benchmark data source.

:class:`Simulator` makes shots in memory (per-panel arrays + :class:`ShotTruth`);
:func:`run_simulation` writes a run (miniCBF / CXI + .geom / NeXus, truth.json,
true.expt, true_intensities.mtz).  Detector layouts are in
:mod:`stillshot.simulate.layouts`.
"""

from stillshot.simulate.response import BackgroundModel, DetectorMaps
from stillshot.simulate.run import FORMATS, run_simulation
from stillshot.simulate.shots import (
    LatticeTruth,
    ShotTruth,
    SimulatedShot,
    SimulationSettings,
    Simulator,
    build_detector,
    predict_lattice,
)
from stillshot.simulate.structure import StructureModel

__all__ = [
    "FORMATS",
    "BackgroundModel",
    "DetectorMaps",
    "LatticeTruth",
    "ShotTruth",
    "SimulatedShot",
    "SimulationSettings",
    "Simulator",
    "StructureModel",
    "build_detector",
    "predict_lattice",
    "run_simulation",
]
