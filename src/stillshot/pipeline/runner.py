"""Running the per-shot pipeline over a run: serial, multiprocessing or MPI.

Work is dealt one shot at a time (dynamically), so a slow shot never idles
the other workers.  Every finished shot goes to a journal at once
(:mod:`stillshot.pipeline.journal`), so a killed run resumes where it stopped.
Outputs are built from the journal in input order, so they are the same
whatever the number of processes or the method.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from stillshot.io.base import ImageFormatError, open_image
from stillshot.io.imageset import InputFailure, iter_frames
from stillshot.models import Detector
from stillshot.pipeline.journal import DetectorStripper, Journal, done_keys, shot_key
from stillshot.pipeline.result import StillResult


@dataclass(frozen=True)
class WorkItem:
    """One shot to process: a file and a frame (None for single-image files)."""

    path: str
    frame: int | None

    @property
    def key(self) -> str:
        """The shot's journal key."""
        return shot_key(self.path, self.frame)


def enumerate_work(paths: list[str], reference_geometry: Detector | None) -> tuple[list[WorkItem], list[InputFailure]]:
    """Every shot of the inputs in order, and the inputs that could not be opened."""
    items: list[WorkItem] = []
    failures: list[InputFailure] = []
    for entry in iter_frames(paths, reference_geometry):
        if isinstance(entry, InputFailure):
            failures.append(entry)
        else:
            reader, frame = entry
            items.append(WorkItem(reader.path, frame if reader.is_multi_frame else None))
    return items, failures


#: process_still(shot, context) -> StillResult; set by the caller (pipeline.still).
ShotFunction = Callable


class ShotWorker:
    """Reads and processes shots in one process; keeps an open-file cache.

    Parameters
    ----------
    process : callable
        ``process(shot) -> StillResult`` (picklable: a module-level function or
        a picklable object).
    reference_geometry : Detector or None
        Geometry replacing the image headers'.
    """

    def __init__(self, process, reference_geometry: Detector | None):
        self.process = process
        self.reference_geometry = reference_geometry
        self.stripper = DetectorStripper()
        self._reader = None

    def _open(self, path: str):
        if self._reader is None or self._reader.path != path:
            if self._reader is not None:
                self._reader.close()
            self._reader = open_image(path, reference_geometry=self.reference_geometry)
        return self._reader

    def __call__(self, item: WorkItem) -> tuple[str, StillResult, dict]:
        t0 = time.perf_counter()
        try:
            shot = self._open(item.path).shot(item.frame or 0)
        except ImageFormatError as exc:
            result = StillResult(item.path, item.frame, "unreadable", exc.reason)
        except (OSError, ValueError, KeyError, EOFError) as exc:
            result = StillResult(item.path, item.frame, "unreadable", f"{type(exc).__name__}: {exc}")
        else:
            read_time = time.perf_counter() - t0
            try:
                result = self.process(shot)
            except Exception as exc:  # noqa: BLE001 - one bad shot must not stop a run
                result = StillResult(item.path, item.frame, "failed", f"{type(exc).__name__}: {exc}")
            result.timings = {"read": read_time, **result.timings}
        result.timings["total"] = time.perf_counter() - t0
        stripped, new = self.stripper.strip(result)
        return item.key, stripped, new


_WORKER: ShotWorker | None = None


def _init_worker(process, reference_geometry) -> None:
    global _WORKER
    _WORKER = ShotWorker(process, reference_geometry)


def _work(item: WorkItem):
    return _WORKER(item)


def run_shots(
    items: list[WorkItem],
    process,
    out_dir: str,
    *,
    reference_geometry: Detector | None = None,
    nproc: int = 1,
    method: str = "multiprocessing",
    on_result: Callable[[StillResult], None] | None = None,
) -> dict:
    """Process every shot not yet in the journal of ``out_dir``.

    Parameters
    ----------
    items : list of WorkItem
        The run's shots, in order.
    process : callable
        ``process(shot) -> StillResult``, picklable.
    out_dir : str
        Output directory holding the journal.
    nproc : int
        Processes for the multiprocessing method.
    method : {"multiprocessing", "mpi"}
    on_result : callable, optional
        Called in the writing process with each finished result (progress display).

    Returns
    -------
    dict
        ``{"n_total", "n_skipped", "n_done", "wall_s", "rank", "size"}``; under MPI
        only rank 0 sees the totals of all ranks.
    """
    if method == "mpi":
        return _run_mpi(items, process, out_dir, reference_geometry, on_result)
    t0 = time.perf_counter()
    already = done_keys(out_dir)
    todo = [it for it in items if it.key not in already]
    with Journal(out_dir) as journal:
        if nproc <= 1 or len(todo) <= 1:
            worker = ShotWorker(process, reference_geometry)
            results: Iterable = (worker(it) for it in todo)
            _drain(results, journal, on_result)
        else:
            ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
            with ctx.Pool(min(nproc, len(todo)), initializer=_init_worker, initargs=(process, reference_geometry)) as pool:
                _drain(pool.imap_unordered(_work, todo, chunksize=1), journal, on_result)
    return {"n_total": len(items), "n_skipped": len(items) - len(todo), "n_done": len(todo),
            "wall_s": time.perf_counter() - t0, "rank": 0, "size": max(nproc, 1)}


def _drain(results: Iterable, journal: Journal, on_result) -> None:
    for key, result, new in results:
        journal.add(key, result, new)
        if on_result is not None:
            on_result(result)


def _run_mpi(items, process, out_dir, reference_geometry, on_result) -> dict:
    """Every rank takes the next shot from a shared counter and writes its own journal."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()
    already = done_keys(out_dir) if rank == 0 else None
    already = comm.bcast(already, root=0)
    todo = [it for it in items if it.key not in already]
    counter = MPI.Win.Allocate(8 if rank == 0 else 0, disp_unit=8, comm=comm)
    if rank == 0:
        import numpy as np

        np.frombuffer(counter.tomemory(), dtype=np.int64)[0] = 0
    comm.Barrier()
    import numpy as np

    one = np.ones(1, dtype=np.int64)
    got = np.zeros(1, dtype=np.int64)
    worker = ShotWorker(process, reference_geometry)
    n_done = 0
    with Journal(out_dir, suffix="" if rank == 0 else f".r{rank}") as journal:
        while True:
            counter.Lock(0, MPI.LOCK_SHARED)
            counter.Fetch_and_op(one, got, 0, 0, MPI.SUM)
            counter.Unlock(0)
            i = int(got[0])
            if i >= len(todo):
                break
            key, result, new = worker(todo[i])
            journal.add(key, result, new)
            n_done += 1
            if on_result is not None:
                on_result(result)
    comm.Barrier()
    counter.Free()
    total_done = comm.reduce(n_done, op=MPI.SUM, root=0)
    return {"n_total": len(items), "n_skipped": len(items) - len(todo), "n_done": total_done if rank == 0 else n_done,
            "wall_s": time.perf_counter() - t0, "rank": rank, "size": size}
