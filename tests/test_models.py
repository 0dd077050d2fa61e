"""Models: frames, detector hierarchy, crystal, and exact DIALS .expt round trips."""

import json

import gemmi
import numpy as np
import pytest

from stillshot.models import Beam, Crystal, Detector, ExperimentList, Frame, Panel, b_matrix


def _diff(a, b, path=""):
    """Paths where two JSON structures differ.

    Generated experiment identifiers and empty model lists that older DIALS
    files omit are not differences.
    """
    out = []
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [path]
        for k in (set(a) ^ set(b)) - {"identifier"}:
            if a.get(k, b.get(k)) != []:
                out.append(f"{path}/{k}")
        for k in set(a) & set(b):
            out += _diff(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [path]
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff(x, y, f"{path}[{i}]")
    elif a != b:
        out.append(path)
    return out


EXPT_FILES = [
    "xfel_metrology/benchmark_level2d.json",
    "multi_stills/multi_stills_combined.json",
    "reference/thermolysin_cspad.imported.expt",
    "reference/thermolysin_cspad.indexed.expt",
    "reference/thaumatin_grid.imported.expt",
    "reference/thaumatin_grid.indexed.expt",
    "reference/pilatus6m_rotation.imported.expt",
    "reference/simtbx_smv.imported.expt",
]


@pytest.mark.parametrize("name", EXPT_FILES)
def test_dials_expt_round_trip_preserves_every_number(shared_data, name):
    original = json.loads((shared_data / name).read_text())
    experiments = ExperimentList.from_dict(original)
    written = json.loads(experiments.as_json())
    assert _diff(original, written) == []


def test_metrology_benchmark_structure(shared_data):
    el = ExperimentList.from_file(shared_data / "xfel_metrology/benchmark_level2d.json")
    assert len(el) == 300
    assert len(el.detectors()) == 1
    det = el[0].detector
    assert len(det) == 64
    assert det.max_hierarchy_level() == 3
    assert [len(det.groups_at_level(level)) for level in range(4)] == [1, 4, 32, 64]
    assert all(e.crystal is not None for e in el)


def test_hierarchy_composes_like_dxtbx(shared_data):
    """Global panel frames compose local frames down the tree (dxtbx's rule)."""
    d = json.loads((shared_data / "reference/thermolysin_cspad.imported.expt").read_text())
    det = Detector.from_dict(d["detector"][0])
    h = d["detector"][0]["hierarchy"]
    # walk root > quadrant 0 > sensor 0 > panel 0 by hand
    frames = []
    node = h
    while "children" in node:
        frames.append(Frame(node["fast_axis"], node["slow_axis"], node["origin"]))
        node = node["children"][0]
    p = d["detector"][0]["panels"][node["panel"]]
    g = Frame.identity()
    for f in frames + [Frame(p["fast_axis"], p["slow_axis"], p["origin"])]:
        rot = np.column_stack([g.fast, g.slow, np.cross(g.fast, g.slow)])
        g = Frame(rot @ f.fast, rot @ f.slow, rot @ f.origin + g.origin)
    panel = det[node["panel"]]
    np.testing.assert_allclose(panel.origin, g.origin, atol=1e-12)
    np.testing.assert_allclose(panel.fast_axis, g.fast, atol=1e-12)
    # a CSPAD at ~130 mm, all panels facing the sample
    assert det.distance() == pytest.approx(130.1, abs=0.2)
    assert all(p.normal[2] == pytest.approx(1.0, abs=1e-3) or p.normal[2] == pytest.approx(-1.0, abs=1e-3) for p in det)


def test_with_local_frame_moves_children_rigidly(shared_data):
    el = ExperimentList.from_file(shared_data / "reference/thermolysin_cspad.imported.expt")
    det = el[0].detector
    quad = det.groups_at_level(1)[0]
    shift = np.array([0.5, -0.25, 0.1])
    moved = det.with_local_frame(quad, Frame(quad.local_frame.fast, quad.local_frame.slow, quad.local_frame.origin + shift))
    inside = set(quad.panel_indices())
    root_rot = det.root.frame.rotation
    for i, (a, b) in enumerate(zip(det, moved)):
        expected = a.origin + (root_rot @ shift if i in inside else 0)
        np.testing.assert_allclose(b.origin, expected, atol=1e-9)
    # the new detector writes and reads back identically
    again = Detector.from_dict(moved.to_dict())
    for a, b in zip(moved, again):
        np.testing.assert_allclose(a.origin, b.origin, atol=1e-12)


def test_pixel_convention_centre_at_half():
    panel = Panel("p", Frame((1, 0, 0), (0, -1, 0), (-10, 10, -100)), Frame((1, 0, 0), (0, -1, 0), (-10, 10, -100)),
                  pixel_size=(0.1, 0.1), image_size=(200, 200))
    centres = panel.pixel_lab_coords()
    np.testing.assert_allclose(centres[0, 0], [-10 + 0.05, 10 - 0.05, -100])
    xy, ok = panel.ray_intersection(centres[3, 7][None, :])
    np.testing.assert_allclose(panel.mm_to_px(xy[0]), [7.5, 3.5])
    assert ok[0]


def test_crystal_A_B_U_and_dials_dict():
    cell = (79.1, 79.1, 38.4, 90, 90, 90)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    U = q * np.sign(np.linalg.det(q))
    xtal = Crystal.from_cell_and_U(cell, U, "P 43 21 2")
    np.testing.assert_allclose(xtal.cell_parameters, cell, atol=1e-9)
    np.testing.assert_allclose(xtal.U, U, atol=1e-12)
    # reciprocal point of (1,0,0) has length 1/a
    assert np.linalg.norm(xtal.rlp([[1, 0, 0]])[0]) == pytest.approx(1 / 79.1)
    # B matches gemmi's fractionalisation convention: B·h = reciprocal vector in the crystal frame
    uc = gemmi.UnitCell(*cell)
    np.testing.assert_allclose(np.linalg.norm(b_matrix(uc) @ [0, 0, 1]), 1 / 38.4)
    again = Crystal.from_dict(json.loads(json.dumps(xtal.to_dict())))
    np.testing.assert_allclose(again.A, xtal.A, atol=1e-15)
    assert again.space_group.hm == "P 43 21 2"


def test_beam_s0_and_validation():
    beam = Beam(wavelength=1.3)
    np.testing.assert_allclose(beam.s0, [0, 0, -1 / 1.3])
    with pytest.raises(ValueError, match="wavelength"):
        Beam(wavelength=0.0)


def test_bad_expt_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.expt"
    bad.write_text('{"__id__": "ExperimentList", "experiment": [')
    with pytest.raises(ValueError, match="broken.expt"):
        ExperimentList.from_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.expt"):
        ExperimentList.from_file(tmp_path / "missing.expt")
