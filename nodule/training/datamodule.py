"""A LightningDataModule over a LUNA16-layout data set, read through the patch cache.

The data set folder ``root`` holds ``subsetK/<seriesuid>.mhd`` (or ``.mha``, ``.nii``,
``.nii.gz``, DICOM folders named by the seriesuid), ``annotations.csv``,
``annotations_excluded.csv``, ``folds/subsetK.csv`` and a candidates table (any of them
may live elsewhere, see the arguments). Which folds train, validate and test is
configuration; a fold may serve only one of the three, so no scan is in two of them.

Candidates are labelled by :func:`~nodule.training.labels.label_candidates`; the ones on
excluded findings are left out of training only. Every candidate of the configured
scans goes into one patch cache (:mod:`nodule.patch_cache`, built in
:meth:`Luna16DataModule.prepare_data`, resumable); training reads the fixed views of
negatives and samples new randomly rotated, scaled and shifted planes from the cubes
of positives, and draws a class-balanced sample each epoch
(:class:`BalancedSampler`). Validation, test and prediction use the fixed views of
every candidate.

Batches are dicts: ``image`` (B, V, H, W) float32, ``label`` (B,) int64,
``candidate_id`` (B,) int64 (the candidate's row in the candidates table, which
:meth:`Luna16DataModule.evaluation_tables` maps back to scans and coordinates),
``weight`` (B,) float32 (a pseudo-label's confidence weight, else 1) and ``pseudo``
(B,) bool (the label is a pseudo-label).

Semi-supervision (issue 14): with ``label_fraction`` < 1 only that fraction of each
training fold's scans keeps its labels (:func:`~nodule.training.label_fraction.labelled_scans`);
the candidates of the other training scans, and of the ``unlabelled_train`` data sets, form
the ``unlabelled`` split: fixed views with label -1 and no cube, which a
:class:`~nodule.training.pseudo_labels.PseudoLabelling` callback scores and turns into
pseudo-labels (:meth:`Luna16DataModule.set_pseudo_labels`). Their hidden labels never
enter a dataset; :meth:`Luna16DataModule.hidden_labels` gives them to measure pseudo-label
quality only. With ``gan_generator``, a fraction ``gan_fraction`` of the positive training
draws are nodules of the conditional GAN blended into the fixed views of a training
negative (:mod:`nodule.training.gan_views`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nodule.candidates.learned import DEFAULT_DETECTOR, detector_trained_on
from nodule.candidates.ranker import DEFAULT_RANKER, CandidateRanker
from nodule.data.luna16 import (
    read_annotations,
    read_candidates,
    read_excluded,
    read_folds,
    read_submission,
)
from nodule.data.sets import check_dataset_folder
from nodule.data.splits import Role, load_split
from nodule.io import VOLUME_SUFFIXES, read_volume, series_uid_from_filename
from nodule.patch_cache import (
    CacheConfig,
    CacheIndex,
    build_patch_cache,
    resampled_views,
    sample_cubes,
)
from nodule.patches import Augment, PatchConfig, add_hu_noise, random_frames, scale_hu
from nodule.paths import cache_dir as default_cache_root
from nodule.training.gan_views import blend_views, generate_view_bank, load_generator
from nodule.training.label_fraction import check_label_fraction, labelled_scans
from nodule.training.labels import LABEL, NODULE_ID, ON_EXCLUDED, label_candidates, training_rows

Stage = Literal["fit", "validate", "test", "predict"]
Split = Literal["train", "val", "test", "predict", "unlabelled"]
Item = int | tuple[int, int]
"""A dataset index: a row, or ``(row, draw)`` where ``draw`` seeds the row's augmentation."""

_SUBSET_DIR = re.compile(r"^subset(\d+)$")
FROM_ANNOTATIONS = "_from_annotations"
"""Column marking the annotated nodule centres added as training positives."""


@dataclass(frozen=True)
class EvaluationTables:
    """What the FROC evaluation of one split needs.

    Attributes:
        candidates: the split's candidates indexed by ``candidate_id`` (every column of
            the candidates table, plus ``label``, ``on_excluded``, ``nodule_id``).
        annotations: included nodules of the split's scans.
        excluded: excluded findings of the split's scans (None when there is no table).
        seriesuids: the split's scans (those with an image), the FP/scan divisor.
    """

    candidates: pd.DataFrame
    annotations: pd.DataFrame
    excluded: pd.DataFrame | None
    seriesuids: list[str]


def find_scans(root: Path) -> dict[str, tuple[Path, int | None]]:
    """Images of a LUNA16-layout folder: ``{seriesuid: (path, subset or None)}``.

    Looks at ``root/subsetK/*`` (volume files, or folders taken for DICOM series named by
    their seriesuid) and at volume files directly in ``root``.
    """
    found: dict[str, tuple[Path, int | None]] = {}
    for folder in [root, *sorted(p for p in root.glob("subset*") if p.is_dir())]:
        match = _SUBSET_DIR.match(folder.name) if folder != root else None
        subset = int(match.group(1)) if match else None
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES):
                found[series_uid_from_filename(path)] = (path, subset)
            elif path.is_dir() and subset is not None:
                found[path.name] = (path, subset)
    return found


def folder_folds(root: Path) -> dict[int, list[str]]:
    """The scans of each fold of a LUNA16-layout folder that have an image:
    ``root/folds/subsetK.csv`` (as the data module reads them), else the ``subsetK``
    folders of the images."""
    scans = find_scans(root)
    if (root / "folds").is_dir():
        folds = read_folds(root / "folds")
        return {k: [u for u in uids if u in scans] for k, uids in sorted(folds.items())}
    out: dict[int, list[str]] = {}
    for uid, (_, subset) in scans.items():
        if subset is not None:
            out.setdefault(subset, []).append(uid)
    return dict(sorted(out.items()))


def read_candidate_table(path: Path) -> pd.DataFrame:
    """Read candidates: a LUNA16 candidates table (with ``class``) or a submission-like table
    (with ``probability``, as ``nodule candidates`` writes), extra columns kept.

    Raises:
        FileNotFoundError: no such file.
        Luna16FormatError: neither format.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no candidates table at {path}")
    columns = pd.read_csv(path, nrows=0).columns
    if "class" in columns or "probability" not in columns:
        return read_candidates(path)
    return read_submission(path)


class BalancedSampler(Sampler[tuple[int, int]]):
    """Draws a class-balanced sample of rows with replacement, anew each epoch.

    Each draw is positive with probability ``positive_fraction`` (a uniformly chosen
    positive row), otherwise a uniformly chosen negative row; when a class is empty
    the other is drawn. With ``unlabelled_fraction`` > 0, that fraction of the draws
    (chosen independently of their class) is replaced by uniformly drawn rows labelled -1
    (unlabelled candidates, e.g. for a consistency loss), so the labelled draws stay
    class-balanced. It yields ``(row, draw)`` pairs where ``draw`` numbers the draw across
    epochs (so a dataset can seed the row's augmentation from it, the same
    whatever the number of workers or processes). The epoch advances by itself after
    every pass (and :meth:`set_epoch` sets it, as Lightning does), so the sample
    changes every epoch even when a distributed wrapper hides the sampler.

    Args:
        labels: (N,) 0/1 labels of the rows (-1: unlabelled).
        positive_fraction: expected fraction of positives among the labelled draws.
        num_samples: draws per epoch (default N).
        seed: seed of the draws.
        unlabelled_fraction: expected fraction of draws of unlabelled rows.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        positive_fraction: float = 0.5,
        num_samples: int | None = None,
        seed: int = 0,
        unlabelled_fraction: float = 0.0,
    ) -> None:
        for name, value in (("positive_fraction", positive_fraction), ("unlabelled_fraction", unlabelled_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.set_labels(labels)
        self.positive_fraction = positive_fraction
        self.unlabelled_fraction = unlabelled_fraction
        self.num_samples = len(self.labels) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass draw the sample of ``epoch``."""
        self.epoch = epoch

    def set_labels(self, labels: Sequence[int] | np.ndarray) -> None:
        """Draw from new rows from now on (e.g. with pseudo-labelled rows added); the number
        of draws per epoch stays."""
        self.labels = np.asarray(labels).astype(np.int64)
        self.positives = np.flatnonzero(self.labels == 1)
        self.negatives = np.flatnonzero(self.labels == 0)
        self.unlabelled = np.flatnonzero(self.labels < 0)

    def indices(self, epoch: int) -> np.ndarray:
        """The rows drawn in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.num_samples
        fraction = self.positive_fraction
        if self.positives.size == 0:
            fraction = 0.0
        elif self.negatives.size == 0:
            fraction = 1.0
        positive = rng.random(n) < fraction
        out = np.empty(n, dtype=np.int64)
        n_pos = int(positive.sum())
        if n_pos:
            out[positive] = rng.choice(self.positives, n_pos)
        if n - n_pos:
            out[~positive] = rng.choice(self.negatives, n - n_pos)
        if self.unlabelled_fraction > 0 and self.unlabelled.size:
            # Drawn after the labelled rows, so that a sampler without unlabelled draws
            # gives the same sample as before this option existed.
            unlabelled = rng.random(n) < self.unlabelled_fraction
            out[unlabelled] = rng.choice(self.unlabelled, int(unlabelled.sum()))
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        base = epoch * self.num_samples
        return iter([(int(r), base + i) for i, r in enumerate(self.indices(epoch))])


class CandidatePatches(Dataset[dict[str, Any]]):
    """The cached patches of a set of candidates, held in memory.

    Args:
        patches_hu: (N, V, H, W) int16 HU fixed views.
        labels: (N,) 0/1.
        candidate_ids: (N,) ids of the candidates.
        cubes: (M, S, S, S) int16 HU cubes.
        cube_rows: (N,) index into ``cubes`` or -1.
        cube_spacing_mm: voxel size of the cubes.
        patch: view geometry and HU window.
        augment: augmentation of rows with a cube when indexed with a ``(row, draw)``
            pair; None: never augment.
        seed: seed of the augmentation (with the draw number).
        fixed_view_fraction: probability that an augmented row with a cube gets its fixed
            views (mirrored, with noise, as rows without a cube) instead of planes sampled
            from the cube, so that training positives also look like the fixed views that
            validation and test see.
        weights: (N,) loss weight of each row (default 1).
        pseudo: (N,) whether a row's label is a pseudo-label (default none).
        gan: GAN positives (:class:`GanPositives`) that replace a fraction of the augmented
            draws of labelled positives; None: none.
        teacher_views: augmented items also carry ``image_teacher``, a second, independent
            augmentation of the same row (for a consistency loss, e.g.
            :class:`~nodule.training.mean_teacher.MeanTeacher`).
    """

    def __init__(
        self,
        patches_hu: np.ndarray,
        labels: np.ndarray,
        candidate_ids: np.ndarray,
        cubes: np.ndarray,
        cube_rows: np.ndarray,
        cube_spacing_mm: float,
        patch: PatchConfig,
        augment: Augment | None = None,
        seed: int = 0,
        fixed_view_fraction: float = 0.0,
        weights: np.ndarray | None = None,
        pseudo: np.ndarray | None = None,
        gan: GanPositives | None = None,
        teacher_views: bool = False,
    ) -> None:
        if not 0.0 <= fixed_view_fraction <= 1.0:
            raise ValueError(f"fixed_view_fraction must be in [0, 1], got {fixed_view_fraction}")
        self.fixed_view_fraction = fixed_view_fraction
        self.patches_hu = patches_hu
        self.labels = np.asarray(labels, dtype=np.int64)
        self.candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
        self.cubes = cubes
        self.cube_rows = np.asarray(cube_rows, dtype=np.int64)
        self.cube_spacing_mm = cube_spacing_mm
        self.patch = patch
        self.augment = augment
        self.seed = seed
        n = len(self.labels)
        self.weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        self.pseudo = np.zeros(n, bool) if pseudo is None else np.asarray(pseudo, bool)
        self.gan = gan
        self.teacher_views = teacher_views

    def extended(
        self,
        patches_hu: np.ndarray,
        labels: np.ndarray,
        candidate_ids: np.ndarray,
        weights: np.ndarray,
        pseudo: bool = True,
    ) -> CandidatePatches:
        """This dataset with rows appended (fixed views only, no cube): pseudo-labelled
        rows, or (``pseudo`` False, labels -1) unlabelled ones."""
        return CandidatePatches(
            patches_hu=np.concatenate([self.patches_hu, patches_hu]),
            labels=np.concatenate([self.labels, np.asarray(labels, np.int64)]),
            candidate_ids=np.concatenate([self.candidate_ids, np.asarray(candidate_ids, np.int64)]),
            cubes=self.cubes,
            cube_rows=np.concatenate([self.cube_rows, np.full(len(labels), -1, np.int64)]),
            cube_spacing_mm=self.cube_spacing_mm,
            patch=self.patch,
            augment=self.augment,
            seed=self.seed,
            fixed_view_fraction=self.fixed_view_fraction,
            weights=np.concatenate([self.weights, np.asarray(weights, np.float32)]),
            pseudo=np.concatenate([self.pseudo, np.full(len(labels), pseudo, bool)]),
            gan=self.gan,
            teacher_views=self.teacher_views,
        )

    def assign(self, other: CandidatePatches) -> None:
        """Take ``other``'s rows in place (a DataLoader over this dataset sees them)."""
        self.__dict__.update(other.__dict__)

    def __len__(self) -> int:
        return len(self.labels)

    def views(self, row: int, draw: int | None = None, stream: int = 0) -> np.ndarray:
        """The (V, H, W) float32 views of ``row``: augmented when ``draw`` is given (planes
        resampled from its cube when it has one; otherwise mirrored, with noise);
        ``stream`` > 0 gives further independent augmentations of the same draw."""
        cube = int(self.cube_rows[row])
        if draw is None or self.augment is None:
            return scale_hu(self.patches_hu[row], self.patch)
        rng = np.random.default_rng([self.seed, draw] if stream == 0 else [self.seed, draw, stream])
        if (
            self.gan is not None
            and self.labels[row] == 1
            and not self.pseudo[row]
            and rng.random() < self.gan.fraction
        ):
            views = scale_hu(self.gan.views(self.patches_hu, rng), self.patch)
            return add_hu_noise(np.ascontiguousarray(views), self.patch, self.augment.noise_hu, rng)
        fixed = self.fixed_view_fraction > 0 and rng.random() < self.fixed_view_fraction
        if cube >= 0 and not fixed:
            frames = random_frames(1, self.patch, self.augment, rng)
            views = sample_cubes(
                self.cubes[cube : cube + 1], self.cube_spacing_mm, self.patch, frames
            )[0]
        else:
            views = scale_hu(self.patches_hu[row], self.patch)
            if self.augment.flip:  # cheap augmentation of negatives: mirror the image axes
                views = views[:, :: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
        return add_hu_noise(np.ascontiguousarray(views), self.patch, self.augment.noise_hu, rng)

    def __getitem__(self, item: Item) -> dict[str, Any]:
        row, draw = (int(item[0]), int(item[1])) if isinstance(item, tuple) else (int(item), None)
        out = {
            "image": torch.from_numpy(self.views(row, draw)),
            "label": torch.tensor(self.labels[row]),
            "candidate_id": torch.tensor(self.candidate_ids[row]),
            "weight": torch.tensor(self.weights[row]),
            "pseudo": torch.tensor(self.pseudo[row]),
        }
        if self.teacher_views and draw is not None:
            out["image_teacher"] = torch.from_numpy(self.views(row, draw, stream=1))
        return out


@dataclass
class GanPositives:
    """Nodules of the conditional GAN, blended into the fixed views of training negatives.

    Attributes:
        bank: nine views of each generated 3D nodule (occupancy and tissue HU), from
            :func:`nodule.training.gan_views.generate_view_bank`.
        backgrounds: rows (of the dataset's ``patches_hu``) of the labelled negatives whose
            fixed views serve as context.
        fraction: probability that an augmented draw of a labelled positive is replaced by
            a GAN nodule.
    """

    bank: Any
    backgrounds: np.ndarray
    fraction: float

    def views(self, patches_hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(V, H, W) HU views of a random GAN nodule in a random negative's context, mirrored."""
        k = int(rng.integers(len(self.bank.occupancy)))
        background = patches_hu[int(self.backgrounds[int(rng.integers(len(self.backgrounds)))])]
        views = blend_views(background.astype(np.float32), self.bank.occupancy[k], self.bank.hu[k])
        return np.asarray(views[:, :: rng.choice([-1, 1]), :: rng.choice([-1, 1])], np.float32)


def _expand(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser()


class Luna16DataModule(pl.LightningDataModule):
    """Candidates of a LUNA16-layout data set as multiplanar patches, split by fold.

    Args:
        root: the data set folder (``~`` expanded).
        candidates: candidates CSV: LUNA16 candidates (``seriesuid, coordX, coordY, coordZ,
            class``) or a submission-like table (``..., probability``, as written by
            ``nodule candidates``), extra columns kept; default ``root/candidates.csv``.
        annotations: default ``root/annotations.csv`` (if that does not exist, every
            candidate is labelled 0, e.g. to predict on unannotated scans; fitting then
            fails for want of positives). A path given here must exist.
        excluded: default ``root/annotations_excluded.csv`` when it exists.
        folds: folder of ``subsetK.csv`` lists; default ``root/folds``, else the
            ``subsetK`` folders of the images.
        train_folds: folds to train on.
        val_folds: folds to validate on (and to pick the checkpoint by).
        test_folds: folds to test on.
        predict_folds: folds to predict; default the test folds.
        cache_dir: patch cache folder; default under ``$NODULE_CACHE/patches``.
        patch: view geometry and HU window.
        augmentation: augmentation of training patches; null for none.
        cube_spacing_mm: voxel size of the cached cubes of positives.
        batch_size: candidates per batch.
        num_workers: DataLoader worker processes.
        positive_fraction: expected fraction of positives in a training batch.
        samples_per_epoch: training draws per epoch (default: the training candidates).
        add_annotations: also train on the annotated nodule centres as positives (the
            candidates may miss some nodules).
        seed: seed of the sampling and augmentation.
        fixed_view_fraction: probability that a training positive is shown its fixed
            (cached, mirrored, noisy) views rather than planes resampled from its cube.
        cache_jobs: scans loaded concurrently while building the cache.
        progress: progress bar while building the cache.
        dataset: the data set of the split description that ``root`` holds (e.g.
            ``train_seed2000``): the train, validation and test folds are then its subsets'
            roles (fold lists given as well must agree), and ``root`` must hold exactly its
            scans. None: the fold lists as given.
        split_file: the split description (default ``configs/splits/default.yaml``).
        ranker: the candidate ranker the candidates were ranked with (default the shipped
            ``ranker.json``): no scan it records having been trained on may validate, test
            or be predicted here.
        extra_train: more data sets of the split description that only train (e.g. nodules
            inserted into the training-side real scans, ``train_cptac_seed0``): each is read
            from ``extra_roots`` (default ``$NODULE_CACHE/sets/<name>``) with its own
            candidates, annotations and excluded findings, must be the split's data set, and
            its ``train`` subsets join the training folds (as folds ``10 + 10 * j + k``); a
            data set with a validation or test subset is refused.
        extra_roots: folders of ``extra_train``, in the same order.
        label_fraction: fraction of each training fold's scans (the extra training sets'
            too) whose labels are used (:func:`~nodule.training.label_fraction.labelled_scans`);
            the candidates of the others form the ``unlabelled`` split.
        label_seed: seed of the choice of labelled scans.
        unlabelled_train: data sets of the split description that join training without
            labels (e.g. the training-side real backgrounds ``train_cptac_seed0``): their
            train subsets' candidates form the ``unlabelled`` split (folds after the
            ``extra_train`` ones); a data set with a validation or test subset is refused.
        unlabelled_roots: folders of ``unlabelled_train`` (default ``$NODULE_CACHE/sets/<name>``).
        gan_generator: a generator exported by :func:`nodule.training.gan_views.export_generator`:
            a fraction ``gan_fraction`` of the augmented positive draws are its nodules
            blended into the fixed views of labelled training negatives; None: no GAN.
        gan_fraction: that fraction.
        gan_bank_size: generated nodules (each viewed once, randomly rotated) per fit.
        gan_texture_mix: probabilities of the GAN's textures (solid, part-solid,
            ground-glass); diameters are drawn from the labelled training nodules.
        unlabelled_fraction: fraction of the training draws taken from the ``unlabelled``
            split's candidates (label -1: no supervised loss; they serve a consistency
            loss such as :class:`~nodule.training.mean_teacher.MeanTeacher`'s); 0: none.
        teacher_views: training items carry a second augmentation, ``image_teacher``.
    """

    def __init__(
        self,
        root: Path,
        candidates: Path | None = None,
        annotations: Path | None = None,
        excluded: Path | None = None,
        folds: Path | None = None,
        train_folds: list[int] | None = None,
        val_folds: list[int] | None = None,
        test_folds: list[int] | None = None,
        predict_folds: list[int] | None = None,
        cache_dir: Path | None = None,
        patch: PatchConfig = PatchConfig(),  # noqa: B008 - frozen dataclass
        augmentation: Augment | None = Augment(),  # noqa: B008 - frozen dataclass
        cube_spacing_mm: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        positive_fraction: float = 0.5,
        samples_per_epoch: int | None = None,
        add_annotations: bool = True,
        seed: int = 0,
        fixed_view_fraction: float = 0.0,
        cache_jobs: int = 1,
        progress: bool = True,
        dataset: str | None = None,
        split_file: Path | None = None,
        ranker: Path | None = None,
        extra_train: list[str] | None = None,
        extra_roots: list[Path] | None = None,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        unlabelled_train: list[str] | None = None,
        unlabelled_roots: list[Path] | None = None,
        gan_generator: Path | None = None,
        gan_fraction: float = 0.3,
        gan_bank_size: int = 1024,
        gan_texture_mix: tuple[float, float, float] = (0.6, 0.2, 0.2),
        unlabelled_fraction: float = 0.0,
        teacher_views: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.unlabelled_train = list(unlabelled_train or [])
        self.extra_train = list(extra_train or [])
        self.extra_roots = self._extra_roots(self.extra_train, extra_roots)
        self.unlabelled_roots = self._extra_roots(self.unlabelled_train, unlabelled_roots)
        check_label_fraction(label_fraction)
        self.label_fraction = label_fraction
        self.label_seed = label_seed
        if not 0.0 <= gan_fraction <= 1.0:
            raise ValueError(f"gan_fraction must be in [0, 1], got {gan_fraction}")
        self.gan_generator = _expand(gan_generator)
        self.gan_fraction = gan_fraction
        self.gan_bank_size = gan_bank_size
        self.gan_texture_mix = tuple(gan_texture_mix)
        if not 0.0 <= unlabelled_fraction < 1.0:
            raise ValueError(f"unlabelled_fraction must be in [0, 1), got {unlabelled_fraction}")
        self.unlabelled_fraction = unlabelled_fraction
        self.teacher_views = teacher_views
        self.dataset = dataset
        self.split_file = _expand(split_file)
        self.ranker_path = _expand(ranker)
        if dataset is not None:
            train_folds, val_folds, test_folds = self._split_folds(
                dataset, train_folds, val_folds, test_folds
            )
        self.candidates_path = _expand(candidates) or self.root / "candidates.csv"
        self.annotations_path = _expand(annotations) or self.root / "annotations.csv"
        if annotations is not None and not self.annotations_path.is_file():
            raise FileNotFoundError(f"no annotations table at {self.annotations_path}")
        default_excluded = self.root / "annotations_excluded.csv"
        self.excluded_path = _expand(excluded) or (
            default_excluded if default_excluded.exists() else None
        )
        self.folds_path = _expand(folds) or self.root / "folds"
        self.fold_lists: dict[Split, list[int]] = {
            "train": list(train_folds or []),
            "val": list(val_folds or []),
            "test": list(test_folds or []),
            "predict": list(test_folds or []) if predict_folds is None else list(predict_folds),
        }
        self.fold_lists["train"] += list(self._extra_folds().values())
        seen: dict[int, str] = {}
        for split in ("train", "val", "test"):
            for fold in self.fold_lists[split]:
                if fold in seen and seen[fold] != split:
                    raise ValueError(f"fold {fold} is in both {seen[fold]} and {split}")
                seen[fold] = split
        self.patch = patch
        self.augmentation = augmentation
        self.cache_config = CacheConfig(
            patch=patch,
            cube_spacing_mm=cube_spacing_mm,
            max_scale=augmentation.scale_range[1] if augmentation else 1.0,
            max_shift_mm=augmentation.shift_mm if augmentation else 0.0,
            cubes_for="positives" if augmentation else "none",
        )
        self.cache_path = _expand(cache_dir) or self._default_cache_dir()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.positive_fraction = positive_fraction
        self.samples_per_epoch = samples_per_epoch
        self.add_annotations = add_annotations
        self.seed = seed
        self.fixed_view_fraction = fixed_view_fraction
        self.cache_jobs = cache_jobs
        self.progress = progress
        self._tables: dict[str, Any] | None = None
        self.datasets: dict[Split, CandidatePatches] = {}
        self.sampler: BalancedSampler | None = None
        self._views_at: dict[tuple[Any, ...], np.ndarray] = {}
        self._train_base: CandidatePatches | None = None

    # ------------------------------------------------------------------ split checks

    def _split_folds(
        self, dataset: str, *given: list[int] | None
    ) -> tuple[list[int], list[int], list[int]]:
        """The train, validation and test folds of a split data set; given lists must agree."""
        split = load_split(self.split_file)
        entry = split.dataset(dataset)
        roles: tuple[Role, Role, Role] = ("train", "val", "test")
        folds = tuple(entry.folds(role) for role in roles)
        for role, want, got in zip(roles, folds, given, strict=True):
            if got is not None and sorted(got) != want:
                raise ValueError(
                    f"{role}_folds {got} differ from the {role} subsets {want} of data set {dataset} "
                    f"in {split.path}"
                )
        return folds[0], folds[1], folds[2]

    @staticmethod
    def _extra_roots(names: list[str], roots: list[Path] | None) -> list[Path]:
        """The folders of the extra training sets (checked against the split in :meth:`tables`)."""
        from nodule.data.sets import dataset_root

        if roots is not None and len(roots) != len(names):
            raise ValueError(
                f"extra_roots has {len(roots)} folders for {len(names)} extra_train data sets"
            )
        return (
            [Path(r).expanduser() for r in roots]
            if roots is not None
            else [dataset_root(n) for n in names]
        )

    @property
    def extra_sets(self) -> list[tuple[str, Path]]:
        """``(name, folder)`` of the extra training sets: ``extra_train``, then ``unlabelled_train``."""
        return [
            *zip(self.extra_train, self.extra_roots, strict=True),
            *zip(self.unlabelled_train, self.unlabelled_roots, strict=True),
        ]

    def _extra_folds(self) -> dict[tuple[int, int], int]:
        """``(j, subset) -> fold`` for every train subset of the ``j``-th extra training set:
        fold ``10 + 10 * j + subset``, in order."""
        if not self.extra_sets:
            return {}
        split = load_split(self.split_file)
        out: dict[tuple[int, int], int] = {}
        for j, (name, _) in enumerate(self.extra_sets):
            entry = split.dataset(name)
            other = sorted({r for r in entry.roles.values() if r != "train"})
            if other:
                raise ValueError(
                    f"{'extra_train' if j < len(self.extra_train) else 'unlabelled_train'} "
                    f"data set {name} of {split.path} has {other} subsets; "
                    "only data sets (or subsets) that train may be added to training"
                )
            out.update({(j, k): 10 + 10 * j + k for k in entry.folds("train")})
        return out

    def _check_scans(self, fold_of: dict[str, int]) -> None:
        """Refuse a root that is not the configured data set, and scans the candidate ranker
        or the learned candidate detector was trained on in the validation, test or prediction folds."""
        if self.dataset is not None:
            check_dataset_folder(load_split(self.split_file), self.dataset, self.root)
        for name, root in self.extra_sets:
            check_dataset_folder(load_split(self.split_file), name, root)
        ranker = CandidateRanker.from_json(self.ranker_path or DEFAULT_RANKER)
        parts = {
            f"the candidate ranker {self.ranker_path or DEFAULT_RANKER}": (ranker.trained_on_uids, "train_candidate_ranker.py"),
            f"the learned candidate detector {DEFAULT_DETECTOR}": (detector_trained_on(), "train_candidate_detector.py"),
        }
        for part, (uids, script) in parts.items():
            seen = set(uids or ())
            for split in ("val", "test", "predict"):
                folds = set(self.fold_lists[split])
                leaked = sorted(u for u, k in fold_of.items() if k in folds and u in seen)
                if leaked:
                    raise ValueError(
                        f"{part} was trained on {len(leaked)} "
                        f"{split} scan(s) of {self.root} (folds {sorted(folds)}, e.g. {leaked[0]}): "
                        "a model measured on them would be measured on data a learned part saw; "
                        f"retrain it on other data (scripts/{script})"
                    )

    # ------------------------------------------------------------------ tables

    def _default_cache_dir(self) -> Path:
        """``$NODULE_CACHE/patches/<data set>-<hash of its paths>/<geometry>-<fingerprint>``,
        the fingerprint of every cache setting that shapes the stored arrays."""
        text = f"{self.root.resolve()}|{self.candidates_path.resolve()}"
        text += "".join(
            f"|{name}={root.resolve()}"
            for name, root in self.extra_sets
        )
        key = hashlib.sha1(text.encode())
        c = self.cache_config
        p = c.patch
        name = f"v{p.n_views}_px{p.size_px}_fov{p.fov_mm:g}_cube{c.cube_size}_{c.cubes_for}"
        name += f"-{c.fingerprint()}"
        return default_cache_root("patches", f"{self.root.name}-{key.hexdigest()[:10]}") / name

    def tables(self) -> dict[str, Any]:
        """The data set's tables, read once: ``scans``, ``fold_of``, ``candidates`` (labelled,
        indexed by candidate id), ``annotations``, ``excluded``."""
        if self._tables is not None:
            return self._tables
        scans = find_scans(self.root)
        if self.folds_path.is_dir():
            fold_of = {u: k for k, uids in read_folds(self.folds_path).items() for u in uids}
        else:
            fold_of = {u: s for u, (_, s) in scans.items() if s is not None}
        self._check_scans(fold_of)
        annotations = (
            read_annotations(self.annotations_path)
            if self.annotations_path.exists()
            else pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        )
        excluded = read_excluded(self.excluded_path) if self.excluded_path else None
        parts = [self._labelled(read_candidate_table(self.candidates_path), annotations, excluded)]
        extra_folds = self._extra_folds()
        unlabelled: set[str] = set()
        n_labelled_sets = len(self.extra_train)
        for j, (_, root) in enumerate(self.extra_sets):
            subset_of = {u: k for k, uids in read_folds(root / "folds").items() for u in uids}
            mine = {u: extra_folds[(j, k)] for u, k in subset_of.items() if (j, k) in extra_folds}
            scans.update({u: v for u, v in find_scans(root).items() if u in mine})
            fold_of.update(mine)
            extra_ann = read_annotations(root / "annotations.csv")
            extra_exc = root / "annotations_excluded.csv"
            extra_excluded = read_excluded(extra_exc) if extra_exc.exists() else None
            table = read_candidate_table(root / "candidates.csv")
            parts.append(
                self._labelled(
                    table[table["seriesuid"].isin(mine.keys())],
                    extra_ann[extra_ann["seriesuid"].isin(mine.keys())],
                    extra_excluded,
                )
            )
            if j >= n_labelled_sets:  # its labels stay hidden: in the candidates' table only
                unlabelled.update(mine)
                continue
            annotations = pd.concat(
                [annotations, extra_ann[extra_ann["seriesuid"].isin(mine.keys())]], ignore_index=True
            )
            if extra_excluded is not None:
                excluded = (
                    extra_excluded
                    if excluded is None
                    else pd.concat([excluded, extra_excluded], ignore_index=True)
                )
        labelled = parts[0]
        if len(parts) > 1:
            labelled = pd.concat(parts, ignore_index=True)
            if FROM_ANNOTATIONS in labelled.columns:
                labelled[FROM_ANNOTATIONS] = (
                    labelled[FROM_ANNOTATIONS].astype("boolean").fillna(False).astype(bool)
                )
        labelled.index.name = "candidate_id"
        self._tables = {
            "scans": scans,
            "fold_of": fold_of,
            "candidates": labelled,
            "annotations": annotations,
            "excluded": excluded,
            "unlabelled": unlabelled,
        }
        return self._tables

    def hidden_scans(self) -> set[str]:
        """Training scans whose labels are hidden: those of ``unlabelled_train`` and, with
        ``label_fraction`` < 1, the training scans not drawn as labelled."""
        t = self.tables()
        if "hidden" not in t:
            train = set(self.fold_lists["train"])
            fold_scans: dict[int, list[str]] = {}
            for uid, fold in t["fold_of"].items():
                if fold in train and uid in t["scans"] and uid not in t["unlabelled"]:
                    fold_scans.setdefault(fold, []).append(uid)
            with_nodules = set(t["annotations"]["seriesuid"].astype(str))
            kept = labelled_scans(fold_scans, with_nodules, self.label_fraction, self.label_seed)
            drawn_out = {u for uids in fold_scans.values() for u in uids if u not in kept}
            t["hidden"] = set(t["unlabelled"]) | drawn_out
        hidden: set[str] = t["hidden"]
        return hidden

    def hidden_labels(self, candidate_ids: Sequence[int] | np.ndarray) -> pd.Series:
        """The hidden 0/1 labels of ``unlabelled`` candidates, by candidate id: only to
        measure pseudo-label quality, never to train or select (issue 14)."""
        ids = np.asarray(candidate_ids, dtype=np.int64)
        labels = self.tables()["candidates"][LABEL]
        out: pd.Series = labels.loc[ids].astype(np.int64)
        return out

    def _labelled(
        self, candidates: pd.DataFrame, annotations: pd.DataFrame, excluded: pd.DataFrame | None
    ) -> pd.DataFrame:
        """One data set's candidates labelled against its own reference standard (plus its
        annotated centres when ``add_annotations``)."""
        candidates = candidates.reset_index(drop=True)
        if self.add_annotations and len(annotations):
            extra = annotations[["seriesuid", "coordX", "coordY", "coordZ"]].copy()
            extra[FROM_ANNOTATIONS] = True
            candidates[FROM_ANNOTATIONS] = False
            candidates = pd.concat([candidates, extra], ignore_index=True)
        return label_candidates(candidates, annotations, excluded)

    def split_seriesuids(self, split: Split) -> list[str]:
        """Scans with an image in the folds of ``split`` (``train``: the labelled ones;
        ``unlabelled``: the training scans whose labels are hidden)."""
        t = self.tables()
        folds = set(self.fold_lists["train" if split == "unlabelled" else split])
        uids = [u for u in t["scans"] if t["fold_of"].get(u) in folds]
        if split in ("train", "unlabelled"):
            hidden = self.hidden_scans()
            uids = [u for u in uids if (u in hidden) == (split == "unlabelled")]
        return uids

    def split_candidates(self, split: Split) -> pd.DataFrame:
        """Labelled candidates of a split: for training without those on excluded findings (and
        with the annotated centres when ``add_annotations``); otherwise the candidates table's rows."""
        t = self.tables()
        rows = t["candidates"]
        rows = rows[rows["seriesuid"].isin(set(self.split_seriesuids(split)))]
        if split == "train":
            return training_rows(rows)
        if split == "unlabelled":  # every detected candidate, its label hidden
            if FROM_ANNOTATIONS in rows.columns:
                rows = rows[~rows[FROM_ANNOTATIONS].to_numpy(bool)].drop(columns=FROM_ANNOTATIONS)
            hidden: pd.DataFrame = rows.drop(columns=[c for c in (ON_EXCLUDED, NODULE_ID) if c in rows.columns])
            hidden[LABEL] = -1
            return hidden
        if FROM_ANNOTATIONS in rows.columns:
            rows = rows[~rows[FROM_ANNOTATIONS].to_numpy(bool)].drop(columns=FROM_ANNOTATIONS)
        out: pd.DataFrame = rows
        return out

    def evaluation_tables(self, split: Split) -> EvaluationTables:
        """Candidates, reference standard and scan list of a split, for the FROC."""
        t = self.tables()
        uids = self.split_seriesuids(split)
        keep = set(uids)
        excluded = t["excluded"]
        candidates = self.split_candidates(split)
        return EvaluationTables(
            candidates=candidates,
            annotations=t["annotations"][t["annotations"]["seriesuid"].isin(keep)],
            excluded=None if excluded is None else excluded[excluded["seriesuid"].isin(keep)],
            seriesuids=uids,
        )

    # ------------------------------------------------------------------ Lightning hooks

    def _needed_splits(self, stage: str | None) -> list[Split]:
        if stage == "fit":
            return ["train", "val", "unlabelled"] if self.hidden_scans() else ["train", "val"]
        if stage == "validate":
            return ["val"]
        if stage == "test":
            return ["test"]
        if stage == "predict":
            return ["predict"]
        return ["train", "val", "test", "predict", "unlabelled"]

    def check_training_positives(self) -> None:
        """Refuse to train on a split without positives (e.g. a wrong annotations path).

        Raises:
            ValueError: the training candidates have no positive, naming the annotations
                file and its row count, the training folds and the number of candidates.
        """
        rows = self.split_candidates("train")
        if int((rows[LABEL] == 1).sum()):
            return
        annotations = self.tables()["annotations"]
        uids = set(self.split_seriesuids("train"))
        state = "" if self.annotations_path.is_file() else ", the file does not exist"
        raise ValueError(
            f"no positives to train on: annotations {self.annotations_path} ({len(annotations)} "
            f"rows{state}; {int(annotations['seriesuid'].isin(uids).sum())} on the training "
            f"scans), training folds {self.fold_lists['train']} ({len(uids)} scans with an "
            f"image), {len(rows)} training candidates"
        )

    def prepare_data(self) -> None:
        """Build (or complete) the patch cache of every configured split's candidates
        (when a trainer is fitting, first :meth:`check_training_positives`; when it
        validates, tests or predicts, only that stage's split)."""
        trainer = getattr(self, "trainer", None)
        fn = None if trainer is None or trainer.state.fn is None else str(trainer.state.fn.value)
        if fn == "fit":
            self.check_training_positives()
        t = self.tables()
        scans = t["scans"]
        splits: list[Split] = (
            ["train", "val", "test", "predict"] if fn in (None, "fit") else self._needed_splits(fn)
        )
        # The training split's rows are among the training scans' rows added below.
        parts = [self.split_candidates(split) for split in splits if split != "train"]
        if "train" in splits:
            # Every row of the training scans with its true label, whichever scans are hidden
            # in this run, so that runs of any labelled fraction share one cache (the cache is
            # storage: what a dataset takes from it is decided in _dataset).
            train_folds = set(self.fold_lists["train"])
            in_train = t["candidates"]["seriesuid"].map(t["fold_of"]).isin(train_folds)
            parts.append(t["candidates"][in_train.to_numpy(bool)])
        rows = pd.concat(parts)
        rows = rows[~rows.index.duplicated()].sort_index()
        uids = list(dict.fromkeys(rows["seriesuid"]))
        build_patch_cache(
            [(u, functools.partial(read_volume, scans[u][0])) for u in uids],
            rows[["seriesuid", "coordX", "coordY", "coordZ", LABEL]],
            self.cache_path,
            config=self.cache_config,
            jobs=self.cache_jobs,
            progress=self.progress,
        )

    def setup(self, stage: str | None = None) -> None:
        """Load the cached patches of the splits ``stage`` needs.

        Raises:
            ValueError: ``stage`` is ``fit`` and the training split has no positives
                (:meth:`check_training_positives`), or the cache was built with other
                settings.
        """
        if stage == "fit":
            self.check_training_positives()
        index = CacheIndex.load(self.cache_path, expected=self.cache_config)
        for split in self._needed_splits(stage):
            if split not in self.datasets:
                self.datasets[split] = self._dataset(index, split)
                if split == "train" and self.gan_generator is not None:
                    self.datasets[split].gan = self._gan_positives(self.datasets[split])
        train = self.datasets.get("train")
        if self.unlabelled_fraction > 0 and train is not None and not (train.labels < 0).any():
            self._add_unlabelled_rows()

    def _add_unlabelled_rows(self) -> None:
        """Append the ``unlabelled`` split's candidates to the training rows, labelled -1."""
        if "unlabelled" not in self.datasets:
            raise ValueError(
                "unlabelled_fraction > 0 needs unlabelled candidates: a label_fraction < 1 "
                "or unlabelled_train data sets"
            )
        unlabelled = self.datasets["unlabelled"]
        train = self.datasets["train"]
        train.assign(
            train.extended(
                unlabelled.patches_hu,
                np.full(len(unlabelled), -1, np.int64),
                unlabelled.candidate_ids,
                np.ones(len(unlabelled), np.float32),
                pseudo=False,
            )
        )

    def _gan_positives(self, train: CandidatePatches) -> GanPositives:
        """The GAN's nodules for training: a bank of ``gan_bank_size`` generated nodules
        (diameters drawn from the labelled training nodules, textures by ``gan_texture_mix``),
        with the labelled negatives as context."""
        assert self.gan_generator is not None
        generator, _ = load_generator(self.gan_generator)
        rng = np.random.default_rng([self.seed, 14])
        labelled = set(self.split_seriesuids("train"))
        annotations = self.tables()["annotations"]
        diameters = annotations[annotations["seriesuid"].isin(labelled)]["diameter_mm"].to_numpy(float)
        if diameters.size == 0:
            raise ValueError("gan_generator needs labelled training nodules to draw diameters from")
        n = self.gan_bank_size
        mix = np.asarray(self.gan_texture_mix, float)
        bank = generate_view_bank(
            generator,
            n,
            rng.choice(diameters, n),
            rng.choice(len(mix), n, p=mix / mix.sum()),
            self.patch,
            seed=self.seed,
        )
        backgrounds = np.flatnonzero((train.labels == 0) & ~train.pseudo)
        return GanPositives(bank=bank, backgrounds=backgrounds, fraction=self.gan_fraction)

    def set_pseudo_labels(self, pseudo: pd.DataFrame) -> None:
        """Train on the labelled rows plus these pseudo-labelled ``unlabelled`` candidates
        from now on (replacing earlier pseudo-labels); the class-balanced sampler follows.

        Args:
            pseudo: ``candidate_id`` (index or column), ``pseudo_label`` (0/1) and
                ``weight`` (the loss weight of the row, e.g. its confidence).
        """
        if "train" not in self.datasets or "unlabelled" not in self.datasets:
            self.setup("fit")
        if self._train_base is None:
            self._train_base = copy.copy(self.datasets["train"])
        table = pseudo.set_index("candidate_id") if "candidate_id" in pseudo.columns else pseudo
        unlabelled = self.datasets["unlabelled"]
        position = pd.Series(np.arange(len(unlabelled)), index=unlabelled.candidate_ids)
        rows = position.loc[table.index.to_numpy(np.int64)].to_numpy()
        extended = self._train_base.extended(
            unlabelled.patches_hu[rows],
            table["pseudo_label"].to_numpy(np.int64),
            table.index.to_numpy(np.int64),
            table["weight"].to_numpy(np.float32),
        )
        self.datasets["train"].assign(extended)
        if self.sampler is not None:
            self.sampler.set_labels(extended.labels)

    def _dataset(self, index: CacheIndex, split: Split) -> CandidatePatches:
        rows = self.split_candidates(split)
        table = index.table.set_index("candidate_id")
        missing = rows.index.difference(table.index)
        if len(missing):
            raise RuntimeError(
                f"{len(missing)} {split} candidates are not in the patch cache at "
                f"{self.cache_path}; run prepare_data"
            )
        located = table.loc[rows.index]
        n = len(rows)
        v, s = self.patch.n_views, self.patch.size_px
        patches = np.zeros((n, v, s, s), np.int16)
        cube_rows = np.full(n, -1, np.int64)
        cubes: list[np.ndarray] = []
        positions = np.arange(n)
        for file, group in located.assign(_pos=positions).groupby("file", sort=False):
            with np.load(index.root / str(file)) as data:
                rows_in_file = group["row"].to_numpy(np.int64)
                patches[group["_pos"].to_numpy()] = data["patches"][rows_in_file]
                has_cube = group["cube_row"].to_numpy(np.int64) >= 0
                if has_cube.any() and split == "train":
                    start = sum(len(c) for c in cubes)
                    cubes.append(data["cubes"][group["cube_row"].to_numpy(np.int64)[has_cube]])
                    cube_rows[group["_pos"].to_numpy()[has_cube]] = start + np.arange(
                        int(has_cube.sum())
                    )
        size = self.cache_config.cube_size
        return CandidatePatches(
            patches_hu=patches,
            labels=rows[LABEL].to_numpy(np.int64),
            candidate_ids=rows.index.to_numpy(np.int64),
            cubes=np.concatenate(cubes) if cubes else np.zeros((0, size, size, size), np.int16),
            cube_rows=cube_rows,
            cube_spacing_mm=self.cache_config.cube_spacing_mm,
            patch=self.patch,
            augment=self.augmentation if split == "train" else None,
            seed=self.seed,
            fixed_view_fraction=self.fixed_view_fraction,
            teacher_views=self.teacher_views and split == "train",
        )

    def views_of(self, split: Split, candidate_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Fixed, HU-windowed views (N, V, H, W) of candidates of a loaded split."""
        dataset = self.datasets[split]
        position = pd.Series(np.arange(len(dataset)), index=dataset.candidate_ids)
        rows = position.loc[np.asarray(candidate_ids, dtype=np.int64)].to_numpy()
        return scale_hu(dataset.patches_hu[rows], self.patch)

    def views_at(self, seriesuid: str, center_xyz: Sequence[float] | np.ndarray) -> np.ndarray:
        """Fixed views (V, H, W) at any point of a scan, made as the cache makes them.

        The first call for a point reads the scan; the views are kept for later calls
        (e.g. the missed nodules of every validation epoch).
        """
        center = np.asarray(center_xyz, np.float64).reshape(3)
        key = (seriesuid, *(round(float(v), 3) for v in center))
        if key not in self._views_at:
            path = self.tables()["scans"][seriesuid][0]
            hu = resampled_views(read_volume(path), center, self.cache_config)
            self._views_at[key] = hu[0]
        return scale_hu(self._views_at[key], self.patch)

    def _loader(self, split: Split, sampler: Sampler[Any] | None = None) -> DataLoader[Any]:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(split, split))
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Class-balanced, augmented training batches."""
        if "train" not in self.datasets:
            self.setup("fit")
        if self.sampler is None:
            self.sampler = BalancedSampler(
                self.datasets["train"].labels,
                self.positive_fraction,
                self.samples_per_epoch,
                self.seed,
                unlabelled_fraction=self.unlabelled_fraction,
            )
        return self._loader("train", self.sampler)

    def val_dataloader(self) -> DataLoader[Any]:
        """Every validation candidate, fixed views."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        """Every test candidate, fixed views."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader[Any]:
        """Every candidate to predict, fixed views."""
        return self._loader("predict")
