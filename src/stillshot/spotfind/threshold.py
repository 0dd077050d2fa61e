"""Threshold algorithms, chosen by name (``spotfinder.threshold.algorithm``).

An algorithm is a class registered with :func:`register`.  Per shot,
:meth:`ThresholdAlgorithm.prepare` resolves run-time values (the automatic
global threshold, radial backgrounds) and returns them for the log; then
:meth:`ThresholdAlgorithm.threshold` classifies each panel's pixels.  A new
method is one new class here (or in its own module), nothing else.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from stillshot.spotfind import _kernels as K
from stillshot.spotfind.masks import radial_bins

__all__ = ["ThresholdAlgorithm", "algorithm_names", "get_algorithm", "register"]

_REGISTRY: dict[str, type["ThresholdAlgorithm"]] = {}


def register(cls):
    """Class decorator adding a threshold algorithm under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def algorithm_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_REGISTRY)


def get_algorithm(name: str, options) -> "ThresholdAlgorithm":
    """An instance of the named algorithm.

    Parameters
    ----------
    name : str
    options : SpotFinderOptions

    Raises
    ------
    ValueError
        For an unknown name.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown threshold algorithm {name!r} (known: {', '.join(_REGISTRY)})") from None
    return cls(options)


class ThresholdAlgorithm:
    """Base class: one instance per shot (``prepare`` may keep per-shot state).

    Attributes
    ----------
    name : str
    connectivity : int
        Neighbourhood used to join strong pixels into spots (4 or 8).
    """

    name: ClassVar[str] = ""
    connectivity: ClassVar[int] = 4

    def __init__(self, options):
        self.options = options

    @property
    def needs_valid_masks(self) -> bool:
        """True when :meth:`prepare` needs every panel's validity mask first."""
        return False

    def prepare(self, images, masks, detector, beam) -> dict:
        """Resolve per-shot values from all panels; returns them ({} if none).

        Parameters
        ----------
        images : sequence of ndarray
            Calibrated panel images.
        masks : sequence of ndarray of bool or None
            Valid pixels per panel (None unless :attr:`needs_valid_masks`).
        detector : Detector
        beam : Beam
        """
        return {}

    def threshold(self, panel: int, image, mask, *, trusted_range=None):
        """Strong pixels of one panel.

        Parameters
        ----------
        panel : int
        image : ndarray
            Calibrated panel image (ADU).
        mask : ndarray of bool
            Usable pixels.
        trusted_range : (float, float), optional
            Pixel values outside it are invalid too (applied in the same pass).

        Returns
        -------
        strong : ndarray of int64
            Flat indices of the strong pixels, raster order.
        valid : ndarray of bool
            ``mask`` within the trusted range.
        """
        raise NotImplementedError

    def accept(self, stats: dict) -> np.ndarray | None:
        """Extra per-spot acceptance (boolean array over ``stats`` rows), or None."""
        return None


def effective_gain(options, panel) -> float | None:
    """Gain (ADU per photon) the dispersion tests use on a panel, or None for DIALS's gain-free formulas.

    ``spotfinder.threshold.dispersion.gain`` multiplies the panel's (format's)
    gain; with neither set (gain None and a panel gain of 1) the gain-free
    formulas are used, exactly as DIALS does without a gain.
    """
    g = options.dispersion.gain
    pg = float(panel.gain) if panel.gain else 1.0
    if g is None:
        return None if pg == 1.0 else pg
    return float(g) * pg


class _DispersionBase(ThresholdAlgorithm):
    extended: ClassVar[bool] = True

    @property
    def needs_valid_masks(self) -> bool:
        return self.options.dispersion.global_threshold == "auto"

    def threshold(self, panel, image, mask, *, trusted_range=None):
        return K.dispersion_pixels(image, mask, extended=self.extended, trusted_range=trusted_range,
                                   **self._kwargs(panel))

    def prepare(self, images, masks, detector, beam) -> dict:
        d = self.options.dispersion
        self.detector = detector
        self.global_threshold = d.global_threshold
        if d.global_threshold == "auto":
            levels = K.AUTO_THRESHOLD_LEVELS
            counts = np.zeros(len(levels), np.int64)
            for im, mk in zip(images, masks):
                counts += K.count_above(im, mk, levels=levels)
            self.global_threshold = float(int(K.estimate_global_threshold(counts, levels)))
            return {"spotfinder.threshold.dispersion.global_threshold": self.global_threshold}
        return {}

    def _kwargs(self, panel):
        d = self.options.dispersion
        return dict(gain=effective_gain(self.options, self.detector[panel]), kernel_size=d.kernel_size, sigma_background=d.sigma_background,
                    sigma_strong=d.sigma_strong, min_local=d.min_local,
                    global_threshold=self.global_threshold)


@register
class DispersionExtended(_DispersionBase):
    """DIALS's ``dispersion_extended`` (the default)."""

    name = "dispersion_extended"
    extended = True


@register
class Dispersion(_DispersionBase):
    """DIALS's ``dispersion``."""

    name = "dispersion"
    extended = False


@register
class Radial(ThresholdAlgorithm):
    """peakfinder8-like: background and noise per resolution ring, local-SNR peaks.

    Pixels above ``max(threshold, ring mean + min_snr·ring σ)`` (σ-clipped
    ring statistics over the whole shot) are joined with 8-connectivity;
    a peak is kept when its pixel count is within the limits and its
    background-subtracted intensity over ``√n·σ_local`` is at least min_snr.
    """

    name = "radial"
    connectivity = 8

    @property
    def needs_valid_masks(self) -> bool:
        return True

    def prepare(self, images, masks, detector, beam) -> dict:
        r = self.options.radial
        self.bins, nbins = radial_bins(detector, beam, bin_width=r.bin_width)
        cnt = np.zeros(nbins)
        # statistics over all panels: accumulate per panel, combine
        cut = np.full(nbins, np.inf)
        offset = np.zeros(nbins)
        sigma = np.zeros(nbins)
        for _ in range(r.iterations):
            s0 = np.zeros(nbins)
            s1 = np.zeros(nbins)
            s2 = np.zeros(nbins)
            for im, mk, rb in zip(images, masks, self.bins):
                a, b, c = _ring_sums(im, mk, rb, cut, nbins)
                s0 += a
                s1 += b
                s2 += c
            with np.errstate(invalid="ignore", divide="ignore"):
                offset = np.where(s0 > 0, s1 / np.maximum(s0, 1), 0.0)
                var = np.where(s0 > 0, s2 / np.maximum(s0, 1) - offset ** 2, 0.0)
            sigma = np.sqrt(np.maximum(var, 0.0))
            cut = np.where(s0 > 0, np.maximum(offset + r.min_snr * sigma, r.threshold), np.inf)
            cnt = s0
        self.cut = cut
        used = cnt > 0
        return {"radial.n_rings": int(used.sum()),
                "radial.median_ring_background": float(np.median(offset[used])) if used.any() else 0.0}

    def threshold(self, panel, image, mask, *, trusted_range=None):
        if trusted_range is not None:
            mask = K.valid_pixels(image, mask, trusted_range=trusted_range)
        strong = K.radial_threshold(image, mask, self.bins[panel], cut=self.cut)
        return np.flatnonzero(strong), mask

    def accept(self, stats):
        r = self.options.radial
        n = stats["npix"]
        ok = (n >= r.min_pix_count) & (n <= r.max_pix_count)
        bg_n = np.maximum(stats["bg_n"], 1)
        bg = stats["bg_sum"] / bg_n
        var = np.maximum(stats["bg_sum2"] / bg_n - bg ** 2, 0.0)
        signal = stats["sum_w"] - n * bg
        noise = np.sqrt(n * var)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(noise > 0, signal / noise, np.inf)
        return ok & (snr >= r.min_snr) & (stats["bg_n"] > 0)


def _ring_sums(image, mask, rbin, cut, nbins):
    return K.ring_sums(image, mask, rbin, cut=cut, nbins=nbins)
