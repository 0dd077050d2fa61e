"""The registry of basis/lattice search methods, chosen by name (``indexing.method``).

A search method is a function ``search(spots, context) -> list[ndarray]``: it gets the
prepared spots (:class:`stillshot.index.spots.Spots`) and a
:class:`SearchContext`, and returns candidate real-space bases, each a (3, 3)
array whose rows are the basis vectors a, b, c in Å (lab frame) — any
primitive or conventional setting; candidate choice puts them in the target
setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from stillshot.index.options import IndexingOptions

_METHODS: dict[str, Callable] = {}
_KNOWN_CELL_ONLY: set[str] = set()


@dataclass(frozen=True)
class SearchContext:
    """What a search method may use besides the spots.

    Attributes
    ----------
    options : IndexingOptions
    target_B : ndarray (3, 3) or None
        B matrix (1/Å) of the known cell in its conventional setting.
    target_rotations : ndarray (G, 3, 3) or None
        Proper rotations of the known point group acting on Miller indices
        (rows ``h' = R h``), used to skip symmetry-equivalent solutions.
    max_cell : float
        Longest basis vector searched, Å (resolved).
    d_min : float
        Resolution limit of the spots used, Å (resolved).
    """

    options: IndexingOptions
    target_B: np.ndarray | None
    target_rotations: np.ndarray | None
    max_cell: float
    d_min: float


def register(name: str, *, known_cell_only: bool = False) -> Callable:
    """Decorator registering a search method under ``name``."""

    def deco(func: Callable) -> Callable:
        _METHODS[name] = func
        if known_cell_only:
            _KNOWN_CELL_ONLY.add(name)
        return func

    return deco


def get(name: str) -> Callable:
    """The search method registered as ``name`` (KeyError naming the choices)."""
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise KeyError(f"unknown indexing method {name!r}; choose from {', '.join(sorted(_METHODS))}") from None


def needs_known_cell(name: str) -> bool:
    """True for methods that only work with a known unit cell."""
    _load_builtin()
    return name in _KNOWN_CELL_ONLY


def names() -> list[str]:
    """Registered method names."""
    _load_builtin()
    return list(_METHODS)


def _load_builtin() -> None:
    # importing the modules registers them
    from stillshot.index import fft1d, grid_search, vector_match  # noqa: F401 (registers them)
