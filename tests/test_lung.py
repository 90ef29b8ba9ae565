"""Lung segmentation on small generated phantoms (chest, head, abdomen, water) and the real CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from nodule import io
from nodule.io import SeriesInfo, Volume
from nodule.lung import LEFT_LUNG, RIGHT_LUNG, NoLungFoundError, segment_lungs

SHAPE = (64, 96, 96)  # (z, y, x)
SPACING = (3.5, 3.5, 5.0)  # (x, y, z) mm: 336 x 336 x 320 mm
LUNG_AXES = (52.0, 80.0, 115.0)  # ellipsoid semi-axes (x, y, z) mm
LUNG_VOLUME_ML = 4.0 / 3.0 * np.pi * np.prod(LUNG_AXES) / 1000.0  # one lung, 2004 ml
COSTAL_NODULE = (-116.0, 5.0, -5.0)  # right lung, against the lateral chest wall
MEDIASTINAL_NODULE = (24.0, 5.0, 20.0)  # left lung, against the mediastinal pleura
NODULE_RADIUS = 8.0
TRACHEA = (0.0, -20.0)  # (x, y) of the trachea's axis, from the top down to z = 40 mm


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """World coordinates (mm, LPS) of every voxel, centred on 0, and the origin."""
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(SHAPE[::-1], SPACING, strict=True))
    z, y, x = np.meshgrid(
        *(origin[2 - a] + SPACING[2 - a] * np.arange(SHAPE[a]) for a in range(3)), indexing="ij"
    )
    return x, y, z, (origin[0], origin[1], origin[2])


def _volume(array: np.ndarray, uid: str, seed: int = 0) -> Volume:
    noisy = array + np.random.default_rng(seed).normal(0.0, 25.0, array.shape)
    _, _, _, origin = _grid()
    return Volume(noisy.astype(np.int16), SPACING, origin, info=SeriesInfo(series_uid=uid))


def _segment_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, a: tuple[float, ...], b: tuple[float, ...]
) -> np.ndarray:
    """Distance of every voxel to the segment a-b."""
    p = np.stack([x, y, z], axis=-1)
    a_, b_ = np.asarray(a), np.asarray(b)
    t = np.clip(((p - a_) @ (b_ - a_)) / np.dot(b_ - a_, b_ - a_), 0.0, 1.0)
    return np.asarray(np.linalg.norm(p - (a_ + t[..., None] * (b_ - a_)), axis=-1))


def chest_phantom(
    lung_x: float = 70.0,
    lungs: tuple[bool, bool] = (True, True),
    nodules: bool = True,
    lung_hu: float = -850.0,
    left: tuple[float, float] | None = None,
    uid: str = "chest",
) -> Volume:
    """A chest: body ellipse with a narrower neck, two lung ellipsoids (``lung_hu``), vessels,
    a trachea from the top that splits into two main bronchi, two juxtapleural nodules.

    The lungs' centres lie ``lung_x`` mm either side of the midline; ``left`` = (centre x,
    scale of the x and y semi-axes) makes the left lung another size.
    """
    x, y, z, _ = _grid()
    a = np.full(SHAPE, -1000.0)
    chest = ((x / 160.0) ** 2 + (y / 125.0) ** 2 <= 1.0) & (z <= 125.0)
    neck = ((x / 70.0) ** 2 + (y / 60.0) ** 2 <= 1.0) & (z > 125.0)
    a[chest | neck] = 40.0
    shapes = ((-lung_x, 1.0), left or (lung_x, 1.0))
    for (cx, scale), present in zip(shapes, lungs, strict=True):
        if present:
            inside = ((x - cx) / (scale * LUNG_AXES[0])) ** 2 + (
                (y - 5.0) / (scale * LUNG_AXES[1])
            ) ** 2
            a[inside + ((z + 5.0) / LUNG_AXES[2]) ** 2 <= 1.0] = lung_hu
    # vessels inside the lungs (only where there is lung)
    lung = a == lung_hu
    vessel = (np.hypot(x + lung_x, z - 30.0) <= 3.0) | (
        np.hypot(x - lung_x - 10.0, y - 20.0) <= 3.0
    )
    a[lung & vessel] = 40.0
    airway = (np.hypot(x - TRACHEA[0], y - TRACHEA[1]) <= 9.0) & (z >= 40.0)
    for side in (-1.0, 1.0):
        airway |= _segment_distance(x, y, z, (0.0, -20.0, 40.0), (side * 45.0, -5.0, 10.0)) <= 6.0
    a[airway] = -1000.0
    if nodules:
        for centre in (COSTAL_NODULE, MEDIASTINAL_NODULE):
            a[
                np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
                <= NODULE_RADIUS
            ] = 60.0
    return _volume(a, uid)


def _at(mask: np.ndarray, volume: Volume, point: tuple[float, float, float]) -> int:
    z, y, x = np.round(volume.world_to_voxel([point])[0]).astype(int)
    return int(mask[z, y, x])


def _centroid_x(volume: Volume, mask: np.ndarray) -> float:
    return float(volume.voxel_to_world([np.argwhere(mask).mean(axis=0)])[0, 0])


def test_chest_phantom_lungs_trachea_and_juxtapleural_nodules() -> None:
    volume = chest_phantom()
    mask = segment_lungs(volume)
    assert mask.labels.shape == volume.shape and mask.labels.dtype == np.uint8
    assert set(np.unique(mask.labels)) == {0, RIGHT_LUNG, LEFT_LUNG}
    # LPS: the patient's right lung is at low world x
    assert _centroid_x(volume, mask.right) < -40.0 < 40.0 < _centroid_x(volume, mask.left)
    for ml in (mask.right_ml, mask.left_ml):
        assert ml == pytest.approx(LUNG_VOLUME_ML, rel=0.08)
    assert mask.total_ml == pytest.approx(mask.right_ml + mask.left_ml)
    assert mask.lungs.sum() * np.prod(SPACING) / 1000.0 == pytest.approx(mask.total_ml)
    # trachea: outside the lungs, found as airway
    for z in (140.0, 100.0, 60.0):
        assert _at(mask.labels, volume, (*TRACHEA, z)) == 0
        assert _at(mask.airway, volume, (*TRACHEA, z)) == 1
    # juxtapleural nodules (costal and mediastinal pleura) and vessels are inside
    assert _at(mask.labels, volume, COSTAL_NODULE) == RIGHT_LUNG
    assert _at(mask.labels, volume, MEDIASTINAL_NODULE) == LEFT_LUNG
    assert _at(mask.labels, volume, (-70.0, 5.0, 30.0)) == RIGHT_LUNG  # vessel
    # the chest wall and mediastinum are not
    assert _at(mask.labels, volume, (-140.0, 5.0, -5.0)) == 0
    assert _at(mask.labels, volume, (0.0, 5.0, -5.0)) == 0


@pytest.mark.parametrize("lung_hu", [-940.0, -965.0])
def test_airway_growth_stops_at_emphysematous_lung(lung_hu: float) -> None:
    # with noise of 25 HU much of this lung lies below the airway thresholds near -950
    volume = chest_phantom(nodules=False, lung_hu=lung_hu, uid="emphysema")
    mask = segment_lungs(volume)
    assert mask.airway.sum() * np.prod(SPACING) / 1000.0 < 100.0
    for ml in (mask.right_ml, mask.left_ml):
        assert ml == pytest.approx(LUNG_VOLUME_ML, rel=0.08)
    for z in (100.0, 60.0):
        assert _at(mask.labels, volume, (*TRACHEA, z)) == 0


def test_touching_lungs_are_separated_at_the_midline() -> None:
    # the ellipsoids overlap by 4 mm: one air region that must be split
    volume = chest_phantom(lung_x=50.0, nodules=False, uid="touching")
    mask = segment_lungs(volume)
    assert mask.right_ml == pytest.approx(mask.left_ml, rel=0.1)
    assert mask.total_ml > 3000.0
    assert _at(mask.labels, volume, (-10.0, 5.0, -5.0)) == RIGHT_LUNG
    assert _at(mask.labels, volume, (10.0, 5.0, -5.0)) == LEFT_LUNG


def test_touching_lungs_of_unequal_size_are_separated() -> None:
    # a left lung at 0.45 x the size in x and y (about 400 ml), touching the right one
    small = (0.45 * LUNG_AXES[0] - 2.0, 0.45)
    volume = chest_phantom(lung_x=50.0, nodules=False, left=small, uid="unequal")
    mask = segment_lungs(volume)
    assert mask.right_ml == pytest.approx(LUNG_VOLUME_ML, rel=0.1)
    assert mask.left_ml == pytest.approx(0.45**2 * LUNG_VOLUME_ML, rel=0.15)
    assert _at(mask.labels, volume, (-10.0, 5.0, -5.0)) == RIGHT_LUNG
    assert _at(mask.labels, volume, (small[0], 5.0, -5.0)) == LEFT_LUNG


def test_labels_follow_world_x_when_the_array_is_flipped() -> None:
    volume = chest_phantom()
    flipped = Volume(
        volume.array[:, :, ::-1].copy(),
        volume.spacing,
        (volume.origin[0] + (SHAPE[2] - 1) * SPACING[0], volume.origin[1], volume.origin[2]),
        direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        info=volume.info,
    )
    mask = segment_lungs(flipped)
    assert _centroid_x(flipped, mask.right) < 0.0 < _centroid_x(flipped, mask.left)
    assert _at(mask.labels, flipped, COSTAL_NODULE) == RIGHT_LUNG


def test_one_lung_needs_require_both_false() -> None:
    volume = chest_phantom(lungs=(False, True), nodules=False, uid="one-lung")
    with pytest.raises(NoLungFoundError, match=r"one-lung.*one side"):
        segment_lungs(volume)
    mask = segment_lungs(volume, require_both=False)
    assert mask.right_ml == 0.0
    assert mask.left_ml == pytest.approx(LUNG_VOLUME_ML, rel=0.08)


def head_phantom() -> Volume:
    """A skull (bone shell), brain and two small sinus air cells; air outside."""
    x, y, z, _ = _grid()
    r = np.sqrt(x**2 + (y / 1.2) ** 2 + z**2)
    a = np.where(r <= 90.0, 35.0, -1000.0)
    a[(r > 82.0) & (r <= 90.0)] = 900.0
    for side in (-1.0, 1.0):
        a[np.sqrt((x - side * 20.0) ** 2 + (y + 85.0) ** 2 + (z + 20.0) ** 2) <= 12.0] = -1000.0
    return _volume(a, "head")


def abdomen_phantom() -> Volume:
    """Soft tissue with a fat rim and a dozen small bowel-gas pockets on both sides."""
    x, y, z, _ = _grid()
    body = (x / 150.0) ** 2 + (y / 110.0) ** 2
    a = np.where(body <= 1.0, -100.0, -1000.0)
    a[body <= 0.8] = 40.0
    rng = np.random.default_rng(1)
    for _ in range(12):
        c = rng.uniform((-90.0, -60.0, -120.0), (90.0, 60.0, 120.0))
        a[
            np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) <= rng.uniform(8.0, 15.0)
        ] = -1000.0
    return _volume(a, "abdomen")


def gas_abdomen_phantom() -> Volume:
    """An abdomen with a gas-distended colon on both sides: 2 x 490 ml of pure gas."""
    x, y, z, _ = _grid()
    a = np.where((x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0, 40.0, -1000.0)
    for side in (-1.0, 1.0):
        a[(np.hypot(x - side * 80.0, y + 20.0) <= 25.0) & (np.abs(z) <= 125.0)] = -1000.0
    return _volume(a, "gas-abdomen")


def water_volume() -> Volume:
    return _volume(np.zeros(SHAPE), "water")


def water_cylinder() -> Volume:
    x, y, _, _ = _grid()
    return _volume(np.where(np.hypot(x, y) <= 100.0, 0.0, -1000.0), "water-cylinder")


@pytest.mark.parametrize(
    "make", [water_volume, water_cylinder, head_phantom, abdomen_phantom, gas_abdomen_phantom]
)
def test_no_lung_raises_naming_the_study(make: object) -> None:
    volume = make()  # type: ignore[operator]
    with pytest.raises(NoLungFoundError, match=rf"^{volume.series_uid}: no lung found"):
        segment_lungs(volume)


def test_too_small_a_volume_raises() -> None:
    volume = Volume(np.full((1, 64, 64), -850, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(NoLungFoundError, match="unknown: no lung found: the volume"):
        segment_lungs(volume)


def _read_real_ct(path: Path) -> Volume:
    reader = getattr(io, "read_volume", None)
    if reader is not None:
        volume: Volume = reader(path)
        return volume
    series = sitk.ImageSeriesReader()
    uid = series.GetGDCMSeriesIDs(str(path))[0]
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(path), uid))
    return Volume.from_sitk(series.Execute(), SeriesInfo(series_uid=uid))


# A spiculated solid nodule of about 18 mm in the anterior right lung, abutting the right
# heart border at its lower slices: world (x, y, z) mm, LPS.
REAL_CT_NODULE = (-82.5, -191.3, -192.5)


def test_real_ct(real_ct_dir: Path) -> None:
    volume = _read_real_ct(real_ct_dir)
    mask = segment_lungs(volume)
    # an adult: 4.6 L in all (right 2.7 L, left 1.9 L) when this test was written
    assert 2000.0 < mask.total_ml < 8000.0
    assert mask.right_ml > 700.0 and mask.left_ml > 700.0
    assert _centroid_x(volume, mask.right) < _centroid_x(volume, mask.left)
    # the trachea: at z = -40 mm, the air region (< -900 HU) nearest the body's middle
    z = round(float(volume.world_to_voxel([(0.0, 0.0, -40.0)])[0, 0]))
    body = volume.array[z] > -500
    mid_x = np.argwhere(body)[:, 1].mean()
    air, n = ndi.label((volume.array[z] < -900) & ndi.binary_fill_holes(body) & ~body)
    centres = ndi.center_of_mass(air > 0, air, range(1, n + 1))
    trachea = 1 + int(np.argmin([abs(c[1] - mid_x) for c in centres]))
    area_mm2 = (air == trachea).sum() * volume.spacing[0] * volume.spacing[1]
    assert 100.0 < area_mm2 < 600.0
    assert not mask.lungs[z][air == trachea].any()
    assert mask.airway[z][air == trachea].mean() > 0.5
    # the nodule (its solid voxels within 8 mm of its centre) is inside the right lung
    assert _at(mask.labels, volume, REAL_CT_NODULE) == RIGHT_LUNG
    centre = volume.world_to_voxel([REAL_CT_NODULE])[0]
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij", sparse=True)
    sz, sy, sx = volume.spacing_zyx
    near = (
        ((zz - centre[0]) * sz) ** 2 + ((yy - centre[1]) * sy) ** 2 + ((xx - centre[2]) * sx) ** 2
    ) <= 8.0**2
    solid = near & (volume.array > -300)
    assert solid.sum() > 500
    assert (mask.labels[solid] == RIGHT_LUNG).mean() > 0.95
