"""Experiments and DIALS ``ExperimentList`` (.expt) JSON.

One experiment is one crystal lattice on one shot: a beam, a detector, an
optional crystal, and a reference to the image it came from.  Models shared
between experiments (one detector for a whole run) are shared objects and are
written once, as DIALS does.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from stillshot.models.beam import Beam
from stillshot.models.crystal import Crystal
from stillshot.models.detector import Detector

#: Model lists of an ExperimentList that stillshot carries through unchanged.
_OPAQUE_MODELS = ("goniometer", "scan", "profile", "scaling_model")


@dataclass(frozen=True, eq=False)
class ImageRef:
    """Where a shot's pixels come from.

    Parameters
    ----------
    path : str
        Image file path (as given; relative paths are relative to the working
        directory of the command, as in DIALS).
    frame : int or None
        Frame index inside a multi-image file (CXI, NeXus, HDF5); None for
        single-image files.
    imageset : dict or None
        The DIALS imageset dict this reference was read from, written back
        unchanged (shared by the experiments that shared it).
    """

    path: str
    frame: int | None = None
    imageset: dict | None = None

    def label(self) -> str:
        """``path`` or ``path:frame`` for messages and tables."""
        return self.path if self.frame is None else f"{self.path}:{self.frame}"

    def to_imageset_dict(self) -> dict:
        """The DIALS imageset dict for this one image."""
        if self.imageset is not None:
            return self.imageset
        d = {
            "__id__": "ImageSet",
            "images": [self.path],
            "mask": None,
            "gain": None,
            "pedestal": None,
            "dx": None,
            "dy": None,
            "params": {},
        }
        if self.frame is not None:
            d["single_file_indices"] = [int(self.frame)]
        return d


@dataclass(frozen=True, eq=False)
class Experiment:
    """One lattice on one shot.

    Parameters
    ----------
    beam : Beam
    detector : Detector
    image : ImageRef or None
        The shot's image; None for experiments read from files that name none.
    crystal : Crystal or None
        None until the shot is indexed.
    identifier : str
        Unique experiment identifier (DIALS uses UUIDs).
    opaque : dict
        Goniometer/scan/profile/scaling-model dicts from a DIALS file, written
        back unchanged.
    """

    beam: Beam
    detector: Detector
    image: ImageRef | None = None
    crystal: Crystal | None = None
    identifier: str = field(default_factory=lambda: str(uuid.uuid4()))
    opaque: dict = field(default_factory=dict)

    def with_crystal(self, crystal: Crystal | None, new_identifier: bool = False) -> "Experiment":
        """A copy with another crystal (optionally a fresh identifier)."""
        ident = str(uuid.uuid4()) if new_identifier else self.identifier
        return replace(self, crystal=crystal, identifier=ident)


class ExperimentList:
    """An ordered list of experiments with DIALS JSON read/write."""

    def __init__(self, experiments: Iterable[Experiment] = ()):
        self._experiments: list[Experiment] = list(experiments)

    def __len__(self) -> int:
        return len(self._experiments)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ExperimentList(self._experiments[index])
        return self._experiments[index]

    def __iter__(self) -> Iterator[Experiment]:
        return iter(self._experiments)

    def append(self, experiment: Experiment) -> None:
        """Add one experiment at the end."""
        self._experiments.append(experiment)

    def extend(self, experiments: Iterable[Experiment]) -> None:
        """Add experiments at the end."""
        self._experiments.extend(experiments)

    def identifiers(self) -> list[str]:
        """Experiment identifiers in order."""
        return [e.identifier for e in self._experiments]

    def detectors(self) -> list[Detector]:
        """Distinct detector objects, in order of first use."""
        return _unique(e.detector for e in self._experiments)

    def beams(self) -> list[Beam]:
        """Distinct beam objects, in order of first use."""
        return _unique(e.beam for e in self._experiments)

    def crystals(self) -> list[Crystal]:
        """Distinct crystals, in order of first use."""
        return _unique(e.crystal for e in self._experiments if e.crystal is not None)

    # -- DIALS JSON -------------------------------------------------------------
    def to_dict(self) -> dict:
        """The DIALS ExperimentList dict."""
        tables: dict[str, list] = {k: [] for k in ("beam", "detector", "crystal", "imageset")}
        tables.update({k: [] for k in _OPAQUE_MODELS})
        index: dict[str, dict[int, int]] = {k: {} for k in tables}

        def ref(kind: str, obj, as_dict) -> int:
            key = id(obj)
            if key not in index[kind]:
                index[kind][key] = len(tables[kind])
                tables[kind].append(as_dict(obj))
            return index[kind][key]

        experiments = []
        for e in self._experiments:
            entry = {"__id__": "Experiment", "identifier": e.identifier}
            entry["beam"] = ref("beam", e.beam, Beam.to_dict)
            entry["detector"] = ref("detector", e.detector, Detector.to_dict)
            for kind in _OPAQUE_MODELS:
                if kind in e.opaque:
                    entry[kind] = ref(kind, e.opaque[kind], lambda d: d)
            if e.crystal is not None:
                entry["crystal"] = ref("crystal", e.crystal, Crystal.to_dict)
            if e.image is not None:
                img_key = e.image.imageset if e.image.imageset is not None else e.image
                entry["imageset"] = ref("imageset", img_key, lambda _k, im=e.image: im.to_imageset_dict())
            experiments.append(entry)
        return {
            "__id__": "ExperimentList",
            "experiment": experiments,
            "imageset": tables["imageset"],
            "beam": tables["beam"],
            "detector": tables["detector"],
            "goniometer": tables["goniometer"],
            "scan": tables["scan"],
            "crystal": tables["crystal"],
            "profile": tables["profile"],
            "scaling_model": tables["scaling_model"],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentList":
        """Build from a DIALS ExperimentList dict."""
        if d.get("__id__") != "ExperimentList":
            raise ValueError("not a DIALS ExperimentList (missing __id__ = ExperimentList)")
        beams = [Beam.from_dict(b) for b in d.get("beam", [])]
        detectors = [Detector.from_dict(x) for x in d.get("detector", [])]
        crystals = [Crystal.from_dict(c) for c in d.get("crystal", [])]
        imagesets = d.get("imageset", [])
        opaque_tables = {k: d.get(k, []) for k in _OPAQUE_MODELS}
        out = []
        for i, e in enumerate(d.get("experiment", [])):
            try:
                beam = beams[e["beam"]]
                detector = detectors[e["detector"]]
            except (KeyError, IndexError) as exc:
                raise ValueError(f"experiment {i} refers to a missing beam or detector") from exc
            crystal = crystals[e["crystal"]] if e.get("crystal") is not None else None
            opaque = {k: opaque_tables[k][e[k]] for k in _OPAQUE_MODELS if e.get(k) is not None}
            image = _image_ref(imagesets[e["imageset"]], opaque.get("scan")) if "imageset" in e else None
            out.append(
                Experiment(
                    beam=beam,
                    detector=detector,
                    image=image,
                    crystal=crystal,
                    identifier=e.get("identifier") or str(uuid.uuid4()),
                    opaque=opaque,
                )
            )
        return cls(out)

    def as_json(self, indent: int | None = 2) -> str:
        """DIALS .expt JSON text."""
        return json.dumps(self.to_dict(), indent=indent)

    def as_file(self, path: str | os.PathLike) -> None:
        """Write a DIALS .expt file."""
        Path(path).write_text(self.as_json())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ExperimentList":
        """Read a DIALS .expt (JSON) file, with a clear error naming the file."""
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such experiment file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a DIALS experiment list (invalid JSON: {exc})") from None
        try:
            return cls.from_dict(d)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{path}: bad experiment list: {exc}") from None


def _unique(items: Iterable) -> list:
    seen: dict[int, object] = {}
    for obj in items:
        seen.setdefault(id(obj), obj)
    return list(seen.values())


def _image_ref(imageset: dict, scan: dict | None) -> ImageRef:
    """The ImageRef of a DIALS imageset dict (first image of a sequence's scan)."""
    frames = imageset.get("single_file_indices")
    if "images" in imageset:
        images = imageset["images"]
        path = images[0] if images else ""
        frame = int(frames[0]) if frames else None
        return ImageRef(path, frame, imageset)
    template = imageset.get("template", "")
    number = 1
    if scan is not None and scan.get("image_range"):
        number = int(scan["image_range"][0])
    path = re.sub(r"#+", lambda m: f"{number:0{len(m.group(0))}d}", template, count=1)
    return ImageRef(path, None, imageset)
