"""``stillshot index imported.expt strong.refl [params]`` -> indexed.expt, indexed.refl."""

from __future__ import annotations

import sys
import time

import numpy as np

from stillshot.cli.common import UsageError, output_path, parse_command_line, run_command
from stillshot.config import common, is_auto, root
from stillshot.index import IndexingOptions, index_still
from stillshot.index import registry
from stillshot.models import ExperimentList
from stillshot.refine.stills import StillsRefinementOptions
from stillshot.table import ReflectionTable

USAGE = """usage: stillshot index imported.expt strong.refl [params]

Index the strong spots of every shot (one experiment per shot) and refine each
crystal against its shot; writes indexed.expt and indexed.refl into output.dir.
Known symmetry: indexing.known_symmetry.space_group=P41212
indexing.known_symmetry.unit_cell=58.4,58.4,152.3,90,90,90.
Methods (indexing.method): vector_match (known cell, fast; the default, falls
back to fft1d without a known cell), fft1d, real_space_grid_search (known cell)."""

DEFINITION = root(
    common.output_scope(),
    common.indexing_scope(),
    common.refinement_scope(),
)


def _number(value):
    return None if value is None or is_auto(value) else float(value)


def indexing_options(params) -> IndexingOptions:
    """The indexer's options from the ``indexing`` parameters.

    A known-cell-only method without a known unit cell falls back to fft1d.
    """
    ix = params.indexing
    ks = ix.known_symmetry
    method = ix.method
    if registry.needs_known_cell(method) and ks.unit_cell is None:
        method = "fft1d"
    st = ix.stills
    mls = ix.multiple_lattice_search
    return IndexingOptions(
        method=method,
        space_group=str(ks.space_group) if ks.space_group else None,
        unit_cell=tuple(float(x) for x in ks.unit_cell) if ks.unit_cell else None,
        relative_length_tolerance=float(ks.relative_length_tolerance),
        absolute_angle_tolerance=float(ks.absolute_angle_tolerance),
        max_delta=float(ks.max_delta),
        min_cell=float(ix.min_cell),
        max_cell=_number(ix.max_cell),
        min_cell_volume=float(ix.min_cell_volume),
        hkl_tolerance=float(ix.index_assignment.simple.hkl_tolerance),
        max_lattices=int(mls.max_lattices),
        recycle_unindexed_reflections_cutoff=float(mls.recycle_unindexed_reflections_cutoff),
        minimum_angular_separation=float(mls.minimum_angular_separation),
        refine_all_candidates=bool(st.refine_all_candidates),
        candidate_outlier_rejection=bool(st.candidate_outlier_rejection),
        rmsd_max_px=float(st.rmsd_min_px),
        ewald_proximal_volume_max=float(st.ewald_proximal_volume_max),
        ewald_proximity_resolution_cutoff=float(st.ewald_proximity_resolution_cutoff),
        d_min_refine=_number(ix.refinement_protocol.d_min_start),
    )


def refinement_options(params) -> StillsRefinementOptions:
    """Per-shot crystal refinement options from the ``refinement`` parameters."""
    rf = params.refinement
    fix = set(rf.parameterisation.crystal.fix or ())
    outlier = rf.reflections.outlier.algorithm
    return StillsRefinementOptions(
        fix_cell="cell" in fix or "all" in fix,
        fix_orientation="orientation" in fix or "all" in fix,
        delpsi_constant=float(rf.reflections.weighting_strategy.delpsi_constant),
        outlier_rejection=outlier not in ("null", None) and params.indexing.stills.candidate_outlier_rejection,
        max_iterations=rf.refinery.max_iterations,
        min_nref_per_parameter=int(rf.parameterisation.auto_reduction.min_nref_per_parameter),
    )


def _inputs(files: list[str]) -> tuple[str, str]:
    expts = [f for f in files if f.endswith((".expt", ".json"))]
    refls = [f for f in files if f.endswith(".refl")]
    other = [f for f in files if f not in expts and f not in refls]
    if other:
        raise UsageError(f"unexpected argument {other[0]!r} (give one .expt and one .refl file)")
    if len(expts) != 1 or len(refls) != 1:
        raise UsageError("give exactly one .expt file and one .refl file, e.g. imported.expt strong.refl")
    return expts[0], refls[0]


def _shot_rows(table: ReflectionTable, experiments: ExperimentList) -> list[np.ndarray]:
    """Rows of the table belonging to each experiment (by identifier, else by id)."""
    ids = np.asarray(table["id"]) if "id" in table else np.zeros(len(table), dtype=int)
    by_ident = {v: k for k, v in table.identifiers.items()}
    out = []
    for i, e in enumerate(experiments):
        key = by_ident.get(e.identifier, i)
        out.append(np.nonzero(ids == key)[0])
    return out


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot index``."""

    def body() -> int:
        cl = parse_command_line("index", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        expt_path, refl_path = _inputs(cl.files)
        experiments = ExperimentList.from_file(expt_path)
        table = ReflectionTable.from_file(refl_path)
        if "panel" not in table or "xyzobs.px.value" not in table:
            raise ValueError(f"{refl_path}: needs panel and xyzobs.px.value columns")
        options = indexing_options(cl.params)
        ropt = refinement_options(cl.params)
        if options.method != cl.params.indexing.method:
            print(f"indexing.method={cl.params.indexing.method} needs a known unit cell: using {options.method}")
        out_experiments = ExperimentList()
        tables = []
        n_indexed = 0
        t_start = time.perf_counter()
        for i, (experiment, rows) in enumerate(zip(experiments, _shot_rows(table, experiments))):
            t0 = time.perf_counter()
            result = index_still(experiment, table, options, rows, refinement=ropt)
            dt = time.perf_counter() - t0
            label = experiment.image.label() if experiment.image else f"experiment {i}"
            if result.status != "indexed":
                print(f"{label}: not indexed ({result.reason}); {len(rows)} spots, {dt:.2f} s")
                continue
            n_indexed += 1
            idents = []
            for lat in result.lattices:
                e = experiment.with_crystal(lat.crystal, new_identifier=len(result.lattices) > 1 or
                                            any(x.identifier == experiment.identifier for x in out_experiments))
                out_experiments.append(e)
                idents.append(e.identifier)
            base = len(out_experiments) - len(result.lattices)
            refl = result.reflections(idents, table)
            refl["id"] = np.asarray(refl["id"]) + base
            refl.identifiers = {base + j: ident for j, ident in enumerate(idents)}
            tables.append(refl)
            cells = "; ".join(
                f"{lat.bravais} " + ",".join(f"{v:.2f}" for v in lat.crystal.cell_parameters)
                + f" ({lat.n_indexed} spots, rmsd {lat.rmsd_px:.2f} px)" for lat in result.lattices)
            print(f"{label}: indexed {cells}; {dt:.2f} s")
        out = ReflectionTable.concat(tables) if tables else ReflectionTable()
        ident_map = {}
        for t in tables:
            ident_map.update(t.identifiers)
        out.identifiers = ident_map
        out_experiments.as_file(output_path(cl.params, "indexed.expt"))
        out.as_file(output_path(cl.params, "indexed.refl"))
        total = time.perf_counter() - t_start
        print(f"indexed {n_indexed} of {len(experiments)} shots ({len(out_experiments)} lattices) "
              f"in {total:.2f} s; wrote {output_path(cl.params, 'indexed.expt')} and indexed.refl")
        return 0

    return run_command("index", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
