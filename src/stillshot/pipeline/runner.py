"""Running the per-shot pipeline over a run: serial, multiprocessing or MPI.

Work is dealt one shot at a time (dynamically), so a slow shot never idles
the other workers.  Every finished shot goes to a journal at once
(:mod:`stillshot.pipeline.journal`), so a killed run resumes where it stopped.
Outputs are built from the journal in input order, so they are the same
whatever the number of processes or the method.

Memory: workers hold one shot at a time; the process that writes the
journal keeps only the keys of finished shots.

A worker process that dies (a crash in compiled code, the out-of-memory
killer) costs only the shot it was processing: that shot is recorded as
``failed`` and the pool is rebuilt (multiprocessing method).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from stillshot.io.base import ImageFormatError
from stillshot.pipeline.journal import DetectorStripper, Journal, done_keys
from stillshot.pipeline.result import StillResult
from stillshot.pipeline.sources import ShotReader, WorkItem

__all__ = ["WORKER_DIED", "ShotWorker", "WorkItem", "default_nproc", "run_shots"]


class ShotWorker:
    """Reads and processes shots in one process.

    Parameters
    ----------
    process : callable
        ``process(shot) -> StillResult`` (picklable: a module-level function,
        a ``functools.partial`` of one, or a picklable object).
    reader : ShotReader
        Turns a :class:`WorkItem` into a shot (see :mod:`stillshot.pipeline.sources`).
    """

    def __init__(self, process, reader: ShotReader):
        self.process = process
        self.reader = reader
        self.stripper = DetectorStripper()

    def __call__(self, item: WorkItem) -> tuple[str, StillResult, dict]:
        """Process one shot: ``(key, result with detector keys, new detectors)``; never raises."""
        t0 = time.perf_counter()
        try:
            shot = self.reader.read(item)
        except ImageFormatError as exc:
            result = StillResult(item.path, item.frame, "unreadable", exc.reason)
        except (OSError, ValueError, KeyError, IndexError, EOFError, TypeError) as exc:
            result = StillResult(item.path, item.frame, "unreadable", f"{type(exc).__name__}: {exc}")
        else:
            read_time = time.perf_counter() - t0
            try:
                result = self.process(shot)
            except Exception as exc:  # noqa: BLE001 - one bad shot must not stop a run
                result = StillResult(item.path, item.frame, "failed", f"{type(exc).__name__}: {exc}")
            result.timings = {"read": read_time, **result.timings}
        # the run's own names for the shot (a reader may normalise paths)
        result.file, result.frame = item.path, item.frame
        result.timings["total"] = time.perf_counter() - t0
        stripped, new = self.stripper.strip(result)
        return item.key, stripped, new

    def close(self) -> None:
        """Close the reader's files."""
        self.reader.close()


_WORKER: ShotWorker | None = None


def _init_worker(process, reader) -> None:
    global _WORKER
    # Ctrl-C is the main process's to handle: a worker stopped by it would look like a crash
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = ShotWorker(process, reader)


def _work(item: WorkItem):
    return _WORKER(item)


def default_nproc() -> int:
    """CPU cores available to this process."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def run_shots(
    items: Iterable[WorkItem],
    process,
    reader: ShotReader,
    out_dir: str,
    *,
    nproc: int = 1,
    method: str = "multiprocessing",
    on_result: Callable[[StillResult], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    preload: tuple = (),
) -> dict:
    """Process every shot not yet in the journals of ``out_dir``.

    Parameters
    ----------
    items : iterable of WorkItem
        The run's shots, in order (consumed once).
    process : callable
        ``process(shot) -> StillResult``, picklable.
    reader : ShotReader
        Picklable shot reader (sent to each worker).
    out_dir : str
        Output directory holding the journal.
    nproc : int
        Processes for the multiprocessing method.
    method : {"multiprocessing", "mpi"}
    on_result : callable, optional
        Called in the journal-writing process with each finished result
        (progress display); under MPI on every rank with its own shots.
    on_start : callable, optional
        ``on_start(n_todo, n_skipped)`` once the work is known (rank 0 only under MPI).
    preload : tuple of str
        Modules the fork server imports once, so that worker processes start
        quickly (multiprocessing method on POSIX).

    Returns
    -------
    dict
        ``{"items", "n_total", "n_skipped", "n_done", "wall_s", "rank", "size"}``:
        ``items`` is the run's list of work items; under MPI ``n_done`` is the
        total of all ranks on rank 0.
    """
    if method == "mpi":
        return _run_mpi(items, process, reader, out_dir, on_result, on_start)
    if method != "multiprocessing":
        raise ValueError(f"unknown mp.method {method!r} (multiprocessing or mpi)")
    t0 = time.perf_counter()
    items = list(items)
    already = done_keys(out_dir)
    todo = [it for it in items if it.key not in already]
    if on_start is not None:
        on_start(len(todo), len(items) - len(todo))
    with Journal(out_dir) as journal:
        if nproc <= 1 or len(todo) <= 1:
            worker = ShotWorker(process, reader)
            try:
                _drain((worker(it) for it in todo), journal, on_result)
            finally:
                worker.close()
        else:
            _drain(_pool_results(todo, process, reader, min(nproc, len(todo)), preload), journal, on_result)
    return {"items": items, "n_total": len(items), "n_skipped": len(items) - len(todo), "n_done": len(todo),
            "wall_s": time.perf_counter() - t0, "rank": 0, "size": max(1, min(nproc, max(len(todo), 1)))}


#: Thread-pool sizes set to 1 in worker processes (unless the user set them).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

#: Reason recorded for a shot whose worker process died under it.
WORKER_DIED = "the worker process died while processing this shot (a crash or the out-of-memory killer)"


def _pool_results(todo: list[WorkItem], process, reader, nproc: int, preload: tuple = ()) -> Iterator[tuple]:
    """Results from a pool of worker processes, dealt one shot at a time (in completion order).

    A worker that dies (a crash in compiled code, the out-of-memory killer) breaks
    the pool; the shots in flight are then retried one by one in a fresh
    one-worker pool, the shot that kills its worker again is recorded as
    ``failed`` with :data:`WORKER_DIED`, and the run goes on with a new pool.
    """
    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    if preload and hasattr(ctx, "set_forkserver_preload"):
        # imported once in the fork server: workers start without importing them again
        ctx.set_forkserver_preload(list(preload))
    if ctx.get_start_method() == "forkserver":
        # one thread per worker (nproc workers on nproc cores): BLAS and numba pools are not
        # oversubscribed; the fork server and its workers take the environment it starts with
        from multiprocessing import forkserver

        saved = {v: os.environ.get(v) for v in _THREAD_VARS}
        for v in _THREAD_VARS:
            os.environ.setdefault(v, "1")
        try:
            forkserver.ensure_running()
        finally:
            for v, value in saved.items():
                if value is None:
                    os.environ.pop(v, None)

    def new_pool(n):
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(process, reader))

    queue = deque(todo)
    inflight: dict = {}
    pool = new_pool(nproc)
    try:
        while queue or inflight:
            while queue and len(inflight) < 2 * nproc:
                item = queue.popleft()
                inflight[pool.submit(_work, item)] = item
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            suspects = []
            for fut in done:
                item = inflight.pop(fut)
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    suspects.append(item)
            if suspects:
                suspects += list(inflight.values())
                inflight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                yield from _isolated(suspects, new_pool)
                pool = new_pool(nproc)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolated(items: list[WorkItem], new_pool) -> Iterator[tuple]:
    """Process shots one at a time in a one-worker pool (renewed when its worker dies);
    a shot whose worker dies is ``failed``."""
    single = None
    try:
        for item in items:
            if single is None:
                single = new_pool(1)
            try:
                yield single.submit(_work, item).result()
            except BrokenProcessPool:
                single.shutdown(wait=False, cancel_futures=True)
                single = None
                yield item.key, StillResult(item.path, item.frame, "failed", WORKER_DIED), {}
    finally:
        if single is not None:
            single.shutdown(wait=True)


def _drain(results: Iterable, journal: Journal, on_result) -> None:
    for key, result, new in results:
        journal.add(key, result, new)
        if on_result is not None:
            on_result(result)


def _run_mpi(items, process, reader, out_dir, on_result, on_start) -> dict:
    """Rank 0 lists the work; every rank takes the next shot from a shared counter
    (one-sided fetch-and-add on rank 0's window) and writes its own journal."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    t0 = time.perf_counter()
    if rank == 0:
        items = list(items)
        already = done_keys(out_dir)
        todo = [it for it in items if it.key not in already]
        os.makedirs(out_dir, exist_ok=True)
        if on_start is not None:
            on_start(len(todo), len(items) - len(todo))
    else:
        items = todo = None
    items, todo = comm.bcast((items, todo), root=0)
    counter = MPI.Win.Allocate(8 if rank == 0 else 0, disp_unit=8, comm=comm)
    if rank == 0:
        counter.Lock(0, MPI.LOCK_EXCLUSIVE)
        counter.Put(np.zeros(1, dtype=np.int64), 0)
        counter.Unlock(0)
    comm.Barrier()
    one = np.ones(1, dtype=np.int64)
    got = np.zeros(1, dtype=np.int64)
    worker = ShotWorker(process, reader)
    n_done = 0
    try:
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
    finally:
        worker.close()
    comm.Barrier()
    counter.Free()
    total_done = comm.reduce(n_done, op=MPI.SUM, root=0)
    return {"items": items, "n_total": len(items), "n_skipped": len(items) - len(todo),
            "n_done": total_done if rank == 0 else n_done, "wall_s": time.perf_counter() - t0,
            "rank": rank, "size": size}
