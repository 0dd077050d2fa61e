"""Writing parameter trees and values as parameter-file text.

:func:`format_tree` is what a command's ``-c`` prints (as ``dials.find_spots
-c`` does): every parameter with its default and help, in nested ``scope {``
blocks.  Its output is itself a valid parameter file (help is written as
comments).  :func:`write_params` writes resolved values
(:meth:`stillshot.config.Params.to_text`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

from stillshot.config.tree import Leaf, Params, Scope, as_root

__all__ = ["format_tree", "write_params"]

_INDENT = "  "


def _comment(text: str, indent: str, width: int) -> list[str]:
    prefix = indent + "# "
    return [
        prefix + line
        for line in textwrap.wrap(
            text,
            width=max(width - len(prefix), 30),
            break_long_words=False,
            break_on_hyphens=False,
        )
    ]


def _render(
    node: Scope,
    values: dict[str, Any] | None,
    depth: int,
    *,
    expert_level: float,
    attributes_level: int,
    diff_only: bool,
    width: int,
) -> list[str]:
    indent = _INDENT * depth
    lines: list[str] = []
    for child in node.children:
        if child.expert_level > expert_level:
            continue
        if isinstance(child, Leaf):
            value = child.default if values is None else values[child.name]
            if diff_only and value == child.default and type(value) is type(child.default):
                continue
            lines.append(f"{indent}{child.name} = {child.format_value(value)}")
            if attributes_level >= 1 and child.help:
                lines.extend(_comment(child.help, indent + _INDENT, width))
            if attributes_level >= 2:
                lines.extend(
                    _comment(f"type: {child.describe_type()}", indent + _INDENT, width)
                )
            continue
        sub_values = None if values is None else values[child.name]._values
        body = _render(
            child,
            sub_values,
            depth + 1,
            expert_level=expert_level,
            attributes_level=attributes_level,
            diff_only=diff_only,
            width=width,
        )
        if not body:
            continue
        lines.append(f"{indent}{child.name} {{")
        if attributes_level >= 1 and child.help:
            lines.extend(_comment(child.help, indent + _INDENT, width))
        lines.extend(body)
        lines.append(f"{indent}}}")
    return lines


def format_tree(
    definition: Scope | Sequence[Scope],
    expert_level: int = 0,
    attributes_level: int = 1,
    *,
    width: int = 79,
) -> str:
    """The whole parameter tree with defaults and help, as ``-c`` prints it.

    Parameters
    ----------
    definition : Scope or sequence of Scope
        The parameter tree.
    expert_level : int
        Show leaves and scopes whose expert level is at most this (``-a N``);
        0 shows the everyday parameters only.
    attributes_level : int
        0: ``key = default`` lines only; 1 (default): with the help text as
        indented ``#`` comments; 2: also the type, limits and expert level.
    width : int
        Wrap comments to this many columns.

    Returns
    -------
    str
        Nested ``scope {`` blocks; choices are written phil-style,
        ``algorithm = *dispersion_extended dispersion radial``.  The text
        parses back (as a parameter file) to the defaults.

    Examples
    --------
    >>> from stillshot.config import leaf, root, scope
    >>> print(format_tree(root(scope("filter", children=[
    ...     leaf("min_spot_size", int, 3, "Minimum pixels in a spot")]))), end="")
    filter {
      min_spot_size = 3
        # Minimum pixels in a spot
    }
    """
    lines = _render(
        as_root(definition),
        None,
        0,
        expert_level=expert_level,
        attributes_level=attributes_level,
        diff_only=False,
        width=width,
    )
    return "\n".join(lines) + ("\n" if lines else "")


def write_params(params: Params, *, diff_only: bool = False) -> str:
    """Write resolved values as a parameter file.

    Parameters
    ----------
    params : Params
        Values (root or nested; a nested Params is wrapped in the blocks of
        its full path so that the text reads back against the root
        definition).
    diff_only : bool
        Only the values that differ from the defaults.

    Returns
    -------
    str
        Parameter-file text, every leaf whatever its expert level.
    """
    path = params._path.split(".") if params._path else []
    body = _render(
        params.definition,
        params._values,
        len(path),
        expert_level=math.inf,
        attributes_level=0,
        diff_only=diff_only,
        width=79,
    )
    if not body:
        return ""
    lines = [f"{_INDENT * i}{name} {{" for i, name in enumerate(path)]
    lines += body
    lines += [f"{_INDENT * i}}}" for i in reversed(range(len(path)))]
    return "\n".join(lines) + "\n"
