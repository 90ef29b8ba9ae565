"""Figures of a model on a few real scans scored with their real reference standard.

A handful of real scans (the test-only LIDC scans: one LUNA16 nodule in two scans) carry
too few nodules for a CPM to mean much; what they measure well is the false positives a
model puts on real lung. :func:`real_scan_figures` reads them off a FROC evaluation
(:func:`nodule.evaluation.froc.evaluate_froc`, every detection kept or the official cap):
false positives per scan above probability thresholds, and per real nodule its best
probability and how many false positives per scan rank above it (the FP/scan at which it
is found). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nodule.evaluation.froc import FALSE_POSITIVE, FrocResult

THRESHOLDS: tuple[float, ...] = (0.5, 0.9, 0.99)
"""Probability thresholds at which false positives per scan are counted."""


def real_scan_figures(result: FrocResult, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """False positives per scan and the real nodules' ranks of an evaluation on real scans.

    Args:
        result: the evaluation (its per-detection and per-nodule tables).
        thresholds: probabilities at which false positives per scan are counted.

    Returns:
        ``n_scans``, ``n_nodules``, ``n_hits``, ``fp_per_scan`` (all false positives of the
        evaluated detections, per scan), ``fp_per_scan_at`` ({threshold: FP/scan at
        probability >= threshold}) and ``nodules``: per nodule its seriesuid, diameter,
        best ``probability`` (None when missed) and ``fp_per_scan_above`` (false positives
        per scan with a higher probability than its best detection: the operating point
        at which it is found; None when missed).
    """
    detections = result.detections
    fp = detections[detections["status"] == FALSE_POSITIVE]
    fp_prob = np.sort(fp["probability"].to_numpy(np.float64))
    n_scans = max(result.n_scans, 1)
    nodules = []
    for _, row in result.nodules.iterrows():
        prob = float(row["probability"])
        hit = bool(row["hit"]) and not np.isnan(prob)
        above = int(fp_prob.size - np.searchsorted(fp_prob, prob, side="right")) if hit else None
        nodules.append(
            {
                "seriesuid": str(row["seriesuid"]),
                "diameter_mm": float(row["diameter_mm"]),
                "probability": prob if hit else None,
                "fp_per_scan_above": above / n_scans if above is not None else None,
            }
        )
    return {
        "n_scans": result.n_scans,
        "n_nodules": result.n_nodules,
        "n_hits": result.n_hits,
        "fp_per_scan": fp_prob.size / n_scans,
        "fp_per_scan_at": {float(t): int((fp_prob >= t).sum()) / n_scans for t in thresholds},
        "nodules": nodules,
    }


def format_real_scan_figures(figures: dict[str, Any], what: str = "real scans") -> str:
    """One readable paragraph of :func:`real_scan_figures`."""
    at = ", ".join(f"p >= {t:g}: {v:.1f}" for t, v in figures["fp_per_scan_at"].items())
    lines = [
        f"{what}: {figures['n_scans']} scans, {figures['n_nodules']} real nodule(s), {figures['n_hits']} hit; "
        f"false positives per scan {figures['fp_per_scan']:.1f} in all ({at})"
    ]
    for nod in figures["nodules"]:
        if nod["probability"] is None:
            lines.append(f"  nodule {nod['diameter_mm']:.1f} mm in {nod['seriesuid'][-12:]}: missed by every candidate")
        else:
            lines.append(
                f"  nodule {nod['diameter_mm']:.1f} mm in ...{nod['seriesuid'][-12:]}: probability {nod['probability']:.3f}, "
                f"found at {nod['fp_per_scan_above']:.2f} false positives per scan"
            )
    return "\n".join(lines)
