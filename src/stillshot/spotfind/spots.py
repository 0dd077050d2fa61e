"""From a strong-pixel mask to spots: labelling, centroids, intensities, filters.

Centroids and their variances follow DIALS's strong-spot centroids
(``Shoebox.centroid_valid``): pixel values are the weights, pixel centres are
at ``i + 0.5``, the variance of a coordinate is the unbiased weighted
variance over ``Σw`` plus 1/12; when ``(Σw)² <= Σw²`` (e.g. one pixel, or
non-positive weights) the centroid is the bounding-box centre with zero
variance.  The spot's z is 0.5 (one still frame), variance 1/12.

Unlike DIALS's strong spots (whose ``intensity.sum.value`` is the plain sum
of the pixel values), the intensity here is background-subtracted: the local
background is the mean of the valid non-strong pixels in a frame of
``background_margin`` px around the bounding box, and the variance is
``Σ g·v + n²·σ²_bg / n_bg`` (ADU², g the gain).
"""

from __future__ import annotations

import numpy as np

from stillshot.spotfind import _kernels as K
from stillshot.table import Flags, ReflectionTable

__all__ = ["COLUMNS", "panel_spots", "spot_table", "empty_spot_table"]

#: Columns of a strong-spot table (DIALS names).
COLUMNS = ("background.mean", "bbox", "flags", "id", "intensity.sum.value", "intensity.sum.variance",
           "n_signal", "panel", "xyzobs.px.value", "xyzobs.px.variance")


def panel_spots(image, valid, strong, *, connectivity=4, gain=None, margin=2):
    """Label a panel's strong pixels and measure each connected component.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast)
        Calibrated pixel values (ADU).
    valid : ndarray of bool
        Usable pixels.
    strong : ndarray of bool
        Strong pixels.
    connectivity : {4, 8}
    gain : float or ndarray, optional
        ADU per photon for the intensity variance.
    margin : int
        Local-background frame (px).

    Returns
    -------
    dict of ndarray
        The per-spot statistics of :func:`stillshot.spotfind._kernels.spot_statistics`.
    """
    runs = K.label_runs(strong, connectivity=connectivity)
    return K.spot_statistics(image, valid, strong, runs, gain=gain, margin=margin)


def _centroids(stats):
    sw, sw2 = stats["sum_w"], stats["sum_w2"]
    n = len(sw)
    ok = (sw * sw > sw2) & (sw > 0)
    xyz = np.empty((n, 3))
    var = np.zeros((n, 3))
    xyz[:, 0] = np.where(ok, stats["cx"], 0.5 * (stats["x0"] + stats["x1"]))
    xyz[:, 1] = np.where(ok, stats["cy"], 0.5 * (stats["y0"] + stats["y1"]))
    xyz[:, 2] = 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(ok, 1.0 / (sw * sw - sw2), 0.0)
    var[:, 0] = np.where(ok, stats["dxx"] * scale + 1.0 / 12.0, 0.0)
    var[:, 1] = np.where(ok, stats["dyy"] * scale + 1.0 / 12.0, 0.0)
    var[:, 2] = np.where(ok, 1.0 / 12.0, 0.0)
    return xyz, var


def spot_table(stats: dict, panel) -> ReflectionTable:
    """A ReflectionTable of spots (all rows of ``stats``).

    Parameters
    ----------
    stats : dict of ndarray
        From :func:`panel_spots` (possibly row-selected or concatenated).
    panel : int or ndarray of int
        Panel of every spot.

    Returns
    -------
    ReflectionTable
        With the :data:`COLUMNS`; ``flags`` = strong, ``id`` = 0.
    """
    n = len(stats["npix"])
    xyz, var = _centroids(stats)
    bg_n = stats["bg_n"]
    with np.errstate(divide="ignore", invalid="ignore"):
        bg = np.where(bg_n > 0, stats["bg_sum"] / np.maximum(bg_n, 1), 0.0)
        bg_var = np.where(bg_n > 1, (stats["bg_sum2"] - bg_n * bg * bg) / np.maximum(bg_n - 1, 1), 0.0)
    npix = stats["npix"].astype(np.float64)
    t = ReflectionTable.empty(n)
    t["bbox"] = np.stack([stats["x0"], stats["x1"], stats["y0"], stats["y1"],
                          np.zeros(n, np.int32), np.ones(n, np.int32)], axis=1).astype(np.int32)
    t["flags"] = np.full(n, int(Flags.strong), dtype=np.uint64)
    t["id"] = np.zeros(n, dtype=np.int32)
    t["intensity.sum.value"] = stats["sum_w"] - npix * bg
    t["intensity.sum.variance"] = np.maximum(stats["sum_gv"], 0.0) + npix ** 2 * np.maximum(bg_var, 0.0) / np.maximum(bg_n, 1)
    t["background.mean"] = bg
    t["n_signal"] = stats["npix"].astype(np.int32)
    t["panel"] = np.broadcast_to(np.asarray(panel, dtype=np.uint64), (n,)).copy()
    t["xyzobs.px.value"] = xyz
    t["xyzobs.px.variance"] = var
    return t


def empty_spot_table() -> ReflectionTable:
    """A strong-spot table with no rows (all :data:`COLUMNS` present)."""
    empty = {k: np.zeros(0) for k in ("npix", "sum_w", "sum_w2", "cx", "cy", "dxx", "dyy", "sum_gv",
                                       "peak", "bg_n", "bg_sum", "bg_sum2")}
    for k in ("x0", "x1", "y0", "y1", "peak_x", "peak_y"):
        empty[k] = np.zeros(0, np.int32)
    empty["npix"] = np.zeros(0, np.int64)
    empty["bg_n"] = np.zeros(0, np.int64)
    return spot_table(empty, 0)


def select_stats(stats: dict, keep) -> dict:
    """Rows ``keep`` (boolean or index array) of every statistic."""
    return {k: v[keep] for k, v in stats.items()}


def concat_stats(parts: list) -> dict:
    """Row-wise concatenation of per-panel statistics dicts (same keys)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def peak_centroid_distance(stats: dict) -> np.ndarray:
    """Distance (px) between each spot's brightest pixel centre and its centroid."""
    xyz, _ = _centroids(stats)
    dx = stats["peak_x"] + 0.5 - xyz[:, 0]
    dy = stats["peak_y"] + 0.5 - xyz[:, 1]
    return np.hypot(dx, dy)


def size_and_separation(stats: dict, *, min_spot_size: int, max_spot_size: int,
                        max_separation: float) -> np.ndarray:
    """DIALS's spot filters: pixel count within limits, peak-centroid distance <= max_separation.

    Returns
    -------
    ndarray of bool
    """
    n = stats["npix"]
    ok = (n >= min_spot_size) & (n <= max_spot_size)
    return ok & (peak_centroid_distance(stats) <= max_separation)
