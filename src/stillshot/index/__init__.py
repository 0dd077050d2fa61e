"""Indexing still shots: basis/lattice searches chosen by name, candidate choice, Bravais
lattices (gemmi), per-shot refinement and several lattices per shot.

Searches registered (``indexing.method``): ``fft1d`` (DPS 1-D FFT, any cell),
``real_space_grid_search`` (known cell) and ``vector_match`` (known cell, fast:
inter-spot vector matching).
"""

from stillshot.index.indexer import IndexResult, Lattice, index_spots, index_still
from stillshot.index.lattice import bravais_lattice, misorientation_deg, point_group_rotations
from stillshot.index.options import IndexingOptions
from stillshot.index.registry import names as methods
from stillshot.index.spots import Spots, prepare_spots

__all__ = [
    "IndexResult",
    "IndexingOptions",
    "Lattice",
    "Spots",
    "bravais_lattice",
    "index_spots",
    "index_still",
    "methods",
    "misorientation_deg",
    "point_group_rotations",
    "prepare_spots",
]
