"""Hot loops of the per-shot refinement (numba)."""

from __future__ import annotations

import math

import numpy as np

from numba import njit


@njit(cache=True, inline="always")
def _ewald_rotation(q0, q1, q2, u0, u1, u2, lam):  # pragma: no cover - numba
    """Still prediction of one rlp q (1/Å): rotate it onto the Ewald sphere about q × û0.

    Returns ``(ok, r0, r1, r2, delpsi)``: the rotated rlp (1/Å) and the signed
    rotation angle Δψ (radians); ``ok`` is False where no prediction exists.
    """
    # e1 = q × û0
    e0 = q1 * u2 - q2 * u1
    e1 = q2 * u0 - q0 * u2
    e2 = q0 * u1 - q1 * u0
    en = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2)
    qq = q0 * q0 + q1 * q1 + q2 * q2
    a = 0.5 * qq * lam
    bb = qq - a * a
    if en == 0.0 or bb < 0.0:
        return False, 0.0, 0.0, 0.0, 0.0
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
    return True, r0, r1, r2, dpsi


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
        ok, r0, r1, r2, dpsi = _ewald_rotation(q0, q1, q2, u0, u1, u2, lam)
        if not ok:
            out[3 * i] = 1e6
            out[3 * i + 1] = 1e6
            out[3 * i + 2] = 1e6
            continue
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


@njit(cache=True)
def cell_from_free(p, family, rhombohedral):  # pragma: no cover - numba
    """(a, b, c, α, β, γ) from the free parameters of a crystal family (see CellParameterisation).

    ``family``: 0 a, 1 m, 2 o, 3 t, 4 h, 5 c.
    """
    out = np.empty(6)
    if family == 0:
        for i in range(6):
            out[i] = p[i]
    elif family == 1:
        out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[1], p[2], 90.0, p[3], 90.0
    elif family == 2:
        out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[1], p[2], 90.0, 90.0, 90.0
    elif family == 3:
        out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[0], p[1], 90.0, 90.0, 90.0
    elif family == 4:
        if rhombohedral:
            out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[0], p[0], p[1], p[1], p[1]
        else:
            out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[0], p[1], 90.0, 90.0, 120.0
    else:
        out[0], out[1], out[2], out[3], out[4], out[5] = p[0], p[0], p[0], 90.0, 90.0, 90.0
    return out


@njit(cache=True)
def _build_setting(x, n_rot, n_cell, U0, p0, family, rhombohedral):  # pragma: no cover - numba
    phi = np.zeros(3)
    if n_rot:
        phi[0], phi[1], phi[2] = x[0], x[1], x[2]
    p = p0.copy()
    for j in range(n_cell):
        p[j] = p0[j] * (1.0 + x[n_rot + j] * 1e-3)  # relative steps in ‰
    c = cell_from_free(p, family, rhombohedral)
    return setting_matrix(phi, U0, c[0], c[1], c[2], c[3], c[4], c[5])


@njit(cache=True)
def _lm_residuals(x, n_rot, n_cell, U0, p0, family, rhombohedral, restraint, restraint_sigma, s0, hkl, panel,
                  d_inverse, obs_mm, w_xy, w_psi, out):  # pragma: no cover - numba
    """Residual vector of :func:`lm_refine` at x (positional, Δψ, then restraint rows)."""
    A = _build_setting(x, n_rot, n_cell, U0, p0, family, rhombohedral)
    n3 = 3 * hkl.shape[0]
    if not np.isfinite(A[0, 0]):
        out[:] = 1e6
        return out
    stills_residuals_kernel(A, s0, hkl, panel, d_inverse, obs_mm, w_xy, w_psi, out[:n3])
    for i in range(n3):
        if not np.isfinite(out[i]):
            out[i] = 1e6
    if restraint_sigma > 0.0:
        for j in range(n_cell):
            pj = p0[j] * (1.0 + x[n_rot + j] * 1e-3)
            out[n3 + j] = (pj - restraint[j]) / (restraint_sigma * restraint[j])
    return out


@njit(cache=True)
def lm_refine(x0, n_rot, n_cell, U0, p0, family, rhombohedral, restraint, restraint_sigma, s0, hkl, panel,
              d_inverse, obs_mm, w_xy, w_psi, max_iter, xtol, ftol):  # pragma: no cover - numba
    """Levenberg–Marquardt minimisation of the stills target (one shot, fixed spot set), all in numba.

    Parameters are ``x = (φ (rad, 3 if n_rot), cell steps (‰ of p0, n_cell))``; the
    setting matrix is ``R(φ)·U0·B(cell(p0·(1 + 10⁻³·x)))``.  Residuals as
    :func:`stills_residuals_kernel`, plus ``(p − t)/(σ t)`` restraint rows when
    ``restraint_sigma > 0``.  The Jacobian is by forward differences (steps
    ``1e-7·max(1, |x|)``); the damping is Marquardt's (scaled by diag JᵀJ), and
    iterations stop when the relative cost decrease is below ``ftol`` or the step
    below ``xtol·(xtol + |x|)``.

    Returns
    -------
    x : float64 (M,)
    cost : float
        ½·Σ r².
    n_iter : int
    ok : bool
        False when no finite cost was reached.
    """
    m = x0.shape[0]
    n_res = 3 * hkl.shape[0] + (n_cell if restraint_sigma > 0.0 else 0)
    x = x0.copy()
    r = np.empty(n_res)
    _lm_residuals(x, n_rot, n_cell, U0, p0, family, rhombohedral, restraint, restraint_sigma, s0, hkl, panel,
                  d_inverse, obs_mm, w_xy, w_psi, r)
    cost = 0.5 * np.sum(r * r)
    if not np.isfinite(cost):
        return x, cost, 0, False
    J = np.empty((n_res, m))
    rk = np.empty(n_res)
    xk = np.empty(m)
    lam = 1e-3
    it = 0
    for it in range(1, max_iter + 1):
        for k in range(m):
            for j in range(m):
                xk[j] = x[j]
            step = 1e-7 * max(1.0, abs(x[k]))
            xk[k] += step
            _lm_residuals(xk, n_rot, n_cell, U0, p0, family, rhombohedral, restraint, restraint_sigma, s0, hkl,
                          panel, d_inverse, obs_mm, w_xy, w_psi, rk)
            for i in range(n_res):
                J[i, k] = (rk[i] - r[i]) / step
        JtJ = J.T @ J
        g = J.T @ r
        improved = False
        for _ in range(30):
            M = JtJ.copy()
            for k in range(m):
                M[k, k] += lam * max(JtJ[k, k], 1e-12)
            dx = np.linalg.solve(M, -g)
            for j in range(m):
                xk[j] = x[j] + dx[j]
            _lm_residuals(xk, n_rot, n_cell, U0, p0, family, rhombohedral, restraint, restraint_sigma, s0, hkl,
                          panel, d_inverse, obs_mm, w_xy, w_psi, rk)
            new_cost = 0.5 * np.sum(rk * rk)
            if np.isfinite(new_cost) and new_cost <= cost:
                improved = True
                break
            lam *= 10.0
        if not improved:
            break
        dcost = cost - new_cost
        step_norm = np.sqrt(np.sum(dx * dx))
        x_norm = np.sqrt(np.sum(x * x))
        for j in range(m):
            x[j] = xk[j]
        for i in range(n_res):
            r[i] = rk[i]
        cost = new_cost
        lam = max(lam * 0.1, 1e-9)
        if dcost <= ftol * cost or step_norm <= xtol * (xtol + x_norm):
            break
    return x, cost, it, True


@njit(cache=True)
def _softplus(z):  # pragma: no cover - numba
    """log(1 + e^z) (np.logaddexp(0, z))."""
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@njit(cache=True)
def mosaic_negloglik(x0, x1, d, psi, escalate):  # pragma: no cover - numba
    """Negative log-likelihood of the smoothed-box Δψ model at (log α, log η) (see refine.mosaic)."""
    alpha = math.exp(x0)
    eta = math.exp(x1)
    const = 2.0 * _softplus(escalate)
    total = 0.0
    for i in range(d.shape[0]):
        w = (d[i] * alpha + eta) / 2.0
        b = escalate / w
        lf = -math.log(2.0 * w) - _softplus(b * (psi[i] + w))
        lg = -_softplus(-b * (psi[i] - w))
        total += lf + lg + const
    return -total


@njit(cache=True)
def mosaic_nelder_mead(x0, d, psi, escalate, xatol, fatol, maxiter):  # pragma: no cover - numba
    """Minimise :func:`mosaic_negloglik` over two parameters: scipy's Nelder–Mead, step for step.

    The same initial simplex (5 % steps, 0.00025 for zero components), coefficients
    (reflection 1, expansion 2, contraction 0.5, shrink 0.5) and stopping rule
    (simplex spread ≤ xatol and value spread ≤ fatol, or ``maxiter`` iterations)
    as :func:`scipy.optimize.minimize` with ``method="Nelder-Mead"``.
    """
    N = 2
    sim = np.empty((N + 1, N))
    fsim = np.empty(N + 1)
    sim[0] = x0
    for k in range(N):
        y = x0.copy()
        if y[k] != 0:
            y[k] = 1.05 * y[k]
        else:
            y[k] = 0.00025
        sim[k + 1] = y
    for k in range(N + 1):
        fsim[k] = mosaic_negloglik(sim[k, 0], sim[k, 1], d, psi, escalate)
    ind = np.argsort(fsim)
    sim = sim[ind].copy()
    fsim = fsim[ind].copy()
    iterations = 1
    xbar = np.empty(N)
    while iterations < maxiter:
        spread_x = 0.0
        spread_f = 0.0
        for j in range(1, N + 1):
            spread_f = max(spread_f, abs(fsim[0] - fsim[j]))
            for k in range(N):
                spread_x = max(spread_x, abs(sim[j, k] - sim[0, k]))
        if spread_x <= xatol and spread_f <= fatol:
            break
        for k in range(N):
            xbar[k] = (sim[0, k] + sim[1, k]) / N
        xr = 2.0 * xbar - sim[-1]
        fxr = mosaic_negloglik(xr[0], xr[1], d, psi, escalate)
        doshrink = False
        if fxr < fsim[0]:
            xe = 3.0 * xbar - 2.0 * sim[-1]
            fxe = mosaic_negloglik(xe[0], xe[1], d, psi, escalate)
            if fxe < fxr:
                sim[-1] = xe
                fsim[-1] = fxe
            else:
                sim[-1] = xr
                fsim[-1] = fxr
        else:
            if fxr < fsim[-2]:
                sim[-1] = xr
                fsim[-1] = fxr
            else:
                if fxr < fsim[-1]:
                    xc = 1.5 * xbar - 0.5 * sim[-1]
                    fxc = mosaic_negloglik(xc[0], xc[1], d, psi, escalate)
                    if fxc <= fxr:
                        sim[-1] = xc
                        fsim[-1] = fxc
                    else:
                        doshrink = True
                else:
                    xcc = 0.5 * xbar + 0.5 * sim[-1]
                    fxcc = mosaic_negloglik(xcc[0], xcc[1], d, psi, escalate)
                    if fxcc < fsim[-1]:
                        sim[-1] = xcc
                        fsim[-1] = fxcc
                    else:
                        doshrink = True
                if doshrink:
                    for j in range(1, N + 1):
                        sim[j] = sim[0] + 0.5 * (sim[j] - sim[0])
                        fsim[j] = mosaic_negloglik(sim[j, 0], sim[j, 1], d, psi, escalate)
        iterations += 1
        ind = np.argsort(fsim)
        sim = sim[ind].copy()
        fsim = fsim[ind].copy()
    return sim[0].copy(), fsim[0]


@njit(cache=True)
def reject_outliers_kernel(d, k, min_px, cycles):  # pragma: no cover - numba
    """The loop of :func:`stillshot.refine.stills.reject_outliers` (d: (N, 2) residuals, px)."""
    n = d.shape[0]
    ok = np.empty(n, dtype=np.bool_)
    n_ok = 0
    for i in range(n):
        ok[i] = np.isfinite(d[i, 0]) and np.isfinite(d[i, 1])
        n_ok += ok[i]
    used = ok.copy()
    if n_ok < 4:
        return used
    e = math.exp(-0.5 * k * k)
    correction = 1.0 - 0.5 * k * k * e / (1.0 - e)
    r = np.empty(n)
    new = np.empty(n, dtype=np.bool_)
    for _ in range(cycles):
        idx = np.nonzero(used)[0]
        cx = np.median(d[idx, 0])
        cy = np.median(d[idx, 1])
        s = 0.0
        for i in range(n):
            dx = d[i, 0] - cx
            dy = d[i, 1] - cy
            r[i] = math.sqrt(dx * dx + dy * dy)
            if used[i]:
                s += r[i] * r[i]
        sigma = math.sqrt(s / len(idx) / (2.0 * correction))
        cut = max(k * sigma, min_px)
        n_new = 0
        same = True
        for i in range(n):
            new[i] = ok[i] and r[i] <= cut
            n_new += new[i]
            if new[i] != used[i]:
                same = False
        if n_new < 3 or same:
            break
        used[:] = new
    return used


@njit(cache=True)
def predict_stills_kernel(A, s0, hkl):  # pragma: no cover - numba
    """:func:`stillshot.geometry.predict_stills` of indexed spots: s1 (N, 3) and Δψ (N,), NaN where undefined."""
    n = hkl.shape[0]
    s1 = np.empty((n, 3))
    delpsi = np.empty(n)
    s0len = math.sqrt(s0[0] * s0[0] + s0[1] * s0[1] + s0[2] * s0[2])
    u0 = s0[0] / s0len
    u1 = s0[1] / s0len
    u2 = s0[2] / s0len
    lam = 1.0 / s0len
    for i in range(n):
        q0 = A[0, 0] * hkl[i, 0] + A[0, 1] * hkl[i, 1] + A[0, 2] * hkl[i, 2]
        q1 = A[1, 0] * hkl[i, 0] + A[1, 1] * hkl[i, 1] + A[1, 2] * hkl[i, 2]
        q2 = A[2, 0] * hkl[i, 0] + A[2, 1] * hkl[i, 1] + A[2, 2] * hkl[i, 2]
        ok, r0, r1, r2, dpsi = _ewald_rotation(q0, q1, q2, u0, u1, u2, lam)
        if not ok:
            s1[i, 0] = s1[i, 1] = s1[i, 2] = np.nan
            delpsi[i] = np.nan
            continue
        delpsi[i] = dpsi
        t0 = s0[0] + r0
        t1 = s0[1] + r1
        t2 = s0[2] + r2
        tn = math.sqrt(t0 * t0 + t1 * t1 + t2 * t2)
        s1[i, 0] = t0 / tn * s0len
        s1[i, 1] = t1 / tn * s0len
        s1[i, 2] = t2 / tn * s0len
    return s1, delpsi
