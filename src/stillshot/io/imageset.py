"""Turning command-line inputs into shots: globs, list files, multi-frame files.

A run is addressed shot by shot as (file, frame).  These helpers expand what a
user typed into image files, open them with the format registry, and build
the imported ExperimentList (one experiment per shot, one shared detector
object while the geometry does not change), reporting unreadable inputs
instead of stopping.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterator

from stillshot.io.base import ImageFile, ImageFormatError, Shot, open_image
from stillshot.models import Detector, Experiment, ExperimentList, ImageRef

#: Suffixes of plain-text files that list image paths, one a line.
LIST_SUFFIXES = (".txt", ".lst", ".list")


def expand_inputs(args: list[str]) -> list[str]:
    """Expand globs and list files (``.txt``/``.lst``: one path a line, ``#`` comments).

    Paths in a list file are relative to the list file's folder.  Order is kept;
    a glob that matches nothing is kept as typed so the caller reports it.
    """
    out: list[str] = []
    for arg in args:
        if any(ch in arg for ch in "*?[") and not os.path.exists(arg):
            matches = sorted(glob.glob(arg))
            out.extend(matches or [arg])
        elif arg.endswith(LIST_SUFFIXES) and os.path.isfile(arg):
            base = os.path.dirname(arg)
            with open(arg) as fh:
                for line in fh:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        out.append(line if os.path.isabs(line) else os.path.join(base, line))
        else:
            out.append(arg)
    return out


def load_reference_geometry(path: str | os.PathLike) -> Detector:
    """The detector of a reference geometry file (.expt/.json or CrystFEL .geom).

    Raises
    ------
    ValueError
        Naming the file when it cannot be read or holds no detector.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"input.reference_geometry: {path}: no such file")
    if path.endswith(".geom"):
        from stillshot.io.crystfel_geom import read_geom

        return read_geom(path).detector
    try:
        experiments = ExperimentList.from_file(path)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"input.reference_geometry: {exc}") from None
    if not experiments.detectors():
        raise ValueError(f"input.reference_geometry: {path}: holds no detector model")
    return experiments.detectors()[0]


@dataclass(frozen=True)
class InputFailure:
    """An input that could not be read: which and why."""

    path: str
    frame: int | None
    reason: str

    def __str__(self) -> str:
        where = self.path if self.frame is None else f"{self.path} frame {self.frame}"
        return f"{where}: {self.reason}"


def iter_frames(
    paths: list[str], reference_geometry: Detector | None = None
) -> Iterator[tuple[ImageFile, int] | InputFailure]:
    """Yield ``(reader, frame)`` for every frame of every input, or an InputFailure."""
    for path in paths:
        try:
            reader = open_image(path, reference_geometry=reference_geometry)
            n = reader.n_frames
        except ImageFormatError as exc:
            yield InputFailure(exc.path, exc.frame, exc.reason)
            continue
        try:
            for frame in range(n):
                yield reader, frame
        finally:
            reader.close()


def import_experiments(
    paths: list[str], reference_geometry: Detector | None = None
) -> tuple[ExperimentList, list[InputFailure]]:
    """One experiment per readable shot, with a shared detector where unchanged.

    Returns
    -------
    experiments : ExperimentList
    failures : list of InputFailure
        Inputs (or frames) that could not be read, with the reason.
    """
    experiments = ExperimentList()
    failures: list[InputFailure] = []
    last_detector: Detector | None = None
    last_dict: dict | None = None
    for item in iter_frames(paths, reference_geometry):
        if isinstance(item, InputFailure):
            failures.append(item)
            continue
        reader, frame = item
        try:
            beam, detector = reader.models(frame)
        except ImageFormatError as exc:
            failures.append(InputFailure(exc.path, frame, exc.reason))
            continue
        if detector is not last_detector:
            as_dict = detector.to_dict()
            if as_dict == last_dict:
                detector = last_detector
            else:
                last_detector, last_dict = detector, as_dict
        experiments.append(Experiment(beam=beam, detector=detector, image=reader.image_ref(frame)))
    return experiments, failures


def read_shot(image: ImageRef, reference_geometry: Detector | None = None) -> Shot:
    """The pixels and models of one shot named by an ImageRef."""
    with open_image(image.path, reference_geometry=reference_geometry) as reader:
        return reader.shot(image.frame or 0)
