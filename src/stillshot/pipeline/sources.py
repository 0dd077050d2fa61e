"""Where a run's shots come from: the image-source plugin interface.

``process`` never opens files itself: it asks an :class:`ImageSource` for the
run's work items (cheap descriptors, dealt to the workers) and, in each worker,
for a :class:`ShotReader` that turns an item into a :class:`~stillshot.io.base.Shot`.
The default source, ``files``, reads image files, globs, text lists of files
and multi-frame containers (CXI, NeXus) frame by frame.  A facility stream
(psana at LCLS, ZeroMQ from a detector back-end) is one more class registered
under a name::

    from stillshot.pipeline.sources import ShotReader, WorkItem, register_source

    @register_source("zmq")
    class ZmqSource:
        def __init__(self, inputs, reference_geometry=None):
            self.endpoint = inputs[0]
        def items(self):
            for n in range(self.n_events()):          # may be lazy
                yield WorkItem(self.endpoint, n)
        def reader(self):
            return ZmqReader(self.endpoint)           # picklable; opened in the worker

and chosen with ``input.source=zmq``.  Sources can also come from installed
packages through the ``stillshot.image_sources`` entry-point group (the entry
point names a module or class whose import registers the source).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

from stillshot.io.base import ImageFile, Shot, open_image
from stillshot.io.imageset import expand_inputs
from stillshot.models import Detector

__all__ = [
    "FileShotReader",
    "FilesSource",
    "ImageSource",
    "ShotReader",
    "WorkItem",
    "get_source",
    "register_source",
    "shot_key",
    "source_names",
]

#: Suffixes of container files that may hold many frames (opened to count them).
CONTAINER_SUFFIXES = (".h5", ".hdf5", ".hdf", ".cxi", ".nxs", ".nx5", ".nexus", ".hd5")

#: Entry-point group through which installed packages add sources.
ENTRY_POINT_GROUP = "stillshot.image_sources"


def shot_key(path: str, frame: int | None) -> str:
    """The identity of a shot in a run: its file (or stream) and frame index."""
    return f"{os.path.normpath(path)}\0{'' if frame is None else frame}"


@dataclass(frozen=True)
class WorkItem:
    """One shot to process: a file (or stream address) and a frame (None for single-image files).

    Attributes
    ----------
    path : str
        File path, or any address the source's reader understands.
    frame : int or None
        Frame (event) index inside ``path``; None for single-image files.
    """

    path: str
    frame: int | None

    @property
    def key(self) -> str:
        """The shot's journal key."""
        return shot_key(self.path, self.frame)


@runtime_checkable
class ShotReader(Protocol):
    """Reads shots in one worker process (may keep files or connections open)."""

    def read(self, item: WorkItem) -> Shot:
        """The pixels and models of one shot.

        Raises
        ------
        ImageFormatError, OSError, ValueError
            For a shot that cannot be read: the runner records it as ``unreadable``.
        """
        ...

    def close(self) -> None:
        """Release files or connections."""
        ...


@runtime_checkable
class ImageSource(Protocol):
    """A run's shots: work items for the dealer, a reader for each worker."""

    def items(self) -> Iterable[WorkItem]:
        """Every shot of the run, in run order (may be a lazy iterator)."""
        ...

    def reader(self) -> ShotReader:
        """A picklable reader, sent to each worker process."""
        ...


_SOURCES: dict[str, Callable[..., ImageSource]] = {}
_ENTRY_POINTS_LOADED = False


def register_source(name: str) -> Callable:
    """Class (or factory) decorator registering an image source under ``name``.

    The factory is called as ``factory(inputs, reference_geometry=detector_or_None)``
    with the positional command-line arguments.
    """

    def deco(factory):
        _SOURCES[name] = factory
        return factory

    return deco


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _SOURCES:
            obj = ep.load()
            if callable(obj) and ep.name not in _SOURCES:
                _SOURCES[ep.name] = obj


def source_names() -> list[str]:
    """Names of the registered image sources (built-in first)."""
    _load_entry_points()
    return list(_SOURCES)


def get_source(name: str, inputs: list[str], reference_geometry: Detector | None = None) -> ImageSource:
    """The image source ``name`` over the command-line inputs.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    """
    _load_entry_points()
    if name not in _SOURCES:
        raise KeyError(f"unknown image source {name!r} (known: {', '.join(_SOURCES)})")
    return _SOURCES[name](inputs, reference_geometry=reference_geometry)


class FileShotReader:
    """Reads shots from image files, keeping the last file open (multi-frame files).

    Parameters
    ----------
    reference_geometry : Detector or None
        Geometry replacing the image headers'.
    """

    def __init__(self, reference_geometry: Detector | None = None):
        self.reference_geometry = reference_geometry
        self._reader: ImageFile | None = None

    def __getstate__(self):
        return {"reference_geometry": self.reference_geometry, "_reader": None}

    def read(self, item: WorkItem) -> Shot:
        """The shot of a work item (frame 0 for single-image files)."""
        if self._reader is None or self._reader.path != item.path:
            self.close()
            self._reader = open_image(item.path, reference_geometry=self.reference_geometry)
        return self._reader.shot(item.frame or 0)

    def close(self) -> None:
        """Close the open file, if any."""
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None


@register_source("files")
class FilesSource:
    """Image files: paths, globs, ``.txt``/``.lst`` lists of paths; containers frame by frame.

    Single-image files become one item each without being opened here (the
    worker finds out whether they are readable); container files (HDF5
    suffixes) are opened to count their frames, and one that cannot be opened
    becomes one item whose read fails with the reason.

    Parameters
    ----------
    inputs : list of str
        Command-line inputs.
    reference_geometry : Detector or None
    """

    def __init__(self, inputs: list[str], reference_geometry: Detector | None = None):
        self.paths = expand_inputs(list(inputs))
        self.reference_geometry = reference_geometry

    def items(self) -> Iterator[WorkItem]:
        """Every shot in input order."""
        for path in self.paths:
            if not path.lower().endswith(CONTAINER_SUFFIXES):
                yield WorkItem(path, None)
                continue
            try:
                with open_image(path, reference_geometry=self.reference_geometry) as reader:
                    n = reader.n_frames
                    multi = reader.is_multi_frame
            except (ValueError, OSError, KeyError):
                yield WorkItem(path, None)  # the worker records why it cannot be read
                continue
            if not multi:
                yield WorkItem(path, None)
            else:
                for frame in range(n):
                    yield WorkItem(path, frame)

    def reader(self) -> FileShotReader:
        """A file reader for a worker."""
        return FileShotReader(self.reference_geometry)
