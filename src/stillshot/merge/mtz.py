"""MTZ objects (gemmi) for merged, half-set and unmerged data.

These functions build :class:`gemmi.Mtz` objects in memory; writing them
(``mtz.write_to_file``) is the caller's business.

* merged: H K L, IMEAN (J), SIGIMEAN (Q), F (F), SIGF (Q), N (I: observations).
* half-set: H K L, IMEAN, SIGIMEAN, N.
* unmerged: H K L (in the ASU), M/ISYM (Y), BATCH (B), I (J), SIGI (Q),
  SCALEUSED (R: scale × partiality applied when merging), FRACTIONCALC (R:
  partiality), XDET, YDET (R: px), with one batch header per shot (its
  number, title, cell and wavelength), as CCP4 programs and
  reciprocalspaceship read them.
"""

from __future__ import annotations

import gemmi
import numpy as np

from stillshot.merge.symmetry import MergeSymmetry

__all__ = ["merged_mtz", "unmerged_mtz"]


def _base(symmetry: MergeSymmetry, title: str, wavelength: float, dataset: str) -> gemmi.Mtz:
    mtz = gemmi.Mtz(with_base=True)
    mtz.title = title
    mtz.spacegroup = symmetry.space_group
    mtz.set_cell_for_all(symmetry.unit_cell)
    mtz.datasets[0].wavelength = float(wavelength)  # HKL_base: the same, so readers see one wavelength
    ds = mtz.add_dataset(dataset)
    ds.project_name = "stillshot"
    ds.crystal_name = "crystal"
    ds.wavelength = float(wavelength)
    mtz.history = ["From stillshot merge"]
    return mtz


def merged_mtz(symmetry: MergeSymmetry, hkl: np.ndarray, columns: dict, *, wavelength: float,
               title: str = "stillshot merged", dataset: str = "merged") -> gemmi.Mtz:
    """A merged MTZ.

    Parameters
    ----------
    symmetry : MergeSymmetry
    hkl : ndarray of int, shape (U, 3)
        ASU Miller indices.
    columns : dict
        ``label -> (type, values)``, e.g. ``{"IMEAN": ("J", I), ...}``;
        NaN values are written as MTZ missing values.
    wavelength : float
        Å.
    title, dataset : str

    Returns
    -------
    gemmi.Mtz
        Sorted by hkl.
    """
    mtz = _base(symmetry, title, wavelength, dataset)
    data = [np.asarray(hkl, dtype=np.float32).reshape(-1, 3)]
    for label, (ctype, values) in columns.items():
        mtz.add_column(label, ctype)
        data.append(np.asarray(values, dtype=np.float32).reshape(-1, 1))
    mtz.set_data(np.hstack(data))
    mtz.sort()
    return mtz


def unmerged_mtz(symmetry: MergeSymmetry, hkl: np.ndarray, batch: np.ndarray, intensity: np.ndarray,
                 sigma: np.ndarray, *, scale_used: np.ndarray, partiality: np.ndarray, xy_px: np.ndarray,
                 batch_wavelengths: np.ndarray, batch_cells: np.ndarray, batch_titles: list | None = None,
                 title: str = "stillshot unmerged") -> gemmi.Mtz:
    """An unmerged MTZ with one batch per shot.

    Parameters
    ----------
    symmetry : MergeSymmetry
    hkl : ndarray of int, shape (N, 3)
        Miller indices in the merged setting (any symmetry mate; stored in
        the ASU with M/ISYM).
    batch : ndarray of int, shape (N,)
        Batch number (1-based shot number) of each observation.
    intensity, sigma : ndarray, shape (N,)
        Observed (partial) intensities and σ, photons.
    scale_used, partiality : ndarray, shape (N,)
        Scale × partiality applied when merging, and partiality alone.
    xy_px : ndarray, shape (N, 2)
        Predicted position, px.
    batch_wavelengths : ndarray, shape (B,)
        Å, per batch 1..B.
    batch_cells : ndarray, shape (B, 6)
        Å and degrees.
    batch_titles : list of str, optional
    title : str

    Returns
    -------
    gemmi.Mtz
    """
    mean_wl = float(np.mean(batch_wavelengths)) if len(batch_wavelengths) else 1.0
    mtz = _base(symmetry, title, mean_wl, "unmerged")
    asu, isym = symmetry.to_asu(hkl)
    cols = [("M/ISYM", "Y", isym), ("BATCH", "B", batch), ("I", "J", intensity), ("SIGI", "Q", sigma),
            ("SCALEUSED", "R", scale_used), ("FRACTIONCALC", "R", partiality),
            ("XDET", "R", xy_px[:, 0]), ("YDET", "R", xy_px[:, 1])]
    data = [asu.astype(np.float32)]
    for label, ctype, values in cols:
        mtz.add_column(label, ctype)
        data.append(np.asarray(values, dtype=np.float32).reshape(-1, 1))
    for b in range(len(batch_wavelengths)):
        bh = gemmi.Mtz.Batch()
        bh.number = b + 1
        bh.title = (batch_titles[b] if batch_titles else f"shot {b + 1}")[:70]
        bh.wavelength = float(batch_wavelengths[b])
        bh.dataset_id = mtz.datasets[-1].id
        bh.cell = gemmi.UnitCell(*[float(v) for v in batch_cells[b]])
        mtz.batches.append(bh)
    mtz.set_data(np.hstack(data) if len(hkl) else np.zeros((0, 3 + len(cols)), dtype=np.float32))
    return mtz
