"""Tests of stillshot.spotfind: DIALS-exact thresholds, spots, masks, hits, CLI.

* The dispersion masks are compared pixel by pixel with a direct numpy
  transcription of DIALS's formulas (``dials/algorithms/image/threshold/local.h``:
  summed-area tables, ``DispersionThreshold``, ``DispersionExtendedThreshold``
  and ``chebyshev_distance`` of ``filter/distance.h``), written out below.
* Simulated shots (``stillshot.simulate``) give recall, precision and
  centroid accuracy against the truth.
* Real data (slow): DIALS 3.12's strong spots in ../shared/data/reference.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from stillshot.models import Beam, Detector, Frame, Panel
from stillshot.spotfind import (
    DispersionOptions,
    FilterOptions,
    Lookup,
    RadialOptions,
    SpotFinderOptions,
    algorithm_names,
    find_spots_in_arrays,
    get_algorithm,
    load_lookup,
    options_from_params,
)
from stillshot.spotfind import _kernels as K
from stillshot.spotfind.masks import ice_ring_d_spacings, pixel_inv_d2, static_mask
from stillshot.spotfind.spots import panel_spots, spot_table
from stillshot.table import Flags, ReflectionTable

BIG = float(1 << 24)


# ---------------------------------------------------------------------------
# numpy transcription of DIALS's formulas (the reference of the pixel-exact tests)


def _sat_box_sums(src, use, kx, ky):
    """DIALS compute_sat + box lookup: (m, x, y) over rows j-ky..j+ky, cols i-kx..i+kx (clipped)."""
    ny, nx = src.shape
    w = use & (src < BIG)
    vals = np.where(w, src, 0.0)
    tables = []
    for a in (w.astype(np.int64), vals, vals * vals):
        t = np.zeros((ny + 1, nx + 1))
        t[1:, 1:] = a.cumsum(0).cumsum(1)  # t[j+1, i+1] = table[j, i]; index -1 -> 0
        tables.append(t)
    j, i = np.mgrid[0:ny, 0:nx]
    i0, i1 = i - kx - 1, np.minimum(i + kx, nx - 1)
    j0, j1 = j - ky - 1, np.minimum(j + ky, ny - 1)
    out = []
    for t in tables:
        d00 = np.where((i0 >= 0) & (j0 >= 0), t[np.maximum(j0, -1) + 1, np.maximum(i0, -1) + 1], 0.0)
        d10 = np.where(i0 >= 0, t[j1 + 1, np.maximum(i0, -1) + 1], 0.0)
        d01 = np.where(j0 >= 0, t[np.maximum(j0, -1) + 1, i1 + 1], 0.0)
        out.append(t[j1 + 1, i1 + 1] - d10 - d01 + d00)
    return out


def dials_dispersion(image, mask, kernel_size=(3, 3), nsig_b=6.0, nsig_s=3.0, threshold=0.0, min_count=2,
                     gain=None):
    """DispersionThreshold::compute_threshold (gain-free and gain versions)."""
    src = np.asarray(image, dtype=np.float64)
    ky, kx = kernel_size  # DIALS: kxsize = kernel_size[1], kysize = kernel_size[0]
    if min_count <= 0:
        min_count = (2 * kx + 1) * (2 * ky + 1)
    m, x, y = _sat_box_sums(src, mask, kx, ky)
    ok = mask & (m >= min_count) & (x >= 0) & (src > threshold)
    with np.errstate(invalid="ignore"):
        b = m * src - x
        if gain is None:
            a = m * y - x * x - x * (m - 1)
            c = x * nsig_b * np.sqrt(2 * (m - 1))
            d = nsig_s * np.sqrt(x * m)
        else:
            a = m * y - x * x
            c = gain * x * (m - 1 + nsig_b * np.sqrt(2 * (m - 1)))
            d = nsig_s * np.sqrt(gain * x * m)
        return ok & (a > c) & (b > d)


def dials_chebyshev_distance(src):
    """chebyshev_distance(src, false, dst): two sweeps, 8-neighbourhood, outside = h + w."""
    h, w = src.shape
    big = h + w
    d = np.zeros((h, w), dtype=np.int64)
    for j in range(h):
        for i in range(w):
            n_ = d[j - 1, i] if j > 0 else big
            w_ = d[j, i - 1] if i > 0 else big
            nw = d[j - 1, i - 1] if (j > 0 and i > 0) else big
            ne = d[j - 1, i + 1] if (j > 0 and i < w - 1) else big
            d[j, i] = 0 if not src[j, i] else 1 + min(n_, w_, ne, nw)
    for j in range(h, 0, -1):
        for i in range(w, 0, -1):
            s_ = d[j, i - 1] if j < h else big
            e_ = d[j - 1, i] if i < w else big
            sw = d[j, i - 2] if (j < h and i > 1) else big
            se = d[j, i] if (j < h and i < w) else big
            other = min(s_, e_, se, sw)
            if other < d[j - 1, i - 1]:
                d[j - 1, i - 1] = 1 + other
    return d


def dials_dispersion_extended(image, mask, kernel_size=(3, 3), nsig_b=6.0, nsig_s=3.0, threshold=0.0,
                              min_count=2, gain=None):
    """DispersionExtendedThreshold::threshold(_w_gain): dispersion, erosion, widened local mean."""
    src = np.asarray(image, dtype=np.float64)
    ky, kx = kernel_size
    if min_count <= 0:
        min_count = (2 * kx + 1) * (2 * ky + 1)
    m, x, y = _sat_box_sums(src, mask, kx, ky)
    ok = mask & (m >= min_count) & (x >= 0)
    with np.errstate(invalid="ignore"):
        if gain is None:
            a = m * y - x * x - x * (m - 1)
            c = x * nsig_b * np.sqrt(2 * (m - 1))
        else:
            a = m * y - x * x
            c = gain * x * (m - 1 + nsig_b * np.sqrt(2 * (m - 1)))
    dst = ok & (a > c)
    distance = dials_chebyshev_distance(dst)
    erosion = min(kernel_size)
    dst = np.where(mask, ~(dst & (distance >= erosion)), False)  # erode_dispersion_mask
    m2, x2, _ = _sat_box_sums(src, dst, kx + 2, ky + 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(m2 >= 2, x2 / m2, 0.0)
        if gain is None:
            local = src >= mean + nsig_s * np.sqrt(mean)
        else:
            local = src >= mean + nsig_s * np.sqrt(gain * mean)
    return mask & (m2 >= 0) & (x2 >= 0) & ~dst & (src > threshold) & local


# ---------------------------------------------------------------------------
# synthetic panels


def _panel_image(seed=1, ny=185, nx=194, bg=20.0, n_spots=60, dtype=np.int32):
    rng = np.random.default_rng(seed)
    img = rng.poisson(bg, (ny, nx)).astype(np.float64)
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = []
    for _ in range(n_spots):
        cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
        s = rng.uniform(0.6, 1.8)
        amp = rng.uniform(40, 4000)
        img += rng.poisson(amp * np.exp(-((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) / (2 * s * s)) / (2 * np.pi * s * s))
        centres.append((cx, cy))
    mask = rng.random((ny, nx)) > 0.02
    mask[50:58, :] = False  # a gap
    mask[:, 120:123] = False
    return img.astype(dtype), mask, np.array(centres)


def _flat_detector(nx, ny, pixel=0.172, distance=150.0, beam_xy=None, gain=1.0, trusted=(-1.0, 1e6),
                   ptype="SENSOR_PAD"):
    bx, by = beam_xy if beam_xy is not None else (nx / 2, ny / 2)
    origin = (-bx * pixel, by * pixel, -distance)
    frame = Frame(origin=np.array(origin), fast=np.array([1.0, 0, 0]), slow=np.array([0, -1.0, 0]))
    panel = Panel(name="P0", frame=frame, local_frame=frame, pixel_size=(pixel, pixel), image_size=(nx, ny),
                  trusted_range=trusted, gain=gain, type=ptype)
    return Detector.flat([panel])


DISPERSION_CASES = [
    {},
    {"gain": 2.5},
    {"gain": 1.0},
    {"kernel_size": (2, 4), "min_count": 0},
    {"kernel_size": (4, 1), "nsig_b": 3.0, "nsig_s": 2.0},
    {"threshold": 30.0, "min_count": 10},
]


def _kernel_kwargs(case):
    return dict(kernel_size=case.get("kernel_size", (3, 3)), min_local=case.get("min_count", 2),
                gain=case.get("gain"), sigma_background=case.get("nsig_b", 6.0),
                sigma_strong=case.get("nsig_s", 3.0), global_threshold=case.get("threshold", 0.0))


@pytest.mark.parametrize("case", DISPERSION_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_dispersion_mask_pixel_exact(case):
    img, mask, _ = _panel_image()
    ref = dials_dispersion(img, mask, **case)
    ours = K.dispersion_threshold(img, mask, **_kernel_kwargs(case))
    assert ref.sum() > 50  # the panel has strong pixels to agree on
    assert ref.sum() < 0.5 * mask.sum()
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} pixels differ"


@pytest.mark.parametrize("case", DISPERSION_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_dispersion_extended_mask_pixel_exact(case):
    img, mask, _ = _panel_image(seed=2)
    ref = dials_dispersion_extended(img, mask, **case)
    ours = K.dispersion_extended_threshold(img, mask, **_kernel_kwargs(case))
    assert ref.sum() > 50
    assert np.array_equal(ours, ref), f"{(ours != ref).sum()} pixels differ"


def test_dispersion_exact_on_float_and_other_dtypes():
    img, mask, _ = _panel_image(seed=3)
    quarter = img.astype(np.float64) / 4.0  # exactly representable sums
    for im in (quarter, img.astype(np.uint16), img.astype(np.float32)):
        ref = dials_dispersion_extended(im, mask)
        assert np.array_equal(K.dispersion_extended_threshold(im, mask), ref)
        ref = dials_dispersion(im, mask)
        assert np.array_equal(K.dispersion_threshold(im, mask), ref)


@pytest.mark.parametrize("gain", [None, 1.0, 0.5, 2.0])
def test_dispersion_exact_at_ties(gain):
    """Kernel (1, 1) and sigma_background 1 make both sides of the test integers: exact ties happen."""
    rng = np.random.default_rng(21)
    img = rng.poisson(2.0, (120, 130)).astype(np.int32)
    mask = rng.random(img.shape) > 0.05
    m, x, y = _sat_box_sums(img.astype(float), mask, 1, 1)
    with np.errstate(invalid="ignore"):
        if gain is None:
            a, c = m * y - x * x - x * (m - 1), x * 1.0 * np.sqrt(2 * (m - 1))
        else:
            a, c = m * y - x * x, gain * x * (m - 1 + 1.0 * np.sqrt(2 * (m - 1)))
    assert np.count_nonzero(mask & (m == 9) & (a == c) & (x > 0)) >= 3  # ties are exercised
    kw = dict(kernel_size=(1, 1), nsig_b=1.0, nsig_s=1.0, gain=gain)
    ours_kw = dict(kernel_size=(1, 1), sigma_background=1.0, sigma_strong=1.0, gain=gain)
    assert np.array_equal(K.dispersion_threshold(img, mask, **ours_kw), dials_dispersion(img, mask, **kw))
    assert np.array_equal(K.dispersion_extended_threshold(img, mask, **ours_kw),
                          dials_dispersion_extended(img, mask, **kw))


@pytest.mark.parametrize("shape", [(5, 4), (2, 9), (9, 2), (1, 30), (30, 1), (7, 7)])
def test_dispersion_exact_on_panels_smaller_than_the_box(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(10):
        img = rng.poisson(3, shape).astype(np.int32)
        img[rng.random(shape) < 0.1] += rng.integers(5, 60)
        mask = rng.random(shape) > 0.1
        for kw in ({}, {"min_count": 0}, {"gain": 1.5}):
            ours = {"min_local": kw.get("min_count", 2), "gain": kw.get("gain")}
            assert np.array_equal(K.dispersion_threshold(img, mask, **ours), dials_dispersion(img, mask, **kw))
            assert np.array_equal(K.dispersion_extended_threshold(img, mask, **ours),
                                  dials_dispersion_extended(img, mask, **kw))


def test_big_values_are_left_out_of_the_sums():
    img, mask, _ = _panel_image(seed=4)
    img = img.astype(np.float64)
    img[100, 100] = 2.0 ** 25  # above DIALS's BIG: not in the local sums
    ref = dials_dispersion_extended(img, mask)
    assert np.array_equal(K.dispersion_extended_threshold(img, mask), ref)


def test_kernels_do_not_mutate_inputs():
    img, mask, _ = _panel_image(seed=5)
    img0, mask0 = img.copy(), mask.copy()
    strong = K.dispersion_extended_threshold(img, mask, gain=2.0)
    K.dispersion_threshold(img, mask)
    strong0 = strong.copy()
    runs = K.label_runs(strong)
    K.spot_statistics(img, mask, strong, runs, gain=2.0)
    assert np.array_equal(img, img0) and np.array_equal(mask, mask0) and np.array_equal(strong, strong0)


def test_kernel_option_errors():
    img, mask, _ = _panel_image(seed=6, ny=20, nx=20, n_spots=0)
    with pytest.raises(ValueError, match="min_local"):
        K.dispersion_threshold(img, mask, min_local=1)
    with pytest.raises(ValueError, match="mask shape"):
        K.dispersion_threshold(img, mask[:5])
    with pytest.raises(ValueError, match="gain must be a single number"):
        K.dispersion_extended_threshold(img, mask, gain=np.ones((3, 3)))
    with pytest.raises(TypeError):
        K.dispersion_threshold(img, mask, (3, 3))  # options are keyword-only


def test_erosion_matches_dials_chebyshev_distance():
    rng = np.random.default_rng(7)
    cv = ndimage.binary_dilation(rng.random((60, 70)) > 0.97, iterations=3)
    for d in (1, 2, 3, 4):
        ref = cv & (dials_chebyshev_distance(cv) >= d)
        assert np.array_equal(K.erode_core(cv, distance=d), ref)


# ---------------------------------------------------------------------------
# connected components and spot measurements


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_runs_matches_scipy(connectivity):
    rng = np.random.default_rng(8)
    strong = rng.random((120, 90)) > 0.7
    row, start, end, label, n = K.label_runs(strong, connectivity=connectivity)
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    ref, n_ref = ndimage.label(strong, structure=structure)
    assert n == n_ref
    ours = np.zeros(strong.shape, np.int64)
    for r, s, e, lab in zip(row, start, end, label):
        ours[r, s:e] = lab + 1
    assert np.array_equal(ours > 0, strong)
    # same partition; our labels are numbered in raster order of first pixel like scipy's
    assert np.array_equal(ours, ref)


def test_spot_statistics_follow_dials_centroid():
    img, mask, _ = _panel_image(seed=9)
    strong = K.dispersion_extended_threshold(img, mask)
    stats = panel_spots(img, mask, strong, connectivity=4, gain=None, margin=2)
    table = spot_table(stats, panel=3)
    labels, n = ndimage.label(strong)
    assert n == len(table) > 10
    for k in range(n):
        jj, ii = np.nonzero(labels == k + 1)
        w = img[jj, ii].astype(np.float64)
        sw, sw2 = w.sum(), (w * w).sum()
        cx, cy = (w * (ii + 0.5)).sum() / sw, (w * (jj + 0.5)).sum() / sw
        if sw * sw > sw2:
            vx = (w * (ii + 0.5 - cx) ** 2).sum() * sw / (sw * sw - sw2) / sw + 1 / 12
            vy = (w * (jj + 0.5 - cy) ** 2).sum() * sw / (sw * sw - sw2) / sw + 1 / 12
            assert np.allclose(table["xyzobs.px.value"][k], [cx, cy, 0.5], rtol=0, atol=1e-9)
            assert np.allclose(table["xyzobs.px.variance"][k], [vx, vy, 1 / 12], rtol=1e-9)
        assert table["n_signal"][k] == len(w)
        assert tuple(table["bbox"][k]) == (ii.min(), ii.max() + 1, jj.min(), jj.max() + 1, 0, 1)
        # background: valid non-strong pixels in the bbox grown by 2 px
        y0, y1 = max(jj.min() - 2, 0), min(jj.max() + 3, img.shape[0])
        x0, x1 = max(ii.min() - 2, 0), min(ii.max() + 3, img.shape[1])
        sel = mask[y0:y1, x0:x1] & ~strong[y0:y1, x0:x1]
        bg = img[y0:y1, x0:x1][sel].mean()
        assert table["background.mean"][k] == pytest.approx(bg)
        assert table["intensity.sum.value"][k] == pytest.approx(sw - len(w) * bg)
    assert np.all(table["panel"] == 3)
    assert np.all(table["flags"] == int(Flags.strong))


# ---------------------------------------------------------------------------
# whole-shot behaviour: registry, masks, calibration, hits


def _shot_with_spots(seed=10, nx=300, ny=280, bg=5.0, n_spots=40, amp=(300, 3000)):
    rng = np.random.default_rng(seed)
    img = rng.poisson(bg, (ny, nx)).astype(np.float64)
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = rng.uniform([10, 10], [nx - 10, ny - 10], (n_spots, 2))
    for cx, cy in centres:
        img += rng.poisson(rng.uniform(*amp) * np.exp(-((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) / 2.0) / (2 * np.pi))
    return img.astype(np.int32), centres


def test_registry_names_and_unknown_algorithm():
    assert set(algorithm_names()) >= {"dispersion", "dispersion_extended", "radial"}
    with pytest.raises(ValueError, match="unknown threshold algorithm"):
        get_algorithm("nope", SpotFinderOptions())


@pytest.mark.parametrize("algorithm", ["dispersion_extended", "dispersion", "radial"])
def test_find_spots_on_synthetic_shot(algorithm):
    img, centres = _shot_with_spots()
    det = _flat_detector(img.shape[1], img.shape[0])
    beam = Beam(wavelength=1.0)
    options = SpotFinderOptions(algorithm=algorithm, radial=RadialOptions(threshold=0.0, min_snr=5.0),
                                min_spots=10)
    res = find_spots_in_arrays((img,), det, beam, options)
    assert res.status == "ok" and res.hit
    xy = res.reflections["xyzobs.px.value"][:, :2]
    d = cKDTree(xy).query(centres)[0]
    assert np.mean(d < 1.0) >= 0.9
    assert len(xy) <= 1.1 * len(centres)
    for key in ("bbox", "flags", "id", "intensity.sum.value", "intensity.sum.variance", "n_signal", "panel",
                "xyzobs.px.value", "xyzobs.px.variance"):
        assert key in res.reflections
    assert np.all(res.reflections["intensity.sum.variance"] > 0)


def test_blank_shot_is_not_a_hit_and_too_many_strong_pixels_fail():
    rng = np.random.default_rng(11)
    det = _flat_detector(200, 200)
    beam = Beam(wavelength=1.0)
    blank = (rng.poisson(5.0, (200, 200)).astype(np.int32),)
    res = find_spots_in_arrays(blank, det, beam, SpotFinderOptions(min_spots=5))
    assert res.status == "ok" and not res.hit and res.n_spots < 5
    noisy = (rng.integers(0, 1000, (200, 200)).astype(np.int32),)
    options = SpotFinderOptions(algorithm="dispersion", filter=FilterOptions(max_strong_pixel_fraction=0.0001))
    res = find_spots_in_arrays(noisy, det, beam, options)
    assert res.status == "failed" and "max_strong_pixel_fraction" in res.reason and res.n_spots == 0


def test_auto_global_threshold_is_dials_elbow():
    img, _ = _shot_with_spots(seed=12, bg=30.0)
    mask = np.ones(img.shape, bool)
    levels = K.AUTO_THRESHOLD_LEVELS
    counts = K.count_above(img, mask, levels=levels)
    assert np.array_equal(counts, [(img > g).sum() for g in levels])
    assert list(levels[:6]) == [1, 2, 3, 5, 7, 11]
    expected = K.estimate_global_threshold(counts, levels)
    det = _flat_detector(img.shape[1], img.shape[0])
    res = find_spots_in_arrays((img,), det, Beam(wavelength=1.0),
                               SpotFinderOptions(dispersion=DispersionOptions(global_threshold="auto")))
    assert res.resolved["spotfinder.threshold.dispersion.global_threshold"] == expected
    # DIALS's estimate_global_threshold, as written there (lists, explicit loop over the tail)
    x, y = [float(v) for v in levels], [float(c) for c in counts]
    slopes = [(y[-1] - y[i]) / (x[-1] - x[i]) for i in range(len(x) - 1)]
    p_m = slopes.index(min(slopes))
    vx, vy = y[-1] - y[p_m], -(x[-1] - x[p_m])
    norm = math.hypot(vx, vy)
    vx, vy = vx / norm, vy / norm
    gaps = [abs(vx * (x[p_m] - x[i]) + vy * (y[p_m] - y[i])) for i in range(p_m, len(x))]
    p_g = gaps.index(max(gaps))
    assert expected == x[p_g + p_m - 2]
    assert res.status == "ok" and res.n_spots >= 30


def test_trusted_range_border_and_resolution_masks():
    nx = ny = 200
    det = _flat_detector(nx, ny, trusted=(0.0, 500.0))
    beam = Beam(wavelength=1.0)
    options = FilterOptions(border=3, d_min=2.0, d_max=6.0)
    static = static_mask(det, beam, options)[0]
    assert not static[:3].any() and not static[:, -3:].any()
    q = pixel_inv_d2(det[0], beam)
    inside = (q <= 1 / 4.0) & (q >= 1 / 36.0)
    core = np.zeros((ny, nx), bool)
    core[3:-3, 3:-3] = True
    assert np.array_equal(static, inside & core)
    # 1/d^2 agrees with stillshot.geometry.resolution
    from stillshot.geometry import resolution

    d = resolution(det, beam, 0, np.array([[10.5, 20.5], [150.5, 90.5]]))
    assert np.allclose(1 / d ** 2, [q[20, 10], q[90, 150]])
    # trusted range: a saturated spot is not a spot
    img, _ = _shot_with_spots(seed=13, nx=nx, ny=ny, n_spots=10, amp=(20000, 30000))
    res = find_spots_in_arrays((img,), det, beam, SpotFinderOptions())
    assert res.n_spots < 10


def test_ice_rings_mask_pixels_on_rings():
    d = ice_ring_d_spacings((4.498, 4.498, 7.338, 90, 90, 120), "194", 1.5)
    assert d[0] == pytest.approx(3.895, abs=2e-3)  # (100) of hexagonal ice
    assert np.any(np.isclose(d, 3.669, atol=2e-3)) and np.any(np.isclose(d, 3.441, atol=2e-3))
    det = _flat_detector(400, 400, distance=100.0)
    beam = Beam(wavelength=1.0)
    m = static_mask(det, beam, FilterOptions(ice_rings=True))[0]
    q = pixel_inv_d2(det[0], beam)
    near = np.min(np.abs(q[..., None] - 1 / d[None, None, :] ** 2), axis=-1)
    assert not m[near < 0.0009].any()
    assert m[near > 0.0011].all()


def test_lookup_files_mask_bad_pixels_pedestal_gain(tmp_path):
    img, centres = _shot_with_spots(seed=14)
    det = _flat_detector(img.shape[1], img.shape[0])
    beam = Beam(wavelength=1.0)
    options = SpotFinderOptions()
    plain = find_spots_in_arrays((img,), det, beam, options)
    pedestal = np.full(img.shape, 100.0)
    gain = np.full(img.shape, 2.0)
    raw = (img * 2.0 + 100.0).astype(np.int32)  # raw = gain * photons + pedestal
    np.save(tmp_path / "ped.npy", pedestal)
    np.savez(tmp_path / "avg.npz", mean=pedestal[None], gain=gain[None])
    import h5py

    with h5py.File(tmp_path / "mask.h5", "w") as fh:
        mask = np.ones(img.shape, bool)
        mask[:, :150] = False
        fh["/entry/mask"] = mask
    lookup = load_lookup(det, pedestal=str(tmp_path / "ped.npy"), gain_map=str(tmp_path / "avg.npz:gain"))
    calibrated = find_spots_in_arrays((raw,), det, beam, options, lookup)
    assert np.allclose(calibrated.reflections["xyzobs.px.value"], plain.reflections["xyzobs.px.value"])
    lookup = load_lookup(det, pedestal=str(tmp_path / "avg.npz"), gain_map=str(tmp_path / "avg.npz:gain"),
                         mask=str(tmp_path / "mask.h5:/entry/mask"))
    masked = find_spots_in_arrays((raw,), det, beam, options, lookup)
    assert 0 < masked.n_spots < plain.n_spots
    assert np.all(masked.reflections["xyzobs.px.value"][:, 0] > 150)
    bad = np.zeros(img.shape, bool)
    x, y = (int(v) for v in plain.reflections["xyzobs.px.value"][0, :2])
    bad[y - 3:y + 4, x - 3:x + 4] = True
    res = find_spots_in_arrays((img,), det, beam, options, Lookup(bad_pixels=(bad,)))
    assert res.n_spots == plain.n_spots - 1
    with pytest.raises(ValueError, match="does not fit"):
        np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
        load_lookup(det, mask=str(tmp_path / "wrong.npy"))
    with pytest.raises(ValueError, match="no such file"):
        load_lookup(det, pedestal=str(tmp_path / "missing.npy"))


def test_options_from_params_reads_dials_names():
    from stillshot.cli.find_spots import DEFINITION
    from stillshot.config import parse_args

    params, files = parse_args(DEFINITION, [
        "a.cbf", "spotfinder.threshold.dispersion.gain=25", "spotfinder.filter.min_spot_size=2",
        "global_threshold=auto", "spotfinder.threshold.algorithm=radial",
        "dispatch.hit_finder.minimum_number_of_reflections=7", "spotfinder.threshold.dispersion.kernel_size=2,4",
    ])
    o = options_from_params(params)
    assert files == ["a.cbf"]
    assert o.algorithm == "radial" and o.dispersion.gain == 25.0 and o.filter.min_spot_size == 2
    assert o.dispersion.global_threshold == "auto" and o.min_spots == 7
    assert o.dispersion.kernel_size == (2, 4)
    defaults = options_from_params(DEFINITION.defaults())
    assert defaults.algorithm == "dispersion_extended" and defaults.filter.min_spot_size is None
    assert defaults.dispersion == DispersionOptions()


# ---------------------------------------------------------------------------
# simulated shots against the truth


def _simulated_run(n_shots=8, seed=11):
    from stillshot.simulate.response import BackgroundModel
    from stillshot.simulate.shots import SimulationSettings, Simulator

    settings = SimulationSettings(layout="single_panel", n_fast=1024, n_slow=1024, blank_fraction=0.0,
                                  photons=50000.0, background=BackgroundModel(constant=1.0), seed=seed)
    sim = Simulator(settings)
    shots = []
    for k in range(n_shots):
        shot = sim.shot(k)
        clean = sim.render(shot.truth, noise=False)
        spots = sim.spot_photons(shot.truth)
        shots.append((shot, [c - s for c, s in zip(clean, spots)]))
    return shots


@pytest.fixture(scope="module")
def simulated_run():
    return _simulated_run()


def _score(shots, options):
    """Recall of true spots with I/σ >= 5, precision, median centroid error of isolated spots.

    I/σ of a true spot: I / sqrt(I + n·b), I its photons, b the expected
    background (photons/px) at its centre and n = π(3σ)² px the area of a
    3σ integration disk (σ the spot's Gaussian width).  A reported spot is
    true when a true reflection of at least one photon lies within 1.5 px;
    isolated: no other true reflection within 6 px.
    """
    n_true = n_found = n_reported = n_real = 0
    errors = []
    for shot, background in shots:
        truth = shot.truth.reflections
        res = find_spots_in_arrays(shot.data, shot.detector, shot.beam, options)
        assert res.status == "ok"
        xy = res.reflections["xyzobs.px.value"][:, :2]
        txy = truth["xyzcal.px"][:, :2]
        photons = truth["intensity.partial"]
        panel = truth["panel"].astype(int)
        ix = np.clip(txy[:, 0].astype(int), 0, shot.detector[0].n_fast - 1)
        iy = np.clip(txy[:, 1].astype(int), 0, shot.detector[0].n_slow - 1)
        b = np.array([background[p][y, x] for p, x, y in zip(panel, ix, iy)])
        n = np.pi * (3.0 * truth["sigma_px"]) ** 2
        strong = (photons / np.sqrt(photons + n * b) >= 5.0) & ~truth["in_gap"]
        d = cKDTree(xy).query(txy)[0] if len(xy) else np.full(len(txy), np.inf)
        real = cKDTree(txy[photons >= 1.0]).query(xy)[0] <= 1.5 if len(xy) else np.zeros(0, bool)
        isolated = cKDTree(txy).query(txy, k=2)[0][:, 1] > 6.0
        n_true += strong.sum()
        n_found += (strong & (d <= 1.5)).sum()
        n_reported += len(xy)
        n_real += real.sum()
        errors.extend(d[strong & isolated & (d <= 1.5)])
    return n_found / n_true, n_real / n_reported, float(np.median(errors)), n_true


@pytest.mark.parametrize("options", [
    SpotFinderOptions(dispersion=DispersionOptions(sigma_background=4.0), filter=FilterOptions(min_spot_size=2)),
    SpotFinderOptions(algorithm="radial", radial=RadialOptions(threshold=0.0, min_snr=4.0)),
], ids=["dispersion_extended", "radial"])
def test_simulated_recall_precision_centroids(simulated_run, options):
    recall, precision, error, n_true = _score(simulated_run, options)
    assert n_true > 500
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision
    assert error <= 0.15, error


# ---------------------------------------------------------------------------
# real data against DIALS 3.12 (slow)


def _match_dials(shared_data, folder, pattern, reference, options, n_images=None):
    from stillshot.io.base import open_image
    from stillshot.spotfind import find_spots

    files = sorted((shared_data / folder).glob(pattern))[:n_images]
    assert files
    ref = ReflectionTable.from_file(shared_data / "reference" / reference)
    n_ref = n_matched = n_ours = 0
    offsets = []
    for k, f in enumerate(files):
        with open_image(f) as reader:
            res = find_spots(reader.shot(0), options)
        assert res.status == "ok"
        ours = res.reflections
        sel = ref["id"] == k
        for p in np.unique(ref["panel"][sel]):
            rr = ref["xyzobs.px.value"][sel & (ref["panel"] == p)][:, :2]
            oo = ours["xyzobs.px.value"][ours["panel"] == p][:, :2]
            if len(oo):
                d = cKDTree(oo).query(rr)[0]
                n_matched += int((d <= 1.0).sum())
                offsets.extend(d)
        n_ref += int(sel.sum())
        n_ours += len(ours)
    return n_matched / n_ref, n_ours / n_ref, float(np.median(offsets))


@pytest.mark.slow
def test_thermolysin_cspad_matches_dials(shared_data):
    options = SpotFinderOptions(dispersion=DispersionOptions(gain=25.0, global_threshold=100.0),
                                filter=FilterOptions(min_spot_size=2))
    recall, ratio, median = _match_dials(shared_data, "thermolysin_cspad", "*.cbf",
                                         "thermolysin_cspad.strong.refl", options)
    assert recall >= 0.90
    assert abs(ratio - 1) <= 0.15
    assert median < 1e-6  # DIALS's own centroids, to rounding


@pytest.mark.slow
def test_thaumatin_grid_matches_dials(shared_data):
    recall, ratio, median = _match_dials(shared_data, "thaumatin_grid", "*.cbf.bz2",
                                         "thaumatin_grid.strong.refl", SpotFinderOptions())
    assert recall >= 0.90
    assert abs(ratio - 1) <= 0.15
    assert median < 1e-6


@pytest.mark.slow
def test_cli_find_spots_and_average(shared_data, tmp_path, capsys):
    from stillshot.cli.main import main

    files = sorted(str(p) for p in (shared_data / "thermolysin_cspad").glob("*.cbf"))[:2]
    out = tmp_path / "spots"
    rc = main(["find-spots", *files, f"output.dir={out}", "spotfinder.filter.min_spot_size=2",
               "spotfinder.threshold.dispersion.gain=25", "spotfinder.threshold.dispersion.global_threshold=100",
               "mp.nproc=2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 shots: 2 hits" in text and "idx-20130301060858401.cbf" in text
    strong = ReflectionTable.from_file(out / "strong.refl")
    from stillshot.models import ExperimentList

    experiments = ExperimentList.from_file(out / "imported.expt")
    assert len(experiments) == 2 and len(experiments[0].detector) == 64
    assert sorted(set(strong["id"].tolist())) == [0, 1]
    assert strong.identifiers == {0: experiments[0].identifier, 1: experiments[1].identifier}
    assert np.bincount(strong["id"]).tolist() == [176, 107]  # DIALS's counts for these two shots
    summary = json.loads((out / "find_spots.json").read_text())
    assert [s["status"] for s in summary["shots"]] == ["hit", "hit"]

    rc = main(["average", *files, f"output.dir={tmp_path / 'avg'}"])
    assert rc == 0
    z = np.load(tmp_path / "avg" / "average.npz")
    assert z["mean"].shape == (64, 185, 194) and int(z["n_shots"]) == 2
    assert np.all(z["max"] >= z["mean"]) and np.all(z["std"] >= 0)
    rc = main(["find-spots", files[0], f"output.dir={tmp_path / 'ped'}", "spotfinder.filter.min_spot_size=2",
               f"spotfinder.lookup.pedestal={tmp_path / 'avg' / 'average.npz'}:mean"])
    assert rc == 0
    assert main(["find-spots", files[0], "spotfinder.threshold.algorithm=nope"]) == 2
    assert "nope" in capsys.readouterr().err
