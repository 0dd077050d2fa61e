"""Hot loops of spot finding (numba).

Every public function here is pure: arrays in, new arrays out, options
keyword-only, inputs never written.  The ``_impl`` functions are the compiled
bodies (positional arguments, as numba wants them).

Window sums
-----------
DIALS computes the local sums of the dispersion algorithms from summed-area
tables (three doubles and an int per pixel).  Here the same sums come from
running column sums updated row by row plus a prefix sum along the row, so
the state is O(width) instead of O(pixels).  For integer-valued images (every
counting detector and integer CBFs) all sums are exact integers in float64
(below 2**53), so the classification is bit-for-bit the one DIALS computes;
for float images both are subject to rounding of the same order.

Pixel values at or above ``2**24`` are left out of the sums, as DIALS does.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = [
    "BIG",
    "dispersion_threshold",
    "dispersion_extended_threshold",
    "estimate_global_threshold",
    "label_runs",
    "spot_statistics",
    "ring_sums",
    "radial_threshold",
    "erode_core",
    "dispersion_pixels",
    "valid_pixels",
    "label_pixels",
    "pixel_spot_blocks",
    "stats_from_blocks",
]

#: Pixel values at or above this (ADU) are excluded from the local sums (DIALS's BIG).
BIG = float(1 << 24)

_JIT = dict(cache=True, nogil=True)


# ---------------------------------------------------------------------------
# dispersion thresholds (DIALS DispersionThreshold / DispersionExtendedThreshold)
#
# Pass 1 streams the image once.  As a row enters the box its validity
# (static mask and trusted range) is computed and stored in the same loop
# that adds it to running column sums (and subtracts the row leaving the
# box; float64, exact for integer data); a prefix sum along the row gives the
# box sums, and a vectorised loop tests the index of dispersion.  That loop
# compares squares instead of calling sqrt (a > x·σ_b·√(2(m−1)) ⇔ a > 0 and
# a² > 2σ_b²(m−1)x²); pixels within 1e-10 (relative) of the tie are re-tested
# with DIALS's own expression, so the outcome is DIALS's bit for bit.  Rows
# without a valid pixel (module gaps) skip the test.  Everything after
# pass 1 touches only the (few) flagged pixels.

_TIE = 1e-10


@nb.njit(**_JIT)
def _valid_row(image, static, r, lo, hi, use_tr, valid):
    nx = image.shape[1]
    for i in range(nx):
        v = np.float64(image[r, i])
        valid[r, i] = static[r, i] and ((not use_tr) or (v > lo and v < hi))


@nb.njit(**_JIT)
def _cols_both(image, valid, jn, jo, colm, colx, coly, big):
    for i in range(image.shape[1]):
        vn = image[jn, i]
        vo = image[jo, i]
        wn = valid[jn, i] and vn < big
        wo = valid[jo, i] and vo < big
        an = colx.dtype.type(vn) if wn else colx.dtype.type(0)
        ao = colx.dtype.type(vo) if wo else colx.dtype.type(0)
        colm[i] += colm.dtype.type(wn) - colm.dtype.type(wo)
        colx[i] += an - ao
        coly[i] += an * an - ao * ao


@nb.njit(**_JIT)
def _cols_one(image, valid, r, sign, colm, colx, coly, big):
    for i in range(image.shape[1]):
        v = image[r, i]
        w = valid[r, i] and v < big
        a = colx.dtype.type(v) if w else colx.dtype.type(0)
        colm[i] += sign * colm.dtype.type(w)
        colx[i] += sign * a
        coly[i] += sign * (a * a)


@nb.njit(**_JIT)
def _update_cols(image, valid, jn, jo, colm, colx, coly):
    """Column sums: add row jn, subtract row jo (each if >= 0); valid pixels below BIG only."""
    big = BIG
    if jn >= 0 and jo >= 0:
        _cols_both(image, valid, jn, jo, colm, colx, coly, big)
    elif jn >= 0:
        _cols_one(image, valid, jn, colm.dtype.type(1), colm, colx, coly, big)
    elif jo >= 0:
        _cols_one(image, valid, jo, colm.dtype.type(-1), colm, colx, coly, big)


@nb.njit(**_JIT)
def _prefix3(colm, colx, coly, pm, px, py):
    a = pm[0]
    b = px[0]
    c = py[0]
    for i in range(colm.shape[0]):
        a += colm[i]
        b += colx[i]
        c += coly[i]
        pm[i + 1] = a
        px[i + 1] = b
        py[i + 1] = c


# Row updates of pass 1 on row views (loops from 0 over 1-D views vectorise):
# ``img``/``st``/``val`` the entering row (its validity is written to ``val``;
# returns True if any pixel is valid), ``imo``/``vao`` the leaving one.  The
# arithmetic is that of _cols_one / _cols_both.  Conditions use ``&``/``|``
# on bools, not ``and``/``or``: short-circuit branches (with the any-valid
# reduction) kept LLVM from vectorising these loops.  _fl_*: m, x, y summed
# in float64 (any dtype); _pk_*: m and x packed in one int64 (integer images
# of up to 32 bits), y in float64.

@nb.njit(**_JIT)
def _fl_enter(img, st, val, lo, hi, use_tr, cm, cx, cy, big):
    anyv = np.uint8(0)
    for i in range(img.shape[0]):
        fv = np.float64(img[i])
        ok = st[i] & ((not use_tr) | ((fv > lo) & (fv < hi)))
        val[i] = ok
        anyv |= np.uint8(ok)
        w = ok & (fv < big)
        a = fv if w else 0.0
        cm[i] += np.float64(w)
        cx[i] += a
        cy[i] += a * a
    return anyv != 0


@nb.njit(**_JIT)
def _fl_enter_leave(img, st, val, imo, vao, lo, hi, use_tr, cm, cx, cy, big):
    anyv = np.uint8(0)
    for i in range(img.shape[0]):
        fv = np.float64(img[i])
        ok = st[i] & ((not use_tr) | ((fv > lo) & (fv < hi)))
        val[i] = ok
        anyv |= np.uint8(ok)
        fo = np.float64(imo[i])
        wn = ok & (fv < big)
        wo = vao[i] & (fo < big)
        an = fv if wn else 0.0
        ao = fo if wo else 0.0
        cm[i] += np.float64(wn) - np.float64(wo)
        cx[i] += an - ao
        cy[i] += an * an - ao * ao
    return anyv != 0


@nb.njit(**_JIT)
def _fl_leave(imo, vao, cm, cx, cy, big):
    for i in range(imo.shape[0]):
        fo = np.float64(imo[i])
        wo = vao[i] & (fo < big)
        a = fo if wo else 0.0
        cm[i] += -1.0 * np.float64(wo)
        cx[i] += -1.0 * a
        cy[i] += -1.0 * (a * a)


@nb.njit(**_JIT)
def _pk_enter(img, st, val, lo, hi, use_tr, cmx, cy, shift, big):
    """:func:`_fl_enter` with m and x packed in one int64 column sum, x·2**shift + m.

    For integer images of up to 32 bits: m and x are exact integers either
    way, so unpacking gives the float sums' values; one prefix stream instead
    of two.  y is summed in float64 as in the float path.
    """
    anyv = np.uint8(0)
    for i in range(img.shape[0]):
        fv = np.float64(img[i])
        ok = st[i] & ((not use_tr) | ((fv > lo) & (fv < hi)))
        val[i] = ok
        anyv |= np.uint8(ok)
        w = ok & (fv < big)
        a = np.int64(img[i]) if w else np.int64(0)
        f = fv if w else 0.0
        cmx[i] += (a << shift) + np.int64(w)
        cy[i] += f * f
    return anyv != 0


@nb.njit(**_JIT)
def _pk_enter_leave(img, st, val, imo, vao, lo, hi, use_tr, cmx, cy, shift, big):
    anyv = np.uint8(0)
    for i in range(img.shape[0]):
        fv = np.float64(img[i])
        ok = st[i] & ((not use_tr) | ((fv > lo) & (fv < hi)))
        val[i] = ok
        anyv |= np.uint8(ok)
        fo = np.float64(imo[i])
        wn = ok & (fv < big)
        wo = vao[i] & (fo < big)
        an = np.int64(img[i]) if wn else np.int64(0)
        ao = np.int64(imo[i]) if wo else np.int64(0)
        fn = fv if wn else 0.0
        fo2 = fo if wo else 0.0
        cmx[i] += ((an << shift) + np.int64(wn)) - ((ao << shift) + np.int64(wo))
        cy[i] += fn * fn - fo2 * fo2
    return anyv != 0


@nb.njit(**_JIT)
def _pk_leave(imo, vao, cmx, cy, shift, big):
    for i in range(imo.shape[0]):
        fo = np.float64(imo[i])
        wo = vao[i] & (fo < big)
        a = np.int64(imo[i]) if wo else np.int64(0)
        f = fo if wo else 0.0
        cmx[i] -= (a << shift) + np.int64(wo)
        cy[i] += -1.0 * (f * f)


@nb.njit(**_JIT)
def _prefix2(cmx, cy, pmx, py):
    a = pmx[0]
    c = py[0]
    for i in range(cmx.shape[0]):
        a += cmx[i]
        c += cy[i]
        pmx[i + 1] = a
        py[i + 1] = c


@nb.njit(**_JIT)
def _classify_interior_pk(mxh, mxl, yh, yl, vrow, frow, n, shift, g, use_gain, nsig_b, min_count):
    """:func:`_classify_interior` with m and x packed (see :func:`_pk_enter`)."""
    mmask = (np.int64(1) << shift) - 1
    nz = np.uint8(0)
    for t in range(n):
        mx = mxh[t] - mxl[t]
        m = np.float64(mx & mmask)
        x = np.float64(mx >> shift)
        y = yh[t] - yl[t]
        f = _flag(m, x, y, vrow[t], g, use_gain, nsig_b, min_count)
        frow[t] = f
        nz |= f
    return nz


@nb.njit(**_JIT)
def _cv_exact(m, x, y, g, use_gain, nsig_b, min_count):
    """DIALS's index-of-dispersion test, written as DIALS writes it."""
    if not (m >= min_count and x >= 0):
        return False
    if use_gain:
        a = m * y - x * x
        c = g * x * (m - 1 + nsig_b * math.sqrt(2 * (m - 1)))
    else:
        a = m * y - x * x - x * (m - 1)
        c = x * nsig_b * math.sqrt(2 * (m - 1))
    return a > c


@nb.njit(**_JIT)
def _flag(m, x, y, v, g, use_gain, nsig_b, min_count):
    """0 no, 1 dispersed, 2 near the tie (decide with :func:`_cv_exact`).

    ``a > c`` is decided as ``a' > 0 and a'² > r`` (a' = a, or a − g·x·(m−1)
    with gain; r = g²x²·σ_b²·2(m−1)) and flagged as a tie when
    ``|a'² − r| < 1e-10·t``, t a bound on the magnitudes the rounding errors
    scale with: a'² + r without gain (a is then DIALS's own value), s² with
    gain, s = |a| + g·x·m·(1 + m·σ_b) (a − g·x·(m−1) may cancel).  Only
    pixels with x >= 0 count (``ok``), so ``|x|`` is ``x`` where it matters.
    """
    ok = v & (m >= min_count) & (x >= 0)
    if use_gain:
        a = m * y - x * x
        ap = a - g * x * (m - 1)
        r = g * g * x * x * (nsig_b * nsig_b) * 2.0 * (m - 1)
        s = abs(a) + x * m * (g + (g * nsig_b) * m)
        d = ap * ap - r
        tie = abs(d) < _TIE * (s * s)
        yes = (ap > 0) & (d > 0)
    else:
        a = m * y - x * x - x * (m - 1)
        r = x * x * (nsig_b * nsig_b) * 2.0 * (m - 1)
        aa = a * a
        d = aa - r
        tie = abs(d) < _TIE * (aa + r)
        yes = (a > 0) & (d > 0)
    return np.uint8(ok) * (np.uint8(yes) + np.uint8(tie) * (np.uint8(2) - np.uint8(yes)))


@nb.njit(**_JIT)
def _classify_interior(mh, ml, xh, xl, yh, yl, vrow, frow, n, g, use_gain, nsig_b, min_count):
    """Flags of n pixels whose boxes lie inside the row, the box ends as aligned slices.

    (Offsets known only at run time kept LLVM from vectorising the loop; with
    the prefix sums passed as slices that start at the box ends it does.)
    Returns the OR of the flags (0: none set).
    """
    nz = np.uint8(0)
    for t in range(n):
        m = np.float64(mh[t] - ml[t])
        x = np.float64(xh[t] - xl[t])
        y = np.float64(yh[t] - yl[t])
        f = _flag(m, x, y, vrow[t], g, use_gain, nsig_b, min_count)
        frow[t] = f
        nz |= f
    return nz


@nb.njit(**_JIT)
def _box_mx(pm, px, pmx, shift, lo, hi):
    """m and x (float64) of the box between prefix indices lo and hi (pmx None: float sums)."""
    if pmx is None:
        return np.float64(pm[hi] - pm[lo]), np.float64(px[hi] - px[lo])
    mx = pmx[hi] - pmx[lo]
    return np.float64(mx & ((np.int64(1) << shift) - 1)), np.float64(mx >> shift)


@nb.njit(**_JIT)
def _classify_edge(pm, px, pmx, py, shift, vrow, frow, i0, i1, kx, nx, g, use_gain, nsig_b, min_count):
    """Flags of pixels i0..i1-1 whose boxes are clipped by the row ends; returns their OR."""
    nz = np.uint8(0)
    for i in range(i0, i1):
        lo = i - kx if i - kx > 0 else 0
        hi = i + kx + 1 if i + kx + 1 < nx else nx
        m, x = _box_mx(pm, px, pmx, shift, lo, hi)
        y = np.float64(py[hi] - py[lo])
        f = _flag(m, x, y, vrow[i], g, use_gain, nsig_b, min_count)
        frow[i] = f
        nz |= f
    return nz


@nb.njit(**_JIT)
def _pass1_impl(image, static, lo, hi, use_tr, g, use_gain, kx, ky, nsig_b, nsig_s, threshold, min_count,
                classic, colmx, shift):
    """The dispersion algorithms; returns (out, valid, flags, done).

    classic=True: out = DIALS ``dispersion`` strong pixels.  classic=False
    (extended): pass 1 flags the pixels passing the index of dispersion test
    (flags 1), they are eroded (core: flags 3) and pass 2 (_final_sparse)
    gives out = the strong pixels; when the core is too large for that
    (done False), out = the core and the caller runs _final_sliding.  Erosion
    and pass 2 run in this call (one call per panel), but pass 1 is not a
    separate kernel called from here: numba would optimise its code twice
    (as a kernel and again inside the caller), doubling the compile time.
    colmx: None for
    float sums of m and x, or int64 zeros (n_fast,) to sum them packed in one
    int64 (integer images of up to 32 bits, ``2**shift`` above the box size;
    see :func:`_pk_enter`).  Numba compiles one version for each (``is None``
    branches are pruned at compile time).
    """
    ny, nx = image.shape
    valid = np.empty((ny, nx), np.bool_)
    flags = np.empty((ny, nx), np.uint8)
    row_any = np.zeros(ny, np.bool_)  # row has a valid pixel
    coly = np.zeros(nx, np.float64)
    py = np.zeros(nx + 1, np.float64)
    if colmx is None:
        colm = np.zeros(nx, np.float64)
        colx = np.zeros(nx, np.float64)
        pm = np.zeros(nx + 1, np.float64)
        px = np.zeros(nx + 1, np.float64)
        pmx = None
    else:
        colm = colx = pm = px = np.zeros(1, np.float64)  # unused
        pmx = np.zeros(nx + 1, np.int64)
    big = BIG
    cap = 1024
    idx = np.empty(cap, np.int64)
    n = 0
    for r in range(min(ky, ny)):
        if colmx is None:
            row_any[r] = _fl_enter(image[r], static[r], valid[r], lo, hi, use_tr, colm, colx, coly, big)
        else:
            row_any[r] = _pk_enter(image[r], static[r], valid[r], lo, hi, use_tr, colmx, coly, shift, big)
    i_lo = min(kx, nx)
    i_hi = max(nx - kx, i_lo)
    w = 2 * kx + 1
    nn = i_hi - i_lo
    for j in range(ny):
        jn = j + ky
        jo = j - ky - 1
        if colmx is None:
            if jn < ny and jo >= 0:
                row_any[jn] = _fl_enter_leave(image[jn], static[jn], valid[jn], image[jo], valid[jo], lo, hi,
                                              use_tr, colm, colx, coly, big)
            elif jn < ny:
                row_any[jn] = _fl_enter(image[jn], static[jn], valid[jn], lo, hi, use_tr, colm, colx, coly, big)
            elif jo >= 0:
                _fl_leave(image[jo], valid[jo], colm, colx, coly, big)
        else:
            if jn < ny and jo >= 0:
                row_any[jn] = _pk_enter_leave(image[jn], static[jn], valid[jn], image[jo], valid[jo], lo, hi,
                                              use_tr, colmx, coly, shift, big)
            elif jn < ny:
                row_any[jn] = _pk_enter(image[jn], static[jn], valid[jn], lo, hi, use_tr, colmx, coly, shift, big)
            elif jo >= 0:
                _pk_leave(image[jo], valid[jo], colmx, coly, shift, big)
        frow = flags[j]
        if not row_any[j]:
            frow[:] = 0  # no valid pixel: nothing to test (module gaps)
            continue
        vrow = valid[j]
        nz = np.uint8(0)
        if colmx is None:
            _prefix3(colm, colx, coly, pm, px, py)
            if nn > 0:
                nz |= _classify_interior(pm[w:w + nn], pm[:nn], px[w:w + nn], px[:nn], py[w:w + nn], py[:nn],
                                         vrow[i_lo:i_hi], frow[i_lo:i_hi], nn, g, use_gain, nsig_b, min_count)
        else:
            _prefix2(colmx, coly, pmx, py)
            if nn > 0:
                nz |= _classify_interior_pk(pmx[w:w + nn], pmx[:nn], py[w:w + nn], py[:nn], vrow[i_lo:i_hi],
                                            frow[i_lo:i_hi], nn, shift, g, use_gain, nsig_b, min_count)
        nz |= _classify_edge(pm, px, pmx, py, shift, vrow, frow, 0, i_lo, kx, nx, g, use_gain, nsig_b, min_count)
        nz |= _classify_edge(pm, px, pmx, py, shift, vrow, frow, i_hi, nx, kx, nx, g, use_gain, nsig_b,
                             min_count)
        if nz == 0:
            continue
        # the flagged pixels, 64 at a time (blocks without any are skipped by a vectorised OR)
        for c0 in range(0, nx, 64):
            blk = frow[c0:c0 + 64]
            any_ = np.uint8(0)
            for t in range(blk.shape[0]):
                any_ |= blk[t]
            if any_ == 0:
                continue
            for t in range(blk.shape[0]):
                f = blk[t]
                if f == 0:
                    continue
                i = c0 + t
                lo_ = i - kx if i - kx > 0 else 0
                hi_ = i + kx + 1 if i + kx + 1 < nx else nx
                m, x = _box_mx(pm, px, pmx, shift, lo_, hi_)
                if f == 2:
                    y = np.float64(py[hi_] - py[lo_])
                    f = np.uint8(_cv_exact(m, x, y, g, use_gain, nsig_b, min_count))
                    blk[t] = f
                    if f == 0:
                        continue
                if classic:
                    src = np.float64(image[j, i])
                    if not src > threshold:
                        continue
                    b = m * src - x
                    d = nsig_s * math.sqrt(g * x * m) if use_gain else nsig_s * math.sqrt(x * m)
                    if not b > d:
                        continue
                if n == cap:
                    cap *= 2
                    new = np.empty(cap, np.int64)
                    new[:n] = idx[:n]
                    idx = new
                idx[n] = j * nx + i
                n += 1
    if classic:
        return idx[:n], valid, flags, True
    core = _erode_sparse(flags, idx[:n], min(kx, ky))
    if core.shape[0] >= ny * nx // 10:
        return core, valid, flags, False
    return _final_sparse(image, valid, flags, core, g, use_gain, kx, ky, nsig_s, threshold), valid, flags, True


@nb.njit(**_JIT)
def _erode_sparse(flags, idx, distance):
    """Indices of flagged pixels with no unflagged pixel within Chebyshev distance - 1.

    Pixels outside the image do not count (DIALS's chebyshev_distance starts
    its sweeps from height + width).  Core pixels get flag 3 in ``flags``.

    The (2r+1)² box test is done separably: a flagged pixel whose row segment
    [i-r, i+r] is all flagged gets bit 4 (flag 5), and a pixel is core when
    its column segment [j-r, j+r] is all bit 4 (2(2r+1) reads, not (2r+1)²).
    Afterwards flags are 0 (not flagged), 3 (core) or 1 / 5 (flagged, not core).
    """
    ny, nx = flags.shape
    r = distance - 1
    out = np.empty(idx.shape[0], np.int64)
    n = 0
    if r <= 0:
        for k in range(idx.shape[0]):
            out[k] = idx[k]
        n = idx.shape[0]
    else:
        # idx is in raster order: rows by stepping, not by division
        j = 0
        row0 = 0
        for k in range(idx.shape[0]):
            p = idx[k]
            while p >= row0 + nx:
                j += 1
                row0 += nx
            i = p - row0
            i0 = i - r if i - r > 0 else 0
            i1 = i + r + 1 if i + r + 1 < nx else nx
            ok = True
            for ii in range(i0, i1):
                if flags[j, ii] == 0:
                    ok = False
                    break
            if ok:
                flags[j, i] |= 4
        j = 0
        row0 = 0
        for k in range(idx.shape[0]):
            p = idx[k]
            while p >= row0 + nx:
                j += 1
                row0 += nx
            i = p - row0
            j0 = j - r if j - r > 0 else 0
            j1 = j + r + 1 if j + r + 1 < ny else ny
            ok = True
            for jj in range(j0, j1):
                if flags[jj, i] & 4 == 0:
                    ok = False
                    break
            if ok:
                out[n] = p
                n += 1
    fl = flags.reshape(-1)
    for k in range(n):
        fl[out[k]] = 3
    return out[:n]


@nb.njit(**_JIT)
def _final_sparse(image, valid, flags, core, g, use_gain, kx, ky, nsig_s, threshold):
    """DIALS extended pass 2 at the core pixels: mean of valid non-core pixels in the widened box.

    Core pixels of a row are grouped into segments whose boxes overlap; for
    each segment the column sums over the box rows are made once and a
    prefix sum gives every pixel's box sum.
    """
    ny, nx = image.shape
    kx2 = kx + 2
    ky2 = ky + 2
    out = np.empty(core.shape[0], np.int64)
    colm = np.zeros(nx + 1, np.float64)
    colx = np.zeros(nx + 1, np.float64)
    n = 0
    k = 0
    nc = core.shape[0]
    while k < nc:
        j = core[k] // nx
        # the segment: core pixels of row j whose boxes overlap the previous one's
        k1 = k + 1
        row_end = (j + 1) * nx
        while k1 < nc and core[k1] < row_end and core[k1] - core[k1 - 1] <= 2 * kx2 + 1:
            k1 += 1
        ia = core[k] - j * nx - kx2
        ib = core[k1 - 1] - j * nx + kx2 + 1
        ia = ia if ia > 0 else 0
        ib = ib if ib < nx else nx
        j0 = j - ky2 if j - ky2 > 0 else 0
        j1 = j + ky2 + 1 if j + ky2 + 1 < ny else ny
        # prefix sums over columns ia..ib-1 of the box rows; colm[c - ia + 1] = sum up to column c
        colm[0] = 0.0
        colx[0] = 0.0
        sm = 0.0
        sx = 0.0
        for ii in range(ia, ib):
            cm = 0.0
            cx = 0.0
            for jj in range(j0, j1):
                if valid[jj, ii] and flags[jj, ii] != 3:
                    v = np.float64(image[jj, ii])
                    if v < BIG:
                        cm += 1.0
                        cx += v
            sm += cm
            sx += cx
            colm[ii - ia + 1] = sm
            colx[ii - ia + 1] = sx
        for kk in range(k, k1):
            p = core[kk]
            i = p - j * nx
            src = np.float64(image[j, i])
            if not src > threshold:
                continue
            lo = i - kx2 if i - kx2 > ia else ia
            hi = i + kx2 + 1 if i + kx2 + 1 < ib else ib
            m = colm[hi - ia] - colm[lo - ia]
            x = colx[hi - ia] - colx[lo - ia]
            if x < 0:
                continue
            mean = x / m if m >= 2 else 0.0
            if use_gain:
                bound = mean + nsig_s * math.sqrt(g * mean)
            else:
                bound = mean + nsig_s * math.sqrt(mean)
            if src >= bound:
                out[n] = p
                n += 1
        k = k1
    return out[:n]


@nb.njit(**_JIT)
def _final_sliding(image, valid, flags, core, g, use_gain, kx, ky, nsig_s, threshold):
    """As _final_sparse, with running sums (for shots with very many core pixels)."""
    ny, nx = image.shape
    colm = np.zeros(nx, np.float64)
    colx = np.zeros(nx, np.float64)
    coly = np.zeros(nx, np.float64)
    pm = np.zeros(nx + 1, np.float64)
    px = np.zeros(nx + 1, np.float64)
    py = np.zeros(nx + 1, np.float64)
    bg = np.empty((ny, nx), np.bool_)
    for j in range(ny):
        for i in range(nx):
            bg[j, i] = valid[j, i] and flags[j, i] != 3
    kx2 = kx + 2
    ky2 = ky + 2
    out = np.empty(core.shape[0], np.int64)
    n = 0
    k = 0
    for r in range(min(ky2, ny)):
        _update_cols(image, bg, r, -1, colm, colx, coly)
    for j in range(ny):
        _update_cols(image, bg, j + ky2 if j + ky2 < ny else -1, j - ky2 - 1, colm, colx, coly)
        if k >= core.shape[0] or core[k] // nx != j:
            continue
        _prefix3(colm, colx, coly, pm, px, py)
        while k < core.shape[0] and core[k] // nx == j:
            p = core[k]
            k += 1
            i = p - j * nx
            src = np.float64(image[j, i])
            if not src > threshold:
                continue
            lo_ = i - kx2 if i - kx2 > 0 else 0
            hi_ = i + kx2 + 1 if i + kx2 + 1 < nx else nx
            m = np.float64(pm[hi_] - pm[lo_])
            x = np.float64(px[hi_] - px[lo_])
            if x < 0:
                continue
            mean = x / m if m >= 2 else 0.0
            if use_gain:
                bound = mean + nsig_s * math.sqrt(g * mean)
            else:
                bound = mean + nsig_s * math.sqrt(mean)
            if src >= bound:
                out[n] = p
                n += 1
    return out[:n]


def _check(image, mask, kernel_size, min_count, gain):
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError("image must be 2-D (n_slow, n_fast)")
    if image.dtype.kind not in "iuf":
        raise ValueError(f"image dtype {image.dtype} is not numeric")
    if image.dtype.kind == "u" and image.dtype.itemsize == 8:
        image = image.astype(np.int64)
    mask = np.asarray(mask, dtype=np.bool_)
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image {image.shape}")
    ky, kx = int(kernel_size[0]), int(kernel_size[1])
    if kx < 1 or ky < 1:
        raise ValueError("kernel_size must be >= 1 in both directions")
    n_kernel = (2 * kx + 1) * (2 * ky + 1)
    if min_count <= 0:
        min_count = n_kernel
    elif not 1 < min_count <= n_kernel:
        raise ValueError(f"min_local must be in 2..{n_kernel} (or <= 0 for the whole box)")
    if gain is not None:
        if np.ndim(gain) != 0:
            raise ValueError("gain must be a single number (ADU per photon); calibrate with a gain map instead")
        gain = float(gain)
        if not gain > 0:
            raise ValueError("gain must be > 0")
    return image, mask, kx, ky, int(min_count), gain


def _trusted(trusted_range):
    if trusted_range is None:
        return 0.0, 0.0, False
    lo, hi = (float(v) for v in trusted_range)
    return lo, hi, lo < hi


def dispersion_pixels(image, mask, *, extended=True, gain=None, kernel_size=(3, 3), sigma_background=6.0,
                      sigma_strong=3.0, min_local=2, global_threshold=0.0, trusted_range=None):
    """Strong pixels of DIALS's dispersion algorithms, as flat indices, and the validity mask.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast)
        Pixel values (ADU), any integer or float dtype.
    mask : ndarray of bool, same shape
        Usable pixels (before the trusted range).
    extended : bool
        ``dispersion_extended`` (True) or ``dispersion``.
    gain : float, optional
        Gain (ADU per photon); None: DIALS's gain-free formulas.
    kernel_size, sigma_background, sigma_strong, min_local, global_threshold
        As :func:`dispersion_threshold`.
    trusted_range : (float, float), optional
        Pixels with values outside the open interval (ADU) are invalid too.

    Returns
    -------
    strong : ndarray of int64
        Flat indices (raster order) of the strong pixels.
    valid : ndarray of bool, shape (n_slow, n_fast)
        ``mask`` and inside the trusted range.
    """
    image, mask, kx, ky, min_count, gain = _check(image, mask, kernel_size, min_local, gain)
    if sigma_background < 0 or sigma_strong < 0 or global_threshold < 0:
        raise ValueError("sigma_background, sigma_strong and global_threshold must be >= 0")
    lo, hi, use_tr = _trusted(trusted_range)
    use_gain = gain is not None
    g = gain if use_gain else 1.0
    n_kernel = (2 * kx + 1) * (2 * ky + 1)
    # m and x packed in one int64 (exact) for integer images of up to 32 bits
    packed = image.dtype.kind in "iu" and image.dtype.itemsize <= 4 and n_kernel < (1 << 15)
    colmx = np.zeros(image.shape[1], np.int64) if packed else None
    out, valid, flags, done = _pass1_impl(image, mask, lo, hi, use_tr, g, use_gain, kx, ky, float(sigma_background),
                                          float(sigma_strong), float(global_threshold), float(min_count),
                                          not extended, colmx, n_kernel.bit_length())
    if done:
        return out, valid
    # very many core pixels (out): pass 2 with running sums over the whole image
    strong = _final_sliding(image, valid, flags, out, g, use_gain, kx, ky, float(sigma_strong),
                            float(global_threshold))
    return strong, valid


def _as_mask(idx, shape):
    out = np.zeros(shape, dtype=bool)
    out.reshape(-1)[idx] = True
    return out


def dispersion_threshold(image, mask, *, gain=None, kernel_size=(3, 3), sigma_background=6.0,
                         sigma_strong=3.0, min_local=2, global_threshold=0.0):
    """Strong-pixel mask of DIALS's ``dispersion`` algorithm.

    A valid pixel with at least ``min_local`` valid pixels in its
    ``(2*kernel_size[1]+1) x (2*kernel_size[0]+1)`` box (sums m, x, y of
    1, value, value²) is strong when it is above ``global_threshold`` and

    * ``m·y − x² > g·x·(m − 1 + σ_b·√(2(m − 1)))`` (index of dispersion above
      its Poisson bound) and
    * ``m·v − x > σ_s·√(g·x·m)`` (value above the local mean).

    Without ``gain`` the formulas are DIALS's gain-free ones
    (``m·y − x² − x(m−1) > x·σ_b·√(2(m−1))``), equal in exact arithmetic.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast)
        Pixel values (counts or ADU), any numeric dtype.
    mask : ndarray of bool, same shape
        True for valid pixels.
    gain : float, optional
        Detector gain (ADU per photon).
    kernel_size : (int, int)
        Half sizes (slow, fast) of the box in px, as DIALS's ``kernel_size``
        (its first element is the slow / y half size).
    sigma_background, sigma_strong : float
        σ_b and σ_s.
    min_local : int
        Fewest valid pixels in the box; <= 0 means the whole box.
    global_threshold : float
        Pixels at or below this value (ADU) are never strong.

    Returns
    -------
    ndarray of bool, shape (n_slow, n_fast)
        True for strong pixels.
    """
    idx, _ = dispersion_pixels(image, mask, extended=False, gain=gain, kernel_size=kernel_size,
                               sigma_background=sigma_background, sigma_strong=sigma_strong,
                               min_local=min_local, global_threshold=global_threshold)
    return _as_mask(idx, np.shape(image))


def dispersion_extended_threshold(image, mask, *, gain=None, kernel_size=(3, 3), sigma_background=6.0,
                                  sigma_strong=3.0, min_local=2, global_threshold=0.0):
    """Strong-pixel mask of DIALS's ``dispersion_extended`` algorithm (its default).

    1. ``cv``: valid pixels whose box (``kernel_size``) passes the index of
       dispersion test (as :func:`dispersion_threshold`, without the value
       test).
    2. The ``cv`` region is eroded: only pixels whose Chebyshev distance to a
       non-``cv`` pixel is at least ``min(kernel_size)`` stay (the core).
    3. The local mean is recomputed over valid non-core pixels in a box two
       pixels wider on each side; a core pixel is strong when it is above
       ``global_threshold`` and ``v >= mean + σ_s·√(g·mean)`` (the mean is 0
       with fewer than 2 background pixels).

    Parameters and return value as :func:`dispersion_threshold`.
    """
    idx, _ = dispersion_pixels(image, mask, extended=True, gain=gain, kernel_size=kernel_size,
                               sigma_background=sigma_background, sigma_strong=sigma_strong,
                               min_local=min_local, global_threshold=global_threshold)
    return _as_mask(idx, np.shape(image))


def erode_core(cv, *, distance):
    """Pixels of a boolean image whose Chebyshev distance to a False pixel is >= distance.

    Parameters
    ----------
    cv : ndarray of bool
    distance : int
        Erosion distance in px (pixels outside the image are not False).

    Returns
    -------
    ndarray of bool
    """
    cv = np.asarray(cv, dtype=np.bool_)
    flags = cv.astype(np.uint8)
    core = _erode_sparse(flags, np.flatnonzero(cv).astype(np.int64), int(distance))
    return _as_mask(core, cv.shape)


@nb.njit(**_JIT)
def _valid_impl(image, static, lo, hi, use_tr):
    ny, nx = image.shape
    valid = np.empty((ny, nx), np.bool_)
    for r in range(ny):
        _valid_row(image, static, r, lo, hi, use_tr, valid)
    return valid


def valid_pixels(image, mask, *, trusted_range=None):
    """``mask`` and values strictly inside ``trusted_range`` (ADU), in one pass.

    Returns
    -------
    ndarray of bool
    """
    lo, hi, use_tr = _trusted(trusted_range)
    return _valid_impl(np.asarray(image), np.asarray(mask, dtype=np.bool_), lo, hi, use_tr)


# ---------------------------------------------------------------------------
# automatic global threshold (DIALS estimate_global_threshold)


@nb.njit(**_JIT)
def _count_above_impl(image, mask, levels):
    counts = np.zeros(levels.shape[0], np.int64)
    ny, nx = image.shape
    nl = levels.shape[0]
    for j in range(ny):
        for i in range(nx):
            if not mask[j, i]:
                continue
            v = np.float64(image[j, i])
            k = 0
            while k < nl and v > levels[k]:
                counts[k] += 1
                k += 1
    return counts


def count_above(image, mask, *, levels):
    """Number of valid pixels above each of ascending ``levels`` (ADU).

    Returns
    -------
    ndarray of int64, shape (len(levels),)
    """
    levels = np.asarray(levels, dtype=np.float64)
    return _count_above_impl(np.asarray(image), np.asarray(mask, dtype=np.bool_), levels)


def estimate_global_threshold(counts, levels):
    """DIALS's elbow estimate of a global threshold from a count-above curve.

    Parameters
    ----------
    counts : array_like of int
        Pixels above each level (as :func:`count_above`).
    levels : array_like
        The levels ``int(1.5**i)`` for i = 1..19 (ADU).

    Returns
    -------
    float
        The threshold (ADU): two levels left of the elbow of the curve.
    """
    x = np.asarray(levels, dtype=np.float64)
    y = np.asarray(counts, dtype=np.float64)
    slopes = (y[-1] - y[:-1]) / (x[-1] - x[:-1])
    p_m = int(np.argmin(slopes))
    x1 = np.array([x[p_m], y[p_m]])
    x2 = np.array([x[-1], y[-1]])
    v = np.array([x2[1] - x1[1], -(x2[0] - x1[0])])
    v = v / np.sqrt(v @ v)
    gaps = [abs(v @ (x1 - np.array([x[i], y[i]]))) for i in range(p_m, len(x))]
    p_g = int(np.argmax(gaps))
    return float(x[p_g + p_m - 2])


#: The levels DIALS tries for the automatic global threshold (ADU).
AUTO_THRESHOLD_LEVELS = np.array([int(1.5 ** i) for i in range(1, 20)], dtype=np.float64)


# ---------------------------------------------------------------------------
# radial (peakfinder8-like) thresholding


@nb.njit(**_JIT)
def _ring_sums_impl(image, mask, rbin, cut, nbins):
    cnt = np.zeros(nbins, np.float64)
    s1 = np.zeros(nbins, np.float64)
    s2 = np.zeros(nbins, np.float64)
    ny, nx = image.shape
    for j in range(ny):
        for i in range(nx):
            if not mask[j, i]:
                continue
            b = rbin[j, i]
            v = np.float64(image[j, i])
            if v < cut[b]:
                cnt[b] += 1.0
                s1[b] += v
                s2[b] += v * v
    return cnt, s1, s2


def ring_sums(image, mask, rbin, *, cut, nbins):
    """Per radial bin: count, Σv and Σv² of valid pixels below the bin's cut.

    One iteration of peakfinder8's sigma clipping; the caller combines panels
    and sets the next cut to ``max(mean + min_snr·σ, threshold)``.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast)
    mask : ndarray of bool
    rbin : ndarray of int32, same shape
        Radial bin of each pixel (0 .. nbins-1).
    cut : ndarray, shape (nbins,)
        Current cut per bin (ADU; inf for no clipping).
    nbins : int

    Returns
    -------
    count, sum, sum_sq : ndarray, shape (nbins,)
    """
    return _ring_sums_impl(np.asarray(image), np.asarray(mask, dtype=np.bool_),
                           np.asarray(rbin, dtype=np.int32), np.asarray(cut, dtype=np.float64), int(nbins))


@nb.njit(**_JIT)
def _radial_threshold_impl(image, mask, rbin, cut):
    ny, nx = image.shape
    out = np.zeros((ny, nx), np.bool_)
    for j in range(ny):
        for i in range(nx):
            if mask[j, i] and np.float64(image[j, i]) > cut[rbin[j, i]]:
                out[j, i] = True
    return out


def radial_threshold(image, mask, rbin, *, cut):
    """Pixels above their radial bin's cut.

    Returns
    -------
    ndarray of bool
    """
    return _radial_threshold_impl(np.asarray(image), np.asarray(mask, dtype=np.bool_),
                                  np.asarray(rbin, dtype=np.int32), np.asarray(cut, dtype=np.float64))


# ---------------------------------------------------------------------------
# connected components on runs


@nb.njit(**_JIT)
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@nb.njit(**_JIT)
def _label_runs_impl(strong, eight):
    ny, nx = strong.shape
    n = 0
    for j in range(ny):
        prev = False
        for i in range(nx):
            s = strong[j, i]
            if s and not prev:
                n += 1
            prev = s
    row = np.empty(n, np.int32)
    start = np.empty(n, np.int32)
    end = np.empty(n, np.int32)
    k = 0
    for j in range(ny):
        i = 0
        while i < nx:
            if strong[j, i]:
                i0 = i
                while i < nx and strong[j, i]:
                    i += 1
                row[k] = j
                start[k] = i0
                end[k] = i
                k += 1
            else:
                i += 1
    label, nl = _union_runs(row, start, end, ny, eight)
    return row, start, end, label, nl


@nb.njit(**_JIT)
def _runs_from_idx(idx, nx):
    n = 0
    for k in range(idx.shape[0]):
        if k == 0 or idx[k] != idx[k - 1] + 1 or idx[k] % nx == 0:
            n += 1
    row = np.empty(n, np.int32)
    start = np.empty(n, np.int32)
    end = np.empty(n, np.int32)
    r = -1
    for k in range(idx.shape[0]):
        p = idx[k]
        if k == 0 or p != idx[k - 1] + 1 or p % nx == 0:
            r += 1
            row[r] = p // nx
            start[r] = p % nx
        end[r] = p % nx + 1
    return row, start, end


@nb.njit(**_JIT)
def _union_runs(row, start, end, ny, eight):
    n = row.shape[0]
    row_first = np.zeros(ny + 1, np.int64)
    k = 0
    for j in range(ny):
        row_first[j] = k
        while k < n and row[k] == j:
            k += 1
    row_first[ny] = n
    parent = np.arange(n)
    d = 1 if eight else 0
    for j in range(1, ny):
        a = row_first[j - 1]
        a_end = row_first[j]
        if a == a_end:
            continue
        for b in range(row_first[j], row_first[j + 1]):
            while a < a_end and end[a] + d <= start[b]:
                a += 1
            aa = a
            while aa < a_end and start[aa] < end[b] + d:
                ra = _find(parent, aa)
                rb = _find(parent, b)
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
                aa += 1
    label = np.empty(n, np.int32)
    compact = np.full(n, -1, np.int32)
    nl = 0
    for k in range(n):
        r = _find(parent, k)
        if compact[r] < 0:
            compact[r] = nl
            nl += 1
        label[k] = compact[r]
    return label, nl


@nb.njit(**_JIT)
def _label_pixels_impl(idx, ny, nx, eight):
    row, start, end = _runs_from_idx(idx, nx)
    label, nl = _union_runs(row, start, end, ny, eight)
    return row, start, end, label, nl


def label_pixels(idx, shape, *, connectivity=4):
    """Connected components of pixels given as sorted flat indices (see :func:`label_runs`).

    Parameters
    ----------
    idx : ndarray of int64
        Flat indices in raster order (strictly increasing).
    shape : (int, int)
        (n_slow, n_fast).
    connectivity : {4, 8}

    Returns
    -------
    row, start, end, label, n_labels
        As :func:`label_runs`.
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    return _label_pixels_impl(np.asarray(idx, dtype=np.int64), int(shape[0]), int(shape[1]), connectivity == 8)


def label_runs(strong, *, connectivity=4):
    """Connected components of a boolean image, as horizontal runs.

    Parameters
    ----------
    strong : ndarray of bool, shape (n_slow, n_fast)
    connectivity : {4, 8}
        4: edge neighbours only (DIALS's 2-D labelling); 8: corners too.

    Returns
    -------
    row, start, end : ndarray of int32, shape (n_runs,)
        Each run covers pixels ``start <= x < end`` of row ``row``; runs are in
        raster order.
    label : ndarray of int32, shape (n_runs,)
        Component of each run, numbered 0.. in raster order of first pixel.
    n_labels : int
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    return _label_runs_impl(np.asarray(strong, dtype=np.bool_), connectivity == 8)


# ---------------------------------------------------------------------------
# per-spot statistics


@nb.njit(**_JIT)
def _spot_stats_impl(image, valid, strong, g, row, start, end, label, nl, margin):
    ny, nx = image.shape
    npix = np.zeros(nl, np.int64)
    sw = np.zeros(nl, np.float64)
    sw2 = np.zeros(nl, np.float64)
    swx = np.zeros(nl, np.float64)
    swy = np.zeros(nl, np.float64)
    sgv = np.zeros(nl, np.float64)
    x0 = np.full(nl, nx, np.int32)
    x1 = np.zeros(nl, np.int32)
    y0 = np.full(nl, ny, np.int32)
    y1 = np.zeros(nl, np.int32)
    peak = np.full(nl, -np.inf)
    peak_x = np.zeros(nl, np.int32)
    peak_y = np.zeros(nl, np.int32)
    for k in range(row.shape[0]):
        s = label[k]
        j = row[k]
        if j < y0[s]:
            y0[s] = j
        if j + 1 > y1[s]:
            y1[s] = j + 1
        if start[k] < x0[s]:
            x0[s] = start[k]
        if end[k] > x1[s]:
            x1[s] = end[k]
        for i in range(start[k], end[k]):
            v = np.float64(image[j, i])
            npix[s] += 1
            sw[s] += v
            sw2[s] += v * v
            swx[s] += v * (i + 0.5)
            swy[s] += v * (j + 0.5)
            sgv[s] += g * v
            if v > peak[s]:
                peak[s] = v
                peak_x[s] = i
                peak_y[s] = j
    cx = np.empty(nl, np.float64)
    cy = np.empty(nl, np.float64)
    for s in range(nl):
        if sw[s] != 0:
            cx[s] = swx[s] / sw[s]
            cy[s] = swy[s] / sw[s]
        else:
            cx[s] = 0.5 * (x0[s] + x1[s])
            cy[s] = 0.5 * (y0[s] + y1[s])
    dxx = np.zeros(nl, np.float64)
    dyy = np.zeros(nl, np.float64)
    for k in range(row.shape[0]):
        s = label[k]
        j = row[k]
        for i in range(start[k], end[k]):
            v = np.float64(image[j, i])
            dx = i + 0.5 - cx[s]
            dy = j + 0.5 - cy[s]
            dxx[s] += v * dx * dx
            dyy[s] += v * dy * dy
    # local background: valid, non-strong pixels in the bbox grown by margin
    bg_n = np.zeros(nl, np.int64)
    bg_s = np.zeros(nl, np.float64)
    bg_s2 = np.zeros(nl, np.float64)
    for s in range(nl):
        ja = y0[s] - margin if y0[s] - margin > 0 else 0
        jb = y1[s] + margin if y1[s] + margin < ny else ny
        ia = x0[s] - margin if x0[s] - margin > 0 else 0
        ib = x1[s] + margin if x1[s] + margin < nx else nx
        for j in range(ja, jb):
            for i in range(ia, ib):
                if valid[j, i] and not strong[j, i]:
                    v = np.float64(image[j, i])
                    bg_n[s] += 1
                    bg_s[s] += v
                    bg_s2[s] += v * v
    # two blocks to hand back instead of 18 arrays (rows as _STAT_FLOAT / _STAT_INT)
    F = np.empty((10, nl), np.float64)
    F[0] = sw
    F[1] = sw2
    F[2] = cx
    F[3] = cy
    F[4] = dxx
    F[5] = dyy
    F[6] = sgv
    F[7] = peak
    F[8] = bg_s
    F[9] = bg_s2
    I = np.empty((8, nl), np.int64)
    I[0] = npix
    I[1] = x0
    I[2] = x1
    I[3] = y0
    I[4] = y1
    I[5] = peak_x
    I[6] = peak_y
    I[7] = bg_n
    return F, I


def spot_statistics(image, valid, strong, runs, *, gain=None, margin=2):
    """Per-spot sums of the labelled runs of one panel.

    Parameters
    ----------
    image : ndarray, shape (n_slow, n_fast)
        Pixel values (ADU) used as centroid weights and for intensities.
    valid : ndarray of bool
        Usable pixels (for the local background).
    strong : ndarray of bool
        The strong-pixel mask the runs came from.
    runs : tuple
        ``(row, start, end, label, n_labels)`` from :func:`label_runs`.
    gain : float, optional
        Gain (ADU per photon) for the Poisson variance; 1 when None.
    margin : int
        Width (px) of the frame around a spot's bounding box whose valid,
        non-strong pixels make its local background.

    Returns
    -------
    dict of ndarray
        ``npix``; ``sum_w``, ``sum_w2`` (Σv, Σv²); ``cx``, ``cy`` (centroid,
        px, pixel centres at i+0.5); ``dxx``, ``dyy`` (Σv·Δ²); ``sum_gv``
        (Σ g·v, ADU²); bounding box ``x0, x1, y0, y1`` (end exclusive);
        ``peak``, ``peak_x``, ``peak_y`` (brightest pixel, first in raster
        order); ``bg_n``, ``bg_sum``, ``bg_sum2`` (local background sums).
    """
    row, start, end, label, nl = runs
    img = np.asarray(image)
    if gain is not None and np.ndim(gain) != 0:
        raise ValueError("gain must be a single number (ADU per photon)")
    g = 1.0 if gain is None else float(gain)
    out = _spot_stats_impl(img, np.asarray(valid, dtype=np.bool_), np.asarray(strong, dtype=np.bool_), g,
                           row, start, end, label, int(nl), int(margin))
    return stats_from_blocks(*out)


#: Names of :func:`spot_statistics`'s outputs, in the order of ``_spot_stats_impl``.
STAT_NAMES = ("npix", "sum_w", "sum_w2", "cx", "cy", "dxx", "dyy", "sum_gv", "x0", "x1", "y0", "y1",
              "peak", "peak_x", "peak_y", "bg_n", "bg_sum", "bg_sum2")
_STAT_FLOAT = ("sum_w", "sum_w2", "cx", "cy", "dxx", "dyy", "sum_gv", "peak", "bg_sum", "bg_sum2")
_STAT_INT = ("npix", "x0", "x1", "y0", "y1", "peak_x", "peak_y", "bg_n")
_STAT_INT32 = frozenset(("x0", "x1", "y0", "y1", "peak_x", "peak_y"))


def pixel_spot_blocks(image, valid, idx, *, connectivity=4, gain=None, margin=2):
    """Spots of one panel from its strong pixels as flat indices: (F, I) blocks.

    Equivalent to ``spot_statistics(image, valid, strong, label_pixels(idx, ...))``
    with ``strong`` the mask of ``idx``, in two kernel calls; :func:`stats_from_blocks`
    turns (concatenated) blocks into that dict.  (One fused kernel would save a
    call per panel but re-optimises the statistics code inside it: about twice
    the first-call compile time.)

    Returns
    -------
    F : ndarray of float64, shape (10, n_spots)
    I : ndarray of int64, shape (8, n_spots)
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    if gain is not None and np.ndim(gain) != 0:
        raise ValueError("gain must be a single number (ADU per photon)")
    g = 1.0 if gain is None else float(gain)
    img = np.asarray(image)
    idx = np.asarray(idx, dtype=np.int64)
    strong = np.zeros(img.shape, dtype=np.bool_)
    strong.reshape(-1)[idx] = True
    row, start, end, label, nl = _label_pixels_impl(idx, img.shape[0], img.shape[1], connectivity == 8)
    return _spot_stats_impl(img, np.asarray(valid, dtype=np.bool_), strong, g, row, start, end, label, nl,
                            int(margin))


def stats_from_blocks(F, I):
    """The dict of :func:`spot_statistics` (same keys and dtypes) from (F, I) blocks."""
    out = {}
    for k, name in enumerate(_STAT_FLOAT):
        out[name] = F[k]
    for k, name in enumerate(_STAT_INT):
        out[name] = I[k].astype(np.int32) if name in _STAT_INT32 else I[k]
    return {name: out[name] for name in STAT_NAMES}
