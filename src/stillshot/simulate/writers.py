"""Writers of simulated runs: miniCBF, CXI + CrystFEL .geom, NeXus NXmx, truth.

* miniCBF (single-panel layouts only): one file per shot with a Pilatus
  header (``_array_data.header_convention "PILATUS_1.2"``) as dxtbx's
  ``FormatCBFMiniPilatus`` reads it, and ``x-CBF_BYTE_OFFSET`` compressed
  int32 pixels.  The header has no ``Silicon sensor, thickness`` line because the
  simulation has no parallax: dxtbx then uses its simple (uncorrected)
  pixel-to-millimetre mapping, as the simulator does.
* CXI: one HDF5 file with ``/entry_1/data_1/data`` (N, ss, fs), panels in the
  layout of :func:`stillshot.io.crystfel_geom.panel_slabs`, the per-shot
  photon energy in ``/LCLS/photon_energy_eV`` (eV) and
  ``/entry_1/instrument_1/source_1/energy`` (J), and a CrystFEL ``.geom``
  whose ``photon_energy`` points at ``/LCLS/photon_energy_eV``.
* NeXus NXmx: one HDF5 file with ``/entry/data/data`` (N, ss, fs) in the same
  layout, one ``NXdetector_module`` per panel (McStas frame: DIALS lab frame
  turned 180° about y), per-shot ``incident_wavelength`` (Å).
* truth.json (per shot: wavelength, blank flag, lattices with A, U, cell;
  reflections with hkl, panel, true centroid, full and partial photons),
  true.expt / nominal.expt geometries, and the true intensities as an MTZ.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from stillshot.io.crystfel_geom import CXI_DATA_PATH, data_shape, panel_slabs, write_geom
from stillshot.models import Detector, ExperimentList, ImageRef
from stillshot.simulate._kernels import byte_offset_encode

__all__ = [
    "CBF_HEADER_TEMPLATE",
    "CXIWriter",
    "NexusWriter",
    "cbf_bytes",
    "stack_panels",
    "write_cbf",
    "write_truth",
]

HC_EV_ANGSTROM = 12398.419843320026
_EV_TO_J = 1.602176634e-19
MCSTAS_FROM_DIALS = np.diag([-1.0, 1.0, -1.0])

CBF_HEADER_TEMPLATE = """###CBF: VERSION 1.5, CBFlib v0.7.8 - PILATUS detectors

data_{name}

_array_data.header_convention "PILATUS_1.2"
_array_data.header_contents
;
# Detector: {detector_name}, S/N 60-9999
# {timestamp}
# Pixel_size {px_um:g}e-6 m x {py_um:g}e-6 m
# Exposure_time 0.0100000 s
# Exposure_period 0.0100000 s
# Tau = 0 s
# Count_cutoff {cutoff:d} counts
# Threshold_setting: {threshold:.0f} eV
# Gain_setting: autog (vrf = 1.000)
# N_excluded_pixels = 0
# Excluded_pixels: (nil)
# Flat_field: (nil)
# Trim_file: (nil)
# Image_path: /stillshot/simulated/
# Wavelength {wavelength:.8f} A
# Detector_distance {distance_m:.9f} m
# Beam_xy ({beam_x:.6f}, {beam_y:.6f}) pixels
# Flux 0.000000
# Filter_transmission 1.0000
# Start_angle 0.0000 deg.
# Angle_increment 0.0000 deg.
# Detector_2theta 0.0000 deg.
# Polarization {polarization:.3f}
# Alpha 0.0000 deg.
# Kappa 0.0000 deg.
# Phi 0.0000 deg.
# Phi_increment 0.0000 deg.
# Chi 0.0000 deg.
# Chi_increment 0.0000 deg.
# Oscillation_axis X.CW
# N_oscillations 1
;

_array_data.data
;
--CIF-BINARY-FORMAT-SECTION--
Content-Type: application/octet-stream;
     conversions="x-CBF_BYTE_OFFSET"
Content-Transfer-Encoding: BINARY
X-Binary-Size: {size:d}
X-Binary-ID: 1
X-Binary-Element-Type: "signed 32-bit integer"
X-Binary-Element-Byte-Order: LITTLE_ENDIAN
Content-MD5: {md5}
X-Binary-Number-of-Elements: {n:d}
X-Binary-Size-Fastest-Dimension: {nx:d}
X-Binary-Size-Second-Dimension: {ny:d}
X-Binary-Size-Padding: 4095

"""

_CBF_TAIL = b"\r\n--CIF-BINARY-FORMAT-SECTION----\r\n;\r\n\r\n"


def pilatus_header_geometry(detector: Detector) -> dict:
    """Beam centre (px), distance (mm) and pixel size (mm) of a single-panel detector.

    The panel must follow the Pilatus miniCBF convention dxtbx assumes: fast
    axis +x, slow axis -y (DIALS lab frame), normal to the beam.

    Raises
    ------
    ValueError
        For multi-panel detectors or panels not in that orientation.
    """
    if len(detector) != 1:
        raise ValueError(
            f"miniCBF holds one panel; this detector has {len(detector)} (use format=cxi or format=nexus)"
        )
    p = detector[0]
    if not (np.allclose(p.fast_axis, (1, 0, 0), atol=1e-9) and np.allclose(p.slow_axis, (0, -1, 0), atol=1e-9)):
        raise ValueError("miniCBF needs a panel with fast axis +x and slow axis -y (the Pilatus convention)")
    px, py = (float(v) for v in p.pixel_size)
    return {
        "beam_x": -p.origin[0] / px,
        "beam_y": p.origin[1] / py,
        "distance_mm": -p.origin[2],
        "pixel_size": (px, py),
    }


def cbf_bytes(data: np.ndarray, detector: Detector, wavelength: float, *, name: str = "image",
              timestamp: str = "2026-01-01T00:00:00.000", detector_name: str | None = None,
              polarization: float = 0.99) -> bytes:
    """A Pilatus miniCBF file's bytes.

    Parameters
    ----------
    data : ndarray, shape (n_slow, n_fast)
        Pixel values (counts), converted to int32.
    detector : Detector
        The single-panel (nominal) detector whose geometry goes in the header.
    wavelength : float
        Å.
    name : str
        CIF data block name.
    timestamp : str
        Header time stamp.
    detector_name : str, optional
        Default: the detector's root name or ``PILATUS 6M``-style from its size.
    polarization : float
        Header polarization fraction.

    Returns
    -------
    bytes
    """
    geo = pilatus_header_geometry(detector)
    p = detector[0]
    arr = np.ascontiguousarray(data, dtype=np.int32)
    if arr.shape != p.shape:
        raise ValueError(f"data shape {arr.shape} does not match the panel {p.shape}")
    buf = np.empty(arr.size * 7 + 16, dtype=np.uint8)
    if arr.size and (int(arr.max()) - int(arr.min())) > 2147483647:
        buf = np.empty(arr.size * 15 + 16, dtype=np.uint8)
    n = byte_offset_encode(arr.reshape(-1), buf)
    payload = buf[:n].tobytes()
    md5 = base64.b64encode(hashlib.md5(payload).digest()).decode("ascii")
    pilatus_px = abs(geo["pixel_size"][0] - 0.172) < 1e-9
    name_ = detector_name or (detector.root.name if "PILATUS" in detector.root.name.upper() else
                              ("PILATUS3 6M" if pilatus_px else "PILATUS (simulated)"))
    header = CBF_HEADER_TEMPLATE.format(
        name=name,
        detector_name=name_,
        timestamp=timestamp,
        px_um=round(geo["pixel_size"][0] * 1000.0, 6),
        py_um=round(geo["pixel_size"][1] * 1000.0, 6),
        cutoff=int(round(p.trusted_range[1])),
        threshold=0.5 * HC_EV_ANGSTROM / wavelength,
        wavelength=wavelength,
        distance_m=geo["distance_mm"] / 1000.0,
        beam_x=geo["beam_x"],
        beam_y=geo["beam_y"],
        polarization=polarization,
        size=len(payload),
        md5=md5,
        n=arr.size,
        nx=arr.shape[1],
        ny=arr.shape[0],
    )
    header = header.replace("\n", "\r\n")
    return header.encode("ascii") + b"\x0c\x1a\x04\xd5" + payload + b"\x00" * 4095 + _CBF_TAIL


def write_cbf(path: str | os.PathLike, data: np.ndarray, detector: Detector, wavelength: float, **kw) -> Path:
    """Write one miniCBF file (see :func:`cbf_bytes`); returns the path."""
    path = Path(path)
    name = path.name.split(".")[0]
    path.write_bytes(cbf_bytes(data, detector, wavelength, name=name, **kw))
    return path


def stack_panels(data: Sequence[np.ndarray], detector: Detector, fill: int = 0) -> np.ndarray:
    """Per-panel arrays placed into one 2-D frame by the detector's data layout.

    Uses :func:`stillshot.io.crystfel_geom.panel_slabs` (each panel's
    ``min_fs``/``min_ss`` in the frame); pixels no panel covers get ``fill``.
    """
    slabs = panel_slabs(detector)
    shape = data_shape(slabs)
    out = np.full(shape, fill, dtype=np.asarray(data[0]).dtype)
    for arr, s in zip(data, slabs):
        out[s.min_ss : s.max_ss + 1, s.min_fs : s.max_fs + 1] = arr
    return out


class CXIWriter:
    """A CXI file of shots (append frame by frame) and its CrystFEL .geom.

    Parameters
    ----------
    path : str or PathLike
        The ``.cxi`` file.
    detector : Detector
        Layout (panel order and sizes) of the frames.
    n_frames : int
        Number of frames the file will hold.
    geom_detector : Detector, optional
        The geometry written to the ``.geom`` (default ``detector``); pass
        the NOMINAL geometry when the shots were rendered with a perturbed one.
    geom_path : str or PathLike, optional
        Default: the CXI path with ``.geom``.
    """

    def __init__(self, path, detector: Detector, n_frames: int, *, geom_detector: Detector | None = None,
                 geom_path=None, compression: str | None = "gzip"):
        import h5py

        self.path = Path(path)
        self.detector = detector
        slabs = panel_slabs(detector, CXI_DATA_PATH, ("%", "ss", "fs"))
        self.shape = data_shape(slabs)
        self.file = h5py.File(self.path, "w")
        self.file.attrs["cxi_version"] = 150
        chunks = (1,) + self.shape
        self.data = self.file.create_dataset(
            CXI_DATA_PATH, shape=(n_frames,) + self.shape, dtype=np.int32, chunks=chunks,
            compression=compression, compression_opts=1 if compression == "gzip" else None, fillvalue=0,
        )
        self.energy_ev = self.file.create_dataset("/LCLS/photon_energy_eV", shape=(n_frames,), dtype=np.float64)
        self.energy_j = self.file.create_dataset("/entry_1/instrument_1/source_1/energy", shape=(n_frames,),
                                                 dtype=np.float64)
        self.energy_j.attrs["units"] = "J"
        dist = self.file.create_dataset("/entry_1/instrument_1/detector_1/distance", data=detector.distance() / 1000.0)
        dist.attrs["units"] = "m"
        self.file["/entry_1/instrument_1/detector_1/data"] = self.file[CXI_DATA_PATH]
        self.geom_path = Path(geom_path) if geom_path else self.path.with_suffix(".geom")
        write_geom(geom_detector or detector, self.geom_path, photon_energy="/LCLS/photon_energy_eV",
                   clen=None, slabs=slabs, header="simulated by stillshot simulate")

    def write(self, index: int, data: Sequence[np.ndarray], wavelength: float) -> None:
        """Store frame ``index`` (per-panel arrays) and its wavelength (Å)."""
        self.data[index] = stack_panels(data, self.detector)
        ev = HC_EV_ANGSTROM / wavelength
        self.energy_ev[index] = ev
        self.energy_j[index] = ev * _EV_TO_J

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _set_nx(group, nx_class: str) -> None:
    group.attrs["NX_class"] = np.bytes_(nx_class)


def _transformation(group, name, value, *, ttype, vector, depends_on, offset=None, units="mm"):
    ds = group.create_dataset(name, data=np.float64(value))
    ds.attrs["transformation_type"] = np.bytes_(ttype)
    ds.attrs["vector"] = np.asarray(vector, dtype=np.float64)
    ds.attrs["depends_on"] = np.bytes_(depends_on)
    ds.attrs["units"] = np.bytes_(units)
    if offset is not None:
        ds.attrs["offset"] = np.asarray(offset, dtype=np.float64)
        ds.attrs["offset_units"] = np.bytes_(units)
    return ds


def _h5_name(name: str, used: set) -> str:
    """An HDF5-safe, unique dataset name."""
    base = "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "group"
    out, k = base, 1
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def _group_transformation(trans, name: str, local, depends_on: str):
    """A group's local frame (DIALS, relative to its parent) as one NXmx rotation with offset.

    The McStas matrix is ``[[R, t], [0, 1]]`` with ``R = [-M·f, M·s, (-M·f)×(M·s)]``
    (columns) and ``t = M·o`` (``M`` = diag(-1, 1, -1)), so that dxtbx's reading
    (group fast ``M·R·(-x̂)``, slow ``M·R·ŷ``, origin ``M·t``) gives back f, s, o.
    """
    from scipy.spatial.transform import Rotation

    m = MCSTAS_FROM_DIALS
    x = -(m @ local.fast)
    y = m @ local.slow
    rot = np.column_stack([x, y, np.cross(x, y)])
    rotvec = Rotation.from_matrix(rot).as_rotvec()
    angle = float(np.linalg.norm(rotvec))
    axis = rotvec / angle if angle > 1e-15 else np.array([0.0, 0.0, 1.0])
    ds = _transformation(trans, name, np.degrees(angle), ttype="rotation", vector=axis, depends_on=depends_on,
                         offset=m @ local.origin, units="deg")
    ds.attrs["offset_units"] = np.bytes_("mm")
    ds.attrs["order"] = len(trans)
    return ds


class NexusWriter:
    """A NeXus NXmx file of shots (append frame by frame).

    The beam travels along +z of the McStas frame (NeXus).  Each group of the
    detector hierarchy (root first) is one rotation-with-offset
    transformation in ``detector/transformations`` depending on its parent's;
    each panel is one ``NXdetector_module`` with ``data_origin``/``data_size``
    in the stacked frame and ``module_offset`` → ``fast_pixel_direction`` /
    ``slow_pixel_direction`` transformations giving its frame relative to its
    group, so readers rebuild the same hierarchy.  Per-shot wavelengths are stored in
    ``/entry/instrument/beam/incident_wavelength`` (Å, one per frame).

    Parameters
    ----------
    path : str or PathLike
    detector : Detector
        The geometry written (the NOMINAL one for perturbed runs) and layout.
    n_frames : int
    """

    def __init__(self, path, detector: Detector, n_frames: int, *, compression: str | None = "gzip"):
        import h5py

        self.path = Path(path)
        self.detector = detector
        slabs = panel_slabs(detector)
        self.shape = data_shape(slabs)
        f = self.file = h5py.File(self.path, "w")
        f.attrs["default"] = np.bytes_("entry")
        entry = f.create_group("entry")
        _set_nx(entry, "NXentry")
        entry.attrs["default"] = np.bytes_("data")
        entry.create_dataset("definition", data=np.bytes_("NXmx"))
        entry.create_dataset("start_time", data=np.bytes_("2026-01-01T00:00:00Z"))
        entry.create_dataset("end_time", data=np.bytes_("2026-01-01T00:00:01Z"))
        entry.create_dataset("end_time_estimated", data=np.bytes_("2026-01-01T00:00:01Z"))
        data_g = entry.create_group("data")
        _set_nx(data_g, "NXdata")
        data_g.attrs["signal"] = np.bytes_("data")
        self.data = data_g.create_dataset(
            "data", shape=(n_frames,) + self.shape, dtype=np.int32, chunks=(1,) + self.shape,
            compression=compression, compression_opts=1 if compression == "gzip" else None, fillvalue=-1,
        )
        sample = entry.create_group("sample")
        _set_nx(sample, "NXsample")
        sample.create_dataset("depends_on", data=np.bytes_("."))
        source = entry.create_group("source")
        _set_nx(source, "NXsource")
        source.create_dataset("name", data=np.bytes_("stillshot simulated XFEL"))
        instrument = entry.create_group("instrument")
        _set_nx(instrument, "NXinstrument")
        instrument.create_dataset("name", data=np.bytes_("stillshot simulator"))
        beam = instrument.create_group("beam")
        _set_nx(beam, "NXbeam")
        self.wavelength = beam.create_dataset("incident_wavelength", shape=(n_frames,), dtype=np.float64)
        self.wavelength.attrs["units"] = np.bytes_("angstrom")
        beam.create_dataset("total_flux", data=np.float64(0.0)).attrs["units"] = np.bytes_("Hz")
        det = instrument.create_group("detector")
        _set_nx(det, "NXdetector")
        det.create_dataset("description", data=np.bytes_(detector.root.name or "simulated detector"))
        det.create_dataset("sensor_material", data=np.bytes_(detector[0].material or "Si"))
        # The simulation has no parallax; NXmx readers (dxtbx) always apply a parallax
        # correction and need a positive thickness: 1 nm makes that correction vanish
        # (< 1e-6 mm).
        det.create_dataset("sensor_thickness", data=np.float64(1e-6)).attrs["units"] = np.bytes_("mm")
        lo, hi = detector[0].trusted_range
        det.create_dataset("saturation_value", data=np.int64(hi))
        # dxtbx's trusted range is (underload_value - 1, saturation_value)
        det.create_dataset("underload_value", data=np.int64(np.floor(lo)) + 1)
        det.create_dataset("gain", data=np.float64(detector[0].gain))
        det.create_dataset("type", data=np.bytes_("PIXEL"))
        det.create_dataset("distance", data=np.float64(detector.distance())).attrs["units"] = np.bytes_("mm")
        trans = det.create_group("transformations")
        _set_nx(trans, "NXtransformations")
        # one rotation-with-offset per group of the hierarchy (root first), so that readers
        # (dxtbx, stillshot) rebuild the same groups; see _group_transformation
        parent_of: dict[int, str] = {}
        used: set = set()

        def walk(group, parent_path: str) -> None:
            name = _h5_name(group.name or "detector", used)
            ds = _group_transformation(trans, name, group.local_frame, parent_path)
            for child in group.children:
                if hasattr(child, "children"):
                    walk(child, ds.name)
                else:
                    parent_of[int(child)] = ds.name

        walk(detector.root, ".")
        root_name = trans[sorted(trans.keys(), key=lambda k: trans[k].attrs.get("order", 0))[0]].name
        det.create_dataset("depends_on", data=np.bytes_(root_name))
        for i, (p, s) in enumerate(zip(detector, slabs)):
            # zero-padded so that readers listing the groups alphabetically keep the panel order
            width = len(str(len(detector) - 1))
            mod = det.create_group(f"module_{i:0{width}d}" if len(detector) > 1 else "module")
            _set_nx(mod, "NXdetector_module")
            mod.create_dataset("name", data=np.bytes_(p.name))
            # data_origin/data_size in (ss, fs) order of a frame of the data array, per NXmx
            mod.create_dataset("data_origin", data=np.array([s.min_ss, s.min_fs], dtype=np.int64))
            mod.create_dataset("data_size", data=np.array([p.n_slow, p.n_fast], dtype=np.int64))
            mod.create_dataset("data_stride", data=np.array([1, 1], dtype=np.int64))
            # the panel's frame relative to its group: module_offset (translation), then the
            # pixel directions in the group's axes
            origin = MCSTAS_FROM_DIALS @ p.local_frame.origin
            fast = MCSTAS_FROM_DIALS @ p.local_frame.fast
            slow = MCSTAS_FROM_DIALS @ p.local_frame.slow
            norm = float(np.linalg.norm(origin))
            _transformation(mod, "module_offset", norm, ttype="translation",
                            vector=origin / norm if norm > 0 else (0.0, 0.0, 1.0), depends_on=parent_of[i])
            _transformation(mod, "fast_pixel_direction", p.pixel_size[0], ttype="translation", vector=fast,
                            depends_on=mod["module_offset"].name)
            _transformation(mod, "slow_pixel_direction", p.pixel_size[1], ttype="translation", vector=slow,
                            depends_on=mod["module_offset"].name)
        det.create_dataset("x_pixel_size", data=np.float64(detector[0].pixel_size[0])).attrs["units"] = np.bytes_("mm")
        det.create_dataset("y_pixel_size", data=np.float64(detector[0].pixel_size[1])).attrs["units"] = np.bytes_("mm")
        self.file.flush()

    def write(self, index: int, data: Sequence[np.ndarray], wavelength: float) -> None:
        """Store frame ``index`` (per-panel arrays) and its wavelength (Å)."""
        self.data[index] = stack_panels(data, self.detector, fill=-1)
        self.wavelength[index] = wavelength

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_truth(path: str | os.PathLike, truths: Sequence, *, settings: dict, images: Sequence[ImageRef],
                structure: dict | None = None) -> Path:
    """Write truth.json for a run.

    Parameters
    ----------
    path : str or PathLike
    truths : sequence of ShotTruth
    settings : dict
        The settings used (JSON-ready).
    images : sequence of ImageRef
        File (and frame) of each shot.
    structure : dict, optional
        Description of the true-intensity model.

    Returns
    -------
    Path
    """
    shots = []
    for t, img in zip(truths, images):
        d = t.to_dict()
        d["file"] = img.path
        d["frame"] = img.frame
        shots.append(d)
    doc = {
        "units": {
            "A": "1/Å (A = U·B, r = A·h, DIALS convention)",
            "wavelength": "Å",
            "xy_px": "px (pixel-edge convention: the centre of pixel i is i + 0.5)",
            "intensity_full": "photons for partiality 1 (× polarization)",
            "intensity_partial": "expected photons in the spot",
            "intensity_model": "true intensity (arbitrary units, as the MTZ column I)",
        },
        "settings": settings,
        "structure": structure or {},
        "shots": shots,
    }
    path = Path(path)
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return path


def write_experiments(path: str | os.PathLike, detector: Detector, truths: Sequence, images: Sequence[ImageRef]) -> Path:
    """The true models as a DIALS .expt: one experiment per lattice (blanks have none)."""
    el = ExperimentList()
    for t, img in zip(truths, images):
        el.extend(t.experiments(detector, img))
    path = Path(path)
    el.as_file(path)
    return path
