"""The image-reader interface and the format registry.

Every format module registers one :class:`ImageFile` subclass.  ``open_image``
picks the first registered class whose ``understand`` accepts the file.  A
reader gives, per frame, the beam and detector models and a tuple of per-panel
numpy arrays of shape ``panel.shape`` = (n_slow, n_fast), in the detector's
panel order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np

from stillshot.models import Beam, Detector, ImageRef


class ImageFormatError(ValueError):
    """A file that cannot be read: names the file and, where known, the frame.

    Parameters
    ----------
    path : str
        The file.
    message : str
        What is wrong, in a user's words.
    frame : int or None
        The frame index for multi-image files.
    """

    def __init__(self, path: str | os.PathLike, message: str, frame: int | None = None):
        self.path = str(path)
        self.frame = frame
        self.reason = message
        where = self.path if frame is None else f"{self.path} frame {frame}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, eq=False)
class Shot:
    """One detector frame: its pixels and models.

    Parameters
    ----------
    image : ImageRef
        File and frame index.
    beam : Beam
    detector : Detector
    data : tuple of ndarray
        One array per panel, shape (n_slow, n_fast), native dtype (counts or ADU).
    """

    image: ImageRef
    beam: Beam
    detector: Detector
    data: tuple


_REGISTRY: list[type["ImageFile"]] = []


def register(cls: type["ImageFile"]) -> type["ImageFile"]:
    """Class decorator adding a format to the registry (tried in order)."""
    _REGISTRY.append(cls)
    return cls


def registered_formats() -> list[type["ImageFile"]]:
    """Registered format classes, in the order they are tried."""
    _load_builtin_formats()
    return list(_REGISTRY)


class ImageFile:
    """Base class of a format reader for one file (one or many frames).

    Subclasses set ``format_name`` and implement ``understand``,
    ``n_frames``, ``models`` and ``read_frame``.  ``reference_geometry`` (a
    Detector), when given, replaces the detector read from the file for every
    frame; formats with no geometry in the file (CXI) require it.
    """

    format_name: ClassVar[str] = "abstract"
    #: True for formats that carry no geometry (the caller must supply one).
    needs_reference_geometry: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike, reference_geometry: Detector | None = None):
        self.path = str(path)
        self.reference_geometry = reference_geometry
        if self.needs_reference_geometry and reference_geometry is None:
            raise ImageFormatError(
                self.path,
                f"{self.format_name} files carry no detector geometry; "
                "give one with input.reference_geometry=FILE (.geom or .expt)",
            )

    @classmethod
    def understand(cls, path: str) -> bool:
        """True if this class reads ``path`` (cheap: looks at the name and first bytes)."""
        raise NotImplementedError

    @property
    def n_frames(self) -> int:
        """Number of frames in the file."""
        raise NotImplementedError

    def models(self, frame: int = 0) -> tuple[Beam, Detector]:
        """Beam and detector of a frame (the reference geometry if one was given)."""
        beam, detector = self._models(frame)
        if self.reference_geometry is not None:
            detector = self.reference_geometry
        return beam, detector

    def _models(self, frame: int) -> tuple[Beam, Detector]:
        raise NotImplementedError

    def read_frame(self, frame: int = 0) -> tuple:
        """Per-panel pixel arrays of a frame, shape (n_slow, n_fast) each."""
        raise NotImplementedError

    def image_ref(self, frame: int) -> ImageRef:
        """The ImageRef of a frame (frame index only for multi-frame files)."""
        return ImageRef(self.path, frame if self.is_multi_frame else None)

    @property
    def is_multi_frame(self) -> bool:
        """True for container formats addressed by frame index (CXI, NeXus)."""
        return False

    def shot(self, frame: int = 0) -> Shot:
        """The frame's pixels and models, with its layout checked against the detector."""
        self.check_frame(frame)
        beam, detector = self.models(frame)
        data = self.read_frame(frame)
        if len(data) != len(detector):
            raise ImageFormatError(
                self.path,
                f"the image has {len(data)} panels but the detector model has {len(detector)}",
                frame,
            )
        for i, (arr, panel) in enumerate(zip(data, detector)):
            if arr.shape != panel.shape:
                raise ImageFormatError(
                    self.path,
                    f"panel {i} ({panel.name}) data shape {arr.shape} does not match the geometry "
                    f"{panel.shape} (n_slow, n_fast)",
                    frame,
                )
        return Shot(self.image_ref(frame), beam, detector, tuple(data))

    def check_frame(self, frame: int) -> None:
        """Raise ImageFormatError for a frame index out of range."""
        n = self.n_frames
        if not 0 <= frame < n:
            raise ImageFormatError(self.path, f"frame index {frame} out of range (file has {n} frames)", frame)

    def shots(self) -> Iterator[Shot]:
        """Every frame of the file, in order."""
        for i in range(self.n_frames):
            yield self.shot(i)

    def close(self) -> None:
        """Release file handles (a no-op for single-image formats)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_image(path: str | os.PathLike, reference_geometry: Detector | None = None) -> ImageFile:
    """Open an image file with the first format that understands it.

    Raises
    ------
    ImageFormatError
        If the file is missing, unreadable, or no format understands it.
    """
    path = str(path)
    if not os.path.exists(path):
        raise ImageFormatError(path, "no such file")
    if os.path.isdir(path):
        raise ImageFormatError(path, "is a directory, not an image file")
    for cls in registered_formats():
        try:
            ok = cls.understand(path)
        except OSError as exc:
            raise ImageFormatError(path, f"cannot read: {exc}") from None
        if ok:
            try:
                return cls(path, reference_geometry=reference_geometry)
            except ImageFormatError:
                raise
            except (OSError, ValueError, KeyError, IndexError, EOFError) as exc:
                raise ImageFormatError(path, f"not a valid {cls.format_name} file ({exc})") from None
    names = ", ".join(c.format_name for c in _REGISTRY)
    raise ImageFormatError(path, f"unknown image format (tried: {names})")


def as_float_panels(data: tuple) -> tuple:
    """Per-panel arrays as float64 (copies only where the dtype differs)."""
    return tuple(np.asarray(a, dtype=np.float64) for a in data)


_LOADED = False


def _load_builtin_formats() -> None:
    """Import the format modules so that they register themselves (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for name in ("cbf", "smv", "nexus", "cxi"):
        try:
            importlib.import_module(f"stillshot.io.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"stillshot.io.{name}":
                raise
