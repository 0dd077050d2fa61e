"""SMV, NeXus/NXmx and CXI readers: geometry, pixels, per-frame values, errors."""

from __future__ import annotations

import os
from dataclasses import replace

import h5py
import hdf5plugin
import numpy as np
import pytest

from stillshot.io.base import ImageFormatError, open_image
from stillshot.io.crystfel_geom import HC_EV_ANGSTROM, read_geom
from stillshot.io.cxi import CXIFile
from stillshot.io.imageset import import_experiments, load_reference_geometry, read_shot
from stillshot.io.nexus import NexusFile
from stillshot.io.smv import SMVFile
from stillshot.models import Experiment, ExperimentList, Frame, ImageRef

SMV_NAME = "simtbx_FormatSMVJHSim_001.img"


# =============================================================================================
# SMV
# =============================================================================================
@pytest.mark.slow
def test_smv_matches_dials_import(shared_data):
    """The simtbx SMV image reads as dials.import read it (reference/simtbx_smv.imported.expt)."""
    path = shared_data / "image_examples" / SMV_NAME
    reader = open_image(path)
    assert isinstance(reader, SMVFile) and reader.variant == "jhsim"
    assert not reader.is_multi_frame and reader.n_frames == 1
    shot = reader.shot(0)
    ref = ExperimentList.from_file(shared_data / "reference" / "simtbx_smv.imported.expt")
    ref_det, ref_beam = ref[0].detector, ref[0].beam
    assert len(shot.detector) == len(ref_det) == 1
    ours, theirs = shot.detector[0], ref_det[0]
    np.testing.assert_allclose(ours.origin, theirs.origin, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.fast_axis, theirs.fast_axis, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.slow_axis, theirs.slow_axis, rtol=0, atol=1e-6)
    assert ours.pixel_size == pytest.approx(theirs.pixel_size)
    assert ours.image_size == theirs.image_size
    assert ours.trusted_range == pytest.approx(theirs.trusted_range)
    assert ours.type == theirs.type
    assert shot.beam.wavelength == pytest.approx(ref_beam.wavelength, abs=1e-6)
    np.testing.assert_allclose(shot.beam.direction, ref_beam.direction, atol=1e-12)
    assert shot.beam.polarization_fraction == pytest.approx(ref_beam.polarization_fraction)
    # the whole DIALS dicts agree, too
    assert shot.detector.to_dict() == ref_det.to_dict()
    # header: BEAM_CENTER_X = Y = 28.16 mm, PIXEL_SIZE 0.055, SIZE2 1024 -> DIALS's JHSim
    # convention b_f = 28.16 + 0.055, b_s = 56.32 - 28.16 + 0.055 -> origin (-28.215, 28.215, -1590)
    np.testing.assert_allclose(ours.origin, [-28.215, 28.215, -1590.0], atol=1e-9)


@pytest.mark.slow
def test_smv_pixels_as_fabio_reads_them(shared_data):
    import fabio

    path = shared_data / "image_examples" / SMV_NAME
    (data,) = open_image(path).read_frame(0)
    expected = fabio.open(str(path)).data
    assert data.shape == expected.shape == (1024, 1024)
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, expected)
    assert data.max() > 0


def _adsc_header(size1=6, size2=4, byte_order="big_endian", extra=""):
    text = (
        "{\nHEADER_BYTES=  512;\nDIM=2;\n"
        f"BYTE_ORDER={byte_order};\nTYPE=unsigned_short;\nSIZE1={size1};\nSIZE2={size2};\n"
        "PIXEL_SIZE=0.1;\nDISTANCE=150.0;\nWAVELENGTH=1.0;\nBEAM_CENTER_X=0.25;\nBEAM_CENTER_Y=0.35;\n"
        "OSC_START=0;\nOSC_RANGE=0;\nIMAGE_PEDESTAL=40;\n" + extra + "}\n"
    ).encode()
    return text + b" " * (512 - len(text))


def test_smv_adsc_synthetic(tmp_path):
    """An ADSC header: Mosflm-frame beam centre, big-endian pixels, pedestal in the trusted range."""
    pixels = np.arange(24, dtype=np.uint16).reshape(4, 6) * 1000
    path = tmp_path / "adsc_001.img"
    path.write_bytes(_adsc_header() + pixels.astype(">u2").tobytes())
    reader = open_image(path)
    assert isinstance(reader, SMVFile) and reader.variant == "adsc"
    beam, det = reader.models(0)
    panel = det[0]
    # ADSC: (b_f, b_s) = (BEAM_CENTER_Y, BEAM_CENTER_X) = (0.35, 0.25) mm; fast +x, slow -y
    # origin = -DISTANCE z - b_f fast - b_s slow = (-0.35, +0.25, -150)
    np.testing.assert_allclose(panel.origin, [-0.35, 0.25, -150.0], atol=1e-12)
    np.testing.assert_allclose(panel.fast_axis, [1, 0, 0])
    np.testing.assert_allclose(panel.slow_axis, [0, -1, 0])
    assert panel.image_size == (6, 4) and panel.shape == (4, 6)
    assert panel.trusted_range == (-41.0, 65495.0)
    assert panel.pedestal == 40.0
    assert beam.wavelength == 1.0 and beam.polarization_fraction == pytest.approx(0.999)
    (data,) = reader.read_frame(0)
    np.testing.assert_array_equal(data, pixels)
    assert data.dtype.isnative


def test_smv_truncated_pixels(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(_adsc_header() + b"\x00" * 10)
    reader = open_image(path)
    with pytest.raises(ImageFormatError, match=r"short\.img.*truncated"):
        reader.shot(0)


def test_smv_missing_header_key(tmp_path):
    path = tmp_path / "nodist.img"
    head = _adsc_header().replace(b"DISTANCE=150.0;\n", b"")
    path.write_bytes(head + b"\x00" * 48)
    with pytest.raises(ImageFormatError, match=r"nodist\.img.*DISTANCE"):
        open_image(path)


def test_smv_frame_out_of_range(tmp_path):
    path = tmp_path / "one.img"
    path.write_bytes(_adsc_header() + b"\x00" * 48)
    reader = open_image(path)
    with pytest.raises(ImageFormatError) as info:
        reader.shot(1)
    assert info.value.frame == 1
    assert str(path) in str(info.value) and "frame 1" in str(info.value)


def test_smv_reference_geometry_overrides_header(tmp_path):
    """input.reference_geometry=FILE.expt replaces the header's detector."""
    path = tmp_path / "adsc_001.img"
    path.write_bytes(_adsc_header() + b"\x00" * 48)
    beam, header_det = open_image(path).models(0)
    moved_panel = header_det[0]
    frame = Frame(moved_panel.fast_axis, moved_panel.slow_axis, moved_panel.origin + [1.0, -2.0, 30.0])
    moved = type(header_det).flat([replace(moved_panel, frame=frame, local_frame=frame)])
    expt = tmp_path / "refined.expt"
    ExperimentList([Experiment(beam=beam, detector=moved, image=ImageRef(str(path)))]).as_file(expt)

    reference = load_reference_geometry(expt)
    reader = open_image(path, reference_geometry=reference)
    beam2, det2 = reader.models(0)
    np.testing.assert_allclose(det2[0].origin, [0.65, -1.75, -120.0], atol=1e-9)
    assert beam2.wavelength == 1.0  # the beam still comes from the header
    shot = read_shot(ImageRef(str(path)), reference_geometry=reference)
    np.testing.assert_allclose(shot.detector[0].origin, [0.65, -1.75, -120.0], atol=1e-9)


# =============================================================================================
# NeXus / NXmx
# =============================================================================================
DET = "/entry/instrument/detector"


def _axis(group, name, value, ttype, vector, depends_on, units, offset=None):
    ds = group.create_dataset(name, data=value)
    ds.attrs["transformation_type"] = ttype
    ds.attrs["vector"] = np.asarray(vector, dtype=float)
    ds.attrs["depends_on"] = depends_on
    ds.attrs["units"] = units
    if offset is not None:
        ds.attrs["offset"] = np.asarray(offset, dtype=float)
        ds.attrs["offset_units"] = "mm"
    return ds


def write_nxmx(path, frames, modules, *, wavelength=0.98, distance_mm=120.0, pixel_mm=0.075,
               two_theta_deg=0.0, external=True, bit_depth=None, pixel_mask=None):
    """A small NXmx master file (Eiger/Jungfrau style) written with h5py.

    Parameters
    ----------
    frames : ndarray, shape (n, ss, fs)
        The frames, written bitshuffle/LZ4-compressed, one chunk a frame.
    modules : list of tuple
        ``(data_origin (ss, fs), data_size (ss, fs), module offset (x, y, z) mm in the
        McStas frame, fast vector, slow vector)`` per module.
    wavelength : float or array
        Å (one per frame when an array).
    external : bool
        Frames in two data files (``data_000001``/``data_000002`` external links) rather
        than in the master.
    """
    n = frames.shape[0]
    base = os.path.splitext(str(path))[0]
    comp = hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        inst = entry.create_group("instrument")
        inst.attrs["NX_class"] = "NXinstrument"
        beam = inst.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam.create_dataset("incident_wavelength", data=wavelength).attrs["units"] = "angstrom"
        det = inst.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det["sensor_material"] = "Silicon"
        det.create_dataset("sensor_thickness", data=450.0).attrs["units"] = "microns"
        det["saturation_value"] = 60000
        det["underload_value"] = 0
        if bit_depth:
            det["bit_depth_readout"] = bit_depth
        if pixel_mask is not None:
            det["pixel_mask"] = pixel_mask
        tr = det.create_group("transformations")
        tr.attrs["NX_class"] = "NXtransformations"
        det_z = f"{DET}/transformations/det_z"
        if two_theta_deg:
            _axis(tr, "two_theta", two_theta_deg, "rotation", (1, 0, 0), ".", "deg")
            _axis(tr, "det_z", distance_mm / 1000.0, "translation", (0, 0, 1), "two_theta", "m")
        else:
            _axis(tr, "det_z", distance_mm / 1000.0, "translation", (0, 0, 1), ".", "m")
        det["depends_on"] = det_z
        for i, (origin, size, offset, fast, slow) in enumerate(modules):
            m = det.create_group(f"module{i}" if len(modules) > 1 else "module")
            m.attrs["NX_class"] = "NXdetector_module"
            m["data_origin"] = np.asarray(origin, np.int32)
            m["data_size"] = np.asarray(size, np.int32)
            _axis(m, "module_offset", 0.0, "translation", (1, 0, 0), det_z, "mm", offset=offset)
            _axis(m, "fast_pixel_direction", pixel_mm, "translation", fast, "module_offset", "mm", offset=(0, 0, 0))
            _axis(m, "slow_pixel_direction", pixel_mm, "translation", slow, "module_offset", "mm", offset=(0, 0, 0))
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample["depends_on"] = "."
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        chunks = (1,) + frames.shape[1:]
        if external:
            half = (n + 1) // 2
            for k, (a, b) in enumerate(((0, half), (half, n)), start=1):
                if b <= a:
                    continue
                name = f"{base}_data_{k:06d}.h5"
                with h5py.File(name, "w") as g:
                    g.create_dataset("data", data=frames[a:b], chunks=chunks, **comp)
                data[f"data_{k:06d}"] = h5py.ExternalLink(os.path.basename(name), "/data")
        else:
            data.create_dataset("data", data=frames, chunks=chunks, **comp)
    return path


@pytest.fixture
def eiger_file(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 1000, size=(3, 40, 60)).astype(np.uint16)
    frames[2, 7, 9] = 65535  # the top value of a 16-bit readout: a flagged pixel
    # module corner at McStas (-0.25, 1.35, 0) mm from the detector's axis; fast -x, slow -y
    modules = [((0, 0), (40, 60), (-0.25, 1.35, 0.0), (-1, 0, 0), (0, -1, 0))]
    path = write_nxmx(tmp_path / "eiger_master.h5", frames, modules, bit_depth=16)
    return path, frames


def test_nexus_single_module(eiger_file):
    path, frames = eiger_file
    with open_image(path) as reader:
        assert isinstance(reader, NexusFile)
        assert reader.is_multi_frame and reader.n_frames == 3  # 2 + 1 frames in two linked files
        beam, det = reader.models(1)
        assert len(det) == 1 and det.max_hierarchy_level() == 1
        panel = det[0]
        # McStas corner = module offset + det_z = (-0.25, 1.35, 120) mm; McStas -> DIALS is
        # diag(-1, 1, -1): origin (0.25, 1.35, -120); fast (-1,0,0) -> (1,0,0); slow (0,-1,0) -> (0,-1,0)
        np.testing.assert_allclose(panel.origin, [0.25, 1.35, -120.0], atol=1e-12)
        np.testing.assert_allclose(panel.fast_axis, [1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(panel.slow_axis, [0, -1, 0], atol=1e-12)
        assert panel.pixel_size == pytest.approx((0.075, 0.075))
        assert panel.image_size == (60, 40)
        assert panel.trusted_range == (-1.0, 60000.0)  # (underload - 1, saturation), as DIALS 3.12
        assert panel.material == "Si" and panel.thickness == pytest.approx(0.45)
        # parallax as dxtbx: dials.import (DIALS 3.12) of such a file gives mu = 3.96631 /mm at 0.98 A
        assert panel.mu == pytest.approx(3.96631, rel=1e-3)
        assert panel.px_mm_strategy == {"type": "ParallaxCorrectedPxMmStrategy"}
        assert panel.name == f"{DET}/module"
        assert beam.wavelength == pytest.approx(0.98)
        np.testing.assert_allclose(beam.direction, [0, 0, 1])
        for i in range(3):
            (data,) = reader.read_frame(i)
            expected = frames[i].astype(np.int32)
            if i == 2:
                expected[7, 9] = -1  # flagged as dxtbx does
            np.testing.assert_array_equal(data, expected)
        assert reader.image_ref(2).frame == 2
        assert reader.trusted_mask(0) is None


def test_nexus_frame_out_of_range(eiger_file):
    path, _ = eiger_file
    with open_image(path) as reader:
        with pytest.raises(ImageFormatError) as info:
            reader.shot(3)
    assert info.value.frame == 3
    assert str(path) in str(info.value) and "frame 3" in str(info.value)


def test_nexus_import_experiments(eiger_file):
    path, _ = eiger_file
    experiments, failures = import_experiments([str(path)])
    assert not failures
    assert [e.image.frame for e in experiments] == [0, 1, 2]
    assert len(experiments.detectors()) == 1  # shared while the geometry does not change


def test_nexus_missing_data_file(eiger_file):
    path, _ = eiger_file
    os.remove(str(path).replace("_master.h5", "_master_data_000002.h5"))
    with pytest.raises(ImageFormatError) as info:
        open_image(path)
    assert str(path) in str(info.value) and "data_000002" in str(info.value)


def test_nexus_truncated_file(eiger_file, tmp_path):
    path, _ = eiger_file
    raw = open(path, "rb").read()
    cut = tmp_path / "cut_master.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageFormatError) as info:
        with open_image(cut) as reader:
            reader.shot(0)
    assert str(cut) in str(info.value)


def test_nexus_truncated_data_file(eiger_file):
    """A linked data file cut short: the error names the master file and the data file."""
    path, _ = eiger_file
    data_file = str(path).replace("_master.h5", "_master_data_000001.h5")
    raw = open(data_file, "rb").read()
    with open(data_file, "wb") as fh:
        fh.write(raw[: len(raw) - 100])
    with pytest.raises(ImageFormatError) as info:
        with open_image(path) as reader:
            reader.shot(0)
    assert str(path) in str(info.value) and "data_000001" in str(info.value)


def test_nexus_two_modules_on_a_two_theta_arm(tmp_path):
    """Jungfrau-like: two modules (two panels) in one data block, detector rotated 10° about x."""
    rng = np.random.default_rng(1)
    frames = rng.integers(-5, 3000, size=(2, 84, 60)).astype(np.int32)
    modules = [
        ((0, 0), (40, 60), (2.25, 3.0, 0.0), (-1, 0, 0), (0, -1, 0)),
        ((44, 0), (40, 60), (2.25, -0.3, 0.0), (-1, 0, 0), (0, -1, 0)),
    ]
    path = write_nxmx(tmp_path / "jf.nxs", frames, modules, external=False, two_theta_deg=10.0,
                      wavelength=np.array([1.0, 1.1]))
    with open_image(path) as reader:
        assert reader.n_frames == 2
        beam0, det = reader.models(0)
        beam1, _ = reader.models(1)
        assert beam0.wavelength == pytest.approx(1.0) and beam1.wavelength == pytest.approx(1.1)
        assert len(det) == 2
        # hierarchy as dxtbx builds it: root > two_theta > det_z > module_offset > panel
        names = [g.name for g in det.root.groups()]
        assert names == ["", f"{DET}/transformations/two_theta", f"{DET}/transformations/det_z",
                         f"{DET}/module0/module_offset", f"{DET}/module1/module_offset"]
        # By hand, McStas: R = rotation of 10° about x, R (x, y, z) = (x, y c - z s, y s + z c).
        # Module 0 corner = R ((0, 0, 120) + (2.25, 3, 0)) = (2.25, 3c - 120s, 3s + 120c);
        # DIALS = (-x, y, -z).  Slow (0, -1, 0) -> R: (0, -c, -s) -> DIALS (0, -c, s).
        c, s = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
        for panel, y0 in zip(det, (3.0, -0.3)):
            np.testing.assert_allclose(panel.origin, [-2.25, y0 * c - 120 * s, -(y0 * s + 120 * c)], atol=1e-9)
            np.testing.assert_allclose(panel.fast_axis, [1, 0, 0], atol=1e-12)
            np.testing.assert_allclose(panel.slow_axis, [0, -c, s], atol=1e-12)
        data = reader.read_frame(1)
        np.testing.assert_array_equal(data[0], frames[1, 0:40])
        np.testing.assert_array_equal(data[1], frames[1, 44:84])
        # the .expt round trip keeps the global frames
        again = type(det).from_dict(det.to_dict())
        for p, q in zip(det, again):
            np.testing.assert_allclose(p.origin, q.origin, atol=1e-9)


def test_nexus_per_frame_detector_distance(tmp_path):
    """A transformation with one value per frame moves the detector frame by frame."""
    frames = np.zeros((3, 20, 30), dtype=np.uint16)
    path = write_nxmx(tmp_path / "dz.h5", frames, [((0, 0), (20, 30), (0, 0, 0), (-1, 0, 0), (0, -1, 0))],
                      external=False, distance_mm=np.array([100.0, 110.0, 120.0]))
    with open_image(path) as reader:
        zs = [reader.models(i)[1][0].origin[2] for i in range(3)]
    np.testing.assert_allclose(zs, [-100.0, -110.0, -120.0], atol=1e-12)
    experiments, _ = import_experiments([str(path)])
    assert len(experiments.detectors()) == 3


def test_nexus_pixel_mask(tmp_path):
    frames = np.ones((1, 20, 30), dtype=np.uint16)
    mask = np.zeros((20, 30), dtype=np.uint32)
    mask[3, 4] = 1
    mask[10:, 29] = 2
    path = write_nxmx(tmp_path / "mask.h5", frames, [((0, 0), (20, 30), (0, 0, 0), (-1, 0, 0), (0, -1, 0))],
                      external=False, pixel_mask=mask)
    with open_image(path) as reader:
        (good,) = reader.trusted_mask(0)
    assert good.shape == (20, 30) and (~good).sum() == 11 and not good[3, 4]


# =============================================================================================
# CXI
# =============================================================================================
def write_cxi(path, frames, *, energy_ev=None, encoder_mm=None, mask=None, data_path="/entry_1/data_1/data"):
    """A small CXI file: stacked frames (n, ss, fs), optional per-frame LCLS values and mask."""
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 140
        f.create_dataset(data_path, data=frames, chunks=(1,) + frames.shape[1:], compression="gzip")
        if energy_ev is not None:
            f["/LCLS/photon_energy_eV"] = np.asarray(energy_ev, dtype=float)
        if encoder_mm is not None:
            f["/LCLS/detector_1/EncoderValue"] = np.asarray(encoder_mm, dtype=float)
        if mask is not None:
            f["/entry_1/data_1/mask"] = mask
    return path


@pytest.mark.slow
def test_cxi_cspad(shared_data, tmp_path):
    """CrystFEL's CSPAD-in-CXI layout: 64 ASICs cut from (n, 1480, 1552) frames, per-frame values."""
    geom_path = shared_data / "crystfel" / "cspad-cxiformat.geom"
    reference = load_reference_geometry(geom_path)
    geom = read_geom(geom_path)
    rng = np.random.default_rng(2)
    frames = rng.integers(-100, 3000, size=(3, 1480, 1552)).astype(np.float32)
    mask = np.zeros((3, 1480, 1552), dtype=np.uint16)
    mask[1, 5, 7] = 4  # panel q0a0 (fs 0..193, ss 0..184), frame 1 only
    path = write_cxi(tmp_path / "cspad.cxi", frames, energy_ev=[9000.0, 9100.0, 9200.0],
                     encoder_mm=[-500.0, -490.0, -480.0], mask=mask)
    with open_image(path, reference_geometry=reference) as reader:
        assert isinstance(reader, CXIFile) and reader.n_frames == 3 and reader.is_multi_frame
        shot = reader.shot(1)
        assert len(shot.data) == 64
        for slab, arr in zip(geom.slabs, shot.data):
            np.testing.assert_array_equal(arr, frames[1, slab.min_ss : slab.max_ss + 1, slab.min_fs : slab.max_fs + 1])
        # photon energy from /LCLS/photon_energy_eV, per frame
        assert shot.beam.wavelength == pytest.approx(HC_EV_ANGSTROM / 9100.0, rel=1e-12)
        # clen from /LCLS/detector_1/EncoderValue (mm) + coffset 0.573224 m: z = -(573.224 - 490) mm
        for p, q in zip(shot.detector, reference):
            np.testing.assert_allclose(p.origin[:2], q.origin[:2], atol=1e-9)
            assert p.origin[2] == pytest.approx(q.origin[2] + 490.0, abs=1e-9)
        assert shot.detector[0].origin[2] == pytest.approx(-83.224, abs=1e-9)
        # adu_per_eV = 0.00338 -> gain 0.00338 * 9100 ADU per photon at this frame
        assert shot.detector[0].gain == pytest.approx(0.00338 * 9100.0)
        _, det2 = reader.models(2)
        assert det2[0].origin[2] == pytest.approx(-93.224, abs=1e-9)
        good = reader.trusted_mask(1)
        assert sum(int((~g).sum()) for g in good) == 1 and not good[0][5, 7]
        assert all(g.all() for g in reader.trusted_mask(0))


SMALL_GEOM = """\
photon_energy = 8000 eV
clen = 0.08 m
res = 10000
dim0 = %
dim1 = ss
dim2 = fs
data = /entry_1/data_1/data
mask = /entry_1/data_1/mask
mask_good = 0x0
mask_bad = 0x1

a/min_fs = 0
a/max_fs = 29
a/min_ss = 0
a/max_ss = 9
a/corner_x = -30
a/corner_y = 5
a/fs = x
a/ss = y

b/min_fs = 0
b/max_fs = 29
b/min_ss = 10
b/max_ss = 19
b/corner_x = -30
b/corner_y = -15
b/fs = -x
b/ss = -y
"""


@pytest.fixture
def small_cxi(tmp_path):
    geom = tmp_path / "small.geom"
    geom.write_text(SMALL_GEOM)
    frames = np.arange(4 * 20 * 30, dtype=np.int32).reshape(4, 20, 30)
    mask = np.zeros((4, 20, 30), dtype=np.uint8)
    mask[:, 12, 3] = 1
    path = write_cxi(tmp_path / "small.cxi", frames, mask=mask)
    return path, geom, frames


def test_cxi_small_geom(small_cxi):
    path, geom, frames = small_cxi
    reference = load_reference_geometry(geom)
    with open_image(path, reference_geometry=reference) as reader:
        assert reader.n_frames == 4
        shot = reader.shot(3)
        np.testing.assert_array_equal(shot.data[0], frames[3, 0:10])
        np.testing.assert_array_equal(shot.data[1], frames[3, 10:20])
        assert shot.beam.wavelength == pytest.approx(HC_EV_ANGSTROM / 8000.0)
        # panel b: corner (-30, -15) px * 0.1 mm at z = 80 mm -> DIALS (3, -1.5, -80); fs -x -> +x
        np.testing.assert_allclose(shot.detector[1].origin, [3.0, -1.5, -80.0], atol=1e-12)
        np.testing.assert_allclose(shot.detector[1].fast_axis, [1, 0, 0], atol=1e-12)
        a_mask, b_mask = reader.trusted_mask(0)
        assert a_mask.all() and (~b_mask).sum() == 1 and not b_mask[2, 3]


def test_cxi_needs_reference_geometry(small_cxi):
    path, _, _ = small_cxi
    with pytest.raises(ImageFormatError, match="reference_geometry"):
        open_image(path)


def test_cxi_no_photon_energy(small_cxi, tmp_path):
    path, _, _ = small_cxi
    geom = tmp_path / "noenergy.geom"
    geom.write_text(SMALL_GEOM.replace("photon_energy = 8000 eV\n", ""))
    reference = load_reference_geometry(geom)
    with open_image(path, reference_geometry=reference) as reader:
        (a, b) = reader.read_frame(0)  # the pixels still read
        with pytest.raises(ImageFormatError) as info:
            reader.models(0)
    assert str(path) in str(info.value) and "photon energy" in str(info.value)
    experiments, failures = import_experiments([str(path)], reference)
    assert len(experiments) == 0 and len(failures) == 4 and "photon energy" in failures[0].reason


def test_cxi_energy_location_missing_in_file(small_cxi, tmp_path):
    path, _, _ = small_cxi
    geom = tmp_path / "loc.geom"
    geom.write_text(SMALL_GEOM.replace("photon_energy = 8000 eV", "photon_energy = /LCLS/photon_energy_eV"))
    with open_image(path, reference_geometry=load_reference_geometry(geom)) as reader:
        with pytest.raises(ImageFormatError, match="/LCLS/photon_energy_eV"):
            reader.models(0)


def test_cxi_with_expt_reference(small_cxi, tmp_path):
    """A reference .expt carries no CrystFEL layout: panels stack along ss in panel order."""
    path, geom, frames = small_cxi
    detector = load_reference_geometry(geom)
    plain = type(detector).flat([replace(p, extra={}, raw_image_offset=(0, 0)) for p in detector])
    expt = tmp_path / "ref.expt"
    beam = read_geom(geom).beam
    ExperimentList([Experiment(beam=beam, detector=plain)]).as_file(expt)
    reference = load_reference_geometry(expt)
    with open_image(path, reference_geometry=reference) as reader:
        data = reader.read_frame(2)
        np.testing.assert_array_equal(data[0], frames[2, 0:10])
        np.testing.assert_array_equal(data[1], frames[2, 10:20])
        with pytest.raises(ImageFormatError, match="photon energy"):
            reader.models(2)  # neither the .expt detector nor the file gives one


def test_cxi_frame_out_of_range_and_truncated(small_cxi, tmp_path):
    path, geom, _ = small_cxi
    reference = load_reference_geometry(geom)
    with open_image(path, reference_geometry=reference) as reader:
        with pytest.raises(ImageFormatError) as info:
            reader.shot(4)
    assert info.value.frame == 4 and str(path) in str(info.value)
    raw = open(path, "rb").read()
    cut = tmp_path / "cut.cxi"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageFormatError) as info:
        with open_image(cut, reference_geometry=reference) as reader:
            reader.shot(0)
    assert str(cut) in str(info.value)


def test_cxi_layout_outside_the_data(small_cxi, tmp_path):
    path, _, _ = small_cxi
    geom = tmp_path / "big.geom"
    geom.write_text(SMALL_GEOM.replace("b/max_ss = 19", "b/max_ss = 29").replace("b/min_ss = 10", "b/min_ss = 20"))
    with pytest.raises(ImageFormatError, match=r"small\.cxi.*ss 20\.\.29"):
        open_image(path, reference_geometry=load_reference_geometry(geom))
