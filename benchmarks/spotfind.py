"""Spot-finding speed: stillshot vs dials.find_spots vs one numpy pass, per image, one core.

Usage (from the project root)::

    python benchmarks/spotfind.py [--images N] [--repeats R] [--no-dials] [--datasets a,b]

For each dataset (``thermolysin_cspad``: CSPAD, 64 panels, DIALS settings from
../shared/data/README.md; ``thaumatin_grid``: Pilatus 6M, DIALS defaults) it
prints, per image:

* ``ours``: stillshot's :func:`~stillshot.spotfind.find_spots` on a shot in
  memory (after numba warm-up; the best of R repeats per image, median over
  images), one core (the kernels are single-threaded);
* ``steps``: find_spots' own split of that time (masks, thresholding,
  spot measurement; wall, one run per image);
* ``read``: stillshot reading the image file;
* ``numpy``: one numpy pass over the image (``a.sum()`` over the panels),
  the memory-bound floor;
* ``DIALS``: ``dials.find_spots nproc=1`` per image, read included, as
  ``(T(N images) - T(1 image)) / (N - 1)`` so start-up does not count;
  wall and CPU (user+sys) time, measured in this run (when
  ../shared/tools/dials-peer and dials.find_spots are installed);
* the ratios DIALS/ours (spot finding alone and read+find), ours/numpy,
  and the peak memory of finding spots on one image (a fresh process:
  VmHWM minus VmRSS before) over the image's size in memory.

The machine may be shared: wall times are the best of several repeats, and
DIALS's CPU time is printed beside its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PEER = ROOT.parent / "shared" / "tools" / "dials-peer"

DATASETS = {
    "thermolysin_cspad": {
        "pattern": "thermolysin_cspad/*.cbf",
        "params": ["spotfinder.filter.min_spot_size=2", "spotfinder.threshold.dispersion.gain=25",
                   "spotfinder.threshold.dispersion.global_threshold=100"],
    },
    "thaumatin_grid": {"pattern": "thaumatin_grid/*.cbf.bz2", "params": []},
}


def _options(params):
    from stillshot.cli.find_spots import DEFINITION
    from stillshot.config import parse_args
    from stillshot.spotfind import options_from_params

    p, _ = parse_args(DEFINITION, list(params))
    return options_from_params(p)


def _best(fn, repeats):
    """Best wall time and best CPU time (process_time: this process only) of ``repeats`` calls, s."""
    wall = cpu = np.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


#: Steps of find_spots timed in SpotFindingResult.timings (wall): masks, pass 1 (+ pass 2), spots.
_STAGES = ("mask", "threshold", "spots")


def bench_ours(files, params, repeats):
    from stillshot.io.base import open_image
    from stillshot.spotfind import find_spots

    options = _options(params)
    shots, reads = [], []
    for f in files:
        t0 = time.perf_counter()
        with open_image(f) as reader:
            shot = reader.shot(0)
        reads.append(time.perf_counter() - t0)
        shots.append(shot)
    find_spots(shots[0], options)  # numba warm-up (and cached masks)
    ours, ours_cpu, floor, spots, stages = [], [], [], [], []
    for shot in shots:
        w, c = _best(lambda: find_spots(shot, options), repeats)
        ours.append(w)
        ours_cpu.append(c)
        floor.append(_best(lambda: [a.sum() for a in shot.data], repeats)[0])
        res = find_spots(shot, options)
        spots.append(res.n_spots)
        stages.append([res.timings.get(k, 0.0) for k in _STAGES])
    n_px = sum(a.size for a in shots[0].data)
    nbytes = sum(a.nbytes for a in shots[0].data)
    return {"ours": statistics.median(ours), "ours_cpu": statistics.median(ours_cpu),
            "read": statistics.median(reads), "numpy": statistics.median(floor),
            "n_px": n_px, "nbytes": nbytes, "spots": spots,
            "stages": dict(zip(_STAGES, np.median(np.array(stages), axis=0)))}


_MEM_CHILD = r"""
import json, sys, numpy as np
from stillshot.io.base import open_image
from stillshot.spotfind import find_spots
sys.path.insert(0, {root!r})
from benchmarks.spotfind import _options
options = _options({params!r})
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with open_image({file!r}) as r:
    shot = r.shot(0)
# compile / load the kernels on a small piece only (so freed big buffers do not hide the peak)
from stillshot.spotfind import _kernels as K
from stillshot.spotfind.masks import static_mask
a = np.ascontiguousarray(shot.data[0][:64, :64])
m = np.ones(a.shape, bool)
for ext in (True, False):
    idx, valid = K.dispersion_pixels(a, m, extended=ext, trusted_range=(-1e9, 1e9), gain=options.dispersion.gain)
    idx, valid = K.dispersion_pixels(a, m, extended=ext, trusted_range=(-1e9, 1e9))
runs = K.label_pixels(idx, a.shape)
K.spot_statistics(a, valid, m, runs, gain=1.0)
K.spot_statistics(a, valid, m, runs)
for conn in (4, 8):
    K.pixel_spot_blocks(a, valid, idx, connectivity=conn, gain=1.0)
    K.pixel_spot_blocks(a, valid, idx, connectivity=conn)
static_mask(shot.detector, shot.beam, options.filter)  # cached per detector for the whole run
import gc; gc.collect()
before = status('VmRSS:')
open('/proc/self/clear_refs', 'w').write('5')  # reset VmHWM to the current RSS
res = find_spots(shot, options)
peak = status('VmHWM:')
print(json.dumps({{"extra": peak - before, "nbytes": sum(a.nbytes for a in shot.data), "n": res.n_spots}}))
"""


def peak_memory(file, params):
    code = _MEM_CHILD.format(root=str(ROOT), params=list(params), file=str(file))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dials_run(args, cwd):
    r0 = os.times()
    t0 = time.perf_counter()
    out = subprocess.run([str(PEER), *args], cwd=cwd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    r1 = os.times()
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed: {out.stderr.strip()[-500:]}")
    return wall, (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)


def bench_dials(files, params):
    if not (PEER.exists() and shutil.which("dials.find_spots")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        _dials_run(["dials.import", *map(str, files), "output.experiments=all.expt"], tmp)
        _dials_run(["dials.import", str(files[0]), "output.experiments=one.expt"], tmp)
        common = ["nproc=1", *params, "output.log=fs.log"]
        w1, c1 = _dials_run(["dials.find_spots", "one.expt", "output.reflections=one.refl", *common], tmp)
        wn, cn = _dials_run(["dials.find_spots", "all.expt", "output.reflections=all.refl", *common], tmp)
        from stillshot.table import ReflectionTable

        n_spots = len(ReflectionTable.from_file(Path(tmp) / "all.refl"))
    n = len(files)
    return {"wall": (wn - w1) / (n - 1), "cpu": (cn - c1) / (n - 1), "spots": n_spots}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4, help="images per dataset (default 4)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per image (best is kept)")
    ap.add_argument("--no-dials", action="store_true", help="skip dials.find_spots")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    rows = []
    for name in args.datasets.split(","):
        spec = DATASETS[name]
        files = sorted(DATA.glob(spec["pattern"]))[: args.images]
        if len(files) < 2:
            print(f"{name}: fewer than 2 images under {DATA}; skipped")
            continue
        ours = bench_ours(files, spec["params"], args.repeats)
        dials = None if args.no_dials else bench_dials(files, spec["params"])
        mem = peak_memory(files[0], spec["params"])
        rows.append((name, len(files), ours, dials, mem))
        ms = lambda s: f"{1e3 * s:8.1f}"  # noqa: E731
        print(f"\n{name}: {len(files)} images, {ours['n_px']:,} px ({ours['nbytes'] / 2**20:.1f} MiB), "
              f"spots per image {ours['spots']}")
        print(f"  stillshot find_spots   {ms(ours['ours'])} ms/image wall, {ms(ours['ours_cpu'])} ms CPU "
              f"(one core, after warm-up)")
        print("  stillshot steps        " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in ours["stages"].items())
              + " ms (wall, one run per image, median)")
        print(f"  stillshot read         {ms(ours['read'])} ms/image")
        print(f"  numpy one pass         {ms(ours['numpy'])} ms/image (floor)")
        if dials:
            print(f"  dials.find_spots       {ms(dials['wall'])} ms/image wall, {ms(dials['cpu'])} ms CPU "
                  f"(read included; {dials['spots']} spots in all)")
            print(f"  DIALS / ours           {dials['wall'] / ours['ours']:8.1f} x wall, "
                  f"{dials['cpu'] / ours['ours_cpu']:.1f} x CPU (spot finding)")
            print(f"  DIALS / (read + ours)  {dials['wall'] / (ours['ours'] + ours['read']):8.1f} x wall")
        else:
            print("  dials.find_spots       not run (not installed or --no-dials)")
        print(f"  ours / numpy pass      {ours['ours'] / ours['numpy']:8.1f} x wall, "
              f"{ours['ours_cpu'] / ours['numpy']:.1f} x with our CPU time")
        if mem:
            print(f"  peak extra memory      {mem['extra'] / 2**20:8.1f} MiB = {mem['extra'] / mem['nbytes']:.2f} x "
                  f"the image ({mem['nbytes'] / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
