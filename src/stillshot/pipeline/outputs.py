"""Writing a run's output files from its journal.

Files are written whole to a temporary name and renamed into place, so a
killed run never leaves a half-written output; they are rebuilt from the
journal (in input order) at the end of every run and of every resumed run.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import numpy as np

from stillshot.models import ExperimentList
from stillshot.pipeline.result import STATUSES, StillResult
from stillshot.table import ReflectionTable


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _numbered(tables: list[tuple[int, ReflectionTable]], identifiers: list[str]) -> ReflectionTable:
    """Concatenate per-shot tables, shifting each one's ``id`` by its first experiment's number."""
    parts = []
    for first_id, table in tables:
        if table is None or len(table) == 0:
            continue
        t = table.copy()
        local = t["id"].astype(np.int64) if "id" in t else np.zeros(len(t), dtype=np.int64)
        t["id"] = (local + first_id).astype(np.int32)
        t.identifiers = {}
        parts.append(t)
    out = ReflectionTable.concat(parts) if parts else ReflectionTable.empty()
    used = np.unique(out["id"]) if "id" in out else []
    out.identifiers = {int(i): identifiers[int(i)] for i in used}
    return out


def gather(results: Iterable[StillResult]) -> dict:
    """Experiment lists and reflection tables of a run, numbered in result order.

    Returns
    -------
    dict
        ``imported`` (ExperimentList), ``strong`` (ReflectionTable), ``indexed``
        (ExperimentList), ``indexed_refl``, ``integrated_refl`` (ReflectionTable
        or None).
    """
    imported = ExperimentList()
    indexed = ExperimentList()
    strong_parts, indexed_parts, integrated_parts = [], [], []
    for r in results:
        if r.imported is not None:
            strong_parts.append((len(imported), r.strong))
            imported.append(r.imported)
        if r.experiments:
            indexed_parts.append((len(indexed), r.indexed))
            integrated_parts.append((len(indexed), r.integrated))
            indexed.extend(r.experiments)
    any_integrated = any(t is not None for _, t in integrated_parts)
    return {
        "imported": imported,
        "strong": _numbered(strong_parts, imported.identifiers()),
        "indexed": indexed,
        "indexed_refl": _numbered(indexed_parts, indexed.identifiers()),
        "integrated_refl": _numbered(integrated_parts, indexed.identifiers()) if any_integrated else None,
    }


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
        "hit_rate": hits / n if n else 0.0,
        "indexing_rate_of_hits": indexed / hits if hits else 0.0,
        "n_lattices": sum(x.get("n_lattices", 0) for x in summaries),
        "mean_timings_s": {k: float(np.mean(v)) for k, v in stages.items()},
    }


def write_outputs(out_dir: str, results: list[StillResult], extra_summaries: list[dict], parameters: dict,
                  resolved: dict | None = None) -> dict:
    """Write imported/strong/indexed/integrated files and summary.json.

    Parameters
    ----------
    out_dir : str
    results : list of StillResult
        In input order.
    extra_summaries : list of dict
        summary.json entries for inputs that never became shots (unreadable files).
    parameters : dict
        The run's parameters, recorded in summary.json.

    Returns
    -------
    dict
        The ``totals`` block of summary.json.
    """
    g = gather(results)
    path = lambda name: os.path.join(out_dir, name)  # noqa: E731
    atomic_write(path("imported.expt"), g["imported"].as_file)
    atomic_write(path("strong.refl"), g["strong"].as_file)
    atomic_write(path("indexed.expt"), g["indexed"].as_file)
    atomic_write(path("indexed.refl"), g["indexed_refl"].as_file)
    if g["integrated_refl"] is not None:
        atomic_write(path("integrated.expt"), g["indexed"].as_file)
        atomic_write(path("integrated.refl"), g["integrated_refl"].as_file)
    summaries = [r.summary() for r in results] + list(extra_summaries)
    summary = {"shots": summaries, "totals": totals(summaries), "parameters": parameters, "resolved": resolved or {}}

    def write_json(tmp):
        with open(tmp, "w") as fh:
            json.dump(summary, fh, indent=1)

    atomic_write(path("summary.json"), write_json)
    return summary["totals"]
