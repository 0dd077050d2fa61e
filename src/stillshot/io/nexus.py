"""HDF5 NeXus/NXmx files (Eiger, Jungfrau… master files): many frames, one or more modules.

Layout
------
The first ``NXentry`` (preferably with ``definition = NXmx``) holds an
``NXinstrument`` with an ``NXdetector`` whose ``NXdetector_module`` groups
give each module's hyperslab of the data (``data_origin``, ``data_size``,
slow to fast, the frame dimension omitted) and its geometry.  Frames are in
the entry's ``NXdata``: its ``signal`` dataset, or ``data``, or the
``data_000001``, ``data_000002``… blocks (usually external links to data
files), concatenated along their first axis.  Compressed chunks (bitshuffle
/LZ4 etc.) are decoded by the filters ``hdf5plugin`` registers.

Geometry (as dxtbx's ``dxtbx.nexus`` builds it)
-----------------------------------------------
NeXus uses the McStas frame (z along the beam, y up, x horizontal making a
right-handed set); DIALS uses the imgCIF frame (beam along -z).  A vector is
converted with ``MCSTAS_TO_IMGCIF = diag(-1, 1, -1)``.  Each transformation
(``NXtransformations`` axis: a dataset with ``transformation_type``,
``vector``, optional ``offset``/``offset_units`` and ``depends_on``
attributes) is the 4×4 matrix::

    rotation:     [[R(value·vector), offset], [0, 1]]
    translation:  [[I, value·vector + offset], [0, 1]]

and a chain ``T1 -> T2 -> … -> Tn`` (``T1`` depends on ``T2``…) composes as
``Tn ··· T2 · T1``.  For a module, the chain starts at the ``depends_on`` of
``fast_pixel_direction`` (normally ``module_offset``); the fast/slow pixel
directions' own values are the pixel sizes and their own offsets are
ignored, as in dxtbx.

* One module: a flat detector whose panel origin is ``M · (T·0)`` and whose
  axes are ``M · R · vector`` (``R`` the product of the chain's rotations).
* Several modules: a hierarchy.  Every transformation of a module's chain,
  from the outermost in, is a group named by its HDF5 path (shared between
  modules that share it), with local frame fast ``M·R·M·x̂``, slow
  ``M·R·M·ŷ`` and origin ``M·t`` from that transformation's matrix; the
  panel sits in its innermost group with axes ``M·vector`` and origin 0.

Values of a transformation that holds one value per frame are taken per
frame (dxtbx takes the first); the wavelength likewise
(``NXbeam/incident_wavelength``, or ``incident_energy``).  The trusted range
is ``(underload_value - 1, saturation_value)`` with ±0x7FFFFFFF defaults
(DIALS 3.12).  Panels are named by the module's HDF5 path, typed
``SENSOR_PAD``, and carry the sensor material and thickness (mm).

Parallax: for silicon sensors the attenuation coefficient ``mu`` (1/mm) at
the first frame's wavelength is set with DIALS's parallax-corrected px↔mm
strategy, as dxtbx does (:func:`stillshot.io.attenuation.attenuation_mu`, Si and CdTe).
Materials without a table (GaAs) get ``mu = 0`` and the simple strategy.
"""

from __future__ import annotations

import re

import numpy as np

from stillshot.io.attenuation import attenuation_mu
from stillshot.io.base import ImageFile, ImageFormatError, register
from stillshot.models import Beam, Detector, Frame, Group, Panel

#: McStas (NeXus) lab vector -> imgCIF (DIALS) lab vector.
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])

#: h·c in eV·Å.
HC_EV_ANGSTROM = 12398.419843320026

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

#: Length units -> mm.
_LENGTH = {
    "m": 1000.0, "meter": 1000.0, "meters": 1000.0, "metre": 1000.0, "metres": 1000.0,
    "cm": 10.0, "mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "millimetre": 1.0,
    "um": 1e-3, "µm": 1e-3, "micron": 1e-3, "microns": 1e-3, "micrometer": 1e-3, "micrometre": 1e-3,
    "nm": 1e-6, "angstrom": 1e-7, "angstroms": 1e-7, "a": 1e-7, "å": 1e-7, "ang": 1e-7,
}
#: Angle units -> radians.
_ANGLE = {
    "rad": 1.0, "radian": 1.0, "radians": 1.0,
    "deg": np.pi / 180.0, "degree": np.pi / 180.0, "degrees": np.pi / 180.0,
}
#: Energy units -> eV.
_ENERGY = {"ev": 1.0, "kev": 1000.0, "j": 1.0 / 1.602176634e-19}

#: Sensor material names dxtbx accepts.
KNOWN_SENSOR_MATERIALS = {"Si": "Si", "Silicon": "Si", "CdTe": "CdTe", "GaAs": "GaAs"}


# ---------------------------------------------------------------------------------------
# HDF5 helpers (shared with the CXI reader)
# ---------------------------------------------------------------------------------------
def is_hdf5(path: str) -> bool:
    """True when the file carries the HDF5 signature (at 0 or a power-of-two user-block offset)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head == HDF5_SIGNATURE:
                return True
            for off in (512, 1024, 2048, 4096):
                fh.seek(off)
                if fh.read(8) == HDF5_SIGNATURE:
                    return True
    except OSError:
        return False
    return False


def open_hdf5(path: str):
    """Open an HDF5 file read-only, with the compression filters of ``hdf5plugin``.

    Raises
    ------
    ImageFormatError
        Naming the file when HDF5 cannot open it (truncated or corrupt).
    """
    import h5py
    import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4 and other filters)

    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ImageFormatError(path, f"cannot open the HDF5 file (truncated or corrupt?): {exc}") from None


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else ""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace")
    return str(value)


def _nx_class(obj) -> str:
    return _text(obj.attrs.get("NX_class", ""))


def _children(group, nx_class: str) -> list:
    import h5py

    out = []
    for key in group:
        try:
            child = group.get(key, getlink=False)
        except (KeyError, OSError):
            continue
        if isinstance(child, h5py.Group) and _nx_class(child) == nx_class:
            out.append(child)
    return out


def _unit_scale(table: dict, unit: str, what: str, path: str) -> float:
    u = unit.strip()
    key = u.lower() if u not in ("Å", "µm") else u
    if key in table:
        return table[key]
    raise ImageFormatError(path, f"{what}: unknown unit '{unit}'")


def _units(ds) -> str | None:
    u = ds.attrs.get("units")
    return None if u is None else _text(u)


def is_nxmx(fh) -> bool:
    """True when an open HDF5 file has an NXentry with an NXdetector_module."""
    for entry in _children(fh, "NXentry"):
        for inst in _children(entry, "NXinstrument"):
            for det in _children(inst, "NXdetector"):
                if _children(det, "NXdetector_module"):
                    return True
    return False


# ---------------------------------------------------------------------------------------
# transformations
# ---------------------------------------------------------------------------------------
def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` (rad) about unit ``axis``."""
    a = axis / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


class _Axis:
    """One NXtransformations axis, read from its dataset."""

    def __init__(self, ds, path: str):
        self.name = ds.name
        self.file_path = path
        self.type = _text(ds.attrs.get("transformation_type", "")).lower()
        vec = ds.attrs.get("vector")
        if vec is None:
            raise ImageFormatError(path, f"transformation {ds.name} has no 'vector' attribute")
        self.vector = np.asarray(vec, dtype=np.float64).reshape(3)
        values = np.atleast_1d(np.asarray(ds[()], dtype=np.float64)).reshape(-1)
        unit = _units(ds)
        scale = 1.0
        if self.type in ("rotation", "translation"):
            if unit is None:
                if values.any():
                    raise ImageFormatError(path, f"{self.type} {ds.name} has no 'units' attribute")
            else:
                table = _ANGLE if self.type == "rotation" else _LENGTH
                scale = _unit_scale(table, unit, f"transformation {ds.name}", path)
        self.values = values * scale  # rad or mm
        offset = ds.attrs.get("offset")
        self.offset = np.zeros(3)
        if offset is not None and np.any(offset):
            ou = ds.attrs.get("offset_units")
            ou = _text(ou) if ou is not None else unit
            if ou is None:
                raise ImageFormatError(path, f"transformation {ds.name} has an offset but no offset_units")
            self.offset = np.asarray(offset, dtype=np.float64).reshape(3) * _unit_scale(
                _LENGTH, ou, f"offset of {ds.name}", path
            )
        dep = _text(ds.attrs.get("depends_on", ".")).strip()
        self.depends_on = None
        if dep and dep != ".":
            try:
                target = ds.parent[dep]
            except (KeyError, ValueError):
                raise ImageFormatError(path, f"{ds.name} depends on '{dep}', which does not exist") from None
            self.depends_on = target

    @property
    def n_values(self) -> int:
        return int(self.values.size)

    def matrix(self, frame: int, n_frames: int) -> np.ndarray:
        """The 4×4 matrix (mm) at a frame (per-frame values when there is one a frame)."""
        v = self.values[frame] if self.n_values == n_frames and n_frames > 1 else (self.values[0] if self.n_values else 0.0)
        a = np.eye(4)
        if self.type == "rotation":
            a[:3, :3] = _rotation(self.vector, v)
            a[:3, 3] = self.offset
        else:
            a[:3, 3] = v * self.vector + self.offset
        return a


def _chain(start, path: str, cache: dict) -> list[_Axis]:
    """The dependency chain from ``start`` (a dataset or None) outwards."""
    out: list[_Axis] = []
    seen = set()
    ds = start
    while ds is not None:
        if ds.name in seen:
            raise ImageFormatError(path, f"the depends_on chain through {ds.name} is circular")
        seen.add(ds.name)
        axis = cache.get(ds.name)
        if axis is None:
            axis = cache[ds.name] = _Axis(ds, path)
        out.append(axis)
        ds = axis.depends_on
    return out


def _cumulative(chain: list[_Axis], frame: int, n_frames: int) -> np.ndarray:
    a = np.eye(4)
    for axis in chain:  # T1 first: A = Tn ... T2 T1
        a = axis.matrix(frame, n_frames) @ a
    return a


# ---------------------------------------------------------------------------------------
# the reader
# ---------------------------------------------------------------------------------------
class _Module:
    def __init__(self, group, path: str):
        self.path = group.name
        try:
            self.data_origin = np.atleast_1d(np.asarray(group["data_origin"][()], dtype=np.int64))
            self.data_size = np.atleast_1d(np.asarray(group["data_size"][()], dtype=np.int64))
            self.fast = group["fast_pixel_direction"]
            self.slow = group["slow_pixel_direction"]
        except KeyError as exc:
            raise ImageFormatError(path, f"detector module {group.name} lacks {exc}") from None
        if self.data_origin.shape != self.data_size.shape or self.data_size.size < 2:
            raise ImageFormatError(path, f"module {group.name}: data_origin and data_size must both have 2 or 3 values")

    def pixel_size(self, which, path: str) -> float:
        ds = self.fast if which == "fast" else self.slow
        unit = _units(ds)
        if unit is None:
            raise ImageFormatError(path, f"{ds.name} has no 'units' attribute")
        value = float(np.atleast_1d(ds[()]).reshape(-1)[0])
        return value * _unit_scale(_LENGTH, unit, ds.name, path)

    @property
    def image_size(self) -> tuple[int, int]:
        """(n_fast, n_slow) in px."""
        return int(self.data_size[-1]), int(self.data_size[-2])

    def slices(self) -> tuple:
        return tuple(slice(int(o), int(o + s)) for o, s in zip(self.data_origin, self.data_size))


class HDF5ImageFile(ImageFile):
    """Base of the HDF5 formats: opens the file, runs ``_setup``, closes on failure.

    Subclasses implement ``_setup`` (read what the format needs from ``self._fh``)
    and set ``readable_name``, used in the error for a file that fails there.
    """

    #: Name used in "not a readable ... file".
    readable_name = "HDF5"

    def __init__(self, path, reference_geometry: Detector | None = None):
        super().__init__(path, reference_geometry)
        self._fh = open_hdf5(self.path)
        try:
            self._setup()
        except ImageFormatError:
            self.close()
            raise
        except (KeyError, OSError, ValueError, TypeError, IndexError) as exc:
            self.close()
            raise ImageFormatError(self.path, f"not a readable {self.readable_name} file ({exc})") from None

    def _setup(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the HDF5 file."""
        fh = getattr(self, "_fh", None)
        if fh is not None:
            try:
                fh.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass
            self._fh = None


@register
class NexusFile(HDF5ImageFile):
    """An NXmx master file: frames addressed by index, one panel per detector module.

    Parameters
    ----------
    path : str or PathLike
        The master file (data files it links to are found relative to it).
    reference_geometry : Detector, optional
        Replaces the detector built from the file.
    """

    format_name = "NeXus/NXmx"
    readable_name = "NXmx"


    @classmethod
    def understand(cls, path: str) -> bool:
        """True for HDF5 files with an NXentry/NXinstrument/NXdetector/NXdetector_module.

        An HDF5 file that HDF5 cannot open (truncated) is accepted too, so that
        opening it reports why.
        """
        if not is_hdf5(path):
            return False
        try:
            fh = open_hdf5(path)
        except ImageFormatError:
            return True
        try:
            return is_nxmx(fh)
        except (OSError, KeyError, ValueError):
            return True
        finally:
            fh.close()

    # -- structure ---------------------------------------------------------------------
    def _setup(self) -> None:
        fh = self._fh
        entries = _children(fh, "NXentry")
        chosen = None
        for entry in entries:
            if "definition" in entry and _text(entry["definition"][()]).strip() == "NXmx":
                chosen = entry
                break
        if chosen is None:
            for entry in entries:
                if any(_children(d, "NXdetector_module") for i in _children(entry, "NXinstrument") for d in _children(i, "NXdetector")):
                    chosen = entry
                    break
        if chosen is None:
            raise ImageFormatError(self.path, "no NXentry with an NXdetector_module")
        self._entry = chosen
        instrument = _children(chosen, "NXinstrument")[0]
        detectors = [d for d in _children(instrument, "NXdetector") if _children(d, "NXdetector_module")]
        self._det = detectors[0]
        # modules in the file's iteration order, as dxtbx (h5py) lists them: the panel order
        self._modules = [_Module(g, self.path) for g in _children(self._det, "NXdetector_module")]
        # beam: NXinstrument/NXbeam or NXsample/NXbeam
        beams = _children(instrument, "NXbeam")
        for sample in _children(chosen, "NXsample"):
            beams += _children(sample, "NXbeam")
        self._beam_group = beams[0] if beams else None
        self._blocks = self._find_data()
        counts = [int(ds.shape[0]) if ds.ndim >= 3 else 1 for ds in self._blocks]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._wavelengths = self._read_wavelengths()
        self._axis_cache: dict = {}
        self._static_geometry = None

    def _find_data(self) -> list:
        import h5py

        datas = _children(self._entry, "NXdata")
        if not datas and "data" in self._entry:
            datas = [self._entry["data"]]
        for group in datas:
            signal = group.attrs.get("signal")
            if signal is not None and _text(signal) in group:
                names = [_text(signal)]
            elif "data" in group:
                names = ["data"]
            else:
                names = sorted(k for k in group if re.fullmatch(r"data_\d+", k))
            blocks = []
            for name in names:
                link = group.get(name, getlink=True)
                try:
                    ds = group[name]
                except (KeyError, OSError) as exc:
                    if isinstance(link, h5py.ExternalLink):
                        raise ImageFormatError(
                            self.path,
                            f"{group.name}/{name} links to {link.filename}:{link.path}, which cannot be opened "
                            f"(missing data file?)",
                        ) from None
                    raise ImageFormatError(self.path, f"cannot open {group.name}/{name} ({exc})") from None
                if isinstance(ds, h5py.Dataset) and ds.ndim >= 2:
                    blocks.append(ds)
            if blocks:
                return blocks
        raise ImageFormatError(self.path, "no image data (NXdata with 'data' or 'data_NNNNNN' datasets)")

    def _read_wavelengths(self) -> np.ndarray | None:
        g = self._beam_group
        if g is None:
            return None
        if "incident_wavelength" in g:
            ds = g["incident_wavelength"]
            scale = _unit_scale(_LENGTH, _units(ds) or "angstrom", ds.name, self.path) / 1e-7
            return np.atleast_1d(np.asarray(ds[()], dtype=np.float64)).reshape(-1) * scale
        if "incident_energy" in g:
            ds = g["incident_energy"]
            ev = np.atleast_1d(np.asarray(ds[()], dtype=np.float64)).reshape(-1)
            ev = ev * _unit_scale(_ENERGY, _units(ds) or "eV", ds.name, self.path)
            return HC_EV_ANGSTROM / ev
        return None

    @property
    def n_frames(self) -> int:
        """Total number of frames over all data blocks."""
        return int(self._starts[-1])

    @property
    def is_multi_frame(self) -> bool:
        """Frames are addressed by index."""
        return True

    # -- models ------------------------------------------------------------------------
    def _wavelength(self, frame: int) -> float:
        wl = self._wavelengths
        if wl is None or wl.size == 0:
            raise ImageFormatError(self.path, "no NXbeam/incident_wavelength (or incident_energy)", frame)
        value = float(wl[frame] if wl.size == self.n_frames and wl.size > 1 else wl[0])
        if not value > 0:
            raise ImageFormatError(self.path, f"incident wavelength {value} Å is not positive", frame)
        return value

    def _trusted_range(self) -> tuple[float, float]:
        det = self._det
        lo = float(int(np.asarray(det["underload_value"][()]).reshape(-1)[0])) if "underload_value" in det else -0x7FFFFFFF
        hi = float(int(np.asarray(det["saturation_value"][()]).reshape(-1)[0])) if "saturation_value" in det else 0x7FFFFFFF
        return (lo - 1.0, hi)

    def _sensor(self) -> tuple[str, float]:
        det = self._det
        material = ""
        if "sensor_material" in det:
            name = _text(det["sensor_material"][()]).strip()
            material = KNOWN_SENSOR_MATERIALS.get(name, name)
        thickness = 0.0
        if "sensor_thickness" in det:
            ds = det["sensor_thickness"]
            thickness = float(np.asarray(ds[()]).reshape(-1)[0]) * _unit_scale(
                _LENGTH, _units(ds) or "mm", ds.name, self.path
            )
        return material, thickness

    def _depends_start(self, module: _Module):
        dep = _text(module.fast.attrs.get("depends_on", ".")).strip()
        if not dep or dep == ".":
            return None
        try:
            return module.fast.parent[dep]
        except (KeyError, ValueError):
            raise ImageFormatError(self.path, f"{module.fast.name} depends on '{dep}', which does not exist") from None

    def _frame_dependent(self) -> bool:
        n = self.n_frames
        for m in self._modules:
            for axis in _chain(self._depends_start(m), self.path, self._axis_cache):
                if axis.n_values == n and n > 1 and np.ptp(axis.values) > 0:
                    return True
        return False

    def _build_detector(self, frame: int) -> Detector:
        n = self.n_frames
        trusted = self._trusted_range()
        material, thickness = self._sensor()
        common = dict(
            trusted_range=trusted,
            type="SENSOR_PAD",
            material=material,
            thickness=thickness,
        )
        # parallax, as dxtbx: mu at the first frame's wavelength (silicon only here)
        wl = self._wavelengths
        mu = attenuation_mu(material, float(wl[0])) if thickness > 0 and wl is not None and wl.size else 0.0
        if mu > 0.0:
            common.update(mu=mu, px_mm_strategy={"type": "ParallaxCorrectedPxMmStrategy"})
        m_ = MCSTAS_TO_IMGCIF
        if len(self._modules) == 1:
            mod = self._modules[0]
            chain = _chain(self._depends_start(mod), self.path, self._axis_cache)
            rot = np.eye(3)
            for axis in chain:
                if axis.type == "rotation":
                    rot = axis.matrix(frame, n)[:3, :3] @ rot
            fast = m_ @ rot @ _vector(mod.fast, self.path)
            slow = m_ @ rot @ _vector(mod.slow, self.path)
            origin = m_ @ _cumulative(chain, frame, n)[:3, 3]
            # as dxtbx: a detector facing the beam upstream of the sample has its distance inverted
            normal = np.cross(fast, slow)
            if abs(normal[2]) > 0.99 and origin[2] > 0:
                origin = np.array([origin[0], origin[1], -origin[2]])
            f = Frame(fast, slow, origin)
            panel = Panel(
                name=mod.path,
                frame=f,
                local_frame=f,
                pixel_size=(mod.pixel_size("fast", self.path), mod.pixel_size("slow", self.path)),
                image_size=mod.image_size,
                **common,
            )
            return Detector.flat([panel])

        # hierarchy: one group per transformation, outermost first, shared by name
        root: dict = {"name": "", "local": Frame.identity(), "children": []}
        panels: list[Panel] = []
        for mod in self._modules:
            chain = _chain(self._depends_start(mod), self.path, self._axis_cache)
            node = root
            for axis in reversed(chain):
                found = next((c for c in node["children"] if isinstance(c, dict) and c["name"] == axis.name), None)
                if found is None:
                    a = axis.matrix(frame, n)
                    origin = m_ @ a[:3, 3]
                    fast = m_ @ a[:3, :3] @ m_ @ np.array([1.0, 0.0, 0.0])
                    slow = m_ @ a[:3, :3] @ m_ @ np.array([0.0, 1.0, 0.0])
                    found = {"name": axis.name, "local": Frame(fast, slow, origin), "children": []}
                    node["children"].append(found)
                node = found
            local = Frame(m_ @ _vector(mod.fast, self.path), m_ @ _vector(mod.slow, self.path), (0.0, 0.0, 0.0))
            node["children"].append(len(panels))
            panels.append(
                Panel(
                    name=mod.path,
                    frame=local,
                    local_frame=local,
                    pixel_size=(mod.pixel_size("fast", self.path), mod.pixel_size("slow", self.path)),
                    image_size=mod.image_size,
                    **common,
                )
            )

        from dataclasses import replace

        def build(node: dict, parent: Frame) -> Group:
            frame_ = parent.compose(node["local"])
            kids = []
            for c in node["children"]:
                if isinstance(c, dict):
                    kids.append(build(c, frame_))
                else:
                    panels[c] = replace(panels[c], frame=frame_.compose(panels[c].local_frame))
                    kids.append(c)
            return Group(node["name"], frame_, node["local"], tuple(kids))

        tree = build(root, Frame.identity())
        return Detector(tuple(panels), tree)

    def detector(self, frame: int = 0) -> Detector:
        """The detector read from the file at a frame (ignores the reference geometry)."""
        if self._static_geometry is None:
            self._static_geometry = not self._frame_dependent()
        if self._static_geometry:
            if not hasattr(self, "_detector0"):
                self._detector0 = self._build_detector(0)
            return self._detector0
        return self._build_detector(frame)

    def _models(self, frame: int) -> tuple[Beam, Detector]:
        self.check_frame(frame)
        beam = Beam(wavelength=self._wavelength(frame))
        if self.reference_geometry is not None:
            return beam, self.reference_geometry
        return beam, self.detector(frame)

    # -- pixels ------------------------------------------------------------------------
    def _locate(self, frame: int):
        self.check_frame(frame)
        block = int(np.searchsorted(self._starts, frame, side="right") - 1)
        return self._blocks[block], int(frame - self._starts[block])

    def read_frame(self, frame: int = 0) -> tuple:
        """Per-module arrays (n_slow, n_fast) of a frame, in the data's dtype."""
        ds, local = self._locate(frame)
        try:
            whole = ds[local] if ds.ndim >= 3 else ds[()]
        except (OSError, ValueError, KeyError) as exc:
            raise ImageFormatError(self.path, f"cannot read the pixels of {ds.name} ({exc})", frame) from None
        out = []
        for mod in self._modules:
            sl = mod.slices()
            if len(sl) > whole.ndim:
                raise ImageFormatError(
                    self.path, f"module {mod.path} has {len(sl)}-D data_origin for {whole.ndim}-D frames", frame
                )
            part = np.asarray(whole[(Ellipsis,) + sl])
            if part.shape[-2:] != (mod.image_size[1], mod.image_size[0]) or part.size != mod.image_size[0] * mod.image_size[1]:
                raise ImageFormatError(
                    self.path,
                    f"module {mod.path}: data_origin {mod.data_origin.tolist()} + data_size {mod.data_size.tolist()} "
                    f"lies outside the frame of shape {whole.shape}",
                    frame,
                )
            out.append(part.reshape(mod.image_size[1], mod.image_size[0]))
        bits = self._bit_depth()
        if bits:
            # as dxtbx: the top two values of the readout are flags, read as -1 and -2
            top = 2**31 if bits == 32 else 2**bits
            flagged = []
            for part in out:
                if part.dtype.kind in "ui":
                    part = part.astype(np.int32) if part.dtype.itemsize < 4 or part.dtype.kind == "u" else part.copy()
                    part[part == top - 1] = -1
                    part[part == top - 2] = -2
                flagged.append(part)
            out = flagged
        return tuple(out)

    def _bit_depth(self) -> int | None:
        if "bit_depth_readout" not in self._det:
            return None
        return int(np.asarray(self._det["bit_depth_readout"][()]).reshape(-1)[0])

    def trusted_mask(self, frame: int = 0) -> tuple | None:
        """Per-module good-pixel masks from ``NXdetector/pixel_mask`` (True = good), or None.

        As dxtbx: a pixel is good where the mask value is 0.  A 3-D mask holds
        one mask per frame.
        """
        if "pixel_mask" not in self._det:
            return None
        mask = self._det["pixel_mask"]
        m = np.asarray(mask[frame] if mask.ndim == 3 else mask[()])
        out = []
        for mod in self._modules:
            sl = mod.slices()[-2:]
            part = m[sl]
            if part.shape != (mod.image_size[1], mod.image_size[0]):
                raise ImageFormatError(self.path, f"pixel_mask of shape {m.shape} does not cover module {mod.path}", frame)
            out.append(part == 0)
        return tuple(out)



def _vector(ds, path: str) -> np.ndarray:
    vec = ds.attrs.get("vector")
    if vec is None:
        raise ImageFormatError(path, f"{ds.name} has no 'vector' attribute")
    v = np.asarray(vec, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    if n == 0:
        raise ImageFormatError(path, f"{ds.name} has a zero 'vector'")
    return v / n


def wavelength_from_energy(ev: float) -> float:
    """Wavelength in Å of a photon energy in eV."""
    return HC_EV_ANGSTROM / float(ev)


__all__ = ["NexusFile", "MCSTAS_TO_IMGCIF", "open_hdf5", "is_hdf5", "is_nxmx", "wavelength_from_energy"]
