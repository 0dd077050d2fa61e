"""What every command shares: argument handling, -c/-a/-h, errors, exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

from stillshot.config import ParameterError, Params, Scope, format_tree, parse_args
from stillshot.io.base import ImageFormatError

#: Exit status for a command that finished but could not read some inputs.
EXIT_SOME_INPUTS_FAILED = 1
#: Exit status for bad usage (unknown parameter, missing file argument).
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line usage: printed as one line, exit status 2."""


@dataclass
class CommandLine:
    """A parsed command line.

    Attributes
    ----------
    params : Params
        Resolved parameter values.
    files : list of str
        Positional (non-parameter) arguments.
    flags : set of str
        Recognised flags given (e.g. ``--json``).
    """

    params: Params
    files: list[str]
    flags: set[str] = field(default_factory=set)


def parse_command_line(
    name: str, definition: Scope, argv: list[str], usage: str, flags: tuple[str, ...] = ()
) -> CommandLine | int:
    """Parse argv for command ``name``; handles ``-h``, ``-c`` and ``-a N``.

    Returns
    -------
    CommandLine or int
        The parsed line, or an exit status when the command should stop now
        (help or the parameter listing was printed).

    Raises
    ------
    UsageError
        For unknown flags, unknown or ill-typed parameters.
    """
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(usage)
        print("\n`-c` lists the parameters; `-a N` with it shows expert levels up to N.")
        return 0
    show_config = "-c" in argv
    expert = 0
    if "-a" in argv:
        i = argv.index("-a")
        try:
            expert = int(argv[i + 1])
        except (IndexError, ValueError):
            raise UsageError("-a needs an expert level, e.g. -a 1") from None
        del argv[i : i + 2]
        show_config = True
    for opt in ("-c", "-a"):
        while opt in argv:
            argv.remove(opt)
    given = {a for a in argv if a in flags}
    argv = [a for a in argv if a not in flags]
    unknown = [a for a in argv if a.startswith("--") or (a.startswith("-") and len(a) == 2)]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} (options: -h, -c, -a N{''.join(', ' + f for f in flags)})")
    if show_config:
        print(format_tree(definition, expert_level=expert))
        return 0
    try:
        params, files = parse_args(definition, argv)
    except ParameterError as exc:
        raise UsageError(str(exc)) from None
    return CommandLine(params, files, given)


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run a command body, turning expected errors into one clear line and an exit status."""
    try:
        return body()
    except UsageError as exc:
        print(f"stillshot {name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ImageFormatError, ValueError, FileNotFoundError) as exc:
        print(f"stillshot {name}: error: {exc}", file=sys.stderr)
        return EXIT_SOME_INPUTS_FAILED
    except KeyboardInterrupt:
        print(f"stillshot {name}: interrupted", file=sys.stderr)
        return 130


def output_path(params: Params, filename: str) -> str:
    """``output.dir/filename``, creating output.dir when needed."""
    out_dir = params.output.dir or "."
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, filename)


def reference_geometry(params: Params):
    """The detector of input.reference_geometry, or None when not set."""
    from stillshot.io.imageset import load_reference_geometry

    path = params.input.reference_geometry
    return load_reference_geometry(path) if path else None


def report_failures(name: str, failures) -> None:
    """Print one line per unreadable input to stderr."""
    for failure in failures:
        print(f"stillshot {name}: skipped {failure}", file=sys.stderr)
