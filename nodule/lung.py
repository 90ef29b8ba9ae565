"""Lung segmentation for chest CT.

:func:`segment_lungs` turns a :class:`~nodule.io.Volume` (HU) into a :class:`LungMask`:
a label array at the volume's own geometry with 0 background, 1 right lung and 2 left
lung (patient right/left; in LPS the patient's right is at low world x, on the left of
a standard radiological display), the lung volumes in ml and the airway tree that was
found and cut off.

How it works (all morphology runs on a coarse copy of about 2 mm voxels, so that a
512 x 512 x 300 scan takes about a second of CPU):

1. Orientation: the array is viewed in LPS order (axis 0 to superior, 1 to posterior,
   2 to patient left) by axis permutations and flips read off the direction cosines;
   the result is mapped back the same way.
2. Coarse copy: block means with integer factors chosen so that each coarse voxel is
   about ``work_spacing_mm`` wide (4 x 4 x 1 for 0.56 x 0.56 x 3 mm). Block means also
   damp the noise of sharp kernels (B70f and the like).
3. Body: the largest 3D component above ``body_hu``, holes filled slice by slice (no
   opening: it would break a thin chest wall and let the lungs out).
4. Air inside the body: coarse voxels below ``air_hu`` inside the filled body. Air
   outside the body never gets there, nor does air inside a detached table.
5. Trachea and bronchi: seeds are small, roughly round air regions near the
   left-right middle of the body in the upper half of the scan. From the darkest voxel
   of each, the airway is grown in 3D with thresholds rising from -1000 HU to
   ``airway_hu`` (much tighter than the lung threshold, so that the growth stays in
   the lumen), stopping before the volume explodes or passes ``max_airway_ml`` (a leak
   into emphysematous lung); the largest tube of 30 mm or more wins. The airway,
   dilated by one coarse voxel, is removed from the air, which disconnects the lungs
   from the trachea and from each other. Once the lungs are labelled (step 6), the
   airway not enclosed by lung in its slice (trachea and main bronchi) stays out and
   the rest (bronchi inside the lungs, and lung that a leaking growth took) goes back
   to the lung it meets.
6. Lungs: 3D components of the remaining air; components that are mostly pure gas
   (over 60 % of their coarse voxels below -975 HU: bowel, stomach) are not lung. If
   the largest component lies on both sides of the body's midline the lungs touch
   (anterior or posterior junction line): it is eroded voxel by voxel (up to 10 times)
   until it falls apart into cores on both sides, which grow back by a watershed of
   the erosion depth, so that the lungs part where the air is narrowest (if erosion
   cannot part them, the midline does). Otherwise the largest component on the other
   side is the second lung; failing that a component with more than 5 % across the
   midline is tried for two unequal lungs that touch. The lung on the low world
   x side (LPS) is the right lung.
7. Filling: each lung separately gets a morphological closing with a ball of
   ``closing_radius_mm`` (exact Euclidean, by two distance transforms), then its holes
   are filled in every axial slice. The closing takes in every indentation of the lung
   surface that a ball of that radius cannot enter: nodules attached to the costal,
   diaphragmatic or mediastinal pleura up to about 1.5 x the radius across (about
   20-25 mm with the default 15 mm) and the vessels and bronchi at the hila; the hole
   filling takes in all vessels, nodules and airways surrounded by lung in a slice.
   Limits: a juxtapleural mass much wider than the ball (over about 30 mm) is only
   partly inside the mask, since its inner surface becomes the lung surface (the
   candidate stage's large-solid detector looks for those outside the mask too);
   consolidation or effusion above ``air_hu`` that reaches the pleura is likewise
   outside; the tip of a mediastinal structure that lung surrounds in one slice (the
   top of the heart, say) is inside. The two lungs are closed separately, so the
   mediastinum is never bridged.
8. The airway outside the lungs, dilated by one coarse voxel, is cleared from the mask
   once more (the closing may have reached it). The mask is copied back to full
   resolution by nearest neighbour, so its surface is accurate to about half a coarse
   voxel (about 1 mm), in steps of one coarse voxel.

Lungs cut by the field of view (air that touches the image border in a slice) are lost
in those slices, since such air counts as outside the body.

When no lung can be found (a head or abdomen-only scan, a phantom of water, lungs
below ``min_total_ml`` in all, only pure gas, or air on one side only)
:class:`NoLungFoundError` names the study and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nodule.io import Volume

RIGHT_LUNG = 1
LEFT_LUNG = 2

# 2D (in-plane) 8-connectivity for 3D arrays (z, y, x): nothing links slices.
_PLANAR = np.zeros((3, 3, 3), dtype=bool)
_PLANAR[1] = True


class NoLungFoundError(ValueError):
    """No lungs in a volume (head or abdomen scan, phantom without lungs, ...).

    The message names the study (its series UID) and what was missing.
    """


@dataclass(frozen=True)
class LungMask:
    """Lung labels of one study, at the volume's geometry.

    Attributes:
        labels: uint8 (z, y, x): 0 background, 1 right lung, 2 left lung.
        airway: bool (z, y, x): the airway tree that the segmentation grew from the
            trachea (trachea, main bronchi and the larger bronchi it reached); the part
            of it outside the lungs is never in ``labels``, the part inside is.
        spacing: voxel size in mm, (x, y, z) as in SimpleITK.
        series_uid: the study's id.
        right_ml: volume of the right lung in ml.
        left_ml: volume of the left lung in ml.
    """

    labels: np.ndarray
    airway: np.ndarray
    spacing: tuple[float, float, float]
    series_uid: str
    right_ml: float
    left_ml: float

    @property
    def lungs(self) -> np.ndarray:
        """Both lungs as one boolean array (z, y, x)."""
        return np.asarray(self.labels > 0)

    @property
    def right(self) -> np.ndarray:
        """The right lung (patient right, low world x in LPS) as a boolean array."""
        return np.asarray(self.labels == RIGHT_LUNG)

    @property
    def left(self) -> np.ndarray:
        """The left lung as a boolean array."""
        return np.asarray(self.labels == LEFT_LUNG)

    @property
    def total_ml(self) -> float:
        """Volume of both lungs in ml."""
        return self.right_ml + self.left_ml


@dataclass(frozen=True)
class _Orientation:
    """Axis permutation and flips from a volume's array to LPS order (z sup, y post, x left)."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def to_lps(self, array: np.ndarray) -> np.ndarray:
        out = array.transpose(self.perm)
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return out[slices]

    def from_lps(self, array: np.ndarray) -> np.ndarray:
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        out = array[slices]
        return np.ascontiguousarray(out.transpose(np.argsort(self.perm)))


def _orientation(volume: Volume) -> _Orientation:
    d = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    # column i of d is the world direction of SimpleITK index axis i (array axis 2 - i)
    world_axis = np.argmax(np.abs(d), axis=0)
    if sorted(world_axis.tolist()) != [0, 1, 2]:
        raise ValueError(
            f"{volume.series_uid}: direction cosines {volume.direction} are too oblique "
            "to map the volume onto axial (x, y, z) axes"
        )
    perm: list[int] = []
    flip: list[bool] = []
    for world in (2, 1, 0):  # LPS array order: z, y, x
        index_axis = int(np.flatnonzero(world_axis == world)[0])
        perm.append(2 - index_axis)
        flip.append(bool(d[world, index_axis] < 0))
    return _Orientation((perm[0], perm[1], perm[2]), (flip[0], flip[1], flip[2]))


def _factors(spacing_zyx: tuple[float, float, float], target: float) -> tuple[int, int, int]:
    f = [max(1, round(target / s)) for s in spacing_zyx]
    return f[0], f[1], f[2]


def _downsample(array: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Block means as float32; the shape is the floor of the array's shape / factors.

    Strided sums, a few slices at a time so that the work stays in the cache (about
    0.1 s for 300 x 512 x 512).
    """
    fz, fy, fx = factors
    nz, ny, nx = (array.shape[i] // factors[i] for i in range(3))
    out = np.empty((nz, ny, nx), dtype=np.float32)
    chunk = 2
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        block = array[z0 * fz : z1 * fz, : ny * fy, : nx * fx]
        sz = block[0::fz].astype(np.float32)
        for k in range(1, fz):
            sz += block[k::fz]
        sy = sz[:, 0::fy].copy()
        for k in range(1, fy):
            sy += sz[:, k::fy]
        sx = sy[:, :, 0::fx].copy()
        for k in range(1, fx):
            sx += sy[:, :, k::fx]
        out[z0:z1] = sx
    out *= np.float32(1.0 / (fz * fy * fx))
    return out


def _fine_counts(
    shape: tuple[int, ...], factors: tuple[int, int, int], coarse_shape: tuple[int, ...]
) -> np.ndarray:
    """How many full-resolution voxels each coarse voxel stands for after :func:`_upsample`."""
    weights = []
    for n, f, c in zip(shape, factors, coarse_shape, strict=True):
        w = np.full(c, f, dtype=np.float64)
        w[-1] += n - f * c
        weights.append(w)
    return weights[0][:, None, None] * weights[1][None, :, None] * weights[2][None, None, :]


def _upsample(
    array: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """Nearest-neighbour copy back to ``shape``; a remainder past the last block copies it."""
    out = array
    for axis in (2, 1, 0):
        out = np.repeat(out, factors[axis], axis=axis)
    pad = [(0, max(0, shape[i] - out.shape[i])) for i in range(3)]
    if any(p[1] for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out[: shape[0], : shape[1], : shape[2]]


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (axis 0) in one vectorised labelling."""
    background, _ = ndi.label(~mask, structure=_PLANAR)
    border = np.zeros(int(background.max()) + 1, dtype=bool)
    for edge in (
        background[:, 0, :],
        background[:, -1, :],
        background[:, :, 0],
        background[:, :, -1],
    ):
        border[edge] = True
    border[0] = True  # label 0 is the mask itself
    return np.asarray(mask | ~border[background])


def _largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    labels, n = ndi.label(mask, structure=structure)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def _body_mask(coarse: np.ndarray, body_hu: float) -> np.ndarray:
    return _fill_holes_2d(_largest_component(coarse > body_hu))


def _airway_seeds(
    coarse: np.ndarray, air: np.ndarray, body: np.ndarray, spacing: tuple[float, float, float]
) -> list[tuple[int, int, int]]:
    """Seeds of the trachea: the darkest voxel of every small, roughly round air region
    near the left-right middle of the body, in the upper half of the scan, top first."""
    voxel_mm2 = spacing[1] * spacing[2]
    body_count = body.sum(axis=(1, 2))
    xs = np.arange(body.shape[2])
    body_x = np.any(body, axis=1)  # (z, x)
    body_cx = (body.sum(axis=1) * xs).sum(axis=1) / np.maximum(body_count, 1)
    first = np.where(body_x.any(axis=1), body_x.argmax(axis=1), 0)
    last = np.where(body_x.any(axis=1), body.shape[2] - 1 - body_x[:, ::-1].argmax(axis=1), 0)
    width = (last - first + 1).astype(np.float64)

    top = air.shape[0] // 2
    labels, n = ndi.label(air[top:], structure=_PLANAR)
    if n == 0:
        return []
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n + 1).astype(np.float64)
    area = count * voxel_mm2
    x_sum = np.bincount(flat, weights=np.broadcast_to(xs, labels.shape).ravel(), minlength=n + 1)
    xc = x_sum / np.maximum(count, 1.0)
    seeds: list[tuple[int, int, int]] = []
    for label, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or not 40.0 <= area[label] <= 1000.0:
            continue
        z = top + sl[0].start
        box = (sl[1].stop - sl[1].start) * spacing[1], (sl[2].stop - sl[2].start) * spacing[2]
        if max(box) > 4.0 * min(box) or area[label] < 0.3 * box[0] * box[1]:
            continue
        if abs(xc[label] - body_cx[z]) > 0.12 * width[z]:
            continue
        values = np.where(labels[z - top] == label, coarse[z], np.inf)
        iy, ix = np.unravel_index(int(np.argmin(values)), values.shape)
        seeds.append((z, int(iy), int(ix)))
    seeds.sort(reverse=True)
    return seeds


_AIRWAY_LADDER = (-1000.0, -990.0, -975.0, -960.0, -950.0, -940.0, -925.0, -910.0, -900.0)


def _find_airway(
    coarse: np.ndarray,
    air: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    airway_hu: float,
    max_airway_ml: float,
) -> np.ndarray:
    """The trachea and the bronchi reachable from it, or an empty mask.

    Every seed's region below ``airway_hu`` that is a tube of at least 30 mm is grown
    again with thresholds rising from -1000 HU to ``airway_hu``; the growth stops before
    the volume more than doubles by more than 50 ml in one step or passes
    ``max_airway_ml``, which is how a leak into the lungs shows. The largest airway wins (larger than the
    air in the oesophagus).
    """
    none = np.zeros_like(air)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    loose, _ = ndi.label((coarse < airway_hu) & body)
    objects = ndi.find_objects(loose)
    best: np.ndarray | None = None
    best_ml = 0.0
    for seed in _airway_seeds(coarse, air, body, spacing):
        component = int(loose[seed])
        if component == 0 or (best is not None and best[seed]):
            continue
        box = objects[component - 1]
        if (box[0].stop - box[0].start) * spacing[0] < 30.0:
            continue
        local = tuple(p - b.start for p, b in zip(seed, box, strict=True))
        region = _grow_airway(coarse[box], body[box], local, airway_hu, max_airway_ml, voxel_ml)
        if region is None:
            continue
        zs = np.flatnonzero(region.any(axis=(1, 2)))
        volume_ml = float(region.sum()) * voxel_ml
        if (zs[-1] - zs[0] + 1) * spacing[0] >= 30.0 and volume_ml > best_ml:
            best = np.zeros_like(air)
            best[box] = region
            best_ml = volume_ml
    return none if best is None else best


def _grow_airway(
    coarse: np.ndarray,
    body: np.ndarray,
    seed: tuple[int, ...],
    airway_hu: float,
    max_airway_ml: float,
    voxel_ml: float,
) -> np.ndarray | None:
    """3D growth from a seed with rising thresholds; the last one before a leak."""
    region: np.ndarray | None = None
    region_ml = 0.0
    for threshold in (*(t for t in _AIRWAY_LADDER if t < airway_hu), airway_hu):
        if coarse[seed] >= threshold:
            continue
        labels, _ = ndi.label((coarse < threshold) & body)
        grown = np.asarray(labels == labels[seed])
        grown_ml = float(grown.sum()) * voxel_ml
        if grown_ml > max_airway_ml or (grown_ml > 2.0 * region_ml and grown_ml - region_ml > 50.0):
            break
        region, region_ml = grown, grown_ml
    return region


def _sides(labels: np.ndarray, n: int, midline: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-label voxel counts and the fraction of each label's voxels at x < midline."""
    x = np.broadcast_to(np.arange(labels.shape[2]) < midline, labels.shape)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    low = np.bincount(labels[x], minlength=n + 1).astype(np.float64)
    return sizes, low / np.maximum(sizes, 1.0)


def _split_touching(
    component: np.ndarray, midline: float, min_part: float, max_steps: int = 10
) -> np.ndarray | None:
    """Split one air component holding both lungs: 1 on the x < midline side, 2 on the other.

    The component is eroded one voxel at a time until it falls apart into cores on both
    sides of the midline. The cores then grow back by a watershed of the erosion depth,
    deepest first, so that the two lungs meet at the narrowest place, where they touch;
    the split holds when each side gets at least ``min_part`` voxels (else erosion goes
    on, three tries at most). Returns None when ``max_steps`` erosions do not split it.
    """
    nonzero = np.nonzero(component)
    lo = [max(0, int(a.min()) - 1) for a in nonzero]
    hi = [int(a.max()) + 2 for a in nonzero]
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    layers = [component[box]]
    tries = 0
    for _ in range(max_steps):
        layers.append(ndi.binary_erosion(layers[-1]))
        cores, n = ndi.label(layers[-1])
        if n == 0:
            return None
        if n < 2:
            continue
        sizes, low = _sides(cores, n, midline - lo[2])
        side = np.where(low >= 0.5, 1, 2).astype(np.uint8)
        side[0] = 0
        right = sizes[1:][side[1:] == 1].sum()
        left = sizes[1:][side[1:] == 2].sum()
        if min(right, left) < 0.005 * (right + left):  # crumbs, not a lung
            continue
        depth = np.sum(layers, axis=0, dtype=np.int16)
        markers = watershed(-depth, side[cores], mask=layers[0]).astype(np.uint8)
        parts = np.bincount(markers.ravel(), minlength=3)
        if min(parts[1], parts[2]) >= min_part:
            out = np.zeros(component.shape, dtype=np.uint8)
            out[box] = markers
            return out
        tries += 1
        if tries == 3:
            return None
    return None


def _pick_lungs(
    air: np.ndarray,
    coarse: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    series_uid: str,
    min_total_ml: float,
    min_lung_ml: float,
    require_both: bool,
) -> np.ndarray:
    """Label the two lungs in the air mask: 1 on the low-x side, 2 on the high-x side.

    Air regions that are mostly pure gas (over 60 % of their coarse voxels below
    -975 HU: bowel, stomach, a pneumothorax of its own) are not lung, whose
    parenchyma averages -950 to -700 HU over a coarse voxel even in emphysema.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    labels, n = ndi.label(air)
    if n == 0:
        raise NoLungFoundError(f"{series_uid}: no lung found: no air inside the body")
    body_count = body.sum()
    midline = float((body.sum(axis=(0, 1)) * np.arange(body.shape[2])).sum() / body_count)
    sizes, low = _sides(labels, n, midline)
    sizes[0] = 0
    gas = np.bincount(labels.ravel(), weights=(coarse < -975.0).ravel(), minlength=n + 1)
    is_gas = gas > 0.6 * sizes
    gas_ml = float(sizes[is_gas].sum()) * voxel_ml
    sizes[is_gas] = 0
    order = np.argsort(sizes)[::-1]
    first = int(order[0])
    largest_ml = sizes[first] * voxel_ml
    if largest_ml < min_lung_ml or largest_ml < min_total_ml / 2:
        raise NoLungFoundError(
            f"{series_uid}: no lung found: the largest air region inside the body with lung "
            f"tissue is {largest_ml:.0f} ml (lungs need at least {min_total_ml:.0f} ml in all); "
            f"{gas_ml:.0f} ml of pure gas (bowel, stomach) does not count"
        )
    out = np.zeros(air.shape, dtype=np.uint8)
    minority = min(low[first], 1.0 - low[first])
    side_first = 1 if low[first] >= 0.5 else 2
    other = 0
    if minority <= 0.2:  # one lung: the other is the largest region on the other side
        for candidate in order[1:]:
            if sizes[candidate] * voxel_ml < min_lung_ml:
                break
            if (1 if low[candidate] >= 0.5 else 2) != side_first:
                other = int(candidate)
                break
    if other:
        out[labels == first] = side_first
        out[labels == other] = 3 - side_first
    elif minority > 0.05:  # both lungs in one region, perhaps of unequal size
        split = _split_touching(labels == first, midline, min_lung_ml / voxel_ml)
        if split is None and minority > 0.2:  # contact too broad for erosion: cut at the midline
            split = (labels == first) * np.where(np.arange(air.shape[2]) < midline, 1, 2)
        if split is None:
            out[labels == first] = side_first
        else:
            out = split.astype(np.uint8)
    else:
        out[labels == first] = side_first
    volumes = [float(np.count_nonzero(out == k)) * voxel_ml for k in (1, 2)]
    present = [v >= min_lung_ml for v in volumes]
    if sum(volumes) < min_total_ml:
        raise NoLungFoundError(
            f"{series_uid}: no lung found: the lung-like air inside the body is "
            f"{sum(volumes):.0f} ml, below {min_total_ml:.0f} ml"
        )
    if require_both and not all(present):
        raise NoLungFoundError(
            f"{series_uid}: no lung found: air regions of lung size on one side of the body only "
            f"({volumes[0]:.0f} ml and {volumes[1]:.0f} ml); pass require_both=False for one lung"
        )
    for k, ok in zip((1, 2), present, strict=True):
        if not ok:
            out[out == k] = 0
    return out


def _restore(labels: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Give each component of ``allowed`` that meets exactly one lung to that lung.

    Brings back the bronchi inside the lungs (and any emphysematous lung the airway
    growth took) once the trachea and main bronchi are out of ``allowed``.
    """
    components, n = ndi.label(allowed)
    meets = np.zeros((3, n + 1), dtype=bool)
    for side in (1, 2):
        meets[side, components[labels == side]] = True
    lut = np.where(meets[1] & ~meets[2], 1, np.where(meets[2] & ~meets[1], 2, 0)).astype(np.uint8)
    lut[0] = 0
    out = labels.copy()
    take = (labels == 0) & (lut[components] > 0)
    out[take] = lut[components[take]]
    return out


def _distance_to(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest voxel of ``mask`` (0 inside).

    SimpleITK's Maurer transform: the same values as scipy's ``distance_transform_edt``
    of the complement, in about two thirds of the time, and multithreaded.
    """
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.asarray(np.maximum(sitk.GetArrayFromImage(distance), 0.0))


def _close_and_fill(
    lung: np.ndarray, spacing: tuple[float, float, float], radius: float
) -> np.ndarray:
    """Closing with a Euclidean ball of ``radius`` mm, then 2D hole filling per slice."""
    nonzero = np.nonzero(lung)
    if not nonzero[0].size:
        return lung
    margin = [int(np.ceil(radius / s)) + 2 for s in spacing]
    lo = [max(0, int(a.min()) - m) for a, m in zip(nonzero, margin, strict=True)]
    hi = [min(lung.shape[i], int(nonzero[i].max()) + 1 + margin[i]) for i in range(3)]
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    crop = lung[box]
    if radius > 0:
        dilated = _distance_to(crop, spacing) <= radius
        closed = (_distance_to(~dilated, spacing) > radius) | crop
    else:
        closed = crop
    out = np.zeros_like(lung)
    out[box] = _fill_holes_2d(closed)
    return out


def segment_lungs(
    volume: Volume,
    *,
    work_spacing_mm: float = 2.0,
    body_hu: float = -500.0,
    air_hu: float = -400.0,
    airway_hu: float = -900.0,
    closing_radius_mm: float = 15.0,
    min_total_ml: float = 500.0,
    min_lung_ml: float = 100.0,
    max_airway_ml: float = 150.0,
    require_both: bool = True,
) -> LungMask:
    """Segment the right and left lung of a chest CT (see the module docstring for how).

    Args:
        volume: the CT in HU.
        work_spacing_mm: voxel size of the coarse copy the morphology runs on.
        body_hu: tissue threshold of the body mask.
        air_hu: air threshold of the lungs (block means of the coarse copy).
        airway_hu: the loosest threshold the trachea is grown below (the growth
            starts at -1000 HU and stops before it leaks).
        closing_radius_mm: radius of the ball each lung is closed with; indentations
            narrower than about 1.5 x this (juxtapleural nodules, hilar vessels) end up
            inside the mask.
        min_total_ml: below this total lung volume the study has no lungs.
        min_lung_ml: smallest volume of one lung.
        max_airway_ml: a grown airway larger than this has leaked into the lung.
        require_both: demand a lung on each side; with False one lung is accepted
            (pneumonectomy) and the other label stays empty.

    Returns:
        The lung labels at the volume's geometry with volumes and the airway.

    Raises:
        NoLungFoundError: a volume too small, no body, no air inside it, too little
            air with lung tissue, or air of lung size on one side only; the message
            names the study.
        ValueError: direction cosines too oblique to tell axial slices.
    """
    uid = volume.series_uid
    orientation = _orientation(volume)
    array = orientation.to_lps(volume.array)
    sp = volume.spacing
    spacing_zyx = tuple(float(sp[2 - a]) for a in orientation.perm)
    spacing = (spacing_zyx[0], spacing_zyx[1], spacing_zyx[2])
    factors = _factors(spacing, work_spacing_mm)
    extent_ml = float(np.prod(array.shape)) * float(np.prod(spacing)) / 1000.0
    if extent_ml < min_total_ml or any(
        n < 3 * f for n, f in zip(array.shape, factors, strict=True)
    ):
        raise NoLungFoundError(
            f"{uid}: no lung found: the volume {array.shape} of {extent_ml:.0f} ml is too small"
        )
    coarse = _downsample(array, factors)
    cs = (spacing[0] * factors[0], spacing[1] * factors[1], spacing[2] * factors[2])

    body = _body_mask(coarse, body_hu)
    if body.sum() * float(np.prod(cs)) / 1000.0 < min_total_ml:
        raise NoLungFoundError(f"{uid}: no lung found: no body (tissue above {body_hu:.0f} HU)")
    air = (coarse < air_hu) & body
    airway = _find_airway(coarse, air, body, cs, airway_hu, max_airway_ml)
    airway_wide = ndi.binary_dilation(airway) if airway.any() else airway
    raw = _pick_lungs(
        air & ~airway_wide, coarse, body, cs, uid, min_total_ml, min_lung_ml, require_both
    )
    # the airway outside the lungs (trachea, main bronchi) stays out; the rest goes back
    outside = airway & ~_fill_holes_2d(raw > 0)
    outside_wide = ndi.binary_dilation(outside) if outside.any() else outside
    raw = _restore(raw, air & ~outside_wide)

    lungs = np.zeros_like(raw)
    for side in (1, 2):
        filled = _close_and_fill(raw == side, cs, closing_radius_mm)
        lungs[filled & (lungs == 0)] = side
    lungs[raw > 0] = raw[raw > 0]
    lungs[outside_wide] = 0

    fine_labels = orientation.from_lps(_upsample(lungs, factors, array.shape))
    fine_airway = orientation.from_lps(_upsample(airway, factors, array.shape))
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    weights = _fine_counts(array.shape, factors, lungs.shape)
    counts = [float(weights[lungs == k].sum()) for k in (0, RIGHT_LUNG, LEFT_LUNG)]
    return LungMask(
        labels=fine_labels,
        airway=fine_airway,
        spacing=volume.spacing,
        series_uid=uid,
        right_ml=float(counts[RIGHT_LUNG]) * voxel_ml,
        left_ml=float(counts[LEFT_LUNG]) * voxel_ml,
    )
