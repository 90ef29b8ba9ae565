"""A corpus of bad CT studies (and a few good ones), built by the tests: no stored binaries.

:func:`make_corpus` writes each study under one folder and returns ``{relative path:
expected substring of the failure reason}`` (``""`` for a good study). Pass every key as
one input of a batch (``run_batch([folder / k for k in corpus], ...)``): the empty folder
and the folder of text files are failures only as inputs of their own. Every bad study is
tiny (a few kB) and the good ones are small synthetic chest phantoms (``preset="small"``,
ellipsoid nodules, under a second each), so that a batch over the corpus takes seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from nodule.io import SeriesInfo, Volume, write_dicom_series, write_volume

_UID_ROOT = "1.2.826.0.1.3680043.8.498.7712"


def _uid(k: int) -> str:
    return f"{_UID_ROOT}.{k}"


def _chestless(shape: tuple[int, int, int], hu: int) -> np.ndarray:
    return np.full(shape, hu, dtype=np.int16)


def _small_ct(seed: int, shape: tuple[int, int, int] = (6, 16, 16)) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(
        array=rng.integers(-1000, 400, size=shape).astype(np.int16),
        spacing=(0.8, 0.8, 2.5),
        origin=(-6.0, -6.0, -100.0),
        info=SeriesInfo(series_uid=_uid(seed), slice_thickness=2.5),
    )


def _dicom(folder: Path, seed: int, shape: tuple[int, int, int] = (6, 16, 16)) -> list[Path]:
    return write_dicom_series(_small_ct(seed, shape), folder, series_uid=_uid(seed))


def _edit(path: Path, **tags: object) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _image(path: Path, array: np.ndarray, spacing: float = 2.0, vector: bool = False) -> None:
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing([spacing] * image.GetDimension())
    sitk.WriteImage(image, str(path))


# --------------------------------------------------------------------------- bad studies
# each writes one study under the folder and returns (relative path, expected reason)


def _truncated_raw(root: Path) -> tuple[str, str]:
    image = sitk.GetImageFromArray(_small_ct(1, (8, 16, 16)).array)
    sitk.WriteImage(image, str(root / "truncated_raw.mhd"), useCompression=False)
    raw = root / "truncated_raw.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    return "truncated_raw.mhd", "truncated_raw.raw is truncated"


def _truncated_zraw(root: Path) -> tuple[str, str]:
    write_volume(_small_ct(2, (8, 16, 16)), root / "truncated_zraw.mhd")
    data = root / "truncated_zraw.zraw"
    data.write_bytes(data.read_bytes()[:-200])
    return "truncated_zraw.mhd", "truncated_zraw.zraw is truncated"


def _corrupt_zraw(root: Path) -> tuple[str, str]:
    write_volume(_small_ct(3, (8, 16, 16)), root / "corrupt_zraw.mhd")
    data = root / "corrupt_zraw.zraw"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(range(64))
    data.write_bytes(bytes(raw))
    return "corrupt_zraw.mhd", "corrupt_zraw.zraw is"


def _missing_raw(root: Path) -> tuple[str, str]:
    write_volume(_small_ct(4), root / "missing_raw.mhd")
    (root / "missing_raw.zraw").unlink()
    return "missing_raw.mhd", "missing_raw.zraw is missing"


def _garbage_header(root: Path) -> tuple[str, str]:
    (root / "garbage_header.mhd").write_bytes(bytes(np.random.default_rng(5).integers(0, 256, 400, dtype=np.uint8)))
    return "garbage_header.mhd", "not a MetaImage header"


def _mhd_outside(root: Path) -> tuple[str, str]:
    write_volume(_small_ct(6), root / "outside_data.mhd")
    (root / "outside_data.mhd").unlink()  # leave its data file one folder up
    (root / "outside").mkdir()
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 6\nElementType = MET_SHORT\n"
        "CompressedData = True\nElementDataFile = ../outside_data.zraw\n"
    )
    (root / "outside" / "outside.mhd").write_text(header)
    return "outside/outside.mhd", "outside the header's folder"


def _zero_byte(root: Path) -> tuple[str, str]:
    (root / "zero_byte.mha").write_bytes(b"")
    return "zero_byte.mha", "empty file (0 bytes)"


def _empty_nifti(root: Path) -> tuple[str, str]:
    (root / "empty.nii.gz").write_bytes(b"")
    return "empty.nii.gz", "empty file"


def _text_as_nifti(root: Path) -> tuple[str, str]:
    (root / "notes_named.nii.gz").write_text("patient notes, not an image\n")
    return "notes_named.nii.gz", "cannot read image"


def _nan_nifti(root: Path) -> tuple[str, str]:
    array = np.full((12, 24, 24), -800.0, dtype=np.float32)
    array[:, 8:12, 8:12] = np.nan
    _image(root / "nan.nii.gz", array)
    return "nan.nii.gz", "not finite"


def _nan_slab(root: Path) -> tuple[str, str]:
    array = np.full((12, 24, 24), -800.0, dtype=np.float32)
    array[8:] = np.nan  # a third of the slices
    _image(root / "nan_slab.mha", array)
    return "nan_slab.mha", "not finite"


def _inf_voxels(root: Path) -> tuple[str, str]:
    array = np.full((12, 24, 24), -800.0, dtype=np.float32)
    array[3, :4, :4] = np.inf
    _image(root / "inf.mha", array)
    return "inf.mha", "infinite"


def _flat(root: Path) -> tuple[str, str]:
    _image(root / "flat_2d.mha", np.zeros((24, 24), np.int16))
    return "flat_2d.mha", "2D image"


def _four_d(root: Path) -> tuple[str, str]:
    _image(root / "four_d.nii", np.zeros((2, 4, 8, 8), np.int16))
    return "four_d.nii", "4D image"


def _colour(root: Path) -> tuple[str, str]:
    _image(root / "colour.mha", np.zeros((4, 8, 8, 3), np.uint8), vector=True)
    return "colour.mha", "components per voxel"


def _symlink_loop(root: Path) -> tuple[str, str]:
    (root / "loop.mhd").symlink_to("loop.mhd")
    return "loop.mhd", "symbolic link"


def _dicom_missing_slice(root: Path) -> tuple[str, str]:
    files = _dicom(root / "dicom_missing_slice", 10)
    files[2].unlink()
    return "dicom_missing_slice", "missing slice"


def _dicom_mixed(root: Path) -> tuple[str, str]:
    folder = root / "dicom_mixed_acquisitions"
    _dicom(folder, 11)
    other = _dicom(root / "dicom_tmp_other", 12)
    for path in other:  # a second acquisition under the same SeriesInstanceUID
        _edit(path, SeriesInstanceUID=_uid(11))
        path.rename(folder / f"b_{path.name}")
    (root / "dicom_tmp_other").rmdir()
    return "dicom_mixed_acquisitions", "share a position"


def _dicom_localizer_only(root: Path) -> tuple[str, str]:
    files = _dicom(root / "dicom_localizer_only", 13, (3, 16, 16))
    for path in files:
        _edit(path, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    return "dicom_localizer_only", "only localizer"


def _dicom_mr(root: Path) -> tuple[str, str]:
    for path in _dicom(root / "dicom_mr", 14):
        _edit(path, Modality="MR")
    return "dicom_mr", "not CT"


def _dicom_corrupt_pixels(root: Path) -> tuple[str, str]:
    files = _dicom(root / "dicom_corrupt_pixels", 15)
    files[3].write_bytes(files[3].read_bytes()[:-100])
    return "dicom_corrupt_pixels", "truncated or corrupt"


def _dicom_spacing(root: Path) -> tuple[str, str]:
    files = _dicom(root / "dicom_uneven_spacing", 16)
    x, y, z = (float(v) for v in pydicom.dcmread(files[2]).ImagePositionPatient)
    _edit(files[2], ImagePositionPatient=[str(x), str(y), str(z + 0.6)])
    return "dicom_uneven_spacing", "non-uniform slice spacing"


def _dicom_tilt(root: Path) -> tuple[str, str]:
    files = _dicom(root / "dicom_tilt", 17)
    x, y, z = (float(v) for v in pydicom.dcmread(files[3]).ImagePositionPatient)
    _edit(files[3], ImagePositionPatient=[str(x + 1.0), str(y), str(z)])
    return "dicom_tilt", "gantry tilt"


def _dicom_single_slice(root: Path) -> tuple[str, str]:
    _dicom(root / "dicom_single_slice", 18, (1, 16, 16))
    return "dicom_single_slice", "single slice"


def _text_folder(root: Path) -> tuple[str, str]:
    folder = root / "text_files"
    folder.mkdir()
    for i in range(3):
        (folder / f"report_{i}.txt").write_text("findings: none\n")
    return "text_files", "no CT study found"


def _empty_folder(root: Path) -> tuple[str, str]:
    (root / "empty_folder").mkdir()
    return "empty_folder", "no CT study found"


def _all_water(root: Path) -> tuple[str, str]:
    write_volume(Volume(_chestless((20, 40, 40), 0), (4.0, 4.0, 5.0), (0.0, 0.0, 0.0)), root / "all_water.mha")
    return "all_water.mha", "no lung found"


def _tiny(root: Path) -> tuple[str, str]:
    write_volume(Volume(_chestless((3, 4, 4), -800), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), root / "tiny.mha")
    return "tiny.mha", "too small"


def _head_cylinder(root: Path) -> tuple[str, str]:
    """A head-sized water cylinder (180 mm across) in air: not a chest."""
    y, x = np.mgrid[:64, :64]
    disc = np.where((y - 31.5) ** 2 + (x - 31.5) ** 2 < 30**2, 20, -1000).astype(np.int16)
    array = np.repeat(disc[None], 30, axis=0)
    write_volume(Volume(array, (3.0, 3.0, 5.0), (0.0, 0.0, 0.0)), root / "head_cylinder.mha")
    return "head_cylinder.mha", "no lung found"


def _missing_path(root: Path) -> tuple[str, str]:
    return "no_such_study.mhd", "no such file"


BAD_STUDIES: tuple[Callable[[Path], tuple[str, str]], ...] = (
    _truncated_raw,
    _truncated_zraw,
    _corrupt_zraw,
    _missing_raw,
    _garbage_header,
    _mhd_outside,
    _zero_byte,
    _empty_nifti,
    _text_as_nifti,
    _nan_nifti,
    _nan_slab,
    _inf_voxels,
    _flat,
    _four_d,
    _colour,
    _symlink_loop,
    _dicom_missing_slice,
    _dicom_mixed,
    _dicom_localizer_only,
    _dicom_mr,
    _dicom_corrupt_pixels,
    _dicom_spacing,
    _dicom_tilt,
    _dicom_single_slice,
    _text_folder,
    _empty_folder,
    _all_water,
    _tiny,
    _head_cylinder,
    _missing_path,
)
"""The kinds of bad study, one writer each."""


def make_corpus(folder: Path, good: int = 2) -> dict[str, str]:
    """Write the corpus of bad studies and ``good`` small good chest studies under ``folder``.

    Bad kinds (:data:`BAD_STUDIES`, 30): truncated ``.raw`` and ``.zraw``, a corrupted
    ``.zraw``, a ``.mhd`` without its data file, header garbage, a ``.mhd`` whose data file
    lies outside its folder, a zero-byte ``.mha``, an empty ``.nii.gz``, a text file named
    ``.nii.gz``, NaN voxels in a NIfTI, a NaN slab in an ``.mha``, infinite voxels, a 2D, a
    4D and a colour image, a symbolic link loop (where the system allows links), DICOM
    folders with a missing slice, two acquisitions under one series, localizers only, a
    non-CT modality, truncated pixel data, uneven slice spacing, gantry tilt, a single
    slice, a folder of text files, an empty folder, a volume of water (no lungs), a tiny
    volume, a head-sized water cylinder (not a chest) and a path that does not exist.
    Good: ``good_K.mhd``, small synthetic chest phantoms (seed 3, index K).

    Args:
        folder: where to write (created; should be empty).
        good: number of good studies.

    Returns:
        ``{study path relative to folder: expected substring of its failure reason}``,
        ``""`` for the good studies; every bad study's file names are unique, and so are
        the good ones' series uids.
    """
    from nodule.data.phantom import generate_phantom

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    corpus: dict[str, str] = {}
    for write in BAD_STUDIES:
        if write is _symlink_loop and not hasattr(os, "symlink"):
            continue
        try:
            path, reason = write(folder)
        except (OSError, NotImplementedError):  # e.g. no symbolic links on this file system
            if write is _symlink_loop:
                continue
            raise
        corpus[path] = reason
    for k in range(good):
        scan = generate_phantom(seed=3, index=k, preset="small")
        write_volume(scan.volume, folder / f"good_{k}.mhd")
        corpus[f"good_{k}.mhd"] = ""
    return corpus
