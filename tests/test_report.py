"""Tests of the HTML report (stillshot.report, ``stillshot report``).

The processing directories are fakes built from simulated shots with the
models/table API (no dependence on process/index): imported.expt, strong.refl,
indexed.expt/.refl (the true crystals, cells jittered by a known amount, and
observed positions moved by a known shift per panel), integrated.refl (every
true reflection as a prediction), summary.json and merging_stats.json.  The
numbers the report plots are checked against that known truth; the page is
loaded in headless Chromium (no console message, every plot element present
and decoded).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stillshot.merge.statistics import MergingStatistics, ShellStatistics
from stillshot.models import Crystal, Experiment, ExperimentList, ImageRef
from stillshot.report import DetectorLayout, ReportOptions, load_run, merging_table, write_report
from stillshot.report.data import (
    panel_residuals,
    rolling_fraction,
    shot_resolution,
    split_total,
    tile_residuals,
    timing_matrix,
)
from stillshot.report.html import PLOT_IDS
from stillshot.simulate import SimulationSettings, Simulator, run_simulation
from stillshot.table import Flags, ReflectionTable

#: Small CSPAD run: 64 ASICs in quadrants rotated by 90° steps (CXI + .geom).
CSPAD = SimulationSettings(layout="cspad", blank_fraction=0.25, crystal_size_um=(2.0, 5.0), seed=3)
#: Small single-panel run (miniCBF).
SINGLE = SimulationSettings(layout="single_panel", n_fast=420, n_slow=400, distance=90.0, blank_fraction=0.25,
                            crystal_size_um=(3.0, 5.0), photons=2e4, seed=5)
STAGES = ("spotfinding", "hitfinding", "indexing", "refinement", "integration")


def build_run(base: Path, settings: SimulationSettings, n_shots: int, *, seed: int = 0,
              merging: bool = True) -> dict:
    """Write simulated images and a fake processing directory of them.

    Returns
    -------
    dict
        ``dir`` (the processing directory), ``shift`` (px per panel added to
        the observed positions), ``cells`` (the indexed cells), ``d_min`` (per
        shot, NaN where not indexed), ``statuses``.
    """
    rng = np.random.default_rng(seed)
    fmt = "cbf" if settings.layout == "single_panel" else "cxi"
    img_dir = base / "images"
    run_simulation(settings, img_dir, n_shots=n_shots, fmt=fmt, write_mtz=False)
    sim = Simulator(settings)
    det = sim.detector
    shift = rng.normal(0.0, 0.8, size=(len(det), 2))
    out = base / "run"
    out.mkdir()
    imported, indexed = ExperimentList(), ExperimentList()
    strong_parts, indexed_parts, integrated_parts = [], [], []
    shots, cells, d_min, statuses = [], [], np.full(n_shots, np.nan), []
    for i in range(n_shots):
        image = (ImageRef(str(img_dir / "shots.cxi"), i) if fmt == "cxi"
                 else ImageRef(str(img_dir / f"shot_{i:05d}.cbf")))
        truth = sim.draw(i)
        exp = Experiment(beam=truth.beam, detector=det, image=image)
        imported.append(exp)
        r = truth.reflections
        sel = (r["intensity.partial"] > 20.0) & ~r["in_gap"] if r.nrows else np.zeros(0, bool)
        rows = np.flatnonzero(sel)
        panel = r["panel"][rows].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        obs = np.zeros((len(rows), 3))
        if len(rows):
            obs[:, :2] = r["xyzcal.px"][rows, :2] + shift[panel] + rng.normal(0.0, 0.1, (len(rows), 2))
        strong = ReflectionTable({"id": np.full(len(rows), len(imported) - 1, np.int32),
                                  "panel": panel.astype(np.uint64), "xyzobs.px.value": obs,
                                  "flags": np.full(len(rows), int(Flags.strong), np.uint64)},
                                 identifiers={len(imported) - 1: exp.identifier})
        strong_parts.append(strong)
        timings = {k: float(rng.uniform(0.002, 0.02)) for k in STAGES[:2]}
        entry = {"file": image.path, "frame": image.frame, "n_spots": len(rows), "n_indexed": 0,
                 "unit_cell": None, "reason": ""}
        if truth.blank or len(rows) < 15:
            entry.update(status="not_hit", reason=f"{len(rows)} spots < 15")
        elif i % 5 == 1:
            timings["indexing"] = 0.08
            entry.update(status="not_indexed", reason="no lattice within the known cell's tolerances")
        elif i % 7 == 4:
            entry.update(status="failed", reason="ValueError: NaN pixels in panel 3")
        else:
            timings.update({k: float(rng.uniform(0.01, 0.05)) for k in STAGES[2:]})
            for lat_no, lat in enumerate(truth.lattices):
                cell = np.array(lat.crystal.cell_parameters) * np.r_[1.0 + rng.normal(0, 0.004, 3), np.ones(3)]
                crystal = Crystal.from_cell_and_U(tuple(cell), lat.U, "P43212")
                e = exp.with_crystal(crystal, new_identifier=True)
                indexed.append(e)
                k = len(indexed) - 1
                mine = rows[r["id"][rows] == lat_no]
                mp = r["panel"][mine].astype(np.int64)
                o = np.zeros((len(mine), 3))
                o[:, :2] = obs[np.isin(rows, mine)][:, :2]
                c = np.zeros((len(mine), 3))
                c[:, :2] = r["xyzcal.px"][mine, :2]
                indexed_parts.append(ReflectionTable(
                    {"id": np.full(len(mine), k, np.int32), "panel": mp.astype(np.uint64),
                     "miller_index": r["miller_index"][mine], "xyzobs.px.value": o, "xyzcal.px": c,
                     "flags": np.full(len(mine), int(Flags.strong | Flags.indexed), np.uint64)},
                    identifiers={k: e.identifier}))
                allr = np.flatnonzero(r["id"] == lat_no)
                pc = np.zeros((len(allr), 3))
                pc[:, :2] = r["xyzcal.px"][allr, :2]
                integrated_parts.append(ReflectionTable(
                    {"id": np.full(len(allr), k, np.int32), "panel": r["panel"][allr],
                     "miller_index": r["miller_index"][allr], "xyzcal.px": pc,
                     "intensity.sum.value": r["intensity.partial"][allr],
                     "flags": np.full(len(allr), int(Flags.predicted | Flags.integrated_sum), np.uint64)},
                    identifiers={k: e.identifier}))
                cells.append(crystal.cell_parameters)
                d_true = 1.0 / np.linalg.norm(r["miller_index"][mine].astype(float) @ crystal.A.T, axis=1)
                d_min[i] = np.nanmin(np.r_[d_true, d_min[i]]) if len(mine) else d_min[i]
                entry["n_indexed"] += len(mine)
            entry.update(status="integrated", unit_cell=[round(v, 4) for v in cells[-1]])
        timings["total"] = sum(timings.values()) + 0.001  # as stillshot process records it
        entry["timings"] = timings
        statuses.append(entry["status"])
        shots.append(entry)
    shots.append({"file": str(base / "missing.cbf"), "frame": None, "status": "unreadable",
                  "reason": "no such file", "n_spots": 0, "n_indexed": 0, "unit_cell": None, "timings": {}})
    statuses.append("unreadable")
    d_min = np.r_[d_min, np.nan]
    imported.as_file(out / "imported.expt")
    ReflectionTable.concat(strong_parts).as_file(out / "strong.refl")
    indexed.as_file(out / "indexed.expt")
    ReflectionTable.concat(indexed_parts).as_file(out / "indexed.refl")
    indexed.as_file(out / "integrated.expt")
    ReflectionTable.concat(integrated_parts).as_file(out / "integrated.refl")
    (out / "summary.json").write_text(json.dumps(
        {"shots": shots, "totals": {"n_shots": len(shots)}, "parameters": {"output.dir": str(out)}}, indent=1))
    if merging:
        # as stillshot merge (cli/merge.py) writes it
        doc = {"statistics": fake_merging_stats().as_dict(),
               "summary": {"space_group": "P 43 21 2", "unit_cell": [79.1, 79.1, 38.4, 90.0, 90.0, 90.0],
                           "n_shots_accepted": 5, "log": ["a line"]},
               "ambiguity": None, "parameters": {"merging.d_min": 1.9}}
        (out / "merging_stats.json").write_text(json.dumps(doc))
    return {"dir": out, "shift": shift, "cells": np.array(cells), "d_min": d_min, "statuses": statuses}


def fake_merging_stats(n_shells: int = 8) -> MergingStatistics:
    """Plausible statistics in the format of stillshot.merge.statistics."""
    edges = np.linspace(1 / 30.0 ** 2, 1 / 1.9 ** 2, n_shells + 1)
    shells = []
    for k in range(n_shells):
        f = k / (n_shells - 1)
        cc = 0.98 - 0.9 * f ** 2
        shells.append(ShellStatistics(
            d_max=float(1 / np.sqrt(edges[k])), d_min=float(1 / np.sqrt(edges[k + 1])), n_possible=500,
            n_unique=int(500 * (1.0 - 0.3 * f)), n_obs=int(500 * 40 * (1 - 0.5 * f)),
            completeness=1.0 - 0.3 * f, multiplicity=40 * (1 - 0.5 * f) / (1.0 - 0.3 * f),
            mean_intensity=1000 * (1 - f) + 5, mean_i_over_sigma=12.0 * (1 - f) + 0.5, cc_half=cc,
            cc_star=float(np.sqrt(2 * cc / (1 + cc))), r_split=0.05 + 0.6 * f ** 2, n_half_pairs=400))
    overall = replace(shells[0], d_max=shells[0].d_max, d_min=shells[-1].d_min, completeness=0.85)
    return MergingStatistics(shells, overall, {"space_group": "P 43 21 2", "n_shots_accepted": 5})


@pytest.fixture(scope="module")
def cspad_run(tmp_path_factory) -> dict:
    """A fake processing directory of 10 CSPAD shots."""
    return build_run(tmp_path_factory.mktemp("cspad"), CSPAD, 10, seed=1)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> dict:
    """A fake processing directory of 8 single-panel shots, without merging statistics."""
    return build_run(tmp_path_factory.mktemp("single"), SINGLE, 8, seed=2, merging=False)


@pytest.fixture(scope="module")
def cspad_report(cspad_run):
    """The report of the CSPAD run (written once)."""
    return write_report(cspad_run["dir"], ReportOptions(n_images=2))


# -- the numbers the plots show -----------------------------------------------------------------
def test_rolling_fraction_known_sequence():
    flags = np.array([1, 1, 0, 0, 0, 0, 1, 1], dtype=bool)
    got = rolling_fraction(flags, 4)
    # centred windows of 4 (shifted inside the run at the ends): [0:4] [0:4] [1:5] [2:6] ... [4:8] [4:8]
    want = [0.5, 0.5, 0.25, 0.0, 0.25, 0.5, 0.5, 0.5]
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(rolling_fraction(flags, 1), flags.astype(float))
    np.testing.assert_allclose(rolling_fraction(flags, 100), np.full(8, 0.5))


def test_timings_split_the_recorded_total():
    shots = [{"timings": {"read": 0.1, "spotfind": 0.2, "total": 0.5}},
             {"timings": {"read": 0.1, "spotfind": 0.3, "index": 1.0}},
             {"timings": {}}]
    stages, secs, total = split_total(*timing_matrix(shots))
    assert stages == ["read", "spotfind", "index"]
    np.testing.assert_allclose(secs, [[0.1, 0.2, np.nan], [0.1, 0.3, 1.0], [np.nan] * 3])
    np.testing.assert_allclose(total, [0.5, 1.4, np.nan])  # recorded, else the sum of the stages


def test_panel_residuals_recover_injected_shifts(cspad_run):
    run = load_run(cspad_run["dir"])
    det = run.detector()
    res = panel_residuals(run.indexed_refl, len(det))
    seen = res["n"] >= 3
    assert seen.sum() >= 10, "too few panels with indexed spots to test"
    # observed = true + shift[panel] + N(0, 0.1 px): the mean of n spots is within 5σ/√n (+1e-9)
    tol = 5 * 0.1 / np.sqrt(res["n"][seen]) + 1e-9
    assert np.all(np.abs(res["dx"][seen] - cspad_run["shift"][seen, 0]) < tol)
    assert np.all(np.abs(res["dy"][seen] - cspad_run["shift"][seen, 1]) < tol)
    assert np.all(np.isnan(res["dx"][res["n"] == 0]))


def test_tile_residuals_single_panel(single_run):
    run = load_run(single_run["dir"])
    det = run.detector()
    tiles = tile_residuals(run.indexed_refl, det, 4)
    assert len(tiles["n"]) == 16 and tiles["n"].sum() == len(run.indexed_refl)
    seen = tiles["n"] >= 3
    assert seen.any()
    tol = 5 * 0.1 / np.sqrt(tiles["n"][seen])
    assert np.all(np.abs(tiles["dx"][seen] - single_run["shift"][0, 0]) < tol)
    assert np.all(np.abs(tiles["dy"][seen] - single_run["shift"][0, 1]) < tol)


def test_shot_resolution_matches_truth(cspad_run):
    run = load_run(cspad_run["dir"])
    d = shot_resolution(run.indexed, run.indexed_refl, run.shot_of(run.indexed), run.n_shots)
    want = cspad_run["d_min"]
    np.testing.assert_array_equal(np.isfinite(d), np.isfinite(want))
    np.testing.assert_allclose(d[np.isfinite(d)], want[np.isfinite(want)], rtol=1e-9)
    assert np.isfinite(d).sum() >= 3


def test_load_run_matches_what_was_written(cspad_run):
    run = load_run(cspad_run["dir"])
    assert run.notes == []
    assert list(run.statuses()) == cspad_run["statuses"]
    np.testing.assert_allclose(run.unit_cells(), cspad_run["cells"], atol=1e-6)
    shot_of = run.shot_of(run.imported)
    np.testing.assert_array_equal(shot_of, np.arange(len(run.imported)))  # one experiment per shot, in order
    assert run.merging is not None and run.merging.n_shells == 8
    np.testing.assert_allclose(run.merging.columns["r_split"], [x.r_split for x in fake_merging_stats().shells])


def test_load_run_without_summary_uses_experiment_files(tmp_path, single_run):
    for name in ("imported.expt", "strong.refl", "indexed.expt", "indexed.refl"):
        shutil.copy(single_run["dir"] / name, tmp_path / name)
    run = load_run(tmp_path)
    want = [s for s in single_run["statuses"] if s != "unreadable"]
    assert run.n_shots == len(want)
    assert [s == "integrated" for s in want] == list(run.is_indexed())
    strong = ReflectionTable.from_file(tmp_path / "strong.refl")
    np.testing.assert_array_equal(run.column("n_spots"), np.bincount(strong["id"], minlength=run.n_shots))


def test_merging_table_accepts_other_key_names():
    stats = {"bins": [{"d_low": 10.0, "d_high": 4.0, "Completeness": 99.0, "Redundancy": 5.0, "CC1/2": 0.9,
                       "CC*": 0.97, "Rsplit": 0.1, "I/sigma": 8.0},
                      {"d_low": 4.0, "d_high": 2.0, "Completeness": 80.0, "Redundancy": 3.0, "CC1/2": 0.3,
                       "CC*": 0.68, "Rsplit": 0.5, "I/sigma": 1.0}],
             "overall": {"d_min": 2.0, "Completeness": 90.0}}
    t = merging_table(stats)
    np.testing.assert_allclose(t.d_min, [4.0, 2.0])
    np.testing.assert_allclose(t.columns["completeness"], [99.0, 80.0])  # already percent: unchanged
    np.testing.assert_allclose(t.columns["multiplicity"], [5.0, 3.0])
    np.testing.assert_allclose(t.columns["cc_half"], [0.9, 0.3])
    np.testing.assert_allclose(t.columns["cc_star"], [0.97, 0.68])
    np.testing.assert_allclose(t.columns["r_split"], [0.1, 0.5])
    np.testing.assert_allclose(t.columns["i_over_sigma"], [8.0, 1.0])
    # columns of lists, fractions, high-resolution shell first: sorted low to high resolution
    t = merging_table({"d_min": [2.0, 5.0], "d_max": [5.0, 20.0], "completeness": [0.5, 1.0], "cc_half": [0.2, 0.99]})
    np.testing.assert_allclose(t.d_min, [5.0, 2.0])
    np.testing.assert_allclose(t.columns["completeness"], [100.0, 50.0])
    np.testing.assert_allclose(t.columns["cc_half"], [0.99, 0.2])
    # stillshot.merge's own format
    ms = fake_merging_stats(5)
    t = merging_table(json.loads(json.dumps(ms.as_dict())))
    np.testing.assert_allclose(t.columns["completeness"], [100 * s.completeness for s in ms.shells])
    np.testing.assert_allclose(t.columns["cc_star"], [s.cc_star for s in ms.shells])
    np.testing.assert_allclose(t.overall["completeness"], 85.0)
    # nested, as stillshot merge writes it
    t = merging_table({"statistics": ms.as_dict(), "summary": {"n_observations": 7}, "ambiguity": None})
    np.testing.assert_allclose(t.columns["cc_half"], [s.cc_half for s in ms.shells])
    assert t.extra["n_observations"] == 7 and t.extra["space_group"] == "P 43 21 2"
    with pytest.raises(ValueError, match="d_min"):
        merging_table({"shells": [{"completeness": 1.0}]})


def test_layout_places_panels_at_their_lab_positions(cspad_run):
    run = load_run(cspad_run["dir"])
    det = run.detector()
    layout = DetectorLayout(det)
    # CSPAD panels are coplanar: the projection keeps every distance (mm) between pixel positions
    for k in (0, 17, 42, 63):
        p = det[k]
        xy = np.array([[0.0, 0.0], [p.n_fast, 0.0], [0.0, p.n_slow], [13.5, 77.25]])
        lab = p.origin + (xy[:, :1] * p.pixel_size[0]) * p.fast_axis + (xy[:, 1:] * p.pixel_size[1]) * p.slow_axis
        page = layout.px_to_page(np.full(4, k), xy)
        d_lab = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
        d_page = np.linalg.norm(page[:, None] - page[None], axis=-1)
        np.testing.assert_allclose(d_page, d_lab, atol=1e-9)
        # and page x, y are the lab x, y (the detector is normal to the beam)
        np.testing.assert_allclose(page, lab[:, :2] - layout.centre[:2], atol=1e-9)
    bc = layout.beam_centre(run.imported[0].beam.s0)
    np.testing.assert_allclose(bc, [0.0, 0.0], atol=1e-6)  # beam along -z through the lab origin


# -- the page ------------------------------------------------------------------------------------
def _img_ids(html: str) -> dict:
    """Plot element id -> decoded PNG bytes."""
    out = {}
    for m in re.finditer(r'<figure class="plot" id="([^"]+)"><img alt="[^"]*" src="data:image/png;base64,([^"]+)"',
                         html):
        out[m.group(1)] = base64.b64decode(m.group(2))
    return out


def test_report_has_every_plot(cspad_report, cspad_run):
    assert cspad_report.path == cspad_run["dir"] / "report.html"
    assert cspad_report.notes == []
    html = cspad_report.path.read_text()
    imgs = _img_ids(html)
    for pid in PLOT_IDS + ("plot-shot-0", "plot-shot-1"):
        assert pid in imgs, pid
        assert imgs[pid][:8] == b"\x89PNG\r\n\x1a\n" and len(imgs[pid]) > 2000, pid
    assert "plot-shot-2" not in imgs
    assert sorted(cspad_report.plots) == sorted(imgs)
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch
    # the shots drawn are the best-indexed ones
    n_idx = [s["n_indexed"] for s in json.loads((cspad_run["dir"] / "summary.json").read_text())["shots"]]
    best = np.argsort(-np.array(n_idx), kind="stable")[:2]
    for k, i in enumerate(best):
        assert f"Shot {i} of the run" in html


def test_report_without_merging_or_images(single_run):
    res = write_report(single_run["dir"], ReportOptions(n_images=1))
    html = res.path.read_text()
    imgs = _img_ids(html)
    assert set(PLOT_IDS) - set(imgs) == {"plot-merging"}
    assert "plot-shot-0" in imgs
    assert "No merging statistics" in html
    assert res.notes == []


def test_report_of_a_sparse_directory(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"shots": [
        {"file": "a.cbf", "frame": None, "status": "unreadable", "reason": "no such file", "n_spots": 0,
         "n_indexed": 0, "unit_cell": None, "timings": {}}], "totals": {}, "parameters": {}}))
    (tmp_path / "merging_stats.json").write_text("{not json")
    res = write_report(tmp_path)
    html = res.path.read_text()
    assert "plot-rates" in _img_ids(html)
    assert any("merging_stats.json" in n for n in res.notes)
    assert "No indexed lattices" in html and "No shot to draw" in html
    empty = tmp_path / "empty"
    empty.mkdir()
    res = write_report(empty)
    assert res.path.is_file() and res.plots == []
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


def test_missing_image_is_a_note_not_a_failure(tmp_path, single_run):
    for f in single_run["dir"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    summary = json.loads((tmp_path / "summary.json").read_text())
    first = next(i for i, s in enumerate(summary["shots"]) if s["status"] == "integrated")
    original = summary["shots"][first]["file"]
    moved = "nothere/" + os.path.basename(original)
    summary["shots"][first].update(file=moved, n_indexed=10**6)  # drawn first
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    for name in ("imported.expt", "indexed.expt", "integrated.expt"):
        el = ExperimentList.from_file(tmp_path / name)
        el = ExperimentList(replace(e, image=ImageRef(moved)) if e.image.path == original else e for e in el)
        el.as_file(tmp_path / name)
    # the recorded path does not exist from here: the image is looked for in the directory
    shutil.copy(original, tmp_path / os.path.basename(original))
    res = write_report(tmp_path, ReportOptions(n_images=1))
    assert res.notes == [] and "plot-shot-0" in res.plots
    assert f"Shot {first} of the run" in res.path.read_text()
    os.remove(tmp_path / os.path.basename(original))
    res = write_report(tmp_path, ReportOptions(n_images=1))
    assert "plot-shot-0" not in res.plots
    assert len(res.notes) == 1 and "nothere" in res.notes[0] and "not found" in res.notes[0]
    assert "rates" in res.path.read_text()  # the rest of the report is there


def test_cli_report(single_run):
    target = single_run["dir"] / "report.html"
    if target.exists():
        target.unlink()
    proc = subprocess.run([sys.executable, "-m", "stillshot.cli.main", "report", str(single_run["dir"]),
                           "report.n_images=0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert target.is_file()
    assert "plot-shot-0" not in _img_ids(target.read_text())
    assert str(target) in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "stillshot.cli.main", "report", str(single_run["dir"] / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "stillshot.cli.main", "report"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "DIR" in proc.stderr


# -- headless Chromium -------------------------------------------------------------------------
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser():
    path = _chromium()
    if path is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("chromium is not installed (CI: scripts/install-debian-deps.sh installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return path


_CONSOLE = re.compile(r"CONSOLE[:(]\d+\)?\]\s*(.*)")


def load_in_chromium(browser: str, page: Path) -> tuple[str, list]:
    """Load a page in headless Chromium: the DOM after the load event and every console message."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [m.group(1) for m in _CONSOLE.finditer(proc.stderr)]
    return proc.stdout, console


def test_chromium_checker_sees_console_errors(tmp_path):
    """The console check can fail: a page with a script error and a broken image is caught."""
    browser = _browser()
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                    '<figure class="plot" id="p"><img src="data:image/png;base64,AAAA"></figure>'
                    '<script>undefinedFunction();</script></body></html>')
    dom, console = load_in_chromium(browser, page)
    assert any("undefinedFunction" in m for m in console), console
    assert 'id="p"' in dom


def test_report_in_headless_chromium(cspad_report):
    browser = _browser()
    dom, console = load_in_chromium(browser, cspad_report.path)
    assert console == []
    n_plots = len(PLOT_IDS) + 2
    assert f'data-plots="{n_plots}"' in dom and f'data-plots-rendered="{n_plots}"' in dom, dom[:400]
    for pid in PLOT_IDS + ("plot-shot-0", "plot-shot-1"):
        m = re.search(rf'<figure class="plot" id="{pid}"[^>]*>', dom)
        assert m and 'data-rendered="1"' in m.group(0), pid
    for sid in ("summary", "rates", "spots", "cells", "resolution", "metrology", "timings", "shots", "merging"):
        assert f'<section id="{sid}">' in dom


# -- real data: DIALS's own results on the thermolysin CSPAD stills -------------------------------
@pytest.mark.slow
def test_report_of_dials_results(shared_data, tmp_path, monkeypatch):
    """DIALS 3.12.1's imported/strong/indexed/integrated files of 4 real CSPAD stills (no summary.json,
    no indexed.refl: the indexed spots are the integrated reflections DIALS flags ``indexed``)."""
    ref = shared_data / "reference"
    for src, dst in (("imported.expt", "imported.expt"), ("strong.refl", "strong.refl"),
                     ("indexed.expt", "indexed.expt"), ("indexed.expt", "integrated.expt"),
                     ("integrated.refl", "integrated.refl")):
        shutil.copy(ref / f"thermolysin_cspad.{src}", tmp_path / dst)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # image paths in the files are relative to here
    run = load_run(tmp_path)
    assert run.n_shots == 4 and run.is_indexed().all()
    integrated = ReflectionTable.from_file(tmp_path / "integrated.refl")
    flagged = integrated.get_flags(Flags.indexed)
    assert list(run.column("n_indexed")) == list(np.bincount(integrated["id"][flagged], minlength=4))
    strong = ReflectionTable.from_file(tmp_path / "strong.refl")
    assert list(run.column("n_spots")) == list(np.bincount(strong["id"], minlength=4))
    cells = run.unit_cells()
    np.testing.assert_allclose(np.median(cells, axis=0), [92.9, 92.9, 130.4, 90, 90, 120], rtol=0.02)
    experiments, spots = run.indexed_spots()
    res = panel_residuals(spots, len(run.detector()))
    assert res["n"].sum() == flagged.sum()
    assert res["overall_rms"] < 1.0  # px: DIALS refined these crystals and this metrology
    res = write_report(tmp_path, ReportOptions(n_images=1))
    assert res.notes == []
    assert set(res.plots) == {"plot-rates", "plot-spots", "plot-cells", "plot-resolution", "plot-residuals",
                              "plot-shot-0"}


def test_stop_reasons_group_by_kind_not_by_count():
    from stillshot.report.data import reason_kind

    a = reason_kind("3 spots < dispatch.hit_finder.minimum_number_of_reflections=16")
    b = reason_kind("14 spots < dispatch.hit_finder.minimum_number_of_reflections=16")
    assert a == b == "N spots < dispatch.hit_finder.minimum_number_of_reflections=16"
    assert reason_kind("index: RMSD 2.31 px > 2 px") == "index: RMSD N px > N px"
    assert reason_kind("no candidate") == "no candidate"
