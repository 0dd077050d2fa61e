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

``--rendered N`` (issue 5's sets, N = 100) runs the whole chain on N rendered
shots of each simulated set (lysozyme on a Pilatus 6M, thermolysin on a
CSPAD; Poisson noise, background, dead and hot pixels): our spot finding on
the pixels (tests/test_index.py SPOTFINDING) and known-cell indexing
(vector_match), and — unless ``--no-dials`` — DIALS on the same shots written
to disk with stillshot.simulate's writers (lysozyme: miniCBF; thermolysin:
NeXus NXmx, since miniCBF holds one panel): ``dials.import
convert_sequences_to_stills=True``, ``dials.find_spots nproc=1`` with the same
spot-finding settings, ``dials.ssx_index nproc=1`` with the same known
symmetry.  It prints, for both, the indexing rate of the hits (not blank,
≥ 20 spots found by our spot finding, the same shots for both), blanks
indexed, misorientation to the truth (median, 90th percentile) and CPU time
per shot of spot finding and of indexing.

Usage::

    python benchmarks/index.py [--no-dials] [--datasets thermolysin_cspad,thaumatin_grid]
                               [--methods vector_match,fft1d,real_space_grid_search] [--simulated 50]
                               [--rendered 100]
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


def _dials_cmd(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run a DIALS command through dials-peer on one core; (wall s, CPU s, stdout); raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([str(DIALS_PEER), *args], cwd=cwd, capture_output=True, text=True, timeout=7200, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), proc.stdout


#: DIALS's spot-finding parameters equal to tests/test_index.py SPOTFINDING (DIALS reads no gain
#: from the NeXus file, so the CSPAD gain of 25 ADU/photon is given as dispersion.gain).
DIALS_SPOTFINDING = {
    "lysozyme": [],
    "thermolysin": ["spotfinder.filter.min_spot_size=2", "spotfinder.threshold.dispersion.gain=25",
                    "spotfinder.threshold.dispersion.global_threshold=100"],
}


def rendered(n: int, with_dials: bool) -> None:
    """Issue 5's simulated sets end to end (rendered images), ours beside DIALS on the same shots."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_index import LYSO, THERMO, SPOTFINDING, _known, rendered_set_figures, run_rendered_set  # noqa: E402

    from stillshot.simulate.writers import NexusWriter, write_cbf  # noqa: E402

    for kind, cell_sg in (("lysozyme", LYSO), ("thermolysin", THERMO)):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            state: dict = {"files": []}

            def sink(i, sim, truth, data, state=state):
                if not with_dials:
                    return
                if len(sim.nominal_detector) == 1:
                    path = tmp / f"shot_{i:05d}.cbf"
                    write_cbf(path, data[0], sim.nominal_detector, truth.wavelength)
                    state["files"].append(path.name)
                else:
                    if "writer" not in state:
                        state["writer"] = NexusWriter(tmp / "shots.nxs", sim.nominal_detector, n)
                        state["files"].append("shots.nxs")
                    state["writer"].write(i, data, truth.wavelength)

            # warm-up (numba compilation) on two shots not counted
            run_rendered_set(kind, 2, _known(cell_sg))
            t0 = time.perf_counter()
            recs = run_rendered_set(kind, n, _known(cell_sg), sink=sink)
            wall = time.perf_counter() - t0
            if "writer" in state:
                state["writer"].close()
            f = rendered_set_figures(recs, cell_sg[0])
            t_find = np.mean([r["t_find"] for r in recs])
            t_index = np.mean([r["t_index"] for r in recs])
            hit_t = np.mean([r["t_index"] for r in recs if not r["blank"] and r["n_spots"] >= 20])
            settings = " ".join(SPOTFINDING[kind]) or "DIALS defaults"
            print(f"\n== rendered {kind}: {n} shots, {f['n_blank']} blank, {f['n_hits']} hits "
                  f"(not blank, ≥ 20 spots found); spot finding: {settings} ==")
            print(f"stillshot: indexed {f['n_indexed']}/{f['n_hits']} hits "
                  f"({100 * f['n_indexed'] / max(f['n_hits'], 1):.1f} %), {f['blanks_indexed']} blanks indexed; "
                  f"misorientation to truth median {f['mis_median']:.4f}°, p90 {f['mis_p90']:.4f}°; "
                  f"cell lengths within {100 * f['cell_err']:.3f} %; CPU per shot: spot finding "
                  f"{t_find * 1e3:.1f} ms, indexing {t_index * 1e3:.1f} ms ({hit_t * 1e3:.1f} ms per hit); "
                  f"wall {wall:.1f} s incl. rendering")
            if f["failed"]:
                print("    hits not indexed (shot, spots, reason): " + "; ".join(map(str, f["failed"])))
            if not with_dials:
                continue
            if not DIALS_PEER.exists():
                print("DIALS: not run (../shared/tools/dials-peer missing)")
                continue
            try:
                _dials_cmd(["dials.import", *state["files"], "convert_sequences_to_stills=True"], tmp)
                w_f, c_f, _ = _dials_cmd(["dials.find_spots", "imported.expt", "nproc=1",
                                          *DIALS_SPOTFINDING[kind]], tmp)
                w_i, c_i, out = _dials_cmd(
                    ["dials.ssx_index", "imported.expt", "strong.refl", "nproc=1",
                     f"indexing.known_symmetry.space_group={cell_sg[1]}",
                     "indexing.known_symmetry.unit_cell=" + ",".join(f"{x:g}" for x in cell_sg[0])], tmp)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"DIALS failed: {exc}")
                continue
            expt = tmp / "indexed.expt"
            indexed = ExperimentList.from_file(expt) if expt.exists() else ExperimentList()
            by_shot: dict = {}
            for e in indexed:
                i = e.image.frame if e.image.frame is not None else int(Path(e.image.path).stem.split("_")[-1])
                by_shot.setdefault(int(i), e)
            hits = [i for i, r in enumerate(recs) if not r["blank"] and r["n_spots"] >= 20]
            d_hits = [i for i in hits if i in by_shot]
            d_blanks = sum(1 for i, r in enumerate(recs) if r["blank"] and i in by_shot)
            mis = []
            for i in d_hits:
                c = by_shot[i].crystal
                rots = point_group_rotations(c.space_group)
                mis.append(min(misorientation_deg(t.A, c.A, rots) for t in recs[i]["truth"]))
            mis = np.array(mis) if mis else np.array([np.nan])
            m = re.search(r"Total time:\s*([0-9.]+)", out)
            print(f"DIALS    : indexed {len(d_hits)}/{len(hits)} hits ({100 * len(d_hits) / max(len(hits), 1):.1f} %), "
                  f"{d_blanks} blanks indexed; misorientation to truth median {np.median(mis):.4f}°, "
                  f"p90 {np.percentile(mis, 90):.4f}°; CPU per shot: dials.find_spots {c_f / n * 1e3:.0f} ms, "
                  f"dials.ssx_index {c_i / n * 1e3:.0f} ms (start-up included; its Total time "
                  f"{float(m.group(1)) if m else float('nan'):.1f} s wall)")
            print(f"ratio    : indexing {c_i / max(t_index * n, 1e-9):.0f}x less CPU than dials.ssx_index, "
                  f"spot finding {c_f / max(t_find * n, 1e-9):.0f}x less than dials.find_spots")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-dials", action="store_true", help="skip the DIALS runs")
    ap.add_argument("--datasets", default="thermolysin_cspad,thaumatin_grid")
    ap.add_argument("--methods", default="vector_match,fft1d,real_space_grid_search")
    ap.add_argument("--simulated", type=int, default=0, help="also N simulated shots per set")
    ap.add_argument("--rendered", type=int, default=0,
                    help="also N rendered shots per set end to end (spot finding + indexing), beside DIALS")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    for name in [d for d in args.datasets.split(",") if d]:
        compare(name, methods, not args.no_dials)
    if args.simulated:
        simulated(args.simulated, methods)
    if args.rendered:
        rendered(args.rendered, not args.no_dials)


if __name__ == "__main__":
    main()
