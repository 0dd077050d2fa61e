"""SMV (ADSC-style) images: a ``{ KEY=value; ... }`` text header and raw pixels.

Header
------
The file starts with ``{`` and ``HEADER_BYTES=N;``; the header is the first N
bytes, ``KEY=value;`` records up to a line holding ``}``.  Keys used here:
``HEADER_BYTES``, ``DIM`` (must be 2), ``SIZE1`` (fast, px), ``SIZE2`` (slow,
px), ``PIXEL_SIZE`` (mm), ``DISTANCE`` (mm), ``WAVELENGTH`` (Å),
``BEAM_CENTER_X``/``BEAM_CENTER_Y`` (mm), ``TYPE`` (``unsigned_short``…),
``BYTE_ORDER`` (``little_endian``/``big_endian``), and optionally
``IMAGE_PEDESTAL``/``ADC_OFFSET``, ``GAIN``, ``TWOTHETA``.  Files may be
gzip- or bzip2-compressed (``.gz``, ``.bz2``).

Geometry (as dxtbx builds it)
-----------------------------
The detector is one flat panel facing the beam at ``DISTANCE``: fast axis
+x, slow axis -y (DIALS lab frame, beam along -z).  With the beam centre
``(b_f, b_s)`` in mm along the fast and slow axes, the panel origin is::

    origin = (-b_f, +b_s, -DISTANCE)

How ``BEAM_CENTER_X``/``Y`` map onto ``(b_f, b_s)`` depends on the writer:

* ADSC (``FormatSMVADSC``): the header's centre is in the Mosflm frame,
  ``b_f = BEAM_CENTER_Y``, ``b_s = BEAM_CENTER_X``.
* JHSim (simtbx/nanoBragg, ``BEAMLINE=fake``; ``FormatSMVJHSim``): the
  header's centre is in the ADXV frame (x along fast, y up from the bottom
  edge), and dxtbx converts it as ``b_f = X + p``, ``b_s = H - Y + p`` where
  ``p`` is the pixel size and ``H = SIZE2·p`` the panel height (mm).  The
  extra pixel is DIALS's convention for these files (it reproduces
  ``dials.import`` exactly, see tests).

Trusted ranges, pedestals, panel types and beam polarization follow the same
dxtbx classes (DIALS 3.12): ADSC ``(-1 - pedestal, 65535 - pedestal)``, JHSim
``(-1, 65535 - ADC_OFFSET)``; the beam is polarized (fraction 0.999, normal
+y) except below 0.05 Å (electrons: fraction 0.5).
"""

from __future__ import annotations

import bz2
import gzip
import os

import numpy as np

from stillshot.io.base import ImageFile, ImageFormatError, register
from stillshot.models import Beam, Detector, Frame, Panel

#: SMV ``TYPE`` -> numpy dtype (without byte order).
_TYPES = {
    "unsigned_short": "u2",
    "signed_short": "i2",
    "short": "i2",
    "unsigned_int": "u4",
    "unsigned_long": "u4",
    "signed_int": "i4",
    "signed_long": "i4",
    "int": "i4",
    "long": "i4",
    "float": "f4",
    "float_ieee": "f4",
    "double": "f8",
}

_REQUIRED = ("SIZE1", "SIZE2", "PIXEL_SIZE", "DISTANCE", "WAVELENGTH", "BEAM_CENTER_X", "BEAM_CENTER_Y")


def _open(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def read_smv_header(path: str | os.PathLike) -> tuple[int, dict]:
    """The header size (bytes) and the header's ``KEY: value`` strings.

    Raises
    ------
    ImageFormatError
        If the file does not start like an SMV file or the header is cut short.
    """
    path = str(path)
    with _open(path) as fh:
        start = fh.read(64).decode("ascii", "replace")
        if not start.startswith("{") or "HEADER_BYTES" not in start:
            raise ImageFormatError(path, "not an SMV file (no '{ HEADER_BYTES=' at the start)")
        try:
            rest = start.split("HEADER_BYTES", 1)[1].split("=", 1)[1]
            size = int(rest.split(";", 1)[0].strip())
        except (IndexError, ValueError):
            raise ImageFormatError(path, "cannot read HEADER_BYTES") from None
        if size < 16:
            raise ImageFormatError(path, f"HEADER_BYTES={size} is too small")
        fh.seek(0)
        text = fh.read(size).decode("ascii", "replace")
    if len(text) < size:
        raise ImageFormatError(path, f"file ends inside the {size}-byte header")
    header: dict[str, str] = {}
    closed = False
    for record in text.replace("\r", "\n").split("\n"):
        record = record.strip()
        if record.startswith("}"):
            closed = True
            break
        if "=" not in record:
            continue
        key, value = record.split("=", 1)
        header[key.strip()] = value.strip().rstrip(";").strip()
    if not closed:
        raise ImageFormatError(path, "the SMV header has no closing '}' within HEADER_BYTES")
    return size, header


@register
class SMVFile(ImageFile):
    """An SMV / ADSC image (one frame, one panel).

    Parameters
    ----------
    path : str or PathLike
        The image file (optionally ``.gz``/``.bz2``).
    reference_geometry : Detector, optional
        Replaces the detector built from the header.

    Attributes
    ----------
    header : dict
        The header's key/value strings.
    header_bytes : int
        Header length in bytes (the pixels start there).
    variant : str
        ``"jhsim"`` (simtbx, ``BEAMLINE=fake``) or ``"adsc"``.
    """

    format_name = "SMV"

    def __init__(self, path, reference_geometry: Detector | None = None):
        super().__init__(path, reference_geometry)
        self.header_bytes, self.header = read_smv_header(self.path)
        h = self.header
        missing = [k for k in _REQUIRED if k not in h]
        if missing:
            raise ImageFormatError(self.path, f"SMV header lacks {', '.join(missing)}")
        if h.get("DIM", "2").strip() != "2":
            raise ImageFormatError(self.path, f"only DIM=2 SMV images are supported, not DIM={h['DIM']}")
        self.variant = "jhsim" if h.get("BEAMLINE") == "fake" else "adsc"
        try:
            self._n_fast = int(h["SIZE1"])
            self._n_slow = int(h["SIZE2"])
            self._pixel = float(h["PIXEL_SIZE"])
            self._distance = float(h["DISTANCE"])
            self._wavelength = float(h["WAVELENGTH"])
            self._bx = float(h["BEAM_CENTER_X"])
            self._by = float(h["BEAM_CENTER_Y"])
            self._two_theta = float(h.get("TWOTHETA", 0) or 0)
        except ValueError as exc:
            raise ImageFormatError(self.path, f"bad number in the SMV header ({exc})") from None
        if self._n_fast <= 0 or self._n_slow <= 0 or self._pixel <= 0:
            raise ImageFormatError(self.path, "SIZE1, SIZE2 and PIXEL_SIZE must be positive")
        type_name = h.get("TYPE", "unsigned_short").strip().lower()
        if type_name not in _TYPES:
            raise ImageFormatError(self.path, f"unsupported SMV pixel TYPE '{type_name}'")
        order = h.get("BYTE_ORDER", "little_endian").strip().lower()
        if order not in ("little_endian", "big_endian"):
            raise ImageFormatError(self.path, f"unknown BYTE_ORDER '{order}'")
        self.dtype = np.dtype(("<" if order == "little_endian" else ">") + _TYPES[type_name])

    @classmethod
    def understand(cls, path: str) -> bool:
        """True for files starting ``{`` + newline + ``HEADER_BYTES=`` (optionally compressed)."""
        try:
            with _open(path) as fh:
                start = fh.read(32)
        except (OSError, EOFError):
            return False
        return start.startswith(b"{") and b"HEADER_BYTES" in start[:20]

    @property
    def n_frames(self) -> int:
        """One frame."""
        return 1

    # -- models -----------------------------------------------------------------------
    @property
    def pedestal(self) -> float:
        """The constant pixel pedestal in ADU (``ADC_OFFSET`` for JHSim, ``IMAGE_PEDESTAL`` for ADSC)."""
        h = self.header
        try:
            if self.variant == "jhsim":
                return float(int(float(h.get("ADC_OFFSET", 1))))
            return float(h.get("IMAGE_PEDESTAL", 0))
        except ValueError:
            raise ImageFormatError(self.path, "bad pedestal value in the SMV header") from None

    def beam_centre_mm(self) -> tuple[float, float]:
        """Direct-beam position (fast, slow) in mm from the panel origin, DIALS convention."""
        p = self._pixel
        if self.variant == "jhsim":
            return self._bx + p, self._n_slow * p - self._by + p
        return self._by, self._bx

    def _gain(self) -> float:
        h = self.header
        if "GAIN" in h:
            try:
                return float(h["GAIN"])
            except ValueError:
                raise ImageFormatError(self.path, f"bad GAIN '{h['GAIN']}'") from None
        return 1.0

    def _models(self, frame: int) -> tuple[Beam, Detector]:
        if self._two_theta != 0 and self.reference_geometry is None:
            raise ImageFormatError(
                self.path,
                f"TWOTHETA={self._two_theta}: detectors on a two-theta arm are not supported; "
                "give input.reference_geometry=FILE",
            )
        pedestal = self.pedestal
        if self.variant == "jhsim":
            trusted = (-1.0, 65535.0 - pedestal)
            ptype = "SENSOR_PAD" if self._pixel == 0.172 else "SENSOR_CCD"
            gain = 1.0
        else:
            trusted = (-1.0 - pedestal, 65535.0 - pedestal)
            ptype = "SENSOR_CCD"
            gain = self._gain()
        b_f, b_s = self.beam_centre_mm()
        fast = np.array([1.0, 0.0, 0.0])
        slow = np.array([0.0, -1.0, 0.0])
        origin = np.array([0.0, 0.0, -self._distance]) - b_f * fast - b_s * slow
        frame_ = Frame(fast, slow, origin)
        panel = Panel(
            name="Panel",
            frame=frame_,
            local_frame=frame_,
            pixel_size=(self._pixel, self._pixel),
            image_size=(self._n_fast, self._n_slow),
            trusted_range=trusted,
            gain=gain,
            pedestal=pedestal,
            type=ptype,
        )
        if self._wavelength > 0.05:
            beam = Beam(wavelength=self._wavelength)
        else:
            beam = Beam(wavelength=self._wavelength, polarization_fraction=0.5)
        return beam, Detector.flat([panel])

    # -- pixels -------------------------------------------------------------------------
    def read_frame(self, frame: int = 0) -> tuple:
        """The pixels as one (SIZE2, SIZE1) array in the header's type (native byte order)."""
        self.check_frame(frame)
        n = self._n_fast * self._n_slow
        nbytes = n * self.dtype.itemsize
        try:
            with _open(self.path) as fh:
                fh.seek(self.header_bytes)
                raw = fh.read(nbytes)
        except (OSError, EOFError) as exc:
            raise ImageFormatError(self.path, f"cannot read the pixels ({exc})", None) from None
        if len(raw) < nbytes:
            raise ImageFormatError(
                self.path, f"truncated: {len(raw)} bytes of pixels, expected {nbytes} ({self._n_slow}×{self._n_fast})"
            )
        data = np.frombuffer(raw, dtype=self.dtype).reshape(self._n_slow, self._n_fast)
        return (data.astype(self.dtype.newbyteorder("="), copy=True),)
