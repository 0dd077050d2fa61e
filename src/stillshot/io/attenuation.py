"""Sensor attenuation: the linear attenuation coefficient μ that parallax correction needs.

DIALS (dxtbx) gives every panel of a Si or CdTe sensor ``mu`` (1/mm) from the NIST
tables that cctbx.eltbx carries, at the beam's wavelength; our readers do the same so
that panel dicts, and pixel-to-mm conversions, agree with DIALS's.
"""

from __future__ import annotations

import math

#: hc/e in eV·Å (CODATA 2018), the constant cctbx uses to convert λ to energy.
FACTOR_EV_ANGSTROM = 12398.419843320026

# -- attenuation coefficients ----------------------------------------------------------------

#: NIST (Hubbell & Seltzer) mass attenuation tables as cctbx.eltbx carries them:
#: density (g/cm³), photon energies (MeV) and μ/ρ (cm²/g).  Repeated energies
#: are absorption edges (below, above).
_ATTENUATION_TABLES = {
    "Si": (
        2.33,
        (0.001, 0.0015, 0.0018389, 0.0018389, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008,
         0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
         0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0),
        (1570.0, 535.5, 309.2, 3192.0, 2777.0, 978.4, 452.9, 245.0, 147.0, 64.68,
         33.89, 10.34, 4.464, 1.436, 0.7012, 0.4385, 0.3207, 0.2228, 0.1835, 0.1448,
         0.1275, 0.1082, 0.09614, 0.08748, 0.08077, 0.07082, 0.06361, 0.05688,
         0.05183, 0.0448, 0.03678, 0.0324, 0.02967, 0.02788, 0.02574, 0.02462,
         0.02352, 0.02338),
    ),
    "CdTe": (
        6.2,
        (0.0010, 0.001003, 0.001006, 0.001006, 0.00150, 0.0020, 0.0030, 0.003537,
         0.003537, 0.003631, 0.003727, 0.003727, 0.0040, 0.004018, 0.004018, 0.004177,
         0.004341, 0.004341, 0.004475, 0.004612, 0.004612, 0.004773, 0.004939,
         0.004939, 0.0050, 0.0060, 0.0080, 0.010, 0.0150, 0.020, 0.026711, 0.026711,
         0.030, 0.031814, 0.031814, 0.040, 0.050, 0.060, 0.080, 0.10, 0.150, 0.20,
         0.30, 0.40, 0.50, 0.60, 0.80, 1.0, 1.250, 1.50, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
         10.0, 15.0, 20.0),
        (7927.0, 7875.0, 7824.0, 8014.0, 3291.0, 1664.0, 614.60, 406.40, 778.70,
         730.0, 684.0, 860.10, 723.0, 715.10, 793.40, 722.10, 656.20, 932.80, 873.90,
         813.50, 943.80, 870.20, 799.90, 865.30, 839.20, 528.60, 249.20, 138.10,
         46.570, 21.440, 9.8340, 29.430, 21.820, 18.730, 34.920, 19.30, 10.670,
         6.5420, 3.0190, 1.6710, 0.60710, 0.32460, 0.16280, 0.11470, 0.092910,
         0.080420, 0.0660, 0.057420, 0.050430, 0.045910, 0.04070, 0.036490, 0.035250,
         0.035130, 0.035480, 0.036870, 0.038570, 0.042730, 0.046160),
    ),
}


def attenuation_mu(material: str, wavelength: float) -> float:
    """Linear attenuation coefficient of a sensor material, as DIALS computes it.

    Log-log interpolation of the tabulated μ/ρ at the photon energy (the
    tabulated interval is the last one starting at or below it), times the
    density.

    Parameters
    ----------
    material : str
        ``"Si"`` or ``"CdTe"``.
    wavelength : float
        Photon wavelength in Å.

    Returns
    -------
    float
        μ in 1/mm; 0.0 for a material without a table or an energy outside it.
    """
    table = _ATTENUATION_TABLES.get(material)
    if table is None or not wavelength > 0:
        return 0.0
    density, energies, mu_rho = table
    energy = FACTOR_EV_ANGSTROM / wavelength / 1.0e6  # MeV
    index = 0
    while index < len(energies) and energy >= energies[index]:
        index += 1
    if index == 0 or index >= len(energies):
        return 0.0
    i = index - 1
    x0, x1 = math.log(energies[i]), math.log(energies[i + 1])
    y0, y1 = math.log(mu_rho[i]), math.log(mu_rho[i + 1])
    mu_cm = math.exp(y0 + (y1 - y0) * (math.log(energy) - x0) / (x1 - x0)) * density
    return mu_cm / 10.0
