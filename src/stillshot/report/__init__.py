"""HTML report of a processing directory: rates, spots, cells, metrology, timings, shots, merging.

``write_report(out_dir)`` writes ``out_dir/report.html``, one self-contained
page (matplotlib plots inlined as PNG, no network access), from whatever the
directory holds; ``stillshot process`` calls it at the end of a run and
``stillshot report DIR`` on demand.
"""

from stillshot.report.data import RunData, load_run, merging_table
from stillshot.report.html import PLOT_IDS, ReportResult, build_html, write_report
from stillshot.report.layout import DetectorLayout
from stillshot.report.options import ReportOptions

__all__ = [
    "PLOT_IDS",
    "DetectorLayout",
    "ReportOptions",
    "ReportResult",
    "RunData",
    "build_html",
    "load_run",
    "merging_table",
    "write_report",
]
