"""``real_space_grid_search``: known-cell search over directions (as DIALS's method of that name).

For every direction ``t`` on a fine hemisphere grid and every distinct target
cell length ``L``, the vector ``L·t`` is scored by ``Σ cos(2π L t·r)`` over
the reciprocal-lattice points: lattice vectors score near the number of
spots.  The best vectors of each length are refined and combined into bases
that match the target cell angles.
"""

from __future__ import annotations

import numpy as np

from stillshot.index.assign import indexed_fraction
from stillshot.index.basis import hemisphere_directions, refine_vector, unique_vectors
from stillshot.index.lattice import cell_parameters, near_any_setting
from stillshot.index.registry import SearchContext, register


@register("real_space_grid_search", known_cell_only=True)
def search_grid(spots, context: SearchContext, *, spacing_rad: float = 0.02,
                per_length: int = 12) -> list[np.ndarray]:
    """Candidate bases (rows a, b, c in Å, target setting) from a real-space grid search."""
    opt = context.options
    if opt.unit_cell is None:
        return []
    rlp = spots.rlp[spots.d >= context.d_min]
    if len(rlp) < 3:
        return []
    cell = np.asarray(opt.unit_cell, dtype=np.float64)
    dirs = hemisphere_directions(spacing_rad)
    proj = dirs @ rlp.T  # (M, N)
    lengths = np.unique(np.round(cell[:3], 6))
    best: dict[float, np.ndarray] = {}
    for L in lengths:
        score = np.cos(2.0 * np.pi * L * proj).sum(axis=1) / len(rlp)
        vec, sc = unique_vectors(dirs * L, score, angle_deg=3.0, length_rel=0.01, max_vectors=per_length)
        ref = []
        for v in vec:
            w, used = refine_vector(v, rlp)
            if used >= 4 and abs(np.linalg.norm(w) - L) <= opt.relative_length_tolerance * L:
                ref.append(w)
        # both signs: the hemisphere holds one of ±t
        ref = np.array(ref).reshape(-1, 3)
        best[float(L)] = np.concatenate([ref, -ref])
    va, vb, vc = (best[float(np.round(x, 6))] for x in cell[:3])
    if min(len(va), len(vb), len(vc)) == 0:
        return []
    grids = np.meshgrid(np.arange(len(va)), np.arange(len(vb)), np.arange(len(vc)), indexing="ij")
    ia, ib, ic = (g.ravel() for g in grids)
    trip = np.stack([va[ia], vb[ib], vc[ic]], axis=1)
    p = cell_parameters(trip)
    dev = np.abs(p[:, 3:] - cell[3:]).max(axis=1)
    ok = (dev <= opt.absolute_angle_tolerance) & (np.linalg.det(trip) > 0)
    trip = trip[ok]
    if len(trip) == 0:
        return []
    frac = indexed_fraction(None, rlp, opt.hkl_tolerance, inverse=trip)  # (trip⁻¹)⁻¹ = trip
    order = np.argsort(-frac, kind="stable")
    out, kept = [], []
    for i in order:  # distinct orientations only (several lattices may be present)
        A = np.linalg.inv(trip[i])
        if near_any_setting(A, kept, context.target_rotations, 1.0):
            continue
        kept.append(A)
        out.append(trip[i])
        if len(out) >= opt.max_candidates:
            break
    return out
