"""Detector panels and the detector hierarchy (DIALS/dxtbx conventions).

A detector is a tree of groups (detector > quadrants > sensors > ASICs for a
CSPAD) whose leaves are panels.  Each node stores its *local* frame, relative
to its parent, as DIALS writes it in ``.expt`` files; global (lab) frames are
composed once, when the detector is built.  Pixel ``(x, y)`` of a panel (x
fast, y slow, in px) has its centre at
``origin + (x + 0.5)·px_fast·fast + (y + 0.5)·px_slow·slow`` — equivalently the
mm coordinate of pixel-edge position ``(x, y)`` is ``(x·px_fast, y·px_slow)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence, Union

import numpy as np

from stillshot.models.frame import Frame

#: Keys of a DIALS panel / group dict that are modelled as fields.
_FRAME_KEYS = ("fast_axis", "slow_axis", "origin")
_PANEL_KEYS = _FRAME_KEYS + (
    "name",
    "type",
    "image_size",
    "pixel_size",
    "trusted_range",
    "thickness",
    "material",
    "mu",
    "gain",
    "pedestal",
    "identifier",
    "mask",
    "raw_image_offset",
    "px_mm_strategy",
)

#: Defaults DIALS writes for group (non-panel) nodes of the hierarchy.
_GROUP_DEFAULTS = {
    "type": "",
    "raw_image_offset": [0, 0],
    "image_size": [0, 0],
    "pixel_size": [0.0, 0.0],
    "trusted_range": [0.0, 0.0],
    "thickness": 0.0,
    "material": "",
    "mu": 0.0,
    "identifier": "",
    "mask": [],
    "gain": 1.0,
    "pedestal": 0.0,
    "px_mm_strategy": {"type": "SimplePxMmStrategy"},
}


@dataclass(frozen=True, eq=False)
class Panel:
    """One flat pixel array.

    Parameters
    ----------
    name : str
        Panel name (e.g. ``ARRAY_D0Q0S0A0`` for a CSPAD ASIC).
    frame : Frame
        Global (lab) frame: unit fast and slow axes, origin in mm.
    local_frame : Frame
        Frame relative to the parent group (equal to ``frame`` for a flat
        detector).
    pixel_size : tuple of float
        (fast, slow) pixel size in mm.
    image_size : tuple of int
        (n_fast, n_slow) in px.
    trusted_range : tuple of float
        (min, max) trusted pixel value in ADU; values outside are masked.
    thickness : float
        Sensor thickness in mm.
    material : str
        Sensor material (``"Si"``, ``"CdTe"``…).
    mu : float
        Linear attenuation coefficient of the sensor in 1/mm.
    gain : float
        ADU per photon.
    pedestal : float
        Constant pedestal in ADU.
    type : str
        DIALS panel type (``SENSOR_PAD``, ``SENSOR_CCD``…).
    mask : tuple
        Untrusted rectangles ``(f0, s0, f1, s1)`` in px (module gaps).
    raw_image_offset : tuple of int
        Offset of the panel in the raw image, as DIALS stores it.
    identifier : str
        Free-form identifier.
    px_mm_strategy : dict
        DIALS's px↔mm strategy, kept for round trips.
    extra : dict
        Unmodelled DIALS keys, written back unchanged.
    dict_keys : tuple or None
        Keys of the DIALS dict this panel was read from (older DIALS files omit
        some); ``to_dict`` writes only these.  None writes every key.
    """

    name: str
    frame: Frame
    local_frame: Frame
    pixel_size: tuple
    image_size: tuple
    trusted_range: tuple = (-1.0, 1.0e6)
    thickness: float = 0.0
    material: str = ""
    mu: float = 0.0
    gain: float = 1.0
    pedestal: float = 0.0
    type: str = "SENSOR_PAD"
    mask: tuple = ()
    raw_image_offset: tuple = (0, 0)
    identifier: str = ""
    px_mm_strategy: dict = field(default_factory=lambda: {"type": "SimplePxMmStrategy"})
    extra: dict = field(default_factory=dict)
    dict_keys: tuple | None = None

    # -- geometry -------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        """Lab-frame origin of the panel's pixel (0, 0) corner, mm."""
        return self.frame.origin

    @property
    def fast_axis(self) -> np.ndarray:
        """Unit fast axis in the lab frame."""
        return self.frame.fast

    @property
    def slow_axis(self) -> np.ndarray:
        """Unit slow axis in the lab frame."""
        return self.frame.slow

    @property
    def normal(self) -> np.ndarray:
        """Unit normal, fast × slow."""
        return self.frame.normal

    @property
    def n_fast(self) -> int:
        """Number of pixels along the fast axis."""
        return int(self.image_size[0])

    @property
    def n_slow(self) -> int:
        """Number of pixels along the slow axis."""
        return int(self.image_size[1])

    @property
    def shape(self) -> tuple:
        """Numpy shape of the panel's data array, (n_slow, n_fast)."""
        return (self.n_slow, self.n_fast)

    @property
    def d_matrix(self) -> np.ndarray:
        """DIALS d matrix (columns fast, slow, origin), mm."""
        return self.frame.d_matrix

    def px_to_mm(self, xy_px: np.ndarray) -> np.ndarray:
        """Pixel (x=fast, y=slow) coordinates to in-plane mm (no parallax).

        Parameters
        ----------
        xy_px : ndarray, shape (..., 2)
            Positions in px (pixel-edge convention, centre of pixel i at i+0.5).

        Returns
        -------
        ndarray, shape (..., 2)
            Positions in mm in the panel plane.
        """
        return np.asarray(xy_px, dtype=np.float64) * np.asarray(self.pixel_size, dtype=np.float64)

    def mm_to_px(self, xy_mm: np.ndarray) -> np.ndarray:
        """In-plane mm to pixel coordinates (no parallax); inverse of px_to_mm."""
        return np.asarray(xy_mm, dtype=np.float64) / np.asarray(self.pixel_size, dtype=np.float64)

    def lab_coord(self, xy_mm: np.ndarray) -> np.ndarray:
        """In-plane mm coordinates (..., 2) to lab-frame points (..., 3) in mm."""
        xy = np.asarray(xy_mm, dtype=np.float64)
        return self.origin + xy[..., :1] * self.fast_axis + xy[..., 1:2] * self.slow_axis

    def ray_intersection(self, s1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where rays from the sample along ``s1`` hit the panel plane.

        Parameters
        ----------
        s1 : ndarray, shape (N, 3)
            Ray directions (any length; 1/Å for diffracted beam vectors).

        Returns
        -------
        xy_mm : ndarray, shape (N, 2)
            In-plane mm coordinates (NaN where the ray misses the plane on the
            forward side).
        valid : ndarray of bool, shape (N,)
            True where the ray hits the plane in front of the sample.
        """
        s1 = np.atleast_2d(np.asarray(s1, dtype=np.float64))
        big_d = np.linalg.inv(self.d_matrix)
        v = s1 @ big_d.T
        valid = v[:, 2] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            xy = v[:, :2] / v[:, 2:3]
        xy[~valid] = np.nan
        return xy, valid

    def pixel_lab_coords(self) -> np.ndarray:
        """Lab-frame centres of every pixel, shape (n_slow, n_fast, 3), mm."""
        px_f, px_s = self.pixel_size
        x = (np.arange(self.n_fast) + 0.5) * px_f
        y = (np.arange(self.n_slow) + 0.5) * px_s
        return (
            self.origin
            + x[None, :, None] * self.fast_axis
            + y[:, None, None] * self.slow_axis
        )

    def is_trusted(self, data: np.ndarray) -> np.ndarray:
        """Boolean mask of pixel values inside the trusted range (and not in mask rectangles)."""
        lo, hi = self.trusted_range
        ok = (data > lo) & (data < hi) if lo < hi else np.ones(data.shape, dtype=bool)
        for f0, s0, f1, s1 in self.mask:
            ok[s0:s1, f0:f1] = False
        return ok

    def with_frames(self, frame: Frame, local_frame: Frame) -> "Panel":
        """A copy with new global and local frames."""
        return replace(self, frame=frame, local_frame=local_frame)

    # -- DIALS dict ------------------------------------------------------------
    def to_dict(self) -> dict:
        """The DIALS panel dict (local frame, as DIALS writes hierarchies)."""
        d = {
            "name": self.name,
            "type": self.type,
            "fast_axis": self.local_frame.fast.tolist(),
            "slow_axis": self.local_frame.slow.tolist(),
            "origin": self.local_frame.origin.tolist(),
            "raw_image_offset": list(self.raw_image_offset),
            "image_size": list(self.image_size),
            "pixel_size": list(self.pixel_size),
            "trusted_range": list(self.trusted_range),
            "thickness": self.thickness,
            "material": self.material,
            "mu": self.mu,
            "identifier": self.identifier,
            "mask": [list(m) for m in self.mask],
            "gain": self.gain,
            "pedestal": self.pedestal,
            "px_mm_strategy": self.px_mm_strategy,
        }
        d.update(self.extra)
        if self.dict_keys is not None:
            d = {k: d[k] for k in self.dict_keys if k in d}
        return d

    @classmethod
    def from_dict(cls, d: dict, parent: Frame | None = None) -> "Panel":
        """Build from a DIALS panel dict whose frame is relative to ``parent``."""
        local = Frame(d["fast_axis"], d["slow_axis"], d["origin"])
        frame = parent.compose(local) if parent is not None else local
        return cls(
            name=d.get("name", ""),
            frame=frame,
            local_frame=local,
            pixel_size=tuple(d["pixel_size"]),
            image_size=tuple(int(v) for v in d["image_size"]),
            trusted_range=tuple(d.get("trusted_range", (-1.0, 1.0e6))),
            thickness=d.get("thickness", 0.0),
            material=d.get("material", ""),
            mu=d.get("mu", 0.0),
            gain=d.get("gain", 1.0),
            pedestal=d.get("pedestal", 0.0),
            type=d.get("type", ""),
            mask=tuple(tuple(int(v) for v in m) for m in d.get("mask", [])),
            raw_image_offset=tuple(d.get("raw_image_offset", (0, 0))),
            identifier=d.get("identifier", ""),
            px_mm_strategy=d.get("px_mm_strategy", {"type": "SimplePxMmStrategy"}),
            extra={k: v for k, v in d.items() if k not in _PANEL_KEYS},
            dict_keys=tuple(d),
        )


@dataclass(frozen=True, eq=False)
class Group:
    """A node of the detector hierarchy that holds other groups or panels.

    Parameters
    ----------
    name : str
        Group name (e.g. ``FS_D0Q0`` for a CSPAD quadrant).
    frame : Frame
        Global (lab) frame of the group, mm.
    local_frame : Frame
        Frame relative to the parent group (the lab for the root).
    children : tuple
        Child :class:`Group` objects and panel indices (int).
    extra : dict or None
        Unmodelled keys of the DIALS group dict, written back unchanged; None
        for groups made by stillshot (DIALS's defaults are written).
    """

    name: str
    frame: Frame
    local_frame: Frame
    children: tuple
    extra: dict | None = None

    def panel_indices(self) -> list[int]:
        """All panel indices below this group, depth first."""
        out: list[int] = []
        for child in self.children:
            if isinstance(child, Group):
                out.extend(child.panel_indices())
            else:
                out.append(int(child))
        return out

    def groups(self) -> Iterator["Group"]:
        """This group and every group below it, depth first."""
        yield self
        for child in self.children:
            if isinstance(child, Group):
                yield from child.groups()


Node = Union[Group, int]


@dataclass(frozen=True, eq=False)
class Detector:
    """A detector: its panels (in data order) and their hierarchy.

    Parameters
    ----------
    panels : tuple of Panel
        Panels in the order their data arrays are read.
    root : Group
        The hierarchy root; every panel index appears exactly once below it.
    """

    panels: tuple
    root: Group

    def __post_init__(self):
        object.__setattr__(self, "panels", tuple(self.panels))
        found = sorted(self.root.panel_indices())
        if found != list(range(len(self.panels))):
            raise ValueError(
                f"detector hierarchy holds panels {found[:8]}… but the detector has {len(self.panels)} panels"
            )

    def __len__(self) -> int:
        return len(self.panels)

    def __getitem__(self, index: int) -> Panel:
        return self.panels[index]

    def __iter__(self) -> Iterator[Panel]:
        return iter(self.panels)

    # -- construction ------------------------------------------------------------
    @classmethod
    def flat(cls, panels: Sequence[Panel], name: str = "") -> "Detector":
        """A detector whose panels sit directly under an identity root."""
        ident = Frame.identity()
        panels = tuple(replace(p, local_frame=p.frame) for p in panels)
        root = Group(name=name, frame=ident, local_frame=ident, children=tuple(range(len(panels))))
        return cls(panels, root)

    @classmethod
    def from_global_tree(cls, panels: Sequence[Panel], tree: "GroupSpec") -> "Detector":
        """Build from panels with global frames and a tree of group specs.

        Parameters
        ----------
        panels : sequence of Panel
            Panels with their global ``frame`` set (``local_frame`` is recomputed).
        tree : GroupSpec
            ``(name, global_frame, children)`` where children are GroupSpecs or
            panel indices.
        """
        new_panels = list(panels)

        def build(spec, parent: Frame) -> Group:
            name, frame, children = spec
            kids = []
            for child in children:
                if isinstance(child, tuple):
                    kids.append(build(child, frame))
                else:
                    p = new_panels[child]
                    new_panels[child] = replace(p, local_frame=frame.relative(p.frame))
                    kids.append(int(child))
            return Group(name=name, frame=frame, local_frame=parent.relative(frame), children=tuple(kids))

        root = build(tree, Frame.identity())
        return cls(tuple(new_panels), root)

    # -- queries ---------------------------------------------------------------------
    def groups_at_level(self, level: int) -> list[Group]:
        """Groups at hierarchy depth ``level`` (0 = root).

        Panels that sit above the requested depth count as their own group
        (returned as a single-panel pseudo-group), as DIALS does when a
        hierarchy is shallower in places.
        """
        out: list[Group] = []

        def walk(node: Node, depth: int, parent_frame: Frame):
            if isinstance(node, Group):
                if depth == level:
                    out.append(node)
                    return
                for c in node.children:
                    walk(c, depth + 1, node.frame)
            else:
                p = self.panels[node]
                out.append(Group(p.name, p.frame, p.local_frame, (int(node),)))

        walk(self.root, 0, Frame.identity())
        return out

    def max_hierarchy_level(self) -> int:
        """Hierarchy level of the panels: 1 for a flat detector, 3 for a CSPAD.

        Level 0 is the whole detector; ``groups_at_level(max_hierarchy_level())``
        returns one pseudo-group per panel.
        """

        def depth(node: Node) -> int:
            if not isinstance(node, Group):
                return 0
            return 1 + max((depth(c) for c in node.children), default=0)

        return depth(self.root)

    def beam_centre(self, s0: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Panel hit by the direct beam and the hit position.

        Returns
        -------
        (panel_index, xy_px) or None
            The direct-beam position in px on the panel it hits, or None when it
            misses every panel (then see :meth:`beam_centre_lab`).
        """
        for i, p in enumerate(self.panels):
            xy, ok = p.ray_intersection(np.asarray(s0)[None, :])
            if ok[0]:
                px = p.mm_to_px(xy[0])
                if 0 <= px[0] <= p.n_fast and 0 <= px[1] <= p.n_slow:
                    return i, px
        return None

    def beam_centre_lab(self, s0: np.ndarray) -> np.ndarray:
        """Lab point (mm) where the direct beam crosses the plane of panel 0."""
        p = self.panels[0]
        xy, _ = p.ray_intersection(np.asarray(s0)[None, :])
        return p.lab_coord(xy[0])

    def distance(self) -> float:
        """Mean sample-to-panel-plane distance over all panels, mm."""
        return float(np.mean([abs(p.origin @ p.normal) for p in self.panels]))

    def total_pixels(self) -> int:
        """Sum of n_fast·n_slow over panels."""
        return int(sum(p.n_fast * p.n_slow for p in self.panels))

    # -- editing -----------------------------------------------------------------------
    def with_local_frame(self, group: Group, local_frame: Frame) -> "Detector":
        """A copy in which ``group`` (found by identity) has a new local frame.

        Global frames of the group, its sub-groups and its panels are recomposed.
        """
        panels = list(self.panels)

        def rebuild(node: Node, parent: Frame) -> Node:
            if isinstance(node, Group):
                local = local_frame if node is group else node.local_frame
                frame = parent.compose(local)
                kids = tuple(rebuild(c, frame) for c in node.children)
                return Group(node.name, frame, local, kids, node.extra)
            p = panels[node]
            panels[node] = replace(p, frame=parent.compose(p.local_frame))
            return node

        root = rebuild(self.root, Frame.identity())
        return Detector(tuple(panels), root)

    def with_panel_local_frame(self, index: int, local_frame: Frame) -> "Detector":
        """A copy in which panel ``index`` has a new frame relative to its parent."""
        panels = list(self.panels)
        panels[index] = replace(panels[index], local_frame=local_frame)
        return Detector(tuple(panels), self.root).with_local_frame(self.root, self.root.local_frame)

    # -- DIALS dict ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The DIALS ``detector`` dict (panels and hierarchy, local frames)."""

        def node_dict(node: Node) -> dict:
            if not isinstance(node, Group):
                return {"panel": int(node)}
            d = {
                "name": node.name,
                "fast_axis": node.local_frame.fast.tolist(),
                "slow_axis": node.local_frame.slow.tolist(),
                "origin": node.local_frame.origin.tolist(),
            }
            d.update(_GROUP_DEFAULTS if node.extra is None else node.extra)
            d["children"] = [node_dict(c) for c in node.children]
            return d

        return {"panels": [p.to_dict() for p in self.panels], "hierarchy": node_dict(self.root)}

    @classmethod
    def from_dict(cls, d: dict) -> "Detector":
        """Build from a DIALS ``detector`` dict (with or without a hierarchy)."""
        panel_dicts = d["panels"]
        if "hierarchy" not in d:
            panels = [Panel.from_dict(p) for p in panel_dicts]
            return cls.flat(panels)
        panels: list = [None] * len(panel_dicts)

        def build(node: dict, parent: Frame) -> Node:
            if "panel" in node:
                idx = int(node["panel"])
                panels[idx] = Panel.from_dict(panel_dicts[idx], parent)
                return idx
            local = Frame(node["fast_axis"], node["slow_axis"], node["origin"])
            frame = parent.compose(local)
            kids = tuple(build(c, frame) for c in node.get("children", []))
            extra = {k: v for k, v in node.items() if k not in ("name", "children") + _FRAME_KEYS}
            return Group(node.get("name", ""), frame, local, kids, extra)

        root = build(d["hierarchy"], Frame.identity())
        missing = [i for i, p in enumerate(panels) if p is None]
        if missing:
            raise ValueError(f"detector hierarchy does not reference panels {missing}")
        return cls(tuple(panels), root)


#: ``(name, global Frame, children)`` with children GroupSpecs or panel indices.
GroupSpec = tuple
