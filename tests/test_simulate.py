"""Tests of the simulator (stillshot.simulate): truth self-consistency, physics, writers, CLI.

Every tolerance is stated where it is asserted.  Images are small (a few
hundred px square) so each test takes seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import gemmi
import numpy as np
import pytest
from scipy.spatial import cKDTree

from stillshot.geometry import predict_reflections
from stillshot.simulate import BackgroundModel, SimulationSettings, Simulator, StructureModel, run_simulation
from stillshot.simulate import _kernels as K
from stillshot.simulate.layouts import single_panel

#: A small single-panel detector close to the crystal: many spots on few pixels.
SMALL = SimulationSettings(
    layout="single_panel",
    n_fast=400,
    n_slow=360,
    pixel_size=0.172,
    distance=90.0,
    beam_centre=(190.3, 171.7),
    blank_fraction=0.0,
    crystal_size_um=(4.0, 5.0),
    photons=4e4,
    dead_fraction=0.0,
    hot_fraction=0.0,
    seed=11,
)
#: The same with no background (noise-free centroid and sum tests).
CLEAN = replace(SMALL, background=BackgroundModel(constant=0.0, ring_amplitude=0.0), noise=False)


def _isolated_strong(truth, shape, *, min_photons=300.0, radius=16.0, half_box=7):
    """Rows of strong reflections with no other reflection within ``radius`` px (a neighbour's
    rendered box reaches 5σ + 1 px, so no photons of it fall in our ±half_box box) and the box
    inside the panel."""
    r = truth.reflections
    xy = r["xyzcal.px"][:, :2]
    inten = r["intensity.partial"]
    tree = cKDTree(xy)
    rows = []
    for n in np.argsort(-inten):
        if inten[n] < min_photons:
            break
        if r["in_gap"][n]:
            continue
        near = tree.query_ball_point(xy[n], radius)
        if any(m != n and inten[m] > 1e-5 * inten[n] for m in near):
            continue
        x, y = xy[n]
        x0, y0 = int(np.floor(x)) - half_box, int(np.floor(y)) - half_box
        if x0 < 0 or y0 < 0 or x0 + 2 * half_box + 1 > shape[1] or y0 + 2 * half_box + 1 > shape[0]:
            continue
        rows.append((n, x0, y0))
    return rows


def _box_moments(img, x0, y0, half_box=7):
    m = 2 * half_box + 1
    box = img[y0 : y0 + m, x0 : x0 + m]
    yy, xx = np.mgrid[y0 : y0 + m, x0 : x0 + m] + 0.5  # pixel centres, px
    total = box.sum()
    return total, (box * xx).sum() / total, (box * yy).sum() / total


@pytest.fixture(scope="module")
def clean_shots():
    sim = Simulator(CLEAN)
    return sim, [sim.shot(i) for i in range(3)]


def test_rendered_centroids_match_truth_and_reprediction(clean_shots):
    """Noise-free isolated strong spots: intensity-weighted centroid within 0.01 px of the
    truth, and re-predicting from the true A and geometry gives the truth (1e-6 px)."""
    sim, shots = clean_shots
    n_checked = 0
    for shot in shots:
        truth = shot.truth
        img = shot.data[0]
        # re-prediction with stillshot.geometry from the truth alone
        lat = truth.lattices[0]
        pred = predict_reflections(lat.A, sim.detector, truth.beam, d_min=sim.d_min(truth.wavelength),
                                   max_excitation=0.05)
        where = {tuple(h): xy for h, xy in zip(pred["miller_index"].tolist(), pred["xyzcal.px"][:, :2])}
        for n, x0, y0 in _isolated_strong(truth, img.shape):
            hkl = tuple(truth.reflections["miller_index"][n].tolist())
            xy_true = truth.reflections["xyzcal.px"][n, :2]
            xy_pred = where[hkl]
            assert np.abs(xy_pred - xy_true).max() < 1e-6
            _, cx, cy = _box_moments(img, x0, y0)
            assert abs(cx - xy_pred[0]) < 0.01 and abs(cy - xy_pred[1]) < 0.01, (hkl, cx, cy, xy_pred)
            n_checked += 1
    assert n_checked >= 20


def test_summed_photons_match_truth(clean_shots):
    """Noise-free isolated spots hold their true partial intensity to 1 % (summed in ±7 px)."""
    _, shots = clean_shots
    ratios = []
    for shot in shots:
        r = shot.truth.reflections
        for n, x0, y0 in _isolated_strong(shot.truth, shot.data[0].shape):
            total, _, _ = _box_moments(shot.data[0], x0, y0)
            ratios.append(total / r["intensity.partial"][n])
    ratios = np.array(ratios)
    assert len(ratios) >= 20
    assert np.all(np.abs(ratios - 1.0) < 0.01), ratios


def test_partial_is_full_times_partiality_and_model_scale(clean_shots):
    """I_partial = I_full·p, I_full = scale·I_model·P, 0 < p ≤ 1 (to 1e-12 relative)."""
    _, shots = clean_shots
    for shot in shots:
        r = shot.truth.reflections
        lat = shot.truth.lattices[0]
        assert np.all((r["partiality"] > 0) & (r["partiality"] <= 1.0))
        np.testing.assert_allclose(r["intensity.partial"], r["intensity.full"] * r["partiality"], rtol=1e-12)
        np.testing.assert_allclose(r["intensity.full"], lat.scale * r["intensity.model"] * r["polarization"],
                                   rtol=1e-12)


def test_systematic_absences_absent():
    """No systematically absent reflection is simulated (P43212: 00l with l≠4n, h00 with h odd),
    and the model gives them zero intensity."""
    settings = replace(SMALL, space_group="P43212")
    sim = Simulator(settings)
    ops = gemmi.SpaceGroup("P43212").operations()
    n_axial = 0
    for i in range(4):
        hkl = sim.draw(i).reflections["miller_index"]
        assert not any(ops.is_systematically_absent(list(map(int, h))) for h in hkl)
        n_axial += int(np.sum((hkl[:, 0] == 0) & (hkl[:, 1] == 0)))
    probe = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [1, 0, 0], [3, 0, 0], [0, 0, 4], [2, 0, 0]])
    inten = sim.structure.intensities(probe)
    assert np.all(inten[:5] == 0) and np.all(inten[5:] > 0)


def test_wilson_statistics_of_random_model():
    """Acentric normalised intensities are exponential: <I/Σ> = 1 ± 0.03, <I²>/<I>² = 2 ± 0.1;
    Friedel mates and symmetry equivalents are equal."""
    model = StructureModel((60.0, 70.0, 80.0, 90, 90, 90), "P212121", b_factor=0.0, seed=3)
    hkl, inten = model.asu_reflections(3.0)
    ops = model.space_group.operations()
    acentric = ~np.asarray(ops.centric_flag_array(hkl.astype(np.int32)), dtype=bool)
    z = inten[acentric]
    assert abs(z.mean() - 1.0) < 0.03
    assert abs((z**2).mean() / z.mean() ** 2 - 2.0) < 0.1
    h = hkl[:50]
    equiv = np.stack([-h[:, 0], h[:, 1], -h[:, 2]], axis=1)  # 2-fold along b
    np.testing.assert_array_equal(model.intensities(h), model.intensities(equiv))
    np.testing.assert_array_equal(model.intensities(h), model.intensities(-h))


def test_intensities_from_mtz(tmp_path):
    """A model read back from its own MTZ (intensity_file) gives the same intensities (float32
    precision) for every reflection, symmetry equivalents included, and 0 for absences."""
    model = StructureModel((61.0, 61.0, 97.0, 90, 90, 120), "P6122", b_factor=15.0, seed=9)
    model.write_mtz(str(tmp_path / "true.mtz"), 3.0)
    sim = Simulator(replace(SMALL, intensity_file=str(tmp_path / "true.mtz")))
    assert sim.structure.space_group.hm == model.space_group.hm
    hkl = sim.draw(0).reflections["miller_index"]
    assert len(hkl) > 50
    d = 1.0 / np.linalg.norm(hkl @ model.B.T, axis=1)
    inside = hkl[d > 3.0]
    np.testing.assert_allclose(sim.structure.intensities(inside), model.intensities(inside), rtol=1e-6)
    assert np.all(sim.structure.intensities(np.array([[0, 0, 1], [0, 0, 5]])) == 0)


def test_seeded_reproducibility():
    """Same settings and index: identical pixels and truth; another seed: different."""
    a = Simulator(SMALL).shot(2)
    b = Simulator(SMALL).shot(2)
    for x, y in zip(a.data, b.data):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.truth.lattices[0].A, b.truth.lattices[0].A)
    assert a.truth.wavelength == b.truth.wavelength
    c = Simulator(replace(SMALL, seed=SMALL.seed + 1)).shot(2)
    assert not np.array_equal(a.truth.lattices[0].A, c.truth.lattices[0].A)
    assert not np.array_equal(a.data[0], c.data[0])
    # shots do not depend on which other shots were made before them
    sim = Simulator(SMALL)
    sim.shot(0)
    np.testing.assert_array_equal(sim.shot(2).data[0], a.data[0])


def test_blanks_have_no_spots():
    """Blank shots: no lattice, no reflections, and the image is background: its mean is
    within 5 σ of the expected background and no pixel exceeds a 1e-6 Poisson tail."""
    settings = replace(SMALL, blank_fraction=1.0)
    sim = Simulator(settings)
    for i in range(3):
        shot = sim.shot(i)
        assert shot.truth.blank and not shot.truth.lattices and shot.truth.reflections.nrows == 0
        expected = sim.render(shot.truth, noise=False)[0]
        img = shot.data[0].astype(np.float64)
        assert abs(img.mean() - expected.mean()) < 5 * np.sqrt(expected.mean() / img.size)
        assert img.max() <= 15  # P(Poisson(≤2.2) ≥ 16) < 1e-9 per pixel
    # and the blank fraction is honoured
    mixed = Simulator(replace(SMALL, blank_fraction=0.3))
    blanks = [mixed.draw(i).blank for i in range(200)]
    assert 0.2 < np.mean(blanks) < 0.4


def test_noise_is_poisson_with_gain_and_pedestal():
    """Recorded ADU = gain·Poisson(expected) + pedestal: mean and variance of (ADU-pedestal)/gain
    agree with the expected photons of the background (to 2 %)."""
    settings = replace(SMALL, blank_fraction=1.0, gain=7.0, pedestal=100.0,
                       background=BackgroundModel(constant=3.0, ring_amplitude=0.0), saturation=1e9)
    sim = Simulator(settings)
    shot = sim.shot(0)
    expected = sim.render(shot.truth, noise=False)[0]
    counts = (shot.data[0].astype(np.float64) - 100.0) / 7.0
    assert np.allclose(counts, np.round(counts))
    resid = counts - expected
    assert abs(resid.mean()) < 0.02 * expected.mean()
    assert abs(resid.var() / expected.mean() - 1.0) < 0.02


def test_poisson_kernel_matches_distribution():
    """The counter-based Poisson sampler: mean and variance within 4 standard errors of lam
    (200,000 draws each), for means on both sides of the fast/exact switch (6) and of the
    inversion/rejection switch (12), and P(0) = exp(-lam) for a small mean."""
    n = 200_000
    for lam in (0.3, 4.0, 9.0, 40.0, 2000.0):
        spots = np.full((400, 500), lam, dtype=np.float32)
        zeros = np.zeros_like(spots)
        table = np.zeros(16)
        counts = K.expose(spots, zeros, zeros, table, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, -1.0, 1e9, np.uint64(9))
        assert abs(counts.mean() - lam) < 4 * np.sqrt(lam / n), lam
        # var of the sample variance of a Poisson: (lam + 2 lam²) / n
        assert abs(counts.var() - lam) < 4 * np.sqrt((lam + 2 * lam * lam) / n), lam
        if lam < 1:
            p0 = np.exp(-lam)
            assert abs((counts == 0).mean() - p0) < 4 * np.sqrt(p0 * (1 - p0) / n)


def test_saturation_gaps_and_defects():
    """Saturated pixels read the trusted maximum; module gaps read the trusted minimum (-1);
    dead pixels read the pedestal; hot pixels read half the saturation."""
    gaps = ((200, 0, 207, 500), (0, 195, 600, 212))
    det = single_panel(600, 500, 0.172, 90.0, (301.2, 248.7), trusted_range=(-1.0, 5000.0), mask=gaps)
    settings = replace(SMALL, photons=5e6, dead_fraction=1e-2, hot_fraction=1e-3, seed=4)
    sim = Simulator(settings, detector=det)
    shot = sim.shot(0)
    img = shot.data[0]
    panel = sim.detector[0]
    assert img.max() == 5000
    assert (img == 5000).sum() > len(sim.maps.hot[0])  # some spots saturate
    for f0, s0, f1, s1 in panel.mask:
        assert np.all(img[s0:s1, f0:f1] == -1)
    flat = img.reshape(-1)
    gap = ~panel.is_trusted(np.zeros(panel.shape)).reshape(-1)
    dead = sim.maps.dead[0][~gap[sim.maps.dead[0]]]
    hot = sim.maps.hot[0][~gap[sim.maps.hot[0]]]
    assert len(dead) > 1000 and np.all(flat[dead] == 0)
    assert len(hot) > 100 and np.all(flat[hot] == 2500)


def test_crystal_size_sets_spot_counts():
    """Spot counts (reflections of > 20 photons) range from a handful to hundreds over a run
    with crystal sizes from 0.5 to 5 µm (default Pilatus 6M at 250 mm)."""
    sim = Simulator(SimulationSettings(crystal_size_um=(0.5, 5.0), blank_fraction=0.0, seed=5))
    counts = [int((sim.draw(i).reflections["intensity.partial"] > 20).sum()) for i in range(30)]
    assert min(counts) < 15 and max(counts) > 150, counts


def test_second_lattice():
    """A two-lattice shot holds both lattices' reflections (id 0 and 1), each predicted from
    its own A."""
    sim = Simulator(replace(CLEAN, second_lattice_fraction=1.0))
    truth = sim.draw(0)
    assert len(truth.lattices) == 2
    r = truth.reflections
    for k in (0, 1):
        sel = r["id"] == k
        assert sel.sum() > 20
        pred = predict_reflections(truth.lattices[k].A, sim.detector, truth.beam,
                                   d_min=sim.d_min(truth.wavelength), max_excitation=0.05)
        where = {tuple(h): xy for h, xy in zip(pred["miller_index"].tolist(), pred["xyzcal.px"][:, :2])}
        for h, xy in zip(r["miller_index"][sel].tolist(), r["xyzcal.px"][sel, :2]):
            assert np.abs(where[tuple(h)] - xy).max() < 1e-6


def test_perturbed_geometry_renders_with_true_detector():
    """With perturb enabled the spots follow the TRUE (perturbed) geometry, not the nominal one."""
    settings = replace(CLEAN, layout="jungfrau4m", distance=80.0, perturb=True, perturb_level=1,
                       perturb_shift_px=(3.0, 3.0), perturb_rotation_deg=0.0)
    sim = Simulator(settings)
    assert sim.detector is not sim.nominal_detector
    truth = sim.draw(0)
    lat = truth.lattices[0]
    d_min = sim.d_min(truth.wavelength)
    true_pred = predict_reflections(lat.A, sim.detector, truth.beam, d_min=d_min, max_excitation=0.05)
    nom_pred = predict_reflections(lat.A, sim.nominal_detector, truth.beam, d_min=d_min, max_excitation=0.05)
    t = {tuple(h): xy for h, xy in zip(true_pred["miller_index"].tolist(), true_pred["xyzcal.px"][:, :2])}
    n = {tuple(h): xy for h, xy in zip(nom_pred["miller_index"].tolist(), nom_pred["xyzcal.px"][:, :2])}
    shifts = []
    for h, xy in zip(truth.reflections["miller_index"].tolist(), truth.reflections["xyzcal.px"][:, :2]):
        assert np.abs(t[tuple(h)] - xy).max() < 1e-6
        if tuple(h) in n:
            shifts.append(np.hypot(*(n[tuple(h)] - xy)))
    assert np.median(shifts) == pytest.approx(3.0, abs=0.05)


def test_wavelength_jitter_and_bandpass():
    """Per-shot wavelengths scatter with the requested fractional σ (±30 % over 100 shots)."""
    sim = Simulator(replace(SMALL, wavelength=1.0, wavelength_jitter=0.002))
    wl = np.array([sim.draw(i).wavelength for i in range(100)])
    assert abs(wl.mean() - 1.0) < 0.001
    assert 0.0014 < wl.std() < 0.0026


@pytest.mark.parametrize("cell,d_min,wavelength", [((79.1, 79.1, 38.4, 90, 90, 90), 1.6, 1.3),
                                                   ((250.0, 260.0, 300.0, 90, 100, 90), 4.0, 1.0),
                                                   ((20.0, 30.0, 40.0, 80, 70, 60), 1.0, 0.8)])
def test_candidates_match_brute_force(cell, d_min, wavelength):
    """The shell-chord search finds exactly the reflections a brute-force scan of the whole
    index box finds (|ε| ≤ nsig·σ(|r|) and d ≥ d_min), with the same excitation errors."""
    from scipy.spatial.transform import Rotation

    from stillshot.models import b_matrix

    A = Rotation.random(random_state=3).as_matrix() @ b_matrix(gemmi.UnitCell(*cell))
    s0 = np.array([0.0, 0.0, -1.0 / wavelength])
    lim = np.floor(np.linalg.norm(np.linalg.inv(A), axis=1) / d_min).astype(np.int64)
    sig_dom, eta, bw, nsig = 2e-4, 3e-4, wavelength * 0.003 / 2.3548 / 2, 3.7
    hkl, eps, _ = K.near_ewald_candidates(A, s0, d_min, lim, sig_dom, eta, bw, nsig)
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in lim], indexing="ij"), -1).reshape(-1, 3)
    q = grid @ A.T
    qq = (q * q).sum(1)
    e = np.linalg.norm(q + s0, axis=1) - 1.0 / wavelength
    keep = (qq > 0) & (qq <= 1 / d_min**2) & (e * e <= nsig**2 * (sig_dom**2 + eta**2 * qq + (bw * qq) ** 2))
    assert len(hkl) > 50
    assert sorted(map(tuple, hkl.tolist())) == sorted(map(tuple, grid[keep].tolist()))
    order = np.lexsort(hkl.T)
    np.testing.assert_allclose(eps[order], e[keep][np.lexsort(grid[keep].T)], atol=1e-12)


def test_byte_offset_encoder_round_trip():
    """The numba byte-offset encoder decodes (fabio; stillshot's decoder when present) to the same
    int32 values, for 8-, 16-, 32- and 64-bit deltas."""
    fabio = pytest.importorskip("fabio")
    from fabio.compression import decByteOffset

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(-100, 100, 1000), rng.integers(-30000, 30000, 1000),
                             rng.integers(-2**31 + 1, 2**31 - 1, 1000), [0, 127, -127, 128, -128, 32767, -32768]])
    values = values.astype(np.int32)
    buf = np.empty(values.size * 15, dtype=np.uint8)
    n = K.byte_offset_encode(values, buf)
    decoded = decByteOffset(buf[:n].tobytes(), size=values.size, dtype=np.int32)
    np.testing.assert_array_equal(decoded, values)
    try:
        from stillshot.io._cbf_codec import byte_offset_decode
    except ImportError:
        return
    np.testing.assert_array_equal(byte_offset_decode(buf[:n].tobytes(), values.size, np.int32), values)
    del fabio


# --------------------------------------------------------------------------------------------
# writers and the round trip through stillshot's readers
# --------------------------------------------------------------------------------------------
def _open_image(path, reference=None):
    base = pytest.importorskip("stillshot.io.base")
    base.registered_formats()
    return base.open_image(path, reference_geometry=reference)


def _require_reader(module: str):
    import importlib.util

    if importlib.util.find_spec(f"stillshot.io.{module}") is None:
        pytest.skip(f"stillshot.io.{module} (the reader) is not written yet")


def _assert_same_geometry(det_a, det_b, tol_mm=1e-6):
    assert len(det_a) == len(det_b)
    for a, b in zip(det_a, det_b):
        assert a.image_size == b.image_size
        np.testing.assert_allclose(a.pixel_size, b.pixel_size, atol=1e-9)
        np.testing.assert_allclose(a.origin, b.origin, atol=tol_mm)
        np.testing.assert_allclose(a.fast_axis, b.fast_axis, atol=1e-9)
        np.testing.assert_allclose(a.slow_axis, b.slow_axis, atol=1e-9)


@pytest.fixture(scope="module")
def cbf_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cbf")
    settings = replace(SMALL, blank_fraction=0.25, seed=3)
    run_simulation(settings, out, n_shots=4, fmt="cbf")
    return settings, out


def test_cbf_writer_files_and_truth(cbf_run):
    """miniCBF files decode (fabio) to the simulated pixels; truth.json and the MTZ are complete."""
    fabio = pytest.importorskip("fabio")
    settings, out = cbf_run
    sim = Simulator(settings)
    doc = json.loads((out / "truth.json").read_text())
    assert len(doc["shots"]) == 4
    for i, entry in enumerate(doc["shots"]):
        shot = sim.shot(i)
        np.testing.assert_array_equal(fabio.open(str(out / entry["file"])).data, shot.data[0])
        assert entry["blank"] == shot.truth.blank
        assert entry["wavelength"] == shot.truth.wavelength
        if not entry["blank"]:
            np.testing.assert_allclose(entry["lattices"][0]["A"], shot.truth.lattices[0].A, rtol=1e-12)
            assert len(entry["reflections"]["hkl"]) == shot.truth.reflections.nrows
            for key in ("panel", "xy_px", "intensity_full", "intensity_partial"):
                assert len(entry["reflections"][key]) == shot.truth.reflections.nrows
    mtz = gemmi.read_mtz_file(str(out / "true_intensities.mtz"))
    data = np.asarray(mtz)
    hkl = data[:, :3].astype(int)
    np.testing.assert_allclose(data[:, 3], sim.structure.intensities(hkl), rtol=1e-6)
    assert mtz.spacegroup.hm == gemmi.SpaceGroup(settings.space_group).hm


def test_cbf_round_trip_through_reader(cbf_run):
    """stillshot's miniCBF reader gives back the same pixels, wavelength and (nominal) geometry."""
    _require_reader("cbf")
    settings, out = cbf_run
    sim = Simulator(settings)
    for i in range(4):
        shot = sim.shot(i)
        with _open_image(out / f"shot_{i:05d}.cbf") as f:
            read = f.shot(0)
        np.testing.assert_array_equal(np.asarray(read.data[0]), shot.data[0])
        assert read.beam.wavelength == pytest.approx(shot.truth.wavelength, abs=1e-8)
        _assert_same_geometry(read.detector, sim.nominal_detector, tol_mm=1e-5)
        assert read.detector[0].trusted_range[1] == pytest.approx(sim.nominal_detector[0].trusted_range[1])


def small_hierarchy():
    """A 4-panel detector (2 groups of 2 panels of 160 × 120 px, 0.1 mm) around the beam."""
    from stillshot.models import Detector, Frame, Panel

    root = Frame((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -60.0))
    panels, groups = [], []
    for g in range(2):
        gframe = root.compose(Frame((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-16.5 + 17.0 * g, -12.5, 0.0)))
        kids = []
        for k in range(2):
            local = Frame((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 12.5 * k, 0.0))
            panels.append(Panel(name=f"G{g}P{k}", frame=gframe.compose(local), local_frame=local,
                                pixel_size=(0.1, 0.1), image_size=(160, 120), trusted_range=(-10.0, 60000.0),
                                gain=3.0))
            kids.append(len(panels) - 1)
        groups.append((f"G{g}", gframe, tuple(kids)))
    return Detector.from_global_tree(panels, ("D", root, tuple(groups)))


@pytest.fixture(scope="module")
def multi_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi")
    settings = replace(SMALL, blank_fraction=0.0, seed=8, perturb=True, perturb_shift_px=(1.0, 2.0))
    det = small_hierarchy()
    run_simulation(settings, out / "cxi", n_shots=2, fmt="cxi", detector=det)
    run_simulation(settings, out / "nexus", n_shots=2, fmt="nexus", detector=det)
    return settings, det, out


def test_cxi_and_geom_written(multi_runs):
    """The CXI stack holds each panel at its CrystFEL slab, the per-shot photon energy, and the
    .geom reads back (stillshot.io.crystfel_geom) to the NOMINAL geometry (1e-6 mm)."""
    import h5py

    from stillshot.io.crystfel_geom import panel_slabs, read_geom

    settings, det, out = multi_runs
    sim = Simulator(settings, detector=det)
    geom = read_geom(out / "cxi" / "shots.geom")
    _assert_same_geometry(geom.detector, sim.nominal_detector)
    with h5py.File(out / "cxi" / "shots.cxi", "r") as f:
        data = f["/entry_1/data_1/data"]
        energy = f["/LCLS/photon_energy_eV"][()]
        for i in range(2):
            shot = sim.shot(i)
            frame = data[i]
            for arr, slab in zip(shot.data, panel_slabs(geom.detector)):
                np.testing.assert_array_equal(frame[slab.min_ss : slab.max_ss + 1, slab.min_fs : slab.max_fs + 1], arr)
            assert energy[i] == pytest.approx(12398.419843320026 / shot.truth.wavelength, rel=1e-12)


def test_cxi_round_trip_through_reader(multi_runs):
    """stillshot's CXI reader (with the written .geom) gives back the same pixels and geometry."""
    _require_reader("cxi")
    from stillshot.io.imageset import load_reference_geometry

    settings, det, out = multi_runs
    sim = Simulator(settings, detector=det)
    ref = load_reference_geometry(out / "cxi" / "shots.geom")
    with _open_image(out / "cxi" / "shots.cxi", ref) as f:
        assert f.n_frames == 2
        for i in range(2):
            shot = sim.shot(i)
            read = f.shot(i)
            for a, b in zip(read.data, shot.data):
                np.testing.assert_array_equal(np.asarray(a), b)
            _assert_same_geometry(read.detector, sim.nominal_detector, tol_mm=1e-5)
            assert read.beam.wavelength == pytest.approx(shot.truth.wavelength, rel=1e-9)


def test_nexus_round_trip_through_reader(multi_runs):
    """stillshot's NeXus reader gives back the same pixels, per-shot wavelength and nominal geometry."""
    _require_reader("nexus")
    settings, det, out = multi_runs
    sim = Simulator(settings, detector=det)
    with _open_image(out / "nexus" / "shots.nxs") as f:
        assert f.n_frames == 2
        for i in range(2):
            shot = sim.shot(i)
            read = f.shot(i)
            for a, b in zip(read.data, shot.data):
                np.testing.assert_array_equal(np.asarray(a), b)
            _assert_same_geometry(read.detector, sim.nominal_detector, tol_mm=1e-5)
            assert read.beam.wavelength == pytest.approx(shot.truth.wavelength, rel=1e-9)
            for a, b in zip(read.detector, sim.nominal_detector):
                assert tuple(a.trusted_range) == pytest.approx(tuple(b.trusted_range))


def test_cbf_refuses_multi_panel(tmp_path):
    """format=cbf with a multi-panel layout is a clear error."""
    with pytest.raises(ValueError, match="single-panel"):
        run_simulation(replace(SMALL, layout="cspad"), tmp_path, n_shots=1, fmt="cbf")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def test_cli_lists_parameters_with_help():
    """`stillshot simulate -c` lists every simulate parameter with its help."""
    from stillshot.cli.simulate import DEFINITION

    out = subprocess.run([sys.executable, "-m", "stillshot.cli.main", "simulate", "-c"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("n_shots", "seed", "layout", "format", "unit_cell", "space_group", "wavelength", "mosaicity",
                 "domain_size", "bandpass", "size_range", "blank_fraction", "second_lattice_fraction",
                 "shift_px", "rotation_deg"):
        assert name in out.stdout, name

    def leaves(scope, path=""):
        for child in scope.children:
            if hasattr(child, "children"):
                yield from leaves(child, f"{path}{child.name}.")
            else:
                yield f"{path}{child.name}", child

    for name, lf in leaves(DEFINITION):
        assert lf.help, f"{name} has no help"


def test_cli_writes_run(tmp_path):
    """`stillshot simulate ... output.dir=DIR` writes images, truth.json, true.expt and the MTZ."""
    from stillshot.cli.main import main

    rc = main(["simulate", "simulate.n_shots=3", "simulate.layout=single_panel", "simulate.detector.n_pixels=300,280",
               "simulate.detector.distance=100", "simulate.blank_fraction=0", "simulate.seed=2",
               f"output.dir={tmp_path}"])
    assert rc == 0
    for name in ("shot_00000.cbf", "shot_00002.cbf", "truth.json", "true.expt", "true_intensities.mtz",
                 "nominal_geometry.expt", "true_geometry.expt"):
        assert (tmp_path / name).is_file(), name
    doc = json.loads((tmp_path / "truth.json").read_text())
    assert [s["file"] for s in doc["shots"]] == ["shot_00000.cbf", "shot_00001.cbf", "shot_00002.cbf"]
    assert main(["simulate", "simulate.n_shot=3", f"output.dir={tmp_path}"]) == 2  # unknown parameter
