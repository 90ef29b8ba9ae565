"""Bad input, with nothing lost (issue 12, section 3) for candidates, evaluate, synth, insert:
the bad-study corpus in one batch, output path checks, exit codes, NaN voxels, evaluation
input checks, arguments refused at parsing, nothing left behind by refused jobs, damaged
scans remade on resume, one-line errors and --debug."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from corpus import BAD_STUDIES, make_corpus

from nodule.candidates import CandidateConfig
from nodule.candidates.batch import SUMMARY_COLUMNS, run_batch
from nodule.cli import main
from nodule.errors import InputWarning, batch_exit_code
from nodule.io import (
    Volume,
    VolumeReadError,
    VolumeReadWarning,
    read_volume,
    write_dicom_series,
    write_volume,
)
from nodule.paths import OutputPathError, check_output_dir, check_output_file

FAST = CandidateConfig(work_spacing_mm=2.0)
SMALL = {"preset": "small", "shapes": "ellipsoid", "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root, good=2)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small good study (.mhd + .zraw), read-only for the tests."""
    from nodule.data.phantom import generate_phantom

    folder = tmp_path_factory.mktemp("study")
    return write_volume(generate_phantom(seed=3, index=0, preset="small").volume, folder / "study.mhd")


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("nodule: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


# --------------------------------------------------------------------------- the corpus


def test_corpus_in_one_batch_every_bad_study_fails_with_its_reason(
    corpus: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = corpus
    assert len(BAD_STUDIES) >= 20 and sum(1 for r in expected.values() if r) >= 20
    out = tmp_path / "out" / "candidates.csv"
    result = run_batch([root / k for k in expected], out, jobs=2, config=FAST, progress=False)
    summary = pd.read_csv(out.with_name("candidates_summary.csv"), keep_default_na=False, dtype=str)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["study"].tolist() == [str(root / k) for k in expected]  # one row each, in order
    for (name, reason), (_, row) in zip(expected.items(), summary.iterrows(), strict=True):
        if reason:
            assert row["status"] == "error", name
            assert reason in row["error"], (name, row["error"])
            assert "\n" not in row["error"]
        else:
            assert row["status"] == "ok", (name, row["error"])
            assert int(row["n_candidates"]) > 0, name
    good = [Path(k).stem for k, r in expected.items() if not r]
    table = pd.read_csv(out, dtype={"seriesuid": str})
    assert sorted(table["seriesuid"].unique()) == sorted(good)
    assert len(table) == len(result.candidates)


def test_candidates_cli_exit_codes_and_no_study_rows(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("x")
    base = ["--work_spacing_mm", "2.0", "--progress", "false"]
    # inputs without any study: failed rows, exit 1 (was: "0 of 0 studies", exit 0, no record)
    with pytest.raises(SystemExit) as info:
        main(["candidates", str(empty), str(texts), "--out", str(tmp_path / "a.csv"), *base])
    assert info.value.code == 1
    summary = pd.read_csv(tmp_path / "a_summary.csv", keep_default_na=False)
    assert summary["status"].tolist() == ["error", "error"]
    assert summary["error"].str.startswith("no CT study found in").all()
    assert "it is empty" in summary["error"][0] and "a.txt" in summary["error"][1]
    assert "every study failed" in capsys.readouterr().err
    # one good, one failed: 0 without --strict, 1 with it
    args = ["candidates", str(study), str(empty), *base]
    main([*args, "--out", str(tmp_path / "b.csv")])
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "c.csv"), "--strict"])
    assert info.value.code == 1
    assert "1 of 2 studies failed (--strict)" in capsys.readouterr().err
    assert (tmp_path / "c.csv").is_file() and (tmp_path / "c_summary.csv").is_file()


def test_batch_exit_code() -> None:
    assert batch_exit_code(0, 0, strict=False) == 1  # no study at all
    assert batch_exit_code(0, 3, strict=False) == 1
    assert batch_exit_code(2, 1, strict=False) == 0
    assert batch_exit_code(2, 1, strict=True) == 1
    assert batch_exit_code(2, 0, strict=True) == 0
    with pytest.raises(ValueError):
        batch_exit_code(-1, 0, strict=False)


# --------------------------------------------------------------------------- output paths


def test_candidates_never_overwrites_its_input(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = study.with_suffix(".zraw")
    before = (study.read_bytes(), data.read_bytes())
    for out, extra in ((study, []), (study, ["--overwrite"]), (data, ["--overwrite"])):
        with pytest.raises(SystemExit) as info:
            main(["candidates", str(study), "--out", str(out), "--progress", "false", *extra])
        assert info.value.code == 1
        line = _one_error_line(capsys.readouterr().err)
        assert str(out) in line and "refusing to write" in line
    assert (study.read_bytes(), data.read_bytes()) == before
    # an existing output needs --overwrite; nothing is read before the refusal
    out = tmp_path / "c.csv"
    out.write_text("keep me\n")
    with pytest.raises(SystemExit):
        main(["candidates", str(study), "--out", str(out), "--progress", "false"])
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me\n"
    main(["candidates", str(study), "--out", str(out), "--overwrite", "--progress", "false",
          "--work_spacing_mm", "2.0"])
    assert out.read_text().startswith("seriesuid,")


def test_check_output_file_and_dir(tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    write_dicom_series(read_volume(_tiny_mhd(tmp_path)), dicom)
    inputs = [dicom, tmp_path / "tiny.mhd"]
    with pytest.raises(OutputPathError, match="inside the DICOM study"):
        check_output_file(dicom / "c.csv", inputs, overwrite=True)
    with pytest.raises(OutputPathError, match="is an input"):
        check_output_dir(dicom, inputs)
    with pytest.raises(OutputPathError, match="inside the DICOM study"):
        check_output_dir(dicom / "out", inputs)
    with pytest.raises(OutputPathError, match=r"data file of the input"):
        check_output_file(tmp_path / "tiny.zraw", inputs, overwrite=True)
    with pytest.raises(OutputPathError, match=r"tiny\.mhd is a file, not a folder"):
        check_output_file(tmp_path / "tiny.mhd" / "c.csv", [], overwrite=False)
    with pytest.raises(OutputPathError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "tiny.mhd", [])
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(dicom, [], overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputPathError, match="not empty; pass --overwrite"):
        check_output_dir(tmp_path / "full", [], overwrite=False)
    check_output_dir(tmp_path / "full", [])
    check_output_file(tmp_path / "new" / "deeper" / "c.csv", inputs, overwrite=False)
    check_output_file(tmp_path / "c.csv", [tmp_path], overwrite=False)  # beside the studies: fine
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom", "full", "tiny.mhd", "tiny.zraw"]


def test_unwritable_output_place_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        place = tmp_path / "locked"
        place.mkdir()
        place.chmod(0o500)
    elif Path("/sys").is_dir():
        place = Path("/sys")
    else:
        pytest.skip("no unwritable folder to test with")
    try:
        with pytest.raises(OutputPathError, match="cannot write there"):
            check_output_file(place / "sub" / "c.csv", [], overwrite=False)
        with pytest.raises(OutputPathError, match="cannot write there"):
            check_output_dir(place / "out", [])
    finally:
        if place != Path("/sys"):
            place.chmod(0o700)


def _tiny_mhd(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 400, size=(4, 8, 8)).astype(np.int16)
    return write_volume(Volume(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)), folder / "tiny.mhd")


# --------------------------------------------------------------------------- NaN voxels


def test_nan_voxels_are_an_error_and_a_few_are_air_with_a_warning(tmp_path: Path) -> None:
    array = np.full((20, 32, 32), -700.0, dtype=np.float32)
    array[5:9] = np.nan
    for name in ("nan.nii.gz", "nan.mha"):  # ITK reads a NIfTI's NaN as 0
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / name))
        with pytest.raises(VolumeReadError, match=rf"{name}: 20 % of the voxels are not finite \(4096 NaN"):
            read_volume(tmp_path / name)
    few = np.full((40, 64, 64), -700.0, dtype=np.float32)
    few[10, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(few), str(tmp_path / "few.nii.gz"))
    with pytest.warns(VolumeReadWarning, match=r"few\.nii\.gz: 1 voxel\(s\) \(0\.00061 %\) are not finite"):
        volume = read_volume(tmp_path / "few.nii.gz")
    assert volume.array[10, 3, 4] == -1024 and volume.array.dtype == np.int16
    assert issubclass(VolumeReadWarning, InputWarning)


# --------------------------------------------------------------------------- evaluate


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.csv" for name in ("pred", "ann", "uids")}
    paths["ann"].write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3.1,10.0,20.0,30.0,6.0\n1.2.3.2,-10.0,5.0,0.0,8.0\n"
    )
    paths["pred"].write_text(
        "seriesuid,coordX,coordY,coordZ,probability\n1.2.3.1,10.5,20.0,30.0,0.9\n"
        "1.2.3.2,50.0,5.0,0.0,0.4\n1.2.3.3,0.0,0.0,0.0,0.3\n"
    )
    paths["uids"].write_text("1.2.3.1\n1.2.3.2\n1.2.3.3\n")
    return {"predictions": paths["pred"], "annotations": paths["ann"], "seriesuids": paths["uids"]}


def _evaluate(tables: dict[str, Path], out: Path, *extra: str, uids: bool = False) -> None:
    args = ["evaluate", "--predictions", str(tables["predictions"]), "--annotations",
            str(tables["annotations"]), "--out", str(out), "--bootstrap", "0", *extra]
    if uids:
        args += ["--seriesuids", str(tables["seriesuids"])]
    main(args)


def test_evaluate_warns_about_a_scan_outside_the_annotations(
    tables: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate(tables, tmp_path / "a")
    err = capsys.readouterr().err
    assert "nodule: warning: " in err and "1 scan(s) with detections have no annotation" in err
    report = json.loads((tmp_path / "a" / "froc.json").read_text())
    assert report["n_scans"] == 3 and len(report["input_warnings"]) == 1
    assert "count as scans without nodules (3 scans in all" in report["input_warnings"][0]
    assert "input warnings:" in (tmp_path / "a" / "summary.txt").read_text()
    # with the list: no warning
    _evaluate(tables, tmp_path / "b", uids=True)
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "froc.json").read_text())["input_warnings"] == []
    # detections on unlisted scans are dropped, with a warning; none on a listed scan: refused
    tables["seriesuids"].write_text("1.2.3.1\n1.2.3.2\n")
    _evaluate(tables, tmp_path / "c", uids=True)
    assert "1 detection(s) on 1 scan(s) not in" in capsys.readouterr().err
    tables["seriesuids"].write_text("9.9.9\n")
    with pytest.raises(SystemExit) as info:
        _evaluate(tables, tmp_path / "d", uids=True)
    assert info.value.code == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "pred.csv: none of its detections is on a scan of" in line


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("semicolon", "looks semicolon-separated"),
        ("diameter", "ann.csv, line 3, column 'diameter_mm': diameter_mm must be > 0"),
        ("nan", "pred.csv, line 2, column 'probability': missing or NaN value"),
        ("twice", "ann.csv, line 3: nodule listed twice"),
    ],
)
def test_evaluate_refuses_bad_tables_in_one_line(
    tables: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, message: str
) -> None:
    if edit == "semicolon":
        path = tables["predictions"]
        path.write_text(path.read_text().replace(",", ";"))
    elif edit == "diameter":
        path = tables["annotations"]
        path.write_text(path.read_text().replace(",8.0", ",0.0"))
    elif edit == "nan":
        path = tables["predictions"]
        path.write_text(path.read_text().replace(",0.9", ",nan"))
    else:
        path = tables["annotations"]
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], lines[1], lines[1], lines[2]]) + "\n")
    with pytest.raises(SystemExit) as info:
        _evaluate(tables, tmp_path / "out", uids=True)
    assert info.value.code == 1
    assert message in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out" / "froc.json").exists()


def test_evaluate_warns_about_empty_duplicate_and_out_of_range_submissions(
    tables: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tables["predictions"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[1], lines[2].replace(",0.4", ",7.5")]) + "\n")
    _evaluate(tables, tmp_path / "a", uids=True)
    err = capsys.readouterr().err
    assert "1 duplicate row(s)" in err and "the first on line 3" in err
    assert "1 probability outside [0, 1] (from 0.9 to 7.5)" in err
    path.write_text(lines[0] + "\n")
    _evaluate(tables, tmp_path / "b", uids=True)
    assert "holds no detection: every sensitivity is 0" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "froc.json").read_text())["cpm"] == 0.0


def test_evaluate_refuses_its_input_as_output_folder(
    tables: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _evaluate(tables, tables["annotations"])
    assert "ann.csv: refusing to write the outputs there: it is an input" in capsys.readouterr().err


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "args",
    [
        ["candidates", "x.mhd", "--out", "c.csv", "--max_per_scan", "-5"],
        ["candidates", "x.mhd", "--out", "c.csv", "--work_spacing_mm", "0"],
        ["candidates", "x.mhd", "--out", "c.csv", "--jobs", "0"],
        ["evaluate", "--predictions", "p", "--annotations", "a", "--out", "o", "--max_marks_per_scan", "-1"],
        ["evaluate", "--predictions", "p", "--annotations", "a", "--out", "o", "--bootstrap", "-5"],
        ["compare", "a", "b", "--annotations", "a", "--bootstrap", "-1"],
        ["synth", "--out", "s", "--scans", "0"],
        ["synth", "--out", "s", "--seed", "-7"],
        ["synth", "--out", "s", "--slice_thickness", "0"],
        ["synth", "--out", "s", "--preset", "tiny"],
        ["insert", "--ct", "ct", "--out", "i", "--scans", "0"],
        ["insert", "--ct", "ct", "--out", "i", "--seed", "-1"],
    ],
    ids=lambda a: " ".join(a[:1] + a[-2:]),
)
def test_negative_and_zero_counts_are_refused_at_parsing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert args[-2] in line and f"see nodule {args[0]} --help" in line
    assert list(tmp_path.iterdir()) == []  # nothing written


# --------------------------------------------------------------------------- synth, insert


def test_synth_bad_seed_leaves_nothing_and_a_stale_generator_binds_nothing(tmp_path: Path) -> None:
    from nodule.data.layout import claim_folder
    from nodule.data.synth import run_synth

    out = tmp_path / "s"
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -7"):
        run_synth(out, scans=1, seed=-7, **SMALL)  # type: ignore[arg-type]
    assert not out.exists()
    claim_folder(out, {"generator": "x", "seed": 99}, ["1.2.3"])  # a job that died before its first scan
    run_synth(out, scans=1, seed=1, **SMALL)  # type: ignore[arg-type]
    assert json.loads((out / "generator.json").read_text())["seed"] == 1


def test_insert_with_a_bad_ct_leaves_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodule.data.insert import build_insert_dataset
    from nodule.lung import NoLungFoundError

    water = write_volume(Volume(np.zeros((20, 40, 40), np.int16), (4.0, 4.0, 5.0), (0.0, 0.0, 0.0)), tmp_path / "water.mha")
    with pytest.raises(NoLungFoundError, match=r"water\.mha: water: no lung found"):
        build_insert_dataset(water, tmp_path / "a", scans=2)
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit) as info:
        main(["insert", "--ct", str(tmp_path / "missing"), "--out", str(tmp_path / "b")])
    assert info.value.code == 1
    assert "missing: no such file or folder" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b").exists()


def test_resume_remakes_a_damaged_scan(tmp_path: Path) -> None:
    from nodule.data.synth import run_synth

    out = tmp_path / "r"
    run_synth(out, scans=2, seed=3, **SMALL)  # type: ignore[arg-type]
    zraws = sorted(out.glob("subset*/*.zraw"))
    intact = {p: p.read_bytes() for p in zraws}
    side = json.loads(next(out.glob("subset0/*.json")).read_text())
    assert set(side["files"]) == {zraws[0].with_suffix(".mhd").name, zraws[0].name}
    # a flipped block (same size) in scan 0, scan 1 truncated
    damaged = bytearray(intact[zraws[0]])
    damaged[1000:1100] = bytes(100)
    zraws[0].write_bytes(bytes(damaged))
    zraws[1].write_bytes(intact[zraws[1]][:-500])
    stamp = (out / "annotations.csv").read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_synth(out, scans=2, seed=3, **SMALL)  # type: ignore[arg-type]
    messages = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert any("scan 0" in m and "differs from what was written" in m for m in messages), messages
    assert any("scan 1" in m and "were written" in m for m in messages), messages
    assert {p: p.read_bytes() for p in zraws} == intact
    assert (out / "annotations.csv").read_bytes() == stamp
    # a sidecar from before the record: the data file's size is checked against its header
    for path in out.glob("subset*/*.json"):
        record = json.loads(path.read_text())
        del record["files"]
        path.write_text(json.dumps(record))
    zraws[1].write_bytes(intact[zraws[1]][:-500])
    with pytest.warns(InputWarning, match="its header gives"):
        run_synth(out, scans=2, seed=3, **SMALL)  # type: ignore[arg-type]
    assert zraws[1].read_bytes() == intact[zraws[1]]


# --------------------------------------------------------------------------- one-line errors


def test_user_errors_are_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--predictions", str(tmp_path / "nope.csv"), "--annotations",
            str(tmp_path / "ann.csv"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    assert _one_error_line(capsys.readouterr().err) == (
        f"nodule: error: {tmp_path / 'nope.csv'}: no such file or directory"
    )
    with pytest.raises(FileNotFoundError):
        main(["--debug", *args])
    monkeypatch.setenv("NODULE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(args)
    monkeypatch.delenv("NODULE_DEBUG")
    # a study that cannot be read, given to a command that reads one study
    bad = tmp_path / "bad.mhd"
    bad.write_text("garbage\n")
    with pytest.raises(SystemExit):
        main(["insert", "--ct", str(bad), "--out", str(tmp_path / "i")])
    assert "bad.mhd: not a MetaImage header" in _one_error_line(capsys.readouterr().err)
    # a bug (not a user error) keeps its traceback
    monkeypatch.setattr("nodule.evaluation.report.evaluate_files", _raise_key_error)
    with pytest.raises(KeyError):
        main(args)


def _raise_key_error(**_: object) -> None:
    raise KeyError("a bug")
