"""Large solid nodule detector: masses of 10 mm and more, also at the pleura.

After Setio et al. 2015/2016: a lung mask cuts away nodules attached to the chest wall
or the mediastinum, so this detector works inside a wider mask, on a coarse grid
(``coarse_mm``, default 2 mm: a 10 mm nodule is still 5 voxels across):

1. Each lung (label) is closed with a ball of ``closing_mm`` (exact, by two Euclidean
   distance transforms in the lung's bounding box), each lung on its own so that the
   mediastinum is never bridged; the union with the lung mask takes in masses that
   indent the lung surface up to about 1.5 x ``closing_mm`` across. The closing may run
   on a coarser grid (``closing_grid_mm``); by default it is the coarse grid itself,
   since a 4 mm grid already loses half of an 18 mm mediastinal mass.
2. Voxels denser than ``min_hu`` in that mask are opened with a ball of
   ``opening_mm``: vessels and walls thinner than twice that vanish, masses stay.
3. Components with an equivalent diameter in ``[min_diameter_mm, max_diameter_mm]``
   and elongation up to ``max_elongation`` are candidates, centred on their centroid.
4. Score: ``compactness / elongation`` where compactness is the component's volume
   over that of the ellipsoid with its principal moments (1 for any ellipsoid, lower
   for crescents along the pleura and branching vessels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage as ndi

from nodule.candidates.features import detections_frame, equivalent_diameter
from nodule.candidates.subsolid import ball, binary_open


@dataclass(frozen=True)
class LargeSolidConfig:
    """Parameters of the large-solid detector (see the module docstring).

    Attributes:
        coarse_mm: voxel size of the coarse grid, mm.
        closing_mm: radius of the ball each lung is closed with, mm.
        closing_grid_mm: voxel size of the grid the closing runs on, mm.
        min_hu: density threshold.
        opening_mm: radius of the opening ball, mm.
        min_diameter_mm: smallest equivalent diameter (after opening).
        max_diameter_mm: largest equivalent diameter.
        max_elongation: largest elongation.
        max_candidates: the best this many are kept.
    """

    coarse_mm: float = 2.0
    closing_mm: float = 20.0
    closing_grid_mm: float = 2.0
    min_hu: float = -300.0
    opening_mm: float = 4.0
    min_diameter_mm: float = 10.0
    max_diameter_mm: float = 60.0
    max_elongation: float = 3.0
    max_candidates: int = 30


def _block_factors(spacing_zyx: Sequence[float], target_mm: float) -> tuple[int, int, int]:
    f = [max(1, round(target_mm / s)) for s in spacing_zyx]
    return f[0], f[1], f[2]


def _block_mean(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    return sitk.GetArrayFromImage(sitk.BinShrink(image, list(factors[::-1])))


def _outside_distance2(mask: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance (mm^2) of each voxel outside ``mask`` to the nearest voxel in it (<= 0 inside).

    SimpleITK's Maurer transform: exact, and several times faster than scipy's here.
    """
    image = sitk.GetImageFromArray(mask.view(np.uint8))
    image.SetSpacing([float(s) for s in spacing_zyx[::-1]])
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=True, useImageSpacing=True, backgroundValue=0
    )
    return sitk.GetArrayFromImage(distance)


def close_ball(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Morphological closing with a Euclidean ball of ``radius_mm`` (by two distance transforms)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    pad = np.ceil(radius_mm / sp).astype(int) + 1
    padded = np.pad(mask.astype(bool, copy=False), [(int(p), int(p)) for p in pad])
    if not padded.any():
        return mask.copy()
    r2 = radius_mm * radius_mm
    dilated = _outside_distance2(padded, sp) <= r2
    # the eroded voxels: farther than the radius from every voxel outside the dilation
    closed = _outside_distance2(~dilated, sp) > r2
    inner = tuple(slice(int(p), int(p) + n) for p, n in zip(pad, mask.shape, strict=True))
    return np.asarray(closed[inner] | mask)


def open_ball(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Morphological opening with a Euclidean ball of ``radius_mm`` (voxels within the radius).

    By shifted logical ANDs / ORs (:func:`~nodule.candidates.subsolid.binary_open`): the
    ball of a few voxels used here makes that faster than two distance transforms.
    """
    if not mask.any():
        return mask.copy()
    return binary_open(mask, ball(radius_mm, spacing_zyx))


def closed_lungs(labels: np.ndarray, spacing_zyx: Sequence[float], radius_mm: float, grid_mm: float) -> np.ndarray:
    """Union of the lungs, each closed on its own with a ball of ``radius_mm``, on a coarser grid.

    The closing runs on every k-th voxel (``k`` such that the grid is about ``grid_mm``)
    in each lung's bounding box plus the ball, and is copied back by repetition: ``k^3``
    times fewer voxels for the distance transforms, with a surface accurate to about one
    coarse voxel.

    Args:
        labels: lung labels (0 background, one value per lung).
        spacing_zyx: voxel size of ``labels`` in mm.
        radius_mm: radius of the closing ball, mm.
        grid_mm: voxel size of the grid the closing runs on, mm (at least ``labels``').

    Returns:
        Boolean mask of ``labels``' shape.
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    k = np.maximum(1, np.round(grid_mm / sp)).astype(int)
    sub = labels[:: k[0], :: k[1], :: k[2]]
    ssp = sp * k
    out = np.zeros(sub.shape, dtype=bool)
    pad = np.ceil(radius_mm / ssp).astype(int) + 1
    for value, box in enumerate(ndi.find_objects(sub), start=1):
        if box is None:
            continue
        # each lung closed in its own bounding box (plus the ball): the mediastinum is never bridged
        window = tuple(
            slice(max(0, b.start - int(p)), min(n, b.stop + int(p))) for b, p, n in zip(box, pad, sub.shape, strict=True)
        )
        out[window] |= close_ball(sub[window] == value, radius_mm, ssp)
    for axis, f in enumerate(k):
        out = np.repeat(out, int(f), axis=axis)
    return np.asarray(out[: labels.shape[0], : labels.shape[1], : labels.shape[2]])


def _shape(pts_mm: np.ndarray, volume_mm3: float) -> tuple[float, float]:
    """Elongation and compactness (volume / volume of the moment ellipsoid) of points in mm."""
    cov = np.cov(pts_mm.T) if len(pts_mm) > 3 else np.eye(3)
    ev = np.maximum(np.linalg.eigvalsh(cov), 1.0 / 12.0)
    semi = np.sqrt(5.0 * ev)
    ellipsoid = 4.0 / 3.0 * np.pi * float(np.prod(semi))
    return float(np.sqrt(ev[-1] / ev[0])), float(min(1.0, volume_mm3 / ellipsoid))


def detect_large_solid(
    array: np.ndarray,
    labels: np.ndarray,
    spacing_zyx: Sequence[float],
    config: LargeSolidConfig = LargeSolidConfig(),
) -> pd.DataFrame:
    """Large solid nodule candidates (>= 10 mm, juxtapleural ones included) in a working volume.

    Args:
        array: HU volume (z, y, x), float32.
        labels: lung labels of the same shape (0 background, one value per lung).
        spacing_zyx: voxel size in mm.
        config: parameters.

    Returns:
        Detections in voxels of ``array``'s grid (:data:`~nodule.candidates.features.DETECTION_COLUMNS`), best first.
    """
    factors = _block_factors(spacing_zyx, config.coarse_mm)
    coarse = _block_mean(array, factors)
    csp = np.asarray(spacing_zyx, dtype=np.float64) * np.asarray(factors)
    # centre of each block (nearest voxel) so that labels and block means agree
    lab = labels[tuple(slice(f // 2, f // 2 + n * f, f) for f, n in zip(factors, coarse.shape, strict=True))]
    region = lab > 0
    region |= closed_lungs(lab, csp, config.closing_mm, config.closing_grid_mm)
    dense = open_ball(region & (coarse > config.min_hu), config.opening_mm, csp)
    comp, n = ndi.label(dense)
    if n == 0:
        return detections_frame([], "large_solid")
    voxel_mm3 = float(np.prod(csp))
    counts = np.bincount(comp.ravel(), minlength=n + 1)
    diam = equivalent_diameter(counts * voxel_mm3)
    ok = (diam >= config.min_diameter_mm) & (diam <= config.max_diameter_mm)
    ok[0] = False
    objects = ndi.find_objects(comp)
    rows = []
    offset = (np.asarray(factors) - 1) / 2.0
    for label in np.flatnonzero(ok):
        sl = objects[label - 1]
        region_l = comp[sl] == label
        pts = np.argwhere(region_l)
        vol = float(counts[label] * voxel_mm3)
        elong, compact = _shape(pts * csp, vol)
        if elong > config.max_elongation:
            continue
        centre = (pts.mean(axis=0) + np.array([s.start for s in sl])) * np.asarray(factors) + offset
        rows.append(
            {
                "z": centre[0],
                "y": centre[1],
                "x": centre[2],
                "score": compact / elong,
                "diameter_mm": float(diam[label]),
                "volume_mm3": vol,
                "mean_hu": float(coarse[sl][region_l].mean()),
                "elongation": elong,
            }
        )
    rows.sort(key=lambda r: -r["score"])
    return detections_frame(rows[: config.max_candidates], "large_solid")
