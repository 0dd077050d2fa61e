"""Reading parameter settings: command-line arguments and parameter files.

Two syntaxes, freely mixed, as DIALS/cctbx users write them::

    # a comment
    spotfinder.filter.min_spot_size = 3
    spotfinder {
      threshold { dispersion { gain = 1.5 } }
      filter.d_min = 2.0; filter.d_max = 30
    }
    indexing.known_symmetry.unit_cell = 58.4 58.4 152.3 90 90 90
    output.dir = "run 12"          # quotes keep spaces, '#', '{' ...

A name may be a full dotted path or, as in DIALS, any unique trailing part of
one (``min_spot_size=6``).  Inside ``a { ... }`` blocks names are relative to
the block.  Values run to the end of the line (or ``;`` / ``}``); a
backslash at the end of a line continues the value.  Later settings override
earlier ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from stillshot.config.tree import Leaf, ParameterError, Params, Scope, as_root

__all__ = [
    "is_parameter_file",
    "parse_args",
    "parse_file",
    "parse_text",
]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_ASSIGN_ARG_RE = re.compile(rf"^\s*({_DOTTED})\s*=(.*)$", re.DOTALL)
_FIRST_LINE_RE = re.compile(rf"^\s*{_DOTTED}\s*(=|\{{)")
_DOTTED_RE = re.compile(rf"^{_DOTTED}$")

#: Extensions that are always read as parameter files.
PARAMETER_FILE_EXTENSIONS = (".phil", ".params", ".param", ".eff")
#: Extensions of data files that are never sniffed as parameter files (a
#: CrystFEL .geom file, for one, looks like ``key = value`` lines).
DATA_FILE_EXTENSIONS = (
    ".geom", ".expt", ".refl", ".json", ".cbf", ".h5", ".hdf5", ".nxs", ".cxi",
    ".img", ".smv", ".mccd", ".mtz", ".stream", ".pickle", ".pkl", ".npy",
    ".npz", ".mask", ".gz", ".bz2", ".xz", ".lst", ".cell", ".pdb", ".cif",
    ".hkl", ".html", ".png", ".tif", ".tiff",
)
_SNIFF_BYTES = 65536


# --------------------------------------------------------------------------
# The parameter-file reader
# --------------------------------------------------------------------------


class _Setting:
    """One ``name = value`` read from text."""

    __slots__ = ("name", "text", "quoted", "line")

    def __init__(self, name: str, text: str, quoted: bool, line: int):
        self.name = name
        self.text = text
        self.quoted = quoted
        self.line = line


class _Reader:
    """Character-level reader for the parameter-file syntax."""

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        self.pos = 0
        self.line = 1

    def error(self, message: str, line: int | None = None) -> ParameterError:
        return ParameterError(f"{self.source}, line {line or self.line}: {message}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def advance(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "\n":
            self.line += 1
        return ch

    def skip_blank(self) -> None:
        """Skip whitespace, newlines, ';' separators and comments."""
        while self.pos < len(self.text):
            ch = self.peek()
            if ch in " \t\r\n;\f\v":
                self.advance()
            elif ch == "#":
                self.skip_comment()
            elif ch == "\\" and self.text.startswith("\\\n", self.pos):
                self.advance()
                self.advance()
            else:
                return

    def skip_comment(self) -> None:
        while self.pos < len(self.text) and self.peek() != "\n":
            self.pos += 1

    def read_name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (
            self.peek().isalnum() or self.peek() in "_."
        ):
            self.pos += 1
        return self.text[start : self.pos]

    def read_quoted(self) -> str:
        quote = self.advance()
        start_line = self.line
        out = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated quoted string", start_line)
            ch = self.advance()
            if ch == quote:
                return "".join(out)
            if ch == "\\" and self.pos < len(self.text):
                nxt = self.advance()
                out.append(nxt if nxt in "\\\"'" else "\\" + nxt)
            else:
                out.append(ch)

    def read_value(self) -> tuple[str, bool]:
        """Read a value up to end of line, ';', '}' or a comment.

        Returns (text, quoted): quoted is True when the value is exactly one
        quoted string (taken literally).
        """
        words: list[str] = []
        quoted_flags: list[bool] = []
        current: list[str] = []
        current_quoted = False

        def flush() -> None:
            nonlocal current, current_quoted
            if current or current_quoted:
                words.append("".join(current))
                quoted_flags.append(current_quoted)
            current, current_quoted = [], False

        while self.pos < len(self.text):
            ch = self.peek()
            if ch in "\n;}#":
                break
            if ch == "\\" and self.text.startswith("\\\n", self.pos):
                self.advance()
                self.advance()
                flush()
            elif ch in "\"'":
                current.append(self.read_quoted())
                current_quoted = True
            elif ch in " \t\r\f\v":
                self.advance()
                flush()
            elif ch == "{":
                raise self.error("unexpected '{' in a value (quote it)")
            else:
                current.append(self.advance())
        flush()
        quoted = len(words) == 1 and quoted_flags[0]
        return " ".join(words), quoted

    def settings(self) -> list[_Setting]:
        """Parse the whole text into settings with full (block-prefixed) names."""
        out: list[_Setting] = []
        stack: list[tuple[str, int]] = []  # (block name, line opened)
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                break
            ch = self.peek()
            if ch == "}":
                if not stack:
                    raise self.error("unexpected '}' (no block is open)")
                stack.pop()
                self.advance()
                continue
            line = self.line
            name = self.read_name()
            if not name:
                raise self.error(f"expected a parameter name, got {ch!r}")
            if not _DOTTED_RE.match(name):
                raise self.error(f"invalid parameter name {name!r}")
            # '=' must be on the same line; '{' may follow on a later line.
            while self.peek() in (" ", "\t", "\r"):
                self.advance()
            if self.peek() == "=":
                self.advance()
                while self.peek() in (" ", "\t", "\r"):
                    self.advance()
                text, quoted = self.read_value()
                full = ".".join([b for b, _ in stack] + [name])
                out.append(_Setting(full, text, quoted, line))
                continue
            self.skip_blank()
            if self.peek() == "{":
                self.advance()
                stack.append((name, line))
                continue
            got = self.peek() or "end of file"
            raise self.error(f"expected '=' or '{{' after '{name}', got {got!r}", line)
        if stack:
            name, opened = stack[-1]
            raise self.error(f"block '{name}' opened here is never closed", opened)
        return out


# --------------------------------------------------------------------------
# Applying settings
# --------------------------------------------------------------------------


class _Values:
    """Flat, mutable parameter values while settings are applied."""

    def __init__(self, definition: Scope, params: Params | None):
        self.root = as_root(definition)
        if params is None:
            self.flat = {p: leaf.default for p, leaf in self.root.leaves()}
        else:
            if params._path != "" or params.definition != self.root:
                raise ParameterError("params do not belong to this definition")
            self.flat = params._flat()

    def set_text(self, name: str, text: str, quoted: bool = False) -> None:
        full = self.root.resolve(name)
        leaf: Leaf = self.root._leaf_index[full]
        self.flat[full] = leaf.parse(text, path=full, quoted=quoted)

    def apply_text(self, text: str, source: str) -> None:
        reader = _Reader(text, source)
        for setting in reader.settings():
            try:
                self.set_text(setting.name, setting.text, setting.quoted)
            except ParameterError as err:
                raise ParameterError(f"{source}, line {setting.line}: {err}") from None

    def apply_file(self, filename: str | os.PathLike) -> None:
        filename = os.fspath(filename)
        try:
            with open(filename, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as err:
            raise ParameterError(f"cannot read parameter file {filename}: {err}") from None
        except UnicodeDecodeError:
            raise ParameterError(f"{filename}: not a text parameter file") from None
        self.apply_text(text, filename)

    def result(self) -> Params:
        return Params._build(self.root, self.flat)


def parse_text(
    definition: Scope | Sequence[Scope],
    text: str,
    *,
    source: str = "<string>",
    params: Params | None = None,
) -> Params:
    """Resolve parameter-file text against a definition.

    Parameters
    ----------
    definition : Scope or sequence of Scope
        The parameter tree (see :func:`stillshot.config.tree.as_root`).
    text : str
        Parameter-file text (both syntaxes).
    source : str
        Name used in error messages (``"<source>, line N: ..."``).
    params : Params, optional
        Starting values (default: the definition's defaults).

    Returns
    -------
    Params

    Raises
    ------
    ParameterError
        Syntax error, unknown/ambiguous name or bad value, with line number.
    """
    values = _Values(definition, params)
    values.apply_text(text, source)
    return values.result()


def parse_file(
    definition: Scope | Sequence[Scope],
    filename: str | os.PathLike,
    *,
    params: Params | None = None,
) -> Params:
    """Resolve a parameter file against a definition.

    Parameters
    ----------
    definition : Scope or sequence of Scope
        The parameter tree.
    filename : str or path-like
        The file.
    params : Params, optional
        Starting values (default: the definition's defaults).

    Returns
    -------
    Params

    Raises
    ------
    ParameterError
        Unreadable file, or an error in it (naming the file and line).
    """
    values = _Values(definition, params)
    values.apply_file(filename)
    return values.result()


def is_parameter_file(filename: str | os.PathLike) -> bool:
    """Whether a command-line argument names a parameter file.

    True for an existing regular file ending in ``.phil``, ``.params``,
    ``.param`` or ``.eff``; or for any other existing text file (``.txt``
    included) whose first non-blank, non-comment line looks like
    ``a.b = c`` or ``scope {``.  Files with known data extensions (images,
    ``.expt``, ``.refl``, CrystFEL ``.geom``, ...) are never parameter files.

    Parameters
    ----------
    filename : str or path-like

    Returns
    -------
    bool
    """
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        return False
    ext = os.path.splitext(filename)[1].lower()
    if ext in PARAMETER_FILE_EXTENSIONS:
        return True
    if ext in DATA_FILE_EXTENSIONS:
        return False
    try:
        with open(filename, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character may be cut at the end of the chunk.
        try:
            text = head[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return bool(_FIRST_LINE_RE.match(stripped))
    return False


def _unquote(value: str) -> tuple[str, bool]:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1], True
    return value, False


def parse_args(
    definition: Scope | Sequence[Scope],
    argv: Iterable[str],
    *,
    params: Params | None = None,
) -> tuple[Params, list[str]]:
    """Resolve command-line arguments against a definition.

    Each argument, in order, is one of:

    * ``scope.sub.key=value`` (or a unique trailing part, ``key=value``);
      surrounding quotes on the value are removed and make it literal;
    * an existing parameter file (:func:`is_parameter_file`), read in place;
    * anything else (file names, directories, option flags such as ``-c``):
      returned, in order, as a positional argument.

    Later settings override earlier ones.

    Parameters
    ----------
    definition : Scope or sequence of Scope
        The parameter tree.
    argv : iterable of str
        Arguments (without the program name).
    params : Params, optional
        Starting values (default: the definition's defaults).

    Returns
    -------
    params : Params
        The resolved values.
    positional : list of str
        The arguments that were neither settings nor parameter files.

    Raises
    ------
    ParameterError
        Unknown or ambiguous parameter (with the nearest valid name),
        ill-typed or out-of-range value, or an error in a parameter file
        (naming the file and line).
    """
    values = _Values(definition, params)
    positional: list[str] = []
    for arg in argv:
        arg = os.fspath(arg)
        match = _ASSIGN_ARG_RE.match(arg)
        if match and not os.path.exists(arg):
            text, quoted = _unquote(match.group(2))
            values.set_text(match.group(1), text, quoted)
        elif is_parameter_file(arg):
            values.apply_file(arg)
        else:
            positional.append(arg)
    return values.result(), positional

