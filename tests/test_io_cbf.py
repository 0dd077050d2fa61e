"""CBF readers: geometry against DIALS's own reading, pixels against fabio/pycbf, bad input.

The references in ../shared/data/reference/*.imported.expt are DIALS 3.12.1's
``dials.import`` of the same files.  Tolerances: panel origins 1e-3 mm, axes
1e-6, wavelength 1e-6 Å.
"""

from __future__ import annotations

import bz2
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from stillshot.io import _cbf_codec as codec
from stillshot.io.base import ImageFormatError, open_image
from stillshot.io.cbf import FullCBF, MiniCBF, attenuation_mu
from stillshot.models import ExperimentList

ORIGIN_TOL = 1e-3  # mm
AXIS_TOL = 1e-6
WAVELENGTH_TOL = 1e-6  # Å

CSPAD = "thermolysin_cspad"
THAUMATIN = "thaumatin_grid"
PILATUS_FULL = "image_examples/DLS_I03_smargon_0001.cbf.gz"


def _reference(shared_data: Path, name: str) -> ExperimentList:
    return ExperimentList.from_file(shared_data / "reference" / f"{name}.imported.expt")


def _tree(node, detector):
    """(name, children) shape of a hierarchy; panels appear by name."""
    from stillshot.models import Group

    if isinstance(node, Group):
        return (node.name, [_tree(c, detector) for c in node.children])
    return detector[node].name


def assert_same_geometry(ours, ref, wavelength, ref_wavelength):
    """Panel-by-panel agreement of two detectors (and the beam wavelengths)."""
    assert abs(wavelength - ref_wavelength) < WAVELENGTH_TOL
    assert len(ours) == len(ref)
    for p, q in zip(ours, ref):
        assert p.name == q.name
        np.testing.assert_allclose(p.origin, q.origin, rtol=0, atol=ORIGIN_TOL, err_msg=p.name)
        np.testing.assert_allclose(p.fast_axis, q.fast_axis, rtol=0, atol=AXIS_TOL, err_msg=p.name)
        np.testing.assert_allclose(p.slow_axis, q.slow_axis, rtol=0, atol=AXIS_TOL, err_msg=p.name)
        np.testing.assert_allclose(p.pixel_size, q.pixel_size, rtol=1e-12, err_msg=p.name)
        assert p.image_size == q.image_size
        assert p.trusted_range == pytest.approx(q.trusted_range)
    # the same hierarchy: tree shape, group names and group frames
    assert _tree(ours.root, ours) == _tree(ref.root, ref)
    for g, h in zip(ours.root.groups(), ref.root.groups()):
        np.testing.assert_allclose(g.frame.origin, h.frame.origin, rtol=0, atol=ORIGIN_TOL, err_msg=g.name)
        np.testing.assert_allclose(g.frame.fast, h.frame.fast, rtol=0, atol=AXIS_TOL, err_msg=g.name)
        np.testing.assert_allclose(g.frame.slow, h.frame.slow, rtol=0, atol=AXIS_TOL, err_msg=g.name)


def assert_same_panel_metadata(ours, ref):
    """Sensor and bookkeeping fields as DIALS writes them to .expt."""
    for p, q in zip(ours, ref):
        assert (p.type, p.material, p.identifier) == (q.type, q.material, q.identifier)
        assert p.thickness == pytest.approx(q.thickness, abs=1e-12)
        assert p.mu == pytest.approx(q.mu, rel=1e-9, abs=1e-12)
        assert p.gain == pytest.approx(q.gain)
        assert p.mask == q.mask
        assert p.px_mm_strategy == q.px_mm_strategy


# -- no real data needed ------------------------------------------------------------------


def test_attenuation_matches_dials_values():
    # DIALS's mu for 0.45 mm and 1 mm Si Pilatus sensors (reference .expt files)
    assert attenuation_mu("Si", 0.96859) == pytest.approx(3.8326187041206916, rel=1e-12)
    assert attenuation_mu("Si", 0.97625) == pytest.approx(3.9220365583933647, rel=1e-12)
    # photo-absorption falls with energy; unknown materials give 0
    assert attenuation_mu("Si", 0.7) < attenuation_mu("Si", 1.0)
    assert attenuation_mu("Unobtainium", 1.0) == 0.0


def test_non_cbf_with_cbf_name(tmp_path):
    path = tmp_path / "notes.cbf"
    path.write_text("this is a text file, not an image\n" * 50)
    assert not MiniCBF.understand(str(path)) and not FullCBF.understand(str(path))
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_non_gzip_with_gz_name(tmp_path):
    path = tmp_path / "image.cbf.gz"
    path.write_bytes(b"###CBF: VERSION 1.5 but not gzipped\n")
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert str(path) in str(info.value)


def test_header_only_cbf_is_an_error(tmp_path):
    path = tmp_path / "header.cbf"
    path.write_bytes(
        b"###CBF: VERSION 1.5\ndata_x\n_array_data.header_convention \"PILATUS_1.2\"\n"
        b"_array_data.header_contents\n;\n# Detector: PILATUS 6M\n# Wavelength 1.0 A\n;\n"
    )
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert str(path) in str(info.value) and "truncated" in str(info.value)


# -- real data -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cspad_geometry_matches_dials(shared_data):
    ref = _reference(shared_data, CSPAD)
    files = sorted((shared_data / CSPAD).glob("*.cbf"))
    assert len(files) == len(ref) == 4
    for path, expt in zip(files, ref):
        assert Path(expt.image.path).name == path.name
        reader = open_image(path)
        assert isinstance(reader, FullCBF)
        beam, det = reader.models()
        assert len(det) == 64 and det.max_hierarchy_level() == 3
        assert_same_geometry(det, expt.detector, beam.wavelength, expt.beam.wavelength)
        assert_same_panel_metadata(det, expt.detector)
        np.testing.assert_allclose(beam.direction, expt.beam.direction, atol=1e-12)
        assert beam.polarization_fraction == pytest.approx(expt.beam.polarization_fraction)
    # the group names DIALS gives: detector > 4 quadrants > 8 sensors > 2 ASICs
    assert det.root.name == "AXIS_D0_R"
    assert [g.name for g in det.groups_at_level(1)] == [f"FS_D0Q{q}" for q in range(4)]
    assert det[63].name == "ARRAY_D0Q3S7A1"


@pytest.mark.slow
def test_cspad_json_matches_dials_panel_dicts(shared_data):
    """The panel and group dicts we write are DIALS's (values within tolerance)."""
    ref = _reference(shared_data, CSPAD)[0].detector.to_dict()
    ours = open_image(next(iter(sorted((shared_data / CSPAD).glob("*.cbf"))))).models()[1].to_dict()
    for p, q in zip(ours["panels"], ref["panels"]):
        assert set(p) == set(q)
        for key in p:
            if isinstance(q[key], list) and q[key] and isinstance(q[key][0], float):
                np.testing.assert_allclose(p[key], q[key], rtol=0, atol=1e-9)
            else:
                assert p[key] == q[key], key


@pytest.mark.slow
def test_thaumatin_geometry_matches_dials(shared_data):
    ref = _reference(shared_data, THAUMATIN)
    files = sorted((shared_data / THAUMATIN).glob("*.cbf.bz2"))
    assert len(files) == len(ref) == 12
    for path, expt in zip(files, ref):
        reader = open_image(path)
        assert isinstance(reader, MiniCBF)
        beam, det = reader.models()
        assert_same_geometry(det, expt.detector, beam.wavelength, expt.beam.wavelength)
        assert_same_panel_metadata(det, expt.detector)
        assert beam.to_dict() == pytest.approx(expt.beam.to_dict())


@pytest.mark.slow
def test_pilatus_full_cbf_geometry_matches_dials(shared_data):
    """A Diamond Pilatus file with a full imgCIF header: geometry from the axes, not Beam_xy."""
    expt = _reference(shared_data, "pilatus6m_rotation")[0]
    reader = open_image(shared_data / PILATUS_FULL)
    assert isinstance(reader, FullCBF)
    beam, det = reader.models()
    assert_same_geometry(det, expt.detector, beam.wavelength, expt.beam.wavelength)
    assert_same_panel_metadata(det, expt.detector)
    assert beam.to_dict() == pytest.approx(expt.beam.to_dict())


@pytest.mark.slow
def test_minicbf_pixels_equal_fabio(shared_data):
    fabio = pytest.importorskip("fabio")
    path = shared_data / THAUMATIN / "thau_3_2_0001.cbf.bz2"
    shot = open_image(path).shot()
    expected = fabio.open(str(path)).data
    (data,) = shot.data
    assert data.shape == expected.shape == (2527, 2463)
    np.testing.assert_array_equal(data, expected)
    assert data.max() > 0 and (data == -1).any()  # real counts and module-gap pixels


@pytest.mark.slow
def test_full_cbf_pixels_equal_pycbf(shared_data):
    """Every CSPAD ASIC equals CBFlib's decoding of the same file, cut by array_structure_list_section."""
    pycbf = pytest.importorskip("pycbf")
    path = sorted((shared_data / CSPAD).glob("*.cbf"))[0]
    shot = open_image(path).shot()

    handle = pycbf.cbf_handle_struct()
    handle.read_widefile(str(path).encode(), pycbf.MSG_DIGEST)
    handle.find_category(b"array_data")
    arrays = {}
    handle.rewind_row()
    for i in range(handle.count_rows()):
        if i:
            handle.next_row()
        handle.find_column(b"array_id")
        name = handle.get_value().decode()
        handle.find_column(b"data")
        raw = handle.get_integerarray_as_string()
        dims = handle.get_integerarrayparameters_wdims_fs()
        arrays[name] = np.frombuffer(raw, np.int32).reshape(dims[11], dims[10], dims[9])
    handle.find_category(b"array_structure_list_section")
    sections: dict = {}
    handle.rewind_row()
    for i in range(handle.count_rows()):
        if i:
            handle.next_row()
        row = {}
        for col in ("id", "array_id", "index", "start", "end"):
            handle.find_column(col.encode())
            row[col] = handle.get_value().decode()
        entry = sections.setdefault(row["id"], {"array": row["array_id"]})
        entry[int(row["index"])] = slice(int(row["start"]) - 1, int(row["end"]))

    assert [p.name for p in shot.detector] == list(sections)
    for data, (name, sec) in zip(shot.data, sections.items()):
        expected = arrays[sec["array"]][sec[3], sec[2], sec[1]].reshape(data.shape)
        np.testing.assert_array_equal(data, expected, err_msg=name)
    assert sum(a.size for a in shot.data) == 2_296_960


@pytest.mark.slow
def test_truncated_full_cbf(shared_data, tmp_path):
    src = sorted((shared_data / CSPAD).glob("*.cbf"))[0].read_bytes()
    path = tmp_path / "cut.cbf"
    path.write_bytes(src[: len(src) // 2])  # inside the second binary section
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path) and "truncated" in str(info.value)

    path.write_bytes(src[:20000])  # inside the header
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert str(path) in str(info.value)


@pytest.mark.slow
def test_truncated_bz2_minicbf(shared_data, tmp_path):
    src = (shared_data / THAUMATIN / "thau_3_2_0001.cbf.bz2").read_bytes()
    path = tmp_path / "cut.cbf.bz2"
    path.write_bytes(src[: len(src) // 2])
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path)


@pytest.mark.slow
def test_truncated_plain_minicbf(shared_data, tmp_path):
    raw = bz2.decompress((shared_data / THAUMATIN / "thau_3_2_0001.cbf.bz2").read_bytes())
    path = tmp_path / "cut.cbf"
    path.write_bytes(raw[: len(raw) - 100_000])
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path) and "truncated" in str(info.value)


@pytest.mark.slow
def test_corrupt_binary_sections(shared_data, tmp_path):
    # a few flipped bytes inside a packed CSPAD section
    src = bytearray(sorted((shared_data / CSPAD).glob("*.cbf"))[0].read_bytes())
    _, sections = codec.split_cbf(bytes(src))
    middle = sections[2].start + sections[2].size // 2
    src[middle : middle + 16] = bytes(255 - b for b in src[middle : middle + 16])
    path = tmp_path / "corrupt.cbf"
    path.write_bytes(bytes(src))
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path) and "corrupt" in str(info.value)

    # a flipped byte inside a byte-offset Pilatus section
    raw = bytearray(bz2.decompress((shared_data / THAUMATIN / "thau_3_2_0001.cbf.bz2").read_bytes()))
    _, sections = codec.split_cbf(bytes(raw))
    raw[sections[0].start + 1000] ^= 0x01
    path = tmp_path / "corrupt_pilatus.cbf"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert info.value.path == str(path) and "corrupt" in str(info.value)

    # an unreadable MIME header
    bad = re.sub(rb"X-Binary-Size: \d+", b"X-Binary-Size: lots", bytes(raw), count=1)
    path = tmp_path / "bad_mime.cbf"
    path.write_bytes(bad)
    with pytest.raises(ImageFormatError) as info:
        open_image(path).shot()
    assert str(path) in str(info.value) and "X-Binary-Size" in str(info.value)


@pytest.mark.slow
def test_show_prints_64_panels_per_cspad_image(shared_data):
    from stillshot.cli.main import main

    files = [str(p) for p in sorted((shared_data / CSPAD).glob("*.cbf"))]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["show", *files]) == 0
    text = out.getvalue()
    assert "64 panels" in text and "4 shots from 4 files" in text

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["show", *files, "--json"]) == 0
    experiments = ExperimentList.from_dict(json.loads(out.getvalue()))
    ref = _reference(shared_data, CSPAD)
    assert len(experiments) == 4
    for expt, expected in zip(experiments, ref):
        assert len(expt.detector) == 64
        assert_same_geometry(expt.detector, expected.detector, expt.beam.wavelength, expected.beam.wavelength)


@pytest.mark.slow
def test_packed_decoder_equals_cbflib(shared_data):
    """The numba CBF_PACKED decoder against CBFlib, section by section, and on a cut payload."""
    pytest.importorskip("pycbf")
    path = sorted((shared_data / CSPAD).glob("*.cbf"))[-1]
    buf = codec.read_all(path)
    _, sections = codec.split_cbf(buf)
    assert len(sections) == 4 and sections[0].conversion == "x-CBF_PACKED"
    for section in sections:
        payload = memoryview(buf)[section.start : section.start + section.size]
        ours = codec.packed_decode(payload, section)
        np.testing.assert_array_equal(ours, codec._decode_packed_pycbf(buf, section, np.int32))
    with pytest.raises(codec.CBFError, match="ends early"):
        codec.packed_decode(payload[: section.size // 3], section)


@pytest.mark.slow
def test_full_pilatus_pixels_equal_fabio(shared_data):
    fabio = pytest.importorskip("fabio")
    path = shared_data / PILATUS_FULL
    (data,) = open_image(path).shot().data
    np.testing.assert_array_equal(data, fabio.open(str(path)).data)


@pytest.mark.slow
def test_cspad_shots_share_one_detector_until_the_geometry_changes(shared_data, tmp_path):
    files = sorted((shared_data / CSPAD).glob("*.cbf"))
    detectors = [open_image(p).models()[1] for p in files]
    assert all(d is detectors[0] for d in detectors)  # one model for the run

    # the same file with one quadrant moved by 1 mm along x: a new, moved detector
    raw = files[0].read_bytes()
    moved = raw.replace(b"FS_D0Q0 rotation detector AXIS_D0_R 0.0 0.0 1.0 -50.3349283095",
                        b"FS_D0Q0 rotation detector AXIS_D0_R 0.0 0.0 1.0 -49.3349283095", 1)
    assert moved != raw
    path = tmp_path / files[0].name
    path.write_bytes(moved)
    det = open_image(path).models()[1]
    assert det is not detectors[0]
    shift = np.array([p.origin - q.origin for p, q in zip(det, detectors[0])])
    np.testing.assert_allclose(shift[:16], [[1.0, 0.0, 0.0]] * 16, atol=1e-9)  # quadrant 0's ASICs
    np.testing.assert_allclose(shift[16:], 0.0, atol=1e-12)
