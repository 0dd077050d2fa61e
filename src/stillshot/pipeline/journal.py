"""An append-only, crash-safe record of finished shots.

``process`` appends each shot's :class:`StillResult` to ``DIR/stillshot.journal``
as soon as it is done.  A record is ``length (8 bytes) | pickle | crc32 (4
bytes)``; a run killed mid-write (even with ``kill -9``) leaves at worst one
torn record at the end, which :meth:`Journal.open` detects and cuts off.  A
re-run with the same DIR reads the journal, skips the shots already in it and
appends the rest, so no shot is lost or done twice.  The output files
(``imported.expt``, ``strong.refl`` …) are always rebuilt from the journal.

Detector models, large for multi-panel detectors and the same for most shots,
are stored once each and referred to by key from the shot records.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import zlib
from dataclasses import replace
from typing import Iterator

from stillshot.models import Detector
from stillshot.pipeline.result import StillResult

JOURNAL_NAME = "stillshot.journal"
_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def journal_paths(out_dir: str) -> list[str]:
    """The journal files of a directory (one per MPI rank that wrote)."""
    names = sorted(n for n in os.listdir(out_dir) if n.startswith(JOURNAL_NAME)) if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, n) for n in names]


def detector_key(detector: Detector) -> str:
    """A content hash naming a detector model (same geometry, same key)."""
    text = json.dumps(detector.to_dict(), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class DetectorStripper:
    """Replaces detectors in results by keys, remembering which were already sent.

    Used where results are produced (a worker process) so that each distinct
    detector crosses process boundaries and reaches the journal once.
    """

    def __init__(self):
        self._keys: dict[int, str] = {}
        self._sent: set[str] = set()
        self._held: list[Detector] = []

    def strip(self, result: StillResult) -> tuple[StillResult, dict[str, Detector]]:
        """The result with detector keys in place of detectors, and any new detectors."""
        new: dict[str, Detector] = {}

        def key_of(det):
            if isinstance(det, str):
                return det
            k = self._keys.get(id(det))
            if k is None:
                k = detector_key(det)
                self._keys[id(det)] = k
                self._held.append(det)  # keep alive so id() stays unique
            if k not in self._sent:
                self._sent.add(k)
                new[k] = det
            return k

        imported = result.imported
        if imported is not None:
            imported = replace(imported, detector=key_of(imported.detector))
        experiments = [replace(e, detector=key_of(e.detector)) for e in result.experiments]
        if len(self._held) > 64:  # bound memory on runs whose geometry changes per shot
            self._held.clear()
            self._keys.clear()
        return replace(result, imported=imported, experiments=experiments), new


class Journal:
    """The journal of one output directory.

    Parameters
    ----------
    out_dir : str
        The output directory (created if missing).
    suffix : str
        Appended to the file name, e.g. ``.r1`` for MPI rank 1's journal.
    """

    def __init__(self, out_dir: str, suffix: str = ""):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, JOURNAL_NAME + suffix)
        self.detectors: dict[str, Detector] = {}
        self.done: dict[str, str] = {}  # shot key -> status
        self._fh = None

    def open(self) -> "Journal":
        """Read what is there (cutting off a torn last record) and open for appending."""
        os.makedirs(self.out_dir, exist_ok=True)
        good_end = 0
        if os.path.exists(self.path):
            for kind, payload, end in self._records():
                good_end = end
                if kind == "detector":
                    self.detectors[payload[0]] = payload[1]
                else:
                    key, result = payload
                    self.done[key] = result.status
            if good_end != os.path.getsize(self.path):
                with open(self.path, "r+b") as fh:
                    fh.truncate(good_end)
        self._fh = open(self.path, "ab")
        return self

    def close(self) -> None:
        """Flush and close."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def add(self, key: str, result: StillResult, new_detectors: dict[str, Detector]) -> None:
        """Append one shot (and any detectors it introduces), flushed to the OS at once.

        Parameters
        ----------
        key : str
            The shot's identity, :func:`stillshot.pipeline.sources.shot_key` of its file and frame.
        """
        for det_key, det in new_detectors.items():
            if det_key not in self.detectors:
                self.detectors[det_key] = det
                self._write(("detector", (det_key, det)))
        self._write(("shot", (key, result)))
        self._fh.flush()
        self.done[key] = result.status

    def _write(self, record) -> None:
        payload = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        self._fh.write(_HEADER.pack(len(payload)) + payload + _CRC.pack(zlib.crc32(payload)))

    def _records(self) -> Iterator[tuple[str, tuple, int]]:
        return read_records(self.path)

def read_records(path: str) -> Iterator[tuple[str, tuple, int]]:
    """Records of a journal file up to the first torn or corrupt one: (kind, body, end offset)."""
    with open(path, "rb") as fh:
        pos = 0
        while True:
            head = fh.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return
            (n,) = _HEADER.unpack(head)
            payload = fh.read(n)
            crc = fh.read(_CRC.size)
            if len(payload) < n or len(crc) < _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(payload):
                return
            try:
                kind, body = pickle.loads(payload)
            except Exception:  # noqa: BLE001 - a corrupt record ends the readable part
                return
            pos += _HEADER.size + n + _CRC.size
            yield kind, body, pos



def read_results(out_dir: str) -> dict[str, StillResult]:
    """Every shot recorded in a directory's journals, by key, detectors restored.

    All journal files are read (one per MPI rank); the last record of a key wins.
    """
    latest: dict[str, StillResult] = {}
    detectors: dict[str, Detector] = {}
    for path in journal_paths(out_dir):
        for kind, payload, _ in read_records(path):
            if kind == "detector":
                detectors[payload[0]] = payload[1]
            else:
                latest[payload[0]] = payload[1]
    return {key: _restore(result, detectors) for key, result in latest.items()}

def _restore(result: StillResult, detectors: dict[str, Detector]) -> StillResult:
    """Put the detector objects back in place of their keys (shared objects)."""

    def det(e):
        return replace(e, detector=detectors[e.detector]) if isinstance(e.detector, str) else e

    imported = det(result.imported) if result.imported is not None else None
    return replace(result, imported=imported, experiments=[det(e) for e in result.experiments])


def done_keys(out_dir: str) -> set[str]:
    """Keys of the shots already recorded in any journal of a directory."""
    keys: set[str] = set()
    for path in journal_paths(out_dir):
        keys.update(body[0] for kind, body, _ in read_records(path) if kind == "shot")
    return keys


class JournalIndex:
    """Where each shot's latest record lies in a directory's journals, for reading in any order.

    Holds only keys and file offsets (and the detectors, shared by all
    shots), so a run's results can be read one at a time in input order
    whatever order the workers finished them in.

    Parameters
    ----------
    out_dir : str
    """

    def __init__(self, out_dir: str):
        self.detectors: dict[str, Detector] = {}
        self.where: dict[str, tuple[str, int]] = {}
        for path in journal_paths(out_dir):
            start = 0
            for kind, body, end in read_records(path):
                if kind == "detector":
                    self.detectors[body[0]] = body[1]
                else:
                    self.where[body[0]] = (path, start)
                start = end
        self._files: dict[str, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __len__(self) -> int:
        return len(self.where)

    def get(self, key: str) -> StillResult:
        """The shot's result with its detectors restored.

        Raises
        ------
        KeyError
            For a shot not in the journals.
        """
        path, start = self.where[key]
        fh = self._files.get(path)
        if fh is None:
            fh = self._files[path] = open(path, "rb")
        fh.seek(start)
        (n,) = _HEADER.unpack(fh.read(_HEADER.size))
        kind, body = pickle.loads(fh.read(n))
        return _restore(body[1], self.detectors)

    def close(self) -> None:
        """Close the journal files."""
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


RUN_RECORD = "stillshot.run.json"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_run_settings(out_dir: str, parameters: dict, inputs: list[str], *, overwrite: bool = False,
                       ignore: tuple = ()) -> str | None:
    """Make sure a directory's journal belongs to a run with these parameters and inputs.

    The settings are recorded in ``DIR/stillshot.run.json`` at the start of a
    run.  A run resumed with other settings would mix results of two
    configurations, so it is refused, unless ``overwrite``, which deletes the
    old journals and starts afresh.

    Parameters
    ----------
    out_dir : str
    parameters : dict
        The run's parameters as nested dicts.
    inputs : list of str
        The inputs as given (a new file list is another run).
    overwrite : bool
    ignore : tuple of str
        Parameter name prefixes that may change between a run and its resumption.

    Returns
    -------
    str or None
        Why the directory cannot be resumed, or None (the record is then written).
    """
    flat = {k: v for k, v in _flat(parameters).items() if not k.startswith(tuple(ignore))}
    record = {"parameters": flat, "inputs_sha1": hashlib.sha1("\n".join(inputs).encode()).hexdigest()}
    path = os.path.join(out_dir, RUN_RECORD)
    if os.path.exists(path) and journal_paths(out_dir):
        with open(path) as fh:
            old = json.load(fh)
        old_p = old.get("parameters", {})
        same = lambda k: json.dumps(old_p.get(k), default=str) == json.dumps(flat.get(k), default=str)  # noqa: E731
        changed = sorted(k for k in set(old_p) | set(flat) if not same(k))
        if changed or old.get("inputs_sha1") != record["inputs_sha1"]:
            if not overwrite:
                what = f"parameter {changed[0]}" if changed else "the input list"
                return f"output.dir={out_dir} holds a run with different settings ({what} differs)"
            for p in journal_paths(out_dir):
                os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, default=str)
    os.replace(tmp, path)
    return None
