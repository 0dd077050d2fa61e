"""``stillshot merge DIRS|FILES... [params]`` -> merged.mtz, half-set and unmerged MTZs, merging_stats.json."""

from __future__ import annotations

import json
import os
import sys
import time

import gemmi
import numpy as np

from stillshot.cli.common import UsageError, output_path, parse_command_line, report_failures, run_command
from stillshot.config import common, root
from stillshot.merge import (
    MergeOptions,
    ReferenceIntensities,
    merge_observations,
    merged_mtz,
    observations_from_integrated,
    unmerged_mtz,
)
from stillshot.models import ExperimentList
from stillshot.table import ReflectionTable

USAGE = """usage: stillshot merge DIRS|FILES... [params]

Scale, optionally post-refine, and merge integrated shots to the asymmetric unit.
Inputs: process output directories (integrated.expt + integrated.refl in each), or
.expt/.refl pairs (paired in the order given). Writes into output.dir:
  merged.mtz          IMEAN SIGIMEAN F SIGF N (F by French-Wilson)
  merged_half1.mtz    the two random half-sets (by shot): IMEAN SIGIMEAN N
  merged_half2.mtz
  unmerged.mtz        the merged observations, one batch per accepted shot: I SIGI M/ISYM BATCH
                      SCALEUSED FRACTIONCALC XDET YDET
  merging_stats.json  statistics per resolution shell and what was resolved at run time
  ambiguity.json      the indexing-ambiguity operator chosen for each shot (when there is an ambiguity)
Examples: stillshot merge run1/ run2/ merging.d_min=2.0 postrefinement.enable=True
          stillshot merge a.expt a.refl scaling.reference=ref.mtz symmetry.space_group=P63"""

DEFINITION = root(common.output_scope(), common.merge_scope())

_REFERENCE_COLUMNS = ("IMEAN", "I", "I-obs", "F", "FP", "F-obs")


def _input_pairs(files: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(expt, refl) paths from directories and files, and the unusable arguments."""
    pairs, bad = [], []
    expts, refls = [], []
    for f in files:
        if os.path.isdir(f):
            e, r = os.path.join(f, "integrated.expt"), os.path.join(f, "integrated.refl")
            if os.path.exists(e) and os.path.exists(r):
                pairs.append((e, r))
            else:
                bad.append(f"{f}: no integrated.expt and integrated.refl in this directory")
        elif f.endswith((".expt", ".json")):
            expts.append(f)
        elif f.endswith(".refl"):
            refls.append(f)
        else:
            raise UsageError(f"unexpected argument {f!r} (give directories, or .expt and .refl files)")
    if len(expts) != len(refls):
        raise UsageError(f"{len(expts)} .expt files but {len(refls)} .refl files: give them in pairs")
    pairs.extend(zip(expts, refls))
    return pairs, bad


def _read_reference(path: str, column: str | None) -> ReferenceIntensities:
    """Reference intensities from an MTZ (amplitude columns are squared)."""
    mtz = gemmi.read_mtz_file(path)
    labels = [c.label for c in mtz.columns]
    if column is None:
        column = next((c for c in _REFERENCE_COLUMNS if c in labels), None)
        if column is None:
            raise ValueError(f"{path}: no intensity or amplitude column (have {', '.join(labels)})")
    col = mtz.column_with_label(column)
    if col is None:
        raise ValueError(f"{path}: no column {column!r} (have {', '.join(labels)})")
    data = np.asarray(mtz)
    vals = data[:, labels.index(column)].astype(np.float64)
    if col.type in ("F", "G"):
        vals = vals**2
    return ReferenceIntensities(data[:, :3].astype(np.int32), vals)


def merge_options(params) -> MergeOptions:
    """The merging options from the parameters."""
    sy, sc, pr, mg = params.symmetry, params.scaling, params.postrefinement, params.merging
    amb = sy.ambiguity
    return MergeOptions(
        space_group=str(sy.space_group) if sy.space_group else None,
        unit_cell=tuple(float(v) for v in sy.unit_cell) if sy.unit_cell else None,
        d_min=mg.d_min, d_max=mg.d_max,
        ambiguity=amb.method, ambiguity_max_obliquity=float(amb.max_obliquity),
        ambiguity_max_pairwise_shots=int(amb.max_pairwise_shots),
        scaling_model=sc.model, scaling_cycles=int(sc.cycles),
        partiality=mg.partiality,
        postrefinement=bool(pr.enable), postrefinement_cycles=int(pr.cycles),
        postrefinement_parameters=tuple(pr.parameters or ()),
        prior_rotation_deg=float(pr.prior_rotation_deg), prior_ln_width=float(pr.prior_ln_width),
        prior_b_factor=float(pr.prior_b_factor),
        min_partiality=float(mg.min_partiality), error_model=mg.error_model, variance_model=mg.variance_model,
        outlier_zmax=float(mg.outlier_rejection.zmax),
        outlier_wilson_ratio=float(mg.outlier_rejection.wilson_ratio), min_obs_per_shot=int(mg.min_observations_per_shot),
        n_bins=int(params.statistics.n_bins), half_set_seed=int(mg.seed), seed=int(mg.seed),
        default_domain_size_ang=float(pr.default_domain_size_ang),
        default_half_mosaicity_deg=float(pr.default_half_mosaicity_deg),
    )


def _write_outputs(params, result) -> list[str]:
    """Write the MTZ and JSON files; returns their paths."""
    obs = result.observations
    wl = obs.wavelength
    mean_wl = float(np.mean(wl[result.shot_accepted])) if result.shot_accepted.any() else float(np.mean(wl))
    sym = result.symmetry
    written = []
    merged = merged_mtz(sym, result.hkl, {
        "IMEAN": ("J", result.intensity), "SIGIMEAN": ("Q", result.sigma),
        "F": ("F", result.amplitude), "SIGF": ("Q", result.sigma_amplitude), "N": ("I", result.n_obs)},
        wavelength=mean_wl)
    path = output_path(params, "merged.mtz")
    merged.write_to_file(path)
    written.append(path)
    for h in (0, 1):
        sel = result.half_n_obs[h] > 0
        half = merged_mtz(sym, result.hkl[sel], {
            "IMEAN": ("J", result.half_intensity[h][sel]), "SIGIMEAN": ("Q", result.half_sigma[h][sel]),
            "N": ("I", result.half_n_obs[h][sel])}, wavelength=mean_wl, title=f"stillshot half-set {h + 1}",
            dataset=f"half{h + 1}")
        path = output_path(params, f"merged_half{h + 1}.mtz")
        half.write_to_file(path)
        written.append(path)
    used = result.obs_used
    shots = np.nonzero(result.shot_accepted)[0]
    batch_of_shot = np.zeros(obs.n_shots, dtype=np.int64)
    batch_of_shot[shots] = np.arange(1, len(shots) + 1)
    sig = np.sqrt(obs.variance[used])
    xy = np.where(np.isfinite(obs.xy_px[used]), obs.xy_px[used], 0.0)
    unmerged = unmerged_mtz(sym, obs.hkl[used], batch_of_shot[obs.shot[used]], obs.intensity[used], sig,
                            scale_used=result.obs_scale[used], partiality=result.obs_partiality[used], xy_px=xy,
                            batch_wavelengths=wl[shots], batch_cells=obs.unit_cells[shots],
                            batch_titles=[obs.labels[s] for s in shots])
    path = output_path(params, "unmerged.mtz")
    unmerged.write_to_file(path)
    written.append(path)
    stats = result.statistics.as_dict()
    summary = result.summary()
    amb = summary.pop("ambiguity")
    if amb is not None:
        per_shot = amb.pop("per_shot")
        path = output_path(params, "ambiguity.json")
        with open(path, "w") as fh:
            json.dump({"operators": amb["operators"], "method": amb["method"],
                       "shots": [{"shot": lab, "operator": op, "margin": (None if not np.isfinite(m) else float(m))}
                                 for lab, op, m in zip(obs.labels, per_shot, result.ambiguity.margin)]}, fh, indent=1)
        written.append(path)
    doc = {"statistics": stats, "summary": summary, "ambiguity": amb,
           "parameters": params.as_dict()}
    path = output_path(params, "merging_stats.json")
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    written.append(path)
    return written


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot merge``."""

    def body() -> int:
        cl = parse_command_line("merge", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        if not cl.files:
            raise UsageError("give process output directories or .expt/.refl pairs to merge")
        pairs, failures = _input_pairs(cl.files)
        loaded, names = [], []
        for e, r in pairs:
            try:
                loaded.append((ExperimentList.from_file(e), ReflectionTable.from_file(r)))
                names.append(os.path.dirname(e) or e)
            except (ValueError, FileNotFoundError, OSError) as exc:
                failures.append(f"{e}, {r}: {exc}")
        report_failures("merge", failures)
        if not loaded:
            raise ValueError("no readable inputs")
        params = cl.params
        t0 = time.perf_counter()
        obs = observations_from_integrated(loaded, intensity=params.merging.intensity, sources=names)
        reference = None
        if params.scaling.reference:
            reference = _read_reference(params.scaling.reference, params.scaling.reference_column)
        result = merge_observations(obs, merge_options(params), reference=reference)
        for line in result.log:
            print(line)
        print(f"{int(result.shot_accepted.sum())} of {obs.n_shots} shots, {int(result.obs_used.sum())} observations "
              f"-> {len(result.hkl)} unique reflections in {time.perf_counter() - t0:.1f} s")
        print()
        print(result.statistics.format_table())
        written = _write_outputs(params, result)
        print()
        print("wrote " + ", ".join(written))
        return 0 if not failures else 1

    return run_command("merge", body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
