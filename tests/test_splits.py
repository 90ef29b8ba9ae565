"""The split description: parsing, the scans it computes, and every rule it checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodule.data.phantom import default_series_uid
from nodule.data.sets import check_dataset_folder, check_report
from nodule.data.splits import (
    DEFAULT_SPLIT,
    SplitError,
    check_split,
    expand_patients,
    leaked_scans,
    load_split,
    parse_split,
)

REAL = {
    "lidc-a": {"side": "test", "seriesuid": "1.2.3.1", "patient": "LIDC-IDRI-0001"},
    "other": {"side": "train", "seriesuid": "1.2.3.2", "patient": "P-2"},
}


def _split(datasets: dict[str, Any], learners: dict[str, Any] | None = None, reserved: str = "LIDC-IDRI-0001..LIDC-IDRI-0003") -> Any:
    raw = {
        "name": "t",
        "version": 1,
        "real_scans": REAL,
        "shape_bank": {"reserved_patients": reserved},
        "datasets": datasets,
        "learners": learners or {},
    }
    return parse_split(raw, Path("t.yaml"))


def _rules(split: Any) -> list[str]:
    return [p.rule for p in check_split(split)]


def test_patient_ranges() -> None:
    assert expand_patients("LIDC-IDRI-0008..LIDC-IDRI-0011") == [
        "LIDC-IDRI-0008",
        "LIDC-IDRI-0009",
        "LIDC-IDRI-0010",
        "LIDC-IDRI-0011",
    ]
    assert expand_patients(["A", "B"]) == ["A", "B"]


def test_roles_are_one_per_subset() -> None:
    with pytest.raises(SplitError, match="subset 0 is both train and test"):
        _split({"s": {"synth": {"seed": 7, "scans": 12, "preset": "small"}, "roles": {"train": [0, 1], "test": "all"}}})


def test_scans_and_roles() -> None:
    split = _split({"s": {"synth": {"seed": 7, "scans": 12, "preset": "small"}, "roles": {"train": [0, 1, 2], "test": [9]}}})
    scans = split.scans("s")
    assert scans["seriesuid"].tolist() == [default_series_uid(7, i, "small") for i in range(12)]
    assert scans["subset"].tolist() == [i % 10 for i in range(12)]
    roles = scans.groupby("subset")["role"].first().fillna("unused").to_dict()
    assert roles == {0: "train", 1: "train", 2: "train", 9: "test"} | {k: "unused" for k in range(3, 9)}
    assert _rules(split) == []


def test_a_scan_in_two_sets_is_refused() -> None:
    split = _split(
        {
            "a": {"synth": {"seed": 7, "scans": 10, "preset": "small"}, "roles": {"train": "all"}},
            "b": {"synth": {"seed": 7, "scans": 10, "preset": "small"}, "roles": {"test": "all"}},
        }
    )
    rules = _rules(split)
    assert rules.count("scan-in-two-sets") == 10
    assert "patient-on-two-sides" in rules


def test_one_patient_on_both_sides_is_refused() -> None:
    """Insertion sets are one patient each: a training-side set of the test-only scan's
    patient puts that patient on both sides."""
    split = _split(
        {
            "ext": {"insert": {"background": "lidc-a", "seed": 0, "scans": 4}, "roles": {"test": "all"}},
            "ext_train": {"insert": {"background": "lidc-a", "seed": 1, "scans": 4}, "roles": {"train": "all"}},
        }
    )
    rules = _rules(split)
    assert "patient-on-two-sides" in rules
    assert "real-scan-side" in rules  # and a test-only background trains


def test_training_side_background_never_tests() -> None:
    split = _split({"ext": {"insert": {"background": "other", "seed": 0, "scans": 3}, "roles": {"test": "all"}}})
    assert _rules(split) == ["real-scan-side"]


def test_synthetic_sets_name_their_generator_version(tmp_path: Path) -> None:
    """A set pinned to an earlier generator keeps that version's scans (UIDs) and is not remade
    by the current generator; a malformed version is refused."""
    from nodule.data.phantom import GENERATOR_VERSION
    from nodule.data.sets import make_dataset

    old = {"synth": {"seed": 7, "scans": 3, "preset": "small", "generator": "0.1.0"}, "roles": {"train": "all"}}
    new = {"synth": {"seed": 7, "scans": 3, "preset": "small"}, "roles": {"test": "all"}}
    split = _split({"old": old})
    assert GENERATOR_VERSION != "0.1.0"
    assert split.scans("old")["seriesuid"].tolist() == [default_series_uid(7, i, "small", "0.1.0") for i in range(3)]
    assert split.scans("old")["seriesuid"].tolist() != _split({"new": new}).scans("new")["seriesuid"].tolist()
    with pytest.raises(SplitError, match=r"made by generator 0\.1\.0.*last commit: 1877ec1"):
        make_dataset(split, "old", root=tmp_path / "old", progress=False)
    assert not (tmp_path / "old").exists()
    with pytest.raises(SplitError, match="generator must be a version"):
        _split({"bad": {**old, "synth": {**old["synth"], "generator": "new"}}})


def test_insert_shapes_follow_the_roles() -> None:
    """Training insertion sets take the shape bank's training part; test sets its held-out part."""
    train = {"insert": {"background": "other", "seed": 0, "scans": 3, "shapes": "synth"}, "roles": {"train": "all"}}
    assert _rules(_split({"a": train})) == []
    held_out_in_training = {**train, "insert": {**train["insert"], "shapes": "insert"}}
    assert _rules(_split({"a": held_out_in_training})) == ["shape-part"]
    default_in_training = {**train, "insert": {"background": "other", "seed": 0, "scans": 3}}
    assert _rules(_split({"a": default_in_training})) == ["shape-part"]  # the default part is the held-out one
    test = {"insert": {"background": "lidc-a", "seed": 0, "scans": 3, "shapes": "synth"}, "roles": {"test": "all"}}
    assert _rules(_split({"b": test})) == ["shape-part"]
    with pytest.raises(SplitError, match="shapes must be one of"):
        _split({"c": {**train, "insert": {**train["insert"], "shapes": "lidc"}}})


def test_test_side_lidc_patient_must_be_reserved_from_the_shape_bank() -> None:
    split = _split({"r": {"real": ["lidc-a"], "roles": {"test": "all"}}}, reserved="LIDC-IDRI-0005..LIDC-IDRI-0006")
    assert _rules(split) == ["reserved-patient"]


def test_learners_train_only_on_training_data() -> None:
    split = _split(
        {"t": {"synth": {"seed": 3, "scans": 10, "preset": "small"}, "roles": {"test": "all"}}},
        learners={"ranker": {"train": ["t"]}},
    )
    assert "learner-data" in _rules(split)
    with pytest.raises(SplitError, match="unknown data sets"):
        _split({}, learners={"ranker": {"train": ["nope"]}})


def test_luna16_patients_are_grouped(luna16_dir: Path) -> None:
    """LIDC-IDRI-0332 has scans in LUNA16 subsets 2 and 6: cross-validation by subset puts
    one patient in two folds, unless the split keeps the patient whole."""
    by_subset = _split({"l": {"luna16": {}, "roles": {"crossval": "all"}}})
    problems = check_split(by_subset)
    assert [p.rule for p in problems] == ["patient-in-two-folds"]
    assert "LIDC-IDRI-0332" in problems[0].message
    moved = _split({"l": {"luna16": {"move_patients": {"LIDC-IDRI-0332": 2}}, "roles": {"crossval": "all"}}})
    assert check_split(moved) == []
    scans = moved.scans("l")
    assert len(scans) == 888 and set(scans.loc[scans["patient"] == "LIDC-IDRI-0332", "subset"]) == {2}


def test_the_project_split_holds(luna16_dir: Path) -> None:
    split = load_split()
    assert split.path == DEFAULT_SPLIT
    assert check_split(split) == []
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0010"} <= split.reserved_patients
    sides = {s.name: s.side for s in split.real_scans.values()}
    assert sides == {
        "lidc-idri-0001": "test",
        "lidc-idri-0002": "test",
        "cptac-lscc-c3n-00247": "train",
        "lung-pet-ct-dx-a0001": "train",
    }
    # the CNN's validation and test subsets of its training set are no learner's training data
    ranker = set(split.training_scans("ranker")["seriesuid"])
    table = split.scan_table()
    assert leaked_scans(ranker, table).empty
    assert split.fingerprint() == load_split(DEFAULT_SPLIT).fingerprint()


def test_old_ranker_leak_is_reported(luna16_dir: Path) -> None:
    """The ranker shipped before the split was trained on every subset of train_seed2000,
    whose subsets 7-9 validate and test the CNN: the check must say so."""
    split = load_split()
    old = split.scans("train_seed2000")["seriesuid"].tolist()
    text, ok = check_report(split, {"ranker": old}, folders=False)
    assert not ok
    assert "[leak] ranker was trained on scans that validate or test" in text
    assert "train_seed2000 test subsets [8, 9] (20 scans)" in text
    assert "train_seed2000 val subsets [7] (10 scans)" in text
    text, ok = check_report(split, {"ranker": None}, folders=False)
    assert not ok and "records no training scans" in text
    clean = split.training_scans("ranker")["seriesuid"].tolist()
    assert check_report(split, {"ranker": clean}, folders=False)[1]


def test_a_folder_must_be_the_data_set(tmp_path: Path) -> None:
    split = _split({"s": {"synth": {"seed": 7, "scans": 3, "preset": "small"}, "roles": {"train": "all"}}})
    folds = tmp_path / "folds"
    folds.mkdir()
    uids = split.scans("s")["seriesuid"].tolist()
    for k, uid in enumerate(uids):
        (folds / f"subset{k}.csv").write_text(uid + "\n")
    check_dataset_folder(split, "s", tmp_path)
    (folds / "subset2.csv").write_text("1.2.999\n")
    with pytest.raises(SplitError, match="1 of its 3 scans missing, 1 scans it does not have"):
        check_dataset_folder(split, "s", tmp_path)


def test_split_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    raw = yaml.safe_load(DEFAULT_SPLIT.read_text())
    raw["datasets"]["train_seed2000"]["roles"]["trian"] = [3]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SplitError, match=f"{path}.*unknown role 'trian'"):
        load_split(path)
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "none.yaml")


def test_cli_split_check_exits_on_a_broken_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodule.cli import main

    raw = yaml.safe_load(DEFAULT_SPLIT.read_text())
    raw["datasets"]["copy"] = raw["datasets"]["heldout_seed5000"] | {"roles": {"train": "all"}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exit_info:
        main(["split", "check", "--split", str(path), "--folders", "false"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "[scan-in-two-sets]" in out and "[patient-on-two-sides]" in out


def test_real_data_set_is_laid_out_with_the_luna16_reference(luna16_dir: Path, tmp_path: Path) -> None:
    """The two test-only LIDC scans as a LUNA16-layout set: links to the DICOM folders, the
    real LUNA16 nodule as the one annotation, the 25 + 53 excluded findings as excluded."""
    from nodule.candidates.batch import discover_studies
    from nodule.data.luna16 import read_annotations, read_excluded
    from nodule.data.sets import make_dataset, real_findings

    split = load_split()
    findings = real_findings(split.real_scans["lidc-idri-0001"])
    assert (findings["description"] == "LUNA16 nodule").sum() == 1
    assert (findings["description"] == "LUNA16 excluded finding").sum() == 25
    out = make_dataset(split, "real_lidc", root=tmp_path / "real")
    assert len(read_annotations(out / "annotations.csv")) == 1
    assert len(read_excluded(out / "annotations_excluded.csv")) == 25 + 53
    studies = discover_studies([out])
    assert [p.name for p in studies] == split.scans("real_lidc")["seriesuid"].tolist()
    assert all(p.resolve().parent.name == "real_ct" for p in studies)
    assert make_dataset(split, "real_lidc", root=out) == out  # again: nothing changes
