"""The report's plots: matplotlib Figures (no pyplot, no global state).

Every function takes arrays (and models) and returns a
:class:`matplotlib.figure.Figure`; :func:`png_bytes` renders one.  Call them
inside ``matplotlib.rc_context(STYLE)`` for the report's look.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D

from stillshot.report.data import STATUS_COLOURS, MergingTable
from stillshot.report.layout import DetectorLayout

__all__ = [
    "STYLE",
    "plot_merging",
    "plot_rates",
    "plot_resolution",
    "plot_residual_map",
    "plot_shot",
    "plot_spots",
    "plot_timings",
    "plot_unit_cells",
    "png_bytes",
]

#: matplotlib rc settings of the report.
STYLE = {
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.6,
    "axes.edgecolor": "#888888",
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "figure.dpi": 100,
    "svg.fonttype": "none",
}
HIT_COLOUR = "#1f77b4"
INDEXED_COLOUR = "#2ca02c"
OBS_COLOUR = "#0072ff"
PRED_COLOUR = "#ff3b00"
STATUS_ORDER = ("unreadable", "failed", "not_hit", "not_indexed", "indexed", "integrated")


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes.

    Parameters
    ----------
    fig : Figure
    dpi : int

    Returns
    -------
    bytes
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _status_codes(statuses: np.ndarray) -> np.ndarray:
    lookup = {s: i for i, s in enumerate(STATUS_ORDER)}
    return np.array([lookup.get(str(s), 1) for s in statuses], dtype=np.int64)


def _status_strip(ax, statuses: np.ndarray) -> None:
    """A one-row raster of shot statuses along the run."""
    codes = _status_codes(statuses)
    cmap = mcolors.ListedColormap([STATUS_COLOURS[s] for s in STATUS_ORDER])
    n = len(codes)
    ax.imshow(codes[None, :], aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(STATUS_ORDER) - 0.5,
              interpolation="nearest", extent=(-0.5, n - 0.5, 0, 1))
    ax.set_yticks([])
    ax.grid(False)
    ax.set_xlabel("shot (run order)", loc="left")
    present = [s for s in STATUS_ORDER if np.any(statuses == s)]
    ax.legend(handles=[Patch(color=STATUS_COLOURS[s], label=s.replace("_", " ")) for s in present],
              loc="upper right", bbox_to_anchor=(1.0, -1.1), ncol=len(present), handlelength=1.0)


def plot_rates(statuses: np.ndarray, is_hit: np.ndarray, is_indexed: np.ndarray, window: int,
               rolling) -> Figure:
    """Rolling hit and indexing rates over the run, with a strip of shot statuses.

    Parameters
    ----------
    statuses : ndarray of str, shape (n,)
    is_hit, is_indexed : ndarray of bool, shape (n,)
    window : int
        Shots per rolling window.
    rolling : callable
        ``rolling(flags, window) -> fractions`` (see
        :func:`stillshot.report.data.rolling_fraction`).
    """
    n = len(statuses)
    fig = Figure(figsize=(9.0, 3.4))
    gs = fig.add_gridspec(2, 1, height_ratios=[6, 0.6], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    strip = fig.add_subplot(gs[1], sharex=ax)
    x = np.arange(n)
    hit = 100.0 * rolling(is_hit, window)
    idx = 100.0 * rolling(is_indexed, window)
    ax.plot(x, hit, color=HIT_COLOUR, lw=1.6, label="hit rate")
    ax.plot(x, idx, color=INDEXED_COLOUR, lw=1.6, label="indexing rate")
    if n:
        ax.axhline(100.0 * is_hit.mean(), color=HIT_COLOUR, lw=0.8, ls="--")
        ax.axhline(100.0 * is_indexed.mean(), color=INDEXED_COLOUR, lw=0.8, ls="--")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("% of shots")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2)
    ax.set_title(f"rolling window of {window} shots; dashed: whole run", loc="right", fontsize=8,
                 color="#555555")
    ax.tick_params(labelbottom=False)
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))
    _status_strip(strip, statuses)
    strip.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def plot_spots(n_spots: np.ndarray, statuses: np.ndarray, window: int, rolling_median=None) -> Figure:
    """Spots per shot along the run (coloured by status) and their histogram.

    Parameters
    ----------
    n_spots : ndarray, shape (n,)
        Strong spots per shot (NaN: unknown).
    statuses : ndarray of str, shape (n,)
    window : int
        Shots per window of the rolling median (for the legend).
    rolling_median : ndarray, shape (n,), optional
        Rolling median of ``n_spots``, drawn as a line.
    """
    fig = Figure(figsize=(9.0, 3.0))
    gs = fig.add_gridspec(1, 2, width_ratios=[3, 1], wspace=0.05)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharey=ax)
    x = np.arange(len(n_spots))
    ok = np.isfinite(n_spots)
    size = 18.0 if len(x) < 2000 else 4.0
    for s in STATUS_ORDER:
        sel = ok & (statuses == s)
        if sel.any():
            ax.scatter(x[sel], n_spots[sel], s=size, color=STATUS_COLOURS[s], label=s.replace("_", " "),
                       linewidths=0, rasterized=True)
    if rolling_median is not None and ok.sum() > 1:
        ax.plot(x, rolling_median, color="black", lw=1.0, label=f"rolling median ({window})")
    ax.set_xlabel("shot (run order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("strong spots")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=7, markerscale=1.3, handletextpad=0.2,
              columnspacing=1.0)
    vals = n_spots[ok]
    if len(vals):
        top = max(float(vals.max()), 1.0)
        bins = np.linspace(0, top * 1.0001, min(60, max(10, int(math.sqrt(len(vals))) + 1)))
        axh.hist(vals, bins=bins, orientation="horizontal", color="#555555")
        axh.axhline(float(np.median(vals)), color="black", lw=0.8, ls="--")
        ax.set_ylim(bottom=0)
    axh.set_xlabel("shots")
    axh.tick_params(labelleft=False)
    if len(vals):
        axh.text(0.97, 0.98, f"median {np.median(vals):.0f}", transform=axh.transAxes, ha="right", va="top")
    return fig


def plot_unit_cells(cells: np.ndarray) -> Figure:
    """Histograms of a, b, c (Å) and α, β, γ (°) over all lattices.

    Parameters
    ----------
    cells : ndarray, shape (n, 6)
        (a, b, c, α, β, γ) per lattice, Å and degrees.
    """
    names = ("a (Å)", "b (Å)", "c (Å)", "α (°)", "β (°)", "γ (°)")
    fig = Figure(figsize=(9.0, 4.6))
    axes = fig.subplots(2, 3)
    fig.subplots_adjust(hspace=0.55, wspace=0.25)
    for k, ax in enumerate(axes.ravel()):
        v = cells[:, k] if len(cells) else np.zeros(0)
        v = v[np.isfinite(v)]
        colour = "#4c72b0" if k < 3 else "#dd8452"
        if len(v):
            med = float(np.median(v))
            spread = float(v.max() - v.min())
            half = max(spread / 2.0 * 1.05, 0.5 if k < 3 else 0.5, 0.002 * abs(med))
            n_bins = min(51, max(9, int(math.sqrt(len(v))) * 2)) | 1  # odd: the median sits mid-bin
            ax.hist(v, bins=n_bins, range=(med - half, med + half), color=colour)
            mad = 1.4826 * float(np.median(np.abs(v - med)))
            ax.set_title(f"{names[k]}: {med:.2f} ± {mad:.2f}")
            ax.axvline(med, color="black", lw=0.8, ls="--")
        else:
            ax.set_title(names[k])
        ax.set_xlabel(names[k])
        ax.ticklabel_format(useOffset=False, axis="x")
        ax.xaxis.set_major_locator(MaxNLocator(4))
    axes[0, 0].set_ylabel("lattices")
    axes[1, 0].set_ylabel("lattices")
    fig.suptitle(f"Unit cells of {len(cells)} lattices (median ± robust σ)", fontsize=10)
    return fig


def _panel_polys(layout: DetectorLayout) -> list:
    return [layout.panel_corners(i) for i in range(len(layout.detector))]


def _nice(value: float) -> float:
    """A round number (1, 2 or 5 × 10^k) close to ``value``."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    e = math.floor(math.log10(value))
    m = value / 10 ** e
    return (1 if m < 1.5 else 2 if m < 3.5 else 5 if m < 7.5 else 10) * 10 ** e


def plot_residual_map(layout: DetectorLayout, residuals: dict, tiles: dict | None = None) -> Figure:
    """Mean observed-minus-calculated position per panel (or tile) on the detector layout.

    Parameters
    ----------
    layout : DetectorLayout
    residuals : dict
        :func:`stillshot.report.data.panel_residuals` output.
    tiles : dict, optional
        :func:`stillshot.report.data.tile_residuals` output, drawn instead of
        whole panels (for detectors of few panels).
    """
    det = layout.detector
    if tiles is not None:
        polys, pan, dxy, counts = [], tiles["panel"], np.stack([tiles["dx"], tiles["dy"]], axis=1), tiles["n"]
        for k in range(len(pan)):
            c = np.array([[tiles["x0"][k], tiles["y0"][k]], [tiles["x1"][k], tiles["y0"][k]],
                          [tiles["x1"][k], tiles["y1"][k]], [tiles["x0"][k], tiles["y1"][k]]])
            polys.append(layout.px_to_page(np.full(4, pan[k]), c))
        unit = "tile"
    else:
        polys = _panel_polys(layout)
        pan = np.arange(len(det))
        dxy = np.stack([residuals["dx"], residuals["dy"]], axis=1)
        counts = residuals["n"]
        unit = "panel"
    mag = np.hypot(dxy[:, 0], dxy[:, 1])
    fig = Figure(figsize=(7.2, 6.2))
    ax = fig.add_subplot(1, 1, 1)
    finite = np.isfinite(mag)
    vmax = float(np.nanmax(mag)) if finite.any() else 1.0
    vmax = max(vmax, 0.05)
    cmap = mcolors.LinearSegmentedColormap.from_list("res", ["#f7fbff", "#fdae61", "#d7191c"])
    coll = PolyCollection([polys[k] for k in range(len(polys)) if finite[k]], array=mag[finite], cmap=cmap,
                          norm=mcolors.Normalize(0.0, vmax), edgecolors="#999999", linewidths=0.4)
    ax.add_collection(coll)
    empty = [polys[k] for k in range(len(polys)) if not finite[k]]
    if empty:
        ax.add_collection(PolyCollection(empty, facecolors="#eeeeee", edgecolors="#bbbbbb", linewidths=0.4,
                                         hatch="///"))
    if tiles is not None:
        ax.add_collection(PolyCollection(_panel_polys(layout), facecolors="none", edgecolors="#333333",
                                         linewidths=1.0))
    centres = np.array([p.mean(axis=0) for p in polys])
    vec = layout.vector_to_page(pan, np.nan_to_num(dxy))
    xmin, xmax, ymin, ymax = layout.extent(0.04)
    # arrows: the largest mean residual drawn as long as a tenth of the detector
    size = max(xmax - xmin, ymax - ymin)
    vlen = np.hypot(vec[:, 0], vec[:, 1])
    scale_mm = 0.1 * size / max(float(np.nanmax(vlen[finite])) if finite.any() else 1.0, 1e-9)
    px_mm = layout.pixel_size_mm()
    if finite.any():
        q = ax.quiver(centres[finite, 0], centres[finite, 1], vec[finite, 0] * scale_mm,
                      vec[finite, 1] * scale_mm, angles="xy", scale_units="xy", scale=1.0, color="#222222",
                      width=0.004, headwidth=4, zorder=3)
        key_px = _nice(float(np.nanmax(mag)))
        ax.quiverkey(q, 0.97, -0.075, key_px * px_mm * scale_mm, f"{key_px:g} px", labelpos="W",
                     coordinates="axes", fontproperties={"size": 8})
    if len(det) <= 16 and tiles is None:
        for k in range(len(det)):
            ax.text(centres[k, 0], centres[k, 1], str(k), fontsize=7, color="#555555", ha="center",
                    va="top", zorder=4)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xlabel("mm (lab x projected)")
    ax.set_ylabel("mm (lab y projected)")
    cb = fig.colorbar(coll, ax=ax, shrink=0.8, pad=0.02)
    cb.set_label(f"|mean obs − calc| per {unit} (px)")
    rms = residuals.get("overall_rms", float("nan"))
    n_total = int(np.sum(counts))
    ax.set_title(f"Positional residuals of {n_total} indexed spots (RMSD {rms:.2f} px)\n"
                 f"arrows: mean observed − calculated per {unit}, magnified ×{scale_mm:.0f}",
                 loc="left")
    return fig


def plot_resolution(d_min: np.ndarray) -> Figure:
    """Highest resolution of the indexed reflections per indexed shot: along the run and histogram.

    Parameters
    ----------
    d_min : ndarray, shape (n_shots,)
        Smallest d (Å) of each shot's indexed spots; NaN for shots not indexed.
    """
    fig = Figure(figsize=(9.0, 3.0))
    gs = fig.add_gridspec(1, 2, width_ratios=[3, 1], wspace=0.05)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharey=ax)
    x = np.arange(len(d_min))
    ok = np.isfinite(d_min)
    ax.scatter(x[ok], d_min[ok], s=10, color=INDEXED_COLOUR, linewidths=0, rasterized=True)
    ax.set_xlabel("shot (run order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("d_min of indexed spots (Å)")
    ax.set_title(f"Resolution of {int(ok.sum())} indexed shots")
    if ok.any():
        v = d_min[ok]
        axh.hist(v, bins=min(40, max(8, int(math.sqrt(len(v))) * 2)), orientation="horizontal",
                 color=INDEXED_COLOUR)
        med = float(np.median(v))
        axh.axhline(med, color="black", lw=0.8, ls="--")
        axh.set_title(f"median {med:.2f} Å")
        ax.invert_yaxis()  # better resolution (smaller d) upwards
        ax.set_xlim(-0.5, max(len(d_min) - 0.5, 0.5))
    axh.set_xlabel("shots")
    axh.tick_params(labelleft=False)
    return fig


def plot_timings(stages: list, seconds: np.ndarray, total: np.ndarray) -> Figure:
    """Mean time per shot by stage, and the distribution of the total time per shot.

    Parameters
    ----------
    stages : list of str
    seconds : ndarray, shape (n_shots, n_stages)
        Seconds per stage (NaN: the shot did not reach it).
    total : ndarray, shape (n_shots,)
        Seconds per shot (NaN: none recorded).
    """
    fig = Figure(figsize=(9.0, max(2.4, 0.42 * len(stages) + 1.4)))
    gs = fig.add_gridspec(1, 2, width_ratios=[1.3, 1], wspace=0.45)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1])
    mean = np.array([np.nanmean(seconds[:, k]) if np.isfinite(seconds[:, k]).any() else 0.0
                     for k in range(len(stages))])
    mean_total = float(mean.sum())
    y = np.arange(len(stages))
    ax.barh(y, mean * 1e3, color="#6a51a3")
    ax.set_yticks(y, labels=list(stages))
    ax.invert_yaxis()
    for k in range(len(stages)):
        share = 100.0 * mean[k] / mean_total if mean_total > 0 else 0.0
        ax.text(mean[k] * 1e3, y[k], f" {mean[k] * 1e3:.1f} ms ({share:.0f}%)", va="center", fontsize=8)
    ax.set_xlabel("mean ms per shot (shots that reached the stage)")
    ax.set_title("Time per stage")
    ax.set_xlim(0, max(float(mean.max()) * 1e3 * 1.45 if len(mean) else 1.0, 1e-3))
    per_shot = np.asarray(total, dtype=np.float64)
    per_shot = per_shot[np.isfinite(per_shot)]
    if len(per_shot):
        axh.hist(per_shot * 1e3, bins=min(50, max(8, int(math.sqrt(len(per_shot))) * 2)), color="#9e9ac8")
        axh.axvline(float(np.median(per_shot)) * 1e3, color="black", lw=0.8, ls="--")
        axh.set_title(f"Total per shot: median {np.median(per_shot) * 1e3:.1f} ms")
    axh.set_xlabel("ms per shot")
    axh.set_ylabel("shots")
    return fig


def _pool(data: np.ndarray, valid: np.ndarray, factor: int) -> np.ndarray:
    """Max-pool a panel by ``factor`` (invalid pixels ignored; NaN where a block has none)."""
    a = np.where(valid, data.astype(np.float64), -np.inf)
    if factor > 1:
        ns, nf = a.shape
        ps, pf = -ns % factor, -nf % factor
        a = np.pad(a, ((0, ps), (0, pf)), constant_values=-np.inf)
        a = a.reshape(a.shape[0] // factor, factor, a.shape[1] // factor, factor).max(axis=(1, 3))
    a[~np.isfinite(a)] = np.nan
    return a


def _zoom_window(panels: np.ndarray, xy: np.ndarray, shape_of, half: int) -> tuple | None:
    """(panel, x0, x1, y0, y1), px: a window around the densest group of spots on the panel with most."""
    if not len(panels):
        return None
    best = int(np.bincount(panels).argmax())
    pts = xy[panels == best]
    if len(pts) > 1500:
        pts = pts[:: len(pts) // 1500 + 1]
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    centre = pts[int((d < half).sum(axis=1).argmax())]
    n_slow, n_fast = shape_of(best)
    w = min(2 * half, n_fast)
    h = min(2 * half, n_slow)
    x0 = int(np.clip(round(centre[0]) - w // 2, 0, n_fast - w))
    y0 = int(np.clip(round(centre[1]) - h // 2, 0, n_slow - h))
    return best, x0, x0 + w, y0, y0 + h


def plot_shot(layout: DetectorLayout, data: tuple, title: str, *, observed: tuple | None = None,
              predicted: tuple | None = None, s0: np.ndarray | None = None, max_px: int = 1000,
              zoom_px: int = 80) -> Figure:
    """One shot drawn on the detector layout, with observed spots and predictions, and a zoom.

    Parameters
    ----------
    layout : DetectorLayout
    data : tuple of ndarray
        Pixels per panel, shape (n_slow, n_fast).
    title : str
    observed, predicted : (panel, xy_px) or None
        Spot positions: panel numbers (n,) and pixel coordinates (n, 2).
    s0 : ndarray, optional
        Beam vector; the direct-beam position is marked.
    max_px : int
        Longest side of the overview in image pixels; panels are max-pooled to it.
    zoom_px : int
        Half-width of the zoomed window (px, unbinned) drawn beside the overview,
        around the densest group of observed spots.
    """
    det = layout.detector
    xmin, xmax, ymin, ymax = layout.extent(0.02)
    span_px = max(xmax - xmin, ymax - ymin) / layout.pixel_size_mm()
    factor = max(1, int(math.ceil(span_px / max_px)))
    photons, pooled, values, pooled_values = [], [], [], []
    for p, arr in zip(det, data):
        arr = np.asarray(arr)
        valid = p.is_trusted(arr) if arr.shape == p.shape else np.ones(arr.shape, dtype=bool)
        arr = arr.astype(np.float64) - float(p.pedestal)
        if p.gain and p.gain > 0:
            arr = arr / float(p.gain)
        valid &= np.isfinite(arr)
        photons.append(np.where(valid, arr, np.nan))
        pooled.append(_pool(arr, valid, factor))
        if valid.any():
            values.append(arr[valid][:: max(1, int(valid.sum() // 200000))])
            pv = pooled[-1][np.isfinite(pooled[-1])]
            pooled_values.append(pv[:: max(1, len(pv) // 200000)])

    def contrast(vals: list) -> mcolors.Normalize:
        v = np.concatenate(vals) if vals else np.zeros(1)
        med = float(np.median(v))
        background = max(med + 12.0 * math.sqrt(max(med, 0.0) + 1.0), 8.0)
        # between the background's scale (spots black) and the brightest pixels (all spots graded)
        top = math.sqrt(background * max(float(np.percentile(v, 99.95)), background))
        return mcolors.PowerNorm(gamma=0.6, vmin=0.0, vmax=top, clip=True)

    norm_overview = contrast(pooled_values)
    norm = contrast(values)
    cmap = mcolors.LinearSegmentedColormap.from_list("invgrey", ["#ffffff", "#000000"]).with_extremes(
        bad="#dfe8f0")
    aspect = (ymax - ymin) / max(xmax - xmin, 1e-9)
    fig = Figure(figsize=(11.0, max(5.0, 7.0 * aspect + 1.0)))
    gs = fig.add_gridspec(1, 2, width_ratios=[7.0, 3.6], wspace=0.18)
    ax = fig.add_subplot(gs[0])
    ax.set_facecolor("#f4f4f4")
    for k, img in enumerate(pooled):
        h, w = img.shape
        im = ax.imshow(np.clip(img, 0.0, None), cmap=cmap, norm=norm_overview, origin="lower",
                       interpolation="nearest", extent=(0, w * factor, 0, h * factor))
        im.set_transform(Affine2D(layout.panel_affine(k)) + ax.transData)
        corners = layout.panel_corners(k)
        ax.plot(*np.vstack([corners, corners[:1]]).T, color="#9aa8b5", lw=0.4)
    handles = []
    obs_style = dict(facecolors="none", edgecolors=OBS_COLOUR, linewidths=0.8, zorder=3)
    pred_style = dict(marker="+", color=PRED_COLOUR, linewidths=0.8, zorder=4)
    if observed is not None and len(observed[0]):
        xy = layout.px_to_page(*observed)
        size = 30.0 if len(xy) < 300 else 14.0
        handles.append(ax.scatter(xy[:, 0], xy[:, 1], s=size, label=f"observed spots ({len(xy)})", **obs_style))
    if predicted is not None and len(predicted[0]):
        xy = layout.px_to_page(*predicted)
        size = 18.0 if len(xy) < 300 else 9.0
        handles.append(ax.scatter(xy[:, 0], xy[:, 1], s=size, label=f"predictions ({len(xy)})", **pred_style))
    if s0 is not None:
        bc = layout.beam_centre(s0)
        if bc is not None:
            handles.append(ax.scatter([bc[0]], [bc[1]], s=80, marker="x", color="#7b2cbf", linewidths=1.4,
                                      label="direct beam", zorder=5))
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xlabel("mm (lab x)")
    ax.set_ylabel("mm (lab y)")
    ax.set_title(title, loc="left")
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.07), ncol=len(handles),
                  markerscale=1.2)
    # zoom: raw pixels of one panel around the densest group of observed spots
    axz = fig.add_subplot(gs[1])
    win = None
    if observed is not None and len(observed[0]):
        win = _zoom_window(np.asarray(observed[0]), np.asarray(observed[1]), lambda k: det[k].shape, zoom_px)
    elif predicted is not None and len(predicted[0]):
        win = _zoom_window(np.asarray(predicted[0]), np.asarray(predicted[1]), lambda k: det[k].shape, zoom_px)
    if win is None:
        axz.set_visible(False)
    else:
        k, x0, x1, y0, y1 = win
        sub = photons[k][y0:y1, x0:x1]
        zoom_image = axz.imshow(np.clip(sub, 0.0, None), cmap=cmap, norm=norm, interpolation="nearest",
                                extent=(x0, x1, y1, y0))
        for pts, style, size in ((observed, obs_style, 90), (predicted, pred_style, 60)):
            if pts is None or not len(pts[0]):
                continue
            sel = ((np.asarray(pts[0]) == k) & (pts[1][:, 0] >= x0) & (pts[1][:, 0] < x1)
                   & (pts[1][:, 1] >= y0) & (pts[1][:, 1] < y1))
            axz.scatter(pts[1][sel, 0], pts[1][sel, 1], s=size, **style)
        axz.set_xlim(x0, x1)
        axz.set_ylim(y1, y0)
        axz.set_aspect("equal")
        axz.grid(False)
        axz.set_xlabel("fast (px)")
        axz.set_ylabel("slow (px)")
        axz.set_title(f"zoom: panel {k}" + (f" ({det[k].name})" if det[k].name else "")
                      + ", unbinned", loc="left")
        box = layout.px_to_page(np.full(5, k), np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]],
                                                         dtype=np.float64))
        ax.plot(box[:, 0], box[:, 1], color="#e6a100", lw=1.4, zorder=6)
        cb = fig.colorbar(zoom_image, ax=axz, orientation="horizontal", fraction=0.05, pad=0.12)
        ticks = MaxNLocator(5).tick_values(0.0, norm.vmax)
        cb.set_ticks(ticks[(ticks >= 0) & (ticks <= norm.vmax)])
        cb.set_label("counts per pixel, ADU ÷ gain (zoom)")
    return fig


_MERGE_PANELS = (
    (("completeness",), "Completeness (%)", (0, 105)),
    (("multiplicity",), "Multiplicity", None),
    (("i_over_sigma",), "⟨I/σ(I)⟩", None),
    (("cc_half", "cc_star"), "CC1/2 and CC*", (-0.05, 1.05)),
    (("r_split",), "Rsplit", None),
)


def _resolution_ticks(top: float) -> np.ndarray:
    """Round d values (Å) spread evenly in 1/d² between 0 and ``top`` (1/Å²)."""
    nice = np.array([20, 10, 7, 5, 4, 3.5, 3, 2.7, 2.5, 2.3, 2.2, 2.1, 2, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3,
                     1.2, 1.1, 1.0, 0.9, 0.8])
    q = 1 / nice ** 2
    out = []
    for target in np.linspace(0, top, 6)[1:]:
        k = int(np.argmin(np.abs(q - target)))
        if q[k] <= top * 1.001 and nice[k] not in out:
            out.append(nice[k])
    return np.array(out, dtype=np.float64)


def plot_merging(table: MergingTable) -> Figure:
    """Merging statistics per resolution shell, against resolution (1/d² axis, labelled in Å).

    Parameters
    ----------
    table : MergingTable
    """
    x = np.where(np.isfinite(table.d_max) & np.isfinite(table.d_min),
                 0.5 * (1 / table.d_max ** 2 + 1 / table.d_min ** 2), 1 / table.d_min ** 2)
    panels = [p for p in _MERGE_PANELS if any(k in table.columns for k in p[0])]
    ncol = 3
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig = Figure(figsize=(9.0, 2.9 * nrow + 0.3))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    fig.subplots_adjust(hspace=0.6, wspace=0.3)
    labels = {"cc_half": "CC1/2", "cc_star": "CC*"}
    colours = {"cc_half": "#1f77b4", "cc_star": "#9467bd"}
    for ax, (keys, name, ylim) in zip(axes, panels):
        for k in keys:
            if k in table.columns:
                ax.plot(x, table.columns[k], marker="o", ms=3.5, lw=1.3, color=colours.get(k, "#333333"),
                        label=labels.get(k, name))
        if len(keys) > 1:
            ax.legend(loc="lower left")
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(name)
        top = float(np.nanmax(1 / table.d_min ** 2)) if np.isfinite(table.d_min).any() else 1.0
        ticks = _resolution_ticks(top)
        ax.set_xticks(1 / ticks ** 2, labels=[f"{t:g}" for t in ticks])
        ax.set_xlim(0, top * 1.03)
        ax.set_xlabel("resolution (Å)")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Merging statistics in {table.n_shells} resolution shells", fontsize=10)
    return fig
