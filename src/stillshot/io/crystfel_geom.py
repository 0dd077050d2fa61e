"""CrystFEL geometry files (``.geom``): read into a :class:`Detector`, write back.

Frames
------
CrystFEL's laboratory frame (``man crystfel_geometry``, section COORDINATE
SYSTEM): +z along the beam, away from the source; +y towards the ceiling; +x
completes a right-handed set.  That is NeXus's McStas frame.  stillshot uses
the DIALS/imgCIF frame, in which the beam travels along -z with y up, so the
two differ by a rotation of 180° about y::

    (x, y, z)_DIALS = (-x, y, -z)_CrystFEL

the same matrix dxtbx applies to NeXus files (``MCSTAS_TO_IMGCIF =
diag(-1, 1, -1)`` in ``dxtbx.nexus``), and the matrix that makes CrystFEL's
example CSPAD geometry coincide with DIALS's reading of a CSPAD CBF (tested).

Panels
------
For a panel, CrystFEL gives ``corner_x``/``corner_y`` (px, lab x/y of the
corner of the first pixel in the data, relative to the beam axis),
``fs``/``ss`` (lab vectors of one pixel step, in px; their length scales the
pixel), ``res`` (px per metre), ``clen`` (m; or a data-file location, then mm)
and ``coffset`` (m).  The corner is at CrystFEL ``(corner_x·p, corner_y·p,
clen + coffset)`` with ``p = 1/res``; the DIALS panel origin is that point
rotated as above, fast/slow axes are the rotated unit ``fs``/``ss``, and the
pixel sizes are ``p·|fs|``, ``p·|ss|`` (mm).  A panel whose ``fs`` and ``ss``
are not orthogonal (refined geometries often are, by ~1e-3) is given the
nearest orthonormal pair (symmetric about the bisector) rotated about the
panel centre, which keeps the centre exact and moves the corners by at most
``half-diagonal · |fs·ss|/2``.

When ``clen`` is a location in the data files (``clen =
/LCLS/detectorPosition``) the detector is built at clen = 0 (each panel at its
``coffset``) and the location is kept (``GeomFile.clen_location`` and each
panel's ``extra["crystfel"]["clen"]``): the CXI reader resolves it per frame,
as CrystFEL does; ``read_geom(path, clen=...)`` fixes it instead.

Data layout
-----------
Each panel's place in the data file (``data``, ``dimN``, ``min_fs``…``max_ss``,
inclusive ranges in the data block) is a :class:`PanelSlab`, stored in the
panel's ``extra["crystfel"]`` dict (written to ``.expt`` files unchanged) and
as ``raw_image_offset = (min_fs, min_ss)``.  A reader of stacked data (CXI)
gets the layout from the reference-geometry Detector itself via
:func:`panel_slabs`; detectors that carry none (from ``.expt`` files) get
:func:`default_slabs`.

Hierarchy
---------
``group_NAME = a,b,…`` lines (CrystFEL ≥ 0.10) or, when there are none,
``rigid_group_*`` / ``rigid_group_collection_*`` lines (older versions) give
the :class:`Group` tree; the group that holds every panel (``all``) is the
root.  A group's frame, which a .geom does not store, is chosen as: origin at
the centroid of the centres of its panels (the natural pivot for rotating the
group, as in CrystFEL's ``adjust_detector`` and cctbx's geom converter), fast
and slow axes those of its first panel.  Without group lines the detector is
flat.

Masks
-----
Bad regions in fs/ss (data coordinates, inclusive) or x/y (lab px relative to
the beam; pixel centres tested) and ``no_index`` panels become the panels'
untrusted rectangles ``Panel.mask``; ``mask_edge_pixels`` too.  Mask datasets
(``mask``/``mask_file``/``mask_good``/``mask_bad`` and ``maskN_*``) are kept
in ``extra["crystfel"]["masks"]`` for the readers.  ``flag_lessthan`` and
``flag_morethan``/``max_adu`` set the trusted range.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stillshot.models import Beam, Detector, Frame, Group, Panel

logger = logging.getLogger(__name__)

#: CrystFEL (= NeXus McStas) lab vector -> DIALS lab vector: 180° about y.
CRYSTFEL_TO_DIALS = np.diag([-1.0, 1.0, -1.0])

#: h·c in eV·Å.
HC_EV_ANGSTROM = 12398.419843320026

#: Trusted range written when a .geom sets no flag_lessthan / flag_morethan
#: (the values dxtbx uses for NeXus detectors without under/overload), ADU.
DEFAULT_TRUSTED_RANGE = (-2147483647.0, 2147483647.0)

#: Where stacked CXI files (Cheetah, CrystFEL, ``write_cxi``) keep the frames.
CXI_DATA_PATH = "/entry_1/data_1/data"

_TOP_LEVEL = {
    "clen",
    "photon_energy",
    "wavelength",
    "electron_voltage",
    "bandwidth",
    "peak_list",
    "peak_list_type",
    "detector_shift_x",
    "detector_shift_y",
}
_REQUIRED_PANEL_KEYS = ("min_fs", "max_fs", "min_ss", "max_ss", "corner_x", "corner_y", "fs", "ss", "res")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ---------------------------------------------------------------------------------------
# data layout
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanelSlab:
    """Where one panel's pixels lie in a data file (CrystFEL's layout lines).

    Parameters
    ----------
    min_fs, max_fs, min_ss, max_ss : int
        Inclusive pixel ranges of the panel in the data block, px.
    data : str
        HDF5 path of the data block (``%`` in a path stands for an event name).
    dims : tuple of str
        Meaning of each dimension of the data block, slowest first: ``"%"``
        (frame index), ``"ss"``, ``"fs"`` or a fixed index (digits).
    """

    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    data: str = "/data/data"
    dims: tuple = ("ss", "fs")

    @property
    def n_fast(self) -> int:
        """Panel width, px."""
        return self.max_fs - self.min_fs + 1

    @property
    def n_slow(self) -> int:
        """Panel height, px."""
        return self.max_ss - self.min_ss + 1

    @property
    def has_frame_dim(self) -> bool:
        """True when one dimension of the data block is the frame (``%``)."""
        return "%" in self.dims

    def index(self, frame: int | None = None, whole: bool = False) -> tuple:
        """The h5py/numpy index of this panel (or of the whole 2-D frame).

        Parameters
        ----------
        frame : int or None
            Frame index for the ``%`` dimension.
        whole : bool
            Full slices for ss and fs instead of the panel's ranges.
        """
        out = []
        for d in self.dims:
            if d == "%":
                out.append(int(frame or 0))
            elif d == "ss":
                out.append(slice(None) if whole else slice(self.min_ss, self.max_ss + 1))
            elif d == "fs":
                out.append(slice(None) if whole else slice(self.min_fs, self.max_fs + 1))
            else:
                out.append(int(d))
        return tuple(out)

    def cut(self, frame_2d: np.ndarray) -> np.ndarray:
        """This panel's pixels from a whole 2-D frame (ss, fs) of the data block."""
        return frame_2d[self.min_ss : self.max_ss + 1, self.min_fs : self.max_fs + 1]

    def to_dict(self) -> dict:
        """JSON-safe dict (the layout part of ``extra["crystfel"]``)."""
        return {
            "min_fs": self.min_fs,
            "max_fs": self.max_fs,
            "min_ss": self.min_ss,
            "max_ss": self.max_ss,
            "data": self.data,
            "dim": list(self.dims),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PanelSlab":
        """Inverse of :meth:`to_dict`."""
        return cls(
            int(d["min_fs"]),
            int(d["max_fs"]),
            int(d["min_ss"]),
            int(d["max_ss"]),
            str(d.get("data", "/data/data")),
            tuple(str(v) for v in d.get("dim", ("ss", "fs"))),
        )


def default_slabs(detector: Detector, data: str = CXI_DATA_PATH, dims: tuple = ("%", "ss", "fs")) -> list[PanelSlab]:
    """A layout for a detector that carries none: panels stacked along ss.

    Panels whose ``raw_image_offset`` values place them without overlap keep
    those offsets (DIALS's meaning of the field); otherwise panel ``i`` starts
    at ss = sum of the heights of panels ``0..i-1`` and fs = 0.
    """
    offs = [tuple(int(v) for v in p.raw_image_offset) for p in detector]
    rects = [(f, s, f + p.n_fast, s + p.n_slow) for (f, s), p in zip(offs, detector)]
    overlap = any(
        a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
        for i, a in enumerate(rects)
        for b in rects[i + 1 :]
    )
    if not overlap:
        return [PanelSlab(r[0], r[2] - 1, r[1], r[3] - 1, data, tuple(dims)) for r in rects]
    out, ss = [], 0
    for p in detector:
        out.append(PanelSlab(0, p.n_fast - 1, ss, ss + p.n_slow - 1, data, tuple(dims)))
        ss += p.n_slow
    return out


def panel_slabs(detector: Detector, data: str = CXI_DATA_PATH, dims: tuple = ("%", "ss", "fs")) -> list[PanelSlab]:
    """The data layout carried by a detector read from a .geom, else :func:`default_slabs`.

    Raises
    ------
    ValueError
        If a panel's stored layout does not match its image size.
    """
    infos = [p.extra.get("crystfel") for p in detector]
    if not all(isinstance(i, dict) and "min_fs" in i for i in infos):
        return default_slabs(detector, data, dims)
    slabs = [PanelSlab.from_dict(i) for i in infos]
    for s, p in zip(slabs, detector):
        if (s.n_slow, s.n_fast) != p.shape:
            raise ValueError(
                f"panel {p.name}: the CrystFEL layout ({s.n_slow}×{s.n_fast} px) does not match "
                f"the panel size {p.shape} (n_slow, n_fast)"
            )
    return slabs


def data_shape(slabs: Sequence[PanelSlab]) -> tuple[int, int]:
    """(n_ss, n_fs) of the smallest 2-D frame holding every slab, px."""
    return (max(s.max_ss for s in slabs) + 1, max(s.max_fs for s in slabs) + 1)


# ---------------------------------------------------------------------------------------
# the parsed file
# ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class GeomFile:
    """A CrystFEL geometry file, read.

    Attributes
    ----------
    path : str
        The file.
    detector : Detector
        Panels in file order, DIALS lab frame (mm), with the hierarchy of the
        file's groups.
    slabs : tuple of PanelSlab
        Each panel's place in the data files (also in ``panel.extra["crystfel"]``).
    wavelength : float or None
        Wavelength in Å when the file gives a number (``photon_energy``,
        ``wavelength`` or ``electron_voltage``); None otherwise.
    photon_energy : float or None
        Photon energy in eV when the file gives it as a number.
    wavelength_location : str or None
        Data-file location of the photon energy / wavelength, when given so.
    wavelength_location_unit : str or None
        Unit of the value at that location (``eV``, ``keV``, ``m``, ``A``).
    bandwidth : float or None
        Fractional bandwidth (σ of a Gaussian, Δλ/λ).
    clen : float or None
        Camera length in m when the file gives a number.
    clen_location : str or None
        Data-file location of the camera length (then the detector is placed
        at clen = 0; see the module docstring).
    clen_unit : str
        Unit of the value at ``clen_location`` (``mm`` unless the file says).
    bad_regions : list of dict
        The file's bad regions as read (name, keys, values).
    masks : list of dict
        Mask datasets: ``{"data", "file", "goodbits", "badbits"}``.
    groups : dict
        Group name -> member names, as read (``group_`` or converted
        ``rigid_group`` lines).
    """

    path: str
    detector: Detector
    slabs: tuple
    wavelength: float | None = None
    photon_energy: float | None = None
    wavelength_location: str | None = None
    wavelength_location_unit: str | None = None
    bandwidth: float | None = None
    clen: float | None = None
    clen_location: str | None = None
    clen_unit: str = "mm"
    bad_regions: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)

    @property
    def beam(self) -> Beam | None:
        """The beam (along -z, DIALS) when the wavelength is a number in the file."""
        if self.wavelength is None:
            return None
        return Beam(wavelength=self.wavelength, bandwidth=self.bandwidth or 0.0)

    def detector_at(self, clen: float) -> Detector:
        """The detector with the camera length set to ``clen`` (m).

        Panels keep their ``coffset``; for a file with a numeric clen this moves
        the whole detector by the difference.
        """
        return shift_clen(self.detector, clen - (self.clen or 0.0))


def shift_clen(detector: Detector, delta_m: float) -> Detector:
    """The detector moved by ``delta_m`` (m) along CrystFEL +z (DIALS -z).

    Also records the new camera length in each panel's ``extra["crystfel"]``.
    """
    if delta_m == 0:
        return detector
    root = detector.root
    local = root.local_frame
    moved = Frame(local.fast, local.slow, local.origin + np.array([0.0, 0.0, -1000.0 * delta_m]))
    det = detector.with_local_frame(root, moved)
    panels = []
    for p in det:
        info = p.extra.get("crystfel")
        if isinstance(info, dict):
            info = dict(info)
            old = info.get("clen")
            base = old if isinstance(old, (int, float)) else 0.0
            info["clen"] = float(base + delta_m)
            info.pop("clen_unit", None)
            p = _replace_extra(p, info)
        panels.append(p)
    return Detector(tuple(panels), det.root)


def _replace_extra(panel: Panel, info: dict) -> Panel:
    from dataclasses import replace

    extra = dict(panel.extra)
    extra["crystfel"] = info
    return replace(panel, extra=extra)


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
class _Where:
    """Error messages that name the file and line."""

    def __init__(self, path: str):
        self.path = path

    def error(self, message: str, line: int | None = None) -> ValueError:
        where = self.path if line is None else f"{self.path}, line {line}"
        return ValueError(f"{where}: {message}")


def _split_value_unit(value: str) -> tuple[str, str | None]:
    parts = value.split()
    if len(parts) == 2:
        return parts[0], parts[1]
    return value.strip(), None


def _to_float(value: str, key: str, where: _Where, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        m = _NUMBER.match(value.strip())
        if m is None:
            raise where.error(f"cannot read a number for '{key}' from '{value}'", line) from None
        return float(m.group(0))


def _parse_direction(value: str, key: str, where: _Where, line: int) -> np.ndarray:
    """``+0.0048x -0.99y +0.01z`` -> (x, y, z) in px (CrystFEL's algebraic form)."""
    text = value.replace(" ", "").replace("\t", "")
    if not text:
        raise where.error(f"empty '{key}' direction", line)
    if text[0] not in "+-":
        text = "+" + text
    terms = re.findall(r"[+-][^+-]*", text)
    out = np.zeros(3)
    for term in terms:
        axis = term[-1]
        if axis not in "xyz":
            raise where.error(f"invalid '{key}' direction '{value}': terms must end in x, y or z", line)
        coeff = term[:-1]
        if coeff in ("+", "-"):
            c = 1.0 if coeff == "+" else -1.0
        else:
            try:
                c = float(coeff)
            except ValueError:
                raise where.error(f"invalid '{key}' direction '{value}'", line) from None
        out["xyz".index(axis)] += c
    if not np.any(out):
        raise where.error(f"'{key}' direction '{value}' has zero length", line)
    return out


def _electron_wavelength(volts: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in V."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    p = math.sqrt(2 * m * e * volts * (1 + e * volts / (2 * m * c * c)))
    return h / p * 1e10


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "yes"):
        return True
    if v in ("false", "no"):
        return False
    try:
        return int(float(v)) != 0
    except ValueError:
        return False


def _mask_from_fields(fields: dict) -> list[dict]:
    """Mask dataset specs (``maskN_*`` and the older ``mask``, ``mask_file``…)."""
    masks: dict[int, dict] = {}
    alias = {"mask": (0, "data"), "mask_file": (0, "file"), "mask_good": (0, "goodbits"), "mask_bad": (0, "badbits")}
    for key, (value, _line) in fields.items():
        if key in alias:
            n, what = alias[key]
        else:
            m = re.fullmatch(r"mask(\d+)_(data|file|goodbits|badbits)", key)
            if not m:
                continue
            n, what = int(m.group(1)), m.group(2)
        spec = masks.setdefault(n, {"data": None, "file": None, "goodbits": 0, "badbits": 0})
        if what in ("goodbits", "badbits"):
            spec[what] = int(float.fromhex(value) if value.lower().startswith("0x") else float(value))
        else:
            spec[what] = value
    return [dict(masks[n], index=n) for n in sorted(masks) if masks[n]["data"]]


def read_geom(path: str | os.PathLike, clen: float | None = None) -> GeomFile:
    """Read a CrystFEL geometry file.

    Parameters
    ----------
    path : str or PathLike
        The ``.geom`` file.
    clen : float, optional
        Camera length in m, replacing the file's ``clen`` (needed to place a
        detector whose clen is a data-file location without a data file).

    Returns
    -------
    GeomFile

    Raises
    ------
    ValueError
        Naming the file, and the line or panel and key, when a line cannot be
        read or a required key (``res``, ``clen``, ``corner_x``…) is missing.
    """
    path = str(path)
    where = _Where(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the geometry file ({exc})") from None

    top: dict[str, tuple[str, int]] = {}
    defaults: dict[str, tuple[str, int]] = {}
    panels: dict[str, dict[str, tuple[str, int]]] = {}
    panel_lines: dict[str, int] = {}
    bad: dict[str, dict[str, tuple[str, int]]] = {}
    groups: dict[str, tuple[list[str], int]] = {}
    rigid: dict[str, list[str]] = {}
    collections: dict[str, list[str]] = {}

    for lineno, raw in enumerate(text.replace("\r", "\n").split("\n"), start=1):
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise where.error(f"not a 'key = value' line: '{raw.strip()}'", lineno)
        key, value = (s.strip() for s in line.split("=", 1))
        if not key:
            raise where.error(f"no key before '=' in '{raw.strip()}'", lineno)
        if "/" not in key:
            if key.startswith("rigid_group_collection_"):
                collections[key[len("rigid_group_collection_") :]] = [v.strip() for v in value.split(",") if v.strip()]
            elif key.startswith("rigid_group_"):
                rigid[key[len("rigid_group_") :]] = [v.strip() for v in value.split(",") if v.strip()]
            elif key.startswith("group_"):
                members = [v.strip() for v in value.split(",") if v.strip()]
                if not members:
                    raise where.error(f"group '{key[6:]}' has no members", lineno)
                groups[key[6:]] = (members, lineno)
            elif key in _TOP_LEVEL:
                top[key] = (value, lineno)
            else:
                defaults[key] = (value, lineno)
            continue
        name, field_ = (s.strip() for s in key.split("/", 1))
        if name.startswith("bad"):
            bad.setdefault(name, {})[field_] = (value, lineno)
        else:
            if name not in panels:
                panels[name] = dict(defaults)
                panel_lines[name] = lineno
            panels[name][field_] = (value, lineno)

    if not panels:
        raise where.error("no panel descriptions (lines like 'p0/min_fs = 0')")

    # -- beam -----------------------------------------------------------------------
    out = dict(path=path)
    wavelength = photon_energy = None
    wl_loc = wl_unit = None
    if "photon_energy" in top:
        value, line = top["photon_energy"]
        val, unit = _split_value_unit(value)
        unit = unit or "eV"
        if unit not in ("eV", "keV"):
            raise where.error(f"photon_energy unit must be eV or keV, not '{unit}'", line)
        if val.startswith("/"):
            wl_loc, wl_unit = val, unit
        else:
            photon_energy = _to_float(val, "photon_energy", where, line) * (1000.0 if unit == "keV" else 1.0)
            wavelength = HC_EV_ANGSTROM / photon_energy
    elif "wavelength" in top:
        value, line = top["wavelength"]
        val, unit = _split_value_unit(value)
        if unit not in ("m", "A"):
            raise where.error("wavelength needs a unit, 'm' or 'A'", line)
        if val.startswith("/"):
            wl_loc, wl_unit = val, unit
        else:
            wavelength = _to_float(val, "wavelength", where, line) * (1e10 if unit == "m" else 1.0)
            photon_energy = HC_EV_ANGSTROM / wavelength
    elif "electron_voltage" in top:
        value, line = top["electron_voltage"]
        val, unit = _split_value_unit(value)
        if unit not in ("V", "kV"):
            raise where.error("electron_voltage needs a unit, 'V' or 'kV'", line)
        if val.startswith("/"):
            wl_loc, wl_unit = val, unit
        else:
            volts = _to_float(val, "electron_voltage", where, line) * (1000.0 if unit == "kV" else 1.0)
            wavelength = _electron_wavelength(volts)
    bandwidth = None
    if "bandwidth" in top:
        bandwidth = _to_float(top["bandwidth"][0], "bandwidth", where, top["bandwidth"][1])

    # -- camera length ----------------------------------------------------------------
    clen_m: float | None = None
    clen_loc: str | None = None
    clen_unit = "mm"
    if clen is not None:
        clen_m = float(clen)
    elif "clen" in top:
        value, line = top["clen"]
        val, unit = _split_value_unit(value)
        if val.startswith("/"):
            clen_loc, clen_unit = val, unit or "mm"
            if clen_unit not in ("m", "mm"):
                raise where.error(f"clen unit must be m or mm, not '{clen_unit}'", line)
        else:
            unit = unit or "m"
            if unit not in ("m", "mm"):
                raise where.error(f"clen unit must be m or mm, not '{unit}'", line)
            clen_m = _to_float(val, "clen", where, line) * (0.001 if unit == "mm" else 1.0)
    elif not any("clen" in f for f in panels.values()):
        raise where.error("no 'clen' (camera length) line; add e.g. 'clen = 0.1 m'")

    shift = np.zeros(3)
    for axis, key in ((0, "detector_shift_x"), (1, "detector_shift_y")):
        if key in top:
            value, line = top[key]
            val, unit = _split_value_unit(value)
            if val.startswith("/"):
                raise where.error(f"'{key}' from a data-file location is not supported", line)
            shift[axis] = _to_float(val, key, where, line) * (1.0 if unit == "mm" else 1000.0)

    # -- panels ---------------------------------------------------------------------------
    built: list[Panel] = []
    slabs: list[PanelSlab] = []
    for name, fields in panels.items():
        for key in _REQUIRED_PANEL_KEYS:
            if key not in fields:
                raise where.error(f"panel '{name}' (first named on line {panel_lines[name]}) has no '{key}'")
        panel, slab = _build_panel(
            name, fields, where, clen_m, clen_loc, clen_unit, shift, photon_energy, wl_loc, wl_unit
        )
        built.append(panel)
        slabs.append(slab)

    # -- bad regions -------------------------------------------------------------------------
    extra_rects: list[list[tuple]] = [[] for _ in built]
    bad_list = []
    for bname, fields in bad.items():
        bad_list.append({"name": bname, **{k: v for k, (v, _l) in fields.items()}})
        _apply_bad_region(bname, fields, built, slabs, extra_rects, where)
    built = [_with_rects(p, rects) for p, rects in zip(built, extra_rects)]

    # -- hierarchy -----------------------------------------------------------------------------
    names = [p.name for p in built]
    tree_members = _group_tree(groups, rigid, collections, names, where)
    detector = _assemble(built, tree_members)

    masks = _mask_from_fields(defaults)
    return GeomFile(
        detector=detector,
        slabs=tuple(slabs),
        wavelength=wavelength,
        photon_energy=photon_energy,
        wavelength_location=wl_loc,
        wavelength_location_unit=wl_unit,
        bandwidth=bandwidth,
        clen=clen_m,
        clen_location=clen_loc,
        clen_unit=clen_unit,
        bad_regions=bad_list,
        masks=masks,
        groups={k: tuple(v[0]) for k, v in groups.items()} if groups else {k: tuple(v) for k, v in rigid.items()},
        **out,
    )


def _orthonormal_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orthonormal pair nearest to unit vectors a, b, symmetric about their bisector."""
    u = a + b
    v = a - b
    u /= np.linalg.norm(u)
    v /= np.linalg.norm(v)
    return (u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0)


def _build_panel(name, fields, where, clen_m, clen_loc, clen_unit, shift, photon_energy, wl_loc, wl_unit):
    def num(key, default=None):
        if key not in fields:
            return default
        value, line = fields[key]
        return _to_float(value, key, where, line)

    def integer(key):
        value, line = fields[key]
        v = _to_float(value, key, where, line)
        if v != int(v) or v < 0:
            raise where.error(f"panel '{name}': '{key}' must be a non-negative integer, got '{value}'", line)
        return int(v)

    min_fs, max_fs, min_ss, max_ss = (integer(k) for k in ("min_fs", "max_fs", "min_ss", "max_ss"))
    if max_fs < min_fs or max_ss < min_ss:
        raise where.error(
            f"panel '{name}': empty pixel range fs {min_fs}..{max_fs}, ss {min_ss}..{max_ss}",
            fields["max_fs"][1],
        )
    res = num("res")
    if not res > 0:
        raise where.error(f"panel '{name}': 'res' must be positive (px per metre)", fields["res"][1])
    fs = _parse_direction(fields["fs"][0], "fs", where, fields["fs"][1])
    ss = _parse_direction(fields["ss"][0], "ss", where, fields["ss"][1])
    coffset = num("coffset", 0.0)

    panel_clen = clen_m
    panel_clen_loc = clen_loc
    if "clen" in fields:  # older CrystFEL: per-panel camera length
        value, line = fields["clen"]
        val, unit = _split_value_unit(value)
        if val.startswith("/"):
            panel_clen, panel_clen_loc = None, val
        else:
            panel_clen = _to_float(val, "clen", where, line) * (0.001 if unit == "mm" else 1.0)
            panel_clen_loc = None
    if panel_clen is None and panel_clen_loc is None:
        raise where.error(f"panel '{name}' (first named on line {fields['min_fs'][1]}) has no 'clen'")

    p_mm = 1000.0 / res
    n_fast, n_slow = max_fs - min_fs + 1, max_ss - min_ss + 1
    corner = np.array(
        [num("corner_x") * p_mm, num("corner_y") * p_mm, ((panel_clen or 0.0) + coffset) * 1000.0]
    ) + shift
    len_f, len_s = float(np.linalg.norm(fs)), float(np.linalg.norm(ss))
    fast = CRYSTFEL_TO_DIALS @ (fs / len_f)
    slow = CRYSTFEL_TO_DIALS @ (ss / len_s)
    origin = CRYSTFEL_TO_DIALS @ corner
    px = (p_mm * len_f, p_mm * len_s)
    if abs(float(fast @ slow)) > 1e-12:
        shear = float(fast @ slow)
        centre = origin + 0.5 * n_fast * px[0] * fast + 0.5 * n_slow * px[1] * slow
        fast, slow = _orthonormal_pair(fast, slow)
        origin = centre - 0.5 * n_fast * px[0] * fast - 0.5 * n_slow * px[1] * slow
        if abs(shear) > 1e-6:
            logger.debug("%s: panel %s fs·ss = %.2e; axes orthogonalised about the centre", where.path, name, shear)

    slab = PanelSlab(
        min_fs,
        max_fs,
        min_ss,
        max_ss,
        fields["data"][0] if "data" in fields else "/data/data",
        _dims(fields, name, where),
    )

    gain = 1.0
    info: dict = {"name": name, **slab.to_dict(), "res": res, "coffset": coffset}
    if panel_clen_loc is not None:
        info["clen"] = panel_clen_loc
        info["clen_unit"] = clen_unit
    else:
        info["clen"] = panel_clen
    if "adu_per_photon" in fields:
        gain = num("adu_per_photon")
        info["adu_per_photon"] = gain
    elif "adu_per_eV" in fields:
        info["adu_per_eV"] = num("adu_per_eV")
        if photon_energy is not None:
            gain = info["adu_per_eV"] * photon_energy
    info["gain_at_read"] = gain
    if wl_loc is not None:
        info["photon_energy"] = {"location": wl_loc, "unit": wl_unit}
    elif photon_energy is not None:
        info["photon_energy"] = {"value": photon_energy, "unit": "eV"}
    no_index = _parse_bool(fields["no_index"][0]) if "no_index" in fields else False
    if no_index:
        info["no_index"] = True
    masks = _mask_from_fields(fields)
    if masks:
        info["masks"] = masks

    lo, hi = DEFAULT_TRUSTED_RANGE
    if "flag_lessthan" in fields:
        lo = num("flag_lessthan")
    for key in ("max_adu", "flag_morethan"):
        if key in fields:
            hi = min(hi, num(key))

    rects: list[tuple] = []
    if no_index:
        rects.append((0, 0, n_fast, n_slow))
    edge = int(num("mask_edge_pixels", 0))
    if edge > 0:
        rects += [
            (0, 0, n_fast, min(edge, n_slow)),
            (0, max(n_slow - edge, 0), n_fast, n_slow),
            (0, 0, min(edge, n_fast), n_slow),
            (max(n_fast - edge, 0), 0, n_fast, n_slow),
        ]
    frame = Frame(fast, slow, origin)
    panel = Panel(
        name=name,
        frame=frame,
        local_frame=frame,
        pixel_size=px,
        image_size=(n_fast, n_slow),
        trusted_range=(lo, hi),
        gain=gain,
        type="SENSOR_PAD",
        mask=tuple(rects),
        raw_image_offset=(min_fs, min_ss),
        extra={"crystfel": info},
    )
    return panel, slab


def _dims(fields: dict, name: str, where: _Where) -> tuple:
    found = {}
    for key, (value, line) in fields.items():
        m = re.fullmatch(r"dim(\d*)", key)
        if not m:
            continue
        if not m.group(1):
            raise where.error("'dim' must be followed by a number, e.g. 'dim0'", line)
        v = value.strip()
        if v not in ("%", "ss", "fs") and not v.isdigit():
            raise where.error(f"invalid dimension value '{v}' for '{key}'", line)
        found[int(m.group(1))] = v
    if not found:
        return ("ss", "fs")
    n = max(found) + 1
    dims = [found.get(i) for i in range(n)]
    if None in dims:
        raise where.error(f"panel '{name}': dimensions {sorted(found)} leave a gap (dim{dims.index(None)})")
    if "ss" not in dims or "fs" not in dims or dims.index("ss") > dims.index("fs"):
        raise where.error(f"panel '{name}': dim lines must give 'ss' before 'fs'")
    return tuple(dims)


def _rects_from_bool(bad: np.ndarray) -> list[tuple]:
    """Rectangles ``(f0, s0, f1, s1)`` (ends exclusive) covering the True pixels."""
    rects: list[tuple] = []
    open_runs: dict[tuple, int] = {}
    n_slow = bad.shape[0]
    for s in range(n_slow + 1):
        runs = set()
        if s < n_slow:
            row = np.concatenate([[False], bad[s], [False]])
            edges = np.flatnonzero(row[1:] != row[:-1])
            runs = {(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])}
        for run in list(open_runs):
            if run not in runs:
                rects.append((run[0], open_runs.pop(run), run[1], s))
        for run in runs:
            open_runs.setdefault(run, s)
    return sorted(rects, key=lambda r: (r[1], r[0]))


def _apply_bad_region(bname, fields, panels, slabs, extra_rects, where):
    keys = set(fields)
    xy = keys & {"min_x", "max_x", "min_y", "max_y"}
    fsss = keys & {"min_fs", "max_fs", "min_ss", "max_ss"}
    first_line = min(line for _v, line in fields.values())
    if xy and fsss:
        raise where.error(f"bad region '{bname}' mixes x/y and fs/ss limits", first_line)
    if not xy and not fsss:
        raise where.error(f"bad region '{bname}' gives no x/y or fs/ss limits", first_line)

    def num(key, default):
        if key not in fields:
            return default
        return _to_float(fields[key][0], key, where, fields[key][1])

    targets = range(len(panels))
    if "panel" in fields:
        pname = fields["panel"][0]
        idx = [i for i, p in enumerate(panels) if p.name == pname]
        if not idx:
            raise where.error(f"bad region '{bname}' names unknown panel '{pname}'", fields["panel"][1])
        targets = idx
    if fsss:
        lo_f, hi_f = num("min_fs", -math.inf), num("max_fs", math.inf)
        lo_s, hi_s = num("min_ss", -math.inf), num("max_ss", math.inf)
        for i in targets:
            s = slabs[i]
            f0, f1 = max(lo_f, s.min_fs), min(hi_f, s.max_fs)
            s0, s1 = max(lo_s, s.min_ss), min(hi_s, s.max_ss)
            if f0 <= f1 and s0 <= s1:
                extra_rects[i].append(
                    (int(f0 - s.min_fs), int(s0 - s.min_ss), int(f1 - s.min_fs) + 1, int(s1 - s.min_ss) + 1)
                )
        return
    lo_x, hi_x = num("min_x", -math.inf), num("max_x", math.inf)
    lo_y, hi_y = num("min_y", -math.inf), num("max_y", math.inf)
    for i in targets:
        p = panels[i]
        info = p.extra["crystfel"]
        # CrystFEL x/y (px, relative to the beam) of the pixel centres
        centres = p.pixel_lab_coords()
        cf = centres @ CRYSTFEL_TO_DIALS.T
        p_mm = 1000.0 / info["res"]
        x, y = cf[..., 0] / p_mm, cf[..., 1] / p_mm
        inside = (x >= lo_x) & (x <= hi_x) & (y >= lo_y) & (y <= hi_y)
        if inside.any():
            extra_rects[i].extend(_rects_from_bool(inside))


def _with_rects(panel: Panel, rects: list) -> Panel:
    if not rects:
        return panel
    from dataclasses import replace

    seen = []
    for r in tuple(panel.mask) + tuple(rects):
        r = tuple(int(v) for v in r)
        if r not in seen:
            seen.append(r)
    return replace(panel, mask=tuple(seen))


def _group_tree(groups, rigid, collections, names, where) -> tuple | None:
    """``(name, children)`` nested tuples (children: names or sub-trees), or None."""
    panel_set = set(names)
    if groups:
        table = {k: v[0] for k, v in groups.items()}
        for gname, (members, line) in groups.items():
            if gname in panel_set:
                raise where.error(f"group '{gname}' has the name of a panel", line)
            for m in members:
                if m not in panel_set and m not in table:
                    raise where.error(f"group '{gname}' names unknown panel or group '{m}'", line)
        used = {m for members in table.values() for m in members}
        tops = [g for g in table if g not in used]
        if "all" in table:
            root = "all"
        elif len(tops) == 1:
            root = tops[0]
        else:
            root = None

        def build(gname, stack=()):
            if gname in stack:
                raise where.error(f"group '{gname}' contains itself", groups[gname][1])
            return (gname, tuple(build(m, stack + (gname,)) if m in table else m for m in table[gname]))

        if root is not None:
            tree = build(root)
            covered = set(_tree_panels(tree))
            loose = [n for n in names if n not in covered]
            if loose:
                tree = (tree[0], tree[1] + tuple(loose))
            return tree
        return ("all", tuple(build(t) for t in tops) + tuple(n for n in names if n not in used))
    if not rigid:
        return None
    # older CrystFEL: rigid groups (sets of panels) and collections of them
    sets = {}
    for gname, members in rigid.items():
        unknown = [m for m in members if m not in panel_set]
        if unknown:
            raise where.error(f"rigid group '{gname}' names unknown panel '{unknown[0]}'")
        sets[gname] = frozenset(members)
    candidates = set(sets)
    if collections:
        candidates = {g for members in collections.values() for g in members if g in sets}
    # nest by containment: largest first; each group's parent is the smallest superset
    ordered = sorted(candidates, key=lambda g: (-len(sets[g]), g))
    parent: dict[str, str | None] = {}
    for i, g in enumerate(ordered):
        sup = [h for h in ordered[:i] if sets[g] < sets[h] or (sets[g] == sets[h] and h != g)]
        parent[g] = min(sup, key=lambda h: len(sets[h])) if sup else None

    def build_rigid(g):
        kids = [build_rigid(h) for h in ordered if parent[h] == g]
        inner = set().union(*(sets[h] for h in ordered if parent[h] == g)) if kids else set()
        return (g, tuple(kids) + tuple(n for n in names if n in sets[g] and n not in inner))

    roots = [g for g in ordered if parent[g] is None]
    if len(roots) == 1 and sets[roots[0]] == panel_set:
        return build_rigid(roots[0])
    covered = set().union(*(sets[g] for g in roots)) if roots else set()
    return ("all", tuple(build_rigid(g) for g in roots) + tuple(n for n in names if n not in covered))


def _tree_panels(tree) -> list[str]:
    out = []
    for c in tree[1]:
        out.extend(_tree_panels(c) if isinstance(c, tuple) else [c])
    return out


def group_frame(panels: Sequence[Panel]) -> Frame:
    """The frame stillshot gives a group of panels read from a .geom.

    Origin at the centroid of the panel centres (mm); fast and slow axes those
    of the first panel.
    """
    centres = [p.origin + 0.5 * (p.n_fast * p.pixel_size[0] * p.fast_axis + p.n_slow * p.pixel_size[1] * p.slow_axis) for p in panels]
    return Frame(panels[0].fast_axis, panels[0].slow_axis, np.mean(centres, axis=0))


def _assemble(panels: list[Panel], tree) -> Detector:
    if tree is None:
        return Detector.flat(panels)
    index = {p.name: i for i, p in enumerate(panels)}

    def spec(node):
        name, children = node
        kids = tuple(spec(c) if isinstance(c, tuple) else index[c] for c in children)
        members = [panels[index[n]] for n in _tree_panels(node)]
        return (name, group_frame(members), kids)

    return Detector.from_global_tree(panels, spec(tree))


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def _fmt(v: float, digits: int = 12) -> str:
    s = f"{v:.{digits}f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def _fmt_dir(v: np.ndarray) -> str:
    """CrystFEL's algebraic direction (fixed point: CrystFEL's parser takes no exponents)."""
    return " ".join(f"{c:+.15f}{a}" for c, a in zip(v, "xyz"))


def _safe_name(name: str, used: set, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", name or "")
    if not name or name.startswith(("bad", "group", "rigid_group")) or name in used or name == "all":
        base = fallback
        k = 0
        name = base
        while name in used:
            k += 1
            name = f"{base}_{k}"
    used.add(name)
    return name


def write_geom(
    detector: Detector,
    path: str | os.PathLike,
    *,
    wavelength: float | None = None,
    photon_energy: float | str | None = None,
    clen: float | str | None = None,
    slabs: Sequence[PanelSlab] | None = None,
    masks: Sequence[dict] | None = None,
    header: str | None = None,
) -> Path:
    """Write a detector as a CrystFEL geometry file.

    Parameters
    ----------
    detector : Detector
        DIALS-frame detector (mm).  Panel positions, pixel sizes, gains
        (``adu_per_photon``), trusted ranges (``flag_lessthan``/``flag_morethan``),
        untrusted rectangles (bad regions) and the group hierarchy are written.
    path : str or PathLike
        Output ``.geom``.
    wavelength : float, optional
        Wavelength in Å (written as ``photon_energy`` in eV).
    photon_energy : float or str, optional
        Photon energy in eV, or a data-file location of it (eV).  Defaults to
        what the panels' ``extra["crystfel"]`` recorded, if anything.
    clen : float or str, optional
        Camera length in m, or a data-file location (mm) with each panel's
        ``coffset`` then its full z.  Default: the recorded clen when all panels
        share one, else the z of the first panel's corner; panels get
        ``coffset = z - clen``.
    slabs : sequence of PanelSlab, optional
        The data layout; default :func:`panel_slabs`.
    masks : sequence of dict, optional
        Mask datasets ``{"data", "file", "goodbits", "badbits"}``; default the
        recorded ones.
    header : str, optional
        Comment lines for the top of the file.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    panels = list(detector)
    if slabs is None:
        slabs = panel_slabs(detector)
    slabs = list(slabs)
    if len(slabs) != len(panels):
        raise ValueError(f"{len(slabs)} data slabs for {len(panels)} panels")
    infos = [p.extra.get("crystfel", {}) if isinstance(p.extra.get("crystfel"), dict) else {} for p in panels]

    # CrystFEL-frame corners and vectors
    cf = []
    for p in panels:
        p_mm = float(p.pixel_size[0])
        corner = CRYSTFEL_TO_DIALS @ p.origin  # mm
        fs = CRYSTFEL_TO_DIALS @ p.fast_axis
        ss = CRYSTFEL_TO_DIALS @ p.slow_axis * (float(p.pixel_size[1]) / p_mm)
        cf.append((p_mm, corner, fs, ss))

    # camera length
    clen_line: str
    if clen is None:
        recorded = {repr(i.get("clen")) for i in infos}
        if len(recorded) == 1 and isinstance(infos[0].get("clen"), str):
            clen = infos[0]["clen"]
        elif len(recorded) == 1 and isinstance(infos[0].get("clen"), (int, float)):
            clen = float(infos[0]["clen"])
        else:
            clen = cf[0][1][2] / 1000.0
    if isinstance(clen, str):
        unit = infos[0].get("clen_unit", "mm") if infos else "mm"
        clen_line = f"clen = {clen} {unit}"
        clen_m = 0.0
    else:
        clen_m = float(clen)
        clen_line = f"clen = {_fmt(clen_m, 15)} m"

    if photon_energy is None and wavelength is not None:
        photon_energy = HC_EV_ANGSTROM / float(wavelength)
    if photon_energy is None:
        spec = infos[0].get("photon_energy") if infos else None
        if isinstance(spec, dict) and "location" in spec:
            photon_energy = spec["location"]
        elif isinstance(spec, dict) and "value" in spec:
            photon_energy = float(spec["value"])

    if masks is None:
        masks = infos[0].get("masks", []) if infos else []

    lines: list[str] = []
    if header:
        lines += [f"; {h}" for h in header.splitlines()]
    lines.append("; Written by stillshot (CrystFEL lab frame: +z along the beam, +y up)")
    if photon_energy is not None:
        if isinstance(photon_energy, str):
            lines.append(f"photon_energy = {photon_energy} eV")
        else:
            lines.append(f"photon_energy = {_fmt(float(photon_energy), 9)} eV")
    lines.append(clen_line)
    ress = {1000.0 / c[0] for c in cf}
    common_res = ress.pop() if len(ress) == 1 else None
    if common_res is not None:
        lines.append(f"res = {_fmt(common_res, 9)}")
    datas = {s.data for s in slabs}
    dimss = {s.dims for s in slabs}
    common_data = datas.pop() if len(datas) == 1 else None
    common_dims = dimss.pop() if len(dimss) == 1 else None
    if common_dims is not None:
        lines += [f"dim{i} = {d}" for i, d in enumerate(common_dims)]
    if common_data is not None:
        lines.append(f"data = {common_data}")
    for i, m in enumerate(masks):
        n = m.get("index", i)
        lines.append(f"mask{n}_data = {m['data']}")
        if m.get("file"):
            lines.append(f"mask{n}_file = {m['file']}")
        lines.append(f"mask{n}_goodbits = {hex(int(m.get('goodbits', 0)))}")
        lines.append(f"mask{n}_badbits = {hex(int(m.get('badbits', 0)))}")
    lines.append("")

    used: set = set()
    names = [_safe_name(p.name, used, f"p{i}") for i, p in enumerate(panels)]
    bad_lines: list[str] = []
    for i, (p, s, info, (p_mm, corner, fs, ss)) in enumerate(zip(panels, slabs, infos, cf)):
        n = names[i]
        if (s.n_slow, s.n_fast) != p.shape:
            raise ValueError(f"panel {p.name}: layout {s.n_slow}×{s.n_fast} px does not match its size {p.shape}")
        lines += [
            f"{n}/min_fs = {s.min_fs}",
            f"{n}/max_fs = {s.max_fs}",
            f"{n}/min_ss = {s.min_ss}",
            f"{n}/max_ss = {s.max_ss}",
        ]
        if common_data is None:
            lines.append(f"{n}/data = {s.data}")
        if common_dims is None:
            lines += [f"{n}/dim{k} = {d}" for k, d in enumerate(s.dims)]
        if common_res is None:
            lines.append(f"{n}/res = {_fmt(1000.0 / p_mm, 9)}")
        lines += [
            f"{n}/fs = {_fmt_dir(fs)}",
            f"{n}/ss = {_fmt_dir(ss)}",
            f"{n}/corner_x = {_fmt(corner[0] / p_mm, 12)}",
            f"{n}/corner_y = {_fmt(corner[1] / p_mm, 12)}",
            f"{n}/coffset = {_fmt(corner[2] / 1000.0 - clen_m, 15)}",
        ]
        if "adu_per_eV" in info and p.gain == info.get("gain_at_read"):
            lines.append(f"{n}/adu_per_eV = {_fmt(float(info['adu_per_eV']), 12)}")
        else:
            lines.append(f"{n}/adu_per_photon = {_fmt(float(p.gain), 12)}")
        lo, hi = p.trusted_range
        if lo != DEFAULT_TRUSTED_RANGE[0]:
            lines.append(f"{n}/flag_lessthan = {_fmt(float(lo), 9)}")
        if hi != DEFAULT_TRUSTED_RANGE[1]:
            lines.append(f"{n}/flag_morethan = {_fmt(float(hi), 9)}")
        full = (0, 0, p.n_fast, p.n_slow)
        no_index = bool(info.get("no_index")) and full in [tuple(m) for m in p.mask]
        if no_index:
            lines.append(f"{n}/no_index = 1")
        k = 0
        for m in p.mask:
            m = tuple(int(v) for v in m)
            if no_index and m == full:
                continue
            f0, s0, f1, s1 = m
            f0, s0 = max(f0, 0), max(s0, 0)
            f1, s1 = min(f1, p.n_fast), min(s1, p.n_slow)
            if f1 <= f0 or s1 <= s0:
                continue
            b = f"bad_{n}_{k}"
            k += 1
            bad_lines += [
                f"{b}/min_fs = {s.min_fs + f0}",
                f"{b}/max_fs = {s.min_fs + f1 - 1}",
                f"{b}/min_ss = {s.min_ss + s0}",
                f"{b}/max_ss = {s.min_ss + s1 - 1}",
                f"{b}/panel = {n}",
                "",
            ]
        lines.append("")
    lines += bad_lines

    # hierarchy
    root = detector.root
    if any(isinstance(c, Group) for c in root.children) or not root.local_frame.is_identity(1e-12):
        group_lines: list[str] = []
        rigid_lines: list[str] = []
        by_depth: dict[int, list[str]] = {}

        def walk(g: Group, depth: int, is_root: bool) -> str:
            gname = "all" if is_root else _safe_name(g.name, used, f"group{len(used)}")
            members = []
            for c in g.children:
                members.append(walk(c, depth + 1, False) if isinstance(c, Group) else names[int(c)])
            group_lines.append(f"group_{gname} = {','.join(members)}")
            rigid_lines.append(f"rigid_group_{gname} = {','.join(names[i] for i in g.panel_indices())}")
            by_depth.setdefault(depth, []).append(gname)
            return gname

        walk(root, 0, True)
        lines.append("; hierarchy (CrystFEL >= 0.10), then the same as rigid groups for older versions")
        lines += group_lines
        lines += rigid_lines
        for depth in sorted(by_depth):
            lines.append(f"rigid_group_collection_level{depth} = {','.join(by_depth[depth])}")
    path.write_text("\n".join(lines) + "\n")
    return path
