"""Quality figures of generated nodules: Frechet distance, memorisation, two-sample test, a picture.

Pure functions over arrays; :class:`nodule.training.gan.GanQualityCallback` runs them at the
end of a GAN's training.

* :func:`frechet_distance`: the Frechet distance between Gaussians fitted to two feature
  sets (Heusel et al. 2017's FID formula; here on the shipped classifier's penultimate
  features of the nine views, so it measures what the classifier sees).
* :func:`nearest_training_distance`: each sample's RMS distance to its nearest training
  item (the memorisation check); held-out real items against the same training set give
  the reference: generated samples much closer than that copy training items.
* :func:`two_sample_auroc`: a classifier two-sample test (Lopez-Paz & Oquab 2017):
  a logistic regression on (pooled) flattened items, fitted on one half and scored on the
  other; AUROC 0.5 means it cannot tell the sets apart, 1.0 that it always can.
* :func:`sample_grid`: a PNG of central slices, generated beside real nodules of the same
  condition, one block of rows per texture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from scipy.stats import rankdata


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``.

    Args:
        features_a: (N, F) features.
        features_b: (M, F) features.

    Returns:
        The distance (>= 0; 0 for identical sets).
    """
    a = np.asarray(features_a, dtype=np.float64).reshape(len(features_a), -1)
    b = np.asarray(features_b, dtype=np.float64).reshape(len(features_b), -1)
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of >= 2 items with equal feature sizes, got {a.shape}, {b.shape}")
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(ca @ cb)
    if not np.isfinite(root).all():  # nearly singular product: regularise
        eps = 1e-6 * np.eye(len(ca))
        root = linalg.sqrtm((ca + eps) @ (cb + eps))
    root = np.real(root)
    value = float(mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(root))
    return max(value, 0.0)


def nearest_training_distance(
    samples: np.ndarray, training: np.ndarray, chunk: int = 256
) -> np.ndarray:
    """Each sample's RMS (per element) Euclidean distance to its nearest training item.

    Args:
        samples: (N, ...) items, e.g. occupancy cubes.
        training: (M, ...) training items of the same shape.
        chunk: samples compared at a time.

    Returns:
        (N,) float64 distances (0 where a sample equals a training item).
    """
    s = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    t = np.asarray(training, dtype=np.float64).reshape(len(training), -1)
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"samples {s.shape} and training items {t.shape} differ in size")
    t2 = (t**2).sum(1)
    out = np.empty(len(s))
    for start in range(0, len(s), chunk):
        part = s[start : start + chunk]
        d2 = (part**2).sum(1)[:, None] + t2[None, :] - 2.0 * part @ t.T
        out[start : start + len(part)] = np.sqrt(np.clip(d2.min(1), 0.0, None) / s.shape[1])
    return out


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count one half)."""
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pooled(items: np.ndarray, pool: int) -> np.ndarray:
    x = torch.as_tensor(np.asarray(items, dtype=np.float32))
    n = x.shape[0]
    if pool > 1 and x.ndim == 4:  # (N, D, H, W) cubes
        x = torch.nn.functional.avg_pool3d(x[:, None], pool, ceil_mode=True)
    elif pool > 1 and x.ndim == 5:  # (N, C, D, H, W)
        x = torch.nn.functional.avg_pool3d(x, pool, ceil_mode=True)
    return x.reshape(n, -1).numpy()


def two_sample_auroc(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int = 0,
    pool: int = 2,
    weight_decay: float = 1e-3,
    steps: int = 300,
) -> float:
    """Classifier two-sample test: held-out AUROC of a logistic regression telling real from fake.

    Items are average-pooled by ``pool`` (cubes, 4D or 5D arrays), flattened and
    standardised with the training half's statistics; a balanced random half of each set
    trains an L2-regularised logistic regression (full-batch L-BFGS), the other half is
    scored.

    Args:
        real: (N, ...) real items.
        fake: (M, ...) generated items of the same shape.
        seed: the split and initialisation.
        pool: average-pooling factor for cubes (1: none).
        weight_decay: L2 penalty on the weights.
        steps: L-BFGS iterations at most.

    Returns:
        AUROC on the held-out halves (0.5: indistinguishable).
    """
    xr, xf = _pooled(real, pool), _pooled(fake, pool)
    if xr.shape[1] != xf.shape[1] or len(xr) < 4 or len(xf) < 4:
        raise ValueError(f"need >= 4 items per set of one shape, got {xr.shape}, {xf.shape}")
    rng = np.random.default_rng(seed)
    ir, jf = rng.permutation(len(xr)), rng.permutation(len(xf))
    hr, hf = len(xr) // 2, len(xf) // 2
    x_train = np.concatenate([xr[ir[:hr]], xf[jf[:hf]]])
    y_train = np.concatenate([np.ones(hr), np.zeros(hf)])
    x_test = np.concatenate([xr[ir[hr:]], xf[jf[hf:]]])
    y_test = np.concatenate([np.ones(len(xr) - hr), np.zeros(len(xf) - hf)])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.as_tensor((x_train - mean) / std, dtype=torch.float64)
    yt = torch.as_tensor(y_train, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(xt.shape[1], generator=gen, dtype=torch.float64)).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt)
        loss = loss + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = (torch.as_tensor((x_test - mean) / std, dtype=torch.float64) @ w + b).numpy()
    return auroc(y_test, scores)


def sample_grid(
    generated: np.ndarray,
    real: np.ndarray,
    textures: np.ndarray,
    diameters_mm: np.ndarray,
    path: Path,
    texture_names: Sequence[str] = ("solid", "part-solid", "ground-glass"),
    per_texture: int = 6,
    hu_window: tuple[float, float] = (-1000.0, 200.0),
    background_hu: float = -850.0,
) -> Path:
    """A PNG of central slices: each generated nodule beside the real one of its condition.

    Pairs ``i`` (generated ``i``, real ``i``) share a condition (texture, diameter); each
    nodule is shown blended on flat lung (``background_hu``), its central axial slice.
    Per texture, a row of generated and below it a row of the matching real nodules.

    Args:
        generated: (N, 2, S, S, S) occupancy and HU of generated nodules.
        real: (N, 2, S, S, S) the real nodules they are conditioned like.
        textures: (N,) texture indices.
        diameters_mm: (N,) diameters (printed over each column).
        path: the PNG to write.
        texture_names: names of the texture indices.
        per_texture: columns per texture.
        hu_window: display window.
        background_hu: the flat background they are blended on.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_tex = len(texture_names)
    fig, axes = plt.subplots(
        2 * n_tex, per_texture, figsize=(1.3 * per_texture, 1.4 * 2 * n_tex), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    mid = generated.shape[2] // 2
    for t, name in enumerate(texture_names):
        idx = np.flatnonzero(np.asarray(textures) == t)[:per_texture]
        for col, i in enumerate(idx):
            for row, cube in ((2 * t, generated[i]), (2 * t + 1, real[i])):
                occ, hu = cube[0, mid], cube[1, mid]
                image = background_hu + occ * np.maximum(hu - background_hu, 0.0)
                ax = axes[row, col]
                ax.imshow(image, cmap="gray", vmin=hu_window[0], vmax=hu_window[1])
                if row == 2 * t:
                    ax.set_title(f"{diameters_mm[i]:.0f} mm", fontsize=7)
        axes[2 * t, 0].text(-0.1, 0.5, f"{name}\nGAN", transform=axes[2 * t, 0].transAxes,
                            ha="right", va="center", fontsize=7)
        axes[2 * t + 1, 0].text(-0.1, 0.5, f"{name}\nreal", transform=axes[2 * t + 1, 0].transAxes,
                                ha="right", va="center", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
