"""Per-candidate features measured on the working volume: volume, mean HU, elongation.

Each candidate is described by the connected component of voxels above a threshold
that contains (or lies nearest to) its centre, restricted to a ball of a few radii
around it, so that a vessel running into a nodule adds little. All work happens in
small windows around the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from nodule.io import equivalent_diameter as sphere_diameter

FEATURE_COLUMNS = ("diameter_mm", "volume_mm3", "mean_hu", "elongation")


@dataclass(frozen=True)
class RegionFeatures:
    """Features of one candidate region.

    Attributes:
        volume_mm3: volume of the region in mm^3.
        diameter_mm: equivalent sphere diameter of the region in mm.
        mean_hu: mean HU inside the region.
        elongation: sqrt of the ratio of the largest to the smallest principal variance
            of the region's voxel positions (1 for a ball, large for a tube); 1 for
            regions too small to tell.
        centroid_zyx: the region's centroid in voxels of the grid.
    """

    volume_mm3: float
    diameter_mm: float
    mean_hu: float
    elongation: float
    centroid_zyx: tuple[float, float, float]


def equivalent_diameter(volume_mm3: np.ndarray | float) -> np.ndarray:
    """Diameter in mm of the sphere of each given volume (:func:`nodule.io.equivalent_diameter`)."""
    volumes = np.asarray(volume_mm3, dtype=np.float64)
    return np.array([sphere_diameter(v) for v in volumes.ravel().tolist()]).reshape(volumes.shape)


def elongation(coords_mm: np.ndarray) -> float:
    """sqrt(largest / smallest principal variance) of points (N, 3) in mm; 1 below 4 points."""
    if coords_mm.shape[0] < 4:
        return 1.0
    cov = np.cov(coords_mm.T)
    ev = np.linalg.eigvalsh(cov)
    ev = np.maximum(ev, 1.0 / 12.0)  # a one-voxel-thick slab still has the voxel's own variance
    return float(np.sqrt(ev[-1] / ev[0]))


def region_features(
    array: np.ndarray,
    spacing_zyx: Sequence[float],
    center_zyx: Sequence[float],
    radius_mm: float,
    low_hu: float,
    high_hu: float = np.inf,
    allowed: np.ndarray | None = None,
) -> RegionFeatures:
    """Features of the component of ``low_hu < HU <= high_hu`` at a candidate centre.

    Args:
        array: HU volume (z, y, x).
        spacing_zyx: voxel size in mm.
        center_zyx: candidate centre in voxels.
        radius_mm: the region is cut to a ball of this radius around the centre.
        low_hu: lower HU threshold of the region.
        high_hu: upper HU threshold.
        allowed: optional boolean mask the region must lie in (same shape as ``array``).

    Returns:
        The features; a region that is empty gives volume 0 and the ball's mean HU.
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    c = np.asarray(center_zyx, dtype=np.float64)
    half = np.ceil(radius_mm / sp).astype(int) + 1
    lo = np.maximum(0, np.floor(c).astype(int) - half)
    hi = np.minimum(np.asarray(array.shape), np.floor(c).astype(int) + half + 1)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    sub = array[window].astype(np.float32)
    grids = np.ogrid[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
    d2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grids, c, sp, strict=True))
    ball = np.asarray(d2 <= radius_mm * radius_mm)
    region = ball & (sub > low_hu) & (sub <= high_hu)
    if allowed is not None:
        region &= allowed[window]
    voxel_mm3 = float(np.prod(sp))
    if region.any():
        labels, _ = ndi.label(region)
        local = np.clip(np.rint(c).astype(int) - lo, 0, np.asarray(sub.shape) - 1)
        label = int(labels[tuple(local)])
        if label == 0:  # centre not in the region: take the component nearest to it
            pts = np.argwhere(labels > 0)
            nearest = np.argmin((((pts - (c - lo)) * sp) ** 2).sum(axis=1))
            label = int(labels[tuple(pts[nearest])])
        region = labels == label
    count = int(region.sum())
    if count == 0:
        mean = float(sub[ball].mean()) if ball.any() else float(sub.mean())
        return RegionFeatures(0.0, 0.0, mean, 1.0, (float(c[0]), float(c[1]), float(c[2])))
    pts = np.argwhere(region)
    centroid = pts.mean(axis=0) + lo
    vol = count * voxel_mm3
    return RegionFeatures(
        volume_mm3=vol,
        diameter_mm=float(equivalent_diameter(vol)),
        mean_hu=float(sub[region].mean()),
        elongation=elongation(pts * sp),
        centroid_zyx=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
    )


DETECTION_COLUMNS = ("z", "y", "x", "score", *FEATURE_COLUMNS, "detector")
"""Columns of a detector's output: centre in voxels of the working grid, score in [0, 1],
features, and the detector's name."""


def detections_frame(rows: list[dict[str, float]], detector: str) -> pd.DataFrame:
    """A detector's output table (:data:`DETECTION_COLUMNS`) from per-candidate dicts."""
    frame = pd.DataFrame(rows, columns=list(DETECTION_COLUMNS[:-1]), dtype=np.float64)
    frame["detector"] = pd.Series([detector] * len(frame), dtype=object)
    return frame
