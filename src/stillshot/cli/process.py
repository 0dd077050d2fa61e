"""``stillshot process FILES... [params] output.dir=DIR``: the whole per-shot pipeline over a run.

Per shot: spot finding -> hit finding -> indexing with per-shot crystal
refinement -> integration (:mod:`stillshot.pipeline.still`), dealt over local
processes (``mp.method=multiprocessing``, every core by default) or MPI ranks
(``mpiexec -n N stillshot process ... mp.method=mpi``).  Each finished shot
goes to a journal in output.dir at once; a killed run re-run with the same
output.dir goes on where it stopped.  The output files are rebuilt from the
journal at the end, in input order, so they do not depend on nproc or method.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import time

from stillshot.cli.common import (
    EXIT_SOME_INPUTS_FAILED,
    EXIT_USAGE,
    UsageError,
    parse_command_line,
    reference_geometry,
    run_command,
)
from stillshot.cli import index as index_cli
from stillshot.cli.index import indexing_options, refinement_options
from stillshot.cli.progress import Progress, final_table
from stillshot.config import Auto, common, is_auto, leaf, root, scope, choice
from stillshot.pipeline.journal import JournalIndex, check_run_settings
from stillshot.pipeline.outputs import write_outputs
from stillshot.pipeline.runner import default_nproc, run_shots
from stillshot.pipeline.sources import get_source, source_names
from stillshot.pipeline.still import PRELOAD_MODULES, StillContext, process_still, stage_names
from stillshot.spotfind import algorithm_names, load_lookup, options_from_params

try:  # integration plugs in when its package is there
    from stillshot.cli.integrate import integration_options
    from stillshot.integrate import registry as integrate_registry

    INTEGRATION_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the installation
    INTEGRATION_AVAILABLE = False

USAGE = """usage: stillshot process FILES... [scope.key=value ...] [params.phil] output.dir=DIR [--quiet|--json]

Process every shot of the inputs: spot finding, hit finding, indexing with
per-shot refinement and integration.  Inputs: image files, globs, .txt/.lst
lists of files, multi-frame CXI/NeXus files (frame by frame); other image
sources by name with input.source=NAME.  Writes into output.dir:
imported.expt strong.refl indexed.expt indexed.refl integrated.expt
integrated.refl results.stream summary.json report.html.

Re-running with the same output.dir resumes a stopped run (no shot is lost
or done twice).  Parallel: mp.nproc=N (default: every core); under MPI:
  mpiexec -n 64 stillshot process run/*.cbf mp.method=mpi output.dir=out

Examples:
  stillshot process thaumatin/*.cbf.bz2 indexing.known_symmetry.space_group=P41212 \\
      indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90 output.dir=thau
  stillshot process files.txt mp.nproc=8 dispatch.integrate=False --json output.dir=out"""

PROGRESS_FLAGS = ("--quiet", "--json")


def _process_scope():
    integrate_default = INTEGRATION_AVAILABLE
    return [
        scope("input", children=[
            leaf("source", choice(source_names()), "files",
                 help="Where shots come from: files (image files, globs, lists of files, CXI/NeXus "
                 "frame by frame) or a registered image-source plugin (entry-point group "
                 "stillshot.image_sources)."),
        ]),
        scope("output", children=[
            leaf("progress", choice(["bar", "quiet", "json"]), "bar",
                 help="Live view: a progress bar on stderr (bar), nothing (quiet), or one JSON "
                 "object per shot on stdout (json, for batch systems). --quiet and --json set it too."),
            leaf("stream", bool, True, help="Write results.stream (CrystFEL stream)."),
            leaf("report", bool, True, help="Write report.html at the end (when the report module is present)."),
            leaf("overwrite", bool, False,
                 help="Start afresh in an output.dir that holds a run with other parameters "
                 "(default: refuse; the same parameters resume the run)."),
        ]),
        scope("dispatch", children=[
            leaf("index", bool, True, help="Index hits (False: stop after hit finding)."),
            leaf("integrate", bool, integrate_default,
                 help="Integrate indexed shots (needs the integration module)."),
            leaf("max_nonfinite_fraction", float, 0.5, min=0.0, max=1.0, expert_level=1,
                 help="A shot with a larger fraction of NaN or infinite pixels is recorded as "
                 "failed (a corrupt frame); fewer such pixels are masked."),
        ]),
    ]


def _definition():
    parts = [
        common.input_scope(),
        common.output_scope(),
        common.mp_scope(default_nproc=Auto),
        common.dispatch_scope(),
        common.spotfinder_scope(),
        # the index command's own scopes: the same parameters and defaults as `stillshot index`
        *(node for node in index_cli.DEFINITION.children if node.name in ("indexing", "refinement")),
    ]
    if INTEGRATION_AVAILABLE:
        parts += [common.prediction_scope(),
                  common.integration_scope(algorithms=tuple(integrate_registry.names()))]
    return root(*parts, *_process_scope())


DEFINITION = _definition()

#: Parameters that may change between a run and its resumption.
_RESUMABLE_CHANGES = ("mp.", "output.progress", "output.report", "output.stream", "output.overwrite")


def _mpi_comm(method: str):
    if method != "mpi":
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError("mp.method=mpi needs mpi4py (pip install 'stillshot[mpi]')") from None
    return MPI.COMM_WORLD


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot process``."""

    def body() -> int:
        cl = parse_command_line("process", DEFINITION, argv, USAGE, flags=PROGRESS_FLAGS)
        if isinstance(cl, int):
            return cl
        params = cl.params
        if not cl.files:
            raise UsageError("no input files (give image files, globs or a .txt list of files)")
        out_dir = params.output.dir or "."
        mode = "json" if "--json" in cl.flags else "quiet" if "--quiet" in cl.flags else params.output.progress
        comm = _mpi_comm(params.mp.method)
        rank = comm.Get_rank() if comm is not None else 0
        size = comm.Get_size() if comm is not None else 1

        spot_options = options_from_params(params)
        if spot_options.algorithm not in algorithm_names():
            raise UsageError(f"spotfinder.threshold.algorithm={spot_options.algorithm} is not available "
                             f"(available: {', '.join(algorithm_names())})")
        index_options = indexing_options(params) if params.dispatch.index else None
        integrate = bool(params.dispatch.integrate) and index_options is not None
        if integrate and not INTEGRATION_AVAILABLE:
            raise UsageError("dispatch.integrate=True but the integration module is not installed")
        reference = reference_geometry(params)
        try:
            source = get_source(params.input.source, cl.files, reference_geometry=reference)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        reader = source.reader()

        lk = params.spotfinder.lookup
        lookup = None
        items = None
        if any((lk.mask, lk.bad_pixels, lk.pedestal, lk.gain_map)):
            items = list(source.items())
            detector = None
            for item in items:
                try:
                    detector = reader.read(item).detector
                    break
                except (ValueError, OSError):
                    continue
            reader.close()
            if detector is None:
                raise ValueError("no readable shot to take the detector layout of the lookup files from")
            lookup = load_lookup(detector, mask=lk.mask, bad_pixels=lk.bad_pixels, pedestal=lk.pedestal,
                                 gain_map=lk.gain_map)

        context = StillContext(
            spotfinder=spot_options,
            indexing=index_options,
            refinement=refinement_options(params) if index_options is not None else None,
            integration=integration_options(params) if integrate else None,
            lookup=lookup,
            max_nonfinite_fraction=float(params.dispatch.max_nonfinite_fraction),
        )
        params_dict = params.as_dict()
        problem = None
        if rank == 0:
            problem = check_run_settings(out_dir, params_dict, cl.files, overwrite=bool(params.output.overwrite),
                                         ignore=_RESUMABLE_CHANGES)
            if problem is not None:
                problem += ": use another output.dir, or output.overwrite=True to start afresh"
        if comm is not None:  # every rank stops when rank 0 refuses the directory
            problem = comm.bcast(problem, root=0)
        if problem is not None:
            if rank != 0:
                return EXIT_USAGE
            raise UsageError(problem)

        nproc = params.mp.nproc
        nproc = default_nproc() if nproc is None or is_auto(nproc) else max(1, int(nproc))
        label = f"rank 0 of {size}: " if size > 1 else ""
        progress = Progress(0, mode if rank == 0 else "quiet", label=label)

        def on_start(todo, skipped):
            progress.start(-(-todo // size) if size > 1 else todo, skipped)

        t0 = time.perf_counter()
        stats = run_shots(items if items is not None else source.items(),
                          functools.partial(process_still, context=context), reader, out_dir,
                          nproc=nproc, method=params.mp.method, on_result=progress, on_start=on_start,
                          preload=PRELOAD_MODULES)
        if rank != 0:
            return 0
        wall = time.perf_counter() - t0
        run_info = {"method": params.mp.method, "nproc": stats["size"] if comm is not None else nproc,
                    "n_processed_now": stats["n_done"], "n_resumed": stats["n_skipped"],
                    "wall_s": round(wall, 3), "stages": stage_names(context)}
        with JournalIndex(out_dir) as index:
            results = (index.get(item.key) for item in stats["items"] if item.key in index)
            ks = params.indexing.known_symmetry
            stream = None
            if params.output.stream:
                stream = {"cell": tuple(ks.unit_cell) if ks.unit_cell else None,
                          "space_group": str(ks.space_group) if ks.space_group else None,
                          "command": "stillshot process " + " ".join(shlex.quote(a) for a in argv),
                          "indexed_by": f"stillshot_{index_options.method}" if index_options else "none"}
            totals = write_outputs(out_dir, results, params_dict, run=run_info, integration=integrate,
                                   stream=stream)
        report_note = _report(out_dir) if params.output.report else None
        missing = len(stats["items"]) - totals["n_shots"]
        if mode != "json":
            unit = ("MPI rank", "MPI ranks") if comm is not None else ("process", "processes")
            print(f"stillshot process: {totals['n_shots']} shots in {wall:.1f} s "
                  f"({stats['n_done']} processed now, {stats['n_skipped']} resumed) with "
                  f"{run_info['nproc']} {unit[run_info['nproc'] != 1]}")
            print(final_table(totals))
            print(f"wrote {', '.join(_written(out_dir))} to {out_dir}")
            if report_note:
                print(report_note, file=sys.stderr)
        else:
            print(json.dumps({"event": "end", "totals": totals, "run": run_info}, default=str), flush=True)
        if missing:
            print(f"stillshot process: {missing} shots have no result in the journal", file=sys.stderr)
        bad = totals["status_counts"].get("unreadable", 0)
        return EXIT_SOME_INPUTS_FAILED if bad or missing else 0

    return run_command("process", body)


def _written(out_dir: str) -> list[str]:
    from stillshot.pipeline.outputs import OUTPUT_FILES

    return [n for n in (*OUTPUT_FILES, "report.html") if os.path.exists(os.path.join(out_dir, n))]


def _report(out_dir: str) -> str | None:
    """Write report.html with the report module when it is installed; a note when it failed."""
    try:
        from stillshot.report import write_report
    except ImportError:
        return None
    try:
        write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - the report never costs the run its results
        return f"stillshot process: report.html not written ({type(exc).__name__}: {exc})"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
