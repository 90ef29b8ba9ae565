"""Candidate labels from the LUNA16 reference standard.

A candidate is *positive* when it lies strictly inside the sphere of an included nodule
(distance to the centre < diameter / 2, the rule of the LUNA16 evaluation script); it
is *on an excluded finding* when it is not positive and lies strictly inside the sphere
of an excluded finding (unknown diameters, -1, count as
:data:`~nodule.evaluation.froc.UNKNOWN_DIAMETER_MM`), or strictly inside its box when
the row gives ``extentX, extentY, extentZ`` (full sizes in mm, world axes; the
evaluation's rule, :func:`~nodule.evaluation.froc.finding_regions`). Candidates on
excluded findings are neither nodules nor clear negatives: the evaluation ignores them,
so training leaves them out (:func:`training_rows`), while validation, test and
prediction keep every candidate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nodule.data.luna16 import COORD_COLUMNS
from nodule.evaluation.froc import finding_regions

LABEL = "label"
"""Column of :func:`label_candidates`: 1 nodule, 0 not a nodule."""
ON_EXCLUDED = "on_excluded"
"""Column of :func:`label_candidates`: True when a non-positive candidate lies on an excluded finding."""
NODULE_ID = "nodule_id"
"""Column of :func:`label_candidates`: row of the first annotation hit (-1 when none)."""


def _inside(
    candidates: pd.DataFrame, findings: pd.DataFrame, boxes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate: strictly inside any finding's region, and the first such finding's row.

    Regions are spheres, or with ``boxes`` the boxes of rows that give extentX/Y/Z
    (:func:`~nodule.evaluation.froc.finding_regions`, the evaluation's rule).
    """
    inside = np.zeros(len(candidates), dtype=bool)
    first = np.full(len(candidates), -1, dtype=np.int64)
    if findings is None or findings.empty or candidates.empty:
        return inside, first
    cand_uid = candidates["seriesuid"].astype(str).to_numpy()
    cand_xyz = candidates[list(COORD_COLUMNS)].to_numpy(np.float64)
    find_uid = findings["seriesuid"].astype(str).to_numpy()
    regions = finding_regions(findings, boxes=boxes, source="excluded" if boxes else "annotations")
    for uid in np.intersect1d(np.unique(cand_uid), np.unique(find_uid)):
        c = np.flatnonzero(cand_uid == uid)
        f = np.flatnonzero(find_uid == uid)
        hits = regions.take(f).contains(cand_xyz[c]).T
        any_hit = hits.any(axis=1)
        inside[c] = any_hit
        first[c[any_hit]] = f[np.argmax(hits[any_hit], axis=1)]
    return inside, first


def label_candidates(
    candidates: pd.DataFrame,
    annotations: pd.DataFrame | None,
    excluded: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Label candidates against the nodules and excluded findings of their scans.

    Args:
        candidates: ``seriesuid, coordX, coordY, coordZ`` (world mm) and any other columns.
        annotations: included nodules (``seriesuid, coordX, coordY, coordZ, diameter_mm``);
            None labels every candidate 0 (e.g. unlabelled scans to predict).
        excluded: excluded findings (same columns; diameter -1 = unknown; rows with
            extentX/Y/Z are boxes) or None.

    Returns:
        A copy of ``candidates`` with :data:`LABEL` (int), :data:`ON_EXCLUDED` (bool) and
        :data:`NODULE_ID` (positional row of the annotation hit first, -1) added; the
        index is kept.
    """
    out = candidates.copy()
    positive, nodule_id = _inside(
        out, annotations.reset_index(drop=True) if annotations is not None else pd.DataFrame()
    )
    on_excluded, _ = _inside(
        out, excluded.reset_index(drop=True) if excluded is not None else pd.DataFrame(), boxes=True
    )
    out[LABEL] = positive.astype(np.int64)
    out[ON_EXCLUDED] = on_excluded & ~positive
    out[NODULE_ID] = nodule_id
    return out


def training_rows(labelled: pd.DataFrame) -> pd.DataFrame:
    """The candidates fit for training: all but those on excluded findings."""
    return labelled[~labelled[ON_EXCLUDED].to_numpy(bool)]
