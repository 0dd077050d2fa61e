"""Benchmark: merging simulated serial data against the known structure.

Sections (each prints its numbers; ``--sections`` picks them):

* ``partiality`` — N shots (default 2,000) of a P4₃2₁2 lysozyme-like crystal to
  2.0 Å with partiality, indexing orientation errors of 0.02° and mis-estimated
  mosaicity (:func:`stillshot.merge.synthetic.integrated_from_truth`: true
  partials + Poisson noise, background, 3 % model error).  Merged three ways —
  Monte-Carlo averaging (no partiality), scaling with integration's partiality
  estimates ("plain"), and with post-refinement — and compared with the true
  intensities: CC overall and per shell, the highest shell with multiplicity ≥ 10,
  and the merging statistics (CC1/2, CC*, Rsplit).  Checks the done-when of
  issue 7: CC ≥ 0.95 overall, ≥ 0.8 in that shell, post-refinement > plain.
* ``ambiguity`` — N shots (default 1,000) of a P6₃ crystal, each reported in a
  random one of the two indexing settings; fraction resolved consistently.
* ``integrated`` — N shots (default 150) rendered as images and integrated by
  :func:`stillshot.integrate.integrate_shot` (true crystals with 0.02°
  orientation errors), then merged plain and post-refined.
* ``dials`` — the peer: ``dials.scale model=KB`` (Debian's DIALS, through
  ../shared/tools/dials-peer) on N synthetic shots (default 200), its scaled
  intensities (flagged ``scaled``, ``intensity.scale.value /
  inverse_scale_factor``) merged by an inverse-variance mean, beside stillshot's
  plain and post-refined merges of the same files: CC to the truth and wall
  times (dials.merge of Debian's DIALS 3.12 fails on stills in its statistics).

Usage::

    python benchmarks/merge.py [--shots 2000] [--photons 3000] [--ambiguity-shots 1000]
                               [--integrated-shots 150] [--dials-shots 200]
                               [--sections partiality,ambiguity,integrated,dials]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gemmi  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from stillshot.merge import (  # noqa: E402
    MergeOptions,
    ambiguity_operators,
    merge_observations,
    observations_from_integrated,
    pearson,
)
from stillshot.merge.symmetry import coset_table  # noqa: E402
from stillshot.merge.synthetic import SyntheticIntegration, integrated_from_truth  # noqa: E402
from stillshot.simulate import SimulationSettings, Simulator  # noqa: E402

DIALS_PEER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "dials-peer"


def _settings(**kw) -> SimulationSettings:
    base = dict(d_min=2.0, blank_fraction=0.0, photons=3000.0, min_partiality=1e-4, layout="single_panel",
                n_fast=2048, n_slow=2048, distance=120.0, seed=7)
    base.update(kw)
    return SimulationSettings(**base)


def _truth_report(name, result, truth, seconds):
    """Print CC to the truth overall and per shell; returns (overall CC, CC in the deepest shell with mult >= 10)."""
    cc = pearson(result.intensity, truth)
    rows = []
    deep = None
    for sh in result.statistics.shells:
        sel = (result.d <= sh.d_max) & (result.d > sh.d_min)
        c = pearson(result.intensity[sel], truth[sel])
        rows.append(f"{sh.d_min:5.2f}:{c:.3f}(x{sh.multiplicity:.1f})")
        if sh.multiplicity >= 10:
            deep = (sh.d_min, c)
    print(f"  {name:<12} {seconds:6.1f} s  CC(truth) = {cc:.4f}  CC1/2 = {result.statistics.overall.cc_half:.4f}"
          f"  Rsplit = {result.statistics.overall.r_split:.4f}")
    print("               per shell d_min:CC(multiplicity): " + " ".join(rows))
    if deep is not None:
        print(f"               highest shell with multiplicity >= 10: d_min {deep[0]:.2f} Å, CC(truth) = {deep[1]:.4f}")
    return cc, (deep[1] if deep else float("nan"))


def section_partiality(n_shots: int, photons: float) -> bool:
    print(f"== partiality: {n_shots} simulated P43212 shots to 2.0 Å ({photons:g} photons per unit intensity) ==")
    sim = Simulator(_settings(photons=photons))
    t0 = time.perf_counter()
    experiments, table, truth = integrated_from_truth(sim, range(n_shots), SyntheticIntegration(seed=7))
    obs = observations_from_integrated([(experiments, table)])
    print(f"  simulated {len(experiments)} lattices, {obs.n_obs} observations "
          f"({obs.n_obs / max(len(experiments), 1):.0f} per shot) in {time.perf_counter() - t0:.1f} s")
    print(f"  CC(estimated partiality, true partiality) = "
          f"{pearson(np.asarray(table['partiality']), np.asarray(table['partiality.true'])):.3f}")
    results = {}
    for name, opt in (("monte_carlo", MergeOptions(partiality="none")), ("plain", MergeOptions()),
                      ("postrefined", MergeOptions(postrefinement=True))):
        t0 = time.perf_counter()
        res = merge_observations(obs, opt)
        dt = time.perf_counter() - t0
        results[name] = (res,) + _truth_report(name, res, sim.structure.intensities(res.hkl), dt)
    post, cc_post, deep_post = results["postrefined"]
    _, cc_plain, _ = results["plain"]
    P = post.shot_parameters[post.shot_accepted]
    print(f"  post-refined scales vs true scales: CC(ln G, ln scale) = "
          f"{pearson(P[:, 0], np.log(truth['scale'][post.shot_accepted])):.4f}")
    print("  merging statistics (post-refined):")
    print("    " + post.statistics.format_table().replace("\n", "\n    "))
    print("  " + "; ".join(post.log[-2:]))
    ok = cc_post >= 0.95 and deep_post >= 0.8 and cc_post > cc_plain
    print(f"  done-when: CC >= 0.95 overall [{cc_post:.4f}], >= 0.8 in the highest shell with multiplicity >= 10 "
          f"[{deep_post:.4f}], post-refinement > plain [{cc_post:.4f} > {cc_plain:.4f}]: {'PASS' if ok else 'FAIL'}")
    return ok


def section_ambiguity(n_shots: int) -> bool:
    print(f"== ambiguity: {n_shots} simulated P63 shots, random indexing setting per shot ==")
    cell = (100.0, 100.0, 60.0, 90.0, 90.0, 120.0)
    sim = Simulator(_settings(d_min=3.0, unit_cell=cell, space_group="P 63", seed=11))
    ops = ambiguity_operators(gemmi.SpaceGroup("P 63"), gemmi.UnitCell(*cell))
    experiments, table, truth = integrated_from_truth(sim, range(n_shots), SyntheticIntegration(seed=11),
                                                      ambiguity_operators=ops)
    obs = observations_from_integrated([(experiments, table)])
    t0 = time.perf_counter()
    res = merge_observations(obs, MergeOptions())
    dt = time.perf_counter() - t0
    tab = coset_table(ops, res.symmetry.rotations)
    inverse = [int(np.nonzero(tab[a] == 0)[0][0]) for a in range(len(ops))]
    rel = np.array([tab[inverse[c], t] for c, t in zip(res.ambiguity.choice, truth["operator"])])
    frac = np.bincount(rel).max() / len(rel)
    print(f"  operators {', '.join(op.triplet for op in ops)}; reported settings {np.bincount(truth['operator']).tolist()}")
    print(f"  merge (with Brehm-Diederichs) {dt:.1f} s; resolved consistently: {100 * frac:.2f} %; "
          f"median margin {np.nanmedian(res.ambiguity.margin):.3f}")
    setting = ops[int(np.bincount(rel).argmax())]
    print(f"  CC(truth in the merged setting) = {pearson(res.intensity, sim.structure.intensities(setting.apply(res.hkl))):.4f}")
    ok = frac >= 0.98
    print(f"  done-when: >= 98 % resolved: {'PASS' if ok else 'FAIL'}")
    return ok


def section_integrated(n_shots: int) -> bool:
    from stillshot.integrate import integrate_shot
    from stillshot.models import Crystal, ExperimentList
    from stillshot.table import ReflectionTable

    print(f"== integrated: {n_shots} rendered shots integrated by stillshot.integrate, merged to 3.0 Å ==")
    sim = Simulator(_settings(d_min=3.0, n_fast=1024, n_slow=1024, distance=60.0, seed=13))
    rng = np.random.default_rng(13)
    exps, tabs = ExperimentList(), []
    t0 = time.perf_counter()
    t_int = 0.0
    for i in range(n_shots):
        shot = sim.shot(i)
        for e in shot.truth.experiments(sim.detector):
            c = e.crystal
            dR = Rotation.from_rotvec(np.radians(0.02) * np.array([rng.standard_normal(), rng.standard_normal(), 0.0]))
            e = e.with_crystal(Crystal(dR.as_matrix() @ c.A, c.space_group, half_mosaicity_deg=c.half_mosaicity_deg,
                                       domain_size_ang=c.domain_size_ang))
            t1 = time.perf_counter()
            r = integrate_shot(e, shot.data)
            t_int += time.perf_counter() - t1
            if r.status != "integrated":
                continue
            k = len(exps)
            exps.append(e)
            t = r.reflections
            t["id"] = np.full(t.nrows, k, dtype=np.int32)
            tabs.append(t)
    table = ReflectionTable.concat(tabs)
    table.identifiers = {i: e.identifier for i, e in enumerate(exps)}
    print(f"  rendered + integrated {len(exps)} lattices in {time.perf_counter() - t0:.1f} s "
          f"(integration {1000 * t_int / max(len(exps), 1):.0f} ms per lattice)")
    obs = observations_from_integrated([(exps, table)])
    ccs = {}
    for name, opt in (("plain", MergeOptions(d_min=3.0)), ("postrefined", MergeOptions(d_min=3.0, postrefinement=True))):
        t1 = time.perf_counter()
        res = merge_observations(obs, opt)
        ccs[name] = _truth_report(name, res, sim.structure.intensities(res.hkl), time.perf_counter() - t1)[0]
    ok = ccs["postrefined"] > ccs["plain"]
    print(f"  post-refinement > plain on integrated data: {'PASS' if ok else 'FAIL'}")
    return ok


def section_dials(n_shots: int) -> bool:
    from stillshot.models import ExperimentList
    from stillshot.table import Flags, ReflectionTable

    print(f"== dials: dials.scale (KB) beside stillshot merge on {n_shots} synthetic shots to 2.5 Å ==")
    if not DIALS_PEER.exists():
        print(f"  skipped: {DIALS_PEER} not found")
        return True
    sim = Simulator(_settings(d_min=2.5, seed=17))
    experiments, table, _ = integrated_from_truth(sim, range(n_shots), SyntheticIntegration(seed=17))
    with tempfile.TemporaryDirectory() as tmp:
        experiments.as_file(Path(tmp) / "integrated.expt")
        table.as_file(Path(tmp) / "integrated.refl")
        t0 = time.perf_counter()
        proc = subprocess.run([str(DIALS_PEER), "dials.scale", "integrated.expt", "integrated.refl", "model=KB",
                               "nproc=1"], cwd=tmp, capture_output=True, text=True)
        t_dials = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"  dials.scale failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            return True
        scaled = ReflectionTable.from_file(Path(tmp) / "scaled.refl")
        exps = ExperimentList.from_file(Path(tmp) / "integrated.expt")
    flags = np.asarray(scaled["flags"]).astype(np.int64)
    ok = ((flags & int(Flags.scaled)) != 0) & ((flags & int(Flags.bad_for_scaling)) == 0)
    isf = np.asarray(scaled["inverse_scale_factor"])[ok]
    x = np.asarray(scaled["intensity.scale.value"])[ok] / isf
    v = np.asarray(scaled["intensity.scale.variance"])[ok] / isf**2
    from stillshot.merge.symmetry import MergeSymmetry

    sym = MergeSymmetry(gemmi.SpaceGroup("P 43 21 2"), gemmi.UnitCell(*sim.settings.unit_cell))
    keys = sym.keys(np.asarray(scaled["miller_index"])[ok])
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    w = 1.0 / v
    mean = np.bincount(inv, weights=w * x) / np.bincount(inv, weights=w)
    hkl = np.asarray(scaled["miller_index"])[ok][first]
    cc_dials = pearson(mean, sim.structure.intensities(hkl))
    print(f"  dials.scale        {t_dials:6.1f} s  CC(truth) = {cc_dials:.4f}  ({len(uniq)} unique from {int(ok.sum())} "
          f"scaled observations)")
    obs = observations_from_integrated([(exps, table)])
    times = {}
    for name, opt in (("plain", MergeOptions()), ("postrefined", MergeOptions(postrefinement=True))):
        t0 = time.perf_counter()
        res = merge_observations(obs, opt)
        times[name] = time.perf_counter() - t0
        cc = pearson(res.intensity, sim.structure.intensities(res.hkl))
        print(f"  stillshot {name:<12} {times[name]:6.1f} s  CC(truth) = {cc:.4f}  ({len(res.hkl)} unique)")
    print(f"  wall-time ratio dials.scale / stillshot merge: plain {t_dials / times['plain']:.1f}x, "
          f"post-refined {t_dials / times['postrefined']:.1f}x (dials.scale includes its start-up and report)")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shots", type=int, default=2000)
    ap.add_argument("--ambiguity-shots", type=int, default=1000)
    ap.add_argument("--photons", type=float, default=3000.0)
    ap.add_argument("--integrated-shots", type=int, default=150)
    ap.add_argument("--dials-shots", type=int, default=200)
    ap.add_argument("--sections", default="partiality,ambiguity,integrated,dials")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    ok = True
    if "partiality" in sections:
        ok &= section_partiality(args.shots, args.photons)
    if "ambiguity" in sections:
        ok &= section_ambiguity(args.ambiguity_shots)
    if "integrated" in sections:
        ok &= section_integrated(args.integrated_shots)
    if "dials" in sections:
        ok &= section_dials(args.dials_shots)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
