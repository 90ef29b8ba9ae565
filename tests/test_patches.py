"""Multiplanar patch sampling: view geometry, fill, scaling, augmentation, kernel accuracy."""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from nodule.io import FILL_HU, Volume
from nodule.patches import (
    VIEW_AXES,
    Augment,
    PatchConfig,
    PlaneFrames,
    add_hu_noise,
    default_frames,
    extract_patches,
    plane_grids,
    random_frames,
    sample_augmented,
    scale_hu,
    world_to_index_affine,
)

GRADIENT = np.array([3.0, -2.0, 5.0])  # HU per mm along world x, y, z
MIDDLE = np.array([-20.0, 40.0, -100.0])  # world position of the middle of the test volumes


def _rotation_direction() -> tuple[float, ...]:
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return tuple((rz @ rx).ravel())


IDENTITY = tuple(float(v) for v in np.eye(3).ravel())
GEOMETRIES: dict[str, tuple[tuple[float, float, float], tuple[float, ...]]] = {
    "isotropic": ((1.0, 1.0, 1.0), IDENTITY),
    "anisotropic": ((0.7, 0.8, 2.5), IDENTITY),
    "rotated": ((0.7, 0.8, 2.5), _rotation_direction()),
}


def linear_volume(name: str) -> Volume:
    """A float32 volume (geometry from GEOMETRIES) whose HU is GRADIENT . world_xyz.

    Trilinear interpolation is exact on a linear field.
    """
    spacing, direction = GEOMETRIES[name]
    shape = (40, 80, 80)
    geometry = Volume(
        array=np.zeros(shape, np.float32),
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        direction=direction,
    )
    middle = geometry.voxel_to_world((np.array(shape) - 1) / 2)[0]
    # The middle of every geometry lies at the same world point.
    x, y, z = (float(v) for v in MIDDLE - middle)
    geometry = Volume(array=geometry.array, spacing=spacing, origin=(x, y, z), direction=direction)
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    world = geometry.voxel_to_world(index)
    return geometry.with_array((world @ GRADIENT).reshape(shape).astype(np.float32))


def expected_linear(
    centers: np.ndarray, config: PatchConfig, frames: PlaneFrames | None = None
) -> np.ndarray:
    """Analytic plane values of the linear field: GRADIENT . world position of each pixel."""
    origins, cols, rows = plane_grids(centers, config, frames)
    steps = np.arange(config.size_px)
    world = (
        origins[:, None, None, :]
        + steps[:, None, None] * rows[:, None, None, :]
        + steps[None, :, None] * cols[:, None, None, :]
    )
    values: np.ndarray = world @ GRADIENT
    return values.reshape(-1, config.n_views, config.size_px, config.size_px)


def inside_centers(volume: Volume, n: int, rng: np.random.Generator) -> np.ndarray:
    """World points near the middle of the volume (every plane of a small patch inside)."""
    middle = (np.array(volume.shape) - 1) / 2
    return volume.voxel_to_world(middle + rng.uniform(-2, 2, (n, 3)))


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_views_of_linear_field_equal_analytic_planes(geometry: str) -> None:
    volume = linear_volume(geometry)
    config = PatchConfig(n_views=9, size_px=16, fov_mm=12.0)
    centers = inside_centers(volume, 5, np.random.default_rng(0))
    patches = extract_patches(volume, centers, config, scaled=False)
    assert patches.shape == (5, 9, 16, 16)
    np.testing.assert_allclose(patches, expected_linear(centers, config), atol=2e-3)
    # Row and column directions as documented: axial columns run along +x, rows along +y.
    axial = patches[0, 0]
    np.testing.assert_allclose(axial[0, 1] - axial[0, 0], GRADIENT[0] * config.pixel_mm, atol=1e-3)
    np.testing.assert_allclose(axial[1, 0] - axial[0, 0], GRADIENT[1] * config.pixel_mm, atol=1e-3)
    sagittal = patches[0, 2]  # columns +y, rows -z
    np.testing.assert_allclose(
        sagittal[1, 0] - sagittal[0, 0], -GRADIENT[2] * config.pixel_mm, atol=1e-3
    )


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_augmented_frames_follow_the_linear_field(geometry: str) -> None:
    volume = linear_volume(geometry)
    config = PatchConfig(n_views=9, size_px=12, fov_mm=10.0)
    rng = np.random.default_rng(1)
    centers = inside_centers(volume, 4, rng)
    frames = random_frames(4, config, Augment(scale_range=(0.8, 1.2), shift_mm=2.0), rng)
    patches = extract_patches(volume, centers, config, frames, scaled=False)
    np.testing.assert_allclose(patches, expected_linear(centers, config, frames), atol=2e-3)


def test_geometries_agree_in_world_space() -> None:
    config = PatchConfig(size_px=16, fov_mm=12.0)
    centers = inside_centers(linear_volume("isotropic"), 3, np.random.default_rng(2))
    results = [extract_patches(linear_volume(g), centers, config, scaled=False) for g in GEOMETRIES]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=2e-3)


def test_line_along_x_is_horizontal_in_axial_and_a_dot_in_sagittal() -> None:
    array = np.full((33, 41, 41), -1000, np.int16)
    array[16, 20, :] = 1000  # a line along x at y = 20, z = 16 (1 mm voxels)
    volume = Volume(array=array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    config = PatchConfig(n_views=9, size_px=21, fov_mm=21.0)  # 1 mm pixels, centre pixel 10
    views = extract_patches(volume, np.array([[20.0, 20.0, 16.0]]), config, scaled=False)[0]
    bright = views > 0
    axial, coronal, sagittal = bright[0], bright[1], bright[2]
    assert axial[10].all() and axial.sum() == 21  # row 10, every column
    assert coronal[10].all() and coronal.sum() == 21
    assert sagittal[10, 10] and sagittal.sum() == 1
    # Planes containing the x axis show the line horizontally; the others cut it in one point.
    for k in (7, 8):
        assert bright[k][10].all() and bright[k].sum() == 21
    for k in (3, 4, 5, 6):
        assert bright[k][10, 10]
        assert bright[k].sum() <= 3


@pytest.mark.parametrize("n_views", [1, 3, 9])
def test_number_of_views_gives_shape_and_view_order(n_views: int) -> None:
    volume = linear_volume("anisotropic")
    config = PatchConfig(n_views=n_views, size_px=8, fov_mm=6.0)
    centers = inside_centers(volume, 3, np.random.default_rng(3))
    patches = extract_patches(volume, centers, config)
    assert patches.shape == (3, n_views, 8, 8)
    assert patches.dtype == np.float32
    full = extract_patches(volume, centers, PatchConfig(n_views=9, size_px=8, fov_mm=6.0))
    np.testing.assert_array_equal(patches, full[:, :n_views])


def test_view_axes_are_orthonormal_and_diagonals_contain_an_axis_and_a_face_diagonal() -> None:
    for col, row in VIEW_AXES:
        assert np.isclose(col @ row, 0) and np.isclose(np.linalg.norm(col), 1)
        assert np.isclose(np.linalg.norm(row), 1)
    # A plane through an axis and a face diagonal has a normal (+-a, +-a, 0) up to order.
    normals = {tuple(np.abs(np.cross(col, row)).round(6)) for col, row in VIEW_AXES[3:]}
    a = round(float(np.sqrt(0.5)), 6)
    assert normals == {(a, a, 0.0), (a, 0.0, a), (0.0, a, a)}
    # ... and the six diagonal planes are distinct (no two normals parallel).
    unit = np.cross(VIEW_AXES[3:, 0], VIEW_AXES[3:, 1])
    assert (np.abs(unit @ unit.T)[~np.eye(6, dtype=bool)] < 0.99).all()


def test_outside_the_volume_reads_fill() -> None:
    volume = Volume(
        array=np.zeros((10, 20, 20), np.int16), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)
    )
    config = PatchConfig(n_views=3, size_px=10, fov_mm=10.0)
    far = extract_patches(volume, np.array([[500.0, 0.0, 0.0]]), config, scaled=False)
    assert (far == FILL_HU).all()
    edge = extract_patches(volume, np.array([[0.0, 10.0, 10.0]]), config, scaled=False)[0, 0]
    # Axial view centred on the x = 0 face: left half outside, right half inside.
    assert (edge[:, :4] == FILL_HU).all() and (edge[:, 6:] == 0).all()
    scaled = extract_patches(volume, np.array([[500.0, 0.0, 0.0]]), config)
    assert (scaled == 0.0).all()  # -1024 is clipped to hu_min -> out_min


def test_scaling_clips_and_maps_to_the_output_range() -> None:
    volume = linear_volume("isotropic")
    centers = inside_centers(volume, 2, np.random.default_rng(4))
    for out_range in [(0.0, 1.0), (-1.0, 1.0)]:
        config = PatchConfig(
            size_px=24,
            fov_mm=30.0,
            hu_min=float(MIDDLE @ GRADIENT) - 20,
            hu_max=float(MIDDLE @ GRADIENT) + 20,
            out_min=out_range[0],
            out_max=out_range[1],
        )
        scaled = extract_patches(volume, centers, config)
        hu = extract_patches(volume, centers, config, scaled=False)
        np.testing.assert_allclose(scaled, scale_hu(hu, config), atol=1e-5)
        assert scaled.min() == pytest.approx(out_range[0], abs=1e-6)
        assert scaled.max() == pytest.approx(out_range[1], abs=1e-6)


@pytest.mark.parametrize("fov_mm", [30.0, 5.0])
def test_kernel_matches_map_coordinates_and_grid_sample(fov_mm: float) -> None:
    rng = np.random.default_rng(5)
    volume = Volume(
        array=rng.integers(-1000, 1000, (12, 30, 25)).astype(np.int16),
        spacing=(0.9, 0.8, 2.0),
        origin=(5.0, -3.0, 1.0),
        direction=_rotation_direction(),
    )
    config = PatchConfig(n_views=9, size_px=20, fov_mm=fov_mm)
    if fov_mm > 10:  # planes cross the border: the checked path
        centers = volume.voxel_to_world(rng.uniform(0, 1, (6, 3)) * (np.array(volume.shape) - 1))
    else:  # planes inside: the fast path, both loop orders
        centers = inside_centers(volume, 6, rng)
    frames = random_frames(6, config, Augment(), rng)
    patches = extract_patches(volume, centers, config, frames, scaled=False)
    assert (patches != FILL_HU).any()
    assert (patches == FILL_HU).any() == (fov_mm > 10)

    origins, cols, rows = plane_grids(centers, config, frames)
    matrix, offset = world_to_index_affine(volume)
    steps = np.arange(config.size_px)
    world = (
        origins[:, None, None, :]
        + steps[:, None, None] * rows[:, None, None, :]
        + steps[None, :, None] * cols[:, None, None, :]
    )
    voxels = world @ matrix.T + offset  # (P, H, W, 3) in (z, y, x)
    reference = map_coordinates(
        volume.array.astype(np.float64),
        np.moveaxis(voxels, -1, 0),
        order=1,
        mode="grid-constant",
        cval=FILL_HU,
    ).reshape(patches.shape)
    np.testing.assert_allclose(patches, reference, atol=1e-3, rtol=0)

    grid = torch.from_numpy(2 * voxels / (np.array(volume.shape) - 1) - 1).flip(-1)
    shifted = torch.from_numpy(volume.array.astype(np.float64) - FILL_HU)[None, None]
    sampled = torch.nn.functional.grid_sample(shifted, grid[None], align_corners=True)[0, 0]
    np.testing.assert_allclose(
        patches, (sampled + FILL_HU).numpy().reshape(patches.shape), atol=1e-3, rtol=0
    )


def test_augmentation_is_deterministic_per_seed() -> None:
    volume = linear_volume("anisotropic")
    config = PatchConfig(size_px=16, fov_mm=12.0)
    centers = inside_centers(volume, 4, np.random.default_rng(6))
    augment = Augment(noise_hu=20.0)
    a = sample_augmented(volume, centers, config, augment, np.random.default_rng(7))
    b = sample_augmented(volume, centers, config, augment, np.random.default_rng(7))
    c = sample_augmented(volume, centers, config, augment, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    plain = extract_patches(volume, centers, config)
    assert np.abs(a - plain).max() > 0.01


def test_random_frames_are_scaled_rotations_with_bounded_shifts() -> None:
    config = PatchConfig()
    augment = Augment(scale_range=(0.9, 1.1), shift_mm=2.0)
    frames = random_frames(500, config, augment, np.random.default_rng(9))
    assert frames.axes.shape == (500, 9, 2, 3)
    lengths = np.linalg.norm(frames.axes, axis=-1)
    assert (lengths >= 0.9 - 1e-9).all() and (lengths <= 1.1 + 1e-9).all()
    np.testing.assert_allclose(lengths[:, :, 0], lengths[:, :, 1])
    np.testing.assert_allclose(
        np.einsum("nvi,nvi->nv", frames.axes[:, :, 0], frames.axes[:, :, 1]), 0, atol=1e-12
    )
    shifts = np.linalg.norm(frames.shifts, axis=1)
    assert shifts.max() <= 2.0 and shifts.max() > 1.5
    # The views keep their mutual angles (one rigid transform per candidate).
    gram = (
        np.einsum("nvi,nwi->nvw", frames.axes[:, :, 0], frames.axes[:, :, 0])
        / lengths[:, :1, :1] ** 2
    )
    reference = np.einsum("vi,wi->vw", VIEW_AXES[:, 0], VIEW_AXES[:, 0])
    np.testing.assert_allclose(gram, np.broadcast_to(reference, gram.shape), atol=1e-9)
    identity = random_frames(
        3,
        config,
        Augment(rotate=False, flip=False, scale_range=(1, 1), shift_mm=0),
        np.random.default_rng(0),
    )
    np.testing.assert_array_equal(identity.axes, default_frames(3, config).axes)


def test_hu_noise_is_seeded_and_stays_in_range() -> None:
    config = PatchConfig(out_min=-1.0, out_max=1.0)
    patches = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100)
    noisy = add_hu_noise(patches, config, 30.0, np.random.default_rng(0))
    assert noisy.min() >= -1 and noisy.max() <= 1
    assert 0.01 < np.std(noisy - patches) < 0.1  # 30 HU of a 1400 HU window spread on 2 units
    np.testing.assert_array_equal(
        noisy, add_hu_noise(patches, config, 30.0, np.random.default_rng(0))
    )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="n_views"):
        PatchConfig(n_views=4)
    with pytest.raises(ValueError, match="hu_max"):
        PatchConfig(hu_min=10, hu_max=0)
    with pytest.raises(ValueError, match="scale_range"):
        Augment(scale_range=(1.2, 1.0))
    volume = linear_volume("isotropic")
    with pytest.raises(ValueError, match="finite"):
        extract_patches(volume, np.array([[0.0, np.nan, 0.0]]), PatchConfig())
    with pytest.raises(ValueError, match="frames"):
        extract_patches(volume, np.zeros((2, 3)), PatchConfig(), default_frames(3, PatchConfig()))


def _child_patches(volume: Volume, centers: np.ndarray, queue: Any) -> None:
    queue.put(extract_patches(volume, centers, PatchConfig(size_px=8, fov_mm=6.0)))


def test_serial_kernel_and_forked_workers_give_the_same_patches() -> None:
    volume = linear_volume("rotated")
    centers = inside_centers(volume, 5, np.random.default_rng(10))
    config = PatchConfig(size_px=8, fov_mm=6.0)
    threaded = extract_patches(volume, centers, config)  # this process now owns the threads
    np.testing.assert_array_equal(
        extract_patches(volume, centers, config, parallel=False), threaded
    )
    # A forked child (a DataLoader worker) must not start OpenMP threads: it runs serially.
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_patches, args=(volume, centers, queue))
    child.start()
    from_child = queue.get(timeout=120)
    child.join(timeout=30)
    assert child.exitcode == 0
    np.testing.assert_array_equal(from_child, threaded)
