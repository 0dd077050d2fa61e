"""CBF images: Pilatus/Eiger miniCBF and full imgCIF (multi-panel) CBF.

Two formats are registered, tried in this order:

:class:`MiniCBF`
    Dectris miniCBF (``.cbf``, ``.cbf.gz``, ``.cbf.bz2``): one byte-offset
    array and a free-text ``# Key value`` header (``_array_data.header_contents``)
    from which the geometry is built as dxtbx's ``FormatCBFMiniPilatus`` /
    ``FormatCBFMiniEiger`` build it: a single panel with fast = +x, slow = -y,
    normal to the beam at ``Detector_distance``, the direct beam at pixel
    ``Beam_xy``; module-gap mask, trusted range ``(-1, Count_cutoff)``,
    sensor material, thickness and attenuation coefficient from the header.

:class:`FullCBF`
    imgCIF CBF whose geometry is a tree of axes (the ``axis``,
    ``diffrn_scan_frame_axis``, ``array_structure_list``,
    ``array_structure_list_axis`` and ``array_structure_list_section``
    categories), e.g. cctbx.xfel's CSPAD files (4 arrays of 8 × 185 × 388
    pixels cut into 64 ASIC sections) or Diamond's full-header Pilatus files.
    With more than one panel and an ``_axis.equipment_component`` column the
    detector hierarchy is built as dxtbx's ``FormatCBFMultiTileHierarchy``
    builds it: axes that share an equipment component are composed into one
    frame, and each change of component is one level of the tree (for a CSPAD:
    detector > quadrant > sensor > ASIC).

Geometry of an axis chain (imgCIF conventions, lab frame = DIALS frame)
----------------------------------------------------------------------
Each axis is a rigid motion of everything that depends on it: a rotation
about its unit ``vector`` by its setting (degrees, right-handed) or a
translation along it by its setting (mm), preceded by its ``offset`` (mm).
The setting is the frame's ``diffrn_scan_frame_axis`` angle/displacement
(else ``diffrn_scan_axis`` start), plus the scan increment in hierarchy mode
as dxtbx does.  A point ``p`` given in the frame of the deepest axis ``a0`` of a
chain ``a0 → a1 → … → an`` (``depends_on``) is at ``T(an)···T(a1)·T(a0)·p``.
The two surface axes of an array (precedence 1 = fast, 2 = slow) are
translations; pixel ``(i, j)`` sits at settings ``d0 + i·Δ0`` and ``d1 + j·Δ1``
where ``d`` and ``Δ`` are ``array_structure_list_axis.displacement`` and
``displacement_increment`` (mm), so the panel origin (the corner DIALS calls
pixel (0, 0)) is the point at settings ``(d0, d1)`` and the pixel size is
``|Δ|`` (CBFlib's ``cbf_get_pixel_coordinates`` convention, which dxtbx uses).

Pixel data are decoded by :mod:`stillshot.io._cbf_codec` (numba byte-offset
kernel; CBFlib for packed sections).  Every binary section's ``Content-MD5``
is checked (``verify_md5``), so a corrupt payload is an error, not silently
wrong pixels.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from stillshot.io import _cbf_codec as codec
from stillshot.io.attenuation import attenuation_mu
from stillshot.io.base import ImageFile, ImageFormatError, register
from stillshot.models import Beam, Detector, Frame, Group, Panel

__all__ = ["MiniCBF", "FullCBF", "attenuation_mu", "read_cbf_header"]

#: First bytes of every CBF file.
CBF_MAGIC = b"###CBF"
#: Bytes read to decide whether a file is a CBF (after decompression).
_SNIFF_BYTES = 1 << 12

# -- Dectris module layouts (gaps between modules are masked) -------------------------------


@dataclass(frozen=True)
class _ModuleLayout:
    module_fast: int
    module_slow: int
    gap_fast: int
    gap_slow: int
    modules_fast: tuple

    def widths(self) -> list[int]:
        return [self.module_fast * n + self.gap_fast * (n - 1) for n in self.modules_fast]


_PILATUS = _ModuleLayout(487, 195, 7, 17, (1, 3, 5))
_EIGER_LAYOUTS = (
    _ModuleLayout(1030, 514, 10, 37, (1, 2, 3, 4)),  # Eiger X
    _ModuleLayout(1028, 512, 12, 38, (1, 2, 3, 4)),  # Eiger2 X
)


def _gap_mask(layout: _ModuleLayout, n_fast: int, n_slow: int) -> tuple:
    """Module-gap rectangles ``(f0, s0, f1, s1)`` (px, half-open), or () if the size does not fit."""
    nf, rf = divmod(n_fast, layout.module_fast)
    ns, rs = divmod(n_slow, layout.module_slow)
    if nf < 1 or ns < 1 or (nf - 1) * layout.gap_fast != rf or (ns - 1) * layout.gap_slow != rs:
        return ()
    mask = []
    for i in range(nf - 1):
        start = (i + 1) * layout.module_fast + i * layout.gap_fast
        mask.append((start, 0, start + layout.gap_fast, n_slow))
    for j in range(ns - 1):
        start = (j + 1) * layout.module_slow + j * layout.gap_slow
        mask.append((0, start, n_fast, start + layout.gap_slow))
    return tuple(mask)


def _eiger_mask(n_fast: int, n_slow: int) -> tuple:
    for layout in _EIGER_LAYOUTS:
        if n_fast in layout.widths():
            return _gap_mask(layout, n_fast, n_slow)
    for layout in _EIGER_LAYOUTS:  # rotated mounting, as dxtbx tries
        if n_slow in layout.widths():
            return _gap_mask(layout, n_slow, n_fast)
    return ()


# -- file access ------------------------------------------------------------------------------

_HEADER_CACHE: dict = {}


def read_cbf_header(path: str) -> tuple[bytes, bool]:
    """The (decompressed) bytes of a CBF file up to its first binary start marker.

    Reads and decompresses in 64 KiB chunks and stops at the first
    start-of-data marker, so the pixels behind a header are not decompressed.

    Returns
    -------
    head : bytes
        The header (and the first MIME header, when there is a binary
        section); only the first chunk for a file that is not a CBF.
    is_cbf : bool
        True when the file starts with the ``###CBF`` magic.

    Raises
    ------
    OSError
        When the file cannot be read or its compressed stream is corrupt.

    Notes
    -----
    The last few results are cached by (path, size, mtime), since several
    formats look at the same header in turn.
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    hit = _HEADER_CACHE.get(key)
    if hit is not None:
        return hit
    chunks: list[bytes] = []
    total = 0
    tail = b""
    is_cbf = False
    try:
        with codec.open_compressed(path) as fh:
            while total < codec.MAX_HEADER_BYTES:
                chunk = fh.read(1 << 16)
                if not chunk:
                    break
                if not chunks:
                    is_cbf = chunk.lstrip(b"\xef\xbb\xbf").startswith(CBF_MAGIC)
                    if not is_cbf:
                        chunks.append(chunk[:_SNIFF_BYTES])
                        break
                chunks.append(chunk)
                total += len(chunk)
                if codec.START_TAG in tail + chunk:
                    break
                tail = chunk[-len(codec.START_TAG) :]
    except (EOFError, ValueError) as exc:
        raise OSError(f"cannot decompress ({exc})") from None
    result = (b"".join(chunks), is_cbf)
    if len(_HEADER_CACHE) > 8:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[key] = result
    return result


def _check_md5(buf: bytes, section: codec.BinarySection) -> None:
    match = re.search(rb"Content-MD5:[ \t]*([A-Za-z0-9+/=]+)", section.mime)
    if not match:
        return
    payload = memoryview(buf)[section.start : section.start + section.size]
    digest = base64.b64encode(hashlib.md5(payload).digest())
    if digest != match.group(1):
        raise codec.CBFError(
            f"binary section {section.index} is corrupt (its MD5 checksum does not match Content-MD5)"
        )


def _as_str(head: bytes) -> str:
    return head.decode("latin-1")


# -- miniCBF ------------------------------------------------------------------------------------

_MINI_CONVENTIONS = ("PILATUS", "SLS", "SSRL", "?", "XDS special", "GENERIC_MINI")


def _is_full_header(text: str) -> bool:
    return "_diffrn.id" in text and "_diffrn_source" in text


def _parse_mini_header(text: str) -> dict:
    """``# Key value`` lines of a miniCBF header as dxtbx reads them (key → rest of line)."""
    out: dict = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            continue
        body = line[1:]
        if len(body.split()) <= 2 and line.count(":") == 2:
            out["timestamp"] = body.strip()
            continue
        tokens = line.replace("=", "").replace(":", "").split()
        if len(tokens) >= 2:
            out[tokens[1]] = " ".join(tokens[2:])
    return out


def _first_float(value: str | None, what: str) -> float:
    if value is None:
        raise codec.CBFError(f"the header has no {what}")
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        raise codec.CBFError(f"the header's {what} {value!r} is not a number") from None


@register
class MiniCBF(ImageFile):
    """Dectris miniCBF (Pilatus, Eiger), plain or gzip/bzip2 compressed.

    The geometry comes from the ``# Key value`` header lines (``Pixel_size``,
    ``Detector_distance``, ``Beam_xy``, ``Wavelength``, ``Count_cutoff``, the
    sensor line) exactly as DIALS reads them; pixels from the byte-offset
    section.
    """

    format_name: ClassVar[str] = "miniCBF"
    #: Check each binary section's Content-MD5 (about 10 ms for a Pilatus 6M image).
    verify_md5: ClassVar[bool] = True

    @classmethod
    def understand(cls, path: str) -> bool:
        head, is_cbf = read_cbf_header(path)
        if not is_cbf:
            return False
        text = _as_str(head)
        if _is_full_header(text):
            return False
        for line in text.splitlines():
            if "_array_data.header_convention" in line and any(c in line for c in _MINI_CONVENTIONS):
                return True
            upper = line.upper()
            if line.startswith("#") and "DETECTOR" in upper and ("PILATUS" in upper or "EIGER" in upper):
                return True
        return False

    def __init__(self, path, reference_geometry=None):
        super().__init__(path, reference_geometry)
        try:
            head, _ = read_cbf_header(self.path)
            text, sections = codec.split_cbf(head, header_only=True)
            if not sections:
                raise codec.CBFError("no binary image section after the header (file truncated?)")
            self._section = sections[0]
            self._beam, self._detector = self._build_models(text, self._section)
        except codec.CBFError as exc:
            raise ImageFormatError(self.path, str(exc)) from None

    @property
    def n_frames(self) -> int:
        return 1

    def _models(self, frame: int):
        return self._beam, self._detector

    def _build_models(self, text: str, section: codec.BinarySection) -> tuple[Beam, Detector]:
        header = _parse_mini_header(text)
        is_eiger = "EIGER" in header.get("Detector", "").upper()
        wavelength = _first_float(header.get("Wavelength"), "Wavelength")
        distance = _first_float(header.get("Detector_distance"), "Detector_distance") * 1000.0
        beam_xy = header.get("Beam_xy")
        try:
            xy = beam_xy.replace("(", "").replace(")", "").replace(",", "").split()[:2]
            beam_x, beam_y = (float(v) for v in xy)
            pixel = header["Pixel_size"].replace("m", "").replace("x", "").split()[:2]
            px_x, px_y = (float(v) * 1000.0 for v in pixel)
        except (AttributeError, KeyError, ValueError):
            raise codec.CBFError(
                f"the header's Beam_xy {beam_xy!r} or Pixel_size {header.get('Pixel_size')!r} cannot be read"
            ) from None
        n_fast, n_slow = section.dims[0], section.dims[1]
        if n_fast <= 0 or n_slow <= 0:
            raise codec.CBFError("the binary section gives no image dimensions")

        material, thickness, sensor = "", 0.0, "SENSOR_UNKNOWN"
        for key, mat in (("Silicon", "Si"), ("CdTe", "CdTe")):
            if key in header:
                try:
                    thickness = float(header[key].split()[2]) * 1000.0
                except (ValueError, IndexError):
                    raise codec.CBFError(f"the header's sensor line {header[key]!r} cannot be read") from None
                material, sensor = mat, "SENSOR_PAD"
                break
        else:
            if is_eiger:
                material, thickness, sensor = "Si", 0.450, "SENSOR_PAD"
            elif "CCD" in header:
                sensor = "SENSOR_CCD"

        if "Count_cutoff" in header:
            overload = _first_float(header["Count_cutoff"], "Count_cutoff")
        elif is_eiger:
            overload = 1.0e8
        else:
            raise codec.CBFError("the header has no Count_cutoff")
        mu = attenuation_mu(material, wavelength) if material else 0.0
        if is_eiger:
            mask = _eiger_mask(n_fast, n_slow)
            identifier = header.get("Detector", "")
        else:
            mask = _gap_mask(_PILATUS, n_fast, n_slow)  # () unless the size is a Pilatus module grid
            identifier = ""

        fast = np.array([1.0, 0.0, 0.0])
        slow = np.array([0.0, -1.0, 0.0])
        origin = np.array([0.0, 0.0, -distance]) - beam_x * px_x * fast - beam_y * px_y * slow
        frame = Frame(fast, slow, origin)
        panel = Panel(
            name="Panel",
            frame=frame,
            local_frame=frame,
            pixel_size=(px_x, px_y),
            image_size=(n_fast, n_slow),
            trusted_range=(-1.0, float(overload)),
            thickness=thickness,
            material=material,
            mu=mu,
            type=sensor,
            mask=mask,
            identifier=identifier,
            px_mm_strategy={"type": "ParallaxCorrectedPxMmStrategy" if material else "SimplePxMmStrategy"},
        )
        beam = Beam(
            wavelength=wavelength,
            flux=_optional_float(header.get("Flux"), 0.0),
            transmission=_optional_float(header.get("Transmission"), 1.0),
        )
        return beam, Detector.flat([panel])

    def read_frame(self, frame: int = 0) -> tuple:
        self.check_frame(frame)
        try:
            buf = codec.read_all(self.path)
            _, sections = codec.split_cbf(buf)
            if not sections:
                raise codec.CBFError("the file has no binary image section")
            if self.verify_md5:
                _check_md5(buf, sections[0])
            data = codec.decode_section(buf, sections[0])
        except codec.CBFError as exc:
            raise ImageFormatError(self.path, str(exc), None) from None
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        return (data,)


def _optional_float(value: str | None, default: float) -> float:
    try:
        return float(value.split()[0])
    except (AttributeError, IndexError, ValueError):
        return default


# -- full imgCIF CBF ------------------------------------------------------------------------


def _is_null(value: str | None) -> bool:
    return value is None or value in (".", "?")


class _Cif:
    """The categories of one CIF data block as lists of row dicts (lower-case keys)."""

    def __init__(self, text: str):
        import gemmi

        try:
            doc = gemmi.cif.read_string(text)
        except (RuntimeError, ValueError) as exc:
            raise codec.CBFError(f"the CIF header cannot be parsed ({exc})") from None
        if len(doc) == 0:
            raise codec.CBFError("the CIF header has no data block")
        self._block = doc[0]
        self._cache: dict = {}

    def rows(self, category: str) -> list[dict]:
        """Rows of ``_category.*`` (loop or key-value pairs); [] when absent."""
        hit = self._cache.get(category)
        if hit is not None:
            return hit
        import gemmi

        table = self._block.find_mmcif_category(f"_{category}.")
        out: list[dict] = []
        if len(table) > 0:
            tags = [t.split(".", 1)[1].lower() for t in table.tags]
            for row in table:
                out.append({tag: _cif_value(row[i], gemmi) for i, tag in enumerate(tags)})
        self._cache[category] = out
        return out

    def has_column(self, category: str, column: str) -> bool:
        rows = self.rows(category)
        return bool(rows) and column in rows[0]


def _cif_value(raw: str, gemmi) -> str | None:
    if raw in (".", "?"):
        return None
    return gemmi.cif.as_string(raw)


def _float(value: str | None, what: str, default: float | None = None) -> float:
    if _is_null(value):
        if default is None:
            raise codec.CBFError(f"{what} is missing")
        return default
    try:
        return float(value)
    except ValueError:
        raise codec.CBFError(f"{what} is {value!r}, not a number") from None


@dataclass(frozen=True)
class _Axis:
    id: str
    type: str
    depends_on: str | None
    vector: np.ndarray
    offset: np.ndarray
    component: str | None
    angle: float
    angle_increment: float
    displacement: float
    displacement_increment: float

    def matrix(self, setting: float) -> np.ndarray:
        """4×4 homogeneous transform of this axis at ``setting`` (degrees or mm)."""
        m = np.eye(4)
        if self.type == "rotation":
            m[:3, :3] = _rotation(self.vector, setting)
            m[:3, 3] = self.offset
        else:
            m[:3, 3] = self.offset + self.vector * setting
        return m

    def setting(self, with_increment: bool) -> float:
        if self.type == "rotation":
            return self.angle + (self.angle_increment if with_increment else 0.0)
        return self.displacement + (self.displacement_increment if with_increment else 0.0)


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix about a unit axis by an angle in degrees."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    x, y, z = axis
    return np.array(
        [
            [c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
            [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
            [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)],
        ]
    )


def _frame_of(m: np.ndarray) -> Frame:
    """The planar frame (x and y images, origin) of a homogeneous transform."""
    return Frame(m[:3, 0], m[:3, 1], m[:3, 3])


@dataclass(frozen=True)
class _PanelSpec:
    """One panel of a full CBF: its array, section and surface axes."""

    name: str
    array_id: str
    fast_axis: str
    slow_axis: str
    fast_displacement: float
    slow_displacement: float
    fast_increment: float
    slow_increment: float
    size: tuple  # (n_fast, n_slow)
    section: tuple | None  # slices per index (1-based index -> (start0, stop)) or None


def _read_axes(cif: _Cif) -> dict[str, _Axis]:
    frame_axis: dict = {}
    for row in cif.rows("diffrn_scan_frame_axis"):
        if row.get("axis_id"):
            frame_axis.setdefault(row["axis_id"], row)
    scan_axis: dict = {}
    for row in cif.rows("diffrn_scan_axis"):
        if row.get("axis_id"):
            scan_axis.setdefault(row["axis_id"], row)
    axes: dict[str, _Axis] = {}
    for row in cif.rows("axis"):
        axis_id = row.get("id")
        if not axis_id:
            continue
        what = f"axis {axis_id}"
        vector = np.array([_float(row.get(f"vector[{k}]"), f"{what} vector[{k}]", 0.0) for k in (1, 2, 3)])
        norm = float(np.linalg.norm(vector))
        offset = np.array([_float(row.get(f"offset[{k}]"), f"{what} offset[{k}]", 0.0) for k in (1, 2, 3)])
        fr = frame_axis.get(axis_id, {})
        sc = scan_axis.get(axis_id, {})
        angle_start = _float(sc.get("angle_start"), f"{what} angle_start", 0.0)
        angle = _float(fr.get("angle"), f"{what} angle", angle_start)
        disp = _float(
            fr.get("displacement"),
            f"{what} displacement",
            _float(sc.get("displacement_start"), f"{what} displacement_start", 0.0),
        )
        axes[axis_id] = _Axis(
            id=axis_id,
            type=(row.get("type") or "general").lower(),
            depends_on=row.get("depends_on"),
            vector=vector / norm if norm > 0 else vector,
            offset=offset,
            component=row.get("equipment_component"),
            angle=angle,
            angle_increment=_float(sc.get("angle_increment"), f"{what} angle_increment", 0.0),
            displacement=disp,
            displacement_increment=_float(
                sc.get("displacement_increment"), f"{what} displacement_increment", 0.0
            ),
        )
    return axes


def _panel_specs(cif: _Cif) -> list[_PanelSpec]:
    """The panels of a full CBF, in DIALS's order (array_structure_list order)."""
    rows = cif.rows("array_structure_list")
    if not rows:
        raise codec.CBFError("the CIF header has no array_structure_list (no detector geometry)")
    has_sections = any(not _is_null(r.get("array_section_id")) for r in rows)
    key = "array_section_id" if has_sections else "array_id"
    names: list[str] = []
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        name = r.get(key)
        if _is_null(name):
            continue
        if name not in by_name:
            names.append(name)
            by_name[name] = []
        by_name[name].append(r)
    axis_sets: dict[str, dict] = {}
    for r in cif.rows("array_structure_list_axis"):
        if r.get("axis_set_id"):
            axis_sets.setdefault(r["axis_set_id"], r)
    section_rows: dict[str, dict] = {}
    for r in cif.rows("array_structure_list_section"):
        if r.get("id"):
            index = int(_float(r.get("index"), "array_structure_list_section.index"))
            section_rows.setdefault(r["id"], {})[index] = r

    specs = []
    for name in names:
        surface: dict[int, dict] = {}
        for r in by_name[name]:
            if _is_null(r.get("axis_set_id")):
                continue
            prec = int(_float(r.get("precedence"), f"array_structure_list precedence of {name}"))
            surface[prec] = r
        if 1 not in surface or 2 not in surface:
            raise codec.CBFError(f"array {name} has no fast and slow axis sets (precedence 1 and 2)")
        axis_info = []
        for prec in (1, 2):
            r = surface[prec]
            if (r.get("direction") or "increasing").lower() != "increasing":
                raise codec.CBFError(f"array {name}: 'decreasing' index directions are not supported")
            aset = axis_sets.get(r["axis_set_id"])
            if aset is None:
                raise codec.CBFError(
                    f"axis set {r['axis_set_id']} of array {name} is not in array_structure_list_axis"
                )
            what = f"array_structure_list_axis {r['axis_set_id']}"
            inc = _float(aset.get("displacement_increment"), f"{what} displacement_increment")
            if inc == 0:
                raise codec.CBFError(f"{what} has a zero displacement_increment (pixel size)")
            axis_info.append(
                (
                    aset.get("axis_id") or r["axis_set_id"],
                    _float(aset.get("displacement"), f"{what} displacement", 0.0),
                    inc,
                    int(_float(r.get("dimension"), f"array_structure_list dimension of {name}")),
                    r.get("index"),
                )
            )
        array_id = by_name[name][0].get("array_id") or name
        section = None
        size = [axis_info[0][3], axis_info[1][3]]
        if has_sections:
            sec = section_rows.get(name)
            if sec is None:
                raise codec.CBFError(f"section {name} is not in array_structure_list_section")
            section = {}
            for index, r in sec.items():
                start = int(_float(r.get("start"), f"section {name} start"))
                end = int(_float(r.get("end"), f"section {name} end"))
                section[index] = (start - 1, end)
            for k, info in enumerate(axis_info):
                idx = int(_float(info[4], f"array_structure_list index of {name}"))
                if idx in section:
                    size[k] = section[idx][1] - section[idx][0]
        specs.append(
            _PanelSpec(
                name=name,
                array_id=array_id,
                fast_axis=axis_info[0][0],
                slow_axis=axis_info[1][0],
                fast_displacement=axis_info[0][1],
                slow_displacement=axis_info[1][1],
                fast_increment=axis_info[0][2],
                slow_increment=axis_info[1][2],
                size=(size[0], size[1]),
                section=None if section is None else tuple(sorted(section.items())),
            )
        )
    return specs


class _AxisTree:
    """Transforms of axis chains (imgCIF ``depends_on`` trees)."""

    def __init__(self, axes: dict[str, _Axis], with_increment: bool):
        self.axes = axes
        self.with_increment = with_increment

    def axis(self, axis_id: str) -> _Axis:
        try:
            return self.axes[axis_id]
        except KeyError:
            raise codec.CBFError(f"axis {axis_id} is not defined in the axis category") from None

    def parent(self, axis_id: str) -> str | None:
        dep = self.axis(axis_id).depends_on
        return None if _is_null(dep) else dep

    def matrix(self, axis_id: str, setting: float | None = None) -> np.ndarray:
        ax = self.axis(axis_id)
        if ax.type not in ("rotation", "translation"):
            raise codec.CBFError(f"axis {axis_id} of type {ax.type!r} cannot position a detector")
        return ax.matrix(ax.setting(self.with_increment) if setting is None else setting)

    def chain_to_root(self, axis_id: str, start: np.ndarray) -> np.ndarray:
        """``T(root)···T(parent of axis_id) · start``."""
        m = start
        seen = {axis_id}
        parent = self.parent(axis_id)
        while parent is not None:
            if parent in seen:
                raise codec.CBFError(f"axis {parent} depends on itself (circular depends_on)")
            seen.add(parent)
            m = self.matrix(parent) @ m
            parent = self.parent(parent)
        return m

    def cumulative(self, axis_id: str, start: np.ndarray | None = None) -> tuple[str | None, np.ndarray]:
        """Compose ``axis_id`` with its ancestors of the same equipment component.

        Returns the first ancestor of another component (None at the top) and
        the composed transform, as dxtbx's ``_get_cumulative_change_of_basis``.
        """
        m = self.matrix(axis_id) if start is None else start
        current = axis_id
        seen = {axis_id}
        while True:
            parent = self.parent(current)
            if parent is None:
                return None, m
            if parent in seen:
                raise codec.CBFError(f"axis {parent} depends on itself (circular depends_on)")
            seen.add(parent)
            if self.axis(parent).component != self.axis(current).component:
                return parent, m
            m = self.matrix(parent) @ m
            current = parent


def _surface_transform(tree: _AxisTree, spec: _PanelSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transform of the surface axes at pixel (0, 0) and the two local axis directions."""
    fast = tree.axis(spec.fast_axis)
    slow = tree.axis(spec.slow_axis)
    for ax in (fast, slow):
        if ax.type != "translation":
            raise codec.CBFError(f"surface axis {ax.id} of {spec.name} is not a translation axis")
    if tree.parent(spec.fast_axis) != spec.slow_axis:
        raise codec.CBFError(
            f"fast axis {spec.fast_axis} of {spec.name} does not depend on its slow axis {spec.slow_axis}"
        )
    m = tree.matrix(spec.slow_axis, spec.slow_displacement)
    m = m @ tree.matrix(spec.fast_axis, spec.fast_displacement)
    f = fast.vector * math.copysign(1.0, spec.fast_increment)
    s = slow.vector * math.copysign(1.0, spec.slow_increment)
    return m, f, s


def _panel_frame(m: np.ndarray, f: np.ndarray, s: np.ndarray) -> Frame:
    rot = m[:3, :3]
    return Frame(rot @ f, rot @ s, m[:3, 3])


def _flat_geometry(tree: _AxisTree, specs: list[_PanelSpec]) -> tuple[list[Frame], None]:
    frames = []
    for spec in specs:
        m, f, s = _surface_transform(tree, spec)
        frames.append(_panel_frame(tree.chain_to_root(spec.slow_axis, m), f, s))
    return frames, None


def _hierarchy_geometry(tree: _AxisTree, specs: list[_PanelSpec]):
    """Local panel frames and the group tree, grouped by equipment component (dxtbx's way).

    Returns
    -------
    local_frames : list of Frame
        Each panel's frame relative to its group.
    groups : dict
        name -> {"local": Frame, "parent": name or None, "children": [name or panel index]}
        in insertion order; exactly one has parent None (the root).
    """
    groups: dict[str, dict] = {}
    root: list[str] = []

    def add_group(name: str) -> None:
        if name in groups:
            return
        parent, m = tree.cumulative(name)
        groups[name] = {"local": _frame_of(m), "parent": parent, "children": []}
        if parent is None:
            if root:
                raise codec.CBFError(f"the detector has two top-level axis chains ({root[0]} and {name})")
            root.append(name)
        else:
            add_group(parent)
            groups[parent]["children"].append(name)

    local_frames = []
    for index, spec in enumerate(specs):
        m, f, s = _surface_transform(tree, spec)
        parent, m = tree.cumulative(spec.slow_axis, m)
        if parent is None:
            raise codec.CBFError(
                f"panel {spec.name} shares its equipment component with the top of its axis chain"
            )
        add_group(parent)
        groups[parent]["children"].append(index)
        local_frames.append(_panel_frame(m, f, s))
    return local_frames, groups


def _build_detector(panels: list[Panel], groups: dict | None) -> Detector:
    """A Detector from panels (with local frames set) and a group table, composing global frames."""
    if groups is None:
        return Detector.flat(panels)
    out = list(panels)

    def build(name: str, parent: Frame) -> Group:
        node = groups[name]
        frame = parent.compose(node["local"])
        kids = []
        for child in node["children"]:
            if isinstance(child, str):
                kids.append(build(child, frame))
            else:
                p = out[child]
                out[child] = p.with_frames(frame.compose(p.local_frame), p.local_frame)
                kids.append(int(child))
        return Group(name=name, frame=frame, local_frame=node["local"], children=tuple(kids))

    root_name = next(n for n, g in groups.items() if g["parent"] is None)
    root = build(root_name, Frame.identity())
    return Detector(tuple(out), root)


def _array_intensities(cif: _Cif) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in cif.rows("array_intensities"):
        out.setdefault(r.get("array_id") or "", r)
    return out


def _wavelength(cif: _Cif) -> float:
    rows = cif.rows("diffrn_radiation_wavelength")
    if not rows:
        raise codec.CBFError("the CIF header gives no wavelength (diffrn_radiation_wavelength)")
    wanted = None
    radiation = cif.rows("diffrn_radiation")
    if radiation:
        wanted = radiation[0].get("wavelength_id")
    row = next((r for r in rows if wanted is not None and r.get("id") == wanted), rows[0])
    value = _float(row.get("wavelength"), "diffrn_radiation_wavelength.wavelength")
    if not value > 0:
        raise codec.CBFError(f"the wavelength {value} Å is not positive")
    return value


#: Header lines that vary from shot to shot without changing the detector or
#: the beam direction (block name, time stamp, wavelength).  The rest of the
#: header text is the key under which a detector is reused, so shots of one
#: run share one Detector object (fewer parses, and cheap "same detector" tests).
_VOLATILE_LINES = re.compile(
    r"^(?:data_|_diffrn_scan_frame\.date\s|_diffrn_radiation_wavelength\.wavelength\s)[^\n]*$",
    re.MULTILINE,
)
_GEOMETRY_CACHE: dict = {}
_GEOMETRY_CACHE_SIZE = 8


def _geometry_key(text: str) -> bytes:
    return hashlib.sha1(_VOLATILE_LINES.sub("", text).encode("latin-1")).digest()


@register
class FullCBF(ImageFile):
    """Full imgCIF CBF with an axis hierarchy (single or multi-panel).

    Panels are the array sections (``array_structure_list_section``) or, where
    there are none, the arrays; they are named, ordered and grouped as DIALS
    does (``ARRAY_D0Q0S0A0`` … for a CSPAD; ``Panel`` for a single-array file).
    """

    format_name: ClassVar[str] = "full CBF"
    verify_md5: ClassVar[bool] = True

    @classmethod
    def understand(cls, path: str) -> bool:
        head, is_cbf = read_cbf_header(path)
        if not is_cbf:
            return False
        text = _as_str(head)
        return "_diffrn.id" in text or "_diffrn_source" in text

    def __init__(self, path, reference_geometry=None):
        super().__init__(path, reference_geometry)
        try:
            head, _ = read_cbf_header(self.path)
            text, sections = codec.split_cbf(head, header_only=True)
            if not sections:
                raise codec.CBFError("no binary data section after the header (file truncated?)")
            cif = _Cif(text)
            key = _geometry_key(text)
            cached = _GEOMETRY_CACHE.get(key)
            if cached is None:
                self._specs = _panel_specs(cif)
                beam, self._detector = self._build_models(cif, text)
                if self._detector[0].mu == 0.0:  # no wavelength-dependent panel fields
                    if len(_GEOMETRY_CACHE) >= _GEOMETRY_CACHE_SIZE:
                        _GEOMETRY_CACHE.clear()
                    _GEOMETRY_CACHE[key] = (self._specs, self._detector, beam)
            else:
                self._specs, self._detector, beam = cached
            self._beam = replace(beam, wavelength=_wavelength(cif))
        except codec.CBFError as exc:
            raise ImageFormatError(self.path, str(exc)) from None

    @property
    def n_frames(self) -> int:
        return 1

    def _models(self, frame: int):
        return self._beam, self._detector

    def _build_models(self, cif: _Cif, text: str) -> tuple[Beam, Detector]:
        axes = _read_axes(cif)
        specs = self._specs
        multi = len(specs) > 1
        hierarchical = multi and cif.has_column("axis", "equipment_component")
        tree = _AxisTree(axes, with_increment=hierarchical)
        if hierarchical:
            frames, groups = _hierarchy_geometry(tree, specs)
        else:
            frames, groups = _flat_geometry(tree, specs)

        wavelength = _wavelength(cif)
        pilatus = re.search(r"_array_data\.header_convention\s+\S*PILATUS", text) is not None
        detector_type = ""
        det_rows = cif.rows("diffrn_detector")
        if det_rows:
            detector_type = (det_rows[0].get("type") or "").strip()
        cspad = detector_type.upper() == "CS PAD"

        intensities = _array_intensities(cif)
        material, thickness, mu, identifier = "", 0.0, 0.0, ""
        if pilatus:
            m = re.search(r"^#\s*(\S+)\ssensor, thickness\s*([0-9.eE+-]+)\s*m\s*$", text, re.MULTILINE)
            if m:
                thickness = float(m.group(2)) * 1000.0
                material = "Si" if m.group(1) == "Silicon" else m.group(1)
                mu = attenuation_mu(material, wavelength)
            m = re.search(r"^#\s*Detector:\s+(.*?)\s*$", text, re.MULTILINE)
            if m:
                identifier = m.group(1)

        panels = []
        first_intensity = next(iter(intensities.values()), {})
        for spec, frame in zip(specs, frames):
            row = intensities.get(spec.array_id, first_intensity if not multi else {})
            if row and not _is_null(row.get("overload")) and not _is_null(row.get("undefined_value")):
                trusted = (
                    _float(row.get("undefined_value"), f"undefined_value of array {spec.array_id}"),
                    _float(row.get("overload"), f"array_intensities.overload of {spec.array_id}"),
                )
            else:
                trusted = (0.0, 0.0)
            gain = _float(row.get("gain"), "array_intensities.gain", 1.0) if row else 1.0
            if multi:
                name, ptype = spec.name, ""
                strategy = "ParallaxCorrectedPxMmStrategy" if cspad else "SimplePxMmStrategy"
            else:
                name, ptype = "Panel", ("SENSOR_PAD" if pilatus else "SENSOR_UNKNOWN")
                strategy = "ParallaxCorrectedPxMmStrategy" if material else "SimplePxMmStrategy"
            n_fast, n_slow = spec.size
            mask = _gap_mask(_PILATUS, n_fast, n_slow) if (pilatus and not multi) else ()
            panels.append(
                Panel(
                    name=name,
                    frame=frame,
                    local_frame=frame,
                    pixel_size=(abs(spec.fast_increment), abs(spec.slow_increment)),
                    image_size=(n_fast, n_slow),
                    trusted_range=trusted,
                    thickness=thickness,
                    material=material,
                    mu=mu,
                    gain=gain,
                    type=ptype,
                    mask=mask,
                    identifier=identifier,
                    px_mm_strategy={"type": strategy},
                )
            )
        detector = _build_detector(panels, groups)
        return self._beam_model(cif, wavelength, pilatus), detector

    @staticmethod
    def _beam_model(cif: _Cif, wavelength: float, pilatus: bool) -> Beam:
        direction = np.array([0.0, 0.0, 1.0])
        for r in cif.rows("axis"):
            if (r.get("equipment") or "").lower() == "source":
                vec = np.array([_float(r.get(f"vector[{k}]"), "source axis vector", 0.0) for k in (1, 2, 3)])
                if np.linalg.norm(vec) > 0:
                    direction = vec
                break
        fraction, normal = 0.999, (0.0, 1.0, 0.0)
        radiation = cif.rows("diffrn_radiation")
        if radiation and not _is_null(radiation[0].get("polarizn_source_ratio")):
            try:
                fraction = float(radiation[0]["polarizn_source_ratio"])
                angle = math.radians(float(radiation[0].get("polarizn_source_norm") or 0.0))
                normal = (math.sin(angle), math.cos(angle), 0.0)
            except ValueError:
                fraction, normal = 0.999, (0.0, 1.0, 0.0)
        if pilatus:
            fraction = 0.999
        return Beam(
            wavelength=wavelength,
            direction=direction,
            polarization_normal=normal,
            polarization_fraction=fraction,
        )

    def read_frame(self, frame: int = 0) -> tuple:
        self.check_frame(frame)
        try:
            buf = codec.read_all(self.path)
            text, sections = codec.split_cbf(buf)
            if not sections:
                raise codec.CBFError("the file has no binary image sections")
            arrays = self._arrays_by_id(text, buf, sections)
            out = []
            for spec in self._specs:
                data = arrays.get(spec.array_id)
                if data is None:
                    raise codec.CBFError(f"no binary data for array {spec.array_id}")
                out.append(_cut_panel(data, spec))
        except codec.CBFError as exc:
            raise ImageFormatError(self.path, str(exc), None) from None
        return tuple(out)

    def _arrays_by_id(self, text: str, buf: bytes, sections: list) -> dict[str, np.ndarray]:
        cif = _Cif(text)
        by_binary = {s.binary_id: s for s in sections}
        array_of_binary = {}
        for row in cif.rows("diffrn_data_frame"):
            if row.get("array_id") and not _is_null(row.get("binary_id")):
                array_of_binary.setdefault(row["binary_id"], row["array_id"])
        spec_arrays = {spec.array_id for spec in self._specs}
        arrays: dict[str, np.ndarray] = {}
        rows = cif.rows("array_data")
        for k, row in enumerate(rows):
            placeholder = re.fullmatch(r"@@BINARY(\d+)@@", row.get("data") or "")
            if placeholder is not None:
                section = sections[int(placeholder.group(1))]
            else:
                binary_id = int(_float(row.get("binary_id"), "array_data.binary_id", k + 1))
                section = by_binary.get(binary_id)
            array_id = row.get("array_id")
            if array_id is None:  # a single-array file may leave it out
                binary_id = row.get("binary_id") or (str(section.binary_id) if section else None)
                array_id = array_of_binary.get(binary_id)
                if array_id is None and len(spec_arrays) == 1 and len(rows) == 1:
                    array_id = next(iter(spec_arrays))
            if array_id not in spec_arrays:
                continue
            if section is None:
                raise codec.CBFError(f"array {array_id} has no binary section")
            if self.verify_md5:
                _check_md5(buf, section)
            arrays[array_id] = codec.decode_section(buf, section)
        if not rows and len(self._specs) == 1:
            section = sections[0]
            if self.verify_md5:
                _check_md5(buf, section)
            arrays[self._specs[0].array_id] = codec.decode_section(buf, section)
        return arrays


def _cut_panel(data: np.ndarray, spec: _PanelSpec) -> np.ndarray:
    """The (n_slow, n_fast) pixels of one panel from its (possibly 3-D) array."""
    n_fast, n_slow = spec.size
    if spec.section is not None:
        section = dict(spec.section)
        ndim = data.ndim
        slices = []
        for axis in range(ndim):
            index = ndim - axis  # numpy axis 0 is the slowest = highest CBF index
            lo, hi = section.get(index, (0, data.shape[axis]))
            if not 0 <= lo < hi <= data.shape[axis]:
                raise codec.CBFError(
                    f"section {spec.name} index {index} range {lo + 1}..{hi} is outside the array "
                    f"({data.shape[axis]} elements)"
                )
            slices.append(slice(lo, hi))
        data = data[tuple(slices)]
    if data.size != n_fast * n_slow:
        raise codec.CBFError(
            f"panel {spec.name}: {data.size} pixels do not fill its {n_fast} x {n_slow} "
            "(fast x slow) geometry"
        )
    return np.ascontiguousarray(data.reshape(n_slow, n_fast))
