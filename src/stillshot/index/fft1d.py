"""``fft1d``: the 1-D FFT basis-vector search of Steller, Bolotovsky & Rossmann (DPS, 1997).

For each direction ``t`` on a hemisphere, the reciprocal-lattice points are
projected onto ``t``; when ``t`` is parallel to a real-space lattice vector of
length ``L`` the projections cluster at multiples of ``1/L`` and the Fourier
transform of their histogram peaks at frequency ``L``.  The strongest peaks
over all directions are refined against the spots and combined into
candidate bases.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from stillshot.index.basis import bases_from_vectors, hemisphere_directions, refine_vector, unique_vectors
from stillshot.index.registry import SearchContext, register


def fft1d_vectors(rlp: np.ndarray, *, d_min: float, min_cell: float, max_cell: float,
                  spacing_rad: float = 0.03, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Candidate real-space vectors from the 1-D FFTs of rlp projections.

    Parameters
    ----------
    rlp : ndarray (N, 3)
        Reciprocal-lattice points, 1/Å.
    d_min : float
        Resolution of the spots (sets the projection range), Å.
    min_cell, max_cell : float
        Vector lengths searched, Å.
    spacing_rad : float
        Angular spacing of the search directions, radians.

    Returns
    -------
    vectors : ndarray (M, 3)
        Best vector (Å) per direction.
    scores : ndarray (M,)
        Its Fourier amplitude relative to the number of spots.
    """
    dirs = hemisphere_directions(spacing_rad)
    p_max = 1.0 / d_min
    dp = 1.0 / (4.0 * max_cell)  # bin width: frequencies up to 2·max_cell
    n_bins = sfft.next_fast_len(int(np.ceil(2 * p_max / dp)) + 2, real=True)
    freqs = np.arange(n_bins // 2 + 1) / (n_bins * dp)  # Å
    # a vector shorter than d_min puts every projection inside one period: no information
    band = np.nonzero((freqs >= max(min_cell, d_min)) & (freqs <= max_cell))[0]
    if len(band) == 0 or len(rlp) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    n = len(rlp)
    vectors = np.empty((len(dirs), 3))
    scores = np.empty(len(dirs))
    for s in range(0, len(dirs), chunk):
        d = dirs[s : s + chunk]
        proj = d @ rlp.T  # (m, N)
        pos = (proj + p_max) / dp
        b0 = np.floor(pos).astype(np.int64)
        w1 = pos - b0
        b0 = np.clip(b0, 0, n_bins - 2)
        m = len(d)
        offs = (np.arange(m) * n_bins)[:, None]
        hist = np.bincount((b0 + offs).ravel(), weights=(1.0 - w1).ravel(), minlength=m * n_bins)
        hist += np.bincount((b0 + 1 + offs).ravel(), weights=w1.ravel(), minlength=m * n_bins)
        spec = np.abs(sfft.rfft(hist.reshape(m, n_bins), axis=1))
        amp = spec[:, band]
        k = np.argmax(amp, axis=1)
        best = amp[np.arange(m), k]
        # prefer the fundamental over a harmonic of (almost) equal strength
        L = freqs[band][k]
        rows = np.arange(m)
        for div in (3, 2):
            kd = np.clip(np.searchsorted(freqs, L / div), 1, len(freqs) - 1)
            a = np.maximum(spec[rows, kd], spec[rows, kd - 1])
            use = (a >= 0.8 * best) & (L / div >= max(min_cell, d_min))
            L = np.where(use, L / div, L)
        vectors[s : s + m] = d * L[:, None]
        scores[s : s + m] = best / n
    return vectors, scores


@register("fft1d")
def search_fft1d(spots, context: SearchContext) -> list[np.ndarray]:
    """Candidate bases (rows a, b, c in Å) from the DPS 1-D FFT search."""
    opt = context.options
    rlp = spots.rlp[spots.d >= context.d_min]
    if len(rlp) < 3:
        return []
    vectors, scores = fft1d_vectors(rlp, d_min=context.d_min, min_cell=opt.min_cell, max_cell=context.max_cell)
    vectors, scores = unique_vectors(vectors, scores, max_vectors=30)
    refined = []
    for v in vectors:
        w, used = refine_vector(v, rlp)
        if used >= 4 and opt.min_cell <= np.linalg.norm(w) <= 1.5 * context.max_cell:
            refined.append(w)
    if len(refined) < 3:
        return []
    refined = np.array(refined)
    refined, _ = unique_vectors(refined, np.arange(len(refined), 0, -1, dtype=float), max_vectors=30)
    return bases_from_vectors(refined, rlp, min_volume=opt.min_cell_volume, max_bases=opt.max_candidates,
                              tolerance=opt.hkl_tolerance)
