"""Candidate detectors on a small analytic chest phantom, merging, CSV round trip, real lesion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.candidates import (
    CANDIDATE_COLUMNS,
    CandidateConfig,
    detect_candidates,
    detect_large_solid,
    detect_solid,
    detect_subsolid,
    merge_candidates,
)
from nodule.candidates.subsolid import SubsolidConfig
from nodule.io import SeriesInfo, Volume

SPACING_XYZ = (0.8, 0.8, 1.6)
ORIGIN = (-100.0, -150.0, -300.0)
SHAPE_MM = (90.0, 150.0, 220.0)  # z, y, x extent
LUNG_SEMI = (40.0, 50.0, 38.0)  # z, y, x semi-axes of each lung
LUNG_CENTRES = {1: (45.0, 75.0, 60.0), 2: (45.0, 75.0, 160.0)}


@dataclass(frozen=True)
class Phantom:
    """An analytic chest phantom: HU volume, lung labels (without attached masses) and objects (mm, z y x)."""

    volume: Volume
    labels: np.ndarray
    objects: dict[str, tuple[tuple[float, float, float], float]]  # name -> (centre zyx mm, diameter)


def _lung_boundary_x(centre: tuple[float, float, float], z: float, y: float, side: int) -> float:
    cz, cy, cx = centre
    f = np.sqrt(1.0 - ((z - cz) / LUNG_SEMI[0]) ** 2 - ((y - cy) / LUNG_SEMI[1]) ** 2)
    return float(cx + side * LUNG_SEMI[2] * f)


def make_phantom(seed: int = 0) -> Phantom:
    """Two ellipsoid lungs in a soft-tissue body with a solid nodule, a ground-glass nodule,
    a straight solid vessel, a straight ground-glass-density tube, and two 18-20 mm masses
    attached to the lateral chest wall and to the mediastinum."""
    sx, sy, sz = SPACING_XYZ
    n = [round(SHAPE_MM[0] / sz), round(SHAPE_MM[1] / sy), round(SHAPE_MM[2] / sx)]
    z, y, x = np.meshgrid(*(np.arange(k) * s for k, s in zip(n, (sz, sy, sx), strict=True)), indexing="ij")
    z, y, x = z.astype(np.float32), y.astype(np.float32), x.astype(np.float32)
    h = 0.8  # edge width, mm

    def occ(dist: np.ndarray) -> np.ndarray:  # signed distance (negative inside) -> occupancy
        return np.clip(0.5 - dist / h, 0.0, 1.0)

    hu = np.full(n, -1000.0, np.float32)
    body = ((y - 75.0) / 72.0) ** 2 + ((x - 110.0) / 108.0) ** 2 <= 1.0
    hu[body] = 40.0
    labels = np.zeros(n, np.uint8)
    for label, (cz, cy, cx) in LUNG_CENTRES.items():
        r = np.sqrt(((z - cz) / LUNG_SEMI[0]) ** 2 + ((y - cy) / LUNG_SEMI[1]) ** 2 + ((x - cx) / LUNG_SEMI[2]) ** 2)
        o = occ((r - 1.0) * 38.0)
        hu = hu * (1 - o) - 850.0 * o
        labels[r <= 1.0] = label

    def ball(c: tuple[float, float, float], d: float, value: float) -> np.ndarray:
        nonlocal hu
        o = occ(np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) - d / 2)
        hu = hu * (1 - o) + value * o
        return o >= 0.5

    def tube_z(cy: float, cx: float, d: float, value: float, z0: float, z1: float) -> None:
        nonlocal hu
        radial = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - d / 2
        along = np.maximum(z0 - z, z - z1)
        o = occ(np.maximum(radial, along)) * (labels > 0)
        hu = hu * (1 - o) + value * o

    objects: dict[str, tuple[tuple[float, float, float], float]] = {}
    objects["solid"] = ((30.0, 55.0, 60.0), 6.0)
    ball(*objects["solid"], 20.0)
    objects["ggo"] = ((60.0, 50.0, 48.0), 12.0)
    ball(*objects["ggo"], -550.0)
    objects["vessel"] = ((45.0, 95.0, 62.0), 6.0)  # along z through the whole right lung
    tube_z(95.0, 62.0, 6.0, 40.0, 0.0, 90.0)
    objects["ggo_tube"] = ((45.0, 80.0, 75.0), 12.0)  # ground-glass density, 60 mm long
    tube_z(80.0, 75.0, 12.0, -550.0, 15.0, 75.0)
    zc, yc = 50.0, 95.0
    objects["wall_mass"] = ((zc, yc, _lung_boundary_x(LUNG_CENTRES[2], zc, yc, +1) - 5.0), 20.0)
    wall = ball(*objects["wall_mass"], 30.0)
    zc, yc = 30.0, 70.0
    objects["mediastinal_mass"] = ((zc, yc, _lung_boundary_x(LUNG_CENTRES[2], zc, yc, -1) + 4.0), 18.0)
    med = ball(*objects["mediastinal_mass"], 30.0)
    labels[wall | med] = 0  # a lung mask cuts attached masses away
    hu += np.random.default_rng(seed).normal(0.0, 20.0, hu.shape).astype(np.float32)
    volume = Volume(
        array=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        spacing=SPACING_XYZ,
        origin=ORIGIN,
        info=SeriesInfo(series_uid="1.2.826.0.1.3680043.8.498.1"),
    )
    return Phantom(volume, labels, objects)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom()


@pytest.fixture(scope="module")
def work(phantom: Phantom) -> tuple[np.ndarray, np.ndarray]:
    """The phantom at 1 mm isotropic (array, labels) on a grid starting at the phantom's corner."""
    from nodule.io import resample, resample_like

    w = resample(phantom.volume, (1.0, 1.0, 1.0))
    lab = resample_like(phantom.volume.with_array(phantom.labels), w, is_mask=True)
    return w.array.astype(np.float32), lab.array


@pytest.fixture(scope="module")
def result(phantom: Phantom) -> pd.DataFrame:
    return detect_candidates(phantom.volume, phantom.labels).candidates


def _world(phantom: Phantom, name: str) -> np.ndarray:
    (cz, cy, cx), _ = phantom.objects[name]
    return np.array([ORIGIN[0] + cx, ORIGIN[1] + cy, ORIGIN[2] + cz])


def _distances_mm(det: pd.DataFrame, centre_mm: tuple[float, float, float]) -> np.ndarray:
    # work grid: 1 mm voxels whose corner is the phantom's corner (centre of voxel 0 at 0.5 mm - half a phantom voxel)
    offset = np.array([0.5 - SPACING_XYZ[2] / 2, 0.5 - SPACING_XYZ[1] / 2, 0.5 - SPACING_XYZ[0] / 2])
    pts = det[["z", "y", "x"]].to_numpy(dtype=float) + offset
    return np.asarray(np.sqrt(((pts - np.asarray(centre_mm)) ** 2).sum(axis=1)))


def test_solid_finds_nodule_not_vessel(phantom: Phantom, work: tuple[np.ndarray, np.ndarray]) -> None:
    array, labels = work
    det = detect_solid(array, labels > 0, (1.0, 1.0, 1.0))
    hit = _distances_mm(det, phantom.objects["solid"][0]) < 3.0
    assert hit.any()
    best = det[hit].iloc[0]
    assert best["score"] > 0.5
    assert 4.0 < best["diameter_mm"] < 8.5
    assert best["elongation"] < 1.5
    (_, vy, vx), d = phantom.objects["vessel"]
    pts = det[["z", "y", "x"]].to_numpy(dtype=float)
    along = (pts[:, 0] > 15) & (pts[:, 0] < 75)  # away from where the tube leaves the lung
    near_axis = np.hypot(pts[:, 1] - vy, pts[:, 2] - vx) < d
    assert not (along & near_axis).any()


def test_subsolid_finds_ggo_not_tube(phantom: Phantom, work: tuple[np.ndarray, np.ndarray]) -> None:
    array, labels = work
    det = detect_subsolid(array, labels > 0, (1.0, 1.0, 1.0))
    hit = _distances_mm(det, phantom.objects["ggo"][0]) < 3.0
    assert hit.any()
    assert 8.0 < det[hit].iloc[0]["diameter_mm"] < 14.0
    assert -700 < det[hit].iloc[0]["mean_hu"] < -450
    for name in ("ggo_tube", "vessel"):
        (_, ty, tx), d = phantom.objects[name]
        pts = det[["z", "y", "x"]].to_numpy(dtype=float)
        assert not (np.hypot(pts[:, 1] - ty, pts[:, 2] - tx) < d).any(), name


def test_subsolid_score_favours_larger_components(phantom: Phantom, work: tuple[np.ndarray, np.ndarray]) -> None:
    array, labels = work
    plain = detect_subsolid(array, labels > 0, (1.0, 1.0, 1.0), SubsolidConfig(size_power=0.0))
    sized = detect_subsolid(array, labels > 0, (1.0, 1.0, 1.0), SubsolidConfig(size_power=0.5))
    a = plain[_distances_mm(plain, phantom.objects["ggo"][0]) < 3.0].iloc[0]
    b = sized[_distances_mm(sized, phantom.objects["ggo"][0]) < 3.0].iloc[0]
    expected = min(1.0, a["diameter_mm"] / 10.0) ** 0.5
    assert b["score"] == pytest.approx(a["score"] * expected)


@pytest.mark.parametrize("name", ["wall_mass", "mediastinal_mass"])
def test_large_solid_finds_attached_masses(phantom: Phantom, work: tuple[np.ndarray, np.ndarray], name: str) -> None:
    array, labels = work
    det = detect_large_solid(array, labels, (1.0, 1.0, 1.0))
    centre, diameter = phantom.objects[name]
    dist = _distances_mm(det, centre)
    assert (dist < diameter / 2).any()
    assert det[dist < diameter / 2].iloc[0]["diameter_mm"] >= 10.0


def test_large_solid_ignores_vessel(phantom: Phantom, work: tuple[np.ndarray, np.ndarray]) -> None:
    array, labels = work
    det = detect_large_solid(array, labels, (1.0, 1.0, 1.0))
    (_, vy, vx), d = phantom.objects["vessel"]
    pts = det[["z", "y", "x"]].to_numpy(dtype=float)
    assert not (np.hypot(pts[:, 1] - vy, pts[:, 2] - vx) < d).any()


def test_detect_candidates_hits_every_nodule(phantom: Phantom, result: pd.DataFrame) -> None:
    assert list(result.columns) == list(CANDIDATE_COLUMNS)
    assert result["probability"].between(0, 1).all()
    assert (result["seriesuid"] == phantom.volume.series_uid).all()
    xyz = result[["coordX", "coordY", "coordZ"]].to_numpy()
    expected = {"solid": "solid", "ggo": "subsolid", "wall_mass": "large_solid", "mediastinal_mass": "large_solid"}
    for name, detector in expected.items():
        dist = np.linalg.norm(xyz - _world(phantom, name), axis=1)
        radius = phantom.objects[name][1] / 2
        assert (dist < radius).any(), name
        assert detector in result.loc[dist < radius, "detectors"].str.cat(sep="+"), name
    # voxel columns are the world centres in the study's own voxels
    vox = phantom.volume.world_to_voxel(xyz)
    np.testing.assert_allclose(result[["voxelZ", "voxelY", "voxelX"]].to_numpy(), vox, atol=1e-6)


def test_candidate_budget(phantom: Phantom) -> None:
    res = detect_candidates(phantom.volume, phantom.labels, CandidateConfig(max_per_scan=3))
    assert len(res.candidates) == 3
    assert res.candidates["probability"].is_monotonic_decreasing
    assert set(res.seconds) >= {"lung", "resample", "solid", "subsolid", "large_solid", "rank", "merge"}


def test_merge_by_distance() -> None:
    table = pd.DataFrame(
        {
            "coordX": [0.0, 3.0, 6.0, 50.0, 100.0],
            "coordY": [0.0] * 5,
            "coordZ": [0.0] * 5,
            "score": [0.2, 0.9, 0.5, 0.4, 0.1],
            "detector": ["solid", "large_solid", "subsolid", "solid", "subsolid"],
        }
    )
    merged = merge_candidates(table, 4.0)
    assert len(merged) == 3  # 0-3-6 chain into one group
    top = merged.iloc[0]
    assert top["coordX"] == 3.0 and top["score"] == 0.9
    assert top["detectors"] == "large_solid+solid+subsolid" and top["n_merged"] == 3
    assert merged["score"].tolist() == [0.9, 0.4, 0.1]
    assert len(merge_candidates(table.iloc[:0], 4.0)) == 0


def test_csv_is_a_submission_that_scores(phantom: Phantom, result: pd.DataFrame, tmp_path: Path) -> None:
    from nodule.data.luna16 import read_submission, write_submission
    from nodule.evaluation.froc import evaluate_froc

    path = write_submission(result, tmp_path / "candidates.csv")
    assert path.read_text().splitlines()[0].startswith("seriesuid,coordX,coordY,coordZ,probability,")
    back = read_submission(path)
    assert len(back) == len(result)
    np.testing.assert_allclose(back[["coordX", "coordY", "coordZ"]].to_numpy(), result[["coordX", "coordY", "coordZ"]].to_numpy())
    names = ["solid", "ggo", "wall_mass", "mediastinal_mass"]
    annotations = pd.DataFrame(
        [
            {"seriesuid": phantom.volume.series_uid, "coordX": w[0], "coordY": w[1], "coordZ": w[2], "diameter_mm": phantom.objects[k][1]}
            for k in names
            for w in [_world(phantom, k)]
        ]
    )
    res = evaluate_froc(back, annotations, n_bootstrap=0, max_marks_per_scan=None)
    assert res.n_nodules == len(names)
    assert res.n_hits == len(names)


@pytest.mark.slow
def test_real_lesion_is_hit(real_ct_volume: Volume) -> None:
    manifest = Path(__file__).resolve().parents[1] / "data_manifests" / "real_ct_known_findings.csv"
    if not manifest.exists():
        pytest.skip(f"{manifest} not found")
    findings = pd.read_csv(manifest)
    findings = findings[findings["seriesuid"] == real_ct_volume.series_uid]
    assert len(findings)
    cands = detect_candidates(real_ct_volume).candidates
    assert len(cands) <= CandidateConfig().max_per_scan
    xyz = cands[["coordX", "coordY", "coordZ"]].to_numpy()
    for _, f in findings.iterrows():
        dist = np.linalg.norm(xyz - f[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float), axis=1)
        assert (dist < f["diameter_mm"] / 2).any(), f["description"]


def test_merge_inside_a_large_candidate() -> None:
    table = pd.DataFrame(
        {
            "coordX": [0.0, 7.0, 30.0],
            "coordY": [0.0] * 3,
            "coordZ": [0.0] * 3,
            "score": [0.5, 0.6, 0.4],
            "diameter_mm": [20.0, 4.0, 4.0],
            "detector": ["large_solid", "solid", "solid"],
        }
    )
    assert len(merge_candidates(table, 5.0)) == 3
    merged = merge_candidates(table, 5.0, radius_fraction=1.0)
    assert len(merged) == 2
    assert merged.iloc[0]["detectors"] == "large_solid+solid"


def _pleural_slab(seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 1 mm grid of lung (-850 HU) against a chest wall (x >= 40, 40 HU) with a ground-glass
    nodule (-600 HU, 6 mm) that touches the pleura. Returns the array, the lung mask (the wall excluded) and the ground-glass centre (z, y, x)."""
    from scipy import ndimage as ndi

    shape = (48, 64, 56)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    hu = np.where(x >= 40, 40.0, -850.0).astype(np.float32)
    centre = (24.0, 20.0, 37.5)  # 2.5 mm from the wall: the ball overlaps the pleura
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    hu = np.where((r <= 3.0) & (x < 40), -600.0, hu)
    hu = np.asarray(ndi.gaussian_filter(hu, 0.7), dtype=np.float32)  # scanner blur
    hu += np.random.default_rng(seed).normal(0.0, 15.0, shape).astype(np.float32)
    return hu, x < 40, centre


def _voxel_distances(det: pd.DataFrame, centre: tuple[float, float, float]) -> np.ndarray:
    """Distance of each detection (z, y, x voxels) from ``centre`` on a grid of 1 mm voxels."""
    return np.asarray(np.linalg.norm(det[["z", "y", "x"]].to_numpy(dtype=float) - np.asarray(centre), axis=1))


def test_subsolid_finds_juxtapleural_ground_glass() -> None:
    array, lung, centre = _pleural_slab()
    det = detect_subsolid(array, lung, (1.0, 1.0, 1.0))
    dist = _voxel_distances(det, centre)
    assert (dist < 3.0).any()
    assert det.loc[dist < 3.0, "mean_hu"].iloc[0] < -400


@pytest.mark.parametrize("radius_mm, spacing", [(1.0, (1.0, 1.0, 1.0)), (4.0, (2.0, 2.0, 2.0)), (1.5, (2.0, 0.8, 0.8))])
def test_binary_open_matches_scipy(radius_mm: float, spacing: tuple[float, float, float]) -> None:
    from scipy import ndimage as ndi

    from nodule.candidates.subsolid import ball, binary_open

    rng = np.random.default_rng(1)
    mask = np.asarray(ndi.gaussian_filter(rng.normal(size=(30, 36, 40)), 1.5) > 0.03)
    structure = ball(radius_mm, spacing)
    np.testing.assert_array_equal(binary_open(mask, structure), ndi.binary_opening(mask, structure=structure))


def test_subsolid_wide_opening_frees_ground_glass_from_clutter() -> None:
    """A faint 7 mm ground-glass ball threaded on a long, thin ground-glass strand (blurred
    small vessels): one elongated component, rejected; the wide opening cuts the strand."""
    shape = (40, 48, 96)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (20.0, 24.0, 48.0)
    hu = np.full(shape, -850.0, np.float32)
    strand = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 1.0) & (x >= 8) & (x < 88)
    hu[strand] = -650.0
    hu[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 3.5**2] = -650.0
    lung = np.ones(shape, bool)

    def near(det: pd.DataFrame) -> np.ndarray:
        return _voxel_distances(det, centre) < 3.5

    plain = detect_subsolid(hu, lung, (1.0, 1.0, 1.0), SubsolidConfig(smooth_mm=0.5, wide_openings_mm=(), extra_candidates=0, faint_candidates=0))
    wide = detect_subsolid(hu, lung, (1.0, 1.0, 1.0), SubsolidConfig(smooth_mm=0.5, wide_openings_mm=(1.5,), extra_candidates=0, faint_candidates=0))
    assert not near(plain).any()
    assert near(wide).any()
    assert 4.0 < wide.loc[near(wide), "diameter_mm"].iloc[0] < 9.0


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (2.5, 1.6, 1.6)])
def test_close_ball_matches_distance_transform_closing(spacing: tuple[float, float, float]) -> None:
    """The closing (SimpleITK's Maurer distances) equals the definition by scipy's exact EDT."""
    from scipy import ndimage as ndi

    from nodule.candidates.large_solid import close_ball

    rng = np.random.default_rng(3)
    mask = np.asarray(ndi.gaussian_filter(rng.normal(size=(28, 34, 30)), 2.0) > 0.05)
    radius = 6.0
    pad = [(int(p), int(p)) for p in np.ceil(radius / np.asarray(spacing)).astype(int) + 1]
    padded = np.pad(mask, pad)
    dilated = ndi.distance_transform_edt(~padded, sampling=spacing) <= radius
    closed = ndi.distance_transform_edt(dilated, sampling=spacing) > radius
    inner = tuple(slice(a, a + n) for (a, _), n in zip(pad, mask.shape, strict=True))
    expected = closed[inner] | mask
    got = close_ball(mask, radius, spacing)
    assert got.sum() > mask.sum()  # the closing fills something
    np.testing.assert_array_equal(got, expected)


def test_subsolid_contrast_levels_free_a_nodule_from_a_faint_halo() -> None:
    """A ground-glass ball inside a long, fainter ground-glass slab: one elongated
    component at the lowest contrast threshold; the ball alone passes a higher one."""
    shape = (40, 48, 96)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (20.0, 24.0, 48.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[(np.abs(z - centre[0]) <= 2) & (np.abs(y - centre[1]) <= 2) & (x >= 10) & (x < 86)] = -690.0
    hu[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 4.0**2] = -550.0
    lung = np.ones(shape, bool)

    def found(levels: int) -> pd.DataFrame:
        config = SubsolidConfig(smooth_mm=0.5, contrast_levels=levels, wide_openings_mm=(), extra_candidates=0, faint_candidates=0)
        det = detect_subsolid(hu, lung, (1.0, 1.0, 1.0), config)
        return det[_voxel_distances(det, centre) < 3.0]

    assert found(1).empty
    freed = found(3)
    assert len(freed) == 1
    assert 6.0 < freed["diameter_mm"].iloc[0] < 10.0


def test_faint_pass_contrast_levels_free_a_large_faint_nodule_from_a_sheet() -> None:
    """A 14 mm ground-glass ball of -665 HU across a 12 mm sheet of -700 HU in lung of
    -850 HU (as a faint nodule against the partial-volume sheet along the mediastinum),
    faint pass alone (``max_candidates=0``: no first-pass rows): its three lowest
    thresholds see one region too large for a nodule, the fourth and fifth free the ball."""
    shape = (48, 64, 112)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (24.0, 32.0, 56.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[18:30, 12:52, 8:104] = -700.0
    hu[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 7.0**2] = -665.0
    lung = np.ones(shape, bool)

    def faint(levels: int) -> pd.DataFrame:
        config = SubsolidConfig(max_candidates=0, extra_candidates=0, faint_contrast_levels=levels)
        return detect_subsolid(hu, lung, (1.0, 1.0, 1.0), config)

    assert faint(3).empty
    freed = faint(5)
    assert len(freed) == 1
    assert _voxel_distances(freed, centre)[0] < 2.0
    assert 8.0 < freed["diameter_mm"].iloc[0] < 16.0
    assert SubsolidConfig().faint_contrast_levels == 5


def test_faint_pass_large_openings_free_a_nodule_joined_to_a_large_region() -> None:
    """A 16 mm ground-glass ball joined by a 5 mm neck of the same density to a region too
    large for a nodule (55 mm across): no contrast threshold parts them, and neither pass
    finds the ball; the faint pass's wider opening of oversized regions (3 mm ball) cuts
    the neck and finds it."""
    shape = (56, 64, 128)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (28.0, 32.0, 36.0)
    hu = np.full(shape, -850.0, np.float32)
    hu[10:46, 8:56, 70:120] = -450.0
    hu[26:31, 30:35, 36:70] = -450.0
    hu[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 8.0**2] = -450.0
    lung = np.ones(shape, bool)

    def found(large: tuple[float, ...]) -> pd.DataFrame:
        det = detect_subsolid(hu, lung, (1.0, 1.0, 1.0), SubsolidConfig(extra_candidates=0, faint_large_openings_mm=large))
        return det[_voxel_distances(det, centre) < 8.0]

    assert found(()).empty
    freed = found((3.0,))
    assert len(freed) == 1
    assert _voxel_distances(freed, centre)[0] < 2.0
    assert 12.0 < freed["diameter_mm"].iloc[0] < 20.0
    assert SubsolidConfig().faint_large_openings_mm == (3.0,)


def test_greedy_merge_keeps_a_nodule_beside_a_vessel_chain() -> None:
    # a strong vessel candidate at 0, a weaker one at 4 mm, a small nodule at 8 mm: single
    # linkage chains all three into the strongest (the nodule's position is lost)
    table = pd.DataFrame(
        {
            "coordX": [0.0, 4.0, 8.0],
            "coordY": [0.0] * 3,
            "coordZ": [0.0] * 3,
            "score": [0.9, 0.5, 0.4],
            "diameter_mm": [4.0, 4.0, 4.0],
            "detector": ["solid", "solid", "solid"],
        }
    )
    assert len(merge_candidates(table, 5.0, radius_fraction=1.0)) == 1
    merged = merge_candidates(table, 5.0, radius_fraction=1.0, chain=False)
    assert merged["coordX"].tolist() == [0.0, 8.0]
    assert merged["n_merged"].tolist() == [2, 1]
    assert CandidateConfig().merge_chain is False


def test_faint_pass_finds_faint_ground_glass() -> None:
    """A 10 mm ground-glass ball of -740 HU in lung of -830 HU (noise 25 HU): below the
    band's lower end once smoothed, found by no detector but the faint pass."""
    from scipy import ndimage as ndi

    shape = (40, 48, 48)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (20.0, 24.0, 24.0)
    hu = np.full(shape, -830.0, np.float32)
    hu[((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= 5.0**2] = -740.0
    hu = np.asarray(ndi.gaussian_filter(hu, 0.7), dtype=np.float32)
    hu += np.random.default_rng(0).normal(0.0, 25.0, shape).astype(np.float32)
    lung = np.ones(shape, bool)
    sp = (1.0, 1.0, 1.0)
    old = detect_subsolid(hu, lung, sp, SubsolidConfig(faint_candidates=0))
    assert not (_voxel_distances(old, centre) < 5.0).any()
    assert not (_voxel_distances(detect_solid(hu, lung, sp), centre) < 5.0).any()
    new = detect_subsolid(hu, lung, sp)
    near = _voxel_distances(new, centre) < 5.0
    assert near.any()
    assert 3.0 < new.loc[near, "diameter_mm"].iloc[0] < 14.0
    assert len(new) <= len(old) + SubsolidConfig().faint_candidates


def test_smoothing_cache_makes_each_copy_once_across_threads() -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from nodule.candidates.hessian import SmoothingCache

    cache = SmoothingCache()
    made: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def make(key: tuple[float, bool]) -> np.ndarray:
        time.sleep(0.05)  # long enough for every thread to ask before the first is done
        with lock:
            made.append(key)
        return np.full(3, key[0])

    keys = [(1.0, False), (2.0, True)] * 6
    with ThreadPoolExecutor(len(keys)) as pool:
        out = list(pool.map(lambda k: cache.get(k, lambda: make(k)), keys))
    assert sorted(made) == [(1.0, False), (2.0, True)]
    assert all(o is out[i % 2] for i, o in enumerate(out))
    assert (1.0, False) in cache and (3.0, False) not in cache


def test_detectors_in_threads_give_what_each_gives_alone(phantom: Phantom) -> None:
    """detect_candidates runs the detectors side by side; their rows must be those of each
    detector run alone, with no shared cache, in the order of DETECTORS."""
    from nodule.candidates import detect_large_solid, detect_solid, detect_subsolid
    from nodule.candidates.detect import working_grid

    config = CandidateConfig(ranker=None, context=False, max_per_scan=10**6, merge_distance_mm=0.0)
    res = detect_candidates(phantom.volume, phantom.labels, config)
    work, array, labels = working_grid(phantom.volume, phantom.labels, config)
    sp, lungs = work.spacing_zyx, labels > 0
    alone = {
        "solid": detect_solid(array, lungs, sp, config.solid),
        "subsolid": detect_subsolid(array, lungs, sp, config.subsolid),
        "large_solid": detect_large_solid(array, labels, sp, config.large_solid),
    }
    for name, det in alone.items():
        assert res.counts[name] == len(det) > 0, name


def test_detectors_one_at_a_time_give_the_same_candidates(phantom: Phantom, result: pd.DataFrame) -> None:
    """Batch workers run the detectors one at a time (set_detector_threads(1)): same candidates."""
    from nodule.candidates.detect import set_detector_threads

    with pytest.raises(ValueError, match="at least 1"):
        set_detector_threads(0)
    set_detector_threads(1)
    try:
        alone = detect_candidates(phantom.volume, phantom.labels).candidates
    finally:
        set_detector_threads(None)
    pd.testing.assert_frame_equal(alone, result)
