"""A realistic synthetic LUNA16 submission built from the reference tables, for demos, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from nodule.evaluation.froc import UNKNOWN_DIAMETER_MM

# world box (mm) in which random false positives fall when a scan has no findings to centre on
_DEFAULT_CENTRE = np.array([0.0, -100.0, -150.0])
_HALF_EXTENT = np.array([130.0, 100.0, 130.0])


def _offsets(
    rng: np.random.Generator, radius: NDArray[np.float64], low: float, high: float
) -> NDArray[np.float64]:
    """Random 3-D offsets at a distance uniform in [low, high) x radius, uniform direction."""
    direction = rng.normal(size=(radius.size, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * (rng.uniform(low, high, size=radius.size) * radius)[:, None]


def make_sample_submission(
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    seed: int,
    *,
    hit_rate: float = 0.85,
    double_hit_rate: float = 0.25,
    near_miss_rate: float = 0.3,
    excluded_hit_rate: float = 0.2,
    fp_per_scan: float = 10.0,
    max_offset: float = 0.9,
    tie_fraction: float = 0.1,
) -> pd.DataFrame:
    """Build a synthetic submission: hits with offsets, double hits, excluded hits, random false positives.

    Each included nodule is hit with probability ``hit_rate`` at a distance up to
    ``max_offset`` x its radius (score ~ Beta(5, 2)) and then hit again with probability
    ``double_hit_rate``; a missed nodule gets with probability ``near_miss_rate`` a mark just
    outside its radius (a false positive). ``excluded_hit_rate`` of the excluded findings get
    a mark within their radius. Each scan gets Poisson(``fp_per_scan``) random marks
    (score ~ Beta(2, 5)) around its findings. ``tie_fraction`` of the scores are rounded to
    two decimals, making ties. Rows are shuffled.

    Args:
        annotations: included nodules.
        excluded: excluded findings, or None.
        seriesuids: scans that get random false positives.
        seed: seed of every random draw.
        hit_rate: probability that a nodule is hit.
        double_hit_rate: probability that a hit nodule gets a second hit.
        near_miss_rate: probability that a missed nodule gets a mark just outside it.
        excluded_hit_rate: probability that an excluded finding gets a mark on it.
        fp_per_scan: mean number of random marks a scan.
        max_offset: largest hit offset as a fraction of the radius (< 1 to hit).
        tie_fraction: fraction of scores rounded to two decimals.

    Returns:
        Submission with columns seriesuid, coordX, coordY, coordZ, probability.
    """
    rng = np.random.default_rng(seed)
    coords = ["coordX", "coordY", "coordZ"]
    parts: list[tuple[NDArray[np.object_], NDArray[np.float64], NDArray[np.float64]]] = []

    uid = annotations["seriesuid"].to_numpy(dtype=object)
    xyz = annotations[coords].to_numpy(dtype=np.float64)
    radius = annotations["diameter_mm"].to_numpy(dtype=np.float64) / 2.0
    hit = rng.random(uid.size) < hit_rate
    double = hit & (rng.random(uid.size) < double_hit_rate)
    for chosen in (hit, double):
        r = radius[chosen]
        parts.append(
            (uid[chosen], xyz[chosen] + _offsets(rng, r, 0.0, max_offset), rng.beta(5, 2, r.size))
        )
    near = ~hit & (rng.random(uid.size) < near_miss_rate)
    parts.append(
        (
            uid[near],
            xyz[near] + _offsets(rng, radius[near], 1.05, 1.5),
            rng.beta(2, 5, int(near.sum())),
        )
    )

    centres: dict[str, NDArray[np.float64]] = {}
    for table in (annotations, excluded):
        if table is not None and len(table):
            for key, group in table.groupby("seriesuid", sort=False)[coords]:
                centres.setdefault(str(key), group.to_numpy(dtype=np.float64).mean(axis=0))
    if excluded is not None and len(excluded):
        euid = excluded["seriesuid"].to_numpy(dtype=object)
        exyz = excluded[coords].to_numpy(dtype=np.float64)
        ediam = excluded["diameter_mm"].to_numpy(dtype=np.float64)
        eradius = np.where(ediam < 0, UNKNOWN_DIAMETER_MM, ediam) / 2.0
        on = rng.random(euid.size) < excluded_hit_rate
        parts.append(
            (
                euid[on],
                exyz[on] + _offsets(rng, eradius[on], 0.0, max_offset),
                rng.beta(2, 3, int(on.sum())),
            )
        )

    uids = np.asarray(list(seriesuids), dtype=object)
    n_fp = rng.poisson(fp_per_scan, size=uids.size)
    fp_uid = np.repeat(uids, n_fp)
    centre = np.array([centres.get(str(u), _DEFAULT_CENTRE) for u in uids]).reshape(-1, 3)
    fp_xyz = (
        np.repeat(centre, n_fp, axis=0)
        + rng.uniform(-1.0, 1.0, size=(fp_uid.size, 3)) * _HALF_EXTENT
    )
    parts.append((fp_uid, fp_xyz, rng.beta(2, 5, fp_uid.size)))

    all_uid = np.concatenate([p[0] for p in parts])
    all_xyz = np.concatenate([p[1].reshape(-1, 3) for p in parts])
    prob = np.concatenate([p[2] for p in parts])
    tied = rng.random(prob.size) < tie_fraction
    prob[tied] = np.round(prob[tied], 2)
    order = rng.permutation(prob.size)
    return pd.DataFrame(
        {
            "seriesuid": all_uid[order].astype(str),
            "coordX": all_xyz[order, 0],
            "coordY": all_xyz[order, 1],
            "coordZ": all_xyz[order, 2],
            "probability": prob[order],
        }
    )
