"""CrystFEL .geom files: reading, writing, errors, and the frame conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stillshot.io.crystfel_geom import HC_EV_ANGSTROM, PanelSlab, read_geom, write_geom
from stillshot.models import ExperimentList

GEOMS = (
    "Eiger16M-binning2-nativefiles.geom",
    "cspad-cxiformat.geom",
    "jf-swissfel-16M.geom",
    "pilatus.geom",
)

#: A one-panel detector whose DIALS geometry is derived by hand below.
ONE_PANEL = """\
photon_energy = 9000 eV
clen = 0.1 m
res = 10000
adu_per_photon = 2.5

p0/min_fs = 0
p0/max_fs = 99
p0/min_ss = 0
p0/max_ss = 49
p0/corner_x = -50
p0/corner_y = 20
p0/fs = +0.8x +0.6y
p0/ss = -0.6x +0.8y
p0/coffset = 0.002
"""


def _write(tmp_path, text, name="t.geom"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- reading the shipped files ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", GEOMS)
def test_shipped_geoms_read(shared_data, name):
    g = read_geom(shared_data / "crystfel" / name)
    det = g.detector
    assert len(det) == len(g.slabs) >= 1
    for panel, slab in zip(det, g.slabs):
        assert panel.shape == (slab.n_slow, slab.n_fast)
        assert abs(panel.fast_axis @ panel.slow_axis) < 1e-9
        assert 0.05 < panel.pixel_size[0] < 0.2
        assert panel.extra["crystfel"]["min_fs"] == slab.min_fs


@pytest.mark.slow
def test_shipped_geom_facts(shared_data):
    cspad = read_geom(shared_data / "crystfel" / "cspad-cxiformat.geom")
    assert len(cspad.detector) == 64
    assert cspad.clen_location == "/LCLS/detector_1/EncoderValue"
    assert cspad.wavelength_location == "/LCLS/photon_energy_eV"
    assert cspad.wavelength is None
    assert cspad.masks[0]["data"] == "/entry_1/data_1/mask" and cspad.masks[0]["badbits"] == 0xFFFF
    # q0a0: corner (443.819, -49.8719) px at 1/9090.91 m, coffset 0.573224 m (clen 0 at a location)
    p = 1000.0 / 9090.91
    np.testing.assert_allclose(cspad.detector[0].origin, [-443.819 * p, -49.8719 * p, -573.224], atol=1e-6)
    assert cspad.detector.max_hierarchy_level() == 3

    jf = read_geom(shared_data / "crystfel" / "jf-swissfel-16M.geom")
    assert len(jf.detector) == 32
    assert jf.clen == pytest.approx(0.0953)
    assert jf.wavelength == pytest.approx(HC_EV_ANGSTROM / 4570)
    assert jf.masks[0]["file"] == "run47.JF06T32V01.mask.h5"

    eiger = read_geom(shared_data / "crystfel" / "Eiger16M-binning2-nativefiles.geom")
    assert eiger.slabs[0].dims == ("%", "ss", "fs") and eiger.slabs[0].data == "/entry/data/data"
    # bad_v0 fs 1030..1039 over the whole height -> one untrusted rectangle (ends exclusive)
    assert (1030, 0, 1040, 2167) in eiger.detector[0].mask


# -- round trip ------------------------------------------------------------------------------------
def _assert_same_geometry(a, b):
    da, db = a.detector, b.detector
    assert len(da) == len(db)
    for p, q in zip(da, db):
        assert p.name == q.name
        np.testing.assert_allclose(p.origin, q.origin, rtol=0, atol=1e-6)
        np.testing.assert_allclose(p.fast_axis, q.fast_axis, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.slow_axis, q.slow_axis, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.pixel_size, q.pixel_size, rtol=1e-9)
        assert p.image_size == q.image_size
        assert p.trusted_range == pytest.approx(q.trusted_range)
        assert p.gain == pytest.approx(q.gain)
        assert set(p.mask) == set(q.mask)
    assert a.slabs == b.slabs
    assert a.masks == b.masks
    assert da.max_hierarchy_level() == db.max_hierarchy_level()
    for g, h in zip(da.root.groups(), db.root.groups()):
        np.testing.assert_allclose(g.frame.origin, h.frame.origin, rtol=0, atol=1e-6)
        np.testing.assert_allclose(g.frame.fast, h.frame.fast, rtol=0, atol=1e-9)
        assert g.panel_indices() == h.panel_indices()
    for attr in ("wavelength", "clen"):
        va, vb = getattr(a, attr), getattr(b, attr)
        assert (va is None and vb is None) or va == pytest.approx(vb, rel=1e-9)
    assert a.wavelength_location == b.wavelength_location
    assert a.clen_location == b.clen_location


@pytest.mark.slow
@pytest.mark.parametrize("name", GEOMS)
def test_write_read_round_trip_shipped(shared_data, tmp_path, name):
    first = read_geom(shared_data / "crystfel" / name)
    out = write_geom(first.detector, tmp_path / "rt.geom")
    second = read_geom(out)
    _assert_same_geometry(first, second)
    # and a second generation is stable too
    third = read_geom(write_geom(second.detector, tmp_path / "rt2.geom"))
    _assert_same_geometry(second, third)


def test_write_read_round_trip_one_panel(tmp_path):
    first = read_geom(_write(tmp_path, ONE_PANEL))
    second = read_geom(write_geom(first.detector, tmp_path / "out.geom"))
    _assert_same_geometry(first, second)
    assert second.photon_energy == pytest.approx(9000.0)
    assert second.detector[0].gain == pytest.approx(2.5)


# -- the frame conversion, by hand ------------------------------------------------------------------------
def test_one_panel_conversion_by_hand(tmp_path):
    g = read_geom(_write(tmp_path, ONE_PANEL))
    panel = g.detector[0]
    # res = 10000 px/m -> pixel 0.1 mm; |fs| = |ss| = 1 so both pixel sizes are 0.1 mm.
    assert panel.pixel_size == pytest.approx((0.1, 0.1))
    assert panel.image_size == (100, 50)
    # CrystFEL corner (lab, mm): x = -50 px * 0.1 = -5, y = 20 px * 0.1 = 2,
    # z = clen + coffset = 100 + 2 = 102 (along the beam).  CrystFEL -> DIALS is
    # (x, y, z) -> (-x, y, -z) (180 deg about y: beam along -z in DIALS), so the
    # DIALS origin is (5, 2, -102).
    np.testing.assert_allclose(panel.origin, [5.0, 2.0, -102.0], atol=1e-12)
    # fs = (0.8, 0.6, 0) -> (-0.8, 0.6, 0); ss = (-0.6, 0.8, 0) -> (0.6, 0.8, 0).
    np.testing.assert_allclose(panel.fast_axis, [-0.8, 0.6, 0.0], atol=1e-12)
    np.testing.assert_allclose(panel.slow_axis, [0.6, 0.8, 0.0], atol=1e-12)
    # A pixel centre, both ways: CrystFEL's pixel (fs, ss) = (10, 3) has its
    # centre at corner + 10.5 fs + 3.5 ss (px) = (-50 + 8.4 - 2.1, 20 + 6.3 + 2.8)
    # = (-43.7, 29.1) px = (-4.37, 2.91) mm at z = 102, i.e. DIALS (4.37, 2.91, -102).
    centre = panel.pixel_lab_coords()[3, 10]
    np.testing.assert_allclose(centre, [4.37, 2.91, -102.0], atol=1e-12)
    # photon_energy 9000 eV -> lambda = hc / E = 12398.4198 / 9000 A
    assert g.wavelength == pytest.approx(12398.419843320026 / 9000.0, rel=1e-12)
    assert g.beam.wavelength == pytest.approx(1.37760220, rel=1e-8)
    assert g.slabs[0] == PanelSlab(0, 99, 0, 49, "/data/data", ("ss", "fs"))
    assert panel.gain == 2.5


def test_direct_beam_hits_corner_offset(tmp_path):
    """The beam axis is CrystFEL x = y = 0: it crosses the panel at pixel (-corner) in px."""
    text = ONE_PANEL.replace("+0.8x +0.6y", "x").replace("-0.6x +0.8y", "y")
    g = read_geom(_write(tmp_path, text))
    det = g.detector
    # corner_x = -50: the beam is 50 px along +fs (= +x) from the corner; corner_y = 20: it is
    # 20 px before the corner along ss (= +y), i.e. off the panel at ss = -20.
    lab = det.beam_centre_lab(np.array([0.0, 0.0, -1.0]))
    np.testing.assert_allclose(lab, [0.0, 0.0, -102.0], atol=1e-12)
    xy_mm, ok = det[0].ray_intersection(np.array([[0.0, 0.0, -1.0]]))
    assert ok[0]
    np.testing.assert_allclose(det[0].mm_to_px(xy_mm[0]), [50.0, -20.0], atol=1e-9)
    assert det.beam_centre(np.array([0.0, 0.0, -1.0])) is None


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "drop, words",
    [
        ("res = 10000\n", ["res", "p0"]),
        ("p0/corner_x = -50\n", ["corner_x", "p0"]),
        ("p0/min_fs = 0\n", ["min_fs", "p0"]),
        ("p0/fs = +0.8x +0.6y\n", ["'fs'", "p0"]),
        ("clen = 0.1 m\n", ["clen"]),
    ],
)
def test_missing_key_is_a_clear_error(tmp_path, drop, words):
    assert drop in ONE_PANEL
    path = _write(tmp_path, ONE_PANEL.replace(drop, ""), "broken.geom")
    with pytest.raises(ValueError) as info:
        read_geom(path)
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message


def test_bad_line_names_the_line(tmp_path):
    path = _write(tmp_path, ONE_PANEL + "this line has no equals sign\n", "bad.geom")
    with pytest.raises(ValueError, match=r"bad\.geom, line 15"):
        read_geom(path)


def test_bad_number_names_key_and_line(tmp_path):
    path = _write(tmp_path, ONE_PANEL.replace("p0/corner_y = 20", "p0/corner_y = twenty"), "num.geom")
    with pytest.raises(ValueError, match=r"num\.geom, line 11.*corner_y"):
        read_geom(path)


# -- agreement with DIALS's reading of a real CSPAD --------------------------------------------------------
@pytest.mark.slow
def test_cspad_geom_matches_dials_cspad_orientation(shared_data):
    """CrystFEL's example CSPAD layout, converted, agrees with DIALS's reading of a CSPAD CBF.

    The two are different metrologies of the same kind of detector, so panel
    centres agree to a few mm only; but the ASIC-to-ASIC match must be one to
    one and every matched ASIC must have the same fast and slow directions.
    Mirroring x instead of rotating about y (a common mistake) fails both.
    """
    geom = read_geom(shared_data / "crystfel" / "cspad-cxiformat.geom", clen=0.1)
    ref = ExperimentList.from_file(shared_data / "reference" / "thermolysin_cspad.imported.expt").detectors()[0]

    def centres(det):
        return np.array(
            [p.origin + 0.5 * (p.n_fast * p.pixel_size[0] * p.fast_axis + p.n_slow * p.pixel_size[1] * p.slow_axis) for p in det]
        )

    ours, theirs = centres(geom.detector), centres(ref)
    dist = np.linalg.norm(ours[:, None, :2] - theirs[None, :, :2], axis=2)
    match = dist.argmin(axis=1)
    assert len(set(match.tolist())) == 64
    assert dist.min(axis=1).max() < 5.0  # mm
    for i, j in enumerate(match):
        assert geom.detector[i].fast_axis @ ref[j].fast_axis > 0.999
        assert geom.detector[i].slow_axis @ ref[j].slow_axis > 0.999
    assert math.isclose(ref[0].image_size[0], geom.detector[0].image_size[0])
