"""Benchmark: ``stillshot process`` end to end beside ``dials.stills_process``, scaling, memory.

Three measurements, each printed as it finishes:

1. **Throughput per core against DIALS** on the same shots (real thaumatin
   Pilatus 6M stills from ../shared/data, decompressed from .bz2 first unless
   ``--keep-bz2``, and a simulated set): ``stillshot
   process mp.nproc=1`` and ``dials.stills_process mp.nproc=1`` (through
   ../shared/tools/dials-peer), both spot finding -> indexing (known cell)
   -> refinement -> integration, both timed as whole commands.  Reported as
   shots/s per core from CPU time (user+sys of the command and its children,
   robust to a busy machine) and from wall time, and their ratio.
2. **Scaling 1 -> 2 processes**: the same simulated set with mp.nproc=1 and 2:
   steady-state shots/s (from the arrival times of the ``--json`` shot lines,
   worker start-up left out), the in-run wall time from summary.json, and the
   whole command.
3. **Peak RSS** while processing ``--n`` simulated shots (default 500; e.g.
   ``--n 500,5000``): the journal-writing main process and the largest
   worker, sampled from /proc every 0.2 s, printed at 10 %, 50 % and 100 %
   of the run so a growth would show.

Numba compiles (cached on disk) on the first run: a one-shot warm-up run
comes first.  Usage::

    python benchmarks/process.py [--n 500] [--dials-shots 4] [--no-dials]
                                 [--scaling-shots 40] [--skip throughput,scaling,rss]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
DIALS_PEER = SHARED / "tools" / "dials-peer"

THAUMATIN = ["indexing.known_symmetry.space_group=P41212",
             "indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90"]
LYSO = ["indexing.known_symmetry.space_group=P43212",
        "indexing.known_symmetry.unit_cell=79.1,79.1,38.4,90,90,90"]


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cwd: str | None = None, log: str | None = None) -> tuple[float, float, int]:
    """Run a command: (wall s, CPU s of it and its children, exit status)."""
    c0, t0 = _children_cpu(), time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t0, _children_cpu() - c0, rc


def stillshot_cmd(files: list[str], params: list[str], out: str, nproc: int) -> list[str]:
    return [sys.executable, "-m", "stillshot.cli.main", "process", *files, *params, f"mp.nproc={nproc}",
            f"output.dir={out}", "output.report=False", "--quiet"]


def summary(out: str) -> dict:
    with open(os.path.join(out, "summary.json")) as fh:
        return json.load(fh)


def simulate(out: Path, n: int, *, size: int = 1024, seed: int = 7, nproc: int = 2,
             layout: str = "single_panel") -> list[str]:
    """n simulated lysozyme CBF shots (single panel of size×size px, or pilatus6m); returns the files."""
    from stillshot.simulate import SimulationSettings, run_simulation

    settings = SimulationSettings(layout=layout, n_fast=size, n_slow=size, seed=seed, blank_fraction=0.1,
                                  unit_cell=(79.1, 79.1, 38.4, 90.0, 90.0, 90.0), space_group="P43212")
    run_simulation(settings, out, n_shots=n, fmt="cbf", write_mtz=False, nproc=nproc)
    return sorted(str(p) for p in out.glob("shot_*.cbf"))


# -- 1. throughput against DIALS ---------------------------------------------------------------------

def throughput(work: Path, datasets: list[tuple[str, list[str], list[str]]], with_dials: bool) -> None:
    """Whole commands on 1 shot and on n shots; the marginal cost per shot is (n − 1) shots' worth
    of the difference, so start-up (imports, DIALS's phil parsing) is reported apart."""
    print("\n== end to end, one core: stillshot process vs dials.stills_process ==")
    for name, files, params in datasets:
        n = len(files)
        timed(stillshot_cmd(files[:1], params, str(work / f"warm0_{name}"), 1))  # numba cache, imports
        wall1, cpu1, _ = timed(stillshot_cmd(files[:1], params, str(work / f"warm_{name}"), 1))
        out = work / f"ss_{name}"
        wall, cpu, rc = timed(stillshot_cmd(files, params, str(out), 1))
        s = summary(str(out))
        t = s["totals"]
        marg = (cpu - cpu1) / max(n - 1, 1)
        print(f"{name}: {n} shots")
        print(f"  stillshot  exit {rc}: {t['n_indexed']}/{n} indexed, {t['n_integrated']} integrated; "
              f"wall {wall:.1f} s, CPU {cpu:.1f} s ({n / cpu:.2f} shots/s per core with start-up); "
              f"marginal CPU per shot {marg:.2f} s -> {1 / marg:.2f} shots/s per core; start-up ≈ {cpu1 - marg:.1f} s")
        stage = ", ".join(f"{k} {1000 * v:.0f}" for k, v in t["mean_timings_s"].items())
        print(f"  stillshot  mean wall ms per shot in the run: {stage}")
        if not with_dials:
            continue
        res = {}
        for label, subset in (("one", files[:1]), ("all", files)):
            dout = work / f"dials_{name}_{label}"
            dout.mkdir(exist_ok=True)
            cmd = [str(DIALS_PEER), "dials.stills_process", *subset, *params, "mp.nproc=1",
                   f"output.output_dir={dout}"]
            res[label] = (*timed(cmd, cwd=str(dout), log=str(dout / "stdout.log")), dout)
        dwall, dcpu, drc, dout = res["all"]
        dmarg = (dcpu - res["one"][1]) / max(n - 1, 1)
        n_int = _n_images(dout.glob("*integrated.expt"))
        n_idx = _n_images(dout.glob("*refined.expt"))
        print(f"  DIALS      exit {drc}: {n_idx}/{n} indexed, {n_int} integrated; wall {dwall:.1f} s, "
              f"CPU {dcpu:.1f} s ({n / dcpu:.3f} shots/s per core with start-up); marginal CPU per shot "
              f"{dmarg:.2f} s -> {1 / dmarg:.3f} shots/s per core")
        print(f"  ratio stillshot/DIALS per core: {dcpu / cpu:.1f}x whole commands, {dmarg / marg:.1f}x per shot "
              f"(marginal CPU); {dwall / wall:.1f}x wall")


def _n_images(paths) -> int:
    """Distinct images among the experiments of DIALS's (composite) output files."""
    from stillshot.models import ExperimentList

    images = set()
    for p in paths:
        images.update(e.image.label() for e in ExperimentList.from_file(p) if e.image is not None)
    return len(images)


# -- 2. scaling -----------------------------------------------------------------------------------------

def _shot_times(cmd: list[str]) -> tuple[float, list[float]]:
    """Run a process command in --json mode: (whole wall s, arrival time of each shot's line)."""
    cmd = [a for a in cmd if a != "--quiet"] + ["--json"]
    t0 = time.perf_counter()
    times = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        for line in proc.stdout:
            if line.startswith('{"event": "shot"'):
                times.append(time.perf_counter() - t0)
    return time.perf_counter() - t0, times


def scaling(work: Path, files: list[str]) -> None:
    """Whole-command and steady-state rates with 1 and 2 processes.

    Steady state: shots per second between the 2·nproc-th finished shot and the
    last (worker start-up and the first shots' loading of numba's cache left out).
    """
    print("\n== scaling, simulated shots: mp.nproc=1 -> 2 ==")
    timed(stillshot_cmd(files[:2], LYSO, str(work / "scale_warm"), 2))  # numba cache, imports
    res = {}
    for nproc in (1, 2):
        out = work / f"scale_{nproc}"
        wall, times = _shot_times(stillshot_cmd(files, LYSO, str(out), nproc))
        k = 2 * nproc
        steady = (len(times) - k) / (times[-1] - times[k - 1]) if len(times) > k + 1 else float("nan")
        s = summary(str(out))
        res[nproc] = (wall, s["run"]["wall_s"], steady)
        print(f"  nproc={nproc}: {len(times)} shots, whole command {wall:.1f} s, in-run {s['run']['wall_s']:.1f} s "
              f"({len(files) / s['run']['wall_s']:.2f} shots/s), steady state {steady:.2f} shots/s")
    print(f"  speed-up 1 -> 2: {res[2][2] / res[1][2]:.2f}x steady state, {res[1][1] / res[2][1]:.2f}x in-run, "
          f"{res[1][0] / res[2][0]:.2f}x whole command (cores available: {len(os.sched_getaffinity(0))}; "
          f"load average {os.getloadavg()[0]:.1f})")
    base = machine_speedup()
    print(f"  the machine right now: 2 busy loops do {base:.2f}x the work of 1 (an idle 2-core machine: 2.0x); "
          f"stillshot's steady-state speed-up is {res[2][2] / res[1][2] / base:.0%} of that")


_BUSY = """
import time
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < 3.0:
    for _ in range(10000):
        n += 1
print(n)
"""


def machine_speedup() -> float:
    """Work of two concurrent pure-Python busy loops over one's: the parallelism this machine gives now."""
    one = int(subprocess.run([sys.executable, "-c", _BUSY], capture_output=True, text=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    two = sum(int(p.communicate()[0]) for p in procs)
    return two / one


# -- 3. memory ---------------------------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in parents.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _journal_count(out: Path) -> int:
    """Records in the journals (shots, plus one per distinct detector), from the length headers alone."""
    import struct

    n = 0
    for p in out.glob("stillshot.journal*"):
        with open(p, "rb") as fh:
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    break
                fh.seek(struct.unpack("<Q", head)[0] + 4, 1)
                n += 1
    return n


def memory(work: Path, n: int, nproc: int = 2) -> None:
    print(f"\n== peak RSS over {n} simulated shots (512x512 px, mp.nproc={nproc}) ==")
    sim = work / f"rss_sim_{n}"
    t0 = time.perf_counter()
    files = simulate(sim, n, size=512)
    print(f"  simulated {n} shots in {time.perf_counter() - t0:.0f} s")
    out = work / f"rss_{n}"
    lst = work / f"rss_{n}.txt"
    lst.write_text("\n".join(files) + "\n")
    proc = subprocess.Popen(stillshot_cmd([str(lst)], LYSO, str(out), nproc), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    peak_main = peak_worker = 0
    marks = {int(n * f): None for f in (0.1, 0.5)}
    last_count = 0
    t_poll = 0.0
    while proc.poll() is None:
        main = _rss_kb(proc.pid)
        workers = [_rss_kb(p) for p in _descendants(proc.pid)]
        peak_main = max(peak_main, main)
        peak_worker = max([peak_worker, *workers])
        if time.perf_counter() - t_poll > 2.0:
            t_poll = time.perf_counter()
            last_count = _journal_count(out) if out.is_dir() else 0
            for m in marks:
                if marks[m] is None and last_count >= m:
                    marks[m] = (last_count, peak_main, peak_worker)
                    print(f"  after {last_count} shots: peak RSS main {peak_main / 1024:.0f} MiB, "
                          f"largest worker {peak_worker / 1024:.0f} MiB")
        time.sleep(0.2)
    s = summary(str(out))
    print(f"  after {n} shots (+ writing the outputs): peak RSS main {peak_main / 1024:.0f} MiB, "
          f"largest worker {peak_worker / 1024:.0f} MiB; exit {proc.returncode}; "
          f"{s['totals']['n_indexed']} indexed, in-run {s['run']['wall_s']:.0f} s")
    shutil.rmtree(sim, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="500", help="shot counts for the RSS runs, comma-separated (e.g. 500,5000)")
    ap.add_argument("--dials-shots", type=int, default=4, help="thaumatin shots for the DIALS comparison (≤ 12)")
    ap.add_argument("--sim-shots", type=int, default=8, help="simulated shots for the DIALS comparison (0: none)")
    ap.add_argument("--scaling-shots", type=int, default=40, help="simulated shots for the scaling run")
    ap.add_argument("--no-dials", action="store_true", help="skip dials.stills_process")
    ap.add_argument("--keep-bz2", action="store_true",
                    help="read the thaumatin .cbf.bz2 files as they are (default: decompress them first)")
    ap.add_argument("--skip", default="", help="comma-separated: throughput, scaling, rss")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with_dials = not args.no_dials and DIALS_PEER.exists() and shutil.which("dials.stills_process") is not None
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_process_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"stillshot process benchmark; work folder {work}; cores {len(os.sched_getaffinity(0))}; "
          f"load average {os.getloadavg()[0]:.1f}; DIALS {'yes' if with_dials else 'no'}")
    try:
        if "throughput" not in skip:
            sets = []
            thaum = sorted(str(p) for p in (DATA / "thaumatin_grid").glob("*.cbf*"))[: args.dials_shots]
            if not args.keep_bz2:  # bunzip2 costs ~0.8 s of CPU per 6M image, for either program
                import bz2

                plain = work / "thaumatin_cbf"
                plain.mkdir(exist_ok=True)
                for i, f in enumerate(thaum):
                    if f.endswith(".bz2"):
                        dest = plain / Path(f).name[:-4]
                        dest.write_bytes(bz2.decompress(Path(f).read_bytes()))
                        thaum[i] = str(dest)
            if thaum:
                sets.append(("thaumatin", thaum, THAUMATIN))
            if args.sim_shots:
                # Pilatus 6M layout: DIALS reads our miniCBF as a Pilatus (its module-gap mask needs the 6M size)
                sets.append(("simulated_pilatus6m", simulate(work / "sim_tp", args.sim_shots, layout="pilatus6m"),
                             LYSO))
            throughput(work, sets, with_dials)
        if "scaling" not in skip:
            scaling(work, simulate(work / "sim_scale", args.scaling_shots, seed=8))
        if "rss" not in skip:
            for n in (int(x) for x in args.n.split(",") if x):
                memory(work, n)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
