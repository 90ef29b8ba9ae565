"""Realism of the phantom: metric tables and side-by-side pictures against the real chest CTs.

For every real scan named by ``--real`` (default: all four shared real scans,
``$NODULE_DATA/real_ct/*``) generates ``--n`` phantoms (``full`` preset) with that scan's
settings: its slice thickness, pixel spacing and matrix, the phantom kernel whose noise
power spectrum is closest to the real scan's (soft, standard or sharp; the choice is
printed and written with the table), the noise SD estimated from the real scan's
subcutaneous fat and the ratio of air noise to body noise estimated from its air (the
phantom's noise in air outside the body, clipped at -1024 HU as the real scan's, matches
the real one's). The lungs of every scan, real and synthetic, are segmented with the
same method (:func:`nodule.lung.segment_lungs`) and compared. Recorded findings are not
the anatomy the generator draws: the lung density rows (HU, histogram, fraction and
cross-sections above -500 HU) leave them out with a margin (``FINDING_MARGIN_MM``; a real
scan's from ``data_manifests/real_ct_known_findings.csv`` and the LUNA16 tables, a
phantom's its own findings); the lung volume is the whole lung's.

* lung volume (l); the real one should lie inside the phantoms' range;
* mean and standard deviation of HU inside the lung mask (target: within 50 HU);
* the distance between the lung HU histograms (-1024..0 HU): Wasserstein-1 in HU
  (target 50 HU) and, for information, the Jensen-Shannon distance of 8 HU bins;
* the fraction of lung volume above -500 HU (vessels, airway walls; target 25 %);
* connected structures above -500 HU inside the lung, counted as **2D cross-sections
  per axial slice** (8-connected, >= 1 mm equivalent diameter, in the lung mask eroded
  by 3 pixels in-plane, with holes filled), summed over all slices per litre of lung,
  and their equivalent diameters (median, 90th percentile; target 25 %);
* noise: standard deviation of HU minus its 5 x 5 in-plane median in air outside the
  body (at least 10 mm from the skin, above the body's front) and in subcutaneous fat
  (target 25 %), and the mean HU of that fat (target 50 HU);
* noise power spectrum of homogeneous soft-tissue patches (16 x 16 pixels): the frequency of
  its peak (cycles/mm) and the power at the Nyquist frequency relative to the peak
  (target 25 %), the grain of the reconstruction kernel;
* anterior chest wall thickness (mm, target 25 %): at the slice halfway between the lung
  apex and base, along the antero-posterior ray through each lung's centroid column,
  from the skin to the lung. The real scan's field of view cuts off the lateral skin,
  so lateral rays are not used.

Phantom values are given as their mean and per phantom. With ``--out`` the tables (one
per real scan) are written as markdown and as JSON next to it (``.json``); ``--images``
writes one picture per real scan, ``realism_<scan>.png``: axial, coronal and sagittal
views at lung window, the real scan above, phantom 0 below.

Every phantom's metrics are cached under ``$NODULE_CACHE/realism`` (default
``~/.cache/nodule``), keyed by the phantom's settings and a hash of the generator's and
this script's source, so an interrupted run resumes and a rerun without changes only
redraws the tables.

    python scripts/phantom_realism.py --n 5 --seed 0 --out docs/realism.md --images docs/images
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nodule.data.phantom import generate_phantom
from nodule.data.scanner import KERNELS, Kernel, ScannerSettings, apply_scanner
from nodule.data.sets import FINDING_COLUMNS, real_findings
from nodule.data.splits import load_split
from nodule.io import Volume, read_volume
from nodule.lung import segment_lungs
from nodule.paths import REPO_ROOT, cache_dir, data_dir

WINDOW = (-1350, 150)
FINDING_MARGIN_MM = 5.0  # left out of the lung density rows around each recorded finding
UNKNOWN_DIAMETER_MM = 10.0  # a finding of unknown diameter (LUNA16 excluded, -1; non-nodules)
NOTES_MARK = "<!-- notes: kept when the table is regenerated -->"
REAL_SCANS = ("cptac-lscc-c3n-00247", "lidc-idri-0001", "lidc-idri-0002", "lung-pet-ct-dx-a0001")
# sources whose change invalidates the cached metrics
SOURCES = (
    "nodule/data/phantom.py", "nodule/data/anatomy.py", "nodule/data/vessels.py", "nodule/data/scanner.py",
    "nodule/data/shapes.py", "nodule/lung.py", "scripts/phantom_realism.py",
)
# metric -> (label, kind of target): "hu" within 50 HU, "rel" within 25 %, "range" real inside phantom range
METRICS: dict[str, tuple[str, str]] = {
    "lung_volume_l": ("lung volume (l)", "range"),
    "lung_hu_mean": ("lung HU mean", "hu"),
    "lung_hu_std": ("lung HU std", "hu"),
    "lung_hist_w1": ("lung HU histogram Wasserstein-1 to real (HU)", "dist"),
    "lung_hist_js": ("lung HU histogram Jensen-Shannon distance to real (info)", "info"),
    "frac_above_500": ("fraction of lung volume > -500 HU", "rel"),
    "structures_per_l": ("cross-sections > -500 HU per litre (2D, per slice)", "rel"),
    "structure_d_median_mm": ("cross-section equivalent diameter, median (mm)", "rel"),
    "structure_d_p90_mm": ("cross-section equivalent diameter, 90th pct (mm)", "rel"),
    "noise_air_hu": ("noise in air outside the body (HU)", "rel"),
    "noise_fat_hu": ("noise in subcutaneous fat (HU)", "rel"),
    "fat_hu_mean": ("subcutaneous fat HU mean", "hu"),
    "nps_peak_cpmm": ("noise power spectrum peak in soft tissue (cycles/mm)", "rel"),
    "nps_nyquist_ratio": ("noise power at Nyquist / at peak", "rel"),
    "chest_wall_mm": ("anterior chest wall thickness (mm)", "rel"),
}


def _residual(a: np.ndarray) -> np.ndarray:
    """HU minus its 5 x 5 in-plane median."""
    return np.asarray(a - ndimage.median_filter(a, size=(1, 5, 5)), np.float32)


def body_mask(a: np.ndarray) -> np.ndarray:
    """The patient's body: largest 3D component above -500 HU, holes filled per slice."""
    tissue = ndimage.binary_opening(a > -500, structure=np.ones((1, 3, 3), bool))
    lab, n = ndimage.label(tissue)
    if n == 0:
        return np.asarray(tissue, bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    return np.asarray([ndimage.binary_fill_holes(s) for s in body])


def _hist(values: np.ndarray) -> np.ndarray:
    h, _ = np.histogram(np.clip(values, -1024, 0), bins=128, range=(-1024, 0))
    return np.asarray(h / max(h.sum(), 1), np.float64)


def wasserstein1(p: np.ndarray, q: np.ndarray, bin_width: float = 8.0) -> float:
    """Wasserstein-1 distance (HU) between two histograms on the same bins."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * bin_width)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, 0..1) between two histograms."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return math.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))


def cross_sections(a: np.ndarray, lung: np.ndarray, ps: float, leave_out: np.ndarray | None = None) -> np.ndarray:
    """Equivalent diameters (mm) of the 2D blobs > -500 HU in the eroded lung of every slice
    (its holes filled), less the ``leave_out`` voxels."""
    inner = ndimage.binary_erosion(lung, structure=np.ones((1, 3, 3), bool), iterations=3)
    eight = np.ones((3, 3), bool)
    diam: list[np.ndarray] = []
    for z in np.nonzero(inner.any(axis=(1, 2)))[0]:
        region = ndimage.binary_fill_holes(inner[z])
        if leave_out is not None:
            region &= ~leave_out[z]
        lab, n = ndimage.label((a[z] > -500) & region, structure=eight)
        if n:
            d = 2.0 * np.sqrt(np.bincount(lab.ravel())[1:] * ps * ps / np.pi)
            diam.append(d[d >= 1.0])
    return np.concatenate(diam) if diam else np.zeros(0)


def _noise_rois(a: np.ndarray, body: np.ndarray, lung: np.ndarray, ps: float) -> tuple[np.ndarray, np.ndarray]:
    """Air ROI (in front of the body, >= 10 mm from skin) and subcutaneous fat ROI."""
    far = ndimage.distance_transform_edt(~body, sampling=(50.0, ps, ps)) > 10.0
    front = np.zeros_like(body)
    for z in range(a.shape[0]):
        rows = np.nonzero(body[z].any(axis=1))[0]
        if len(rows):
            front[z, : rows[0]] = True
    valid = a > -1024  # outside the reconstruction circle / clipped
    air = far & front & valid & (a < -900)
    depth = ndimage.distance_transform_edt(body, sampling=(50.0, ps, ps))
    near_lung = ndimage.distance_transform_edt(~lung, sampling=(50.0, ps, ps))
    sm = ndimage.uniform_filter(a.astype(np.float32), size=(1, 7, 7))
    fat = body & (depth > 3.0) & (depth < 40.0) & (near_lung > 12.0) & (sm > -150) & (sm < -50)
    fat = ndimage.binary_erosion(fat, structure=np.ones((1, 3, 3), bool), iterations=2)
    return air, fat


def chest_wall(a: np.ndarray, body: np.ndarray, lung: np.ndarray, ps: float) -> float:
    """Anterior chest wall thickness (mm) at mid-lung through each lung's centroid column."""
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    z = (int(zs[0]) + int(zs[-1])) // 2
    lab, _ = ndimage.label(lung[z])
    sizes = np.bincount(lab.ravel())[1:]
    out = []
    for k in np.argsort(sizes)[::-1][:2]:
        cx = int(np.rint(ndimage.center_of_mass(lab == k + 1)[1]))
        col_b, col_l = body[z, :, cx], lab[:, cx] == k + 1
        if col_b.any() and col_l.any():
            skin, first = int(np.argmax(col_b)), int(np.argmax(col_l))
            if skin > 0 and first > skin:
                out.append((first - skin) * ps)
    return float(np.mean(out)) if out else float("nan")


def noise_spectrum(a: np.ndarray, ps: float, n: int = 16) -> tuple[float, float]:
    """Noise power spectrum of homogeneous soft-tissue patches: peak frequency and Nyquist/peak ratio.

    Uses every n x n in-plane patch (every third slice) whose mean is -130..150 HU (fat,
    muscle, mediastinum, liver), whose median is within 15 HU of its mean and whose range
    is under 700 HU (no bone or air); the radial NPS in 8 bins up to the
    Nyquist frequency, ignoring the two lowest bins (left-over anatomy); patches whose
    quadrant means differ by 40 HU or more (an edge) are left out.
    """
    patches = []
    for z in range(0, a.shape[0], 3):
        grid = a[z, : a.shape[1] // n * n, : a.shape[2] // n * n].reshape(a.shape[1] // n, n, a.shape[2] // n, n)
        blocks = grid.transpose(0, 2, 1, 3).reshape(-1, n, n)
        m = blocks.mean(axis=(1, 2))
        med = np.median(blocks.reshape(len(blocks), -1), axis=1)
        h = n // 2
        quad = blocks.reshape(len(blocks), 2, h, 2, h).mean(axis=(2, 4)).reshape(len(blocks), 4)
        flat = np.ptp(quad, axis=1) < 40  # no edge across the patch
        ok = (m > -130) & (m < 150) & (np.abs(med - m) < 15) & (np.ptp(blocks, axis=(1, 2)) < 700) & flat
        patches.append(blocks[ok] - m[ok, None, None])
    p = np.concatenate(patches)
    if len(p) < 8:
        return float("nan"), float("nan")
    power = (np.abs(np.fft.fft2(p)) ** 2).mean(axis=0)
    f = np.sqrt(np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2).ravel()
    idx = np.digitize(f, np.linspace(0.0, 0.5, 9))
    prof = np.array([power.ravel()[idx == i].mean() for i in range(1, 9)])
    k = 2 + int(np.argmax(prof[2:]))
    return float((k + 0.5) / 16.0 / ps), float(prof[-1] / prof[k])


def known_findings(name: str) -> pd.DataFrame:
    """The recorded findings of real scan folder ``name``: :func:`nodule.data.sets.real_findings`
    of the split's real scan of that name (none for a folder the split does not name)."""
    scans = load_split().real_scans
    return real_findings(scans[name]) if name in scans else pd.DataFrame(columns=FINDING_COLUMNS)


def findings_mask(vol: Volume, findings: pd.DataFrame) -> np.ndarray:
    """Voxels within ``diameter_mm / 2 + FINDING_MARGIN_MM`` of a finding (``UNKNOWN_DIAMETER_MM``
    where the diameter is unknown, -1)."""
    mask = np.zeros(vol.shape, bool)
    if len(findings) == 0:
        return mask
    sp = np.asarray(vol.spacing_zyx)
    centres = vol.world_to_voxel(findings[["coordX", "coordY", "coordZ"]].to_numpy(np.float64))
    diameters = findings["diameter_mm"].to_numpy(np.float64)
    for c, d in zip(centres, np.where(diameters > 0, diameters, UNKNOWN_DIAMETER_MM), strict=True):
        r = d / 2.0 + FINDING_MARGIN_MM
        lo = np.maximum(0, np.floor(c - r / sp).astype(int))
        hi = np.minimum(vol.shape, np.ceil(c + r / sp).astype(int) + 1)
        if np.any(hi <= lo):
            continue
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        d2 = sum(((g - ci) * si) ** 2 for g, ci, si in zip(grid, c, sp, strict=True))
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] |= d2 <= r * r
    return mask


def scan_metrics(vol: Volume, lung: np.ndarray, findings: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """The realism metrics of one scan and its lung HU histogram.

    The lung volume is that of ``lung``; the lung's density rows (HU, histogram, fraction
    and cross-sections above -500 HU) leave out the voxels of ``findings`` (nodules,
    tumours: not the anatomy the generator draws)."""
    a = vol.array.astype(np.float32)
    ps, dz = vol.spacing[0], vol.spacing[2]
    vol_l = float(lung.sum()) * ps * ps * dz / 1e6
    d = cross_sections(a, lung, ps, findings)
    parenchyma = lung & ~findings if findings is not None else lung
    lv = a[parenchyma]
    parenchyma_l = float(parenchyma.sum()) * ps * ps * dz / 1e6
    body = body_mask(a)
    air, fat = _noise_rois(a, body, lung, ps)
    res = _residual(a)
    nps_peak, nps_ratio = noise_spectrum(a, ps)
    m = {
        "lung_volume_l": vol_l,
        "lung_hu_mean": float(lv.mean()),
        "lung_hu_std": float(lv.std()),
        "frac_above_500": float((lv > -500).mean()),
        "structures_per_l": float(len(d) / parenchyma_l),
        "structure_d_median_mm": float(np.median(d)) if len(d) else float("nan"),
        "structure_d_p90_mm": float(np.percentile(d, 90)) if len(d) else float("nan"),
        "noise_air_hu": float(res[air].std()) if air.sum() > 100 else float("nan"),
        "noise_fat_hu": float(res[fat].std()) if fat.sum() > 100 else float("nan"),
        "fat_hu_mean": float(a[fat].mean()) if fat.sum() > 100 else float("nan"),
        "nps_peak_cpmm": nps_peak,
        "nps_nyquist_ratio": nps_ratio,
        "chest_wall_mm": chest_wall(a, body, lung, ps),
    }
    return m, _hist(lv)


def unit_noise(kernel: Kernel, ps: float, matrix: int, sd: float = 1.0) -> np.ndarray:
    """Four slices of the phantom's noise alone (kernel, pixel size, matrix), SD ``sd`` HU."""
    settings = ScannerSettings(1.0, 1.0, ps, matrix, kernel, sd)
    return apply_scanner(np.zeros((4, matrix, matrix), np.float32), settings, np.random.default_rng(0))


def closest_kernel(real_nps: tuple[float, float], ps: float, matrix: int) -> tuple[Kernel, dict[str, list[float]]]:
    """The phantom kernel whose noise power spectrum (peak, Nyquist/peak) is closest to the real one's."""
    scores: dict[str, list[float]] = {}
    for kernel in KERNELS:
        peak, ratio = noise_spectrum(unit_noise(kernel, ps, matrix, 20.0), ps)
        err = abs(math.log(peak / real_nps[0])) + abs(math.log(max(ratio, 1e-3) / max(real_nps[1], 1e-3)))
        scores[kernel] = [peak, ratio, err]
    best = min(KERNELS, key=lambda k: scores[k][2])
    return best, scores


def estimate_noise(real: Volume, real_lung: np.ndarray, kernel: Kernel) -> float:
    """Noise SD (HU) for the phantom: the real fat's residual noise over that of unit noise of ``kernel``."""
    a = real.array.astype(np.float32)
    _, fat = _noise_rois(a, body_mask(a), real_lung, real.spacing[0])
    target = float(_residual(a)[fat].std())
    unit = unit_noise(kernel, real.spacing[0], real.shape[1])
    return target / float(_residual(unit).std())


def estimate_air_noise(real_air_hu: float, noise_hu: float, kernel: Kernel, ps: float, matrix: int) -> float:
    """Air noise ratio for the phantom: its noise in air (-1000 HU plus noise of SD
    ``ratio x noise_hu``, rounded and clipped at -1024 HU, measured as the real air's)
    matches the real air's; 1 when even stationary noise is not enough."""
    unit = unit_noise(kernel, ps, matrix)

    def measured(ratio: float) -> float:
        a = np.clip(np.rint(-1000.0 + unit * ratio * noise_hu), -1024, None).astype(np.float32)
        return float(_residual(a)[a > -1024].std())

    if not np.isfinite(real_air_hu) or measured(1.0) <= real_air_hu:
        return 1.0
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if measured(mid) < real_air_hu else (lo, mid)
    return round(0.5 * (lo + hi), 3)


def _target(kind: str, real: float, vals: np.ndarray) -> tuple[str, str, str]:
    mean = float(np.nanmean(vals))
    if kind == "range":
        ok = float(np.nanmin(vals)) <= real <= float(np.nanmax(vals))
        return f"{(mean - real) / real:+.0%}", "real in range", "pass" if ok else "FAIL"
    if kind == "hu":
        return f"{mean - real:+.0f} HU", "+-50 HU", "pass" if abs(mean - real) <= 50 else "FAIL"
    if kind == "dist":
        return "-", "<= 50 HU", "pass" if mean <= 50 else "FAIL"
    if kind == "info":
        return "-", "-", "-"
    rel = (mean - real) / real
    return f"{rel:+.0%}", "+-25 %", "pass" if abs(rel) <= 0.25 else "FAIL"


def table(real: dict[str, float], phantoms: list[dict[str, float]]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and JSON rows: real, phantom mean, per phantom, difference, target, pass/fail."""
    n = len(phantoms)
    cols = " | ".join(f"p{i}" for i in range(n))
    lines = [f"| metric | real | phantom mean | {cols} | difference | target | result |", "|---|---|---|" + "---|" * n + "---|---|---|"]
    rows = []
    for key, (label, kind) in METRICS.items():
        vals = np.array([p[key] for p in phantoms], float)
        r = real.get(key, 0.0)
        diff, tgt, res = _target(kind, r, vals)
        fmt = "{:.3f}" if abs(float(np.nanmean(vals))) < 1 else "{:.1f}"
        real_s = "-" if kind in ("dist", "info") else fmt.format(r)
        each = " | ".join(fmt.format(v) for v in vals)
        lines.append(f"| {label} | {real_s} | {fmt.format(np.nanmean(vals))} | {each} | {diff} | {tgt} | {res} |")
        rows.append({
            "metric": key, "label": label, "real": r, "mean": float(np.nanmean(vals)), "phantoms": vals.tolist(),
            "difference": diff, "target": tgt, "result": res,
        })
    return "\n".join(lines), rows


def _views(ax_row: np.ndarray, vol: Volume, lung: np.ndarray, title: str) -> None:
    a = vol.array.astype(np.float32)
    sx, sy, sz = vol.spacing
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    z = int(zs[0] + 0.55 * (zs[-1] - zs[0]))
    com = ndimage.center_of_mass(lung)
    ys = int(com[1])
    right = lung[:, :, : a.shape[2] // 2].sum(axis=(0, 1))
    xs = int(np.argmax(right))
    kw = {"cmap": "gray", "vmin": WINDOW[0], "vmax": WINDOW[1]}
    ax_row[0].imshow(a[z], **kw)
    ax_row[0].set_title(f"{title} axial")
    ax_row[1].imshow(a[:, ys][::-1], aspect=sz / sx, **kw)
    ax_row[1].set_title("coronal")
    ax_row[2].imshow(a[:, :, xs][::-1], aspect=sz / sy, **kw)
    ax_row[2].set_title("sagittal (right lung)")
    for ax in ax_row:
        ax.set_axis_off()


def render(real: Volume, real_lung: np.ndarray, vol: Volume, lung: np.ndarray, path: Path, real_label: str, label: str) -> None:
    """Side-by-side axial, coronal, sagittal at lung window: real above, phantom below."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 10), dpi=50)
    _views(axes[0], real, real_lung, real_label)
    _views(axes[1], vol, lung, label)
    plt.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # type: ignore[attr-defined]
    plt.close(fig)
    Image.fromarray(rgba[..., :3]).convert("L").save(path, optimize=True)  # grey PNG, < 300 KB


def source_hash() -> str:
    """Hash of the generator's, the lung segmentation's and this script's source."""
    h = hashlib.sha256()
    for rel in SOURCES:
        h.update((REPO_ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def _cached(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _save(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def describe(vol: Volume) -> str:
    """Slices, matrix, pixel size, thickness and kernel of a real scan (no patient data)."""
    st = vol.info.slice_thickness or vol.spacing[2]
    return f"{vol.shape[0]} x {vol.shape[1]} x {vol.shape[2]}, {vol.spacing[0]:.3f} mm pixels, {st:g} mm slices, {vol.info.manufacturer} kernel {vol.info.kernel}"


def compare(name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """Metrics of one real scan and of its phantoms (cached); pictures when asked."""
    key = hashlib.sha256(f"{name}|{source_hash()}".encode()).hexdigest()[:16]
    real = read_volume(data_dir() / "real_ct" / name)
    real_file = cache / f"real-{name}-{key}.json"
    rec = _cached(real_file)
    real_lung: np.ndarray | None = None
    if rec is None:
        real_lung = segment_lungs(real).lungs
        real_m, real_h = scan_metrics(real, real_lung, findings_mask(real, known_findings(name)))
        ps, matrix = real.spacing[0], real.shape[1]
        kernel, scores = closest_kernel((real_m["nps_peak_cpmm"], real_m["nps_nyquist_ratio"]), ps, matrix)
        noise = estimate_noise(real, real_lung, kernel)
        air = estimate_air_noise(real_m["noise_air_hu"], noise, kernel, ps, matrix)
        rec = {"metrics": real_m, "hist": real_h.tolist(), "kernel": kernel, "kernel_scores": scores, "noise_hu": noise,
               "air_noise": air}
        _save(real_file, rec)
    real_m, real_h = rec["metrics"], np.asarray(rec["hist"])
    kernel, noise, air = rec["kernel"], float(rec["noise_hu"]), float(rec["air_noise"])
    st = float(real.info.slice_thickness or real.spacing[2])
    settings: dict[str, Any] = {"slice_thickness": st, "kernel": kernel, "noise": noise, "air_noise": air}
    # the small preset keeps its own coarse pixels (its 128 x 128 matrix at a real scan's
    # 0.56-0.84 mm would cover only 72-108 mm); the full preset takes all the real settings
    if args.preset == "full":
        settings["pixel_spacing"] = float(real.spacing[0])
    print(f"{name}: {describe(real)}; phantom kernel {kernel} (NPS scores {rec['kernel_scores']}), noise SD {noise:.1f} HU, "
          f"air noise ratio {air:.3f}")
    phantoms: list[dict[str, float]] = []
    for i in range(args.n):
        pkey = hashlib.sha256(f"{key}|{args.seed}|{i}|{args.preset}|{sorted(settings.items())}".encode()).hexdigest()[:16]
        pfile = cache / f"phantom-{name}-{i}-{pkey}.json"
        m = _cached(pfile)
        draw = args.images is not None and i == 0
        if m is not None and not draw:
            phantoms.append({k: float(v) for k, v in m.items()})
            continue
        t0 = time.process_time()
        scan = generate_phantom(args.seed, i, args.preset, **settings)
        cpu = time.process_time() - t0
        lung = segment_lungs(scan.volume).lungs
        if m is None:
            known = pd.DataFrame([f.as_dict() for f in scan.findings], columns=["coordX", "coordY", "coordZ", "diameter_mm"])
            m, h = scan_metrics(scan.volume, lung, findings_mask(scan.volume, known))
            m["lung_hist_w1"] = wasserstein1(h, real_h)
            m["lung_hist_js"] = jensen_shannon(h, real_h)
            m["generate_cpu_s"] = cpu
            _save(pfile, m)
        phantoms.append({k: float(v) for k, v in m.items()})
        print(f"  phantom {i} ({cpu:.1f} s CPU): " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()))
        if draw:
            if real_lung is None:
                real_lung = segment_lungs(real).lungs
            args.images.mkdir(parents=True, exist_ok=True)
            render(real, real_lung, scan.volume, lung, args.images / f"realism_{name}.png",
                   f"real {name}", f"phantom seed {args.seed} index 0")
    md, rows = table(real_m, phantoms)
    return {"name": name, "describe": describe(real), "kernel": kernel, "kernel_scores": rec["kernel_scores"],
            "noise_hu": noise, "settings": settings, "real": real_m, "rows": rows, "table": md}


def main() -> None:
    """Compute the tables and write pictures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", nargs="+", default=list(REAL_SCANS), help="real scans (folders of $NODULE_DATA/real_ct)")
    parser.add_argument("--n", type=int, default=5, help="number of phantoms per real scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="full", choices=["small", "full"])
    parser.add_argument("--out", type=Path, default=None, help="markdown path (JSON next to it); default prints")
    parser.add_argument("--images", type=Path, default=None, help="folder of the realism_<scan>.png pictures")
    args = parser.parse_args()

    cache = cache_dir("realism")
    results = [compare(name, args, cache) for name in args.real]
    cmd = f"python scripts/phantom_realism.py --n {args.n} --seed {args.seed} --preset {args.preset}"
    if list(args.real) != list(REAL_SCANS):
        cmd += " --real " + " ".join(args.real)
    if args.out:
        cmd += f" --out {args.out.as_posix()}" + (f" --images {args.images.as_posix()}" if args.images else "")
    parts = [
        f"Phantoms: {args.n} `{args.preset}` scans per real scan (seed {args.seed}, indices 0-{args.n - 1}), each made "
        "with the real scan's slice thickness, "
        + ("pixel spacing and matrix, " if args.preset == "full" else "(the small preset's own pixels), ")
        + "the phantom kernel whose noise power spectrum is closest to the real one's, the noise SD estimated "
        "from the real scan's subcutaneous fat and the ratio of air noise to body noise estimated from its air. Lung masks of all: `nodule.lung.segment_lungs`; "
        "the lung density rows (HU, histogram, fraction and cross-sections above -500 HU) leave out recorded findings "
        f"and {FINDING_MARGIN_MM:g} mm around them (real: data_manifests/real_ct_known_findings.csv and the LUNA16 tables; "
        "phantom: its findings). "
        "Targets: +-25 % (relative rows), +-50 HU (HU rows), on the mean of the phantoms.\n\n"
        f"`{cmd}`\n"
    ]
    summary = ["| real scan | rows passed |", "|---|---|"]
    for r in results:
        judged = [row for row in r["rows"] if row["result"] in ("pass", "FAIL")]
        failed = [row["label"] for row in judged if row["result"] == "FAIL"]
        summary.append(f"| {r['name']} | {len(judged) - len(failed)} / {len(judged)}" + (f" (fails: {'; '.join(failed)})" if failed else "") + " |")
    parts.append("\n".join(summary) + "\n")
    for r in results:
        s = r["settings"]
        px = f"{s['pixel_spacing']:.3f} mm pixels, " if "pixel_spacing" in s else ""
        pic = f"\n![{r['name']}: real above, phantom 0 below](images/realism_{r['name']}.png)\n" if args.images else ""
        parts.append(
            f"## {r['name']}\n\nReal: {r['describe']}. Phantoms: {s['slice_thickness']:g} mm slices, {px}"
            f"kernel `{r['kernel']}`, noise SD {r['noise_hu']:.1f} HU, air noise ratio {s['air_noise']:.2f}.\n\n{r['table']}\n{pic}"
        )
    text = "\n".join(parts)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out_json = {r["name"]: {k: v for k, v in r.items() if k != "table"} for r in results}
        args.out.with_suffix(".json").write_text(json.dumps({"command": cmd, "scans": out_json}, indent=1))
        notes = NOTES_MARK + "\n"
        if args.out.exists() and NOTES_MARK in args.out.read_text():
            notes = NOTES_MARK + args.out.read_text().split(NOTES_MARK, 1)[1]
        args.out.write_text("# Phantom realism\n\n" + text + "\n" + notes)
    print(text)


if __name__ == "__main__":
    main()
