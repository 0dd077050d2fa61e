"""The ``stillshot`` entry point: dispatches to one module per command."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys

from stillshot import __version__

#: command name -> (module, one-line summary)
COMMANDS = {
    "show": ("stillshot.cli.show", "geometry and header summary of image or .expt files"),
    "find-spots": ("stillshot.cli.find_spots", "find Bragg spots -> imported.expt, strong.refl"),
    "index": ("stillshot.cli.index", "index shots -> indexed.expt, indexed.refl"),
    "refine": ("stillshot.cli.refine", "refine crystal models -> refined.expt, refined.refl"),
    "integrate": ("stillshot.cli.integrate", "integrate -> integrated.expt, integrated.refl"),
    "process": ("stillshot.cli.process", "the whole per-shot pipeline over a run"),
    "metrology": ("stillshot.cli.metrology", "refine the detector geometry over many shots"),
    "merge": ("stillshot.cli.merge", "scale and merge to structure factors (MTZ)"),
    "average": ("stillshot.cli.average", "mean / max / std images over a run"),
    "simulate": ("stillshot.cli.simulate", "simulated still shots with ground truth"),
    "report": ("stillshot.cli.report", "HTML report of a processing directory"),
}


def usage() -> str:
    """The top-level help text."""
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"stillshot {__version__}: serial-crystallography still shots to structure factors",
        "",
        "usage: stillshot COMMAND [FILES...] [scope.key=value ...] [params.phil] [-c [-a N]]",
        "",
        "commands:",
    ]
    for name, (module, summary) in COMMANDS.items():
        available = importlib.util.find_spec(module) is not None
        lines.append(f"  {name:<{width}}  {summary}{'' if available else '  (not yet available)'}")
    lines += ["", "`stillshot COMMAND -h` for a command's help; `-c` lists its parameters."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run a stillshot command; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(f"stillshot {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"stillshot: unknown command '{name}'{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    if importlib.util.find_spec(module_name) is None:
        print(f"stillshot {name}: not yet available in this version", file=sys.stderr)
        return 2
    module = importlib.import_module(module_name)
    return int(module.run(argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
