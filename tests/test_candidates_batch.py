"""Batch candidates: study discovery, failures recorded, CSVs, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.candidates import CandidateConfig
from nodule.candidates.batch import SUMMARY_COLUMNS, discover_studies, run_batch
from nodule.io import write_volume

# a coarse working grid keeps the batch tests fast; the detectors are tested elsewhere
FAST = CandidateConfig(work_spacing_mm=2.0)


@pytest.fixture(scope="module")
def luna_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A LUNA16-layout folder with two small synthetic scans and a lung-mask folder beside them."""
    from nodule.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("luna")
    uids = []
    for i in range(2):
        scan = generate_phantom(seed=3, index=i, preset="small")
        uid = scan.volume.series_uid
        write_volume(scan.volume, root / f"subset{i}" / f"{uid}.mhd")
        write_volume(scan.volume.with_array(scan.lung), root / "seg-lungs-LUNA16" / f"{uid}.mhd")
        uids.append(uid)
    return root, uids


def test_discovery(luna_layout: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, uids = luna_layout
    studies = discover_studies([root])
    assert [p.stem for p in studies] == uids  # lung masks are not studies
    nested = tmp_path / "nested"
    (nested / "a").mkdir(parents=True)
    (nested / "b" / "dicom").mkdir(parents=True)
    (nested / "a" / "x.nii.gz").write_bytes(b"")
    (nested / "a" / "x.raw").write_bytes(b"")
    (nested / "b" / "dicom" / "0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (nested / "b" / "notes.txt").write_text("not a study")
    found = discover_studies([nested, nested / "a" / "x.nii.gz", tmp_path / "missing.mhd"])
    assert found == [nested / "a" / "x.nii.gz", nested / "b" / "dicom", tmp_path / "missing.mhd"]
    # a LUNA16 layout written as DICOM (nodule synth --format dicom): one folder per scan
    dicom_set = tmp_path / "dicom_set"
    for k, uid in enumerate(["1.2.3", "1.2.4"]):
        (dicom_set / f"subset{k}" / uid).mkdir(parents=True)
        (dicom_set / f"subset{k}" / f"{uid}.json").write_text("{}")
    assert discover_studies([dicom_set]) == [dicom_set / "subset0" / "1.2.3", dicom_set / "subset1" / "1.2.4"]


def test_batch_records_failures_and_goes_on(luna_layout: tuple[Path, list[str]], tmp_path: Path) -> None:
    from nodule.data.luna16 import read_submission

    root, uids = luna_layout
    broken = tmp_path / "broken.mhd"
    broken.write_text("ObjectType = Image\nNDims = 3\nElementDataFile = nowhere.raw\n")
    out = tmp_path / "out" / "candidates.csv"
    result = run_batch([broken, root, tmp_path / "missing"], out, jobs=2, config=FAST, progress=False)
    summary = pd.read_csv(out.with_name("candidates_summary.csv"), keep_default_na=False)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary["status"].tolist() == ["error", "ok", "ok", "error"]
    assert str(broken) in str(summary.loc[0, "error"])
    assert "missing" in str(summary.loc[3, "error"])
    ok = summary[summary["status"] == "ok"]
    assert ok["seriesuid"].tolist() == uids
    assert (ok["lung_ml"].astype(float) > 500).all()
    counted = ok[["n_solid", "n_subsolid", "n_large_solid"]].astype(int).sum(axis=1)
    assert (ok["n_candidates"].astype(int) <= counted).all()
    assert (ok["seconds_total"].astype(float) > 0).all()
    header = out.read_text().splitlines()[0]
    assert header.startswith("seriesuid,coordX,coordY,coordZ,probability,detectors,")
    table = read_submission(out, seriesuids=uids)
    assert len(table) == len(result.candidates) == int(ok["n_candidates"].astype(int).sum())
    assert table["probability"].between(0, 1).all()
    assert np.isin(table["seriesuid"], uids).all()


def test_cli(luna_layout: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodule.cli import main

    root, uids = luna_layout
    scan = next(root.glob("subset0/*.mhd"))
    out = tmp_path / "c.csv"
    main(["candidates", "--inputs", f'["{scan}"]', "--out", str(out), "--work_spacing_mm", "2.0", "--progress", "false"])
    assert "1 of 1 studies" in capsys.readouterr().out
    assert pd.read_csv(out)["seriesuid"].astype(str).eq(uids[0]).all()
    assert (tmp_path / "c_summary.csv").exists()
