"""``stillshot average FILES... [params]``: mean, max and standard-deviation images of a run.

The ``cxi.mpi_average`` step: averages of dark runs are pedestals
(``spotfinder.lookup.pedestal=average.npz:mean``), the standard deviation and
mean flag dead and hot pixels (``spotfinder.lookup.bad_pixels=average.npz:bad_pixels``),
and the mean or max of a run of hits is a powder-like sum for geometry checks.

Writes ``average.npz`` (or ``output.prefix``.npz) to output.dir with arrays
``mean``, ``max``, ``std`` (ADU), ``bad_pixels`` (bool) and ``n_shots``;
panels of one shape are stacked (n_panels, n_slow, n_fast), otherwise stored
as ``mean_0``, ``mean_1``… per panel.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

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
from stillshot.config import common, is_auto, leaf, root, scope
from stillshot.io.base import ImageFormatError, open_image
from stillshot.io.imageset import InputFailure, expand_inputs, iter_frames

USAGE = """usage: stillshot average FILES... [scope.key=value ...]

Mean, maximum and standard deviation of every pixel over all shots of the
files (the cxi.mpi_average step): darks for spotfinder.lookup.pedestal, dead
and hot pixel maps for spotfinder.lookup.bad_pixels, powder-like sums.
Writes output.dir/average.npz (arrays mean, max, std, bad_pixels, n_shots).

Example:
  stillshot average dark/*.cbf output.dir=dark
  stillshot find-spots run/*.cbf spotfinder.lookup.pedestal=dark/average.npz:mean \\
      spotfinder.lookup.bad_pixels=dark/average.npz:bad_pixels"""

DEFINITION = root(
    common.input_scope(),
    common.output_scope(),
    common.mp_scope(),
    scope("output", children=[
        leaf("prefix", str, "average", help="Name (without .npz) of the output file."),
    ]),
    scope("average", help="What is averaged and how bad pixels are flagged.", children=[
        leaf("hot_sigma", float, 6.0, min=0.0,
             help="A pixel is hot when its mean is more than this many robust standard deviations "
             "(1.4826 x MAD over its panel) above its panel's median mean."),
        leaf("dead_std", float, 0.0, min=0.0,
             help="A pixel is dead when its standard deviation over the run is at most this (ADU) "
             "and the run has more than one shot."),
    ]),
)


def _accumulate_files(paths_frames, reference):
    """Sums over shots: (n, sum, sum of squares, max) per panel, and failures."""
    n = 0
    s = s2 = mx = None
    failures = []
    reader = None
    for path, frame in paths_frames:
        try:
            if reader is None or reader.path != path:
                if reader is not None:
                    reader.close()
                reader = open_image(path, reference_geometry=reference)
            shot = reader.shot(frame or 0)
        except (ImageFormatError, OSError, ValueError, KeyError, EOFError) as exc:
            failures.append(InputFailure(path, frame, str(getattr(exc, "reason", exc))))
            continue
        data = [np.asarray(a, dtype=np.float64) for a in shot.data]
        if s is None:
            s = [a.copy() for a in data]
            s2 = [a * a for a in data]
            mx = [a.copy() for a in data]
        else:
            if [a.shape for a in data] != [a.shape for a in s]:
                failures.append(InputFailure(path, frame, "panel layout differs from the first shot"))
                continue
            for k, a in enumerate(data):
                s[k] += a
                s2[k] += a * a
                np.maximum(mx[k], a, out=mx[k])
        n += 1
    if reader is not None:
        reader.close()
    return n, s, s2, mx, failures


def _chunk_work(args):
    chunk, reference = args
    return _accumulate_files(chunk, reference)


def average_arrays(n, s, s2, mx, *, hot_sigma=6.0, dead_std=0.0):
    """Mean, max, standard deviation and bad-pixel map from per-panel sums.

    Parameters
    ----------
    n : int
        Shots summed.
    s, s2, mx : list of ndarray
        Per panel: Σv, Σv², max v (ADU).
    hot_sigma : float
    dead_std : float
        ADU.

    Returns
    -------
    dict of list of ndarray
        ``mean``, ``max``, ``std`` (population standard deviation, ADU) and
        ``bad_pixels`` (bool) per panel.
    """
    mean = [a / n for a in s]
    std = [np.sqrt(np.maximum(b / n - m * m, 0.0)) for b, m in zip(s2, mean)]
    bad = []
    for m, sd in zip(mean, std):
        med = np.median(m)
        mad = 1.4826 * np.median(np.abs(m - med))
        hot = m > med + hot_sigma * max(mad, 1e-12) if mad > 0 else np.zeros(m.shape, bool)
        dead = sd <= dead_std if n > 1 else np.zeros(m.shape, bool)
        bad.append(hot | dead)
    return {"mean": mean, "max": [a.copy() for a in mx], "std": std, "bad_pixels": bad}


def _store(arrays: dict, n: int) -> dict:
    out = {"n_shots": np.array(n)}
    for key, per_panel in arrays.items():
        shapes = {a.shape for a in per_panel}
        if len(shapes) == 1:
            stack = np.stack(per_panel)
            out[key] = stack.astype(np.float32) if stack.dtype.kind == "f" else stack
        else:
            for i, a in enumerate(per_panel):
                out[f"{key}_{i}"] = a.astype(np.float32) if a.dtype.kind == "f" else a
    return out


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot average``."""

    def body() -> int:
        cl = parse_command_line("average", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        params = cl.params
        files = expand_inputs(cl.files)
        if not files:
            raise UsageError("no input files")
        reference = reference_geometry(params)
        work, failures = [], []
        for entry in iter_frames(files, reference):
            if isinstance(entry, InputFailure):
                failures.append(entry)
            else:
                reader, frame = entry
                work.append((reader.path, frame if reader.is_multi_frame else None))
        t0 = time.perf_counter()
        nproc = params.mp.nproc
        nproc = (os.cpu_count() or 1) if (nproc is None or is_auto(nproc)) else int(nproc)
        nproc = max(1, min(nproc, len(work)))
        if nproc == 1:
            parts = [_accumulate_files(work, reference)]
        else:
            chunks = [work[i::nproc] for i in range(nproc)]
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            with ctx.Pool(nproc) as pool:
                parts = pool.map(_chunk_work, [(c, reference) for c in chunks])
        n, s, s2, mx = 0, None, None, None
        for pn, ps, ps2, pmx, pf in parts:
            failures.extend(pf)
            if pn == 0:
                continue
            if s is None:
                n, s, s2, mx = pn, ps, ps2, pmx
            else:
                n += pn
                for k in range(len(s)):
                    s[k] += ps[k]
                    s2[k] += ps2[k]
                    np.maximum(mx[k], pmx[k], out=mx[k])
        report_failures("average", failures)
        if n == 0:
            raise ValueError("no readable shots to average")
        arrays = average_arrays(n, s, s2, mx, hot_sigma=params.average.hot_sigma,
                                dead_std=params.average.dead_std)
        path = output_path(params, f"{params.output.prefix}.npz")
        np.savez_compressed(path, **_store(arrays, n))
        n_bad = int(sum(int(b.sum()) for b in arrays["bad_pixels"]))
        means = np.concatenate([a.ravel() for a in arrays["mean"]])
        print(f"averaged {n} shot{'s' if n != 1 else ''} ({len(s)} panel{'s' if len(s) != 1 else ''}) in "
              f"{time.perf_counter() - t0:.2f} s: median mean {np.median(means):.2f} ADU, "
              f"{n_bad} bad pixels (hot or dead)")
        print(f"wrote {path} (mean, max, std, bad_pixels, n_shots)")
        return EXIT_SOME_INPUTS_FAILED if failures else 0

    return run_command("average", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
