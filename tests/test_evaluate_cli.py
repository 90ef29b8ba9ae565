"""``nodule evaluate``: a thin wrapper that writes froc.json, froc.png, nodules.csv, detections.csv,
summary.txt (and breakdown.csv with --manifest); --bootstrap_unit auto follows the set's generator.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from nodule.cli import main
from nodule.data.luna16 import (
    Luna16FormatError,
    write_annotations,
    write_excluded,
    write_seriesuids,
    write_submission,
)
from nodule.evaluation.froc import evaluate_froc
from nodule.evaluation.report import bootstrap_unit_for
from nodule.evaluation.sample import make_sample_submission

COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    uids = [f"1.2.840.{i}" for i in range(12)]
    nodules = pd.DataFrame(
        [(u, 10.0 * i, -50.0, -100.0 + i, 4.0 + i) for i, u in enumerate(uids[:8])],
        columns=[*COLUMNS, "diameter_mm"],
    )
    excluded = pd.DataFrame(
        [(u, -10.0 * i, 30.0, -80.0, -1.0) for i, u in enumerate(uids)],
        columns=[*COLUMNS, "diameter_mm"],
    )
    sub = make_sample_submission(nodules, excluded, uids, seed=3, fp_per_scan=4.0)
    return {
        "predictions": write_submission(sub, tmp_path / "pred.csv"),
        "annotations": write_annotations(nodules, tmp_path / "ann.csv"),
        "excluded": write_excluded(excluded, tmp_path / "exc.csv"),
        "seriesuids": write_seriesuids(tmp_path / "uids.csv", uids),
    }


def _run(
    files: dict[str, Path],
    out: Path,
    *extra: str,
    names: tuple[str, ...] = ("excluded", "seriesuids"),
    debug: bool = False,
) -> None:
    args = [
        *(["--debug"] if debug else []),
        "evaluate",
        "--predictions",
        str(files["predictions"]),
        "--annotations",
        str(files["annotations"]),
    ]
    for name in names:
        args += [f"--{name}", str(files[name])]
    main([*args, *extra, "--out", str(out)])


def test_evaluate_writes_all_outputs(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _run(files, out, "--bootstrap", "100", "--seed", "7")
    for name in ("froc.json", "froc.png", "nodules.csv", "detections.csv", "summary.txt"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "froc.json").read_text())
    assert {
        "cpm",
        "sensitivity",
        "cpm_ci95",
        "n_scans",
        "n_nodules",
        "n_detections",
        "n_hits",
        "n_false_positives",
    } <= set(report)
    assert list(report["sensitivity"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert (report["n_scans"], report["n_nodules"]) == (12, 8)
    lo, hi = report["cpm_ci95"]
    assert 0.0 <= lo <= report["cpm"] <= hi <= 1.0

    expected = evaluate_froc(
        pd.read_csv(files["predictions"]),
        pd.read_csv(files["annotations"]),
        pd.read_csv(files["excluded"]),
        [f"1.2.840.{i}" for i in range(12)],
        n_bootstrap=100,
        seed=7,
    )
    assert report["cpm"] == expected.cpm and tuple(report["cpm_ci95"]) == expected.cpm_ci95
    assert (
        report["n_hits"] == expected.n_hits
        and report["n_false_positives"] == expected.n_false_positives
    )

    nodules = pd.read_csv(out / "nodules.csv")
    detections = pd.read_csv(out / "detections.csv")
    assert len(nodules) == 8 and nodules["hit"].sum() == report["n_hits"]
    assert len(detections) == len(pd.read_csv(files["predictions"]))
    counts = detections["status"].value_counts()
    assert counts.get("false_positive", 0) == report["n_false_positives"]
    assert set(counts.index) <= {"true_positive", "false_positive", "duplicate", "excluded_finding"}

    summary = (out / "summary.txt").read_text()
    assert summary in capsys.readouterr().out
    assert "CPM" in summary and "from the seriesuids list" in summary


def test_evaluate_without_list_or_bootstrap(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(files, out, "--bootstrap", "0", names=())
    report = json.loads((out / "froc.json").read_text())
    assert report["cpm_ci95"] is None
    assert "no seriesuids list" in (out / "summary.txt").read_text()
    # scans = those with annotations or predictions: 8 annotated + the 4 others with random marks
    assert report["n_scans"] == 12


def test_evaluate_rejects_a_bad_submission(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("seriesuid,coordX,coordY,coordZ\n1.2.840.0,1,2,3\n")
    files["predictions"] = bad
    with pytest.raises(SystemExit) as info:  # one line, exit status 1 (nodule.errors)
        _run(files, tmp_path / "out", "--bootstrap", "0")
    assert info.value.code == 1
    with pytest.raises(Luna16FormatError, match="probability"):
        _run(files, tmp_path / "out", "--bootstrap", "0", debug=True)


def test_bootstrap_unit_for(tmp_path: Path) -> None:
    assert bootstrap_unit_for(tmp_path) == "scan"  # no generator.json
    (tmp_path / "generator.json").write_text(json.dumps({"one_patient": False}))
    assert bootstrap_unit_for(tmp_path) == "scan"
    (tmp_path / "generator.json").write_text(json.dumps({"generator": "x", "one_patient": True}))
    assert bootstrap_unit_for(tmp_path) == "nodule"


def test_evaluate_bootstrap_unit_auto_follows_the_set(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (files["annotations"].parent / "generator.json").write_text(json.dumps({"one_patient": True}))
    _run(files, tmp_path / "auto", "--bootstrap", "100", "--seed", "7")
    report = json.loads((tmp_path / "auto" / "froc.json").read_text())
    expected = evaluate_froc(
        pd.read_csv(files["predictions"]),
        pd.read_csv(files["annotations"]),
        pd.read_csv(files["excluded"]),
        [f"1.2.840.{i}" for i in range(12)],
        n_bootstrap=100,
        seed=7,
        bootstrap_unit="nodule",
    )
    assert report["bootstrap_unit"] == "nodule"
    assert tuple(report["cpm_ci95"]) == expected.cpm_ci95
    summary = (tmp_path / "auto" / "summary.txt").read_text()
    assert "100 bootstrap resamples of nodules (with the false positives of their scans" in summary
    _run(files, tmp_path / "scan", "--bootstrap", "100", "--seed", "7", "--bootstrap_unit", "scan")
    forced = json.loads((tmp_path / "scan" / "froc.json").read_text())
    assert forced["bootstrap_unit"] == "scan" and forced["cpm_ci95"] != report["cpm_ci95"]
    assert "resamples of scans" in capsys.readouterr().out
    with pytest.raises(ValueError, match="bootstrap_unit"):
        _run(files, tmp_path / "bad", "--bootstrap_unit", "patient", debug=True)


def test_evaluate_with_manifest_writes_a_breakdown(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nodules = pd.read_csv(files["annotations"], dtype={"seriesuid": str})
    manifest = nodules.iloc[:6].assign(  # two nodules left without a manifest row
        kind="nodule", nodule_type=["solid", "ground-glass"] * 3, placement="juxtapleural"
    )
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    _run(files, out, "--bootstrap", "50", "--manifest", str(tmp_path / "manifest.csv"))
    table = pd.read_csv(out / "breakdown.csv")
    assert list(table.columns) == [
        "group_by",
        "group",
        "n_nodules",
        "n_hit",
        *(f"sens@{r}{s}" for r in (1, 2, 4) for s in ("", "_lo", "_hi")),
        "cpm",
        "cpm_lo",
        "cpm_hi",
    ]
    types = table[table["group_by"] == "type"].set_index("group")["n_nodules"].to_dict()
    assert types == {"solid": 3, "ground-glass": 3, "unknown": 2}
    attachment = table[table["group_by"] == "attachment"].set_index("group")["n_nodules"]
    assert attachment.to_dict() == {"juxtapleural": 6, "unknown": 2}
    report = json.loads((out / "froc.json").read_text())
    assert table.iloc[0]["cpm"] == pytest.approx(report["cpm"], abs=1e-12)
    assert table["cpm_lo"].notna().all()
    summary = (out / "summary.txt").read_text()
    assert "6 of 8 nodules matched" in summary and "ground-glass" in summary
    assert summary in capsys.readouterr().out
