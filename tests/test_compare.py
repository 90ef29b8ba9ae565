"""Paired comparison of two submissions (nodule.evaluation.compare, ``nodule compare``).

The set: 40 scans with one nodule each, a seeded sample submission A that misses some.
B = A plus a top-scored mark on missed nodules. With one added hit on scan s, B is better in
a resample exactly when s (scan unit) or its nodule (nodule unit) is drawn, and equal
otherwise, so the one-sided p-value is the fraction of draws without it, recomputed here
from the same generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.cli import main
from nodule.data.luna16 import write_annotations, write_seriesuids, write_submission
from nodule.evaluation.compare import compare_froc, format_comparison
from nodule.evaluation.froc import BootstrapUnit, bootstrap_froc, evaluate_froc, percentile_interval
from nodule.evaluation.sample import make_sample_submission

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ"]
UIDS = [f"1.2.826.{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(7)
    nodules = pd.DataFrame(
        [(u, 20.0 * i, -40.0, 100.0 - i, float(rng.uniform(5, 25))) for i, u in enumerate(UIDS)],
        columns=[*COLUMNS, "diameter_mm"],
    )
    empty = nodules.iloc[:0]
    a = make_sample_submission(nodules, empty, UIDS, 2, hit_rate=0.6, fp_per_scan=3.0)
    missed = evaluate_froc(a, nodules, None, UIDS, 0).nodules.query("not hit")
    assert len(missed) >= 8
    added = missed[COLUMNS].assign(probability=1.0)
    return {"nodules": nodules, "a": a, "missed": missed, "added": added}


def _with_hits(tables: dict[str, pd.DataFrame], n: int) -> pd.DataFrame:
    return pd.concat([tables["a"], tables["added"].iloc[:n]], ignore_index=True)


def test_identical_submissions_differ_by_zero(tables: dict[str, pd.DataFrame]) -> None:
    c = compare_froc(tables["a"], tables["a"].copy(), tables["nodules"], None, UIDS, 200, seed=1)
    assert c.difference == 0.0 and c.difference_ci95 == (0.0, 0.0) and c.p_value == 1.0
    assert set(c.sensitivity_difference.values()) == {0.0}
    assert c.sensitivity_difference_ci95 is not None
    assert set(c.sensitivity_difference_ci95.values()) == {(0.0, 0.0)}
    assert c.cpm_a_ci95 == c.cpm_b_ci95 and c.n_valid_resamples == 200


@pytest.mark.parametrize("unit", ["scan", "nodule"])
def test_one_added_hit_p_value_is_the_share_of_draws_without_it(
    tables: dict[str, pd.DataFrame], unit: BootstrapUnit
) -> None:
    b = _with_hits(tables, 1)
    c = compare_froc(
        tables["a"], b, tables["nodules"], None, UIDS, 300, seed=4, bootstrap_unit=unit
    )
    assert c.n_hits_b == c.n_hits_a + 1 and c.difference == pytest.approx(1 / 40, abs=1e-12)
    assert c.bootstrap_unit == unit
    index = int(tables["missed"].index[0])  # scan index = nodule index = row (one nodule a scan)
    rng = np.random.default_rng(4)
    not_drawn = [np.bincount(rng.integers(0, 40, 40), minlength=40)[index] == 0 for _ in range(300)]
    assert c.p_value == pytest.approx(np.mean(not_drawn), abs=1e-12)
    assert c.difference_ci95 is not None and c.difference_ci95[0] == 0.0 < c.difference_ci95[1]


def test_added_hits_give_a_ci_above_zero_and_pairing_narrows_it(
    tables: dict[str, pd.DataFrame],
) -> None:
    nodules, a = tables["nodules"], tables["a"]
    b = _with_hits(tables, 8)
    c = compare_froc(a, b, nodules, None, UIDS, 400, seed=0)
    assert c.difference == pytest.approx(8 / 40, abs=1e-12)
    assert c.difference_ci95 is not None and 0.0 < c.difference_ci95[0] < c.difference
    assert c.p_value == 0.0
    assert all(d > 0 for d in c.sensitivity_difference.values())
    # A's own interval is that of its evaluation with the same seed (the same draws)
    assert c.cpm_a_ci95 == evaluate_froc(a, nodules, None, UIDS, 400, seed=0).cpm_ci95
    # unpaired: A and B resampled independently
    items_a = evaluate_froc(a, nodules, None, UIDS, 0).items
    items_b = evaluate_froc(b, nodules, None, UIDS, 0).items
    assert items_a is not None and items_b is not None
    cpm_a = bootstrap_froc(items_a, 400, 1)[0].mean(axis=1)
    cpm_b = bootstrap_froc(items_b, 400, 2)[0].mean(axis=1)
    lo, hi = percentile_interval((cpm_b - cpm_a)[:, None])
    paired = c.difference_ci95[1] - c.difference_ci95[0]
    assert paired < 0.75 * float(hi[0] - lo[0])  # 0.25 against 0.41


def test_scans_default_to_those_of_all_tables(tables: dict[str, pd.DataFrame]) -> None:
    extra = pd.DataFrame(  # ten top-scored false positives on a scan only B has
        [("9.9.9", 30.0 * i, 0.0, 0.0, 0.99) for i in range(10)], columns=[*COLUMNS, "probability"]
    )
    b = pd.concat([tables["a"], extra], ignore_index=True)
    c = compare_froc(tables["a"], b, tables["nodules"], n_bootstrap=0)
    assert c.n_scans == 41 and not c.seriesuids_given
    assert c.result_a.n_scans == c.result_b.n_scans == 41
    assert c.difference < 0 and c.difference_ci95 is None and c.p_value is None
    assert "(no bootstrap)" in format_comparison(c)


def test_compare_cli(
    tables: dict[str, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = {
        "a": write_submission(tables["a"], tmp_path / "a.csv"),
        "b": write_submission(_with_hits(tables, 8), tmp_path / "b.csv"),
        "ann": write_annotations(tables["nodules"], tmp_path / "set" / "annotations.csv"),
        "uids": write_seriesuids(tmp_path / "set" / "seriesuids.csv", UIDS),
    }
    args = [
        "compare",
        str(paths["a"]),
        str(paths["b"]),
        "--annotations",
        str(paths["ann"]),
        "--seriesuids",
        str(paths["uids"]),
        "--bootstrap",
        "150",
        "--seed",
        "3",
    ]
    main([*args, "--out", str(tmp_path / "cmp")])
    report = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    expected = compare_froc(
        tables["a"], _with_hits(tables, 8), tables["nodules"], None, UIDS, 150, 3
    )
    assert (report["a"], report["b"], report["difference_is"]) == (
        str(paths["a"]),
        str(paths["b"]),
        "b - a",
    )
    assert report["difference"] == expected.difference
    assert tuple(report["difference_ci95"]) == expected.difference_ci95
    assert report["p_value_b_not_better"] == expected.p_value
    assert list(report["sensitivity_difference"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert (report["n_scans"], report["n_nodules"], report["bootstrap_unit"]) == (40, 40, "scan")
    out = capsys.readouterr().out
    assert "150 resamples of scans" in out and "difference B - A +0.2000" in out

    # a one-patient set: auto resamples nodules; the same seed gives other intervals
    (tmp_path / "set" / "generator.json").write_text(json.dumps({"one_patient": True}))
    main(args)
    assert (
        "resamples of nodules (with the false positives of their scans" in capsys.readouterr().out
    )
    main([*args, "--bootstrap_unit", "scan", "--out", str(tmp_path / "forced")])
    assert (
        json.loads((tmp_path / "forced" / "comparison.json").read_text())["bootstrap_unit"]
        == "scan"
    )
    with pytest.raises(SystemExit):
        main(["compare", str(paths["a"]), "--annotations", str(paths["ann"])])
