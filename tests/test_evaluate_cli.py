"""``nodule evaluate``: a thin wrapper that writes froc.json, froc.png, nodules.csv, detections.csv, summary.txt."""

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
) -> None:
    args = [
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
    with pytest.raises(Luna16FormatError, match="probability"):
        _run(files, tmp_path / "out", "--bootstrap", "0")
