"""Indexing-ambiguity resolution (Brehm & Diederichs 2014, or against a reference).

Each shot's intensities are normalised by the mean intensity in their
resolution shell.  For every ambiguity operator ``M_k`` the Pearson
correlations ``r_ij^(k) = CC(shot i, shot j reindexed by M_k)`` over common
reflections are computed for all pairs at once with sparse products.  The
assignment ``a`` (one operator per shot) is then found by Brehm &
Diederichs's iterative algorithm: each shot in turn takes the operator that
maximises ``Σ_j r_ij^(table[a_i, a_j])``, sweeping until no shot changes,
from several random starts.  Shots beyond ``max_pairwise_shots`` (and all
shots in a final pass) are assigned by their correlation with the merged
intensities of the resolved shots.  With a reference, each shot takes the
operator that correlates best with the reference.

The overall choice among the equivalent settings is arbitrary without a
reference; the majority operator is made the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from stillshot.merge.symmetry import AmbiguityOperator, MergeSymmetry, coset_table

__all__ = ["AmbiguityReport", "resolve_ambiguity"]


@dataclass
class AmbiguityReport:
    """What ambiguity resolution chose.

    Attributes
    ----------
    operators : list of str
        The ambiguity operators (hkl triplets), identity first.
    method : str
        ``brehm_diederichs`` or ``reference``.
    choice : ndarray of int, shape (S,)
        Operator index applied to each shot (-1: shot had too little data and
        was left as indexed).
    margin : ndarray, shape (S,)
        Best minus second-best correlation score of each shot.
    counts : dict
        Shots per operator triplet.
    notes : list of str
    """

    operators: list
    method: str
    choice: np.ndarray
    margin: np.ndarray
    counts: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready summary (per-shot choices as triplets)."""
        return {
            "operators": list(self.operators),
            "method": self.method,
            "counts": dict(self.counts),
            "median_margin": float(np.nanmedian(self.margin)) if len(self.margin) else None,
            "per_shot": [self.operators[c] if c >= 0 else None for c in self.choice.tolist()],
            "notes": list(self.notes),
        }


def _normalised(symmetry: MergeSymmetry, hkl, d, intensity, n_bins: int = 10):
    """Intensities divided by the mean intensity of their resolution shell."""
    s2 = 1.0 / d**2
    edges = np.quantile(s2, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, s2, side="right") - 1, 0, n_bins - 1)
    mean = np.bincount(b, weights=intensity, minlength=n_bins) / np.maximum(np.bincount(b, minlength=n_bins), 1)
    mean = np.where(np.abs(mean) > 0, mean, 1.0)
    return intensity / mean[b]


def _pair_cc(rows, cols0, colsk, x, n_rows, n_cols, min_common):
    """Pearson CC between row i (columns cols0) and row j (columns colsk) over common columns."""
    one = np.ones_like(x)
    X0 = sp.csr_matrix((x, (rows, cols0)), shape=(n_rows, n_cols))
    B0 = sp.csr_matrix((one, (rows, cols0)), shape=(n_rows, n_cols))
    Q0 = sp.csr_matrix((x * x, (rows, cols0)), shape=(n_rows, n_cols))
    Xk = sp.csr_matrix((x, (rows, colsk)), shape=(n_rows, n_cols)).T.tocsc()
    Bk = sp.csr_matrix((one, (rows, colsk)), shape=(n_rows, n_cols)).T.tocsc()
    Qk = sp.csr_matrix((x * x, (rows, colsk)), shape=(n_rows, n_cols)).T.tocsc()
    n = (B0 @ Bk).toarray()
    sx = (X0 @ Bk).toarray()
    sy = (B0 @ Xk).toarray()
    sxx = (Q0 @ Bk).toarray()
    syy = (B0 @ Qk).toarray()
    sxy = (X0 @ Xk).toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = n * sxy - sx * sy
        den = np.sqrt(np.maximum(n * sxx - sx * sx, 0.0) * np.maximum(n * syy - sy * sy, 0.0))
        cc = np.where((n >= min_common) & (den > 0), cov / den, 0.0)
    np.fill_diagonal(cc, 0.0)
    return cc


def _bd_assign(R: np.ndarray, table: np.ndarray, rng: np.random.Generator, n_starts: int, max_sweeps: int = 100):
    """Brehm–Diederichs iterative assignment; returns (assignment, scores of the best start)."""
    K, S, _ = R.shape
    best = None
    for _ in range(n_starts):
        a = rng.integers(0, K, size=S)
        onehot = np.zeros((S, K))
        onehot[np.arange(S), a] = 1.0
        # score[i, c] = Σ_b Σ_j R[table[c, b], i, j] · [a_j == b]
        for _sweep in range(max_sweeps):
            changed = 0
            for i in rng.permutation(S):
                sc = np.array([sum(R[table[c, b], i] @ onehot[:, b] for b in range(K)) for c in range(K)])
                c = int(np.argmax(sc))
                if c != a[i]:
                    onehot[i, a[i]] = 0.0
                    onehot[i, c] = 1.0
                    a[i] = c
                    changed += 1
            if changed == 0:
                break
        scores = np.stack([sum(R[table[c, b]] @ onehot[:, b] for b in range(K)) for c in range(K)], axis=1)
        total = float(scores[np.arange(S), a].sum())
        if best is None or total > best[0]:
            best = (total, a.copy(), scores)
    return best[1], best[2]


def _cc_with_reference(shot, col_k, x, ref, S, min_common):
    """CC of each shot with a reference (per column), for one operator's columns."""
    y = ref[col_k]
    ok = np.isfinite(y) & np.isfinite(x)
    n = np.bincount(shot[ok], minlength=S).astype(np.float64)
    sx = np.bincount(shot[ok], weights=x[ok], minlength=S)
    sy = np.bincount(shot[ok], weights=y[ok], minlength=S)
    sxx = np.bincount(shot[ok], weights=x[ok] ** 2, minlength=S)
    syy = np.bincount(shot[ok], weights=y[ok] ** 2, minlength=S)
    sxy = np.bincount(shot[ok], weights=x[ok] * y[ok], minlength=S)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.sqrt(np.maximum(n * sxx - sx**2, 0) * np.maximum(n * syy - sy**2, 0))
        cc = np.where((n >= min_common) & (den > 0), (n * sxy - sx * sy) / den, np.nan)
    return cc


def resolve_ambiguity(symmetry: MergeSymmetry, operators: list[AmbiguityOperator], shot: np.ndarray,
                      hkl: np.ndarray, d: np.ndarray, intensity: np.ndarray, n_shots: int, *,
                      reference: tuple[np.ndarray, np.ndarray] | None = None, max_pairwise_shots: int = 1500,
                      n_starts: int = 3, min_common: int = 3, seed: int = 0) -> AmbiguityReport:
    """Choose one ambiguity operator per shot.

    Parameters
    ----------
    symmetry : MergeSymmetry
    operators : list of AmbiguityOperator
        From :func:`~stillshot.merge.symmetry.ambiguity_operators` (identity first).
    shot, hkl, d, intensity : ndarray
        Per observation: shot number, Miller index (as indexed), resolution
        (Å) and intensity (any consistent units).
    n_shots : int
    reference : (keys, intensities), optional
        Reference intensities by class key (sorted keys); resolves against
        them instead of between shots.
    max_pairwise_shots : int
        At most this many shots (the ones with most observations) enter the
        pairwise Brehm–Diederichs step; the others are assigned against the
        merged result.
    n_starts : int
        Random starts of the iterative assignment.
    min_common : int
        Fewest common reflections for a pairwise or reference correlation.
    seed : int

    Returns
    -------
    AmbiguityReport
    """
    K = len(operators)
    S = int(n_shots)
    rng = np.random.default_rng(seed)
    trip = [op.triplet for op in operators]
    choice = np.zeros(S, dtype=np.int64)
    margin = np.full(S, np.nan)
    if K == 1 or len(shot) == 0:
        return AmbiguityReport(trip, "none", choice, margin, {trip[0]: S})
    table = coset_table(operators, symmetry.rotations)
    x = _normalised(symmetry, hkl, d, intensity)
    keys_k = [symmetry.keys(op.apply(hkl)) for op in operators]
    universe = np.unique(np.concatenate(keys_k))
    cols = [np.searchsorted(universe, kk) for kk in keys_k]
    U = len(universe)
    notes = []

    def assign_against(ref_cols):
        ccs = np.stack([_cc_with_reference(shot, cols[k], x, ref_cols, S, min_common) for k in range(K)], axis=1)
        filled = np.where(np.isfinite(ccs), ccs, -np.inf)
        ch = np.argmax(filled, axis=1)
        srt = np.sort(filled, axis=1)
        mg = srt[:, -1] - srt[:, -2]
        ch = np.where(np.isfinite(srt[:, -1]), ch, -1)
        return ch, np.where(np.isfinite(mg), mg, np.nan)

    def merged_reference(ch):
        good = ch[shot] >= 0
        c = np.full(len(shot), -1)
        c[good] = np.take_along_axis(np.stack(cols, axis=1), ch[shot][good, None], axis=1)[:, 0] if good.any() else c[good]
        s1 = np.bincount(c[good], weights=x[good], minlength=U)
        n = np.bincount(c[good], minlength=U)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s1 / n, np.nan)

    if reference is not None:
        rkeys, rvals = reference
        pos = np.clip(np.searchsorted(rkeys, universe), 0, max(len(rkeys) - 1, 0))
        ref_cols = np.where((len(rkeys) > 0) & (rkeys[pos] == universe), rvals[pos], np.nan) if len(rkeys) else np.full(U, np.nan)
        choice, margin = assign_against(ref_cols)
        method = "reference"
    else:
        method = "brehm_diederichs"
        counts = np.bincount(shot, minlength=S)
        order = np.argsort(-counts, kind="stable")
        sub = np.sort(order[: min(S, max_pairwise_shots)])
        sub = sub[counts[sub] >= min_common]
        if len(sub) < 2:
            notes.append("too few shots with data for ambiguity resolution; left as indexed")
            return AmbiguityReport(trip, method, choice, margin, {trip[0]: S}, notes)
        pos = np.full(S, -1)
        pos[sub] = np.arange(len(sub))
        m = pos[shot] >= 0
        R = np.stack([_pair_cc(pos[shot][m], cols[0][m], cols[k][m], x[m], len(sub), U, min_common)
                      for k in range(K)])
        a_sub, _ = _bd_assign(R, table, rng, n_starts)
        ch = np.full(S, -1)
        ch[sub] = a_sub
        if len(sub) < S:
            notes.append(f"{len(sub)} shots resolved pairwise, {S - len(sub)} against their merge")
        # final pass: every shot against the merge of the others' current choices (twice)
        for _ in range(2):
            ref_cols = merged_reference(ch)
            new, margin = assign_against(ref_cols)
            ch = np.where(new >= 0, new, ch)
        choice = ch
        # make the majority operator the identity: relabel a -> table[majority, a]
        if (choice >= 0).any():
            maj = int(np.bincount(choice[choice >= 0], minlength=K).argmax())
            choice = np.where(choice >= 0, table[maj, np.clip(choice, 0, None)], -1)
    counts = {trip[k]: int((choice == k).sum()) for k in range(K)}
    if (choice < 0).any():
        counts["unresolved"] = int((choice < 0).sum())
    return AmbiguityReport(trip, method, choice, margin, counts, notes)
