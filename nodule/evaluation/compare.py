"""Paired comparison of two LUNA16 submissions on the same scans and reference standard.

Pure functions, no I/O. Both submissions are matched as :func:`evaluate_froc` does; the
difference is always **B - A** (positive: B is better). Its confidence interval is a
paired bootstrap: each resample draws one set of scan (or nodule) weights
(:func:`~nodule.evaluation.froc.bootstrap_frocs`) and applies it to both submissions,
so what the two share (the same hard nodules, the same scans) cancels out of the
difference. The one-sided bootstrap p-value is the fraction of resamples in which the
difference is <= 0, i.e. in which B is not better than A.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nodule.data.luna16 import validate_table
from nodule.evaluation.froc import (
    FP_RATES,
    OFFICIAL_MAX_MARKS_PER_SCAN,
    BootstrapUnit,
    FrocResult,
    bootstrap_frocs,
    evaluate_froc,
    percentile_interval,
)

UNIT_TEXT: dict[str, str] = {
    "scan": "scans",
    "nodule": "nodules (with the false positives of their scans; one-patient set)",
}
"""What a bootstrap resample draws, in words, by bootstrap unit."""


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare_froc`; every difference is B - A.

    Attributes:
        cpm_a: CPM of submission A.
        cpm_b: CPM of submission B.
        difference: ``cpm_b - cpm_a``.
        difference_ci95: paired bootstrap 95% interval of the difference, None without bootstrap.
        p_value: fraction of resamples with a difference <= 0 (one-sided: B not better), None
            without bootstrap.
        cpm_a_ci95: bootstrap 95% interval of A's CPM (the same resamples), None without bootstrap.
        cpm_b_ci95: the same for B.
        sensitivity_a: ``{fp_rate: sensitivity}`` of A.
        sensitivity_b: the same for B.
        sensitivity_difference: ``{fp_rate: B - A}``.
        sensitivity_difference_ci95: ``{fp_rate: (lo, hi)}`` paired, None without bootstrap.
        n_scans: scans evaluated (both submissions).
        n_nodules: included nodules in those scans.
        n_hits_a: nodules A hits.
        n_hits_b: nodules B hits.
        n_false_positives_a: false positives of A.
        n_false_positives_b: false positives of B.
        seriesuids_given: False when the scans were taken from the tables.
        n_bootstrap: bootstrap resamples (0: none).
        n_valid_resamples: resamples with a defined difference (some nodule drawn).
        seed: seed of the bootstrap.
        bootstrap_unit: ``scan`` or ``nodule``.
        max_marks_per_scan: the per-scan cap applied (None: none).
        result_a: A's evaluation (point estimates, per-nodule and per-detection tables).
        result_b: B's evaluation.
    """

    cpm_a: float
    cpm_b: float
    difference: float
    difference_ci95: tuple[float, float] | None
    p_value: float | None
    cpm_a_ci95: tuple[float, float] | None
    cpm_b_ci95: tuple[float, float] | None
    sensitivity_a: dict[float, float]
    sensitivity_b: dict[float, float]
    sensitivity_difference: dict[float, float]
    sensitivity_difference_ci95: dict[float, tuple[float, float]] | None
    n_scans: int
    n_nodules: int
    n_hits_a: int
    n_hits_b: int
    n_false_positives_a: int
    n_false_positives_b: int
    seriesuids_given: bool
    n_bootstrap: int
    n_valid_resamples: int
    seed: int
    bootstrap_unit: BootstrapUnit
    max_marks_per_scan: int | None
    result_a: FrocResult
    result_b: FrocResult


def compare_froc(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    annotations: pd.DataFrame,
    excluded: pd.DataFrame | None = None,
    seriesuids: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    bootstrap_unit: BootstrapUnit = "scan",
    max_marks_per_scan: int | None = OFFICIAL_MAX_MARKS_PER_SCAN,
) -> Comparison:
    """Compare two submissions: CPMs, their difference B - A and its paired bootstrap CI.

    Args:
        pred_a: submission A (seriesuid, coordX, coordY, coordZ, probability).
        pred_b: submission B.
        annotations: included nodules.
        excluded: excluded findings, or None.
        seriesuids: the scans evaluated; None: the scans of the annotations and of both
            submissions (the same list for both).
        n_bootstrap: paired bootstrap resamples (0: none).
        seed: seed of the bootstrap.
        bootstrap_unit: resample ``scan`` s or ``nodule`` s (with their scans' false positives).
        max_marks_per_scan: per-scan cap on detections (official 100); None: no cap.

    Returns:
        The comparison.

    Raises:
        Luna16FormatError: a table with missing columns or bad values.
        ValueError: a seriesuid listed twice, or an unknown bootstrap unit.
    """
    given = seriesuids is not None
    if seriesuids is None:
        tables = [
            validate_table(annotations, "annotations", "annotations"),
            validate_table(pred_a, "submission", "predictions A"),
            validate_table(pred_b, "submission", "predictions B"),
        ]
        seriesuids = list(dict.fromkeys(uid for t in tables for uid in t["seriesuid"]))
    a, b = (
        evaluate_froc(
            pred,
            annotations,
            excluded,
            seriesuids,
            n_bootstrap=0,
            seed=seed,
            max_marks_per_scan=max_marks_per_scan,
            bootstrap_unit=bootstrap_unit,
        )
        for pred in (pred_a, pred_b)
    )
    assert a.items is not None and b.items is not None
    rates = list(FP_RATES)
    diff_ci = p_value = a_ci = b_ci = sens_ci = None
    n_valid = 0
    if n_bootstrap > 0 and a.n_scans:
        (at_a, _), (at_b, _) = bootstrap_frocs(
            [a.items, b.items], n_bootstrap, seed, bootstrap_unit=bootstrap_unit
        )
        cpm_a, cpm_b = at_a.mean(axis=1), at_b.mean(axis=1)
        diff = cpm_b - cpm_a
        lo, hi = percentile_interval(np.c_[diff, cpm_a, cpm_b, at_b - at_a])
        diff_ci, a_ci, b_ci = ((float(lo[i]), float(hi[i])) for i in range(3))
        sens_ci = {r: (float(lo[3 + i]), float(hi[3 + i])) for i, r in enumerate(rates)}
        valid = ~np.isnan(diff)
        n_valid = int(valid.sum())
        p_value = float(np.mean(diff[valid] <= 0.0)) if n_valid else math.nan
    return Comparison(
        cpm_a=a.cpm,
        cpm_b=b.cpm,
        difference=b.cpm - a.cpm,
        difference_ci95=diff_ci,
        p_value=p_value,
        cpm_a_ci95=a_ci,
        cpm_b_ci95=b_ci,
        sensitivity_a=a.sensitivities,
        sensitivity_b=b.sensitivities,
        sensitivity_difference={r: b.sensitivities[r] - a.sensitivities[r] for r in rates},
        sensitivity_difference_ci95=sens_ci,
        n_scans=a.n_scans,
        n_nodules=a.n_nodules,
        n_hits_a=a.n_hits,
        n_hits_b=b.n_hits,
        n_false_positives_a=a.n_false_positives,
        n_false_positives_b=b.n_false_positives,
        seriesuids_given=given,
        n_bootstrap=int(n_bootstrap),
        n_valid_resamples=n_valid,
        seed=int(seed),
        bootstrap_unit=bootstrap_unit,
        max_marks_per_scan=max_marks_per_scan,
        result_a=a,
        result_b=b,
    )


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _pair(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_number(v) for v in ci]


def comparison_json(
    comparison: Comparison, label_a: str = "A", label_b: str = "B"
) -> dict[str, object]:
    """The content of ``comparison.json`` (NaN written as null; rates keyed as ``"0.125"`` ...).

    Args:
        comparison: the comparison.
        label_a: name of submission A (e.g. its file).
        label_b: name of submission B.
    """
    c = comparison
    sens_ci = c.sensitivity_difference_ci95
    return {
        "a": label_a,
        "b": label_b,
        "difference_is": "b - a",
        "cpm_a": _number(c.cpm_a),
        "cpm_b": _number(c.cpm_b),
        "difference": _number(c.difference),
        "difference_ci95": _pair(c.difference_ci95),
        "p_value_b_not_better": _number(c.p_value),
        "cpm_a_ci95": _pair(c.cpm_a_ci95),
        "cpm_b_ci95": _pair(c.cpm_b_ci95),
        "sensitivity_a": {f"{r:g}": _number(v) for r, v in c.sensitivity_a.items()},
        "sensitivity_b": {f"{r:g}": _number(v) for r, v in c.sensitivity_b.items()},
        "sensitivity_difference": {
            f"{r:g}": _number(v) for r, v in c.sensitivity_difference.items()
        },
        "sensitivity_difference_ci95": None
        if sens_ci is None
        else {f"{r:g}": _pair(ci) for r, ci in sens_ci.items()},
        "n_scans": c.n_scans,
        "n_nodules": c.n_nodules,
        "n_hits_a": c.n_hits_a,
        "n_hits_b": c.n_hits_b,
        "n_false_positives_a": c.n_false_positives_a,
        "n_false_positives_b": c.n_false_positives_b,
        "seriesuids_given": c.seriesuids_given,
        "n_bootstrap": c.n_bootstrap,
        "n_valid_resamples": c.n_valid_resamples,
        "seed": c.seed,
        "bootstrap_unit": c.bootstrap_unit,
        "max_marks_per_scan": c.max_marks_per_scan,
    }


def format_comparison(comparison: Comparison, label_a: str = "A", label_b: str = "B") -> str:
    """A one-paragraph summary of the comparison, naming the unit the bootstrap resampled."""
    c = comparison
    text = (
        f"Paired comparison on {c.n_scans} scans with {c.n_nodules} nodules: "
        f"B = {label_b} CPM {c.cpm_b:.4f} ({c.n_hits_b} nodules hit, "
        f"{c.n_false_positives_b} false positives), A = {label_a} CPM {c.cpm_a:.4f} "
        f"({c.n_hits_a} hit, {c.n_false_positives_a} false positives); "
        f"difference B - A {c.difference:+.4f}"
    )
    if c.difference_ci95 is None or c.p_value is None:
        text += " (no bootstrap)."
    else:
        lo, hi = c.difference_ci95
        text += (
            f" (paired 95% CI {lo:+.4f} to {hi:+.4f}; B not better in {c.p_value:.1%} of "
            f"{c.n_valid_resamples} resamples, a one-sided bootstrap p-value). Bootstrap: "
            f"{c.n_bootstrap} resamples of {UNIT_TEXT[c.bootstrap_unit]}, seed {c.seed}, "
            "each applied to both submissions."
        )
    parts = []
    for rate in (1.0, 2.0, 4.0):
        part = f"{c.sensitivity_difference[rate]:+.3f} at {rate:g}"
        if c.sensitivity_difference_ci95 is not None:
            lo, hi = c.sensitivity_difference_ci95[rate]
            part += f" ({lo:+.3f} to {hi:+.3f})"
        parts.append(part)
    text += f" Sensitivity difference B - A: {', '.join(parts)} FP/scan."
    return text + "\n"
