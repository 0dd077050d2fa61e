"""``stillshot metrology indexed.expt indexed.refl [params]`` -> refined.expt, refined.geom.

Joint refinement of the detector hierarchy over many indexed shots (the
``cspad.cbf_metrology`` step).  Inputs are one .expt and one .refl file, or
any number of ``stillshot process`` / ``stillshot index`` output directories
(each holding indexed.expt and indexed.refl), combined into one run.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from stillshot.cli.common import UsageError, output_path, parse_command_line, reference_geometry, run_command
from stillshot.config import common, ints, leaf, root, scope
from stillshot.models import ExperimentList
from stillshot.table import ReflectionTable

USAGE = """usage: stillshot metrology indexed.expt indexed.refl [params]
       stillshot metrology PROCESS_DIR [PROCESS_DIR ...] [params]

Refine the detector geometry jointly over many indexed shots: the groups of
the detector hierarchy at refinement.parameterisation.detector.hierarchy_level
(0 whole detector, 1 quadrants, 2 sensors, 3 ASICs for a CSPAD) move as rigid
bodies, together with every shot's crystal orientation and unit cell.
metrology.levels=0,1,2 refines the levels in turn.  Writes refined.expt,
refined.geom (CrystFEL), refined.refl and metrology.json into output.dir;
reprocess with input.reference_geometry=refined.expt.
metrology.reindex=True (with process output dirs holding imported.expt and
strong.refl) re-indexes every shot with the refined geometry between levels,
using the indexing.* parameters.
DIALS's metrology settings (a dials.refine .phil file) are accepted."""

DEFINITION = root(
    common.input_scope(),
    common.output_scope(),
    common.refinement_scope(),
    common.indexing_scope(methods=("vector_match", "fft1d", "real_space_grid_search"),
                          default_method="vector_match"),
    scope(
        "refinement",
        children=[
            scope(
                "parameterisation",
                children=[
                    scope(
                        "detector",
                        children=[
                            leaf(
                                "fix_list",
                                str,
                                None,
                                help="Further detector parameters kept fixed, by name "
                                "or shell pattern, comma-separated: Dist, Shift1, Shift2, "
                                "Tau1 (about the normal), Tau2, Tau3, or GROUP.NAME, e.g. "
                                "fix_list=Dist,Tau2,Tau3 refines in-plane moves only.",
                            ),
                        ],
                    ),
                ],
            ),
            scope(
                "reflections",
                children=[
                    scope(
                        "outlier",
                        children=[
                            leaf("separate_panels", bool, True,
                                 help="Reject outliers separately on each panel."),
                            leaf("separate_experiments", bool, False,
                                 help="Reject outliers separately for each shot (and panel)."),
                            leaf("minimum_number_of_reflections", int, 20, min=1,
                                 help="A panel (or shot) with fewer reflections has all of "
                                 "them rejected, as DIALS does.", expert_level=1),
                            scope("tukey", expert_level=1, children=[
                                leaf("iqr_multiplier", float, 1.5, min=0.0,
                                     help="Reject residuals further than this many "
                                     "interquartile ranges beyond the quartiles."),
                            ]),
                        ],
                    ),
                ],
            ),
            scope(
                "mp",
                expert_level=1,
                help="Accepted for DIALS .phil compatibility.",
                children=[leaf("nproc", int, 1, min=1, help="Ignored: metrology runs in one process.")],
            ),
        ],
    ),
    scope(
        "metrology",
        help="The metrology protocol.",
        children=[
            leaf(
                "levels",
                ints(),
                None,
                help="Hierarchy levels refined in turn, each from the previous result "
                "(e.g. 0,1,2); None: refinement.parameterisation.detector.hierarchy_level "
                "only.",
            ),
            leaf(
                "reindex",
                bool,
                False,
                help="Re-index every shot with the geometry refined so far between "
                "levels (needs process output dirs with imported.expt and strong.refl; "
                "uses the indexing parameters).",
            ),
        ],
    ),
).with_defaults(
    {
        "refinement.parameterisation.detector.fix": (),
        "refinement.parameterisation.auto_reduction.min_nref_per_parameter": 3,
        "refinement.reflections.outlier.algorithm": "tukey",
    }
)


def metrology_options(params):
    """The library options from the ``refinement`` parameters."""
    from stillshot.refine.metrology import MetrologyOptions

    rf = params.refinement
    pz = rf.parameterisation
    fix_list = tuple(x for x in (pz.detector.fix_list or "").replace(",", " ").split() if x)
    beam_fix = set(pz.beam.fix or ())
    if "all" not in beam_fix and not {"in_spindle_plane", "out_spindle_plane", "wavelength"} <= beam_fix:
        raise UsageError("refining the beam is not supported by metrology yet: use "
                         "refinement.parameterisation.beam.fix=all")
    outlier = rf.reflections.outlier
    level = int(pz.detector.hierarchy_level)
    if pz.detector.panels in ("single", "multiple"):  # DIALS: the whole detector as one rigid body
        level = 0
    return MetrologyOptions(
        hierarchy_level=level,
        fix_detector=tuple(pz.detector.fix or ()),
        fix_list=fix_list,
        fix_crystal=tuple(pz.crystal.fix or ()),
        delpsi_constant=float(rf.reflections.weighting_strategy.delpsi_constant),
        weighting=rf.reflections.weighting_strategy.override,
        constant_weight=float(rf.reflections.weighting_strategy.constant),
        outlier_algorithm="null" if outlier.algorithm == "null" else "tukey",
        separate_panels=bool(outlier.separate_panels),
        separate_experiments=bool(outlier.separate_experiments),
        iqr_multiplier=float(outlier.tukey.iqr_multiplier),
        min_num_obs=int(outlier.minimum_number_of_reflections),
        min_nref_per_parameter=int(pz.auto_reduction.min_nref_per_parameter),
        auto_reduction_action=pz.auto_reduction.action,
        max_iterations=int(rf.refinery.max_iterations or 100),
        engine=rf.refinery.engine,
    )


def _load(files: list[str]) -> tuple[ExperimentList, ReflectionTable]:
    """Experiments and reflections from .expt + .refl files or process output dirs."""
    dirs = [f for f in files if os.path.isdir(f)]
    expts = [f for f in files if f.endswith((".expt", ".json")) and not os.path.isdir(f)]
    refls = [f for f in files if f.endswith(".refl") and not os.path.isdir(f)]
    other = [f for f in files if f not in dirs and f not in expts and f not in refls]
    if other:
        raise UsageError(f"unexpected argument {other[0]!r} (give .expt and .refl files or process output dirs)")
    pairs = []
    for d in dirs:
        e, r = os.path.join(d, "indexed.expt"), os.path.join(d, "indexed.refl")
        if not (os.path.isfile(e) and os.path.isfile(r)):
            raise UsageError(f"{d}: no indexed.expt and indexed.refl in this directory")
        pairs.append((e, r))
    if len(expts) != len(refls):
        raise UsageError("give the .expt and .refl files in pairs, e.g. indexed.expt indexed.refl")
    pairs += list(zip(expts, refls))
    if not pairs:
        raise UsageError("give indexed.expt and indexed.refl, or process output directories")
    experiments = ExperimentList()
    tables = []
    detector = None
    for e_path, r_path in pairs:
        el = ExperimentList.from_file(e_path)
        table = ReflectionTable.from_file(r_path)
        for col in ("id", "panel", "miller_index", "xyzobs.px.value"):
            if col not in table:
                raise ValueError(f"{r_path}: needs a {col} column (give indexed reflections)")
        from stillshot.refine.metrology import experiment_index

        pos = experiment_index(table, el)
        keep = pos >= 0
        if not keep.all():
            table = table.select(keep)
            pos = pos[keep]
        if detector is None and len(el):
            detector = el[0].detector
        base = len(experiments)
        for x in el:
            if detector is not None and len(x.detector) != len(detector):
                raise ValueError(f"{e_path}: its detector has {len(x.detector)} panels, the first input's "
                                 f"{len(detector)}")
        if detector is not None and any(x.detector is not detector for x in el):
            moved = max(float(np.abs(np.array([p.origin for p in x.detector.panels])
                                      - np.array([p.origin for p in detector.panels])).max()) for x in el)
            if moved > 1e-6:
                print(f"{e_path}: its detector differs from the first input's by up to {moved:.4f} mm; "
                      "the first input's detector is used for all shots")
            el = _with_detector(el, detector)
        experiments.extend(el)
        table["id"] = (pos + base).astype(np.int32)
        table.identifiers = {}
        tables.append(table)
    table = ReflectionTable.concat(tables) if len(tables) > 1 else tables[0]
    table.identifiers = {i: ident for i, ident in enumerate(experiments.identifiers())}
    return experiments, table


def _reindexer(params, dirs: list[str]):
    """A callable ``detector -> (experiments, table)`` that re-indexes the strong spots of dirs."""
    from stillshot.cli.index import indexing_options, refinement_options
    from stillshot.index import index_still

    runs = []
    for d in dirs:
        e, r = os.path.join(d, "imported.expt"), os.path.join(d, "strong.refl")
        if not (os.path.isfile(e) and os.path.isfile(r)):
            raise UsageError(f"metrology.reindex=True: {d} has no imported.expt and strong.refl")
        runs.append((ExperimentList.from_file(e), ReflectionTable.from_file(r)))
    if not runs:
        raise UsageError("metrology.reindex=True needs process output directories as inputs")
    options = indexing_options(params)
    ropt = refinement_options(params)

    def reindex(detector):
        experiments = ExperimentList()
        tables = []
        for imported, strong in runs:
            from stillshot.refine.metrology import experiment_index

            shot_of = experiment_index(strong, imported)
            for i, shot in enumerate(imported):
                rows = np.nonzero(shot_of == i)[0]
                result = index_still(_with_detector(ExperimentList([shot]), detector)[0], strong, options, rows,
                                     refinement=ropt)
                if result.status != "indexed":
                    continue
                base = len(experiments)
                idents = []
                for j, lat in enumerate(result.lattices):
                    x = shot.with_crystal(lat.crystal, new_identifier=True)
                    experiments.append(x)
                    idents.append(x.identifier)
                refl = result.reflections(idents, strong)
                refl["id"] = (np.asarray(refl["id"]) + base).astype(np.int32)
                refl.identifiers = {}
                tables.append(refl)
        if not tables:
            raise ValueError("re-indexing with the refined geometry indexed no shot")
        table = ReflectionTable.concat(tables)
        table.identifiers = dict(enumerate(experiments.identifiers()))
        print(f"re-indexed: {len(experiments)} lattices, {len(table)} indexed reflections")
        return experiments, table

    return reindex


def _with_detector(experiments: ExperimentList, detector) -> ExperimentList:
    from dataclasses import replace

    return ExperimentList(replace(e, detector=detector) for e in experiments)


def _level_table(result, level: int) -> list[str]:
    before = {g.name: g for g in result.levels_before[level]}
    lines = [f"  {'group':<22}{'nref':>7}{'before (px)':>13}{'after (px)':>12}"]
    for g in result.levels_after[level]:
        b = before.get(g.name)
        lines.append(f"  {g.name:<22}{g.n:>7}{(b.rmsd_px if b else float('nan')):>13.3f}{g.rmsd_px:>12.3f}")
    return lines


def _result_json(result) -> dict:
    def levels(d):
        return {str(k): [g.__dict__ for g in v] for k, v in d.items()}

    return {
        "level": result.level,
        "n_reflections": result.n_reflections,
        "n_outliers": result.n_outliers,
        "n_parameters": result.n_parameters,
        "rmsd_before": result.rmsd_before,
        "rmsd_after": result.rmsd_after,
        "rmsd_by_level_before": levels(result.levels_before),
        "rmsd_by_level_after": levels(result.levels_after),
        "fixed_parameters": result.fixed_parameters,
        "parameters": dict(zip(result.parameter_names, (float(v) for v in result.parameter_values))),
        "solver": {"iterations": result.solver.iterations, "evaluations": result.solver.evaluations,
                   "converged": result.solver.converged, "message": result.solver.message,
                   "initial_cost": result.solver.initial_cost, "cost": result.solver.cost},
        "timings": result.timings,
        "notes": result.notes,
    }


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot metrology``."""

    def body() -> int:
        cl = parse_command_line("metrology", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        t_start = time.perf_counter()
        from stillshot.io.crystfel_geom import write_geom
        from stillshot.refine.metrology import refine_protocol

        options = metrology_options(cl.params)
        experiments, table = _load(cl.files)
        ref = reference_geometry(cl.params)
        if ref is not None:
            if len(ref) != len(experiments[0].detector):
                raise ValueError(f"input.reference_geometry has {len(ref)} panels, the experiments' "
                                 f"detector {len(experiments[0].detector)}")
            experiments = _with_detector(experiments, ref)
        levels = [int(v) for v in (cl.params.metrology.levels or [options.hierarchy_level])]
        print(f"metrology: {len(experiments)} experiments, {len(table)} reflections; levels {levels}")
        reindex = None
        if cl.params.metrology.reindex and len(levels) > 1:
            reindex = _reindexer(cl.params, [f for f in cl.files if os.path.isdir(f)])
        results = refine_protocol(experiments, table, levels, options, reindex=reindex)
        for res in results:
            b, a = res.rmsd_before, res.rmsd_after
            print(f"\nlevel {res.level}: {res.n_parameters} parameters, {res.n_reflections} reflections "
                  f"({res.n_outliers} outliers), {res.solver.iterations} iterations "
                  f"({res.solver.message}), {res.timings['total']:.2f} s")
            for note in res.notes:
                print(f"  {note}")
            print(f"  RMSD x {b['x_px']:.3f} -> {a['x_px']:.3f} px, y {b['y_px']:.3f} -> {a['y_px']:.3f} px, "
                  f"xy {b['xy_px']:.3f} -> {a['xy_px']:.3f} px, DeltaPsi {b['delpsi_deg']:.4f} -> "
                  f"{a['delpsi_deg']:.4f} deg")
            for lev in sorted(res.levels_after):
                if lev <= res.level + 1 or lev == max(res.levels_after):
                    print(f" RMSD by group at level {lev}:")
                    print("\n".join(_level_table(res, lev)))
        final = results[-1]
        final.experiments.as_file(output_path(cl.params, "refined.expt"))
        final.reflections.as_file(output_path(cl.params, "refined.refl"))
        wavelength = float(np.median([e.beam.wavelength for e in final.experiments]))
        write_geom(final.detector, output_path(cl.params, "refined.geom"), wavelength=wavelength,
                   header="Refined by stillshot metrology")
        summary = {"levels": [_result_json(r) for r in results], "total_seconds": time.perf_counter() - t_start}
        with open(output_path(cl.params, "metrology.json"), "w") as fh:
            json.dump(summary, fh, indent=1, default=float)
        print(f"\nwrote {output_path(cl.params, 'refined.expt')}, refined.geom, refined.refl, metrology.json "
              f"in {time.perf_counter() - t_start:.2f} s")
        return 0

    return run_command("metrology", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
