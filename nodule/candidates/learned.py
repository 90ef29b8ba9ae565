"""Learned candidate detector: a small 3D fully convolutional network over the working grid.

Session 14 found the hand-made detectors' last misses to be small faint ground glass
(3.9-7.2 mm, 68-130 HU over the parenchyma): thresholds, blob measures and contrast
peaks cannot tell them from vessel tips and partial-volume rims of the same density and
size. This detector learns that distinction from examples. It reads the 1 mm working
grid of :func:`~nodule.candidates.detect.detect_candidates` (HU clipped to
[-1024, 400]) and outputs, on a 4 mm grid of cells, a nodule logit and the nodule
centre's offset from the cell centre:

    conv 3^3 stride 2 (1 -> c1, 2 mm), conv 3^3 (c1 -> c2), conv 3^3 stride 2 (c2 -> c3,
    4 mm), conv 3^3 (c3 -> c3), conv 3^3 dilation 2 (c3 -> c3), conv 1^3 (c3 -> 4)

with batch normalisation and ReLU after each hidden layer; the receptive field is 35 mm.
Cell ``i`` of an axis is centred on working voxel ``4 i``. Detections are the cells
that are local maxima of the probability over their 26 neighbours, touch the lung, and
reach ``min_probability``; the best ``max_candidates`` are kept, centred at cell centre
plus offset.

Weights (a ``detector.pt``: state dict, channels and provenance) are trained by
``scripts/train_candidate_detector.py`` on the train-role scans of the split's
``detector`` learner (:func:`training_target` defines what the outputs learn). None ship
yet (the detector is off by default): the first trainings found the nodules of 5.5 mm and
more as well as the hand-made detectors do but not the small faint ground glass they
miss (``docs/results.md``, session 15). ``weights="default"`` reads ``detector.pt``
beside this module once one is shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from torch import nn

from nodule.candidates.features import detections_frame, region_features

DEFAULT_DETECTOR = Path(__file__).with_name("detector.pt")
CELL = 4
"""Working voxels per output cell along each axis (two stride-2 layers)."""
HU_RANGE = (-1024.0, 400.0)
LEARNED_SPACING_MM = 1.0
"""The working grid's voxel size the network was made for (isotropic)."""


@dataclass(frozen=True)
class LearnedConfig:
    """Parameters of the learned detector.

    Attributes:
        weights: ``"default"`` (the shipped ``detector.pt``), the path of other weights,
            or None: the detector does not run.
        max_candidates: the best this many peaks of a study are kept.
        min_probability: peaks below this probability are dropped.
        region_hu: the features (diameter, volume, mean HU, elongation) are those of the
            component above this HU at the centre (:func:`~nodule.candidates.features.region_features`).
        region_radius_mm: ... cut to a ball of this radius.
    """

    weights: str | None = None
    max_candidates: int = 30
    min_probability: float = 0.02
    region_hu: float = -750.0
    region_radius_mm: float = 8.0


class CandidateNet(nn.Module):
    """The detector's network (see the module docstring)."""

    def __init__(self, channels: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.channels = (c1, c2, c3)

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
            conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
            return [conv, nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, c1, stride=2),
            *block(c1, c2),
            *block(c2, c3, stride=2),
            *block(c3, c3),
            *block(c3, c3, dilation=2),
        )
        self.head = nn.Conv3d(c3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) scaled HU -> (B, 4, Z/4, Y/4, X/4): logit and (dz, dy, dx) in cells."""
        out: torch.Tensor = self.head(self.body(x))
        return out


def scale_hu(array: np.ndarray | torch.Tensor) -> Any:
    """HU -> the network's input scale (clipped to :data:`HU_RANGE`, lung about -1)."""
    lo, hi = HU_RANGE
    if isinstance(array, torch.Tensor):
        return (array.clamp(lo, hi) + 400.0) / 400.0
    return (np.clip(array, lo, hi).astype(np.float32) + 400.0) / 400.0


def save_detector(net: CandidateNet, path: str | Path, info: dict[str, Any]) -> Path:
    """Write the weights, channels and provenance ``info`` (plain values) to ``path``."""
    payload = {"state_dict": net.state_dict(), "channels": list(net.channels), "info": info}
    torch.save(payload, Path(path))
    return Path(path)


@lru_cache(maxsize=4)
def load_detector(path: str | None = None) -> tuple[CandidateNet, dict[str, Any]]:
    """The network of ``path`` (default the shipped weights) in eval mode, and its provenance.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not detector weights.
    """
    file = Path(path) if path is not None else DEFAULT_DETECTOR
    if not file.is_file():
        raise FileNotFoundError(f"candidate detector weights not found: {file}")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"state_dict", "channels"} <= set(payload):
        raise ValueError(f"{file} is not candidate detector weights (no state_dict and channels)")
    net = CandidateNet(payload["channels"])
    net.load_state_dict(payload["state_dict"])
    net.eval()
    # channels-last 3D convolutions run about a third faster on CPU (oneDNN)
    net = net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return net, dict(payload.get("info", {}))


def detector_trained_on(path: str | Path | None = None) -> list[str] | None:
    """The scans the detector at ``path`` (default the shipped one) records having been
    trained on (``info.trained_on_uids``); None when it records none or does not exist."""
    file = Path(path) if path is not None else DEFAULT_DETECTOR
    if not file.is_file():
        return None
    uids = load_detector(str(file))[1].get("trained_on_uids")
    return [str(u) for u in uids] if uids is not None else None


def predict(net: CandidateNet, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability (Zc, Yc, Xc) and centre offsets (3, Zc, Yc, Xc), in working voxels, of
    each cell of a HU volume on the 1 mm working grid."""
    pad = [(0, (-n) % CELL) for n in array.shape]
    scaled: np.ndarray = scale_hu(array)
    x = np.pad(scaled, pad, mode="constant", constant_values=(HU_RANGE[0] + 400.0) / 400.0)
    with torch.inference_mode():
        inputs = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(memory_format=torch.channels_last_3d)
        out = net(inputs)[0].contiguous().numpy()
    return 1.0 / (1.0 + np.exp(-out[0].astype(np.float64))), out[1:].astype(np.float64) * CELL


def lung_cells(lungs: np.ndarray, cell_shape: Sequence[int]) -> np.ndarray:
    """Cells (of :data:`CELL` working voxels) that hold a lung voxel."""
    pad = [(0, c * CELL - n) for n, c in zip(lungs.shape, cell_shape, strict=True)]
    # cell i is centred on voxel 4i; blocks of voxels 4i .. 4i+3 of the mask grown by one
    # voxel hold every lung voxel within 1-3 voxels of that centre
    grown = np.pad(np.asarray(lungs, bool), pad)
    grown = ndi.binary_dilation(grown, np.ones((3, 3, 3), bool))
    blocks = grown.reshape(cell_shape[0], CELL, cell_shape[1], CELL, cell_shape[2], CELL)
    cells: np.ndarray = blocks.any(axis=(1, 3, 5))
    return cells


def detect_learned(
    array: np.ndarray,
    lungs: np.ndarray,
    spacing_zyx: Sequence[float],
    config: LearnedConfig = LearnedConfig(),
) -> pd.DataFrame:
    """Detections of the learned detector on the working grid.

    Args:
        array: HU on the 1 mm isotropic working grid (z, y, x).
        lungs: lung mask on that grid.
        spacing_zyx: the grid's voxel size; must be 1 mm (the network's scale).
        config: parameters.

    Returns:
        Detections (:data:`~nodule.candidates.features.DETECTION_COLUMNS`, detector
        ``learned``, ``score`` the probability), best first.

    Raises:
        ValueError: a working grid other than 1 mm isotropic.
    """
    if not np.allclose(spacing_zyx, LEARNED_SPACING_MM, atol=1e-3):
        raise ValueError(f"the learned detector works on a 1 mm grid, got spacing {tuple(spacing_zyx)}")
    if config.weights is None:
        return detections_frame([], "learned")
    net, _ = load_detector(None if config.weights == "default" else config.weights)
    prob, offset = predict(net, array)
    peak = (prob == ndi.maximum_filter(prob, size=3, mode="constant", cval=0.0)) & (prob >= config.min_probability)
    peak &= lung_cells(lungs, prob.shape)
    cells = np.argwhere(peak)
    order = np.argsort(-prob[peak], kind="stable")[: config.max_candidates]
    rows = []
    upper = np.asarray(array.shape, dtype=np.float64) - 1.0
    for i in order:
        c = cells[i]
        centre = np.clip(c * CELL + offset[(slice(None), *c)], 0.0, upper)
        f = region_features(array, spacing_zyx, centre, config.region_radius_mm, config.region_hu, allowed=lungs)
        rows.append(
            {
                "z": centre[0],
                "y": centre[1],
                "x": centre[2],
                "score": float(prob[tuple(c)]),
                "diameter_mm": f.diameter_mm if f.volume_mm3 > 0 else 2.0 * CELL,
                "volume_mm3": f.volume_mm3,
                "mean_hu": f.mean_hu,
                "elongation": f.elongation,
            }
        )
    return detections_frame(rows, "learned")


def training_target(
    cell_shape: Sequence[int],
    nodules: np.ndarray,
    ignore: np.ndarray | None = None,
    ignore_margin_mm: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the network learns on a 1 mm patch whose cells have ``cell_shape``.

    Args:
        cell_shape: cells along (z, y, x).
        nodules: (N, 4) nodule centre (z, y, x) in the patch's voxels and diameter, mm.
        ignore: (M, 4) the same of findings that are neither nodule nor negative
            (excluded regions); their cells within radius + margin carry no loss.
        ignore_margin_mm: cells this far beyond a nodule's radius that are not positive
            carry no loss either (a peak beside a nodule is not a false positive).

    Returns:
        ``label`` (1 for the cell nearest a nodule centre and the cells within half its
        radius), ``weight`` (0 where ignored), ``offset`` (3, ...) from cell centre to the
        nodule centre in cells (meaningful where ``label`` is 1).
    """
    shape = tuple(int(n) for n in cell_shape)
    label = np.zeros(shape, np.float32)
    weight = np.ones(shape, np.float32)
    offset = np.zeros((3, *shape), np.float32)
    grid = np.stack(np.meshgrid(*(np.arange(n) * CELL for n in shape), indexing="ij"), axis=-1).astype(np.float32)
    best = np.full(shape, np.inf, np.float32)
    for rows, positive in ((ignore, False), (nodules, True)):
        for z, y, x, d in np.asarray(rows if rows is not None else np.zeros((0, 4)), np.float64).reshape(-1, 4):
            r = max(float(d), 3.0) / 2.0
            dist = np.linalg.norm(grid - np.array([z, y, x], np.float32), axis=-1)
            weight[dist <= r + ignore_margin_mm] = 0.0
            if not positive:
                continue
            pos = dist <= 0.5 * r
            nearest = np.round(np.array([z, y, x]) / CELL).astype(int)
            if all(0 <= n < s for n, s in zip(nearest, shape, strict=True)):
                pos[tuple(nearest)] = True
            take = pos & (dist < best)
            label[take] = 1.0
            best[take] = dist[take]
            offset[:, take] = ((np.array([z, y, x], np.float32) - grid[take]) / CELL).T
    weight[label > 0] = 1.0
    return label, weight, offset
