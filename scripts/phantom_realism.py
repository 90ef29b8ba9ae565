"""Side-by-side pictures of phantom scans and the shared real chest CT, for looking at realism.

Writes, for each seed, one PNG with two rows (real CT / phantom): axial through a
nodule (or mid-lung), coronal and sagittal, at lung window (-1350..150 HU), plus a
zoomed axial of the right lung, and prints lung HU statistics of both and a vessel
census: per axial slice of the middle 60% of the lungs, the blobs above -500 HU inside
the lung (vessel cross-sections and crossings, the detector's false positives), their
number per 100 cm^2 of lung and their equivalent diameters. With ``--match-real`` the
phantom uses the real scan's settings (3 mm, 0.564 mm pixels, sharp kernel).

    python scripts/phantom_realism.py --out /tmp/realism --seeds 0 1 2 --preset full --match-real
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
from scipy import ndimage

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nodule.data.phantom import generate_phantom
from nodule.io import Volume, read_volume
from nodule.paths import real_ct_dir

WINDOW = (-1350, 150)


def _views(ax_row: np.ndarray, vol: Volume, z: int, title: str) -> None:
    a = vol.array.astype(np.float32)
    sx, sy, sz = vol.spacing
    ax_row[0].imshow(a[z], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    ax_row[0].set_title(f"{title} axial z={z}")
    ax_row[1].imshow(a[:, a.shape[1] // 2][::-1], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sz / sx)
    ax_row[1].set_title("coronal")
    ax_row[2].imshow(a[:, :, int(a.shape[2] * 0.32)][::-1], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sz / sy)
    ax_row[2].set_title("sagittal (right lung)")
    n = a.shape[2]
    ax_row[3].imshow(a[z, n // 4 : 3 * n // 4, n // 10 : n // 2], cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
    ax_row[3].set_title("axial zoom, right lung")
    for ax in ax_row:
        ax.set_axis_off()


def vessel_census(vol: Volume, lung: np.ndarray) -> dict[str, float]:
    """Bright blobs (> -500 HU) inside the lung per axial slice: count per 100 cm^2 and calibre."""
    a = ndimage.gaussian_filter(vol.array.astype(np.float32), (0, 0.7, 0.7))
    inner = ndimage.binary_erosion(lung, iterations=3)
    ps = vol.spacing[0]
    area = inner.sum(axis=(1, 2))
    zs = np.nonzero(area > 0.3 * area.max())[0]
    counts, diam = [], []
    for z in zs[len(zs) // 5 : 4 * len(zs) // 5]:
        region = ndimage.binary_fill_holes(inner[z])
        lab, _ = ndimage.label((a[z] > -500) & region)
        d = 2 * np.sqrt(np.bincount(lab.ravel())[1:] * ps * ps / np.pi)
        d = d[d >= 1.0]
        counts.append(len(d) / (region.sum() * ps * ps / 1e4))
        diam.extend(d.tolist())
    dd = np.asarray(diam)
    return {
        "blobs_per_100cm2": float(np.median(counts)),
        "d_median_mm": float(np.median(dd)),
        "d_p95_mm": float(np.percentile(dd, 95)),
        "frac_over_3mm": float((dd > 3).mean()),
    }


def main() -> None:
    """Render the comparison pictures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--preset", default="full", choices=["small", "full"])
    parser.add_argument("--slice-thickness", type=float, default=None)
    parser.add_argument("--kernel", default=None)
    parser.add_argument("--match-real", action="store_true", help="3 mm, 0.564 mm, sharp kernel, 30 HU")
    args = parser.parse_args()
    from nodule.lung import segment_lungs

    args.out.mkdir(parents=True, exist_ok=True)
    real = read_volume(real_ct_dir())
    ra = real.array
    print("real: lung HU percentiles 5/50/95:", np.percentile(ra[(ra > -950) & (ra < -600)], [5, 50, 95]))
    print("real: vessel census", vessel_census(real, segment_lungs(real).lungs))
    fixed = {"slice_thickness": args.slice_thickness, "kernel": args.kernel}
    if args.match_real:
        fixed = {"slice_thickness": 3.0, "pixel_spacing": 0.564, "kernel": "sharp", "noise": 30.0}
    for seed in args.seeds:
        scan = generate_phantom(seed, 0, args.preset, **fixed)
        vol = scan.volume
        nod = [f for f in scan.findings if f.kind == "nodule"]
        z = int(np.rint(vol.world_to_voxel(nod[0].center_xyz)[0, 0])) if nod else int(vol.shape[0] * 0.55)
        fig, axes = plt.subplots(2, 4, figsize=(24, 12))
        _views(axes[0], real, int(real.shape[0] * 0.45), "real CT")
        _views(axes[1], vol, z, f"phantom seed {seed} {scan.scanner.kernel} {scan.scanner.slice_thickness} mm")
        plt.tight_layout()
        path = args.out / f"realism_{args.preset}_{seed}.png"
        plt.savefig(path, dpi=55)
        plt.close(fig)
        lung = vol.array[scan.lung > 0]
        print(f"seed {seed}: {path}; lung HU 5/50/95: {np.percentile(lung, [5, 50, 95])}; findings: {[(f.kind, f.attachment, round(f.diameter_mm, 1)) for f in scan.findings]}")
        print(f"seed {seed}: vessel census (generator lung label)", vessel_census(vol, scan.lung > 0))


if __name__ == "__main__":
    main()
