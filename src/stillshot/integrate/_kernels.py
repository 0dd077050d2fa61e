"""Numba kernels of the integration stage (private).

Pure functions: arrays in, arrays out, inputs never mutated (except the
scratch/count buffers a caller passes explicitly as outputs).  Pixel
coordinates follow DIALS: pixel ``(i, j)`` (i fast, j slow) covers
``[i, i+1) × [j, j+1)`` px, so its centre is ``(i + 0.5, j + 0.5)``.

All panels of a shot are passed as one flat buffer: panel ``p`` occupies
``flat[offset[p] : offset[p] + n_fast[p]·n_slow[p]]`` in row-major
(slow, fast) order.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# bits of the per-reflection status word returned by the kernels
BIT_EDGE = 1
BIT_FG_BAD = 2
BIT_BG_BAD = 4
BIT_OVERLOADED = 8
BIT_OVERLAP_FG = 16
BIT_OVERLAP_BG = 32
BIT_BG_FAILED = 64
BIT_SUM_FAILED = 128
BIT_PRF_FAILED = 256
BIT_PRF_OK = 512

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@nb.njit(cache=True)
def _quad_roots(a, b, c):
    """Real roots (lo, hi) of a·l² + 2b·l + c = 0, or (nan, nan)."""
    disc = b * b - a * c
    if disc < 0.0 or a <= 0.0:
        return math.nan, math.nan
    s = math.sqrt(disc)
    return (-b - s) / a, (-b + s) / a


@nb.njit(cache=True)
def _scan_ewald(A, s0, d_min, lim, eps_max, out, fill):
    """Count (and when ``fill``, store) the hkl within ``eps_max`` of the Ewald sphere."""
    r0 = math.sqrt(s0[0] ** 2 + s0[1] ** 2 + s0[2] ** 2)
    ro2 = (r0 + eps_max) ** 2
    ri = r0 - eps_max
    ri2 = ri * ri if ri > 0 else -1.0
    qmax2 = 1.0 / (d_min * d_min)
    c0, c1, c2 = A[0, 2], A[1, 2], A[2, 2]
    cc = c0 * c0 + c1 * c1 + c2 * c2
    n = 0
    for h in range(-lim[0], lim[0] + 1):
        for k in range(-lim[1], lim[1] + 1):
            p0 = s0[0] + A[0, 0] * h + A[0, 1] * k
            p1 = s0[1] + A[1, 0] * h + A[1, 1] * k
            p2 = s0[2] + A[2, 0] * h + A[2, 1] * k
            pc = p0 * c0 + p1 * c1 + p2 * c2
            pp = p0 * p0 + p1 * p1 + p2 * p2
            lo, hi = _quad_roots(cc, pc, pp - ro2)
            if not (lo == lo):
                continue
            mlo, mhi = _quad_roots(cc, pc, pp - ri2) if ri2 > 0 else (math.nan, math.nan)
            for part in range(2):
                if mlo == mlo:
                    a_ = lo if part == 0 else mhi
                    b_ = mlo if part == 0 else hi
                else:
                    if part == 1:
                        break
                    a_, b_ = lo, hi
                l0 = max(int(math.ceil(a_)), -lim[2])
                l1 = min(int(math.floor(b_)), lim[2])
                for l in range(l0, l1 + 1):
                    q0 = p0 - s0[0] + c0 * l
                    q1 = p1 - s0[1] + c1 * l
                    q2 = p2 - s0[2] + c2 * l
                    qq = q0 * q0 + q1 * q1 + q2 * q2
                    if qq <= 0.0 or qq > qmax2:
                        continue
                    e0 = p0 + c0 * l
                    e1 = p1 + c1 * l
                    e2 = p2 + c2 * l
                    eps = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2) - r0
                    if abs(eps) > eps_max:
                        continue
                    if fill:
                        out[n, 0] = h
                        out[n, 1] = k
                        out[n, 2] = l
                    n += 1
    return n


def ewald_candidates(A: np.ndarray, s0: np.ndarray, d_min: float, lim: np.ndarray, eps_max: float) -> np.ndarray:
    """Miller indices whose rlp lies within ``eps_max`` (1/Å) of the Ewald sphere.

    Parameters
    ----------
    A : ndarray (3, 3)
        Setting matrix, 1/Å.
    s0 : ndarray (3,)
        Incident beam vector, 1/Å.
    d_min : float
        Resolution limit, Å.
    lim : ndarray (3,) of int
        Largest |h|, |k|, |l| searched.
    eps_max : float
        Largest excitation error ``| |s0 + A·h| - 1/λ |``, 1/Å.

    Returns
    -------
    ndarray (N, 3) of int32
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    s0 = np.ascontiguousarray(s0, dtype=np.float64)
    lim = np.ascontiguousarray(lim, dtype=np.int64)
    dummy = np.zeros((0, 3), dtype=np.int32)
    n = _scan_ewald(A, s0, float(d_min), lim, float(eps_max), dummy, False)
    out = np.zeros((n, 3), dtype=np.int32)
    _scan_ewald(A, s0, float(d_min), lim, float(eps_max), out, True)
    return out


@nb.njit(cache=True)
def _median_inplace(a, n):
    """Median of a[:n] by quickselect (reorders a[:n]; no allocation)."""
    if n == 0:
        return 0.0

    def select(a, lo, hi, k):
        while hi > lo:
            pivot = a[(lo + hi) // 2]
            i = lo
            j = hi
            while i <= j:
                while a[i] < pivot:
                    i += 1
                while a[j] > pivot:
                    j -= 1
                if i <= j:
                    t = a[i]
                    a[i] = a[j]
                    a[j] = t
                    i += 1
                    j -= 1
            if k <= j:
                hi = j
            elif k >= i:
                lo = i
            else:
                return a[k]
        return a[k]

    k = n // 2
    upper = select(a, 0, n - 1, k)
    if n % 2 == 1:
        return upper
    lower = a[0]
    for i in range(1, k):
        if a[i] > lower:
            lower = a[i]
    return 0.5 * (lower + upper)


@nb.njit(cache=True)
def first_panel_hits(d_inverse, size_mm, s1):
    """First panel (in panel order) each ray hits inside its extent.

    Parameters
    ----------
    d_inverse : ndarray (P, 3, 3)
        Inverse d matrices of the panels.
    size_mm : ndarray (P, 2)
        Panel extents, mm.
    s1 : ndarray (N, 3)
        Ray directions.

    Returns
    -------
    panel : ndarray (N,) of int64
        -1 on a miss.
    xy_mm : ndarray (N, 2)
        In-plane mm (NaN on a miss).
    """
    n = s1.shape[0]
    panel = np.full(n, -1, dtype=np.int64)
    xy = np.full((n, 2), np.nan)
    for k in range(n):
        for p in range(d_inverse.shape[0]):
            m = d_inverse[p]
            w = m[2, 0] * s1[k, 0] + m[2, 1] * s1[k, 1] + m[2, 2] * s1[k, 2]
            if not w > 0.0:
                continue
            x = (m[0, 0] * s1[k, 0] + m[0, 1] * s1[k, 1] + m[0, 2] * s1[k, 2]) / w
            if x < 0.0 or x > size_mm[p, 0]:
                continue
            y = (m[1, 0] * s1[k, 0] + m[1, 1] * s1[k, 1] + m[1, 2] * s1[k, 2]) / w
            if y < 0.0 or y > size_mm[p, 1]:
                continue
            panel[k] = p
            xy[k, 0] = x
            xy[k, 1] = y
            break
    return panel, xy


@nb.njit(cache=True)
def paint_foreground(panel, xc, yc, r_fg, offsets, n_fast, n_slow, count):
    """Add 1 to ``count`` at every foreground pixel of every reflection.

    A pixel is foreground when its centre lies within ``r_fg`` px of the
    reflection's centre.  ``count`` (flat, int16) is the caller's output.
    """
    for n in range(len(xc)):
        p = panel[n]
        w = n_fast[p]
        h = n_slow[p]
        off = offsets[p]
        x = xc[n]
        y = yc[n]
        r = r_fg[n]
        r2 = r * r
        i0 = max(int(math.floor(x - r)), 0)
        i1 = min(int(math.floor(x + r)), w - 1)
        j0 = max(int(math.floor(y - r)), 0)
        j1 = min(int(math.floor(y + r)), h - 1)
        for j in range(j0, j1 + 1):
            dy = j + 0.5 - y
            for i in range(i0, i1 + 1):
                dx = i + 0.5 - x
                if dx * dx + dy * dy <= r2:
                    count[off + j * w + i] += 1


@nb.njit(cache=True, inline="always")
def _plane_normal_equations(bx, by, bv, bused, n, m, rhs):  # pragma: no cover - numba
    """Normal equations of the plane v = c0 + c1·x + c2·y over the used pixels, into ``m``, ``rhs``.

    Returns the number of pixels used.
    """
    m[:, :] = 0.0
    rhs[:] = 0.0
    nused = 0
    for a in range(n):
        if bused[a]:
            nused += 1
            m[0, 0] += 1.0
            m[0, 1] += bx[a]
            m[0, 2] += by[a]
            m[1, 1] += bx[a] * bx[a]
            m[1, 2] += bx[a] * by[a]
            m[2, 2] += by[a] * by[a]
            rhs[0] += bv[a]
            rhs[1] += bx[a] * bv[a]
            rhs[2] += by[a] * bv[a]
    m[1, 0] = m[0, 1]
    m[2, 0] = m[0, 2]
    m[2, 1] = m[1, 2]
    return nused


@nb.njit(cache=True)
def _solve3(m, v):
    """Solve the 3×3 system m·x = v (Cramer); returns (x, ok)."""
    det = (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
           - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
           + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))
    x = np.zeros(3)
    scale = abs(m[0, 0] * m[1, 1] * m[2, 2]) + 1e-300
    if abs(det) < 1e-9 * scale:
        return x, False
    inv = np.empty((3, 3))
    inv[0, 0] = (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) / det
    inv[0, 1] = (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) / det
    inv[0, 2] = (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) / det
    inv[1, 0] = (m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]) / det
    inv[1, 1] = (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) / det
    inv[1, 2] = (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) / det
    inv[2, 0] = (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]) / det
    inv[2, 1] = (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) / det
    inv[2, 2] = (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) / det
    for a in range(3):
        x[a] = inv[a, 0] * v[0] + inv[a, 1] * v[1] + inv[a, 2] * v[2]
    return x, True


@nb.njit(cache=True)
def _inverse3(m):
    """Inverse of a symmetric positive 3×3 matrix via unit-vector solves."""
    out = np.zeros((3, 3))
    e = np.zeros(3)
    for a in range(3):
        e[:] = 0.0
        e[a] = 1.0
        x, ok = _solve3(m, e)
        if not ok:
            return out, False
        out[:, a] = x
    return out, True


@nb.njit(cache=True)
def _quad_form(minv, s0, s1, s2):
    return (s0 * (minv[0, 0] * s0 + minv[0, 1] * s1 + minv[0, 2] * s2)
            + s1 * (minv[1, 0] * s0 + minv[1, 1] * s1 + minv[1, 2] * s2)
            + s2 * (minv[2, 0] * s0 + minv[2, 1] * s1 + minv[2, 2] * s2))


@nb.njit(cache=True)
def integrate_shoeboxes(raw, static_bad, count, offsets, n_fast, n_slow, gain, pedestal, trusted_lo,
                        trusted_hi, panel, xc, yc, r_fg, r_bg, half_box, read_var, outlier_nsigma,
                        min_bg, max_iter, empirical_bg, do_prf, prf_sigma, prf_dx, prf_dy):
    """Summation (and optionally profile-fitted) intensities of reflections.

    Parameters
    ----------
    raw : ndarray (P_total,)
        All panels' raw pixel values (ADU), flat.
    static_bad : ndarray (P_total,) of bool
        Pixels never used (gaps, user mask).
    count : ndarray (P_total,) of int16
        Number of reflection foregrounds covering each pixel (from
        :func:`paint_foreground` with the same ``r_fg``).
    offsets, n_fast, n_slow : ndarray (P,) of int64
        Panel layout in the flat buffer.
    gain, pedestal, trusted_lo, trusted_hi : ndarray (P,)
        ADU per photon, ADU offset, trusted range (ADU; valid is lo < v < hi).
    panel : ndarray (N,) of int64
    xc, yc : ndarray (N,)
        Shoebox centre (predicted centroid), px.
    r_fg, r_bg, half_box : ndarray (N,)
        Foreground radius, inner radius of the background, half-size of the
        square box, px.
    read_var : float
        Read-noise variance per pixel, photons².
    outlier_nsigma : float
        Background pixels further than this many σ from the plane are rejected.
    min_bg : int
        Fewest background pixels for a plane (fewer: a constant; fewer than
        ``max(3, min_bg // 2)``: failure).
    max_iter : int
        Outlier-rejection iterations.
    empirical_bg : bool
        Background variance per pixel ``max(Poisson, residual mean square)``
        instead of Poisson.
    do_prf : bool
        Also fit a 2-D Gaussian profile (σ ``prf_sigma`` px, centre offset
        ``prf_dx, prf_dy`` px from ``xc, yc``).

    Returns
    -------
    out : ndarray (N, 18)
        Columns: I_sum, var_sum, bg_mean (photons/px), bg_sum (photons over the
        foreground), n_fg, n_bg, n_bg_used, n_valid, x_obs, y_obs, var_x,
        var_y, m_xx, m_yy, m_xy (second moments, px²), I_prf, var_prf,
        bg_var_px (photons² per pixel).
    bbox : ndarray (N, 4) of int32
        x0, x1, y0, y1 (half-open), px.
    status : ndarray (N,) of int64
        BIT_* flags.
    """
    n = len(xc)
    out = np.full((n, 18), np.nan)
    bbox = np.zeros((n, 4), dtype=np.int32)
    status = np.zeros(n, dtype=np.int64)
    maxbox = 1
    for k in range(n):
        s = 2 * int(math.ceil(half_box[k])) + 3
        if s * s > maxbox:
            maxbox = s * s
    bx = np.empty(maxbox)
    by = np.empty(maxbox)
    bv = np.empty(maxbox)
    bres = np.empty(maxbox)
    bused = np.zeros(maxbox, dtype=np.bool_)
    fx_ = np.empty(maxbox)
    fy_ = np.empty(maxbox)
    fc = np.empty(maxbox)
    fi = np.empty(maxbox, dtype=np.int64)
    fj = np.empty(maxbox, dtype=np.int64)
    fp = np.empty(maxbox)
    erfx = np.empty(maxbox)
    erfy = np.empty(maxbox)
    m = np.zeros((3, 3))
    rhs = np.zeros(3)
    for k in range(n):
        p = panel[k]
        w = n_fast[p]
        h = n_slow[p]
        off = offsets[p]
        g = gain[p]
        ped = pedestal[p]
        lo = trusted_lo[p]
        hi = trusted_hi[p]
        x = xc[k]
        y = yc[k]
        rf = r_fg[k]
        rb = r_bg[k]
        hb = half_box[k]
        st = 0
        if x - rf < 0.0 or y - rf < 0.0 or x + rf > w or y + rf > h:
            st |= BIT_EDGE | BIT_FG_BAD
        i0 = max(int(math.floor(x - hb)), 0)
        i1 = min(int(math.floor(x + hb)), w - 1)
        j0 = max(int(math.floor(y - hb)), 0)
        j1 = min(int(math.floor(y + hb)), h - 1)
        bbox[k, 0] = int(math.floor(x - hb))
        bbox[k, 1] = int(math.floor(x + hb)) + 1
        bbox[k, 2] = int(math.floor(y - hb))
        bbox[k, 3] = int(math.floor(y + hb)) + 1
        if bbox[k, 0] < 0 or bbox[k, 2] < 0 or bbox[k, 1] > w or bbox[k, 3] > h:
            st |= BIT_BG_BAD  # part of the box is off the panel (as DIALS counts it)
        if i1 < i0 or j1 < j0:
            status[k] = st | BIT_BG_FAILED | BIT_SUM_FAILED
            continue
        rf2 = rf * rf
        rb2 = rb * rb
        nb_ = 0
        nf = 0
        n_valid = 0
        for j in range(j0, j1 + 1):
            dy = j + 0.5 - y
            for i in range(i0, i1 + 1):
                dx = i + 0.5 - x
                d2 = dx * dx + dy * dy
                idx = off + j * w + i
                v = raw[idx]
                bad = static_bad[idx] or not (v > lo)
                over = v >= hi
                if d2 <= rf2:
                    if bad:
                        st |= BIT_FG_BAD
                        continue
                    if over:
                        st |= BIT_OVERLOADED
                        continue
                    if count[idx] > 1:
                        st |= BIT_OVERLAP_FG
                    fx_[nf] = dx
                    fy_[nf] = dy
                    fc[nf] = (v - ped) / g
                    fi[nf] = i
                    fj[nf] = j
                    nf += 1
                    n_valid += 1
                elif d2 >= rb2:
                    if bad or over:
                        st |= BIT_BG_BAD
                        continue
                    n_valid += 1
                    if count[idx] > 0:
                        st |= BIT_OVERLAP_BG
                        continue
                    bx[nb_] = dx
                    by[nb_] = dy
                    bv[nb_] = (v - ped) / g
                    nb_ += 1
        out[k, 4] = nf
        out[k, 5] = nb_
        out[k, 7] = n_valid
        # ---- background plane with outlier rejection
        min_const = max(3, min_bg // 2)
        if nb_ < min_const:
            status[k] = st | BIT_BG_FAILED
            continue
        for a in range(nb_):
            bused[a] = True
        coef = np.zeros(3)
        nused = nb_
        use_plane = nb_ >= min_bg
        for it in range(max_iter + 1):
            _plane_normal_equations(bx, by, bv, bused, nb_, m, rhs)
            ok = False
            if use_plane:
                coef, ok = _solve3(m, rhs)
            if not ok:
                coef[0] = rhs[0] / m[0, 0]
                coef[1] = 0.0
                coef[2] = 0.0
            # residuals and a robust scale
            nr = 0
            mean_b = 0.0
            for a in range(nb_):
                r = bv[a] - (coef[0] + coef[1] * bx[a] + coef[2] * by[a])
                if bused[a]:
                    bres[nr] = abs(r)
                    nr += 1
                    mean_b += coef[0] + coef[1] * bx[a] + coef[2] * by[a]
            mean_b /= max(nr, 1)
            if it == max_iter:
                break
            mad = _median_inplace(bres, nr) * 1.4826
            scale = max(mad, math.sqrt(max(mean_b, 0.0) + read_var), 1e-6)
            changed = False
            nused = 0
            for a in range(nb_):
                r = abs(bv[a] - (coef[0] + coef[1] * bx[a] + coef[2] * by[a]))
                keep = r <= outlier_nsigma * scale
                if keep != bused[a]:
                    changed = True
                bused[a] = keep
                if keep:
                    nused += 1
            if nused < min_const:
                for a in range(nb_):
                    bused[a] = True
                nused = nb_
                break
            if not changed:
                break
        # final fit on the used pixels (normal matrix for the variance)
        nused = _plane_normal_equations(bx, by, bv, bused, nb_, m, rhs)
        plane = False
        minv = np.zeros((3, 3))
        if use_plane and nused >= min_bg:
            coef, plane = _solve3(m, rhs)
            if plane:
                minv, plane = _inverse3(m)
        if not plane:
            coef[0] = rhs[0] / m[0, 0]
            coef[1] = 0.0
            coef[2] = 0.0
            minv[:, :] = 0.0
            minv[0, 0] = 1.0 / m[0, 0]
        ssr = 0.0
        mean_b = 0.0
        for a in range(nb_):
            if bused[a]:
                fit = coef[0] + coef[1] * bx[a] + coef[2] * by[a]
                mean_b += fit
                ssr += (bv[a] - fit) ** 2
        mean_b /= nused
        npar = 3 if plane else 1
        mse = ssr / max(nused - npar, 1)
        bvar = max(mean_b, 0.0) + read_var
        if empirical_bg:
            bvar = max(bvar, mse)
        out[k, 6] = nused
        out[k, 17] = bvar
        out[k, 2] = coef[0]
        if nf == 0:
            status[k] = st | BIT_SUM_FAILED
            continue
        # ---- summation
        isum = 0.0
        vfg = 0.0
        bsum = 0.0
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        wsum = 0.0
        wx = 0.0
        wy = 0.0
        for a in range(nf):
            b = coef[0] + coef[1] * fx_[a] + coef[2] * fy_[a]
            c = fc[a]
            isum += c - b
            bsum += b
            vfg += max(c, 0.0) + read_var
            s0 += 1.0
            s1 += fx_[a]
            s2 += fy_[a]
            wgt = c - b
            wsum += wgt
            wx += wgt * fx_[a]
            wy += wgt * fy_[a]
        vbg = bvar * _quad_form(minv, s0, s1, s2)
        out[k, 0] = isum
        out[k, 1] = vfg + vbg
        out[k, 3] = bsum
        if wsum > 0.0:
            mx = wx / wsum
            my = wy / wsum
            mxx = 0.0
            myy = 0.0
            mxy = 0.0
            vx = 0.0
            vy = 0.0
            for a in range(nf):
                b = coef[0] + coef[1] * fx_[a] + coef[2] * fy_[a]
                wgt = fc[a] - b
                ex = fx_[a] - mx
                ey = fy_[a] - my
                mxx += wgt * ex * ex
                myy += wgt * ey * ey
                mxy += wgt * ex * ey
                vv = max(fc[a], 0.0) + read_var + bvar / nused
                vx += vv * ex * ex
                vy += vv * ey * ey
            out[k, 8] = x + mx
            out[k, 9] = y + my
            out[k, 10] = vx / (wsum * wsum) + 1.0 / 12.0 / max(wsum, 1.0)
            out[k, 11] = vy / (wsum * wsum) + 1.0 / 12.0 / max(wsum, 1.0)
            out[k, 12] = mxx / wsum
            out[k, 13] = myy / wsum
            out[k, 14] = mxy / wsum
        # ---- profile fitting (2-D Gaussian, fixed centre and width)
        if do_prf:
            cx = x + prf_dx[k]
            cy = y + prf_dy[k]
            sig = prf_sigma[k]
            # separable pixel integrals of the Gaussian: erf at the pixel edges once per axis
            f = _INV_SQRT2 / sig
            for i in range(i0, i1 + 2):
                erfx[i - i0] = math.erf((i - cx) * f)
            for j in range(j0, j1 + 2):
                erfy[j - j0] = math.erf((j - cy) * f)
            for a in range(nf):
                ia = fi[a] - i0
                ja = fj[a] - j0
                fp[a] = 0.25 * (erfx[ia + 1] - erfx[ia]) * (erfy[ja + 1] - erfy[ja])
            iprf = max(isum, 0.0)
            vfloor = max(bvar, 0.1)
            sp2 = 0.0
            for it in range(6):
                num = 0.0
                sp2 = 0.0
                for a in range(nf):
                    pk = fp[a]
                    b = coef[0] + coef[1] * fx_[a] + coef[2] * fy_[a]
                    vk = max(b + max(iprf, 0.0) * pk + read_var, vfloor)
                    num += pk * (fc[a] - b) / vk
                    sp2 += pk * pk / vk
                if sp2 <= 0.0:
                    break
                new = num / sp2
                if abs(new - iprf) <= 1e-4 * (abs(new) + 1.0):
                    iprf = new
                    break
                iprf = new
            if sp2 > 0.0:
                # I = Σ a_k (c_k - b_k), a_k = (p_k / v_k) / Σ p²/v
                u0 = 0.0
                u1 = 0.0
                u2 = 0.0
                vsum = 0.0
                for a in range(nf):
                    pk = fp[a]
                    b = coef[0] + coef[1] * fx_[a] + coef[2] * fy_[a]
                    vk = max(b + max(iprf, 0.0) * pk + read_var, vfloor)
                    ak = pk / vk / sp2
                    vsum += ak * ak * vk
                    u0 += ak
                    u1 += ak * fx_[a]
                    u2 += ak * fy_[a]
                out[k, 15] = iprf
                out[k, 16] = vsum + bvar * _quad_form(minv, u0, u1, u2)
                st |= BIT_PRF_OK
            else:
                st |= BIT_PRF_FAILED
        status[k] = st
    return out, bbox, status
