"""Render the nodules of a ``nodule insert`` output (and its excluded findings) to PNG.

Usage: python scripts/render_insert.py DATASET_DIR OUT.png [--max-rows N]

One row per finding: axial, coronal and sagittal crops (48 mm) through its centre in the
lung window, and the axial crop in the mediastinal window; inserted nodules are titled
with their type and placement, excluded findings with "known".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from nodule.io import Volume, read_volume


def main() -> None:
    """Write the figure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-rows", type=int, default=12)
    args = ap.parse_args()
    manifest = pd.read_csv(args.dataset / "manifest.csv", dtype={"seriesuid": str})
    manifest = manifest.head(args.max_rows)
    fig, axes = plt.subplots(len(manifest), 4, figsize=(10, 2.6 * len(manifest)), squeeze=False)
    cache: dict[str, Volume] = {}
    for row, (_, f) in enumerate(manifest.iterrows()):
        uid = str(f["seriesuid"])
        path = next(args.dataset.glob(f"subset*/{uid}.mhd"))
        vol = cache[uid] if uid in cache else read_volume(path)
        cache = {uid: vol}
        c = np.round(vol.world_to_voxel([[f.coordX, f.coordY, f.coordZ]])[0]).astype(int)
        a = vol.array.astype(np.float32)
        sz, sy, sx = vol.spacing_zyx
        h = (int(24 / sz), int(24 / sy), int(24 / sx))
        lo = [max(c[i] - h[i], 0) for i in range(3)]
        hi = [min(c[i] + h[i] + 1, a.shape[i]) for i in range(3)]
        views = [
            (a[c[0], lo[1] : hi[1], lo[2] : hi[2]], 1.0),
            (a[lo[0] : hi[0], c[1], lo[2] : hi[2]], sz / sx),
            (a[lo[0] : hi[0], lo[1] : hi[1], c[2]], sz / sy),
        ]
        for j, (img, aspect) in enumerate(views):
            axes[row, j].imshow(
                img,
                cmap="gray",
                vmin=-1200,
                vmax=300,
                aspect=aspect,
                origin="lower" if j else "upper",
            )
        axes[row, 3].imshow(views[0][0], cmap="gray", vmin=-160, vmax=240)
        kind = f.get("kind", "nodule")
        label = "known finding" if kind != "nodule" else f"{f.nodule_type} {f.placement}"
        axes[row, 0].set_title(f"{label} d={f.diameter_mm:.1f}", fontsize=8)
        axes[row, 1].set_title(f"scan {f.get('scan_index', '')} coronal", fontsize=8)
        axes[row, 2].set_title("sagittal", fontsize=8)
        axes[row, 3].set_title("mediastinal", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=70)


if __name__ == "__main__":
    main()
