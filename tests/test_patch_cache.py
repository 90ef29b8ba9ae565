"""Patch cache: bytes, round trip, resume after interruption, concurrent builders, cube
sampling vs direct sampling."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nodule.io import Volume
from nodule.patch_cache import (
    INDEX_COLUMNS,
    CacheConfig,
    CacheIndex,
    ScanLoader,
    build_patch_cache,
    cache_lock,
    resampled_views,
    sample_cubes,
    sample_from_cube,
    scan_file_name,
)
from nodule.patches import Augment, PatchConfig, extract_patches, random_frames

PATCH = PatchConfig(n_views=9, size_px=16, fov_mm=20.0)
CONFIG = CacheConfig(patch=PATCH, cube_spacing_mm=0.8)


def smooth_scan(seed: int) -> tuple[Volume, pd.DataFrame]:
    """An anisotropic int16 scan of smooth blobs, and candidates (blob centres positive)."""
    rng = np.random.default_rng(seed)
    shape, spacing = (30, 70, 70), (0.7, 0.7, 1.5)
    volume = Volume(array=np.zeros(shape, np.int16), spacing=spacing, origin=(-20.0, 5.0, -40.0))
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).reshape(-1, 3)
    world = volume.voxel_to_world(index)
    middle = volume.voxel_to_world((np.array(shape) - 1) / 2)[0]
    blobs = middle + rng.uniform(-8, 8, (2, 3))
    hu = np.full(len(world), -900.0)
    for blob in blobs:
        hu += 1000 * np.exp(-((world - blob) ** 2).sum(1) / (2 * 4.0**2))
    volume = volume.with_array(hu.reshape(shape).astype(np.int16))
    negatives = middle + rng.uniform(-10, 10, (4, 3))
    centers = np.concatenate([blobs, negatives])
    table = pd.DataFrame(centers, columns=["coordX", "coordY", "coordZ"])
    table["label"] = [1, 1, 0, 0, 0, 0]
    table.insert(0, "seriesuid", f"1.2.{seed}")
    return volume, table


def make_dataset() -> tuple[dict[str, Volume], pd.DataFrame]:
    """Three small scans and their candidates (ids from 100)."""
    scans = [smooth_scan(seed) for seed in range(3)]
    candidates = pd.concat([t for _, t in scans], ignore_index=True)
    candidates.index = candidates.index + 100  # ids need not start at 0
    return {v_t[1]["seriesuid"].iloc[0]: v_t[0] for v_t in scans}, candidates


@pytest.fixture(scope="module")
def dataset() -> tuple[dict[str, Volume], pd.DataFrame]:
    return make_dataset()


def loaders(
    volumes: dict[str, Volume], calls: list[str], fail: str | None = None
) -> list[tuple[str, ScanLoader]]:
    """Loaders of the volumes that record their calls in ``calls`` (and fail for ``fail``)."""

    def make(uid: str) -> ScanLoader:
        def load() -> Volume:
            calls.append(uid)
            if uid == fail:
                raise RuntimeError(f"cannot read {uid}")
            return volumes[uid]

        return load

    return [(uid, make(uid)) for uid in volumes]


def test_cube_size_and_bytes() -> None:
    default = CacheConfig()
    assert default.cube_size == 85 and default.cube_nbytes == 85**3 * 2
    assert default.patch_nbytes == 9 * 64 * 64 * 2
    assert default.nbytes(15_000, 150) == 15_000 * 73_728 + 150 * 1_228_250
    # The cube holds every corner of every allowed plane plus the trilinear stencil.
    corner = 31.5 * 50 / 64 * np.sqrt(2) * 1.1 + 2.0
    assert (default.cube_size - 1) / 2 - 1 >= corner / default.cube_spacing_mm


def test_round_trip(tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]) -> None:
    volumes, candidates = dataset
    index = build_patch_cache(loaders(volumes, []), candidates, tmp_path, CONFIG, progress=False)
    assert list(index.table.columns) == list(INDEX_COLUMNS) and len(index) == len(candidates)
    reopened = CacheIndex.load(tmp_path)
    pd.testing.assert_frame_equal(reopened.table, index.table, check_dtype=False)
    assert reopened.config == CONFIG
    np.testing.assert_array_equal(reopened.table["candidate_id"], candidates.index)
    np.testing.assert_array_equal(reopened.table["label"], candidates["label"])
    assert (reopened.table["cube_row"] >= 0).sum() == (candidates["label"] == 1).sum()

    uid = reopened.series_uids[1]
    scan = reopened.scan(uid)
    rows = candidates[candidates["seriesuid"] == uid]
    centers = rows[["coordX", "coordY", "coordZ"]].to_numpy()
    np.testing.assert_array_equal(scan.centers, centers)
    # Stored views are rounded HU of the views made through an isotropic cube ...
    assert np.abs(scan.patches_hu - resampled_views(volumes[uid], centers, CONFIG)).max() <= 0.5
    # ... which are those of the stored cubes, and close to direct sampling.
    positives = np.flatnonzero(scan.labels == 1)
    from_cubes = scan.sample(positives, PATCH, None)
    np.testing.assert_allclose(
        scan.patches(PATCH)[positives], from_cubes, atol=0.5 * PATCH.gain + 1e-6
    )
    direct_hu = extract_patches(volumes[uid], centers, PATCH, scaled=False)
    assert np.abs(scan.patches_hu - direct_hu).mean() < 3.0
    # The HU window is applied when reading.
    window = PatchConfig(n_views=9, size_px=16, fov_mm=20.0, hu_min=-500, hu_max=200, out_min=-1)
    np.testing.assert_allclose(
        scan.patches(window), np.clip((scan.patches_hu + 500) / 350 - 1, -1, 1), atol=1e-6
    )


def test_views_straight_from_the_scan(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    config = CacheConfig(patch=PATCH, views_via_cube=False, cubes_for="none", compress=True)
    index = build_patch_cache(loaders(volumes, []), candidates, tmp_path, config, progress=False)
    uid = index.series_uids[2]
    scan = index.scan(uid)
    direct_hu = extract_patches(volumes[uid], scan.centers, PATCH, scaled=False)
    assert np.abs(scan.patches_hu - direct_hu).max() <= 0.5
    assert scan.cubes.shape == (0, config.cube_size, config.cube_size, config.cube_size)
    assert (index.table["cube_row"] == -1).all()


def test_cube_sampling_matches_direct_sampling(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    index = build_patch_cache(loaders(volumes, []), candidates, tmp_path, CONFIG, progress=False)
    uid = index.series_uids[0]
    scan = index.scan(uid)
    positives = np.flatnonzero(scan.labels == 1)
    frames = random_frames(len(positives), PATCH, Augment(), np.random.default_rng(0))
    from_cubes = scan.sample(positives, PATCH, frames)
    direct = extract_patches(volumes[uid], scan.centers[positives], PATCH, frames)
    # Resampling to 0.8 mm and sampling again differs from one interpolation by a little.
    assert np.abs(from_cubes - direct).max() < 0.02  # 28 HU of the 1400 HU window
    assert np.abs(from_cubes - direct).mean() < 0.002
    # One cube at a time (a Volume) gives the same views as the batched call.
    single = sample_from_cube(scan.cube(int(positives[1])), PATCH, frames[1])
    np.testing.assert_allclose(single, from_cubes[1], atol=1e-5)
    with pytest.raises(KeyError):
        scan.cube(int(np.flatnonzero(scan.labels == 0)[0]))


def test_planes_beyond_the_cube_are_refused() -> None:
    cubes = np.zeros((2, CONFIG.cube_size, CONFIG.cube_size, CONFIG.cube_size), np.int16)
    rng = np.random.default_rng(1)
    allowed = random_frames(2, PATCH, Augment(scale_range=(1.1, 1.1), shift_mm=2.0), rng)
    assert sample_cubes(cubes, CONFIG.cube_spacing_mm, PATCH, allowed).shape == (2, 9, 16, 16)
    too_big = random_frames(2, PATCH, Augment(scale_range=(1.5, 1.5)), rng)
    with pytest.raises(ValueError, match="cube"):
        sample_cubes(cubes, CONFIG.cube_spacing_mm, PATCH, too_big)


def test_interrupted_build_resumes(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    uids = list(volumes)
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="cannot read"):
        build_patch_cache(
            loaders(volumes, calls, fail=uids[2]), candidates, tmp_path, CONFIG, progress=False
        )
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock")
    assert files == sorted(["cache.json", scan_file_name(uids[0]), scan_file_name(uids[1])])

    calls.clear()
    index = build_patch_cache(
        loaders(volumes, calls), candidates, tmp_path, CONFIG, jobs=2, progress=False
    )
    assert calls == [uids[2]]  # complete scans are not loaded again
    assert index.series_uids == uids and len(index) == len(candidates)

    fresh = build_patch_cache(
        loaders(volumes, []), candidates, tmp_path / "fresh", CONFIG, progress=False
    )
    for uid in uids:
        np.testing.assert_array_equal(index.scan(uid).patches_hu, fresh.scan(uid).patches_hu)
        np.testing.assert_array_equal(index.scan(uid).cubes, fresh.scan(uid).cubes)

    # Changed candidates of one scan: only that scan is rebuilt.
    moved = candidates.copy()
    moved.loc[moved["seriesuid"] == uids[0], "coordX"] += 1.0
    calls.clear()
    build_patch_cache(loaders(volumes, calls), moved, tmp_path, CONFIG, progress=False)
    assert calls == [uids[0]]
    relabelled = moved.copy()
    relabelled.loc[relabelled["seriesuid"] == uids[1], "label"] = 0
    calls.clear()
    index = build_patch_cache(loaders(volumes, calls), relabelled, tmp_path, CONFIG, progress=False)
    assert calls == [uids[1]]
    assert index.scan(uids[1]).cubes.shape[0] == 0


def test_another_config_is_refused(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    small = candidates[candidates["seriesuid"] == next(iter(volumes))]
    build_patch_cache(loaders(volumes, []), small, tmp_path, CONFIG, progress=False)
    other = CacheConfig(patch=PatchConfig(n_views=3, size_px=16, fov_mm=20.0), cube_spacing_mm=0.8)
    with pytest.raises(ValueError, match="another folder"):
        build_patch_cache(loaders(volumes, []), small, tmp_path, other, progress=False)


def test_views_via_cube_is_part_of_the_cache_key(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    small = candidates[candidates["seriesuid"] == next(iter(volumes))]
    build_patch_cache(loaders(volumes, []), small, tmp_path, CONFIG, progress=False)
    direct = CacheConfig(patch=PATCH, cube_spacing_mm=0.8, views_via_cube=False)
    assert direct.fingerprint() != CONFIG.fingerprint()
    calls: list[str] = []
    with pytest.raises(ValueError, match=r"views_via_cube: true -> false") as info:
        build_patch_cache(loaders(volumes, calls), small, tmp_path, direct, progress=False)
    assert str(tmp_path) in str(info.value) and not calls
    with pytest.raises(ValueError, match="views_via_cube"):
        CacheIndex.load(tmp_path, expected=direct)
    assert len(CacheIndex.load(tmp_path, expected=CONFIG)) == len(small)
    # the HU window and compression do not shape the stored arrays: the same cache
    window = CacheConfig(
        patch=PatchConfig(n_views=9, size_px=16, fov_mm=20, hu_min=-500.0), cube_spacing_mm=0.8, compress=True
    )
    assert window.fingerprint() == CONFIG.fingerprint()
    build_patch_cache(loaders(volumes, calls), small, tmp_path, window, progress=False)
    assert not calls


def test_scan_file_names_are_sanitised() -> None:
    assert scan_file_name("1.3.6.1.4.1.14519") == "1.3.6.1.4.1.14519.npz"
    odd = scan_file_name("../a b/c")
    assert "/" not in odd and " " not in odd and odd.endswith(".npz")
    assert scan_file_name("a/b") != scan_file_name("a_b")


def build_in_child(root: str, out_dir: str, barrier: Any, delay_s: float) -> None:
    """Build the test cache at ``root`` after ``barrier`` (run in a spawned process).

    Every scan load is logged to ``out_dir/loads-<pid>.txt`` (and takes ``delay_s``
    longer, so that the two builders overlap); the returned table goes to
    ``out_dir/table-<pid>.csv``.
    """
    volumes, candidates = make_dataset()
    log = Path(out_dir) / f"loads-{os.getpid()}.txt"

    def make(uid: str) -> ScanLoader:
        def load() -> Volume:
            with log.open("a") as f:
                f.write(uid + "\n")
            time.sleep(delay_s)
            return volumes[uid]

        return load

    barrier.wait(timeout=120)
    index = build_patch_cache(
        [(uid, make(uid)) for uid in volumes], candidates, root, CONFIG, progress=False
    )
    index.table.to_csv(Path(out_dir) / f"table-{os.getpid()}.csv", index=False)


def test_concurrent_builds_share_one_cache(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    root, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=build_in_child, args=(str(root), str(out), barrier, 0.3))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(timeout=300)
        assert [w.exitcode for w in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()

    # Every scan was loaded once: the second builder waited and found the cache complete.
    loads = [line for f in sorted(out.glob("loads-*.txt")) for line in f.read_text().split()]
    assert sorted(loads) == sorted(volumes)
    tables = [pd.read_csv(f, dtype={"seriesuid": str}) for f in sorted(out.glob("table-*.csv"))]
    assert len(tables) == 2
    pd.testing.assert_frame_equal(tables[0], tables[1])
    index = CacheIndex.load(root)
    pd.testing.assert_frame_equal(index.table, tables[0], check_dtype=False)
    assert index.series_uids == list(volumes) and len(index) == len(candidates)
    np.testing.assert_array_equal(index.table["candidate_id"], candidates.index)
    assert not list(root.glob("*.part"))

    fresh = build_patch_cache(
        loaders(volumes, []), candidates, tmp_path / "fresh", CONFIG, progress=False
    )
    for uid in volumes:
        np.testing.assert_array_equal(index.scan(uid).patches_hu, fresh.scan(uid).patches_hu)
        np.testing.assert_array_equal(index.scan(uid).cubes, fresh.scan(uid).cubes)


def test_a_build_waits_for_the_lock(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    small = candidates[candidates["seriesuid"] == next(iter(volumes))]
    calls: list[str] = []
    results: list[CacheIndex] = []
    builder = threading.Thread(
        target=lambda: results.append(
            build_patch_cache(loaders(volumes, calls), small, tmp_path, CONFIG, progress=False)
        )
    )
    with cache_lock(tmp_path):  # another holder (flock locks conflict between open files)
        builder.start()
        builder.join(timeout=1.0)
        assert builder.is_alive() and not calls  # waiting, nothing built
    builder.join(timeout=120)
    assert not builder.is_alive() and len(results) == 1 and len(results[0]) == len(small)


def test_index_keeps_the_scans_of_other_builds(
    tmp_path: Path, dataset: tuple[dict[str, Volume], pd.DataFrame]
) -> None:
    volumes, candidates = dataset
    uids = list(volumes)
    first = candidates[candidates["seriesuid"].isin(uids[:2])]
    second = candidates[candidates["seriesuid"].isin(uids[1:])]
    build_patch_cache(loaders(volumes, []), first, tmp_path, CONFIG, progress=False)
    calls: list[str] = []
    index = build_patch_cache(loaders(volumes, calls), second, tmp_path, CONFIG, progress=False)
    assert calls == [uids[2]]  # the shared scan is not built again
    assert index.series_uids == uids[1:]  # what this build asked for ...
    on_disk = CacheIndex.load(tmp_path)  # ... while index.csv lists every scan
    assert set(on_disk.series_uids) == set(uids) and len(on_disk) == len(candidates)
    assert on_disk.table["candidate_id"].is_unique
    table = on_disk.table.set_index("candidate_id").loc[first.index]
    np.testing.assert_allclose(table[["coordX", "coordY", "coordZ"]], first.iloc[:, 1:4], atol=1e-5)
    # A scan whose file is gone leaves the index on the next build.
    (tmp_path / scan_file_name(uids[0])).unlink()
    build_patch_cache(loaders(volumes, []), second, tmp_path, CONFIG, progress=False)
    assert CacheIndex.load(tmp_path).series_uids == uids[1:]
