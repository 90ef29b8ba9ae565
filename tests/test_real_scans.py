"""False positives per scan and nodule ranks on a few real scans."""

from __future__ import annotations

import pandas as pd
import pytest

from nodule.evaluation.froc import evaluate_froc
from nodule.evaluation.real_scans import format_real_scan_figures, real_scan_figures


def test_fp_per_scan_and_the_nodule_rank() -> None:
    """Two scans, one 20 mm nodule in the first: detections at 0.95 (the nodule), 0.99 and
    0.6 (false positives), 0.97 on an excluded finding (ignored) and 0.3 in the second."""
    annotations = pd.DataFrame([["a", 0.0, 0.0, 0.0, 20.0]], columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    excluded = pd.DataFrame([["b", 50.0, 0.0, 0.0, -1.0]], columns=annotations.columns)
    predictions = pd.DataFrame(
        [
            ["a", 1.0, 0.0, 0.0, 0.95],
            ["a", 80.0, 0.0, 0.0, 0.99],
            ["a", -80.0, 0.0, 0.0, 0.6],
            ["b", 51.0, 0.0, 0.0, 0.97],
            ["b", -50.0, 0.0, 0.0, 0.3],
        ],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"],
    )
    result = evaluate_froc(predictions, annotations, excluded, ["a", "b"], n_bootstrap=0, max_marks_per_scan=None)
    figures = real_scan_figures(result, thresholds=(0.5, 0.9))
    assert figures["n_scans"] == 2 and figures["n_nodules"] == figures["n_hits"] == 1
    assert figures["fp_per_scan"] == pytest.approx(1.5)
    assert figures["fp_per_scan_at"] == {0.5: pytest.approx(1.0), 0.9: pytest.approx(0.5)}
    (nodule,) = figures["nodules"]
    assert nodule["probability"] == pytest.approx(0.95)
    assert nodule["fp_per_scan_above"] == pytest.approx(0.5)  # only the 0.99 false positive ranks above it
    text = format_real_scan_figures(figures)
    assert "found at 0.50 false positives per scan" in text
    missed = evaluate_froc(predictions.iloc[1:], annotations, excluded, ["a", "b"], n_bootstrap=0)
    assert real_scan_figures(missed)["nodules"][0]["probability"] is None
    assert "missed" in format_real_scan_figures(real_scan_figures(missed))
