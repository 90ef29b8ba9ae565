"""``nodule synth``: LUNA16 layout, determinism across jobs, resume, DICOM output, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import UID

from nodule.cli import main
from nodule.data.layout import assemble_tables, subset_of
from nodule.data.luna16 import read_annotations, read_excluded, read_folds, read_seriesuids
from nodule.data.synth import run_synth
from nodule.fingerprint import fingerprint
from nodule.io import read_volume

SMALL = {"preset": "small", "shapes": "ellipsoid", "progress": False}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    run_synth(out, scans=4, seed=7, **SMALL)  # type: ignore[arg-type]
    return out


def test_luna16_layout(dataset: Path) -> None:
    uids = read_seriesuids(dataset / "seriesuids.csv")
    assert len(uids) == 4 and all(UID(u).is_valid for u in uids)
    assert not (dataset / "seriesuids.csv").read_text().startswith("seriesuid")  # headerless
    folds = read_folds(dataset / "folds")
    assert sorted(folds) == list(range(10))
    for i, uid in enumerate(uids):
        assert uid in folds[subset_of(i)] and subset_of(i) == i % 10
        assert (dataset / f"subset{i % 10}" / f"{uid}.mhd").exists()
        assert (dataset / f"subset{i % 10}" / f"{uid}.zraw").exists()
    ann = read_annotations(dataset / "annotations.csv")
    exc = read_excluded(dataset / "annotations_excluded.csv")
    manifest = pd.read_csv(dataset / "manifest.csv")
    assert list(ann.columns[:5]) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(ann) == (manifest["kind"] == "nodule").sum()
    assert len(exc) == (manifest["kind"] != "nodule").sum()
    assert set(ann["seriesuid"]) <= set(uids) and (ann["diameter_mm"] >= 3).all()
    assert {"nodule_type", "attachment", "texture", "scan_scanner_kernel", "scan_spacing_z"} <= set(manifest.columns)
    gen = json.loads((dataset / "generator.json").read_text())
    assert gen["seed"] == 7 and gen["scans"] == 4 and gen["version"]
    scans = pd.read_csv(dataset / "scans.csv")
    assert list(scans["seriesuid"]) == uids


def test_annotations_are_inside_their_scan(dataset: Path) -> None:
    ann = read_annotations(dataset / "annotations.csv")
    uids = read_seriesuids(dataset / "seriesuids.csv")
    for i, uid in enumerate(uids):
        vol = read_volume(dataset / f"subset{i % 10}" / f"{uid}.mhd")
        assert vol.series_uid == uid
        rows = ann[ann["seriesuid"] == uid]
        if len(rows):
            vox = vol.world_to_voxel(rows[["coordX", "coordY", "coordZ"]].to_numpy())
            assert ((vox >= 0) & (vox < np.array(vol.shape))).all()
            values = vol.array[tuple(np.round(vox).astype(int).T)]
            assert (values > -900).all()  # something denser than lung sits there


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_with_any_jobs(tmp_path: Path, dataset: Path) -> None:
    run_synth(tmp_path / "b", scans=4, seed=7, jobs=2, **SMALL)  # type: ignore[arg-type]
    a, b = _bytes(dataset), _bytes(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_resume_keeps_complete_scans(tmp_path: Path) -> None:
    out = tmp_path / "r"
    run_synth(out, scans=2, seed=3, **SMALL)  # type: ignore[arg-type]
    uids = read_seriesuids(out / "seriesuids.csv")
    kept = out / "subset0" / f"{uids[0]}.zraw"
    stamp = kept.stat().st_mtime_ns
    # scan 1 interrupted: no sidecar, a stray temporary folder
    (out / "subset1" / f"{uids[1]}.json").unlink()
    (out / "subset1" / f".tmp-{uids[1]}").mkdir()
    run_synth(out, scans=3, seed=3, **SMALL)  # type: ignore[arg-type]
    assert kept.stat().st_mtime_ns == stamp
    assert len(read_seriesuids(out / "seriesuids.csv")) == 3
    assert (out / "subset1" / f"{uids[1]}.json").exists()
    assert not (out / "subset1" / f".tmp-{uids[1]}").exists()
    with pytest.raises(ValueError, match="other parameters"):
        run_synth(out, scans=3, seed=4, **SMALL)  # type: ignore[arg-type]
    # a set made from another shape bank version is not extended
    gen = out / "generator.json"
    old = json.loads(gen.read_text())
    assert old["shape_bank_version"] is None  # ellipsoids: no bank
    gen.write_text(json.dumps({**old, "shape_bank_version": 1}))
    with pytest.raises(ValueError, match="other parameters"):
        run_synth(out, scans=3, seed=3, **SMALL)  # type: ignore[arg-type]


def test_rerun_with_fewer_scans_is_refused_and_tables_list_this_runs_scans(tmp_path: Path) -> None:
    out = tmp_path / "f"
    run_synth(out, scans=3, seed=3, **SMALL)  # type: ignore[arg-type]
    uids = read_seriesuids(out / "seriesuids.csv")
    gen_before = (out / "generator.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds 1 scan\(s\) that this job \(2 scans\).*at least 3 scans"):
        run_synth(out, scans=2, seed=3, **SMALL)  # type: ignore[arg-type]
    assert (out / "generator.json").read_bytes() == gen_before  # the refused run changed nothing
    assert read_seriesuids(out / "seriesuids.csv") == uids
    # The old bad state: a folder holding 3 scans, tables assembled for a run of 2.
    assemble_tables(out, uids[:2])
    assert read_seriesuids(out / "seriesuids.csv") == uids[:2]
    assert list(pd.read_csv(out / "scans.csv")["seriesuid"]) == uids[:2]
    assert set(read_annotations(out / "annotations.csv")["seriesuid"]) <= set(uids[:2])
    assert set(pd.read_csv(out / "manifest.csv")["seriesuid"]) <= set(uids[:2])
    assert sum(map(len, read_folds(out / "folds").values())) == 2
    # resuming with the same scans, or extending, is allowed
    run_synth(out, scans=3, seed=3, **SMALL)  # type: ignore[arg-type]
    assert read_seriesuids(out / "seriesuids.csv") == uids
    gen = json.loads((out / "generator.json").read_text())
    assert gen["scans"] == 3 and gen["fingerprint"] == fingerprint({k: gen[k] for k in gen if k not in ("scans", "fingerprint")})
    # a sidecar that no scan of this run would write (e.g. another set's) is refused, named by index
    stray = tmp_path / "g"
    run_synth(stray, scans=1, seed=4, **SMALL)  # type: ignore[arg-type]
    (other,) = stray.glob("subset0/*.json")
    (out / "subset0" / other.name).write_bytes(other.read_bytes())
    with pytest.raises(ValueError, match=r"indices 0\); they are not scans of this set"):
        run_synth(out, scans=3, seed=3, **SMALL)  # type: ignore[arg-type]


def test_scans_without_generator_json_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "n"
    run_synth(out, scans=1, seed=3, **SMALL)  # type: ignore[arg-type]
    (out / "generator.json").unlink()
    with pytest.raises(ValueError, match=r"no generator\.json"):
        run_synth(out, scans=1, seed=3, **SMALL)  # type: ignore[arg-type]


def test_dicom_output_reads_back_with_the_same_geometry(tmp_path: Path, dataset: Path) -> None:
    run_synth(tmp_path / "d", scans=1, seed=7, fmt="dicom", **SMALL)  # type: ignore[arg-type]
    uid = read_seriesuids(tmp_path / "d" / "seriesuids.csv")[0]
    dcm = read_volume(tmp_path / "d" / "subset0" / uid)
    mhd = read_volume(dataset / "subset0" / f"{uid}.mhd")
    assert dcm.series_uid == uid
    assert dcm.shape == mhd.shape
    np.testing.assert_allclose(dcm.spacing, mhd.spacing, atol=1e-4)
    np.testing.assert_allclose(dcm.origin, mhd.origin, atol=1e-3)
    np.testing.assert_array_equal(dcm.array, mhd.array)
    assert (tmp_path / "d" / "annotations.csv").read_text() == (
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        + "".join(line for line in (dataset / "annotations.csv").read_text().splitlines(True)[1:] if line.startswith(uid))
    )


def test_cli_synth(tmp_path: Path) -> None:
    main(["synth", "--out", str(tmp_path / "c"), "--scans", "1", "--seed", "1", "--preset", "small",
          "--shapes", "ellipsoid", "--slice_thickness", "4.0", "--kernel", "soft"])
    scans = pd.read_csv(tmp_path / "c" / "scans.csv")
    assert scans.loc[0, "spacing_z"] == 4.0 and scans.loc[0, "scanner_kernel"] == "soft"


@pytest.mark.slow
def test_lidc_shapes_are_used(tmp_path: Path) -> None:
    run_synth(tmp_path / "l", scans=3, seed=5, preset="small", shapes="lidc", shape_patients=3, progress=False)
    manifest = pd.read_csv(tmp_path / "l" / "manifest.csv")
    nod = manifest[manifest["kind"] == "nodule"]
    assert len(nod) and nod["shape_source"].str.startswith("LIDC-IDRI-").all()


def test_nodule_types_can_be_chosen_and_are_recorded(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "g"
    run_synth(out, scans=4, seed=7, types={"ground-glass": 1.0}, **SMALL)  # type: ignore[arg-type]
    manifest = pd.read_csv(out / "manifest.csv")
    nodules = manifest[manifest["kind"] == "nodule"]
    assert len(nodules) > 0 and set(nodules["nodule_type"]) == {"ground-glass"}
    # the types are recorded: a rerun with other types is refused, the default mix too
    assert json.loads((out / "generator.json").read_text())["types"]["ground-glass"] == 1.0
    with pytest.raises(ValueError, match="other parameters"):
        run_synth(out, scans=4, seed=7, types={"solid": 1.0}, **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="other parameters"):
        run_synth(out, scans=4, seed=7, **SMALL)  # type: ignore[arg-type]
    # the default mix records no types, so the sets made before types existed still match
    assert "types" not in json.loads((dataset / "generator.json").read_text())
    # scans are the same but for the nodules' types: same series, same geometry
    assert read_seriesuids(out / "seriesuids.csv") == read_seriesuids(dataset / "seriesuids.csv")


@pytest.mark.parametrize(
    "types, message",
    [({"glass": 1.0}, "must be among"), ({"solid": -0.1, "ground-glass": 1.0}, ">= 0"), ({"solid": 0.0}, "not all 0")],
)
def test_bad_nodule_types_are_refused_before_writing(tmp_path: Path, types: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_synth(tmp_path / "bad", scans=1, seed=1, types=types, **SMALL)  # type: ignore[arg-type]
    assert not (tmp_path / "bad" / "generator.json").exists()
