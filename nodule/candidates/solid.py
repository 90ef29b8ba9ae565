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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from nodule.candidates.features import detections_frame, region_features
from nodule.candidates.hessian import SmoothingCache, blob_response


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
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    evaluate = _inner(lung) & (array > config.min_hu)
    index = np.flatnonzero(evaluate)
    blob = blob_response(array, index, spacing_zyx, config.sigmas_mm, smoothed=smoothed)
    peaks = local_maxima(blob.response.astype(np.float32), index, array.shape)
    peaks &= blob.response >= config.min_response
    if not peaks.any():
        return detections_frame([], "solid")
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
    return detections_frame(rows[: config.max_candidates], "solid")
