"""Render LIDC bank shapes and rendered nodules (each type, two grids) to PNG for inspection.

Usage: python scripts/render_shapes.py OUT_DIR [--max-patients N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nodule.data.shapes import NODULE_TYPES, blend, load_shape_bank, random_rotation, render_nodule
from nodule.io import Volume


def main() -> None:
    """Write shapes_bank.png (native shapes, central slices) and shapes_rendered.png (each type, two grids)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-patients", type=int, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bank = load_shape_bank("synth", max_patients=args.max_patients)
    rng = np.random.default_rng(0)
    picks = [bank.sample(rng) for _ in range(8)]
    fig, axes = plt.subplots(3, 8, figsize=(16, 6))
    for j, s in enumerate(picks):
        c = np.array(s.mask.shape) // 2
        for i, img in enumerate([s.mask[c[0]], s.mask[:, c[1]], s.mask[:, :, c[2]]]):
            axes[i, j].imshow(img, cmap="gray", interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(
            f"{s.patient_id[-4:]} d={s.diameter_mm:.1f}\n{s.nodule_type}", fontsize=8
        )
    fig.savefig(args.out / "shapes_bank.png", dpi=80)
    plt.close(fig)

    grids = {"0.7x0.7x2.5": (0.7, 0.7, 2.5), "0.5 iso": (0.5, 0.5, 0.5)}
    fig, axes = plt.subplots(4, 6, figsize=(15, 10))
    shape = bank.sample(rng, diameter_mm=15.0)
    for i, t in enumerate(NODULE_TYPES):
        for g, (name, sp) in enumerate(grids.items()):
            n = (int(40 / sp[2]), int(40 / sp[1]), int(40 / sp[0]))
            base = np.full(n, -850.0, np.float32) + rng.normal(0, 30, n).astype(np.float32)
            base[:, :, n[2] // 2 - 1 : n[2] // 2 + 2] = 40.0  # a vessel along y at x centre
            vol = Volume(base, sp, (0.0, 0.0, 0.0))
            ctr = (20.0 + 3.0, 20.0, 20.0)
            r = render_nodule(
                shape, 15.0, t, random_rotation(np.random.default_rng(1)), ctr, vol, rng
            )
            out = blend(base, r)
            zc = round(float(vol.world_to_voxel([ctr])[0, 0]))
            axes[i, 3 * g].imshow(out[zc], cmap="gray", vmin=-1000, vmax=400)
            axes[i, 3 * g].set_title(f"{t} {name} axial", fontsize=8)
            axes[i, 3 * g + 1].imshow(
                out[:, n[1] // 2], cmap="gray", vmin=-1000, vmax=400, aspect=sp[2] / sp[0]
            )
            axes[i, 3 * g + 1].set_title("coronal", fontsize=8)
            axes[i, 3 * g + 2].imshow(r.occupancy[r.occupancy.shape[0] // 2], vmin=0, vmax=1)
            axes[i, 3 * g + 2].set_title("occupancy", fontsize=8)
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / "shapes_rendered.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
