"""CrystFEL stream files (format 2.3): a writer for processing results and a reader.

A stream is a header (format line, program, command line, the detector
geometry as a CrystFEL ``.geom`` and the target unit cell) followed by one
chunk per shot: image file and event, hit and indexing flags, photon energy,
the peak list, and for each crystal its cell, reciprocal basis and the
reflections measured after indexing.

Conventions, as CrystFEL writes them (and as CrystFEL's tools and
reciprocalspaceship's ``read_crystfel`` read them):

* Lengths in nm, reciprocal lengths in nm⁻¹ (stillshot works in Å: ×0.1, ×10).
* ``astar``/``bstar``/``cstar`` are the columns of A = U·B in CrystFEL's lab
  frame, in which the beam travels along +z: (x, y, z)_CrystFEL =
  (-x, y, -z)_DIALS (:mod:`stillshot.io.crystfel_geom`).
* Peak and reflection positions (``fs/px``, ``ss/px``) are in the pixel
  coordinates of the data block (the panel's ``min_fs``/``min_ss`` added), with
  (0, 0) the corner of the first pixel, as in DIALS; the panel names are those
  of the geometry in the header.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Sequence

import gemmi
import numpy as np

from stillshot.models import Beam, Crystal, Detector
from stillshot.table import ReflectionTable

__all__ = [
    "FORMAT_LINE",
    "StreamChunk",
    "StreamCrystal",
    "StreamWriter",
    "crystfel_cell_block",
    "crystfel_lattice",
    "read_stream",
    "reciprocal_basis_nm",
]

FORMAT_LINE = "CrystFEL stream format 2.3"
#: DIALS lab vector -> CrystFEL lab vector (a 180° rotation about y).
DIALS_TO_CRYSTFEL = np.diag([-1.0, 1.0, -1.0])
#: eV·Å (photon energy = HC / λ).
HC_EV_ANG = 12398.419843320026

_REFL_HEADER = "   h    k    l          I   sigma(I)       peak background  fs/px  ss/px panel"
_PEAK_HEADER = "  fs/px   ss/px (1/d)/nm^-1   Intensity  Panel"


def crystfel_lattice(sg: gemmi.SpaceGroup) -> tuple[str, str, str]:
    """CrystFEL's ``lattice_type``, ``centering`` and ``unique_axis`` of a space group.

    Rhombohedral groups in hexagonal axes are ``hexagonal`` with centering ``H``
    (CrystFEL's name), in rhombohedral axes ``rhombohedral`` with ``R``.
    Monoclinic groups are taken with unique axis b (the standard setting).
    """
    system = sg.crystal_system_str()
    centring = sg.centring_type()
    if system in ("trigonal", "hexagonal"):
        if sg.ext == "R":  # rhombohedral axes (gemmi calls the cell primitive)
            return "rhombohedral", "R", "*"
        if centring == "R":
            return "hexagonal", "H", "c"
        return "hexagonal", "P", "c"
    unique = {"monoclinic": "b", "tetragonal": "c"}.get(system, "*")
    return system, centring, unique


def crystfel_cell_block(cell: Sequence[float], sg: gemmi.SpaceGroup) -> str:
    """A CrystFEL unit-cell file (``.cell``) for a target cell (Å, degrees)."""
    lattice, centring, unique = crystfel_lattice(sg)
    a, b, c, al, be, ga = (float(v) for v in cell)
    lines = ["CrystFEL unit cell file version 1.0", "", f"lattice_type = {lattice}"]
    if unique != "*":
        lines.append(f"unique_axis = {unique}")
    lines += [f"centering = {centring}", f"a = {a:.2f} A", f"b = {b:.2f} A", f"c = {c:.2f} A",
              f"al = {al:.2f} deg", f"be = {be:.2f} deg", f"ga = {ga:.2f} deg"]
    return "\n".join(lines)


def reciprocal_basis_nm(A: np.ndarray) -> np.ndarray:
    """Rows a*, b*, c* in nm⁻¹ in CrystFEL's lab frame, from a DIALS A (1/Å, columns a*, b*, c*)."""
    return (DIALS_TO_CRYSTFEL @ np.asarray(A, dtype=np.float64)).T * 10.0


@dataclass
class StreamCrystal:
    """One crystal of a chunk.

    Attributes
    ----------
    crystal : Crystal
        The crystal model (A in 1/Å, DIALS frame).
    reflections : ReflectionTable or None
        ``miller_index``, intensities (``intensity.sum.value``/``.variance``),
        ``background.mean``, positions (``xyzcal.px`` or ``xyzobs.px.value``)
        and ``panel``; rows flagged as failed integrations are left out.
    """

    crystal: Crystal
    reflections: ReflectionTable | None = None


@dataclass
class StreamChunk:
    """One shot of a stream (what :func:`read_stream` returns; the writer takes keywords).

    Attributes
    ----------
    filename : str
    event : str or None
        CrystFEL event ID (``//N`` for frame N of a container file).
    serial : int
    photon_energy_ev : float
    hit : bool
    indexed_by : str
    peaks : ndarray, shape (N, 4)
        fs/px, ss/px, 1/d (nm⁻¹), intensity.
    peak_panels : list of str
    crystals : list of dict
        ``cell`` (nm, deg), ``astar``/``bstar``/``cstar`` (nm⁻¹), ``lattice_type``,
        ``centering``, ``unique_axis``, ``reflections`` (ndarray (M, 9): h, k, l, I,
        σ(I), peak, background, fs/px, ss/px), ``panels`` (list of str).
    fields : dict
        Every other ``key = value`` line of the chunk.
    """

    filename: str
    event: str | None
    serial: int
    photon_energy_ev: float
    hit: bool
    indexed_by: str
    peaks: np.ndarray
    peak_panels: list
    crystals: list = field(default_factory=list)
    fields: dict = field(default_factory=dict)


def _geometry_text(detector: Detector, wavelength: float | None) -> str | None:
    from stillshot.io.crystfel_geom import write_geom

    fd, tmp = tempfile.mkstemp(suffix=".geom")
    os.close(fd)
    try:
        write_geom(detector, tmp, wavelength=wavelength, header="written by stillshot for its results.stream")
        with open(tmp) as fh:
            return fh.read().rstrip("\n")
    except (ValueError, KeyError, TypeError):
        return None
    finally:
        os.remove(tmp)


def panel_names(detector: Detector) -> list[str]:
    """The panel names :func:`stillshot.io.crystfel_geom.write_geom` gives the detector's panels."""
    from stillshot.io.crystfel_geom import _safe_name

    used: set = set()
    return [_safe_name(p.name, used, f"p{i}") for i, p in enumerate(detector)]


class _Layout:
    """Panel names and data-block offsets of one detector."""

    def __init__(self, detector: Detector):
        from stillshot.io.crystfel_geom import panel_slabs

        self.names = panel_names(detector)
        slabs = panel_slabs(detector)
        self.min_fs = np.array([s.min_fs for s in slabs], dtype=np.float64)
        self.min_ss = np.array([s.min_ss for s in slabs], dtype=np.float64)


class StreamWriter:
    """Writes a CrystFEL stream, chunk by chunk.

    Parameters
    ----------
    fh : text file
        Open for writing.

    Examples
    --------
    >>> with open("results.stream", "w") as fh:                  # doctest: +SKIP
    ...     w = StreamWriter(fh)
    ...     w.header(detector=det, wavelength=1.3, cell=cell, space_group=sg)
    ...     w.chunk(filename="a.cbf", beam=beam, detector=det, peaks=strong,
    ...             crystals=[StreamCrystal(crystal, integrated)])
    """

    def __init__(self, fh: IO[str]):
        self.fh = fh
        self.serial = 0
        self._layouts: dict[int, _Layout] = {}

    def header(self, *, detector: Detector | None = None, wavelength: float | None = None,
               cell: Sequence[float] | None = None, space_group: str | gemmi.SpaceGroup | None = None,
               program: str = "stillshot", command: str = "") -> None:
        """The stream header: format, program, command line, geometry and target cell."""
        out = [FORMAT_LINE, f"Generated by {program}", command or program]
        if detector is not None:
            geom = _geometry_text(detector, wavelength)
            if geom is not None:
                out += ["----- Begin geometry file -----", geom, "----- End geometry file -----"]
        if cell is not None:
            sg = space_group if isinstance(space_group, gemmi.SpaceGroup) else gemmi.SpaceGroup(space_group or "P1")
            out += ["----- Begin unit cell -----", crystfel_cell_block(cell, sg), "----- End unit cell -----"]
        self.fh.write("\n".join(out) + "\n")

    def _layout(self, detector: Detector) -> _Layout:
        lay = self._layouts.get(id(detector))
        if lay is None:
            if len(self._layouts) > 16:
                self._layouts.clear()
            lay = self._layouts[id(detector)] = _Layout(detector)
            lay.detector = detector  # keeps id() unique while cached
        return lay

    def chunk(self, *, filename: str, beam: Beam, detector: Detector, event: str | None = None,
              peaks: ReflectionTable | None = None, crystals: Sequence[StreamCrystal] = (),
              hit: bool | None = None, indexed_by: str = "none") -> None:
        """One shot.

        Parameters
        ----------
        filename : str
        beam, detector : Beam, Detector
        event : str, optional
            e.g. ``//3`` for frame 3 of a container file.
        peaks : ReflectionTable, optional
            Strong spots: ``panel``, ``xyzobs.px.value``, ``intensity.sum.value``.
        crystals : sequence of StreamCrystal
        hit : bool, optional
            Default: any peaks.
        indexed_by : str
            Method name ("none" for an unindexed shot).
        """
        self.serial += 1
        lay = self._layout(detector)
        npk = 0 if peaks is None else len(peaks)
        hit = bool(npk) if hit is None else bool(hit)
        s0 = beam.s0
        w = io.StringIO()
        w.write("----- Begin chunk -----\n")
        w.write(f"Image filename: {filename}\n")
        if event is not None:
            w.write(f"Event: {event}\n")
        w.write(f"Image serial number: {self.serial}\n")
        w.write(f"hit = {int(hit)}\n")
        w.write(f"indexed_by = {indexed_by if crystals else 'none'}\n")
        w.write(f"n_indexing_tries = {1 if hit else 0}\n")
        w.write(f"photon_energy_eV = {HC_EV_ANG / beam.wavelength:.6f}\n")
        w.write(f"beam_divergence = {beam.divergence:.2e} rad\n")
        w.write(f"beam_bandwidth = {max(beam.bandwidth, 1e-8):.2e} (fraction)\n")
        w.write(f"average_camera_length = {detector.distance() / 1000.0:.6f} m\n")
        w.write(f"num_peaks = {npk}\n")
        if npk:
            from stillshot.geometry import spots_to_rlp

            panel = np.asarray(peaks["panel"], dtype=np.int64)
            xy = np.asarray(peaks["xyzobs.px.value"], dtype=np.float64)[:, :2]
            inv_d = np.linalg.norm(spots_to_rlp(detector, beam, panel, xy), axis=1) * 10.0
            inten = (np.asarray(peaks["intensity.sum.value"], dtype=np.float64) if "intensity.sum.value" in peaks
                     else np.zeros(npk))
            w.write(f"peak_resolution = {inv_d.max():.6f} nm^-1 or {10.0 / inv_d.max():.6f} A\n")
            w.write("Peaks from peak search\n" + _PEAK_HEADER + "\n")
            fs = xy[:, 0] + lay.min_fs[panel]
            ss = xy[:, 1] + lay.min_ss[panel]
            for f, s, r, i, p in zip(fs, ss, inv_d, inten, panel):
                w.write(f"{f:7.2f} {s:7.2f} {r:10.2f}  {i:10.2f}   {lay.names[p]}\n")
            w.write("End of peak list\n")
        else:
            w.write("peak_resolution = 0.000000 nm^-1 or 0.000000 A\n")
            w.write("Peaks from peak search\n" + _PEAK_HEADER + "\nEnd of peak list\n")
        for sc in crystals:
            self._crystal(w, sc, lay, s0)
        w.write("----- End chunk -----\n")
        self.fh.write(w.getvalue())

    def _crystal(self, w, sc: StreamCrystal, lay: _Layout, s0) -> None:
        crystal = sc.crystal
        a, b, c, al, be, ga = crystal.cell_parameters
        star = reciprocal_basis_nm(crystal.A)
        lattice, centring, unique = crystfel_lattice(crystal.space_group)
        rows = _reflection_rows(sc.reflections, crystal)
        w.write("--- Begin crystal\n")
        w.write(f"Cell parameters {a / 10:.5f} {b / 10:.5f} {c / 10:.5f} nm, {al:.5f} {be:.5f} {ga:.5f} deg\n")
        for name, v in zip(("astar", "bstar", "cstar"), star):
            w.write(f"{name} = {v[0]:+.7f} {v[1]:+.7f} {v[2]:+.7f} nm^-1\n")
        w.write(f"lattice_type = {lattice}\ncentering = {centring}\nunique_axis = {unique}\n")
        if crystal.domain_size_ang:
            w.write(f"profile_radius = {10.0 / crystal.domain_size_ang:.5f} nm^-1\n")
        if rows is not None and len(rows["h"]):
            inv_d = np.linalg.norm(np.asarray(crystal.A) @ rows["h"].T.astype(np.float64), axis=0) * 10.0
            top = float(inv_d.max())
            w.write(f"diffraction_resolution_limit = {top:.2f} nm^-1 or {10.0 / top:.2f} A\n")
        n = 0 if rows is None else len(rows["h"])
        w.write(f"num_reflections = {n}\nnum_saturated_reflections = {0 if rows is None else rows['n_sat']}\n"
                "num_implausible_reflections = 0\n")
        w.write("Reflections measured after indexing\n" + _REFL_HEADER + "\n")
        if rows is not None:
            fs = rows["x"] + lay.min_fs[rows["panel"]]
            ss = rows["y"] + lay.min_ss[rows["panel"]]
            for (h, k, l), i, s, pk, bg, f, g, p in zip(rows["h"], rows["I"], rows["sig"], rows["peak"],
                                                       rows["bg"], fs, ss, rows["panel"]):
                w.write(f"{h:4d} {k:4d} {l:4d} {i:10.2f} {s:10.2f} {pk:10.2f} {bg:10.2f} {f:6.1f} {g:6.1f} "
                        f"{lay.names[p]}\n")
        w.write("End of reflections\n--- End crystal\n")


def _reflection_rows(table: ReflectionTable | None, crystal: Crystal) -> dict | None:
    """The columns of a crystal's reflection list, failed integrations left out."""
    if table is None or len(table) == 0 or "miller_index" not in table:
        return None
    from stillshot.table import Flags

    keep = np.ones(len(table), dtype=bool)
    flags = np.asarray(table["flags"], dtype=np.uint64) if "flags" in table else None
    if flags is not None and np.any(flags & np.uint64(int(Flags.integrated_sum))):
        keep = (flags & np.uint64(int(Flags.integrated_sum))) != 0
    if "xyzcal.px" in table:
        xy = np.asarray(table["xyzcal.px"], dtype=np.float64)[:, :2]
    else:
        xy = np.asarray(table["xyzobs.px.value"], dtype=np.float64)[:, :2]
    keep &= np.all(np.isfinite(xy), axis=1)
    sel = np.nonzero(keep)[0]
    n = len(table)
    inten = np.asarray(table["intensity.sum.value"], dtype=np.float64) if "intensity.sum.value" in table else np.zeros(n)
    var = (np.asarray(table["intensity.sum.variance"], dtype=np.float64) if "intensity.sum.variance" in table
           else np.zeros(n))
    bg = np.asarray(table["background.mean"], dtype=np.float64) if "background.mean" in table else np.zeros(n)
    n_sat = 0
    if flags is not None:
        n_sat = int(np.count_nonzero((flags[sel] & np.uint64(int(Flags.overloaded))) != 0))
    return {
        "h": np.asarray(table["miller_index"], dtype=np.int64)[sel].reshape(-1, 3),
        "I": np.nan_to_num(inten[sel]),
        "sig": np.sqrt(np.clip(np.nan_to_num(var[sel]), 0.0, None)),
        "peak": np.zeros(len(sel)),
        "bg": np.nan_to_num(bg[sel]),
        "x": xy[sel, 0],
        "y": xy[sel, 1],
        "panel": np.asarray(table["panel"], dtype=np.int64)[sel],
        "n_sat": n_sat,
    }


# -- reading ---------------------------------------------------------------------------------------

_KV = re.compile(r"^([A-Za-z_/ ]+?)\s*=\s*(.*)$")


def _floats(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?", text)]


def read_stream(path: str | os.PathLike) -> dict:
    """Read a CrystFEL stream (the parts this writer writes and CrystFEL's indexamajig writes).

    Returns
    -------
    dict
        ``format`` (the first line), ``geometry`` (text or None), ``cell``
        (text or None) and ``chunks`` (list of :class:`StreamChunk`).

    Raises
    ------
    ValueError
        For a file that is not a CrystFEL stream or has a malformed block.
    """
    with open(path) as fh:
        lines = fh.read().split("\n")
    if not lines or not lines[0].startswith("CrystFEL stream format"):
        raise ValueError(f"{path}: not a CrystFEL stream (first line {lines[0][:40]!r})")
    out = {"format": lines[0], "geometry": None, "cell": None, "chunks": []}
    i = 0
    n = len(lines)

    def block(start, end):
        nonlocal i
        j = lines.index(end, i + 1)
        text = "\n".join(lines[i + 1 : j])
        i = j + 1
        return text

    while i < n:
        line = lines[i]
        if line == "----- Begin geometry file -----":
            out["geometry"] = block(line, "----- End geometry file -----")
        elif line == "----- Begin unit cell -----":
            out["cell"] = block(line, "----- End unit cell -----")
        elif line == "----- Begin chunk -----":
            j = lines.index("----- End chunk -----", i + 1)
            out["chunks"].append(_parse_chunk(lines[i + 1 : j], path))
            i = j + 1
        else:
            i += 1
    return out


def _parse_chunk(lines: list[str], path) -> StreamChunk:
    fields: dict = {}
    filename, event, serial = "", None, 0
    peaks, peak_panels, crystals = [], [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Image filename:"):
            filename = line.split(":", 1)[1].strip()
        elif line.startswith("Event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("Image serial number:"):
            serial = int(line.split(":", 1)[1])
        elif line == "Peaks from peak search":
            i += 2
            while lines[i] != "End of peak list":
                parts = lines[i].split()
                peaks.append([float(v) for v in parts[:4]])
                peak_panels.append(parts[4])
                i += 1
        elif line == "--- Begin crystal":
            j = lines.index("--- End crystal", i)
            crystals.append(_parse_crystal(lines[i + 1 : j]))
            i = j
        else:
            m = _KV.match(line)
            if m:
                fields[m.group(1).strip()] = m.group(2).strip()
        i += 1
    if "photon_energy_eV" not in fields:
        raise ValueError(f"{path}: chunk of {filename} has no photon_energy_eV")
    return StreamChunk(filename, event, serial, float(fields["photon_energy_eV"].split()[0]),
                       fields.get("hit", "1").strip() == "1", fields.get("indexed_by", "none"),
                       np.array(peaks, dtype=np.float64).reshape(-1, 4), peak_panels, crystals, fields)


def _parse_crystal(lines: list[str]) -> dict:
    out: dict = {"reflections": np.zeros((0, 9)), "panels": []}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Cell parameters"):
            out["cell"] = _floats(line)
        elif line.startswith(("astar", "bstar", "cstar")):
            out[line[:5]] = np.array(_floats(line.split("=", 1)[1])[:3])
        elif line == "Reflections measured after indexing":
            i += 2
            rows, panels = [], []
            while lines[i] != "End of reflections":
                parts = lines[i].split()
                rows.append([float(v) for v in parts[:9]])
                panels.append(parts[9])
                i += 1
            out["reflections"] = np.array(rows, dtype=np.float64).reshape(-1, 9)
            out["panels"] = panels
        else:
            m = _KV.match(line)
            if m:
                out[m.group(1).strip()] = m.group(2).strip()
        i += 1
    return out
