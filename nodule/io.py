"""CT volumes: reading, writing, world <-> voxel geometry and resampling.

Conventions: arrays are (z, y, x); SimpleITK indices, spacing and origin are
(x, y, z); world coordinates are (x, y, z) in mm, LPS, as in LUNA16. World <->
voxel conversion goes through SimpleITK's index/physical-point transforms, so
direction cosines are honoured.

Reading (:func:`read_volume`) accepts a DICOM folder, one DICOM file (its series is
read from the folder), ``.mhd/.mha`` and ``.nii/.nii.gz``. Values are HU (DICOM
rescale slope/intercept applied); the array is int16 when every value is an integer
in int16's range (typical CT) and float32 otherwise. Only non-identifying series
metadata is kept (:class:`SeriesInfo`).

Bad input raises :class:`VolumeReadError` (a ``ValueError``) naming the path and the
problem, or warns with :class:`VolumeReadWarning` where a sane reading exists:

==================================================  =========================================
input                                               outcome
==================================================  =========================================
missing path                                        ``FileNotFoundError``
empty folder, folder without DICOM images           error
corrupt DICOM file (DICOM suffix or DICM magic),    error naming the file
truncated pixel data
non-CT modality                                     error unless ``allow_non_ct=True``
``series_uid`` not in the folder                    error listing the series found
several series, none asked for                      the CT series with most files, logged
2D image (one slice, 2D file), colour, multi-frame  error
missing slice (gap along the slice normal)          error: stacking would distort geometry,
                                                    interpolating would invent data
slice spacing jitter <= 1 % of the median           warning; the mean spacing is used
larger spacing differences, duplicate positions,    error
gantry tilt, mixed pixel spacing
localizer / other orientation or size in series     dropped with a warning
``.mhd`` whose data file is missing or unreadable   error naming the data file
``.mhd`` whose data file lies outside its folder,   error (a header must not make the reader
or is not a regular file (a device, a FIFO)         read an arbitrary file)
broken or looping symbolic link                     error
NaN or infinite voxels, more than                   error naming the file, the fraction and
:data:`NONFINITE_MAX_FRACTION` of the volume        the slices
NaN or infinite voxels, at most that fraction       warning with the fraction; they are read
                                                    as -1024 HU (air)
==================================================  =========================================

Non-finite voxels: a CT holds finite HU, so NaN or infinity means a broken conversion or
a masked export. A few scattered voxels (at most one in 100 000) are read as air with a
warning: too few to hide a nodule or change the lung mask. More is an error rather
than a guess (a NaN slab read as air or as 0 would give a partial lung that looks
fine). ITK reads NaN in a float NIfTI as 0; the NIfTI voxel data is checked directly so
that they are found.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from nodule.errors import InputWarning

logger = logging.getLogger(__name__)

FILL_HU = -1024.0


def equivalent_diameter(volume_mm3: float) -> float:
    """Diameter in mm of the sphere of the given volume (negative volumes count as 0)."""
    return float((6.0 * max(volume_mm3, 0.0) / math.pi) ** (1.0 / 3.0))
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VOLUME_SUFFIXES = (".mhd", ".mha", ".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

SPACING_RTOL_SILENT = 1e-3
"""Slice spacing deviation (relative to the median) read without comment."""
SPACING_RTOL_WARN = 1e-2
"""Slice spacing deviation up to which a series is read with a warning; above: error."""
GAP_RATIO = 1.5
"""A slice distance this many times the median spacing is a missing slice."""
NONFINITE_MAX_FRACTION = 1e-5
"""Largest fraction of NaN/infinite voxels read (as -1024 HU, with a warning); above: error."""

PathLike = str | os.PathLike[str]


class VolumeReadError(ValueError):
    """A volume could not be read; the message names the path and the problem."""


class VolumeReadWarning(InputWarning):
    """A volume was read, but something about the input needed a decision."""


@dataclass(frozen=True)
class SeriesInfo:
    """Series metadata that does not identify the patient.

    Attributes:
        series_uid: SeriesInstanceUID for DICOM; for .mhd/.mha/.nii(.gz) the file name
            without extension (the LUNA16 convention). This is the study's id.
        modality: DICOM Modality ("CT" for files without one).
        slice_thickness: nominal slice thickness in mm, if known.
        kernel: reconstruction kernel (DICOM ConvolutionKernel), if known.
        manufacturer: scanner manufacturer, if known.
    """

    series_uid: str
    modality: str = "CT"
    slice_thickness: float | None = None
    kernel: str | None = None
    manufacturer: str | None = None


@dataclass(frozen=True)
class Volume:
    """A CT volume in HU with its geometry.

    Attributes:
        array: HU values, (z, y, x), float32 or int16 (masks: bool or uint8).
        spacing: voxel size in mm, (x, y, z) as in SimpleITK.
        origin: world position of voxel (0, 0, 0) in mm, (x, y, z).
        direction: direction cosines, 9 values row-major as in SimpleITK.
        info: series metadata (no patient identifiers).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    info: SeriesInfo = field(default_factory=lambda: SeriesInfo(series_uid="unknown"))

    @property
    def series_uid(self) -> str:
        """The study's id (see :class:`SeriesInfo`)."""
        return self.info.series_uid

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in mm in array order (z, y, x)."""
        return self.spacing[2], self.spacing[1], self.spacing[0]

    def to_sitk(self) -> sitk.Image:
        """This volume as a SimpleITK image (array copied; bool arrays become uint8)."""
        array = self.array.view(np.uint8) if self.array.dtype == np.bool_ else self.array
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, info: SeriesInfo) -> Volume:
        """Wrap a 3D SimpleITK image (its array is copied)."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.GetDirection()),
            info=info,
        )

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry and metadata with another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array)

    def index_to_world_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Affine (A, b) with world_xyz = A @ index_xyz + b, read off SimpleITK's transform."""
        image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        b = np.array(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0)))
        cols = [
            np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(np.eye(3)[i]))) - b
            for i in range(3)
        ]
        return np.stack(cols, axis=1), b

    def world_to_voxel(self, points_xyz: npt.ArrayLike) -> np.ndarray:
        """World points (N, 3) in mm, (x, y, z) -> continuous voxel coordinates (N, 3) in (z, y, x)."""
        pts = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
        a, b = self.index_to_world_matrix()
        index_xyz = np.linalg.solve(a, (pts - b).T).T
        return index_xyz[:, ::-1].copy()

    def voxel_to_world(self, voxels_zyx: npt.ArrayLike) -> np.ndarray:
        """Continuous voxel coordinates (N, 3) in (z, y, x) -> world points (N, 3) in mm, (x, y, z)."""
        vox = np.atleast_2d(np.asarray(voxels_zyx, dtype=np.float64))
        a, b = self.index_to_world_matrix()
        return np.asarray((a @ vox[:, ::-1].T).T + b, dtype=np.float64)


# --------------------------------------------------------------------------- reading


def read_volume(
    path: PathLike, series_uid: str | None = None, *, allow_non_ct: bool = False
) -> Volume:
    """Read a CT volume from a DICOM folder or file, ``.mhd/.mha`` or ``.nii/.nii.gz``.

    Args:
        path: a folder of DICOM files, one DICOM file (its series is read from its
            folder), or a ``.mhd/.mha/.nii/.nii.gz`` file.
        series_uid: DICOM only: the SeriesInstanceUID to read when the folder holds
            several series; default: the CT series with the most files.
        allow_non_ct: DICOM only: accept a modality other than CT.

    Returns:
        The volume in HU (int16 when the values fit, else float32), with its id in
        ``info.series_uid`` (SeriesInstanceUID, or the file name without extension).

    Raises:
        FileNotFoundError: the path does not exist.
        VolumeReadError: the input cannot be read as a 3D volume (see the module doc).
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise VolumeReadError(f"{p}: broken or looping symbolic link")
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        return read_dicom_series(p, series_uid, allow_non_ct=allow_non_ct)
    if _volume_suffix(p):
        return read_image_file(p)
    if looks_like_dicom(p):
        header = _read_header(p)
        uid = series_uid or str(header.get("SeriesInstanceUID", ""))
        return read_dicom_series(p.parent, uid or None, allow_non_ct=allow_non_ct)
    raise VolumeReadError(
        f"{p}: unsupported file type; expected a DICOM folder or file, "
        f"or one of {', '.join(VOLUME_SUFFIXES)}"
    )


def series_uid_from_filename(path: PathLike) -> str:
    """The id of a ``.mhd/.mha/.nii(.gz)`` study: its file name without extension.

    Args:
        path: the image file.

    Returns:
        e.g. ``1.3.6...860`` for ``subset0/1.3.6...860.mhd``.
    """
    name = Path(path).name
    suffix = _volume_suffix(Path(path))
    return name[: -len(suffix)] if suffix else Path(name).stem


def read_image_file(path: PathLike) -> Volume:
    """Read a ``.mhd/.mha/.nii/.nii.gz`` file as a volume in HU.

    Args:
        path: the image file; its id is the file name without extension.

    Returns:
        The volume (int16 when the values fit, else float32); modality "CT" and no
        other metadata unless the file holds ``nodule_*`` keys (see :func:`write_volume`).

    Raises:
        VolumeReadError: the file (or a ``.mhd``'s data file) is missing or unreadable,
            or the image is not a single-component 3D image with more than one slice.
    """
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise VolumeReadError(f"{p}: empty file (0 bytes)")
    if p.suffix.lower() == ".mhd":
        _check_mhd_data_file(p)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise VolumeReadError(f"{p}: cannot read image: {_reason(exc)}") from exc
    _check_3d_image(image, p)
    volume = Volume.from_sitk(image, _info_from_keys(image, series_uid_from_filename(p)))
    array = volume.array
    if _volume_suffix(p) in (".nii", ".nii.gz"):
        array = _nifti_nonfinite_as_nan(p, array)
    return volume.with_array(_hu_dtype(_finite_hu(array, p)))


def find_dicom_series(folder: PathLike) -> dict[str, list[Path]]:
    """DICOM series in a folder (not its subfolders), found by GDCM through SimpleITK.

    Args:
        folder: the folder to scan.

    Returns:
        SeriesInstanceUID -> its files as GDCM orders them; empty if none. (GDCM scans
        the folder once for the ids and once more per series.)
    """
    folder_s = str(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder_s)
    return {
        uid: [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder_s, uid)]
        for uid in ids
    }


def read_dicom_series(
    folder: PathLike, series_uid: str | None = None, *, allow_non_ct: bool = False
) -> Volume:
    """Read one DICOM series of a folder as a volume in HU.

    Headers are checked with pydicom (pixel data deferred) before SimpleITK reads the
    pixels; slices are ordered along the slice normal. Errors and warnings: see the
    module docstring.

    Args:
        folder: the DICOM folder (not searched recursively).
        series_uid: the SeriesInstanceUID to read; default: the CT series with the
            most files (logged when there are several).
        allow_non_ct: accept a modality other than CT.

    Returns:
        The volume; origin is the first slice's ImagePositionPatient, the z spacing the
        mean distance between slices along the normal.

    Raises:
        VolumeReadError: see the module docstring.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeReadError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        what = "holds only subfolders (not searched)" if any(folder.iterdir()) else "empty folder"
        raise VolumeReadError(f"{folder}: {what}, no DICOM files to read")
    series = find_dicom_series(folder)
    listed = {p.resolve() for paths in series.values() for p in paths}
    _check_unlisted_files(folder, [p for p in files if p.resolve() not in listed])
    if not series:
        raise VolumeReadError(
            f"{folder}: no DICOM image series among {len(files)} file(s) (e.g. {files[0].name})"
        )
    uid = _choose_series(folder, series, series_uid, allow_non_ct)
    headers = [_read_header(p) for p in series[uid]]
    headers = _drop_foreign_slices(folder, uid, headers)
    modality = str(headers[0].get("Modality", ""))
    if modality != "CT" and not allow_non_ct:
        raise VolumeReadError(
            f"{folder}: series {uid} has modality {modality or 'unknown'!r}, not CT "
            "(pass allow_non_ct=True to read it anyway)"
        )
    headers, origin, direction, spacing_z = _stack_geometry(folder, headers)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(_path_of(h)) for h in headers])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(
            f"{folder}: cannot read the pixels of series {uid}: {_reason(exc)}"
        ) from exc
    _check_3d_image(image, folder)
    sx, sy, _ = image.GetSpacing()
    image.SetSpacing((sx, sy, spacing_z))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    volume = Volume.from_sitk(image, _series_info(uid, headers[0]))
    return volume.with_array(_hu_dtype(_finite_hu(volume.array, folder)))


def _volume_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(VOLUME_SUFFIXES, key=len, reverse=True) if name.endswith(s)), "")


def looks_like_dicom(path: Path) -> bool:
    """True when ``path`` has a DICOM suffix or the ``DICM`` preamble marker (reads 132 bytes)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _reason(exc: BaseException) -> str:
    """The informative line of an exception message (ITK's start with a source location)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("/", "sitk::ERROR: /"))]
    return (useful or lines or [type(exc).__name__])[-1][:300]


def _check_mhd_data_file(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            text = fh.read(65536).decode("latin-1")
    except OSError as exc:
        raise VolumeReadError(f"{path}: cannot read header: {exc}") from exc
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, flags=re.MULTILINE)
    if match is None:
        raise VolumeReadError(f"{path}: not a MetaImage header (no ElementDataFile)")
    name = match.group(1)
    if name == "LOCAL" or name.startswith("LIST") or "%" in name:
        return
    data = path.parent / name
    relative = os.path.normpath(name)
    if os.path.isabs(name) or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise VolumeReadError(
            f"{path}: its data file {name!r} lies outside the header's folder; refused "
            "(the data file must sit beside the header or below it)"
        )
    if not data.exists():
        if data.is_symlink():
            raise VolumeReadError(f"{path}: its data file {data} is a broken or looping symbolic link")
        raise VolumeReadError(f"{path}: its data file {data} is missing")
    if not data.is_file():
        raise VolumeReadError(f"{path}: its data file {data} is not a regular file")
    _check_mhd_data_size(path, text, data)


_MET_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
    "MET_UINT": 4, "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_mhd_data_size(path: Path, header: str, data: Path) -> None:
    """A ``.mhd``'s data file must hold what its header announces: the raw size (DimSize x
    ElementType x channels), or for compressed data ``CompressedDataSize`` bytes of an
    intact zlib stream that inflates to the raw size (ITK reads a damaged stream without
    a word)."""
    keys = {k.lower(): v for k, v in re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", header, flags=re.MULTILINE)}
    try:
        n = math.prod(int(v) for v in keys.get("dimsize", "").split())
        n *= int(keys.get("elementnumberofchannels", "1") or 1)
        expected = n * _MET_TYPE_BYTES[keys.get("elementtype", "").upper()]
        skip = int(keys.get("headersize", "0") or 0)
    except (KeyError, ValueError):
        return  # ITK reports a header it cannot use
    if skip != 0 or not keys.get("dimsize"):
        return
    size = data.stat().st_size
    if keys.get("compresseddata", "").lower() != "true":
        if size < expected:
            raise VolumeReadError(
                f"{path}: cannot read image: its data file {data.name} is truncated: {size} bytes, the header "
                f"needs {expected}"
            )
        return
    announced = keys.get("compresseddatasize", "")
    if announced.isdigit() and size < int(announced):
        raise VolumeReadError(
            f"{path}: cannot read image: its compressed data file {data.name} is truncated: {size} bytes, the "
            f"header gives {announced}"
        )
    _check_zlib_stream(path, data, expected)


def _check_zlib_stream(path: Path, data: Path, expected: int) -> None:
    import zlib

    inflate = zlib.decompressobj(47)  # zlib or gzip header
    total = 0
    try:
        with data.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(inflate.decompress(chunk))
                while inflate.unconsumed_tail:
                    total += len(inflate.decompress(inflate.unconsumed_tail))
                if inflate.eof:
                    break
            total += len(inflate.flush())
    except zlib.error as exc:
        raise VolumeReadError(
            f"{path}: cannot read image: its compressed data file {data.name} is corrupt ({exc})"
        ) from exc
    if not inflate.eof or total != expected:
        raise VolumeReadError(
            f"{path}: cannot read image: its compressed data file {data.name} is truncated or corrupt: it inflates "
            f"to {total} bytes, the header needs {expected}"
        )


def _check_3d_image(image: sitk.Image, path: Path) -> None:
    dim = image.GetDimension()
    if dim == 2 or (dim == 3 and image.GetSize()[2] == 1):
        raise VolumeReadError(f"{path}: a 2D image (size {image.GetSize()}), not a 3D volume")
    if dim != 3:
        raise VolumeReadError(f"{path}: a {dim}D image, expected a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(
            f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(colour or vector image), expected a grey-value CT"
        )


def _finite_hu(array: np.ndarray, path: Path) -> np.ndarray:
    """The array with non-finite voxels refused or, at most :data:`NONFINITE_MAX_FRACTION` of
    them, set to -1024 HU with a warning (see the module docstring)."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    n = int(np.count_nonzero(bad))
    if n == 0:
        return array
    n_nan = int(np.count_nonzero(np.isnan(array)))
    kinds = ", ".join(
        f"{count} {name}" for count, name in ((n_nan, "NaN"), (n - n_nan, "infinite")) if count
    )
    fraction = n / array.size
    slices = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
    where = (
        f"slice {slices[0]}" if len(slices) == 1 else f"{len(slices)} slices between {slices[0]} and {slices[-1]}"
    )
    if fraction > NONFINITE_MAX_FRACTION:
        raise VolumeReadError(
            f"{path}: {100 * fraction:.3g} % of the voxels are not finite ({kinds} of "
            f"{array.size}, in {where} of {array.shape[0]}); a CT holds finite HU: refused"
        )
    warnings.warn(
        f"{path}: {n} voxel(s) ({100 * fraction:.2g} %) are not finite ({kinds}, in {where}); "
        f"read as {FILL_HU:.0f} HU (air)",
        VolumeReadWarning,
        stacklevel=3,
    )
    out = array.copy()
    out[bad] = FILL_HU
    return out


_NIFTI_FLOATS = {16: "f4", 64: "f8"}
"""NIfTI datatype codes of float voxels -> numpy type (without byte order)."""


def _nifti_nonfinite_as_nan(path: Path, array: np.ndarray) -> np.ndarray:
    """``array`` (as ITK read it) with NaN where the NIfTI file's float voxels are NaN or
    infinite: ITK's reader turns NaN into 0, which would hide them."""
    import gzip
    import struct

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            if len(head) < 348:
                return array
            for order in "<>":
                size = struct.unpack(order + "i", head[:4])[0]
                if size in (348, 540):
                    break
            else:
                return array
            if size == 348:
                datatype = struct.unpack(order + "h", head[70:72])[0]
                dims = struct.unpack(order + "8h", head[40:56])
                offset = int(struct.unpack(order + "f", head[108:112])[0])
            else:
                datatype = struct.unpack(order + "h", head[12:14])[0]
                dims = struct.unpack(order + "8q", head[16:80])
                offset = int(struct.unpack(order + "q", head[168:176])[0])
            if datatype not in _NIFTI_FLOATS:
                return array
            dtype = np.dtype(order + _NIFTI_FLOATS[datatype])
            n = int(np.prod([max(int(d), 1) for d in dims[1 : int(dims[0]) + 1]]))
            if n != array.size:
                return array
            fh.seek(offset)
            data = np.frombuffer(fh.read(n * dtype.itemsize), dtype=dtype)
    except (OSError, EOFError, struct.error, ValueError):
        return array
    if data.size != n:
        return array
    bad = ~np.isfinite(data)
    if not bad.any():
        return array
    out = np.array(array, dtype=np.float32 if array.dtype.itemsize <= 4 else np.float64)
    out.reshape(-1)[bad] = data[bad]
    return out


def _hu_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer in int16's range, else float32."""
    if array.dtype == np.int16 or array.size == 0:
        return array
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.min() >= lo and array.max() <= hi:
            return array.astype(np.int16)
        return array.astype(np.float32)
    if np.isfinite(array).all() and array.min() >= lo and array.max() <= hi:
        rounded = np.rint(array)
        if np.array_equal(rounded, array):
            return np.asarray(rounded, dtype=np.int16)
    return array.astype(np.float32)


def _path_of(header: Dataset) -> Path:
    return Path(str(header.filename))


_HEADER_TAGS: list[str] = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "SliceThickness",
    "ConvolutionKernel",
    "Manufacturer",
    "PixelData",  # deferred: only its length and offset are read
]
"""The only tags read from DICOM headers (speed, and nothing identifying is loaded)."""


def _read_header(path: Path) -> Dataset:
    """Header with pixel data deferred; checks the pixel data is all there."""
    try:
        ds = pydicom.dcmread(path, defer_size=4096, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise VolumeReadError(f"{path}: corrupt or unreadable DICOM file: {exc}") from exc
    ds.filename = str(path)
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    if elem is None:
        return ds  # not an image; the caller decides
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return ds  # encapsulated; SimpleITK reports damage when decoding
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise VolumeReadError(f"{path}: corrupt image header: {exc}") from exc
    expected = rows * cols * samples * frames * bits // 8
    value = getattr(elem, "value", None)
    if value is not None:
        present = len(value)
    else:
        length, tell = getattr(elem, "length", 0), getattr(elem, "value_tell", 0)
        present = min(int(length), path.stat().st_size - int(tell))
    if present < expected:
        raise VolumeReadError(
            f"{path}: truncated or corrupt DICOM file: pixel data has {present} of {expected} bytes"
        )
    return ds


def _check_unlisted_files(folder: Path, files: Sequence[Path]) -> None:
    """Files GDCM did not put in a series: corrupt DICOM -> error, others skipped.

    A file counts as DICOM when it has a DICOM suffix or the ``DICM`` magic; it is
    skipped (e.g. a DICOMDIR) only when pydicom parses it cleanly and finds a SOP
    class without image data.
    """
    for path in files:
        if not looks_like_dicom(path):
            logger.debug("%s: not DICOM, skipped", path)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                ds = _read_header(path)
                meta = getattr(ds, "file_meta", None)
                sop_class = ds.get("SOPClassUID") or (meta and meta.get("MediaStorageSOPClassUID"))
            except UserWarning as exc:
                raise VolumeReadError(f"{path}: corrupt DICOM file: {exc}") from exc
        if not sop_class:
            raise VolumeReadError(f"{path}: corrupt DICOM file: no SOP class")
        if "PixelData" in ds:
            raise VolumeReadError(
                f"{path}: DICOM image that GDCM could not place in a series "
                "(missing SeriesInstanceUID or a damaged header)"
            )
        logger.debug("%s: DICOM without an image (%s), skipped", path, sop_class)


def _choose_series(
    folder: Path, series: dict[str, list[Path]], wanted: str | None, allow_non_ct: bool
) -> str:
    if wanted is not None:
        wanted = wanted.strip()
        if wanted not in series:
            raise VolumeReadError(
                f"{folder}: series {wanted} not found; the folder holds "
                f"{', '.join(f'{u} ({len(f)} files)' for u, f in series.items())}"
            )
        return wanted
    if len(series) == 1:
        return next(iter(series))
    modality = {
        uid: str(_read_header(files[0]).get("Modality", "")) for uid, files in series.items()
    }
    pool = [u for u in series if modality[u] == "CT"] or (list(series) if allow_non_ct else [])
    if not pool:
        found = ", ".join(f"{u} ({modality[u] or '?'})" for u in series)
        raise VolumeReadError(
            f"{folder}: no CT series among {found} (pass allow_non_ct=True to read one anyway)"
        )
    chosen = max(sorted(pool), key=lambda u: len(series[u]))
    logger.info(
        "%s: %d series, chose %s (modality %s, %d files: the most among %s series); "
        "pass series_uid= to choose another",
        folder,
        len(series),
        chosen,
        modality[chosen] or "?",
        len(series[chosen]),
        "CT" if modality[chosen] == "CT" else "all",
    )
    return chosen


def _slice_key(ds: Dataset) -> tuple[object, ...]:
    iop = ds.get("ImageOrientationPatient")
    orientation = tuple(np.round(np.asarray(iop, dtype=float), 3)) if iop else None
    return orientation, ds.get("Rows"), ds.get("Columns")


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType") or []
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values]


def _drop_foreign_slices(folder: Path, uid: str, headers: list[Dataset]) -> list[Dataset]:
    """Drop localizers and slices whose orientation or size differs from the majority."""
    localizer = ["LOCALIZER" in _image_type(ds) for ds in headers]
    keys = [_slice_key(ds) for ds, loc in zip(headers, localizer, strict=True) if not loc]
    if not keys:
        raise VolumeReadError(f"{folder}: series {uid} holds only localizer images")
    majority = Counter(keys).most_common(1)[0][0]
    keep, n_loc, n_other = [], 0, 0
    for ds, loc in zip(headers, localizer, strict=True):
        if loc:
            n_loc += 1
        elif _slice_key(ds) != majority:
            n_other += 1
        else:
            keep.append(ds)
    if n_loc or n_other:
        warnings.warn(
            f"{folder}: series {uid}: dropped {n_loc} localizer image(s) and {n_other} "
            f"image(s) with another orientation or size; kept {len(keep)} slices",
            VolumeReadWarning,
            stacklevel=3,
        )
    return keep


def _stack_geometry(
    folder: Path, headers: list[Dataset]
) -> tuple[list[Dataset], tuple[float, ...], tuple[float, ...], float]:
    """Order slices along the normal and check their stacking.

    Returns:
        (sorted headers, origin xyz, direction 9-tuple, mean z spacing).
    """
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in headers):
        raise VolumeReadError(f"{folder}: multi-frame DICOM images are not supported")
    if int(headers[0].get("SamplesPerPixel", 1)) != 1:
        raise VolumeReadError(f"{folder}: colour DICOM images, expected grey-value CT")
    if len(headers) < 2:
        raise VolumeReadError(
            f"{folder}: a single slice ({_path_of(headers[0]).name}): a 2D image, not a volume"
        )
    try:
        iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
        positions = np.array([ds.ImagePositionPatient for ds in headers], dtype=float)
        pixel = {tuple(float(v) for v in ds.PixelSpacing) for ds in headers}
    except (AttributeError, TypeError, ValueError) as exc:
        raise VolumeReadError(f"{folder}: slices lack usable geometry tags: {exc}") from exc
    if len(pixel) > 1:
        raise VolumeReadError(f"{folder}: slices have different PixelSpacing: {sorted(pixel)}")
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row, col)
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    headers = [headers[i] for i in order]
    positions, proj = positions[order], proj[order]

    offsets = (positions - positions[0]) - np.outer(proj - proj[0], normal)
    drift = float(np.linalg.norm(offsets, axis=1).max())
    if drift > 0.05 * min(next(iter(pixel))):
        raise VolumeReadError(
            f"{folder}: slice positions drift {drift:.3f} mm across the slice plane "
            "(gantry tilt?); only slices stacked along their normal are supported"
        )
    d = np.diff(proj)
    if d.min() <= 1e-4:
        raise VolumeReadError(
            f"{folder}: {int((d <= 1e-4).sum())} slice(s) share a position with another "
            "(duplicate slices or several acquisitions in one series)"
        )
    median = float(np.median(d))
    gaps = np.flatnonzero(d >= GAP_RATIO * median)
    if gaps.size:
        i = int(gaps[0])
        raise VolumeReadError(
            f"{folder}: {gaps.size} gap(s) in the series, e.g. {d[i]:.3f} mm between "
            f"{_path_of(headers[i]).name} and {_path_of(headers[i + 1]).name} where slices "
            f"are {median:.3f} mm apart: missing slice(s); stacking them would distort "
            "the geometry"
        )
    deviation = float(np.abs(d - median).max()) / median
    if deviation > SPACING_RTOL_WARN:
        raise VolumeReadError(
            f"{folder}: non-uniform slice spacing, {d.min():.3f} to {d.max():.3f} mm "
            f"({100 * deviation:.1f} % off the median {median:.3f} mm)"
        )
    spacing_z = float(proj[-1] - proj[0]) / (len(headers) - 1)
    if deviation > SPACING_RTOL_SILENT:
        warnings.warn(
            f"{folder}: slice spacing varies from {d.min():.4f} to {d.max():.4f} mm "
            f"({100 * deviation:.2f} % off the median); using the mean {spacing_z:.4f} mm",
            VolumeReadWarning,
            stacklevel=3,
        )
    direction = np.stack([row, col, normal], axis=1)  # columns: axis directions
    origin = tuple(float(v) for v in positions[0])
    return headers, origin, tuple(float(v) for v in direction.ravel()), spacing_z


def _optional_str(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip() or None


def _series_info(uid: str, ds: Dataset) -> SeriesInfo:
    thickness = ds.get("SliceThickness")
    try:
        slice_thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        slice_thickness = None
    return SeriesInfo(
        series_uid=str(ds.get("SeriesInstanceUID") or uid),
        modality=str(ds.get("Modality") or "CT"),
        slice_thickness=slice_thickness,
        kernel=_optional_str(ds, "ConvolutionKernel"),
        manufacturer=_optional_str(ds, "Manufacturer"),
    )


# --------------------------------------------------------------------------- writing


def write_volume(volume: Volume, path: PathLike) -> Path:
    """Write a volume to ``.mhd`` (+ compressed ``.zraw``), ``.mha``, ``.nii`` or ``.nii.gz``.

    The geometry and the array are stored; ``.mhd/.mha`` also keep the other
    :class:`SeriesInfo` fields as ``nodule_*`` header keys. Reading the file back gives
    the file name without extension as the id (name the file ``<series_uid>.mhd``).

    Args:
        volume: the volume to write (bool arrays are written as uint8).
        path: the output file; missing parent folders are created.

    Returns:
        The written path.
    """
    p = Path(path)
    if not _volume_suffix(p):
        raise ValueError(f"{p}: unsupported suffix, expected one of {', '.join(VOLUME_SUFFIXES)}")
    p.parent.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    if _volume_suffix(p) in (".mhd", ".mha"):
        for key, value in _info_keys(volume.info).items():
            image.SetMetaData(key, value)
    sitk.WriteImage(image, str(p), useCompression=True)
    return p


def _info_keys(info: SeriesInfo) -> dict[str, str]:
    """SeriesInfo fields (but the id) as MetaImage header keys; single-line values only."""
    values = {
        "modality": info.modality,
        "slice_thickness": None if info.slice_thickness is None else repr(info.slice_thickness),
        "kernel": info.kernel,
        "manufacturer": info.manufacturer,
    }
    return {
        f"nodule_{k}": " ".join(v.split()) for k, v in values.items() if v is not None and v.strip()
    }


def _info_from_keys(image: sitk.Image, series_uid: str) -> SeriesInfo:
    keys = set(image.GetMetaDataKeys())

    def get(name: str) -> str | None:
        key = f"nodule_{name}"
        if key not in keys:
            return None
        return str(image.GetMetaData(key)).strip() or None

    thickness = get("slice_thickness")
    try:
        slice_thickness = float(thickness) if thickness else None
    except ValueError:
        slice_thickness = None
    return SeriesInfo(
        series_uid=series_uid,
        modality=get("modality") or "CT",
        slice_thickness=slice_thickness,
        kernel=get("kernel"),
        manufacturer=get("manufacturer"),
    )


def write_dicom_series(
    volume: Volume,
    folder: PathLike,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    series_description: str = "nodule synthetic",
    overwrite: bool = False,
) -> list[Path]:
    """Write a volume as a CT Image Storage DICOM series, one file per slice.

    Modality is always CT. The files hold no patient data (PatientName "ANONYMOUS", PatientID "SYNTHETIC",
    no dates). UIDs are generated deterministically from the volume (its id, geometry
    and voxel values), so the same volume gives the same bytes. Integer HU in
    [-1024, 64511] are stored exactly as uint16 with RescaleIntercept -1024 (as
    scanners do), other int16 values as int16; non-integer values are quantised
    linearly to uint16 (error below half the RescaleSlope). A volume whose third
    axis points against row x column (left-handed direction) is written with its
    slices reversed, which reads back as the same voxels in world space.

    Args:
        volume: the volume; its direction must be orthonormal (any orientation).
        folder: output folder, created; it must hold no files unless ``overwrite``.
        series_uid: SeriesInstanceUID; default ``volume.info.series_uid`` when that is
            a valid UID, else a generated one.
        study_uid: StudyInstanceUID; default generated from the series UID.
        series_description: SeriesDescription.
        overwrite: remove the ``.dcm`` files already in ``folder`` first.

    Returns:
        The written files, in slice order.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.iterdir() if p.is_file()]
    if existing:
        if not overwrite:
            raise FileExistsError(f"{out}: folder is not empty ({len(existing)} files)")
        for p in existing:
            if p.suffix.lower() == ".dcm":
                p.unlink()
    array, origin, axes = _right_handed(volume)
    nz, ny, nx = array.shape
    sx, sy, sz = (float(v) for v in volume.spacing)
    stored, pixel_repr, slope, intercept = _dicom_encoding(array)

    series = (
        series_uid or _uid_or_none(volume.info.series_uid) or _uid(_content_key(volume), "series")
    )
    study = study_uid or _uid(series, "study")
    frame = _uid(series, "frame")
    normal = axes[:, 2]
    paths = []
    for k in range(nz):
        position = origin + k * sz * axes[:, 2]
        sop = _uid(series, "instance", str(k))
        ds = _ct_slice_dataset(volume.info, series_description)
        ds.file_meta = _file_meta(sop)
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*axes[:, 0], *axes[:, 1])]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SpacingBetweenSlices = _ds(sz)
        if volume.info.slice_thickness is None:
            ds.SliceThickness = _ds(sz)
        ds.Rows, ds.Columns = ny, nx
        ds.PixelRepresentation = pixel_repr
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.add_new(0x7FE00010, "OW", stored[k].tobytes())
        path = out / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def _uid_or_none(value: str) -> str | None:
    return value if len(value) <= 64 and _UID_RE.match(value) else None


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["\x1f".join(parts)]))


def _content_key(volume: Volume) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((volume.info.series_uid, volume.shape, volume.spacing)).encode())
    h.update(repr((volume.origin, volume.direction, str(volume.array.dtype))).encode())
    h.update(np.ascontiguousarray(volume.array).tobytes())
    return h.hexdigest()


def _ds(value: float) -> str:
    return str(format_number_as_ds(float(value) + 0.0))  # + 0.0 turns -0.0 into 0.0


def _right_handed(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(array, origin, axes as columns) with axes[:, 2] = row x column."""
    axes = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-4):
        raise ValueError(f"direction {volume.direction} is not orthonormal")
    origin = np.asarray(volume.origin, dtype=float)
    array = volume.array
    if float(np.cross(axes[:, 0], axes[:, 1]) @ axes[:, 2]) < 0:
        origin = origin + (array.shape[0] - 1) * volume.spacing[2] * axes[:, 2]
        axes = axes.copy()
        axes[:, 2] *= -1
        array = array[::-1]
    return array, origin, axes


def _dicom_encoding(array: np.ndarray) -> tuple[np.ndarray, int, str, str]:
    """(stored little-endian pixels, PixelRepresentation, RescaleSlope, RescaleIntercept)."""
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    integral = bool(np.issubdtype(array.dtype, np.integer))
    if not integral:
        if not np.isfinite(array).all():
            raise ValueError("cannot write non-finite values to DICOM")
        integral = bool(np.array_equal(np.rint(array), array))
    lo, hi = float(array.min()), float(array.max())
    if integral and lo >= -1024 and hi <= 65535 - 1024:
        return (array.astype(np.int32) + 1024).astype("<u2"), 0, "1", "-1024"
    if integral and lo >= -32768 and hi <= 32767:
        return array.astype("<i2"), 1, "1", "0"
    slope = _ds((hi - lo) / 65535.0) if hi > lo else "1"
    intercept = _ds(lo)
    q = np.rint((array.astype(np.float64) - float(intercept)) / float(slope))
    return np.clip(q, 0, 65535).astype("<u2"), 0, slope, intercept


def _ct_slice_dataset(info: SeriesInfo, description: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = info.manufacturer or ""
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = description
    ds.PatientName = "ANONYMOUS"
    ds.PatientID = "SYNTHETIC"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    if info.slice_thickness is not None:
        ds.SliceThickness = _ds(info.slice_thickness)
    ds.KVP = ""
    if info.kernel:
        ds.ConvolutionKernel = info.kernel.split("\\")
    ds.PatientPosition = "HFS"
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleType = "HU"
    return ds


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


# --------------------------------------------------------------------------- resampling


def resample(volume: Volume, spacing_xyz: Sequence[float], *, is_mask: bool = False) -> Volume:
    """Resample a volume to a new voxel size, keeping its physical extent.

    The output grid shares the input's first corner (the outer edge of voxel 0) and
    direction; its size is ``round(size * spacing / new_spacing)`` per axis, so its
    extent matches the input's within half an output voxel and every output voxel
    centre lies inside the input (no fill slabs at the far edge).

    Args:
        volume: the input (CT in HU, or a mask).
        spacing_xyz: the new voxel size in mm, (x, y, z).
        is_mask: nearest-neighbour interpolation with fill 0 (labels stay labels);
            otherwise linear interpolation with fill -1024 HU.

    Returns:
        The resampled volume, same dtype as the input (integers rounded), same info.
    """
    new = np.asarray(spacing_xyz, dtype=float)
    if new.shape != (3,) or not (new > 0).all():
        raise ValueError(f"spacing_xyz must be 3 positive numbers, got {spacing_xyz}")
    old = np.asarray(volume.spacing, dtype=float)
    size = np.maximum(1, np.rint(np.asarray(volume.shape[::-1]) * old / new)).astype(int)
    a, b = volume.index_to_world_matrix()
    corner = a @ np.full(3, -0.5) + b
    axes = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    origin = corner + axes @ (new / 2)
    return _resample_onto(
        volume,
        size=tuple(int(v) for v in size),
        spacing=tuple(float(v) for v in new),
        origin=tuple(float(v) for v in origin),
        direction=volume.direction,
        is_mask=is_mask,
    )


def resample_like(volume: Volume, reference: Volume, *, is_mask: bool = False) -> Volume:
    """Resample a volume onto another volume's grid (size, spacing, origin, direction).

    Args:
        volume: the input (CT in HU, or a mask).
        reference: the volume whose grid the output takes.
        is_mask: nearest-neighbour with fill 0, else linear with fill -1024 HU.

    Returns:
        A volume with ``reference``'s geometry and ``volume``'s dtype and info.
    """
    return _resample_onto(
        volume,
        size=reference.shape[::-1],
        spacing=reference.spacing,
        origin=reference.origin,
        direction=reference.direction,
        is_mask=is_mask,
    )


def _resample_onto(
    volume: Volume,
    *,
    size: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    is_mask: bool,
) -> Volume:
    image = volume.to_sitk()
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in size])
    f.SetOutputSpacing([float(v) for v in spacing])
    f.SetOutputOrigin([float(v) for v in origin])
    f.SetOutputDirection([float(v) for v in direction])
    if is_mask:
        f.SetInterpolator(sitk.sitkNearestNeighbor)
        f.SetDefaultPixelValue(0)
        f.SetOutputPixelType(image.GetPixelID())
    else:
        f.SetInterpolator(sitk.sitkLinear)
        f.SetDefaultPixelValue(FILL_HU)
        f.SetOutputPixelType(sitk.sitkFloat32)
    out = f.Execute(image)
    # a view of the image's buffer, copied once by the conversion (or by np.array) below
    view = sitk.GetArrayViewFromImage(out)
    dtype = volume.array.dtype
    if dtype == np.bool_:
        array = view.astype(bool)
    elif np.issubdtype(dtype, np.integer) and view.dtype != dtype:
        info = np.iinfo(dtype)
        array = np.rint(view)
        np.clip(array, info.min, info.max, out=array)
        array = array.astype(dtype)
    elif view.dtype != dtype:
        array = view.astype(dtype)
    else:
        array = np.array(view)
    return Volume(
        array=array,
        spacing=tuple(float(v) for v in out.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in out.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in out.GetDirection()),
        info=volume.info,
    )
