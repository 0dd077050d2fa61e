"""Loading a processing directory and the numbers the report plots.

:func:`load_run` reads what ``stillshot process`` (or the single-step commands)
wrote into a directory; every file is optional and a file that cannot be read
becomes a note on the report instead of an error.  The other functions are
pure: arrays and models in, arrays out.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stillshot.models import Detector, ExperimentList
from stillshot.table import Flags, ReflectionTable

__all__ = [
    "MergingTable",
    "RunData",
    "STATUS_COLOURS",
    "auto_window",
    "load_run",
    "merging_table",
    "panel_residuals",
    "rolling_fraction",
    "shot_key",
    "shot_resolution",
    "tile_residuals",
    "timing_matrix",
    "split_total",
]

#: Shot statuses (``stillshot.pipeline.result.STATUSES``) and their plot colours.
STATUS_COLOURS = {
    "unreadable": "#7f7f7f",
    "failed": "#d62728",
    "not_hit": "#c7c7c7",
    "not_indexed": "#ff7f0e",
    "indexed": "#2ca02c",
    "integrated": "#1a7f37",
}
_HIT = ("not_indexed", "indexed", "integrated")
_INDEXED = ("indexed", "integrated")


def shot_key(path: str | None, frame: int | None) -> tuple[str, int]:
    """The key matching a summary.json entry to an experiment: (normalised path, frame).

    Single-image files (frame None) count as frame 0.
    """
    return (os.path.normpath(str(path or "")), int(frame or 0))


@dataclass
class MergingTable:
    """Merging statistics per resolution shell, whatever the key names in the file.

    Attributes
    ----------
    d_max, d_min : ndarray
        Shell limits, Å (NaN where unknown).
    columns : dict of str to ndarray
        Per-shell values under canonical names: ``completeness`` (percent),
        ``multiplicity``, ``i_over_sigma``, ``cc_half``, ``cc_star``,
        ``r_split``, ``n_obs``, ``n_unique``; only those found.
    overall : dict
        The overall row under the same canonical names (floats; may be empty).
    extra : dict
        Everything else in the file (space group, cell, shot counts ...).
    """

    d_max: np.ndarray
    d_min: np.ndarray
    columns: dict
    overall: dict
    extra: dict = field(default_factory=dict)

    @property
    def n_shells(self) -> int:
        """Number of resolution shells."""
        return len(self.d_min)


#: Canonical merging-statistics name -> accepted key names (compared lower-case, with
#: spaces, dashes, slashes and dots removed).
_MERGE_KEYS = {
    "d_max": ("d_max", "dmax", "d_low", "dlow", "low_resolution", "resolution_low", "d_max_ang"),
    "d_min": ("d_min", "dmin", "d_high", "dhigh", "high_resolution", "resolution_high", "d_min_ang",
              "resolution", "d"),
    "completeness": ("completeness", "completeness_percent", "completeness_pct", "comp", "completeness%"),
    "multiplicity": ("multiplicity", "redundancy", "mean_redundancy", "mean_multiplicity", "mult"),
    "i_over_sigma": ("mean_i_over_sigma", "i_over_sigma", "i_over_sigi", "isigi", "mean_isigi",
                     "i_sigma", "isigma", "mean_i_over_sigi", "snr", "i/sigma", "i/sig(i)", "i/σ"),
    "cc_half": ("cc_half", "cchalf", "cc_1_2", "cc12", "cc1/2", "cc_one_half", "cc_1/2"),
    "cc_star": ("cc_star", "ccstar", "cc*"),
    "r_split": ("r_split", "rsplit"),
    "n_obs": ("n_obs", "nobs", "n_observations", "observations", "n_measured"),
    "n_unique": ("n_unique", "nunique", "unique", "n_refl", "n_reflections"),
}


def _canon(key: str) -> str:
    return "".join(ch for ch in key.lower() if ch not in " -_./()") 


_MERGE_LOOKUP = {_canon(alias): name for name, aliases in _MERGE_KEYS.items() for alias in aliases}


def _number(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _canonical_row(row: dict) -> dict:
    out = {}
    for key, value in row.items():
        name = _MERGE_LOOKUP.get(_canon(str(key)))
        if name is not None and name not in out:
            out[name] = _number(value)
    return out


_SHELL_KEYS = ("shells", "bins", "resolution_shells", "per_shell", "shell", "binned")


def _shell_holder(d: dict, depth: int = 0) -> dict | None:
    """The (possibly nested) dict that holds the per-shell statistics, or None."""
    if any(k in d for k in _SHELL_KEYS):
        return d
    if depth >= 3:
        return None
    for key in ("statistics", "merging_statistics", "merging_stats", "stats", "merging"):
        if isinstance(d.get(key), dict):
            found = _shell_holder(d[key], depth + 1)
            if found is not None:
                return found
    for value in d.values():
        if isinstance(value, dict):
            found = _shell_holder(value, depth + 1)
            if found is not None:
                return found
    return None


def merging_table(stats: dict) -> MergingTable:
    """Per-shell merging statistics from a merging_stats.json dict.

    Accepts a list of shell dicts under ``shells`` / ``bins`` /
    ``resolution_shells`` / ``per_shell`` (or a dict of per-shell lists there,
    or at the top level), at the top level or nested (``stillshot merge``
    writes ``{"statistics": {"shells", "overall"}, "summary": ...}``), and an
    ``overall`` dict beside them, with any of the common key
    names (``cc_half``, ``CC1/2``, ``cc12`` ...).  Completeness given as a
    fraction (all values ≤ 1) is converted to percent; shells are sorted from
    low to high resolution.

    Parameters
    ----------
    stats : dict

    Returns
    -------
    MergingTable

    Raises
    ------
    ValueError
        When no per-shell statistics with resolution limits are found.
    """
    if not isinstance(stats, dict):
        raise ValueError("merging statistics must be a JSON object")
    top = stats
    stats = _shell_holder(stats) or stats
    shells = None
    used = set()
    for key in _SHELL_KEYS:
        if key in stats:
            shells, used = stats[key], {key}
            break
    if shells is None:
        shells = stats
    if isinstance(shells, dict):  # columns of lists
        lists = {k: v for k, v in shells.items() if isinstance(v, list)}
        n = max((len(v) for v in lists.values()), default=0)
        rows = [{k: (v[i] if i < len(v) else None) for k, v in lists.items()} for i in range(n)]
        if shells is stats:
            used |= set(lists)
    elif isinstance(shells, list):
        rows = [r for r in shells if isinstance(r, dict)]
    else:
        raise ValueError("merging statistics: per-shell statistics are neither a list nor a table")
    rows = [_canonical_row(r) for r in rows]
    if not rows or not any("d_min" in r for r in rows):
        raise ValueError("merging statistics hold no per-shell resolution (d_min) values")
    names = [k for k in _MERGE_KEYS if k not in ("d_min", "d_max") and any(k in r for r in rows)]
    d_min = np.array([r.get("d_min", np.nan) for r in rows], dtype=np.float64)
    d_max = np.array([r.get("d_max", np.nan) for r in rows], dtype=np.float64)
    columns = {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in names}
    overall = _canonical_row(stats.get("overall", {}) if isinstance(stats.get("overall"), dict) else {})
    used.add("overall")
    comp = columns.get("completeness")
    if comp is not None and np.nanmax(np.append(comp, 0.0)) <= 1.0 + 1e-9:
        columns["completeness"] = comp * 100.0
        if "completeness" in overall:
            overall["completeness"] *= 100.0
    order = np.argsort(-np.where(np.isfinite(d_min), d_min, -np.inf), kind="stable")
    extra = {k: v for k, v in stats.items() if k not in used}
    if stats is not top:  # e.g. stillshot merge: {"statistics": {...}, "summary": {...}, ...}
        for key, value in top.items():
            if isinstance(value, dict) and value is not stats:
                extra.update({k: v for k, v in value.items() if k not in extra})
    return MergingTable(d_max[order], d_min[order], {k: v[order] for k, v in columns.items()}, overall, extra)


@dataclass
class RunData:
    """What a processing directory holds (every part optional).

    Attributes
    ----------
    out_dir : Path
    shots : list of dict
        summary.json shot entries in run order (built from the experiment files
        when summary.json is absent).
    totals : dict
        summary.json totals.
    parameters : dict
        summary.json parameters.
    imported, indexed, integrated : ExperimentList or None
    strong, indexed_refl, integrated_refl : ReflectionTable or None
    merging : MergingTable or None
    merging_raw : dict or None
        merging_stats.json as read.
    notes : list of str
        Files that could not be read, and why.
    """

    out_dir: Path
    shots: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    imported: ExperimentList | None = None
    strong: ReflectionTable | None = None
    indexed: ExperimentList | None = None
    indexed_refl: ReflectionTable | None = None
    integrated: ExperimentList | None = None
    integrated_refl: ReflectionTable | None = None
    merging: MergingTable | None = None
    merging_raw: dict | None = None
    notes: list = field(default_factory=list)

    # -- per-shot arrays ------------------------------------------------------------
    @property
    def n_shots(self) -> int:
        """Number of shots in the run."""
        return len(self.shots)

    def statuses(self) -> np.ndarray:
        """Status string per shot."""
        return np.array([str(s.get("status", "")) for s in self.shots], dtype=object)

    def is_hit(self) -> np.ndarray:
        """True per shot that passed the hit finder."""
        return np.array([s.get("status") in _HIT for s in self.shots], dtype=bool)

    def is_indexed(self) -> np.ndarray:
        """True per shot with at least one lattice."""
        return np.array([s.get("status") in _INDEXED for s in self.shots], dtype=bool)

    def column(self, name: str) -> np.ndarray:
        """A numeric per-shot summary value (NaN where missing)."""
        return np.array([_number(s.get(name)) if s.get(name) is not None else np.nan for s in self.shots])

    def shot_index(self) -> dict:
        """:func:`shot_key` -> shot number, for matching experiments to shots."""
        index: dict = {}
        for i, s in enumerate(self.shots):
            index.setdefault(shot_key(s.get("file"), s.get("frame")), i)
        by_name: dict = {}
        for (path, frame), i in index.items():
            by_name.setdefault((os.path.basename(path), frame), i)
        return {"path": index, "name": by_name}

    def shot_of(self, experiments: ExperimentList | None) -> np.ndarray:
        """Shot number of each experiment (-1 where it matches none)."""
        if experiments is None:
            return np.zeros(0, dtype=np.int64)
        idx = self.shot_index()
        out = np.full(len(experiments), -1, dtype=np.int64)
        for k, e in enumerate(experiments):
            if e.image is None:
                continue
            key = shot_key(e.image.path, e.image.frame)
            i = idx["path"].get(key)
            if i is None:
                i = idx["name"].get((os.path.basename(key[0]), key[1]))
            if i is not None:
                out[k] = i
        return out

    def unit_cells(self) -> np.ndarray:
        """(a, b, c, α, β, γ) per lattice, shape (n, 6): from the indexed crystals,
        else from summary.json."""
        if self.indexed is not None and len(self.indexed):
            cells = [e.crystal.cell_parameters for e in self.indexed if e.crystal is not None]
            if cells:
                return np.array(cells, dtype=np.float64)
        cells = [s["unit_cell"] for s in self.shots if s.get("unit_cell") and len(s["unit_cell"]) == 6]
        return np.array(cells, dtype=np.float64).reshape(-1, 6)

    def indexed_spots(self) -> tuple[ExperimentList | None, ReflectionTable | None]:
        """The indexed experiments and their indexed spots.

        indexed.expt/.refl where present; else the reflections of
        integrated.refl flagged ``indexed`` (DIALS keeps them there), with
        integrated.expt (or indexed.expt).
        """
        if self.indexed is not None and self.indexed_refl is not None:
            return self.indexed, self.indexed_refl
        table = self.integrated_refl
        experiments = self.integrated if self.integrated is not None else self.indexed
        if table is None or experiments is None or "flags" not in table:
            return experiments, None
        sel = table.get_flags(Flags.indexed)
        return experiments, (table.select(sel) if sel.any() else None)

    def detector(self) -> Detector | None:
        """The run's (first) detector: refined (indexed) if there is one, else imported."""
        for el in (self.indexed, self.integrated, self.imported):
            if el is not None and el.detectors():
                return el.detectors()[0]
        return None


def _read_json(path: Path, notes: list) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: not readable ({exc})")
        return None


def _read_expt(path: Path, notes: list) -> ExperimentList | None:
    if not path.is_file():
        return None
    try:
        return ExperimentList.from_file(path)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: not readable ({exc})")
        return None


def _read_refl(path: Path, notes: list) -> ReflectionTable | None:
    if not path.is_file():
        return None
    try:
        return ReflectionTable.from_file(path)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: not readable ({exc})")
        return None


def _shots_from_experiments(run: RunData) -> list:
    """summary.json-like shot entries from imported/indexed files (no summary.json)."""
    base = run.imported if run.imported is not None else run.indexed
    if base is None:
        return []
    shots, seen = [], {}
    for e in base:
        if e.image is None:
            continue
        key = shot_key(e.image.path, e.image.frame)
        if key in seen:
            continue
        seen[key] = len(shots)
        shots.append({"file": e.image.path, "frame": e.image.frame, "status": "not_indexed" if run.indexed
                      is not None or run.integrated is not None else "not_hit", "reason": "", "n_spots": 0, "n_indexed": 0,
                      "unit_cell": None, "timings": {}})
    if run.strong is not None and "id" in run.strong and run.imported is not None:
        counts = np.bincount(run.strong["id"].astype(np.int64), minlength=len(run.imported))
        for k, e in enumerate(run.imported):
            if e.image is not None and k < len(counts):
                shots[seen[shot_key(e.image.path, e.image.frame)]]["n_spots"] = int(counts[k])
    experiments, table = run.indexed_spots()
    if experiments is not None:
        shot = [seen.get(shot_key(e.image.path, e.image.frame), -1) if e.image else -1 for e in experiments]
        counts = (np.bincount(table["id"].astype(np.int64), minlength=len(experiments))
                  if table is not None and "id" in table else np.zeros(len(experiments)))
        for k, (i, e) in enumerate(zip(shot, experiments)):
            if i < 0:
                continue
            s = shots[i]
            s["status"] = "indexed"
            s["n_indexed"] += int(counts[k]) if k < len(counts) else 0
            if s["unit_cell"] is None and e.crystal is not None:
                s["unit_cell"] = list(e.crystal.cell_parameters)
    return shots


def load_run(out_dir: str | os.PathLike) -> RunData:
    """Read a processing directory.

    Reads summary.json, imported.expt, strong.refl, indexed.expt/.refl,
    integrated.expt/.refl and merging_stats.json where present.

    Parameters
    ----------
    out_dir : str or PathLike

    Returns
    -------
    RunData

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` is not a directory.
    """
    d = Path(out_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such directory")
    run = RunData(out_dir=d)
    notes = run.notes
    summary = _read_json(d / "summary.json", notes)
    run.imported = _read_expt(d / "imported.expt", notes)
    run.strong = _read_refl(d / "strong.refl", notes)
    run.indexed = _read_expt(d / "indexed.expt", notes)
    run.indexed_refl = _read_refl(d / "indexed.refl", notes)
    run.integrated = _read_expt(d / "integrated.expt", notes)
    run.integrated_refl = _read_refl(d / "integrated.refl", notes)
    if summary is not None and isinstance(summary.get("shots"), list):
        run.shots = [s for s in summary["shots"] if isinstance(s, dict)]
        run.totals = summary.get("totals") or {}
        run.parameters = summary.get("parameters") or {}
    else:
        if summary is not None:
            notes.append("summary.json: holds no 'shots' list")
        run.shots = _shots_from_experiments(run)
    raw = _read_json(d / "merging_stats.json", notes)
    if raw is not None:
        run.merging_raw = raw
        try:
            run.merging = merging_table(raw)
        except ValueError as exc:
            notes.append(f"merging_stats.json: {exc}")
    return run


# -- pure computations ------------------------------------------------------------------
def auto_window(n_shots: int) -> int:
    """Default rolling window: about a twentieth of the run, 5 to 500 shots."""
    return int(min(500, max(5, round(n_shots / 20))))


def rolling_fraction(flags: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean of boolean flags (shorter windows at the ends).

    Parameters
    ----------
    flags : ndarray of bool, shape (n,)
    window : int
        Shots per window (≥ 1).

    Returns
    -------
    ndarray of float, shape (n,)
        Fraction of True in the window around each shot.
    """
    x = np.asarray(flags, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x
    w = int(max(1, min(window, n)))
    c = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.clip(np.arange(n) - (w - 1) // 2, 0, n)
    hi = np.clip(lo + w, 0, n)
    lo = np.clip(hi - w, 0, n)
    return (c[hi] - c[lo]) / (hi - lo)


def _usable_residual_rows(table: ReflectionTable) -> np.ndarray:
    n = len(table)
    if n == 0 or "xyzobs.px.value" not in table or "xyzcal.px" not in table:
        return np.zeros(n, dtype=bool)
    obs = table["xyzobs.px.value"][:, :2]
    cal = table["xyzcal.px"][:, :2]
    ok = np.all(np.isfinite(obs), axis=1) & np.all(np.isfinite(cal), axis=1)
    ok &= ~np.all(cal == 0.0, axis=1) & ~np.all(obs == 0.0, axis=1)
    if "miller_index" in table:
        ok &= np.any(table["miller_index"] != 0, axis=1)
    if "flags" in table and np.any(table.get_flags(Flags.indexed)):
        ok &= table.get_flags(Flags.indexed)
    return ok


def panel_residuals(table: ReflectionTable, n_panels: int) -> dict:
    """Mean positional residual, observed minus calculated, per panel.

    Uses the indexed reflections (nonzero ``miller_index``, and the ``indexed``
    flag where the table sets it) with finite ``xyzobs.px.value`` and
    ``xyzcal.px``.

    Parameters
    ----------
    table : ReflectionTable
    n_panels : int

    Returns
    -------
    dict
        ``n`` (int per panel), ``dx``, ``dy`` (mean residual along fast and
        slow, px; NaN for panels with no reflection), ``rms`` (RMS residual
        length per panel, px) and ``overall_rms`` (px, over all reflections).
    """
    n = np.zeros(n_panels, dtype=np.int64)
    sums = np.zeros((n_panels, 2))
    sq = np.zeros(n_panels)
    ok = _usable_residual_rows(table)
    if ok.any():
        panel = table["panel"][ok].astype(np.int64) if "panel" in table else np.zeros(int(ok.sum()), np.int64)
        d = table["xyzobs.px.value"][ok, :2] - table["xyzcal.px"][ok, :2]
        inside = (panel >= 0) & (panel < n_panels)
        panel, d = panel[inside], d[inside]
        n = np.bincount(panel, minlength=n_panels)
        sums[:, 0] = np.bincount(panel, weights=d[:, 0], minlength=n_panels)
        sums[:, 1] = np.bincount(panel, weights=d[:, 1], minlength=n_panels)
        sq = np.bincount(panel, weights=(d ** 2).sum(axis=1), minlength=n_panels)
        overall = float(np.sqrt(np.mean((d ** 2).sum(axis=1)))) if len(d) else float("nan")
    else:
        overall = float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / n[:, None]
        rms = np.sqrt(sq / n)
    return {"n": n, "dx": mean[:, 0], "dy": mean[:, 1], "rms": rms, "overall_rms": overall}


def tile_residuals(table: ReflectionTable, detector: Detector, n_tiles: int) -> dict:
    """Mean positional residual on an ``n_tiles`` x ``n_tiles`` grid of tiles of every panel.

    Parameters
    ----------
    table : ReflectionTable
    detector : Detector
    n_tiles : int

    Returns
    -------
    dict
        ``panel``, ``tile_fast``, ``tile_slow`` (int per tile), ``x0``, ``x1``,
        ``y0``, ``y1`` (tile limits, px), ``n``, ``dx``, ``dy`` (px, NaN for
        empty tiles), and ``overall_rms``.
    """
    rows = []
    for p, panel in enumerate(detector):
        xs = np.linspace(0, panel.n_fast, n_tiles + 1)
        ys = np.linspace(0, panel.n_slow, n_tiles + 1)
        for j in range(n_tiles):
            for i in range(n_tiles):
                rows.append((p, i, j, xs[i], xs[i + 1], ys[j], ys[j + 1]))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 7)
    n_cells = len(arr)
    n = np.zeros(n_cells, dtype=np.int64)
    sx = np.zeros(n_cells)
    sy = np.zeros(n_cells)
    ok = _usable_residual_rows(table)
    overall = float("nan")
    if ok.any():
        panel = table["panel"][ok].astype(np.int64) if "panel" in table else np.zeros(int(ok.sum()), np.int64)
        cal = table["xyzcal.px"][ok, :2]
        d = table["xyzobs.px.value"][ok, :2] - cal
        overall = float(np.sqrt(np.mean((d ** 2).sum(axis=1))))
        first = np.cumsum([0] + [n_tiles * n_tiles] * len(detector))
        keep = (panel >= 0) & (panel < len(detector))
        panel, cal, d = panel[keep], cal[keep], d[keep]
        nf = np.array([p.n_fast for p in detector], dtype=np.float64)[panel]
        ns = np.array([p.n_slow for p in detector], dtype=np.float64)[panel]
        ti = np.clip((cal[:, 0] / nf * n_tiles).astype(np.int64), 0, n_tiles - 1)
        tj = np.clip((cal[:, 1] / ns * n_tiles).astype(np.int64), 0, n_tiles - 1)
        cell = first[panel] + tj * n_tiles + ti
        n = np.bincount(cell, minlength=n_cells)
        sx = np.bincount(cell, weights=d[:, 0], minlength=n_cells)
        sy = np.bincount(cell, weights=d[:, 1], minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx, dy = sx / n, sy / n
    return {"panel": arr[:, 0].astype(np.int64), "tile_fast": arr[:, 1].astype(np.int64),
            "tile_slow": arr[:, 2].astype(np.int64), "x0": arr[:, 3], "x1": arr[:, 4], "y0": arr[:, 5],
            "y1": arr[:, 6], "n": n, "dx": dx, "dy": dy, "overall_rms": overall}


def shot_resolution(experiments: ExperimentList, table: ReflectionTable, shot_of: np.ndarray,
                    n_shots: int) -> np.ndarray:
    """Highest resolution (smallest d, Å) of the indexed reflections of each shot.

    d comes from the table's ``d`` column where present, else from each
    experiment's crystal: d = 1 / |A·h|.

    Parameters
    ----------
    experiments : ExperimentList
        The indexed experiments (``id`` in the table is their index).
    table : ReflectionTable
    shot_of : ndarray of int
        Shot number of each experiment (-1: none).
    n_shots : int

    Returns
    -------
    ndarray, shape (n_shots,)
        NaN for shots with no indexed reflection.
    """
    out = np.full(n_shots, np.nan)
    if table is None or len(table) == 0 or "id" not in table or experiments is None:
        return out
    ids = table["id"].astype(np.int64)
    if "d" in table and np.any(np.isfinite(table["d"]) & (table["d"] > 0)):
        d = np.asarray(table["d"], dtype=np.float64).copy()
    elif "miller_index" in table:
        d = np.full(len(table), np.nan)
        hkl = table["miller_index"].astype(np.float64)
        for k, e in enumerate(experiments):
            sel = ids == k
            if e.crystal is None or not sel.any():
                continue
            r = np.linalg.norm(hkl[sel] @ e.crystal.A.T, axis=1)
            with np.errstate(divide="ignore"):
                d[sel] = np.where(r > 0, 1.0 / r, np.nan)
    else:
        return out
    if "miller_index" in table:
        d[np.all(table["miller_index"] == 0, axis=1)] = np.nan
    good = np.isfinite(d) & (d > 0) & (ids >= 0) & (ids < len(shot_of))
    shots = shot_of[ids[good]]
    dd = d[good]
    keep = (shots >= 0) & (shots < n_shots)
    best = np.full(n_shots, np.inf)
    np.minimum.at(best, shots[keep], dd[keep])
    out[np.isfinite(best)] = best[np.isfinite(best)]
    return out


def timing_matrix(shots: list) -> tuple[list, np.ndarray]:
    """Seconds per stage per shot.

    Parameters
    ----------
    shots : list of dict
        summary.json shot entries.

    Returns
    -------
    stages : list of str
        Stage names in order of first appearance.
    seconds : ndarray, shape (n_shots, n_stages)
        NaN where a shot has no time for a stage.
    """
    stages: list = []
    for s in shots:
        for k in (s.get("timings") or {}):
            if k not in stages:
                stages.append(k)
    t = np.full((len(shots), len(stages)), np.nan)
    col = {k: i for i, k in enumerate(stages)}
    for i, s in enumerate(shots):
        for k, v in (s.get("timings") or {}).items():
            v = _number(v)
            if math.isfinite(v):
                t[i, col[k]] = v
    return stages, t


#: Timing keys that hold a shot's total time rather than one stage's.
TOTAL_KEYS = ("total", "total_s", "wall", "wall_time", "elapsed")


def split_total(stages: list, seconds: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """Separate a recorded per-shot total (``total`` ...) from the stage columns.

    Parameters
    ----------
    stages : list of str
    seconds : ndarray, shape (n_shots, n_stages)

    Returns
    -------
    stages : list of str
        Without the total.
    seconds : ndarray, shape (n_shots, n_stages - 1 or n_stages)
    total : ndarray, shape (n_shots,)
        The recorded total where there is one, else the sum over stages (NaN
        for shots with no timing).
    """
    seconds = np.asarray(seconds, dtype=np.float64).reshape(len(seconds), len(stages))
    keep = [k for k, name in enumerate(stages) if name.lower() not in TOTAL_KEYS]
    summed = seconds[:, keep]
    with np.errstate(invalid="ignore"):
        total = np.where(np.isfinite(summed).any(axis=1), np.nansum(np.nan_to_num(summed, nan=0.0), axis=1),
                         np.nan) if len(keep) else np.full(len(seconds), np.nan)
    for k, name in enumerate(stages):
        if name.lower() in TOTAL_KEYS:
            recorded = seconds[:, k]
            total = np.where(np.isfinite(recorded), recorded, total)
            break
    return [stages[k] for k in keep], summed, total


_COUNT = re.compile(r"(?<![=\w.])\d+(?:\.\d+)?(?![\w.])")


def reason_kind(reason: str) -> str:
    """A shot's stop reason with its per-shot numbers replaced by ``N``.

    Settings written as ``name=value`` keep their value, so reasons that differ
    only in a count (``"3 spots < ...=16"``, ``"7 spots < ...=16"``) group together.

    Parameters
    ----------
    reason : str

    Returns
    -------
    str
    """
    return _COUNT.sub("N", reason)
