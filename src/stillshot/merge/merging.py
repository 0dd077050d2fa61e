"""Weighted merging of corrected observations, with outlier rejection.

Every observation i of class c contributes a corrected intensity
``x_i = I_i / g_i`` (``g_i`` its scale × partiality) with variance
``v_i = σ_i'² / g_i²``; the merged intensity is the inverse-variance weighted
mean.  Outliers are rejected on the normalised deviation from the mean of
the *other* observations of the class,

    δ_i = (x_i − μ₋ᵢ) / sqrt(v_i + var(μ₋ᵢ)),

the worst of each class at a time, repeated until nothing more is rejected.
Observations too strong to belong to the Wilson distribution of their
resolution shell (hot pixels, zingers: far beyond what any equivalent can
check when the multiplicity is low) are rejected by :func:`wilson_outliers`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["class_index", "leave_one_out", "reject_outliers", "weighted_merge", "wilson_outliers"]


def class_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique class keys (sorted) and the class number of each observation."""
    uniq, inv = np.unique(np.asarray(keys, dtype=np.int64), return_inverse=True)
    return uniq, inv.reshape(-1)


def weighted_merge(index: np.ndarray, n_classes: int, x: np.ndarray, v: np.ndarray,
                   use: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance weighted means per class.

    Parameters
    ----------
    index : ndarray of int, shape (N,)
        Class of each observation, 0..n_classes-1.
    n_classes : int
    x, v : ndarray, shape (N,)
        Corrected intensities and their variances (v > 0).
    use : ndarray of bool, shape (N,), optional
        Observations to include (default all).

    Returns
    -------
    mean, variance : ndarray, shape (n_classes,)
        NaN for classes without observations.
    n : ndarray of int64, shape (n_classes,)
        Observations merged into each class.
    """
    w = 1.0 / v
    if use is not None:
        w = np.where(use, w, 0.0)
    s0 = np.bincount(index, weights=w, minlength=n_classes)
    s1 = np.bincount(index, weights=w * np.where(w > 0, x, 0.0), minlength=n_classes)
    n = np.bincount(index, weights=(w > 0).astype(np.float64), minlength=n_classes).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(s0 > 0, s1 / s0, np.nan)
        var = np.where(s0 > 0, 1.0 / s0, np.nan)
    return mean, var, n


def leave_one_out(index: np.ndarray, n_classes: int, x: np.ndarray, v: np.ndarray,
                  use: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean (and its variance) of the other observations of each observation's class.

    Returns
    -------
    mean, variance : ndarray, shape (N,)
        NaN where the class has no other (used) observation.
    """
    w = 1.0 / v
    if use is not None:
        w = np.where(use, w, 0.0)
    s0 = np.bincount(index, weights=w, minlength=n_classes)[index] - w
    s1 = np.bincount(index, weights=w * np.where(w > 0, x, 0.0), minlength=n_classes)[index] - w * np.where(w > 0, x, 0.0)
    ok = s0 > 1e-12 * np.maximum(w, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, s1 / s0, np.nan)
        var = np.where(ok, 1.0 / s0, np.nan)
    return mean, var


def reject_outliers(index: np.ndarray, n_classes: int, x: np.ndarray, v: np.ndarray, *, zmax: float,
                    use: np.ndarray | None = None, min_multiplicity: int = 3, max_cycles: int = 10) -> np.ndarray:
    """Observations kept after outlier rejection.

    Parameters
    ----------
    index, n_classes, x, v
        As for :func:`weighted_merge`.
    zmax : float
        Largest |δ| kept (δ in units of its standard deviation).
    use : ndarray of bool, optional
        Observations taking part (others stay excluded).
    min_multiplicity : int
        Only classes with at least this many observations are tested.
    max_cycles : int

    Returns
    -------
    ndarray of bool, shape (N,)
        True for observations kept.
    """
    keep = np.ones(len(x), dtype=bool) if use is None else np.asarray(use, dtype=bool).copy()
    if not np.isfinite(zmax) or zmax <= 0:
        return keep
    for _ in range(max_cycles):
        mu, vmu = leave_one_out(index, n_classes, x, v, keep)
        n = np.bincount(index, weights=keep.astype(np.float64), minlength=n_classes)[index]
        with np.errstate(invalid="ignore"):
            z = np.abs(x - mu) / np.sqrt(v + vmu)
        bad = keep & (n >= min_multiplicity) & np.isfinite(z) & (z > zmax)
        if not bad.any():
            break
        # only the worst observation of a class per cycle: one outlier drags the
        # leave-one-out means of all its equivalents
        worst = np.full(n_classes, -np.inf)
        np.maximum.at(worst, index[bad], z[bad])
        keep &= ~(bad & (z >= worst[index]))
    return keep


def wilson_outliers(x: np.ndarray, v: np.ndarray, d: np.ndarray, epsilon: np.ndarray, use: np.ndarray, *,
                    ratio: float = 40.0, n_bins: int = 20) -> np.ndarray:
    """Observations implausibly strong for the Wilson distribution of their shell.

    An observation is an outlier when ``x − 5·sqrt(v) > ratio · ε · Σ``, with
    Σ the mean of x/ε in its resolution bin estimated robustly as
    median/ln 2 (the median of an exponential distribution is ln 2 times
    its mean).  For an acentric reflection ``P(I > 40 ⟨I⟩) = e⁻⁴⁰``.

    Parameters
    ----------
    x, v : ndarray, shape (N,)
        Corrected intensities and their variances.
    d : ndarray, shape (N,)
        Resolution, Å.
    epsilon : ndarray, shape (N,)
        Symmetry enhancement factors.
    use : ndarray of bool, shape (N,)
        Observations taking part (the others are never outliers).
    ratio : float
        Threshold in units of the expected intensity (≤ 0: no rejection).
    n_bins : int

    Returns
    -------
    ndarray of bool, shape (N,)
        True for outliers.
    """
    out = np.zeros(len(x), dtype=bool)
    idx = np.nonzero(use)[0]
    if ratio <= 0 or len(idx) < 2 * n_bins:
        return out
    s2 = 1.0 / d[idx] ** 2
    edges = np.quantile(s2, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, s2, side="right") - 1, 0, n_bins - 1)
    y = x[idx] / epsilon[idx]
    sigma = np.empty(n_bins)
    for k in range(n_bins):
        yk = y[b == k]
        sigma[k] = max(float(np.median(yk)) / np.log(2.0), 0.0) if len(yk) else 0.0
    positive = sigma[sigma > 0]
    floor = float(np.median(positive)) * 1e-3 if len(positive) else 0.0
    sigma = np.maximum(sigma, floor)
    if not np.any(sigma > 0):
        return out
    out[idx] = x[idx] - 5.0 * np.sqrt(v[idx]) > ratio * epsilon[idx] * sigma[b]
    return out
