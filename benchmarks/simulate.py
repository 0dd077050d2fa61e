"""Simulator throughput: shots/s per core, beside a plain-numpy rendering of the same shots.

    python benchmarks/simulate.py [--layout cspad] [--shots 20] [--size 3.0]

For each shot the *full* cost (choosing the crystal, predicting, rendering
spots, background, Poisson noise and detector response) is timed with the
numba kernels; the *rendering* part (spots + background + noise + response,
given the predicted reflections) is also timed for a plain-numpy
implementation of the same algorithm (erf differences per spot with
scipy.special.erf, np.interp background, numpy Poisson) in the same run.
Times are CPU seconds of this process (``time.process_time``), so the
figures are per core even on a shared machine; numba runs single-threaded.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.special import erf  # noqa: E402

from stillshot.simulate import SimulationSettings, Simulator  # noqa: E402


def render_numpy(sim: Simulator, truth, rng: np.random.Generator) -> list:
    """Plain-numpy rendering of a shot (same model as Simulator.render with noise)."""
    s = sim.settings
    wl = truth.wavelength
    table, t0, dt = s.background.table(sim.maps.max_two_sin_theta / wl * 1.001)
    grid = t0 + dt * np.arange(len(table))
    r = truth.reflections
    panel_of = r["panel"].astype(np.int64) if r.nrows else np.zeros(0, dtype=np.int64)
    out = []
    for p_index, panel in enumerate(sim.detector):
        spots = np.zeros(panel.shape)
        sel = np.nonzero(panel_of == p_index)[0]
        for n in sel:
            x, y = r["xyzcal.px"][n, :2]
            sig = r["sigma_px"][n]
            rad = int(np.ceil(5.0 * sig))
            ix0, iy0 = int(np.floor(x)) - rad, int(np.floor(y)) - rad
            edges_x = ix0 + np.arange(2 * rad + 2)
            edges_y = iy0 + np.arange(2 * rad + 2)
            ex = erf((edges_x - x) / (np.sqrt(2.0) * sig))
            ey = erf((edges_y - y) / (np.sqrt(2.0) * sig))
            wx, wy = np.diff(ex) / (ex[-1] - ex[0]), np.diff(ey) / (ey[-1] - ey[0])
            patch = r["intensity.partial"][n] * np.outer(wy, wx)
            xs = slice(max(ix0, 0), min(ix0 + 2 * rad + 1, panel.n_fast))
            ys = slice(max(iy0, 0), min(iy0 + 2 * rad + 1, panel.n_slow))
            if xs.start >= xs.stop or ys.start >= ys.stop:
                continue
            spots[ys, xs] += patch[ys.start - iy0 : ys.stop - iy0, xs.start - ix0 : xs.stop - ix0]
        bg = np.interp(sim.maps.two_sin_theta[p_index] / wl, grid, table) * sim.maps.geom[p_index]
        counts = rng.poisson(bg + spots)
        lo, hi = panel.trusted_range
        adu = np.clip(np.floor(panel.gain * counts + panel.pedestal + 0.5), lo, hi).astype(np.int32)
        for f0, s0, f1, s1 in panel.mask:
            adu[s0:s1, f0:f1] = int(np.floor(lo))
        out.append(adu)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", default="cspad", help="detector layout (default cspad: 2.3 Mpx, 64 panels)")
    ap.add_argument("--shots", type=int, default=20, help="shots timed (default 20)")
    ap.add_argument("--size", type=float, default=3.0, help="crystal size, µm (sets the spot count)")
    ap.add_argument("--numpy-shots", type=int, default=5, help="shots rendered with plain numpy (default 5)")
    args = ap.parse_args()

    settings = SimulationSettings(layout=args.layout, blank_fraction=0.0, crystal_size_um=(args.size, args.size),
                                  photons=3000.0, seed=1)
    sim = Simulator(settings)
    sim.shot(0)  # compile (numba caches to disk) and warm up
    n_px = sim.detector.total_pixels()

    t = time.process_time()
    n_spots = []
    for i in range(args.shots):
        shot = sim.shot(i)
        n_spots.append(int((shot.truth.reflections["intensity.partial"] > 10).sum()))
    full = (time.process_time() - t) / args.shots

    truths = [sim.draw(i) for i in range(args.numpy_shots)]
    t = time.process_time()
    for tr in truths:
        sim.render(tr)
    render_numba = (time.process_time() - t) / len(truths)
    rng = np.random.default_rng(0)
    t = time.process_time()
    for tr in truths:
        render_numpy(sim, tr, rng)
    render_np = (time.process_time() - t) / len(truths)

    print(f"layout {args.layout}: {len(sim.detector)} panels, {n_px / 1e6:.2f} Mpx; "
          f"median {np.median(n_spots):.0f} spots of > 10 photons per shot "
          f"({np.median([tr.reflections.nrows for tr in truths]):.0f} reflections simulated)")
    print(f"stillshot (numba), whole shot:   {full * 1e3:7.1f} ms CPU  = {1.0 / full:6.1f} shots/s per core")
    print(f"rendering only, numba:           {render_numba * 1e3:7.1f} ms CPU")
    print(f"rendering only, plain numpy:     {render_np * 1e3:7.1f} ms CPU  "
          f"(numba is {render_np / render_numba:.1f}x faster)")
    target = 20.0
    print(f"target >= {target:.0f} shots/s per core: {'met' if 1.0 / full >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
