"""Render a lung mask over a CT to PNG: axial slices at several levels and a coronal view.

Usage:
    python scripts/render_lung_mask.py [CT path: DICOM folder, .mhd, .nii.gz] [--out PNG]

Without a path the shared real CT is used. Prints the lung volumes and the time taken.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from nodule import io
from nodule.lung import LungMask, segment_lungs
from nodule.paths import cache_dir, real_ct_dir


def load(path: Path) -> io.Volume:
    """Read a CT with nodule.io.read_volume when it exists, else with SimpleITK."""
    reader = getattr(io, "read_volume", None)
    if reader is not None:
        volume: io.Volume = reader(path)
        return volume
    if path.is_dir():
        series = sitk.ImageSeriesReader()
        uid = series.GetGDCMSeriesIDs(str(path))[0]
        series.SetFileNames(series.GetGDCMSeriesFileNames(str(path), uid))
        return io.Volume.from_sitk(series.Execute(), io.SeriesInfo(series_uid=uid))
    name = path.name.removesuffix(".gz").rsplit(".", 1)[0]
    return io.Volume.from_sitk(sitk.ReadImage(str(path)), io.SeriesInfo(series_uid=name))


def render(volume: io.Volume, mask: LungMask, out: Path, levels: int = 8) -> None:
    """Axial slices at ``levels`` evenly spaced levels through the lungs plus a coronal view."""
    array = volume.array
    zs = np.flatnonzero(mask.lungs.any(axis=(1, 2)))
    picks = (
        np.linspace(zs.min(), zs.max(), levels).round().astype(int)
        if zs.size
        else np.arange(levels)
    )
    colours = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.35], [0.2, 0.5, 1, 0.35]])
    cols = 4
    rows = int(np.ceil((levels + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4.5 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, z in zip(axes.flat, picks, strict=False):
        ax.imshow(array[z], cmap="gray", vmin=-1000, vmax=400)
        ax.imshow(colours[mask.labels[z]])
        ax.contour(mask.airway[z], levels=[0.5], colors="yellow", linewidths=0.8)
        world_z = volume.voxel_to_world([[z, 0, 0]])[0, 2]
        ax.set_title(f"slice {z}  z={world_z:.1f} mm")
    y = int(np.argmax(mask.lungs.sum(axis=(0, 2))))
    ax = axes.flat[len(picks)]
    aspect = volume.spacing[2] / volume.spacing[0]
    ax.imshow(array[:, y, :], cmap="gray", vmin=-1000, vmax=400, origin="lower", aspect=aspect)
    ax.imshow(colours[mask.labels[:, y, :]], origin="lower", aspect=aspect)
    ax.contour(mask.airway[:, y, :], levels=[0.5], colors="yellow", linewidths=0.8)
    ax.set_title(f"coronal row y={y}  R={mask.right_ml:.0f} ml  L={mask.left_ml:.0f} ml")
    fig.suptitle("red: right lung (image left), blue: left lung, yellow: airway")
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    plt.close(fig)


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=real_ct_dir())
    parser.add_argument("--out", type=Path, default=cache_dir("figures") / "lung_mask.png")
    args = parser.parse_args()
    volume = load(args.path)
    start = time.perf_counter()
    mask = segment_lungs(volume)
    elapsed = time.perf_counter() - start
    render(volume, mask, args.out)
    print(
        f"{volume.shape} spacing {volume.spacing}: right {mask.right_ml:.0f} ml, "
        f"left {mask.left_ml:.0f} ml, total {mask.total_ml:.0f} ml in {elapsed:.2f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
