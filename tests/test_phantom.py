"""The procedural chest CT phantom: geometry, determinism, anatomy, findings, scanner."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nodule.data import anatomy as an
from nodule.data.phantom import PRESETS, PhantomScan, _findings, _structures, generate_phantom
from nodule.data.scanner import (
    ScannerSettings,
    apply_scanner,
    kernel_mtf,
    noise_filter,
    noise_scale,
    radial_frequency,
    sample_scanner,
)
from nodule.data.vessels import capsule_distance, grow_tree, paint_capsules

SEEDS = range(6)


@pytest.fixture(scope="module")
def scans() -> list[PhantomScan]:
    return [generate_phantom(seed, 0, "small", shape_bank=None) for seed in SEEDS]


def test_small_preset_geometry_and_hu(scans: list[PhantomScan]) -> None:
    for s in scans:
        v = s.volume
        assert v.array.dtype == np.int16
        assert v.shape[1:] == (128, 128) and 36 <= v.shape[0] <= 64
        assert 2.0 <= v.spacing[0] <= 3.5 and v.spacing[0] == v.spacing[1]
        lung = v.array[s.lung > 0]
        assert -900 < np.median(lung) < -700
        assert 1500 < s.meta["lung_volume_ml"] < 8000
        assert s.lung.max() == 2 and (s.lung == 1).any()
        assert v.array.min() >= -1024


def test_same_seed_same_bytes_other_index_differs() -> None:
    a = generate_phantom(11, 3, "small")
    b = generate_phantom(11, 3, "small")
    c = generate_phantom(11, 4, "small")
    assert a.volume.array.tobytes() == b.volume.array.tobytes()
    assert a.volume.series_uid == b.volume.series_uid != c.volume.series_uid
    assert a.findings == b.findings
    assert a.volume.array.shape != c.volume.array.shape or not np.array_equal(a.volume.array, c.volume.array)


def _nodules(scans: list[PhantomScan]) -> list[tuple[PhantomScan, int]]:
    out = [(s, i) for s in scans for i, f in enumerate(s.findings) if f.kind == "nodule"]
    assert len(out) >= 3, "seeds should give some nodules"
    return out


def test_nodules_lie_in_the_lung_as_their_attachment_says(scans: list[PhantomScan]) -> None:
    for s, i in _nodules(scans):
        f = s.findings[i]
        sp = s.volume.spacing_zyx
        depth = ndimage.distance_transform_edt(s.lung > 0, sampling=sp)  # mm to the lung wall
        vox = np.round(s.volume.world_to_voxel(f.center_xyz)[0]).astype(int)
        tol = float(np.linalg.norm(sp)) / 2
        d = depth[tuple(vox)]
        r = f.diameter_mm / 2
        # analytic check (exact) and voxel check (label map of the lung)
        sd = an.lung_sd(s.plan, *(np.array([c]) for c in f.center_xyz))[0]
        assert sd < 0, f
        if f.attachment == "juxtapleural":
            assert -r <= sd <= -0.3 * r + 1e-6 and d <= r + tol, f
        else:
            assert d > 0 or sd < -tol, f
        if f.attachment in ("isolated", "perifissural"):
            assert sd < -(r + 1.0) + 1e-6, f


def test_rendered_diameter_matches_the_table(scans: list[PhantomScan]) -> None:
    for s, i in _nodules(scans):
        f = s.findings[i]
        slices, occ = s.occupancy[f.finding_id]
        voxel = float(np.prod(s.volume.spacing))
        d_eq = (6.0 * occ.sum() * voxel / np.pi) ** (1 / 3)
        assert d_eq == pytest.approx(f.diameter_mm, rel=0.12), f
        assert (s.labels[slices][occ >= 0.5] == f.finding_id).all()


def test_excluded_findings_are_disjoint_from_nodules(scans: list[PhantomScan]) -> None:
    n_excluded = 0
    for s in scans:
        nods = [f for f in s.findings if f.kind == "nodule"]
        for e in (f for f in s.findings if f.kind != "nodule"):
            n_excluded += 1
            assert e.kind == "non_nodule" or 0 < e.diameter_mm < 3.0
            assert e.kind != "non_nodule" or e.diameter_mm == -1
            for n in nods:
                gap = np.linalg.norm(np.subtract(e.center_xyz, n.center_xyz))
                assert gap > n.diameter_mm / 2 + 2.0
    assert n_excluded > 0


def test_scanner_settings_can_be_fixed() -> None:
    s = generate_phantom(2, 0, "small", slice_thickness=3.0, pixel_spacing=2.8, kernel="sharp", noise=25.0)
    assert s.volume.spacing == (2.8, 2.8, 3.0)
    assert s.scanner.kernel == "sharp" and s.scanner.noise_hu == 25.0
    assert s.volume.info.slice_thickness == 3.0


def test_noise_filter_has_unit_variance_and_sharp_kernel_passes_more_detail() -> None:
    rng = np.random.default_rng(0)
    white = rng.standard_normal((64, 256, 256))
    for kernel in ("soft", "standard", "sharp"):
        g = noise_filter(kernel, (256, 256), 0.7)  # type: ignore[arg-type]
        noise = np.fft.irfft2(np.fft.rfft2(white) * g, s=(256, 256))
        assert noise.std() == pytest.approx(1.0, rel=0.05)
    soft, sharp = kernel_mtf("soft", (256, 256), 0.7), kernel_mtf("sharp", (256, 256), 0.7)
    assert sharp[0, 80] > soft[0, 80] and sharp.max() > 1.0  # edge enhancement


def _nps_profile(kernel: str, ps: float, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Radial noise power spectrum of a kernel (cycles/mm, power) up to the Nyquist frequency."""
    g = noise_filter(kernel, (n, n), ps)  # type: ignore[arg-type]
    f = radial_frequency((n, n), ps).ravel()
    edges = np.linspace(0.0, 0.5 / ps, 9)
    idx = np.digitize(f, edges)
    power = np.array([(g.ravel() ** 2)[idx == i].mean() for i in range(1, 9)])
    return 0.5 * (edges[1:] + edges[:-1]), power


def test_kernels_match_the_real_scanners_noise_spectra() -> None:
    # soft: GE STANDARD (LIDC-IDRI, 0.7 mm pixels): peak near 0.22 cycles/mm, a tenth of it at Nyquist
    f, power = _nps_profile("soft", 0.7)
    assert 0.15 < f[int(np.argmax(power))] < 0.3
    assert power[-1] / power.max() < 0.1
    # standard: Philips L (0.84 mm pixels): peak near 0.48 cycles/mm, still most of it at Nyquist
    f, power = _nps_profile("standard", 0.842)
    assert 0.35 < f[int(np.argmax(power))] < 0.55
    assert 0.45 < power[-1] / power.max() < 0.85
    # sharp: B70f (0.56 mm pixels): a third of the peak at Nyquist
    f, power = _nps_profile("sharp", 0.564)
    assert f[int(np.argmax(power))] > 0.4 and 0.15 < power[-1] / power.max() < 0.4


def test_noise_is_lower_in_air_away_from_the_body() -> None:
    hu = np.full((4, 200, 200), -1000.0, np.float32)
    yy, xx = np.mgrid[:200, :200]
    body = (yy - 100) ** 2 + (xx - 100) ** 2 < 60**2
    lung = (yy - 100) ** 2 + (xx - 100) ** 2 < 35**2  # air enclosed by tissue: the body's noise
    hu[:, body] = 40.0
    hu[:, lung] = -850.0
    scale = noise_scale(hu, 0.5, 0.8)
    assert scale[:, lung].min() == pytest.approx(1.0) and scale[:, body].min() > 0.95
    assert scale[:, :10, :10].max() == pytest.approx(0.5, abs=0.01)
    settings = ScannerSettings(1.0, 1.0, 0.8, 200, "sharp", 30.0, air_noise=0.5)
    noisy = apply_scanner(hu.copy(), settings, np.random.default_rng(0))
    clean = apply_scanner(hu.copy(), ScannerSettings(1.0, 1.0, 0.8, 200, "sharp", 1e-6), np.random.default_rng(0))
    noise = noisy - clean
    inside, corner = noise[:, 90:110, 90:110].std(), noise[:, :25, :25].std()
    assert inside == pytest.approx(30.0, rel=0.3)
    assert corner / inside == pytest.approx(0.5, rel=0.2)


def test_air_noise_is_drawn_for_full_scans_and_can_be_fixed() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_scanner(rng, 512, 330.0).air_noise for _ in range(50)]
    assert min(draws) >= 0.45 and max(draws) <= 1.0 and np.ptp(draws) > 0.3
    assert sample_scanner(rng, 128, 330.0, small=True).air_noise == 1.0
    assert sample_scanner(rng, 512, 330.0, air_noise=0.6).air_noise == 0.6
    with pytest.raises(ValueError, match="air_noise"):
        sample_scanner(rng, 512, 330.0, air_noise=0.0)


def test_capsules_render_with_partial_volume() -> None:
    step = np.array([0.7, 0.7, 0.7])
    for r in (0.5, 1.0, 3.0):
        out = np.zeros((20, 40, 40), np.float32)
        caps = np.array([[-5.0, 14.0, 7.0, 30.0, 14.0, 7.0, r, r]])
        paint_capsules(out, np.zeros(3), step, caps, edge=0.7)
        area = out[:, :, 20].sum() * 0.7 * 0.7  # cross-section of a tube along x
        assert area == pytest.approx(np.pi * r * r, rel=0.35 if r < 1 else 0.1)
        assert out.max() <= 1.0


def test_vessel_tree_tapers_by_murray_and_stays_in_the_lung() -> None:
    rng = np.random.default_rng(0)
    plan = an.sample_body_plan(rng)
    pts = an.sample_lung_points(plan, rng, 1500, side=-1, max_sd=-1.0)
    root = np.array([plan.cx - plan.med_half_width - 10, plan.cy, plan.z_carina - 14])
    tree = grow_tree(root, pts, 0.35, rng)
    assert 3.5 < tree.radius[0] < 5.5 and tree.radius.min() == pytest.approx(0.35)
    kids = [np.nonzero(tree.parent == i)[0] for i in range(len(tree.radius)) if tree.count[i] > 1]
    for i, k in zip((i for i in range(len(tree.radius)) if tree.count[i] > 1), kids, strict=True):
        assert len(k) == 2
        assert tree.radius[i] ** 3 == pytest.approx((tree.radius[k] ** 3).sum())
    ends = tree.end[tree.count == 1]
    assert (an.lung_sd(plan, ends[:, 0], ends[:, 1], ends[:, 2]) < 0).mean() > 0.99
    inside = an.lung_sd(plan, tree.end[:, 0], tree.end[:, 1], tree.end[:, 2]) < 2.0
    assert inside.mean() > 0.95


def test_segment_lungs_agrees_with_the_generator_label(scans: list[PhantomScan]) -> None:
    lung_mod = pytest.importorskip("nodule.lung")
    for s in scans[:2]:
        seg = lung_mod.segment_lungs(s.volume).lungs
        gt = s.lung > 0
        dice = 2 * (seg & gt).sum() / (seg.sum() + gt.sum())
        assert dice > 0.95


def test_field_of_view_holds_both_lungs_at_a_small_pixel_size() -> None:
    # 128 x 2.0 mm = 256 mm field of view, narrower than most drawn bodies (270-370 mm): the
    # patient is drawn to fit (as a scanner operator would choose the field), so the lungs
    # keep ~10 mm from its left and right (and front and back) edges; before, the lungs were
    # cut open at x = 0 and x = 127 (like `nodule synth --preset full --pixel_spacing 0.564`).
    for seed in range(4):
        s = generate_phantom(seed, 0, "small", slice_thickness=5.0, pixel_spacing=2.0, kernel="sharp", shape_bank=None)
        lung = s.lung > 0
        cols = np.nonzero(lung.any(axis=(0, 1)))[0]
        rows = np.nonzero(lung.any(axis=(0, 2)))[0]
        n = lung.shape[2]
        assert cols.min() >= 3 and cols.max() <= n - 4, (seed, cols.min(), cols.max())
        assert rows.min() >= 3 and rows.max() <= n - 4, (seed, rows.min(), rows.max())
        assert s.lung.max() == 2 and (s.lung == 1).any()


def test_nodules_stay_out_of_large_vessels_airways_and_the_mediastinum() -> None:
    # placement only (no rendering), over many patients: no nodule's sphere overlaps a vessel
    # or airway wider than 3.5 mm (before, an "isolated" nodule could sit inside a hilar or
    # mediastinal vessel of 18-20 mm, invisible), and every centre lies in the lung
    n_checked = 0
    attachments = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        plan = an.sample_body_plan(rng)
        st = _structures(plan, PRESETS["small"], rng, plan.z_base - 20.0, plan.z_top + 20.0)
        placed, _ = _findings(plan, rng, st, None)
        big = st.obstacles()
        assert (np.maximum(big[:, 6], big[:, 7]) > 3.0).any()  # the hilar and great vessels are in it
        for p in placed:
            f = p.finding
            if f.kind == "non_nodule":
                continue
            c = np.array([f.center_xyz])
            r = f.diameter_mm / 2
            dist, _ = capsule_distance(c, big)
            assert dist[0] >= r, (seed, f)
            assert an.lung_sd(plan, c[:, 0], c[:, 1], c[:, 2])[0] < 0, (seed, f)
            if f.attachment == "juxtavascular":
                dv, _ = capsule_distance(c, st.lung_vessels)
                assert dv[0] < r, (seed, f)  # touches a (small) pulmonary vessel
            n_checked += 1
            attachments.add(f.attachment)
    assert n_checked > 50 and {"isolated", "juxtavascular", "juxtapleural"} <= attachments


def test_ssp_neighbour_weight_is_the_blurred_box_over_the_next_slice() -> None:
    """Against a direct discrete convolution of the box with the Gaussian on a 1 µm grid."""
    from nodule.data.phantom import ssp_neighbour_weight

    for thickness, fwhm in ((1.25, 1.0), (5.0, 1.0), (0.625, 0.8)):
        step = 0.001
        z = np.arange(-4 * thickness, 4 * thickness, step)
        box = (np.abs(z) <= thickness / 2) / thickness
        sd = fwhm / 2.3548
        gauss = np.exp(-0.5 * (np.arange(-6 * sd, 6 * sd, step) / sd) ** 2)
        profile = np.convolve(box, gauss / gauss.sum(), mode="same")
        over_next = profile[(z >= thickness / 2) & (z < 1.5 * thickness)].sum() * step
        assert abs(ssp_neighbour_weight(thickness, fwhm) - over_next) < 2e-3
    assert ssp_neighbour_weight(1.25, 0.0) == 0.0
    assert ssp_neighbour_weight(1.25, 1.0) > ssp_neighbour_weight(2.5, 1.0) > ssp_neighbour_weight(5.0, 1.0) > 0


def test_a_blurred_slice_profile_mixes_each_slice_with_its_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without noise the blurred phantom is the box-profile phantom filtered along z by
    (a, 1 - 2a, a): the blur is linear and commutes with the in-plane kernel."""
    from dataclasses import replace

    from nodule.data.phantom import ssp_neighbour_weight

    box = generate_phantom(3, 0, "small", slice_thickness=2.0, noise=0.0).volume.array.astype(np.float32)
    monkeypatch.setitem(PRESETS, "small", replace(PRESETS["small"], ssp_blur_fwhm_mm=1.0))
    blurred = generate_phantom(3, 0, "small", slice_thickness=2.0, noise=0.0).volume.array.astype(np.float32)
    a = ssp_neighbour_weight(2.0, 1.0)
    expected = ndimage.convolve1d(box, np.array([a, 1 - 2 * a, a], np.float32), axis=0, mode="nearest")
    inside = box > -1000  # the clip at -1024 is not linear
    assert np.mean(np.abs(blurred - expected)[inside] <= 1.5) > 0.99
    assert np.abs(blurred - box)[inside].mean() > 2.0
