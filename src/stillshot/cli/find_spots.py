"""``stillshot find-spots FILES... [params]``: strong spots and hits -> imported.expt, strong.refl.

Every readable shot becomes one experiment in ``imported.expt``; its spots
go to ``strong.refl`` with that experiment's ``id``.  A table of spots and
hits per shot is printed as shots finish, and ``find_spots.json`` records
the same per shot with the run's parameters and resolved values.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from stillshot.cli.common import (
    EXIT_SOME_INPUTS_FAILED,
    UsageError,
    output_path,
    parse_command_line,
    reference_geometry,
    report_failures,
    run_command,
)
from stillshot.config import common, is_auto, root
from stillshot.io.base import ImageFormatError, open_image
from stillshot.io.imageset import expand_inputs, iter_frames, InputFailure
from stillshot.models import Experiment, ExperimentList
from stillshot.spotfind import find_spots, load_lookup, options_from_params
from stillshot.spotfind.threshold import algorithm_names
from stillshot.table import ReflectionTable

USAGE = """usage: stillshot find-spots FILES... [scope.key=value ...] [params.phil]

Find strong spots on every shot of the image files (any supported format;
globs and .txt/.lst lists of files allowed) and decide which shots are hits
(dispatch.hit_finder.minimum_number_of_reflections spots or more).
Writes imported.expt, strong.refl and find_spots.json to output.dir.

Examples:
  stillshot find-spots run14/*.cbf spotfinder.filter.min_spot_size=2 \\
      spotfinder.threshold.dispersion.gain=25 spotfinder.threshold.dispersion.global_threshold=100
  stillshot find-spots data.cxi input.reference_geometry=cspad.geom spotfinder.threshold.algorithm=radial \\
      spotfinder.lookup.pedestal=dark/average.npz:mean mp.nproc=8"""

DEFINITION = root(
    common.input_scope(),
    common.output_scope(),
    common.mp_scope(),
    common.dispatch_scope(),
    common.spotfinder_scope(),
)


@dataclass(frozen=True)
class _Item:
    index: int
    path: str
    frame: int | None


class _Worker:
    """Reads and processes shots in one process (keeps the last file open)."""

    def __init__(self, options, lookup, reference):
        self.options = options
        self.lookup = lookup
        self.reference = reference
        self._reader = None

    def _open(self, path):
        if self._reader is None or self._reader.path != path:
            if self._reader is not None:
                self._reader.close()
            self._reader = open_image(path, reference_geometry=self.reference)
        return self._reader

    def __call__(self, item: _Item) -> dict:
        t0 = time.perf_counter()
        record = {"index": item.index, "file": item.path, "frame": item.frame}
        try:
            reader = self._open(item.path)
            shot = reader.shot(item.frame or 0)
        except ImageFormatError as exc:
            record.update(status="unreadable", reason=exc.reason)
            return record
        except (OSError, ValueError, KeyError, EOFError) as exc:
            record.update(status="unreadable", reason=f"{type(exc).__name__}: {exc}")
            return record
        t1 = time.perf_counter()
        result = find_spots(shot, self.options, self.lookup)
        t2 = time.perf_counter()
        status = result.status if result.status != "ok" else ("hit" if result.hit else "not_hit")
        record.update(
            status=status, reason=result.reason, n_spots=result.n_spots,
            n_strong_pixels=result.n_strong_pixels, resolved=result.resolved,
            timings={"read": t1 - t0, **result.timings, "find_spots": t2 - t1},
            experiment=Experiment(beam=shot.beam, detector=shot.detector, image=shot.image),
            reflections=result.reflections,
        )
        return record


_WORKER: _Worker | None = None


def _init(options, lookup, reference):
    global _WORKER
    _WORKER = _Worker(options, lookup, reference)


def _work(item):
    return _WORKER(item)


def _nproc(params) -> int:
    n = params.mp.nproc
    if n is None or is_auto(n):
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(1, int(n))


def _first_detector(items, reference):
    for item in items:
        try:
            with open_image(item.path, reference_geometry=reference) as reader:
                return reader.models(item.frame or 0)[1]
        except ImageFormatError:
            continue
    return None


def _label(record) -> str:
    name = os.path.basename(record["file"])
    return name if record["frame"] is None else f"{name}#{record['frame']}"


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot find-spots``."""

    def body() -> int:
        cl = parse_command_line("find-spots", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        params = cl.params
        files = expand_inputs(cl.files)
        if not files:
            raise UsageError("no input files (give image files, globs or a .txt list of files)")
        options = options_from_params(params)
        if options.algorithm not in algorithm_names():
            raise UsageError(f"spotfinder.threshold.algorithm={options.algorithm} is not available "
                             f"(available: {', '.join(algorithm_names())})")
        reference = reference_geometry(params)
        items: list[_Item] = []
        failures: list[InputFailure] = []
        for entry in iter_frames(files, reference):
            if isinstance(entry, InputFailure):
                failures.append(entry)
            else:
                reader, frame = entry
                items.append(_Item(len(items), reader.path, frame if reader.is_multi_frame else None))
        lk = params.spotfinder.lookup
        lookup = None
        if any((lk.mask, lk.bad_pixels, lk.pedestal, lk.gain_map)):
            detector = _first_detector(items, reference)
            if detector is None:
                raise ValueError("no readable shot to take the detector layout of the lookup files from")
            lookup = load_lookup(detector, mask=lk.mask, bad_pixels=lk.bad_pixels, pedestal=lk.pedestal,
                                 gain_map=lk.gain_map)
        report_failures("find-spots", failures)

        nproc = min(_nproc(params), max(1, len(items)))
        t0 = time.perf_counter()
        records: list[dict] = []
        width = max([len(_label({"file": i.path, "frame": i.frame})) for i in items] + [4])
        print(f"{'shot':<{width}}  {'spots':>6}  {'strong px':>9}  {'hit':>3}  {'time/s':>6}")

        def show(rec):
            if rec["status"] in ("unreadable", "failed"):
                print(f"{_label(rec):<{width}}  {'-':>6}  {'-':>9}  {'-':>3}  {'-':>6}  {rec['status']}: {rec['reason']}")
            else:
                print(f"{_label(rec):<{width}}  {rec['n_spots']:>6}  {rec['n_strong_pixels']:>9}  "
                      f"{'yes' if rec['status'] == 'hit' else 'no':>3}  {rec['timings']['find_spots']:>6.3f}",
                      flush=True)

        if params.mp.method == "mpi":
            raise UsageError("find-spots runs with mp.method=multiprocessing (use stillshot process under MPI)")
        if nproc <= 1:
            worker = _Worker(options, lookup, reference)
            for item in items:
                rec = worker(item)
                show(rec)
                records.append(rec)
        else:
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            with ctx.Pool(nproc, initializer=_init, initargs=(options, lookup, reference)) as pool:
                for rec in pool.imap(_work, items, chunksize=1):
                    show(rec)
                    records.append(rec)
        wall = time.perf_counter() - t0

        experiments = ExperimentList()
        tables = []
        last_det, last_dict = None, None
        for rec in records:
            exp = rec.get("experiment")
            if exp is None:
                continue
            det = exp.detector
            as_dict = det.to_dict()
            if last_det is not None and as_dict == last_dict:
                exp = replace(exp, detector=last_det)
            else:
                last_det, last_dict = det, as_dict
            k = len(experiments)
            experiments.append(exp)
            t = rec["reflections"]
            if len(t):
                t = t.copy()
                t["id"] = np.full(len(t), k, dtype=np.int32)
                t.identifiers = {k: exp.identifier}
                tables.append(t)
        strong = ReflectionTable.concat(tables) if tables else None
        if strong is None or not len(strong.keys()):
            from stillshot.spotfind.spots import empty_spot_table

            strong = empty_spot_table()
        experiments.as_file(output_path(params, "imported.expt"))
        strong.as_file(output_path(params, "strong.refl"))

        shots = []
        for rec in records:
            entry = {k: rec.get(k) for k in ("file", "frame", "status", "reason", "n_spots", "n_strong_pixels")}
            entry["timings"] = {k: round(v, 6) for k, v in rec.get("timings", {}).items()}
            entry["resolved"] = rec.get("resolved", {})
            shots.append(entry)
        shots += [{"file": f.path, "frame": f.frame, "status": "unreadable", "reason": f.reason,
                   "n_spots": None, "n_strong_pixels": None, "timings": {}, "resolved": {}} for f in failures]
        n_hits = sum(1 for s in shots if s["status"] == "hit")
        n_read = sum(1 for s in shots if s["status"] in ("hit", "not_hit"))
        summary = {
            "shots": shots,
            "totals": {"n_shots": len(shots), "n_hits": n_hits, "hit_rate": n_hits / len(shots) if shots else 0.0,
                       "n_spots": int(len(strong)), "wall_s": round(wall, 3), "nproc": nproc},
            "parameters": params.as_dict(),
        }
        with open(output_path(params, "find_spots.json"), "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
        bad = len(shots) - n_read
        print(f"{len(shots)} shot{'s' if len(shots) != 1 else ''}: {n_hits} hit{'s' if n_hits != 1 else ''} "
              f"({100.0 * n_hits / max(len(shots), 1):.1f}%), {len(strong)} spots"
              + (f", {bad} failed or unreadable" if bad else "")
              + f"; {wall:.2f} s with {nproc} process{'es' if nproc != 1 else ''}")
        print(f"wrote {output_path(params, 'imported.expt')}, {output_path(params, 'strong.refl')}, "
              f"{output_path(params, 'find_spots.json')}")
        return EXIT_SOME_INPUTS_FAILED if bad else 0

    return run_command("find-spots", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
