"""Numba kernels of the simulator: counter-based random numbers, reflection
candidates, pixel-integrated spot rendering, exposure (background + Poisson +
detector response) and the CBF byte-offset encoder.

Kernels are pure: arrays in, arrays out (the one exception, the in-place
``render_spots_into``, only adds to a buffer the caller allocated for it).
Random numbers come from a counter-based generator (SplitMix64 of a key and
the pixel index), so a shot's noise depends only on its key, not on the
order in which shots or panels are made.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


@numba.njit(inline="always", cache=True)
def _mix(z):
    """SplitMix64 finaliser (uint64 -> uint64)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(inline="always", cache=True)
def _unit(z):
    """A uint64 to a float in the open interval (0, 1)."""
    return ((z >> _S11) + 0.5) * _INV53


@numba.njit(cache=True)
def _poisson(lam, state):
    """Poisson deviate of mean ``lam`` from a SplitMix64 stream.

    Returns ``(k, state)``.  Inversion for lam < 12; Hörmann's PTRS
    (transformed rejection, as numpy) above.
    """
    if lam <= 0.0:
        return 0, state
    if lam < 12.0:
        state = state + _GOLDEN
        u = _unit(_mix(state))
        # inversion; the first six terms without branches (cheap for the
        # background, where lam is small and k is random), then a loop that
        # is rarely entered for small lam
        p = math.exp(-lam)
        cdf = p
        k = int(u > cdf)
        p *= lam
        cdf += p
        k += int(u > cdf)
        p *= lam * 0.5
        cdf += p
        k += int(u > cdf)
        p *= lam * (1.0 / 3.0)
        cdf += p
        k += int(u > cdf)
        p *= lam * 0.25
        cdf += p
        k += int(u > cdf)
        p *= lam * 0.2
        cdf += p
        k += int(u > cdf)
        if u > cdf:  # k == 6 so far: continue the plain inversion from F5
            m = 5
            while u > cdf and m < 200:
                m += 1
                p *= lam / m
                cdf += p
            k = m
        return k, state
    slam = math.sqrt(lam)
    loglam = math.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    invalpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        state = state + _GOLDEN
        uu = _unit(_mix(state)) - 0.5
        state = state + _GOLDEN
        v = _unit(_mix(state))
        us = 0.5 - abs(uu)
        k = math.floor((2.0 * a / us + b) * uu + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return int(k), state
        if k < 0 or (us < 0.013 and v > us):
            continue
        if (math.log(v) + math.log(invalpha) - math.log(a / (us * us) + b)) <= (
            -lam + k * loglam - math.lgamma(k + 1.0)
        ):
            return int(k), state


@numba.njit(cache=True)
def _gauss(state):
    """Standard normal deviate (Box–Muller); returns ``(g, state)``."""
    state = state + _GOLDEN
    u1 = _unit(_mix(state))
    state = state + _GOLDEN
    u2 = _unit(_mix(state))
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2), state


@numba.njit(cache=True)
def hash_uniforms(keys, seed, n):
    """``n`` uniforms in (0, 1) per uint64 key, a pure function of (key, seed).

    Parameters
    ----------
    keys : ndarray of uint64, shape (N,)
    seed : uint64
    n : int

    Returns
    -------
    ndarray, shape (N, n)
    """
    out = np.empty((keys.shape[0], n))
    for i in range(keys.shape[0]):
        state = _mix(keys[i] ^ _mix(seed + _GOLDEN))
        for j in range(n):
            state = state + _GOLDEN
            out[i, j] = _unit(_mix(state))
    return out


@numba.njit(inline="always", cache=True)
def _line_sphere(pc, cc, pp, rho):
    """Roots l of |p0 + l·c|² = rho² given pc = p0·c, cc = |c|², pp = |p0|²; (nan, nan) if none."""
    disc = pc * pc - cc * (pp - rho * rho)
    if disc < 0.0:
        return np.nan, np.nan
    r = math.sqrt(disc)
    return (-pc - r) / cc, (-pc + r) / cc


@numba.njit(cache=True)
def _count_or_fill(A, s0, inv_wl, qmax2, lim, sig_dom2, eta2, bw_coeff, nsig, fill, hkl, eps, sig):
    """Loop over (h, k) and the l values near the Ewald sphere; count or store candidates.

    For fixed (h, k) the points ``s0 + A·(h, k, l)`` lie on a line; only the l
    in the spherical shell ``1/λ ± δ`` (δ = nsig·σ at the resolution limit,
    the largest σ) can pass, so l is searched only over the line's one or two
    chords through that shell, then tested exactly.
    """
    n = 0
    s0x, s0y, s0z = s0[0], s0[1], s0[2]
    cx, cy, cz = A[0, 2], A[1, 2], A[2, 2]
    cc = cx * cx + cy * cy + cz * cz
    bwm = bw_coeff * qmax2
    delta = nsig * math.sqrt(sig_dom2 + eta2 * qmax2 + bwm * bwm) * 1.0001 + 1e-12
    r_out = inv_wl + delta
    r_in = inv_wl - delta
    for h in range(-lim[0], lim[0] + 1):
        for k in range(-lim[1], lim[1] + 1):
            bx = A[0, 0] * h + A[0, 1] * k
            by = A[1, 0] * h + A[1, 1] * k
            bz = A[2, 0] * h + A[2, 1] * k
            px, py, pz = bx + s0x, by + s0y, bz + s0z
            pc = px * cx + py * cy + pz * cz
            pp = px * px + py * py + pz * pz
            a1, a2 = _line_sphere(pc, cc, pp, r_out)
            if a1 != a1:  # the line misses the shell
                continue
            b1, b2 = (np.nan, np.nan) if r_in <= 0.0 else _line_sphere(pc, cc, pp, r_in)
            for seg in range(2):
                if b1 != b1:  # the line misses the inner sphere: one chord
                    if seg == 1:
                        break
                    lo, hi = a1, a2
                elif seg == 0:
                    lo, hi = a1, b1
                else:
                    lo, hi = b2, a2
                l0 = max(int(math.ceil(lo)), -lim[2])
                l1 = min(int(math.floor(hi)), lim[2])
                for l in range(l0, l1 + 1):
                    qx = bx + cx * l
                    qy = by + cy * l
                    qz = bz + cz * l
                    qq = qx * qx + qy * qy + qz * qz
                    if qq <= 0.0 or qq > qmax2:
                        continue
                    tx, ty, tz = qx + s0x, qy + s0y, qz + s0z
                    e = math.sqrt(tx * tx + ty * ty + tz * tz) - inv_wl
                    bw = bw_coeff * qq
                    s2 = sig_dom2 + eta2 * qq + bw * bw
                    if e * e > nsig * nsig * s2:
                        continue
                    if fill:
                        hkl[n, 0] = h
                        hkl[n, 1] = k
                        hkl[n, 2] = l
                        eps[n] = e
                        sig[n] = math.sqrt(s2)
                    n += 1
    return n


@numba.njit(cache=True)
def near_ewald_candidates(A, s0, d_min, lim, sig_dom, eta, bw_coeff, nsig):
    """Miller indices whose reciprocal-lattice points lie near the Ewald sphere.

    Parameters
    ----------
    A : ndarray, shape (3, 3)
        Setting matrix (1/Å).
    s0 : ndarray, shape (3,)
        Incident beam vector (1/Å).
    d_min : float
        Resolution limit (Å).
    lim : ndarray of int64, shape (3,)
        Largest |h|, |k|, |l| searched.
    sig_dom : float
        Excitation-error width from the domain size (1/Å).
    eta : float
        Angular (Gaussian σ) mosaic spread, radians: adds ``|r|·eta``.
    bw_coeff : float
        ``λ·σ_bw/2`` (Å): adds ``|r|²·bw_coeff`` (bandpass).
    nsig : float
        Keep reflections with |ε| ≤ nsig·σ_ε.

    Returns
    -------
    hkl : ndarray of int32, shape (N, 3)
    eps : ndarray, shape (N,)
        Excitation error ``|s0 + r| - 1/λ`` (1/Å).
    sig : ndarray, shape (N,)
        σ_ε of each reflection (1/Å).
    """
    inv_wl = math.sqrt(s0[0] ** 2 + s0[1] ** 2 + s0[2] ** 2)
    qmax2 = 1.0 / (d_min * d_min)
    dummy_h = np.empty((0, 3), np.int32)
    dummy_f = np.empty(0)
    n = _count_or_fill(A, s0, inv_wl, qmax2, lim, sig_dom * sig_dom, eta * eta, bw_coeff, nsig, False,
                       dummy_h, dummy_f, dummy_f)
    hkl = np.empty((n, 3), np.int32)
    eps = np.empty(n)
    sig = np.empty(n)
    _count_or_fill(A, s0, inv_wl, qmax2, lim, sig_dom * sig_dom, eta * eta, bw_coeff, nsig, True, hkl, eps, sig)
    return hkl, eps, sig


@numba.njit(cache=True)
def first_panel_hits(d_inverse, size_mm, s1):
    """Where rays hit the detector: the first panel (in panel order) whose extent holds the hit.

    The same rule as :func:`stillshot.geometry.ray_intersection` with
    ``panel=None`` (dxtbx's ``get_ray_intersection``), without the
    P × N temporaries.

    Parameters
    ----------
    d_inverse : ndarray, shape (P, 3, 3)
        Inverse d matrices of the panels.
    size_mm : ndarray, shape (P, 2)
        Panel extents, mm.
    s1 : ndarray, shape (N, 3)
        Ray directions.

    Returns
    -------
    panel : ndarray of int64, shape (N,)
        Panel index, -1 for a miss.
    xy_mm : ndarray, shape (N, 2)
        In-plane position on that panel, mm (NaN for a miss).
    """
    n = s1.shape[0]
    npan = d_inverse.shape[0]
    panel = np.full(n, -1, np.int64)
    xy = np.full((n, 2), np.nan)
    for r in range(n):
        sx, sy, sz = s1[r, 0], s1[r, 1], s1[r, 2]
        for p in range(npan):
            d = d_inverse[p]
            w = d[2, 0] * sx + d[2, 1] * sy + d[2, 2] * sz
            if not (w > 0.0):
                continue
            x = (d[0, 0] * sx + d[0, 1] * sy + d[0, 2] * sz) / w
            y = (d[1, 0] * sx + d[1, 1] * sy + d[1, 2] * sz) / w
            if x >= 0.0 and y >= 0.0 and x <= size_mm[p, 0] and y <= size_mm[p, 1]:
                panel[r] = p
                xy[r, 0] = x
                xy[r, 1] = y
                break
    return panel, xy


@numba.njit(cache=True)
def render_spots_into(img, xs, ys, sigmas, photons, nsig):
    """Add pixel-integrated 2-D Gaussian spots to one panel's photon buffer.

    Each spot's profile is integrated exactly over every pixel (erf
    differences along fast and slow), over a box of ±``nsig``·σ, and
    normalised so that the whole box holds ``photons`` (parts of the box off
    the panel are lost, as on a real detector).

    Parameters
    ----------
    img : ndarray, shape (n_slow, n_fast), float
        Photon buffer, modified in place.
    xs, ys : ndarray, shape (N,)
        Spot centres in px (pixel-edge convention: pixel i spans [i, i+1)).
    sigmas : ndarray, shape (N,)
        Gaussian σ in px.
    photons : ndarray, shape (N,)
        Expected photons per spot.
    nsig : float
        Half-width of the rendered box in σ.
    """
    ny, nx = img.shape
    wx = np.empty(256)
    wy = np.empty(256)
    for n in range(xs.shape[0]):
        x, y, s, ph = xs[n], ys[n], sigmas[n], photons[n]
        if not (ph > 0.0) or not (s > 0.0):
            continue
        r = int(math.ceil(nsig * s))
        if 2 * r + 2 > 255:
            r = 126
        ix0 = int(math.floor(x)) - r
        iy0 = int(math.floor(y)) - r
        m = 2 * r + 1
        if ix0 + m <= 0 or iy0 + m <= 0 or ix0 >= nx or iy0 >= ny:
            continue
        inv = 1.0 / (math.sqrt(2.0) * s)
        prev = math.erf((ix0 - x) * inv)
        first = prev
        for i in range(m):
            cur = math.erf((ix0 + i + 1 - x) * inv)
            wx[i] = cur - prev
            prev = cur
        normx = prev - first
        prev = math.erf((iy0 - y) * inv)
        first = prev
        for j in range(m):
            cur = math.erf((iy0 + j + 1 - y) * inv)
            wy[j] = cur - prev
            prev = cur
        normy = prev - first
        scale = ph / (normx * normy)
        for j in range(m):
            yy = iy0 + j
            if yy < 0 or yy >= ny:
                continue
            fy = scale * wy[j]
            for i in range(m):
                xx = ix0 + i
                if xx < 0 or xx >= nx:
                    continue
                img[yy, xx] += fy * wx[i]


@numba.njit(cache=True)
def expected_photons(spots, two_sin_theta, geom, table, t0, dt, inv_wl):
    """Noise-free photons per pixel: background (from a 1-D table in 1/d) + spots.

    Parameters
    ----------
    spots : ndarray, shape (n_slow, n_fast)
        Spot photons.
    two_sin_theta : ndarray, shape (n_slow, n_fast), float32
        2·sin θ of each pixel centre (dimensionless; 1/d = value/λ).
    geom : ndarray, shape (n_slow, n_fast), float32
        Relative solid angle × polarization of each pixel (dimensionless).
    table : ndarray, shape (M,)
        Background photons per pixel at 1/d = t0 + i·dt (before ``geom``).
    t0, dt : float
        Table origin and step (1/Å).
    inv_wl : float
        1/λ (1/Å).

    Returns
    -------
    ndarray, shape (n_slow, n_fast), float64
    """
    ny, nx = spots.shape
    out = np.empty((ny, nx))
    m = table.shape[0]
    for j in range(ny):
        for i in range(nx):
            f = (two_sin_theta[j, i] * inv_wl - t0) / dt
            if f < 0.0:
                f = 0.0
            k = int(f)
            if k >= m - 1:
                bg = table[m - 1]
            else:
                w = f - k
                bg = table[k] * (1.0 - w) + table[k + 1] * w
            out[j, i] = bg * geom[j, i] + spots[j, i]
    return out


_POW2_NEG = np.array([2.0**-n for n in range(64)])


@numba.njit(inline="always", fastmath=True, cache=True)
def _exp_neg(x):
    """exp(-x) for 0 ≤ x < 44 to 2e-7 relative, branch-free (vectorizes)."""
    y = x * 1.4426950408889634
    n = int(y)
    z = (y - n) * 0.6931471805599453
    p = 1.0 - z * (1.0 - z * 0.5 * (1.0 - z * (1.0 / 3.0) * (1.0 - z * 0.25 * (1.0 - z * 0.2 * (
        1.0 - z * (1.0 / 6.0) * (1.0 - z * (1.0 / 7.0) * (1.0 - z * 0.125)))))))
    return p * _POW2_NEG[n]


@numba.njit(fastmath=True, cache=True)
def _counts_fast(spots, two_sin_theta, geom, table, t0, dt, inv_wl, base, out):
    """Photon counts where cheap: lam ≤ 6 and k ≤ 5 (branch-free); -1 elsewhere.

    Row by row: the means in one loop (table look-up), the counts in a
    second, branch-free loop that LLVM vectorizes.
    """
    ny, nx = spots.shape
    m = table.shape[0]
    a = inv_wl / dt
    b = -t0 / dt
    top = m - 1.001
    lamrow = np.empty(nx)
    for j in range(ny):
        ts = two_sin_theta[j]
        gm = geom[j]
        sp = spots[j]
        o = out[j]
        for i in range(nx):
            f = min(max(ts[i] * a + b, 0.0), top)
            k0 = int(f)
            w = f - k0
            lamrow[i] = max((table[k0] + (table[k0 + 1] - table[k0]) * w) * gm[i] + sp[i], 0.0)
        off = np.uint64(j * nx)
        for i in range(nx):
            lam = lamrow[i]
            state = base ^ ((off + np.uint64(i)) * _M2)
            u = _unit(_mix(state + _GOLDEN))
            lc = min(lam, 6.0)
            p = _exp_neg(lc)
            cdf = p
            k = np.int32(u > cdf)
            p *= lc
            cdf += p
            k += np.int32(u > cdf)
            p *= lc * 0.5
            cdf += p
            k += np.int32(u > cdf)
            p *= lc * (1.0 / 3.0)
            cdf += p
            k += np.int32(u > cdf)
            p *= lc * 0.25
            cdf += p
            k += np.int32(u > cdf)
            p *= lc * 0.2
            cdf += p
            k += np.int32(u > cdf)
            bad = np.int32((k == 6) | (lam > 6.0))
            o[i] = k - bad * (k + 1)


@numba.njit(fastmath=True, cache=True)
def _to_adu(counts, gain, pedestal, lo, hi):
    """counts -> round(gain·counts + pedestal) clipped to [lo, hi], in place."""
    ny, nx = counts.shape
    for j in range(ny):
        row = counts[j]
        for i in range(nx):
            v = math.floor(gain * row[i] + pedestal + 0.5)
            row[i] = np.int32(min(max(v, lo), hi))


@numba.njit(cache=True)
def expose(spots, two_sin_theta, geom, table, t0, dt, inv_wl, gain, pedestal, read_noise, lo, hi, key):
    """One panel's recorded image: Poisson photons, gain, pedestal, read noise, saturation.

    Parameters
    ----------
    spots, two_sin_theta, geom, table, t0, dt, inv_wl
        As :func:`expected_photons`.
    gain : float
        ADU per photon.
    pedestal : float
        ADU added to every pixel.
    read_noise : float
        Gaussian read noise σ, ADU (0: none, as a photon-counting detector).
    lo, hi : float
        Trusted range (ADU); values are clipped to [lo, hi] (``hi`` =
        saturation: a saturated pixel reads ``hi``).
    key : uint64
        Random key of this panel of this shot.

    Returns
    -------
    ndarray of int32, shape (n_slow, n_fast)
        ADU.

    Notes
    -----
    Counts are drawn by inversion from one uniform per pixel (the first six
    CDF terms branch-free, which vectorizes), and exactly by :func:`_poisson`
    from the same random stream where the count exceeds 5 or the mean
    exceeds 6 photons (spots).
    """
    ny, nx = spots.shape
    out = np.empty((ny, nx), np.int32)
    base = _mix(key)
    _counts_fast(spots, two_sin_theta, geom, table, t0, dt, inv_wl, base, out)
    m = table.shape[0]
    inv_dt = 1.0 / dt
    for j in range(ny):
        for i in range(nx):
            if out[j, i] >= 0:
                continue
            f = (two_sin_theta[j, i] * inv_wl - t0) * inv_dt
            f = min(max(f, 0.0), m - 1.001)
            k0 = int(f)
            w = f - k0
            lam = (table[k0] + (table[k0 + 1] - table[k0]) * w) * geom[j, i] + spots[j, i]
            state = base ^ (np.uint64(j * nx + i) * _M2)
            n, state = _poisson(max(lam, 0.0), state)
            out[j, i] = min(n, 2147483647)
    if gain == 1.0 and pedestal == 0.0 and read_noise <= 0.0 and lo <= 0.0 and hi >= 2147483647.0:
        return out
    if read_noise <= 0.0:
        _to_adu(out, gain, pedestal, lo, hi)
        return out
    for j in range(ny):
        for i in range(nx):
            # the noise stream starts after the photon draws' (offset key)
            state = (base ^ (np.uint64(j * nx + i) * _M2)) + np.uint64(0x5DEECE66D)
            g, state = _gauss(state)
            v = math.floor(gain * out[j, i] + pedestal + read_noise * g + 0.5)
            out[j, i] = np.int32(min(max(v, lo), hi))
    return out


@numba.njit(cache=True)
def byte_offset_encode(flat, out):
    """CBF ``x-CBF_BYTE_OFFSET`` compression of int32 values.

    Parameters
    ----------
    flat : ndarray of int32 or int64, shape (N,)
        Values in file order.
    out : ndarray of uint8
        Buffer of at least 15·N bytes (7·N when no two consecutive values
        differ by more than 2³¹ - 1).

    Returns
    -------
    int
        Number of bytes written.
    """
    prev = np.int64(0)
    p = 0
    for i in range(flat.shape[0]):
        cur = np.int64(flat[i])
        d = cur - prev
        prev = cur
        if -127 <= d <= 127:
            out[p] = np.uint8(d & 0xFF)
            p += 1
        elif -32767 <= d <= 32767:
            out[p] = 0x80
            out[p + 1] = np.uint8(d & 0xFF)
            out[p + 2] = np.uint8((d >> 8) & 0xFF)
            p += 3
        elif -2147483647 <= d <= 2147483647:
            out[p] = 0x80
            out[p + 1] = 0x00
            out[p + 2] = 0x80
            out[p + 3] = np.uint8(d & 0xFF)
            out[p + 4] = np.uint8((d >> 8) & 0xFF)
            out[p + 5] = np.uint8((d >> 16) & 0xFF)
            out[p + 6] = np.uint8((d >> 24) & 0xFF)
            p += 7
        else:  # 64-bit escape (only for jumps across most of the int32 range)
            out[p] = 0x80
            out[p + 1] = 0x00
            out[p + 2] = 0x80
            out[p + 3] = 0x00
            out[p + 4] = 0x00
            out[p + 5] = 0x00
            out[p + 6] = 0x80
            for b in range(8):
                out[p + 7 + b] = np.uint8((d >> (8 * b)) & 0xFF)
            p += 15
    return p
