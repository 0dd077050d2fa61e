"""Typed parameter definitions (leaves and scopes) and resolved values.

A parameter *definition* is a tree of :class:`Scope` nodes whose leaves are
:class:`Leaf` objects: a name, a type, a default, help text, an expert level
and optional limits.  Resolving a definition against command-line arguments or
parameter files (see :mod:`stillshot.config.parse`) gives a :class:`Params`:
the values as read-only nested attributes,
``params.spotfinder.filter.min_spot_size``.

The design follows cctbx/DIALS phil (names, ``None``/``Auto`` values, choice
display with a ``*`` on the selected option) but is a small self-contained
implementation.

Examples
--------
>>> defn = root(
...     scope("spotfinder", help="Spot finding.", children=[
...         scope("filter", children=[
...             leaf("min_spot_size", int, default=3, min=1,
...                  help="Minimum number of pixels in a spot"),
...         ]),
...     ]),
... )
>>> defn.defaults().spotfinder.filter.min_spot_size
3
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "Auto",
    "BoolType",
    "ChoiceType",
    "FloatType",
    "FloatsType",
    "IntType",
    "IntsType",
    "Leaf",
    "PATH",
    "ParamType",
    "ParameterError",
    "Params",
    "PathType",
    "SPACE_GROUP",
    "Scope",
    "SpaceGroupType",
    "StrType",
    "UNIT_CELL",
    "UnitCellType",
    "as_root",
    "as_type",
    "choice",
    "floats",
    "ints",
    "is_auto",
    "leaf",
    "merge_scopes",
    "root",
    "scope",
]


class ParameterError(ValueError):
    """A parameter definition, setting or file is wrong.

    The message always names the parameter (and, for parameter files, the
    file and line) so that it can be shown to a user as it is.
    """


# --------------------------------------------------------------------------
# The Auto value
# --------------------------------------------------------------------------


class _AutoType(str):
    """Type of the :data:`Auto` singleton (a ``str`` equal to ``"Auto"``)."""

    _instance: _AutoType | None = None

    def __new__(cls) -> _AutoType:
        if cls._instance is None:
            cls._instance = super().__new__(cls, "Auto")
        return cls._instance

    def __repr__(self) -> str:
        return "Auto"

    def __reduce__(self) -> str:
        # Pickle as the module-level name, so unpickling yields the singleton.
        return "Auto"

    def __copy__(self) -> _AutoType:
        return self

    def __deepcopy__(self, memo: dict) -> _AutoType:
        return self


#: The value of a leaf set to ``auto``/``Auto`` (as libtbx's ``Auto``): "work
#: it out at run time".  It is a ``str`` equal to ``"Auto"`` so that it
#: serialises to JSON unchanged; test for it with ``value is Auto`` or
#: :func:`is_auto`.
Auto = _AutoType()


def is_auto(value: Any) -> bool:
    """Return True if `value` is the :data:`Auto` marker.

    Parameters
    ----------
    value : object
        Any parameter value.

    Returns
    -------
    bool
    """
    return value is Auto


# --------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------


class _Mismatch(Exception):
    """Internal: a value does not fit a type (message: what was expected)."""


_SPLIT_RE = re.compile(r"[\s,]+")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUOTE_NEEDED_RE = re.compile(r"[\s#{};\"'=\\]")


def _format_float(value: float) -> str:
    """Shortest text for a float that reads back exactly ("90", "92.9")."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return repr(float(value))


def _quote(text: str) -> str:
    """Quote `text` for a parameter file if it would not read back as it is."""
    if (
        text == ""
        or _QUOTE_NEEDED_RE.search(text)
        or text.lower() in ("none", "auto")
    ):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class ParamType:
    """Base class of parameter value types.

    Subclasses implement :meth:`parse` (text to value), :meth:`coerce` (Python
    object to value) and :meth:`format` (value to text); all three see only
    real values, never ``None`` or :data:`Auto`, which :class:`Leaf` handles.

    Attributes
    ----------
    name : str
        Short type name shown by ``-c -a 2`` (``int``, ``floats(6)``, ...).
    description : str
        What a value looks like, for error messages ("an integer").
    """

    name = "value"
    description = "a value"

    def parse(self, text: str) -> Any:
        """Convert command-line or file text to a value.

        Parameters
        ----------
        text : str
            The value as typed (already stripped of surrounding quotes).

        Returns
        -------
        object
            The value.

        Raises
        ------
        _Mismatch
            The text is not a value of this type.
        """
        raise NotImplementedError

    def coerce(self, value: Any) -> Any:
        """Convert a Python object (a default, a programmatic override).

        Strings are parsed with :meth:`parse`.

        Parameters
        ----------
        value : object
            The value.

        Returns
        -------
        object
            The canonical value.
        """
        if isinstance(value, str):
            return self.parse(value)
        raise _Mismatch(self.description)

    def format(self, value: Any) -> str:
        """Write a value as parameter-file text that :meth:`parse` reads back.

        Parameters
        ----------
        value : object
            A value of this type.

        Returns
        -------
        str
        """
        return str(value)

    def numbers(self, value: Any) -> tuple:
        """The numbers in `value` that a leaf's min/max apply to.

        Parameters
        ----------
        value : object
            A value of this type.

        Returns
        -------
        tuple
            Empty for non-numeric types.
        """
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(repr, vars(self).items())))))


class BoolType(ParamType):
    """``True``/``False`` (also accepts yes/no, on/off, 1/0, any case)."""

    name = "bool"
    description = "True or False"
    _TRUE = ("true", "yes", "on", "1")
    _FALSE = ("false", "no", "off", "0")

    def parse(self, text: str) -> bool:
        low = text.strip().lower()
        if low in self._TRUE:
            return True
        if low in self._FALSE:
            return False
        raise _Mismatch(self.description)

    def coerce(self, value: Any) -> bool:
        if isinstance(value, str):
            return self.parse(value)
        if type(value) is bool or (
            hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "b"
        ):
            return bool(value)
        raise _Mismatch(self.description)

    def format(self, value: bool) -> str:
        return "True" if value else "False"


class IntType(ParamType):
    """A whole number."""

    name = "int"
    description = "an integer"

    def parse(self, text: str) -> int:
        try:
            return int(text.strip())
        except ValueError:
            raise _Mismatch(self.description) from None

    def coerce(self, value: Any) -> int:
        if isinstance(value, str):
            return self.parse(value)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch(self.description)

    def format(self, value: int) -> str:
        return str(int(value))

    def numbers(self, value: int) -> tuple:
        return (value,)


class FloatType(ParamType):
    """A real number."""

    name = "float"
    description = "a number"

    def parse(self, text: str) -> float:
        try:
            return float(text.strip())
        except ValueError:
            raise _Mismatch(self.description) from None

    def coerce(self, value: Any) -> float:
        if isinstance(value, str):
            return self.parse(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch(self.description)

    def format(self, value: float) -> str:
        return _format_float(value)

    def numbers(self, value: float) -> tuple:
        return (value,)


class StrType(ParamType):
    """Free text."""

    name = "str"
    description = "a string"

    def parse(self, text: str) -> str:
        return text

    def coerce(self, value: Any) -> str:
        if isinstance(value, str):
            return str(value)
        raise _Mismatch(self.description)

    def format(self, value: str) -> str:
        return _quote(value)


class PathType(StrType):
    """A file or directory name (kept as typed; not resolved or checked)."""

    name = "path"
    description = "a path"

    def parse(self, text: str) -> str:
        if not text.strip():
            raise _Mismatch(self.description)
        return text

    def coerce(self, value: Any) -> str:
        if hasattr(value, "__fspath__"):
            value = str(value.__fspath__())
        return super().coerce(value)


class SpaceGroupType(StrType):
    """A space-group symbol or number (``P41212``, ``"P 41 21 2"``, ``19``).

    The value is the text as typed.  It is checked with gemmi where gemmi can
    be imported.
    """

    name = "space_group"
    description = "a space group symbol or number"

    def parse(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise _Mismatch(self.description)
        try:
            import gemmi
        except ImportError:  # pragma: no cover - gemmi is a dependency
            return text
        try:
            found = gemmi.find_spacegroup_by_name(text)
        except Exception:  # gemmi raises on some malformed symbols
            found = None
        if found is None:
            raise _Mismatch(self.description)
        return text

    def coerce(self, value: Any) -> str:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = str(int(value))
        return super().coerce(value)


class ChoiceType(ParamType):
    """One (or, with ``multi=True``, any number) of a fixed set of words.

    Text forms accepted: a single option (``dispersion``); the phil display
    form with the selection starred (``*dispersion_extended dispersion
    radial``; for ``multi``, several stars); for ``multi``, several options
    separated by commas (``position,orientation``) or spaces.  The full option
    list with no star selects nothing (``None`` for a single choice, ``()``
    for multi), as phil reads it.

    Parameters
    ----------
    options : sequence of str
        The allowed words, in display order.
    multi : bool
        Allow several selections; the value is then a tuple (in option order).
    """

    name = "choice"

    def __init__(self, options: Sequence[str] | str, multi: bool = False):
        if isinstance(options, str):
            options = [w for w in _SPLIT_RE.split(options) if w]
        options = tuple(str(o) for o in options)
        if not options:
            raise ParameterError("a choice needs at least one option")
        for opt in options:
            if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-]*$", opt):
                raise ParameterError(f"invalid choice option {opt!r}")
        if len(set(options)) != len(options):
            raise ParameterError(f"duplicate choice options in {options}")
        self.options = options
        self.multi = bool(multi)
        self.name = "choice(multi=True)" if multi else "choice"

    @property
    def description(self) -> str:  # type: ignore[override]
        what = "any of" if self.multi else "one of"
        return f"{what}: {', '.join(self.options)}"

    def _option(self, word: str) -> str:
        if word in self.options:
            return word
        low = [o for o in self.options if o.lower() == word.lower()]
        if len(low) == 1:
            return low[0]
        raise _Mismatch(f"{word!r} is not a valid choice; choose {self.description}")

    def parse(self, text: str) -> Any:
        words = text.split()
        if not words:
            raise _Mismatch(f"no choice given; choose {self.description}")
        too_many = _Mismatch(f"{text!r} selects more than one option; choose {self.description}")
        if any(w.startswith("*") for w in words):
            for w in words:
                self._option(w.lstrip("*"))
            chosen = [self._option(w[1:]) for w in words if w.startswith("*")]
        elif len(words) == 1:
            chosen = [self._option(w) for w in _SPLIT_RE.split(words[0]) if w]
        else:
            listed = tuple(self._option(w) for w in words)
            if listed == self.options:
                chosen = []  # the display form with nothing starred
            elif self.multi:
                chosen = list(listed)
            else:
                raise too_many
        if self.multi:
            return tuple(o for o in self.options if o in chosen)
        if len(chosen) > 1:
            raise too_many
        return chosen[0] if chosen else None

    def coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.parse(value)
        if self.multi and isinstance(value, (list, tuple, set, frozenset)):
            chosen = {self._option(str(v)) for v in value}
            return tuple(o for o in self.options if o in chosen)
        raise _Mismatch(self.description)

    def format(self, value: Any) -> str:
        selected = set(value) if self.multi else {value}
        return " ".join(("*" + o) if o in selected else o for o in self.options)

    def __repr__(self) -> str:
        return f"ChoiceType({list(self.options)!r}, multi={self.multi})"


class FloatsType(ParamType):
    """A list of real numbers, optionally of fixed length.

    Text form: numbers separated by commas and/or spaces
    (``92.9,92.9,130.4,90,90,120``).  The value is a tuple.

    Parameters
    ----------
    size : int or None
        Required number of values; None for any number (at least one).
    """

    _element = FloatType()
    _noun = "numbers"

    def __init__(self, size: int | None = None):
        if size is not None and size < 1:
            raise ParameterError("floats/ints size must be positive")
        self.size = size

    @property
    def name(self) -> str:  # type: ignore[override]
        base = "floats" if self._noun == "numbers" else "ints"
        return f"{base}({self.size})" if self.size else base

    @property
    def description(self) -> str:  # type: ignore[override]
        if self.size:
            return f"{self.size} {self._noun}"
        return f"a list of {self._noun}"

    def _check_count(self, n: int, shown: str) -> None:
        if self.size is not None and n != self.size:
            raise _Mismatch(f"expected {self.description}, got {n}: {shown!r}")
        if n == 0:
            raise _Mismatch(f"expected {self.description}, got none")

    def parse(self, text: str) -> tuple:
        words = [w for w in _SPLIT_RE.split(text.strip()) if w]
        try:
            values = tuple(self._element.parse(w) for w in words)
        except _Mismatch:
            raise _Mismatch(f"expected {self.description}, got {text!r}") from None
        self._check_count(len(values), text)
        return values

    def coerce(self, value: Any) -> tuple:
        if isinstance(value, str):
            return self.parse(value)
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(self.description)
        try:
            values = tuple(self._element.coerce(v) for v in value)
        except _Mismatch:
            raise _Mismatch(f"expected {self.description}, got {value!r}") from None
        self._check_count(len(values), ",".join(map(str, value)))
        return values

    def format(self, value: tuple) -> str:
        return ",".join(self._element.format(v) for v in value)

    def numbers(self, value: tuple) -> tuple:
        return tuple(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class IntsType(FloatsType):
    """A list of whole numbers, optionally of fixed length (``3,3``)."""

    _element = IntType()
    _noun = "integers"


class UnitCellType(FloatsType):
    """Six cell parameters a, b, c (Å), alpha, beta, gamma (degrees)."""

    name = "unit_cell"  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__(6)

    @property
    def description(self) -> str:  # type: ignore[override]
        return "6 numbers (a,b,c,alpha,beta,gamma)"

    def _check_cell(self, values: tuple) -> tuple:
        shown = self.format(values)
        if any(v <= 0 for v in values[:3]):
            raise _Mismatch(f"unit cell lengths must be positive, got {shown!r}")
        if any(not 0 < v < 180 for v in values[3:]):
            raise _Mismatch(
                f"unit cell angles must be between 0 and 180 degrees, got {shown!r}"
            )
        return values

    def parse(self, text: str) -> tuple:
        return self._check_cell(super().parse(text))

    def coerce(self, value: Any) -> tuple:
        return self._check_cell(super().coerce(value))

    def __repr__(self) -> str:
        return "UnitCellType()"


#: Path type instance (``leaf("mask", PATH)`` or ``leaf("mask", "path")``).
PATH = PathType()
#: Space-group type instance.
SPACE_GROUP = SpaceGroupType()
#: Unit-cell type instance (six numbers).
UNIT_CELL = UnitCellType()

_NAMED_TYPES: dict[Any, ParamType] = {
    bool: BoolType(),
    int: IntType(),
    float: FloatType(),
    str: StrType(),
    "bool": BoolType(),
    "int": IntType(),
    "float": FloatType(),
    "str": StrType(),
    "path": PATH,
    "space_group": SPACE_GROUP,
    "unit_cell": UNIT_CELL,
    "floats": FloatsType(),
    "ints": IntsType(),
}


def choice(options: Sequence[str] | str, *, multi: bool = False) -> ChoiceType:
    """A choice type.

    Parameters
    ----------
    options : sequence of str or str
        The allowed words (a string is split on spaces/commas).
    multi : bool
        Allow several selections (value: tuple of str).

    Returns
    -------
    ChoiceType
    """
    return ChoiceType(options, multi=multi)


def floats(size: int | None = None) -> FloatsType:
    """A list-of-numbers type (value: tuple of float).

    Parameters
    ----------
    size : int or None
        Required count, or None for any.

    Returns
    -------
    FloatsType
    """
    return FloatsType(size)


def ints(size: int | None = None) -> IntsType:
    """A list-of-integers type (value: tuple of int).

    Parameters
    ----------
    size : int or None
        Required count, or None for any.

    Returns
    -------
    IntsType
    """
    return IntsType(size)


def as_type(spec: Any) -> ParamType:
    """Turn a type specification into a :class:`ParamType`.

    Parameters
    ----------
    spec : ParamType, type or str
        A ParamType instance; one of the Python types ``bool``, ``int``,
        ``float``, ``str``; or one of the names ``"bool"``, ``"int"``,
        ``"float"``, ``"str"``, ``"path"``, ``"space_group"``,
        ``"unit_cell"``, ``"floats"``, ``"ints"``.

    Returns
    -------
    ParamType

    Raises
    ------
    ParameterError
        Unknown specification.
    """
    if isinstance(spec, ParamType):
        return spec
    try:
        return _NAMED_TYPES[spec]
    except (KeyError, TypeError):
        raise ParameterError(f"unknown parameter type {spec!r}") from None


# --------------------------------------------------------------------------
# Leaves and scopes
# --------------------------------------------------------------------------

#: Names a leaf or scope may not take: they are the methods of Params.
_RESERVED = frozenset({"as_dict", "get", "to_text", "replace", "definition"})


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ParameterError(f"invalid {what} name {name!r}")
    if name in _RESERVED or name.startswith("_"):
        raise ParameterError(f"{what} name {name!r} is reserved")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One typed parameter.

    Parameters
    ----------
    name : str
        Identifier (letters, digits, underscore).
    type : ParamType, type or str
        See :func:`as_type`.
    default : object
        Default value (Python value or parameter text); None, ``"auto"`` and
        :data:`Auto` are allowed where `allow_none` / `allow_auto` say so.
    help : str
        One or more sentences shown by ``-c``.
    expert_level : int
        0 for everyday parameters; higher levels are shown by ``-c -a N``
        with N at least this level.
    allow_none : bool or None
        Whether ``None`` is a valid value; None (the default) means "if and
        only if the default is None".
    allow_auto : bool or None
        Whether ``auto``/``Auto`` is a valid value; None means "if and only
        if the default is Auto".
    min, max : float or None
        Inclusive limits (for list types, applied to every element).
    """

    name: str
    type: Any
    default: Any = None
    help: str = ""
    expert_level: int = 0
    allow_none: bool | None = None
    allow_auto: bool | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "parameter")
        set_ = functools.partial(object.__setattr__, self)
        set_("type", as_type(self.type))
        set_("help", " ".join(str(self.help or "").split()))
        set_("expert_level", int(self.expert_level))
        default = self.default
        if isinstance(default, str) and not isinstance(self.type, (StrType, ChoiceType)):
            if default.strip().lower() == "auto":
                default = Auto
        if self.allow_auto is None:
            set_("allow_auto", default is Auto)
        if self.allow_none is None:
            set_("allow_none", default is None)
        set_("default", self.coerce(default, path=self.name))

    # -- conversions ---------------------------------------------------

    def _fail(self, path: str, message: str) -> ParameterError:
        return ParameterError(f"{path}: {message}")

    def _checked(self, value: Any, path: str) -> Any:
        for v in self.type.numbers(value):
            if self.min is not None and v < self.min:
                raise self._fail(
                    path,
                    f"{self.type.format(value)} is below the minimum "
                    f"{_format_float(self.min)}",
                )
            if self.max is not None and v > self.max:
                raise self._fail(
                    path,
                    f"{self.type.format(value)} is above the maximum "
                    f"{_format_float(self.max)}",
                )
        return value

    def _special(self, text: str, path: str) -> tuple[bool, Any]:
        """Interpret None/Auto text; returns (handled, value)."""
        word = text.strip()
        if isinstance(self.type, ChoiceType) and word.lstrip("*") in self.type.options:
            return False, None
        low = word.lower()
        if low == "none" and (word == "None" or not isinstance(self.type, StrType)):
            if isinstance(self.type, ChoiceType) and self.type.multi:
                return True, ()
            if not self.allow_none:
                raise self._fail(path, f"a value is required (expected {self._expected()})")
            return True, None
        if low == "auto" and self.allow_auto:
            return True, Auto
        return False, None

    def _expected(self) -> str:
        desc = self.type.description
        if self.allow_auto:
            desc += " or Auto"
        return desc

    def _mismatch(self, path: str, text: str, err: _Mismatch) -> ParameterError:
        msg = str(err)
        if msg == self.type.description:
            return self._fail(path, f"expected {msg}, got {text!r}")
        return self._fail(path, msg)

    def parse(self, text: str, *, path: str | None = None, quoted: bool = False) -> Any:
        """Convert the text of a setting to a checked value.

        Parameters
        ----------
        text : str
            The value as typed.
        path : str, optional
            Full parameter name for error messages (default: the leaf name).
        quoted : bool
            The text was quoted: take it literally (no None/Auto).

        Returns
        -------
        object
            The value.

        Raises
        ------
        ParameterError
            Ill-typed or out of range, e.g.
            ``spotfinder.filter.min_spot_size: expected an integer, got 'abc'``.
        """
        path = path or self.name
        if not quoted:
            handled, value = self._special(text, path)
            if handled:
                return value
            if not isinstance(self.type, StrType):
                text = text.strip()
        try:
            value = self.type.parse(text)
        except _Mismatch as err:
            raise self._mismatch(path, text, err) from None
        if value is None and not self.allow_none:
            raise self._fail(
                path, f"{text!r} selects no option; choose {self.type.description}"
            )
        return self._checked(value, path)

    def coerce(self, value: Any, *, path: str | None = None) -> Any:
        """Check a Python value (a default or an override) for this leaf.

        Parameters
        ----------
        value : object
            Python value, or text (parsed as by :meth:`parse`).
        path : str, optional
            Full parameter name for error messages.

        Returns
        -------
        object
            The canonical value (tuples for list types).

        Raises
        ------
        ParameterError
            The value does not fit.
        """
        path = path or self.name
        if value is None:
            if isinstance(self.type, ChoiceType) and self.type.multi:
                return ()
            if not self.allow_none:
                raise self._fail(path, f"a value is required (expected {self._expected()})")
            return None
        if value is Auto:
            if not self.allow_auto:
                raise self._fail(path, f"expected {self._expected()}, got Auto")
            return Auto
        if isinstance(value, str):
            return self.parse(value, path=path, quoted=isinstance(self.type, StrType))
        try:
            result = self.type.coerce(value)
        except _Mismatch as err:
            raise self._mismatch(path, repr(value), err) from None
        return self._checked(result, path)

    def format_value(self, value: Any) -> str:
        """Write a value of this leaf as parameter-file text.

        Parameters
        ----------
        value : object
            A value of this leaf (None and Auto included).

        Returns
        -------
        str
            Text that :meth:`parse` reads back to the same value; a choice is
            written phil-style, ``*selected other other``.
        """
        if isinstance(self.type, ChoiceType):
            if value is None:
                return self.type.format(())
            return self.type.format(value)
        if value is None:
            return "None"
        if value is Auto:
            return "Auto"
        return self.type.format(value)

    def describe_type(self) -> str:
        """One line with the type, limits and flags (for ``-c -a 2``).

        Returns
        -------
        str
        """
        parts = [self.type.name]
        if self.min is not None:
            parts.append(f"min={_format_float(self.min)}")
        if self.max is not None:
            parts.append(f"max={_format_float(self.max)}")
        if self.allow_auto:
            parts.append("Auto allowed")
        if self.allow_none and not (isinstance(self.type, ChoiceType) and self.type.multi):
            parts.append("None allowed")
        if self.expert_level:
            parts.append(f"expert_level={self.expert_level}")
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class Scope:
    """A named group of leaves and sub-scopes.

    Parameters
    ----------
    name : str
        Identifier; the empty string for a root scope (see :func:`root`).
    children : sequence of Leaf or Scope
        Contents, in display order; names must be unique.
    help : str
        Shown as a comment by ``-c``.
    expert_level : int
        The whole scope is hidden by ``-c -a N`` for N below this level.
    """

    name: str
    children: tuple = ()
    help: str = ""
    expert_level: int = 0

    def __post_init__(self) -> None:
        if self.name != "":
            _check_name(self.name, "scope")
        set_ = functools.partial(object.__setattr__, self)
        set_("children", tuple(self.children))
        set_("help", " ".join(str(self.help or "").split()))
        set_("expert_level", int(self.expert_level))
        seen = set()
        for child in self.children:
            if not isinstance(child, (Leaf, Scope)):
                raise ParameterError(
                    f"scope {self.name!r}: child {child!r} is not a Leaf or Scope"
                )
            if child.name == "":
                raise ParameterError(f"scope {self.name!r}: a root scope cannot be a child")
            if child.name in seen:
                raise ParameterError(f"scope {self.name!r}: duplicate name {child.name!r}")
            seen.add(child.name)

    # -- indices (relative to this scope, its own name excluded) ---------

    @functools.cached_property
    def _leaf_index(self) -> dict[str, Leaf]:
        return dict(self._walk_leaves(""))

    @functools.cached_property
    def _scope_index(self) -> dict[str, Scope]:
        out: dict[str, Scope] = {}
        for child in self.children:
            if isinstance(child, Scope):
                out[child.name] = child
                for sub, s in child._scope_index.items():
                    out[f"{child.name}.{sub}"] = s
        return out

    @functools.cached_property
    def _suggestion_pool(self) -> dict[str, tuple[str, ...]]:
        pool: dict[str, list[str]] = {}
        for full in self._leaf_index:
            parts = full.split(".")
            for k in range(1, len(parts) + 1):
                pool.setdefault(".".join(parts[-k:]), []).append(full)
        return {key: tuple(v) for key, v in pool.items()}

    def _walk_leaves(self, prefix: str) -> Iterator[tuple[str, Leaf]]:
        for child in self.children:
            full = prefix + child.name
            if isinstance(child, Leaf):
                yield full, child
            else:
                yield from child._walk_leaves(full + ".")

    def leaves(self) -> Iterator[tuple[str, Leaf]]:
        """Iterate over all leaves as (full dotted path, Leaf), in order.

        Returns
        -------
        iterator of (str, Leaf)
            Paths are relative to this scope (its own name excluded).
        """
        return iter(self._leaf_index.items())

    def find(self, path: str) -> Leaf | Scope | None:
        """Look up an exact dotted path (relative to this scope).

        Parameters
        ----------
        path : str
            E.g. ``"spotfinder.filter"`` or ``"spotfinder.filter.d_min"``.

        Returns
        -------
        Leaf, Scope or None
        """
        if path == "":
            return self
        return self._leaf_index.get(path) or self._scope_index.get(path)

    def suggest(self, name: str) -> list[str]:
        """Full leaf paths closest to a mistyped name.

        The name is compared (with :func:`difflib.get_close_matches`) to every
        full path, every leaf name and every trailing part of a path.

        Parameters
        ----------
        name : str
            What the user typed.

        Returns
        -------
        list of str
            Full paths for the best match (several when a leaf name is shared);
            empty if nothing is close.
        """
        pool = self._suggestion_pool
        best = difflib.get_close_matches(name, list(pool), n=1, cutoff=0.6)
        return list(pool[best[0]]) if best else []

    def resolve(self, name: str) -> str:
        """Full path of the leaf that `name` designates.

        `name` is an exact full path, or a unique trailing part of one on a
        dot boundary (``min_spot_size``, ``filter.min_spot_size``), as DIALS
        allows.

        Parameters
        ----------
        name : str
            The dotted name as typed.

        Returns
        -------
        str
            The full path.

        Raises
        ------
        ParameterError
            Unknown (with the nearest valid name), ambiguous (listing the
            candidates) or naming a scope.
        """
        index = self._leaf_index
        if name in index:
            return name
        tail = "." + name
        matches = [p for p in index if p.endswith(tail)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            listing = ", ".join(matches)
            raise ParameterError(
                f"ambiguous parameter '{name}' matches {len(matches)} parameters: "
                f"{listing}; give more of the path"
            )
        scopes = [p for p in self._scope_index if p == name or p.endswith(tail)]
        if scopes:
            example = next(iter(self._scope_index[scopes[0]]._leaf_index), "<name>")
            raise ParameterError(
                f"'{name}' is a scope, not a parameter; set one of its parameters, "
                f"e.g. {scopes[0]}.{example}=..."
            )
        message = f"unknown parameter '{name}'"
        close = self.suggest(name)
        if close:
            message += "; did you mean " + " or ".join(f"'{c}'" for c in close[:4]) + "?"
        raise ParameterError(message)

    # -- derived definitions and values ----------------------------------

    def defaults(self) -> Params:
        """The default values of this definition.

        Returns
        -------
        Params
        """
        return Params._build(self, {p: leaf.default for p, leaf in self._leaf_index.items()})

    def with_defaults(self, changes: Mapping[str, Any]) -> Scope:
        """A copy of this definition with some defaults changed.

        This is how a command sets its own program defaults (as DIALS programs
        do), e.g. ``defn.with_defaults({"indexing.method": "fft3d"})``.

        Parameters
        ----------
        changes : mapping of str to object
            Parameter name (full path or unique suffix) to new default
            (Python value or parameter text).

        Returns
        -------
        Scope

        Raises
        ------
        ParameterError
            Unknown name or invalid value.
        """
        new: dict[str, Any] = {}
        for name, value in changes.items():
            full = self.resolve(name)
            leaf_ = self._leaf_index[full]
            new[full] = dataclasses.replace(leaf_, default=leaf_.coerce(value, path=full))
        return self._replace_leaves(new, "")

    def _replace_leaves(self, new: Mapping[str, Leaf], prefix: str) -> Scope:
        children = []
        for child in self.children:
            full = prefix + child.name
            if isinstance(child, Leaf):
                children.append(new.get(full, child))
            else:
                children.append(child._replace_leaves(new, full + "."))
        return dataclasses.replace(self, children=tuple(children))


def leaf(
    name: str,
    type: Any,
    default: Any = None,
    help: str = "",
    *,
    expert_level: int = 0,
    allow_none: bool | None = None,
    allow_auto: bool | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Leaf:
    """Define one parameter (see :class:`Leaf` for the arguments).

    Parameters
    ----------
    name : str
    type : ParamType, type or str
    default : object
    help : str
    expert_level : int
    allow_none, allow_auto : bool or None
    min, max : float or None

    Returns
    -------
    Leaf

    Raises
    ------
    ParameterError
        Invalid name, type, or a default that does not fit the type.

    Examples
    --------
    >>> leaf("min_spot_size", int, default=3, min=1,
    ...      help="Minimum number of pixels in a spot").default
    3
    """
    return Leaf(
        name=name,
        type=type,
        default=default,
        help=help,
        expert_level=expert_level,
        allow_none=allow_none,
        allow_auto=allow_auto,
        min=min,
        max=max,
    )


def scope(
    name: str,
    children: Sequence[Leaf | Scope] = (),
    help: str = "",
    *,
    expert_level: int = 0,
) -> Scope:
    """Define a scope (see :class:`Scope`).

    Parameters
    ----------
    name : str
    children : sequence of Leaf or Scope
    help : str
    expert_level : int

    Returns
    -------
    Scope
    """
    return Scope(name=name, children=tuple(children), help=help, expert_level=expert_level)


def merge_scopes(*scopes: Scope) -> list[Scope | Leaf]:
    """Merge definitions, combining scopes of the same name recursively.

    Lets a stage add parameters to a shared scope: merging
    ``common.spotfinder_scope()`` with ``scope("spotfinder", children=[...])``
    gives one ``spotfinder`` scope with both sets of children (the first
    scope's help and order win).

    Parameters
    ----------
    *scopes : Scope or Leaf
        Top-level nodes, in order.

    Returns
    -------
    list of Scope or Leaf
        Nodes with unique names.

    Raises
    ------
    ParameterError
        Two leaves, or a leaf and a scope, share a full name.
    """
    merged: dict[str, Scope | Leaf] = {}
    for node in scopes:
        if isinstance(node, Scope) and node.name == "":
            for child in merge_scopes(*node.children):
                _merge_into(merged, child, "")
            continue
        _merge_into(merged, node, "")
    return list(merged.values())


def _merge_into(merged: dict, node: Scope | Leaf, prefix: str) -> None:
    have = merged.get(node.name)
    if have is None:
        merged[node.name] = node
        return
    if isinstance(have, Scope) and isinstance(node, Scope):
        inner: dict[str, Scope | Leaf] = {c.name: c for c in have.children}
        for child in node.children:
            _merge_into(inner, child, f"{prefix}{node.name}.")
        merged[node.name] = dataclasses.replace(
            have,
            children=tuple(inner.values()),
            help=have.help or node.help,
            expert_level=min(have.expert_level, node.expert_level),
        )
        return
    raise ParameterError(f"duplicate definition of '{prefix}{node.name}'")


def root(*children: Scope | Leaf, help: str = "") -> Scope:
    """The top of a parameter definition (a scope with no name).

    Children with the same scope name are merged (:func:`merge_scopes`).

    Parameters
    ----------
    *children : Scope or Leaf
    help : str

    Returns
    -------
    Scope
    """
    return Scope(name="", children=tuple(merge_scopes(*children)), help=help)


def as_root(definition: Scope | Leaf | Sequence[Scope | Leaf]) -> Scope:
    """Normalise a definition to a root scope.

    Parameters
    ----------
    definition : Scope, Leaf or sequence of them
        A root scope is returned as it is; a named scope or leaf (or a
        list) becomes the only child(ren) of a new root, so its own name is
        part of every path.

    Returns
    -------
    Scope
    """
    if isinstance(definition, Scope) and definition.name == "":
        return definition
    if isinstance(definition, (Scope, Leaf)):
        return root(definition)
    return root(*definition)


# --------------------------------------------------------------------------
# Resolved values
# --------------------------------------------------------------------------


def _params_from_state(scope_: Scope, path: str, values: dict) -> Params:
    obj = object.__new__(Params)
    object.__setattr__(obj, "_scope", scope_)
    object.__setattr__(obj, "_path", path)
    object.__setattr__(obj, "_values", values)
    return obj


class Params:
    """Resolved parameter values: read-only nested attributes.

    Obtain one from :meth:`Scope.defaults` or the parsers in
    :mod:`stillshot.config.parse`; never construct directly.  Leaves are
    attributes holding their value, sub-scopes are attributes holding a
    nested :class:`Params`.  Assigning raises
    :class:`dataclasses.FrozenInstanceError`; derive a changed copy with
    :meth:`replace`.  Instances compare by value, hash, pickle and deep-copy.
    """

    __slots__ = ("_scope", "_path", "_values")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("use Scope.defaults() or stillshot.config.parse_args()")

    @classmethod
    def _build(cls, scope_: Scope, flat: Mapping[str, Any], path: str = "") -> Params:
        values: dict[str, Any] = {}
        for child in scope_.children:
            if isinstance(child, Leaf):
                values[child.name] = flat[child.name]
            else:
                sub = {
                    key[len(child.name) + 1 :]: v
                    for key, v in flat.items()
                    if key.startswith(child.name + ".")
                }
                values[child.name] = cls._build(
                    child, sub, f"{path}.{child.name}" if path else child.name
                )
        return _params_from_state(scope_, path, values)

    # -- attribute protocol ----------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            where = f"scope '{self._path}'" if self._path else "the parameters"
            msg = f"no parameter or scope '{name}' in {where}"
            close = difflib.get_close_matches(name, list(self._values), n=1)
            if close:
                msg += f"; did you mean '{close[0]}'?"
            raise AttributeError(msg) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(
            f"cannot assign to '{name}': parameters are read-only "
            "(use Params.replace() for a modified copy)"
        )

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(
            f"cannot delete '{name}': parameters are read-only"
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._values))

    def __reduce__(self) -> tuple:
        return (_params_from_state, (self._scope, self._path, self._values))

    def __copy__(self) -> Params:
        return self

    def __deepcopy__(self, memo: dict) -> Params:
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Params):
            return NotImplemented
        return self._path == other._path and self._values == other._values

    def __hash__(self) -> int:
        return hash((self._path, tuple(self._values.items())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Params({inner})"

    # -- public API --------------------------------------------------------

    @property
    def definition(self) -> Scope:
        """The :class:`Scope` these values belong to."""
        return self._scope

    def as_dict(self) -> dict[str, Any]:
        """The values as nested plain dicts (JSON-serialisable).

        Returns
        -------
        dict
            Sub-scopes are dicts; list values are tuples; Auto is the string
            ``"Auto"`` (the :data:`Auto` marker).
        """
        return {
            k: (v.as_dict() if isinstance(v, Params) else v) for k, v in self._values.items()
        }

    def _flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self._values.items():
            if isinstance(v, Params):
                out.update({f"{k}.{sub}": x for sub, x in v._flat().items()})
            else:
                out[k] = v
        return out

    def get(self, path: str) -> Any:
        """The value (or nested Params) at an exact dotted path.

        Parameters
        ----------
        path : str
            Relative to this Params, e.g. ``"spotfinder.filter.min_spot_size"``.

        Returns
        -------
        object

        Raises
        ------
        ParameterError
            No such parameter or scope (the message names the nearest one).
        """
        node: Any = self
        for part in path.split("."):
            if not isinstance(node, Params) or part not in node._values:
                message = f"unknown parameter '{path}'"
                close = self._scope.suggest(path)
                if close:
                    message += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
                raise ParameterError(message)
            node = node._values[part]
        return node

    def replace(self, changes: Mapping[str, Any]) -> Params:
        """A copy with some values changed (this object is left as it is).

        Parameters
        ----------
        changes : mapping of str to object
            Parameter name (full path relative to this Params, or a unique
            suffix) to new value (Python value or parameter text).

        Returns
        -------
        Params

        Raises
        ------
        ParameterError
            Unknown/ambiguous name or invalid value.
        """
        flat = self._flat()
        for name, value in changes.items():
            full = self._scope.resolve(name)
            shown = f"{self._path}.{full}" if self._path else full
            flat[full] = self._scope._leaf_index[full].coerce(value, path=shown)
        return Params._build(self._scope, flat, self._path)

    def to_text(self, *, diff_only: bool = False) -> str:
        """Write the values as a parameter file.

        Parameters
        ----------
        diff_only : bool
            Only the values that differ from the defaults (for logs: "the
            following parameters have been modified").

        Returns
        -------
        str
            Nested ``scope { key = value }`` blocks that
            :func:`stillshot.config.parse_text` reads back to equal values.
            A nested Params is written inside the blocks of its full path.
        """
        from stillshot.config.format import write_params

        return write_params(self, diff_only=diff_only)
