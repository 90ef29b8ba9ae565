"""CT volumes: reading, writing, world <-> voxel geometry and resampling.

Conventions: arrays are (z, y, x); SimpleITK indices, spacing and origin are
(x, y, z); world coordinates are (x, y, z) in mm, LPS, as in LUNA16. World <->
voxel conversion goes through SimpleITK's index/physical-point transforms, so
direction cosines are honoured.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

FILL_HU = -1024.0


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
        array: HU values, (z, y, x), float32 or int16.
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
        """This volume as a SimpleITK image (array copied)."""
        image = sitk.GetImageFromArray(self.array)
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
        return (a @ vox[:, ::-1].T).T + b
