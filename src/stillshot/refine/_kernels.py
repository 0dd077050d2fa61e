"""Hot loops of the per-shot refinement (numba)."""

from __future__ import annotations

import math

import numpy as np

from numba import njit


@njit(cache=True, fastmath=False)
def stills_residuals_kernel(A, s0, hkl, panel, d_inverse, obs_mm, w_xy, w_psi, out):  # pragma: no cover - numba
    """Weighted stills residuals of indexed spots, written into ``out``.

    Parameters
    ----------
    A : float64 (3, 3)
        Setting matrix, 1/Å.
    s0 : float64 (3,)
        Beam vector, 1/Å.
    hkl : float64 (N, 3)
    panel : int64 (N,)
    d_inverse : float64 (P, 3, 3)
        Per-panel inverse d matrices.
    obs_mm : float64 (N, 2)
        Observed in-plane positions, mm.
    w_xy : float64 (N, 2)
        Square roots of the positional weights, 1/mm.
    w_psi : float64 (N,)
        Square roots of the Δψ weights, 1/rad.
    out : float64 (3N,)
        ``[wx·Δx, wy·Δy, w_psi·Δψ]`` per spot (Δ = calculated − observed);
        non-finite values are replaced by 1e6.
    """
    n = hkl.shape[0]
    s0len = math.sqrt(s0[0] * s0[0] + s0[1] * s0[1] + s0[2] * s0[2])
    u0 = s0[0] / s0len
    u1 = s0[1] / s0len
    u2 = s0[2] / s0len
    lam = 1.0 / s0len
    for i in range(n):
        h0 = hkl[i, 0]
        h1 = hkl[i, 1]
        h2 = hkl[i, 2]
        q0 = A[0, 0] * h0 + A[0, 1] * h1 + A[0, 2] * h2
        q1 = A[1, 0] * h0 + A[1, 1] * h1 + A[1, 2] * h2
        q2 = A[2, 0] * h0 + A[2, 1] * h1 + A[2, 2] * h2
        # e1 = q × û0
        e0 = q1 * u2 - q2 * u1
        e1 = q2 * u0 - q0 * u2
        e2 = q0 * u1 - q1 * u0
        en = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
        qq = q0 * q0 + q1 * q1 + q2 * q2
        a = 0.5 * qq * lam
        bb = qq - a * a
        if en == 0.0 or bb < 0.0:
            out[3 * i] = 1e6
            out[3 * i + 1] = 1e6
            out[3 * i + 2] = 1e6
            continue
        e0 /= en
        e1 /= en
        e2 /= en
        # c0 = û0 × e1
        c0 = u1 * e2 - u2 * e1
        c1 = u2 * e0 - u0 * e2
        c2 = u0 * e1 - u1 * e0
        cn = math.sqrt(c0 * c0 + c1 * c1 + c2 * c2)
        c0 /= cn
        c1 /= cn
        c2 /= cn
        b = math.sqrt(bb)
        r0 = -a * u0 + b * c0
        r1 = -a * u1 + b * c1
        r2 = -a * u2 + b * c2
        qn = math.sqrt(qq)
        n0 = q0 / qn
        n1 = q1 / qn
        n2 = q2 / qn
        # q1hat = q̂ × e1
        m0 = n1 * e2 - n2 * e1
        m1 = n2 * e0 - n0 * e2
        m2 = n0 * e1 - n1 * e0
        mn = math.sqrt(m0 * m0 + m1 * m1 + m2 * m2)
        dpsi = -math.atan2((r0 * m0 + r1 * m1 + r2 * m2) / mn, r0 * n0 + r1 * n1 + r2 * n2)
        s10 = s0[0] + r0
        s11 = s0[1] + r1
        s12 = s0[2] + r2
        p = panel[i]
        v0 = d_inverse[p, 0, 0] * s10 + d_inverse[p, 0, 1] * s11 + d_inverse[p, 0, 2] * s12
        v1 = d_inverse[p, 1, 0] * s10 + d_inverse[p, 1, 1] * s11 + d_inverse[p, 1, 2] * s12
        v2 = d_inverse[p, 2, 0] * s10 + d_inverse[p, 2, 1] * s11 + d_inverse[p, 2, 2] * s12
        if v2 <= 0.0:
            out[3 * i] = 1e6
            out[3 * i + 1] = 1e6
            out[3 * i + 2] = 1e6
            continue
        out[3 * i] = (v0 / v2 - obs_mm[i, 0]) * w_xy[i, 0]
        out[3 * i + 1] = (v1 / v2 - obs_mm[i, 1]) * w_xy[i, 1]
        out[3 * i + 2] = w_psi[i] * dpsi
    return out


@njit(cache=True)
def stills_residuals_batch(As, s0, hkl, panel, d_inverse, obs_mm, w_xy, w_psi, out):  # pragma: no cover - numba
    """:func:`stills_residuals_kernel` for a stack of setting matrices ``As`` (K, 3, 3); out (K, 3N)."""
    for k in range(As.shape[0]):
        stills_residuals_kernel(As[k], s0, hkl, panel, d_inverse, obs_mm, w_xy, w_psi, out[k])
    return out


@njit(cache=True)
def setting_matrix(phi, U0, a, b, c, al, be, ga):  # pragma: no cover - numba
    """``R(φ)·U0·B(cell)`` (1/Å): R the rotation of vector φ (radians), B from the cell (Å, degrees).

    Returns a matrix of NaN for an impossible cell.
    """
    out = np.empty((3, 3))
    ca = math.cos(math.radians(al))
    cb = math.cos(math.radians(be))
    cg = math.cos(math.radians(ga))
    sg = math.sin(math.radians(ga))
    vol2 = 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg
    if vol2 <= 0.0 or sg <= 0.0 or a <= 0.0 or b <= 0.0 or c <= 0.0:
        out[:] = np.nan
        return out
    # B = (O⁻¹)ᵀ with O upper triangular [[a, b cg, c cb], [0, b sg, c (ca - cb cg)/sg], [0, 0, c v/sg]]
    o00 = a
    o01 = b * cg
    o02 = c * cb
    o11 = b * sg
    o12 = c * (ca - cb * cg) / sg
    o22 = c * math.sqrt(vol2) / sg
    i00 = 1.0 / o00
    i11 = 1.0 / o11
    i22 = 1.0 / o22
    i01 = -o01 * i00 * i11
    i12 = -o12 * i11 * i22
    i02 = (o01 * o12 - o02 * o11) * i00 * i11 * i22
    B = np.zeros((3, 3))
    B[0, 0] = i00
    B[1, 0] = i01
    B[1, 1] = i11
    B[2, 0] = i02
    B[2, 1] = i12
    B[2, 2] = i22
    theta = math.sqrt(phi[0] * phi[0] + phi[1] * phi[1] + phi[2] * phi[2])
    R = np.eye(3)
    if theta > 1e-15:
        kx = phi[0] / theta
        ky = phi[1] / theta
        kz = phi[2] / theta
        st = math.sin(theta)
        vt = 1.0 - math.cos(theta)
        R[0, 0] = 1.0 - vt * (ky * ky + kz * kz)
        R[0, 1] = -st * kz + vt * kx * ky
        R[0, 2] = st * ky + vt * kx * kz
        R[1, 0] = st * kz + vt * kx * ky
        R[1, 1] = 1.0 - vt * (kx * kx + kz * kz)
        R[1, 2] = -st * kx + vt * ky * kz
        R[2, 0] = -st * ky + vt * kx * kz
        R[2, 1] = st * kx + vt * ky * kz
        R[2, 2] = 1.0 - vt * (kx * kx + ky * ky)
    return R @ U0 @ B
