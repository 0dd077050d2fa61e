"""A whole simulated run written to a directory (what ``stillshot simulate`` does)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np

from stillshot.models import Experiment, ExperimentList, ImageRef
from stillshot.simulate.shots import SimulatedShot, SimulationSettings, Simulator
from stillshot.simulate.writers import CXIWriter, NexusWriter, write_cbf, write_experiments, write_truth

__all__ = ["run_simulation", "FORMATS"]

#: Output formats and the file name pattern of their images.
FORMATS = ("cbf", "cxi", "nexus")

_WORKER: Simulator | None = None


def _init_worker(settings: SimulationSettings, detector) -> None:
    global _WORKER
    _WORKER = Simulator(settings, detector=detector)


def _make(index: int) -> SimulatedShot:
    assert _WORKER is not None
    return _WORKER.shot(index)


def _settings_dict(settings: SimulationSettings) -> dict:
    d = dataclasses.asdict(settings)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def _geometry_expt(path: Path, detector, beam) -> None:
    ExperimentList([Experiment(beam=beam, detector=detector)]).as_file(path)


def run_simulation(settings: SimulationSettings, out_dir: str | os.PathLike, *, n_shots: int, fmt: str = "cbf",
                   prefix: str = "shot", write_mtz: bool = True, nproc: int = 1,
                   progress: Callable[[int, int], None] | None = None, parameters: str | None = None,
                   detector=None) -> dict:
    """Simulate ``n_shots`` shots and write images, truth and geometry into ``out_dir``.

    Parameters
    ----------
    settings : SimulationSettings
    out_dir : str or PathLike
        Created if missing.
    n_shots : int
    fmt : {"cbf", "cxi", "nexus"}
        Image format (cbf: one ``{prefix}_{i:05d}.cbf`` per shot; cxi:
        ``{prefix}s.cxi`` + ``{prefix}s.geom``; nexus: ``{prefix}s.nxs``).
    prefix : str
    write_mtz : bool
        Also write ``true_intensities.mtz``.
    nproc : int
        Processes generating shots (files are written by this process, in order).
    progress : callable, optional
        Called as ``progress(done, total)``.
    parameters : str, optional
        The command's parameters as text, written to ``simulate.phil``.
    detector : Detector, optional
        A NOMINAL detector to use instead of the settings' layout.

    Returns
    -------
    dict
        ``files`` (paths written), ``n_shots``, ``n_blank``, ``n_two_lattices``,
        ``median_spots`` (reflections with > 10 photons per non-blank shot).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = Simulator(settings, detector=detector)
    if fmt == "cbf" and len(sim.nominal_detector) != 1:
        raise ValueError(f"format=cbf writes single-panel miniCBF files; layout {settings.layout} has "
                         f"{len(sim.nominal_detector)} panels (use format=cxi or format=nexus)")
    files: list[str] = []
    writer = None
    if fmt == "cxi":
        path = out / f"{prefix}s.cxi"
        writer = CXIWriter(path, sim.detector, n_shots, geom_detector=sim.nominal_detector)
        files += [str(path), str(writer.geom_path)]
    elif fmt == "nexus":
        path = out / f"{prefix}s.nxs"
        writer = NexusWriter(path, sim.nominal_detector, n_shots)
        files.append(str(path))
    truths, images = [], []
    if nproc > 1 and n_shots > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(nproc, initializer=_init_worker, initargs=(settings, detector))
        stream = pool.imap(_make, range(n_shots), chunksize=1)
    else:
        pool = None
        stream = sim.shots(n_shots)
    try:
        for i, shot in enumerate(stream):
            data = shot.data
            if not settings.noise:
                data = tuple(np.rint(a).astype(np.int32) for a in data)
            if fmt == "cbf":
                path = out / f"{prefix}_{i:05d}.cbf"
                write_cbf(path, data[0], sim.nominal_detector, shot.truth.wavelength,
                          timestamp=f"2026-01-01T00:00:{i % 60:02d}.{i // 60 % 1000:03d}")
                files.append(str(path))
                images.append(ImageRef(path.name))
            else:
                writer.write(i, data, shot.truth.wavelength)
                images.append(ImageRef(Path(writer.path).name, i))
            truths.append(shot.truth)
            if progress:
                progress(i + 1, n_shots)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if writer is not None:
            writer.close()
    structure = {
        "unit_cell": list(sim.structure.unit_cell),
        "space_group": sim.structure.space_group.hm,
        "b_factor": sim.structure.b_factor,
        "model": "mtz" if sim.structure.table is not None else "random Wilson",
        "seed": sim.structure.seed,
    }
    files.append(str(write_truth(out / "truth.json", truths, settings=_settings_dict(settings), images=images,
                                 structure=structure)))
    files.append(str(write_experiments(out / "true.expt", sim.detector, truths, images)))
    _geometry_expt(out / "true_geometry.expt", sim.detector, sim.beam)
    _geometry_expt(out / "nominal_geometry.expt", sim.nominal_detector, sim.beam)
    files += [str(out / "true_geometry.expt"), str(out / "nominal_geometry.expt")]
    if settings.perturb:
        from stillshot.io.crystfel_geom import write_geom

        files.append(str(write_geom(sim.detector, out / "true.geom", wavelength=settings.wavelength)))
    if write_mtz:
        d_min = min(sim.d_min(t.wavelength) for t in truths) if truths else sim.d_min(settings.wavelength)
        sim.structure.write_mtz(str(out / "true_intensities.mtz"), d_min)
        files.append(str(out / "true_intensities.mtz"))
    if parameters:
        (out / "simulate.phil").write_text(parameters)
        files.append(str(out / "simulate.phil"))
    n_blank = sum(t.blank for t in truths)
    spots = [int((t.reflections["intensity.partial"] > 10).sum()) for t in truths if not t.blank]
    return {
        "files": files,
        "n_shots": len(truths),
        "n_blank": n_blank,
        "n_two_lattices": sum(len(t.lattices) == 2 for t in truths),
        "median_spots": float(np.median(spots)) if spots else 0.0,
    }
