"""Typed options of the HTML report (built from the ``report`` parameters by the cli)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportOptions:
    """What the report draws, and how.

    Parameters
    ----------
    n_images : int
        Number of shots rendered as detector images with their spots and
        predictions (the best-indexed ones); 0 draws none.
    rolling_window : int or None
        Shots per window of the rolling hit and indexing rates; None: about a
        twentieth of the run (at least 5, at most 500 shots).
    image_max_px : int
        Longest side, in px, of a rendered detector image; larger detectors are
        max-pooled down to it (so that every spot stays visible).
    residual_tiles : int
        Detectors with fewer than 4 panels have their positional residuals shown
        on a ``residual_tiles`` x ``residual_tiles`` grid of tiles per panel.
    title : str or None
        Page title; None: ``stillshot report: <directory name>``.
    reference_geometry : object or None
        A :class:`~stillshot.models.Detector` used to read the rendered shots'
        pixels (needed for CXI files, which carry no geometry); None: the
        detector of each shot's experiment.
    """

    n_images: int = 3
    rolling_window: int | None = None
    image_max_px: int = 1000
    residual_tiles: int = 6
    title: str | None = None
    reference_geometry: object | None = None

    def __post_init__(self):
        if self.n_images < 0:
            raise ValueError(f"n_images must be >= 0, got {self.n_images}")
        if self.rolling_window is not None and self.rolling_window < 1:
            raise ValueError(f"rolling_window must be >= 1, got {self.rolling_window}")
        if self.image_max_px < 100:
            raise ValueError(f"image_max_px must be >= 100, got {self.image_max_px}")
        if self.residual_tiles < 1:
            raise ValueError(f"residual_tiles must be >= 1, got {self.residual_tiles}")
