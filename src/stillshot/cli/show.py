"""``stillshot show FILES... [--json]``: geometry and header summary."""

from __future__ import annotations

import sys

import numpy as np

from stillshot.cli.common import (
    EXIT_SOME_INPUTS_FAILED,
    UsageError,
    parse_command_line,
    reference_geometry,
    report_failures,
    run_command,
)
from stillshot.config import common, root
from stillshot.io.imageset import expand_inputs, import_experiments
from stillshot.models import Experiment, ExperimentList

USAGE = """usage: stillshot show FILES... [--json] [input.reference_geometry=FILE]

Print the detector, beam and frame summary of image files (any supported format)
or DIALS .expt files. With --json, print the models as a DIALS ExperimentList,
one experiment per shot (the same JSON as imported.expt)."""

DEFINITION = root(common.input_scope())


def summarise(experiment: Experiment) -> list[str]:
    """Human-readable lines describing one shot's models."""
    beam, det = experiment.beam, experiment.detector
    lines = []
    sizes = sorted({p.image_size for p in det})
    px = sorted({(round(a, 6), round(b, 6)) for a, b in (p.pixel_size for p in det)})
    lines.append(
        f"  detector: {len(det)} panel{'s' if len(det) != 1 else ''}"
        f" ({', '.join(f'{a}x{b}' for a, b in sizes)} px, pixel {', '.join(f'{a:g}x{b:g}' for a, b in px)} mm),"
        f" {det.total_pixels():,} px in all, hierarchy levels 0..{det.max_hierarchy_level()}"
    )
    lines.append(f"  distance: {det.distance():.3f} mm   wavelength: {beam.wavelength:.6f} Å")
    hit = det.beam_centre(beam.s0)
    if hit is not None:
        panel, xy = hit
        lines.append(f"  beam centre: panel {panel} ({det[panel].name}) x={xy[0]:.2f} y={xy[1]:.2f} px")
    else:
        centre = det.beam_centre_lab(beam.s0)
        lines.append(
            f"  beam centre: between panels, lab ({centre[0]:.3f}, {centre[1]:.3f}, {centre[2]:.3f}) mm"
        )
    lo, hi = det[0].trusted_range
    lines.append(f"  trusted range: {lo:g} to {hi:g}   gain: {det[0].gain:g}")
    return lines


def _load(files: list[str], reference) -> tuple[ExperimentList, list]:
    experiments = ExperimentList()
    images = []
    failures = []
    for f in files:
        if f.endswith((".expt", ".json")):
            try:
                experiments.extend(ExperimentList.from_file(f))
            except (ValueError, FileNotFoundError) as exc:
                failures.append(exc)
        else:
            images.append(f)
    imported, bad = import_experiments(images, reference)
    experiments.extend(imported)
    return experiments, failures + bad


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot show``."""

    def body() -> int:
        cl = parse_command_line("show", DEFINITION, argv, USAGE, flags=("--json",))
        if isinstance(cl, int):
            return cl
        files = expand_inputs(cl.files)
        if not files:
            raise UsageError("no input files (give image files or .expt files)")
        experiments, failures = _load(files, reference_geometry(cl.params))
        report_failures("show", failures)
        if "--json" in cl.flags:
            print(experiments.as_json())
        else:
            last = None
            for e in experiments:
                label = e.image.label() if e.image else "(no image)"
                print(label)
                lines = summarise(e)
                if e.detector is last:
                    lines = [lines[1]] + lines[2:3]
                print("\n".join(lines))
                last = e.detector
            print(f"{len(experiments)} shot{'s' if len(experiments) != 1 else ''}"
                  f" from {len(files)} file{'s' if len(files) != 1 else ''}"
                  + (f"; {len(failures)} unreadable" if failures else ""))
        return EXIT_SOME_INPUTS_FAILED if failures else 0

    return run_command("show", body)
