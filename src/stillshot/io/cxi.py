"""CXI files (and other HDF5 files of stacked frames) with a reference geometry.

A CXI file (Cheetah, CrystFEL, psana converters) stores frames stacked in one
dataset, usually ``/entry_1/data_1/data`` of shape (n, ss, fs), with no
usable detector geometry: the geometry comes from ``input.reference_geometry``
(a CrystFEL ``.geom`` or a DIALS ``.expt``).

Layout
------
With a ``.geom`` reference each panel carries its CrystFEL layout (data path,
``dimN`` lines, ``min_fs``…``max_ss``; see :mod:`stillshot.io.crystfel_geom`)
and is cut out of the frame by it.  A detector from an ``.expt`` carries none:
panels are then stacked along ss in panel order (or placed by their
``raw_image_offset`` when those do not overlap) in the first of
``/entry_1/data_1/data``, ``/data/data``, ``/entry/data/data`` that exists.

Per-frame values
----------------
* Photon energy: when the ``.geom`` names a location (``photon_energy =
  /LCLS/photon_energy_eV``), the value there, per frame when it holds one per
  frame; else the ``.geom``'s number; else the CXI standard
  ``/entry_1/instrument_1/source_1/energy`` (J); otherwise opening a frame's
  models raises :class:`ImageFormatError`.
* Camera length: when the ``.geom`` names a location (``clen =
  /LCLS/detector_1/EncoderValue``), the detector (built at clen = 0) is moved
  to the value there, per frame.
* Gain: panels with ``adu_per_eV`` get ``adu_per_eV × photon energy`` (ADU per
  photon) per frame when the photon energy comes from the file.
* Masks: the ``.geom``'s mask datasets (``mask``/``mask_good``/``mask_bad`` or
  ``maskN_*``) give :meth:`CXIFile.trusted_mask`.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from stillshot.io.base import ImageFormatError, register
from stillshot.io.crystfel_geom import CXI_DATA_PATH, HC_EV_ANGSTROM, PanelSlab, default_slabs, panel_slabs, shift_clen
from stillshot.io.nexus import _ENERGY, HDF5ImageFile, is_hdf5, is_nxmx, open_hdf5
from stillshot.models import Beam, Detector

#: Where stacked frames are looked for when the reference geometry names no data path.
DATA_PATHS = (CXI_DATA_PATH, "/data/data", "/entry/data/data")

#: CXI standard location of the photon energy (J).
CXI_ENERGY_PATH = "/entry_1/instrument_1/source_1/energy"


@register
class CXIFile(HDF5ImageFile):
    """Stacked frames in an HDF5 file, cut into panels by a reference geometry.

    Parameters
    ----------
    path : str or PathLike
        The CXI/HDF5 file.
    reference_geometry : Detector
        Required: the detector (from a CrystFEL .geom, with its data layout,
        or from a DIALS .expt).
    """

    format_name = "CXI"
    readable_name = "CXI"
    needs_reference_geometry = True


    @classmethod
    def understand(cls, path: str) -> bool:
        """True for HDF5 files that are not NXmx and hold a dataset of 2 or more dimensions.

        An HDF5 file that HDF5 cannot open is accepted, so that opening it says why.
        """
        if not is_hdf5(path):
            return False
        try:
            fh = open_hdf5(path)
        except ImageFormatError:
            return True
        try:
            if is_nxmx(fh):
                return False
            if "cxi_version" in fh or any(p in fh for p in DATA_PATHS):
                return True
            found = []

            def visit(name, obj):
                if getattr(obj, "ndim", 0) >= 2:
                    found.append(name)
                    return True
                return None

            fh.visititems(visit)
            return bool(found)
        except (OSError, KeyError, ValueError):
            return True
        finally:
            fh.close()

    # -- layout ------------------------------------------------------------------------
    def _setup(self) -> None:
        det = self.reference_geometry
        infos = [p.extra.get("crystfel") if isinstance(p.extra.get("crystfel"), dict) else {} for p in det]
        self._infos = infos
        if all("min_fs" in i for i in infos):
            try:
                slabs = panel_slabs(det)
            except ValueError as exc:
                raise ImageFormatError(self.path, f"reference geometry: {exc}") from None
        else:
            data_path = next((p for p in DATA_PATHS if p in self._fh), None)
            if data_path is None:
                raise ImageFormatError(
                    self.path, f"no frames at {', '.join(DATA_PATHS)} (the reference geometry names no data path)"
                )
            ndim = self._fh[data_path].ndim
            dims = ("%", "ss", "fs") if ndim >= 3 else ("ss", "fs")
            slabs = default_slabs(det, data_path, dims)
        self.slabs: tuple[PanelSlab, ...] = tuple(slabs)
        counts = set()
        self._datasets = {}
        for s in self.slabs:
            if "%" in s.data:
                raise ImageFormatError(self.path, f"per-event data paths ('{s.data}') are not supported")
            if s.data not in self._datasets:
                if s.data not in self._fh:
                    raise ImageFormatError(self.path, f"the reference geometry's data path {s.data} is not in the file")
                ds = self._fh[s.data]
                if ds.ndim != len(s.dims):
                    raise ImageFormatError(
                        self.path, f"{s.data} has {ds.ndim} dimensions but the geometry describes {len(s.dims)} ({', '.join(s.dims)})"
                    )
                self._datasets[s.data] = ds
            ds = self._datasets[s.data]
            counts.add(int(ds.shape[s.dims.index("%")]) if s.has_frame_dim else 1)
            ss_dim, fs_dim = ds.shape[s.dims.index("ss")], ds.shape[s.dims.index("fs")]
            if s.max_ss >= ss_dim or s.max_fs >= fs_dim:
                raise ImageFormatError(
                    self.path,
                    f"a panel spans ss {s.min_ss}..{s.max_ss}, fs {s.min_fs}..{s.max_fs} but {s.data} frames are "
                    f"{ss_dim}×{fs_dim} (ss×fs)",
                )
        if len(counts) != 1:
            raise ImageFormatError(self.path, f"the data blocks hold different numbers of frames: {sorted(counts)}")
        self._n = counts.pop()

    @property
    def n_frames(self) -> int:
        """Number of frames (the length of the ``%`` dimension)."""
        return self._n

    @property
    def is_multi_frame(self) -> bool:
        """Frames are addressed by index."""
        return True

    # -- per-frame values -----------------------------------------------------------------
    def _value_at(self, location: str, frame: int) -> float:
        if location not in self._fh:
            raise ImageFormatError(self.path, f"the reference geometry names {location}, which is not in the file", frame)
        arr = np.atleast_1d(np.asarray(self._fh[location][()], dtype=np.float64)).reshape(-1)
        if arr.size == 0:
            raise ImageFormatError(self.path, f"{location} is empty", frame)
        if arr.size == 1:
            return float(arr[0])
        if arr.size != self._n:
            raise ImageFormatError(
                self.path, f"{location} holds {arr.size} values for {self._n} frames", frame
            )
        return float(arr[frame])

    def wavelength(self, frame: int = 0) -> float:
        """The wavelength of a frame in Å (see the module docstring for the sources).

        Raises
        ------
        ImageFormatError
            When neither the file nor the reference geometry gives one.
        """
        spec = self._infos[0].get("photon_energy") if self._infos else None
        if isinstance(spec, dict) and "location" in spec:
            value = self._value_at(spec["location"], frame)
            unit = (spec.get("unit") or "eV").strip()
            if unit in ("m", "A"):
                wl = value * (1e10 if unit == "m" else 1.0)
            elif unit.lower() in ("ev", "kev"):
                wl = HC_EV_ANGSTROM / (value * (1000.0 if unit.lower() == "kev" else 1.0)) if value > 0 else -1.0
            else:
                raise ImageFormatError(self.path, f"photon energy unit '{unit}' is not supported", frame)
        elif isinstance(spec, dict) and "value" in spec:
            wl = HC_EV_ANGSTROM / float(spec["value"])
        elif CXI_ENERGY_PATH in self._fh:
            wl = HC_EV_ANGSTROM / (self._value_at(CXI_ENERGY_PATH, frame) * _ENERGY["j"])
        else:
            raise ImageFormatError(
                self.path,
                "no photon energy: the reference geometry gives none (add 'photon_energy = ... eV' or a file "
                f"location to the .geom) and the file has no {CXI_ENERGY_PATH}",
                frame,
            )
        if not wl > 0 or not np.isfinite(wl):
            raise ImageFormatError(self.path, "the photon energy is not positive", frame)
        return float(wl)

    def models(self, frame: int = 0) -> tuple[Beam, Detector]:
        """Beam and detector of a frame: the reference geometry, at the frame's camera length."""
        return self._models(frame)

    def _models(self, frame: int) -> tuple[Beam, Detector]:
        self.check_frame(frame)
        beam = Beam(wavelength=self.wavelength(frame))
        det = self.reference_geometry
        locations = {i.get("clen") for i in self._infos if isinstance(i.get("clen"), str)}
        if locations:
            if len(locations) > 1 or len(locations) != len({repr(i.get("clen")) for i in self._infos}):
                raise ImageFormatError(self.path, "panels take their camera length from different places", frame)
            loc = locations.pop()
            unit = self._infos[0].get("clen_unit", "mm")
            value = self._value_at(loc, frame) * (0.001 if unit == "mm" else 1.0)
            det = shift_clen(det, value)
        spec = self._infos[0].get("photon_energy") if self._infos else None
        if isinstance(spec, dict) and "location" in spec and any("adu_per_eV" in i for i in self._infos):
            # gains given per eV follow the frame's photon energy, as in CrystFEL
            ev = HC_EV_ANGSTROM / beam.wavelength
            panels = [
                replace(p, gain=float(i["adu_per_eV"]) * ev) if "adu_per_eV" in i else p
                for p, i in zip(det, self._infos)
            ]
            det = Detector(tuple(panels), det.root)
        return beam, det

    # -- pixels ------------------------------------------------------------------------
    def read_frame(self, frame: int = 0) -> tuple:
        """Per-panel arrays (n_slow, n_fast) of a frame, in the data's dtype."""
        self.check_frame(frame)
        wholes: dict = {}
        out = []
        for s in self.slabs:
            key = (s.data, s.dims)
            if key not in wholes:
                ds = self._datasets[s.data]
                try:
                    wholes[key] = np.asarray(ds[s.index(frame, whole=True)])
                except (OSError, ValueError, KeyError) as exc:
                    raise ImageFormatError(self.path, f"cannot read {s.data} ({exc})", frame) from None
            out.append(np.ascontiguousarray(s.cut(wholes[key])))
        return tuple(out)

    def trusted_mask(self, frame: int = 0) -> tuple | None:
        """Per-panel good-pixel masks (True = good) from the .geom's mask datasets, or None.

        CrystFEL's rule: a pixel is bad when ``value & badbits`` is non-zero or
        when ``value & goodbits != goodbits``.  A mask dataset with the frame
        dimension gives one mask per frame; ``mask_file`` names another HDF5
        file (relative to the CXI file's folder, else the working directory).
        """
        self.check_frame(frame)
        if not any(i.get("masks") for i in self._infos):
            return None
        out = []
        cache: dict = {}
        for s, info, panel in zip(self.slabs, self._infos, self.reference_geometry):
            good = np.ones(panel.shape, dtype=bool)
            for m in info.get("masks", []):
                key = (m.get("file"), m["data"])
                if key not in cache:
                    cache[key] = self._mask_frame(m, s, frame)
                vals = s.cut(cache[key]).astype(np.int64)
                goodbits, badbits = int(m.get("goodbits", 0)), int(m.get("badbits", 0))
                if badbits:
                    good &= (vals & badbits) == 0
                if goodbits:
                    good &= (vals & goodbits) == goodbits
            out.append(good)
        return tuple(out)

    def _mask_frame(self, spec: dict, slab: PanelSlab, frame: int) -> np.ndarray:
        fh = self._fh
        other = None
        if spec.get("file"):
            name = spec["file"]
            candidates = [name] if os.path.isabs(name) else [os.path.join(os.path.dirname(self.path), name), name]
            found = next((c for c in candidates if os.path.isfile(c)), None)
            if found is None:
                raise ImageFormatError(self.path, f"mask file {name} not found", frame)
            other = fh = open_hdf5(found)
        try:
            if spec["data"] not in fh:
                raise ImageFormatError(self.path, f"mask dataset {spec['data']} is not in the file", frame)
            ds = fh[spec["data"]]
            if ds.ndim == len(slab.dims):
                return np.asarray(ds[slab.index(frame, whole=True)])
            if ds.ndim == 2:
                return np.asarray(ds[()])
            raise ImageFormatError(self.path, f"mask dataset {spec['data']} has {ds.ndim} dimensions", frame)
        finally:
            if other is not None:
                other.close()



__all__ = ["CXIFile", "DATA_PATHS", "CXI_ENERGY_PATH"]

