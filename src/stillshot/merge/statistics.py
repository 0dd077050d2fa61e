"""Merging statistics per resolution shell.

Shells hold equal numbers of possible unique reflections (equal volumes of
reciprocal space), between the data's resolution limits.  Per shell:
completeness, multiplicity, ⟨I⟩, ⟨I/σ⟩, CC1/2 (Pearson CC between the two
random half-sets of shots), CC* = sqrt(2·CC1/2 / (1 + CC1/2)) (Karplus &
Diederichs 2012) and Rsplit = Σ|I₁ − I₂| / (√2 · ½Σ(I₁ + I₂)) (White 2012).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["MergingStatistics", "ShellStatistics", "cc_star", "merging_statistics", "pearson"]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of finite pairs (NaN with fewer than 3)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    xs, ys = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    den = math.sqrt(float((xs * xs).sum() * (ys * ys).sum()))
    return float((xs * ys).sum() / den) if den > 0 else float("nan")


def cc_star(cc_half: float) -> float:
    """CC* = sqrt(2·CC1/2 / (1 + CC1/2)); NaN for CC1/2 ≤ 0."""
    if not np.isfinite(cc_half) or cc_half <= 0:
        return float("nan")
    return math.sqrt(2.0 * cc_half / (1.0 + cc_half))


def _r_split(i1: np.ndarray, i2: np.ndarray) -> float:
    ok = np.isfinite(i1) & np.isfinite(i2)
    den = 0.5 * float((i1[ok] + i2[ok]).sum())
    if ok.sum() == 0 or den <= 0:
        return float("nan")
    return float(np.abs(i1[ok] - i2[ok]).sum() / (math.sqrt(2.0) * den))


@dataclass
class ShellStatistics:
    """Statistics of one resolution shell (or overall).

    Attributes
    ----------
    d_max, d_min : float
        Shell limits, Å.
    n_possible, n_unique, n_obs : int
        Possible unique reflections, measured unique reflections, observations merged.
    completeness : float
        n_unique / n_possible (0–1).
    multiplicity : float
        n_obs / n_unique.
    mean_intensity, mean_i_over_sigma : float
        ⟨I⟩ (merged units) and ⟨I/σ(I)⟩ of the merged reflections.
    cc_half, cc_star, r_split : float
        Half-set statistics (NaN where undefined).
    n_half_pairs : int
        Reflections measured in both half-sets.
    """

    d_max: float
    d_min: float
    n_possible: int
    n_unique: int
    n_obs: int
    completeness: float
    multiplicity: float
    mean_intensity: float
    mean_i_over_sigma: float
    cc_half: float
    cc_star: float
    r_split: float
    n_half_pairs: int


@dataclass
class MergingStatistics:
    """Per-shell and overall merging statistics."""

    shells: list
    overall: ShellStatistics
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN written as None)."""
        def clean(d):
            return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
        out = {"shells": [clean(asdict(s)) for s in self.shells], "overall": clean(asdict(self.overall))}
        out.update(self.extra)
        return out

    def format_table(self) -> str:
        """A fixed-width text table, one row per shell and an overall row."""
        head = (f"{'d_max':>7} {'d_min':>6} {'#obs':>8} {'#uniq':>7} {'compl':>6} {'mult':>6} "
                f"{'<I>':>9} {'<I/s>':>6} {'CC1/2':>6} {'CC*':>6} {'Rsplit':>7}")
        lines = [head, "-" * len(head)]

        def f(v, w, p):
            return f"{v:>{w}.{p}f}" if isinstance(v, float) and math.isfinite(v) else f"{'-':>{w}}"

        for s in self.shells + [self.overall]:
            if s is self.overall:
                lines.append("-" * len(head))
            lines.append(f"{f(s.d_max, 7, 2)} {f(s.d_min, 6, 2)} {s.n_obs:>8d} {s.n_unique:>7d} "
                         f"{f(100 * s.completeness, 6, 1)} {f(s.multiplicity, 6, 1)} {f(s.mean_intensity, 9, 1)} "
                         f"{f(s.mean_i_over_sigma, 6, 2)} {f(s.cc_half, 6, 3)} {f(s.cc_star, 6, 3)} "
                         f"{f(s.r_split, 7, 3)}")
        return "\n".join(lines)


def shell_edges(d_possible: np.ndarray, n_bins: int) -> np.ndarray:
    """Shell boundaries in 1/d² (ascending) with equal numbers of possible reflections."""
    s2 = np.sort(1.0 / np.asarray(d_possible, dtype=np.float64) ** 2)
    n_bins = max(1, min(int(n_bins), len(s2)))
    edges = np.quantile(s2, np.linspace(0, 1, n_bins + 1))
    edges[0] = s2[0] * (1 - 1e-9)
    edges[-1] = s2[-1] * (1 + 1e-9)
    return edges


def _shell(d_lo, d_hi, n_possible, I, sig, n, i1, i2) -> ShellStatistics:
    meas = np.isfinite(I) & (n > 0)
    n_unique = int(meas.sum())
    n_obs = int(n[meas].sum())
    both = np.isfinite(i1) & np.isfinite(i2)
    cc = pearson(i1[both], i2[both])
    with np.errstate(divide="ignore", invalid="ignore"):
        ios = I[meas] / sig[meas]
    return ShellStatistics(
        d_max=float(d_lo), d_min=float(d_hi), n_possible=int(n_possible), n_unique=n_unique, n_obs=n_obs,
        completeness=n_unique / n_possible if n_possible else float("nan"),
        multiplicity=n_obs / n_unique if n_unique else float("nan"),
        mean_intensity=float(I[meas].mean()) if n_unique else float("nan"),
        mean_i_over_sigma=float(np.nanmean(ios)) if n_unique else float("nan"),
        cc_half=cc, cc_star=cc_star(cc), r_split=_r_split(i1[both], i2[both]), n_half_pairs=int(both.sum()),
    )


def merging_statistics(d: np.ndarray, intensity: np.ndarray, sigma: np.ndarray, n_obs: np.ndarray,
                       half1: np.ndarray, half2: np.ndarray, d_possible: np.ndarray, *,
                       n_bins: int = 10) -> MergingStatistics:
    """Statistics in resolution shells.

    Parameters
    ----------
    d : ndarray, shape (U,)
        Resolution (Å) of each merged reflection.
    intensity, sigma : ndarray, shape (U,)
        Merged intensities and σ (NaN: unmeasured).
    n_obs : ndarray of int, shape (U,)
        Observations merged into each reflection.
    half1, half2 : ndarray, shape (U,)
        Half-set intensities (NaN where a half has none).
    d_possible : ndarray
        Resolution (Å) of every possible unique reflection within the limits.
    n_bins : int

    Returns
    -------
    MergingStatistics
    """
    edges = shell_edges(d_possible, n_bins)
    s2 = 1.0 / d**2
    s2p = 1.0 / np.asarray(d_possible) ** 2
    shells = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (s2 >= lo) & (s2 < hi)
        n_possible = int(((s2p >= lo) & (s2p < hi)).sum())
        shells.append(_shell(1 / math.sqrt(lo), 1 / math.sqrt(hi), n_possible, intensity[sel], sigma[sel],
                             n_obs[sel], half1[sel], half2[sel]))
    inside = (s2 >= edges[0]) & (s2 < edges[-1])
    overall = _shell(1 / math.sqrt(edges[0]), 1 / math.sqrt(edges[-1]), len(d_possible), intensity[inside],
                     sigma[inside], n_obs[inside], half1[inside], half2[inside])
    return MergingStatistics(shells, overall)
