"""Still shots with ground truth, in memory: the library API of the simulator.

::

    from stillshot.simulate import SimulationSettings, Simulator

    sim = Simulator(SimulationSettings(layout="single_panel", n_fast=512, n_slow=512))
    shot = sim.shot(0)          # SimulatedShot: per-panel arrays + truth
    shot.data                   # tuple of int32 arrays (ADU), shape (n_slow, n_fast)
    shot.truth.reflections      # ReflectionTable: hkl, panel, true centroid, photons
    sim.shot(0, noise=False)    # float64 expected photons, no noise or detector defects

Physics (kinematic stills, DIALS conventions, see DESIGN.md)
------------------------------------------------------------
* Orientation U uniformly random (seeded), ``A = U·B``; the wavelength of
  each shot is λ·(1 + jitter·N(0, 1)).
* A reflection h with r = A·h has excitation error ε = |s0 + r| - 1/λ
  (1/Å) and partiality ``p = exp(-ε²/(2σ²))`` (1 on the Ewald sphere) with
  ``σ² = (0.4247/D)² + (|r|·η/1.1774)² + (|r|²·λ·Δ/(2·2.3548))²``: the
  reciprocal-lattice-point width of mosaic blocks of size D (FWHM 1/D), the
  mosaic half-width η (radians, HWHM) and the beam bandpass Δ (FWHM, Δλ/λ).
* Full intensity in photons ``I_full = scale·I(h)·P`` (I(h) the true
  intensity of :class:`~stillshot.simulate.structure.StructureModel`, P the
  polarization factor, ``scale = photons·(L/L_max)³`` for a crystal of size
  L drawn log-uniformly in ``crystal_size_um``); partial ``I_full·p``.
* The spot centre is DIALS's stills prediction (``StillsRayPredictor``:
  the rlp rotated onto the Ewald sphere about ŝ0 × r) intersected with the
  panels, so re-predicting with :func:`stillshot.geometry.predict_reflections`
  from the true A, beam and detector gives the true centroids.
* Spots are isotropic 2-D Gaussians (σ in px) integrated exactly over each
  pixel; background (constant + solvent ring, × solid angle × polarization)
  is added, then Poisson noise, gain, pedestal, read noise, defects, gaps
  and saturation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
from scipy.spatial.transform import Rotation

from stillshot.geometry import mm_to_px, panel_arrays, predict_stills
from stillshot.models import Beam, Crystal, Detector, Experiment, ExperimentList, ImageRef
from stillshot.simulate import _kernels as K
from stillshot.simulate.layouts import DEFAULT_DISTANCE_MM, LAYOUTS, perturb, single_panel
from stillshot.simulate.response import BackgroundModel, DetectorMaps, polarization_factor
from stillshot.simulate.structure import StructureModel
from stillshot.table import ReflectionTable

__all__ = ["LatticeTruth", "ShotTruth", "SimulatedShot", "SimulationSettings", "Simulator", "predict_lattice"]

_FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
_HWHM_TO_SIGMA = 1.0 / 1.1774100225154747


@dataclass(frozen=True)
class SimulationSettings:
    """Everything that defines a simulated run (the ``simulate`` parameter scope).

    Parameters
    ----------
    layout : str
        ``single_panel``, ``pilatus6m``, ``eiger4m``, ``cspad`` or ``jungfrau4m``.
    n_fast, n_slow : int
        Size of a ``single_panel`` layout, px.
    pixel_size : float
        Pixel size of a ``single_panel`` layout, mm.
    distance : float or None
        Sample-to-detector distance, mm (None: the layout's default; 150 mm
        for ``single_panel``).
    beam_centre : (float, float) or None
        Direct-beam position (fast, slow) in px on single-panel layouts (None:
        the layout's default).
    wavelength : float
        Nominal wavelength, Å.
    wavelength_jitter : float
        Per-shot fractional σ of the wavelength (dimensionless).
    bandpass : float
        Fractional FWHM of the spectrum within a shot, Δλ/λ.
    unit_cell : tuple
        a, b, c (Å), α, β, γ (degrees).
    space_group : str
        Space-group symbol or number.
    b_factor : float
        Wilson B of the random structure-factor model, Å².
    intensity_file : str or None
        MTZ of true intensities (cell and symmetry from the file) instead of
        the random model.
    half_mosaicity_deg : float
        Mosaic half-width η/2 (HWHM), degrees.
    domain_size_ang : float
        Mosaic block size, Å.
    crystal_size_um : (float, float)
        Range of crystal sizes, µm (log-uniform).
    photons : float
        Mean photons of a full low-resolution reflection (I = 1) from a
        crystal of the largest size.
    d_min : float or None
        High-resolution limit, Å (None: the detector corner).
    blank_fraction : float
        Probability that a shot has no crystal.
    second_lattice_fraction : float
        Probability that a (non-blank) shot holds a second, independently
        oriented lattice.
    spot_sigma_px : float
        Gaussian σ of the spot profile, px.
    background : BackgroundModel
        Diffuse background.
    gain, pedestal, read_noise : float or None
        ADU per photon, ADU offset, Gaussian read noise σ (ADU); None: the
        layout's gain, 0, 0.
    saturation : float or None
        Saturation level, ADU (the trusted maximum); None: the layout's.
    dead_fraction, hot_fraction : float
        Fractions of dead and hot pixels.
    perturb : bool
        Simulate with a TRUE geometry perturbed from the NOMINAL layout.
    perturb_level : int
        Hierarchy level of the perturbed groups.
    perturb_shift_px : (float, float)
        Range of in-plane shifts, px.
    perturb_rotation_deg : float
        Largest in-plane rotation, degrees.
    perturb_normal_mm : float
        Largest shift along the normal, mm.
    noise : bool
        Poisson/read noise and detector defects (False: expected photons).
    min_partiality : float
        Reflections with a smaller partiality are not simulated.
    seed : int
        Master seed.
    """

    layout: str = "pilatus6m"
    n_fast: int = 1024
    n_slow: int = 1024
    pixel_size: float = 0.172
    distance: float | None = None
    beam_centre: tuple | None = None
    wavelength: float = 1.3
    wavelength_jitter: float = 0.001
    bandpass: float = 0.003
    unit_cell: tuple = (79.1, 79.1, 38.4, 90.0, 90.0, 90.0)
    space_group: str = "P43212"
    b_factor: float = 20.0
    intensity_file: str | None = None
    half_mosaicity_deg: float = 0.02
    domain_size_ang: float = 2000.0
    crystal_size_um: tuple = (1.0, 5.0)
    photons: float = 2000.0
    d_min: float | None = None
    blank_fraction: float = 0.1
    second_lattice_fraction: float = 0.0
    spot_sigma_px: float = 1.0
    background: BackgroundModel = field(default_factory=BackgroundModel)
    gain: float | None = None
    pedestal: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    dead_fraction: float = 1e-4
    hot_fraction: float = 1e-5
    perturb: bool = False
    perturb_level: int = 1
    perturb_shift_px: tuple = (0.5, 2.0)
    perturb_rotation_deg: float = 0.1
    perturb_normal_mm: float = 0.0
    noise: bool = True
    min_partiality: float = 1e-3
    seed: int = 0


@dataclass(frozen=True, eq=False)
class LatticeTruth:
    """One crystal lattice of a shot.

    Attributes
    ----------
    crystal : Crystal
        True A (1/Å), space group, mosaicity and domain size.
    size_um : float
        Crystal size, µm.
    scale : float
        Photons of a full reflection per unit true intensity, before polarization.
    """

    crystal: Crystal
    size_um: float
    scale: float

    @property
    def A(self) -> np.ndarray:
        """Setting matrix U·B, 1/Å."""
        return self.crystal.A

    @property
    def U(self) -> np.ndarray:
        """Orientation matrix."""
        return self.crystal.U

    def to_dict(self) -> dict:
        """JSON-ready dict (A, U, B, cell, size, scale, mosaicity)."""
        c = self.crystal
        return {
            "A": c.A.tolist(),
            "U": c.U.tolist(),
            "B": c.B.tolist(),
            "unit_cell": list(c.cell_parameters),
            "space_group": c.space_group.hm,
            "half_mosaicity_deg": c.half_mosaicity_deg,
            "domain_size_ang": c.domain_size_ang,
            "size_um": self.size_um,
            "scale": self.scale,
        }


@dataclass(frozen=True, eq=False)
class ShotTruth:
    """What was simulated on one shot.

    Attributes
    ----------
    index : int
        Shot number in the run.
    beam : Beam
        The shot's beam (its own wavelength, Å; bandwidth the bandpass FWHM).
    blank : bool
        True when no crystal was in the beam.
    lattices : tuple of LatticeTruth
    reflections : ReflectionTable
        Every simulated reflection that reaches a panel: ``id`` (lattice),
        ``miller_index``, ``panel``, ``xyzcal.px`` (true centroid, px),
        ``xyzcal.mm``, ``s1``, ``rlp``, ``delpsical.rad``, ``excitation``
        (1/Å), ``partiality``, ``polarization``, ``d`` (Å),
        ``intensity.model`` (true I, arbitrary units), ``intensity.full`` and
        ``intensity.partial`` (photons), ``in_gap`` (the spot's box touches a
        masked gap), ``sigma_px``.
    """

    index: int
    beam: Beam
    blank: bool
    lattices: tuple
    reflections: ReflectionTable

    @property
    def wavelength(self) -> float:
        """Wavelength of the shot, Å."""
        return self.beam.wavelength

    def experiments(self, detector: Detector, image: ImageRef | None = None) -> ExperimentList:
        """One experiment per lattice (none for a blank), with the true crystal."""
        return ExperimentList(
            Experiment(beam=self.beam, detector=detector, image=image, crystal=lat.crystal)
            for lat in self.lattices
        )

    def to_dict(self) -> dict:
        """JSON-ready truth of the shot (see :mod:`stillshot.simulate.writers`)."""
        r = self.reflections
        refl = {
            "lattice": r["id"].tolist() if r.nrows else [],
            "hkl": r["miller_index"].tolist() if r.nrows else [],
            "panel": r["panel"].astype(int).tolist() if r.nrows else [],
            "xy_px": np.round(r["xyzcal.px"][:, :2], 5).tolist() if r.nrows else [],
            "intensity_full": np.round(r["intensity.full"], 4).tolist() if r.nrows else [],
            "intensity_partial": np.round(r["intensity.partial"], 4).tolist() if r.nrows else [],
            "partiality": np.round(r["partiality"], 6).tolist() if r.nrows else [],
            "intensity_model": np.round(r["intensity.model"], 6).tolist() if r.nrows else [],
            "d": np.round(r["d"], 4).tolist() if r.nrows else [],
            "in_gap": r["in_gap"].tolist() if r.nrows else [],
        }
        return {
            "index": self.index,
            "blank": self.blank,
            "wavelength": self.wavelength,
            "bandwidth": self.beam.bandwidth,
            "lattices": [lat.to_dict() for lat in self.lattices],
            "reflections": refl,
        }


@dataclass(frozen=True, eq=False)
class SimulatedShot:
    """One simulated shot in memory.

    Attributes
    ----------
    index : int
    beam : Beam
        The shot's beam.
    detector : Detector
        The TRUE detector the shot was rendered with.
    data : tuple of ndarray
        Per panel, shape (n_slow, n_fast): int32 ADU, or float64 expected
        photons for a noise-free shot.
    truth : ShotTruth
    """

    index: int
    beam: Beam
    detector: Detector
    data: tuple
    truth: ShotTruth


def predict_lattice(crystal: Crystal, beam: Beam, detector: Detector, structure: StructureModel, *,
                    d_min: float, bandpass: float, scale: float, spot_sigma_px: float,
                    min_partiality: float = 1e-3, min_photons: float = 1e-3) -> dict:
    """The reflections of one lattice on one shot, with partialities and photons.

    Parameters
    ----------
    crystal : Crystal
        A (1/Å), ``half_mosaicity_deg`` (degrees) and ``domain_size_ang`` (Å).
    beam : Beam
        The shot's beam (wavelength in Å).
    detector : Detector
    structure : StructureModel
    d_min : float
        Resolution limit, Å.
    bandpass : float
        Spectrum FWHM, Δλ/λ.
    scale : float
        Photons per unit intensity of a full reflection (before polarization).
    spot_sigma_px : float
        Spot σ, px.
    min_partiality : float
        Smallest partiality simulated.
    min_photons : float
        Reflections expected to give fewer photons (before polarization) are
        not simulated; systematic absences (0 photons) never are.

    Returns
    -------
    dict of ndarray
        The columns of :attr:`ShotTruth.reflections` (without ``id``).
    """
    A = crystal.A
    s0 = beam.s0
    wl = beam.wavelength
    real = np.linalg.inv(A)
    lim = np.floor(np.linalg.norm(real, axis=1) / d_min).astype(np.int64)
    dom = crystal.domain_size_ang or 0.0
    sig_dom = _FWHM_TO_SIGMA / dom if dom > 0 else 1e-7
    eta = math.radians(crystal.half_mosaicity_deg or 0.0) * _HWHM_TO_SIGMA
    bw_coeff = 0.5 * wl * bandpass * _FWHM_TO_SIGMA
    nsig = math.sqrt(-2.0 * math.log(min_partiality))
    hkl, eps, sig = K.near_ewald_candidates(np.ascontiguousarray(A), np.ascontiguousarray(s0), float(d_min),
                                            lim, sig_dom, eta, bw_coeff, nsig)
    keep = ~structure.absent(hkl)
    hkl, eps, sig = hkl[keep], eps[keep], sig[keep]
    model = structure.intensities(hkl)
    part = np.exp(-0.5 * (eps / sig) ** 2)
    keep = scale * model * part >= min_photons
    hkl, eps, sig, model, part = hkl[keep], eps[keep], sig[keep], model[keep], part[keep]
    s1, delpsi = predict_stills(A, s0, hkl)
    ok = np.isfinite(delpsi)
    hkl, eps, sig, s1, delpsi, model, part = hkl[ok], eps[ok], sig[ok], s1[ok], delpsi[ok], model[ok], part[ok]
    pa = panel_arrays(detector)
    panel, xy_mm = K.first_panel_hits(pa.d_inverse, pa.size_mm, np.ascontiguousarray(s1))
    valid = panel >= 0
    hkl, eps, sig, s1, delpsi = hkl[valid], eps[valid], sig[valid], s1[valid], delpsi[valid]
    model, part, panel, xy_mm = model[valid], part[valid], panel[valid], xy_mm[valid]
    xy_px = mm_to_px(pa, panel, xy_mm) if len(panel) else np.zeros((0, 2))
    rlp = hkl.astype(np.float64) @ A.T
    d = 1.0 / np.linalg.norm(rlp, axis=1)
    pol = polarization_factor(s1 * wl, beam)
    full = scale * model * pol
    n = len(hkl)
    z = np.zeros((n, 1))
    in_gap = np.zeros(n, dtype=bool)
    r = math.ceil(5.0 * spot_sigma_px) + 1.0  # the rendered box (see Simulator.spot_photons)
    for p_index in np.unique(panel):
        rects = detector[int(p_index)].mask
        if not rects:
            continue
        sel = np.nonzero(panel == p_index)[0]
        x, y = xy_px[sel, 0], xy_px[sel, 1]
        hit = np.zeros(len(sel), dtype=bool)
        for f0, sl0, f1, sl1 in rects:
            hit |= (x + r > f0) & (x - r < f1) & (y + r > sl0) & (y - r < sl1)
        in_gap[sel] = hit
    return {
        "miller_index": hkl.astype(np.int32),
        "panel": panel.astype(np.uint64),
        "xyzcal.px": np.hstack([xy_px, z]),
        "xyzcal.mm": np.hstack([xy_mm, z]),
        "s1": s1,
        "rlp": rlp,
        "delpsical.rad": delpsi,
        "excitation": eps,
        "partiality": part,
        "polarization": pol,
        "d": d,
        "intensity.model": model,
        "intensity.full": full,
        "intensity.partial": full * part,
        "in_gap": in_gap,
        "sigma_px": np.full(n, float(spot_sigma_px)),
    }


def _with_response(detector: Detector, gain, pedestal, saturation) -> Detector:
    """The detector with gain (ADU/photon), pedestal (ADU) and saturation (ADU) set."""
    panels = []
    for p in detector:
        kw = {}
        if gain is not None:
            kw["gain"] = float(gain)
        if pedestal is not None:
            kw["pedestal"] = float(pedestal)
        if saturation is not None:
            kw["trusted_range"] = (float(p.trusted_range[0]), float(saturation))
        panels.append(replace(p, **kw) if kw else p)
    return Detector(tuple(panels), detector.root)


def build_detector(settings: SimulationSettings) -> Detector:
    """The NOMINAL detector of the settings' layout (with gain/pedestal/saturation overrides)."""
    if settings.layout == "single_panel":
        dist = 150.0 if settings.distance is None else float(settings.distance)
        det = single_panel(settings.n_fast, settings.n_slow, settings.pixel_size, dist,
                           settings.beam_centre, trusted_range=(-1.0, 1.0e6))
    elif settings.layout in LAYOUTS:
        builder = LAYOUTS[settings.layout]
        dist = DEFAULT_DISTANCE_MM[settings.layout] if settings.distance is None else float(settings.distance)
        if settings.beam_centre is not None and settings.layout in ("pilatus6m", "eiger4m"):
            det = builder(dist, tuple(settings.beam_centre))
        else:
            det = builder(dist)
    else:
        known = ", ".join(("single_panel",) + tuple(LAYOUTS))
        raise ValueError(f"unknown detector layout {settings.layout!r}; known: {known}")
    return _with_response(det, settings.gain, settings.pedestal, settings.saturation)


class Simulator:
    """Makes simulated shots (in memory) for a run.

    Parameters
    ----------
    settings : SimulationSettings
    detector : Detector, optional
        Use this NOMINAL detector instead of the settings' layout.
    structure : StructureModel, optional
        Use these true intensities instead of the settings' model.

    Attributes
    ----------
    nominal_detector : Detector
        The layout as designed (what image headers carry).
    detector : Detector
        The TRUE detector shots are rendered with (the nominal one unless
        ``settings.perturb``).
    beam : Beam
        The nominal beam.
    structure : StructureModel
    maps : DetectorMaps
        Per-pixel maps (built on first use).
    max_two_sin_theta : float
        Largest 2·sin θ on the detector (the corner resolution is λ / this).
    """

    def __init__(self, settings: SimulationSettings | None = None, *, detector: Detector | None = None,
                 structure: StructureModel | None = None):
        self.settings = s = settings or SimulationSettings()
        if s.crystal_size_um[0] <= 0 or s.crystal_size_um[1] < s.crystal_size_um[0]:
            raise ValueError(f"crystal_size_um must be 0 < min ≤ max, got {s.crystal_size_um}")
        self.nominal_detector = detector if detector is not None else build_detector(s)
        if s.perturb:
            self.detector = perturb(self.nominal_detector, s.perturb_level, tuple(s.perturb_shift_px),
                                    s.perturb_rotation_deg, s.seed, shift_normal_mm=s.perturb_normal_mm)
        else:
            self.detector = self.nominal_detector
        self.beam = Beam(wavelength=float(s.wavelength), bandwidth=float(s.bandpass))
        if structure is None:
            if s.intensity_file:
                structure = StructureModel.from_mtz(s.intensity_file)
            else:
                structure = StructureModel(tuple(s.unit_cell), s.space_group, b_factor=s.b_factor,
                                           seed=_derive(s.seed, 0x5F))
        self.structure = structure
        self._maps: DetectorMaps | None = None
        self.max_two_sin_theta = _max_two_sin_theta(self.detector, self.beam)

    @property
    def maps(self) -> DetectorMaps:
        """Per-pixel maps of the true detector (built on first use: rendering needs them)."""
        if self._maps is None:
            s = self.settings
            self._maps = DetectorMaps(self.detector, self.beam, dead_fraction=s.dead_fraction if s.noise else 0.0,
                                      hot_fraction=s.hot_fraction if s.noise else 0.0, seed=s.seed)
        return self._maps

    # -- per shot ------------------------------------------------------------------
    def d_min(self, wavelength: float) -> float:
        """Resolution limit (Å) at a wavelength: the settings' or the detector corner's."""
        if self.settings.d_min is not None:
            return float(self.settings.d_min)
        return wavelength / self.max_two_sin_theta

    def draw(self, index: int) -> ShotTruth:
        """The random choices and reflections of shot ``index`` (no pixels)."""
        s = self.settings
        rng = np.random.default_rng(np.random.SeedSequence([int(s.seed), int(index), 0x51]))
        wl = float(s.wavelength) * (1.0 + float(s.wavelength_jitter) * rng.standard_normal())
        blank = bool(rng.random() < s.blank_fraction)
        n_lat = 0 if blank else (2 if rng.random() < s.second_lattice_fraction else 1)
        beam = replace(self.beam, wavelength=wl)
        lo, hi = (float(v) for v in s.crystal_size_um)
        lattices = []
        tables = []
        for k in range(n_lat):
            U = Rotation.random(random_state=rng).as_matrix()
            size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            scale = float(s.photons) * (size / hi) ** 3
            crystal = Crystal(U @ self.structure.B, self.structure.space_group,
                              half_mosaicity_deg=float(s.half_mosaicity_deg),
                              domain_size_ang=float(s.domain_size_ang))
            lattices.append(LatticeTruth(crystal, size, scale))
            cols = predict_lattice(crystal, beam, self.detector, self.structure, d_min=self.d_min(wl),
                                   bandpass=float(s.bandpass), scale=scale, spot_sigma_px=float(s.spot_sigma_px),
                                   min_partiality=float(s.min_partiality))
            cols["id"] = np.full(len(cols["d"]), k, dtype=np.int32)
            tables.append(ReflectionTable(cols))
        refl = ReflectionTable.concat(tables) if tables else ReflectionTable.empty(0)
        return ShotTruth(int(index), beam, blank, tuple(lattices), refl)

    def spot_photons(self, truth: ShotTruth) -> list:
        """Per-panel float32 buffers of expected spot photons (no background)."""
        bufs = [np.zeros(p.shape, dtype=np.float32) for p in self.detector]
        r = truth.reflections
        if r.nrows == 0:
            return bufs
        panel = r["panel"].astype(np.int64)
        xy = r["xyzcal.px"]
        for p_index in np.unique(panel):
            sel = panel == p_index
            K.render_spots_into(bufs[p_index], np.ascontiguousarray(xy[sel, 0]), np.ascontiguousarray(xy[sel, 1]),
                                np.ascontiguousarray(r["sigma_px"][sel]),
                                np.ascontiguousarray(r["intensity.partial"][sel]), 5.0)
        return bufs

    def render(self, truth: ShotTruth, *, noise: bool | None = None) -> tuple:
        """Pixels of a shot from its truth.

        Parameters
        ----------
        truth : ShotTruth
        noise : bool, optional
            Override ``settings.noise``.

        Returns
        -------
        tuple of ndarray
            int32 ADU per panel (noise), or float64 expected photons (no noise).
        """
        s = self.settings
        noise = s.noise if noise is None else noise
        wl = truth.wavelength
        table, t0, dt = s.background.table(self.max_two_sin_theta / wl * 1.001)
        spots = self.spot_photons(truth)
        key0 = _derive(s.seed, truth.index, 0x7E)
        keys = _panel_keys(key0, len(self.detector))
        out = []
        for p_index, panel in enumerate(self.detector):
            tst, geom = self.maps.two_sin_theta[p_index], self.maps.geom[p_index]
            if not noise:
                img = K.expected_photons(spots[p_index], tst, geom, table, t0, dt, 1.0 / wl)
                for f0, sl0, f1, sl1 in panel.mask:
                    img[sl0:sl1, f0:f1] = 0.0
                out.append(img)
                continue
            lo, hi = (float(v) for v in panel.trusted_range)
            ped = float(panel.pedestal)
            read = 0.0 if s.read_noise is None else float(s.read_noise)
            img = K.expose(spots[p_index], tst, geom, table, t0, dt, 1.0 / wl, float(panel.gain), ped, read,
                           lo, hi, keys[p_index])
            flat = img.reshape(-1)
            flat[self.maps.dead[p_index]] = int(round(ped))
            flat[self.maps.hot[p_index]] = int(round(min(hi - 1.0, 0.5 * hi + ped)))
            gap_value = int(math.floor(lo))
            for f0, sl0, f1, sl1 in panel.mask:
                img[sl0:sl1, f0:f1] = gap_value
            out.append(img)
        return tuple(out)

    def shot(self, index: int, *, noise: bool | None = None) -> SimulatedShot:
        """Simulate shot ``index`` (reproducible: same settings and index, same shot)."""
        truth = self.draw(index)
        return SimulatedShot(int(index), truth.beam, self.detector, self.render(truth, noise=noise), truth)

    def shots(self, n: int, start: int = 0, *, noise: bool | None = None) -> Iterator[SimulatedShot]:
        """Shots ``start .. start+n-1``."""
        for i in range(start, start + n):
            yield self.shot(i, noise=noise)


def _max_two_sin_theta(detector: Detector, beam: Beam) -> float:
    """Largest 2·sin θ over the pixel centres of a detector of flat panels.

    On a plane, the region within a given angle of the beam is convex, so the
    maximum over a panel's (rectangular) grid of pixel centres is at one of
    its four corner pixels.
    """
    best = 0.0
    us0 = beam.unit_s0
    for p in detector:
        fx, fy = p.pixel_size
        for i in (0.5, p.n_fast - 0.5):
            for j in (0.5, p.n_slow - 0.5):
                lab = p.origin + i * fx * p.fast_axis + j * fy * p.slow_axis
                c = float(np.clip(lab @ us0 / np.linalg.norm(lab), -1.0, 1.0))
                best = max(best, math.sqrt(2.0 * (1.0 - c)))
    return best


def _panel_keys(key: int, n: int) -> np.ndarray:
    """n uint64 keys derived from one key (SplitMix64 of key + i·golden ratio)."""
    mask = 0xFFFFFFFFFFFFFFFF
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        z = (key + (i + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out[i] = z ^ (z >> 31)
    return out


def _derive(*values: int) -> int:
    """A 63-bit integer derived from integers (for seeds and keys)."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))
