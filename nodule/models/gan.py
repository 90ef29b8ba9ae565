"""A small conditional 3D GAN of lung nodules: generator and discriminator networks only.

The generator makes a nodule as the two arrays of :class:`nodule.data.shapes.RenderedNodule`
on an ``S x S x S`` isotropic cube (spacing ``spacing_mm``, the nodule at the centre):
channel 0 the partial-volume occupancy in [0, 1] (a sigmoid) and channel 1 the HU of the
nodule's own tissue (a tanh scaled to :data:`HU_RANGE`), so a generated nodule is blended
into a scan or a view exactly as an inserted one (:func:`nodule.data.shapes.blend`).

Conditions: the equivalent diameter (mm, continuous) and the texture, an index into
:data:`TEXTURES` (calcified LIDC shapes count as solid, :func:`texture_index`). Both nets
see the diameter twice: as a scalar (``log(d / 10 mm)``) in the conditioning vector, and
as a spatial channel, the distance from the cube centre divided by the requested radius,
minus one (negative inside the requested sphere), concatenated at every resolution. The
spatial channel makes the size condition a local fact the convolutions can read, which is
what lets such small nets learn the size in a few CPU epochs. The discriminator is a
projection discriminator (Miyato & Koyama 2018) with spectral normalisation: its score is
``psi(h) + <embed(texture), h> + <W log(d / 10), h>`` over pooled features ``h``; it sees
the occupancy and the occupancy-weighted HU (the HU outside the nodule means nothing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

TEXTURES: tuple[str, ...] = ("solid", "part-solid", "ground-glass")
"""Texture conditions, by index."""
HU_RANGE: tuple[float, float] = (-800.0, 100.0)
"""HU range of the generator's tissue channel (ground-glass -750 .. solid 60 HU)."""


def texture_index(nodule_type: str) -> int:
    """The texture condition of a nodule type (``"calcified"`` -> solid)."""
    if nodule_type == "calcified":
        return 0
    return TEXTURES.index(nodule_type)


def hu_to_unit(hu: Tensor) -> Tensor:
    """HU mapped linearly from :data:`HU_RANGE` to [-1, 1]."""
    lo, hi = HU_RANGE
    return (hu - (lo + hi) / 2) / ((hi - lo) / 2)


def unit_to_hu(x: Tensor) -> Tensor:
    """The inverse of :func:`hu_to_unit`."""
    lo, hi = HU_RANGE
    return x * ((hi - lo) / 2) + (lo + hi) / 2


def radius_channel(diameter_mm: Tensor, size: int, spacing_mm: float) -> Tensor:
    """``|x| / (d / 2) - 1`` on a ``size``-cube of voxel ``spacing_mm`` centred on the cube centre.

    Args:
        diameter_mm: (B,) requested diameters.
        size: voxels per side.
        spacing_mm: voxel size, mm.

    Returns:
        (B, 1, size, size, size), negative inside the requested sphere, clipped to [-1, 3].
    """
    axis = (torch.arange(size, device=diameter_mm.device, dtype=torch.float32) - (size - 1) / 2) * spacing_mm
    r = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2)
    radius = (diameter_mm.float() / 2).clamp(min=0.5)[:, None, None, None]
    return (r[None] / radius - 1.0).clamp(-1.0, 3.0)[:, None]


def _levels(size: int, n_up: int) -> int:
    if size % (2**n_up):
        raise ValueError(f"cube size {size} must be divisible by 2**{n_up}")
    return int(size // 2**n_up)


class NoduleGenerator(nn.Module):
    """Conditional 3D generator: ``(z, diameter_mm, texture) -> (B, 2, S, S, S)``.

    Args:
        cube_size: voxels per side ``S`` (divisible by ``2 ** n_up``).
        spacing_mm: voxel size of the cube, mm.
        latent_dim: size of ``z``.
        channels: feature channels at the coarsest level (halved at each upsampling, at
            least 8).
        n_up: number of 2x upsamplings (the coarsest level is ``S / 2 ** n_up``).
        embed_dim: size of the texture embedding.
    """

    def __init__(
        self,
        cube_size: int = 16,
        spacing_mm: float = 2.0,
        latent_dim: int = 32,
        channels: int = 64,
        n_up: int = 2,
        embed_dim: int = 8,
    ) -> None:
        super().__init__()
        self.cube_size = cube_size
        self.spacing_mm = spacing_mm
        self.latent_dim = latent_dim
        self.channels = channels
        self.n_up = n_up
        self.embed_dim = embed_dim
        self.base = _levels(cube_size, n_up)
        self.embed = nn.Embedding(len(TEXTURES), embed_dim)
        cond = latent_dim + embed_dim + 1
        self.project = nn.Linear(cond, channels * self.base**3)
        self.blocks = nn.ModuleList()
        self.films = nn.ModuleList()
        c = channels
        for _ in range(n_up):
            out = max(c // 2, 8)
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "conv1": nn.Conv3d(c + 1, out, 3, padding=1),
                        "conv2": nn.Conv3d(out + 1, out, 3, padding=1),
                        "norm": nn.GroupNorm(min(8, out), out, affine=False),
                    }
                )
            )
            self.films.append(nn.Linear(embed_dim + 1, 2 * out))
            c = out
        self.head = nn.Conv3d(c + 1, 2, 3, padding=1)

    def condition(self, diameter_mm: Tensor, texture: Tensor) -> Tensor:
        """(B, embed_dim + 1): texture embedding and ``log(d / 10 mm)``."""
        return torch.cat([self.embed(texture.long()), torch.log(diameter_mm.float()[:, None] / 10.0)], dim=1)

    def forward(self, z: Tensor, diameter_mm: Tensor, texture: Tensor) -> Tensor:
        """Generate nodules.

        Args:
            z: (B, latent_dim) noise.
            diameter_mm: (B,) equivalent diameters, mm.
            texture: (B,) indices into :data:`TEXTURES`.

        Returns:
            (B, 2, S, S, S): occupancy in [0, 1] and tissue HU in :data:`HU_RANGE`.
        """
        cond = self.condition(diameter_mm, texture)
        x = F.leaky_relu(self.project(torch.cat([z, cond], dim=1)), 0.2)
        x = x.view(-1, self.channels, self.base, self.base, self.base)
        size = self.base
        for block, film in zip(self.blocks, self.films, strict=True):
            size *= 2
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            rad = radius_channel(diameter_mm, size, self.spacing_mm * self.cube_size / size)
            x = F.leaky_relu(block["conv1"](torch.cat([x, rad], 1)), 0.2)  # type: ignore[index]
            x = block["norm"](block["conv2"](torch.cat([x, rad], 1)))  # type: ignore[index]
            gamma, beta = film(cond).chunk(2, dim=1)
            x = F.leaky_relu(x * (1 + gamma[..., None, None, None]) + beta[..., None, None, None], 0.2)
        rad = radius_channel(diameter_mm, self.cube_size, self.spacing_mm)
        out = self.head(torch.cat([x, rad], 1))
        occupancy = torch.sigmoid(out[:, :1])
        hu = unit_to_hu(torch.tanh(out[:, 1:]))
        return torch.cat([occupancy, hu], dim=1)

    def config(self) -> dict[str, int | float]:
        """The constructor arguments (plain values, for a weights-only file)."""
        return {
            "cube_size": self.cube_size,
            "spacing_mm": self.spacing_mm,
            "latent_dim": self.latent_dim,
            "channels": self.channels,
            "n_up": self.n_up,
            "embed_dim": self.embed_dim,
        }


class NoduleDiscriminator(nn.Module):
    """Conditional 3D projection discriminator: ``(x, diameter_mm, texture) -> (B,)`` scores.

    Its input is a nodule as the generator makes it, ``(B, 2, S, S, S)`` occupancy and HU;
    it looks at the occupancy and the occupancy-weighted HU (scaled to [-1, 1]) and the
    radius channel of the requested diameter.

    Args:
        cube_size: voxels per side ``S``.
        spacing_mm: voxel size, mm.
        channels: channels of the first convolution (doubled at each stride-2 level).
        n_down: number of stride-2 convolutions.
    """

    def __init__(
        self, cube_size: int = 16, spacing_mm: float = 2.0, channels: int = 16, n_down: int = 2
    ) -> None:
        super().__init__()
        self.cube_size = cube_size
        self.spacing_mm = spacing_mm
        _levels(cube_size, n_down)
        layers: list[nn.Module] = [spectral_norm(nn.Conv3d(3, channels, 3, padding=1)), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(n_down):
            layers += [spectral_norm(nn.Conv3d(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c *= 2
        layers += [spectral_norm(nn.Conv3d(c, c, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.features_dim = c
        self.psi = spectral_norm(nn.Linear(c, 1))
        self.embed = spectral_norm(nn.Embedding(len(TEXTURES), c))
        self.diameter = spectral_norm(nn.Linear(1, c))

    def features(self, x: Tensor, diameter_mm: Tensor) -> Tensor:
        """(B, features_dim) pooled features."""
        occupancy = x[:, :1]
        inputs = torch.cat(
            [
                occupancy * 2 - 1,
                occupancy * hu_to_unit(x[:, 1:]),
                radius_channel(diameter_mm, self.cube_size, self.spacing_mm),
            ],
            dim=1,
        )
        h: Tensor = self.body(inputs).sum(dim=(2, 3, 4)) / math.sqrt(self.cube_size**3)
        return h

    def forward(self, x: Tensor, diameter_mm: Tensor, texture: Tensor) -> Tensor:
        """Realness scores (B,) (hinge loss: > 1 real, < -1 generated)."""
        h = self.features(x, diameter_mm)
        log_d = torch.log(diameter_mm.float()[:, None] / 10.0)
        proj = (self.embed(texture.long()) * h).sum(1) + (self.diameter(log_d) * h).sum(1)
        score: Tensor = self.psi(h).squeeze(1) + proj
        return score
