"""Training the conditional nodule GAN with Lightning: data, model, quality callback, CLI.

``python -m nodule.training.gan fit --config configs/gan_small.yaml`` (:func:`gan_main`).

Data (:class:`NoduleCubes`): nodules rendered with :func:`nodule.data.shapes.render_nodule`
from the shape bank's **training part** (``load_shape_bank(part="synth")``; the
``insert`` part, the external test set's shapes, is never read) on an ``S^3`` cube of
spacing ``s`` mm, each with a uniform random rotation, a diameter drawn around the shape's
native size and the HU pattern of its type (calcified shapes rendered and conditioned as
solid). The bank's patients are split once more by a hash of the pseudonym: about
``holdout_fraction`` of them give held-out real cubes, used only by the quality checks
(memorisation reference, two-sample test, Frechet distance), never for training. Textures
are drawn balanced (a third each) unless ``balance_textures`` is false. The cubes are
rendered once (seeded) and cached in ``$NODULE_CACHE/gan/cubes-<hash>.npz``.

Model (:class:`NoduleGAN`): :class:`~nodule.models.gan.NoduleGenerator` and
:class:`~nodule.models.gan.NoduleDiscriminator`, hinge loss, manual optimisation with two
Adam optimisers (one discriminator step, then one generator step per batch); generated
nodules take the batch's real conditions. Losses and the mean discriminator scores are
logged.

Quality (:class:`GanQualityCallback`, at the end of ``fit``): ``quality.json`` and
``samples.png`` in the run folder (``trainer.default_root_dir``), also logged to W&B:
the memorisation check (:func:`~nodule.evaluation.gan_quality.nearest_training_distance`
of generated and of held-out real cubes to the training cubes), the classifier two-sample
AUROC on the cubes, and the Frechet distance between the shipped classifier's penultimate
features (:meth:`~nodule.models.multistream.MultiStreamNet.features`) of the nine views of
held-out real and of generated nodules of the same conditions, blended on the same
backgrounds (the fixed views of negative candidates from a training set's patch cache, or
flat noisy lung when none is given), with the same statistic between held-out and
training real nodules as its reference.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from nodule.evaluation.gan_quality import (
    frechet_distance,
    nearest_training_distance,
    sample_grid,
    two_sample_auroc,
)
from nodule.models.gan import TEXTURES, NoduleDiscriminator, NoduleGenerator, texture_index
from nodule.patches import PatchConfig, random_frames
from nodule.paths import atomic_path, cache_dir
from nodule.training.cli import LoggedConfigCallback, expand_config_paths, expand_path, finish_wandb
from nodule.training.gan_views import VIEW_AUGMENT, blend_views, cube_views, generate_cubes

logger = logging.getLogger(__name__)

CUBES_VERSION = 1


@dataclass(frozen=True)
class _CubeGeometry:
    """An isotropic ``size``-cube of voxel ``spacing_mm`` centred on the world origin."""

    size: int
    spacing_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.spacing_mm,) * 3

    @property
    def origin(self) -> tuple[float, float, float]:
        return (-(self.size - 1) / 2 * self.spacing_mm,) * 3

    @property
    def direction(self) -> tuple[float, ...]:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def holdout_patient(patient_id: str, fraction: float) -> bool:
    """Whether a (training-part) LIDC patient's shapes are held out from GAN training."""
    digest = hashlib.sha256(f"gan-holdout:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def render_cubes(
    shapes: list[Any],
    n: int,
    cube_size: int,
    spacing_mm: float,
    rng: np.random.Generator,
    max_diameter_mm: float,
    min_diameter_mm: float = 3.5,
    spread: float = 0.3,
    balance_textures: bool = True,
) -> dict[str, np.ndarray]:
    """Render ``n`` nodules from shapes on a centred cube.

    Args:
        shapes: :class:`~nodule.data.shapes.NoduleShape` s to draw from.
        n: number of cubes.
        cube_size: voxels per side.
        spacing_mm: voxel size.
        rng: random generator.
        max_diameter_mm: largest diameter (shapes much larger natively are not used).
        min_diameter_mm: smallest diameter.
        spread: the diameter is the native one times ``exp(U(-spread, spread))``, clipped.
        balance_textures: draw each texture equally often (else shapes uniformly).

    Returns:
        ``occupancy`` and ``hu`` (n, S, S, S) float32, ``diameter_mm`` (n,) float32,
        ``texture`` (n,) int64, ``annotation_id`` (n,) int64.
    """
    from nodule.data.shapes import NoduleType, random_rotation, render_nodule

    geometry = _CubeGeometry(cube_size, spacing_mm)
    usable = [s for s in shapes if s.diameter_mm <= 1.3 * max_diameter_mm]
    pools = {t: [s for s in usable if texture_index(s.nodule_type) == t] for t in range(len(TEXTURES))}
    present = [t for t, p in pools.items() if p]
    if not present:
        raise ValueError("no usable shapes")
    occ = np.zeros((n, cube_size, cube_size, cube_size), np.float32)
    hu = np.zeros_like(occ)
    diam = np.zeros(n, np.float32)
    tex = np.zeros(n, np.int64)
    ids = np.zeros(n, np.int64)
    for i in range(n):
        if balance_textures:
            t = present[int(rng.integers(len(present)))]
            shape = pools[t][int(rng.integers(len(pools[t])))]
        else:
            shape = usable[int(rng.integers(len(usable)))]
            t = texture_index(shape.nodule_type)
        d = float(np.clip(shape.diameter_mm * np.exp(rng.uniform(-spread, spread)), min_diameter_mm, max_diameter_mm))
        kind: NoduleType = "solid" if shape.nodule_type == "calcified" else shape.nodule_type
        r = render_nodule(shape, d, kind, random_rotation(rng), (0.0, 0.0, 0.0), geometry, rng, sub_voxel_mm=0.5)
        occ[i][r.slices] = r.occupancy
        inside = r.occupancy > 0
        fill = float(r.hu[inside].mean()) if inside.any() else float(np.mean(r.hu))
        hu[i] = fill
        hu[i][r.slices] = np.where(inside, r.hu, fill)
        diam[i], tex[i], ids[i] = d, t, shape.annotation_id
    return {"occupancy": occ, "hu": hu, "diameter_mm": diam, "texture": tex, "annotation_id": ids}


class NoduleCubes(pl.LightningDataModule):
    """Rendered training (and held-out) nodule cubes with their conditions.

    Args:
        cube_size: voxels per side ``S``.
        spacing_mm: voxel size, mm.
        n_train: training cubes.
        n_holdout: held-out real cubes (from held-out patients), for the quality checks.
        holdout_fraction: share of the training part's patients held out.
        max_diameter_mm: largest diameter (default: 0.6 of the cube side).
        balance_textures: draw the textures equally often.
        batch_size: cubes per batch.
        seed: the rendering's seed.
        bank_max_patients: a test-sized shape bank (None: the whole bank).
        cache_dir: where the rendered cubes are cached (default ``$NODULE_CACHE/gan``).
        num_workers: data loader workers.
    """

    def __init__(
        self,
        cube_size: int = 16,
        spacing_mm: float = 2.0,
        n_train: int = 512,
        n_holdout: int = 128,
        holdout_fraction: float = 0.15,
        max_diameter_mm: float | None = None,
        balance_textures: bool = True,
        batch_size: int = 32,
        seed: int = 0,
        bank_max_patients: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.cube_size = cube_size
        self.spacing_mm = spacing_mm
        self.n_train = n_train
        self.n_holdout = n_holdout
        self.holdout_fraction = holdout_fraction
        self.max_diameter_mm = max_diameter_mm or 0.6 * cube_size * spacing_mm
        self.balance_textures = balance_textures
        self.batch_size = batch_size
        self.seed = seed
        self.bank_max_patients = bank_max_patients
        self.cache_root = Path(cache_dir) if cache_dir else None
        self.num_workers = num_workers
        self.train_cubes: dict[str, np.ndarray] = {}
        self.holdout_cubes: dict[str, np.ndarray] = {}

    def params(self) -> dict[str, Any]:
        """What shapes the cubes (hashed into the cache file name)."""
        from nodule.data.shapes import bank_path

        return {
            "version": CUBES_VERSION,
            "cube_size": self.cube_size,
            "spacing_mm": self.spacing_mm,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "holdout_fraction": self.holdout_fraction,
            "max_diameter_mm": round(self.max_diameter_mm, 6),
            "balance_textures": self.balance_textures,
            "seed": self.seed,
            "bank": bank_path(self.bank_max_patients).name,
        }

    @property
    def path(self) -> Path:
        """The cache file of these cubes."""
        digest = hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:12]
        root = self.cache_root if self.cache_root is not None else cache_dir("gan")
        return root / f"cubes-{self.cube_size}px-{self.spacing_mm:g}mm-{digest}.npz"

    def prepare_data(self) -> None:
        """Render and cache the cubes once."""
        if self.path.exists():
            return
        from nodule.data.shapes import load_shape_bank

        start = time.time()
        bank = load_shape_bank(part="synth", max_patients=self.bank_max_patients)  # never "insert"
        train = [s for s in bank if not holdout_patient(s.patient_id, self.holdout_fraction)]
        held = [s for s in bank if holdout_patient(s.patient_id, self.holdout_fraction)]
        rng = np.random.default_rng(self.seed)
        kw = {"max_diameter_mm": self.max_diameter_mm, "balance_textures": self.balance_textures}
        tr = render_cubes(train, self.n_train, self.cube_size, self.spacing_mm, rng, **kw)  # type: ignore[arg-type]
        ho = render_cubes(held, self.n_holdout, self.cube_size, self.spacing_mm, rng, **kw)  # type: ignore[arg-type]
        arrays = {f"train_{k}": v for k, v in tr.items()} | {f"holdout_{k}": v for k, v in ho.items()}
        arrays["params"] = np.array(json.dumps(self.params()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        logger.info("rendered %d + %d cubes in %.0f s: %s", self.n_train, self.n_holdout, time.time() - start, self.path)

    def setup(self, stage: str | None = None) -> None:
        """Load the cached cubes."""
        self.prepare_data()
        with np.load(self.path) as z:
            self.train_cubes = {k[6:]: z[k] for k in z.files if k.startswith("train_")}
            self.holdout_cubes = {k[8:]: z[k] for k in z.files if k.startswith("holdout_")}

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        """Batches of ``(cube (B, 2, S, S, S), diameter_mm (B,), texture (B,))``."""
        c = self.train_cubes
        data = TensorDataset(
            torch.from_numpy(np.stack([c["occupancy"], c["hu"]], axis=1)),
            torch.from_numpy(c["diameter_mm"]),
            torch.from_numpy(c["texture"]),
        )
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          generator=gen, num_workers=self.num_workers)


class NoduleGAN(pl.LightningModule):
    """Conditional nodule GAN, hinge loss, manual optimisation (two Adam optimisers).

    Args:
        cube_size: voxels per side (linked to the data's).
        spacing_mm: voxel size (linked to the data's).
        latent_dim: noise size.
        g_channels: generator channels at its coarsest level.
        d_channels: discriminator channels of its first layer.
        n_levels: generator upsamplings = discriminator downsamplings.
        lr_g: generator learning rate.
        lr_d: discriminator learning rate.
        beta1: Adam beta1 (beta2 0.9).
        d_steps: discriminator steps per generator step (each on the same batch, fresh fakes).
    """

    def __init__(
        self,
        cube_size: int = 16,
        spacing_mm: float = 2.0,
        latent_dim: int = 32,
        g_channels: int = 64,
        d_channels: int = 16,
        n_levels: int = 2,
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        beta1: float = 0.0,
        d_steps: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = NoduleGenerator(cube_size, spacing_mm, latent_dim, g_channels, n_levels)
        self.discriminator = NoduleDiscriminator(cube_size, spacing_mm, d_channels, n_levels)
        self.latent_dim = latent_dim
        self.d_steps = d_steps

    def forward(self, z: torch.Tensor, diameter_mm: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        """The generator's output."""
        out: torch.Tensor = self.generator(z, diameter_mm, texture)
        return out

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for the generator and for the discriminator."""
        hp = self.hparams
        betas = (float(hp["beta1"]), 0.9)
        return [
            torch.optim.Adam(self.generator.parameters(), lr=float(hp["lr_g"]), betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=float(hp["lr_d"]), betas=betas),
        ]

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        """One (or ``d_steps``) discriminator step(s), then one generator step."""
        real, diameter, texture = batch
        opts = self.optimizers()
        assert isinstance(opts, list)
        opt_g, opt_d = opts
        b = real.shape[0]
        for _ in range(self.d_steps):
            z = torch.randn(b, self.latent_dim, device=real.device)
            with torch.no_grad():
                fake = self.generator(z, diameter, texture)
            d_real = self.discriminator(real, diameter, texture)
            d_fake = self.discriminator(fake, diameter, texture)
            loss_d = torch.relu(1.0 - d_real).mean() + torch.relu(1.0 + d_fake).mean()
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            opt_d.step()
        z = torch.randn(b, self.latent_dim, device=real.device)
        fake = self.generator(z, diameter, texture)
        loss_g = -self.discriminator(fake, diameter, texture).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log_dict(
            {
                "gan/loss_d": loss_d.detach(),
                "gan/loss_g": loss_g.detach(),
                "gan/d_real": d_real.mean().detach(),
                "gan/d_fake": d_fake.mean().detach(),
                "gan/fake_volume_ratio": (fake[:, 0].sum() / real[:, 0].sum().clamp(min=1e-6)).detach(),
            },
            prog_bar=True,
            on_step=True,
            on_epoch=True,
        )


# --------------------------------------------------------------------------- quality


def synthetic_backgrounds(n: int, patch: PatchConfig, seed: int) -> np.ndarray:
    """Flat lung backgrounds (about -850 HU with smooth 25 HU texture): (n, V, H, W) int16."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = rng.standard_normal((n, patch.n_views, patch.size_px, patch.size_px))
    field = ndimage.gaussian_filter(field, (0, 0, 1.5, 1.5))
    field /= max(float(field.std()), 1e-6)
    views: np.ndarray = np.rint(-850.0 + 25.0 * field).astype(np.int16)
    return views


def cache_backgrounds(pattern: str, n: int, patch: PatchConfig, seed: int) -> np.ndarray | None:
    """Fixed views (HU int16, (n, V, H, W)) of negative candidates from a patch cache folder.

    Args:
        pattern: the cache folder (a glob pattern; the first match in sorted order), a
            training set's :mod:`nodule.patch_cache` folder.
        n: how many (drawn at random, seeded, from the first scans that hold enough).
        patch: the view geometry they must have.
        seed: the draw.

    Returns:
        The views, or None when no such cache exists or its geometry differs from ``patch``.
    """
    from nodule.patch_cache import CacheIndex

    matches = sorted(glob.glob(expand_path(pattern)))
    if not matches:
        return None
    index = CacheIndex.load(matches[0])
    cp = index.config.patch
    if (cp.n_views, cp.size_px, cp.fov_mm) != (patch.n_views, patch.size_px, patch.fov_mm):
        logger.warning("background cache %s has other views than the classifier's", matches[0])
        return None
    rng = np.random.default_rng(seed)
    uids = index.series_uids
    picked: list[np.ndarray] = []
    for uid in rng.permutation(len(uids)):
        scan = index.scan(uids[int(uid)])
        neg = np.flatnonzero(scan.labels == 0)
        take = rng.permutation(neg)[: max(1, n // 4)]
        picked.append(scan.patches_hu[take])
        if sum(len(p) for p in picked) >= n:
            break
    views = np.concatenate(picked)[:n]
    return views if len(views) == n else None


def classifier_features(views_hu: np.ndarray, bundle: Any) -> np.ndarray:
    """Penultimate features (the streams' features of every view, flattened) of the classifier."""
    from nodule.patches import scale_hu

    net = bundle.net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(views_hu), 64):
            x = torch.from_numpy(scale_hu(views_hu[start : start + 64], bundle.patch))
            out.append(net.features(x).flatten(1).numpy())
    features: np.ndarray = np.concatenate(out).astype(np.float64)
    return features


def quality_report(
    generator: NoduleGenerator,
    train: dict[str, np.ndarray],
    holdout: dict[str, np.ndarray],
    out_dir: Path,
    seed: int = 0,
    background_cache: str | None = None,
    classifier: str | None = None,
    n_fid: int = 128,
) -> dict[str, Any]:
    """The quality figures of a generator (see the module doc); writes ``quality.json`` and ``samples.png``."""
    from nodule.models.bundle import load_model

    start = time.time()
    spacing = generator.spacing_mm
    d, t = holdout["diameter_mm"], holdout["texture"]
    occ_f, hu_f = generate_cubes(generator, d, t, seed=seed + 1)
    occ_r, hu_r = holdout["occupancy"], holdout["hu"]
    occ_t = train["occupancy"]
    mem_fake = nearest_training_distance(occ_f, occ_t)
    mem_real = nearest_training_distance(occ_r, occ_t)
    fake5 = np.stack([occ_f, occ_f * hu_f / 1000.0], 1)
    real5 = np.stack([occ_r, occ_r * hu_r / 1000.0], 1)
    c2st = two_sample_auroc(real5, fake5, seed=seed)
    # Frechet distance in the classifier's feature space: same backgrounds, same view orientations.
    bundle = load_model(classifier)
    patch = bundle.patch
    n = min(n_fid, len(d), len(train["diameter_mm"]))
    backgrounds = cache_backgrounds(background_cache, n, patch, seed) if background_cache else None
    background_kind = "patch cache negatives" if backgrounds is not None else "synthetic flat lung"
    if backgrounds is None:
        backgrounds = synthetic_backgrounds(n, patch, seed)
    frames = random_frames(n, patch, VIEW_AUGMENT, np.random.default_rng(seed))

    def feats(occ: np.ndarray, hu: np.ndarray) -> np.ndarray:
        ov, hv = cube_views(occ[:n], hu[:n], spacing, patch, frames)
        return classifier_features(blend_views(backgrounds, ov, hv), bundle)

    f_real = feats(occ_r, hu_r)
    f_fake = feats(occ_f, hu_f)
    f_train = feats(train["occupancy"], train["hu"])
    fid = frechet_distance(f_real, f_fake)
    fid_ref = frechet_distance(f_real, f_train)
    volume_ratio = float(occ_f.sum(axis=(1, 2, 3)).mean() / max(occ_r.sum(axis=(1, 2, 3)).mean(), 1e-6))
    report: dict[str, Any] = {
        "n_generated": len(d),
        "n_holdout_real": len(d),
        "n_train": len(occ_t),
        "frechet_classifier_features": fid,
        "frechet_reference_holdout_vs_train": fid_ref,
        "frechet_n": n,
        "frechet_backgrounds": background_kind,
        "classifier": str(bundle.path),
        "c2st_auroc": c2st,
        "memorisation": {
            "generated_to_train_median": float(np.median(mem_fake)),
            "generated_to_train_min": float(mem_fake.min()),
            "generated_to_train_p05": float(np.percentile(mem_fake, 5)),
            "holdout_to_train_median": float(np.median(mem_real)),
            "holdout_to_train_min": float(mem_real.min()),
            "holdout_to_train_p05": float(np.percentile(mem_real, 5)),
            "generated_closer_than_holdout_p05": float(np.mean(mem_fake < np.percentile(mem_real, 5))),
        },
        "volume_ratio_generated_to_real": volume_ratio,
        "seconds": round(time.time() - start, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    sample_grid(
        np.stack([occ_f, hu_f], 1), np.stack([occ_r, hu_r], 1), t, d, out_dir / "samples.png",
        texture_names=TEXTURES, per_texture=8,
    )
    return report


class GanQualityCallback(Callback):
    """At the end of ``fit``: the quality figures, ``quality.json`` and ``samples.png`` in the run folder.

    Args:
        enabled: run it.
        seed: noise, split and view orientations.
        background_cache: a training set's patch cache folder (glob pattern, ``${NODULE_CACHE}``
            expanded) whose negative candidates' views are the backgrounds; None or no
            match: flat synthetic lung.
        classifier: the classifier model file (None: the shipped one).
        n_fid: nodules in each set of the Frechet distance.
        out_dir: where to write (default: the trainer's ``default_root_dir``).
    """

    def __init__(
        self,
        enabled: bool = True,
        seed: int = 0,
        background_cache: str | None = None,
        classifier: str | None = None,
        n_fid: int = 128,
        out_dir: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.seed = seed
        self.background_cache = background_cache
        self.classifier = classifier
        self.n_fid = n_fid
        self.out_dir = out_dir
        self.report: dict[str, Any] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Compute, write and log the figures."""
        if not self.enabled or not isinstance(pl_module, NoduleGAN):
            return
        data = trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(data, NoduleCubes) or not data.holdout_cubes:
            return
        out = Path(expand_path(self.out_dir)) if self.out_dir else Path(trainer.default_root_dir)
        gen = pl_module.generator
        device = next(gen.parameters()).device
        self.report = quality_report(
            gen.cpu(), data.train_cubes, data.holdout_cubes, out, self.seed,
            self.background_cache, self.classifier, self.n_fid,
        )
        gen.to(device)
        flat = {
            f"quality/{k}": v for k, v in self.report.items() if isinstance(v, int | float)
        } | {f"quality/memorisation/{k}": v for k, v in self.report["memorisation"].items()}
        for lg in trainer.loggers:
            lg.log_metrics(flat, step=trainer.global_step)
            if isinstance(lg, WandbLogger):
                lg.log_image(key="quality/samples", images=[str(out / "samples.png")])
        print(f"GAN quality: {json.dumps(self.report)}\nwritten to {out}/quality.json, {out}/samples.png")


class GanCLI(LightningCLI):
    """LightningCLI for the GAN: the quality callback as the ``quality`` group, shared geometry linked."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the cube geometry of data and model; add the quality callback."""
        parser.link_arguments("data.cube_size", "model.cube_size")
        parser.link_arguments("data.spacing_mm", "model.spacing_mm")
        parser.add_lightning_class_args(GanQualityCallback, "quality")

    def before_instantiate_classes(self) -> None:
        """Expand ``${NODULE_CACHE}`` and ``~`` in the path settings."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        expand_config_paths(config)
        for key in ("data.cache_dir", "quality.out_dir"):
            if config.get(key):
                config[key] = expand_path(str(config[key]))


def gan_main(args: list[str] | None = None) -> LightningCLI:
    """``fit`` the GAN with LightningCLI, e.g. ``["fit", "--config", "configs/gan_small.yaml"]``."""
    if args is not None and list(args) == sys.argv[1:]:
        args = None
    cli = GanCLI(
        NoduleGAN,
        NoduleCubes,
        save_config_callback=LoggedConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
    finish_wandb(cli.trainer)
    return cli


if __name__ == "__main__":
    gan_main()
