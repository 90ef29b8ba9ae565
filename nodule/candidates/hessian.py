"""Multiscale Hessian blob measure, evaluated only at the voxels asked for.

A bright blob (nodule) has three negative Hessian eigenvalues of similar magnitude; a
bright tube (vessel) has two large negative ones and one near zero along its axis. The
blob measure of one scale is therefore ``sigma^2 * max(0, -lambda_1)`` with
``lambda_1`` the *largest* eigenvalue: it is zero on a straight tube and on a plate and
large at the centre of a ball (Lindeberg's scale normalisation ``sigma^2`` makes scales
comparable; the best scale of a ball of radius ``r`` is about ``r / sqrt(3)``).

Smoothing is ``scipy.ndimage.gaussian_filter`` (float32, truncated at 3 sigma; in
this setting several times faster than SimpleITK's recursive Gaussian). Scales of at
least ``coarse_from`` voxels are computed on a copy of half the resolution (2 x 2 x 2
block means, whose own blur of 0.25 voxel^2 is taken off the sigma): eight times fewer
voxels, and a central difference over 2 voxels is still accurate at such scales.
Second derivatives are central differences of the smoothed volume at the requested
voxels only, so the eigen-analysis costs nothing where nothing is asked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class BlobResponse:
    """Blob measure at a set of voxels (flat indices of one grid).

    Attributes:
        index: flat indices into the grid, int64 (N,).
        response: best scale-normalised blob measure over the scales, HU (N,).
        sigma_mm: the scale of the best response, mm (N,) (interpolated between scales).
        ratio: lambda_1 / lambda_3 at the best scale in [0, 1]: 1 for a ball, 0 for a tube.
    """

    index: np.ndarray
    response: np.ndarray
    sigma_mm: np.ndarray
    ratio: np.ndarray


def gaussian(array: np.ndarray, sigma_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing of a (z, y, x) array (truncated at 3 sigma); float32 out."""
    sigma = [float(sigma_mm) / float(s) for s in spacing_zyx]
    return np.asarray(ndi.gaussian_filter(array.astype(np.float32, copy=False), sigma, truncate=3.0))


class SmoothingCache:
    """Smoothed copies of one working volume shared by the detectors and the context features,
    keyed by (sigma in mm, half resolution); ``(0.0, True)`` is the unsmoothed half-resolution
    copy. Each copy is made once, also when detectors in several threads ask for it at once."""

    def __init__(self) -> None:
        self._values: dict[tuple[float, bool], np.ndarray] = {}
        self._locks: dict[tuple[float, bool], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: tuple[float, bool], make: Callable[[], np.ndarray]) -> np.ndarray:
        """The copy under ``key``, made by ``make()`` (by one thread only) when it is missing."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                self._values[key] = make()
            return self._values[key]

    def __contains__(self, key: tuple[float, bool]) -> bool:
        return key in self._values


def _cached(cache: SmoothingCache | None, key: tuple[float, bool], make: Callable[[], np.ndarray]) -> np.ndarray:
    """``cache[key]``, made by ``make()`` and stored when it is missing (``cache=None``: always made)."""
    return make() if cache is None else cache.get(key, make)


def smoothed_copy(
    array: np.ndarray, sigma_mm: float, spacing_zyx: Sequence[float], cache: SmoothingCache | None
) -> np.ndarray:
    """:func:`gaussian` of ``array``, taken from ``cache`` when it is there and stored in it
    otherwise; ``cache=None`` always computes it."""
    return _cached(cache, (sigma_mm, False), lambda: gaussian(array, sigma_mm, spacing_zyx))


def half_resolution(array: np.ndarray) -> np.ndarray:
    """2 x 2 x 2 block means (float32); a last odd plane is dropped."""
    z, y, x = (n // 2 * 2 for n in array.shape)
    a = array[:z, :y, :x].astype(np.float32, copy=False)
    out = a[0::2] + a[1::2]
    out = out[:, 0::2] + out[:, 1::2]
    out = out[:, :, 0::2] + out[:, :, 1::2]
    out *= np.float32(0.125)
    return out


def half_smoothed(
    array: np.ndarray, sigma_mm: float, spacing_zyx: Sequence[float], cache: SmoothingCache | None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` at half resolution (:func:`half_resolution`) smoothed to ``sigma_mm`` in all
    (the block means' own blur taken off), from ``cache`` when there, and its voxel size."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    half = _cached(cache, (0.0, True), lambda: half_resolution(array))
    residual = float(np.sqrt(max(sigma_mm**2 - 0.25 * float(sp.max()) ** 2, 0.0)))
    half_sp = (float(2 * sp[0]), float(2 * sp[1]), float(2 * sp[2]))
    return _cached(cache, (float(sigma_mm), True), partial(gaussian, half, residual, half_sp)), half_sp


def _coarse_index(index: np.ndarray, shape: Sequence[int], coarse_shape: Sequence[int]) -> np.ndarray:
    """Flat index of the half-resolution voxel holding each fine voxel (kept off the border)."""
    zyx = np.unravel_index(index, tuple(shape))
    c = [np.clip(v // 2, 1, n - 2) for v, n in zip(zyx, coarse_shape, strict=True)]
    return np.asarray(np.ravel_multi_index((c[0], c[1], c[2]), tuple(coarse_shape)), dtype=np.int64)


def hessian_at(smoothed: np.ndarray, index: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Hessian (N, 6) = (zz, yy, xx, zy, zx, yx) per mm^2 at flat indices by central differences.

    The voxels must not lie on the border of the grid.
    """
    flat = smoothed.ravel()
    _, ny, nx = smoothed.shape
    sz, sy, sx = (nx * ny, nx, 1)
    hz, hy, hx = (float(s) for s in spacing_zyx)
    c = flat[index]

    def at(offset: int) -> np.ndarray:
        return np.asarray(flat[index + offset])

    zz = (at(sz) - 2 * c + at(-sz)) / (hz * hz)
    yy = (at(sy) - 2 * c + at(-sy)) / (hy * hy)
    xx = (at(sx) - 2 * c + at(-sx)) / (hx * hx)
    zy = (at(sz + sy) - at(sz - sy) - at(-sz + sy) + at(-sz - sy)) / (4 * hz * hy)
    zx = (at(sz + sx) - at(sz - sx) - at(-sz + sx) + at(-sz - sx)) / (4 * hz * hx)
    yx = (at(sy + sx) - at(sy - sx) - at(-sy + sx) + at(-sy - sx)) / (4 * hy * hx)
    return np.stack([zz, yy, xx, zy, zx, yx], axis=1).astype(np.float64)


def symmetric_eigenvalues(h: np.ndarray) -> np.ndarray:
    """Eigenvalues (N, 3), descending, of symmetric 3x3 matrices given as (N, 6) (see :func:`hessian_at`).

    Closed form (trigonometric solution of the characteristic cubic), vectorised.
    """
    a, d, f, b, c, e = (h[:, i] for i in range(6))  # a=zz d=yy f=xx b=zy c=zx e=yx
    q = (a + d + f) / 3.0
    p1 = b * b + c * c + e * e
    p2 = (a - q) ** 2 + (d - q) ** 2 + (f - q) ** 2 + 2.0 * p1
    p = np.sqrt(p2 / 6.0)
    safe = np.where(p > 0, p, 1.0)
    a1, d1, f1 = (a - q) / safe, (d - q) / safe, (f - q) / safe
    b1, c1, e1 = b / safe, c / safe, e / safe
    det = a1 * (d1 * f1 - e1 * e1) - b1 * (b1 * f1 - e1 * c1) + c1 * (b1 * e1 - d1 * c1)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    return np.stack([l1, l2, l3], axis=1)


def blob_response(
    array: np.ndarray,
    index: np.ndarray,
    spacing_zyx: Sequence[float],
    sigmas_mm: Sequence[float],
    coarse_from: float = 2.0,
    smoothed: SmoothingCache | None = None,
) -> BlobResponse:
    """Best scale-normalised bright-blob measure over ``sigmas_mm`` at the flat indices ``index``.

    Args:
        array: HU volume (z, y, x).
        index: flat indices of the voxels to evaluate (not on the border).
        spacing_zyx: voxel size in mm.
        sigmas_mm: Gaussian scales in mm, ascending.
        coarse_from: scales of at least this many voxels (in every axis) run at half resolution.
        smoothed: cache of smoothed volumes, full and half resolution (read and filled).

    Returns:
        The response per voxel with its best scale and eigenvalue ratio.
    """
    n = index.size
    per_scale = np.zeros((len(sigmas_mm), n))
    ratio = np.zeros((len(sigmas_mm), n))
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    half: np.ndarray | None = None
    coarse_idx: np.ndarray | None = None
    for k, sigma in enumerate(sigmas_mm):
        coarse = bool(np.all(sigma / sp >= coarse_from)) and min(array.shape) >= 8
        if coarse:
            if half is None:
                half = _cached(smoothed, (0.0, True), lambda: half_resolution(array))
                coarse_idx = _coarse_index(index, array.shape, half.shape)
            assert coarse_idx is not None
            # the block means' own blur (0.25 voxel^2) is taken off the sigma
            blurred, half_sp = half_smoothed(array, float(sigma), spacing_zyx, smoothed)
            h = hessian_at(blurred, coarse_idx, half_sp)
        else:
            blurred = smoothed_copy(array, sigma, spacing_zyx, smoothed)
            h = hessian_at(blurred, index, spacing_zyx)
        if n == 0:
            continue
        lam = symmetric_eigenvalues(h)
        l1, l3 = lam[:, 0], lam[:, 2]
        per_scale[k] = sigma * sigma * np.maximum(0.0, -l1)
        ratio[k] = np.where(l3 < 0, np.clip(l1 / np.where(l3 < 0, l3, -1.0), 0.0, 1.0), 0.0)
    if n == 0:
        empty = np.zeros(0)
        return BlobResponse(index, empty, empty, empty)
    best = np.argmax(per_scale, axis=0)
    cols = np.arange(n)
    response = per_scale[best, cols]
    # parabolic interpolation of the best scale in log(sigma)
    logs = np.log(np.asarray(sigmas_mm, dtype=np.float64))
    sigma = np.exp(logs[best])
    inner = (best > 0) & (best < len(sigmas_mm) - 1)
    if inner.any():
        i = best[inner]
        c = cols[inner]
        y0, y1, y2 = per_scale[i - 1, c], per_scale[i, c], per_scale[i + 1, c]
        denom = y0 - 2 * y1 + y2
        shift = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
        step = 0.5 * (logs[i + 1] - logs[i - 1])
        sigma[inner] = np.exp(logs[i] + np.clip(shift, -0.5, 0.5) * step)
    return BlobResponse(index, response, sigma, ratio[best, cols])
