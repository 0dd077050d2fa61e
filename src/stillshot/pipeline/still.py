"""The per-shot pipeline: check -> spot finding -> hit finding -> indexing (with per-shot
crystal refinement) -> integration.

:func:`process_still` runs the enabled stages of a :class:`StillContext` in
order on one shot and returns a :class:`~stillshot.pipeline.result.StillResult`
with the time each stage took and, for a shot that stopped early, its status
and the reason.  Stages are entries of a small registry (:func:`register_stage`):
a stage is a function ``stage(state, context) -> None | (status, reason)``
that reads and fills the :class:`ShotState`; returning a status stops the
shot there.  Adding a stage (say, a per-shot detector-distance refinement
between indexing and integration) is one new registered function.

Nothing here raises for a bad shot: an exception inside a stage becomes
status ``failed`` with the stage's name and the error as the reason.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from stillshot.io.base import Shot
from stillshot.models import Experiment
from stillshot.pipeline.result import StillResult
from stillshot.pipeline.sources import shot_key
from stillshot.table import ReflectionTable

__all__ = [
    "PRELOAD_MODULES",
    "ShotState",
    "Stage",
    "StillContext",
    "experiment_identifier",
    "process_still",
    "register_stage",
    "stage_names",
]

#: Modules the stages use: worth importing once before worker processes are started.
PRELOAD_MODULES = ("stillshot.pipeline.still", "stillshot.spotfind", "stillshot.index", "stillshot.refine",
                   "stillshot.integrate", "stillshot.io.cbf", "stillshot.io.nexus", "stillshot.io.cxi")

#: Namespace of the experiment identifiers process gives (uuid5 of shot key and lattice).
_IDENT_NAMESPACE = uuid.UUID("6f1d4c1e-2b7a-5c3e-9a51-3e5d7c0b9a11")


def experiment_identifier(path: str, frame: int | None, lattice: int | None = None) -> str:
    """A reproducible experiment identifier for a shot (``lattice`` None: the imported shot).

    The same shot gets the same identifier in every run, whatever the number
    of processes, so outputs of runs can be compared and resumed runs agree.
    """
    name = shot_key(path, frame) + ("" if lattice is None else f"\0lattice{lattice}")
    return str(uuid.uuid5(_IDENT_NAMESPACE, name))


@dataclass(frozen=True)
class StillContext:
    """What every shot of a run is processed with (picklable: sent to each worker once).

    Attributes
    ----------
    spotfinder : SpotFinderOptions
        Spot finding and hit finding (``min_spots``/``max_spots``) options.
    indexing : IndexingOptions or None
        None: stop after hit finding.
    refinement : StillsRefinementOptions or None
        Per-shot crystal refinement options used by the indexer.
    integration : IntegrationOptions or None
        None: no integration (``dispatch.integrate=False``, or integration not installed).
    lookup : Lookup or None
        Pedestal, gain map, mask and bad-pixel map for spot finding.
    max_nonfinite_fraction : float
        A shot with a larger fraction of NaN or infinite pixels fails the ``check`` stage.
    stages : tuple of str or None
        Stage names to run, in registry order; None: every registered stage
        whose ``enabled(context)`` is true.
    """

    spotfinder: object
    indexing: object | None = None
    refinement: object | None = None
    integration: object | None = None
    lookup: object | None = None
    max_nonfinite_fraction: float = 0.5
    stages: tuple | None = None


@dataclass
class ShotState:
    """What the stages of one shot know so far.

    Attributes
    ----------
    shot : Shot
    result : StillResult
        Filled in stage by stage.
    spotfinding : object
        The spot finder's full result (hit flag, strong pixel count), for later stages.
    index_result : object
        The indexer's full result.
    extra : dict
        Free room for stages added later.
    """

    shot: Shot
    result: StillResult
    spotfinding: object = None
    index_result: object = None
    extra: dict = field(default_factory=dict)


#: stage(state, context) -> None to go on, or (status, reason) to stop the shot.
StageFunction = Callable[[ShotState, StillContext], "tuple[str, str] | None"]


@dataclass(frozen=True)
class Stage:
    """A registered pipeline stage.

    Attributes
    ----------
    name : str
        Also the key of its time in ``timings``.
    run : callable
        ``run(state, context) -> None | (status, reason)``.
    enabled : callable
        ``enabled(context) -> bool``: whether the stage runs in this run.
    status : str or None
        Status a shot reaches when the stage completes (None: unchanged).
    """

    name: str
    run: StageFunction
    enabled: Callable[[StillContext], bool] = lambda context: True
    status: str | None = None


_STAGES: list[Stage] = []


def register_stage(name: str, *, enabled: Callable[[StillContext], bool] | None = None,
                   status: str | None = None, before: str | None = None) -> Callable:
    """Decorator adding a stage function to the pipeline.

    Parameters
    ----------
    name : str
    enabled : callable, optional
        ``enabled(context) -> bool`` (default: always).
    status : str, optional
        The shot's status once this stage has run.
    before : str, optional
        Insert before the named stage (default: at the end).
    """

    def deco(func: StageFunction) -> StageFunction:
        stage = Stage(name, func, enabled or (lambda context: True), status)
        names = [s.name for s in _STAGES]
        if name in names:
            _STAGES[names.index(name)] = stage
        elif before is not None and before in names:
            _STAGES.insert(names.index(before), stage)
        else:
            _STAGES.append(stage)
        return func

    return deco


def stage_names(context: StillContext | None = None) -> list[str]:
    """Names of the registered stages in order (only the enabled ones when a context is given)."""
    if context is None:
        return [s.name for s in _STAGES]
    return [s.name for s in _active(context)]


def _active(context: StillContext) -> list[Stage]:
    if context.stages is not None:
        wanted = set(context.stages)
        return [s for s in _STAGES if s.name in wanted]
    return [s for s in _STAGES if s.enabled(context)]


def process_still(shot: Shot, context: StillContext) -> StillResult:
    """Run the pipeline on one shot.

    Parameters
    ----------
    shot : Shot
        Pixels and models of the shot.
    context : StillContext

    Returns
    -------
    StillResult
        Status ``failed`` / ``not_hit`` / ``not_indexed`` / ``indexed`` /
        ``integrated`` with the reason the shot stopped, spots, lattices,
        reflections and ``timings`` (seconds per stage).
    """
    path, frame = shot.image.path, shot.image.frame
    imported = Experiment(beam=shot.beam, detector=shot.detector, image=shot.image,
                          identifier=experiment_identifier(path, frame))
    result = StillResult(path, frame, "read", imported=imported)
    state = ShotState(shot, result)
    for stage in _active(context):
        t0 = time.perf_counter()
        try:
            stop = stage.run(state, context)
        except Exception as exc:  # noqa: BLE001 - a failed shot is a status, never a stopped run
            stop = ("failed", f"{stage.name}: {_reason(exc)}")
        result.timings[stage.name] = time.perf_counter() - t0
        if stop is not None:
            result.status, result.reason = stop
            return result
        if stage.status is not None:
            result.status = stage.status
    if result.status == "not_indexed" and not result.reason:  # a hit, and no indexing stage ran
        result.reason = "indexing not enabled (dispatch.index=False)"
    elif result.status == "read":  # no hit finding ran (e.g. stages=("check", "spotfind"))
        result.status = "not_hit"
        result.reason = "hit finding not enabled"
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(exc: BaseException, limit: int = 400) -> str:
    """One readable line for an exception (terminal colour codes removed, length bounded)."""
    text = _ANSI.sub("", f"{type(exc).__name__}: {exc}")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the stages ---------------------------------------------------------------------------------


@register_stage("check")
def _check(state: ShotState, context: StillContext):
    """Reject frames that are mostly NaN or infinite (a corrupt or unfilled frame)."""
    n_bad = n_all = 0
    for a in state.shot.data:
        arr = np.asarray(a)
        n_all += arr.size
        if arr.dtype.kind == "f":
            n_bad += int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_all == 0:
        return "failed", "the frame holds no pixels"
    if n_bad and n_bad > context.max_nonfinite_fraction * n_all:
        return "failed", (f"{n_bad} of {n_all} pixels ({100.0 * n_bad / n_all:.1f}%) are NaN or infinite "
                          "(corrupt frame)")
    if n_bad:
        state.extra["nonfinite_pixels"] = n_bad
    return None


@register_stage("spotfind")
def _spotfind(state: ShotState, context: StillContext):
    """Strong spots (:func:`stillshot.spotfind.find_spots`)."""
    from stillshot.spotfind import find_spots

    shot = state.shot
    data = shot.data
    if "nonfinite_pixels" in state.extra:  # NaN/inf pixels: never strong, never background
        data = tuple(np.where(np.isfinite(a), a, -1.0) if np.asarray(a).dtype.kind == "f" else a for a in data)
        shot = replace(shot, data=data)
    sf = find_spots(shot, context.spotfinder, context.lookup)
    state.spotfinding = sf
    state.result.strong = sf.reflections
    state.result.resolved.update({f"spotfind.{k}": v for k, v in sf.resolved.items()})
    if sf.status != "ok":
        return "failed", f"spot finding: {sf.reason}"
    return None


@register_stage("hit", status="not_indexed")
def _hit(state: ShotState, context: StillContext):
    """Hit finding: enough (and not too many) strong spots."""
    sf = state.spotfinding
    if sf is not None and not sf.hit:
        n = sf.n_spots
        opt = context.spotfinder
        if n < opt.min_spots:
            return "not_hit", f"{n} spots < dispatch.hit_finder.minimum_number_of_reflections={opt.min_spots}"
        return "not_hit", f"{n} spots > dispatch.hit_finder.maximum_number_of_reflections={opt.max_spots}"
    return None


def _indexing_enabled(context: StillContext) -> bool:
    return context.indexing is not None


@register_stage("index", enabled=_indexing_enabled, status="indexed")
def _index(state: ShotState, context: StillContext):
    """Indexing with per-shot crystal refinement (:func:`stillshot.index.index_still`)."""
    from stillshot.index import index_still

    result = state.result
    strong = result.strong if result.strong is not None else ReflectionTable()
    ir = index_still(result.imported, strong, context.indexing, refinement=context.refinement)
    state.index_result = ir
    result.resolved.update({f"index.{k}": v for k, v in ir.resolved.items()})
    if ir.status != "indexed":
        return "not_indexed", ir.reason or "not indexed"
    path, frame = result.file, result.frame
    experiments = [replace(result.imported, crystal=lat.crystal,
                           identifier=experiment_identifier(path, frame, i))
                   for i, lat in enumerate(ir.lattices)]
    table = ir.reflections([e.identifier for e in experiments], strong)
    result.experiments = experiments
    result.indexed = table
    result.resolved["index.rmsd_px"] = [round(lat.rmsd_px, 4) for lat in ir.lattices]
    return None


def _integration_enabled(context: StillContext) -> bool:
    return context.indexing is not None and context.integration is not None


@register_stage("integrate", enabled=_integration_enabled, status="integrated")
def _integrate(state: ShotState, context: StillContext):
    """Integration of every lattice (:func:`stillshot.integrate.integrate_shot`).

    A shot whose lattices all fail to integrate stays ``indexed``, with the reason.
    """
    from stillshot.integrate import integrate_shot

    result = state.result
    ids = np.asarray(result.indexed["id"]) if result.indexed is not None and "id" in result.indexed else None
    tables, crystals, reasons = [], [], []
    for i, experiment in enumerate(result.experiments):
        rows = result.indexed.select(ids == i) if ids is not None else None
        try:
            ir = integrate_shot(experiment, state.shot.data, context.integration, indexed=rows)
        except Exception as exc:  # noqa: BLE001 - the shot keeps its lattices
            reasons.append(f"lattice {i}: {_reason(exc)}")
            crystals.append(None)
            continue
        if ir.status != "integrated":
            reasons.append(f"lattice {i}: {ir.reason}")
            crystals.append(None)
            continue
        t = ir.reflections
        t["id"] = np.full(len(t), i, dtype=np.int32)
        tables.append(t)
        crystals.append(ir.crystal)
        result.resolved.setdefault("integrate.n_integrated", []).append(ir.resolved.get("n_integrated"))
    if not tables:
        return "indexed", "integration failed: " + "; ".join(reasons)
    out = ReflectionTable.concat(tables)
    out.identifiers = {i: e.identifier for i, e in enumerate(result.experiments) if crystals[i] is not None}
    result.integrated = out
    result.integrated_crystals = crystals
    if reasons:
        result.reason = "; ".join(reasons)
    return None
