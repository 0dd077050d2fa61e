"""Spot finding and hit finding for one shot.

:func:`find_spots` is what ``stillshot find-spots`` and the per-shot pipeline
call: shot in, :class:`SpotFindingResult` out, never an exception for a bad
shot (a failure is a status with a reason).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from stillshot.spotfind import spots as S
from stillshot.spotfind.calibration import Lookup, calibrate
from stillshot.spotfind._kernels import pixel_spot_blocks, stats_from_blocks, valid_pixels
from stillshot.spotfind.masks import static_mask
from stillshot.spotfind.options import SpotFinderOptions
from stillshot.spotfind.threshold import effective_gain, get_algorithm
from stillshot.table import ReflectionTable

__all__ = ["SpotFindingResult", "find_spots", "find_spots_in_arrays", "is_hit", "resolve_min_spot_size"]


@dataclass
class SpotFindingResult:
    """Spots of one shot and what happened.

    Attributes
    ----------
    reflections : ReflectionTable
        Strong spots of every panel (``id`` 0), DIALS columns.
    status : str
        ``"ok"`` or ``"failed"``.
    reason : str
        Why it failed ("" when ok).
    hit : bool
        At least ``min_spots`` spots (and at most ``max_spots``).
    n_strong_pixels : int
    resolved : dict
        Values chosen at run time (auto parameters).
    timings : dict
        Seconds per step (``mask``, ``threshold``, ``spots``).
    """

    reflections: ReflectionTable
    status: str = "ok"
    reason: str = ""
    hit: bool = False
    n_strong_pixels: int = 0
    resolved: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return len(self.reflections)


def resolve_min_spot_size(options: SpotFinderOptions, detector) -> int:
    """``filter.min_spot_size``, with DIALS's Auto: 3 for SENSOR_PAD panels, 6 otherwise."""
    if options.filter.min_spot_size is not None:
        return int(options.filter.min_spot_size)
    return 3 if detector[0].type == "SENSOR_PAD" else 6


def is_hit(n_spots: int, options: SpotFinderOptions) -> bool:
    """True when the spot count passes the hit finder's limits."""
    if n_spots < options.min_spots:
        return False
    return options.max_spots is None or n_spots <= options.max_spots


def find_spots(shot, options: SpotFinderOptions, lookup: Lookup | None = None) -> SpotFindingResult:
    """Find the strong spots of a shot.

    Parameters
    ----------
    shot : Shot
        Pixels (one array per panel) and models.
    options : SpotFinderOptions
    lookup : Lookup, optional
        Pedestal, gain map, user mask and bad-pixel map.

    Returns
    -------
    SpotFindingResult
    """
    return find_spots_in_arrays(shot.data, shot.detector, shot.beam, options, lookup)


def find_spots_in_arrays(data, detector, beam, options: SpotFinderOptions,
                         lookup: Lookup | None = None) -> SpotFindingResult:
    """:func:`find_spots` on per-panel arrays and models (no Shot needed).

    Parameters
    ----------
    data : sequence of ndarray
        Raw panel data, shape (n_slow, n_fast) each, in panel order.
    detector : Detector
    beam : Beam
    options : SpotFinderOptions
    lookup : Lookup, optional

    Returns
    -------
    SpotFindingResult
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        if len(data) != len(detector):
            raise ValueError(f"{len(data)} panel arrays for a detector of {len(detector)} panels")
        static = static_mask(detector, beam, options.filter,
                             user_mask=lookup.mask if lookup else None,
                             bad_pixels=lookup.bad_pixels if lookup else None)
        algorithm = get_algorithm(options.algorithm, options)
        calibrating = lookup is not None and lookup.calibrates
        images = [calibrate(raw, p, lookup) for p, raw in enumerate(data)]
        masks = None
        if calibrating or algorithm.needs_valid_masks:
            # the trusted range applies to the raw values
            masks = [valid_pixels(raw, static[p], trusted_range=panel.trusted_range)
                     for p, (raw, panel) in enumerate(zip(data, detector))]
        t1 = time.perf_counter()
        timings["mask"] = t1 - t0
        resolved = dict(algorithm.prepare(images, masks, detector, beam))
        min_size = resolve_min_spot_size(options, detector)
        if options.filter.min_spot_size is None:
            resolved["spotfinder.filter.min_spot_size"] = min_size
        margin = max(options.background_margin,
                     options.radial.local_bg_radius if options.algorithm == "radial" else 0)
        f_blocks, i_blocks, panel_ids, counts = [], [], [], []
        n_strong = 0
        t_thr = t_spots = 0.0
        for p, (image, panel) in enumerate(zip(images, detector)):
            ta = time.perf_counter()
            if masks is None:
                idx, valid = algorithm.threshold(p, image, static[p], trusted_range=panel.trusted_range)
            else:
                idx, valid = algorithm.threshold(p, image, masks[p])
            tb = time.perf_counter()
            n_strong += len(idx)
            if len(idx):
                gain = effective_gain(options, panel)
                if calibrating and lookup.gain_map is not None:
                    gain = None  # calibrated data are in photons
                # labelling + spot_statistics in one kernel call (two arrays back, not 18)
                fb, ib = pixel_spot_blocks(image, valid, idx, connectivity=algorithm.connectivity, gain=gain,
                                           margin=margin)
                f_blocks.append(fb)
                i_blocks.append(ib)
                panel_ids.append(p)
                counts.append(fb.shape[1])
            t_thr += tb - ta
            t_spots += time.perf_counter() - tb
        tc = time.perf_counter()
        if f_blocks:
            stats = stats_from_blocks(np.concatenate(f_blocks, axis=1), np.concatenate(i_blocks, axis=1))
            panels = np.repeat(np.asarray(panel_ids, dtype=np.uint64), counts)
            keep = S.size_and_separation(stats, min_spot_size=min_size,
                                         max_spot_size=options.filter.max_spot_size,
                                         max_separation=options.filter.max_separation)
            extra = algorithm.accept(stats)
            if extra is not None:
                keep &= extra
            table = S.spot_table(S.select_stats(stats, keep), panels[keep])
        else:
            table = S.empty_spot_table()
        timings["threshold"] = t_thr
        timings["spots"] = t_spots + time.perf_counter() - tc
        n_pixels = sum(int(a.size) for a in images)
        frac = options.filter.max_strong_pixel_fraction
        if frac < 1 and n_strong > int(math.ceil(frac * n_pixels)):
            return SpotFindingResult(
                S.empty_spot_table(), "failed",
                f"{n_strong} strong pixels, more than spotfinder.filter.max_strong_pixel_fraction={frac:g} "
                f"of {n_pixels}: the threshold does not suit this shot",
                False, n_strong, resolved, timings)
        return SpotFindingResult(table, "ok", "", is_hit(len(table), options), n_strong, resolved, timings)
    except (ValueError, IndexError, FloatingPointError) as exc:
        timings.setdefault("mask", time.perf_counter() - t0)
        return SpotFindingResult(S.empty_spot_table(), "failed", f"{type(exc).__name__}: {exc}", False, 0, {},
                                 timings)
