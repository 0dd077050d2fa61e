"""``stillshot integrate refined.expt refined.refl [params]`` -> integrated.expt, integrated.refl.

Also accepts indexed.expt/indexed.refl (or an .expt alone).  Every experiment
(lattice) with a crystal is integrated against its shot's pixels; shots that
share an image are read once.  Intensities are in photons (ADU minus the
pedestal, divided by the gain).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from stillshot.cli.common import UsageError, output_path, parse_command_line, run_command
from stillshot.config import common, is_auto, root
from stillshot.integrate import IntegrationOptions, integrate_shot
from stillshot.integrate import registry
from stillshot.io.base import ImageFormatError
from stillshot.models import ExperimentList
from stillshot.table import ReflectionTable

USAGE = """usage: stillshot integrate refined.expt refined.refl [params]

Predict the reflections each indexed shot excites (per-shot mosaic model and
bandpass), integrate them by summation in shoeboxes sized from the spot
profile (optionally with 2-D profile fitting: integration.profile.fitting=True)
and write integrated.expt and integrated.refl into output.dir.  indexed.expt
and indexed.refl are accepted too; the .refl file is optional."""

DEFINITION = root(
    common.input_scope(),
    common.output_scope(),
    common.prediction_scope(),
    common.integration_scope(algorithms=tuple(registry.names())),
)


def _opt(value):
    return None if value is None or is_auto(value) else float(value)


def integration_options(params) -> IntegrationOptions:
    """IntegrationOptions from the ``prediction`` and ``integration`` parameters."""
    pr = params.prediction
    it = params.integration
    algorithm = it.algorithm
    if algorithm == "auto":
        algorithm = "profile" if it.profile.fitting else "summation"
    return IntegrationOptions(
        algorithm=algorithm,
        d_min=_opt(pr.d_min),
        d_max=_opt(pr.d_max),
        min_partiality=float(pr.min_partiality),
        use_envelope=bool(pr.use_envelope),
        bandpass=_opt(pr.bandpass),
        domain_size_ang=_opt(it.mosaic.domain_size_ang),
        half_mosaicity_deg=_opt(it.mosaic.half_mosaicity_deg),
        gain=_opt(it.summation.detector_gain),
        read_noise=float(it.summation.read_noise),
        n_sigma=float(it.summation.n_sigma),
        spot_sigma_px=_opt(it.summation.spot_sigma_px),
        min_foreground_radius_px=float(it.summation.min_foreground_radius_px),
        background_gap_px=float(it.background.gap_px),
        background_width_px=float(it.background.width_px),
        outlier_nsigma=float(it.background.outlier_nsigma),
        min_background_pixels=int(it.background.min_pixels),
        background_variance=str(it.background.variance),
    )


def _inputs(files: list[str]) -> tuple[str, str | None]:
    expts = [f for f in files if f.endswith((".expt", ".json"))]
    refls = [f for f in files if f.endswith(".refl")]
    other = [f for f in files if f not in expts and f not in refls]
    if other:
        raise UsageError(f"unexpected argument {other[0]!r} (give one .expt and one .refl file)")
    if len(expts) != 1 or len(refls) > 1:
        raise UsageError("give one .expt file and (optionally) one .refl file, e.g. refined.expt refined.refl")
    return expts[0], (refls[0] if refls else None)


def _rows_by_experiment(table: ReflectionTable | None, experiments: ExperimentList) -> list:
    """Each experiment's rows of the table (by identifier, else by id); None without a table."""
    if table is None or "id" not in table:
        return [None] * len(experiments)
    ids = np.asarray(table["id"])
    by_ident = {v: k for k, v in table.identifiers.items()}
    out = []
    for i, e in enumerate(experiments):
        key = by_ident.get(e.identifier, i if not table.identifiers else None)
        out.append(None if key is None else table.select(ids == key))
    return out


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot integrate``."""

    def body() -> int:
        cl = parse_command_line("integrate", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        from stillshot.cli.common import reference_geometry
        from stillshot.io.imageset import read_shot

        expt_path, refl_path = _inputs(cl.files)
        experiments = ExperimentList.from_file(expt_path)
        table = ReflectionTable.from_file(refl_path) if refl_path else None
        options = integration_options(cl.params)
        ref_geom = reference_geometry(cl.params)
        rows = _rows_by_experiment(table, experiments)
        out_experiments = ExperimentList()
        tables = []
        n_failed = 0
        t_start = time.perf_counter()
        cache_key, cache_shot, cache_error = None, None, None
        for i, (experiment, indexed) in enumerate(zip(experiments, rows)):
            label = experiment.image.label() if experiment.image else f"experiment {i}"
            if experiment.crystal is None:
                print(f"{label}: not integrated (no crystal model)")
                n_failed += 1
                continue
            if experiment.image is None:
                print(f"{label}: not integrated (the experiment names no image)")
                n_failed += 1
                continue
            key = (experiment.image.path, experiment.image.frame)
            if key != cache_key:
                cache_key, cache_shot, cache_error = key, None, None
                try:
                    cache_shot = read_shot(experiment.image, reference_geometry=ref_geom)
                except (ImageFormatError, OSError) as exc:
                    cache_error = str(exc)
            if cache_shot is None:
                print(f"{label}: not integrated (unreadable image: {cache_error})")
                n_failed += 1
                continue
            result = integrate_shot(experiment, cache_shot.data, options, indexed=indexed)
            dt = result.timings.get("total", 0.0)
            if result.status != "integrated":
                print(f"{label}: not integrated ({result.reason}); {dt:.2f} s")
                n_failed += 1
                continue
            j = len(out_experiments)
            e = experiment.with_crystal(result.crystal)
            out_experiments.append(e)
            refl = result.reflections
            refl["id"] = np.full(len(refl), j, dtype=np.int32)
            refl.identifiers = {j: e.identifier}
            tables.append(refl)
            rz = result.resolved
            print(f"{label}: integrated {rz['n_integrated']} of {rz['n_predicted']} predicted "
                  f"(spot σ {rz['spot_sigma_px']:.2f} px, foreground radius {rz['foreground_radius_px']:.2f} px, "
                  f"D {rz['mosaic']['domain_size_ang']:.0f} Å, η {rz['mosaic']['half_mosaicity_deg']:.3f}°); "
                  f"{dt:.2f} s")
        out = ReflectionTable.concat(tables) if tables else ReflectionTable()
        idents = {}
        for t in tables:
            idents.update(t.identifiers)
        out.identifiers = idents
        expt_out = output_path(cl.params, "integrated.expt")
        out_experiments.as_file(expt_out)
        out.as_file(output_path(cl.params, "integrated.refl"))
        total = time.perf_counter() - t_start
        print(f"integrated {len(out_experiments)} of {len(experiments)} lattices ({len(out)} reflections, "
              f"algorithm {options.algorithm}) in {total:.2f} s; wrote {expt_out} and integrated.refl")
        return 0

    return run_command("integrate", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
