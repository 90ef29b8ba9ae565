"""nodule.io: reading, writing, geometry, resampling and bad input, on tiny generated volumes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import UID

from nodule.io import (
    SeriesInfo,
    Volume,
    VolumeReadError,
    VolumeReadWarning,
    read_volume,
    resample,
    resample_like,
    write_dicom_series,
    write_volume,
)

SERIES_UID = "1.2.826.0.1.3680043.8.498.1234567"


def _rotation(axis: tuple[float, float, float], degrees: float) -> tuple[float, ...]:
    """Row-major 3x3 rotation about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    r = np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx
    return tuple(float(v) for v in r.ravel())


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
IN_PLANE = _rotation((0, 0, 1), 30)
OBLIQUE = _rotation((1, 2, 3), 40)


def _volume(
    shape: tuple[int, int, int] = (6, 10, 8),
    direction: tuple[float, ...] = IDENTITY,
    seed: int = 0,
    uid: str = SERIES_UID,
) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(
        array=rng.integers(-1024, 1500, size=shape).astype(np.int16),
        spacing=(0.7, 0.8, 2.5),
        origin=(-10.25, 20.5, -30.0),
        direction=direction,
        info=SeriesInfo(series_uid=uid, slice_thickness=2.0, kernel="B70f", manufacturer="ACME"),
    )


def _assert_same_geometry(a: Volume, b: Volume, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


def _series(tmp_path: Path, volume: Volume | None = None, name: str = "series") -> Path:
    folder = tmp_path / name
    write_dicom_series(volume or _volume(), folder)
    return folder


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "direction", [IDENTITY, IN_PLANE, OBLIQUE], ids=["axial", "in-plane", "oblique"]
)
def test_dicom_round_trip_keeps_geometry_hu_and_info(
    tmp_path: Path, direction: tuple[float, ...]
) -> None:
    volume = _volume(direction=direction)
    back = read_volume(_series(tmp_path, volume))
    _assert_same_geometry(back, volume)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.info == volume.info.__class__(
        series_uid=SERIES_UID,
        modality="CT",
        slice_thickness=2.0,
        kernel="B70f",
        manufacturer="ACME",
    )


def test_dicom_writer_is_deterministic_valid_and_anonymous(tmp_path: Path) -> None:
    volume = _volume(uid="phantom-7")  # not a UID: one is generated
    a = write_dicom_series(volume, tmp_path / "a")
    b = write_dicom_series(volume, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    other = write_dicom_series(_volume(uid="phantom-7", seed=1), tmp_path / "c")
    headers = [pydicom.dcmread(p) for p in a]
    ds = headers[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate) == ("ANONYMOUS", "SYNTHETIC", "")
    uids = {h.SOPInstanceUID for h in headers} | {ds.StudyInstanceUID, ds.SeriesInstanceUID}
    assert len(uids) == len(a) + 2 and all(UID(u).is_valid for u in uids)
    assert pydicom.dcmread(other[0]).SeriesInstanceUID != ds.SeriesInstanceUID
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    np.testing.assert_allclose(np.diff(z), 2.5)
    assert float(ds.SpacingBetweenSlices) == 2.5 and [float(v) for v in ds.PixelSpacing] == [
        0.8,
        0.7,
    ]
    assert read_volume(tmp_path / "a").series_uid == ds.SeriesInstanceUID


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    for path in sorted(folder.iterdir()):
        _edit(path, RescaleSlope="2", RescaleIntercept="-3000")
    stored = np.stack([pydicom.dcmread(p).pixel_array for p in sorted(folder.iterdir())])
    back = read_volume(folder)
    np.testing.assert_array_equal(back.array, stored.astype(np.int32) * 2 - 3000)


def test_float_volume_is_quantised_within_half_a_slope(tmp_path: Path) -> None:
    volume = _volume()
    volume = volume.with_array(volume.array.astype(np.float32) + 0.3)
    back = read_volume(_series(tmp_path, volume))
    assert back.array.dtype == np.float32
    slope = float(pydicom.dcmread(next((tmp_path / "series").iterdir())).RescaleSlope)
    assert np.abs(back.array - volume.array).max() <= slope / 2 + 1e-3


def test_left_handed_volume_reads_back_as_the_same_world_content(tmp_path: Path) -> None:
    flip = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    volume = _volume(direction=flip)
    back = read_volume(_series(tmp_path, volume))
    np.testing.assert_array_equal(back.array, volume.array[::-1])
    last = volume.voxel_to_world([[volume.shape[0] - 1, 0, 0]])
    np.testing.assert_allclose(back.voxel_to_world([[0, 0, 0]]), last, atol=1e-6)


@pytest.mark.parametrize("suffix", [".mhd", ".mha", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_file_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    volume = _volume(direction=OBLIQUE)
    volume = volume.with_array(volume.array.astype(dtype) + (0.25 if dtype == np.float32 else 0))
    path = write_volume(volume, tmp_path / f"{SERIES_UID}{suffix}")
    back = read_volume(path)
    _assert_same_geometry(back, volume, atol=1e-4)  # NIfTI stores geometry as float32
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, volume.array)
    kept = volume.info if suffix != ".nii.gz" else SeriesInfo(series_uid=SERIES_UID)
    assert back.info == kept  # MetaImage headers keep the metadata, NIfTI only the id
    if suffix == ".mhd":
        assert "CompressedData = True" in path.read_text()
        assert path.with_suffix(".zraw").is_file()


def test_read_single_dicom_file_reads_its_series(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    assert read_volume(next(folder.iterdir())).shape == (6, 10, 8)


# --------------------------------------------------------------------------- bad input


def test_missing_path_and_unsupported_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "nope.mhd")
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(VolumeReadError, match=r"a\.txt: unsupported"):
        read_volume(tmp_path / "a.txt")


def test_empty_folder_and_non_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match=r"empty.*empty folder"):
        read_volume(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not an image")
    (tmp_path / "junk" / "IM0001").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(VolumeReadError, match="junk: no DICOM image series among 2 file"):
        read_volume(tmp_path / "junk")


def test_corrupt_and_truncated_slices_are_named(tmp_path: Path) -> None:
    folder = _series(tmp_path, _volume(shape=(6, 64, 64)))
    bad = folder / "0003.dcm"
    data = bad.read_bytes()
    bad.write_bytes(data[:-100])
    with pytest.raises(VolumeReadError, match=r"0003\.dcm: truncated"):
        read_volume(folder)
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    with pytest.raises(VolumeReadError, match=r"0003\.dcm: corrupt"):
        read_volume(folder)


def test_missing_slice_is_an_error(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    (folder / "0002.dcm").unlink()
    with pytest.raises(VolumeReadError, match=r"gap.*0001\.dcm and 0003\.dcm.*missing slice"):
        read_volume(folder)


def test_small_spacing_jitter_warns_large_is_an_error(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    path = folder / "0002.dcm"
    z = float(pydicom.dcmread(path).ImagePositionPatient[2])
    _edit(path, ImagePositionPatient=["-10.25", "20.5", str(z + 0.01)])  # 0.4 % of 2.5 mm
    with pytest.warns(VolumeReadWarning, match="slice spacing varies"):
        back = read_volume(folder)
    assert back.spacing[2] == pytest.approx(2.5)
    _edit(path, ImagePositionPatient=["-10.25", "20.5", str(z + 0.5)])
    with pytest.raises(VolumeReadError, match="non-uniform slice spacing"):
        read_volume(folder)


@pytest.mark.parametrize(
    ("shift", "message"),
    [((0.0, 0.0, -2.5), "share a position"), ((1.0, 0.0, 0.0), "gantry tilt")],
    ids=["duplicate", "tilt"],
)
def test_unstackable_slice_positions_are_errors(
    tmp_path: Path, shift: tuple[float, float, float], message: str
) -> None:
    folder = _series(tmp_path)
    path = folder / "0003.dcm"
    position = np.array(pydicom.dcmread(path).ImagePositionPatient, dtype=float) + shift
    _edit(path, ImagePositionPatient=[str(v) for v in position])
    with pytest.raises(VolumeReadError, match=message):
        read_volume(folder)


def test_dicom_writer_refuses_a_used_folder_unless_overwrite(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    with pytest.raises(FileExistsError):
        write_dicom_series(_volume(shape=(3, 10, 8)), folder)
    write_dicom_series(_volume(shape=(3, 10, 8)), folder, overwrite=True)
    assert read_volume(folder).shape == (3, 10, 8)


def test_non_ct_modality_needs_opt_in(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    for path in folder.iterdir():
        _edit(path, Modality="MR")
    with pytest.raises(VolumeReadError, match="modality 'MR', not CT"):
        read_volume(folder)
    assert read_volume(folder, allow_non_ct=True).info.modality == "MR"


def test_two_dimensional_images_are_errors(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.zeros((8, 8), np.int16))
    sitk.WriteImage(image, str(tmp_path / "flat.mha"))
    with pytest.raises(VolumeReadError, match=r"flat\.mha: a 2D image"):
        read_volume(tmp_path / "flat.mha")
    folder = _series(tmp_path, _volume(shape=(1, 8, 8)))
    with pytest.raises(VolumeReadError, match="single slice"):
        read_volume(folder)


def test_localizer_in_series_is_dropped_with_warning(tmp_path: Path) -> None:
    volume = _volume()
    folder = _series(tmp_path, volume)
    scout = _series(
        tmp_path, _volume(shape=(2, 12, 12), direction=_rotation((0, 1, 0), 90)), "scout"
    )
    for i, path in enumerate(sorted(scout.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = SERIES_UID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"] if i == 0 else ds.ImageType
        ds.save_as(folder / f"scout{i}.dcm")
    with pytest.warns(
        VolumeReadWarning, match="dropped 1 localizer image.* and 1 image.*another orientation"
    ):
        back = read_volume(folder)
    np.testing.assert_array_equal(back.array, volume.array)


def test_series_choice_in_a_folder_with_several(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uid_small = "1.2.826.0.1.3680043.8.498.99"
    write_dicom_series(_volume(), tmp_path / "mixed")
    write_dicom_series(_volume(shape=(3, 10, 8), uid=uid_small), tmp_path / "small")
    for path in (tmp_path / "small").iterdir():
        path.rename(tmp_path / "mixed" / f"small_{path.name}")
    with caplog.at_level(logging.INFO, logger="nodule.io"):
        assert read_volume(tmp_path / "mixed").shape == (6, 10, 8)
    assert "mixed" in caplog.text and f"chose {SERIES_UID}" in caplog.text
    assert read_volume(tmp_path / "mixed", series_uid=uid_small).shape == (3, 10, 8)
    with pytest.raises(VolumeReadError, match=r"series 1\.2\.3 not found"):
        read_volume(tmp_path / "mixed", series_uid="1.2.3")


def test_mhd_with_missing_or_short_data_file(tmp_path: Path) -> None:
    path = write_volume(_volume(), tmp_path / "scan.mhd")
    raw = path.with_suffix(".zraw")
    raw.write_bytes(raw.read_bytes()[:20])
    with pytest.raises(VolumeReadError, match=r"scan\.mhd: cannot read"):
        read_volume(path)
    raw.unlink()
    with pytest.raises(VolumeReadError, match=r"scan\.zraw is missing"):
        read_volume(path)


# --------------------------------------------------------------------------- geometry


def test_world_voxel_matches_simpleitk_with_rotated_direction() -> None:
    volume = _volume(direction=OBLIQUE)
    image = volume.to_sitk()
    rng = np.random.default_rng(1)
    world = rng.uniform(-50, 50, size=(200, 3))
    expected_xyz = np.array(
        [image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in world]
    )
    voxels = volume.world_to_voxel(world)
    np.testing.assert_allclose(voxels, expected_xyz[:, ::-1], atol=1e-9)
    np.testing.assert_allclose(volume.voxel_to_world(voxels), world, atol=1e-9)
    index = [int(v) for v in rng.integers(0, 6, size=3)]
    np.testing.assert_allclose(
        volume.voxel_to_world([index[::-1]])[0],
        image.TransformIndexToPhysicalPoint(index),
        atol=1e-9,
    )


def test_resample_keeps_extent_and_masks_binary() -> None:
    volume = _volume(shape=(8, 20, 16), direction=IN_PLANE)
    out = resample(volume, (1.0, 1.0, 1.0))
    assert out.shape == (20, 16, 11)  # round(8*2.5), round(20*0.8), round(16*0.7)
    assert out.array.dtype == np.int16 and out.info == volume.info
    corner_in = volume.voxel_to_world([[-0.5, -0.5, -0.5]])
    np.testing.assert_allclose(out.voxel_to_world([[-0.5, -0.5, -0.5]]), corner_in, atol=1e-9)
    assert out.array.min() >= volume.array.min() and out.array.max() <= volume.array.max()

    mask = volume.with_array(volume.array > 0)
    out_mask = resample(mask, (0.5, 0.5, 0.5), is_mask=True)
    assert out_mask.array.dtype == np.bool_ and out_mask.array.any()
    assert out_mask.array.mean() == pytest.approx(mask.array.mean(), abs=0.05)

    same = resample_like(volume, volume)
    np.testing.assert_array_equal(same.array, volume.array)


def test_resample_linear_fills_outside_with_air() -> None:
    volume = _volume(shape=(4, 6, 6))
    shifted = Volume(np.zeros((4, 6, 6), np.float32), volume.spacing, (1000.0, 0.0, 0.0))
    out = resample_like(volume, shifted)
    assert (out.array == -1024).all()


# --------------------------------------------------------------------------- the real scan


def test_real_ct_matches_its_dicom_headers(real_ct_dir: Path) -> None:
    start = time.perf_counter()
    volume = read_volume(real_ct_dir)
    seconds = time.perf_counter() - start
    headers = [pydicom.dcmread(p) for p in sorted(real_ct_dir.glob("*.dcm"))]
    headers.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = headers[0]
    assert volume.shape == (99, 512, 512)
    assert volume.spacing[:2] == (float(first.PixelSpacing[1]), float(first.PixelSpacing[0]))
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in headers])
    assert volume.spacing[2] == pytest.approx(float(np.diff(z).mean()))
    np.testing.assert_allclose(volume.origin, [float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(volume.direction, IDENTITY)
    hu = [
        ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        for ds in headers
    ]
    assert volume.array.dtype == np.int16
    assert (volume.array.min(), volume.array.max()) == (
        min(h.min() for h in hu),
        max(h.max() for h in hu),
    )
    np.testing.assert_array_equal(volume.array[10], hu[10])
    assert volume.info.series_uid == first.SeriesInstanceUID and volume.info.modality == "CT"
    text = repr(volume.info)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
        value = str(first.get(keyword, "")).strip()
        assert not value or value not in text, keyword
    print(f"read_volume(real CT) took {seconds:.2f} s")
