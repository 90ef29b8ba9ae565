"""Nodule insertion into a real scan: variations, placement, blending, noise, layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from nodule.data.insert import (
    EXCLUDED_MARGIN_MM,
    NODULE_GAP_MM,
    Variation,
    build_insert_dataset,
    derived_uid,
    estimate_noise,
    insert_nodules,
    local_noise_std,
    placement_maps,
    sample_placements,
)
from nodule.data.luna16 import read_annotations, read_excluded, read_seriesuids
from nodule.data.shapes import ShapeBank, load_shape_bank
from nodule.io import SeriesInfo, Volume, read_volume

FINDING_XYZ = np.array([-22.0, 0.0, 0.0])  # a solid 10 mm "tumour" in the right lung
FINDING_D = 10.0


@pytest.fixture(scope="module")
def bank() -> ShapeBank:
    return load_shape_bank("insert", max_patients=6)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 0.8, 0.8))
    return (n / n.std() * std).astype(np.float32)


@pytest.fixture(scope="module")
def base() -> tuple[Volume, np.ndarray]:
    """A small chest: soft-tissue body, two lungs with vessels, one solid finding."""
    rng = np.random.default_rng(0)
    shape = (36, 96, 112)
    spacing = (0.8, 0.8, 2.0)
    vol = Volume(
        np.zeros(shape, np.float32), spacing, (-44.8, -38.4, -36.0), info=SeriesInfo("base")
    )
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    world = vol.voxel_to_world(np.stack([zz, yy, xx], -1).reshape(-1, 3)).reshape(*shape, 3)
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    body = (x / 42) ** 2 + (y / 36) ** 2 < 1
    right = ((x + 20) / 15) ** 2 + (y / 22) ** 2 + (z / 40) ** 2 < 1
    left = ((x - 20) / 15) ** 2 + (y / 22) ** 2 + (z / 40) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0)
    hu[right | left] = -850.0
    vessels = ((x + 14) ** 2 + (y - 8) ** 2 < 1.5**2) | ((x - 24) ** 2 + (y + 6) ** 2 < 2.0**2)
    hu[vessels & (right | left)] = 40.0
    hu[np.linalg.norm(world - FINDING_XYZ, axis=-1) < FINDING_D / 2] = 30.0
    hu = hu.astype(np.float32) + _noise(rng, shape, 30.0)
    labels = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)
    return vol.with_array(hu), labels


def test_variation_maps_points_exactly_without_rotation(base: tuple[Volume, np.ndarray]) -> None:
    vol, _ = base
    v = Variation(flip_lr=True, rotation_deg=0.0, crop_zyx=((2, 33), (5, 90), (3, 107)))
    out, _ = v.apply(vol)
    assert out.shape == (31, 85, 104)
    rng = np.random.default_rng(1)
    vox = np.column_stack(
        [rng.integers(4, 31, 50), rng.integers(8, 87, 50), rng.integers(6, 104, 50)]
    )
    q = vol.voxel_to_world(vox)
    p = v.base_to_variant(vol, q)
    idx = np.round(out.world_to_voxel(p)).astype(int)
    inside = ((idx >= 0) & (idx < np.array(out.shape))).all(axis=1)
    assert inside.sum() > 20
    a, b = vol.array[tuple(vox[inside].T)], out.array[tuple(idx[inside].T)]
    assert np.array_equal(a, b)
    assert np.allclose(v.variant_to_base(vol, p), q)


def test_known_finding_neighbourhood_through_variations(base: tuple[Volume, np.ndarray]) -> None:
    vol, _ = base
    smooth = vol.with_array(ndimage.gaussian_filter(vol.array, 2.0))
    for v in (
        Variation(True, 0.0, ((1, 35), (4, 92), (0, 110))),
        Variation(False, 4.0, ((0, 36), (0, 96), (0, 112))),
        Variation(True, -5.0, ((3, 33), (2, 94), (5, 109))),
    ):
        out, _ = v.apply(smooth)
        p = v.base_to_variant(smooth, FINDING_XYZ)[0]
        # neighbourhood: points within 6 mm of the finding, in the variant's frame
        offs = np.array(
            [[dx, dy, dz] for dx in (-6, -3, 0, 3, 6) for dy in (-6, 0, 6) for dz in (-4, 0, 4)]
        )
        vb = ndimage.map_coordinates(
            smooth.array, smooth.world_to_voxel(FINDING_XYZ + offs @ v.matrix().T).T, order=1
        )
        vv = ndimage.map_coordinates(out.array, out.world_to_voxel(p + offs).T, order=1)
        assert np.abs(vb - vv).max() < 25.0, v
        assert vv[len(offs) // 2] > -500  # the dense finding (lung -850) is where it was mapped


def test_noise_model_recovers_std_and_correlation() -> None:
    rng = np.random.default_rng(2)
    shape = (12, 128, 128)
    n = _noise(rng, shape, 50.0)
    vol = Volume(40.0 + n, (0.7, 0.7, 2.0), (0.0, 0.0, 0.0))
    model = estimate_noise(vol, slice_step=1)
    assert model.std == pytest.approx(50.0, rel=0.1)
    sample = model.sample((8, 96, 96), np.random.default_rng(3))
    assert sample.std() == pytest.approx(model.std, rel=0.1)

    def lag1(a: np.ndarray) -> float:
        return float((a[:, :, 1:] * a[:, :, :-1]).mean() / (a * a).mean())

    assert lag1(sample) == pytest.approx(lag1(n), abs=0.08)


def test_local_noise_is_measured_in_the_lung() -> None:
    rng = np.random.default_rng(6)
    shape = (12, 128, 128)
    hu = 40.0 + _noise(rng, shape, 60.0)
    hu[:, 32:96, 32:96] = -850.0 + _noise(rng, (12, 64, 64), 30.0)  # quieter lung
    vol = Volume(hu, (0.7, 0.7, 2.0), (0.0, 0.0, 0.0))
    model = estimate_noise(vol, slice_step=1)
    assert model.std == pytest.approx(60.0, rel=0.15)
    assert local_noise_std(vol, (6, 64, 64), model) == pytest.approx(30.0, rel=0.15)
    assert local_noise_std(vol, (6, 8, 8), model) == model.std  # no parenchyma: global


def test_insertion_changes_voxels_only_at_nodules(
    base: tuple[Volume, np.ndarray], bank: ShapeBank
) -> None:
    vol, labels = base
    v = Variation(True, 3.0, ((1, 35), (2, 94), (2, 110)))
    variant, lab = v.apply(vol, labels)
    assert lab is not None
    avoid = v.base_to_variant(vol, FINDING_XYZ)
    res = insert_nodules(
        variant,
        lab > 0,
        bank,
        np.random.default_rng(4),
        3,
        diameters=[6.0, 8.0, 5.0],
        types=["solid", "part-solid", "ground-glass"],
        avoid_xyz=avoid,
        avoid_diameters=[FINDING_D],
    )
    assert len(res.nodules) >= 2
    support = np.zeros(variant.shape, bool)
    for r in res.rendered:
        support[r.slices] |= r.occupancy > 0
    diff = res.volume.array - variant.array
    assert not diff[~support].any()
    assert np.abs(diff[support]).max() > 100
    for nod, r in zip(res.nodules, res.rendered, strict=True):
        c = np.round(variant.world_to_voxel([nod.center_world_xyz])[0]).astype(int)
        assert (
            res.volume.array[tuple(c)] > variant.array[tuple(c)] or variant.array[tuple(c)] > -300
        )
        d = np.linalg.norm(np.asarray(nod.center_world_xyz) - avoid[0])
        assert d >= nod.diameter_mm / 2 + FINDING_D / 2 + EXCLUDED_MARGIN_MM
        assert r.occupancy.sum() > 0
    # noise: the nodule interior is not smoother than the scan
    big = max(res.rendered, key=lambda r: r.occupancy.sum())
    inner = np.zeros(variant.shape, bool)
    inner[big.slices] = ndimage.binary_erosion(big.occupancy > 0.99)
    if inner.sum() > 30:
        resid = res.volume.array - ndimage.median_filter(res.volume.array, size=(1, 3, 3))
        ref = variant.array - ndimage.median_filter(variant.array, size=(1, 3, 3))
        assert resid[inner].std() > 0.6 * ref[lab > 0].std()


def test_placements_keep_apart(base: tuple[Volume, np.ndarray]) -> None:
    vol, labels = base
    maps = placement_maps(vol, labels > 0)
    ds = [5.0, 6.0, 7.0, 5.0, 4.0, 6.0]
    for kind in ("isolated", "juxtavascular", "juxtapleural"):
        placed = sample_placements(
            maps,
            ds,
            np.random.default_rng(5),
            FINDING_XYZ[None],
            [FINDING_D],
            kinds=[kind] * len(ds),  # type: ignore[list-item]
        )
        assert len(placed) >= 3
        for i, (c, _, d) in enumerate(placed):
            assert np.linalg.norm(c - FINDING_XYZ) >= d / 2 + FINDING_D / 2 + EXCLUDED_MARGIN_MM
            for c2, _, d2 in placed[i + 1 :]:
                assert np.linalg.norm(c - c2) >= d / 2 + d2 / 2 + NODULE_GAP_MM
            vox = np.round(vol.world_to_voxel([c])[0]).astype(int)
            assert labels[tuple(vox)] > 0


def test_dataset_reads_back_in_luna16_layout(
    base: tuple[Volume, np.ndarray], bank: ShapeBank, tmp_path: Path
) -> None:
    vol, labels = base
    known = tmp_path / "known.csv"
    pd.DataFrame(
        [
            {
                "seriesuid": "base",
                "coordX": FINDING_XYZ[0],
                "coordY": FINDING_XYZ[1],
                "coordZ": FINDING_XYZ[2],
                "diameter_mm": FINDING_D,
                "description": "test tumour",
            }
        ]
    ).to_csv(known, index=False)
    out = build_insert_dataset(
        vol, tmp_path / "ext", scans=3, seed=7, excluded=known, bank=bank, lung_labels=labels
    )
    uids = read_seriesuids(out / "seriesuids.csv")
    assert len(uids) == 3 and len(set(uids)) == 3
    ann = read_annotations(out / "annotations.csv")
    exc = read_excluded(out / "annotations_excluded.csv")
    assert set(ann["seriesuid"]) <= set(uids) and len(ann) >= 3
    assert sorted(exc["seriesuid"]) == sorted(uids)
    for uid in uids:
        path = next(out.glob(f"subset*/{uid}.mhd"))
        scan = read_volume(path)
        assert scan.series_uid == uid
        f = exc[exc["seriesuid"] == uid][["coordX", "coordY", "coordZ"]].to_numpy()[0]
        vox = np.round(scan.world_to_voxel([f])[0]).astype(int)
        assert scan.array[tuple(vox)] > -200  # the known finding is where excluded says
        for _, a in ann[ann["seriesuid"] == uid].iterrows():
            c = np.array([a.coordX, a.coordY, a.coordZ])
            assert np.linalg.norm(c - f) >= a.diameter_mm / 2 + FINDING_D / 2 + EXCLUDED_MARGIN_MM
    gen = (out / "generator.json").read_text()
    assert "one real patient" in gen.lower() and "resample nodules, not scans" in gen
    again = build_insert_dataset(
        vol, tmp_path / "ext2", scans=2, seed=7, excluded=known, bank=bank, lung_labels=labels
    )
    first_two = ann[ann["seriesuid"].isin(uids[:2])].reset_index(drop=True)
    pd.testing.assert_frame_equal(first_two, read_annotations(again / "annotations.csv"))


def test_rerun_with_other_parameters_is_refused(
    base: tuple[Volume, np.ndarray], bank: ShapeBank, tmp_path: Path
) -> None:
    vol, labels = base
    out = build_insert_dataset(vol, tmp_path / "ext", scans=1, seed=7, bank=bank, lung_labels=labels)
    gen = json.loads((out / "generator.json").read_text())
    assert gen["seed"] == 7 and gen["scans"] == 1 and gen["fingerprint"] and gen["shape_bank_part"] == "insert"
    with pytest.raises(ValueError, match=r"other parameters.*seed: 7 -> 8") as info:
        build_insert_dataset(vol, out, scans=1, seed=8, bank=bank, lung_labels=labels)
    assert str(out) in str(info.value)
    assert read_seriesuids(out / "seriesuids.csv") == [gen_uid(vol, 7, 0)]
    known = tmp_path / "known.csv"
    row = {"seriesuid": "base", "coordX": -22.0, "coordY": 0.0, "coordZ": 0.0, "diameter_mm": 10.0}
    pd.DataFrame([row]).to_csv(known, index=False)
    with pytest.raises(ValueError, match="excluded_findings"):
        build_insert_dataset(vol, out, scans=1, seed=7, excluded=known, bank=bank, lung_labels=labels)
    with pytest.raises(ValueError, match="nodules_per_scan"):
        build_insert_dataset(vol, out, scans=1, seed=7, nodules_per_scan=(1, 2), bank=bank, lung_labels=labels)
    assert json.loads((out / "generator.json").read_text()) == gen  # refused runs change nothing
    # the same parameters resume: nothing is made again
    stamp = next(out.glob("subset0/*.mhd")).stat().st_mtime_ns
    build_insert_dataset(vol, out, scans=1, seed=7, bank=bank, lung_labels=labels)
    assert next(out.glob("subset0/*.mhd")).stat().st_mtime_ns == stamp


def gen_uid(vol: Volume, seed: int, index: int) -> str:
    return derived_uid("nodule-insert", vol.series_uid, seed, index)


@pytest.mark.slow
def test_real_ct_insert_in_cropped_region(real_ct_dir: Path, bank: ShapeBank) -> None:
    from nodule.lung import segment_lungs

    full = read_volume(real_ct_dir)
    known = pd.read_csv(
        Path(__file__).resolve().parents[1] / "data_manifests" / "real_ct_known_findings.csv"
    )
    row = known[known["seriesuid"] == full.series_uid].iloc[0]
    f = np.array([row.coordX, row.coordY, row.coordZ])
    z0, z1 = 18, 48
    crop = Volume(
        np.asarray(full.array[z0:z1], np.float32),
        full.spacing,
        tuple(float(v) for v in full.voxel_to_world([(z0, 0, 0)])[0]),
        full.direction,
        full.info,  # type: ignore[arg-type]
    )
    fv = np.round(crop.world_to_voxel([f])[0]).astype(int)
    assert crop.array[tuple(fv)] > -200  # the recorded finding is dense tissue
    lung = segment_lungs(crop).lungs
    res = insert_nodules(
        crop,
        lung,
        bank,
        np.random.default_rng(0),
        3,
        avoid_xyz=f[None],
        avoid_diameters=[row.diameter_mm],
    )
    assert len(res.nodules) >= 2
    support = np.zeros(crop.shape, bool)
    for r in res.rendered:
        support[r.slices] |= r.occupancy > 0
    diff = res.volume.array - crop.array
    assert not diff[~support].any()
    for nod in res.nodules:
        assert (
            np.linalg.norm(np.asarray(nod.center_world_xyz) - f)
            >= nod.diameter_mm / 2 + row.diameter_mm / 2 + EXCLUDED_MARGIN_MM
        )
