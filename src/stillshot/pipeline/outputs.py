"""Writing a run's output files from its results (read back from the journal in input order).

Files are written whole to a temporary name and renamed into place, so a
killed run never leaves a half-written output; they are rebuilt from the
journal at the end of every run and of every resumed run, so they do not
depend on the order in which workers finished.

Outputs (DESIGN.md): ``imported.expt``, ``strong.refl``, ``indexed.expt``,
``indexed.refl``, ``integrated.expt``, ``integrated.refl`` (when integration
ran), ``results.stream`` (CrystFEL stream) and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Callable, Iterable

import numpy as np

from stillshot.io.stream import StreamCrystal, StreamWriter
from stillshot.models import ExperimentList
from stillshot.pipeline.result import STATUSES, StillResult
from stillshot.table import OpaqueColumnsDropped, ReflectionTable

__all__ = ["OUTPUT_FILES", "atomic_write", "totals", "write_outputs"]

#: Every file ``process`` writes (integrated.* only when integration ran).
OUTPUT_FILES = ("imported.expt", "strong.refl", "indexed.expt", "indexed.refl", "integrated.expt",
                "integrated.refl", "results.stream", "summary.json")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _TableBuilder:
    """Per-shot tables renumbered into one run table (``id`` = experiment number in the run)."""

    def __init__(self):
        self.parts: list[ReflectionTable] = []
        self.identifiers: dict[int, str] = {}

    def add(self, table: ReflectionTable | None, id_map: dict[int, int], identifiers: dict[int, str]) -> None:
        """Add a shot's table; ``id_map`` maps its local ids to run ids (rows of other ids are dropped)."""
        if table is None or len(table) == 0:
            return
        local = np.asarray(table["id"], dtype=np.int64) if "id" in table else np.zeros(len(table), dtype=np.int64)
        keep = np.isin(local, list(id_map))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OpaqueColumnsDropped)
            t = table.select(np.nonzero(keep)[0]) if not keep.all() else table.copy()
        if len(t) == 0:
            return
        lut = np.full(int(local.max()) + 1, -1, dtype=np.int64)
        for k, v in id_map.items():
            lut[k] = v
        t["id"] = lut[np.asarray(t["id"], dtype=np.int64) if "id" in t else np.zeros(len(t), dtype=np.int64)].astype(np.int32)
        t.identifiers = {}
        self.parts.append(t)
        self.identifiers.update(identifiers)

    def table(self) -> ReflectionTable:
        """The run table (columns common to every shot's table)."""
        if not self.parts:
            return ReflectionTable.empty()
        common = set(self.parts[0].keys())
        for p in self.parts[1:]:
            common &= set(p.keys())
        parts = self.parts
        if any(set(p.keys()) != common for p in parts):
            parts = [ReflectionTable({k: p[k] for k in p.keys() if k in common}) for p in parts]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OpaqueColumnsDropped)
            out = ReflectionTable.concat(parts)
        used = set(np.unique(out["id"]).tolist()) if "id" in out else set()
        out.identifiers = {i: s for i, s in self.identifiers.items() if i in used}
        return out


def totals(summaries: list[dict]) -> dict:
    """Run totals: counts per status, hit and indexing rates, mean timings (s)."""
    n = len(summaries)
    counts = {s: sum(1 for x in summaries if x["status"] == s) for s in STATUSES}
    hits = counts["not_indexed"] + counts["indexed"] + counts["integrated"]
    indexed = counts["indexed"] + counts["integrated"]
    stages: dict[str, list[float]] = {}
    for x in summaries:
        for k, v in x.get("timings", {}).items():
            stages.setdefault(k, []).append(v)
    return {
        "n_shots": n,
        "status_counts": counts,
        "n_hits": hits,
        "n_indexed": indexed,
        "n_integrated": counts["integrated"],
        "hit_rate": hits / n if n else 0.0,
        "indexing_rate_of_hits": indexed / hits if hits else 0.0,
        "indexing_rate": indexed / n if n else 0.0,
        "n_lattices": sum(x.get("n_lattices", 0) for x in summaries),
        "n_spots": sum(x.get("n_spots", 0) for x in summaries),
        "n_indexed_spots": sum(x.get("n_indexed", 0) for x in summaries),
        "n_integrated_reflections": sum(x.get("n_integrated", 0) for x in summaries),
        "mean_timings_s": {k: float(np.mean(v)) for k, v in stages.items()},
        "total_timings_s": {k: float(np.sum(v)) for k, v in stages.items()},
    }


def write_outputs(out_dir: str, results: Iterable[StillResult], parameters: dict, *,
                  resolved: dict | None = None, run: dict | None = None, integration: bool = False,
                  stream: dict | None = None) -> dict:
    """Write the run's files from its results, in input order (one pass, results not kept).

    Parameters
    ----------
    out_dir : str
    results : iterable of StillResult
        Every shot of the run, in input order.
    parameters : dict
        The run's parameters, recorded in summary.json.
    resolved : dict, optional
        Run-level values chosen at run time, recorded in summary.json.
    run : dict, optional
        Run facts (nproc, method, wall time) recorded in summary.json.
    integration : bool
        Integration was part of the run: write integrated.expt/.refl (maybe empty).
    stream : dict, optional
        ``cell``, ``space_group``, ``command``, ``indexed_by`` for results.stream's
        header and chunks; None: no stream.

    Returns
    -------
    dict
        The ``totals`` block of summary.json.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    imported, indexed, integrated = ExperimentList(), ExperimentList(), ExperimentList()
    strong_t, indexed_t, integrated_t = _TableBuilder(), _TableBuilder(), _TableBuilder()
    summaries: list[dict] = []
    stream_tmp = f"{path('results.stream')}.tmp{os.getpid()}"
    sfh = open(stream_tmp, "w") if stream is not None else None
    writer = StreamWriter(sfh) if sfh is not None else None
    try:
        for r in results:
            summaries.append(r.summary())
            if r.imported is not None:
                k = len(imported)
                imported.append(r.imported)
                strong_t.add(r.strong, {0: k}, {k: r.imported.identifier})
            if r.experiments:
                base = len(indexed)
                indexed.extend(r.experiments)
                ids = {i: base + i for i in range(len(r.experiments))}
                indexed_t.add(r.indexed, ids, {base + i: e.identifier for i, e in enumerate(r.experiments)})
                if r.integrated_crystals:
                    id_map, idents = {}, {}
                    for i, (e, c) in enumerate(zip(r.experiments, r.integrated_crystals)):
                        if c is None:
                            continue
                        j = len(integrated)
                        integrated.append(e.with_crystal(c))
                        id_map[i], idents[j] = j, e.identifier
                    integrated_t.add(r.integrated, id_map, idents)
            if writer is not None and r.imported is not None:
                if writer.serial == 0:
                    writer.header(detector=r.imported.detector, wavelength=r.imported.beam.wavelength,
                                  cell=stream.get("cell"), space_group=stream.get("space_group"),
                                  command=stream.get("command", ""))
                writer.chunk(filename=r.file, event=None if r.frame is None else f"//{r.frame}",
                             beam=r.imported.beam, detector=r.imported.detector, peaks=r.strong,
                             crystals=_stream_crystals(r), hit=r.is_hit,
                             indexed_by=stream.get("indexed_by", "stillshot"))
        if writer is not None:
            if writer.serial == 0:
                writer.header(cell=stream.get("cell"), space_group=stream.get("space_group"),
                              command=stream.get("command", ""))
            sfh.close()
            sfh = None
            os.replace(stream_tmp, path("results.stream"))
    finally:
        if sfh is not None:
            sfh.close()
        if os.path.exists(stream_tmp):
            os.remove(stream_tmp)
    atomic_write(path("imported.expt"), imported.as_file)
    atomic_write(path("strong.refl"), strong_t.table().as_file)
    atomic_write(path("indexed.expt"), indexed.as_file)
    atomic_write(path("indexed.refl"), indexed_t.table().as_file)
    if integration:
        atomic_write(path("integrated.expt"), integrated.as_file)
        atomic_write(path("integrated.refl"), integrated_t.table().as_file)
    summary = {"shots": summaries, "totals": totals(summaries), "run": run or {}, "parameters": parameters,
               "resolved": resolved or {}}

    def write_json(tmp):
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=1, default=_json_default)

    atomic_write(path("summary.json"), write_json)
    return summary["totals"]


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _stream_crystals(r: StillResult) -> list[StreamCrystal]:
    """A shot's crystals with their reflections (integrated where integrated, else the indexed spots)."""
    out = []
    for i, e in enumerate(r.experiments):
        table = None
        crystal = e.crystal
        if r.integrated is not None and i < len(r.integrated_crystals) and r.integrated_crystals[i] is not None:
            table = r.integrated.select(np.asarray(r.integrated["id"]) == i)
            crystal = r.integrated_crystals[i]
        elif r.indexed is not None and len(r.indexed):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OpaqueColumnsDropped)
                table = r.indexed.select(np.asarray(r.indexed["id"]) == i)
        out.append(StreamCrystal(crystal, table))
    return out
