"""``stillshot report DIR [params]``: the HTML report of a processing directory -> DIR/report.html.

``stillshot process`` writes the same report at the end of a run: it adds
:func:`report_scope` to its parameters and calls
``stillshot.report.write_report(out_dir, report_options(params))``.
"""

from __future__ import annotations

import os
import sys

from stillshot.cli.common import UsageError, parse_command_line, reference_geometry, run_command
from stillshot.config import common, leaf, root, scope

USAGE = """usage: stillshot report DIR [report.key=value ...]

Write DIR/report.html: one self-contained page (no network access needed) with
the hit and indexing rate over the run, spots per shot, unit-cell histograms,
the positional residuals per panel drawn on the detector (metrology view), the
resolution of indexed shots, the time per processing stage, the best-indexed
shots drawn with their spots and predictions, and merging statistics when DIR
holds merging_stats.json.  DIR is a `stillshot process` output.dir (any of
summary.json, imported.expt, strong.refl, indexed.*, integrated.* is used).

example: stillshot report run_042 report.n_images=5"""


def report_scope():
    """The ``report`` parameter scope (see :class:`stillshot.report.ReportOptions`).

    Returns
    -------
    Scope
    """
    return scope(
        "report",
        help="The HTML report (report.html).",
        children=[
            leaf("n_images", int, 3, min=0,
                 help="Shots drawn as detector images with their spots and predictions (the best-indexed "
                 "ones); 0: none."),
            leaf("rolling_window", int, None, min=1,
                 help="Shots per window of the rolling hit and indexing rates. None: about a twentieth of "
                 "the run (5 to 500 shots)."),
            leaf("image_max_px", int, 1000, min=100, expert_level=1,
                 help="Longest side of a drawn detector image (px); larger detectors are max-pooled to it."),
            leaf("residual_tiles", int, 6, min=1, expert_level=1,
                 help="Detectors of fewer than 4 panels show positional residuals on this many x this many "
                 "tiles per panel."),
            leaf("title", str, None, expert_level=1,
                 help="Page title. None: 'stillshot report: ' and the directory name."),
        ],
    )


DEFINITION = root(common.input_scope(), report_scope())


def report_options(params, geometry=None):
    """:class:`stillshot.report.ReportOptions` from resolved ``report`` parameters.

    Parameters
    ----------
    params : Params
        Resolved parameters holding the ``report`` scope.
    geometry : Detector, optional
        Reference geometry for reading the drawn shots' pixels (CXI files).

    Returns
    -------
    ReportOptions
    """
    from stillshot.report import ReportOptions

    r = params.report
    return ReportOptions(
        n_images=int(r.n_images),
        rolling_window=None if r.rolling_window is None else int(r.rolling_window),
        image_max_px=int(r.image_max_px),
        residual_tiles=int(r.residual_tiles),
        title=r.title or None,
        reference_geometry=geometry,
    )


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot report``."""

    def body() -> int:
        cl = parse_command_line("report", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        if len(cl.files) != 1:
            raise UsageError("give one processing directory DIR (usage: stillshot report DIR [params])"
                             if not cl.files else f"give one directory DIR, not {len(cl.files)} arguments")
        out_dir = cl.files[0]
        if not os.path.isdir(out_dir):
            raise UsageError(f"{out_dir}: no such directory")
        from stillshot.report import write_report

        try:
            geometry = reference_geometry(cl.params)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        result = write_report(out_dir, report_options(cl.params, geometry))
        for note in result.notes:
            print(f"stillshot report: note: {note}", file=sys.stderr)
        print(f"wrote {result.path} ({len(result.plots)} plots)")
        return 0

    return run_command("report", body)
