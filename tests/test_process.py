"""Tests of ``stillshot process`` (stillshot.pipeline + stillshot.cli.process).

Data: small simulated runs (8 shots of a 1024×1024 single-panel detector,
lysozyme P4₃2₁2) written by :func:`stillshot.simulate.run_simulation`, so the
truth is known; real data from ../shared/data in the slow test.  The runs
go through the command line (subprocesses) where processes, MPI ranks or
kill -9 are the point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stillshot.io.stream import read_stream
from stillshot.models import ExperimentList
from stillshot.pipeline.journal import journal_paths, read_records
from stillshot.pipeline.result import STATUSES
from stillshot.table import ReflectionTable

LYSO_CELL = (79.1, 79.1, 38.4, 90.0, 90.0, 90.0)
KNOWN = ["indexing.known_symmetry.space_group=P43212",
         "indexing.known_symmetry.unit_cell=79.1,79.1,38.4,90,90,90"]
N_SHOTS = 8
OUTPUTS = ("imported.expt", "strong.refl", "indexed.expt", "indexed.refl", "integrated.expt", "integrated.refl")


# -- helpers -------------------------------------------------------------------------------------

def _settings(**kw):
    from stillshot.simulate import SimulationSettings

    base = dict(layout="single_panel", n_fast=1024, n_slow=1024, unit_cell=LYSO_CELL, space_group="P43212",
                seed=3, blank_fraction=0.15)
    base.update(kw)
    return SimulationSettings(**base)


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    """8 simulated CBF shots with truth.json."""
    from stillshot.simulate import run_simulation

    d = tmp_path_factory.mktemp("sim")
    run_simulation(_settings(), d, n_shots=N_SHOTS, fmt="cbf", write_mtz=False)
    return d


def _cbfs(d: Path) -> list[str]:
    return sorted(str(p) for p in d.glob("shot_*.cbf"))


def _cli(args, *, mpi_ranks: int | None = None, env=None, **popen):
    cmd = [sys.executable, "-m", "stillshot.cli.main", "process", *args, "output.report=False"]
    if mpi_ranks:
        cmd = [_mpiexec(), "-n", str(mpi_ranks), *cmd, "mp.method=mpi"]
    return cmd


def _run(args, *, mpi_ranks=None, timeout=600):
    proc = subprocess.run(_cli(args, mpi_ranks=mpi_ranks), capture_output=True, text=True, timeout=timeout)
    return proc


def _mpiexec() -> str | None:
    here = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    return here or shutil.which("mpiexec")


def _has_mpi() -> bool:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return _mpiexec() is not None


def _signature(out: Path) -> dict:
    """Everything a run wrote that must not depend on nproc, method or interruptions."""
    summary = json.loads((out / "summary.json").read_text())
    shots = [{k: v for k, v in s.items() if k != "timings"} for s in summary["shots"]]
    files = {name: (out / name).read_bytes() for name in OUTPUTS}
    stream = (out / "results.stream").read_text().split("\n")
    del stream[2]  # the command line
    return {"shots": shots, "files": files, "stream": stream}


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a["shots"] == b["shots"], f"{what}: summary.json shots differ"
    for name in OUTPUTS:
        assert a["files"][name] == b["files"][name], f"{what}: {name} differs"
    assert a["stream"] == b["stream"], f"{what}: results.stream differs"


def _shot_records(out: Path) -> list[str]:
    keys = []
    for p in journal_paths(str(out)):
        keys += [body[0] for kind, body, _ in read_records(p) if kind == "shot"]
    return keys


@pytest.fixture(scope="module")
def serial_run(sim_run, tmp_path_factory) -> Path:
    """The reference: one process."""
    out = tmp_path_factory.mktemp("serial")
    proc = _run([*_cbfs(sim_run), *KNOWN, "mp.nproc=1", f"output.dir={out}"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return out


# -- outputs and summary -------------------------------------------------------------------------

def test_outputs_and_summary_follow_design(sim_run, serial_run):
    """Every output file loads; summary.json has one DESIGN.md entry per shot; results agree with the truth:
    blanks are not indexed, ≥ 80 % of non-blank shots are indexed, cells within 0.5 %."""
    summary = json.loads((serial_run / "summary.json").read_text())
    assert set(summary) >= {"shots", "totals", "parameters"}
    assert len(summary["shots"]) == N_SHOTS
    truth = {Path(s["file"]).name: s for s in json.loads((sim_run / "truth.json").read_text())["shots"]}
    for s in summary["shots"]:
        assert set(s) >= {"file", "frame", "status", "reason", "n_spots", "n_indexed", "unit_cell", "timings"}
        assert s["status"] in STATUSES
        assert s["frame"] is None
        assert s["timings"]["read"] >= 0 and s["timings"]["total"] >= s["timings"]["read"]
        if s["status"] not in ("indexed", "integrated"):
            assert s["reason"], s
            assert s["unit_cell"] is None
        if truth[Path(s["file"]).name]["blank"]:
            assert s["status"] not in ("indexed", "integrated")
        if s["status"] == "integrated":
            assert {"spotfind", "index", "integrate"} <= set(s["timings"])
            assert np.allclose(s["unit_cell"][:3], LYSO_CELL[:3], rtol=0.005)
    non_blank = [s for s in summary["shots"] if not truth[Path(s["file"]).name]["blank"]]
    indexed = [s for s in non_blank if s["status"] in ("indexed", "integrated")]
    assert len(non_blank) >= 5 and len(indexed) >= 0.8 * len(non_blank)
    t = summary["totals"]
    assert t["n_shots"] == N_SHOTS and t["n_indexed"] == len(indexed)
    assert summary["parameters"]["indexing"]["known_symmetry"]["space_group"]

    imported = ExperimentList.from_file(serial_run / "imported.expt")
    assert len(imported) == N_SHOTS
    strong = ReflectionTable.from_file(serial_run / "strong.refl")
    assert len(strong) == sum(s["n_spots"] for s in summary["shots"])
    assert set(strong.identifiers.values()) <= set(imported.identifiers())
    el = ExperimentList.from_file(serial_run / "indexed.expt")
    assert len(el) == t["n_lattices"] and all(e.crystal is not None for e in el)
    refl = ReflectionTable.from_file(serial_run / "indexed.refl")
    assert sorted(set(refl["id"].tolist())) == list(range(len(el)))
    assert {refl.identifiers[i] for i in range(len(el))} == set(el.identifiers())
    assert np.all(refl["flags"] & 4)  # indexed
    integ = ReflectionTable.from_file(serial_run / "integrated.refl")
    iel = ExperimentList.from_file(serial_run / "integrated.expt")
    assert len(iel) == t["status_counts"]["integrated"] and len(integ) > 0
    assert set(integ.identifiers.values()) == set(iel.identifiers())

    stream = read_stream(serial_run / "results.stream")
    assert stream["geometry"] and stream["cell"]
    chunks = stream["chunks"]
    assert len(chunks) == N_SHOTS
    assert [len(c.crystals) for c in chunks] == [s["n_lattices"] for s in summary["shots"]]
    assert [len(c.peaks) for c in chunks] == [s["n_spots"] for s in summary["shots"]]


# -- identical results whatever nproc or method --------------------------------------------------

def test_identical_results_one_two_processes_and_two_mpi_ranks(sim_run, serial_run, tmp_path):
    """1 process, 2 processes and 2 MPI ranks write byte-identical .expt/.refl files, the same
    summary (timings aside) and the same stream (command line aside)."""
    ref = _signature(serial_run)
    out2 = tmp_path / "two"
    proc = _run([*_cbfs(sim_run), *KNOWN, "mp.nproc=2", f"output.dir={out2}", "--quiet"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    _assert_same(ref, _signature(out2), "2 processes")
    if not _has_mpi():
        pytest.skip("mpi4py or mpiexec not installed")
    out_mpi = tmp_path / "mpi"
    proc = _run([*_cbfs(sim_run), *KNOWN, f"output.dir={out_mpi}", "--quiet"], mpi_ranks=2)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    _assert_same(ref, _signature(out_mpi), "2 MPI ranks")
    assert any(n.endswith(".r1") for n in os.listdir(out_mpi))  # rank 1 did work too
    summary = json.loads((out_mpi / "summary.json").read_text())
    assert summary["run"]["method"] == "mpi" and summary["run"]["nproc"] == 2


# -- kill -9 and resume --------------------------------------------------------------------------

def test_kill_minus_9_then_resume_processes_every_shot_once(sim_run, serial_run, tmp_path):
    """A run killed with SIGKILL mid-run (and a torn record appended) resumes: each shot is in
    the journals exactly once, and the outputs equal an uninterrupted run's."""
    out = tmp_path / "killed"
    args = [*_cbfs(sim_run), *KNOWN, "mp.nproc=2", f"output.dir={out}", "--quiet"]
    proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and len(_shot_records(out)) >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = _shot_records(out)
    assert 1 <= len(done_before) < N_SHOTS
    with open(out / "stillshot.journal", "ab") as fh:  # a record torn by the kill
        fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00half a rec")
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    keys = _shot_records(out)
    assert len(keys) == len(set(keys)) == N_SHOTS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["n_resumed"] == len(done_before)
    assert summary["run"]["n_processed_now"] == N_SHOTS - len(done_before)
    _assert_same(_signature(serial_run), _signature(out), "killed and resumed")
    # a third run has nothing to do
    proc = _run(args)
    assert proc.returncode == 0
    assert json.loads((out / "summary.json").read_text())["run"]["n_processed_now"] == 0


def test_resume_refuses_other_parameters(sim_run, serial_run, tmp_path):
    """Re-running into a directory made with other parameters is a usage error (exit 2)."""
    out = tmp_path / "copy"
    shutil.copytree(serial_run, out)
    proc = _run([*_cbfs(sim_run), *KNOWN, "mp.nproc=1", "dispatch.hit_finder.minimum_number_of_reflections=5",
                 f"output.dir={out}"])
    assert proc.returncode == 2
    assert "different settings" in proc.stderr


# -- bad shots -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_inputs(sim_run, tmp_path_factory) -> tuple[Path, list[str]]:
    """Good CBFs, a truncated CBF, a CBF of another detector size, and a CXI file whose
    frame 1 is all NaN and frame 2 one-third NaN."""
    import h5py

    from stillshot.simulate import run_simulation

    d = tmp_path_factory.mktemp("bad")
    good = _cbfs(sim_run)
    blank = {Path(s["file"]).name for s in json.loads((sim_run / "truth.json").read_text())["shots"] if s["blank"]}
    good = [g for g in good if Path(g).name not in blank][:2]
    data = Path(good[0]).read_bytes()
    (d / "truncated.cbf").write_bytes(data[: len(data) // 2])
    small = d / "small"
    run_simulation(_settings(n_fast=512, n_slow=512, blank_fraction=0.0), small, n_shots=1, write_mtz=False)
    cxi = d / "cxi"
    run_simulation(_settings(blank_fraction=0.0, seed=5), cxi, n_shots=3, fmt="cxi", write_mtz=False)
    h5 = next(cxi.glob("*.cxi"))
    with h5py.File(h5, "r+") as fh:
        loc = "/entry_1/data_1/data"
        arr = fh[loc][()].astype(np.float32)
        arr[1] = np.nan
        arr[2, : arr.shape[1] // 3] = np.nan
        del fh[loc]
        fh.create_dataset(loc, data=arr)
    geom = next(cxi.glob("*.geom"))
    inputs = [*good, str(d / "truncated.cbf"), str(next(small.glob("*.cbf"))), str(h5)]
    return geom, inputs


def test_bad_shots_are_recorded_and_the_run_goes_on(bad_inputs, tmp_path):
    """Truncated file and detector-size mismatch: 'unreadable' with the reason; an all-NaN frame:
    'failed' with the reason; a partly-NaN frame and the good shots are processed; exit status 1."""
    geom, inputs = bad_inputs
    out = tmp_path / "out"
    proc = _run([*inputs, *KNOWN, f"input.reference_geometry={geom}", "mp.nproc=2", f"output.dir={out}",
                 "--quiet"])
    assert proc.returncode == 1, proc.stderr + proc.stdout
    shots = json.loads((out / "summary.json").read_text())["shots"]
    assert len(shots) == 7
    by = {(s["file"], s["frame"]): s for s in shots}
    assert [(s["file"], s["frame"]) for s in shots][:4] == [(p, None) for p in inputs[:4]]
    trunc = by[(inputs[2], None)]
    assert trunc["status"] == "unreadable" and trunc["reason"]
    small = by[(inputs[3], None)]
    assert small["status"] == "unreadable" and "does not match" in small["reason"]
    cxi = inputs[4]
    assert by[(cxi, 1)]["status"] == "failed" and "NaN" in by[(cxi, 1)]["reason"]
    for key in [(inputs[0], None), (inputs[1], None), (cxi, 0), (cxi, 2)]:
        assert by[key]["status"] in ("not_hit", "not_indexed", "indexed", "integrated"), by[key]
    assert by[(inputs[0], None)]["status"] in ("indexed", "integrated")
    assert by[(cxi, 0)]["status"] in ("indexed", "integrated")
    imported = ExperimentList.from_file(out / "imported.expt")
    assert len(imported) == 5  # the readable shots
    frames = [e.image.frame for e in imported if e.image.path.endswith(".cxi")]
    assert frames == [0, 1, 2]


# -- process gives the index command's indexing ---------------------------------------------------

def test_process_indexes_as_the_index_command(sim_run, serial_run, tmp_path):
    """find-spots + index on the same shots give the same crystals (A to 1e-9 Å⁻¹) and Miller indices
    for every shot process indexed; shots index indexed but process did not are process's non-hits."""
    from stillshot.cli.main import main

    out = tmp_path / "steps"
    assert main(["find-spots", *_cbfs(sim_run), f"output.dir={out}", "mp.nproc=1"]) == 0
    assert main(["index", str(out / "imported.expt"), str(out / "strong.refl"), *KNOWN, f"output.dir={out}"]) == 0
    ours = ExperimentList.from_file(serial_run / "indexed.expt")
    theirs = ExperimentList.from_file(out / "indexed.expt")
    by_image = {e.image.path: (i, e) for i, e in enumerate(theirs)}
    r_ours = ReflectionTable.from_file(serial_run / "indexed.refl")
    r_theirs = ReflectionTable.from_file(out / "indexed.refl")
    summary = {s["file"]: s for s in json.loads((serial_run / "summary.json").read_text())["shots"]}
    assert len(ours) >= 5
    for i, e in enumerate(ours):
        j, t = by_image[e.image.path]
        assert np.allclose(e.crystal.A, t.crystal.A, atol=1e-9, rtol=0)
        h1 = r_ours["miller_index"][r_ours["id"] == i]
        h2 = r_theirs["miller_index"][r_theirs["id"] == j]
        assert np.array_equal(np.sort(h1, axis=0), np.sort(h2, axis=0))
    for path in set(by_image) - {e.image.path for e in ours}:
        assert summary[path]["status"] == "not_hit"


# -- real data --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_thermolysin_and_thaumatin(shared_data, tmp_path):
    """Thermolysin (4 CSPAD CBFs) and thaumatin (12 Pilatus CBFs), each with its known cell and
    DIALS's spot-finding settings: all 4 thermolysin shots and at least as many thaumatin shots
    as DIALS are indexed (README: DIALS indexes all 4 thermolysin; see reference/ for thaumatin),
    and process's thermolysin crystals are find-spots + index's (A to 1e-9 Å⁻¹)."""
    thermo = sorted(str(p) for p in (shared_data / "thermolysin_cspad").iterdir() if ".cbf" in p.name)
    thaum = sorted(str(p) for p in (shared_data / "thaumatin_grid").iterdir() if ".cbf" in p.name)
    out_t = tmp_path / "thermolysin"
    thermo_params = ["spotfinder.filter.min_spot_size=2", "spotfinder.threshold.dispersion.gain=25",
                     "spotfinder.threshold.dispersion.global_threshold=100",
                     "indexing.known_symmetry.space_group=P6122",
                     "indexing.known_symmetry.unit_cell=92.9,92.9,130.4,90,90,120",
                     "indexing.refinement_protocol.d_min_start=1.7"]
    proc = _run([*thermo, *thermo_params, "dispatch.integrate=False", "mp.nproc=2", f"output.dir={out_t}",
                 "--quiet"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    totals = json.loads((out_t / "summary.json").read_text())["totals"]
    assert totals["n_shots"] == 4 and totals["n_indexed"] == 4
    # the stream's multi-panel geometry names every panel its peaks and reflections are on
    stream = read_stream(out_t / "results.stream")
    (tmp_path / "stream.geom").write_text(stream["geometry"] + "\n")
    from stillshot.io.crystfel_geom import read_geom

    names = {p.name for p in read_geom(tmp_path / "stream.geom").detector}
    assert len(names) == 64 and [len(c.crystals) for c in stream["chunks"]] == [1, 1, 1, 1]
    for c in stream["chunks"]:
        assert set(c.peak_panels) <= names and set(c.crystals[0]["panels"]) <= names
    # the same crystals as find-spots + index with the same settings
    from stillshot.cli.main import main

    steps = tmp_path / "steps"
    assert main(["find-spots", *thermo, *thermo_params[:3], f"output.dir={steps}", "mp.nproc=1"]) == 0
    assert main(["index", str(steps / "imported.expt"), str(steps / "strong.refl"), *thermo_params[3:],
                 f"output.dir={steps}"]) == 0
    theirs = {e.image.path: e for e in ExperimentList.from_file(steps / "indexed.expt")}
    for e in ExperimentList.from_file(out_t / "indexed.expt"):
        assert np.allclose(e.crystal.A, theirs[e.image.path].crystal.A, atol=1e-9, rtol=0)
    out_h = tmp_path / "thaumatin"
    proc = _run([*thaum, "indexing.known_symmetry.space_group=P41212",
                 "indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90", "dispatch.integrate=False",
                 "mp.nproc=2", f"output.dir={out_h}", "--quiet"])
    assert proc.returncode == 0, proc.stderr + proc.stdout
    totals = json.loads((out_h / "summary.json").read_text())["totals"]
    dials = ExperimentList.from_file(shared_data / "reference" / "thaumatin_grid.indexed.expt")
    assert totals["n_shots"] == 12 and totals["n_indexed"] >= len(dials)


# -- the image-source plugin interface -------------------------------------------------------------

class _SimReader:
    """Shots made on the fly by the simulator (a stand-in for a facility stream)."""

    def __init__(self, settings):
        self.settings = settings
        self._sim = None

    def read(self, item):
        from stillshot.io.base import Shot
        from stillshot.models import ImageRef
        from stillshot.simulate import Simulator

        if item.frame == 2:
            raise OSError("event 2 lost on the network")
        if self._sim is None:
            self._sim = Simulator(self.settings)
        s = self._sim.shot(item.frame)
        return Shot(ImageRef(item.path, item.frame), s.beam, s.detector, s.data)

    def close(self):
        self._sim = None


def test_image_source_plugin_runs_through_the_pipeline(tmp_path):
    """A source registered by name (no files) feeds the runner and the writers; an event the
    source cannot read is 'unreadable' with its reason; stream events are //N."""
    import functools

    from stillshot.index import IndexingOptions
    from stillshot.pipeline.outputs import write_outputs
    from stillshot.pipeline.journal import JournalIndex
    from stillshot.pipeline.runner import run_shots
    from stillshot.pipeline.sources import ImageSource, WorkItem, get_source, register_source, source_names
    from stillshot.pipeline.still import StillContext, process_still
    from stillshot.spotfind import SpotFinderOptions

    settings = _settings(blank_fraction=0.0, seed=4)

    @register_source("test-sim")
    class SimSource:
        def __init__(self, inputs, reference_geometry=None):
            self.address = inputs[0]

        def items(self):
            return (WorkItem(self.address, i) for i in range(4))

        def reader(self):
            return _SimReader(settings)

    assert "files" in source_names() and "test-sim" in source_names()
    source = get_source("test-sim", ["sim://run1"])
    assert isinstance(source, ImageSource)
    with pytest.raises(KeyError, match="unknown image source"):
        get_source("no-such-source", [])
    context = StillContext(spotfinder=SpotFinderOptions(),
                           indexing=IndexingOptions(unit_cell=LYSO_CELL, space_group="P43212"))
    stats = run_shots(source.items(), functools.partial(process_still, context=context), source.reader(),
                      str(tmp_path), nproc=1)
    assert stats["n_done"] == 4
    with JournalIndex(str(tmp_path)) as index:
        results = [index.get(it.key) for it in stats["items"]]
        write_outputs(str(tmp_path), iter(results), {}, stream={"cell": LYSO_CELL, "space_group": "P43212"})
    statuses = [r.status for r in results]
    assert statuses[2] == "unreadable" and "lost on the network" in results[2].reason
    assert sum(s == "indexed" for s in statuses) >= 2
    chunks = read_stream(tmp_path / "results.stream")["chunks"]
    assert [c.event for c in chunks] == ["//0", "//1", "//3"]
    assert all(c.filename == "sim://run1" for c in chunks)


def test_stage_registry_new_stage_is_one_entry_and_errors_are_statuses():
    """A registered stage runs in order with its own timing; an exception in it makes the shot
    'failed' with the stage's name in the reason; context.stages picks stages by name."""
    from stillshot.index import IndexingOptions
    from stillshot.io.base import Shot
    from stillshot.models import ImageRef
    from stillshot.pipeline import still
    from stillshot.simulate import Simulator
    from stillshot.spotfind import SpotFinderOptions

    sim = Simulator(_settings(blank_fraction=0.0, seed=3))
    s = sim.shot(1)
    shot = Shot(ImageRef("mem://0", None), s.beam, s.detector, s.data)
    marker = 0.123456  # the test stage runs only for contexts carrying this value
    seen = []

    def probe(state, context):
        seen.append(state.result.status)
        if state.result.n_indexed > 0:
            raise RuntimeError("probe says no")

    still.register_stage("probe", enabled=lambda c: c.max_nonfinite_fraction == marker, before="integrate")(probe)
    try:
        names = still.stage_names()
        assert names.index("index") < names.index("probe") < names.index("integrate")
        ctx = still.StillContext(spotfinder=SpotFinderOptions(), max_nonfinite_fraction=marker,
                                 indexing=IndexingOptions(unit_cell=LYSO_CELL, space_group="P43212"))
        r = still.process_still(shot, ctx)
        assert seen == ["indexed"]
        assert r.status == "failed" and r.reason == "probe: RuntimeError: probe says no"
        assert {"check", "spotfind", "hit", "index", "probe"} == set(r.timings)
        r2 = still.process_still(shot, still.StillContext(spotfinder=SpotFinderOptions(),
                                                          stages=("check", "spotfind", "hit")))
        assert (r2.status, r2.reason) == ("not_indexed", "indexing not enabled (dispatch.index=False)")
        assert set(r2.timings) == {"check", "spotfind", "hit"} and r2.experiments == [] and r2.n_spots >= 16
    finally:
        still._STAGES[:] = [st for st in still._STAGES if st.name != "probe"]
    assert "probe" not in still.stage_names()


class _CrashReader(_SimReader):
    """Kills its own worker process on event 1 (a stand-in for a crash in compiled code)."""

    def read(self, item):
        if item.frame == 1:
            os._exit(9)
        return super().read(item)


def test_a_worker_that_dies_costs_only_its_shot(tmp_path):
    """With 2 processes, the shot whose worker dies is 'failed' with the reason and every other
    shot is processed (the pool is rebuilt)."""
    import functools

    from stillshot.pipeline.journal import JournalIndex
    from stillshot.pipeline.runner import WORKER_DIED, run_shots
    from stillshot.pipeline.sources import WorkItem
    from stillshot.pipeline.still import StillContext, process_still
    from stillshot.spotfind import SpotFinderOptions

    items = [WorkItem("sim://crash", i) for i in range(5)]
    context = StillContext(spotfinder=SpotFinderOptions())  # spot and hit finding only: quick
    stats = run_shots(items, functools.partial(process_still, context=context),
                      _CrashReader(_settings(blank_fraction=0.0, n_fast=512, n_slow=512)), str(tmp_path), nproc=2)
    assert stats["n_done"] == 5
    with JournalIndex(str(tmp_path)) as index:
        results = [index.get(it.key) for it in items]
    assert (results[1].status, results[1].reason) == ("failed", WORKER_DIED)
    assert results[2].status == "unreadable"  # _SimReader loses event 2
    for r in (results[0], results[3], results[4]):
        assert r.status in ("not_hit", "not_indexed") and r.n_spots > 0


def test_progress_modes_and_final_table(capsys):
    """bar: status lines with counts and rates on the given stream; json: one object per shot on
    stdout; quiet: nothing; the final table lists counts and rates."""
    import io as _io

    from stillshot.cli.progress import Progress, final_table
    from stillshot.pipeline.outputs import totals
    from stillshot.pipeline.result import StillResult

    results = [StillResult("a.cbf", None, "integrated", timings={"total": 0.1}),
               StillResult("b.cbf", None, "not_hit", "3 spots < 16", timings={"total": 0.05}),
               StillResult("c.cxi", 4, "unreadable", "truncated")]
    buf = _io.StringIO()
    bar = Progress(mode="bar", stream=buf)
    bar.start(3, skipped=2)
    for r in results:
        bar(r)
    text = buf.getvalue()
    assert "resuming: 2 shots already done, 3 to go" in text
    assert "3/3 shots" in text and "hits 33.3%" in text and "indexed 100.0% of hits" in text
    js = Progress(mode="json")
    js.start(3)
    for r in results:
        js(r)
    quiet = Progress(mode="quiet", stream=_io.StringIO())
    quiet.start(3)
    quiet(results[0])
    assert quiet.stream.getvalue() == ""
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == ["start", "shot", "shot", "shot"]
    assert lines[3]["frame"] == 4 and lines[3]["status"] == "unreadable" and lines[3]["reason"] == "truncated"
    table = final_table(totals([r.summary() for r in results]))
    assert "integrated" in table and "hit rate" in table and "33.3%" in table
    with pytest.raises(ValueError):
        Progress(mode="loud")


def test_files_source_expands_globs_lists_and_container_frames(sim_run, bad_inputs, tmp_path):
    """Globs, .txt lists (paths relative to the list) and multi-frame containers frame by frame,
    in input order; a container that cannot be opened stays one item (its read fails later)."""
    from stillshot.pipeline.sources import FilesSource, WorkItem

    geom, inputs = bad_inputs
    cxi = inputs[4]
    lst = sim_run / "some.txt"
    lst.write_text("# two shots\nshot_00001.cbf\n\nshot_00000.cbf  # again\n")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5 at all")
    from stillshot.io.imageset import load_reference_geometry

    src = FilesSource([str(sim_run / "shot_0000[23].cbf"), str(lst), cxi, str(broken)],
                      reference_geometry=load_reference_geometry(geom))
    items = list(src.items())
    assert items == [WorkItem(str(sim_run / "shot_00002.cbf"), None), WorkItem(str(sim_run / "shot_00003.cbf"), None),
                     WorkItem(str(sim_run / "shot_00001.cbf"), None), WorkItem(str(sim_run / "shot_00000.cbf"), None),
                     WorkItem(cxi, 0), WorkItem(cxi, 1), WorkItem(cxi, 2), WorkItem(str(broken), None)]
    reader = src.reader()
    shot = reader.read(items[5])
    assert shot.image.frame == 1 and np.isnan(shot.data[0]).all()
    with pytest.raises(ValueError):
        reader.read(items[-1])
    reader.close()
