"""``stillshot simulate [params] output.dir=DIR``: simulated still shots with ground truth."""

from __future__ import annotations

import os
import sys
import time

from stillshot.cli.common import UsageError, output_path, parse_command_line, run_command
from stillshot.config import PATH, SPACE_GROUP, UNIT_CELL, choice, common, floats, ints, leaf, root, scope

USAGE = """usage: stillshot simulate [simulate.key=value ...] [params.phil] output.dir=DIR

Simulate serial-crystallography still shots with known truth and write them
(miniCBF files, one CXI file + CrystFEL .geom, or one NeXus NXmx file) with
truth.json (per shot: A, U, cell, wavelength, blank flag; per reflection hkl,
panel, true centroid, full and partial photons), true.expt (the true crystal
models), nominal.expt/true.expt geometries, and true_intensities.mtz.

example: stillshot simulate simulate.n_shots=20 simulate.layout=pilatus6m \\
           simulate.crystal.space_group=P43212 \\
           simulate.crystal.unit_cell=79.1,79.1,38.4,90,90,90 output.dir=lyso"""

LAYOUT_NAMES = ("pilatus6m", "eiger4m", "cspad", "jungfrau4m", "single_panel")


def simulate_scope():
    """The ``simulate`` parameter scope (see :class:`stillshot.simulate.SimulationSettings`)."""
    return scope(
        "simulate",
        help="Simulated still shots (kinematic, DIALS conventions) with ground truth.",
        children=[
            leaf("n_shots", int, 10, min=0, help="Number of shots to simulate."),
            leaf("seed", int, 0, min=0,
                 help="Master random seed: the same parameters and seed give the same files."),
            leaf("format", choice(["cbf", "cxi", "nexus"]), "cbf",
                 help="Image format: cbf (Pilatus miniCBF, one file per shot, single-panel layouts "
                 "only), cxi (one CXI/HDF5 file + CrystFEL .geom), nexus (one NXmx HDF5 file)."),
            leaf("layout", choice(LAYOUT_NAMES), "pilatus6m",
                 help="Detector: pilatus6m (2463x2527 px of 0.172 mm, module gaps), eiger4m "
                 "(2070x2167 px of 0.075 mm), cspad (64 ASICs in a quadrant/sensor/ASIC "
                 "hierarchy), jungfrau4m (8 modules of 1024x512 px), or single_panel (see "
                 "detector.n_pixels and detector.pixel_size)."),
            leaf("d_min", float, None, min=0.1,
                 help="High-resolution limit of the simulated reflections (Å). None: the "
                 "detector corner."),
            leaf("blank_fraction", float, 0.1, min=0.0, max=1.0,
                 help="Fraction of shots with no crystal in the beam (blanks)."),
            leaf("second_lattice_fraction", float, 0.0, min=0.0, max=1.0,
                 help="Fraction of non-blank shots holding a second, independently oriented "
                 "lattice of the same crystal form."),
            leaf("noise", bool, True,
                 help="Poisson and read noise, dead and hot pixels. False: images hold "
                 "the expected photons rounded to integers."),
            scope("beam", help="The X-ray beam.", children=[
                leaf("wavelength", float, 1.3, min=0.01, help="Nominal wavelength (Å)."),
                leaf("wavelength_jitter", float, 0.001, min=0.0,
                     help="Shot-to-shot fractional σ of the wavelength (dimensionless); each "
                     "shot's wavelength is written to its header/frame."),
                leaf("bandpass", float, 0.003, min=0.0,
                     help="Fractional FWHM of the spectrum within one shot, Δλ/λ "
                     "(broadens the partiality of high-resolution reflections)."),
            ]),
            scope("crystal", help="The crystals.", children=[
                leaf("unit_cell", UNIT_CELL, (79.1, 79.1, 38.4, 90.0, 90.0, 90.0),
                     help="Unit cell a,b,c,alpha,beta,gamma (Å, degrees)."),
                leaf("space_group", SPACE_GROUP, "P43212",
                     help="Space group (systematic absences are applied)."),
                leaf("b_factor", float, 20.0, min=0.0,
                     help="Wilson B of the random structure-factor model (Å²)."),
                leaf("intensity_file", PATH, None,
                     help="MTZ of true intensities (IMEAN/I, or F squared) to use instead of the "
                     "random model; the cell and space group come from the file."),
                leaf("mosaicity", float, 0.02, min=0.0,
                     help="Mosaic half-width (half-angle, degrees; DIALS ML_half_mosaicity_deg)."),
                leaf("domain_size", float, 2000.0, min=1.0,
                     help="Mosaic block size (Å; DIALS ML_domain_size_ang). Smaller blocks give "
                     "more, weaker partial reflections."),
                leaf("size_range", floats(2), (1.0, 5.0), min=0.001,
                     help="Range of crystal sizes (µm), drawn log-uniformly; intensities scale "
                     "with size cubed, so spot counts range from a handful to hundreds."),
                leaf("photons", float, 2000.0, min=0.0,
                     help="Mean photons of a full low-resolution reflection from a crystal of the "
                     "largest size."),
            ]),
            scope("spot", help="Spot profiles.", children=[
                leaf("sigma", float, 1.0, min=0.05,
                     help="Gaussian σ of the spot profile (px), integrated over each pixel."),
            ]),
            scope("background", help="Smooth diffuse background.", children=[
                leaf("constant", float, 0.5, min=0.0,
                     help="Flat background (photons per pixel at the beam-axis solid angle)."),
                leaf("ring_amplitude", float, 1.0, min=0.0,
                     help="Peak of the solvent ring (photons per pixel)."),
                leaf("ring_resolution", float, 3.2, min=0.1,
                     help="Resolution of the solvent-ring maximum (Å)."),
                leaf("ring_width", float, 0.04, min=0.001,
                     help="Gaussian σ of the solvent ring in 1/d (1/Å)."),
            ]),
            scope("detector", help="Detector size and response.", children=[
                leaf("distance", float, None, min=1.0,
                     help="Sample-to-detector distance (mm). None: the layout's default (pilatus6m "
                     "250, eiger4m 120, cspad 100, jungfrau4m 100, single_panel 150)."),
                leaf("beam_centre", floats(2), None,
                     help="Direct-beam position fast,slow (px) on single-panel layouts. None: the "
                     "layout's default (near the centre)."),
                leaf("n_pixels", ints(2), (1024, 1024), min=1,
                     help="n_fast,n_slow of the single_panel layout (px)."),
                leaf("pixel_size", float, 0.172, min=0.001,
                     help="Pixel size of the single_panel layout (mm)."),
                leaf("gain", float, None, min=0.0,
                     help="ADU per photon. None: the layout's (1 for Pilatus/Eiger, 25 CSPAD, 10 "
                     "Jungfrau)."),
                leaf("pedestal", float, None,
                     help="Constant offset added to every pixel (ADU). None: 0."),
                leaf("read_noise", float, None, min=0.0,
                     help="Gaussian read noise σ (ADU). None: 0 (photon counting)."),
                leaf("saturation", float, None,
                     help="Saturation level (ADU): the trusted maximum; saturated pixels read it. "
                     "None: the layout's."),
                leaf("dead_pixel_fraction", float, 1e-4, min=0.0, max=1.0,
                     help="Fraction of dead pixels (they read the pedestal)."),
                leaf("hot_pixel_fraction", float, 1e-5, min=0.0, max=1.0,
                     help="Fraction of hot pixels (they read half the saturation level)."),
            ]),
            scope("perturb", help="A TRUE detector geometry that differs from the NOMINAL one "
                  "(for metrology): images are rendered with the true geometry, headers and the "
                  ".geom carry the nominal one; both are written as .expt.", children=[
                leaf("enable", bool, False, help="Render with a perturbed (true) geometry."),
                leaf("level", int, 1, min=0,
                     help="Hierarchy level whose groups are moved (cspad: 1 quadrants, 2 sensors, "
                     "3 ASICs; jungfrau4m: 1 modules; single panels: 0 or 1)."),
                leaf("shift_px", floats(2), (0.5, 2.0), min=0.0,
                     help="Range of in-plane shifts of each group (px)."),
                leaf("rotation_deg", float, 0.1, min=0.0,
                     help="Largest in-plane rotation of each group (degrees)."),
                leaf("normal_mm", float, 0.0, min=0.0,
                     help="Largest shift of each group along its normal (mm)."),
            ]),
            scope("output", help="What is written besides the images.", children=[
                leaf("prefix", str, "shot", help="File name prefix of the images."),
                leaf("mtz", bool, True, help="Write the true intensities as true_intensities.mtz."),
            ]),
        ],
    )


DEFINITION = root(common.output_scope(), common.mp_scope(), simulate_scope())


def settings_from_params(params):
    """Turn resolved parameters into :class:`stillshot.simulate.SimulationSettings`."""
    from stillshot.simulate import BackgroundModel, SimulationSettings

    p = params.simulate
    return SimulationSettings(
        layout=p.layout,
        n_fast=int(p.detector.n_pixels[0]),
        n_slow=int(p.detector.n_pixels[1]),
        pixel_size=p.detector.pixel_size,
        distance=p.detector.distance,
        beam_centre=tuple(p.detector.beam_centre) if p.detector.beam_centre else None,
        wavelength=p.beam.wavelength,
        wavelength_jitter=p.beam.wavelength_jitter,
        bandpass=p.beam.bandpass,
        unit_cell=tuple(p.crystal.unit_cell),
        space_group=str(p.crystal.space_group),
        b_factor=p.crystal.b_factor,
        intensity_file=p.crystal.intensity_file,
        half_mosaicity_deg=p.crystal.mosaicity,
        domain_size_ang=p.crystal.domain_size,
        crystal_size_um=tuple(p.crystal.size_range),
        photons=p.crystal.photons,
        d_min=p.d_min,
        blank_fraction=p.blank_fraction,
        second_lattice_fraction=p.second_lattice_fraction,
        spot_sigma_px=p.spot.sigma,
        background=BackgroundModel(p.background.constant, p.background.ring_amplitude,
                                   p.background.ring_resolution, p.background.ring_width),
        gain=p.detector.gain,
        pedestal=p.detector.pedestal,
        read_noise=p.detector.read_noise,
        saturation=p.detector.saturation,
        dead_fraction=p.detector.dead_pixel_fraction,
        hot_fraction=p.detector.hot_pixel_fraction,
        perturb=p.perturb.enable,
        perturb_level=p.perturb.level,
        perturb_shift_px=tuple(p.perturb.shift_px),
        perturb_rotation_deg=p.perturb.rotation_deg,
        perturb_normal_mm=p.perturb.normal_mm,
        noise=p.noise,
        seed=p.seed,
    )


def run(argv: list[str]) -> int:
    """Entry point of ``stillshot simulate``."""

    def body() -> int:
        cl = parse_command_line("simulate", DEFINITION, argv, USAGE)
        if isinstance(cl, int):
            return cl
        if cl.files:
            raise UsageError(f"simulate takes no input files (got {cl.files[0]!r}); "
                             "give parameters as simulate.key=value")
        from stillshot.config import is_auto
        from stillshot.simulate import run_simulation

        settings = settings_from_params(cl.params)
        out_dir = os.path.dirname(output_path(cl.params, "truth.json"))
        nproc = cl.params.mp.nproc
        if is_auto(nproc):
            nproc = os.cpu_count() or 1
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:
            if total and (done == total or done % max(1, total // 10) == 0):
                print(f"  {done}/{total} shots", file=sys.stderr)

        summary = run_simulation(
            settings, out_dir, n_shots=cl.params.simulate.n_shots, fmt=cl.params.simulate.format,
            prefix=cl.params.simulate.output.prefix, write_mtz=cl.params.simulate.output.mtz,
            nproc=int(nproc), progress=progress, parameters=cl.params.to_text(),
        )
        dt = time.perf_counter() - t0
        print(f"simulated {summary['n_shots']} shots ({summary['n_blank']} blank, "
              f"{summary['n_two_lattices']} with two lattices; median {summary['median_spots']:.0f} "
              f"reflections of > 10 photons per hit) in {dt:.1f} s")
        print(f"wrote {len(summary['files'])} files to {out_dir}: "
              + ", ".join(os.path.basename(f) for f in summary["files"][:4])
              + (" ..." if len(summary["files"]) > 4 else ""))
        return 0

    return run_command("simulate", body)
