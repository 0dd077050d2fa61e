"""The outcome of processing one shot."""

from __future__ import annotations

from dataclasses import dataclass, field

from stillshot.models import Experiment
from stillshot.table import ReflectionTable

#: Shot statuses, from worst to best.
STATUSES = ("unreadable", "failed", "not_hit", "not_indexed", "indexed", "integrated")


@dataclass
class StillResult:
    """Everything the pipeline learned about one shot.

    Parameters
    ----------
    file : str
        Image file.
    frame : int or None
        Frame index for multi-image files.
    status : str
        One of :data:`STATUSES`.
    reason : str
        Why the shot stopped where it did ("" for a fully processed shot).
    imported : Experiment or None
        The shot's beam, detector and image (None when unreadable).
    strong : ReflectionTable or None
        Spots found (``id`` 0).
    experiments : list of Experiment
        One per lattice found (indexed shots only).
    indexed : ReflectionTable or None
        Indexed spots, ``id`` = lattice number within this shot.
    integrated : ReflectionTable or None
        Integrated reflections, ``id`` = lattice number within this shot.
    integrated_crystals : list of Crystal or None
        Per lattice, the crystal with the mosaic model integration used (None
        for a lattice that could not be integrated); empty when not integrated.
    timings : dict
        Seconds per stage.
    resolved : dict
        Values chosen at run time ("auto" parameters), for the log.
    """

    file: str
    frame: int | None
    status: str
    reason: str = ""
    imported: Experiment | None = None
    strong: ReflectionTable | None = None
    experiments: list = field(default_factory=list)
    indexed: ReflectionTable | None = None
    integrated: ReflectionTable | None = None
    integrated_crystals: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        """Number of strong spots."""
        return 0 if self.strong is None else len(self.strong)

    @property
    def n_indexed(self) -> int:
        """Number of indexed spots over all lattices."""
        return 0 if self.indexed is None else len(self.indexed)

    @property
    def n_integrated(self) -> int:
        """Number of integrated reflections over all lattices."""
        return 0 if self.integrated is None else len(self.integrated)

    @property
    def is_hit(self) -> bool:
        """True when the shot passed the hit finder."""
        return self.status in ("not_indexed", "indexed", "integrated")

    @property
    def is_indexed(self) -> bool:
        """True when at least one lattice was found."""
        return self.status in ("indexed", "integrated")

    def unit_cells(self) -> list[list[float]]:
        """(a, b, c, α, β, γ) per lattice, Å and degrees."""
        return [list(e.crystal.cell_parameters) for e in self.experiments if e.crystal is not None]

    def summary(self) -> dict:
        """The shot's entry in summary.json (DESIGN.md)."""
        cells = self.unit_cells()
        return {
            "file": self.file,
            "frame": self.frame,
            "status": self.status,
            "reason": self.reason,
            "n_spots": self.n_spots,
            "n_indexed": self.n_indexed,
            "n_lattices": len(self.experiments),
            "n_integrated": self.n_integrated,
            "unit_cell": [round(v, 4) for v in cells[0]] if cells else None,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "resolved": self.resolved,
        }
