"""Merging: ambiguity resolution, scaling, post-refinement, error model, statistics, MTZ.

::

    from stillshot.merge import observations_from_integrated, merge_observations, MergeOptions

    obs = observations_from_integrated([(experiments, reflections), ...])
    result = merge_observations(obs, MergeOptions(postrefinement=True))
    print(result.statistics.format_table())

Modules: :mod:`~stillshot.merge.symmetry` (ASU, ambiguity operators),
:mod:`~stillshot.merge.observations` (flat arrays from integrated tables),
:mod:`~stillshot.merge.ambiguity` (Brehm–Diederichs / reference),
:mod:`~stillshot.merge.partiality` and :mod:`~stillshot.merge.scaling`
(per-shot scale, B and post-refinement), :mod:`~stillshot.merge.error_model`,
:mod:`~stillshot.merge.merging` (weighted means, outliers),
:mod:`~stillshot.merge.statistics`, :mod:`~stillshot.merge.truncate`
(French–Wilson), :mod:`~stillshot.merge.mtz` (gemmi MTZ objects),
:mod:`~stillshot.merge.engine` (the whole procedure) and
:mod:`~stillshot.merge.synthetic` (integrated tables from simulator truth).
"""

from stillshot.merge.ambiguity import AmbiguityReport, resolve_ambiguity
from stillshot.merge.engine import MergeOptions, MergeResult, ReferenceIntensities, merge_observations
from stillshot.merge.error_model import ErrorModel, fit_error_model
from stillshot.merge.mtz import merged_mtz, unmerged_mtz
from stillshot.merge.observations import Observations, observations_from_integrated
from stillshot.merge.statistics import MergingStatistics, ShellStatistics, cc_star, merging_statistics, pearson
from stillshot.merge.symmetry import AmbiguityOperator, MergeSymmetry, ambiguity_operators
from stillshot.merge.truncate import french_wilson

__all__ = [
    "AmbiguityOperator",
    "AmbiguityReport",
    "ErrorModel",
    "MergeOptions",
    "MergeResult",
    "MergeSymmetry",
    "MergingStatistics",
    "Observations",
    "ReferenceIntensities",
    "ShellStatistics",
    "ambiguity_operators",
    "cc_star",
    "fit_error_model",
    "french_wilson",
    "merge_observations",
    "merged_mtz",
    "merging_statistics",
    "observations_from_integrated",
    "pearson",
    "resolve_ambiguity",
    "unmerged_mtz",
]
