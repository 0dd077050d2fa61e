"""Merging: symmetry, scaling, post-refinement, ambiguity, statistics, MTZ output, the merge command.

Data are per-shot "integrated" tables made from simulator truth
(:func:`stillshot.merge.synthetic.integrated_from_truth`: true partial
intensities with Poisson noise, a background estimate, a 3 % model error and
partialities predicted from a crystal model with indexing errors), so the
merged intensities can be checked against the known structure.
"""

import json
import math

import gemmi
import numpy as np
import pytest
from scipy.integrate import quad

from stillshot.cli.merge import run as merge_cli
from stillshot.merge import (
    ErrorModel,
    MergeOptions,
    ReferenceIntensities,
    ambiguity_operators,
    cc_star,
    fit_error_model,
    french_wilson,
    merge_observations,
    observations_from_integrated,
    pearson,
)
from stillshot.merge.merging import reject_outliers, weighted_merge, wilson_outliers
from stillshot.merge.partiality import small_rotations
from stillshot.merge.symmetry import MergeSymmetry, coset_table, laue_rotations
from stillshot.merge.synthetic import SyntheticIntegration, integrated_from_truth
from stillshot.models import ExperimentList
from stillshot.simulate import SimulationSettings, Simulator
from stillshot.table import Flags


def _settings(**kw):
    base = dict(d_min=3.5, blank_fraction=0.0, photons=3000.0, min_partiality=1e-4, layout="single_panel",
                n_fast=2048, n_slow=2048, distance=120.0, seed=1)
    base.update(kw)
    return SimulationSettings(**base)


def _shell_cc_vs_truth(result, truth):
    out = []
    for sh in result.statistics.shells:
        sel = (result.d <= sh.d_max) & (result.d > sh.d_min)
        out.append((sh, pearson(result.intensity[sel], truth[sel])))
    return out


@pytest.fixture(scope="module")
def tetragonal_run():
    """400 shots of P43212 lysozyme-like crystals to 3.5 Å, with partiality and indexing errors."""
    sim = Simulator(_settings())
    experiments, table, truth = integrated_from_truth(sim, range(400), SyntheticIntegration(seed=1))
    return sim, experiments, table, truth


@pytest.fixture(scope="module")
def tetragonal_merges(tetragonal_run):
    sim, experiments, table, _ = tetragonal_run
    obs = observations_from_integrated([(experiments, table)])
    plain = merge_observations(obs, MergeOptions())
    post = merge_observations(obs, MergeOptions(postrefinement=True))
    return sim, plain, post


# -- symmetry -----------------------------------------------------------------------------

@pytest.mark.parametrize("sg,cell,n_ops", [
    ("P 63", (100, 100, 60, 90, 90, 120), 2),
    ("P 4", (79, 79, 38, 90, 90, 90), 2),
    ("P 3", (100, 100, 60, 90, 90, 120), 4),
    ("P 43 21 2", (79, 79, 38, 90, 90, 90), 1),
    ("P 21 21 21", (50, 60, 70, 90, 90, 90), 1),
])
def test_ambiguity_operators_are_lattice_cosets_of_the_point_group(sg, cell, n_ops):
    group = gemmi.SpaceGroup(sg)
    ops = ambiguity_operators(group, gemmi.UnitCell(*cell))
    assert len(ops) == n_ops
    assert ops[0].triplet == "h,k,l"
    rot = laue_rotations(group)
    table = coset_table(ops, rot)
    # a group modulo the Laue class: every row and column of the table is a permutation
    for row in table:
        assert sorted(row) == list(range(n_ops))
    for col in table.T:
        assert sorted(col) == list(range(n_ops))
    sym = MergeSymmetry(group, gemmi.UnitCell(*cell))
    h = np.array([[3, 1, 2], [5, 2, 7], [1, 4, 3]])
    for op in ops[1:]:
        # an ambiguity operator preserves the metric but is not a symmetry of the point group
        assert np.allclose(sym.d_spacing(op.apply(h)), sym.d_spacing(h))
        assert not np.array_equal(sym.keys(op.apply(h)), sym.keys(h))


def test_asu_and_isym_round_trip_through_an_unmerged_mtz(tmp_path):
    sym = MergeSymmetry(gemmi.SpaceGroup("P 63"), gemmi.UnitCell(100, 100, 60, 90, 90, 120))
    rng = np.random.default_rng(3)
    hkl = rng.integers(-8, 9, size=(200, 3))
    hkl = hkl[np.any(hkl != 0, axis=1)]
    asu, isym = sym.to_asu(hkl)
    # same class as the input, and equivalents share one ASU index
    assert np.array_equal(sym.keys(asu), sym.keys(hkl))
    assert len(np.unique(asu, axis=0)) == len(np.unique(sym.keys(hkl)))
    from stillshot.merge import unmerged_mtz

    n = len(hkl)
    mtz = unmerged_mtz(sym, hkl, np.ones(n, dtype=int), np.arange(n, dtype=float), np.ones(n),
                       scale_used=np.ones(n), partiality=np.ones(n), xy_px=np.zeros((n, 2)),
                       batch_wavelengths=np.array([1.3]), batch_cells=np.array([[100, 100, 60, 90, 90, 120]]))
    mtz.write_to_file(str(tmp_path / "u.mtz"))
    back = gemmi.read_mtz_file(str(tmp_path / "u.mtz"))
    back.switch_to_original_hkl()
    data = np.asarray(back)
    order = np.argsort(data[:, back.column_labels().index("I")])
    assert np.array_equal(data[order, :3].astype(int), hkl)


def test_small_rotations_are_rotations():
    R = small_rotations(np.array([0.01, -0.3]), np.array([0.2, 0.05]))
    for m in R:
        assert np.allclose(m @ m.T, np.eye(3), atol=1e-12)
        assert math.isclose(np.linalg.det(m), 1.0, rel_tol=1e-12)
    # a rotation about x leaves x fixed
    assert np.allclose(small_rotations(np.array([0.3]), np.array([0.0]))[0] @ [1, 0, 0], [1, 0, 0])


# -- merging kernels ------------------------------------------------------------------------

def test_weighted_merge_and_outlier_rejection():
    rng = np.random.default_rng(0)
    n_cls, per = 50, 12
    truth = rng.uniform(10, 100, n_cls)
    idx = np.repeat(np.arange(n_cls), per)
    v = np.full(len(idx), 4.0)
    x = truth[idx] + 2.0 * rng.standard_normal(len(idx))
    x[5] += 200.0  # one gross outlier in class 0
    keep = reject_outliers(idx, n_cls, x, v, zmax=6.0)
    assert not keep[5]
    assert keep.sum() >= len(idx) - 2
    mean, var, n = weighted_merge(idx, n_cls, x, v, keep)
    assert np.all(np.abs(mean - truth) < 5 * np.sqrt(var))
    assert np.allclose(var[1:], 4.0 / per)
    assert n[0] == per - 1 and np.all(n[1:] == per)


def test_wilson_outliers_catch_a_hot_pixel_that_equivalents_cannot():
    rng = np.random.default_rng(5)
    n = 5000
    d = rng.uniform(2.0, 10.0, n)
    mean = np.exp(-20.0 / (2 * d**2))
    x = rng.exponential(mean) + 0.05 * rng.standard_normal(n)
    v = np.full(n, 0.05**2)
    eps = np.ones(n)
    x[17] = 500.0 * mean[17]
    out = wilson_outliers(x, v, d, eps, np.ones(n, dtype=bool))
    assert out[17] and out.sum() == 1
    # a symmetry-enhanced reflection (ε = 4) is expected to be four times stronger
    x[18] = 100.0 * mean[18]
    assert wilson_outliers(x, v, d, eps, np.ones(n, dtype=bool))[18]
    eps[18] = 4.0
    assert not wilson_outliers(x, v, d, eps, np.ones(n, dtype=bool))[18]
    assert not wilson_outliers(x, v, d, eps, np.ones(n, dtype=bool), ratio=0).any()


def test_error_model_recovers_inflation():
    rng = np.random.default_rng(1)
    n_cls, per = 3000, 8
    truth = rng.exponential(200.0, n_cls)
    idx = np.repeat(np.arange(n_cls), per)
    g = rng.uniform(0.3, 1.0, len(idx))
    model = g * truth[idx]
    var = 20.0 + model  # what integration reports (background + counts)
    sdfac, sdadd = 1.4, 0.05
    true_sd = sdfac * np.sqrt(var + (sdadd * model) ** 2)
    I = model + true_sd * rng.standard_normal(len(idx))
    em = fit_error_model(idx, n_cls, I, var, g, truth)
    assert 1.25 < em.sdfac < 1.55
    assert 0.03 < em.sdadd < 0.07
    z = (I - model) / np.sqrt(em.variance(var, model))
    assert 0.9 < np.std(z) < 1.1
    assert ErrorModel().variance(np.array([2.0]), np.array([5.0]))[0] == 2.0


def test_french_wilson_matches_quadrature():
    Sig = 10.0
    for I, s, centric in [(-5.0, 4.0, False), (3.0, 4.0, False), (2.0, 3.0, True), (400.0, 5.0, False)]:
        if centric:
            prior = lambda J: math.exp(-J / (2 * Sig)) / math.sqrt(2 * math.pi * Sig * max(J, 1e-300))
        else:
            prior = lambda J: math.exp(-J / Sig) / Sig
        post = lambda J: prior(J) * math.exp(-0.5 * ((I - J) / s) ** 2)
        hi = max(I, 0) + 20 * s
        pts = [max(I, 0.0)]
        z = quad(post, 0, hi, points=pts, limit=200)[0]
        ef = quad(lambda J: math.sqrt(J) * post(J), 0, hi, points=pts, limit=200)[0] / z
        ej = quad(lambda J: J * post(J), 0, hi, points=pts, limit=200)[0] / z
        F, sF = french_wilson(np.array([I]), np.array([s]), np.array([Sig]), np.array([centric]))
        assert F[0] == pytest.approx(ef, rel=0.02)
        assert sF[0] == pytest.approx(math.sqrt(ej - ef**2), rel=0.05)
    # strong reflections: F = sqrt(I), sigF = sigI / (2 sqrt(I))
    F, sF = french_wilson(np.array([1e4]), np.array([10.0]), np.array([1e4]), np.array([False]))
    assert F[0] == pytest.approx(100.0, rel=1e-3) and sF[0] == pytest.approx(0.05, rel=0.05)


def test_cc_star_and_pearson():
    assert cc_star(1.0) == pytest.approx(1.0)
    assert cc_star(0.5) == pytest.approx(math.sqrt(2 * 0.5 / 1.5))
    assert math.isnan(cc_star(-0.1))
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 2], [1, 2]))


# -- observations ------------------------------------------------------------------------------

def test_observations_respect_flags_lp_and_intensity_choice():
    sim = Simulator(_settings())
    experiments, table, _ = integrated_from_truth(sim, range(3), SyntheticIntegration(seed=2))
    n = len(table)
    flags = np.asarray(table["flags"]).copy()
    flags[0] |= int(Flags.overloaded)
    flags[1] &= ~np.uint64(int(Flags.integrated_sum))
    table["flags"] = flags
    table["intensity.prf.value"] = np.asarray(table["intensity.sum.value"]) + 1000.0
    table["intensity.prf.variance"] = np.asarray(table["intensity.sum.variance"])
    obs = observations_from_integrated([(experiments, table)], intensity="sum")
    assert obs.n_obs == n - 2 and obs.n_shots == len(experiments)
    lp = np.asarray(table["lp"])[2:]
    assert np.allclose(obs.intensity, np.asarray(table["intensity.sum.value"])[2:] * lp)
    assert np.allclose(obs.variance, np.asarray(table["intensity.sum.variance"])[2:] * lp**2)
    # auto takes profile fitting only where integration flagged it
    flags2 = np.asarray(table["flags"]).copy()
    flags2[5] |= np.uint64(int(Flags.integrated_prf))
    table["flags"] = flags2
    auto = observations_from_integrated([(experiments, table)], intensity="auto")
    diff = auto.intensity - obs.intensity
    assert np.count_nonzero(np.abs(diff) > 1) == 1
    # without an lp column, the polarization factor is computed from s1 and the beam
    no_lp = table.copy()
    del no_lp["lp"]
    pol = observations_from_integrated([(experiments, no_lp)], intensity="sum")
    assert np.allclose(pol.intensity, obs.intensity, rtol=1e-9)
    # rows are matched to experiments through the identifiers
    shuffled = ExperimentList(list(experiments)[::-1])
    again = observations_from_integrated([(shuffled, table)], intensity="sum")
    assert np.array_equal(again.A[again.shot], obs.A[obs.shot])


# -- the done-when criteria (small versions; 2,000 shots in benchmarks/merge.py) -------------------

def test_merged_intensities_match_the_true_structure(tetragonal_merges):
    sim, plain, post = tetragonal_merges
    for result in (plain, post):
        truth = sim.structure.intensities(result.hkl)
        assert pearson(result.intensity, truth) >= 0.95
        shells = _shell_cc_vs_truth(result, truth)
        deep = [(sh, cc) for sh, cc in shells if sh.multiplicity >= 10]
        assert deep, "no shell with multiplicity >= 10"
        assert deep[-1][1] >= 0.8
        assert result.statistics.overall.completeness > 0.9
        assert result.statistics.overall.cc_half > 0.9


def test_postrefinement_beats_plain_averaging(tetragonal_merges):
    sim, plain, post = tetragonal_merges
    cc_plain = pearson(plain.intensity, sim.structure.intensities(plain.hkl))
    cc_post = pearson(post.intensity, sim.structure.intensities(post.hkl))
    assert cc_post > cc_plain
    assert 1 - cc_post < 0.5 * (1 - cc_plain)  # at least halves the disagreement
    assert post.statistics.overall.cc_half > plain.statistics.overall.cc_half


def test_refined_scales_follow_the_true_scales(tetragonal_run, tetragonal_merges):
    _, _, _, truth = tetragonal_run
    _, _, post = tetragonal_merges
    ok = post.shot_accepted
    G = np.exp(post.shot_parameters[ok, 0])
    assert pearson(np.log(G), np.log(truth["scale"][ok])) > 0.95


def test_monte_carlo_averaging_is_worse_than_partiality_correction(tetragonal_run, tetragonal_merges):
    sim, experiments, table, _ = tetragonal_run
    _, plain, _ = tetragonal_merges
    obs = observations_from_integrated([(experiments, table)])
    mc = merge_observations(obs, MergeOptions(partiality="none"))
    assert pearson(mc.intensity, sim.structure.intensities(mc.hkl)) < pearson(
        plain.intensity, sim.structure.intensities(plain.hkl))


def test_a_hot_pixel_does_not_survive_merging(tetragonal_run, tetragonal_merges):
    sim, experiments, table, _ = tetragonal_run
    _, plain, _ = tetragonal_merges
    hot = table.copy()
    I = np.asarray(hot["intensity.sum.value"]).copy()
    V = np.asarray(hot["intensity.sum.variance"]).copy()
    p = np.asarray(hot["partiality"])
    # on a reflection measured at most twice, where equivalents cannot outvote it
    keys = plain.symmetry.keys(np.asarray(hot["miller_index"]))
    n_of = dict(zip(plain.symmetry.keys(plain.hkl).tolist(), plain.n_obs.tolist()))
    rows = [i for i in np.nonzero(p > 0.6)[0] if n_of.get(int(keys[i]), 0) in (1, 2)]
    row = int(rows[0])
    I[row], V[row] = 5e5, 5.3e5  # a hot pixel in the foreground: huge counts, Poisson variance
    hot["intensity.sum.value"] = I
    hot["intensity.sum.variance"] = V
    result = merge_observations(observations_from_integrated([(experiments, hot)]), MergeOptions())
    truth = sim.structure.intensities(result.hkl)
    assert pearson(result.intensity, truth) >= 0.95
    key = result.symmetry.keys(np.asarray(hot["miller_index"])[row:row + 1])[0]
    k = int(np.nonzero(result.symmetry.keys(result.hkl) == key)[0][0])
    typical = np.median(plain.intensity[plain.intensity > 0])
    assert result.intensity[k] < 50 * typical


def _hexagonal_run(n_shots, seed, sg="P 63"):
    cell = (100.0, 100.0, 60.0, 90.0, 90.0, 120.0)
    sim = Simulator(_settings(d_min=3.5, unit_cell=cell, space_group=sg, seed=seed))
    ops = ambiguity_operators(gemmi.SpaceGroup(sg), gemmi.UnitCell(*cell))
    experiments, table, truth = integrated_from_truth(sim, range(n_shots), SyntheticIntegration(seed=seed),
                                                      ambiguity_operators=ops)
    return sim, ops, experiments, table, truth


def _fraction_consistent(result, ops, true_ops):
    table = coset_table(ops, result.symmetry.rotations)
    inverse = [int(np.nonzero(table[a] == 0)[0][0]) for a in range(len(ops))]
    rel = np.array([table[inverse[c], t] for c, t in zip(result.ambiguity.choice, true_ops)])
    return np.bincount(rel).max() / len(rel), rel


def test_p63_indexing_ambiguity_is_resolved():
    sim, ops, experiments, table, truth = _hexagonal_run(300, seed=4)
    assert 0.3 < np.mean(truth["operator"]) < 0.7  # both settings really occur
    obs = observations_from_integrated([(experiments, table)])
    result = merge_observations(obs, MergeOptions())
    frac, rel = _fraction_consistent(result, ops, truth["operator"])
    assert frac >= 0.98
    # merged in one consistent setting: the data match the truth in that setting
    setting = ops[int(np.bincount(rel).argmax())]
    true_I = sim.structure.intensities(setting.apply(result.hkl))
    assert pearson(result.intensity, true_I) > 0.95
    assert result.ambiguity.method == "brehm_diederichs"
    assert sum(v for k, v in result.ambiguity.counts.items()) == len(experiments)
    # without resolution the merge is a mix of the two settings
    mixed = merge_observations(obs, MergeOptions(ambiguity="none"))
    assert pearson(mixed.intensity, sim.structure.intensities(mixed.hkl)) < 0.9


def test_p3_fourfold_ambiguity_is_resolved():
    sim, ops, experiments, table, truth = _hexagonal_run(200, seed=6, sg="P 3")
    assert len(ops) == 4 and len(np.unique(truth["operator"])) == 4
    obs = observations_from_integrated([(experiments, table)])
    result = merge_observations(obs, MergeOptions(error_model="none"))
    frac, _ = _fraction_consistent(result, ops, truth["operator"])
    assert frac >= 0.98


def test_p63_ambiguity_against_a_reference_is_absolute():
    sim, ops, experiments, table, truth = _hexagonal_run(120, seed=5)
    ref_hkl, ref_I = sim.structure.asu_reflections(3.5)
    obs = observations_from_integrated([(experiments, table)])
    result = merge_observations(obs, MergeOptions(postrefinement=True),
                                reference=ReferenceIntensities(ref_hkl, ref_I))
    assert result.ambiguity.method == "reference"
    table_ = coset_table(ops, result.symmetry.rotations)
    # applying the chosen operator undoes the random one: M_choice·M_true ≡ identity
    inverse = [int(np.nonzero(table_[a] == 0)[0][0]) for a in range(len(ops))]
    undone = np.array([table_[inverse[c], t] == 0 for c, t in zip(result.ambiguity.choice, truth["operator"])])
    assert undone.mean() >= 0.98
    assert pearson(result.intensity, sim.structure.intensities(result.hkl)) > 0.95


# -- the command -------------------------------------------------------------------------------------

def test_merge_command_writes_mtz_and_statistics(tmp_path, capsys):
    sim = Simulator(_settings(d_min=4.0))
    dirs = []
    for k in range(2):
        experiments, table, _ = integrated_from_truth(sim, range(60 * k, 60 * (k + 1)),
                                                      SyntheticIntegration(seed=10 + k))
        d = tmp_path / f"run{k}"
        d.mkdir()
        experiments.as_file(d / "integrated.expt")
        table.as_file(d / "integrated.refl")
        dirs.append(str(d))
    sim.structure.write_mtz(str(tmp_path / "reference.mtz"), 4.0)
    out = tmp_path / "merged"
    rc = merge_cli(dirs + [f"output.dir={out}", "statistics.n_bins=5", "postrefinement.enable=True",
                           f"scaling.reference={tmp_path / 'reference.mtz'}"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "CC1/2" in text and "Rsplit" in text
    merged = gemmi.read_mtz_file(str(out / "merged.mtz"))
    types = {c.label: c.type for c in merged.columns}
    assert types == {"H": "H", "K": "H", "L": "H", "IMEAN": "J", "SIGIMEAN": "Q", "F": "F", "SIGF": "Q", "N": "I"}
    assert merged.spacegroup.hm == "P 43 21 2"
    data = np.asarray(merged)
    imean = data[:, merged.column_labels().index("IMEAN")]
    truth = sim.structure.intensities(data[:, :3].astype(int))
    assert pearson(imean, truth) > 0.95
    assert np.all(data[:, merged.column_labels().index("F")] >= 0)
    for h in (1, 2):
        half = gemmi.read_mtz_file(str(out / f"merged_half{h}.mtz"))
        assert {c.label: c.type for c in half.columns}["IMEAN"] == "J"
        assert 0 < half.nreflections <= merged.nreflections
    unmerged = gemmi.read_mtz_file(str(out / "unmerged.mtz"))
    utypes = {c.label: c.type for c in unmerged.columns}
    assert utypes["M/ISYM"] == "Y" and utypes["BATCH"] == "B" and utypes["I"] == "J" and utypes["SIGI"] == "Q"
    assert len(unmerged.batches) == 120
    batches = np.asarray(unmerged)[:, unmerged.column_labels().index("BATCH")]
    assert batches.min() == 1 and batches.max() == 120
    stats = json.loads((out / "merging_stats.json").read_text())
    assert len(stats["statistics"]["shells"]) == 5
    shell = stats["statistics"]["shells"][0]
    for key in ("d_max", "d_min", "completeness", "multiplicity", "mean_i_over_sigma", "cc_half", "cc_star", "r_split"):
        assert key in shell
    assert stats["summary"]["n_shots"] == 120
    assert stats["parameters"]["postrefinement"]["enable"] is True


def test_merge_command_reports_ambiguity_choices(tmp_path, capsys):
    sim, ops, experiments, table, truth = _hexagonal_run(80, seed=8)
    experiments.as_file(tmp_path / "p63.expt")
    table.as_file(tmp_path / "p63.refl")
    rc = merge_cli([str(tmp_path / "p63.expt"), str(tmp_path / "p63.refl"), f"output.dir={tmp_path / 'out'}",
                    "symmetry.space_group=P63"])
    text = capsys.readouterr().out
    assert rc == 0 and "indexing ambiguity" in text
    amb = json.loads((tmp_path / "out" / "ambiguity.json").read_text())
    assert amb["operators"] == ["h,k,l", "-h-k,k,-l"] and amb["method"] == "brehm_diederichs"
    assert len(amb["shots"]) == 80
    chosen = np.array([amb["operators"].index(s["operator"]) for s in amb["shots"]])
    # the chosen operators undo the random ones up to one overall choice
    agree = np.mean(chosen == truth["operator"])
    assert max(agree, 1 - agree) >= 0.95
    stats = json.loads((tmp_path / "out" / "merging_stats.json").read_text())
    assert sum(stats["ambiguity"]["counts"].values()) == 80


def test_unmerged_mtz_reads_in_reciprocalspaceship(tmp_path):
    rs = pytest.importorskip("reciprocalspaceship")
    sim = Simulator(_settings(d_min=4.0))
    experiments, table, _ = integrated_from_truth(sim, range(40), SyntheticIntegration(seed=3))
    experiments.as_file(tmp_path / "a.expt")
    table.as_file(tmp_path / "a.refl")
    assert merge_cli([str(tmp_path / "a.expt"), str(tmp_path / "a.refl"), f"output.dir={tmp_path}"]) == 0
    ds = rs.read_mtz(str(tmp_path / "unmerged.mtz"))
    assert not ds.merged
    assert {"I", "SIGI", "BATCH"} <= set(ds.columns)
    merged = rs.read_mtz(str(tmp_path / "merged.mtz"))
    assert {"IMEAN", "SIGIMEAN", "F", "SIGF"} <= set(merged.columns)


def test_merge_command_usage_errors(tmp_path, capsys):
    assert merge_cli([]) == 2
    assert merge_cli([str(tmp_path / "a.expt")]) == 2
    assert "pairs" in capsys.readouterr().err
    assert merge_cli([str(tmp_path), "merging.d_mni=2"]) == 2
    assert "d_mni" in capsys.readouterr().err
