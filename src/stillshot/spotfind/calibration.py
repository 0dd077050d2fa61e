"""Detector calibration inputs: per-panel pedestal (dark), gain map, masks.

:class:`Lookup` holds the arrays (one per panel); :func:`load_panel_arrays`
reads them from ``.npy``, ``.npz`` or HDF5 files (``stillshot average``
writes ``.npz`` files this reads).  :func:`calibrate` applies pedestal and
gain as dxtbx's ``get_corrected_data`` does: ``(raw - pedestal) / gain``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Lookup", "calibrate", "load_lookup", "load_panel_arrays", "split_panels"]


@dataclass(frozen=True, eq=False)
class Lookup:
    """Per-panel calibration and mask arrays (any may be None).

    Attributes
    ----------
    mask : tuple of ndarray of bool or None
        True for usable pixels.
    bad_pixels : tuple of ndarray of bool or None
        True for dead or hot pixels (never used).
    pedestal : tuple of ndarray or None
        Dark level subtracted from raw data (ADU).
    gain_map : tuple of ndarray or None
        Raw data are divided by it (ADU per photon, or relative gain).
    """

    mask: tuple | None = None
    bad_pixels: tuple | None = None
    pedestal: tuple | None = None
    gain_map: tuple | None = None

    @property
    def calibrates(self) -> bool:
        """True when pixel values are changed (a pedestal or gain map is set)."""
        return self.pedestal is not None or self.gain_map is not None


def calibrate(raw, panel_index: int, lookup: Lookup | None):
    """Calibrated pixel values of one panel (the raw array itself when nothing applies).

    Parameters
    ----------
    raw : ndarray
        Raw panel data (ADU).
    panel_index : int
    lookup : Lookup or None

    Returns
    -------
    ndarray
        ``(raw - pedestal) / gain_map`` as float64, or ``raw`` unchanged.
    """
    if lookup is None or not lookup.calibrates:
        return raw
    out = np.array(raw, dtype=np.float64)
    if lookup.pedestal is not None:
        out -= lookup.pedestal[panel_index]
    if lookup.gain_map is not None:
        out /= lookup.gain_map[panel_index]
    return out


def split_panels(array, shapes, what: str = "array"):
    """Split an array into per-panel arrays of the given shapes.

    Accepted layouts: a single (n_slow, n_fast) array for one panel; a stack
    (n_panels, n_slow, n_fast); a list of per-panel arrays; or a 2-D array
    whose rows are the panels stacked along the slow axis in panel order.

    Raises
    ------
    ValueError
        When the layout matches none of these.
    """
    shapes = [tuple(s) for s in shapes]
    if isinstance(array, (list, tuple)):
        parts = [np.asarray(a) for a in array]
        if [p.shape for p in parts] != shapes:
            raise ValueError(f"{what}: per-panel shapes {[p.shape for p in parts]} do not match the "
                             f"detector's {shapes}")
        return tuple(parts)
    a = np.asarray(array)
    if a.ndim == 2 and len(shapes) == 1 and a.shape == shapes[0]:
        return (a,)
    if a.ndim == 3 and a.shape[0] == len(shapes) and all(a.shape[1:] == s for s in shapes):
        return tuple(a[i] for i in range(a.shape[0]))
    if a.ndim == 2 and len({s[1] for s in shapes}) == 1 and a.shape == (sum(s[0] for s in shapes), shapes[0][1]):
        out, j = [], 0
        for s in shapes:
            out.append(a[j:j + s[0]])
            j += s[0]
        return tuple(out)
    raise ValueError(f"{what}: shape {a.shape} does not fit the detector ({len(shapes)} panels of "
                     f"{sorted(set(shapes))} (n_slow, n_fast))")


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``file[:key]`` -> (file, key); a Windows drive letter is not a key."""
    path, key = spec, None
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if head and not os.path.exists(spec) and (len(head) > 1 or not tail.startswith(("\\", "/"))):
            path, key = head, tail or None
    return path, key


def load_panel_arrays(spec: str, detector, what: str = "array", default_keys=()):
    """Per-panel arrays from a file.

    Parameters
    ----------
    spec : str
        ``FILE`` or ``FILE:KEY``: ``.npy``; ``.npz`` (KEY an array name, or
        ``KEY_0``, ``KEY_1``… per panel); HDF5 ``.h5``/``.hdf5``/``.nxs``/``.cxi``
        (KEY a dataset path).
    detector : Detector
        Gives the panel shapes.
    what : str
        Name used in error messages.
    default_keys : sequence of str
        Keys tried, in order, when none is given.

    Returns
    -------
    tuple of ndarray

    Raises
    ------
    ValueError
        For a missing file, a missing key or a layout that does not fit.
    """
    path, key = _split_spec(spec)
    if not os.path.isfile(path):
        raise ValueError(f"{what}: {path}: no such file")
    shapes = [p.shape for p in detector]
    lower = path.lower()
    if lower.endswith(".npy"):
        return split_panels(np.load(path), shapes, what)
    if lower.endswith(".npz"):
        with np.load(path) as z:
            names = list(z.files)
            keys = [key] if key else list(default_keys) + names
            for k in keys:
                if k in names:
                    return split_panels(z[k], shapes, what)
                per = [f"{k}_{i}" for i in range(len(shapes))]
                if all(n in names for n in per):
                    return split_panels([z[n] for n in per], shapes, what)
            raise ValueError(f"{what}: {path} has no array {key or default_keys} (has: {', '.join(names)})")
    if lower.endswith((".h5", ".hdf5", ".nxs", ".cxi", ".hdf")):
        import h5py

        with h5py.File(path, "r") as fh:
            keys = [key] if key else list(default_keys) + _datasets(fh)
            for k in keys:
                if k in fh and isinstance(fh[k], h5py.Dataset):
                    return split_panels(fh[k][()], shapes, what)
            raise ValueError(f"{what}: {path} has no dataset {key or default_keys}")
    raise ValueError(f"{what}: {path}: unknown file type (use .npy, .npz or HDF5)")


def _datasets(fh) -> list[str]:
    import h5py

    out: list[str] = []
    fh.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


def load_lookup(detector, *, mask=None, bad_pixels=None, pedestal=None, gain_map=None) -> Lookup | None:
    """Read the lookup files named by ``spotfinder.lookup.*``.

    A mask file holds True/nonzero for usable pixels, except CrystFEL-style
    masks, which cannot be told apart by content: give those as bad_pixels.
    A bad-pixel map holds nonzero for dead or hot pixels.

    Returns
    -------
    Lookup or None
        None when no file is given.
    """
    if not any((mask, bad_pixels, pedestal, gain_map)):
        return None

    def load(spec, what, keys, dtype):
        if not spec:
            return None
        arrays = load_panel_arrays(str(spec), detector, what, keys)
        out = tuple(np.ascontiguousarray(a, dtype=dtype) for a in arrays)
        for a in out:
            a.setflags(write=False)
        return out

    gains = load(gain_map, "spotfinder.lookup.gain_map", ("gain", "mean", "data"), np.float64)
    if gains is not None and any(np.any(g <= 0) for g in gains):
        raise ValueError("spotfinder.lookup.gain_map: gains must be > 0")
    return Lookup(
        mask=load(mask, "spotfinder.lookup.mask", ("mask", "data"), bool),
        bad_pixels=load(bad_pixels, "spotfinder.lookup.bad_pixels", ("bad_pixels", "mask", "data"), bool),
        pedestal=load(pedestal, "spotfinder.lookup.pedestal", ("mean", "pedestal", "dark", "data"), np.float64),
        gain_map=gains,
    )
