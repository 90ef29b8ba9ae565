"""Solid nodule detector: multiscale Hessian blobs inside the lungs.

After Setio et al. 2016 (solid detector of Murphy et al. 2009: local shape at several
scales, vessels rejected by shape). Here the shape measure is the scale-normalised
largest Hessian eigenvalue (:mod:`nodule.candidates.hessian`): bright balls give a
strong response, straight vessels of any calibre almost none.

1. The measure is evaluated at lung voxels denser than ``min_hu`` (the bright cores
   of nodules and vessels; a few percent of the lung), at ``sigmas_mm``.
2. Candidates are local maxima (26-neighbourhood) of the response above
   ``min_response``; maxima closer than half the candidate's diameter (at least
   ``min_separation_mm``) to a stronger one are dropped.
3. Blob score: ``1 - exp(-response / score_scale_hu)`` times the eigenvalue ratio
   ``lambda_1 / lambda_3`` raised to ``ratio_power`` (1 for a ball, 0 for a tube).
   The best ``rerank_pool x max_candidates`` by blob score get their features (step
   4); the final score divides the blob score by the region's elongation raised to
   ``elongation_power``, and the best ``max_candidates`` by it are kept. Near the
   pleura and on vessel junctions the eigenvalue ratio alone ranks poorly (a nodule
   on the chest wall is a bump on a plate); the elongation of the thresholded region
   tells a round nodule from a piece of vessel (on 24 synthetic scans a 7 mm
   juxtapleural nodule moves from rank 116 to 71).
4. Features come from the component above ``region_hu`` around the centre, inside the
   lungs (the chest wall must not pull a juxtapleural nodule's centre out of it), cut
   to a ball of 1.5 x the radius of the best scale (radius ~ sqrt(3) sigma); the diameter is
   that region's equivalent diameter (2 sqrt(3) sigma where the region is empty), and
   the region's centroid is the candidate's centre when it lies within the radius of
   the peak (peaks of the half-resolution scales sit on a 2-voxel lattice).
5. Pleural pass (``pleural_candidates`` > 0): a small nodule on the pleura is a bump on
   a plate, and the blob measure of a bump is weak (on development scans two solid
   nodules of 4.2 and 4.3 mm had their best peak at ranks 3,400 and 8,900 of the solid
   peaks, under ``min_response``). The lung mask takes such a nodule in (the lung
   mask's closing), and inside the mask it is a dense component beside the lung's edge.
   So lung voxels denser than each of ``pleural_levels_hu`` are opened with a ball of
   ``pleural_opening_mm`` (thin vessels vanish), and components that reach within
   ``pleural_mm`` of the mask's edge, with an equivalent diameter in
   ``[pleural_min_diameter_mm, pleural_max_diameter_mm]``, an elongation up to
   ``pleural_max_elongation`` and a mean density up to ``pleural_max_hu`` (bits of rib
   and calcium that the closing takes in are denser) become candidates at their
   centroid, scored as in step 3 at that voxel. Those not within their radius (at least
   2 mm) of a candidate of steps 1-4 are added, the best ``pleural_candidates``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from nodule.candidates.features import (
    detections_frame,
    elongation,
    equivalent_diameter,
    region_features,
)
from nodule.candidates.hessian import SmoothingCache, blob_response
from nodule.candidates.morphology import ball, binary_open


@dataclass(frozen=True)
class SolidConfig:
    """Parameters of the solid detector (see the module docstring).

    Attributes:
        sigmas_mm: Gaussian scales in mm (nodule radii of about 1.7 x these).
        min_hu: voxels denser than this are evaluated.
        min_response: smallest blob response kept, HU.
        score_scale_hu: response scale of the score.
        ratio_power: exponent of the eigenvalue-ratio factor of the score.
        min_separation_mm: smallest distance between two solid candidates.
        region_hu: threshold of the region the features are measured on.
        max_candidates: the best this many are kept.
        rerank_pool: features are measured for the best ``rerank_pool x max_candidates``
            by blob score, which are then ranked by the final score.
        elongation_power: exponent of the elongation penalty of the final score.
        pleural_candidates: up to this many of the pleural pass are added (0: no pleural pass).
        pleural_levels_hu: density thresholds of the pleural pass.
        pleural_opening_mm: radius of the pleural pass's opening ball, mm.
        pleural_mm: a component must reach this close to the lung mask's edge, mm.
        pleural_min_diameter_mm: smallest equivalent diameter of a pleural component.
        pleural_max_diameter_mm: largest equivalent diameter of a pleural component.
        pleural_max_elongation: largest elongation of a pleural component.
        pleural_max_hu: largest mean density of a pleural component, HU.
    """

    sigmas_mm: tuple[float, ...] = (1.0, 1.5, 2.25, 3.4)
    min_hu: float = -500.0
    min_response: float = 40.0
    score_scale_hu: float = 150.0
    ratio_power: float = 0.5
    min_separation_mm: float = 3.0
    region_hu: float = -400.0
    max_candidates: int = 800
    rerank_pool: float = 1.0
    elongation_power: float = 1.0
    pleural_candidates: int = 100
    pleural_levels_hu: tuple[float, ...] = (-450.0, -550.0)
    pleural_opening_mm: float = 1.0
    pleural_mm: float = 2.0
    pleural_min_diameter_mm: float = 2.5
    pleural_max_diameter_mm: float = 12.0
    pleural_max_elongation: float = 2.5
    pleural_max_hu: float = 100.0


_NEIGHBOURS = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) != (0, 0, 0)]


def _inner(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[[0, -1]] = False
    out[:, [0, -1]] = False
    out[:, :, [0, -1]] = False
    return out


def local_maxima(values: np.ndarray, index: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Which of the voxels ``index`` (flat, not on the border) hold a 26-neighbourhood maximum.

    ``values`` are the values at ``index``; voxels not in ``index`` count as 0.
    """
    full = np.zeros(int(np.prod(shape)), dtype=np.float32)
    full[index] = values
    _, ny, nx = shape
    keep = values > 0
    for dz, dy, dx in _NEIGHBOURS:
        off = dz * ny * nx + dy * nx + dx
        other = full[index + off]
        # ties: the voxel with the lower flat index wins
        keep &= (values > other) | ((values == other) & (off > 0))
    return keep


def suppress(points_mm: np.ndarray, order: np.ndarray, radius_mm: np.ndarray) -> np.ndarray:
    """Greedy non-maximum suppression: indices (in ``order``'s ranking) of the points kept.

    A point is dropped when it lies within ``radius_mm`` (of the stronger point) of one kept before.
    """
    tree = cKDTree(points_mm)
    dropped = np.zeros(len(points_mm), dtype=bool)
    kept = []
    for i in order:
        if dropped[i]:
            continue
        kept.append(int(i))
        near = np.asarray(tree.query_ball_point(points_mm[i], float(radius_mm[i])), dtype=int)
        dropped[near] = True
    return np.asarray(kept, dtype=int)


def _reaches_edge(lung: np.ndarray, region: np.ndarray, box: tuple[slice, ...], sp: np.ndarray, reach_mm: float) -> bool:
    """Whether a component (``region`` in ``lung[box]``) comes within ``reach_mm`` of a voxel outside the lung mask."""
    margin = np.ceil(reach_mm / sp).astype(int) + 1
    wide = tuple(slice(max(0, b.start - int(m)), b.stop + int(m)) for b, m in zip(box, margin, strict=True))
    outside = ~lung[wide]
    if not outside.any():
        return False
    distance = ndi.distance_transform_edt(~outside, sampling=sp)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide, strict=True))
    return bool(distance[inner][region].min() <= reach_mm)


def pleural_components(array: np.ndarray, lung: np.ndarray, spacing_zyx: Sequence[float], config: SolidConfig) -> list[dict[str, float]]:
    """Step 5's components (see the module docstring) as detection rows without a score,
    over every level of ``config.pleural_levels_hu`` (a component may come once per level)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    voxel_mm3 = float(np.prod(sp))
    structure = ball(config.pleural_opening_mm, spacing_zyx)
    rows: list[dict[str, float]] = []
    for level in config.pleural_levels_hu:
        labels, _ = ndi.label(binary_open(lung & (array > level), structure))
        for i, box in enumerate(ndi.find_objects(labels), start=1):
            if box is None:
                continue
            region = labels[box] == i
            volume = float(np.count_nonzero(region)) * voxel_mm3
            diameter = float(equivalent_diameter(volume))
            if not config.pleural_min_diameter_mm <= diameter <= config.pleural_max_diameter_mm:
                continue
            mean_hu = float(array[box][region].mean())
            if mean_hu > config.pleural_max_hu:
                continue
            pts = np.argwhere(region)
            elong = elongation(pts * sp)
            if elong > config.pleural_max_elongation or not _reaches_edge(lung, region, box, sp, config.pleural_mm):
                continue
            centre = pts.mean(axis=0) + [b.start for b in box]
            rows.append({"z": centre[0], "y": centre[1], "x": centre[2], "diameter_mm": diameter,
                         "volume_mm3": volume, "mean_hu": mean_hu, "elongation": elong})
    return rows


def _pleural_rows(
    array: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: Sequence[float],
    config: SolidConfig,
    smoothed: SmoothingCache | None,
    found: list[dict[str, float]],
) -> list[dict[str, float]]:
    """Step 5: the scored pleural components not within their radius (at least 2 mm) of a
    row of ``found`` nor of a better pleural one, best first, at most ``config.pleural_candidates``."""
    rows = pleural_components(array, lung, spacing_zyx, config)
    if not rows:
        return []
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    zyx = np.array([[r["z"], r["y"], r["x"]] for r in rows])
    index = np.ravel_multi_index(tuple(np.clip(np.rint(zyx).astype(int), 1, np.asarray(array.shape) - 2).T), array.shape)
    blob = blob_response(array, index, spacing_zyx, config.sigmas_mm, smoothed=smoothed)
    score = (1.0 - np.exp(-blob.response / config.score_scale_hu)) * blob.ratio**config.ratio_power
    score = score / np.maximum(1.0, [r["elongation"] for r in rows]) ** config.elongation_power
    reach = np.maximum(2.0, 0.5 * np.array([r["diameter_mm"] for r in rows]))
    if found:
        tree = cKDTree(np.array([[r["z"], r["y"], r["x"]] for r in found]) * sp)
        distance, _ = tree.query(zyx * sp)
        away = np.flatnonzero(distance > reach)
    else:
        away = np.arange(len(rows))
    order = away[np.argsort(-score[away], kind="stable")]
    kept = suppress(zyx[order] * sp, np.arange(len(order)), reach[order])
    return [dict(rows[order[i]], score=float(score[order[i]])) for i in kept[: config.pleural_candidates]]


def _blob_rows(
    array: np.ndarray, lung: np.ndarray, spacing_zyx: Sequence[float], config: SolidConfig, smoothed: SmoothingCache | None
) -> list[dict[str, float]]:
    """Steps 1-4 (see the module docstring): the best ``config.max_candidates`` blob rows, best first."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    evaluate = _inner(lung) & (array > config.min_hu)
    index = np.flatnonzero(evaluate)
    blob = blob_response(array, index, spacing_zyx, config.sigmas_mm, smoothed=smoothed)
    peaks = local_maxima(blob.response.astype(np.float32), index, array.shape)
    peaks &= blob.response >= config.min_response
    if not peaks.any():
        return []
    idx = index[peaks]
    response = blob.response[peaks]
    ratio = blob.ratio[peaks]
    sigma = blob.sigma_mm[peaks]
    score = (1.0 - np.exp(-response / config.score_scale_hu)) * ratio**config.ratio_power
    zyx = np.column_stack(np.unravel_index(idx, array.shape)).astype(np.float64)
    radius = np.sqrt(3.0) * sigma
    order = np.argsort(-score, kind="stable")
    kept = suppress(zyx * sp, order, np.maximum(config.min_separation_mm, radius))
    kept = kept[: int(np.ceil(config.rerank_pool * config.max_candidates))]
    rows = []
    for i in kept:
        f = region_features(array, spacing_zyx, zyx[i], 1.5 * radius[i], config.region_hu, allowed=lung)
        centre = zyx[i]
        if f.volume_mm3 > 0 and np.linalg.norm((np.asarray(f.centroid_zyx) - centre) * sp) < radius[i]:
            centre = np.asarray(f.centroid_zyx)  # sub-voxel centre (the coarse scales are blocky)
        rows.append(
            {
                "z": centre[0],
                "y": centre[1],
                "x": centre[2],
                "score": float(score[i]) / max(1.0, f.elongation) ** config.elongation_power,
                "diameter_mm": f.diameter_mm if f.volume_mm3 > 0 else float(2.0 * radius[i]),
                "volume_mm3": f.volume_mm3,
                "mean_hu": f.mean_hu,
                "elongation": f.elongation,
            }
        )
    rows.sort(key=lambda r: -r["score"])
    return rows[: config.max_candidates]


def detect_solid(
    array: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: Sequence[float],
    config: SolidConfig = SolidConfig(),
    smoothed: SmoothingCache | None = None,
) -> pd.DataFrame:
    """Solid nodule candidates in a working volume.

    Args:
        array: HU volume (z, y, x), float32.
        lung: boolean lung mask of the same shape.
        spacing_zyx: voxel size in mm.
        config: parameters.
        smoothed: cache of smoothed copies of ``array`` (:data:`~nodule.candidates.hessian.SmoothingCache`), shared with
            the other detectors (read and filled).

    Returns:
        Detections (:data:`~nodule.candidates.features.DETECTION_COLUMNS`), best first.
    """
    rows = _blob_rows(array, lung, spacing_zyx, config, smoothed)
    if config.pleural_candidates > 0:
        rows = rows + _pleural_rows(array, lung, spacing_zyx, config, smoothed, rows)
        rows.sort(key=lambda r: -r["score"])
    return detections_frame(rows, "solid")
