"""Detector layouts for simulation, and perturbed ("true") geometries.

Every builder returns a :class:`~stillshot.models.Detector` in DIALS/dxtbx
conventions (lab frame in mm, beam along -z, sample at the origin):

=================  ===========================  =========  ===============================
builder            panels                       pixel mm   hierarchy
=================  ===========================  =========  ===============================
``single_panel``   1 (any size)                 any        flat
``pilatus6m``      1 of 2463 × 2527 px          0.172      flat, module gaps as mask rects
``eiger4m``        1 of 2070 × 2167 px          0.075      flat, module gaps as mask rects
``cspad``          64 ASICs of 194 × 185 px     0.10992    4 quadrants > 8 sensors > 2 ASICs
``jungfrau4m``     8 modules of 1024 × 512 px   0.075      root > 8 modules
=================  ===========================  =========  ===============================

Single-panel layouts follow the Pilatus miniCBF convention as dxtbx reads it:
fast axis +x, slow axis -y, ``origin = (-bx·px, +by·px, -distance)`` for a beam
centre ``(bx, by)`` in px.

:func:`perturb` turns such a NOMINAL geometry into a TRUE one by random
in-plane shifts and rotations of the groups at one hierarchy level, for
metrology tests.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from stillshot.models import Detector, Frame, Group, Panel

__all__ = [
    "LAYOUTS",
    "cspad",
    "eiger4m",
    "jungfrau4m",
    "make_layout",
    "perturb",
    "pilatus6m",
    "single_panel",
]


def single_panel(
    n_fast: int,
    n_slow: int,
    pixel_size_mm: float,
    distance_mm: float,
    beam_centre_px: tuple[float, float] | None = None,
    name: str = "Panel",
    *,
    trusted_range: tuple[float, float] = (-1.0, 1.0e6),
    mask: tuple = (),
    gain: float = 1.0,
    pedestal: float = 0.0,
    thickness_mm: float = 0.45,
    material: str = "Si",
    detector_name: str = "",
) -> Detector:
    """A flat single-panel detector normal to the beam (Pilatus/Eiger convention).

    Parameters
    ----------
    n_fast, n_slow : int
        Panel size in px.
    pixel_size_mm : float
        Square pixel size, mm.
    distance_mm : float
        Sample-to-detector distance, mm.
    beam_centre_px : (float, float), optional
        Direct-beam position (x=fast, y=slow) in px, pixel-edge convention
        (the centre of pixel i is at i + 0.5); default the panel centre.
    name : str
        Panel name.
    trusted_range : (float, float)
        Trusted pixel values (min, max) in ADU; values ≤ min or ≥ max are
        untrusted (min flags dead/gap pixels, max is the saturation level).
    mask : tuple of (f0, s0, f1, s1)
        Untrusted rectangles (module gaps) in px, end-exclusive.
    gain : float
        ADU per photon.
    pedestal : float
        Pedestal, ADU.
    thickness_mm : float
        Sensor thickness, mm (informational: the simulation has no parallax).
    material : str
        Sensor material.
    detector_name : str
        Name of the root group (written to image headers, e.g. ``PILATUS3 6M``).

    Returns
    -------
    Detector
    """
    if beam_centre_px is None:
        beam_centre_px = (n_fast / 2.0, n_slow / 2.0)
    bx, by = (float(v) for v in beam_centre_px)
    px = float(pixel_size_mm)
    frame = Frame((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (-bx * px, by * px, -float(distance_mm)))
    panel = Panel(
        name=name,
        frame=frame,
        local_frame=frame,
        pixel_size=(px, px),
        image_size=(int(n_fast), int(n_slow)),
        trusted_range=tuple(float(v) for v in trusted_range),
        thickness=float(thickness_mm),
        material=material,
        gain=float(gain),
        pedestal=float(pedestal),
        mask=tuple(tuple(int(v) for v in m) for m in mask),
    )
    return Detector.flat([panel], name=detector_name)


def _module_gap_mask(n_fast, n_slow, mod_fast, mod_slow, gap_fast, gap_slow) -> tuple:
    """Mask rects (f0, s0, f1, s1) of the inter-module gaps of a tiled single panel."""
    rects = []
    f = mod_fast
    while f < n_fast:
        rects.append((f, 0, f + gap_fast, n_slow))
        f += mod_fast + gap_fast
    s = mod_slow
    while s < n_slow:
        rects.append((0, s, n_fast, s + gap_slow))
        s += mod_slow + gap_slow
    return tuple(rects)


def pilatus6m(distance_mm: float = 250.0, beam_centre_px: tuple[float, float] | None = None) -> Detector:
    """A Pilatus 6M: 2463 × 2527 px of 0.172 mm, 5 × 12 modules of 487 × 195 px.

    Module gaps (7 px along fast, 17 px along slow) are mask rectangles, as
    dxtbx sets them.  Trusted range (-1, 1048500) counts, gain 1.

    Parameters
    ----------
    distance_mm : float
        Sample-to-detector distance, mm.
    beam_centre_px : (float, float), optional
        Direct-beam position in px; default (1231.5, 1263.5) (near the centre).
    """
    nf, ns = 2463, 2527
    mask = _module_gap_mask(nf, ns, 487, 195, 7, 17)
    return single_panel(
        nf, ns, 0.172, distance_mm, beam_centre_px or (1231.5, 1263.5), "Panel",
        trusted_range=(-1.0, 1048500.0), mask=mask, thickness_mm=0.45, detector_name="PILATUS3 6M",
    )


def eiger4m(distance_mm: float = 120.0, beam_centre_px: tuple[float, float] | None = None) -> Detector:
    """An Eiger 4M: 2070 × 2167 px of 0.075 mm, 2 × 4 modules of 1030 × 514 px.

    Module gaps (10 px along fast, 37 px along slow) are mask rectangles.
    Trusted range (-1, 65535) counts (16-bit readout), gain 1.

    Parameters
    ----------
    distance_mm : float
        Sample-to-detector distance, mm.
    beam_centre_px : (float, float), optional
        Direct-beam position in px; default the panel centre.
    """
    nf, ns = 2070, 2167
    mask = _module_gap_mask(nf, ns, 1030, 514, 10, 37)
    return single_panel(
        nf, ns, 0.075, distance_mm, beam_centre_px or (1035.0, 1083.5), "Panel",
        trusted_range=(-1.0, 65535.0), mask=mask, thickness_mm=0.45, detector_name="EIGER X 4M",
    )


# --- CSPAD --------------------------------------------------------------------------------
#: Sensor centres (mm) and fast axes in the frame of quadrant 0, after the
#: metrology of the LCLS CXI CSPAD (rounded); quadrant q is quadrant 0 turned
#: by -90°·q about the beam.
_CSPAD_SENSORS_Q0 = (
    ((11.4, -23.3), (0.0, 1.0)),
    ((34.8, -23.3), (0.0, 1.0)),
    ((-23.5, -11.0), (1.0, 0.0)),
    ((-23.5, -34.4), (1.0, 0.0)),
    ((-11.4, 23.3), (0.0, -1.0)),
    ((-34.8, 23.3), (0.0, -1.0)),
    ((23.5, 33.3), (1.0, 0.0)),
    ((23.5, 9.9), (1.0, 0.0)),
)
#: Centre of quadrant 0 relative to the detector centre, mm.
_CSPAD_Q0_CENTRE = (-50.3, 41.3)
_CSPAD_ASIC = (194, 185)
_CSPAD_PIXEL = 0.10992


def _rot_z(deg: float) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def cspad(distance_mm: float = 100.0, *, gain: float = 25.0, trusted_range=(-400.0, 90000.0)) -> Detector:
    """A CSPAD-like detector: 64 ASICs of 194 × 185 px (0.10992 mm) in a hierarchy.

    The tree is root ``D0`` > 4 quadrants ``D0Qq`` > 8 sensors ``D0QqSs`` > 2
    ASICs ``ARRAY_D0QqSsAa`` (panels, in that depth-first order: panel index
    = 16·q + 2·s + a), as cctbx.xfel names them.  Each sensor holds two ASICs
    side by side with a 3-px (0.33 mm) gap; quadrant q is quadrant 0 turned by
    -90°·q about the beam, which passes through the central hole.

    Parameters
    ----------
    distance_mm : float
        Sample-to-detector distance, mm.
    gain : float
        ADU per photon (25 for the high-gain mode).
    trusted_range : (float, float)
        Trusted values, ADU.
    """
    root = Frame((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -float(distance_mm)))
    nf, ns = _CSPAD_ASIC
    px = _CSPAD_PIXEL
    half_w = (2 * nf * px + 0.33) / 2.0  # sensor half-width along its fast axis
    asic_origins = ((-half_w, ns * px / 2.0), (-half_w + nf * px + 0.33, ns * px / 2.0))
    panels: list[Panel] = []
    quads = []
    for q in range(4):
        rq = _rot_z(-90.0 * q)
        qc = rq @ np.array([*_CSPAD_Q0_CENTRE, 0.0])
        q_local = Frame(rq[:, 0], rq[:, 1], qc)
        q_frame = root.compose(q_local)
        sensors = []
        for s, ((cx, cy), (fx, fy)) in enumerate(_CSPAD_SENSORS_Q0):
            s_local = Frame((fx, fy, 0.0), (-fy, fx, 0.0), (cx, cy, 0.0))
            s_frame = q_frame.compose(s_local)
            kids = []
            for a, (ox, oy) in enumerate(asic_origins):
                a_local = Frame((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (ox, oy, 0.0))
                index = len(panels)
                panels.append(
                    Panel(
                        name=f"ARRAY_D0Q{q}S{s}A{a}",
                        frame=s_frame.compose(a_local),
                        local_frame=a_local,
                        pixel_size=(px, px),
                        image_size=(nf, ns),
                        trusted_range=tuple(float(v) for v in trusted_range),
                        thickness=0.5,
                        material="Si",
                        gain=float(gain),
                    )
                )
                kids.append(index)
            sensors.append((f"D0Q{q}S{s}", s_frame, tuple(kids)))
        quads.append((f"D0Q{q}", q_frame, tuple(sensors)))
    return Detector.from_global_tree(panels, ("D0", root, tuple(quads)))


def jungfrau4m(distance_mm: float = 100.0, *, gain: float = 10.0, trusted_range=(-100.0, 1.0e7)) -> Detector:
    """A Jungfrau-4M-like detector: 8 modules of 1024 × 512 px (0.075 mm).

    Modules sit in 2 columns × 4 rows (gaps 0.6 mm between columns, 2.7 mm
    between rows) under one root group ``JF4M``; the beam passes through the
    centre (between modules).  Integrating detector: ``gain`` ADU per photon.

    Parameters
    ----------
    distance_mm : float
        Sample-to-detector distance, mm.
    gain : float
        ADU per photon (roughly the photon energy in 0.1 keV units).
    trusted_range : (float, float)
        Trusted values, ADU.
    """
    root = Frame((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -float(distance_mm)))
    nf, ns, px = 1024, 512, 0.075
    w, h = nf * px, ns * px
    gx, gy = 0.6, 2.7
    panels = []
    for row in range(4):
        for col in range(2):
            x0 = -w - gx / 2.0 if col == 0 else gx / 2.0
            y0 = -2.0 * h - 1.5 * gy + row * (h + gy)
            local = Frame((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (x0, y0, 0.0))
            panels.append(
                Panel(
                    name=f"M{len(panels)}",
                    frame=root.compose(local),
                    local_frame=local,
                    pixel_size=(px, px),
                    image_size=(nf, ns),
                    trusted_range=tuple(float(v) for v in trusted_range),
                    thickness=0.32,
                    material="Si",
                    gain=float(gain),
                )
            )
    return Detector.from_global_tree(panels, ("JF4M", root, tuple(range(len(panels)))))


#: Layout builders by name; each takes ``distance_mm`` as its first argument.
LAYOUTS: dict[str, Callable[..., Detector]] = {
    "pilatus6m": pilatus6m,
    "eiger4m": eiger4m,
    "cspad": cspad,
    "jungfrau4m": jungfrau4m,
}

#: Default sample-to-detector distances (mm) for each layout.
DEFAULT_DISTANCE_MM = {"pilatus6m": 250.0, "eiger4m": 120.0, "cspad": 100.0, "jungfrau4m": 100.0}


def make_layout(name: str, distance_mm: float | None = None) -> Detector:
    """Build a named layout (see :data:`LAYOUTS`) at a distance (mm; default per layout)."""
    try:
        builder = LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown detector layout {name!r}; known: {', '.join(LAYOUTS)}") from None
    return builder(DEFAULT_DISTANCE_MM[name] if distance_mm is None else float(distance_mm))


# --- perturbation ---------------------------------------------------------------------------
def _rotate_in_plane(local: Frame, axis: np.ndarray, angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Fast and slow axes of ``local`` turned by ``angle_rad`` about ``axis`` (parent coords)."""
    k = axis / np.linalg.norm(axis)
    c, s = np.cos(angle_rad), np.sin(angle_rad)

    def rot(v):
        return v * c + np.cross(k, v) * s + k * (k @ v) * (1 - c)

    return rot(local.fast), rot(local.slow)


def perturb(
    detector: Detector,
    level: int = 1,
    shift_px_range: tuple[float, float] = (0.5, 2.0),
    rotation_deg: float = 0.1,
    seed: int = 0,
    *,
    shift_normal_mm: float = 0.0,
) -> Detector:
    """A TRUE geometry made from a NOMINAL one by random moves of its groups.

    Every group at hierarchy depth ``level`` (0 = the whole detector; for a
    CSPAD 1 = quadrants, 2 = sensors, 3 = ASICs) is shifted in its own plane
    by a distance drawn uniformly in ``shift_px_range`` (px of its first
    panel) in a uniformly random direction, turned about its own normal
    through its origin by an angle drawn uniformly in
    [-``rotation_deg``, +``rotation_deg``], and optionally moved along its
    normal.  Children move with their group.

    Parameters
    ----------
    detector : Detector
        The nominal geometry.
    level : int
        Hierarchy depth of the groups moved.
    shift_px_range : (float, float)
        Range of in-plane shift magnitudes, px.
    rotation_deg : float
        Largest in-plane rotation, degrees.
    seed : int
        Random seed (same seed, same TRUE geometry).
    shift_normal_mm : float
        Largest shift along the group normal, mm (uniform in ±value).

    Returns
    -------
    Detector
        The perturbed detector; panel order, names and hierarchy unchanged.
    """
    lo, hi = (float(v) for v in shift_px_range)
    if lo < 0 or hi < lo:
        raise ValueError(f"shift_px_range must be 0 ≤ lo ≤ hi, got {shift_px_range}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E3779B9, int(level)]))
    n_groups = len(detector.groups_at_level(level))
    out = detector
    for k in range(n_groups):
        group = out.groups_at_level(level)[k]
        px = float(out.panels[group.panel_indices()[0]].pixel_size[0])
        mag = rng.uniform(lo, hi) * px
        phi = rng.uniform(0.0, 2.0 * np.pi)
        angle = np.radians(rng.uniform(-rotation_deg, rotation_deg))
        dz = rng.uniform(-shift_normal_mm, shift_normal_mm) if shift_normal_mm else 0.0
        local = group.local_frame
        normal = np.cross(local.fast, local.slow)
        fast, slow = _rotate_in_plane(local, normal, angle)
        origin = local.origin + mag * (np.cos(phi) * local.fast + np.sin(phi) * local.slow) + dz * normal
        new_local = Frame(fast, slow, origin)
        if any(g is group for g in out.root.groups()):
            out = out.with_local_frame(group, new_local)
        else:  # a panel standing as its own pseudo-group
            out = out.with_panel_local_frame(group.panel_indices()[0], new_local)
    return out
