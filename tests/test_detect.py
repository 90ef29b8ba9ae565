"""Batch detection (``nodule detect``): outputs, failures, duplicates, series choice, resuming
after a kill, shards and their merge, the command line, and a real scan's nodule."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.detection import DetectSettings, detect, merge_batches
from nodule.detection.checks import input_warnings
from nodule.detection.outputs import DETECTION_COLUMNS, SUMMARY_COLUMNS
from nodule.detection.pipeline import NOTICE, merge_detections
from nodule.detection.studies import find_studies, in_shard, parse_shard
from nodule.io import SeriesInfo, Volume, read_volume, write_dicom_series, write_volume
from nodule.lung import LungMask

# a coarse working grid keeps the batch tests fast; the candidate stage is tested elsewhere
FAST = DetectSettings(device="cpu", max_overlays=2, threshold=0.5, work_spacing_mm=2.0)
TIMING = [c for c in SUMMARY_COLUMNS if c.startswith("seconds_")]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic chest CTs (.mhd, NIfTI, DICOM), a duplicate of one through a
    link, and inputs without a study."""
    from nodule.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("studies")
    scans = [generate_phantom(seed=11, index=i, preset="small").volume for i in range(3)]
    write_volume(scans[0], root / "inbox" / "patient_smith_john" / f"{scans[0].series_uid}.mhd")
    write_volume(scans[1], root / "inbox" / "b" / "scan.nii.gz")
    write_dicom_series(scans[2], root / "inbox" / "c_dicom")
    (root / "inbox" / "notes").mkdir()
    (root / "inbox" / "notes" / "readme.txt").write_text("no study here")
    (root / "empty").mkdir()
    (root / "link.mhd").symlink_to(root / "inbox" / "patient_smith_john" / f"{scans[0].series_uid}.mhd")
    return root


def _inputs(root: Path) -> list[Path]:
    return [root / "inbox", root / "empty", root / "link.mhd", root / "missing.nii.gz"]


def _stable(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    """The outputs of a batch without timings (which differ between runs)."""
    summary = pd.read_csv(out / "summary.csv").drop(columns=TIMING)
    detections = pd.read_csv(out / "detections.csv")
    docs = {}
    for path in sorted((out / "studies").glob("*.json")):
        doc = json.loads(path.read_text())
        doc.pop("seconds")
        docs[path.name] = doc
    return summary, detections, docs


@pytest.fixture(scope="module")
def batch(studies: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("batch") / "out"
    detect(_inputs(studies), out, settings=FAST, progress=False)
    return out


def test_outputs_of_a_batch(batch: Path, studies: Path) -> None:
    summary = pd.read_csv(batch / "summary.csv", keep_default_na=False)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    by_status = summary["status"].value_counts().to_dict()
    # 3 studies ok; the empty folder, the folder of text files... (inside inbox: no study,
    # so not an input of its own) and the missing path failed
    assert by_status == {"ok": 3, "failed": 2}
    failed = summary[summary["status"] == "failed"]
    assert any("no CT study found" in r for r in failed["reason"])
    assert any("no such file or folder" in r for r in failed["reason"])
    assert set(summary["notice"]) == {NOTICE}
    ok = summary[summary["status"] == "ok"]
    assert (ok["n_candidates"].astype(int) > 0).all()
    # outputs are named by series UID or file stem, never by folder names
    names = [p.name for p in batch.rglob("*")]
    assert not any("smith" in n or "inbox" in n or "c_dicom" in n for n in names)
    assert {p.stem for p in (batch / "studies").glob("*.json")} == set(ok["study_id"])
    detections = pd.read_csv(batch / "detections.csv")
    assert list(detections.columns) == list(DETECTION_COLUMNS)
    assert list(detections.columns[:5]) == ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    assert detections["probability"].between(0, 1).all()
    assert set(detections["seriesuid"]) <= set(ok["series_uid"])
    for path in (batch / "studies").glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["notice"] == NOTICE and doc["format"].startswith("nodule-detect-study/")
        assert {"shape_zyx", "spacing_xyz_mm", "origin_xyz_mm", "direction"} <= set(doc["geometry"])
        assert doc["model"]["version"] and doc["model"]["threshold"] == 0.5
        volume = read_volume(next(iter([p for p in studies.rglob("*") if doc["input"]["path"] == str(p)])))
        for f in doc["findings"]:
            # world and voxel centres agree through the study's geometry
            assert np.allclose(volume.world_to_voxel([f["world_xyz_mm"]])[0], f["voxel_zyx"], atol=0.02)
            assert (f["overlay"] is not None) == (f["above_threshold"] and f["id"] in _first_above(doc, 2))
            if f["overlay"]:
                assert (batch / f["overlay"]).stat().st_size > 1000
    index = (batch / "index.html").read_text()
    assert NOTICE.capitalize() in index and "no CT study found" in index
    for overlay in detections["overlay"].dropna():
        assert overlay in index


def _first_above(doc: dict[str, object], n: int) -> set[str]:
    """The ids of the ``n`` most probable findings at or above the threshold (those with overlays)."""
    findings = doc["findings"]
    assert isinstance(findings, list)
    return {f["id"] for f in [g for g in findings if g["above_threshold"]][:n]}


def test_duplicate_series_is_processed_once(batch: Path) -> None:
    summary = pd.read_csv(batch / "summary.csv", keep_default_na=False)
    # the link to the .mhd is the same file: found once at discovery
    assert not summary["input"].str.endswith("link.mhd").any()
    assert summary["series_uid"][summary["status"] == "ok"].is_unique


def test_same_series_in_two_copies(studies: Path, tmp_path: Path) -> None:
    src = next((studies / "inbox" / "patient_smith_john").glob("*.mhd"))
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(src, copy / src.name)
    shutil.copy(src.with_suffix(".zraw") if src.with_suffix(".zraw").exists() else src.with_suffix(".raw"), copy)
    result = detect([src, copy], tmp_path / "out", settings=FAST, progress=False)
    assert sorted(result.summary["status"]) == ["duplicate", "ok"]
    dup = result.summary[result.summary["status"] == "duplicate"].iloc[0]
    assert "same series" in dup["reason"]
    assert result.exit_code(strict=True) == 0  # a duplicate is not a failure


def test_rerun_skips_done_studies_and_refuses_other_settings(batch: Path, studies: Path) -> None:
    before = _stable(batch)
    result = detect(_inputs(studies), batch, settings=FAST, progress=False)
    assert result.processed == 0
    after = _stable(batch)
    pd.testing.assert_frame_equal(before[0], after[0])
    pd.testing.assert_frame_equal(before[1], after[1])
    from nodule.fingerprint import FingerprintMismatch

    with pytest.raises(FingerprintMismatch, match="threshold"):
        detect(_inputs(studies), batch, settings=DetectSettings(device="cpu", threshold=0.7, work_spacing_mm=2.0), progress=False)


def test_kill_and_resume_gives_the_same_outputs(batch: Path, studies: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    code = (
        "import sys; from pathlib import Path; from nodule.detection import DetectSettings, detect; "
        f"detect([Path(p) for p in sys.argv[1:]], {str(out)!r}, "
        "settings=DetectSettings(device='cpu', max_overlays=2, threshold=0.5, work_spacing_mm=2.0), progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, _inputs(studies))])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        records = list((out / "records").glob("*.json")) if (out / "records").is_dir() else []
        if len([r for r in records if '"ok"' in r.read_text()]) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "records").glob("*.json")))
    assert done < 5  # killed in the middle
    result = detect(_inputs(studies), out, settings=FAST, progress=False)
    assert result.processed >= 1
    killed, whole = _stable(out), _stable(batch)
    pd.testing.assert_frame_equal(killed[0].drop(columns="key"), whole[0].drop(columns="key"))
    pd.testing.assert_frame_equal(killed[1], whole[1])
    assert killed[2] == whole[2]
    assert not list(out.rglob(".*.part"))  # no temporary file left behind


def test_shards_cover_the_batch_once_and_merge(batch: Path, studies: Path, tmp_path: Path) -> None:
    parts = []
    for i in range(2):
        part = tmp_path / f"shard{i}"
        detect(_inputs(studies), part, settings=FAST, shard=(i, 2), progress=False)
        assert (part / f"summary.shard-{i}-of-2.csv").exists() and not (part / "index.html").exists()
        parts.append(pd.read_csv(part / f"summary.shard-{i}-of-2.csv"))
    assert sum(len(p) for p in parts) == 5
    assert not set(parts[0]["key"]) & set(parts[1]["key"])
    merged = tmp_path / "merged"
    merge_batches([tmp_path / "shard0", tmp_path / "shard1"], merged)
    a, b = _stable(merged), _stable(batch)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert a[2] == b[2]
    assert (merged / "index.html").exists()


def test_parse_shard() -> None:
    assert parse_shard("1/4", env={}) == (1, 4)
    assert parse_shard(None, env={}) is None
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert parse_shard(None, env=env) == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad, env={})
    keys = [f"{k:016x}" for k in range(40)]
    owners = [[i for i in range(3) if in_shard(k, (i, 3))] for k in keys]
    assert all(len(o) == 1 for o in owners)


def test_merge_detections_keeps_the_most_probable() -> None:
    table = pd.DataFrame(
        {
            "coordX": [0.0, 3.0, 30.0, 0.0],
            "coordY": [0.0, 0.0, 0.0, 12.0],
            "coordZ": [0.0, 0.0, 0.0, 0.0],
            "probability": [0.2, 0.9, 0.5, 0.4],
            "diameter_mm": [4.0, 4.0, 4.0, 30.0],
        }
    )
    merged = merge_detections(table, distance_mm=5.0)
    # 0 lies within 5 mm of the more probable 1; 3 (large) does not lie within 1's 5 mm
    assert merged["probability"].tolist() == [0.9, 0.5, 0.4]


def test_input_warnings() -> None:
    shape = (40, 64, 64)
    labels = np.zeros(shape, np.uint8)
    labels[5:35, 10:50, 0:20] = 1  # touches the left/right edge
    labels[5:35, 10:50, 40:60] = 2
    info = SeriesInfo(series_uid="x", slice_thickness=5.0)
    volume = Volume(np.zeros(shape, np.int16), (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), info=info)
    lung = LungMask(labels, np.zeros(shape, bool), volume.spacing, "x", right_ml=300.0, left_ml=300.0)
    text = " ".join(input_warnings(volume, lung))
    assert "slice thickness 5 mm" in text
    assert "truncated field of view" in text and "left or right" in text
    assert "lung volume 600 ml" in text
    labels[0] = labels[5]  # lungs in the first slice: cut at the top
    cut = " ".join(input_warnings(volume, lung))
    assert "cut at the first slice" in cut
    short = Volume(np.zeros(shape, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), info=SeriesInfo("y", slice_thickness=1.0))
    text = " ".join(input_warnings(short, lung))
    assert "31 slices (35 mm) hold lung" in text and "slice thickness" not in text


def test_dicom_folder_with_several_series(tmp_path: Path) -> None:
    """A folder with a CT series and a localizer: one study, the choice recorded."""
    from nodule.data.phantom import generate_phantom

    scan = generate_phantom(seed=11, index=0, preset="small").volume
    folder = tmp_path / "exam"
    write_dicom_series(scan, folder, series_uid="1.2.826.0.1.3680043.8.498.1")
    scout = Volume(scan.array[:3].copy(), scan.spacing, scan.origin, scan.direction, SeriesInfo("1.2.826.0.1.3680043.8.498.2"))
    write_dicom_series(scout, tmp_path / "scout", series_uid="1.2.826.0.1.3680043.8.498.2")
    for f in (tmp_path / "scout").iterdir():
        f.rename(folder / f"scout_{f.name}")
    found = find_studies([folder])
    assert [s.series_uid for s in found.studies] == ["1.2.826.0.1.3680043.8.498.1"]
    choices = {r["uid"]: r["choice"] for r in found.studies[0].series_in_folder}
    assert choices["1.2.826.0.1.3680043.8.498.2"].startswith("skipped")
    assert any("skipped" in w for w in found.warnings)
    only = find_studies([folder], series_uid="1.2.826.0.1.3680043.8.498.2")
    assert [s.series_uid for s in only.studies] == ["1.2.826.0.1.3680043.8.498.2"]


def test_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = detect([tmp_path / "empty"], tmp_path / "out", settings=FAST, progress=False)
    assert result.n_failed == 1 and result.exit_code() == 1


def test_bad_model_is_refused_before_any_study_is_read(studies: Path, tmp_path: Path) -> None:
    from nodule.models.bundle import ModelLoadError

    bad = tmp_path / "model.pt"
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(ModelLoadError, match=r"model\.pt"):
        detect([studies / "inbox"], tmp_path / "out", checkpoint=bad, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli(studies: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nodule.cli import main

    src = next((studies / "inbox" / "patient_smith_john").glob("*.mhd"))
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(src), str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--threshold", "0.5",
              "--strict", "true", "--max_overlays", "1"])
    assert exit_info.value.code == 1  # one input failed, --strict
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert sorted(summary["status"]) == ["failed", "ok"]
    main(["detect-merge", str(tmp_path / "out"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "index.html").exists()


def test_real_lidc_nodule_is_found(tmp_path: Path) -> None:
    """LIDC-IDRI-0001 (test-only in the split): its real LUNA16 nodule is found above the
    default model's threshold, with an overlay."""
    from nodule.data.luna16 import read_annotations
    from nodule.paths import data_dir

    scan = data_dir() / "real_ct" / "lidc-idri-0001"
    if not scan.exists():
        pytest.skip(f"real LIDC scan not found at {scan}; set NODULE_DATA to the shared data folder")
    result = detect([scan], tmp_path / "out", settings=DetectSettings(device="cpu", max_overlays=3), progress=False)
    assert result.n_ok == 1
    uid = result.summary["series_uid"].iloc[0]
    nodules = read_annotations(data_dir() / "luna16" / "annotations.csv")
    nodules = nodules[nodules["seriesuid"] == uid]
    assert len(nodules) == 1
    d = result.detections[result.detections["above_threshold"].astype(bool)]
    centre = nodules[["coordX", "coordY", "coordZ"]].to_numpy(float)[0]
    dist = np.linalg.norm(d[["coordX", "coordY", "coordZ"]].to_numpy(float) - centre, axis=1)
    hit = d[dist < float(nodules["diameter_mm"].iloc[0]) / 2]
    assert len(hit) >= 1 and hit["overlay"].astype(str).str.endswith(".png").all()


def test_bad_input_corpus_in_one_batch(tmp_path: Path) -> None:
    """Every good study of the corpus gets full outputs, every bad one a failed row with its reason."""
    from corpus import make_corpus

    root = tmp_path / "corpus"
    expected = make_corpus(root, good=2)
    assert sum(1 for r in expected.values() if r) >= 20
    result = detect([root / k for k in expected], tmp_path / "out", settings=FAST, workers=2, progress=False)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False, dtype=str)
    assert len(summary) == len(expected)  # one row per input, none lost or repeated
    by_input = {Path(row["input"]): row for _, row in summary.iterrows()}
    for name, reason in expected.items():
        row = by_input[root / name]
        if reason:
            assert row["status"] == "failed", name
            assert reason in row["reason"], (name, row["reason"])
            assert "\n" not in row["reason"]
        else:
            assert row["status"] == "ok", (name, row["reason"])
            assert (tmp_path / "out" / "studies" / f"{row['study_id']}.json").exists()
    assert result.exit_code() == 0 and result.exit_code(strict=True) == 1


def _dying_work(ref, settings, out):  # type: ignore[no-untyped-def]
    """A worker that dies on the study named by $NODULE_TEST_VICTIM (module level: pickled by name)."""
    import nodule.detection.batch as batch_module

    if str(ref.path) == os.environ.get("NODULE_TEST_VICTIM"):
        os.kill(os.getpid(), signal.SIGKILL)
    return batch_module.run_study(ref, batch_module._WORKER_MODEL, settings, out)


def test_a_study_that_kills_its_worker_fails_alone(studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study whose worker dies (killed, out of memory) is tried again alone, then recorded as
    failed; the other studies of the batch are done."""
    import nodule.detection.batch as batch_module

    victim = studies / "inbox" / "b" / "scan.nii.gz"
    monkeypatch.setenv("NODULE_TEST_VICTIM", str(victim))
    monkeypatch.setattr(batch_module, "_work", _dying_work)
    result = detect([studies / "inbox"], tmp_path / "out", settings=FAST, workers=2, progress=False)
    rows = result.summary.set_index("input")
    assert rows.loc[str(victim), "status"] == "failed"
    assert "worker processing it stopped" in rows.loc[str(victim), "reason"]
    assert (rows["status"] == "ok").sum() == 2
