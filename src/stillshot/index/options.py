"""Typed options of the indexer (built from the ``indexing`` parameters by the cli)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexingOptions:
    """Everything the indexer needs to know, with DIALS-like defaults.

    Parameters
    ----------
    method : str
        Name of the basis/lattice search (see :func:`stillshot.index.methods`).
    space_group : str or None
        Known space group (any gemmi-readable symbol); None: unknown.
    unit_cell : tuple of 6 float or None
        Known unit cell (Å, degrees); None: unknown.
    relative_length_tolerance : float
        Relative cell-length tolerance against the known cell.
    absolute_angle_tolerance : float
        Cell-angle tolerance against the known cell, degrees.
    max_delta : float
        Largest metric deviation (degrees) accepted when choosing a Bravais
        lattice for an unknown cell.
    min_cell, max_cell : float
        Shortest and longest basis vector searched, Å; ``max_cell=None``: from a
        nearest-neighbour analysis of the reciprocal-lattice points.
    min_cell_volume : float
        Smallest cell volume of a candidate, Å³.
    d_min : float or None
        Resolution limit (Å) of the spots used in the basis search; None: automatic.
    hkl_tolerance : float
        Largest distance of a fractional Miller index from the integer to index a spot.
    min_spots : int
        Fewest spots a shot (or the spots left for a further lattice) needs.
    max_lattices : int
        Most lattices per shot.
    recycle_unindexed_reflections_cutoff : float
        Search another lattice only if more than this fraction of spots is unindexed.
    minimum_angular_separation : float
        Smallest misorientation between two lattices of a shot, degrees.
    refine_all_candidates : bool
        Refine each candidate before choosing.
    candidate_outlier_rejection : bool
        Reject outliers while refining candidates.
    rmsd_max_px : float
        Largest positional RMSD (px) of an acceptable solution.
    ewald_proximal_volume_max : float
        Largest Ewald-proximal volume (1/Å³) of an acceptable solution; 0: no limit.
    ewald_proximity_resolution_cutoff : float
        Resolution (Å) to which the Ewald-proximal volume is integrated.
    d_min_refine : float or None
        Resolution limit (Å) of the spots used in refinement; None: all.
    max_candidates : int
        Most candidate lattices scored per shot.
    """

    method: str = "vector_match"
    space_group: str | None = None
    unit_cell: tuple | None = None
    relative_length_tolerance: float = 0.1
    absolute_angle_tolerance: float = 5.0
    max_delta: float = 5.0
    min_cell: float = 3.0
    max_cell: float | None = None
    min_cell_volume: float = 25.0
    d_min: float | None = None
    hkl_tolerance: float = 0.3
    min_spots: int = 10
    max_lattices: int = 1
    recycle_unindexed_reflections_cutoff: float = 0.1
    minimum_angular_separation: float = 5.0
    refine_all_candidates: bool = True
    candidate_outlier_rejection: bool = True
    rmsd_max_px: float = 2.0
    ewald_proximal_volume_max: float = 0.0025
    ewald_proximity_resolution_cutoff: float = 2.0
    d_min_refine: float | None = None
    max_candidates: int = 10

    @property
    def known_cell(self) -> bool:
        """True when a target unit cell is given."""
        return self.unit_cell is not None
