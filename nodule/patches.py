"""Multiplanar patches: 2D views through each candidate, sampled in world space.

Around every candidate we sample ``n_views`` square planes (1, 3 or 9) of
``size_px`` x ``size_px`` pixels covering ``fov_mm`` x ``fov_mm`` (Setio et al.
2016: nine 64 x 64 px views covering 50 x 50 mm). Sampling is trilinear, straight
from the anisotropic volume (no resampling of the whole scan): every plane is an
origin and two step vectors in continuous voxel space, so the kernel only computes
``origin + row * row_step + col * col_step`` and interpolates. Corners of the
trilinear stencil that fall outside the volume count as ``FILL_HU`` (-1024), so a
plane far outside the scan reads -1024 and one near the border fades into it (the
same as ``scipy.ndimage.map_coordinates(..., order=1, mode="grid-constant",
cval=-1024)``).

Plane geometry (world = patient x, y, z in mm, LPS: +x patient left, +y posterior,
+z superior). Each view is given by two unit vectors: ``col`` (image column index
grows along it, i.e. left -> right in the image) and ``row`` (row index grows along
it, i.e. top -> bottom). With ``a = 1/sqrt(2)``:

==  =========  ==================  ==================  =====================================
#   name       col (x, y, z)       row (x, y, z)       plane
==  =========  ==================  ==================  =====================================
0   axial      (1, 0, 0)           (0, 1, 0)           z = const; radiological: patient left
                                                       on image right, anterior at the top
1   coronal    (1, 0, 0)           (0, 0, -1)          y = const; superior at the top
2   sagittal   (0, 1, 0)           (0, 0, -1)          x = const; anterior left, superior top
3   diag_z+    (a, a, 0)           (0, 0, -1)          contains z and face diagonal x + y
4   diag_z-    (a, -a, 0)          (0, 0, -1)          contains z and face diagonal x - y
5   diag_y+    (a, 0, a)           (0, 1, 0)           contains y and face diagonal x + z
6   diag_y-    (a, 0, -a)          (0, 1, 0)           contains y and face diagonal x - z
7   diag_x-    (1, 0, 0)           (0, a, -a)          contains x and face diagonal y - z
8   diag_x+    (1, 0, 0)           (0, a, a)           contains x and face diagonal y + z
==  =========  ==================  ==================  =====================================

Views 3-8 are the six diagonal planes of a cube centred on the candidate: each
contains one cube axis and a face diagonal, i.e. passes through two opposite edges
of the cube. ``n_views=1`` gives the axial view, ``3`` the three orthogonal views,
``9`` all of them, in this order.

Pixel ``(r, c)`` of a view (with no augmentation) is at world position
``center + pixel_mm * ((c - (W - 1) / 2) * col + (r - (H - 1) / 2) * row)`` with
``pixel_mm = fov_mm / size_px``: the candidate sits at the exact image centre
(between the four central pixels for even sizes), so flips keep it in place.

Augmentation samples rotated and scaled planes directly (:class:`Augment`,
:func:`random_frames`): one random 3D rotation (and mirror) per candidate is
applied to all its views, so the views keep their mutual geometry; a scale factor
stretches the field of view; a random shift moves the centre; Gaussian HU noise is
added to the output (:func:`add_hu_noise`).

The kernel (:func:`sample_planes`) is a numba ``prange`` loop over planes: planes
whose four corners are inside the volume take a path without bounds checks, walking
the in-plane axis with the smaller memory stride innermost; planes are visited in
blocks of nearby centres so that neighbouring candidates share cached voxels.
``scripts/bench_patches.py`` compares it with ``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt
from numba import njit, prange

from nodule.io import FILL_HU, Volume

_A = 1.0 / math.sqrt(2.0)

VIEW_NAMES: tuple[str, ...] = (
    "axial",
    "coronal",
    "sagittal",
    "diag_z+",
    "diag_z-",
    "diag_y+",
    "diag_y-",
    "diag_x-",
    "diag_x+",
)
"""Names of the nine views, in the order they are returned."""

VIEW_AXES: np.ndarray = np.array(
    [
        [[1, 0, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 0, -1]],
        [[0, 1, 0], [0, 0, -1]],
        [[_A, _A, 0], [0, 0, -1]],
        [[_A, -_A, 0], [0, 0, -1]],
        [[_A, 0, _A], [0, 1, 0]],
        [[_A, 0, -_A], [0, 1, 0]],
        [[1, 0, 0], [0, _A, -_A]],
        [[1, 0, 0], [0, _A, _A]],
    ],
    dtype=np.float64,
)
"""(9, 2, 3): for each view, the world (x, y, z) unit vectors of its columns ([0]) and rows ([1])."""
VIEW_AXES.setflags(write=False)


@dataclass(frozen=True)
class PatchConfig:
    """What a multiplanar patch looks like.

    Attributes:
        n_views: 1 (axial), 3 (orthogonal) or 9 (orthogonal + six diagonal planes).
        size_px: pixels per side of each view.
        fov_mm: field of view per side in mm (before augmentation scaling).
        hu_min: HU mapped to ``out_min``; lower values are clipped.
        hu_max: HU mapped to ``out_max``; higher values are clipped.
        out_min: output value for ``hu_min`` (0 for [0, 1], -1 for [-1, 1]).
        out_max: output value for ``hu_max``.
    """

    n_views: int = 9
    size_px: int = 64
    fov_mm: float = 50.0
    hu_min: float = -1000.0
    hu_max: float = 400.0
    out_min: float = 0.0
    out_max: float = 1.0

    def __post_init__(self) -> None:
        if self.n_views not in (1, 3, 9):
            raise ValueError(f"n_views must be 1, 3 or 9, got {self.n_views}")
        if self.size_px < 1:
            raise ValueError(f"size_px must be positive, got {self.size_px}")
        if not self.fov_mm > 0:
            raise ValueError(f"fov_mm must be positive, got {self.fov_mm}")
        if not self.hu_max > self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")

    @property
    def pixel_mm(self) -> float:
        """Pixel size in mm (before augmentation scaling)."""
        return self.fov_mm / self.size_px

    @property
    def gain(self) -> float:
        """Output units per HU."""
        return (self.out_max - self.out_min) / (self.hu_max - self.hu_min)

    @property
    def view_axes(self) -> np.ndarray:
        """(n_views, 2, 3) world column and row unit vectors of the views (see module doc)."""
        return VIEW_AXES[: self.n_views]

    @property
    def view_names(self) -> tuple[str, ...]:
        """Names of the views, in output order."""
        return VIEW_NAMES[: self.n_views]


@dataclass(frozen=True)
class Augment:
    """Random plane augmentation, applied per candidate (all its views together).

    Attributes:
        rotate: apply a random 3D rotation.
        max_angle_deg: largest rotation angle; >= 180 draws uniformly from all
            rotations, otherwise a uniform random axis and an angle uniform in
            [-max_angle_deg, max_angle_deg].
        flip: mirror each world axis with probability 1/2 (before rotating).
        scale_range: the field of view is multiplied by a factor drawn log-uniformly
            from this range ((1, 1) for none).
        shift_mm: the plane centre moves by a vector drawn uniformly from the ball
            of this radius.
        noise_hu: standard deviation of Gaussian noise added to the output, in HU.
    """

    rotate: bool = True
    max_angle_deg: float = 180.0
    flip: bool = True
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_mm: float = 2.0
    noise_hu: float = 10.0

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if self.shift_mm < 0 or self.noise_hu < 0 or self.max_angle_deg < 0:
            raise ValueError("shift_mm, noise_hu and max_angle_deg must be >= 0")


@dataclass(frozen=True)
class PlaneFrames:
    """Per-candidate plane orientations and centre shifts.

    Attributes:
        axes: (N, V, 2, 3) world (x, y, z) vectors of each view's columns ([..., 0, :])
            and rows ([..., 1, :]); their length is the scale factor (1 = ``fov_mm``).
        shifts: (N, 3) world offset of the plane centres from the candidates, mm.
    """

    axes: np.ndarray
    shifts: np.ndarray

    def __post_init__(self) -> None:
        if self.axes.ndim != 4 or self.axes.shape[2:] != (2, 3):
            raise ValueError(f"axes must be (N, V, 2, 3), got {self.axes.shape}")
        if self.shifts.shape != (self.axes.shape[0], 3):
            raise ValueError(f"shifts must be ({self.axes.shape[0]}, 3), got {self.shifts.shape}")

    def __len__(self) -> int:
        return int(self.axes.shape[0])

    def __getitem__(self, index: int | slice | npt.NDArray[np.integer]) -> PlaneFrames:
        """The frames of a subset of candidates (an int keeps a length-1 first axis)."""
        if isinstance(index, int | np.integer):
            return PlaneFrames(axes=self.axes[index][None], shifts=self.shifts[index][None])
        return PlaneFrames(axes=self.axes[index], shifts=self.shifts[index])

    def max_extent_mm(self, config: PatchConfig) -> float:
        """Largest distance from a candidate to any sample point of its views, in mm."""
        half = (config.size_px - 1) / 2 * config.pixel_mm
        if len(self) == 0:
            return 0.0
        corners = half * (
            self.axes[:, :, None, 0, :] * np.array([-1, -1, 1, 1])[None, None, :, None]
            + self.axes[:, :, None, 1, :] * np.array([-1, 1, -1, 1])[None, None, :, None]
        )
        points = corners + self.shifts[:, None, None, :]
        return float(np.linalg.norm(points, axis=-1).max())


def default_frames(n: int, config: PatchConfig) -> PlaneFrames:
    """The unaugmented views (see module doc) for ``n`` candidates."""
    axes = np.broadcast_to(config.view_axes, (n, config.n_views, 2, 3)).copy()
    return PlaneFrames(axes=axes, shifts=np.zeros((n, 3)))


def random_rotations(n: int, rng: np.random.Generator, max_angle_deg: float = 180.0) -> np.ndarray:
    """``n`` random 3x3 rotation matrices.

    Args:
        n: number of matrices.
        rng: random generator.
        max_angle_deg: >= 180 draws uniformly (Haar measure) from all rotations;
            otherwise axis uniform on the sphere, angle uniform in +-max_angle_deg.

    Returns:
        (n, 3, 3) float64 rotation matrices.
    """
    if max_angle_deg >= 180.0:
        q = rng.standard_normal((n, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        w, x, y, z = q.T
    else:
        axis = rng.standard_normal((n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        half = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg, n)) / 2
        w = np.cos(half)
        x, y, z = (axis * np.sin(half)[:, None]).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def random_frames(
    n: int, config: PatchConfig, augment: Augment, rng: np.random.Generator
) -> PlaneFrames:
    """Randomly rotated, mirrored, scaled and shifted views for ``n`` candidates.

    Each candidate gets one transform ``T = scale * R @ diag(flips)`` applied to all of
    its views (``axes = T @ VIEW_AXES``) and one shift.

    Args:
        n: number of candidates.
        config: patch geometry (number of views).
        augment: what to randomise.
        rng: random generator; the same generator state gives the same frames.

    Returns:
        The frames, to pass to :func:`extract_patches`.
    """
    transform = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    if augment.flip:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n, 3))
        transform *= signs[:, None, :]
    if augment.rotate and augment.max_angle_deg > 0:
        transform = random_rotations(n, rng, augment.max_angle_deg) @ transform
    lo, hi = augment.scale_range
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi), n)) if hi > lo else np.full(n, lo)
    transform *= scale[:, None, None]
    axes = np.einsum("nij,vkj->nvki", transform, config.view_axes)
    direction = rng.standard_normal((n, 3))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    radius = augment.shift_mm * rng.uniform(0.0, 1.0, n) ** (1.0 / 3.0)
    return PlaneFrames(axes=axes, shifts=direction * radius[:, None])


@njit(cache=True, fastmath=True, nogil=True, inline="always")
def _trilinear(  # pragma: no cover - compiled
    flat: np.ndarray, i: int, sy: int, sz: int, fz: float, fy: float, fx: float
) -> float:
    """Trilinear interpolation in a flat (z, y, x) array at linear index ``i`` of the low corner."""
    v000 = float(flat[i])
    v001 = float(flat[i + 1])
    v010 = float(flat[i + sy])
    v011 = float(flat[i + sy + 1])
    v100 = float(flat[i + sz])
    v101 = float(flat[i + sz + 1])
    v110 = float(flat[i + sz + sy])
    v111 = float(flat[i + sz + sy + 1])
    c00 = v000 + fx * (v001 - v000)
    c01 = v010 + fx * (v011 - v010)
    c10 = v100 + fx * (v101 - v100)
    c11 = v110 + fx * (v111 - v110)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


@njit(cache=True, fastmath=True, nogil=True)
def _trilinear_checked(  # pragma: no cover - compiled
    volume: np.ndarray, z: float, y: float, x: float, fill: float
) -> float:
    """Trilinear interpolation where stencil corners outside the volume read ``fill``."""
    nz, ny, nx = volume.shape
    zf = math.floor(z)
    yf = math.floor(y)
    xf = math.floor(x)
    if zf < -1 or zf > nz - 1 or yf < -1 or yf > ny - 1 or xf < -1 or xf > nx - 1:
        return fill
    fz = z - zf
    fy = y - yf
    fx = x - xf
    z0 = int(zf)
    y0 = int(yf)
    x0 = int(xf)
    z_in0 = z0 >= 0
    z_in1 = z0 + 1 <= nz - 1
    y_in0 = y0 >= 0
    y_in1 = y0 + 1 <= ny - 1
    x_in0 = x0 >= 0
    x_in1 = x0 + 1 <= nx - 1
    v000 = float(volume[z0, y0, x0]) if z_in0 and y_in0 and x_in0 else fill
    v001 = float(volume[z0, y0, x0 + 1]) if z_in0 and y_in0 and x_in1 else fill
    v010 = float(volume[z0, y0 + 1, x0]) if z_in0 and y_in1 and x_in0 else fill
    v011 = float(volume[z0, y0 + 1, x0 + 1]) if z_in0 and y_in1 and x_in1 else fill
    v100 = float(volume[z0 + 1, y0, x0]) if z_in1 and y_in0 and x_in0 else fill
    v101 = float(volume[z0 + 1, y0, x0 + 1]) if z_in1 and y_in0 and x_in1 else fill
    v110 = float(volume[z0 + 1, y0 + 1, x0]) if z_in1 and y_in1 and x_in0 else fill
    v111 = float(volume[z0 + 1, y0 + 1, x0 + 1]) if z_in1 and y_in1 and x_in1 else fill
    c00 = v000 + fx * (v001 - v000)
    c01 = v010 + fx * (v011 - v010)
    c10 = v100 + fx * (v101 - v100)
    c11 = v110 + fx * (v111 - v110)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


@njit(cache=True, fastmath=True, nogil=True)
def _sample_plane(  # pragma: no cover - compiled
    p: int,
    volume: np.ndarray,
    origins: np.ndarray,
    col_steps: np.ndarray,
    row_steps: np.ndarray,
    out: np.ndarray,
    lo: float,
    hi: float,
    base: float,
    gain: float,
    bias: float,
    fill: float,
) -> None:
    """Trilinear sampling of plane ``p``; coordinates are continuous (z, y, x) voxel indices.

    ``out[p, r, c] = (clip(f(origins[p] + r * row_steps[p] + c * col_steps[p]), lo, hi)
    - base) * gain + bias`` with ``volume`` and ``out`` C-contiguous.
    """
    _, height, width = out.shape
    nz, ny, nx = volume.shape
    sy = nx
    sz = ny * nx
    flat = volume.reshape(-1)
    out_flat = out.reshape(-1)
    eps = 1e-4
    oz, oy, ox = origins[p, 0], origins[p, 1], origins[p, 2]
    cz, cy, cx = col_steps[p, 0], col_steps[p, 1], col_steps[p, 2]
    rz, ry, rx = row_steps[p, 0], row_steps[p, 1], row_steps[p, 2]
    # The plane is convex: if its four corner samples are inside, all are.
    inside = True
    for rr in (0.0, height - 1.0):
        for cc in (0.0, width - 1.0):
            z = oz + rr * rz + cc * cz
            y = oy + rr * ry + cc * cy
            x = ox + rr * rx + cc * cx
            if not (
                eps <= z <= nz - 1 - eps and eps <= y <= ny - 1 - eps and eps <= x <= nx - 1 - eps
            ):
                inside = False
    if inside:
        # Walk the inner loop along the in-plane axis with the smaller memory stride
        # (e.g. along y rather than through slices), which keeps stencils in cache.
        col_stride = abs(cz) * sz + abs(cy) * sy + abs(cx)
        row_stride = abs(rz) * sz + abs(ry) * sy + abs(rx)
        by_rows = col_stride <= row_stride
        n_outer = height if by_rows else width
        n_inner = width if by_rows else height
        uz, uy, ux = (rz, ry, rx) if by_rows else (cz, cy, cx)
        vz, vy, vx = (cz, cy, cx) if by_rows else (rz, ry, rx)
        step_a, step_b = (width, 1) if by_rows else (1, width)
        base_out = p * height * width
        for a in range(n_outer):
            bz = oz + a * uz
            by = oy + a * uy
            bx = ox + a * ux
            for b in range(n_inner):
                z = bz + b * vz
                y = by + b * vy
                x = bx + b * vx
                z0 = int(z)
                y0 = int(y)
                x0 = int(x)
                value = _trilinear(flat, z0 * sz + y0 * sy + x0, sy, sz, z - z0, y - y0, x - x0)
                out_flat[base_out + a * step_a + b * step_b] = (
                    min(max(value, lo), hi) - base
                ) * gain + bias
    else:
        for r in range(height):
            for c in range(width):
                z = oz + r * rz + c * cz
                y = oy + r * ry + c * cy
                x = ox + r * rx + c * cx
                value = _trilinear_checked(volume, z, y, x, fill)
                out[p, r, c] = (min(max(value, lo), hi) - base) * gain + bias


@njit(parallel=True, cache=True, fastmath=True, nogil=True)
def _sample_planes_parallel(  # pragma: no cover - compiled
    volume: np.ndarray,
    origins: np.ndarray,
    col_steps: np.ndarray,
    row_steps: np.ndarray,
    order: np.ndarray,
    out: np.ndarray,
    lo: float,
    hi: float,
    base: float,
    gain: float,
    bias: float,
    fill: float,
) -> None:
    """All planes, in the order ``order``, split over numba's threads."""
    for q in prange(order.shape[0]):
        _sample_plane(
            order[q], volume, origins, col_steps, row_steps, out, lo, hi, base, gain, bias, fill
        )


@njit(cache=True, fastmath=True, nogil=True)
def _sample_planes_serial(  # pragma: no cover - compiled
    volume: np.ndarray,
    origins: np.ndarray,
    col_steps: np.ndarray,
    row_steps: np.ndarray,
    order: np.ndarray,
    out: np.ndarray,
    lo: float,
    hi: float,
    base: float,
    gain: float,
    bias: float,
    fill: float,
) -> None:
    """All planes, in the order ``order``, in the calling thread."""
    for q in range(order.shape[0]):
        _sample_plane(
            order[q], volume, origins, col_steps, row_steps, out, lo, hi, base, gain, bias, fill
        )


_PARALLEL_PID: int | None = None
"""The process that ran the threaded kernel; its forked children must not."""


def _use_parallel(parallel: bool | None) -> bool:
    """Whether to run the threaded kernel in this process.

    numba's OpenMP threads do not survive ``fork`` (a child calling the threaded kernel
    after its parent did aborts), so a forked child (e.g. a torch DataLoader worker)
    runs the serial kernel; one worker per core is the parallelism there anyway.
    """
    global _PARALLEL_PID
    if parallel is False or numba.get_num_threads() == 1:
        return False
    pid = os.getpid()
    if _PARALLEL_PID is None:
        _PARALLEL_PID = pid
    return pid == _PARALLEL_PID


def world_to_index_affine(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :meth:`Volume.index_to_world_matrix`, in array order.

    Args:
        volume: any volume.

    Returns:
        ``(M, t)`` with continuous voxel index (z, y, x) = ``M @ world_xyz + t``.
    """
    a, b = volume.index_to_world_matrix()
    inverse = np.ascontiguousarray(np.linalg.inv(a)[::-1])  # index (x, y, z) -> (z, y, x)
    return inverse, -inverse @ b


def sample_planes(
    volume: Volume,
    origins_xyz: npt.ArrayLike,
    col_steps_xyz: npt.ArrayLike,
    row_steps_xyz: npt.ArrayLike,
    shape_hw: tuple[int, int],
    clip_hu: tuple[float, float] | None = None,
    out_range: tuple[float, float] | None = None,
    parallel: bool | None = None,
) -> np.ndarray:
    """Trilinearly sample P planar grids from a volume, given in world space.

    Pixel ``(r, c)`` of plane ``p`` is the world point
    ``origins_xyz[p] + r * row_steps_xyz[p] + c * col_steps_xyz[p]`` (mm, x, y, z).
    Stencil corners outside the volume read ``FILL_HU``.

    Args:
        volume: the CT volume (int16 or float32 array, (z, y, x)).
        origins_xyz: (P, 3) world position of pixel (0, 0) of each plane.
        col_steps_xyz: (P, 3) world step from one column to the next.
        row_steps_xyz: (P, 3) world step from one row to the next.
        shape_hw: rows and columns per plane.
        clip_hu: clip the HU values to this range (None: no clipping).
        out_range: map ``clip_hu`` linearly onto this range (None: output HU);
            needs ``clip_hu``.
        parallel: False: run in the calling thread; None (default): use numba's
            threads (``numba.set_num_threads``), except in a process forked from
            one that did, where OpenMP threads cannot run (it then runs serially).

    Returns:
        (P, H, W) float32.
    """
    matrix, offset = world_to_index_affine(volume)
    origins = np.asarray(origins_xyz, dtype=np.float64).reshape(-1, 3)
    cols = np.asarray(col_steps_xyz, dtype=np.float64).reshape(-1, 3)
    rows = np.asarray(row_steps_xyz, dtype=np.float64).reshape(-1, 3)
    array = volume.array
    if array.dtype not in (np.int16, np.float32):
        array = array.astype(np.float32)
    array = np.ascontiguousarray(array)
    out = np.empty((origins.shape[0], *shape_hw), dtype=np.float32)
    lo, hi = clip_hu if clip_hu is not None else (-np.inf, np.inf)
    base, gain, bias = 0.0, 1.0, 0.0
    if out_range is not None:
        if clip_hu is None:
            raise ValueError("out_range needs clip_hu")
        base, bias = lo, out_range[0]
        gain = (out_range[1] - out_range[0]) / (hi - lo)
    origins_vox = np.ascontiguousarray(origins @ matrix.T + offset)
    cols_vox = np.ascontiguousarray(cols @ matrix.T)
    rows_vox = np.ascontiguousarray(rows @ matrix.T)
    # Visit planes block by block (16 slices x 32 x 32 voxels) so that neighbouring
    # candidates reuse cached voxels; the sort is stable, so the views of one candidate
    # (same centre) stay together.
    middle = origins_vox + (shape_hw[0] - 1) / 2 * rows_vox + (shape_hw[1] - 1) / 2 * cols_vox
    block = np.floor(middle / np.array([16.0, 32.0, 32.0]))
    order = np.lexsort((block[:, 2], block[:, 1], block[:, 0])).astype(np.int64)
    kernel = _sample_planes_parallel if _use_parallel(parallel) else _sample_planes_serial
    kernel(
        array,
        origins_vox,
        cols_vox,
        rows_vox,
        order,
        out,
        float(lo),
        float(hi),
        float(base),
        float(gain),
        float(bias),
        float(FILL_HU),
    )
    return out


def plane_grids(
    centers_xyz: npt.ArrayLike, config: PatchConfig, frames: PlaneFrames | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World origins and steps of every view of every candidate.

    Args:
        centers_xyz: (N, 3) candidate positions, world mm (x, y, z).
        config: patch geometry.
        frames: view orientations and shifts; None for :func:`default_frames`.

    Returns:
        ``(origins, col_steps, row_steps)``, each (N * V, 3) world mm, in the layout
        of :func:`sample_planes`.
    """
    centers = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(centers).all():
        raise ValueError("candidate positions must be finite")
    n = centers.shape[0]
    if frames is None:
        frames = default_frames(n, config)
    if len(frames) != n or frames.axes.shape[1] != config.n_views:
        raise ValueError(
            f"frames {frames.axes.shape} do not match {n} candidates x {config.n_views} views"
        )
    col = frames.axes[:, :, 0, :] * config.pixel_mm
    row = frames.axes[:, :, 1, :] * config.pixel_mm
    half = (config.size_px - 1) / 2
    origins = (centers + frames.shifts)[:, None, :] - half * (col + row)
    return origins.reshape(-1, 3), col.reshape(-1, 3), row.reshape(-1, 3)


def extract_patches(
    volume: Volume,
    centers_xyz: npt.ArrayLike,
    config: PatchConfig,
    frames: PlaneFrames | None = None,
    scaled: bool = True,
    parallel: bool | None = None,
) -> np.ndarray:
    """Multiplanar patches around many candidates in one call.

    Args:
        volume: the CT volume in HU (int16 or float32 array (z, y, x)); kept as is,
            never resampled.
        centers_xyz: (N, 3) candidate positions, world mm (x, y, z).
        config: views, size, field of view and HU scaling.
        frames: per-candidate orientations/shifts (e.g. from :func:`random_frames`);
            None for the standard views of the module doc.
        scaled: True: clip to [hu_min, hu_max] and map to [out_min, out_max];
            False: raw interpolated HU.
        parallel: see :func:`sample_planes` (False in data-loader workers that each
            take one core).

    Returns:
        (N, V, H, W) float32 with H = W = ``config.size_px``.
    """
    origins, cols, rows = plane_grids(centers_xyz, config, frames)
    size = config.size_px
    if scaled:
        planes = sample_planes(
            volume,
            origins,
            cols,
            rows,
            (size, size),
            clip_hu=(config.hu_min, config.hu_max),
            out_range=(config.out_min, config.out_max),
            parallel=parallel,
        )
    else:
        planes = sample_planes(volume, origins, cols, rows, (size, size), parallel=parallel)
    return planes.reshape(-1, config.n_views, size, size)


def scale_hu(hu: np.ndarray, config: PatchConfig) -> np.ndarray:
    """Clip HU to [hu_min, hu_max] and map linearly to [out_min, out_max], as float32."""
    clipped = np.clip(hu.astype(np.float32, copy=False), config.hu_min, config.hu_max)
    return ((clipped - config.hu_min) * config.gain + config.out_min).astype(np.float32)


def add_hu_noise(
    patches: np.ndarray, config: PatchConfig, noise_hu: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise of ``noise_hu`` HU added to scaled patches, re-clipped to the output range.

    Args:
        patches: scaled patches (any shape), float32.
        config: the scaling the patches were made with.
        noise_hu: standard deviation in HU (0: patches returned unchanged).
        rng: random generator.

    Returns:
        A new float32 array of the same shape.
    """
    if noise_hu <= 0:
        return patches.copy()
    noise = rng.standard_normal(patches.shape, dtype=np.float32) * np.float32(
        noise_hu * abs(config.gain)
    )
    low, high = sorted((config.out_min, config.out_max))
    noisy: np.ndarray = np.clip(patches + noise, low, high).astype(np.float32, copy=False)
    return noisy


def sample_augmented(
    volume: Volume,
    centers_xyz: npt.ArrayLike,
    config: PatchConfig,
    augment: Augment,
    rng: np.random.Generator,
) -> np.ndarray:
    """Augmented patches: :func:`random_frames`, :func:`extract_patches`, :func:`add_hu_noise`.

    Args:
        volume: the CT volume.
        centers_xyz: (N, 3) candidate positions, world mm (x, y, z).
        config: patch geometry and scaling.
        augment: augmentation parameters.
        rng: random generator (same state, same patches).

    Returns:
        (N, V, H, W) float32.
    """
    centers = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    frames = random_frames(centers.shape[0], config, augment, rng)
    patches = extract_patches(volume, centers, config, frames)
    return add_hu_noise(patches, config, augment.noise_hu, rng)
