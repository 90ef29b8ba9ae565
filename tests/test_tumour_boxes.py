"""Tumour boxes (Lung-PET-CT-Dx XML) as known findings: geometry on a generated DICOM
series, bad files named, and the committed manifest row recomputed from the shared scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from nodule.data.tumour_boxes import TumourBox, boxes_to_findings, read_tumour_boxes
from nodule.io import SeriesInfo, Volume, read_volume, write_dicom_series
from nodule.paths import data_dir

REPO = Path(__file__).resolve().parents[1]
A0001_UID = "1.3.6.1.4.1.14519.5.2.1.6655.2359.257508444832901632590301540805"

XML = """<annotation><size><width>32</width><height>32</height><depth>1</depth></size>
<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>
</annotation>"""


def _series(tmp_path: Path) -> tuple[Path, list[str], Volume]:
    volume = Volume(
        np.full((4, 32, 32), -800, np.float32),
        (0.5, 0.5, 2.0),
        (-10.0, 20.0, -100.0),
        tuple(np.eye(3).ravel()),  # type: ignore[arg-type]
        SeriesInfo(series_uid="1.2.826.0.1.3680043.8.498.1"),
    )
    folder = tmp_path / "ct"
    files = write_dicom_series(volume, folder)
    return (
        folder,
        [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files],
        volume,
    )


def test_boxes_map_to_world(tmp_path: Path) -> None:
    folder, sops, volume = _series(tmp_path)
    ann = tmp_path / "annotation"
    ann.mkdir()
    # the tumour on slices 1 and 2: pixels x 4..12, y 8..20 on slice 1, x 6..14 on slice 2
    (ann / f"{sops[1]}.xml").write_text(XML.format(name="A", x0=4, y0=8, x1=12, y1=20))
    (ann / f"{sops[2]}.xml").write_text(XML.format(name="A", x0=6, y0=8, x1=14, y1=20))
    (ann / "1.2.3.4.5.xml").write_text(
        XML.format(name="A", x0=0, y0=0, x1=31, y1=31)
    )  # another series
    boxes = read_tumour_boxes(ann)
    assert len(boxes) == 3
    findings = boxes_to_findings(boxes, folder, volume.series_uid)
    assert len(findings) == 1
    row = findings.iloc[0]
    # x: pixels 4..14 -> -10 + 0.5 * [4, 14] = [-8, -3]; y: 20 + 0.5 * [8, 20] = [24, 30]
    # z: slices 1, 2 at -98, -96, +- half the 2 mm thickness -> [-99, -95]
    assert row["coordX"] == pytest.approx(-5.5)
    assert row["coordY"] == pytest.approx(27.0)
    assert row["coordZ"] == pytest.approx(-97.0)
    assert row["diameter_mm"] == pytest.approx(6.0)
    assert "1 boxes on other series left out" in row["description"]


def test_no_box_of_the_series_is_an_error(tmp_path: Path) -> None:
    folder, _, volume = _series(tmp_path)
    with pytest.raises(ValueError, match="none of the 1 tumour boxes"):
        boxes_to_findings([TumourBox("1.2.3", "A", 0, 0, 1, 1)], folder, volume.series_uid)


def test_bad_xml_is_named(tmp_path: Path) -> None:
    (tmp_path / "1.2.3.xml").write_text("<annotation><object><name>A</name></object></annotation>")
    with pytest.raises(ValueError, match=r"1\.2\.3\.xml: not a tumour-box annotation"):
        read_tumour_boxes(tmp_path)
    with pytest.raises(ValueError, match="no tumour-box XML"):
        read_tumour_boxes(tmp_path / "missing")


def test_a0001_manifest_row_is_recomputed() -> None:
    folder = data_dir() / "real_ct" / "lung-pet-ct-dx-a0001"
    if not (folder / "annotation").is_dir():
        pytest.skip(f"{folder}/annotation not found; set NODULE_DATA to the shared data folder")
    computed = boxes_to_findings(read_tumour_boxes(folder / "annotation"), folder, A0001_UID)
    manifest = pd.read_csv(
        REPO / "data_manifests" / "real_ct_known_findings.csv", dtype={"seriesuid": str}
    )
    committed = manifest[manifest["seriesuid"] == A0001_UID].reset_index(drop=True)
    cols = ["coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(committed) == len(computed) == 1
    np.testing.assert_allclose(
        committed[cols].to_numpy(float), computed[cols].to_numpy(float), atol=1e-3
    )
    # the box centre is the tumour: soft tissue in the real scan, not aerated lung
    volume = read_volume(folder)
    centre = np.round(
        volume.world_to_voxel(computed[["coordX", "coordY", "coordZ"]].to_numpy(float))[0]
    ).astype(int)
    assert volume.array[tuple(centre)] > -300
