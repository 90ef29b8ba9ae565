"""A patch cache, so that training epochs read small arrays instead of CT volumes.

For every candidate the cache keeps its fixed (unaugmented) multiplanar views as
int16 HU (``n_views x size_px x size_px``; the HU window is applied when reading, so
one cache serves any ``hu_min/hu_max``). For the positives (by default) it also keeps
an isotropic int16 cube of HU centred on the candidate, large enough that every
rotated, scaled and shifted plane of :class:`~nodule.patches.Augment` stays inside it,
so augmentation still samples new planes (with the same kernel,
:func:`~nodule.patches.extract_patches`: a cube is just a small isotropic volume).

Cube side: the farthest sample of a view lies ``(size_px - 1) / 2 * pixel_mm * sqrt(2)``
from the plane centre (a corner); times ``max_scale``, plus ``max_shift_mm``, plus
one voxel for the trilinear stencil, on each side of the centre voxel. With the
defaults (50 mm / 64 px views, scale <= 1.1, shift <= 2 mm, 1 mm voxels) that is
85^3 voxels = 1,228,250 bytes per cube (0.8 mm voxels: 105^3 = 2,315,250 bytes); the
nine views take 9 x 64 x 64 x 2 = 73,728 bytes per candidate. A data set of
100 scans x 150 candidates with ~1.5 positives per scan (LUNA16's rate is lower) is
15,000 x 73,728 + 150 x 1,228,250 = 1.29 GB uncompressed (:meth:`CacheConfig.nbytes`).

Layout under ``out_dir``:

* ``cache.json``: the :class:`CacheConfig` the files were built with, and the
  fingerprint of its settings that shape the arrays (:meth:`CacheConfig.content_params`,
  :mod:`nodule.fingerprint`); a build or read with other such settings is refused;
* ``<series uid>.npz``: one per scan (file name sanitised), arrays ``candidate_id``
  (N,), ``centers`` (N, 3) world mm, ``labels`` (N,), ``patches`` (N, V, H, W) int16
  HU, ``cube_rows`` (M,) the rows with a cube, ``cubes`` (M, S, S, S) int16 HU in
  (z, y, x) with world-aligned axes (identity direction);
* ``index.csv``: one row per candidate: ``candidate_id, seriesuid, coordX, coordY,
  coordZ, label, file, row, cube_row`` (``cube_row`` -1 when there is no cube).

* ``.lock``: an empty file that builders lock (``fcntl.flock``) while they write.

Building resumes: a scan file appears only once complete (written to a ``.part``
file, then renamed), and a rerun skips scans whose file holds the same candidates.

Concurrent builders (e.g. two training runs started together on one data set) are
safe: a builder holds an exclusive lock on ``.lock`` while it writes, so a second one
waits, then finds the first one's scan files complete and builds only what is still
missing. ``index.csv`` is replaced atomically and lists every complete scan file of the
folder, the ones another builder asked for included, so no builder's index hides the
scans of another. Readers (:meth:`CacheIndex.load`) take no lock: every file they read
is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm import tqdm

from nodule.fingerprint import check_fingerprint, fingerprint
from nodule.io import Volume
from nodule.patches import PatchConfig, PlaneFrames, extract_patches, sample_planes, scale_hu
from nodule.paths import write_text_atomic

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - not POSIX (the project runs on Linux)
    _fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CONFIG_FILE = "cache.json"
INDEX_FILE = "index.csv"
LOCK_FILE = ".lock"
INDEX_COLUMNS = (
    "candidate_id",
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "label",
    "file",
    "row",
    "cube_row",
)
"""Columns of ``index.csv``."""

ScanLoader = Callable[[], Volume]
"""Loads one scan when called (e.g. ``lambda: read_volume(path)``)."""


@dataclass(frozen=True)
class CacheConfig:
    """What the cache stores.

    Attributes:
        patch: view geometry of the stored patches (its HU window is only a default
            for reading; patches are stored as HU).
        cube_spacing_mm: voxel size of the isotropic cubes.
        max_scale: largest augmentation scale factor the cubes must allow.
        max_shift_mm: largest augmentation shift the cubes must allow.
        cubes_for: which candidates get a cube: "positives" (label 1), "all" or "none".
        views_via_cube: make the stored views the way views of cubes are made
            (resample an isotropic cube, then sample the planes), so that stored views
            and cube-sampled ones share the same interpolation blur and a classifier
            cannot tell positives from negatives by it; False samples them straight
            from the scan (sharper, 15x less work to build).
        compress: store the scan files zip-compressed (smaller, slower to read).
    """

    patch: PatchConfig = field(default_factory=PatchConfig)
    cube_spacing_mm: float = 1.0
    max_scale: float = 1.1
    max_shift_mm: float = 2.0
    cubes_for: Literal["positives", "all", "none"] = "positives"
    views_via_cube: bool = True
    compress: bool = False

    def __post_init__(self) -> None:
        if self.cube_spacing_mm <= 0 or self.max_scale <= 0 or self.max_shift_mm < 0:
            raise ValueError("cube_spacing_mm and max_scale must be > 0, max_shift_mm >= 0")
        if self.cubes_for not in ("positives", "all", "none"):
            raise ValueError(f"cubes_for must be positives, all or none, got {self.cubes_for!r}")

    @property
    def cube_radius_mm(self) -> float:
        """Farthest distance from the candidate that augmented planes may sample, mm."""
        corner = (self.patch.size_px - 1) / 2 * self.patch.pixel_mm * math.sqrt(2.0)
        return corner * self.max_scale + self.max_shift_mm

    @property
    def cube_size(self) -> int:
        """Voxels per side of a cube (odd: the candidate is the centre voxel)."""
        return 2 * math.ceil(self.cube_radius_mm / self.cube_spacing_mm + 1) + 1

    @property
    def patch_nbytes(self) -> int:
        """Bytes of one candidate's stored views."""
        return 2 * self.patch.n_views * self.patch.size_px**2

    @property
    def cube_nbytes(self) -> int:
        """Bytes of one cube."""
        return 2 * self.cube_size**3

    def nbytes(self, n_candidates: int, n_cubes: int) -> int:
        """Uncompressed bytes of the arrays for ``n_candidates`` of which ``n_cubes`` have cubes."""
        return n_candidates * self.patch_nbytes + n_cubes * self.cube_nbytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``cache.json`` holds, with the :meth:`fingerprint`)."""
        return {**asdict(self), "cube_size": self.cube_size, "fingerprint": self.fingerprint()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheConfig:
        """The inverse of :meth:`to_json`."""
        values = {k: v for k, v in data.items() if k not in _DERIVED}
        return cls(**{**values, "patch": PatchConfig(**values["patch"])})

    def content_params(self) -> dict[str, Any]:
        """Every setting that shapes the stored arrays (the HU window and ``compress`` do not).

        ``max_scale`` and ``max_shift_mm`` shape them only through ``cube_size``, so
        configs that differ only there share a cache.
        """
        p = self.patch
        return {
            "n_views": p.n_views,
            "size_px": p.size_px,
            "fov_mm": float(p.fov_mm),
            "cube_spacing_mm": float(self.cube_spacing_mm),
            "cube_size": self.cube_size,
            "cubes_for": self.cubes_for,
            "views_via_cube": bool(self.views_via_cube),
        }

    def fingerprint(self) -> str:
        """The fingerprint of :meth:`content_params` (two configs with equal ones share a cache)."""
        return fingerprint(self.content_params())


_DERIVED = ("cube_size", "fingerprint")
"""Keys of ``cache.json`` that :meth:`CacheConfig.to_json` derives from the config."""


def scan_file_name(series_uid: str) -> str:
    """The cache file name of a scan: the id with unsafe characters replaced (plus a hash if any were)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", series_uid).strip(".") or "scan"
    if safe != series_uid:
        safe += "-" + hashlib.sha1(series_uid.encode()).hexdigest()[:8]
    return safe + ".npz"


def cube_volume(cube: np.ndarray, center_xyz: Sequence[float], spacing_mm: float) -> Volume:
    """A cube array (S, S, S) as a world-aligned isotropic volume centred on ``center_xyz``."""
    size = cube.shape[0]
    origin = np.asarray(center_xyz, dtype=np.float64) - (size - 1) / 2 * spacing_mm
    return Volume(
        array=cube,
        spacing=(spacing_mm, spacing_mm, spacing_mm),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
    )


def extract_cubes(
    volume: Volume, centers_xyz: np.ndarray, size: int, spacing_mm: float
) -> np.ndarray:
    """Isotropic world-aligned cubes around points, resampled trilinearly (fill -1024 outside).

    Args:
        volume: the CT volume.
        centers_xyz: (M, 3) world mm; each becomes the centre voxel of its cube.
        size: voxels per side (odd).
        spacing_mm: voxel size.

    Returns:
        (M, S, S, S) int16 HU, (z, y, x).
    """
    centers = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    half = (size - 1) / 2 * spacing_mm
    # Slice k of cube m is a plane: columns along +x, rows along +y, offset along +z.
    k = np.arange(size)
    origins = (centers - half)[:, None, :] + (k * spacing_mm)[None, :, None] * np.array([0, 0, 1.0])
    n = origins.shape[0] * size
    cols = np.broadcast_to(np.array([spacing_mm, 0, 0]), (n, 3))
    rows = np.broadcast_to(np.array([0, spacing_mm, 0]), (n, 3))
    planes = sample_planes(volume, origins.reshape(-1, 3), cols, rows, (size, size))
    return _to_int16(planes).reshape(-1, size, size, size)


def _to_int16(hu: np.ndarray) -> np.ndarray:
    rounded: np.ndarray = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    return rounded


def _check_extent(
    frames: PlaneFrames | None, config: PatchConfig, cube_size: int, spacing: float
) -> None:
    if frames is None:
        frames_extent = (config.size_px - 1) / 2 * config.pixel_mm * math.sqrt(2.0)
    else:
        frames_extent = frames.max_extent_mm(config)
    room = ((cube_size - 1) / 2 - 1) * spacing
    if frames_extent > room + 1e-9:
        raise ValueError(
            f"the planes reach {frames_extent:.1f} mm from the centre but the cube only allows "
            f"{room:.1f} mm; build the cache with a larger max_scale/max_shift_mm"
        )


def sample_from_cube(
    cube: Volume, config: PatchConfig, frame: PlaneFrames | None = None, scaled: bool = True
) -> np.ndarray:
    """The views of the candidate at the centre of a cube (e.g. :meth:`CachedScan.cube`).

    Args:
        cube: an isotropic cube volume centred on the candidate (odd side).
        config: patch geometry and HU scaling.
        frame: orientation/shift of one candidate (``len(frame) == 1``); None for the
            standard views.
        scaled: apply the HU window (False: HU).

    Returns:
        (V, H, W) float32.

    Raises:
        ValueError: the planes would leave the cube.
    """
    size = cube.shape[0]
    _check_extent(frame, config, size, cube.spacing[0])
    center = cube.voxel_to_world(np.full(3, (size - 1) / 2))
    views: np.ndarray = extract_patches(cube, center, config, frame, scaled=scaled)[0]
    return views


def sample_cubes(
    cubes: np.ndarray,
    spacing_mm: float,
    config: PatchConfig,
    frames: PlaneFrames | None = None,
    scaled: bool = True,
) -> np.ndarray:
    """The views of many cube-centred candidates in one kernel call.

    The cubes are stacked along z into one volume; planes never reach a cube's
    border (checked), so no stencil reads a neighbouring cube.

    Args:
        cubes: (M, S, S, S) int16 cubes (S odd), as stored in the cache.
        spacing_mm: their voxel size.
        config: patch geometry and HU scaling.
        frames: M candidates' orientations/shifts; None for the standard views.
        scaled: apply the HU window (False: HU).

    Returns:
        (M, V, H, W) float32.

    Raises:
        ValueError: the planes would leave the cubes.
    """
    m, size = cubes.shape[0], cubes.shape[1]
    _check_extent(frames, config, size, spacing_mm)
    stacked = Volume(
        array=np.ascontiguousarray(cubes).reshape(m * size, size, size),
        spacing=(spacing_mm, spacing_mm, spacing_mm),
        origin=(0.0, 0.0, 0.0),
    )
    middle = (size - 1) / 2
    centers = (
        np.stack([np.full(m, middle), np.full(m, middle), np.arange(m) * size + middle], axis=1)
        * spacing_mm
    )
    return extract_patches(stacked, centers, config, frames, scaled=scaled)


def resampled_views(
    volume: Volume, centers_xyz: npt.ArrayLike, config: CacheConfig, chunk: int = 32
) -> np.ndarray:
    """Standard views made as cube views are: resample an isotropic cube, sample its planes.

    This is how the cache makes its stored views when ``config.views_via_cube``; use
    it wherever views must look like those of the cache (the cubes here are only as
    large as unaugmented planes need, so they are smaller than the stored ones).

    Args:
        volume: the CT volume.
        centers_xyz: (N, 3) candidate positions, world mm (x, y, z).
        config: the cache config (view geometry and cube spacing).
        chunk: candidates resampled at a time (bounds the memory: ``chunk`` cubes).

    Returns:
        (N, V, H, W) float32 HU.
    """
    centers = np.asarray(centers_xyz, dtype=np.float64).reshape(-1, 3)
    patch = config.patch
    corner = (patch.size_px - 1) / 2 * patch.pixel_mm * math.sqrt(2.0)
    size = 2 * math.ceil(corner / config.cube_spacing_mm + 1) + 1
    out = np.empty((len(centers), patch.n_views, patch.size_px, patch.size_px), np.float32)
    for start in range(0, len(centers), chunk):
        part = centers[start : start + chunk]
        cubes = extract_cubes(volume, part, size, config.cube_spacing_mm)
        out[start : start + len(part)] = sample_cubes(
            cubes, config.cube_spacing_mm, patch, scaled=False
        )
    return out


@dataclass(frozen=True)
class CachedScan:
    """One scan's cached arrays (see the module doc for their meaning)."""

    series_uid: str
    candidate_ids: np.ndarray
    centers: np.ndarray
    labels: np.ndarray
    patches_hu: np.ndarray
    cube_rows: np.ndarray
    cubes: np.ndarray
    config: CacheConfig

    @classmethod
    def load(cls, path: str | os.PathLike[str], series_uid: str, config: CacheConfig) -> CachedScan:
        """Read a scan file written by :func:`build_patch_cache`."""
        with np.load(path) as data:
            return cls(
                series_uid=series_uid,
                candidate_ids=data["candidate_id"],
                centers=data["centers"],
                labels=data["labels"],
                patches_hu=data["patches"],
                cube_rows=data["cube_rows"],
                cubes=data["cubes"],
                config=config,
            )

    def __len__(self) -> int:
        return int(self.candidate_ids.shape[0])

    def patches(self, config: PatchConfig | None = None) -> np.ndarray:
        """The fixed views, HU-windowed: (N, V, H, W) float32 (default window: the cache's)."""
        return scale_hu(self.patches_hu, config or self.config.patch)

    def cube_index(self, row: int) -> int:
        """Index into :attr:`cubes` of candidate ``row``; KeyError if it has none."""
        hits = np.flatnonzero(self.cube_rows == row)
        if hits.size == 0:
            raise KeyError(f"candidate row {row} of {self.series_uid} has no cube")
        return int(hits[0])

    def cube(self, row: int) -> Volume:
        """The cube of candidate ``row`` as a volume centred on it."""
        return cube_volume(
            self.cubes[self.cube_index(row)], self.centers[row], self.config.cube_spacing_mm
        )

    def sample(
        self, rows: npt.ArrayLike, config: PatchConfig, frames: PlaneFrames | None = None
    ) -> np.ndarray:
        """New views of candidates with cubes (e.g. augmented frames).

        Args:
            rows: candidate rows (in this scan) that have cubes.
            config: patch geometry and HU window.
            frames: their orientations/shifts (e.g. :func:`~nodule.patches.random_frames`);
                None for the standard views.

        Returns:
            (len(rows), V, H, W) float32.
        """
        index = [self.cube_index(int(r)) for r in np.atleast_1d(np.asarray(rows))]
        return sample_cubes(self.cubes[index], self.config.cube_spacing_mm, config, frames)


@dataclass(frozen=True)
class CacheIndex:
    """A built cache: its folder, config and ``index.csv`` table."""

    root: Path
    config: CacheConfig
    table: pd.DataFrame

    @classmethod
    def load(cls, root: str | os.PathLike[str], expected: CacheConfig | None = None) -> CacheIndex:
        """Open a cache folder written by :func:`build_patch_cache`.

        Args:
            root: the cache folder.
            expected: the config the caller reads with; if given, the folder must have
                been built with its content settings (:func:`check_config`).

        Raises:
            FileNotFoundError: no cache there.
            FingerprintMismatch: built with other content settings than ``expected``.
        """
        path = Path(root)
        if expected is not None:
            check_config(path, expected)
        config = CacheConfig.from_json(json.loads((path / CONFIG_FILE).read_text()))
        table = pd.read_csv(path / INDEX_FILE, dtype={"seriesuid": str, "file": str})
        return cls(root=path, config=config, table=table)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def series_uids(self) -> list[str]:
        """The scans in the cache, in index order."""
        return list(dict.fromkeys(self.table["seriesuid"]))

    def scan(self, series_uid: str) -> CachedScan:
        """Read one scan's arrays."""
        rows = self.table[self.table["seriesuid"] == series_uid]
        if rows.empty:
            raise KeyError(f"{series_uid} is not in the cache at {self.root}")
        return CachedScan.load(self.root / rows["file"].iloc[0], series_uid, self.config)


def cache_scan_arrays(
    volume: Volume, candidates: pd.DataFrame, config: CacheConfig
) -> dict[str, np.ndarray]:
    """The arrays of one scan's cache file.

    Args:
        volume: the scan.
        candidates: its candidates (``coordX, coordY, coordZ, label``); their index
            labels (integers) become ``candidate_id``.
        config: what to store.

    Returns:
        The arrays named in the module doc.
    """
    centers = candidates[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
    labels = candidates["label"].to_numpy().astype(np.int8)
    if config.views_via_cube:
        patches = _to_int16(resampled_views(volume, centers, config))
    else:
        patches = _to_int16(extract_patches(volume, centers, config.patch, scaled=False))
    if config.cubes_for == "all":
        cube_rows = np.arange(len(candidates))
    elif config.cubes_for == "positives":
        cube_rows = np.flatnonzero(labels == 1)
    else:
        cube_rows = np.zeros(0, dtype=np.int64)
    size = config.cube_size
    cubes = (
        extract_cubes(volume, centers[cube_rows], size, config.cube_spacing_mm)
        if cube_rows.size
        else np.zeros((0, size, size, size), np.int16)
    )
    return {
        "candidate_id": candidates.index.to_numpy().astype(np.int64),
        "centers": centers,
        "labels": labels,
        "patches": patches,
        "cube_rows": cube_rows.astype(np.int64),
        "cubes": cubes,
    }


def _save_atomic(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _is_complete(path: Path, candidates: pd.DataFrame) -> bool:
    """Whether ``path`` exists and holds exactly these candidates (ids, positions, labels)."""
    if not path.exists():
        return False
    try:
        with np.load(path) as data:
            ids, centers, labels = data["candidate_id"], data["centers"], data["labels"]
    except (OSError, ValueError, KeyError):
        return False
    expected = candidates[["coordX", "coordY", "coordZ"]].to_numpy(np.float64)
    return bool(
        np.array_equal(ids, candidates.index.to_numpy().astype(np.int64))
        and np.array_equal(centers, expected)
        and np.array_equal(labels, candidates["label"].to_numpy().astype(np.int8))
    )


def check_config(root: Path, config: CacheConfig) -> bool:
    """Check that the cache at ``root`` was built with ``config``'s content settings.

    Args:
        root: the cache folder.
        config: the config the caller will read or build with.

    Returns:
        Whether the folder has a ``cache.json``.

    Raises:
        FingerprintMismatch: it was built with other content settings (a ValueError).
    """
    path = root / CONFIG_FILE
    if not path.exists():
        return False
    data = json.loads(path.read_text())
    existing = CacheConfig.from_json(data)
    check_fingerprint(
        root, "a patch cache", existing.content_params(), config.content_params(), data.get("fingerprint")
    )
    return True


def _write_config(out_dir: Path, config: CacheConfig) -> None:
    if not check_config(out_dir, config):
        write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config.to_json(), indent=2))


def _index_rows(series_uid: str, path: Path) -> pd.DataFrame:
    with np.load(path) as data:
        centers = data["centers"]
        cube_row = np.full(len(centers), -1, dtype=np.int64)
        cube_row[data["cube_rows"]] = np.arange(len(data["cube_rows"]))
        return pd.DataFrame(
            {
                "candidate_id": data["candidate_id"],
                "seriesuid": series_uid,
                "coordX": centers[:, 0],
                "coordY": centers[:, 1],
                "coordZ": centers[:, 2],
                "label": data["labels"].astype(np.int64),
                "file": path.name,
                "row": np.arange(len(centers)),
                "cube_row": cube_row,
            },
            columns=list(INDEX_COLUMNS),
        )


@contextlib.contextmanager
def cache_lock(
    root: str | os.PathLike[str], on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold the exclusive advisory lock of a cache folder (``root/.lock``) for the block.

    Blocks while another process holds it (calling ``on_wait`` once first). The lock
    goes with the process (a killed builder never leaves it held). Where ``fcntl`` is
    missing (not POSIX) it only logs a warning: concurrent builders are then unsafe.

    Args:
        root: the cache folder (must exist).
        on_wait: called once if the lock is held by another process.
    """
    if _fcntl is None:  # pragma: no cover - not POSIX
        logger.warning("no fcntl: the patch cache at %s is built without a lock", root)
        yield
        return
    fd = os.open(Path(root) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _merged_index(root: Path, planned: list[tuple[str, Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The index rows of the planned scans, and those of every scan file of the folder.

    Scans of the old ``index.csv`` that are not planned keep their rows (read again from
    their files, so they always match them) when their file exists, except candidate ids
    that a planned scan now holds.
    """
    empty = pd.DataFrame(columns=list(INDEX_COLUMNS))
    own = (
        pd.concat([_index_rows(uid, path) for uid, path in planned], ignore_index=True)
        if planned
        else empty
    )
    planned_uids = {uid for uid, _ in planned}
    planned_files = {path.name for _, path in planned}
    others: list[pd.DataFrame] = []
    try:
        old = pd.read_csv(root / INDEX_FILE, usecols=["seriesuid", "file"], dtype=str)
    except (OSError, ValueError):  # no index yet, or an unreadable one
        old = pd.DataFrame(columns=["seriesuid", "file"])
    for uid, file in old.drop_duplicates("seriesuid").itertuples(index=False):
        if uid in planned_uids or file in planned_files or not (root / file).is_file():
            continue
        try:
            others.append(_index_rows(str(uid), root / str(file)))
        except (OSError, ValueError, KeyError):
            logger.warning("patch cache %s: dropping unreadable %s from the index", root, file)
    if not others:
        return own, own
    rest = pd.concat(others, ignore_index=True)
    rest = rest[~rest["candidate_id"].isin(own["candidate_id"])]
    return own, pd.concat([own, rest], ignore_index=True) if len(own) else rest


def build_patch_cache(
    scans: Iterable[tuple[str, ScanLoader]],
    candidates: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    config: CacheConfig | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> CacheIndex:
    """Build (or resume building) a patch cache.

    Scans whose file already holds the same candidates are skipped without loading
    them. Scans without candidates get no file; candidates of scans not in ``scans``
    are ignored. The folder's lock (:func:`cache_lock`) is held while building, so
    concurrent calls on one folder run one after the other; ``index.csv`` keeps the
    scans that other calls built too.

    Args:
        scans: ``(series_uid, loader)`` pairs; ``loader()`` returns the scan's volume.
        candidates: ``seriesuid, coordX, coordY, coordZ, label`` (world mm; label 1 for
            nodules), with unique integer index labels (the candidate ids).
        out_dir: the cache folder (created).
        config: what to store (default :class:`CacheConfig`); its content settings
            (:meth:`CacheConfig.fingerprint`) must match the folder's ``cache.json`` if
            there is one.
        jobs: scans loaded concurrently (threads) while the previous one is sampled;
            sampling itself uses numba's threads.
        progress: show a tqdm progress bar over scans.

    Returns:
        The index of every scan in ``scans`` that has candidates (``index.csv`` may list
        more scans: those of earlier builds with other scans).

    Raises:
        ValueError: the folder holds a cache with another config (a
            :class:`~nodule.fingerprint.FingerprintMismatch`), or a required column is
            missing, or the candidate index has duplicates.
    """
    config = config or CacheConfig()
    missing = {"seriesuid", "coordX", "coordY", "coordZ", "label"} - set(candidates.columns)
    if missing:
        raise ValueError(f"candidates lack columns {sorted(missing)}")
    if not candidates.index.is_unique:
        raise ValueError("candidate index labels (the candidate ids) must be unique")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    def waiting() -> None:
        message = f"patch cache {root}: waiting for another process that is building it"
        logger.info(message)
        if progress:
            print(message, file=sys.stderr, flush=True)

    with cache_lock(root, on_wait=waiting):
        return _build_locked(scans, candidates, root, config, jobs, progress)


def _build_locked(
    scans: Iterable[tuple[str, ScanLoader]],
    candidates: pd.DataFrame,
    root: Path,
    config: CacheConfig,
    jobs: int,
    progress: bool,
) -> CacheIndex:
    """:func:`build_patch_cache` once the folder's lock is held."""
    _write_config(root, config)
    groups = {str(uid): rows for uid, rows in candidates.groupby("seriesuid", sort=False)}
    planned: list[tuple[str, Path]] = []
    todo: list[tuple[str, ScanLoader, pd.DataFrame, Path]] = []
    seen: set[str] = set()
    for uid, loader in scans:
        rows = groups.get(uid)
        if rows is None or rows.empty or uid in seen:
            continue
        seen.add(uid)
        path = root / scan_file_name(uid)
        planned.append((uid, path))
        if not _is_complete(path, rows):
            todo.append((uid, loader, rows, path))

    bar = tqdm(
        total=len(planned),
        initial=len(planned) - len(todo),
        desc="patch cache",
        unit="scan",
        disable=not progress,
    )
    pending: deque[tuple[str, pd.DataFrame, Path, Future[Volume]]] = deque()
    remaining = iter(todo)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:

        def submit_next() -> None:
            item = next(remaining, None)
            if item is not None:
                uid, loader, rows, path = item
                pending.append((uid, rows, path, pool.submit(loader)))

        try:
            for _ in range(max(1, jobs)):
                submit_next()
            while pending:
                uid, rows, path, future = pending.popleft()
                volume = future.result()
                submit_next()
                _save_atomic(path, cache_scan_arrays(volume, rows, config), config.compress)
                del volume
                bar.update()
        except BaseException:
            for *_, future in pending:
                future.cancel()
            raise
        finally:
            bar.close()

    table, merged = _merged_index(root, planned)
    write_text_atomic(root / INDEX_FILE, merged.to_csv(index=False, float_format="%.6f"))
    return CacheIndex(root=root, config=config, table=table)
