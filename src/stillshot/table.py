"""The reflection table: equal-length numpy columns with DIALS column names.

A :class:`ReflectionTable` is a dict-like mapping from DIALS column names
(``"xyzobs.px.value"``, ``"miller_index"``, ``"flags"``, ...) to numpy arrays
that all have the same first dimension, plus the experiment identifiers map
(``id`` -> experiment UUID) that DIALS keeps with every table.

DIALS ``.refl`` files (msgpack) are read and written byte-for-byte as DIALS
does.  The file is the msgpack encoding of::

    ["dials::af::reflection_table", VERSION,
     {"identifiers": {int: str},
      "nrows": N,
      "data": {name: [type_name, [n_elements, raw_little_endian_bytes]]}}]

with columns in sorted name order (DIALS keeps them in a ``std::map``).  The
fixed-size column types map to numpy arrays as follows:

===========================  ===============  ==========
DIALS type                   numpy dtype      row shape
===========================  ===============  ==========
``bool``                     ``bool``         ()
``int``                      ``int32``        ()
``std::size_t``              ``uint64``       ()
``double``                   ``float64``      ()
``vec2<double>``             ``float64``      (2,)
``vec3<double>``             ``float64``      (3,)
``mat3<double>``             ``float64``      (3, 3) row-major
``int6``                     ``int32``        (6,)
``cctbx::miller::index<>``   ``int32``        (3,)
===========================  ===============  ==========

Variable-size columns (``Shoebox<>`` pixel data) and any type not listed are
kept undecoded in :attr:`ReflectionTable.opaque_columns` and written back
unchanged.  Such columns cannot be subset, so :meth:`~ReflectionTable.select`,
:meth:`~ReflectionTable.sort` and :meth:`~ReflectionTable.concat` drop them
with an :class:`OpaqueColumnsDropped` warning.
"""

from __future__ import annotations

import enum
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ItemsView, Iterable, Iterator, KeysView, Mapping

import msgpack
import numpy as np

__all__ = [
    "DIALS_TYPES",
    "Flags",
    "OpaqueColumn",
    "OpaqueColumnsDropped",
    "ReflectionFileError",
    "ReflectionTable",
]

_MAGIC = "dials::af::reflection_table"
_READABLE_VERSIONS = (1, 2)
_WRITE_VERSION = 1


class Flags(enum.IntFlag):
    """Bits of the ``flags`` column, with DIALS's values (``reflection_table.h``)."""

    predicted = 1 << 0
    observed = 1 << 1
    indexed = 1 << 2
    used_in_refinement = 1 << 3
    strong = 1 << 5
    reference_spot = 1 << 6
    dont_integrate = 1 << 7
    integrated_sum = 1 << 8
    integrated_prf = 1 << 9
    integrated = integrated_sum | integrated_prf
    overloaded = 1 << 10
    overlapped_bg = 1 << 11
    overlapped_fg = 1 << 12
    in_powder_ring = 1 << 13
    foreground_includes_bad_pixels = 1 << 14
    background_includes_bad_pixels = 1 << 15
    includes_bad_pixels = foreground_includes_bad_pixels | background_includes_bad_pixels
    bad_shoebox = (
        overloaded | overlapped_bg | overlapped_fg | in_powder_ring | includes_bad_pixels
    )
    bad_spot = bad_shoebox
    used_in_modelling = 1 << 16
    centroid_outlier = 1 << 17
    failed_during_background_modelling = 1 << 18
    failed_during_summation = 1 << 19
    failed_during_profile_fitting = 1 << 20
    bad_reference = 1 << 21
    user_excluded_in_scaling = 1 << 22
    outlier_in_scaling = 1 << 23
    excluded_for_scaling = 1 << 24
    bad_for_scaling = user_excluded_in_scaling | outlier_in_scaling | excluded_for_scaling
    excluded_for_refinement = 1 << 25
    bad_for_refinement = excluded_for_refinement | centroid_outlier
    scaled = 1 << 26


#: DIALS column type name -> (numpy dtype, row shape) for the decoded types.
DIALS_TYPES: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "bool": (np.dtype("bool"), ()),
    "int": (np.dtype("<i4"), ()),
    "std::size_t": (np.dtype("<u8"), ()),
    "double": (np.dtype("<f8"), ()),
    "vec2<double>": (np.dtype("<f8"), (2,)),
    "vec3<double>": (np.dtype("<f8"), (3,)),
    "mat3<double>": (np.dtype("<f8"), (3, 3)),
    "int6": (np.dtype("<i4"), (6,)),
    "cctbx::miller::index<>": (np.dtype("<i4"), (3,)),
}

#: DIALS's types for well-known columns: values assigned to these names are
#: converted to the DIALS dtype (so that, e.g., ``panel`` is always uint64).
KNOWN_COLUMNS: dict[str, str] = {
    "bbox": "int6",
    "d": "double",
    "entering": "bool",
    "flags": "std::size_t",
    "id": "int",
    "imageset_id": "std::size_t",
    "intensity.prf.value": "double",
    "intensity.prf.variance": "double",
    "intensity.sum.value": "double",
    "intensity.sum.variance": "double",
    "miller_index": "cctbx::miller::index<>",
    "n_signal": "int",
    "num_pixels.background": "int",
    "num_pixels.background_used": "int",
    "num_pixels.foreground": "int",
    "num_pixels.valid": "int",
    "panel": "std::size_t",
    "partial_id": "std::size_t",
    "partiality": "double",
    "rlp": "vec3<double>",
    "s1": "vec3<double>",
    "xyzcal.mm": "vec3<double>",
    "xyzcal.px": "vec3<double>",
    "xyzobs.mm.value": "vec3<double>",
    "xyzobs.mm.variance": "vec3<double>",
    "xyzobs.px.value": "vec3<double>",
    "xyzobs.px.variance": "vec3<double>",
}


class ReflectionFileError(ValueError):
    """A ``.refl`` file (or msgpack buffer) that cannot be read as a reflection table."""


class OpaqueColumnsDropped(UserWarning):
    """Undecoded (opaque) columns were dropped by select, sort or concat."""


@dataclass(frozen=True)
class OpaqueColumn:
    """A column stillshot keeps undecoded, written back exactly as read.

    Parameters
    ----------
    type_name : str
        The DIALS type name, e.g. ``"Shoebox<>"``.
    payload : object
        The column's msgpack value as unpacked (for DIALS columns
        ``[n_elements, raw_bytes]``).
    """

    type_name: str
    payload: Any

    @property
    def nbytes(self) -> int:
        """Size of the raw data in bytes (0 when the payload has no raw block)."""
        if isinstance(self.payload, (list, tuple)) and len(self.payload) == 2:
            raw = self.payload[1]
            if isinstance(raw, (bytes, bytearray)):
                return len(raw)
        return 0


def _dials_type_of(name: str, array: np.ndarray) -> str:
    """The DIALS type a column is written as (TypeError if it has none)."""
    for type_name, (dtype, shape) in DIALS_TYPES.items():
        if array.dtype == dtype and array.shape[1:] == shape:
            return type_name
    known = KNOWN_COLUMNS.get(name)
    if known is not None and array.shape[1:] == DIALS_TYPES[known][1]:
        return known
    kind, shape = array.dtype.kind, array.shape[1:]
    if kind == "b" and shape == ():
        return "bool"
    if kind == "i" and shape == ():
        return "int"
    if kind == "u" and shape == ():
        return "std::size_t"
    if kind in "iu" and shape == (3,):
        return "cctbx::miller::index<>"
    if kind in "iu" and shape == (6,):
        return "int6"
    if kind == "f":
        by_shape = {
            (): "double",
            (2,): "vec2<double>",
            (3,): "vec3<double>",
            (3, 3): "mat3<double>",
        }
        if shape in by_shape:
            return by_shape[shape]
    raise TypeError(
        f"column {name!r} ({array.dtype}, row shape {shape}) has no DIALS column type; "
        f"writable types: {', '.join(DIALS_TYPES)}"
    )


def _to_dials_dtype(name: str, array: np.ndarray, type_name: str) -> np.ndarray:
    """``array`` converted to ``type_name``'s dtype, refusing lossy conversions."""
    dtype, shape = DIALS_TYPES[type_name]
    if array.shape[1:] != shape:
        raise ValueError(
            f"column {name!r} must have row shape {shape} ({type_name}), got {array.shape[1:]}"
        )
    if array.dtype == dtype:
        return array
    kind = array.dtype.kind
    if dtype.kind == "b" and kind != "b":
        raise TypeError(f"column {name!r} ({type_name}) needs a bool array, got {array.dtype}")
    if dtype.kind in "iu":
        if kind not in "biu":
            raise TypeError(
                f"column {name!r} ({type_name}) needs an integer array, got {array.dtype}"
            )
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(
                f"column {name!r}: values [{array.min()}, {array.max()}] do not fit "
                f"{type_name} ({dtype})"
            )
    if dtype.kind == "f" and kind not in "iuf":
        raise TypeError(f"column {name!r} ({type_name}) needs a numeric array, got {array.dtype}")
    return array.astype(dtype)


def _row_index(selection: Any, nrows: int) -> np.ndarray:
    """A boolean mask or integer indices as an integer index array."""
    sel = np.asarray(selection)
    if sel.dtype.kind == "b":
        if sel.shape != (nrows,):
            raise ValueError(f"boolean selection has shape {sel.shape}, table has {nrows} rows")
        return np.flatnonzero(sel)
    if sel.dtype.kind in "iu" or sel.size == 0:
        sel = sel.astype(np.intp).ravel()
        if sel.size and (sel.max() >= nrows or sel.min() < -nrows):
            raise IndexError(f"row index out of range for a table of {nrows} rows")
        return sel
    raise TypeError(f"rows are selected by a boolean mask or integer indices, got {sel.dtype}")


class ReflectionTable:
    """Equal-length numpy columns with DIALS column names.

    Parameters
    ----------
    columns : dict of str to array_like, optional
        Initial columns; all must have the same length.
    identifiers : dict of int to str, optional
        Experiment identifiers: the value of the ``id`` column -> experiment
        UUID (as in the ``.expt`` file).

    Attributes
    ----------
    identifiers : dict of int to str
        Experiment identifiers map.
    opaque_columns : dict of str to OpaqueColumn
        Columns read from a file but not decoded (``shoebox`` and unknown
        types).  Written back unchanged by :meth:`as_msgpack`; dropped (with
        an :class:`OpaqueColumnsDropped` warning) by :meth:`select`,
        :meth:`sort` and :meth:`concat`.

    Notes
    -----
    Values assigned to the well-known DIALS columns (``panel``, ``flags``,
    ``id``, ``miller_index``, ``bbox``, ``s1``, ``xyzobs.px.value``, ...) are
    converted to the DIALS dtype (``panel`` and ``flags`` uint64, ``id``
    int32, ``miller_index`` and ``bbox`` int32, vectors float64); lossy
    conversions (floats to integers, values out of range) are refused.
    Other columns are stored as given and converted when written.
    """

    def __init__(
        self,
        columns: Mapping[str, Any] | None = None,
        identifiers: Mapping[int, str] | None = None,
    ) -> None:
        self._columns: dict[str, np.ndarray] = {}
        self._nrows = 0
        self.identifiers: dict[int, str] = {int(k): str(v) for k, v in (identifiers or {}).items()}
        self.opaque_columns: dict[str, OpaqueColumn] = {}
        self._version = _WRITE_VERSION
        for name, values in (columns or {}).items():
            self[name] = values

    # ------------------------------------------------------------------ dict-like
    @classmethod
    def empty(cls, nrows: int = 0) -> ReflectionTable:
        """A table with no columns and ``nrows`` rows (columns added must match).

        Parameters
        ----------
        nrows : int, optional
            Number of rows.

        Returns
        -------
        ReflectionTable
        """
        if nrows < 0:
            raise ValueError(f"nrows must be >= 0, got {nrows}")
        table = cls()
        table._nrows = int(nrows)
        return table

    @property
    def nrows(self) -> int:
        """Number of rows."""
        return self._nrows

    def __len__(self) -> int:
        return self._nrows

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def keys(self) -> KeysView[str]:
        """Names of the decoded columns (opaque columns are in :attr:`opaque_columns`)."""
        return self._columns.keys()

    def items(self) -> ItemsView[str, np.ndarray]:
        """(name, array) pairs of the decoded columns."""
        return self._columns.items()

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            pass
        if name in self.opaque_columns:
            type_name = self.opaque_columns[name].type_name
            what = (
                "shoebox pixel data is not decoded by stillshot"
                if type_name.startswith("Shoebox")
                else "this column type is not decoded by stillshot"
            )
            raise KeyError(
                f"column {name!r} ({type_name}) is kept as opaque raw bytes: {what}; "
                f"see ReflectionTable.opaque_columns"
            )
        raise KeyError(f"no column {name!r}; columns are: {', '.join(self._columns) or 'none'}")

    def __setitem__(self, name: str, values: Any) -> None:
        array = np.asarray(values)
        if array.ndim == 0:
            raise ValueError(
                f"column {name!r} must be an array with one entry per row, got a scalar"
            )
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"column {name!r}: only bool and numeric columns are supported, "
                f"got {array.dtype}"
            )
        if name in KNOWN_COLUMNS:
            array = _to_dials_dtype(name, array, KNOWN_COLUMNS[name])
        has_columns = bool(self._columns) or bool(self.opaque_columns.keys() - {name})
        if (has_columns or self._nrows) and len(array) != self._nrows:
            raise ValueError(
                f"column {name!r} has {len(array)} rows, the table has {self._nrows}"
            )
        self.opaque_columns.pop(name, None)
        self._columns[name] = np.ascontiguousarray(array)
        self._nrows = len(array)

    def __delitem__(self, name: str) -> None:
        if name in self._columns:
            del self._columns[name]
        elif name in self.opaque_columns:
            del self.opaque_columns[name]
        else:
            raise KeyError(f"no column {name!r}")

    def __repr__(self) -> str:
        opaque = f", opaque={list(self.opaque_columns)}" if self.opaque_columns else ""
        return f"ReflectionTable(nrows={self._nrows}, columns={list(self._columns)}{opaque})"

    # ------------------------------------------------------------------ rows
    def copy(self) -> ReflectionTable:
        """A deep copy (column arrays and identifiers copied).

        Returns
        -------
        ReflectionTable
        """
        out = self._like(self._nrows)
        out._columns = {k: v.copy() for k, v in self._columns.items()}
        out.opaque_columns = dict(self.opaque_columns)
        return out

    def select(self, selection: Any) -> ReflectionTable:
        """The rows picked by a boolean mask or integer indices, as a new table.

        Parameters
        ----------
        selection : array_like of bool or int
            A mask of length ``nrows`` or row indices (in the order wanted).

        Returns
        -------
        ReflectionTable
            New table (copied data, same identifiers).  Opaque columns are
            dropped with an :class:`OpaqueColumnsDropped` warning.
        """
        index = _row_index(selection, self._nrows)
        self._warn_dropping("select")
        out = self._like(len(index))
        out._columns = {k: v[index] for k, v in self._columns.items()}
        return out

    def sort(self, column: str, reverse: bool = False) -> ReflectionTable:
        """The table sorted by one column (stable; vectors sort lexicographically).

        Parameters
        ----------
        column : str
            Column to sort by.
        reverse : bool, optional
            Descending order; rows with equal keys keep their original order.

        Returns
        -------
        ReflectionTable
        """
        key = self[column].reshape(self._nrows, -1)
        if reverse:
            n = self._nrows
            order = (n - 1 - self._sort_order(key[::-1]))[::-1]
        else:
            order = self._sort_order(key)
        return self.select(order)

    @staticmethod
    def _sort_order(key: np.ndarray) -> np.ndarray:
        """Stable ascending lexicographic order of the rows of a 2-D key."""
        if key.shape[1] == 1:
            return np.argsort(key[:, 0], kind="stable")
        return np.lexsort(key.T[::-1])

    @classmethod
    def concat(cls, tables: Iterable[ReflectionTable]) -> ReflectionTable:
        """Stack tables row-wise, merging their identifiers.

        Parameters
        ----------
        tables : iterable of ReflectionTable
            Tables with the same columns (tables with no columns and no rows
            are ignored).

        Returns
        -------
        ReflectionTable

        Raises
        ------
        ValueError
            If the column sets differ, or one ``id`` maps to two identifiers.
        """
        tables = [t for t in tables if t._columns or t._nrows or t.opaque_columns]
        if not tables:
            return cls()
        names = list(tables[0]._columns)
        identifiers: dict[int, str] = {}
        for i, table in enumerate(tables):
            if set(table._columns) != set(names):
                missing = sorted(set(names) ^ set(table._columns))
                raise ValueError(f"cannot concat: table {i} differs in columns {missing}")
            for key, value in table.identifiers.items():
                if identifiers.setdefault(key, value) != value:
                    raise ValueError(
                        f"cannot concat: id {key} is {identifiers[key]!r} in one table "
                        f"and {value!r} in table {i}"
                    )
            table._warn_dropping("concat")
        out = cls(identifiers=identifiers)
        out._nrows = sum(t._nrows for t in tables)
        for name in names:
            try:
                out._columns[name] = np.concatenate([t._columns[name] for t in tables])
            except ValueError as err:
                raise ValueError(f"cannot concat column {name!r}: {err}") from None
        return out

    def experiment_ids(self) -> np.ndarray:
        """Sorted distinct values of the ``id`` column (empty if there is none).

        Returns
        -------
        numpy.ndarray of int
        """
        if "id" not in self._columns:
            return np.zeros(0, dtype=np.int32)
        return np.unique(self._columns["id"])

    def _like(self, nrows: int) -> ReflectionTable:
        """An empty table with this table's identifiers and format version."""
        out = type(self).empty(nrows)
        out.identifiers = dict(self.identifiers)
        out._version = self._version
        return out

    def _warn_dropping(self, operation: str) -> None:
        if self.opaque_columns:
            warnings.warn(
                f"{operation} drops the undecoded columns {sorted(self.opaque_columns)}: "
                f"opaque columns (e.g. shoebox pixel data) cannot be subset",
                OpaqueColumnsDropped,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ flags
    def _row_mask(self, selection: Any) -> np.ndarray:
        mask = np.zeros(self._nrows, dtype=bool)
        mask[_row_index(selection, self._nrows)] = True
        return mask

    def get_flags(self, flag: int, all: bool = True) -> np.ndarray:  # noqa: A002 (DIALS's name)
        """Rows where the bits of ``flag`` are set.

        Parameters
        ----------
        flag : Flags or int
            One flag or a combination.
        all : bool, optional
            True: every bit of ``flag`` must be set; False: any bit.

        Returns
        -------
        numpy.ndarray of bool
            All False if the table has no ``flags`` column.
        """
        if "flags" not in self._columns:
            return np.zeros(self._nrows, dtype=bool)
        bits = np.uint64(int(flag))
        masked = self._columns["flags"] & bits
        return masked == bits if all else masked != 0

    def set_flags(self, selection: Any, flag: int) -> None:
        """Set the bits of ``flag`` on the selected rows (creates ``flags`` if absent).

        Parameters
        ----------
        selection : array_like of bool or int
            Boolean mask of length ``nrows`` or row indices.
        flag : Flags or int
        """
        mask = self._row_mask(selection)
        if "flags" not in self._columns:
            self["flags"] = np.zeros(self._nrows, dtype=np.uint64)
        self._columns["flags"][mask] |= np.uint64(int(flag))

    def unset_flags(self, selection: Any, flag: int) -> None:
        """Clear the bits of ``flag`` on the selected rows.

        Parameters
        ----------
        selection : array_like of bool or int
            Boolean mask of length ``nrows`` or row indices.
        flag : Flags or int
        """
        mask = self._row_mask(selection)
        if "flags" in self._columns:
            self._columns["flags"][mask] &= ~np.uint64(int(flag))

    # ------------------------------------------------------------------ msgpack I/O
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ReflectionTable:
        """Read a DIALS ``.refl`` (msgpack) file.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        ReflectionTable

        Raises
        ------
        FileNotFoundError
            If there is no such file.
        ReflectionFileError
            If the file is not a readable reflection table (message names it).
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"reflection file not found: {path}") from None
        return cls.from_msgpack(data, source=str(path))

    @classmethod
    def from_msgpack(cls, data: bytes, *, source: str = "<msgpack bytes>") -> ReflectionTable:
        """Decode a reflection table from DIALS msgpack bytes.

        Parameters
        ----------
        data : bytes
        source : str, optional
            Name used in error messages (the file path).

        Returns
        -------
        ReflectionTable
        """
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as err:  # msgpack raises ValueError, FormatError, StackError...
            raise ReflectionFileError(
                f"{source}: not a readable msgpack reflection file "
                f"(truncated or corrupt: {err})"
            ) from None
        return cls._from_object(obj, source)

    @classmethod
    def _from_object(cls, obj: Any, source: str) -> ReflectionTable:
        def fail(why: str) -> ReflectionFileError:
            return ReflectionFileError(f"{source}: not a DIALS reflection table: {why}")

        if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == _MAGIC):
            raise fail(f"expected [{_MAGIC!r}, version, {{...}}]")
        version, header = obj[1], obj[2]
        if version not in _READABLE_VERSIONS:
            raise fail(f"unsupported version {version!r}")
        if not isinstance(header, dict) or "nrows" not in header:
            raise fail("no 'nrows' in the header")
        unknown = set(header) - {"identifiers", "nrows", "data"}
        if unknown:
            raise fail(f"unknown header keys {sorted(unknown)}")
        table = cls.empty(int(header["nrows"]))
        table._version = version
        identifiers = header.get("identifiers", {})
        if not isinstance(identifiers, dict):
            raise fail("'identifiers' is not a map")
        table.identifiers = {int(k): str(v) for k, v in identifiers.items()}
        columns = header.get("data")
        if not isinstance(columns, dict):
            raise fail("no column data")
        for name, value in columns.items():
            table._decode_column(name, value, fail)
        return table

    def _decode_column(self, name: str, value: Any, fail: Any) -> None:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            raise fail(f"column {name!r} is not [type_name, data]")
        type_name, payload = value
        sized = isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], int)
        if sized and payload[0] != self._nrows:
            raise fail(f"column {name!r} has {payload[0]} rows, header says {self._nrows}")
        if type_name not in DIALS_TYPES or not sized or not isinstance(payload[1], bytes):
            self.opaque_columns[name] = OpaqueColumn(type_name, payload)
            return
        dtype, shape = DIALS_TYPES[type_name]
        expected = self._nrows * dtype.itemsize * int(np.prod(shape, dtype=int))
        if len(payload[1]) != expected:
            raise fail(
                f"column {name!r} ({type_name}) holds {len(payload[1])} bytes, "
                f"expected {expected} for {self._nrows} rows"
            )
        array = np.frombuffer(payload[1], dtype=dtype).reshape((self._nrows, *shape))
        self._columns[name] = array.copy()

    def as_msgpack(self) -> bytes:
        """Encode as DIALS msgpack bytes (what :meth:`as_file` writes).

        Columns are written in sorted name order, as DIALS does, so a table
        read from a DIALS file is written back byte-identical.  Columns that
        are not DIALS types are converted (float32 -> ``double``, int64 ->
        ``int`` when the values fit, ...).

        Returns
        -------
        bytes

        Raises
        ------
        TypeError, ValueError
            If a column has no DIALS type or its values do not fit it.
        """
        data: dict[str, Any] = {}
        for name in sorted(self._columns.keys() | self.opaque_columns.keys()):
            if name in self._columns:
                array = self._columns[name]
                type_name = _dials_type_of(name, array)
                array = _to_dials_dtype(name, array, type_name)
                data[name] = [type_name, [self._nrows, np.ascontiguousarray(array).tobytes()]]
            else:
                opaque = self.opaque_columns[name]
                data[name] = [opaque.type_name, opaque.payload]
        header = {
            "identifiers": {int(k): str(self.identifiers[k]) for k in sorted(self.identifiers)},
            "nrows": self._nrows,
            "data": data,
        }
        return msgpack.packb([_MAGIC, self._version, header], use_bin_type=True)

    def as_file(self, path: str | os.PathLike) -> None:
        """Write a DIALS ``.refl`` (msgpack) file.

        Parameters
        ----------
        path : str or path-like
        """
        Path(path).write_bytes(self.as_msgpack())
