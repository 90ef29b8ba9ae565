"""All four candidate detectors on one study, ranked, merged, in world coordinates.

:func:`detect_candidates` crops the study to its lungs (plus a margin), resamples the
crop to an isotropic working grid, runs the solid, subsolid and large-solid detectors
there (each keeps a generous pool: up to 800, 560 and 30 detections), scores every
detection with the learned ranker (:mod:`nodule.candidates.ranker`, on the context
features of :mod:`nodule.candidates.context`), maps the centres back to world (x, y, z)
mm and to the study's own voxels, merges candidates closer than ``merge_distance_mm``
to a better-scored one (greedily, best first: no chains; each group keeps its best-scored
member) and keeps the best ``max_per_scan``. The learned detector
(:mod:`nodule.candidates.learned`, a small 3D network on the same 1 mm grid, run in a
thread beside the others: on two cores its seconds mostly hide behind theirs) is not
ranked: its best peaks hold places of their own among the ``max_per_scan``
(:func:`~nodule.candidates.merge.keep_reserved`), and the other detectors' candidates
within ``merge_distance_mm`` of one join it.

Why a learned ranker: on the 100 training scans the detectors' own scores left 15
nodules out of the best 150, and 11 of those had a detection within their radius,
ranked in the hundreds (irregular LIDC shapes give a weak Hessian blob measure,
vessels attached to a nodule lengthen its region).

Working spacing: 1 mm isotropic by default. The smallest LUNA16 nodule (3 mm) is
still three voxels across; isotropic voxels make the Hessian shape measure the same in
every direction (LUNA16 slices range from 0.6 to 2.5 mm, the real CT here has 3 mm);
going finer than 1 mm would add voxels (and seconds) without adding detail for
nodules of 3 mm and more, while 1.5 mm would blur 3-4 mm nodules into their vessels.
Only the crop around the lungs is resampled, which is about half of a chest scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import pandas as pd

from nodule.candidates.context import CONTEXT_COLUMNS, context_features
from nodule.candidates.features import detections_frame
from nodule.candidates.hessian import SmoothingCache
from nodule.candidates.large_solid import LargeSolidConfig, detect_large_solid
from nodule.candidates.learned import LEARNED_SPACING_MM, LearnedConfig, detect_learned
from nodule.candidates.merge import keep_reserved, merge_candidates
from nodule.candidates.ranker import load_ranker
from nodule.candidates.solid import SolidConfig, detect_solid
from nodule.candidates.subsolid import SubsolidConfig, detect_subsolid
from nodule.io import Volume, resample, resample_like
from nodule.lung import LungMask, segment_lungs

DETECTORS = ("solid", "subsolid", "large_solid", "learned")

CANDIDATE_COLUMNS = (
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "probability",
    "detectors",
    "voxelZ",
    "voxelY",
    "voxelX",
    "diameter_mm",
    "volume_mm3",
    "mean_hu",
    "elongation",
    "detector_score",
)
"""Columns of a candidate table: a LUNA16 submission (``probability`` is the ranker's
score, or the detector's without a ranker) followed by the detectors (``+``-joined),
the centre in the study's voxels (z, y, x), the features and the detector's own score."""


@dataclass(frozen=True)
class CandidateConfig:
    """Parameters of the candidate stage.

    Attributes:
        work_spacing_mm: isotropic voxel size of the working grid, mm.
        margin_mm: margin around the lung bounding box that is kept, mm.
        merge_distance_mm: candidates closer than this are merged.
        merge_radius_fraction: candidates also merge when closer than this fraction of
            the larger one's radius (one candidate per large nodule).
        merge_chain: merge by single linkage (chains of close candidates become one),
            or (False, the default) greedily around the best-scored candidate: with
            chains a small nodule next to a vessel was swallowed by the vessel's group
            and its position lost (two of 73 nodules on 50 training scans).
        max_per_scan: the best this many merged candidates are kept.
        solid: solid detector parameters.
        subsolid: subsolid detector parameters.
        large_solid: large-solid detector parameters.
        learned: learned detector parameters (:mod:`nodule.candidates.learned`): its
            peaks skip the ranker and hold up to ``learned.max_candidates`` of the
            ``max_per_scan`` places; the other detectors' candidates within
            ``merge_distance_mm`` of one join it.
        ranker: the learned ranker that scores every detection before merging
            (:mod:`nodule.candidates.ranker`): ``"default"`` the shipped model, or the
            path of another; None ranks by the detectors' own scores.
        context: add the context features (:data:`~nodule.candidates.context.CONTEXT_COLUMNS`)
            of each detection to the output (the ranker's training data).
    """

    work_spacing_mm: float = 1.0
    margin_mm: float = 12.0
    merge_distance_mm: float = 5.0
    merge_radius_fraction: float = 1.0
    merge_chain: bool = False
    max_per_scan: int = 150
    solid: SolidConfig = field(default_factory=SolidConfig)
    subsolid: SubsolidConfig = field(default_factory=SubsolidConfig)
    large_solid: LargeSolidConfig = field(default_factory=LargeSolidConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    ranker: str | None = "default"
    context: bool = False


@dataclass
class CandidateResult:
    """Candidates of one study with a summary.

    Attributes:
        candidates: table with :data:`CANDIDATE_COLUMNS`, best first.
        lung_ml: lung volume in ml.
        counts: candidates per detector before merging, and ``merged``.
        seconds: time per step (``resample``, ``lung``, each detector, ``merge``).
    """

    candidates: pd.DataFrame
    lung_ml: float
    counts: dict[str, int]
    seconds: dict[str, float]


def empty_candidates() -> pd.DataFrame:
    """An empty candidate table with the right columns and dtypes."""
    frame = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in CANDIDATE_COLUMNS})
    for c in ("seriesuid", "detectors"):
        frame[c] = pd.Series(dtype=object)
    return frame


def _lung_labels(volume: Volume, lung: LungMask | np.ndarray | None) -> tuple[np.ndarray, float]:
    """Label array at the volume's geometry and the lung volume in ml."""
    if lung is None:
        lung = segment_lungs(volume)
    labels = np.asarray(lung.labels if isinstance(lung, LungMask) else lung)
    if labels.shape != volume.shape:
        raise ValueError(f"lung mask shape {labels.shape} differs from the volume's {volume.shape}")
    labels = labels.astype(np.uint8) if labels.dtype == np.bool_ else labels.astype(np.uint8, copy=False)
    ml = float(np.count_nonzero(labels)) * float(np.prod(volume.spacing)) / 1000.0
    return labels, ml


def _crop(volume: Volume, labels: np.ndarray, margin_mm: float) -> tuple[Volume, Volume]:
    """The volume and its labels cut to the lungs' bounding box plus a margin (origin moved)."""
    zyx = [np.flatnonzero(labels.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    margin = np.ceil(margin_mm / np.asarray(volume.spacing_zyx)).astype(int)
    lo = [max(0, int(a.min()) - m) for a, m in zip(zyx, margin, strict=True)]
    hi = [min(n, int(a.max()) + m + 1) for a, n, m in zip(zyx, volume.shape, margin, strict=True)]
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    wx, wy, wz = (float(v) for v in volume.voxel_to_world([lo])[0])
    origin = (wx, wy, wz)
    image = replace(volume, array=np.ascontiguousarray(volume.array[window]), origin=origin)
    mask = replace(volume, array=np.ascontiguousarray(labels[window]), origin=origin)
    return image, mask


def working_grid(volume: Volume, labels: np.ndarray, config: CandidateConfig = CandidateConfig()) -> tuple[Volume, np.ndarray, np.ndarray]:
    """The study cut to its lungs (``labels`` at its geometry) plus ``config.margin_mm`` and
    resampled to the isotropic working grid: the grid, its HU clipped to [-1024, 400]
    (float32) and the lung labels on it."""
    crop, crop_labels = _crop(volume, labels, config.margin_mm)
    s = config.work_spacing_mm
    work = resample(crop, (s, s, s))
    work_labels = resample_like(crop_labels, work, is_mask=True).array
    # bone and calcium above 400 HU are clipped: a rib next to the pleura must not
    # dominate the blob measure; every threshold of the detectors lies below
    array = np.clip(work.array.astype(np.float32, copy=False), -1024.0, 400.0)
    return work, array, work_labels


def keep_best(table: pd.DataFrame, config: CandidateConfig, reserved: pd.DataFrame | None = None) -> pd.DataFrame:
    """One study's scored detections (``score``, ``detector``, world ``coordX/Y/Z``, ``diameter_mm``)
    merged (:func:`~nodule.candidates.merge.merge_candidates`) and cut to the best ``max_per_scan``;
    ``reserved`` detections (the learned detector's, merged among themselves) are kept first
    (:func:`~nodule.candidates.merge.keep_reserved`)."""

    def merge(rows: pd.DataFrame) -> pd.DataFrame:
        return merge_candidates(rows, config.merge_distance_mm, radius_fraction=config.merge_radius_fraction, chain=config.merge_chain)

    if reserved is None or len(reserved) == 0:
        return merge(table).iloc[: config.max_per_scan]
    return keep_reserved(merge(table), merge(reserved), config.merge_distance_mm, config.max_per_scan)


def _place(table: pd.DataFrame, work: Volume, volume: Volume) -> pd.DataFrame:
    """Detections (working-grid ``z, y, x``) with world ``coordX/Y/Z`` and the study's ``voxelZ/Y/X``."""
    world = work.voxel_to_world(table[["z", "y", "x"]].to_numpy(dtype=np.float64))
    vox = volume.world_to_voxel(world)
    return table.assign(
        coordX=world[:, 0], coordY=world[:, 1], coordZ=world[:, 2],
        voxelZ=vox[:, 0], voxelY=vox[:, 1], voxelX=vox[:, 2],
    )


def _timed(run: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    """``run()`` and its wall seconds."""
    t = time.perf_counter()
    out = run()
    return out, time.perf_counter() - t


_detector_threads: int | None = None


def set_detector_threads(threads: int | None) -> None:
    """How many detectors :func:`detect_candidates` runs at once in this process (None, the
    default: all, each in a thread of its own). Batch workers that already share the cores
    among them set 1: there the threads only add overhead (about 9 % more wall time on 50
    scans with two workers on two cores)."""
    global _detector_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1 or None, got {threads}")
    _detector_threads = threads


def _learned(
    volume: Volume, labels: np.ndarray, config: CandidateConfig, grid: tuple[Volume, np.ndarray, np.ndarray]
) -> pd.DataFrame:
    """The learned detector's detections, placed (:func:`_place`), ``detector_score`` its
    probability; it runs on the working grid ``grid`` when that is 1 mm, else on a 1 mm
    grid of its own."""
    if config.learned.weights is None:
        return _place(detections_frame([], "learned"), grid[0], volume).assign(detector_score=0.0)
    work, array, work_labels = grid
    if not np.allclose(work.spacing_zyx, LEARNED_SPACING_MM, atol=1e-3):
        work, array, work_labels = working_grid(volume, labels, replace(config, work_spacing_mm=LEARNED_SPACING_MM))
    found = detect_learned(array, work_labels > 0, work.spacing_zyx, config.learned)
    return _place(found, work, volume).assign(detector_score=found["score"].to_numpy())


def detect_candidates(
    volume: Volume,
    lung: LungMask | np.ndarray | None = None,
    config: CandidateConfig = CandidateConfig(),
) -> CandidateResult:
    """Run the four detectors on one study and merge their candidates.

    Args:
        volume: the CT in HU.
        lung: a :class:`~nodule.lung.LungMask`, or a label / boolean array at the
            volume's geometry; None segments the lungs with :func:`nodule.lung.segment_lungs`.
        config: parameters.

    Returns:
        The merged candidates (world mm, the study's voxels, features) with a summary.

    Raises:
        ValueError: a lung mask of another shape, or (from the lung segmentation) no lungs.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    labels, lung_ml = _lung_labels(volume, lung)
    seconds["lung"] = time.perf_counter() - t
    counts = dict.fromkeys((*DETECTORS, "merged"), 0)
    if lung_ml == 0:
        return CandidateResult(empty_candidates(), 0.0, counts, seconds)

    t = time.perf_counter()
    work, array, work_labels = working_grid(volume, labels, config)
    spacing = work.spacing_zyx
    seconds["resample"] = time.perf_counter() - t

    lungs = work_labels > 0
    smoothed = SmoothingCache()
    # the detectors run in threads of their own: scipy's labelling and morphology, numpy and
    # torch (the learned detector) leave the interpreter lock while they compute, so on two
    # cores the detectors overlap; they share the smoothed copies (each made once), and
    # their rows are joined in the order of DETECTORS, so the result does not depend on timing
    jobs = {
        "solid": partial(detect_solid, array, lungs, spacing, config.solid, smoothed),
        "subsolid": partial(detect_subsolid, array, lungs, spacing, config.subsolid, smoothed),
        "large_solid": partial(detect_large_solid, array, work_labels, spacing, config.large_solid),
        "learned": partial(_learned, volume, labels, config, (work, array, work_labels)),
    }
    with ThreadPoolExecutor(min(len(jobs), _detector_threads or len(jobs))) as pool:
        futures = {name: pool.submit(_timed, run) for name, run in jobs.items()}
        done = {name: f.result() for name, f in futures.items()}
    found = []
    for name, (det, sec) in done.items():
        seconds[name] = sec  # each detector's own wall seconds, overlapped
        counts[name] = len(det)
        if name != "learned":
            found.append(det)
    learned = done["learned"][0]

    table = pd.concat([f for f in found if len(f)], ignore_index=True) if any(len(f) for f in found) else found[0]
    if len(table) == 0 and len(learned) == 0:
        seconds["merge"] = 0.0
        return CandidateResult(empty_candidates(), lung_ml, counts, seconds)
    zyx = table[["z", "y", "x"]].to_numpy(dtype=np.float64)
    table = table.reset_index(drop=True).assign(detector_score=table["score"].to_numpy())
    if len(table) and (config.context or config.ranker is not None):
        t = time.perf_counter()
        ctx = context_features(array, lungs, spacing, zyx, table["diameter_mm"].to_numpy(), smoothed)
        table = pd.concat([table, ctx], axis=1)
        if config.ranker is not None:
            ranker = load_ranker(None if config.ranker == "default" else config.ranker)
            table["score"] = ranker.score(table)
        seconds["rank"] = time.perf_counter() - t

    t = time.perf_counter()
    merged = keep_best(_place(table, work, volume), config, learned)
    out = pd.DataFrame(
        {
            "seriesuid": [volume.series_uid] * len(merged),
            "probability": np.clip(merged["score"].to_numpy(dtype=np.float64), 0.0, 1.0),
        }
    )
    columns = list(CANDIDATE_COLUMNS) + (list(CONTEXT_COLUMNS) if config.context else [])
    for c in columns:
        if c not in out:
            out[c] = merged[c].to_numpy()
    counts["merged"] = len(out)
    seconds["merge"] = time.perf_counter() - t
    return CandidateResult(out[columns], lung_ml, counts, seconds)
