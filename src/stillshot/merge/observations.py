"""Flat observation arrays for merging, built from integrated experiments and tables.

Merging works on one set of numpy arrays for the whole run (one row per
integrated reflection, one entry per shot) rather than on per-shot tables:
:func:`observations_from_integrated` flattens any number of
(:class:`~stillshot.models.ExperimentList`, :class:`~stillshot.table.ReflectionTable`)
pairs (one per process output directory) into an :class:`Observations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import gemmi
import numpy as np

from stillshot.models import ExperimentList
from stillshot.table import Flags, ReflectionTable

__all__ = ["Observations", "observations_from_integrated", "polarization_factor"]

#: stillshot's integration flags spots whose foreground crosses a panel edge with bit 27.
EDGE_FLAG = 1 << 27
#: Rows with any of these flags are not merged.
EXCLUDED_FLAGS = int(Flags.overloaded | Flags.overlapped_fg | Flags.foreground_includes_bad_pixels
                     | Flags.bad_for_scaling | Flags.failed_during_summation) | EDGE_FLAG


def polarization_factor(s1: np.ndarray, beam) -> np.ndarray:
    """Polarization factor P (0–1) of diffracted beams s1 (any length; rows), for a beam model.

    ``P = f·(1 − (ŝ1·e)²) + (1 − f)·(1 − (ŝ1·n')²)``, with e the electric
    vector (normal to the beam's polarization normal and the beam), n' the
    polarization normal and f the polarization fraction (Kahn 1982).
    """
    u = np.asarray(s1, dtype=np.float64)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    n = np.asarray(beam.polarization_normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    e = np.cross(n, beam.unit_s0)
    e = e / np.linalg.norm(e)
    f = float(beam.polarization_fraction)
    ce, cn = u @ e, u @ n
    return f * (1.0 - ce * ce) + (1.0 - f) * (1.0 - cn * cn)


@dataclass(eq=False)
class Observations:
    """Integrated observations of a run (N reflections on S shots).

    Attributes
    ----------
    hkl : ndarray of int32, shape (N, 3)
        Miller indices in the shot's indexing.
    shot : ndarray of int64, shape (N,)
        Shot (experiment) number, 0..S-1.
    intensity, variance : ndarray, shape (N,)
        Integrated (partial) intensity and its variance, photons and photons²,
        Lorentz-polarization (``lp``) and detector-efficiency (``qe``)
        corrections applied.
    d : ndarray, shape (N,)
        Resolution, Å.
    partiality : ndarray, shape (N,)
        Integration's partiality estimate; NaN where none was given.
    xy_px : ndarray, shape (N, 2)
        Predicted position (fast, slow), px; NaN where unknown.
    A : ndarray, shape (S, 3, 3)
        Setting matrices U·B, 1/Å.
    s0 : ndarray, shape (S, 3)
        Incident beam vectors, 1/Å.
    bandpass : ndarray, shape (S,)
        Spectrum FWHM Δλ/λ.
    domain_size_ang, half_mosaicity_deg : ndarray, shape (S,)
        Mosaic model of each crystal (Å, degrees); NaN where unknown.
    unit_cells : ndarray, shape (S, 6)
        Each crystal's cell, Å and degrees.
    space_groups : list of str
        Each crystal's space group (Hermann–Mauguin).
    labels : list of str
        A name per shot (image path:frame, or source and experiment number).
    """

    hkl: np.ndarray
    shot: np.ndarray
    intensity: np.ndarray
    variance: np.ndarray
    d: np.ndarray
    partiality: np.ndarray
    xy_px: np.ndarray
    A: np.ndarray
    s0: np.ndarray
    bandpass: np.ndarray
    domain_size_ang: np.ndarray
    half_mosaicity_deg: np.ndarray
    unit_cells: np.ndarray
    space_groups: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    @property
    def n_obs(self) -> int:
        """Number of observations N."""
        return len(self.shot)

    @property
    def n_shots(self) -> int:
        """Number of shots S."""
        return len(self.A)

    @property
    def wavelength(self) -> np.ndarray:
        """Wavelength of each shot, Å."""
        return 1.0 / np.linalg.norm(self.s0, axis=1)

    def select(self, mask: np.ndarray) -> "Observations":
        """The observations where ``mask`` (bool or index array over N) holds; shots are kept."""
        return replace(self, hkl=self.hkl[mask], shot=self.shot[mask], intensity=self.intensity[mask],
                       variance=self.variance[mask], d=self.d[mask], partiality=self.partiality[mask],
                       xy_px=self.xy_px[mask])

    def reindexed(self, matrices: np.ndarray) -> "Observations":
        """Observations with each shot reindexed by its integer matrix ``h' = M·h``.

        Parameters
        ----------
        matrices : ndarray of int, shape (S, 3, 3)

        Returns
        -------
        Observations
            hkl and A changed (``A' = A·M⁻¹``, so every spot is predicted as before).
        """
        M = np.asarray(matrices, dtype=np.int64)
        hkl = np.einsum("nij,nj->ni", M[self.shot], self.hkl.astype(np.int64)).astype(np.int32)
        A = np.einsum("sij,sjk->sik", self.A, np.linalg.inv(M.astype(np.float64)))
        return replace(self, hkl=hkl, A=A)


def _rows_per_experiment(table: ReflectionTable, experiments: ExperimentList) -> np.ndarray:
    """Experiment number (in ``experiments``) of each row; -1 where none matches."""
    ids = np.asarray(table["id"], dtype=np.int64) if "id" in table else np.zeros(len(table), dtype=np.int64)
    out = np.full(len(ids), -1, dtype=np.int64)
    idents = getattr(table, "identifiers", None) or {}
    pos = {e.identifier: i for i, e in enumerate(experiments)}
    if idents and all(v in pos for v in idents.values()):
        for key, ident in idents.items():
            out[ids == int(key)] = pos[ident]
    else:
        ok = (ids >= 0) & (ids < len(experiments))
        out[ok] = ids[ok]
    return out


def observations_from_integrated(pairs: Iterable[tuple[ExperimentList, ReflectionTable]], *,
                                 intensity: str = "auto", d_min: float | None = None,
                                 d_max: float | None = None, sources: Iterable[str] | None = None,
                                 polarization: bool = True) -> Observations:
    """Flatten integrated (experiments, reflections) pairs into one :class:`Observations`.

    Parameters
    ----------
    pairs : iterable of (ExperimentList, ReflectionTable)
        Integrated experiments with their reflections (DIALS columns
        ``miller_index``, ``id``, ``d``, ``intensity.sum.value/variance``,
        optionally ``intensity.prf.value/variance``, ``partiality``, ``lp``,
        ``qe``, ``xyzcal.px``, ``flags``).
    intensity : {"auto", "sum", "prf"}
        Which intensities: ``auto`` takes profile-fitted ones on rows flagged
        ``integrated_prf`` and summation ones elsewhere.
    d_min, d_max : float, optional
        Resolution limits, Å.
    sources : iterable of str, optional
        A name per pair for the shot labels.
    polarization : bool
        Tables without an ``lp`` column (stillshot's integration) are
        divided by the polarization factor computed from ``s1`` and the
        experiment's beam; tables with ``lp`` are multiplied by it (DIALS).

    Returns
    -------
    Observations
        Only rows that are integrated, unflagged, with positive variance and
        finite values; only experiments with a crystal.
    """
    if intensity not in ("auto", "sum", "prf"):
        raise ValueError(f"intensity must be auto, sum or prf, got {intensity!r}")
    cols: dict[str, list] = {k: [] for k in ("hkl", "shot", "I", "V", "d", "p", "xy")}
    shots: dict[str, list] = {k: [] for k in ("A", "s0", "bp", "dom", "eta", "cell", "sg", "label")}
    source_names = list(sources) if sources is not None else None
    for n_pair, (experiments, table) in enumerate(pairs):
        src = source_names[n_pair] if source_names is not None else f"input {n_pair}"
        row_exp = _rows_per_experiment(table, experiments) if len(table) else np.zeros(0, dtype=np.int64)
        exp_to_shot = np.full(len(experiments), -1, dtype=np.int64)
        for i, e in enumerate(experiments):
            if e.crystal is None:
                continue
            exp_to_shot[i] = len(shots["A"])
            c = e.crystal
            shots["A"].append(np.asarray(c.A, dtype=np.float64))
            shots["s0"].append(np.asarray(e.beam.s0, dtype=np.float64))
            shots["bp"].append(float(e.beam.bandwidth or 0.0))
            shots["dom"].append(float(c.domain_size_ang) if c.domain_size_ang else np.nan)
            shots["eta"].append(float(c.half_mosaicity_deg) if c.half_mosaicity_deg is not None else np.nan)
            shots["cell"].append(tuple(c.cell_parameters))
            shots["sg"].append(c.space_group.xhm())
            shots["label"].append(e.image.label() if e.image is not None else f"{src} experiment {i}")
        if len(table) == 0:
            continue
        for name in ("miller_index", "intensity.sum.value", "intensity.sum.variance"):
            if name not in table and not (name.startswith("intensity.sum") and "intensity.prf.value" in table):
                raise ValueError(f"{src}: reflection table lacks the {name} column")
        n = len(table)
        flags = np.asarray(table["flags"], dtype=np.int64) if "flags" in table else np.full(n, int(Flags.integrated_sum))
        has_sum = "intensity.sum.value" in table
        has_prf = "intensity.prf.value" in table and "intensity.prf.variance" in table
        use_prf = np.zeros(n, dtype=bool)
        if intensity == "prf":
            if not has_prf:
                raise ValueError(f"{src}: intensity=prf but no intensity.prf columns")
            use_prf[:] = True
            ok = (flags & int(Flags.integrated_prf)) != 0
        else:
            ok = (flags & int(Flags.integrated_sum)) != 0 if has_sum else np.zeros(n, dtype=bool)
            if intensity == "auto" and has_prf:
                use_prf = (flags & int(Flags.integrated_prf)) != 0
                ok |= use_prf
        ok &= (flags & EXCLUDED_FLAGS) == 0
        I = np.full(n, np.nan)
        V = np.full(n, np.nan)
        if has_sum:
            I[:] = table["intensity.sum.value"]
            V[:] = table["intensity.sum.variance"]
        if has_prf:
            I = np.where(use_prf, table["intensity.prf.value"], I)
            V = np.where(use_prf, table["intensity.prf.variance"], V)
        if "lp" in table:
            lp = np.asarray(table["lp"], dtype=np.float64)
            I, V = I * lp, V * lp**2
        elif polarization and "s1" in table and len(experiments):
            s1 = np.asarray(table["s1"], dtype=np.float64)
            pol = np.ones(n)
            for i in np.unique(row_exp[row_exp >= 0]):
                sel = row_exp == i
                pol[sel] = polarization_factor(s1[sel], experiments[int(i)].beam)
            pol = np.where(pol > 0.05, pol, np.nan)
            I, V = I / pol, V / pol**2
        if "qe" in table:
            qe = np.asarray(table["qe"], dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                I, V = I / qe, V / qe**2
        shot = exp_to_shot[np.clip(row_exp, 0, None)] if len(experiments) else np.full(n, -1)
        shot = np.where(row_exp >= 0, shot, -1)
        hkl = np.asarray(table["miller_index"], dtype=np.int32).reshape(-1, 3)
        if "d" in table:
            d = np.asarray(table["d"], dtype=np.float64)
        else:
            d = np.full(n, np.nan)
            sel = shot >= 0
            A_all = np.array(shots["A"])
            if sel.any():
                r = np.einsum("nij,nj->ni", A_all[shot[sel]], hkl[sel].astype(np.float64))
                d[sel] = 1.0 / np.linalg.norm(r, axis=1)
        ok &= (shot >= 0) & np.isfinite(I) & np.isfinite(V) & (V > 0) & np.isfinite(d) & (d > 0)
        ok &= np.any(hkl != 0, axis=1)
        if d_min is not None:
            ok &= d >= float(d_min)
        if d_max is not None:
            ok &= d <= float(d_max)
        p = np.asarray(table["partiality"], dtype=np.float64) if "partiality" in table else np.full(n, np.nan)
        xy = np.asarray(table["xyzcal.px"], dtype=np.float64)[:, :2] if "xyzcal.px" in table else np.full((n, 2), np.nan)
        cols["hkl"].append(hkl[ok])
        cols["shot"].append(shot[ok])
        cols["I"].append(I[ok])
        cols["V"].append(V[ok])
        cols["d"].append(d[ok])
        cols["p"].append(p[ok])
        cols["xy"].append(xy[ok])

    def cat(key, shape, dtype):
        return np.concatenate(cols[key]).astype(dtype) if cols[key] else np.zeros(shape, dtype=dtype)

    S = len(shots["A"])
    return Observations(
        hkl=cat("hkl", (0, 3), np.int32), shot=cat("shot", (0,), np.int64), intensity=cat("I", (0,), np.float64),
        variance=cat("V", (0,), np.float64), d=cat("d", (0,), np.float64), partiality=cat("p", (0,), np.float64),
        xy_px=cat("xy", (0, 2), np.float64),
        A=np.array(shots["A"]).reshape(S, 3, 3), s0=np.array(shots["s0"]).reshape(S, 3),
        bandpass=np.array(shots["bp"], dtype=np.float64), domain_size_ang=np.array(shots["dom"], dtype=np.float64),
        half_mosaicity_deg=np.array(shots["eta"], dtype=np.float64),
        unit_cells=np.array(shots["cell"], dtype=np.float64).reshape(S, 6),
        space_groups=list(shots["sg"]), labels=list(shots["label"]),
    )


def median_cell(cells: np.ndarray) -> gemmi.UnitCell:
    """The median of per-shot cells (Å, degrees) as a gemmi cell."""
    return gemmi.UnitCell(*np.median(np.asarray(cells, dtype=np.float64).reshape(-1, 6), axis=0))
