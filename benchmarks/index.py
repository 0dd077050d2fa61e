"""Benchmark: stillshot indexing beside DIALS's stills indexing, on the same shots, in one run.

For each real data set in ../shared/data/reference (strong spots found by DIALS,
so both indexers see identical input) this script

* indexes every shot with each stillshot method (vector_match, fft1d,
  real_space_grid_search) on one core, measuring CPU and wall time per shot
  (the first shot of the run is indexed once beforehand so that numba's
  compilation is not counted);
* runs ``dials.ssx_index`` (through ../shared/tools/dials-peer, ``nproc=1``,
  one BLAS/OpenMP thread) on the same imported.expt/strong.refl with the same
  known symmetry, measuring the command's CPU time (its start-up included) and
  reading DIALS's own "Total time";

CPU time is the fair measure on a shared machine (wall time there depends on
what else runs); both are printed.
* prints per-shot times, indexing rates and the speed ratio, and the
  misorientation of our orientations to DIALS's where both indexed.

Optionally (``--simulated N``) it also indexes N simulated lysozyme and
thermolysin shots per method (spot lists from stillshot.simulate truth with
0.2 px centroid noise) and reports rates and misorientation to the truth.

Usage::

    python benchmarks/index.py [--no-dials] [--datasets thermolysin_cspad,thaumatin_grid]
                               [--methods vector_match,fft1d,real_space_grid_search] [--simulated 50]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from stillshot.index import IndexingOptions, index_still, misorientation_deg, point_group_rotations  # noqa: E402
from stillshot.models import ExperimentList  # noqa: E402
from stillshot.table import ReflectionTable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REF = SHARED / "data" / "reference"
DIALS_PEER = SHARED / "tools" / "dials-peer"

DATASETS = {
    "thermolysin_cspad": {
        "space_group": "P6122", "unit_cell": (92.9, 92.9, 130.4, 90.0, 90.0, 120.0), "d_min_refine": 1.7,
        "dials": ["indexing.refinement_protocol.d_min_start=1.7",
                  "indexing.stills.refine_candidates_with_known_symmetry=True"],
    },
    "thaumatin_grid": {
        "space_group": "P41212", "unit_cell": (58.4, 58.4, 152.3, 90.0, 90.0, 90.0), "d_min_refine": None,
        "dials": [],
    },
}


def run_ours(name: str, method: str) -> dict:
    """Index every shot of a reference data set; per-shot seconds and results."""
    cfg = DATASETS[name]
    experiments = ExperimentList.from_file(REF / f"{name}.imported.expt")
    table = ReflectionTable.from_file(REF / f"{name}.strong.refl")
    ids = np.asarray(table["id"])
    options = IndexingOptions(method=method, space_group=cfg["space_group"], unit_cell=cfg["unit_cell"],
                              d_min_refine=cfg["d_min_refine"])
    index_still(experiments[0], table, options, rows=np.nonzero(ids == 0)[0])  # warm-up (numba, caches)
    times, cpu, results = [], [], []
    for i, e in enumerate(experiments):
        rows = np.nonzero(ids == i)[0]
        t0, c0 = time.perf_counter(), time.process_time()
        r = index_still(e, table, options, rows=rows)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        results.append(r)
    return {"times": np.array(times), "cpu": np.array(cpu), "results": results, "experiments": experiments}


def run_dials(name: str) -> dict | None:
    """dials.ssx_index on the same spots, one process; wall time, DIALS's Total time, experiments."""
    if not DIALS_PEER.exists():
        return None
    cfg = DATASETS[name]
    args = [str(DIALS_PEER), "dials.ssx_index", str(REF / f"{name}.imported.expt"), str(REF / f"{name}.strong.refl"),
            f"indexing.known_symmetry.space_group={cfg['space_group']}",
            "indexing.known_symmetry.unit_cell=" + ",".join(f"{x:g}" for x in cfg["unit_cell"]),
            "nproc=1", *cfg["dials"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=3600, env=env)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - t0
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:] or proc.stdout[-2000:], "wall": wall}
        m = re.search(r"Total time:\s*([0-9.]+)", proc.stdout)
        expt = Path(tmp) / "indexed.expt"
        indexed = ExperimentList.from_file(expt) if expt.exists() else ExperimentList()
    return {"wall": wall, "cpu": cpu, "total": float(m.group(1)) if m else float("nan"), "indexed": indexed}


def compare(name: str, methods: list[str], with_dials: bool) -> None:
    n_shots = len(ExperimentList.from_file(REF / f"{name}.imported.expt"))
    print(f"\n== {name}: {n_shots} shots (DIALS's strong spots) ==")
    dials = run_dials(name) if with_dials else None
    dials_by_image = {}
    if dials and "indexed" in dials:
        for e in dials["indexed"]:
            dials_by_image.setdefault(Path(e.image.path).name, e)
        n_d = len(dials_by_image)
        per_shot = dials["total"] / n_shots
        print(f"DIALS dials.ssx_index nproc=1: indexed {n_d}/{n_shots}; CPU {dials['cpu']:.2f} s "
              f"({dials['cpu'] / n_shots:.3f} s/shot, start-up included); its Total time (wall) "
              f"{dials['total']:.2f} s ({per_shot:.3f} s/shot); command wall {dials['wall']:.2f} s")
    elif dials:
        print(f"DIALS failed: {dials['error']}")
    for method in methods:
        ours = run_ours(name, method)
        res = ours["results"]
        n_ok = sum(r.status == "indexed" for r in res)
        t, c = ours["times"], ours["cpu"]
        line = (f"stillshot {method:<22}: indexed {n_ok}/{n_shots}; CPU {np.mean(c) * 1e3:.1f} ms/shot "
                f"(max {np.max(c) * 1e3:.1f}), wall {np.mean(t) * 1e3:.1f} ms/shot")
        if dials_by_image:
            line += (f"; {dials['cpu'] / np.sum(c):.0f}x less CPU than DIALS, "
                     f"{dials['total'] / np.sum(t):.0f}x by wall time")
            mis = []
            for e, r in zip(ours["experiments"], res):
                d = dials_by_image.get(Path(e.image.path).name)
                if d is not None and r.lattices:
                    mis.append(misorientation_deg(d.crystal.A, r.lattices[0].crystal.A,
                                                  point_group_rotations(r.lattices[0].crystal.space_group)))
            if mis:
                line += f"; misorientation to DIALS median {np.median(mis):.3f}°, max {np.max(mis):.3f}°"
        print(line)
        failed = [(i, r.reason) for i, r in enumerate(res) if r.status != "indexed"]
        if failed:
            print("    not indexed: " + "; ".join(f"shot {i}: {why}" for i, why in failed))


def simulated(n: int, methods: list[str]) -> None:
    """Rates and misorientation to truth on simulated sets (spot lists from the truth, 0.2 px noise)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_index import LYSO, THERMO, _known, _set_settings, run_simulated_set  # noqa: E402

    for kind, cell_sg in (("lysozyme", LYSO), ("thermolysin", THERMO)):
        for method in methods:
            t0 = time.perf_counter()
            recs = run_simulated_set(_set_settings(kind), n, _known(cell_sg, method))
            dt = (time.perf_counter() - t0) / n
            hits = [r for r in recs if not r["blank"] and r["n_spots"] >= 20]
            ok = [r for r in hits if r["status"] == "indexed"]
            mis = np.array([r["mis"] for r in ok]) if ok else np.array([np.nan])
            blanks = sum(r["status"] == "indexed" for r in recs if r["blank"])
            print(f"simulated {kind:<11} {method:<22}: {len(ok)}/{len(hits)} hits (≥ 20 spots) indexed, "
                  f"{blanks} blanks indexed; misorientation median {np.median(mis):.4f}°, "
                  f"p90 {np.percentile(mis, 90):.4f}°; {dt * 1e3:.0f} ms/shot incl. simulation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-dials", action="store_true", help="skip the DIALS runs")
    ap.add_argument("--datasets", default="thermolysin_cspad,thaumatin_grid")
    ap.add_argument("--methods", default="vector_match,fft1d,real_space_grid_search")
    ap.add_argument("--simulated", type=int, default=0, help="also N simulated shots per set")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for name in [d for d in args.datasets.split(",") if d]:
        compare(name, methods, not args.no_dials)
    if args.simulated:
        simulated(args.simulated, methods)


if __name__ == "__main__":
    main()
