"""The typed parameter tree (phil-like): definitions, parsing, ``-c`` output.

Define parameters with :func:`leaf` and :func:`scope` (shared scopes are in
:mod:`stillshot.config.common`), resolve command-line arguments with
:func:`parse_args`, and read the values as attributes of the returned
:class:`Params`::

    from stillshot.config import common, parse_args, root

    definition = root(common.output_scope(), common.spotfinder_scope())
    params, files = parse_args(definition, ["a.cbf", "min_spot_size=6"])
    params.spotfinder.filter.min_spot_size   # -> 6
"""

from stillshot.config.format import format_tree, write_params
from stillshot.config.parse import (
    is_parameter_file,
    parse_args,
    parse_file,
    parse_text,
)
from stillshot.config.tree import (
    PATH,
    SPACE_GROUP,
    UNIT_CELL,
    Auto,
    ChoiceType,
    FloatsType,
    IntsType,
    Leaf,
    ParamType,
    ParameterError,
    Params,
    Scope,
    as_root,
    as_type,
    choice,
    floats,
    ints,
    is_auto,
    leaf,
    merge_scopes,
    root,
    scope,
)

__all__ = [
    "PATH",
    "SPACE_GROUP",
    "UNIT_CELL",
    "Auto",
    "ChoiceType",
    "FloatsType",
    "IntsType",
    "Leaf",
    "ParamType",
    "ParameterError",
    "Params",
    "Scope",
    "as_root",
    "as_type",
    "choice",
    "floats",
    "format_tree",
    "ints",
    "is_auto",
    "is_parameter_file",
    "leaf",
    "merge_scopes",
    "parse_args",
    "parse_file",
    "parse_text",
    "root",
    "scope",
    "write_params",
]
