"""An independent, deliberately plain re-implementation of the official LUNA16 evaluation.

It follows ``noduleCADEvaluationLUNA16.py`` (``evaluateCAD``, ``computeFROC``,
``computeFROC_bootstrap``) step by step: Python loops per scan, per nodule, per candidate,
dicts of candidates that are deleted when they hit a finding, ``math.pow`` distances, the
``maxNumberOfCADMarks`` cut, and ``sklearn.metrics.roc_curve`` (``drop_intermediate=True``)
written out by hand since sklearn is not a dependency. Only for tests: slow by design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

FP_RATES = [0.125, 0.25, 0.5, 1, 2, 4, 8]
MIN_PROB_VALUE = -1000000000.0


def sklearn_roc_curve(
    y_true: list[float], y_score: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(y_true, y_score)`` with its defaults, written out."""
    y_true_a = np.asarray(y_true, dtype=np.float64)
    y_score_a = np.asarray(y_score, dtype=np.float64)
    desc = np.argsort(y_score_a, kind="mergesort")[::-1]
    y_score_a = y_score_a[desc]
    y_true_a = y_true_a[desc]
    distinct = np.where(np.diff(y_score_a))[0]
    threshold_idxs = np.r_[distinct, y_true_a.size - 1]
    tps = np.cumsum(y_true_a)[threshold_idxs]
    fps = 1 + threshold_idxs - tps
    thresholds = y_score_a[threshold_idxs]
    if len(fps) > 2:
        optimal = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[optimal], tps[optimal], thresholds[optimal]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[thresholds[0] + 1, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.repeat(np.nan, fps.shape)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.repeat(np.nan, tps.shape)
    return fpr, tpr, thresholds


def compute_froc(
    gt: list[float], prob: list[float], n_images: int, exclude: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official ``computeFROC``."""
    gt_local = [gt[i] for i in range(len(exclude)) if not exclude[i]]
    prob_local = [prob[i] for i in range(len(exclude)) if not exclude[i]]
    n_detected = sum(gt_local)
    n_lesions = sum(gt)
    n_candidates = len(prob_local)
    fpr, tpr, thresholds = sklearn_roc_curve(gt_local, prob_local)
    # official border case: no false positives at all -> FP/scan 0 everywhere
    no_fp = sum(gt) == len(gt)
    fps = np.zeros(len(fpr)) if no_fp else fpr * (n_candidates - n_detected) / n_images
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (tpr * n_detected) / n_lesions
    return fps, sens, thresholds


def _rows(table: pd.DataFrame | None, columns: Sequence[str]) -> list[dict[str, Any]]:
    if table is None:
        return []
    return [
        dict(zip(columns, row, strict=True)) for row in table[list(columns)].itertuples(index=False)
    ]


def collect_froc_items(
    predictions: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    max_marks: int = 100,
) -> dict[str, Any]:
    """The matching part of the official ``evaluateCAD``: FROC vectors and counts."""
    coords = ["seriesuid", "coordX", "coordY", "coordZ"]
    results = _rows(predictions, [*coords, "probability"])
    all_nodules: dict[str, list[dict[str, Any]]] = {uid: [] for uid in seriesuids}
    for state, table in (("Included", annotations), ("Excluded", excluded)):
        for row in _rows(table, [*coords, "diameter_mm"]):
            if row["seriesuid"] in all_nodules:
                all_nodules[row["seriesuid"]].append({**row, "state": state})

    cands_by_scan: dict[str, dict[int, dict[str, Any]]] = {uid: {} for uid in seriesuids}
    for row in results:
        if row["seriesuid"] in cands_by_scan:
            nodules = cands_by_scan[row["seriesuid"]]
            nodules[len(nodules)] = row
    for uid in seriesuids:
        nodules = cands_by_scan[uid]
        if max_marks > 0 and len(nodules) > max_marks:
            probs = sorted((float(n["probability"]) for n in nodules.values()), reverse=True)
            threshold = probs[max_marks]
            kept: dict[int, dict[str, Any]] = {}
            for key, n in nodules.items():
                if len(kept) >= max_marks:
                    break
                if float(n["probability"]) > threshold:
                    kept[key] = n
            cands_by_scan[uid] = kept

    gt: list[float] = []
    prob: list[float] = []
    divisor: list[str] = []
    exclude: list[bool] = []
    tps = fps_count = fns = irrelevant = doubles = total_nodules = 0
    for uid in seriesuids:
        candidates = cands_by_scan[uid]
        candidates2 = dict(candidates)
        for annot in all_nodules[uid]:
            if annot["state"] == "Included":
                total_nodules += 1
            x, y, z = float(annot["coordX"]), float(annot["coordY"]), float(annot["coordZ"])
            diameter = float(annot["diameter_mm"])
            if diameter < 0.0:
                diameter = 10.0
            radius_squared = pow(diameter / 2.0, 2.0)
            found = False
            matches = []
            for key, cand in candidates.items():
                x2, y2, z2 = float(cand["coordX"]), float(cand["coordY"]), float(cand["coordZ"])
                dist = math.pow(x - x2, 2.0) + math.pow(y - y2, 2.0) + math.pow(z - z2, 2.0)
                if dist < radius_squared:
                    if annot["state"] == "Included":
                        found = True
                        matches.append(cand)
                        candidates2.pop(key, None)  # already gone: it hit two nodules
                    elif annot["state"] == "Excluded" and key in candidates2:
                        irrelevant += 1
                        del candidates2[key]
            if len(matches) > 1:
                doubles += len(matches) - 1
            if annot["state"] == "Included":
                if found:
                    max_prob = None
                    for cand in matches:
                        if max_prob is None or float(cand["probability"]) > max_prob:
                            max_prob = float(cand["probability"])
                    gt.append(1.0)
                    prob.append(float(max_prob))  # type: ignore[arg-type]
                    divisor.append(uid)
                    exclude.append(False)
                    tps += 1
                else:
                    fns += 1
                    gt.append(1.0)
                    prob.append(MIN_PROB_VALUE)
                    divisor.append(uid)
                    exclude.append(True)
        for cand in candidates2.values():
            fps_count += 1
            gt.append(0.0)
            prob.append(float(cand["probability"]))
            divisor.append(uid)
            exclude.append(False)
    return {
        "gt": gt,
        "prob": prob,
        "divisor": divisor,
        "exclude": exclude,
        "tp": tps,
        "fp": fps_count,
        "fn": fns,
        "irrelevant": irrelevant,
        "total_nodules": total_nodules,
    }


def reference_evaluate(
    predictions: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None,
    seriesuids: Sequence[str],
    max_marks: int = 100,
) -> dict[str, Any]:
    """Official point estimate: FROC, sensitivities at the seven rates (``numpy.interp``) and CPM."""
    c = collect_froc_items(predictions, annotations, excluded, seriesuids, max_marks)
    fps, sens, _ = compute_froc(c["gt"], c["prob"], len(seriesuids), c["exclude"])
    at = [float(np.interp(r, fps, sens)) for r in FP_RATES]
    return {**c, "fps": fps, "sens": sens, "sensitivities": at, "cpm": float(np.mean(at))}


def reference_bootstrap_cpms(
    c: dict[str, Any], seriesuids: Sequence[str], draws: list[np.ndarray]
) -> list[float]:
    """Official ``computeFROC_bootstrap`` resampling, given the drawn scan indices of each resample."""
    by_scan: dict[str, list[tuple[float, float, bool]]] = {}
    for g, p, d, e in zip(c["gt"], c["prob"], c["divisor"], c["exclude"], strict=True):
        by_scan.setdefault(d, []).append((g, p, e))
    cpms = []
    for draw in draws:
        gt: list[float] = []
        prob: list[float] = []
        exclude: list[bool] = []
        for i in draw:
            for g, p, e in by_scan.get(seriesuids[int(i)], []):
                gt.append(g)
                prob.append(p)
                exclude.append(e)
        fps, sens, _ = compute_froc(gt, prob, len(seriesuids), exclude)
        cpms.append(float(np.mean([np.interp(r, fps, sens) for r in FP_RATES])))
    return cpms
