"""Pictures of volumes with findings and candidates (matplotlib, Agg backend).

Pictures carry only the study's id (a SeriesInstanceUID or a public pseudonym), never
patient-identifying tags.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from nodule.io import Volume

LUNG_WINDOW = (-1350.0, 150.0)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Write a figure as PNG to ``path`` (parents created; any suffix, e.g. a temporary
    file's), close it and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out


def _axial_image(volume: Volume, z_index: int) -> np.ndarray:
    return np.asarray(volume.array[int(np.clip(z_index, 0, volume.shape[0] - 1))], dtype=np.float32)


def _extent(volume: Volume) -> tuple[float, float, float, float]:
    """imshow extent (mm) for axial slices: x across, y down, relative to voxel 0."""
    sx, sy = volume.spacing[0], volume.spacing[1]
    ny, nx = volume.shape[1], volume.shape[2]
    return (-0.5 * sx, (nx - 0.5) * sx, (ny - 0.5) * sy, -0.5 * sy)


def render_findings(
    volume: Volume,
    findings: pd.DataFrame,
    path: str | Path,
    *,
    crop_mm: float = 60.0,
    max_panels: int = 8,
    window: tuple[float, float] = LUNG_WINDOW,
) -> Path:
    """Axial close-ups through each finding, circled at its diameter, plus a coronal overview.

    Args:
        volume: the scan.
        findings: rows with ``coordX, coordY, coordZ, diameter_mm`` and optionally ``label``.
        path: PNG to write.
        crop_mm: side of each close-up.
        max_panels: at most this many close-ups.
        window: HU display window.

    Returns:
        The PNG path.
    """
    rows = findings.head(max_panels)
    n = len(rows) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.3), squeeze=False)
    centre_zyx = np.array(volume.shape) // 2
    coronal = np.asarray(volume.array[:, centre_zyx[1], :], dtype=np.float32)
    ax0 = axes[0, 0]
    aspect = volume.spacing[2] / volume.spacing[0]
    ax0.imshow(coronal, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin="lower")
    ax0.set_title(f"coronal, {volume.shape[0]} slices", fontsize=8)
    if len(rows):
        vox = volume.world_to_voxel(rows[["coordX", "coordY", "coordZ"]].to_numpy(float))
        ax0.plot(vox[:, 2], vox[:, 0], "r+", markersize=8)
    for ax in axes[0]:
        ax.set_axis_off()
    for i, (_, row) in enumerate(rows.iterrows()):
        z, y, x = volume.world_to_voxel([[row.coordX, row.coordY, row.coordZ]])[0]
        ax = axes[0, i + 1]
        half_y = crop_mm / 2 / volume.spacing[1]
        half_x = crop_mm / 2 / volume.spacing[0]
        image = _axial_image(volume, round(z))
        y0, y1 = int(max(0, y - half_y)), int(min(image.shape[0], y + half_y))
        x0, x1 = int(max(0, x - half_x)), int(min(image.shape[1], x + half_x))
        ax.imshow(image[y0:y1, x0:x1], cmap="gray", vmin=window[0], vmax=window[1])
        radius_px = max(float(row.diameter_mm), 1.0) / 2 / volume.spacing[0]
        ax.add_patch(Circle((x - x0, y - y0), radius_px * 1.6, fill=False, color="r", lw=0.8))
        label = str(row["label"]) if "label" in row.index else ""
        ax.set_title(f"{label} d={row.diameter_mm:.1f} mm", fontsize=8)
    fig.suptitle(volume.series_uid[-24:], fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi=90)


def render_candidates(
    volume: Volume,
    candidates: pd.DataFrame,
    path: str | Path,
    *,
    findings: pd.DataFrame | None = None,
    levels: int = 3,
    slab_mm: float = 5.0,
    window: tuple[float, float] = LUNG_WINDOW,
) -> Path:
    """Full axial slices at ``levels`` heights with candidates (yellow) and findings (red).

    Candidates within ``slab_mm`` of a slice are drawn on it, sized by their diameter.
    Slices are chosen where the candidates are densest, or through the findings if given.

    Args:
        volume: the scan.
        candidates: rows with ``coordX, coordY, coordZ`` and optionally ``diameter_mm``.
        path: PNG to write.
        findings: reference findings to circle in red (``coordX..Z, diameter_mm``).
        levels: number of axial slices.
        slab_mm: half-thickness of the slab whose candidates are drawn on a slice.
        window: HU display window.

    Returns:
        The PNG path.
    """
    cand_vox = volume.world_to_voxel(candidates[["coordX", "coordY", "coordZ"]].to_numpy(float))
    find_vox = (
        volume.world_to_voxel(findings[["coordX", "coordY", "coordZ"]].to_numpy(float))
        if findings is not None and len(findings)
        else np.zeros((0, 3))
    )
    zs: list[int] = [int(v) for v in np.round(find_vox[:levels, 0])]
    nz = volume.shape[0]
    for q in np.linspace(0.3, 0.7, levels):
        if len(zs) >= levels:
            break
        zs.append(int(q * nz))
    dz = volume.spacing[2]
    fig, axes = plt.subplots(1, len(zs), figsize=(5.0 * len(zs), 5.3), squeeze=False)
    for ax, z in zip(axes[0], zs, strict=True):
        ax.imshow(_axial_image(volume, z), cmap="gray", vmin=window[0], vmax=window[1])
        near = np.abs(cand_vox[:, 0] - z) * dz <= slab_mm
        diam = candidates["diameter_mm"].to_numpy(float) if "diameter_mm" in candidates else None
        for k in np.flatnonzero(near).tolist():
            r = (diam[k] if diam is not None else 6.0) / 2 / volume.spacing[0] + 3
            ax.add_patch(Circle((cand_vox[k, 2], cand_vox[k, 1]), r, fill=False, color="y", lw=0.7))
        if findings is not None:
            for j in range(len(find_vox)):
                if abs(find_vox[j, 0] - z) * dz <= slab_mm:
                    r = float(findings["diameter_mm"].iloc[j]) / 2 / volume.spacing[0] + 6
                    ax.add_patch(
                        Circle((find_vox[j, 2], find_vox[j, 1]), r, fill=False, color="r", lw=1.2)
                    )
        ax.set_title(f"slice {z}: {int(near.sum())} candidates within {slab_mm:g} mm", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path, dpi=80)


def render_finding(
    volume: Volume,
    center_xyz: tuple[float, float, float],
    diameter_mm: float,
    path: str | Path,
    *,
    title: str = "",
    fov_mm: float | None = None,
    size_px: int = 160,
    window: tuple[float, float] = LUNG_WINDOW,
) -> Path:
    """Axial, coronal and sagittal crops through one finding at lung window, the finding circled.

    The three planes are sampled in world space (:func:`nodule.patches.extract_patches`,
    square pixels whatever the slice thickness), radiological orientation: patient left
    on the image's right, anterior (axial) or superior (coronal, sagittal) at the top.

    Args:
        volume: the scan in HU.
        center_xyz: the finding's centre, world mm.
        diameter_mm: its estimated diameter (the circle is 1.5 times larger, at least 8 mm).
        path: PNG to write.
        title: a line above the panels (no patient identifiers).
        fov_mm: side of each crop; default four times the diameter, 40 to 120 mm.
        size_px: pixels per side of each crop.
        window: HU display window.

    Returns:
        The PNG path.
    """
    from nodule.patches import PatchConfig, extract_patches

    side = fov_mm if fov_mm is not None else float(np.clip(4.0 * diameter_mm, 40.0, 120.0))
    config = PatchConfig(n_views=3, size_px=size_px, fov_mm=side)
    views = extract_patches(volume, np.asarray([center_xyz], float), config, scaled=False)[0]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.9))
    radius_px = max(1.5 * diameter_mm, 8.0) / 2 / config.pixel_mm
    centre = (size_px - 1) / 2
    for ax, view, name in zip(axes, views, ("axial", "coronal", "sagittal"), strict=True):
        ax.imshow(view, cmap="gray", vmin=window[0], vmax=window[1])
        ax.add_patch(Circle((centre, centre), radius_px, fill=False, color="r", lw=1.0))
        ax.set_title(f"{name}, {side:.0f} mm", fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    # fixed margins: tight_layout would measure every text (half the time of a picture)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.84, wspace=0.04)
    return _save(fig, path, dpi=80)
