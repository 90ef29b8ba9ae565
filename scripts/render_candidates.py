"""Render candidates over a CT at three axial levels to a PNG.

Usage:
    python scripts/render_candidates.py STUDY [--candidates CSV] [--out PNG] [--levels Z1 Z2 Z3]

STUDY is anything :func:`nodule.io.read_volume` reads. Without ``--candidates`` the
candidates are detected here. Each candidate within half its diameter (at least 3 mm)
of a shown slice is drawn as a circle of its diameter, coloured by detector (solid
red, subsolid cyan, large solid yellow, several: magenta), with its rank. Levels are
world z in mm; by default the slices holding the three best candidates. Findings of
``data_manifests/real_ct_known_findings.csv`` for the study are marked with a green
cross.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Circle

from nodule.candidates import detect_candidates
from nodule.io import read_volume

COLOURS = {"solid": "red", "subsolid": "cyan", "large_solid": "yellow"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--candidates", type=Path)
    parser.add_argument("--out", type=Path, default=Path("candidates.png"))
    parser.add_argument("--levels", type=float, nargs=3)
    parser.add_argument("--findings", type=Path, default=Path("data_manifests/real_ct_known_findings.csv"))
    args = parser.parse_args()

    volume = read_volume(args.study)
    if args.candidates:
        table = pd.read_csv(args.candidates, dtype={"seriesuid": str})
        table = table[table["seriesuid"] == volume.series_uid].reset_index(drop=True)
    else:
        table = detect_candidates(volume).candidates
    findings = pd.DataFrame()
    if args.findings.exists():
        findings = pd.read_csv(args.findings, dtype={"seriesuid": str})
        findings = findings[findings["seriesuid"] == volume.series_uid]
    levels = list(args.levels) if args.levels else list(table["coordZ"].iloc[:3])
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.4))
    ps = volume.spacing[0]
    for ax, z_mm in zip(axes, levels, strict=False):
        k = round(float(volume.world_to_voxel([[0.0, 0.0, z_mm]])[0, 0]))
        k = int(np.clip(k, 0, volume.shape[0] - 1))
        ax.imshow(volume.array[k], cmap="gray", vmin=-1200, vmax=400)
        z_here = float(volume.voxel_to_world([[k, 0, 0]])[0, 2])
        for rank, c in table.iterrows():
            dz = abs(c["coordZ"] - z_here)
            if dz > max(3.0, c["diameter_mm"] / 2):
                continue
            dets = str(c["detectors"]).split("+")
            colour = COLOURS.get(dets[0], "white") if len(dets) == 1 else "magenta"
            r_pix = max(2.0, np.sqrt(max((c["diameter_mm"] / 2) ** 2 - dz**2, 1.0)) / ps) + 3
            ax.add_patch(Circle((c["voxelX"], c["voxelY"]), r_pix, fill=False, color=colour, lw=1.2))
            ax.text(c["voxelX"] + r_pix, c["voxelY"] - r_pix, str(rank), color=colour, fontsize=7)
        for _, f in findings.iterrows():
            v = volume.world_to_voxel([[f["coordX"], f["coordY"], f["coordZ"]]])[0]
            if abs(f["coordZ"] - z_here) <= f["diameter_mm"] / 2:
                ax.plot(v[2], v[1], "+", color="lime", ms=14, mew=2)
        ax.set_title(f"z = {z_here:.1f} mm (slice {k})")
        ax.axis("off")
    counts = table["detectors"].value_counts().to_dict() if len(table) else {}
    fig.suptitle(
        f"{len(table)} candidates {counts}  (red solid, cyan subsolid, yellow large solid, magenta merged; rank = label)",
        fontsize=10,
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
