"""Detector metrology benchmark: ``stillshot metrology`` against ``dials.refine``.

Real data: ../shared/data/xfel_metrology (300 indexed lysozyme CSPAD stills),
hierarchy level 2 with DIALS's settings (refine.phil; Debian's DIALS lacks
the sparse engine, so both run with ``refinement.refinery.engine=LevMar``).
Prints each program's wall time (stillshot: median of ``--repeats`` runs of
the command; DIALS: one run, it is slow) and the positional RMSDs:

* as each program reports them (its own inliers);
* both refined models evaluated by the same code on the reflections that
  both programs used (the fair comparison).

``--simulated`` adds a CSPAD-like run with a known true geometry (accuracy of
the refined panel positions) and a scaling run with thousands of shots.

``--loop`` (alone, it skips the real data) runs the user's loop on IMAGES:
simulate ``--loop-shots`` CSPAD shots (cxi; the simulator's default crystals,
1-5 um, so many shots are marginal) whose true geometry has per-quadrant and
per-sensor shifts of 0.5-1.5 px and rotations <= 0.1 deg; ``stillshot
process`` with the nominal geometry (known cell, mp.nproc=2, defaults
otherwise); ``stillshot metrology`` on that output with metrology.levels=0,1,2;
``stillshot process`` again with input.reference_geometry=refined.expt, and
with the true geometry as the ceiling.  Prints the three indexing rates,
indexed spots per shot, RMSDs, integrated CC to the true partial intensities
and the panel-position errors.

usage: python benchmarks/metrology.py [--repeats 3] [--dials-dir DIR] [--simulated] [--skip-dials]
       python benchmarks/metrology.py --loop [--loop-shots 240] [--loop-dir DIR]

``--dials-dir DIR`` reuses the outputs of an earlier DIALS run in DIR
(dials_refined.expt, dials_refined.refl, dials_seconds.txt) instead of
running it again; nothing is cached in the repository.
"""

from __future__ import annotations

import argparse
import os
import resource

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one core, as DIALS with mp.nproc=1
os.environ.setdefault("OMP_NUM_THREADS", "1")
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "xfel_metrology"
DIALS_PEER = ROOT.parent / "shared" / "tools" / "dials-peer"
PIXEL = 0.10992


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core each, as DIALS with mp.nproc=1
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_stillshot(out_dir: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``stillshot metrology`` command (process start to exit)."""
    cmd = [sys.executable, "-m", "stillshot.cli.main", "metrology", str(DATA / "benchmark_level2d.json"),
           str(DATA / "benchmark_level2d.refl"), str(DATA / "refine.phil"), "refinement.refinery.engine=LevMar",
           f"output.dir={out_dir}"]
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    dt, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"stillshot metrology failed:\n{proc.stderr}")
    return dt, cpu


def run_dials(out_dir: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``dials.refine`` run with refine.phil (+ engine=LevMar)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(DIALS_PEER), "dials.refine", str(DATA / "benchmark_level2d.json"),
           str(DATA / "benchmark_level2d.refl"), str(DATA / "refine.phil"), "refinement.refinery.engine=LevMar",
           "output.experiments=dials_refined.expt", "output.reflections=dials_refined.refl",
           "output.log=dials.refine.log"]
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir, env=_env())
    dt, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"dials.refine failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (out_dir / "dials_seconds.txt").write_text(f"{dt}\n")
    (out_dir / "dials_cpu_seconds.txt").write_text(f"{cpu}\n")
    return dt, cpu


def own_rmsds(table) -> dict:
    """RMSDs (px, deg) of the rows flagged used_in_refinement, from the table's own predictions."""
    from stillshot.table import Flags

    used = (np.asarray(table["flags"]) & np.uint64(Flags.used_in_refinement)) != 0
    d = (np.asarray(table["xyzcal.mm"]) - np.asarray(table["xyzobs.mm.value"]))[used, :2] / PIXEL
    dpsi = np.asarray(table["delpsical.rad"])[used]
    return {"n": int(used.sum()), "x_px": float(np.sqrt(np.mean(d[:, 0] ** 2))),
            "y_px": float(np.sqrt(np.mean(d[:, 1] ** 2))), "xy_px": float(np.sqrt(np.mean(np.sum(d**2, 1)))),
            "delpsi_deg": float(np.degrees(np.sqrt(np.mean(dpsi**2)))), "used": used}


def evaluate(experiments, table, rows) -> dict:
    """RMSDs of a model (experiments) on given rows, predicted by stillshot's stills predictor."""
    from stillshot import geometry
    from stillshot.refine.metrology import experiment_index

    exp = experiment_index(table, experiments)[rows]
    hkl = np.asarray(table["miller_index"], dtype=float)[rows]
    panel = np.asarray(table["panel"]).astype(int)[rows]
    obs = np.asarray(table["xyzobs.mm.value"])[rows, :2]
    A = np.array([e.crystal.A for e in experiments])
    s0 = np.array([e.beam.s0 for e in experiments])
    q = np.einsum("nij,nj->ni", A[exp], hkl)
    s1 = np.empty_like(q)
    dpsi = np.empty(len(q))
    for e in np.unique(exp):
        m = exp == e
        s1[m], dpsi[m] = geometry.predict_stills(None, s0[e], rlp=q[m])
    _, xy, _, _ = geometry.ray_intersection(experiments[0].detector, s1, panel=panel)
    d = (xy - obs) / PIXEL
    return {"n": int(len(rows)), "x_px": float(np.sqrt(np.mean(d[:, 0] ** 2))),
            "y_px": float(np.sqrt(np.mean(d[:, 1] ** 2))), "xy_px": float(np.sqrt(np.mean(np.sum(d**2, 1)))),
            "delpsi_deg": float(np.degrees(np.sqrt(np.mean(dpsi**2))))}


def _fmt(r: dict) -> str:
    return (f"n={r['n']:5d}  x {r['x_px']:.4f}  y {r['y_px']:.4f}  xy {r['xy_px']:.4f} px  "
            f"DeltaPsi {r['delpsi_deg']:.4f} deg")


def real_data(args) -> bool:
    from stillshot.models import ExperimentList
    from stillshot.refine.metrology import MetrologyOptions, refine_metrology
    from stillshot.table import ReflectionTable

    print(f"== real data: {DATA.name} (300 CSPAD stills, level 2, refine.phil + engine=LevMar) ==")
    experiments = ExperimentList.from_file(DATA / "benchmark_level2d.json")
    table = ReflectionTable.from_file(DATA / "benchmark_level2d.refl")
    # in-process (the algorithm alone)
    lib_times = []
    for _ in range(max(args.repeats, 1)):
        t0 = time.perf_counter()
        res = refine_metrology(experiments, table, MetrologyOptions(hierarchy_level=2, delpsi_constant=1e4,
                                                                    min_nref_per_parameter=3))
        lib_times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_stillshot(Path(tmp) / f"run{i}") for i in range(max(args.repeats, 1))]
        cmd_times = [w for w, _ in runs]
        cpu_ours = statistics.median(c for _, c in runs)
        ours_expt = ExperimentList.from_file(Path(tmp) / "run0" / "refined.expt")
        ours_refl = ReflectionTable.from_file(Path(tmp) / "run0" / "refined.refl")
    t_ours = statistics.median(cmd_times)
    print(f"stillshot metrology: {t_ours:.2f} s wall ({cpu_ours:.2f} s CPU) per command (median of {len(cmd_times)}: "
          f"{', '.join(f'{t:.2f}' for t in cmd_times)}); "
          f"refine_metrology in-process {statistics.median(lib_times):.2f} s; "
          f"{res.n_parameters} parameters, {res.n_reflections} reflections, {res.n_outliers} outliers, "
          f"{res.solver.iterations} iterations")
    ours = own_rmsds(ours_refl)
    print(f"  start model, stillshot inliers: {_fmt(res.rmsd_before | {'n': res.rmsd_before['n']})}")
    print(f"  stillshot final (own inliers):  {_fmt(ours)}")
    if args.skip_dials:
        return True
    dials_dir = Path(args.dials_dir) if args.dials_dir else Path(tempfile.mkdtemp(prefix="dials_metrology_"))
    if args.dials_dir and (dials_dir / "dials_refined.expt").is_file():
        t_dials = float((dials_dir / "dials_seconds.txt").read_text())
        cpu_file = dials_dir / "dials_cpu_seconds.txt"
        cpu_dials = float(cpu_file.read_text()) if cpu_file.is_file() else float("nan")
        print(f"dials.refine: {t_dials:.1f} s wall ({cpu_dials:.1f} s CPU) (one earlier run, read from {dials_dir})")
    else:
        print(f"running dials.refine once in {dials_dir} (slow) ...", flush=True)
        t_dials, cpu_dials = run_dials(dials_dir)
        print(f"dials.refine: {t_dials:.1f} s wall ({cpu_dials:.1f} s CPU) (one run)")
    dials_expt = ExperimentList.from_file(dials_dir / "dials_refined.expt")
    dials_refl = ReflectionTable.from_file(dials_dir / "dials_refined.refl")
    dials = own_rmsds(dials_refl)
    print(f"  dials final (own inliers):      {_fmt(dials)}")
    # the fair comparison: the same code and the same reflections for both models
    common = np.nonzero(ours["used"] & dials["used"])[0]
    ev_ours = evaluate(ours_expt, table, common)
    ev_dials = evaluate(dials_expt, table, common)
    ev_start = evaluate(experiments, table, common)
    print("  on the reflections both used, predicted by the same code:")
    print(f"    start     {_fmt(ev_start)}")
    print(f"    dials     {_fmt(ev_dials)}")
    print(f"    stillshot {_fmt(ev_ours)}")
    ratio = t_ours / t_dials
    if cpu_dials == cpu_dials:  # not NaN
        print(f"CPU time ratio stillshot/dials = {cpu_ours / cpu_dials:.4f}")
    ok_rmsd = ev_ours["xy_px"] <= ev_dials["xy_px"] * (1 + 1e-3)
    print(f"time ratio stillshot/dials = {ratio:.4f} ({t_dials / t_ours:.0f}x faster; target <= 0.2): "
          f"{'PASS' if ratio <= 0.2 else 'FAIL'}")
    print(f"positional RMSD stillshot {ev_ours['xy_px']:.6f} px vs dials {ev_dials['xy_px']:.6f} px "
          f"(no worse): {'PASS' if ok_rmsd else 'FAIL'}")
    return ratio <= 0.2 and ok_rmsd


def simulated(args) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_metrology import position_errors_px, simulated_run

    from stillshot.refine.metrology import MetrologyOptions, refine_metrology, refine_protocol

    print("\n== simulated CSPAD run: per-quadrant + per-sensor shifts 0.5-1.5 px, rotations <= 0.1 deg ==")
    experiments, table, nominal, truth, _ = simulated_run(200, seed=0)
    raw, aligned, _ = position_errors_px(nominal, truth)
    print(f"200 shots, {len(table)} reflections; nominal geometry: {raw:.3f} px RMS from the truth "
          f"({aligned:.3f} px after the best rotation about the beam)")
    for label, fix_list in (("in-plane (Shift1, Shift2, Tau1)", ("Dist", "Tau2", "Tau3")), ("all six", ())):
        t0 = time.perf_counter()
        res = refine_protocol(experiments, table, [0, 1, 2], MetrologyOptions(fix_list=fix_list, delpsi_constant=1e4))
        dt = time.perf_counter() - t0
        raw, aligned, theta = position_errors_px(res[-1].detector, truth)
        print(f"  levels 0->1->2, {label}: {dt:.2f} s; panel positions {raw:.3f} px RMS from the truth, "
              f"{aligned:.4f} px after the unobservable rotation about the beam ({theta:+.4f} deg); "
              f"RMSD {res[-1].rmsd_after['xy_px']:.3f} px")
    indexing_rates(experiments, table, nominal, truth, res[-1].detector)
    n = args.scaling_shots
    print(f"\n== scaling: {n} shots, level 3 (64 ASICs x 6 = 384 detector parameters) ==")
    experiments, table, nominal, truth, _ = simulated_run(n, seed=1)
    t0 = time.perf_counter()
    res = refine_metrology(experiments, table, MetrologyOptions(hierarchy_level=3, delpsi_constant=1e4))
    dt = time.perf_counter() - t0
    raw, aligned, _ = position_errors_px(res.detector, truth)
    print(f"  {len(table)} reflections, {res.n_parameters} free parameters: {dt:.2f} s "
          f"({res.solver.iterations} iterations); positions {aligned:.4f} px RMS from the truth (aligned)")


def indexing_rates(experiments, table, nominal, truth, refined, n_shots: int = 60) -> None:
    """Re-index shots (their centroids) with the nominal, refined and true geometries."""
    from dataclasses import replace

    from stillshot.index import IndexingOptions, index_still

    opts = IndexingOptions(method="vector_match", space_group="P43212", unit_cell=(79.1, 79.1, 38.1, 90, 90, 90))
    ids = np.asarray(table["id"])
    print(f"  re-indexing {n_shots} shots' centroids (vector_match, known cell) with each geometry:")
    for name, det in (("nominal", nominal), ("refined", refined), ("true", truth)):
        n_ok, rmsd, n_idx, n_spots = 0, [], 0, 0
        t0 = time.perf_counter()
        for i in range(n_shots):
            rows = np.nonzero(ids == i)[0]
            n_spots += len(rows)
            try:
                r = index_still(replace(experiments[i], detector=det, crystal=None), table, opts, rows)
            except Exception as exc:  # the indexer is another module: report, do not stop the benchmark
                print(f"    {name}: indexer failed on shot {i}: {exc}")
                return
            if r.status == "indexed":
                n_ok += 1
                rmsd.append(r.lattices[0].rmsd_px)
                n_idx += r.lattices[0].n_indexed
        print(f"    {name:8s} geometry: {n_ok}/{n_shots} indexed ({100.0 * n_ok / n_shots:.0f}%), "
              f"{100.0 * n_idx / max(n_spots, 1):.1f}% of spots indexed, median RMSD "
              f"{np.median(rmsd) if rmsd else float('nan'):.3f} px ({time.perf_counter() - t0:.1f} s)")


# ----------------------------------------------------------------------------- the user's loop on images
LOOP_CELL = "79.1,79.1,38.4,90,90,90"


def _stillshot(args: list[str], timeout: float) -> float:
    """Run one ``stillshot`` command; its wall time in seconds."""
    cmd = [sys.executable, "-m", "stillshot.cli.main", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _asu_keys(frames, hkl) -> dict:
    """{(frame, reflection in the P43212 asymmetric unit): row}, rows whose key is unique in their shot."""
    import gemmi

    asu = gemmi.ReciprocalAsu(gemmi.SpaceGroup("P 43 21 2"))
    ops = gemmi.SpaceGroup("P 43 21 2").operations()
    keys: dict = {}
    dup = set()
    for i, (f, h) in enumerate(zip(frames, hkl)):
        k = (int(f), tuple(asu.to_asu([int(v) for v in h], ops)[0]))
        if k in keys:
            dup.add(k)
        keys[k] = i
    return {k: v for k, v in keys.items() if k not in dup}


def _loop_stats(run_dir: Path, truth_refl: dict) -> dict:
    """Indexing rate, spots per shot, RMSD and integrated CC to the truth of one ``process`` output dir."""
    import json

    from stillshot.models import ExperimentList
    from stillshot.table import Flags, ReflectionTable

    summ = json.loads((run_dir / "summary.json").read_text())
    tot = summ["totals"]
    per_shot = {int(s["frame"]): s for s in summ["shots"]}
    out = {"n_shots": tot["n_shots"], "hits": tot["n_hits"], "indexed": tot["n_indexed"],
           "n_idx_spots": {f: int(s["n_indexed"]) for f, s in per_shot.items() if s["n_indexed"] > 0},
           "n_spots": {f: int(s["n_spots"]) for f, s in per_shot.items()}}
    # RMSD of the indexed spots after each shot's own refinement (xyzcal vs xyzobs, px)
    expts = ExperimentList.from_file(run_dir / "indexed.expt")
    frame_of = np.array([e.image.frame for e in expts])
    t = ReflectionTable.from_file(run_dir / "indexed.refl")
    m = (np.asarray(t["flags"]) & np.uint64(Flags.indexed)) != 0
    d = (np.asarray(t["xyzcal.px"]) - np.asarray(t["xyzobs.px.value"]))[m, :2]
    fr = frame_of[np.asarray(t["id"])[m]]
    out["rmsd_all"] = float(np.sqrt(np.mean(np.sum(d**2, 1)))) if len(d) else float("nan")
    out["rmsd_shot"] = {int(f): float(np.sqrt(np.mean(np.sum(d[fr == f] ** 2, 1)))) for f in np.unique(fr)}
    # integrated intensities (summation) against the true partial intensities of the same reflections
    expts = ExperimentList.from_file(run_dir / "integrated.expt")
    frame_of = np.array([e.image.frame for e in expts])
    t = ReflectionTable.from_file(run_dir / "integrated.refl")
    m = (np.asarray(t["flags"]) & np.uint64(Flags.integrated_sum)) != 0
    frames = frame_of[np.asarray(t["id"])[m]]
    keys = _asu_keys(frames, np.asarray(t["miller_index"])[m])
    isum = np.asarray(t["intensity.sum.value"])[m]
    out["pairs"] = {k: (isum[i], truth_refl[k]) for k, i in keys.items() if k in truth_refl}
    return out


def _cc(pairs, frames=None) -> tuple[float, int]:
    v = np.array([p for k, p in pairs.items() if frames is None or k[0] in frames])
    if len(v) < 3:
        return float("nan"), len(v)
    return float(np.corrcoef(v[:, 0], v[:, 1])[0, 1]), len(v)


def loop(args) -> None:
    """process (nominal geometry) -> metrology levels 0,1,2 -> process (refined); and process (true), on images."""
    import json

    sys.path.insert(0, str(ROOT / "tests"))
    from test_metrology import position_errors_px

    from stillshot.models import Experiment, ExperimentList
    from stillshot.simulate import layouts
    from stillshot.simulate.run import run_simulation
    from stillshot.simulate.shots import SimulationSettings

    n, seed, nproc = args.loop_shots, args.loop_seed, 2
    work = Path(args.loop_dir) if args.loop_dir else Path(tempfile.mkdtemp(prefix="metrology_loop_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"\n== the user's loop on images: {n} simulated CSPAD shots (cxi), per-quadrant + per-sensor shifts "
          f"0.5-1.5 px and rotations <= 0.1 deg; mp.nproc={nproc}; work dir {work} ==", flush=True)
    nominal = layouts.cspad(100.0)
    sim = work / "sim"
    if not (sim / "true_geometry.expt").is_file():
        # quadrants moved here; sensors moved by the simulator (its perturb acts on one level)
        quads = layouts.perturb(nominal, level=1, shift_px_range=(0.5, 1.5), rotation_deg=0.1, seed=seed + 101)
        settings = SimulationSettings(layout="cspad", perturb=True, perturb_level=2, perturb_shift_px=(0.5, 1.5),
                                      perturb_rotation_deg=0.1, seed=seed)  # the simulator's default crystals
        t0 = time.perf_counter()
        info = run_simulation(settings, sim, n_shots=n, fmt="cxi", nproc=nproc, detector=quads, write_mtz=False)
        print(f"simulated {info['n_shots']} shots ({info['n_blank']} blank; median {info['median_spots']:.0f} "
              f"reflections of > 10 photons per hit; crystal sizes 1-5 um log-uniform) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        beam = ExperimentList.from_file(sim / "true_geometry.expt")[0].beam
        ExperimentList([Experiment(beam=beam, detector=nominal)]).as_file(work / "nominal_geometry.expt")
    truth = ExperimentList.from_file(sim / "true_geometry.expt")[0].detector
    raw, aligned, _ = position_errors_px(nominal, truth)
    print(f"nominal geometry: panel positions {raw:.3f} px RMS from the truth ({aligned:.3f} px after the best "
          f"rotation about the beam)")
    truth_json = json.loads((sim / "truth.json").read_text())
    truth_refl: dict = {}
    for shot in truth_json["shots"]:
        r = shot.get("reflections") or {}
        if not r:
            continue
        k = _asu_keys([shot["index"]] * len(r["hkl"]), r["hkl"])
        ip = np.asarray(r["intensity_partial"])
        truth_refl.update({key: ip[i] for key, i in k.items()})
    common = ["indexing.known_symmetry.space_group=P43212", f"indexing.known_symmetry.unit_cell={LOOP_CELL}",
              f"mp.nproc={nproc}", "output.progress=quiet", "output.report=False", "output.stream=False"]
    cxi = str(sim / "shots.cxi")
    runs = {}

    def process(name, geometry):
        d = work / f"process_{name}"
        if not (d / "summary.json").is_file():
            dt = _stillshot(["process", cxi, f"output.dir={d}", f"input.reference_geometry={geometry}", *common],
                            args.loop_timeout)
            print(f"  process ({name} geometry): {dt:.0f} s", flush=True)
        runs[name] = _loop_stats(d, truth_refl)

    process("nominal", work / "nominal_geometry.expt")
    met = work / "metrology"
    if not (met / "refined.expt").is_file():
        dt = _stillshot(["metrology", str(work / "process_nominal"), "metrology.levels=0,1,2", f"output.dir={met}"],
                        args.loop_timeout)
        print(f"  metrology levels 0,1,2 on the nominal run's indexed shots: {dt:.0f} s", flush=True)
    refined = ExperimentList.from_file(met / "refined.expt")[0].detector
    raw_r, aligned_r, theta = position_errors_px(refined, truth)
    print(f"refined geometry: panel positions {raw_r:.3f} px RMS from the truth ({aligned_r:.4f} px after the "
          f"unobservable rotation about the beam, {theta:+.4f} deg)")
    report = json.loads((met / "metrology.json").read_text())
    last = report["levels"][-1]
    print(f"  metrology RMSD {report['levels'][0]['rmsd_before']['xy_px']:.3f} -> {last['rmsd_after']['xy_px']:.3f} px "
          f"({last['n_reflections']} reflections at level {last['level']})")
    fixed = sorted({p.split(".")[0] for p in last["fixed_parameters"] if "." in p})
    if fixed:  # groups auto-reduction kept at their previous level's position: say so, and what the rest reach
        keep = np.array([not any(pn.name.startswith("ARRAY_" + g) for g in fixed) for pn in refined])
        err = _panel_errors_px(refined, truth)
        print(f"  level {last['level']} groups fixed by auto-reduction: {', '.join(fixed)} ({'; '.join(last['notes'])})")
        print(f"  per-panel errors (after the best rigid in-plane move): fixed groups {err[~keep].mean():.3f} px, "
              f"the other {keep.sum()} panels {np.sqrt(np.mean(err[keep] ** 2)):.3f} px RMS")
    process("refined", met / "refined.expt")
    process("true", sim / "true_geometry.expt")
    both = set.intersection(*(set(r["n_idx_spots"]) for r in runs.values()))
    print(f"\n  {'geometry':8s} {'indexed/shots':>14s} {'indexed/hits':>13s} {'idx spots/shot':>15s} "
          f"{'(common)':>9s} {'RMSD px':>8s} {'(common)':>9s} {'CC(I,truth)':>12s} {'(common)':>9s}")
    for name, r in runs.items():
        spots = list(r["n_idx_spots"].values())
        com_spots = [r["n_idx_spots"][f] for f in both]
        com_rmsd = [r["rmsd_shot"][f] for f in both if f in r["rmsd_shot"]]
        cc, _ = _cc(r["pairs"])
        cc_c, n_c = _cc(r["pairs"], both)
        print(f"  {name:8s} {r['indexed']:5d}/{r['n_shots']:<4d} {100 * r['indexed'] / r['n_shots']:3.0f}% "
              f"{r['indexed']:4d}/{r['hits']:<4d}{100 * r['indexed'] / max(r['hits'], 1):3.0f}% "
              f"{np.mean(spots) if spots else float('nan'):15.1f} {np.mean(com_spots) if com_spots else float('nan'):9.1f} "
              f"{np.median(list(r['rmsd_shot'].values())):8.3f} {np.median(com_rmsd) if com_rmsd else float('nan'):9.3f} "
              f"{cc:12.4f} {cc_c:9.4f}")
    print(f"  (common: the {len(both)} shots indexed with all three geometries; RMSD: median per shot of the "
          f"indexed spots after each shot's refinement; CC: summation intensities vs the true partial intensities)")
    gained = sorted(set(runs["refined"]["n_idx_spots"]) - set(runs["nominal"]["n_idx_spots"]))
    lost = sorted(set(runs["nominal"]["n_idx_spots"]) - set(runs["refined"]["n_idx_spots"]))
    print(f"  refined vs nominal: {len(gained)} shots indexed only with the refined geometry, {len(lost)} only with "
          f"the nominal one")
    a, b = runs["nominal"]["indexed"], runs["refined"]["indexed"]
    verdict = "higher" if b > a else ("equal" if b == a else "LOWER")
    print(f"indexing rate: nominal {100 * a / n:.1f}%, refined {100 * b / n:.1f}% ({verdict}), "
          f"true {100 * runs['true']['indexed'] / n:.1f}% (ceiling)")
    return {"runs": runs, "common": both, "nominal_error_px": aligned, "refined_error_px": aligned_r}


def _panel_errors_px(refined, truth) -> np.ndarray:
    """Each panel's mean corner distance (px) from the truth after the best rigid in-plane move of the whole."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_metrology import _corners

    a, b = _corners(refined)[:, :2], _corners(truth)[:, :2]
    am, bm = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - am).T @ (b - bm))
    res = b - ((a - am) @ (vt.T @ u.T).T + bm)
    return np.sqrt(np.sum(res**2, 1)).reshape(len(refined), -1).mean(1) / PIXEL


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dials-dir", default=None)
    ap.add_argument("--skip-dials", action="store_true")
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--scaling-shots", type=int, default=3000)
    ap.add_argument("--loop", action="store_true", help="the user's loop on simulated images (alone: no real data)")
    ap.add_argument("--loop-shots", type=int, default=240)
    ap.add_argument("--loop-seed", type=int, default=0)
    ap.add_argument("--loop-dir", default=None, help="work dir of --loop (kept; finished steps are reused)")
    ap.add_argument("--loop-timeout", type=float, default=1800.0, help="seconds allowed to each command of --loop")
    args = ap.parse_args()
    if args.loop and not args.simulated:
        loop(args)
        return 0
    ok = real_data(args)
    if args.simulated:
        simulated(args)
    if args.loop:
        loop(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
