"""Shared parameter scopes used by several commands.

Names, meanings and defaults follow DIALS (``dials.stills_process`` and the
phil scopes it includes) wherever DIALS has the same parameter, so that
``spotfinder.threshold.dispersion.gain=...`` or
``indexing.known_symmetry.unit_cell=...`` mean here what they mean there.

Every builder returns a fresh :class:`~stillshot.config.tree.Scope`.  A
command assembles its definition with :func:`~stillshot.config.tree.root`,
which merges scopes of the same name, so a stage adds its own parameters to
a shared scope without editing this module::

    definition = root(
        input_scope(), output_scope(), mp_scope(), spotfinder_scope(),
        scope("spotfinder", children=[leaf("my_new_option", bool, False, "...")]),
    )

and changes a default for one program with
:meth:`~stillshot.config.tree.Scope.with_defaults`.
"""

from __future__ import annotations

from collections.abc import Sequence

from stillshot.config.tree import (
    PATH,
    Auto,
    SPACE_GROUP,
    UNIT_CELL,
    Scope,
    choice,
    ints,
    leaf,
    root,
    scope,
)

__all__ = [
    "INDEXING_METHODS",
    "THRESHOLD_ALGORITHMS",
    "common_definition",
    "dispatch_scope",
    "indexing_scope",
    "input_scope",
    "merge_scope",
    "integration_scope",
    "mp_scope",
    "output_scope",
    "prediction_scope",
    "refinement_scope",
    "spotfinder_scope",
]

#: Spot-finding threshold algorithms offered by default (first is default).
THRESHOLD_ALGORITHMS = ("dispersion_extended", "dispersion", "radial")
#: Indexing methods offered by default (the indexer registry's names; first is
#: default: vector_match indexed the most shots in benchmarks/index.py, and falls
#: back to fft1d when no unit cell is known).
INDEXING_METHODS = ("vector_match", "fft1d", "real_space_grid_search")


def input_scope() -> Scope:
    """``input``: where geometry comes from.

    Returns
    -------
    Scope
    """
    return scope(
        "input",
        help="Input files beyond those named on the command line.",
        children=[
            leaf(
                "reference_geometry",
                PATH,
                None,
                help="An .expt file (with exactly one detector) or a CrystFEL .geom "
                "file whose detector geometry replaces the one read from the image "
                "headers, for any image format. Required for CXI files, which carry "
                "no geometry.",
            ),
        ],
    )


def output_scope() -> Scope:
    """``output``: where results are written.

    Returns
    -------
    Scope
    """
    return scope(
        "output",
        help="Output files.",
        children=[
            leaf(
                "dir",
                PATH,
                ".",
                help="Directory all output files are written to (created if "
                "missing).",
            ),
        ],
    )


def mp_scope(default_nproc: int | str = 1) -> Scope:
    """``mp``: parallel processing over shots (as dials.stills_process).

    Parameters
    ----------
    default_nproc : int or Auto
        Default of ``mp.nproc`` (``process`` uses Auto: every available core).

    Returns
    -------
    Scope
    """
    return scope(
        "mp",
        help="Parallel processing of shots.",
        children=[
            leaf(
                "method",
                choice(["multiprocessing", "mpi"]),
                "multiprocessing",
                help="How shots are distributed: local processes, or MPI ranks "
                "(start the command under mpirun/srun).",
            ),
            leaf(
                "nproc",
                int,
                default_nproc,
                min=1,
                allow_auto=True,
                help="Number of processes for the multiprocessing method; Auto: "
                "one per available CPU core. Ignored with mpi, where the number "
                "of ranks decides.",
            ),
        ],
    )


def dispatch_scope() -> Scope:
    """``dispatch``: which shots go on past spot finding (hit finding).

    Returns
    -------
    Scope
    """
    return scope(
        "dispatch",
        help="Control of the per-shot processing steps.",
        children=[
            scope(
                "hit_finder",
                help="Deciding which shots are hits worth indexing.",
                children=[
                    leaf(
                        "enable",
                        bool,
                        True,
                        help="Find hits: shots with too few strong spots are not "
                        "indexed. False: try to index every shot.",
                    ),
                    leaf(
                        "minimum_number_of_reflections",
                        int,
                        16,
                        min=0,
                        help="A shot with fewer strong spots than this is not a hit "
                        "(status 'not_a_hit').",
                    ),
                    leaf(
                        "maximum_number_of_reflections",
                        int,
                        None,
                        min=0,
                        help="If set, a shot with more strong spots than this is not a "
                        "hit (e.g. ice or detector artefacts).",
                        expert_level=1,
                    ),
                ],
            ),
        ],
    )


def _dispersion_scope() -> Scope:
    return scope(
        "dispersion",
        help="Parameters of the dispersion and dispersion_extended algorithms.",
        children=[
            leaf(
                "gain",
                float,
                None,
                min=0.0,
                help="A flat detector gain (ADU per photon) applied to every pixel, "
                "multiplying the gain from the image format. None: use the "
                "format's gain (1 where the format gives none).",
            ),
            leaf(
                "kernel_size",
                ints(2),
                (3, 3),
                min=1,
                help="Half-size (nx, ny) of the local box, (2*nx+1) by (2*ny+1) pixels "
                "centred on each pixel, in which the mean and variance are computed.",
                expert_level=1,
            ),
            leaf(
                "sigma_background",
                float,
                6.0,
                help="A pixel is background when the index of dispersion (variance / "
                "mean) of its box is below 1 plus this many standard deviations.",
                expert_level=1,
            ),
            leaf(
                "sigma_strong",
                float,
                3.0,
                help="A pixel is strong when it lies more than this many standard "
                "deviations above the mean of its box.",
                expert_level=1,
            ),
            leaf(
                "min_local",
                int,
                2,
                help="Fewest valid pixels a box must contain for the pixel to be "
                "classified; 0 or less requires the whole box, which makes a border of "
                "background pixels at image edges and around masked pixels.",
                expert_level=1,
            ),
            leaf(
                "global_threshold",
                float,
                0.0,
                allow_auto=True,
                help="Pixels at or below this value are always background. Auto: "
                "estimate it from the image.",
            ),
        ],
    )


def _radial_scope() -> Scope:
    return scope(
        "radial",
        help="Parameters of the radial algorithm (peakfinder8-like: background "
        "and noise from resolution rings, as CrystFEL's --peaks=peakfinder8).",
        children=[
            leaf(
                "threshold",
                float,
                800.0,
                min=0.0,
                help="Absolute threshold (ADU): pixels at or below it never belong "
                "to a peak (peakfinder8 --threshold).",
            ),
            leaf(
                "min_snr",
                float,
                5.0,
                min=0.0,
                help="Minimum signal-to-noise ratio above the ring background for a "
                "peak pixel (--min-snr).",
            ),
            leaf(
                "min_pix_count",
                int,
                2,
                min=1,
                help="Fewest connected pixels in a peak (--min-pix-count).",
            ),
            leaf(
                "max_pix_count",
                int,
                200,
                min=1,
                help="Most connected pixels in a peak (--max-pix-count).",
            ),
            leaf(
                "local_bg_radius",
                int,
                3,
                min=1,
                help="Radius in pixels of the ring around a peak used for its local "
                "background (--local-bg-radius).",
                expert_level=1,
            ),
        ],
    )


def spotfinder_scope(
    algorithms: Sequence[str] = THRESHOLD_ALGORITHMS,
    default_algorithm: str | None = None,
) -> Scope:
    """``spotfinder``: thresholding, filtering and the mask.

    Parameters
    ----------
    algorithms : sequence of str
        Names for ``threshold.algorithm`` (the spot-finder registry's names).
    default_algorithm : str, optional
        Default algorithm (default: the first name).

    Returns
    -------
    Scope
    """
    algorithms = tuple(algorithms)
    return scope(
        "spotfinder",
        help="Finding strong spots on each shot.",
        children=[
            scope(
                "lookup",
                help="Lookup files.",
                children=[
                    leaf(
                        "mask",
                        PATH,
                        None,
                        help="A mask file: pixels marked False are never used.",
                    ),
                    leaf(
                        "bad_pixels",
                        PATH,
                        None,
                        help="A dead/hot pixel map (FILE or FILE:KEY; .npy, .npz, HDF5): "
                        "nonzero pixels are never used (e.g. from stillshot average).",
                    ),
                    leaf(
                        "pedestal",
                        PATH,
                        None,
                        help="Dark (pedestal) image subtracted from every shot, in ADU "
                        "(FILE or FILE:KEY; e.g. average.npz:mean from stillshot average).",
                    ),
                    leaf(
                        "gain_map",
                        PATH,
                        None,
                        help="Per-pixel gain map the pedestal-subtracted data are "
                        "divided by (FILE or FILE:KEY).",
                    ),
                ],
            ),
            scope(
                "threshold",
                help="Classifying pixels as strong or background.",
                children=[
                    leaf(
                        "algorithm",
                        choice(algorithms),
                        default_algorithm or algorithms[0],
                        help="The thresholding algorithm.",
                    ),
                    _dispersion_scope(),
                    _radial_scope(),
                ],
            ),
            scope(
                "filter",
                help="Accepting or rejecting pixels and the spots made from them.",
                children=[
                    leaf(
                        "min_spot_size",
                        int,
                        "auto",
                        min=1,
                        help="Fewest connected strong pixels for a spot. Auto: chosen "
                        "from the detector (3 for most pixel-array detectors).",
                    ),
                    leaf(
                        "max_spot_size",
                        int,
                        1000,
                        min=1,
                        help="Most connected strong pixels for a spot.",
                    ),
                    leaf(
                        "max_separation",
                        float,
                        2.0,
                        min=0.0,
                        help="Largest distance (pixels) between a spot's brightest pixel "
                        "and its centroid.",
                        expert_level=1,
                    ),
                    leaf(
                        "max_strong_pixel_fraction",
                        float,
                        0.25,
                        min=0.0,
                        max=1.0,
                        help="A shot with more than this fraction of its pixels strong "
                        "fails spot finding (the threshold is wrong for it).",
                        expert_level=1,
                    ),
                    leaf(
                        "d_min",
                        float,
                        None,
                        min=0.0,
                        help="High-resolution limit (Å): pixels beyond it are not used.",
                    ),
                    leaf(
                        "d_max",
                        float,
                        None,
                        min=0.0,
                        help="Low-resolution limit (Å): pixels inside it are not used.",
                    ),
                    leaf(
                        "border",
                        int,
                        0,
                        min=0,
                        help="Width in pixels of the edge of every panel that is not "
                        "used.",
                        expert_level=1,
                    ),
                    scope(
                        "ice_rings",
                        help="Masking powder rings of hexagonal ice.",
                        children=[
                            leaf(
                                "filter",
                                bool,
                                False,
                                help="Do not use pixels on ice rings.",
                            ),
                            leaf(
                                "unit_cell",
                                UNIT_CELL,
                                (4.498, 4.498, 7.338, 90.0, 90.0, 120.0),
                                help="Unit cell from which the ring resolutions are "
                                "generated.",
                                expert_level=1,
                            ),
                            leaf(
                                "space_group",
                                SPACE_GROUP,
                                "194",
                                help="Space group from which the ring resolutions are "
                                "generated.",
                                expert_level=1,
                            ),
                            leaf(
                                "width",
                                float,
                                0.002,
                                min=0.0,
                                help="Full width of a ring in 1/d² (Å⁻²).",
                                expert_level=1,
                            ),
                            leaf(
                                "d_min",
                                float,
                                None,
                                min=0.0,
                                help="High-resolution limit for generating rings (Å); "
                                "None: the detector's corner resolution.",
                                expert_level=1,
                            ),
                        ],
                    ),
                ],
            ),
        ],
    )


def indexing_scope(
    methods: Sequence[str] = INDEXING_METHODS,
    default_method: str | None = None,
) -> Scope:
    """``indexing``: lattice search, symmetry and candidate choice.

    Parameters
    ----------
    methods : sequence of str
        Names for ``indexing.method`` (the indexer registry's names).
    default_method : str, optional
        Default method (default: the first name).

    Returns
    -------
    Scope
    """
    methods = tuple(methods)
    return scope(
        "indexing",
        help="Indexing the strong spots of each shot.",
        children=[
            leaf(
                "method",
                choice(methods),
                default_method or methods[0],
                help="The basis-vector / lattice search method.",
            ),
            scope(
                "known_symmetry",
                help="Target symmetry: with it, only lattices consistent with the "
                "given cell and space group are accepted.",
                children=[
                    leaf(
                        "space_group",
                        SPACE_GROUP,
                        None,
                        help="Target space group, e.g. P41212 or 19.",
                    ),
                    leaf(
                        "unit_cell",
                        UNIT_CELL,
                        None,
                        help="Target unit cell a,b,c,alpha,beta,gamma (Å, degrees), "
                        "e.g. 58.4,58.4,152.3,90,90,90.",
                    ),
                    leaf(
                        "relative_length_tolerance",
                        float,
                        0.1,
                        min=0.0,
                        help="Relative tolerance on cell lengths when comparing a "
                        "candidate cell with the target.",
                        expert_level=1,
                    ),
                    leaf(
                        "absolute_angle_tolerance",
                        float,
                        5.0,
                        min=0.0,
                        help="Tolerance (degrees) on cell angles when comparing a "
                        "candidate cell with the target.",
                        expert_level=1,
                    ),
                    leaf(
                        "max_delta",
                        float,
                        5.0,
                        min=0.0,
                        help="Largest Le Page delta (degrees) allowed when looking for "
                        "basis combinations consistent with the target symmetry.",
                        expert_level=1,
                    ),
                ],
            ),
            leaf(
                "min_cell",
                float,
                3.0,
                min=0.0,
                help="Shortest candidate basis vector (Å).",
                expert_level=1,
            ),
            leaf(
                "max_cell",
                float,
                "auto",
                min=0.0,
                help="Longest candidate basis vector (Å). Auto: estimated from the "
                "spot positions.",
                expert_level=1,
            ),
            leaf(
                "min_cell_volume",
                float,
                25.0,
                min=0.0,
                help="Smallest candidate unit cell volume (Å³).",
                expert_level=1,
            ),
            scope(
                "index_assignment",
                help="Assigning Miller indices to spots.",
                expert_level=1,
                children=[
                    scope(
                        "simple",
                        children=[
                            leaf(
                                "hkl_tolerance",
                                float,
                                0.3,
                                min=0.0,
                                max=0.5,
                                help="Largest distance of a spot's fractional Miller "
                                "index from the nearest integer for it to be indexed.",
                            ),
                        ],
                    ),
                ],
            ),
            scope(
                "refinement_protocol",
                help="Refinement done as part of indexing.",
                children=[
                    leaf(
                        "d_min_start",
                        float,
                        None,
                        min=0.0,
                        help="Resolution limit (Å) of the spots used in the refinement "
                        "after indexing a still; None: all spots.",
                    ),
                ],
            ),
            scope(
                "multiple_lattice_search",
                help="Indexing several lattices on one shot.",
                expert_level=1,
                children=[
                    leaf(
                        "max_lattices",
                        int,
                        1,
                        min=1,
                        help="Most lattices to index on one shot.",
                    ),
                    leaf(
                        "recycle_unindexed_reflections_cutoff",
                        float,
                        0.1,
                        min=0.0,
                        max=1.0,
                        help="Search for another lattice only if more than this "
                        "fraction of the spots is still unindexed.",
                    ),
                    leaf(
                        "minimum_angular_separation",
                        float,
                        5.0,
                        min=0.0,
                        help="Smallest misorientation (degrees) between two lattices "
                        "of one shot.",
                    ),
                ],
            ),
            scope(
                "stills",
                help="Choosing among candidate lattices of a still shot.",
                children=[
                    leaf(
                        "ewald_proximity_resolution_cutoff",
                        float,
                        2.0,
                        min=0.0,
                        help="High-resolution cutoff (Å) used to compute the volume of "
                        "reciprocal space near the Ewald sphere accepted for "
                        "prediction.",
                        expert_level=1,
                    ),
                    leaf(
                        "refine_all_candidates",
                        bool,
                        True,
                        help="Refine every candidate basis before choosing; False: "
                        "choose the candidate with the lowest RMSD unrefined.",
                    ),
                    leaf(
                        "candidate_outlier_rejection",
                        bool,
                        True,
                        help="Reject outliers (Sauter & Poon 2010) while refining "
                        "candidates.",
                        expert_level=1,
                    ),
                    leaf(
                        "refine_candidates_with_known_symmetry",
                        bool,
                        False,
                        help="False: refine candidates in P1 and apply the known "
                        "symmetry afterwards. True: convert candidates to the known "
                        "symmetry first and refine them there.",
                        expert_level=2,
                    ),
                    leaf(
                        "rmsd_min_px",
                        float,
                        2.0,
                        min=0.0,
                        help="Largest positional RMSD (pixels) of an acceptable "
                        "candidate.",
                    ),
                    leaf(
                        "ewald_proximal_volume_max",
                        float,
                        0.0025,
                        min=0.0,
                        help="Largest Ewald-proximal volume of an acceptable candidate.",
                        expert_level=1,
                    ),
                ],
            ),
        ],
    )


def refinement_scope() -> Scope:
    """``refinement``: model parameterisation and least squares.

    Defaults are those dials.stills_process uses for stills: beam and detector
    fixed (only the crystal is refined per shot; the metrology command
    refines the detector over many shots), statistical weights replaced by
    the stills weighting.

    Returns
    -------
    Scope
    """
    return scope(
        "refinement",
        help="Refinement of the experimental models against spot positions.",
        children=[
            scope(
                "parameterisation",
                help="Which model parameters are refined.",
                children=[
                    scope(
                        "auto_reduction",
                        help="What to do when there are too few spots for the "
                        "parameters.",
                        expert_level=1,
                        children=[
                            leaf(
                                "min_nref_per_parameter",
                                int,
                                1,
                                min=1,
                                help="Fewest spots per refined parameter of a model "
                                "before the action below is taken.",
                            ),
                            leaf(
                                "action",
                                choice(["fail", "fix", "remove"]),
                                "fix",
                                help="fail: stop refinement; fix: keep that model's "
                                "parameters at their starting values; remove: also "
                                "drop its spots from the refinement.",
                            ),
                        ],
                    ),
                    scope(
                        "beam",
                        children=[
                            leaf(
                                "fix",
                                choice(
                                    ["all", "in_spindle_plane", "out_spindle_plane",
                                     "wavelength"],
                                    multi=True,
                                ),
                                ("all",),
                                help="Beam parameters kept fixed (several may be "
                                "starred).",
                            ),
                        ],
                    ),
                    scope(
                        "crystal",
                        children=[
                            leaf(
                                "fix",
                                choice(["all", "cell", "orientation"], multi=True),
                                (),
                                help="Crystal parameters kept fixed.",
                            ),
                        ],
                    ),
                    scope(
                        "detector",
                        children=[
                            leaf(
                                "panels",
                                choice(["automatic", "single", "multiple",
                                        "hierarchical"]),
                                "automatic",
                                help="single/multiple: the whole detector moves as one "
                                "rigid body; hierarchical: each group at "
                                "hierarchy_level moves as its own rigid body; "
                                "automatic: hierarchical for multi-panel detectors "
                                "with a hierarchy, else single.",
                                expert_level=1,
                            ),
                            leaf(
                                "hierarchy_level",
                                int,
                                0,
                                min=0,
                                help="Level of the detector hierarchy (0: the whole "
                                "detector) whose groups are refined independently.",
                            ),
                            leaf(
                                "fix",
                                choice(["all", "position", "orientation", "distance"],
                                       multi=True),
                                ("all",),
                                help="Detector parameters kept fixed (position: all "
                                "translations; distance: the one along the normal).",
                            ),
                        ],
                    ),
                ],
            ),
            scope(
                "refinery",
                help="The least-squares minimiser.",
                expert_level=1,
                children=[
                    leaf(
                        "engine",
                        choice(["LevMar", "GaussNewton", "SparseLevMar"]),
                        "LevMar",
                        help="Levenberg-Marquardt or Gauss-Newton (SparseLevMar: "
                        "Levenberg-Marquardt, DIALS's name for its sparse engine).",
                    ),
                    leaf(
                        "max_iterations",
                        int,
                        None,
                        min=1,
                        help="Most iterations; None: the engine's own limit.",
                    ),
                ],
            ),
            scope(
                "reflections",
                help="Which spots are used and how they are weighted.",
                children=[
                    scope(
                        "outlier",
                        children=[
                            leaf(
                                "algorithm",
                                choice(["null", "auto", "tukey", "sauter_poon"]),
                                "auto",
                                help="Outlier rejection. null: none; auto: sauter_poon "
                                "for stills.",
                            ),
                        ],
                    ),
                    scope(
                        "weighting_strategy",
                        expert_level=1,
                        children=[
                            leaf(
                                "override",
                                choice(["statistical", "stills", "constant"]),
                                "stills",
                                help="statistical: inverse variances of the centroids; "
                                "stills: statistical in x and y with a constant weight "
                                "for the angular residual; constant: all equal.",
                            ),
                            leaf(
                                "delpsi_constant",
                                float,
                                1000000.0,
                                min=0.0,
                                help="Weight of the DeltaPsi residual with the stills "
                                "strategy.",
                            ),
                            leaf(
                                "constant",
                                float,
                                1.0,
                                min=0.0,
                                help="The weight of every residual with the constant "
                                "strategy.",
                            ),
                        ],
                    ),
                ],
            ),
        ],
    )


def common_definition() -> Scope:
    """All the shared scopes together (a convenient base definition).

    Returns
    -------
    Scope
        A root with input, output, mp, dispatch, spotfinder, indexing and
        refinement.
    """
    return root(
        input_scope(),
        output_scope(),
        mp_scope(),
        dispatch_scope(),
        spotfinder_scope(),
        indexing_scope(),
        refinement_scope(),
    )


def prediction_scope() -> Scope:
    """``prediction``: which reflections a still excites (DIALS's ``prediction.d_min`` ...).

    Returns
    -------
    Scope
    """
    return scope(
        "prediction",
        help="Prediction of the reflections a still excites.",
        children=[
            leaf("d_min", float, None, min=0.0,
                 help="High-resolution limit of the prediction, Å. None: the detector corner."),
            leaf("d_max", float, None, min=0.0, help="Low-resolution limit of the prediction, Å."),
            leaf("min_partiality", float, 0.01, min=0.0, max=1.0,
                 help="Reflections whose estimated partiality (Gaussian mosaic/bandpass model) "
                 "is smaller are not predicted (unless inside the Δψ envelope)."),
            leaf("use_envelope", bool, True, expert_level=1,
                 help="Also predict reflections inside DIALS's stills envelope |Δψ| ≤ d/D + η "
                 "(D, η the crystal's ML_domain_size_ang and ML_half_mosaicity_deg)."),
            leaf("bandpass", float, None, min=0.0,
                 help="Spectral FWHM Δλ/λ for the partiality model. None: the beam's bandwidth."),
        ],
    )


def integration_scope(algorithms: Sequence[str] = ("summation", "profile")) -> Scope:
    """``integration``: how the predicted reflections are integrated.

    Names follow DIALS where it has the parameter (``integration.profile.fitting``,
    ``integration.summation.detector_gain``).

    Parameters
    ----------
    algorithms : sequence of str
        Registered integrator names (``integration.algorithm`` choices besides auto).

    Returns
    -------
    Scope
    """
    return scope(
        "integration",
        help="Integration of the predicted reflections.",
        children=[
            leaf("algorithm", choice(["auto", *algorithms]), "auto",
                 help="The integrator. auto: profile when profile.fitting=True, else summation."),
            scope("profile", children=[
                leaf("fitting", bool, True,
                     help="Also fit a 2-D Gaussian spot profile (intensity.prf.*, beside "
                     "intensity.sum.*): lower variance for weak spots."),
            ]),
            scope("mosaic", help="Override the per-shot mosaic model.", children=[
                leaf("domain_size_ang", float, None, min=0.0,
                     help="Mosaic domain size, Å. None: the crystal's ML_domain_size_ang, else "
                     "estimated from the indexed spots."),
                leaf("half_mosaicity_deg", float, None, min=0.0,
                     help="Half mosaic angle, degrees. None: the crystal's ML_half_mosaicity_deg."),
            ]),
            scope("summation", children=[
                leaf("detector_gain", float, Auto, min=0.0, allow_auto=True,
                     help="ADU per photon. Auto: each panel's gain from the geometry."),
                leaf("read_noise", float, 0.0, min=0.0, help="Read-noise σ per pixel, ADU."),
                leaf("n_sigma", float, 3.5, min=0.5,
                     help="Foreground radius in spot σ (the spot σ broadened by the scatter "
                     "of the predictions)."),
                leaf("spot_sigma_px", float, Auto, min=0.05, allow_auto=True,
                     help="Gaussian σ of a spot, px. Auto: measured on each shot's strongest "
                     "reflections."),
                leaf("min_foreground_radius_px", float, 1.5, min=0.5, expert_level=1,
                     help="Smallest foreground radius, px."),
            ]),
            scope("background", children=[
                leaf("gap_px", float, 1.0, min=0.0,
                     help="Gap between the foreground and the background, px."),
                leaf("width_px", float, 3.0, min=0.5,
                     help="Width of the background region beyond the gap, px."),
                leaf("outlier_nsigma", float, 4.0, min=1.0,
                     help="Background pixels further than this many σ from the fitted plane "
                     "are rejected (iteratively)."),
                leaf("min_pixels", int, 10, min=3, expert_level=1,
                     help="Fewest background pixels for a plane (fewer: a constant)."),
                leaf("variance", choice(["poisson", "empirical"]), "poisson", expert_level=1,
                     help="Background variance per pixel: poisson (mean + read noise, as DIALS) "
                     "or empirical (at least the residual mean square of the plane)."),
            ]),
        ],
    )


def merge_scope() -> Scope:
    """The parameters of ``stillshot merge`` (names after DIALS and cctbx.xfel.merge).

    Scopes ``symmetry``, ``scaling``, ``postrefinement``, ``merging`` and
    ``statistics``, returned under one root (merge it into a command's
    definition with :func:`~stillshot.config.tree.root`).

    Returns
    -------
    Scope
        A root scope.
    """
    return root(
        scope(
            "symmetry",
            help="Symmetry of the merged data and indexing-ambiguity resolution.",
            children=[
                leaf("space_group", SPACE_GROUP, None,
                     help="Merge in this space group; None: the crystals' most common one."),
                leaf("unit_cell", UNIT_CELL, None,
                     help="Merged unit cell a,b,c,alpha,beta,gamma (Å, degrees); None: the median "
                     "of the crystals' cells."),
                scope(
                    "ambiguity",
                    help="Indexing ambiguities of lattices with more symmetry than the point group.",
                    children=[
                        leaf("method", choice(["auto", "brehm_diederichs", "reference", "none"]), "auto",
                             help="auto: against scaling.reference when given, else Brehm & Diederichs "
                             "clustering of per-shot correlations; none: keep the indexing as it is."),
                        leaf("max_obliquity", float, 3.0, min=0.0, expert_level=1,
                             help="Largest obliquity (degrees) of a lattice operator counted as an "
                             "ambiguity."),
                        leaf("max_pairwise_shots", int, 1500, min=2, expert_level=1,
                             help="Shots in the pairwise correlation step; the others are assigned "
                             "against their merge."),
                    ],
                ),
            ],
        ),
        scope(
            "scaling",
            help="Per-shot scale factors.",
            children=[
                leaf("model", choice(["KB", "K", "none"]), "KB",
                     help="KB: per-shot scale and B factor; K: scale only; none: no scaling."),
                leaf("reference", PATH, None,
                     help="An MTZ of reference intensities (or amplitudes) that every shot is scaled "
                     "against and indexing ambiguities are resolved against."),
                leaf("reference_column", str, None, expert_level=1,
                     help="Column of scaling.reference; None: the first of IMEAN, I, I-obs, F, FP, F-obs."),
                leaf("cycles", int, 3, min=1, expert_level=1, help="Scale-and-merge cycles."),
            ],
        ),
        scope(
            "postrefinement",
            help="Partiality post-refinement against the merged data (Sauter 2015, CrystFEL partialator).",
            children=[
                leaf("enable", bool, False,
                     help="Refine per-shot scale, B, orientation and mosaic parameters of the "
                     "partiality model."),
                leaf("cycles", int, 3, min=1, help="Refine-and-merge cycles."),
                leaf("parameters", choice(["scale", "b_factor", "orientation", "mosaic"], multi=True),
                     ("scale", "b_factor", "orientation", "mosaic"), expert_level=1,
                     help="Which per-shot parameters are refined."),
                leaf("prior_rotation_deg", float, 0.05, min=0.0, expert_level=1,
                     help="Width (degrees) of the prior on the orientation corrections."),
                leaf("prior_ln_width", float, 1.0, min=0.0, expert_level=1,
                     help="Width of the priors on the logarithms of the mosaic widths."),
                leaf("prior_b_factor", float, 30.0, min=0.0, expert_level=1,
                     help="Width (Å²) of the prior on per-shot B factors."),
                leaf("default_domain_size_ang", float, 2000.0, min=1.0, expert_level=1,
                     help="Mosaic block size (Å) of crystals that carry none."),
                leaf("default_half_mosaicity_deg", float, 0.02, min=0.0, expert_level=1,
                     help="Mosaic half-width (degrees) of crystals that carry none."),
            ],
        ),
        scope(
            "merging",
            help="Merging to the asymmetric unit.",
            children=[
                leaf("d_min", float, None, min=0.0, help="High-resolution limit, Å."),
                leaf("d_max", float, None, min=0.0, help="Low-resolution limit, Å."),
                leaf("intensity", choice(["auto", "sum", "prf"]), "auto",
                     help="Summation or profile-fitted intensities (auto: profile-fitted where "
                     "integration flagged them, else summation)."),
                leaf("partiality", choice(["auto", "given", "model", "none"]), "auto",
                     help="Partiality without post-refinement: integration's column (given; auto "
                     "when present), the model at the indexed crystal, or none (Monte-Carlo "
                     "averaging)."),
                leaf("min_partiality", float, 0.4, min=0.0, max=1.0,
                     help="Observations with a smaller partiality are not merged (0.4 as "
                     "dials.scale for stills)."),
                leaf("error_model", choice(["ev11", "none"]), "ev11",
                     help="ev11: fit sigma' = sdfac*sqrt(sigma^2 + sdb*I + (sdadd*I)^2) to the "
                     "scatter of equivalents; none: integration's sigmas."),
                leaf("variance_model", choice(["predicted", "observed"]), "predicted", expert_level=1,
                     help="predicted: counting variance of the merged model's prediction plus the "
                     "background variance; observed: integration's variance as it is."),
                leaf("min_observations_per_shot", int, 10, min=1,
                     help="Shots with fewer integrated reflections are rejected."),
                scope(
                    "outlier_rejection",
                    children=[
                        leaf("zmax", float, 6.0, min=0.0,
                             help="Reject observations deviating by more than this many sigma "
                             "from the mean of their equivalents (0: no rejection)."),
                        leaf("wilson_ratio", float, 40.0, min=0.0,
                             help="Reject observations stronger than this many times the mean "
                             "intensity of their resolution shell (hot pixels, zingers; 0: no "
                             "rejection)."),
                    ],
                ),
                leaf("seed", int, 0, expert_level=1,
                     help="Seed of the random half-set split and of ambiguity resolution."),
            ],
        ),
        scope(
            "statistics",
            help="Merging statistics.",
            children=[leaf("n_bins", int, 10, min=1, help="Resolution shells.")],
        ),
    )
