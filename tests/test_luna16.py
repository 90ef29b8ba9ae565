"""LUNA16 tables: the real reference files, round trips, and clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.data.luna16 import (
    Luna16FormatError,
    fold_of,
    read_annotations,
    read_candidates,
    read_excluded,
    read_folds,
    read_seriesuids,
    read_submission,
    validate_table,
    write_annotations,
    write_candidates,
    write_folds,
    write_seriesuids,
    write_submission,
)

UID_A = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100"
UID_B = "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"


def test_real_tables(luna16_dir: Path) -> None:
    uids = read_seriesuids(luna16_dir / "seriesuids.csv")
    annotations = read_annotations(luna16_dir / "annotations.csv", uids)
    excluded = read_excluded(luna16_dir / "annotations_excluded.csv", uids)
    folds = read_folds(luna16_dir / "folds")
    assert len(uids) == len(set(uids)) == 888
    assert len(annotations) == 1186
    assert annotations["seriesuid"].nunique() == 601
    assert list(annotations.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert all(isinstance(u, str) for u in annotations["seriesuid"])
    assert annotations["diameter_mm"].min() >= 3.0
    assert len(excluded) == 35192 and (excluded["diameter_mm"] == -1).any()
    assert sorted(folds) == list(range(10))
    assert sorted(u for fold in folds.values() for u in fold) == sorted(uids)
    assert [len(folds[k]) for k in range(10)] == [89] * 8 + [88] * 2
    assert set(fold_of(folds)) == set(uids)


def test_round_trip_keeps_floats_and_extra_columns(tmp_path: Path) -> None:
    sub = pd.DataFrame(
        {
            "seriesuid": [UID_A, UID_B, UID_A],
            "coordX": [-128.6994211, 100.5, 1e-7],
            "coordY": [0.1 + 0.2, -0.0, 2.0],
            "coordZ": [-298.3875064, 3.0, 1e5],
            "probability": [0.52, 1 / 3, 0.0],
            "stream": ["solid", "subsolid", "large"],
        }
    )
    path = write_submission(sub, tmp_path / "sub.csv")
    back = read_submission(path)
    pd.testing.assert_frame_equal(back, sub, check_dtype=False)
    lines = path.read_text().splitlines()
    assert lines[0] == "seriesuid,coordX,coordY,coordZ,probability,stream"
    assert lines[2].split(",")[1:4] == ["100.500", "-0.000", "3.000"]  # >= 3 decimals
    assert "e" not in path.read_text().split("\n", 1)[1].replace("large", "")  # no exponent

    ann = pd.DataFrame(
        {
            "seriesuid": [UID_A],
            "coordX": [1.0],
            "coordY": [2.0],
            "coordZ": [3.0],
            "diameter_mm": [-1.0],
        }
    )
    back = read_annotations(write_annotations(ann, tmp_path / "a.csv"))
    pd.testing.assert_frame_equal(back, ann, check_dtype=False)


def test_candidates_with_probability(tmp_path: Path) -> None:
    cand = pd.DataFrame(
        {
            "seriesuid": [UID_A, UID_B],
            "coordX": [1.0, 2.0],
            "coordY": [1.0, 2.0],
            "coordZ": [1.0, 2.0],
            "class": [0, 1],
            "probability": [0.25, 0.75],
            "detector": ["solid", "subsolid"],
        }
    )
    back = read_candidates(write_candidates(cand, tmp_path / "c.csv"))
    assert back["class"].dtype == np.int64
    pd.testing.assert_frame_equal(back, cand, check_dtype=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HEADER = "seriesuid,coordX,coordY,coordZ,probability\n"


@pytest.mark.parametrize(
    ("body", "line", "column", "words"),
    [
        (f"{UID_A},1,2,3,0.5\n{UID_A},1,abc,3,0.5\n", 3, "coordY", "non-numeric value 'abc'"),
        (f"{UID_A},1,2,3,0.5\n{UID_A},1,2,NaN,0.5\n", 3, "coordZ", "NaN"),
        (f"{UID_A},1,2,3,\n", 2, "probability", "missing"),
        (f"{UID_A},1,2,inf,0.5\n", 2, "coordZ", "infinite"),
        (",1,2,3,0.5\n", 2, "seriesuid", "empty seriesuid"),
        (f"{UID_A},1,2,3,0.5\n{UID_B},1,2,3,0.5\n", 3, "seriesuid", "unknown seriesuid"),
    ],
)
def test_bad_values_name_file_line_column(
    tmp_path: Path, body: str, line: int, column: str, words: str
) -> None:
    path = _write(tmp_path / "bad.csv", HEADER + body)
    with pytest.raises(Luna16FormatError) as info:
        read_submission(path, seriesuids=[UID_A])
    error = info.value
    assert (error.line, error.column) == (line, column)
    assert str(path) in str(error) and words in str(error) and f"line {line}" in str(error)
    assert isinstance(error, ValueError)


def test_missing_column_and_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "ann.csv", f"seriesuid,coordX,coordY,coordZ\n{UID_A},1,2,3\n")
    with pytest.raises(Luna16FormatError, match=r"ann\.csv: missing column\(s\) \['diameter_mm'\]"):
        read_annotations(path)
    with pytest.raises(Luna16FormatError, match="empty file"):
        read_excluded(_write(tmp_path / "empty.csv", ""))
    cand = _write(tmp_path / "cand.csv", f"seriesuid,coordX,coordY,coordZ,class\n{UID_A},1,2,3,2\n")
    with pytest.raises(Luna16FormatError, match="class must be 0 or 1"):
        read_candidates(cand)


def test_validate_in_memory_reports_row_labels() -> None:
    table = pd.DataFrame(
        {
            "seriesuid": [UID_A, UID_A],
            "coordX": [1.0, np.nan],
            "coordY": 0.0,
            "coordZ": 0.0,
            "probability": 1.0,
        },
        index=[10, 11],
    )
    with pytest.raises(Luna16FormatError, match=r"predictions, line 11, column 'coordX'"):
        validate_table(table, "submission", "predictions")


def test_seriesuid_lists_and_folds(tmp_path: Path) -> None:
    path = write_seriesuids(tmp_path / "uids.csv", [UID_A, UID_B])
    assert path.read_text() == f"{UID_A}\n{UID_B}\n"  # no header
    assert read_seriesuids(path) == [UID_A, UID_B]
    assert read_seriesuids(_write(tmp_path / "h.csv", f"seriesuid\n{UID_A}\n\n")) == [UID_A]
    with pytest.raises(Luna16FormatError, match="line 3"):
        read_seriesuids(_write(tmp_path / "dup.csv", f"{UID_A}\n{UID_B}\n{UID_A}\n"))

    folder = write_folds(tmp_path / "folds", {0: [UID_A], 1: [UID_B]})
    assert read_folds(folder) == {0: [UID_A], 1: [UID_B]}
    _write(folder / "subset2.csv", f"{UID_A}\n")
    with pytest.raises(Luna16FormatError, match="also in subset0"):
        read_folds(folder)
    with pytest.raises(Luna16FormatError, match=r"no subsetK\.csv"):
        read_folds(tmp_path)
