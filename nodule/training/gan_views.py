"""Generated nodules as multiplanar views, ready to be blended into real context.

A generator file (:func:`export_generator`) holds a trained
:class:`~nodule.models.gan.NoduleGenerator`'s weights and constructor arguments, read back
with ``torch.load(weights_only=True)`` (:func:`load_generator`). :func:`generate_view_bank`
generates 3D nodules and samples their ``n_views`` views, randomly rotated, from each one
cube with the patch kernel (:func:`nodule.patch_cache.sample_cubes`), so the nine views of
a bank item are views of one 3D object. :func:`blend_views` puts such views onto background
views (e.g. the fixed views of negative candidates of the training scans).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from nodule.models.gan import TEXTURES, NoduleGenerator
from nodule.patch_cache import sample_cubes
from nodule.patches import Augment, PatchConfig, PlaneFrames, random_frames
from nodule.paths import atomic_path

GENERATOR_FORMAT = "nodule-gan-generator"
GENERATOR_FORMAT_VERSION = 1
VIEW_AUGMENT = Augment(rotate=True, flip=True, scale_range=(1.0, 1.0), shift_mm=0.0, noise_hu=0.0)
"""How the views of a generated nodule are oriented: a uniform random rotation and mirror."""


@dataclass
class ViewBank:
    """Generated nodules as views.

    Attributes:
        occupancy: (N, V, H, W) float32 occupancy in [0, 1].
        hu: (N, V, H, W) float32 tissue HU (meaningful where occupancy > 0).
        diameter_mm: (N,) float32 conditioned diameters.
        texture: (N,) int64 texture indices (:data:`nodule.models.gan.TEXTURES`).
    """

    occupancy: np.ndarray
    hu: np.ndarray
    diameter_mm: np.ndarray
    texture: np.ndarray

    def __len__(self) -> int:
        return int(self.occupancy.shape[0])


def export_generator(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write a GAN checkpoint's generator as a weights-only file.

    Args:
        checkpoint: a Lightning checkpoint of :class:`nodule.training.gan.NoduleGAN`.
        out_path: the file to write (``.pt``).

    Returns:
        ``out_path``.
    """
    raw = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    hparams: Mapping[str, Any] = raw["hyper_parameters"]
    config = {
        "cube_size": int(hparams["cube_size"]),
        "spacing_mm": float(hparams["spacing_mm"]),
        "latent_dim": int(hparams["latent_dim"]),
        "channels": int(hparams["g_channels"]),
        "n_up": int(hparams["n_levels"]),
    }
    state = {
        k[len("generator.") :]: v for k, v in raw["state_dict"].items() if k.startswith("generator.")
    }
    payload = {
        "format": GENERATOR_FORMAT,
        "format_version": GENERATOR_FORMAT_VERSION,
        "config": config,
        "state_dict": state,
        "checkpoint": str(checkpoint),
        "hyper_parameters": {k: v for k, v in hparams.items() if isinstance(v, int | float | str | bool)},
    }
    out = Path(out_path)
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def load_generator(path: str | Path) -> tuple[NoduleGenerator, dict[str, Any]]:
    """Read a generator file of :func:`export_generator` (``torch.load(weights_only=True)``).

    Returns:
        The generator (eval mode, CPU) and its configuration (constructor arguments).
    """
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping) or raw.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{path}: not a {GENERATOR_FORMAT} file")
    if int(raw.get("format_version", 0)) > GENERATOR_FORMAT_VERSION:
        raise ValueError(f"{path}: format version {raw['format_version']} is newer than this reader")
    config = dict(raw["config"])
    net = NoduleGenerator(**config)
    net.load_state_dict(raw["state_dict"])
    return net.eval(), config


def view_cube_size(cube_size: int, spacing_mm: float, patch: PatchConfig) -> int:
    """Side of the padded cube whose planes (any rotation) stay inside it, same parity as ``cube_size``."""
    corner = (patch.size_px - 1) / 2 * patch.pixel_mm * math.sqrt(2.0)
    need = 2 * math.ceil(corner / spacing_mm + 1) + 1
    size = max(cube_size, need)
    return size + ((size - cube_size) % 2)


def cube_views(
    occupancy: np.ndarray,
    hu: np.ndarray,
    spacing_mm: float,
    patch: PatchConfig,
    frames: PlaneFrames | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The views of nodule cubes (occupancy and HU), centred on the cube centres.

    The cubes are padded (occupancy 0) so that every plane stays inside; the HU of a view
    pixel is the occupancy-weighted HU (``interp(occ * hu) / interp(occ)``), so the HU a
    generator leaves outside its nodule never leaks into the views.

    Args:
        occupancy: (N, S, S, S) occupancy.
        hu: (N, S, S, S) tissue HU.
        spacing_mm: cube voxel size.
        patch: view geometry (``n_views``, ``size_px``, ``fov_mm``).
        frames: N orientations (:func:`nodule.patches.random_frames`); None: standard views.

    Returns:
        ``(occupancy, hu)`` views, each (N, V, H, W) float32.
    """
    occ = np.asarray(occupancy, dtype=np.float32)
    size = occ.shape[1]
    big = view_cube_size(size, spacing_mm, patch)
    pad = (big - size) // 2
    widths = ((0, 0), (pad, pad), (pad, pad), (pad, pad))
    occ_big = np.pad(occ, widths)
    mass_big = np.pad(occ * np.asarray(hu, dtype=np.float32), widths)
    occ_v = sample_cubes(occ_big, spacing_mm, patch, frames, scaled=False)
    mass_v = sample_cubes(mass_big, spacing_mm, patch, frames, scaled=False)
    occ_v = np.clip(occ_v, 0.0, 1.0)
    hu_v = np.where(occ_v > 1e-4, mass_v / np.maximum(occ_v, 1e-4), 0.0).astype(np.float32)
    return occ_v.astype(np.float32), hu_v


def _broadcast(values: npt.ArrayLike | float, n: int, dtype: type) -> np.ndarray:
    arr: np.ndarray = np.asarray(values, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"expected a scalar or {n} values, got shape {arr.shape}")
    return arr


@torch.no_grad()
def generate_cubes(
    generator: NoduleGenerator,
    diameters_mm: npt.ArrayLike,
    textures: npt.ArrayLike,
    seed: int,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """3D nodules of the given conditions: ``(occupancy, hu)``, each (N, S, S, S) float32."""
    d = torch.as_tensor(np.asarray(diameters_mm, dtype=np.float32))
    t = torch.as_tensor(np.asarray(textures, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(d), generator.latent_dim, generator=gen)
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    outs = [
        generator(z[i : i + batch_size].to(device), d[i : i + batch_size].to(device), t[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(d), batch_size)
    ]
    generator.train(was_training)
    out = torch.cat(outs).numpy() if outs else np.zeros((0, 2, *(generator.cube_size,) * 3), np.float32)
    return out[:, 0].astype(np.float32), out[:, 1].astype(np.float32)


def generate_view_bank(
    generator: NoduleGenerator,
    n: int,
    diameters_mm: Sequence[float] | npt.ArrayLike | float,
    textures: Sequence[int] | npt.ArrayLike | int,
    patch: PatchConfig,
    seed: int,
) -> ViewBank:
    """Generate ``n`` 3D nodules and sample each one's views, randomly rotated, from its cube.

    Args:
        generator: a trained generator.
        n: number of nodules.
        diameters_mm: their diameters (one value or ``n``).
        textures: their texture indices into :data:`~nodule.models.gan.TEXTURES` (one value or ``n``).
        patch: the classifier's view geometry (``n_views``, ``size_px``, ``fov_mm``).
        seed: noise and rotations (same seed, same bank).

    Returns:
        The bank; item ``i``'s views are views of the one nodule ``i``, all rotated by one
        random rotation and mirror (:data:`VIEW_AUGMENT`).
    """
    d = _broadcast(diameters_mm, n, np.float32)
    t = _broadcast(textures, n, np.int64)
    if n and (t.min() < 0 or t.max() >= len(TEXTURES)):
        raise ValueError(f"texture indices must lie in 0..{len(TEXTURES) - 1}")
    occ, hu = generate_cubes(generator, d, t, seed)
    frames = random_frames(n, patch, VIEW_AUGMENT, np.random.default_rng(seed))
    occ_v, hu_v = cube_views(occ, hu, generator.spacing_mm, patch, frames)
    return ViewBank(occupancy=occ_v, hu=hu_v, diameter_mm=d, texture=t)


def blend_views(background_hu: np.ndarray, occupancy: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Blend nodule views into background views: ``base + occ * max(hu - base, 0)`` per pixel.

    The rule of :func:`nodule.data.shapes.blend`: the nodule replaces aerated lung and
    never lowers the HU of denser tissue (vessel, wall) it overlaps; where the occupancy
    is 0 the background is left as it is. The rule is pointwise, so it commutes with plane
    sampling: blending the views of a nodule into the views of a background gives the views
    of the blended volume (up to the interpolation of the two inputs at each point).

    Args:
        background_hu: (..., V, H, W) background views, HU (int16 or float).
        occupancy: (..., V, H, W) nodule occupancy in [0, 1] (broadcastable).
        hu: (..., V, H, W) nodule tissue HU.

    Returns:
        float32 HU views, the broadcast shape.
    """
    base = np.asarray(background_hu, dtype=np.float32)
    occ = np.asarray(occupancy, dtype=np.float32)
    out: np.ndarray = base + occ * np.maximum(np.asarray(hu, dtype=np.float32) - base, 0.0)
    return out.astype(np.float32, copy=False)
