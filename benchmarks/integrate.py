"""Integration: speed beside DIALS's stills integration, agreement with DIALS, and
whether 2-D profile fitting helps (simulated truth).

Usage (from the project root)::

    python benchmarks/integrate.py [--repeats R] [--no-dials] [--sim-shots N]

Real data (``thermolysin_cspad``: 4 CSPAD stills, 64 panels, DIALS 3.12.1's own
indexing in ../shared/data/reference/thermolysin_cspad.indexed.expt):

* ``ours``: :func:`stillshot.integrate.integrate_shot` per shot with the shot
  in memory (after numba warm-up; the best of R repeats, median over shots),
  one core (the kernels are single-threaded; BLAS limited to one thread);
  ``read``: stillshot reading the CBF;
* ``DIALS``: ``dials.command_line.stills_process.Processor.integrate`` (what
  ``dials.stills_process`` runs: profile model, prediction, stills
  integrator) per shot, nproc=1, run through ../shared/tools/dials-peer in
  this run on the same indexing.  DIALS needs indexed reflections: its own
  ``AssignIndicesGlobal`` indexes the reference strong spots with the
  reference crystals first (not timed).  DIALS reads the image inside
  ``integrate``, so its time is compared with ours read included, and also
  with ours alone;
* the agreement: CC of our summation intensities with DIALS's, on the
  reflections both integrate (matched by experiment and Miller index), for
  the reference file and for this run's DIALS output.

Simulated (truth A, single panel, Poisson noise): summation vs profile
fitting against the true partial intensities — CC, normalised-residual
σ, and rms error of the weak spots (I/σ < 5); the per-observation CC of
partiality-corrected intensities with the true model intensities (a
merging proxy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PEER = ROOT.parent / "shared" / "tools" / "dials-peer"
REF = DATA / "reference"

DIALS_SCRIPT = r'''
import copy, json, sys, time
from dxtbx.model.experiment_list import ExperimentList, ExperimentListFactory
from dials.array_family import flex
from dials.command_line.stills_process import Processor, phil_scope
from dials.algorithms.indexing.assign_indices import AssignIndicesGlobal
from dials.algorithms.refinement.prediction.managed_predictors import ExperimentsPredictorFactory
expt_path, refl_path, out_path = sys.argv[1:4]
experiments = ExperimentListFactory.from_json_file(expt_path, check_format=True)
strong = flex.reflection_table.from_file(refl_path)
params = phil_scope.extract()
params.mp.nproc = 1
params.integration.mp.nproc = 1
params.output.composite_output = False
# time integration only: no pickles or per-shot files written inside integrate()
params.output.integration_pickle = None
params.output.integrated_filename = None
params.output.integrated_experiments_filename = None
times, cpu, results = [], [], flex.reflection_table()
for i, expt in enumerate(experiments):
    el = ExperimentList([expt])
    refl = strong.select(strong["id"] == i)
    refl["id"] = flex.int(len(refl), -1)
    if i in refl.experiment_identifiers():
        del refl.experiment_identifiers()[i]
    refl["imageset_id"] = flex.int(len(refl), 0)
    refl.centroid_px_to_mm(el)
    refl.map_centroids_to_reciprocal_space(el)
    AssignIndicesGlobal(tolerance=0.3)(refl, el)
    refl = refl.select(refl["miller_index"] != (0, 0, 0))
    refl["id"] = flex.int(len(refl), 0)
    refl.experiment_identifiers()[0] = expt.identifier
    refl.set_flags(flex.bool(len(refl), True), refl.flags.indexed)
    ExperimentsPredictorFactory.from_experiments(el, force_stills=True)(refl)
    refl["entering"] = flex.bool(len(refl), False)
    processor = Processor(copy.deepcopy(params), composite_tag=None)
    t, c = time.perf_counter(), time.process_time()
    integrated = processor.integrate(el, refl)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    for k in list(integrated.experiment_identifiers().keys()):
        del integrated.experiment_identifiers()[k]
    integrated["id"] = flex.int(len(integrated), i)
    integrated.experiment_identifiers()[i] = expt.identifier
    results.extend(integrated)
results.as_file(out_path)
print("DIALS_TIMES " + json.dumps({"wall": times, "cpu": cpu}))
'''


def _match_cc(ours, theirs) -> tuple[float, int, int]:
    """CC of intensity.sum.value over reflections matched by (id, hkl); (cc, n matched, n theirs)."""
    from stillshot.table import Flags

    theirs = theirs.select(theirs.get_flags(Flags.integrated_sum))
    key = lambda t: [(int(i), *map(int, h)) for i, h in zip(t["id"], t["miller_index"])]  # noqa: E731
    index = {k: n for n, k in enumerate(key(ours))}
    pairs = [(index[k], n) for n, k in enumerate(key(theirs)) if k in index]
    if len(pairs) < 3:
        return float("nan"), len(pairs), len(theirs)
    a = ours["intensity.sum.value"][[p[0] for p in pairs]]
    b = theirs["intensity.sum.value"][[p[1] for p in pairs]]
    return float(np.corrcoef(a, b)[0, 1]), len(pairs), len(theirs)


def real_data(repeats: int, run_dials: bool) -> dict:
    """Time per shot on the thermolysin CSPAD stills, ours and DIALS's, and the agreement."""
    from stillshot.integrate import IntegrationOptions, integrate_shot
    from stillshot.io.imageset import read_shot
    from stillshot.models import ExperimentList
    from stillshot.table import ReflectionTable

    experiments = ExperimentList.from_file(REF / "thermolysin_cspad.indexed.expt")
    # image paths in the reference file are relative to the project root
    experiments = ExperimentList(replace(e, image=replace(e.image, path=str((ROOT / e.image.path).resolve())))
                                 for e in experiments)
    options = {"summation": IntegrationOptions(algorithm="summation"),
               "profile": IntegrationOptions(algorithm="profile")}
    shots = []
    read_t, read_cpu = [], []
    for e in experiments:
        best = best_cpu = float("inf")
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            shot = read_shot(e.image)
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
        read_t.append(best)
        read_cpu.append(best_cpu)
        shots.append(shot)
    integrate_shot(experiments[0], shots[0].data, options["profile"])  # numba warm-up
    out = {"read_s": statistics.median(read_t), "read_cpu_s": statistics.median(read_cpu)}
    tables = {}
    for name, opt in options.items():
        per_shot, per_shot_cpu = [], []
        parts = []
        for i, (e, shot) in enumerate(zip(experiments, shots)):
            best = best_cpu = float("inf")
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                r = integrate_shot(e, shot.data, opt)
                best = min(best, time.perf_counter() - t)
                best_cpu = min(best_cpu, time.process_time() - c)
            per_shot.append(best)
            per_shot_cpu.append(best_cpu)
            refl = r.reflections
            refl["id"] = np.full(len(refl), i, dtype=np.int32)
            parts.append(refl)
        tables[name] = ReflectionTable.concat(parts)
        out[f"ours_{name}_s"] = statistics.median(per_shot)
        out[f"ours_{name}_cpu_s"] = statistics.median(per_shot_cpu)
        out[f"n_{name}"] = len(tables[name])
    ref = ReflectionTable.from_file(REF / "thermolysin_cspad.integrated.refl")
    cc, n, n_ref = _match_cc(tables["summation"], ref)
    out.update({"cc_vs_dials_reference": cc, "matched": n, "dials_reference_n": n_ref})
    prf = tables["profile"].copy()
    prf["intensity.sum.value"] = prf["intensity.prf.value"]
    out["cc_prf_vs_dials_reference"] = _match_cc(prf, ref)[0]
    if run_dials and PEER.exists() and shutil.which("dials.stills_process"):
        with tempfile.TemporaryDirectory() as tmp:
            d = json.loads((REF / "thermolysin_cspad.indexed.expt").read_text())
            for im in d["imageset"]:
                im["images"] = [str((ROOT / p).resolve()) for p in im["images"]]
            expt = Path(tmp) / "indexed.expt"
            expt.write_text(json.dumps(d))
            script = Path(tmp) / "dials_integrate.py"
            script.write_text(DIALS_SCRIPT)
            refl_out = Path(tmp) / "dials_integrated.refl"
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            proc = subprocess.run([str(PEER), "/usr/bin/python3", str(script), str(expt),
                                   str(REF / "thermolysin_cspad.strong.refl"), str(refl_out)],
                                  capture_output=True, text=True, cwd=tmp, env=env, timeout=1200)
            line = [x for x in proc.stdout.splitlines() if x.startswith("DIALS_TIMES ")]
            if proc.returncode == 0 and line:
                times = json.loads(line[0][len("DIALS_TIMES "):])
                out["dials_s"] = statistics.median(times["wall"])
                out["dials_cpu_s"] = statistics.median(times["cpu"])
                out["dials_per_shot_s"] = times["wall"]
                dials_now = ReflectionTable.from_file(refl_out)
                out["cc_vs_dials_this_run"], out["matched_this_run"], out["dials_this_run_n"] = \
                    _match_cc(tables["summation"], dials_now)
            else:
                out["dials_error"] = (proc.stderr or proc.stdout)[-2000:]
    return out


def simulated(n_shots: int) -> dict:
    """Summation vs profile fitting against the simulator's truth."""
    from stillshot.integrate import IntegrationOptions, good_reflections, integrate_shot
    from stillshot.models import Experiment
    from stillshot.simulate import SimulationSettings, Simulator

    sim = Simulator(SimulationSettings(layout="single_panel", n_fast=1024, n_slow=1024, blank_fraction=0.0,
                                       photons=5000.0, crystal_size_um=(1.0, 5.0), seed=3,
                                       dead_fraction=0.0, hot_fraction=0.0))
    acc = {k: [] for k in ("sum", "vsum", "prf", "vprf", "true", "part_true", "part_est", "model", "pol", "scale")}
    times = []
    for i in range(n_shots):
        shot = sim.shot(i)
        lat = shot.truth.lattices[0]
        e = Experiment(beam=shot.beam, detector=shot.detector, crystal=lat.crystal)
        t = time.perf_counter()
        r = integrate_shot(e, shot.data, IntegrationOptions(algorithm="profile"))
        times.append(time.perf_counter() - t)
        tab, truth = r.reflections, shot.truth.reflections
        index = {tuple(h): n for n, h in enumerate(truth["miller_index"].tolist())}
        j = np.array([index.get(tuple(h), -1) for h in tab["miller_index"].tolist()])
        sel = (j >= 0) & good_reflections(tab) & tab.get_flags(1 << 9)
        tab, tr = tab.select(sel), truth.select(j[sel])
        acc["sum"].append(tab["intensity.sum.value"])
        acc["vsum"].append(tab["intensity.sum.variance"])
        acc["prf"].append(tab["intensity.prf.value"])
        acc["vprf"].append(tab["intensity.prf.variance"])
        acc["true"].append(tr["intensity.partial"])
        acc["part_true"].append(tr["partiality"])
        acc["part_est"].append(tab["partiality"])
        acc["model"].append(tr["intensity.model"])
        acc["pol"].append(tr["polarization"])
        acc["scale"].append(np.full(len(tab), lat.scale))
    a = {k: np.concatenate(v) for k, v in acc.items()}
    out = {"n": int(len(a["true"])), "time_per_shot_s": statistics.median(times)}
    weak = a["sum"] / np.sqrt(a["vsum"]) < 5
    out["n_weak"] = int(weak.sum())
    for name, v, var in (("summation", a["sum"], a["vsum"]), ("profile", a["prf"], a["vprf"])):
        z = (v - a["true"]) / np.sqrt(var)
        strong = v / np.sqrt(var) > 10
        # merging proxy: partiality- and scale-corrected observations vs the true model intensity,
        # weighted observations with p > 0.3 (what a merge would use)
        use = a["part_est"] > 0.3
        corr = v[use] / (a["part_est"][use] * a["pol"][use] * a["scale"][use])
        out[name] = {
            "cc_all": float(np.corrcoef(v, a["true"])[0, 1]),
            "cc_strong": float(np.corrcoef(v[strong], a["true"][strong])[0, 1]),
            "z_std": float(np.std(z)),
            "z_mean": float(np.mean(z)),
            "cc_weak": float(np.corrcoef(v[weak], a["true"][weak])[0, 1]),
            "rmse_weak": float(np.sqrt(np.mean((v[weak] - a["true"][weak]) ** 2))),
            "median_sigma_weak": float(np.median(np.sqrt(var[weak]))),
            "cc_corrected_vs_model": float(np.corrcoef(corr, a["model"][use])[0, 1]),
        }
    out["cc_partiality_est_vs_true"] = float(np.corrcoef(a["part_est"], a["part_true"])[0, 1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dials", action="store_true")
    ap.add_argument("--sim-shots", type=int, default=20)
    args = ap.parse_args()
    real = real_data(args.repeats, not args.no_dials)
    print("thermolysin CSPAD (4 stills, 64 panels), per shot (median), one core:      wall       CPU")
    print(f"  read CBF (stillshot)          {real['read_s'] * 1e3:10.1f} ms {real['read_cpu_s'] * 1e3:8.1f} ms")
    for name in ("summation", "profile"):
        print(f"  ours {name:<24} {real[f'ours_{name}_s'] * 1e3:10.1f} ms {real[f'ours_{name}_cpu_s'] * 1e3:8.1f} ms"
              f"  ({real[f'n_{name}'] // 4} refl/shot)")
    if "dials_s" in real:
        print(f"  DIALS stills integrate        {real['dials_s'] * 1e3:10.1f} ms {real['dials_cpu_s'] * 1e3:8.1f} ms"
              f"  (wall per shot {', '.join(f'{x:.2f}' for x in real['dials_per_shot_s'])} s)")
        for kind, sfx in (("wall", "_s"), ("CPU", "_cpu_s")):
            d = real["dials" + sfx]
            for name in ("summation", "profile"):
                ours = real[f"ours_{name}{sfx}"]
                print(f"  ratio DIALS/ours ({kind}, {name}): {d / ours:5.0f}x integration alone, "
                      f"{d / (ours + real['read' + sfx]):5.0f}x with our CBF read (DIALS reads inside)")
        print(f"  CC with this run's DIALS: {real['cc_vs_dials_this_run']:.4f} over {real['matched_this_run']} "
              f"of its {real['dials_this_run_n']} reflections")
    elif "dials_error" in real:
        print("  DIALS failed:", real["dials_error"][-500:])
    print(f"  CC with reference DIALS integrated.refl: summation {real['cc_vs_dials_reference']:.4f}, "
          f"profile {real['cc_prf_vs_dials_reference']:.4f} over {real['matched']} of {real['dials_reference_n']}")
    sim = simulated(args.sim_shots)
    print(f"\nsimulated truth ({args.sim_shots} shots, single panel 1024², {sim['n']} clean reflections, "
          f"{sim['n_weak']} weak with I/σ < 5; {sim['time_per_shot_s'] * 1e3:.1f} ms/shot):")
    print(f"  {'':<10} {'CC all':>8} {'CC I/σ>10':>10} {'z σ':>6} {'z mean':>7} {'CC weak':>8} {'rmse weak':>10} "
          f"{'σ weak':>7} {'CC corr/model':>14}")
    for name in ("summation", "profile"):
        s = sim[name]
        print(f"  {name:<10} {s['cc_all']:8.4f} {s['cc_strong']:10.5f} {s['z_std']:6.3f} {s['z_mean']:7.3f} "
              f"{s['cc_weak']:8.4f} {s['rmse_weak']:10.2f} {s['median_sigma_weak']:7.2f} "
              f"{s['cc_corrected_vs_model']:14.4f}")
    print(f"  partiality estimate vs truth: CC {sim['cc_partiality_est_vs_true']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
