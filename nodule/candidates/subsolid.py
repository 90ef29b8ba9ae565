"""Subsolid (ground-glass) nodule detector: a density band with vessel rims removed.

After Jacobs et al. 2014 as used by Setio et al. 2016:

1. The working volume is smoothed (Gaussian, ``smooth_mm``) to calm the noise of
   sharp kernels; lung voxels in ``(low_hu, high_hu]`` (about -750 to -300 HU) that
   are also at least ``min_contrast_hu`` above the local lung background are the
   ground-glass band. The background is a normalised Gaussian average
   (``background_sigma_mm``) of the lung voxels below ``low_hu``, computed on a grid
   of 4 mm blocks: without it, dependent (posterior) lung near -750 HU joins a faint
   nodule into one large region.
2. Partial-volume rims of vessels, airway walls and the pleura fall in the same band:
   band voxels within ``rim_mm`` (a cube neighbourhood: a separable maximum filter) of
   a voxel denser than ``rim_hu`` (default ``high_hu``) are removed, then
   a morphological opening (ball of ``opening_mm``) removes thin remains.
3. Connected components with an equivalent diameter in ``[min_diameter_mm,
   max_diameter_mm]`` and an elongation up to ``max_elongation`` are candidates.
   Step 3 runs at ``contrast_levels`` contrast thresholds (``min_contrast_hu`` and
   ``contrast_step_hu`` more each time, applied to the opened band): a faint nodule that the lowest threshold joins
   to faint surroundings (small vessels blurred into the band, dependent lung) comes
   free at a higher one. Of candidates found at several levels, the best-scoring one
   is kept (non-maximum suppression within its radius). The same runs again on the
   too long components opened with a wider ball (``wide_openings_mm``, 1.5 mm;
   first pass only, components from ``split_min_diameter_mm``): in noisy thin
   slices small vessels blur into ground-glass specks, and thin bridges of them join a
   faint nodule into one long component that the elongation filter rejects; the wider
   opening cuts the bridges and keeps the nodule (on the training scans it freed a
   7 mm ground-glass nodule that no detector had found).
4. Score: the component's contrast to the lung around it (mean HU minus the median of
   the other lung voxels below ``low_hu`` within ``background_mm`` of its centre),
   ``1 - exp(-contrast / contrast_scale_hu)``, divided by the elongation. The local background matters: dependent lung is denser than the rest,
   and large faint regions there are no nodules.
5. Second pass (``extra_candidates`` > 0): steps 2-3 again with rims only around
   voxels denser than ``extra_rim_hu`` (-100 HU: soft tissue and vessel cores) and
   components from ``extra_min_diameter_mm`` (3 mm). Removing the rims of everything
   above ``high_hu`` also strips the ground glass around a part-solid core and the
   half of a juxtapleural ground-glass nodule that blurs into the pleura, leaving less
   than ``min_diameter_mm`` (4 mm); this pass finds those. Its candidates away from the first pass's (not
   within their radius) are added, the best ``extra_candidates`` of them: the pass
   alone gives several times more candidates, so it only adds to the first.
6. Faint pass (``faint_candidates`` > 0): faint ground glass, whose smoothed density
   stays below ``low_hu`` or barely above the background, never enters the band of
   steps 1-3 (on the training scans: a 12 mm ground-glass nodule at -700 HU in lung at
   -820 HU, lost among noise specks). Steps 2-4 run again at half resolution on the
   volume smoothed to ``faint_smooth_mm`` (the solid detector's coarse scale, shared: the
   pass costs a few tenths of a second), with the band from ``faint_low_hu``, contrast
   thresholds from ``faint_contrast_hu`` in steps of ``faint_step_hu`` (``faint_contrast_levels`` of
   them: a large faint nodule against the mediastinum joins the partial-volume sheet along
   it into one region of several hundred ml up to 110 HU, and comes free at 140-170 HU;
   on the training scans a 15.6 mm ground-glass nodule at -676 HU) and rims within
   one half-resolution voxel of a voxel denser than ``high_hu``; the best
   ``faint_candidates`` not within the radius of a candidate of the first passes are added.
   A region of the faint pass too large for a nodule (over ``max_diameter_mm``) is opened
   with a ball of ``faint_large_openings_mm`` (3 mm) and its parts from
   ``large_min_diameter_mm`` (10 mm) are tried in turn: a
   large faint nodule joined by necks of its own density to faint surroundings (vessels,
   dependent lung) parts from them at no contrast threshold, only by its thickness (on the
   training scans a 26 mm juxtavascular ground-glass nodule). Smaller parts are left out:
   they are many (chunks of dependent lung) and would take the faint pass's places from
   the small faint nodules that its contrast thresholds free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from nodule.candidates.features import detections_frame, elongation, equivalent_diameter
from nodule.candidates.hessian import SmoothingCache, half_smoothed, smoothed_copy
from nodule.candidates.solid import suppress


@dataclass(frozen=True)
class SubsolidConfig:
    """Parameters of the subsolid detector (see the module docstring).

    Attributes:
        smooth_mm: Gaussian sigma of the smoothing, mm.
        low_hu: lower end of the ground-glass band.
        high_hu: upper end of the band (and the density that counts as solid).
        min_contrast_hu: smallest excess over the local lung background, HU.
        contrast_levels: number of contrast thresholds tried.
        contrast_step_hu: step between the contrast thresholds, HU.
        background_sigma_mm: Gaussian sigma of the local lung background, mm.
        rim_mm: band voxels this close to solid voxels are removed.
        rim_hu: density of the solid voxels whose rims are removed (None: ``high_hu``).
        opening_mm: radius of the opening ball, mm.
        min_diameter_mm: smallest equivalent diameter of a candidate.
        max_diameter_mm: largest equivalent diameter of a candidate.
        max_elongation: largest elongation of a candidate.
        background_mm: radius of the ball the local lung background is taken from, mm.
        contrast_scale_hu: contrast scale of the score, HU.
        max_candidates: the best this many of the first pass are kept.
        extra_candidates: up to this many of the second pass are added (0: no second pass).
        extra_rim_hu: ``rim_hu`` of the second pass.
        extra_min_diameter_mm: ``min_diameter_mm`` of the second pass.
        size_scale_mm: components smaller than this are scored down (``size_power``).
        size_power: the score is multiplied by ``min(1, diameter / size_scale_mm)`` to
            this power (0: size plays no part).
        wide_openings_mm: step 3 is repeated on the band opened with balls of these
            radii: a faint nodule joined to surrounding clutter by thin bridges comes free.
        split_min_diameter_mm: only components of at least this equivalent diameter
            are opened so (smaller ones hold no nodule of ``min_diameter_mm`` plus bridges).
        faint_candidates: up to this many of the faint pass are added (0: no faint pass).
        faint_smooth_mm: Gaussian sigma of the faint pass (half resolution), mm.
        faint_low_hu: lower end of the faint pass's band.
        faint_contrast_hu: smallest excess over the background in the faint pass, HU.
        faint_step_hu: step between the faint pass's contrast thresholds, HU.
        faint_contrast_levels: number of the faint pass's contrast thresholds.
        faint_large_openings_mm: radii of the balls that open the faint pass's regions
            too large for a nodule, mm (empty: such regions are dropped).
        large_min_diameter_mm: smallest equivalent diameter of a part of such an opening.
    """

    smooth_mm: float = 1.0
    low_hu: float = -750.0
    high_hu: float = -300.0
    min_contrast_hu: float = 100.0
    contrast_levels: int = 3
    contrast_step_hu: float = 60.0
    background_sigma_mm: float = 8.0
    rim_mm: float = 1.0
    rim_hu: float | None = None
    opening_mm: float = 1.0
    min_diameter_mm: float = 4.0
    max_diameter_mm: float = 34.0
    max_elongation: float = 3.0
    background_mm: float = 15.0
    contrast_scale_hu: float = 150.0
    max_candidates: int = 400
    extra_candidates: int = 100
    extra_rim_hu: float = -100.0
    extra_min_diameter_mm: float = 3.0
    size_scale_mm: float = 10.0
    size_power: float = 0.5
    wide_openings_mm: tuple[float, ...] = (1.5,)
    split_min_diameter_mm: float = 6.0
    faint_candidates: int = 60
    faint_smooth_mm: float = 2.25
    faint_low_hu: float = -850.0
    faint_contrast_hu: float = 50.0
    faint_step_hu: float = 30.0
    faint_contrast_levels: int = 5
    faint_large_openings_mm: tuple[float, ...] = (3.0,)
    large_min_diameter_mm: float = 10.0


def ball(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Boolean ball structuring element of ``radius_mm`` (at least the 6-neighbourhood)."""
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    r = np.maximum(1, np.round(radius_mm / sp)).astype(int)
    grids = np.ogrid[tuple(slice(-int(k), int(k) + 1) for k in r)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, sp, strict=True))
    return np.asarray(d2 <= max(radius_mm, float(sp.min())) ** 2 + 1e-9)


def shifted_all(mask: np.ndarray, offsets: np.ndarray, erode: bool) -> np.ndarray:
    """AND (``erode``) or OR of ``mask`` shifted by each offset (z, y, x); outside counts as False."""
    out = np.ones_like(mask) if erode else np.zeros_like(mask)
    n = mask.shape
    for off in offsets:
        # out[p] op= mask[p + off] for erosion; out[p + off] |= mask[p] for dilation
        src = tuple(slice(max(0, int(o)), min(k, k + int(o))) for o, k in zip(off, n, strict=True))
        dst = tuple(slice(max(0, -int(o)), min(k, k - int(o))) for o, k in zip(off, n, strict=True))
        if erode:
            view = np.zeros_like(mask)
            view[dst] = mask[src]
            out &= view
        else:
            out[src] |= mask[dst]
    return out


def binary_open(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Binary opening of ``mask`` with a symmetric ``structure`` (background outside the array).

    The same result as ``scipy.ndimage.binary_opening`` for symmetric structures, by
    shifted logical ANDs / ORs: for the small structures used here (the 6-neighbourhood)
    several times faster than the general filter.
    """
    centre = np.asarray(structure.shape) // 2
    offsets = np.argwhere(structure) - centre
    return shifted_all(shifted_all(mask, offsets, erode=True), offsets, erode=False)


def background_map(
    smooth: np.ndarray, normal: np.ndarray, sp: np.ndarray, sigma_mm: float, below_hu: float, block_mm: float = 4.0
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Local mean HU of the ``normal`` voxels (the lung voxels below ``below_hu``: the lung
    background) as a normalised Gaussian average, on blocks.

    Returns the map on blocks of about ``block_mm`` and the block factors (z, y, x);
    where no such voxel is near, ``below_hu``. Read it with :func:`sample_blocks`.
    """
    f = (max(1, round(block_mm / sp[0])), max(1, round(block_mm / sp[1])), max(1, round(block_mm / sp[2])))
    shape = [max(1, n // k) for n, k in zip(smooth.shape, f, strict=True)]
    if any(n < k for n, k in zip(smooth.shape, f, strict=True)):
        return np.full(shape, below_hu, dtype=np.float32), f
    cut = tuple(slice(0, n * k) for n, k in zip(shape, f, strict=True))
    background = normal[cut]
    blocks = (shape[0], f[0], shape[1], f[1], shape[2], f[2])
    weight = background.reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float32)
    value = np.where(background, smooth[cut], np.float32(0.0)).reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float32)
    sigma = [sigma_mm / (s * k) for s, k in zip(sp, f, strict=True)]
    num = ndi.gaussian_filter(value, sigma, truncate=3.0)
    den = ndi.gaussian_filter(weight, sigma, truncate=3.0)
    return np.where(den > 1e-3, num / np.maximum(den, 1e-3), below_hu).astype(np.float32), f


def sample_blocks(blocks: np.ndarray, factors: tuple[int, int, int], index: tuple[np.ndarray, ...]) -> np.ndarray:
    """Values of a block map at voxel indices (z, y, x arrays); voxels past the last block take it."""
    pos = [np.minimum(i // k, n - 1) for i, k, n in zip(index, factors, blocks.shape, strict=True)]
    return np.asarray(blocks[pos[0], pos[1], pos[2]])


Row = dict[str, float]
Keyed = tuple[tuple[int, int, int], Row]
"""A candidate row with its place in the search order (level, first voxel, part)."""


class _Search:
    """Steps 3-4 of the module docstring on one band box: components, filters and scores.

    Rows carry the order in which a labelling of each contrast level's whole band would
    meet them (level, raster index of the component's first voxel in the box, part of a
    split component), so that ties in score are broken as that labelling would.
    """

    def __init__(
        self,
        smooth: np.ndarray,
        normal: np.ndarray,
        sp: np.ndarray,
        config: SubsolidConfig,
        box_lo: Sequence[int],
        box_shape: tuple[int, ...],
    ) -> None:
        self.smooth, self.normal, self.sp, self.config = smooth, normal, sp, config
        self.box_lo = np.asarray(box_lo, dtype=np.int64)
        self.box_shape = box_shape
        self.spacing_zyx = tuple(float(v) for v in sp)
        self.voxel_mm3 = float(np.prod(sp))
        self._backgrounds: dict[tuple[int, int, int], float] = {}

    def background(self, centre: np.ndarray) -> float:
        """Median HU of the lung voxels below ``low_hu`` within ``background_mm`` of ``centre``."""
        c = np.rint(centre).astype(int)
        key = (int(c[0]), int(c[1]), int(c[2]))
        if key not in self._backgrounds:
            half = np.ceil(self.config.background_mm / self.sp).astype(int)
            lo = np.maximum(0, c - half)
            hi = np.minimum(np.asarray(self.smooth.shape), c + half + 1)
            window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            values = self.smooth[window][self.normal[window]]
            self._backgrounds[key] = float(np.median(values)) if values.size else self.config.low_hu
        return self._backgrounds[key]

    def _first(self, region: np.ndarray, start: np.ndarray) -> int:
        """Raster index, in the band box, of the first voxel of ``region`` (whose box starts at ``start``)."""
        first = np.unravel_index(int(np.argmax(region)), region.shape) + start - self.box_lo
        return int(np.ravel_multi_index(tuple(int(v) for v in first), self.box_shape))

    def _row(
        self, region: np.ndarray, pts: np.ndarray, start: np.ndarray, diameter: float, count: int, elong: float
    ) -> Row:
        """The candidate row of a component (``region`` in its box at ``start``, voxels ``pts`` in that box)."""
        config = self.config
        centre = pts.mean(axis=0) + start
        box = tuple(slice(int(s), int(s) + n) for s, n in zip(start, region.shape, strict=True))
        mean_hu = float(self.smooth[box][region].mean())
        contrast = max(0.0, mean_hu - self.background(centre))
        score = (1.0 - np.exp(-contrast / config.contrast_scale_hu)) / elong
        score *= min(1.0, diameter / config.size_scale_mm) ** config.size_power
        return {
            "z": centre[0],
            "y": centre[1],
            "x": centre[2],
            "score": float(score),
            "diameter_mm": diameter,
            "volume_mm3": float(count * self.voxel_mm3),
            "mean_hu": mean_hu,
            "elongation": elong,
        }

    def _opened(
        self, region: np.ndarray, start: np.ndarray, radii: Sequence[float], min_diameter_mm: float, level: int, parent: int
    ) -> list[Keyed]:
        """Keyed rows of the parts that remain of ``region`` (its box at ``start``) opened with a
        ball of each of ``radii``, searched as components of ``parent``'s."""
        rows: list[Keyed] = []
        for radius in radii:
            # small boxes: scipy's C opening beats the shifted-array one here
            parts = ndi.binary_opening(region, structure=ball(radius, self.spacing_zyx))
            rows.extend(self.find(parts, start, min_diameter_mm, level, parent=parent))
        return rows

    def find(
        self,
        band: np.ndarray,
        offset: np.ndarray,
        min_diameter_mm: float,
        level: int = 0,
        wide_openings_mm: Sequence[float] = (),
        excess: np.ndarray | None = None,
        thresholds: Sequence[float] = (),
        parent: int | None = None,
        voxels: tuple[np.ndarray, ...] | None = None,
        large_openings_mm: Sequence[float] = (),
    ) -> list[Keyed]:
        """Keyed candidate rows of the components of ``band`` (a box of the grid starting at
        voxel ``offset``) that pass the size and shape filters; centres in voxels of the grid.

        A component too long for them is opened with balls of ``wide_openings_mm`` in its
        own box, and the parts that remain are tried in turn (``parent``: the split
        component's first voxel). With ``excess`` (the band's contrast, same box), the
        components are searched again at each of ``thresholds`` (levels 1, 2, ...): a
        component of a higher level lies inside one of this level, so only the boxes of
        components large enough are labelled again, and only where enough of their voxels
        pass the threshold but not all (then it is the same component, found again).
        ``voxels``: indices of a superset of ``band``'s voxels in the box (to count on
        them instead of on the whole box; needed with ``thresholds``).
        """
        config = self.config
        labels, n = ndi.label(band)
        if n == 0:
            return []
        on = labels[voxels] if voxels is not None else labels.ravel()
        counts = np.bincount(on, minlength=n + 1)
        diam = equivalent_diameter(counts * self.voxel_mm3)
        ok = diam >= min_diameter_mm
        ok[0] = False
        # per level: does the component hold enough voxels above the threshold, but not all?
        search_level = []
        for threshold in thresholds:
            if excess is None or voxels is None:
                raise ValueError("thresholds need the band's voxels and their excess")
            above = np.bincount(on, weights=excess[voxels] > threshold, minlength=n + 1)
            search_level.append((equivalent_diameter(above * self.voxel_mm3) >= min_diameter_mm) & (above < counts))
        rows: list[Keyed] = []
        objects = ndi.find_objects(labels)
        for part, label in enumerate(np.flatnonzero(ok)):
            sl = objects[label - 1]
            region = labels[sl] == label
            start = offset + np.array([s.start for s in sl], dtype=np.int64)
            for k, (threshold, search) in enumerate(zip(thresholds, search_level, strict=True), start=1):
                if search[label]:
                    assert excess is not None
                    higher = region & (excess[sl] > threshold)
                    rows.extend(
                        self.find(higher, start, min_diameter_mm, level + k, wide_openings_mm, large_openings_mm=large_openings_mm)
                    )
            first = self._first(region, start) if parent is None else parent
            if diam[label] > config.max_diameter_mm:
                # too large for a nodule: a large faint nodule joined to faint surroundings
                # by necks thinner than its own body comes free under a wider opening
                smallest = max(min_diameter_mm, config.large_min_diameter_mm)
                rows.extend(self._opened(region, start, large_openings_mm, smallest, level, first))
                continue
            pts = np.argwhere(region)
            elong = elongation(pts * self.sp)
            if elong > config.max_elongation:
                # a nodule of min_diameter with its bridges is at least split_min_diameter_mm
                radii = wide_openings_mm if diam[label] >= config.split_min_diameter_mm else ()
                rows.extend(self._opened(region, start, radii, min_diameter_mm, level, first))
                continue
            key = (level, first, part if parent is not None else -1)
            rows.append((key, self._row(region, pts, start, float(diam[label]), int(counts[label]), elong)))
        return rows


def _band_candidates(
    smooth: np.ndarray,
    normal: np.ndarray,
    sp: np.ndarray,
    blocks: np.ndarray,
    factors: tuple[int, int, int],
    config: SubsolidConfig,
    in_band: np.ndarray,
    min_diameter_mm: float,
    wide_openings_mm: Sequence[float] = (),
    large_openings_mm: Sequence[float] = (),
) -> list[Row]:
    """Steps 1-3 of the module docstring on a band with its rims removed, with the given
    smallest diameter: candidate rows (centres in voxels), best first, one per nodule."""
    spacing_zyx = tuple(float(v) for v in sp)
    # the rest works on the band's voxels and their bounding box only (the band is sparse)
    idx = np.nonzero(in_band)
    excess = smooth[idx] - sample_blocks(blocks, factors, idx)
    keep = excess > config.min_contrast_hu
    if not keep.any():
        return []
    idx = tuple(i[keep] for i in idx)
    excess = excess[keep]
    structure = ball(config.opening_mm, spacing_zyx)
    lo = [max(0, int(i.min()) - 1) for i in idx]
    hi = [min(n, int(i.max()) + 2) for i, n in zip(idx, smooth.shape, strict=True)]
    local = tuple(i - o for i, o in zip(idx, lo, strict=True))
    band0 = np.zeros([b - a for a, b in zip(lo, hi, strict=True)], dtype=bool)
    band0[local] = True
    excess_box = np.zeros(band0.shape, dtype=np.float32)
    excess_box[local] = excess
    opened = binary_open(band0, structure)
    search = _Search(smooth, normal, sp, config, lo, band0.shape)
    thresholds = [config.min_contrast_hu + step * config.contrast_step_hu for step in range(1, config.contrast_levels)]
    keyed = search.find(
        opened, np.asarray(lo, dtype=np.int64), min_diameter_mm, 0, wide_openings_mm, excess_box, thresholds,
        voxels=local, large_openings_mm=large_openings_mm,
    )
    if not keyed:
        return []
    # the same nodule found at several levels: keep the best-scoring one
    keyed.sort(key=lambda kr: (-kr[1]["score"], kr[0]))
    rows = [r for _, r in keyed]
    pts = np.array([[r["z"], r["y"], r["x"]] for r in rows]) * sp
    radius = np.array([max(r["diameter_mm"] / 2, 1.0) for r in rows])
    kept = suppress(pts, np.arange(len(rows)), radius)
    rows = [rows[i] for i in kept]
    rows.sort(key=lambda r: -r["score"])
    return rows


def _faint_candidates(
    array: np.ndarray, lung: np.ndarray, config: SubsolidConfig, spacing_zyx: Sequence[float], smoothed: SmoothingCache | None
) -> list[Row]:
    """Step 6 of the module docstring: faint pass rows, centres in voxels of the full grid, best first."""
    smooth, half_sp = half_smoothed(array, config.faint_smooth_mm, spacing_zyx, smoothed)
    if min(smooth.shape) < 3:
        return []
    sp = np.asarray(half_sp, dtype=np.float64)
    nz, ny, nx = smooth.shape
    lung_h = lung[: 2 * nz : 2, : 2 * ny : 2, : 2 * nx : 2]
    normal = lung_h & (smooth <= config.low_hu)
    blocks, factors = background_map(smooth, normal, sp, config.background_sigma_mm, config.low_hu)
    near = ndi.maximum_filter((smooth > config.high_hu).view(np.uint8), size=3)
    band = lung_h & (smooth > config.faint_low_hu) & (smooth <= config.high_hu) & (near == 0)
    faint = replace(
        config,
        min_contrast_hu=config.faint_contrast_hu,
        contrast_step_hu=config.faint_step_hu,
        contrast_levels=config.faint_contrast_levels,
    )
    rows = _band_candidates(
        smooth, normal, sp, blocks, factors, faint, band, config.min_diameter_mm, large_openings_mm=config.faint_large_openings_mm
    )
    for r in rows:  # half-resolution voxel k covers full voxels 2k and 2k + 1
        for c in ("z", "y", "x"):
            r[c] = 2.0 * r[c] + 0.5
    return rows


def _far_from(rows: list[Row], others: list[Row], sp: np.ndarray, min_reach_mm: float) -> list[Row]:
    """The ``rows`` not within the radius (at least ``min_reach_mm``) of any of ``others``."""
    if not rows or not others:
        return rows
    have = np.array([[r["z"], r["y"], r["x"]] for r in others]) * sp
    reach = np.array([max(r["diameter_mm"] / 2, min_reach_mm) for r in others])
    pts = np.array([[r["z"], r["y"], r["x"]] for r in rows]) * sp
    d = np.linalg.norm(pts[:, None] - have[None], axis=2)
    return [r for r, far in zip(rows, (d > reach[None]).all(axis=1), strict=True) if far]


def detect_subsolid(
    array: np.ndarray,
    lung: np.ndarray,
    spacing_zyx: Sequence[float],
    config: SubsolidConfig = SubsolidConfig(),
    smoothed: SmoothingCache | None = None,
) -> pd.DataFrame:
    """Subsolid nodule candidates in a working volume.

    Args:
        array: HU volume (z, y, x), float32.
        lung: boolean lung mask of the same shape.
        spacing_zyx: voxel size in mm.
        config: parameters.
        smoothed: cache of smoothed copies of ``array`` (:data:`~nodule.candidates.hessian.SmoothingCache`) (read and filled).

    Returns:
        Detections (:data:`~nodule.candidates.features.DETECTION_COLUMNS`), best first.
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    smooth = smoothed_copy(array, config.smooth_mm, spacing_zyx, smoothed)
    normal = lung & (smooth <= config.low_hu)  # the lung background
    blocks, factors = background_map(smooth, normal, sp, config.background_sigma_mm, config.low_hu)
    rim_hu = config.high_hu if config.rim_hu is None else config.rim_hu
    passes = [rim_hu, config.extra_rim_hu] if config.extra_candidates > 0 else [rim_hu]
    # rims (within rim_mm of a denser voxel; cube neighbourhood, separable maximum filter)
    # of both passes from one filter: the level of a voxel is how many rim densities it exceeds
    levels = sorted(set(passes))
    level = np.zeros(smooth.shape, dtype=np.uint8)
    for t in levels:
        level += (smooth > t).view(np.uint8)
    size = [2 * max(1, round(config.rim_mm / s)) + 1 for s in spacing_zyx]
    near = ndi.maximum_filter(level, size=size)
    in_band = lung & (smooth > config.low_hu) & (smooth <= config.high_hu)
    del level

    def band(rim: float) -> np.ndarray:
        return np.asarray(in_band & (near <= levels.index(rim)))

    rows = _band_candidates(
        smooth, normal, sp, blocks, factors, config, band(rim_hu), config.min_diameter_mm, config.wide_openings_mm
    )[: config.max_candidates]
    if config.extra_candidates > 0:
        # second pass: small and juxtapleural ground glass (see the module docstring)
        extra = _band_candidates(
            smooth, normal, sp, blocks, factors, config, band(config.extra_rim_hu), config.extra_min_diameter_mm
        )
        extra = _far_from(extra, rows, sp, config.min_diameter_mm / 2)
        rows = rows + extra[: config.extra_candidates]
    if config.faint_candidates > 0:
        faint = _far_from(_faint_candidates(array, lung, config, spacing_zyx, smoothed), rows, sp, config.min_diameter_mm / 2)
        rows = rows + faint[: config.faint_candidates]
    rows.sort(key=lambda r: -r["score"])
    return detections_frame(rows, "subsolid")
