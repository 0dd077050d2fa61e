"""Tests of the CrystFEL stream writer and reader (stillshot.io.stream).

The format is checked against a real stream written by CrystFEL 0.9
(../shared/data/crystfel/pal_lysozyme.stream), against the geometry written
into the header (panel names, data-block offsets) and, when installed,
against reciprocalspaceship's stream reader.
"""

from __future__ import annotations

import io

import gemmi
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from stillshot.geometry import predict_reflections
from stillshot.io.crystfel_geom import read_geom
from stillshot.io.stream import (
    StreamCrystal,
    StreamWriter,
    crystfel_lattice,
    read_stream,
    reciprocal_basis_nm,
)
from stillshot.models import Beam, Crystal
from stillshot.simulate.layouts import single_panel
from stillshot.table import Flags, ReflectionTable

LYSO = (79.1, 79.1, 38.4, 90.0, 90.0, 90.0)


def _shot(seed=1, wavelength=1.3):
    det = single_panel(1024, 1024, 0.172, 150.0)
    beam = Beam(wavelength=wavelength)
    U = Rotation.random(random_state=seed).as_matrix()
    crystal = Crystal.from_cell_and_U(LYSO, U, "P43212", domain_size_ang=2000.0, half_mosaicity_deg=0.02)
    pred = predict_reflections(crystal.A, det, beam, d_min=2.0, max_excitation=0.002)
    n = len(pred["miller_index"])
    refl = ReflectionTable({
        "miller_index": pred["miller_index"].astype(np.int32),
        "panel": pred["panel"].astype(np.uint64),
        "xyzcal.px": pred["xyzcal.px"],
        "intensity.sum.value": np.linspace(10.0, 500.0, n),
        "intensity.sum.variance": np.linspace(10.0, 500.0, n) + 4.0,
        "background.mean": np.full(n, 1.5),
        "flags": np.full(n, int(Flags.integrated_sum), dtype=np.uint64),
        "id": np.zeros(n, dtype=np.int32),
    })
    peaks = ReflectionTable({
        "panel": pred["panel"][:20].astype(np.uint64),
        "xyzobs.px.value": pred["xyzcal.px"][:20],
        "intensity.sum.value": np.full(20, 100.0),
    })
    return det, beam, crystal, refl, peaks


def _write(tmp_path, n_chunks=2):
    det, beam, crystal, refl, peaks = _shot()
    path = tmp_path / "out.stream"
    with open(path, "w") as fh:
        w = StreamWriter(fh)
        w.header(detector=det, wavelength=beam.wavelength, cell=LYSO, space_group="P43212", command="test")
        w.chunk(filename="a.cbf", beam=beam, detector=det, peaks=peaks, crystals=[StreamCrystal(crystal, refl)],
                indexed_by="stillshot_vector_match")
        for k in range(1, n_chunks):
            w.chunk(filename="b.cxi", event=f"//{k}", beam=beam, detector=det, peaks=None, crystals=[])
    return path, det, beam, crystal, refl, peaks


def test_reciprocal_basis_in_crystfel_frame_and_nm():
    """a* in nm⁻¹ in CrystFEL's frame: (x, y, z)_CrystFEL = (-x, y, -z)_DIALS, ×10 from Å⁻¹."""
    A = np.array([[0.01, 0.002, 0.0], [0.0, 0.012, 0.001], [0.003, 0.0, 0.026]])
    star = reciprocal_basis_nm(A)
    assert np.allclose(star[0], [-0.1, 0.0, -0.03])
    assert np.allclose(star[1], [-0.02, 0.12, 0.0])
    assert np.allclose(star[2], [0.0, 0.01, -0.26])


@pytest.mark.parametrize("sg,expected", [
    ("P43212", ("tetragonal", "P", "c")),
    ("P6122", ("hexagonal", "P", "c")),
    ("P3121", ("hexagonal", "P", "c")),
    ("R3:H", ("hexagonal", "H", "c")),
    ("R3:R", ("rhombohedral", "R", "*")),
    ("C2", ("monoclinic", "C", "b")),
    ("I222", ("orthorhombic", "I", "*")),
    ("F23", ("cubic", "F", "*")),
    ("P1", ("triclinic", "P", "*")),
])
def test_lattice_type_centering_unique_axis(sg, expected):
    assert crystfel_lattice(gemmi.SpaceGroup(sg)) == expected


def test_write_read_round_trip(tmp_path):
    """Chunks, peaks and crystals read back: cell in nm, a*/b*/c* in nm⁻¹, hkl, I, σ(I), positions
    (0.1 px as written), panel names of the header's geometry, photon energy."""
    path, det, beam, crystal, refl, peaks = _write(tmp_path)
    s = read_stream(path)
    assert s["format"] == "CrystFEL stream format 2.3"
    assert "lattice_type = tetragonal" in s["cell"] and "a = 79.10 A" in s["cell"]
    c0, c1 = s["chunks"]
    assert (c0.filename, c0.event, c0.serial, c0.hit) == ("a.cbf", None, 1, True)
    assert (c1.filename, c1.event, c1.serial, c1.hit, c1.indexed_by) == ("b.cxi", "//1", 2, False, "none")
    assert abs(c0.photon_energy_ev - 12398.419843320026 / 1.3) < 1e-5
    assert len(c0.peaks) == 20 and len(c1.peaks) == 0 and not c1.crystals
    assert np.allclose(c0.peaks[:, :2], peaks["xyzobs.px.value"][:, :2], atol=0.005)
    xtal = c0.crystals[0]
    assert np.allclose(xtal["cell"], [7.91, 7.91, 3.84, 90, 90, 90], atol=1e-5)
    star = np.array([xtal["astar"], xtal["bstar"], xtal["cstar"]])
    assert np.allclose(star, reciprocal_basis_nm(crystal.A), atol=1e-7)
    r = xtal["reflections"]
    assert len(r) == len(refl)
    assert np.array_equal(r[:, :3].astype(int), refl["miller_index"])
    assert np.allclose(r[:, 3], refl["intensity.sum.value"], atol=0.005)
    assert np.allclose(r[:, 4], np.sqrt(refl["intensity.sum.variance"]), atol=0.005)
    assert np.allclose(r[:, 7:9], refl["xyzcal.px"][:, :2], atol=0.05)
    geom_path = tmp_path / "header.geom"
    geom_path.write_text(s["geometry"] + "\n")
    names = [p.name for p in read_geom(geom_path).detector]
    assert set(xtal["panels"]) <= set(names) and set(c0.peak_panels) <= set(names)


def test_peak_resolution_is_one_over_d(tmp_path):
    """The peak list's (1/d) column is |r| of the spot in nm⁻¹ (= 10/d with d in Å)."""
    path, det, beam, crystal, refl, peaks = _write(tmp_path, n_chunks=1)
    c0 = read_stream(path)["chunks"][0]
    h = refl["miller_index"][:20].astype(float)
    inv_d_nm = np.linalg.norm(crystal.A @ h.T, axis=0) * 10.0
    # the peaks sit on the predictions of reflections within 0.002 Å⁻¹ of the Ewald sphere
    assert np.allclose(c0.peaks[:, 2], inv_d_nm, atol=0.05)


def test_crystfel_written_stream_reads(shared_data):
    """CrystFEL 0.9's own stream: 3 chunks, each with one crystal, its cell and reflections."""
    s = read_stream(shared_data / "crystfel" / "pal_lysozyme.stream")
    assert s["geometry"] and "p0/res = 6400" in s["geometry"]
    assert len(s["chunks"]) == 3
    c = s["chunks"][0]
    assert c.peaks.shape == (25, 4) and c.peak_panels[0] == "p0"
    x = c.crystals[0]
    assert np.allclose(x["cell"], [7.93850, 8.04039, 3.85562, 90.68698, 90.13504, 89.74671])
    assert np.allclose(x["astar"], [0.0279588, -0.1224762, -0.0092915])
    assert x["reflections"].shape[1] == 9 and len(x["reflections"]) == int(x["num_reflections"])
    # the cell follows from a*, b*, c* (nm), as for the streams this module writes
    real = np.linalg.inv(np.array([x["astar"], x["bstar"], x["cstar"]]).T)
    assert np.allclose(np.linalg.norm(real, axis=1), x["cell"][:3], rtol=1e-4)


def test_our_layout_matches_crystfel_line_formats(tmp_path, shared_data):
    """Line by line, our chunks have the structure of CrystFEL's: same section markers in the same
    order, same column headers, and numeric fields in the same number and positions."""
    ours = (_write(tmp_path, n_chunks=1)[0]).read_text().split("\n")
    theirs = (shared_data / "crystfel" / "pal_lysozyme.stream").read_text().split("\n")
    for marker in ("----- Begin chunk -----", "Peaks from peak search", "End of peak list", "--- Begin crystal",
                   "Reflections measured after indexing", "End of reflections", "--- End crystal",
                   "----- End chunk -----", "----- Begin geometry file -----", "----- Begin unit cell -----"):
        assert marker in ours
    for header in (i for i, line in enumerate(theirs) if line.startswith(("  fs/px", "   h    k    l"))):
        assert theirs[header] in ours
    row_t = theirs[theirs.index("Reflections measured after indexing") + 2].split()
    row_o = ours[ours.index("Reflections measured after indexing") + 2].split()
    assert len(row_t) == len(row_o) == 10
    for line in ("Cell parameters", "astar = ", "bstar = ", "cstar = ", "lattice_type = ", "centering = ",
                 "photon_energy_eV = ", "Image filename: ", "Image serial number: ", "num_peaks = "):
        assert any(x.startswith(line) for x in ours), line


def test_reciprocalspaceship_reads_our_stream(tmp_path):
    """reciprocalspaceship's read_crystfel reads the stream: same hkl and I, and the Ewald offsets it
    computes from our a*, b*, c* (its frame: beam along +z) are those of reflections on the sphere."""
    rs = pytest.importorskip("reciprocalspaceship")
    pytest.importorskip("joblib")
    path, det, beam, crystal, refl, peaks = _write(tmp_path, n_chunks=2)
    from reciprocalspaceship.io.crystfel import StreamLoader

    ds = rs.read_crystfel(str(path))
    assert len(ds) == len(refl)
    assert np.allclose(np.sort(ds["I"].to_numpy()), np.sort(refl["intensity.sum.value"]), atol=0.005)
    chunks = StreamLoader(str(path)).read_crystfel(peak_list_columns=["H", "K", "L", "ewald_offset"], num_cpus=1)
    off = np.concatenate([c["peak_lists"][0][:, 3] for c in chunks if c["peak_lists"]])
    assert len(off) == len(refl)
    assert np.max(np.abs(off)) < 0.0025  # predicted within 0.002 Å⁻¹ (+ float32 rounding)


def test_empty_and_text_handle(tmp_path):
    """A stream of no shots is a header alone; the writer takes any text handle."""
    buf = io.StringIO()
    w = StreamWriter(buf)
    w.header()
    assert buf.getvalue().startswith("CrystFEL stream format 2.3\n")
    p = tmp_path / "e.stream"
    p.write_text(buf.getvalue())
    assert read_stream(p)["chunks"] == []
    bad = tmp_path / "bad.stream"
    bad.write_text("not a stream\n")
    with pytest.raises(ValueError, match="not a CrystFEL stream"):
        read_stream(bad)
