"""Learned candidate ranker: one score for the detections of all three detectors.

Murphy et al. 2009 and Jacobs et al. 2014 follow their candidate detectors with a
classifier on candidate features before the expensive stage; here a small multilayer
perceptron scores every detection from its detector's features and its context
(:mod:`nodule.candidates.context`), and the candidate stage keeps the best
``max_per_scan`` by that score. The detectors then only need to *contain* a nodule
among their several hundred detections; the ranker decides which 150 go on.

The model is tiny (about 1,500 weights) and is stored as JSON (feature names,
standardisation, layers) beside this module (``ranker.json``); inference is numpy.
``scripts/train_candidate_ranker.py`` trains it on the candidates of a synthetic
training set (never the held-out or external sets) with :func:`fit_ranker`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from nodule.candidates.context import CONTEXT_COLUMNS

DEFAULT_RANKER = Path(__file__).with_name("ranker.json")

DETECTOR_NAMES = ("solid", "subsolid", "large_solid")

INPUT_COLUMNS = ("detector_score", "diameter_mm", "volume_mm3", "mean_hu", "elongation", *CONTEXT_COLUMNS)
"""Columns of a detection table the ranker reads (besides ``detector`` or ``detectors``)."""


def ranker_inputs(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Feature names and matrix (N, F) the ranker sees, derived from a detection table.

    Sizes and the blob response enter as logarithms; contrasts (ball minus shell and
    minus the lung background) are added; the detector is one-hot.
    """
    missing = [c for c in INPUT_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"detection table lacks the ranker's input columns {missing}")
    det_col = "detector" if "detector" in table else "detectors"
    dets = table[det_col].astype(str).to_numpy()
    cols: dict[str, np.ndarray] = {}
    for c in INPUT_COLUMNS:
        cols[c] = table[c].to_numpy(dtype=np.float64)
    for c in ("volume_mm3", "blob_response"):
        cols[c] = np.log1p(np.maximum(cols[c], 0.0))
    cols["elongation"] = np.log(np.maximum(cols["elongation"], 1.0))
    cols["contrast_shell"] = cols["hu_ball"] - cols["hu_shell"]
    cols["contrast_outer"] = cols["hu_ball"] - cols["hu_outer"]
    for name in DETECTOR_NAMES:
        cols[f"is_{name}"] = np.array([name in d.split("+") for d in dets], dtype=np.float64)
    names = list(cols)
    matrix = np.column_stack([cols[n] for n in names]) if len(table) else np.zeros((0, len(names)))
    return names, np.nan_to_num(matrix, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class CandidateRanker:
    """A standardised multilayer perceptron (ReLU hidden layers, sigmoid output).

    Attributes:
        features: names of the inputs (:func:`ranker_inputs`), in order.
        mean: per-feature mean subtracted before the first layer.
        std: per-feature scale divided by.
        weights: layer matrices (out, in).
        biases: layer bias vectors.
        info: free-form provenance (training data, seed, figures).
    """

    features: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    info: dict[str, object] = field(default_factory=dict)

    def score(self, table: pd.DataFrame) -> np.ndarray:
        """Nodule probability in [0, 1] of each row of a detection table."""
        names, x = ranker_inputs(table)
        if names != self.features:
            raise ValueError(f"ranker was trained on features {self.features}, the table gives {names}")
        h = (x - self.mean) / self.std
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.T + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return np.asarray(1.0 / (1.0 + np.exp(-h[:, 0])))

    @property
    def trained_on_uids(self) -> list[str] | None:
        """SeriesInstanceUIDs of the scans it was trained on, as recorded by its training
        (``info["trained_on_uids"]``); None for a model that does not record them."""
        uids = self.info.get("trained_on_uids")
        return [str(u) for u in uids] if isinstance(uids, list) else None

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as JSON; returns the path."""
        doc = {
            "features": self.features,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": [w.tolist() for w in self.weights],
            "biases": [b.tolist() for b in self.biases],
            "info": self.info,
        }
        out = Path(path)
        out.write_text(json.dumps(doc, indent=1) + "\n")
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CandidateRanker:
        """Read a model written by :meth:`to_json`.

        Raises:
            ValueError: the file is not a ranker model (named in the message).
        """
        try:
            doc = json.loads(Path(path).read_text())
            return cls(
                features=list(doc["features"]),
                mean=np.asarray(doc["mean"], dtype=np.float64),
                std=np.asarray(doc["std"], dtype=np.float64),
                weights=[np.asarray(w, dtype=np.float64) for w in doc["weights"]],
                biases=[np.asarray(b, dtype=np.float64) for b in doc["biases"]],
                info=dict(doc.get("info", {})),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a candidate ranker model ({exc})") from exc


@lru_cache(maxsize=8)
def load_ranker(path: str | None = None) -> CandidateRanker:
    """The ranker stored at ``path`` (default: the shipped ``ranker.json``), cached."""
    return CandidateRanker.from_json(path or DEFAULT_RANKER)


def per_nodule_weights(nodule: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Loss weights under which every nodule counts once, however many detections hit it.

    Args:
        nodule: per row, a key of the nodule the row hits (any integer >= 0, unique across
            scans and sets), -1 for rows that hit none.
        weights: per-row loss weights before the change.

    Returns:
        ``weights`` with each positive row's weight divided by the number of rows (of
        non-zero weight) hitting its nodule; other rows unchanged. A large nodule with 30
        detections then weighs as much as a small one with one detection, which is what the
        stage's goal (nodules kept, not detections kept) asks of the ranker.
    """
    key = np.asarray(nodule)
    w = np.asarray(weights, dtype=np.float64).copy()
    hit = (key >= 0) & (w > 0)
    if hit.any():
        _, inverse, counts = np.unique(key[hit], return_inverse=True, return_counts=True)
        w[hit] = w[hit] / counts[inverse]
    return w


def fit_ranker(
    table: pd.DataFrame,
    labels: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    hidden: Sequence[int] = (32, 16),
    epochs: int = 60,
    batch_size: int = 512,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    positive_weight: float | None = None,
    seed: int = 0,
) -> CandidateRanker:
    """Train a ranker on detections with 0/1 labels (1: the detection hits a nodule).

    Args:
        table: detection table with :data:`INPUT_COLUMNS` and ``detector(s)``.
        labels: 0/1 per row.
        weights: per-row loss weights (0 leaves a row out), default 1.
        hidden: sizes of the hidden layers.
        epochs: passes over the data.
        batch_size: rows per step.
        lr: Adam learning rate.
        weight_decay: AdamW weight decay.
        positive_weight: loss weight of positives relative to negatives (default:
            the negative / positive ratio, so both classes weigh the same).
        seed: seed of the initialisation and the shuffling.

    Returns:
        The trained ranker.
    """
    import torch

    names, x = ranker_inputs(table)
    y = np.asarray(labels, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not ((y == 1) & (w > 0)).any() or not ((y == 0) & (w > 0)).any():
        raise ValueError("fit_ranker needs positive and negative rows")
    if positive_weight is None:
        positive_weight = float(w[y == 0].sum() / w[y == 1].sum())
    w = w * np.where(y == 1, positive_weight, 1.0)
    mean = x.mean(axis=0)
    std = np.where(x.std(axis=0) > 1e-6, x.std(axis=0), 1.0)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sizes = [len(names), *hidden, 1]
    layers: list[torch.nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers).double()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    xt = torch.as_tensor((x - mean) / std)
    yt = torch.as_tensor(y)
    wt = torch.as_tensor(w / w.mean())
    n = len(y)
    steps = epochs * max(1, (n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            logit = net(xt[b])[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt[b], weight=wt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    return CandidateRanker(
        features=names,
        mean=mean,
        std=std,
        weights=[m.weight.detach().numpy().copy() for m in linear],
        biases=[m.bias.detach().numpy().copy() for m in linear],
        info={"rows": int(n), "positives": int((y == 1).sum()), "hidden": list(hidden), "epochs": epochs, "seed": seed},
    )
