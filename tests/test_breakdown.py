"""Breakdown of the FROC by nodule group (nodule.evaluation.breakdown).

The hand-computed case: five scans; nodules A (S1, 4 mm, solid, isolated), B (S1, 12 mm,
part-solid, juxtapleural, missed), C (S2, 25 mm, solid, isolated), D (S3, 6 mm, no manifest
row: unknown). Detections: A 0.9, C 0.8, FP 0.7 (S4), D 0.6, FP 0.5 (S2). FP/scan = FPs / 5.
- all: hits 1, 2, 2, 3, 3 of 4 at FP/scan 0, 0, .2, .2, .4 -> 0.5 at 1/8, 0.75 from 1/4: CPM 5/7.
- solid (A, C): both above every FP -> 1 everywhere. part-solid (B): 0.
- unknown (D): FP .7 first (FP/scan .2), then D -> 0 at 1/8, 1 from 1/4: CPM 6/7.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from nodule.evaluation.breakdown import (
    breakdown_froc,
    breakdown_tables,
    format_breakdown,
    manifest_nodules,
    match_manifest,
    nodule_groups,
    size_band,
)
from nodule.evaluation.froc import evaluate_froc
from nodule.evaluation.sample import make_sample_submission

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ"]
S1, S2, S3, S4, S5 = (f"1.3.6.{i}" for i in range(1, 6))
UIDS = [S1, S2, S3, S4, S5]


def _findings(rows: Sequence[tuple[str, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*COLUMNS, "diameter_mm"])


def _marks(rows: Sequence[tuple[str, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*COLUMNS, "probability"])


NODULES = _findings(
    [
        (S1, 0.0, 0.0, 0.0, 4.0),  # A
        (S1, 50.0, 0.0, 0.0, 12.0),  # B
        (S2, 0.0, 0.0, 0.0, 25.0),  # C
        (S3, 0.0, 0.0, 0.0, 6.0),  # D
    ]
)
MARKS = _marks(
    [
        (S1, 0.0, 0.0, 0.0, 0.9),
        (S2, 0.0, 1.0, 0.0, 0.8),
        (S4, 0.0, 0.0, 0.0, 0.7),
        (S3, 0.0, 0.0, 1.0, 0.6),
        (S2, -90.0, 0.0, 0.0, 0.5),
    ]
)
# a generated set's manifest: nodule rows, a non-nodule row, D's row 0.6 mm off (unmatched)
MANIFEST = pd.DataFrame(
    {
        "seriesuid": [S1, S1, S2, S3, S3],
        "coordX": [0.0, 50.0, 0.0, 0.0, 0.6],
        "coordY": [0.0, 0.0, 0.0, 0.0, 0.0],
        "coordZ": [0.0, 0.0, 0.0, 0.0, 0.0],
        "diameter_mm": [4.0, 12.0, 25.0, -1.0, 6.0],
        "kind": ["nodule", "nodule", "nodule", "non_nodule", "nodule"],
        "nodule_type": ["solid", "part-solid", "solid", "", "ground-glass"],
        "attachment": ["isolated", "juxtapleural", "isolated", "", "juxtavascular"],
    }
)


def _row(table: pd.DataFrame, group_by: str, group: str) -> dict[str, object]:
    rows = table[(table["group_by"] == group_by) & (table["group"] == group)]
    assert len(rows) == 1, (group_by, group)
    return dict(rows.iloc[0])


def test_size_bands() -> None:
    assert [size_band(d) for d in (2.9, 3.0, 4.99, 5.0, 10.0, 19.9, 20.0, 30.0, 45.0)] == [
        "<3",
        "3-5",
        "3-5",
        "5-10",
        "10-20",
        "10-20",
        "20-30",
        ">=30",
        ">=30",
    ]
    assert size_band(float("nan")) == "unknown"


def test_breakdown_by_hand() -> None:
    result = evaluate_froc(MARKS, NODULES, None, UIDS, 0)
    groups = nodule_groups(result.nodules, MANIFEST)
    assert groups["manifest_row"].tolist() == [0, 1, 2, -1]  # the non-nodule row is not a nodule
    assert groups["type"].tolist() == ["solid", "part-solid", "solid", "unknown"]
    assert groups["size"].tolist() == ["3-5", "10-20", "20-30", "5-10"]
    b = breakdown_froc(result, groups, n_bootstrap=0)
    t = b.table
    assert (b.n_nodules, b.n_matched, b.not_in_manifest) == (4, 3, [])
    assert list(t.columns[:7]) == [
        "group_by",
        "group",
        "n_nodules",
        "n_hit",
        "sens@1",
        "sens@1_lo",
        "sens@1_hi",
    ]
    assert list(t.columns[-3:]) == ["cpm", "cpm_lo", "cpm_hi"]
    assert t["group_by"].tolist() == ["all"] + ["size"] * 4 + ["type"] * 3 + ["attachment"] * 3
    assert t["group"].tolist()[5:] == [
        "solid",
        "part-solid",
        "unknown",
        "isolated",
        "juxtapleural",
        "unknown",
    ]
    expected = {
        ("all", "all"): (4, 3, 0.75, 5 / 7),
        ("type", "solid"): (2, 2, 1.0, 1.0),
        ("type", "part-solid"): (1, 0, 0.0, 0.0),
        ("type", "unknown"): (1, 1, 1.0, 6 / 7),
        ("attachment", "isolated"): (2, 2, 1.0, 1.0),
        ("size", "3-5"): (1, 1, 1.0, 1.0),
        ("size", "5-10"): (1, 1, 1.0, 6 / 7),
        ("size", "10-20"): (1, 0, 0.0, 0.0),
    }
    for (group_by, group), (n, hit, sens, cpm) in expected.items():
        row = _row(t, group_by, group)
        assert (row["n_nodules"], row["n_hit"]) == (n, hit), (group_by, group)
        assert row["sens@1"] == row["sens@2"] == row["sens@4"] == sens, (group_by, group)
        assert row["cpm"] == pytest.approx(cpm, abs=1e-12), (group_by, group)
        assert np.isnan(row["cpm_lo"])  # no bootstrap
    text = format_breakdown(b)
    assert "3 of 4 nodules matched" in text and "juxtapleural" in text


def test_group_froc_is_the_evaluation_with_other_nodules_excluded() -> None:
    rng = np.random.default_rng(0)
    uids = [f"2.25.{i}" for i in range(15)]
    nodules = _findings(
        [
            (u, 25.0 * k, 10.0 * i, 0.0, float(rng.uniform(3, 35)))
            for i, u in enumerate(uids[:12])
            for k in range(1 + i % 3)
        ]
    )
    excluded = _findings([(u, -60.0, 0.0, 0.0, -1.0) for u in uids[::2]])
    sub = make_sample_submission(nodules, excluded, uids, 4, fp_per_scan=3.0, hit_rate=0.7)
    manifest = nodules.assign(
        kind="nodule",
        nodule_type=rng.choice(["solid", "part-solid", "ground-glass"], len(nodules)),
        placement=rng.choice(["isolated", "juxtapleural"], len(nodules)),  # nodule insert
    )
    for unit in ("scan", "nodule"):
        result = evaluate_froc(sub, nodules, excluded, uids, 60, seed=3, bootstrap_unit=unit)
        groups = nodule_groups(result.nodules, manifest)
        assert (groups["manifest_row"] >= 0).all()
        table = breakdown_froc(result, groups).table
        for group_by in ("size", "type", "attachment"):
            for group in table.loc[table["group_by"] == group_by, "group"]:
                keep = (groups[group_by] == group).to_numpy()
                alone = evaluate_froc(
                    sub,
                    nodules[keep],
                    pd.concat([excluded, nodules[~keep]], ignore_index=True),
                    uids,
                    60,
                    seed=3,
                    bootstrap_unit=unit,
                )
                row = _row(table, group_by, group)
                assert (row["n_nodules"], row["n_hit"]) == (alone.n_nodules, alone.n_hits)
                assert row["cpm"] == alone.cpm and row["sens@2"] == alone.sensitivities[2.0]
                assert (row["cpm_lo"], row["cpm_hi"]) == alone.cpm_ci95
                assert (row["sens@1_lo"], row["sens@1_hi"]) == alone.sensitivity_ci95[1.0]  # type: ignore[index]
    tables = breakdown_tables(result, manifest)
    assert list(tables) == ["size", "type", "attachment"]
    assert tables["attachment"]["n_nodules"].sum() == len(nodules)


def test_lidc_manifest_types_from_rounded_ratings_matched_by_z() -> None:
    nodules = _findings(
        [
            (S1, 10.0, 20.0, -100.0, 8.0),
            (S1, -10.0, 20.0, -50.0, 8.0),
            (S2, 0.0, 0.0, 10.0, 8.0),
            (S3, 0.0, 0.0, 0.0, 8.0),
        ]
    )
    lidc = pd.DataFrame(
        {
            "seriesuid": [S1, S1, S2, S3],
            "coordZ": [-50.4, -99.2, 10.0, 1.5],  # S3's row is 1.5 mm off: unmatched
            "texture": [1.5, 4.75, 3.25, 5.0],  # -> 2 part-solid, 5 solid, 3 part-solid
            "calcification": [6.0, 5.5, 4.5, 6.0],  # -> 6 absent, 6 absent, 5 calcified
        }
    )
    rows = manifest_nodules(lidc)
    assert rows["type"].tolist() == ["part-solid", "solid", "calcified", "solid"]
    assert "attachment" not in rows.columns and rows["coordX"].isna().all()
    assert match_manifest(nodules, rows).tolist() == [1, 0, 2, -1]
    result = evaluate_froc(_marks([]), nodules, None, [S1, S2, S3], 0)
    b = breakdown_froc(result, nodule_groups(result.nodules, lidc))
    assert b.not_in_manifest == ["attachment"] and b.n_matched == 3
    types = b.table[b.table["group_by"] == "type"]
    assert dict(zip(types["group"], types["n_nodules"], strict=True)) == {
        "solid": 1,
        "part-solid": 1,
        "calcified": 1,
        "unknown": 1,
    }
    assert "not in the manifest: attachment" in format_breakdown(b)


def test_match_manifest_is_one_to_one_nearest_first() -> None:
    nodules = _findings([(S1, 0.0, 0.0, 0.0, 5.0), (S1, 0.3, 0.0, 0.0, 5.0)])
    manifest = manifest_nodules(
        pd.DataFrame(
            {
                "seriesuid": [S1, S1, S2],
                "coordX": [0.35, 0.1, 0.0],
                "coordY": [0.0, 0.0, 0.0],
                "coordZ": [0.0, 0.0, 0.0],
            }
        )
    )
    # nodule 1 is nearest to row 0 (0.05 mm), nodule 0 to row 1 (0.1 mm); row 2 is another scan
    assert match_manifest(nodules, manifest).tolist() == [1, 0]
    one = manifest.iloc[[1]].reset_index(drop=True)
    assert match_manifest(nodules, one).tolist() == [0, -1]  # row taken by its nearest only
