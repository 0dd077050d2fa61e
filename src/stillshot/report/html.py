"""Assembling the report: one self-contained HTML file (plots as inline PNG, no network)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

from stillshot import __version__
from stillshot.report import plots
from stillshot.report.data import (
    RunData,
    STATUS_COLOURS,
    auto_window,
    load_run,
    panel_residuals,
    reason_kind,
    rolling_fraction,
    shot_resolution,
    split_total,
    tile_residuals,
    timing_matrix,
)
from stillshot.report.layout import DetectorLayout
from stillshot.report.options import ReportOptions

__all__ = ["ReportResult", "build_html", "write_report", "PLOT_IDS"]

#: ids of the plot elements of a report of a complete run (shot images are
#: ``plot-shot-0`` ... and are not listed).
PLOT_IDS = ("plot-rates", "plot-spots", "plot-cells", "plot-residuals", "plot-resolution", "plot-timings",
            "plot-merging")


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes
    ----------
    path : Path
        The report file.
    plots : list of str
        Element ids of the plots drawn.
    notes : list of str
        Inputs that were missing or unreadable and plots that could not be drawn.
    """

    path: Path
    plots: list = field(default_factory=list)
    notes: list = field(default_factory=list)


_CSS = """
:root { --fg:#1d2733; --muted:#5b6b7b; --line:#dde3ea; --bg:#f6f8fa; --accent:#1f6feb; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#14202e; color:#fff; padding:14px 28px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header .meta { color:#a9b7c6; font-size:12px; margin-top:2px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:6px 28px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:16px; white-space:nowrap; }
main { max-width:1180px; margin:0 auto; padding:16px 28px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 20px;
          margin:16px 0; }
section h2 { font-size:16px; margin:0 0 8px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:10px; margin:8px 0 12px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 12px; background:#fbfcfd; }
.card .v { font-size:20px; font-weight:600; }
.card .k { color:var(--muted); font-size:12px; }
figure.plot { margin:8px 0; text-align:center; }
figure.plot img { max-width:100%; height:auto; }
figure.plot figcaption { color:var(--muted); font-size:12px; margin-top:4px; text-align:left; }
figure.broken { outline:2px solid #d62728; }
table { border-collapse:collapse; font-size:13px; margin:6px 0; }
th, td { border-bottom:1px solid var(--line); padding:3px 10px; text-align:right; }
th { background:#f1f4f7; font-weight:600; }
td.l, th.l { text-align:left; }
.dot { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; vertical-align:-1px; }
.empty { color:var(--muted); font-style:italic; }
.warn { color:#9a3412; background:#fff7ed; border:1px solid #fed7aa; padding:6px 10px; border-radius:6px; }
.shots { display:grid; grid-template-columns:1fr; gap:8px; }
details pre { background:#f6f8fa; padding:8px; overflow:auto; max-height:420px; font-size:12px; }
.flex { display:flex; gap:28px; flex-wrap:wrap; align-items:flex-start; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var figs = document.querySelectorAll("figure.plot");
  var ok = 0;
  figs.forEach(function (f) {
    var img = f.querySelector("img");
    if (img && img.complete && img.naturalWidth > 0) { ok += 1; f.dataset.rendered = "1"; }
    else { f.classList.add("broken"); f.dataset.rendered = "0"; }
  });
  document.body.dataset.plots = String(figs.length);
  document.body.dataset.plotsRendered = String(ok);
});
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, spec: str = ".1f", none: str = "–") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return none
    return format(v, spec) if np.isfinite(v) else none


class _Page:
    """Collects sections, figures and notes of one report."""

    def __init__(self):
        self.sections: list[tuple[str, str, str]] = []
        self.plots: list[str] = []
        self.notes: list[str] = []

    def figure(self, fig, plot_id: str, caption: str, alt: str) -> str:
        data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
        self.plots.append(plot_id)
        return (f'<figure class="plot" id="{_esc(plot_id)}"><img alt="{_esc(alt)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>')

    def section(self, sid: str, title: str, build) -> None:
        try:
            body = build()
        except Exception as exc:  # a plot that cannot be drawn must not stop a run's report
            where = traceback.extract_tb(exc.__traceback__)[-1]
            msg = f"{title}: could not be drawn ({type(exc).__name__}: {exc}; {os.path.basename(where.filename)}:{where.lineno})"
            self.notes.append(msg)
            body = f'<p class="warn">{_esc(msg)}</p>'
        self.sections.append((sid, title, body))


def _summary_section(run: RunData, d_min: np.ndarray, page: _Page) -> str:
    n = run.n_shots
    hit, idx = run.is_hit(), run.is_indexed()
    n_hit, n_idx = int(hit.sum()), int(idx.sum())
    spots = run.column("n_spots")
    cells = run.unit_cells()
    _, _, per_shot = split_total(*timing_matrix(run.shots))
    per_shot = per_shot[np.isfinite(per_shot)]
    n_lat = len(run.indexed) if run.indexed is not None else int(np.nansum(run.column("n_lattices")))

    def card(value, key):
        return f'<div class="card"><div class="v">{value}</div><div class="k">{key}</div></div>'

    pct = lambda a, b: f"{100.0 * a / b:.1f}%" if b else "–"  # noqa: E731
    cell_txt = " ".join(_fmt(v, ".1f") for v in np.median(cells, axis=0)[:3]) if len(cells) else "–"
    cards = [
        card(f"{n}", "shots"),
        card(f"{n_hit} <small>({pct(n_hit, n)})</small>", "hits (hit rate)"),
        card(f"{n_idx} <small>({pct(n_idx, n)})</small>", "indexed (of all shots)"),
        card(pct(n_idx, n_hit), "indexed of hits"),
        card(f"{n_lat}", "lattices"),
        card(_fmt(np.nanmedian(spots) if np.isfinite(spots).any() else np.nan, ".0f"), "median spots per shot"),
        card(cell_txt, "median a b c (Å)"),
        card(_fmt(np.nanmedian(d_min) if np.isfinite(d_min).any() else np.nan, ".2f") + " Å",
             "median d_min, indexed shots"),
        card(_fmt(np.median(per_shot) * 1e3 if len(per_shot) else np.nan, ".0f") + " ms",
             "median time per shot (one core)"),
    ]
    counts = Counter(str(s.get("status", "")) for s in run.shots)
    rows = "".join(
        f'<tr><td class="l"><span class="dot" style="background:{STATUS_COLOURS.get(s, "#999")}"></span>'
        f'{_esc(s.replace("_", " "))}</td><td>{c}</td><td>{pct(c, n)}</td></tr>'
        for s, c in sorted(counts.items(), key=lambda kv: -kv[1]))
    status_table = (f'<table><tr><th class="l">status</th><th>shots</th><th>%</th></tr>{rows}</table>')
    reasons = Counter((str(s.get("status", "")), reason_kind(str(s.get("reason")))) for s in run.shots
                      if s.get("reason"))
    if reasons:
        rrows = "".join(f'<tr><td class="l">{_esc(st)}</td><td class="l">{_esc(r)}</td><td>{c}</td></tr>'
                        for (st, r), c in reasons.most_common(12))
        more = f"<p class='empty'>… and {len(reasons) - 12} more reasons</p>" if len(reasons) > 12 else ""
        reason_table = (f'<table><tr><th class="l">status</th><th class="l">reason</th><th>shots</th></tr>'
                        f'{rrows}</table>{more}')
    else:
        reason_table = '<p class="empty">No shot stopped with a reason.</p>'
    return (f'<div class="cards">{"".join(cards)}</div><div class="flex"><div><h3>Shot status</h3>'
            f'{status_table}</div><div><h3>Why shots stopped</h3>{reason_table}</div></div>')


def _chosen_shots(run: RunData, n: int) -> list[int]:
    """Shot numbers to render: most indexed spots first, then most spots."""
    if n <= 0 or not run.n_shots:
        return []
    readable = np.array([s.get("status") != "unreadable" for s in run.shots])
    n_idx = np.nan_to_num(run.column("n_indexed"), nan=0.0)
    n_spots = np.nan_to_num(run.column("n_spots"), nan=0.0)
    order = np.lexsort((np.arange(run.n_shots), -n_spots, -n_idx))
    return [int(i) for i in order if readable[i]][:n]


def _shot_images(run: RunData, options: ReportOptions, page: _Page) -> str:
    chosen = _chosen_shots(run, options.n_images)
    if not chosen:
        return '<p class="empty">No shot to draw.</p>'
    if run.imported is None and run.indexed is None and run.integrated is None:
        return ('<p class="empty">No experiment file (imported.expt, indexed.expt) names the shots\' images: '
                'no shot to draw.</p>')
    from stillshot.io.imageset import read_shot

    imp_shot = run.shot_of(run.imported)
    idx_shot = run.shot_of(run.indexed)
    pred_table, pred_shot = run.integrated_refl, run.shot_of(run.integrated)
    pred_label = "integrated"
    if pred_table is None or run.integrated is None:
        pred_table, pred_shot, pred_label = run.indexed_refl, idx_shot, "indexed"
    parts = []
    for k, i in enumerate(chosen):
        s = run.shots[i]
        label = s.get("file", "?") + ("" if s.get("frame") is None else f" frame {s.get('frame')}")
        try:
            exps = [j for j in range(len(imp_shot)) if imp_shot[j] == i]
            exp = run.imported[exps[0]] if exps else None
            lat = [j for j in range(len(idx_shot)) if idx_shot[j] == i]
            if exp is None and lat:
                exp = run.indexed[lat[0]]
            if exp is None or exp.image is None:
                raise ValueError("the shot has no experiment naming its image")
            detector = (run.indexed[lat[0]].detector if lat else exp.detector)
            shot = _read_pixels(read_shot, exp.image, run.out_dir,
                                options.reference_geometry if options.reference_geometry is not None
                                else detector)
            observed = None
            if run.strong is not None and exps and "xyzobs.px.value" in run.strong:
                sel = np.isin(run.strong["id"].astype(np.int64), exps)
                observed = (run.strong["panel"][sel].astype(np.int64), run.strong["xyzobs.px.value"][sel, :2])
            predicted = None
            if pred_table is not None and lat and "xyzcal.px" in pred_table:
                sel = np.isin(pred_table["id"].astype(np.int64), np.flatnonzero(pred_shot == i))
                xy = pred_table["xyzcal.px"][sel, :2]
                good = np.all(np.isfinite(xy), axis=1)
                predicted = (pred_table["panel"][sel][good].astype(np.int64), xy[good])
            cell = s.get("unit_cell")
            title = (f"{label}: {s.get('status', '?')}, {s.get('n_spots', '?')} spots, "
                     f"{s.get('n_indexed', '?')} indexed"
                     + (f"\ncell {' '.join(_fmt(v, '.1f') for v in cell)}" if cell else ""))
            fig = plots.plot_shot(DetectorLayout(detector), shot.data, title, observed=observed,
                                  predicted=predicted, s0=exp.beam.s0, max_px=options.image_max_px)
            parts.append(page.figure(
                fig, f"plot-shot-{k}",
                f"Shot {i} of the run ({_esc(label)}). Circles: spots found; crosses: reflections predicted "
                f"by the {pred_label} model. Left: every panel at its lab position (projected on the detector "
                f"plane), max-pooled for display; right: unbinned pixels around the densest group of spots "
                f"(orange box on the left).", f"detector image of {label}"))
        except Exception as exc:  # an unreadable image is a note, not a failed report
            msg = f"shot image {label}: not drawn ({type(exc).__name__}: {exc})"
            page.notes.append(msg)
            parts.append(f'<p class="warn">{_esc(msg)}</p>')
    return f'<div class="shots">{"".join(parts)}</div>'


def _read_pixels(read_shot, image, out_dir: Path, geometry):
    """Read a shot's pixels: the path as written, else relative to the processing directory or its
    parents, else the file's name in the processing directory."""
    candidates = [image.path]
    if not os.path.isabs(image.path):
        # relative to where the run was started: usually the directory or one of its parents
        candidates.append(str(out_dir / image.path))
        candidates += [str(p / image.path) for p in out_dir.resolve().parents[:3]]
    candidates.append(str(out_dir / os.path.basename(image.path)))
    last = None
    for path in dict.fromkeys(candidates):
        if os.path.exists(path):
            from stillshot.models import ImageRef

            return read_shot(ImageRef(path, image.frame), reference_geometry=geometry)
        last = path
    raise FileNotFoundError(f"image {image.path} not found (also tried {last})")


def _merging_section(run: RunData, page: _Page) -> str:
    m = run.merging
    if m is None:
        if run.merging_raw is not None:
            return '<p class="warn">merging_stats.json holds no per-shell statistics that could be read.</p>'
        return ('<p class="empty">No merging statistics in this directory (run <code>stillshot merge</code> '
                'with output.dir here to add them).</p>')
    fig = plots.plot_merging(m)
    out = page.figure(fig, "plot-merging", "Per-shell statistics; the resolution axis is linear in 1/d².",
                      "merging statistics per resolution shell")
    names = [("completeness", "Compl. %", ".1f"), ("multiplicity", "Mult.", ".1f"),
             ("i_over_sigma", "⟨I/σ⟩", ".2f"), ("cc_half", "CC1/2", ".3f"), ("cc_star", "CC*", ".3f"),
             ("r_split", "Rsplit", ".3f"), ("n_unique", "unique", ".0f"), ("n_obs", "obs", ".0f")]
    names = [t for t in names if t[0] in m.columns or t[0] in m.overall]
    head = "".join(f"<th>{_esc(t[1])}</th>" for t in names)
    rows = []
    for k in range(m.n_shells):
        cells = "".join(f"<td>{_fmt(m.columns[c][k], f) if c in m.columns else '–'}</td>" for c, _, f in names)
        rows.append(f"<tr><td>{_fmt(m.d_max[k], '.2f')}</td><td>{_fmt(m.d_min[k], '.2f')}</td>{cells}</tr>")
    if m.overall:
        cells = "".join(f"<td>{_fmt(m.overall.get(c), f)}</td>" for c, _, f in names)
        rows.append(f"<tr><th>overall</th><th>{_fmt(m.overall.get('d_min'), '.2f')}</th>{cells}</tr>")
    table = (f'<table id="merging-table"><tr><th>d_max (Å)</th><th>d_min (Å)</th>{head}</tr>'
             f'{"".join(rows)}</table>')
    extra = {}
    for k, v in m.extra.items():
        if isinstance(v, bool) or k in ("log", "parameters"):
            continue
        if isinstance(v, (str, int)):
            extra[k] = v
        elif isinstance(v, float):
            extra[k] = _fmt(v, ".4g")
        elif isinstance(v, list) and 0 < len(v) <= 6 and all(isinstance(x, (int, float)) for x in v):
            extra[k] = " ".join(_fmt(x, ".4g") for x in v)
    facts = ", ".join(f"{_esc(k.replace('_', ' '))}: {_esc(v)}" for k, v in list(extra.items())[:10])
    return out + table + (f'<p class="empty">{facts}</p>' if facts else "")


def build_html(run: RunData, options: ReportOptions | None = None) -> tuple[str, list, list]:
    """The report page of a loaded run.

    Parameters
    ----------
    run : RunData
    options : ReportOptions, optional

    Returns
    -------
    html : str
    plot_ids : list of str
        Element ids of the plots drawn.
    notes : list of str
        What could not be read or drawn.
    """
    options = options or ReportOptions()
    page = _Page()
    page.notes.extend(run.notes)
    n = run.n_shots
    window = options.rolling_window or auto_window(n)
    statuses = run.statuses()
    spot_experiments, spot_table = run.indexed_spots()
    d_min = (shot_resolution(spot_experiments, spot_table, run.shot_of(spot_experiments), n)
             if spot_table is not None else np.full(n, np.nan))
    detector = run.detector()

    with matplotlib.rc_context(plots.STYLE):
        page.section("summary", "Summary", lambda: _summary_section(run, d_min, page))

        def rates():
            if not n:
                return '<p class="empty">No shots.</p>'
            fig = plots.plot_rates(statuses, run.is_hit(), run.is_indexed(), window, rolling_fraction)
            return page.figure(fig, "plot-rates", "Hit rate: shots that passed the hit finder; indexing rate: "
                               "shots with at least one lattice, both as % of all shots in a centred window. "
                               "The strip below shows every shot's status in run order.",
                               "hit and indexing rate over the run")

        page.section("rates", "Hit and indexing rate", rates)

        def spots():
            if not n:
                return '<p class="empty">No shots.</p>'
            ns = run.column("n_spots")
            med = _rolling_median(ns, window)
            fig = plots.plot_spots(ns, statuses, window, med)
            return page.figure(fig, "plot-spots", "Strong spots found per shot, coloured by the shot's final "
                               "status.", "spots per shot")

        page.section("spots", "Spots per shot", spots)

        def cells():
            c = run.unit_cells()
            if not len(c):
                return '<p class="empty">No indexed lattices.</p>'
            fig = plots.plot_unit_cells(c)
            return page.figure(fig, "plot-cells", "Unit-cell parameters of every lattice (as indexed, in the "
                               "setting of the known symmetry where one was given).", "unit-cell histograms")

        page.section("cells", "Unit cells", cells)

        def resolution():
            if not np.isfinite(d_min).any():
                return '<p class="empty">No indexed reflections.</p>'
            fig = plots.plot_resolution(d_min)
            return page.figure(fig, "plot-resolution", "Smallest d-spacing among each shot's indexed spots "
                               "(a per-shot resolution estimate; better resolution upwards).",
                               "resolution of indexed shots")

        page.section("resolution", "Resolution of indexed shots", resolution)

        def residuals():
            table = spot_table
            if detector is None or table is None or len(table) == 0:
                return '<p class="empty">No indexed reflections.</p>'
            layout = DetectorLayout(detector)
            res = panel_residuals(table, len(detector))
            tiles = (tile_residuals(table, detector, options.residual_tiles) if len(detector) < 4 else None)
            fig = plots.plot_residual_map(layout, res, tiles)
            # rank panels with a few spots (means of one or two spots are noise)
            enough = res["n"] >= min(3, int(res["n"].max()))
            size = np.where(enough, np.nan_to_num(np.hypot(res["dx"], res["dy"]), nan=-1.0), -1.0)
            worst = np.argsort(-size, kind="stable")[:5]
            rows = "".join(
                f"<tr><td>{k}</td><td class='l'>{_esc(detector[k].name)}</td><td>{res['n'][k]}</td>"
                f"<td>{_fmt(res['dx'][k], '+.3f')}</td><td>{_fmt(res['dy'][k], '+.3f')}</td>"
                f"<td>{_fmt(res['rms'][k], '.3f')}</td></tr>" for k in worst if enough[k] and res["n"][k] > 0)
            table_html = ("<table id='residual-table'><tr><th>panel</th><th class='l'>name</th><th>spots</th>"
                          "<th>mean Δx (px)</th><th>mean Δy (px)</th><th>RMS (px)</th></tr>" + rows + "</table>")
            return (page.figure(fig, "plot-residuals",
                                "The metrology view: mean observed − calculated position (xyzobs.px.value − "
                                "xyzcal.px) of the indexed spots per " + ("tile of each panel" if tiles else
                                "panel") + ", panels drawn at their lab positions. A coherent pattern over a "
                                "group of panels points at a geometry error (stillshot metrology refines it).",
                                "positional residuals per panel on the detector")
                    + f"<h3>Largest mean residuals (panels with ≥ {min(3, int(res['n'].max()))} spots)</h3>"
                    + table_html)

        page.section("metrology", "Detector metrology (positional residuals)", residuals)

        def timings():
            stages, secs, total = split_total(*timing_matrix(run.shots))
            if not stages:
                return '<p class="empty">No timings recorded.</p>'
            fig = plots.plot_timings(stages, secs, total)
            return page.figure(fig, "plot-timings", "Wall-clock seconds per stage as recorded for each shot "
                               "(one process; divide by the number of processes for the run's throughput).",
                               "timing breakdown per stage")

        page.section("timings", "Timing per stage", timings)
        page.section("shots", "Shots", lambda: _shot_images(run, options, page))
        page.section("merging", "Merging statistics", lambda: _merging_section(run, page))
    page.section("run", "Run details", lambda: _details(run, page.notes))

    title = options.title or f"stillshot report: {run.out_dir.resolve().name}"
    nav = "".join(f'<a href="#{sid}">{_esc(t)}</a>' for sid, t, _ in page.sections)
    body = "".join(f'<section id="{sid}"><h2>{_esc(t)}</h2>{b}</section>' for sid, t, b in page.sections)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{_CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><div class=\"meta\">{_esc(str(run.out_dir.resolve()))} · "
        f"{run.n_shots} shots · stillshot {__version__} · {stamp}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main><script>{_SCRIPT}</script></body></html>\n"
    )
    return doc, list(page.plots), list(page.notes)


def _rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    n = len(values)
    if n == 0:
        return values
    w = max(1, min(window, n))
    step = max(1, n // 2000)  # long runs: median on a coarser grid, interpolated
    centres = np.arange(0, n, step)
    med = np.empty(len(centres))
    for k, c in enumerate(centres):
        lo = max(0, min(c - (w - 1) // 2, n - w))
        seg = values[lo:lo + w]
        seg = seg[np.isfinite(seg)]
        med[k] = np.median(seg) if len(seg) else np.nan
    return np.interp(np.arange(n), centres, med) if step > 1 else med


def _details(run: RunData, notes: list) -> str:
    files = [f for f in ("summary.json", "imported.expt", "strong.refl", "indexed.expt", "indexed.refl",
                         "integrated.expt", "integrated.refl", "results.stream", "merging_stats.json")]
    present = "".join(f"<li>{_esc(f)}{'' if (run.out_dir / f).is_file() else ' <em>(absent)</em>'}</li>"
                      for f in files)
    note_html = ("<h3>Notes</h3><ul>" + "".join(f"<li>{_esc(x)}</li>" for x in notes) + "</ul>") if notes else ""
    params = json.dumps(run.parameters, indent=1, default=str) if run.parameters else "{}"
    totals = json.dumps(run.totals, indent=1, default=str) if run.totals else "{}"
    return (f"{note_html}<h3>Files</h3><ul>{present}</ul>"
            f"<details><summary>Run totals (summary.json)</summary><pre>{_esc(totals)}</pre></details>"
            f"<details><summary>Parameters</summary><pre>{_esc(params)}</pre></details>")


def write_report(out_dir: str | os.PathLike, options: ReportOptions | None = None, *,
                 filename: str = "report.html") -> ReportResult:
    """Write ``out_dir/report.html`` for a processing directory.

    Reads whatever the directory holds (summary.json, imported/indexed/
    integrated .expt and .refl, strong.refl, merging_stats.json); missing
    parts are noted on the page, never an error.  The file is written to a
    temporary name and renamed into place.

    Parameters
    ----------
    out_dir : str or PathLike
        The processing directory (``output.dir`` of ``stillshot process``).
    options : ReportOptions, optional
    filename : str
        Name of the report file inside ``out_dir``.

    Returns
    -------
    ReportResult

    Raises
    ------
    FileNotFoundError
        When ``out_dir`` is not a directory.
    """
    run = load_run(out_dir)
    doc, plot_ids, notes = build_html(run, options)
    path = Path(out_dir) / filename
    tmp = path.with_name(f".{filename}.tmp{os.getpid()}")
    try:
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ReportResult(path, plot_ids, notes)
