"""LUNA16 FROC / CPM: each rule of the official script on tables small enough to compute by hand,
and bit-for-bit agreement with a plain re-implementation of the official script
(tests/luna16_reference.py) on seeded synthetic submissions built from the real tables.

How each rule is checked (scan lists of one scan unless said; FP/scan = negatives / scans):
- hit = squared distance strictly below (d/2)^2: a mark at (3, 4, 0) from a 10 mm nodule
  (distance exactly 5) misses, one at (3, 3.99, 0) hits -> CPM 0 vs 1.
- excluded diameter -1 => 10 mm: marks 4.9 mm (ignored) and 5 mm (false positive) from an
  excluded finding of unknown size -> CPM 4/7 (with the 4.9 mm mark as an FP it would be 3/7).
- duplicate ignored: a second, lower mark on a hit nodule is not an FP -> CPM 5.5/7 (5/7 if it were).
- excluded-hit ignored, and a mark on both an excluded finding and a nodule is a hit.
- missed nodule in the denominator: 1 of 2 nodules hit, no FP below it -> CPM 0.5.
- FP/scan divided by the scans of the list: the duplicate case with 4 scans -> CPM 6.5/7, with 8 -> 1.
- detections of scans outside the list dropped (and their nodules not counted).
- interpolation: a hit and an FP with the same score make one diagonal ROC step -> the
  sensitivity at r FP/scan is r/2 up to 1 -> CPM (1/16 + 1/8 + 1/4 + 4/2) / 7.
- ties at the 100-marks cap drop every tied mark; a mark inside two nodules hits both.
- nodule bootstrap unit: one resample's weights by hand (a scan's FPs weigh the mean draw
  count of its nodules, a scan without nodules 1, FP/scan divided by their sum), and unit
  weights giving the point estimate bit for bit.
- excluded boxes (extentX/Y/Z): strictly inside ignored, on a face a false positive, rows
  without extents still spheres; the training labels agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from luna16_reference import collect_froc_items, reference_bootstrap_cpms, reference_evaluate

from nodule.data.luna16 import (
    Luna16FormatError,
    read_annotations,
    read_excluded,
    read_folds,
    read_seriesuids,
)
from nodule.evaluation.froc import (
    FP_RATES,
    bootstrap_froc,
    evaluate_froc,
    froc_curve,
    match_detections,
    nodule_resampler,
    nodule_weights,
    sensitivities_at,
)
from nodule.evaluation.sample import make_sample_submission

S1, S2, S3, S4 = "1.2.840.1", "1.2.840.2", "1.2.840.3", "1.2.840.4"
Row = tuple[str, float, float, float, float]


def _findings(rows: Sequence[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])


def _marks(rows: Sequence[Row]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"])


def _cpm(
    marks: Sequence[Row],
    nodules: Sequence[Row],
    excluded: Sequence[Row] = (),
    uids: Sequence[str] = (S1,),
) -> float:
    return evaluate_froc(
        _marks(marks), _findings(nodules), _findings(excluded), uids, n_bootstrap=0
    ).cpm


def test_hit_needs_distance_strictly_below_radius() -> None:
    nodule = [(S1, 0.0, 0.0, 0.0, 10.0)]
    miss = evaluate_froc(_marks([(S1, 3.0, 4.0, 0.0, 0.9)]), _findings(nodule), None, [S1], 0)
    assert (miss.n_hits, miss.n_false_positives, miss.cpm) == (0, 1, 0.0)
    assert miss.detections["status"].tolist() == ["false_positive"]
    hit = evaluate_froc(_marks([(S1, 3.0, 3.99, 0.0, 0.9)]), _findings(nodule), None, [S1], 0)
    assert (hit.n_hits, hit.n_false_positives, hit.cpm) == (1, 0, 1.0)  # no FP at all: FP/scan 0


def test_excluded_unknown_diameter_is_10mm_and_its_marks_are_ignored() -> None:
    nodule = [(S1, 100.0, 0.0, 0.0, 6.0)]
    excluded = [(S1, 0.0, 0.0, 0.0, -1.0), (S1, 100.0, 1.0, 0.0, -1.0)]
    marks = [
        (S1, 4.9, 0.0, 0.0, 0.9),  # inside the 10 mm excluded finding: ignored
        (S1, 5.0, 0.0, 0.0, 0.8),  # on its border: a false positive
        (S1, 100.0, 0.5, 0.0, 0.5),  # on the nodule and on an excluded finding: a hit
    ]
    result = evaluate_froc(_marks(marks), _findings(nodule), _findings(excluded), [S1], 0)
    assert result.detections["status"].tolist() == [
        "excluded_finding",
        "false_positive",
        "true_positive",
    ]
    assert (result.n_hits, result.n_false_positives, result.n_excluded_hits) == (1, 1, 1)
    # items: FP 0.8 then hit 0.5 -> FP/scan [0, 1, 1], sensitivity [0, 0, 1]
    assert result.sensitivities == dict(zip(FP_RATES, [0, 0, 0, 1, 1, 1, 1], strict=True))
    assert result.cpm == pytest.approx(4 / 7, abs=1e-12)


def test_duplicates_are_ignored_and_fp_rate_divides_by_listed_scans() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S1, 50.0, 0.0, 0.0, 10.0)]
    marks = [
        (S1, 1.0, 0.0, 0.0, 0.5),  # duplicate of the 0.9 mark: ignored
        (S1, 0.0, 1.0, 0.0, 0.9),
        (S1, 50.0, 1.0, 0.0, 0.3),
        (S1, -80.0, 0.0, 0.0, 0.6),  # false positive
    ]
    one = evaluate_froc(_marks(marks), _findings(nodules), None, [S1], 0)
    assert one.detections["status"].tolist() == [
        "duplicate",
        "true_positive",
        "true_positive",
        "false_positive",
    ]
    assert (one.n_duplicates, one.n_false_positives, one.n_detections) == (1, 1, 4)
    # hit 0.9, FP 0.6, hit 0.3 -> FP/scan [0, 0, 1, 1], sensitivity [0, .5, .5, 1]
    assert one.cpm == pytest.approx(5.5 / 7, abs=1e-12)
    assert _cpm(marks, nodules, uids=[S1, S2, S3, S4]) == pytest.approx(6.5 / 7, abs=1e-12)
    eight = [S1, *(f"9.{i}" for i in range(7))]
    assert _cpm(marks, nodules, uids=eight) == pytest.approx(1.0, abs=1e-12)


def test_missed_nodule_counts_in_denominator_only() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S1, 50.0, 0.0, 0.0, 10.0)]
    result = evaluate_froc(
        _marks([(S1, 0.0, 0.0, 0.0, 0.9), (S1, -80.0, 0.0, 0.0, 0.1)]),
        _findings(nodules),
        None,
        [S1],
        0,
    )
    assert (result.n_nodules, result.n_hits) == (2, 1)
    assert result.cpm == pytest.approx(0.5, abs=1e-12)
    assert result.nodules["hit"].tolist() == [True, False]
    assert (
        np.isnan(result.nodules["probability"].iloc[1])
        and result.nodules["detection_id"].iloc[1] == -1
    )


def test_scans_outside_the_list_are_dropped() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S2, 0.0, 0.0, 0.0, 10.0)]
    marks = [(S1, 0.0, 0.0, 0.0, 0.9), (S2, 80.0, 0.0, 0.0, 0.99), (S1, -80.0, 0.0, 0.0, 0.1)]
    only_s1 = evaluate_froc(_marks(marks), _findings(nodules), None, [S1], 0)
    assert (only_s1.n_scans, only_s1.n_nodules, only_s1.n_not_listed) == (1, 1, 1)
    assert only_s1.detections["status"].iloc[1] == "scan_not_listed"
    assert only_s1.cpm == 1.0
    both = evaluate_froc(_marks(marks), _findings(nodules), None, None, 0)  # scans from the tables
    assert (both.n_scans, both.n_nodules, both.seriesuids_given) == (2, 2, False)
    # FP 0.99, hit 0.9, FP 0.1 over 2 scans -> FP/scan [0, .5, .5, 1], sensitivity [0, 0, .5, .5]
    assert both.cpm == pytest.approx((0 + 0 + 0.5 * 5) / 7, abs=1e-12)


def test_tied_scores_make_one_diagonal_step_read_by_interpolation() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S1, 50.0, 0.0, 0.0, 10.0)]
    marks = [(S1, 0.0, 0.0, 0.0, 0.5), (S1, -80.0, 0.0, 0.0, 0.5)]
    result = evaluate_froc(_marks(marks), _findings(nodules), None, [S1], 0)
    np.testing.assert_array_equal(result.curve.fps, [0.0, 1.0])
    np.testing.assert_array_equal(result.curve.sensitivity, [0.0, 0.5])
    assert list(result.sensitivities.values()) == [0.0625, 0.125, 0.25, 0.5, 0.5, 0.5, 0.5]
    assert result.cpm == pytest.approx((0.0625 + 0.125 + 0.25 + 2.0) / 7, abs=1e-12)


def test_roc_drops_collinear_points_like_sklearn() -> None:
    curve = froc_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, True, True, False]), 3, 1)
    # counts (fp, tp) before the (0, 0) start: (0,1) (0,2) (0,3) (1,3); (0,2) is collinear: dropped
    np.testing.assert_array_equal(curve.fps, [0, 0, 0, 1])
    np.testing.assert_array_equal(curve.sensitivity * 3, [0, 1, 3, 3])
    np.testing.assert_array_equal(curve.thresholds, [1.9, 0.9, 0.7, 0.6])
    np.testing.assert_array_equal(sensitivities_at(curve, [0.5]), [1.0])


def test_mark_inside_two_nodules_hits_both_and_cap_drops_ties() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S1, 4.0, 0.0, 0.0, 10.0)]
    result = evaluate_froc(_marks([(S1, 2.0, 0.0, 0.0, 0.7)]), _findings(nodules), None, [S1], 0)
    assert (result.n_hits, result.cpm) == (2, 1.0)

    probs = [*np.linspace(0.99, 0.5, 99), 0.1, 0.1, 0.1]  # the 101st score is tied with two others
    marks = [(S1, 200.0 + i, 0.0, 0.0, p) for i, p in enumerate(probs)]
    capped = evaluate_froc(_marks(marks), _findings(nodules), None, [S1], 0)
    assert (capped.n_over_cap, capped.n_false_positives) == (3, 99)
    assert capped.detections["status"].iloc[-3:].tolist() == ["over_cap"] * 3
    uncapped = evaluate_froc(
        _marks(marks), _findings(nodules), None, [S1], 0, max_marks_per_scan=None
    )
    assert (uncapped.n_over_cap, uncapped.n_false_positives) == (0, 102)


def test_degenerate_inputs() -> None:
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0)]
    empty = evaluate_froc(_marks([]), _findings(nodules), None, [S1], 50)
    assert (empty.cpm, empty.n_detections) == (0.0, 0)
    no_nodule = evaluate_froc(_marks([(S1, 0.0, 0.0, 0.0, 0.5)]), _findings([]), None, [S1], 0)
    assert np.isnan(no_nodule.cpm)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_froc(_marks([]), _findings(nodules), None, [S1, S1], 0)


# ------------------------------------------------------------------ bootstrap unit: nodules


def _one_patient_set(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """12 scans, 1-3 nodules in 10 of them, a seeded sample submission with ties."""
    rng = np.random.default_rng(seed)
    uids = [f"2.25.{i}" for i in range(12)]
    rows = [
        (u, 30.0 * k, 40.0 * i, 5.0 * k, float(rng.uniform(4, 20)))
        for i, u in enumerate(uids[:10])
        for k in range(1 + i % 3)
    ]
    nodules = _findings(rows)
    sub = make_sample_submission(
        nodules, _findings([]), uids, seed, fp_per_scan=3.0, tie_fraction=0.3
    )
    return sub, nodules, uids


def test_nodule_weights_by_hand() -> None:
    # scans S1 (nodules n0 hit 0.9, n1 missed), S2 (n2 hit 0.7), S3 (no nodule)
    nodules = [(S1, 0.0, 0.0, 0.0, 10.0), (S1, 50.0, 0.0, 0.0, 10.0), (S2, 0.0, 0.0, 0.0, 10.0)]
    marks = [
        (S1, 0.0, 0.0, 0.0, 0.9),
        (S1, -80.0, 0.0, 0.0, 0.8),  # FP of S1
        (S2, 0.0, 0.0, 0.0, 0.7),
        (S3, 0.0, 0.0, 0.0, 0.7),  # FP of S3, tied with the hit of S2: one diagonal step
        (S2, 80.0, 0.0, 0.0, 0.5),  # FP of S2
    ]
    result = evaluate_froc(_marks(marks), _findings(nodules), None, [S1, S2, S3], 0)
    items = result.items
    assert items is not None and items.nodule_scan.tolist() == [0, 0, 1]
    # n0 drawn once, n1 never, n2 twice: W = [1/2, 2, 1 (no nodule)], divisor 3.5, N = 3
    weights = nodule_weights(np.array([1.0, 0.0, 2.0]), items.nodule_scan, 3)
    np.testing.assert_array_equal(weights.scan, [0.5, 2.0, 1.0])
    assert (weights.n_scans, weights.n_nodules) == (3.5, 3.0)
    at_rates, _ = bootstrap_froc(items, 1, 0, draw=lambda rng: weights)
    # cumulative (hits, FPs): (1, 0) (1, .5) (3, 1.5) (3, 3.5) -> FP/scan 0, 1/7, 3/7, 1;
    # sensitivity 1/3, 1/3, 1, 1: 1/3 at 0.125, on the diagonal at 0.25
    # (1/3 + (0.25 - 1/7) / (2/7) * 2/3 = 7/12; with the divisor 3 instead of 3.5 it would be 1/2),
    # 1 from 3/7 on
    np.testing.assert_allclose(at_rates[0], [1 / 3, 7 / 12, 1, 1, 1, 1, 1], rtol=0, atol=1e-12)
    # with every nodule drawn once the weights are those of the point estimate, exactly
    ones = nodule_weights(np.ones(3), items.nodule_scan, 3)
    np.testing.assert_array_equal(ones.scan, [1.0, 1.0, 1.0])
    at_ones, _ = bootstrap_froc(items, 1, 0, draw=lambda rng: ones)
    assert at_ones[0].tolist() == list(result.sensitivities.values())


def test_nodule_bootstrap_with_unit_weights_is_the_point_estimate_exactly() -> None:
    sub, nodules, uids = _one_patient_set(3)
    result = evaluate_froc(sub, nodules, None, uids, 0)
    items = result.items
    assert items is not None and result.n_hits > 5 and result.n_false_positives > 20
    ones = nodule_weights(np.ones(items.nodule_scan.size), items.nodule_scan, len(uids))
    at_rates, _ = bootstrap_froc(items, 2, 0, draw=lambda rng: ones)
    assert at_rates[0].tolist() == at_rates[1].tolist() == list(result.sensitivities.values())


def test_nodule_resampler_draws_nodules_and_carries_their_scans_false_positives() -> None:
    nodule_scan = np.array([0, 0, 0, 1, 2, 2])  # scan 3 has no nodule
    draw = nodule_resampler(nodule_scan, 4)
    rng, check = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(20):
        w = draw(rng)
        expected = np.bincount(check.integers(0, 6, size=6), minlength=6)
        np.testing.assert_array_equal(w.nodule, expected)
        scan = [expected[:3].sum() / 3, expected[3], expected[4:].sum() / 2, 1.0]
        np.testing.assert_allclose(w.scan, scan, rtol=0, atol=1e-15)
        assert w.n_nodules == 6 and w.n_scans == pytest.approx(sum(scan), abs=1e-12)


def test_evaluate_froc_bootstrap_unit() -> None:
    sub, nodules, uids = _one_patient_set(1)
    scan = evaluate_froc(sub, nodules, None, uids, 200, seed=2)
    nodule = evaluate_froc(sub, nodules, None, uids, 200, seed=2, bootstrap_unit="nodule")
    again = evaluate_froc(sub, nodules, None, uids, 200, seed=2, bootstrap_unit="nodule")
    assert (scan.bootstrap_unit, nodule.bootstrap_unit) == ("scan", "nodule")
    assert scan.cpm == nodule.cpm and scan.curve.fps.tolist() == nodule.curve.fps.tolist()
    assert nodule.cpm_ci95 == again.cpm_ci95 != scan.cpm_ci95
    assert nodule.cpm_ci95 is not None and nodule.cpm_ci95[0] <= nodule.cpm <= nodule.cpm_ci95[1]
    with pytest.raises(ValueError, match="bootstrap_unit"):
        evaluate_froc(sub, nodules, None, uids, 10, bootstrap_unit="patient")  # type: ignore[arg-type]


# ------------------------------------------------------------------ excluded boxes


def _boxes(
    rows: Sequence[tuple[str, float, float, float, float, float, float, float]],
) -> pd.DataFrame:
    return pd.DataFrame(
        rows,
        columns=[
            "seriesuid",
            "coordX",
            "coordY",
            "coordZ",
            "diameter_mm",
            "extentX",
            "extentY",
            "extentZ",
        ],
    )


def test_excluded_box_ignores_detections_strictly_inside() -> None:
    nan = float("nan")
    nodule = [(S1, 200.0, 0.0, 0.0, 10.0)]
    excluded = _boxes(
        [
            (S1, 0.0, 0.0, 0.0, 4.0, 40.0, 10.0, 6.0),  # box 40 x 10 x 6 mm (its diameter unused)
            (S1, 100.0, 0.0, 0.0, 4.0, nan, nan, nan),  # a sphere of 4 mm
        ]
    )
    marks = [
        (S1, 19.9, 4.9, 2.9, 0.9),  # inside the box, far outside any 4 mm sphere: ignored
        (S1, 20.0, 0.0, 0.0, 0.8),  # on the box's x face: a false positive
        (S1, 0.0, 0.0, 3.0, 0.7),  # on its z face: a false positive
        (S1, 101.9, 0.0, 0.0, 0.6),  # inside the sphere row: ignored
        (S1, 102.0, 0.0, 0.0, 0.5),  # on the sphere: a false positive
        (S1, 200.0, 0.0, 0.0, 0.4),  # the nodule
    ]
    result = evaluate_froc(_marks(marks), _findings(nodule), excluded, [S1], 0)
    assert result.detections["status"].tolist() == [
        "excluded_finding",
        "false_positive",
        "false_positive",
        "excluded_finding",
        "false_positive",
        "true_positive",
    ]
    # the same table without the extent columns: every row a sphere
    spheres = evaluate_froc(_marks(marks), _findings(nodule), excluded.iloc[:, :5], [S1], 0)
    assert spheres.detections["status"].iloc[0] == "false_positive"


def test_label_candidates_honours_excluded_boxes() -> None:
    from nodule.training.labels import LABEL, ON_EXCLUDED, label_candidates

    nan = float("nan")
    annotations = _findings([(S1, 0.0, 0.0, 0.0, 6.0)])
    excluded = _boxes(
        [(S1, 0.0, 0.0, 0.0, -1.0, 30.0, 30.0, 30.0), (S1, 100.0, 0.0, 0.0, -1.0, nan, nan, nan)]
    )
    candidates = _marks(
        [
            (S1, 1.0, 0.0, 0.0, 0.0),  # the nodule (inside the box too): positive
            (S1, 14.9, -14.9, 14.9, 0.0),  # inside the box only
            (S1, 15.0, 0.0, 0.0, 0.0),  # on its face: a clear negative
            (S1, 104.9, 0.0, 0.0, 0.0),  # inside the 10 mm sphere of unknown size
            (S1, 105.0, 0.0, 0.0, 0.0),  # on that sphere
        ]
    )
    out = label_candidates(candidates, annotations, excluded)
    assert out[LABEL].tolist() == [1, 0, 0, 0, 0]
    assert out[ON_EXCLUDED].tolist() == [False, True, False, True, False]
    # the evaluation agrees on which detections are on excluded findings
    result = evaluate_froc(candidates.assign(probability=0.5), annotations, excluded, [S1], 0)
    assert (result.detections["status"] == "excluded_finding").tolist() == out[ON_EXCLUDED].tolist()


def test_excluded_box_extents_are_checked() -> None:
    nan = float("nan")
    marks = _marks([(S1, 0.0, 0.0, 0.0, 0.5)])
    nodule = _findings([(S1, 50.0, 0.0, 0.0, 10.0)])
    partial = _boxes([(S1, 0.0, 0.0, 0.0, 4.0, 10.0, nan, 10.0)])
    with pytest.raises(Luna16FormatError, match="needs all of"):
        evaluate_froc(marks, nodule, partial, [S1], 0)
    text = _boxes([(S1, 0.0, 0.0, 0.0, 4.0, 10.0, 10.0, 10.0)]).astype({"extentY": object})
    text.loc[0, "extentY"] = "wide"
    with pytest.raises(Luna16FormatError, match="extentY"):
        evaluate_froc(marks, nodule, text, [S1], 0)
    negative = _boxes([(S1, 0.0, 0.0, 0.0, 4.0, 10.0, -1.0, 10.0)])
    with pytest.raises(Luna16FormatError, match="extentY"):
        evaluate_froc(marks, nodule, negative, [S1], 0)


# ------------------------------------------------------------------ agreement with the reference


@pytest.fixture(scope="module")
def real(luna16_dir: Path) -> dict[str, object]:
    return {
        "uids": read_seriesuids(luna16_dir / "seriesuids.csv"),
        "annotations": read_annotations(luna16_dir / "annotations.csv"),
        "excluded": read_excluded(luna16_dir / "annotations_excluded.csv"),
        "folds": read_folds(luna16_dir / "folds"),
    }


CASES = {
    "default": ({}, None, 100),
    "many ties, fold 3 only": ({"tie_fraction": 0.6, "fp_per_scan": 15.0}, 3, 100),
    "cap 20": ({"fp_per_scan": 30.0, "tie_fraction": 0.3}, 5, 20),
    "low hit rate, no cap": (
        {"hit_rate": 0.5, "double_hit_rate": 0.6, "excluded_hit_rate": 0.6},
        None,
        -1,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_official_reference(real: dict, case: str) -> None:
    options, fold, cap = CASES[case]
    seed = list(CASES).index(case)
    uids = real["uids"] if fold is None else real["folds"][fold]
    sub = make_sample_submission(
        real["annotations"], real["excluded"], real["uids"], seed, **options
    )
    mine = evaluate_froc(
        sub,
        real["annotations"],
        real["excluded"],
        uids,
        0,
        max_marks_per_scan=None if cap < 0 else cap,
    )
    ref = reference_evaluate(sub, real["annotations"], real["excluded"], uids, max_marks=cap)
    assert ref["cpm"] > 0.3
    assert abs(mine.cpm - ref["cpm"]) < 1e-3
    np.testing.assert_allclose(
        list(mine.sensitivities.values()), ref["sensitivities"], rtol=0, atol=1e-3
    )
    # in fact bit for bit, curve and counts included
    assert mine.cpm == ref["cpm"]
    np.testing.assert_array_equal(mine.curve.fps, ref["fps"])
    np.testing.assert_array_equal(mine.curve.sensitivity, ref["sens"])
    assert (mine.n_hits, mine.n_false_positives, mine.n_excluded_hits, mine.n_nodules) == (
        ref["tp"],
        ref["fp"],
        ref["irrelevant"],
        ref["total_nodules"],
    )


@pytest.mark.slow
def test_bootstrap_agrees_with_official_resampling(real: dict) -> None:
    uids = real["folds"][1]
    sub = make_sample_submission(real["annotations"], real["excluded"], uids, 11, fp_per_scan=30.0)
    items = match_detections(sub, real["annotations"], real["excluded"], uids).items
    at_rates, on_grid = bootstrap_froc(items, 25, seed=4)
    rng = np.random.default_rng(4)  # the draws bootstrap_froc makes
    draws = [rng.integers(0, len(uids), size=len(uids)) for _ in range(25)]
    collected = collect_froc_items(sub, real["annotations"], real["excluded"], uids)
    np.testing.assert_allclose(
        at_rates.mean(axis=1), reference_bootstrap_cpms(collected, uids, draws), atol=1e-12
    )
    assert on_grid.shape == (25, 241) and np.all(np.diff(on_grid, axis=1) >= 0)


@pytest.mark.slow
def test_bootstrap_ci_is_seeded_and_brackets_the_cpm(real: dict) -> None:
    uids = real["folds"][2]
    sub = make_sample_submission(real["annotations"], real["excluded"], uids, 5)
    a = evaluate_froc(sub, real["annotations"], real["excluded"], uids, 200, seed=1)
    b = evaluate_froc(sub, real["annotations"], real["excluded"], uids, 200, seed=1)
    c = evaluate_froc(sub, real["annotations"], real["excluded"], uids, 200, seed=2)
    assert a.cpm_ci95 == b.cpm_ci95 != c.cpm_ci95
    assert a.cpm_ci95 is not None and a.cpm_ci95[0] < a.cpm < a.cpm_ci95[1]
    assert a.band is not None and np.all(a.band.lower <= a.band.upper)
    assert a.sensitivity_ci95 is not None
    assert all(lo <= a.sensitivities[r] <= hi for r, (lo, hi) in a.sensitivity_ci95.items())


def test_sample_submission_is_seeded_and_realistic(real: dict) -> None:
    args = (real["annotations"], real["excluded"], real["uids"])
    sub = make_sample_submission(*args, seed=0)
    pd.testing.assert_frame_equal(sub, make_sample_submission(*args, seed=0))
    assert not sub.equals(make_sample_submission(*args, seed=1))
    result = evaluate_froc(sub, real["annotations"], real["excluded"], real["uids"], 0)
    assert 0.8 < result.n_hits / result.n_nodules < 0.97
    assert 9.0 < result.n_false_positives / result.n_scans < 11.0
    assert result.n_duplicates > 100 and result.n_excluded_hits > 1000
    assert sub["probability"].duplicated().sum() > 1000  # ties
    assert 0.6 < result.cpm < 0.9
