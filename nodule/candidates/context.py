"""Context features of candidates: how a candidate and its surroundings look.

The detectors rank their own candidates by hand-made scores (blob strength, band
contrast, compactness). Those scores rank irregular and vessel-attached nodules poorly:
on the training scans most nodules the candidate stage missed had a solid candidate
within 2 mm, ranked in the hundreds. The learned ranker (:mod:`nodule.candidates.ranker`)
re-ranks every detection with the features measured here, the same for every detector:

* the multiscale Hessian blob measure at the centre (response, eigenvalue ratio, scale);
* densities in a ball of the candidate's radius ``R`` (``clip(d / 2, 2, 12)`` mm) and in
  the shells ``R..2R`` and ``2R..3R`` around it: mean and spread of HU, fractions of
  solid (> -400 HU) and ground-glass (-750..-300 HU) voxels, fractions inside the lungs;
* ``spill``: the share of the solid component through the centre (cut to ``3R``) that
  lies beyond ``1.5R``, high where a vessel runs on through the candidate.

All work happens in windows of ``3R`` around each candidate on the working grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from nodule.candidates.hessian import SmoothingCache, blob_response, smoothed_copy

SOLID_HU = -400.0
GGO_HU = (-750.0, -300.0)
BLOB_SIGMAS_MM = (1.0, 1.5, 2.25, 3.4, 5.0)

CONTEXT_COLUMNS = (
    "blob_response",
    "blob_ratio",
    "blob_sigma_mm",
    "hu_centre",
    "hu_ball",
    "hu_shell",
    "hu_outer",
    "std_ball",
    "solid_ball",
    "solid_shell",
    "solid_outer",
    "ggo_ball",
    "ggo_shell",
    "lung_ball",
    "lung_shell",
    "spill",
)
"""Columns :func:`context_features` adds."""


def _ball_radius(diameter_mm: float) -> float:
    return float(np.clip(0.5 * diameter_mm, 2.0, 12.0))


def _mean(values: np.ndarray, where: np.ndarray, default: float) -> float:
    n = int(where.sum())
    return float(values[where].mean()) if n else default


def _fraction(mask: np.ndarray, where: np.ndarray, n: int) -> float:
    """Share of the ``n`` voxels of ``where`` that are in ``mask`` (0 when ``n`` is 0)."""
    return float(np.count_nonzero(mask & where)) / n if n else 0.0


def _one(
    array: np.ndarray, smooth: np.ndarray, lung: np.ndarray, sp: np.ndarray, c: np.ndarray, radius: float
) -> list[float]:
    half = np.ceil(3.0 * radius / sp).astype(int) + 1
    ci = np.rint(c).astype(int)
    lo = np.maximum(0, ci - half)
    hi = np.minimum(np.asarray(array.shape), ci + half + 1)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sub = array[window]
    lungs = lung[window]
    grids = np.ogrid[window]
    d = np.sqrt(sum(((g - x) * s) ** 2 for g, x, s in zip(grids, c, sp, strict=True)))
    ball = d <= radius
    within2 = d <= 2.0 * radius
    within3 = d <= 3.0 * radius
    shell = within2 & ~ball
    outer = within3 & ~within2
    solid = sub > SOLID_HU
    ggo = (sub > GGO_HU[0]) & (sub <= GGO_HU[1])
    n_ball, n_shell = int(np.count_nonzero(ball)), int(np.count_nonzero(shell))
    hu_ball = _mean(sub, ball, float(sub.mean()))
    background = outer & lungs & ~solid
    hu_outer = float(np.median(sub[background])) if background.any() else -850.0
    local = np.clip(ci - lo, 0, np.asarray(sub.shape) - 1)
    spill = 0.0
    region = solid & within3
    if region.any():
        labels, _ = ndi.label(region)
        label = int(labels[tuple(local)])
        if label == 0:
            near = region & ball
            label = int(np.bincount(labels[near]).argmax()) if near.any() else 0
        if label:
            comp = labels == label
            spill = float((comp & (d > 1.5 * radius)).sum()) / float(comp.sum())
    return [
        float(smooth[tuple(np.clip(ci, 0, np.asarray(array.shape) - 1))]),
        hu_ball,
        _mean(sub, shell, hu_ball),
        hu_outer,
        float(sub[ball].std()) if ball.any() else 0.0,
        _fraction(solid, ball, n_ball),
        _fraction(solid, shell, n_shell),
        _fraction(solid, outer, int(np.count_nonzero(outer))),
        _fraction(ggo, ball, n_ball),
        _fraction(ggo, shell, n_shell),
        _fraction(lungs, ball, n_ball),
        _fraction(lungs, shell, n_shell),
        spill,
    ]


def context_features(
    array: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: Sequence[float],
    centres_zyx: np.ndarray,
    diameters_mm: np.ndarray,
    smoothed: SmoothingCache | None = None,
) -> pd.DataFrame:
    """The :data:`CONTEXT_COLUMNS` of candidates on a working volume.

    Args:
        array: HU volume (z, y, x), float32.
        lung: boolean lung mask of the same shape.
        spacing_zyx: voxel size in mm.
        centres_zyx: candidate centres in voxels (N, 3).
        diameters_mm: candidate diameters in mm (N,).
        smoothed: cache of smoothed copies of ``array`` (:data:`~nodule.candidates.hessian.SmoothingCache`) (read and filled).

    Returns:
        One row per candidate, in the given order.
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    centres = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    n = len(centres)
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=np.float64) for c in CONTEXT_COLUMNS})
    shape = np.asarray(array.shape)
    inner = np.clip(np.rint(centres).astype(int), 1, shape - 2)
    index = np.ravel_multi_index((inner[:, 0], inner[:, 1], inner[:, 2]), array.shape)
    blob = blob_response(array, index, spacing_zyx, BLOB_SIGMAS_MM, smoothed=smoothed)
    smooth = smoothed_copy(array, 1.0, spacing_zyx, smoothed)
    rows = [
        _one(array, smooth, lung, sp, centres[i], _ball_radius(float(diameters_mm[i]))) for i in range(n)
    ]
    frame = pd.DataFrame(rows, columns=list(CONTEXT_COLUMNS[3:]), dtype=np.float64)
    frame.insert(0, "blob_sigma_mm", blob.sigma_mm)
    frame.insert(0, "blob_ratio", blob.ratio)
    frame.insert(0, "blob_response", blob.response)
    return frame
