"""Benchmark multiplanar patch extraction: numba kernel vs a torch ``grid_sample`` baseline.

Target: at least 1,000 nine-view 64 x 64 patches per second on 2 CPU cores, from an
int16 volume in memory.

Both methods sample the same planes (``nodule.patches.plane_grids``) from the same
synthetic 512 x 512 x 240 int16 chest-sized volume (0.7 x 0.7 x 1.25 mm) and produce
the same clipped, scaled float32 patches; the baseline gets the volume as a float32
tensor prepared outside the timed region, and builds its sampling grid in torch inside it.
``torch_sample_only`` times ``grid_sample`` alone on grids built beforehand.
Two more numba lines: randomly rotated/scaled/shifted planes (``numba_augmented``) and
the same augmented planes sampled from cached 1 mm cubes (``numba_cubes_aug``, the
training path of ``nodule.patch_cache``). Wall time and process CPU time are reported;
on a shared machine the CPU-time rate is the steadier figure.

Usage::

    .venv/bin/python scripts/bench_patches.py [--n 1000] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numba
import numpy as np
import torch

from nodule.io import FILL_HU, Volume
from nodule.patch_cache import CacheConfig, extract_cubes, sample_cubes
from nodule.patches import (
    Augment,
    PatchConfig,
    extract_patches,
    plane_grids,
    random_frames,
    world_to_index_affine,
)

TARGET_PATCHES_PER_S = 1000.0


def synthetic_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> Volume:
    """A chest-sized int16 volume: air outside a body ellipse, soft tissue, noise."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((y - shape[1] / 2) / (0.4 * shape[1])) ** 2 + (
        (x - shape[2] / 2) / (0.45 * shape[2])
    ) ** 2
    array = np.where(body < 1, 40, -1000) + rng.normal(0, 30, shape) + 0 * z
    return Volume(
        array=array.astype(np.int16),
        spacing=(0.7, 0.7, 1.25),
        origin=(-179.0, -179.0, -300.0),
    )


def torch_grids(
    volume: Volume, centers: np.ndarray, config: PatchConfig, chunk: int = 256
) -> list[torch.Tensor]:
    """``grid_sample`` grids (1, P, H, W, 3) of the planes, ``chunk`` candidates each.

    The affine to normalised (x, y, z) coordinates is applied to each plane's origin
    and steps (3-vectors); the only full-size operation is adding a (P, 1, W, 3) column
    ramp to a (P, H, 1, 3) row ramp.
    """
    matrix, offset = world_to_index_affine(volume)
    size = np.array(volume.shape, dtype=np.float64)
    steps = torch.arange(config.size_px, dtype=torch.float32)
    grids = []
    for start in range(0, len(centers), chunk):
        origins, cols, rows = plane_grids(centers[start : start + chunk], config)
        o = torch.from_numpy(((2 * (origins @ matrix.T + offset) / (size - 1) - 1)[:, ::-1]).copy())
        c = torch.from_numpy((2 * (cols @ matrix.T) / (size - 1))[:, ::-1].copy())
        r = torch.from_numpy((2 * (rows @ matrix.T) / (size - 1))[:, ::-1].copy())
        o, c, r = o.float(), c.float(), r.float()
        column_ramp = o[:, None, None, :] + steps[None, None, :, None] * c[:, None, None, :]
        grid = column_ramp + steps[None, :, None, None] * r[:, None, None, :]
        grids.append(grid[None])
    return grids


def torch_grid_sample(
    volume_t: torch.Tensor, grids: list[torch.Tensor], config: PatchConfig
) -> np.ndarray:
    """The baseline: ``grid_sample`` (trilinear, align_corners=True) over each grid.

    ``volume_t`` is the (1, 1, Z, Y, X) float32 tensor of ``HU - FILL_HU``, so that
    zero padding reads ``FILL_HU``.
    """
    out = []
    for grid in grids:
        sampled = torch.nn.functional.grid_sample(
            volume_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0, 0]
        hu = sampled + FILL_HU
        scaled = (hu.clamp(config.hu_min, config.hu_max) - config.hu_min) * config.gain
        out.append((scaled + config.out_min).numpy())
    return np.concatenate(out).reshape(-1, config.n_views, config.size_px, config.size_px)


def timed(
    fn: Callable[[], np.ndarray], repeats: int
) -> tuple[list[float], list[float], np.ndarray]:
    """Wall and CPU seconds per call for ``repeats`` calls after a warm-up call, and the last result."""
    result = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print patches/s and samples/s for both methods."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="candidates per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--views", type=int, default=9, choices=(1, 3, 9))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cubes", type=int, default=128, help="distinct cached cubes")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--strict", action="store_true", help="exit 1 below the target")
    args = parser.parse_args(argv)

    numba.set_num_threads(min(args.threads, numba.get_num_threads()))
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    volume = synthetic_volume(rng, (240, 512, 512))
    config = PatchConfig(n_views=args.views)
    inner = np.array(volume.shape)[::-1] * np.array(volume.spacing)  # extent (x, y, z) mm
    centers = np.array(volume.origin) + rng.uniform(0.15, 0.85, (args.n, 3)) * inner
    samples = args.n * config.n_views * config.size_px**2

    print(
        f"{args.n} candidates x {config.n_views} views x {config.size_px}^2 px, volume "
        f"{volume.shape} int16, threads={args.threads}, repeats={args.repeats}"
    )
    results: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    frames = random_frames(args.n, config, Augment(), rng)
    cache = CacheConfig(patch=config)
    cubes = extract_cubes(volume, centers[: args.cubes], cache.cube_size, cache.cube_spacing_mm)
    cube_batch = cubes[np.arange(args.n) % len(cubes)]
    methods: dict[str, Callable[[], np.ndarray]] = {
        "numba": lambda: extract_patches(volume, centers, config),
        "numba_augmented": lambda: extract_patches(volume, centers, config, frames),
        "numba_cubes_aug": lambda: sample_cubes(cube_batch, cache.cube_spacing_mm, config, frames),
    }
    if not args.skip_torch:
        volume_t = torch.from_numpy(volume.array.astype(np.float32) - FILL_HU)[None, None]
        prebuilt = torch_grids(volume, centers, config)
        methods["torch_grid_sample"] = lambda: torch_grid_sample(
            volume_t, torch_grids(volume, centers, config), config
        )
        methods["torch_sample_only"] = lambda: torch_grid_sample(volume_t, prebuilt, config)
    for name, fn in methods.items():
        wall, cpu, results[name] = timed(fn, args.repeats)
        median = statistics.median(wall)
        cpu_median = statistics.median(cpu)
        rates[name] = args.n / median
        print(
            f"{name:>18}: median {median * 1e3:8.1f} ms  {rates[name]:7.0f} patches/s  "
            f"{samples / median / 1e6:6.1f} M samples/s  (best {args.n / min(wall):.0f} "
            f"patches/s; {args.n / cpu_median:.0f} patches per CPU-second)"
        )
    if "torch_grid_sample" in results:
        diff = np.abs(results["numba"] - results["torch_grid_sample"]).max()
        print(f"max |numba - grid_sample| = {diff:.2e} (scaled units)")
        print(f"speed-up over grid_sample: {rates['numba'] / rates['torch_grid_sample']:.2f}x")
    ok = rates["numba"] >= TARGET_PATCHES_PER_S
    print(f"target >= {TARGET_PATCHES_PER_S:.0f} patches/s: {'met' if ok else 'NOT met'}")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
