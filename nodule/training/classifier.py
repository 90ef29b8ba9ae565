"""The candidate classifier: a LightningModule around any patch network.

The network (e.g. :class:`~nodule.models.multistream.MultiStreamNet`, chosen in YAML by
``class_path``) maps ``(B, V, H, W)`` patches to two-class logits. The module trains it
with cross-entropy or focal loss, with the optimiser and learning-rate schedule of the
configuration, and logs loss and AUROC per step/epoch. At the end of every validation
(and test) epoch it gathers the candidates' probabilities from all processes, puts
them back on their scans and coordinates (through the data module's
``evaluation_tables``), and scores them with the LUNA16 FROC
(:func:`~nodule.evaluation.froc.evaluate_froc`): ``val/cpm`` is what checkpoints are
chosen by. Prediction returns each candidate's id and nodule probability, for
:class:`~nodule.training.callbacks.SubmissionWriter`.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC

from nodule.evaluation.froc import FrocResult, evaluate_froc

LossName = Literal["cross_entropy", "focal"]
EvalSplit = Literal["val", "test"]


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Focal loss (Lin et al. 2017) of softmax logits, averaged over the batch.

    ``-alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the probability of the true class;
    ``gamma = 0`` and ``alpha = None`` give cross-entropy.

    Args:
        logits: (B, C) logits (or log-probabilities).
        target: (B,) class indices.
        gamma: focusing exponent (>= 0).
        alpha: weight of class 1 (``1 - alpha`` for the others); None: no weighting.
        reduction: ``mean`` over the batch, or ``none`` (the (B,) per-candidate losses).

    Returns:
        The scalar loss (or the per-candidate losses).
    """
    one_hot = F.one_hot(target.long(), logits.shape[-1]).float()
    return soft_focal_loss(logits, one_hot, gamma, alpha, reduction)


def soft_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Focal loss against soft targets (FocalMix, Wang et al. 2020): ``-sum_c q_c alpha_c
    (1 - p_c)^gamma log p_c``; one-hot targets give :func:`focal_loss` and ``gamma = 0``
    cross-entropy.

    Args:
        logits: (B, C) logits.
        target: (B, C) target distributions ``q``, or (B,) target probabilities of class 1
            of two classes (``q = (1 - t, t)``).
        gamma: focusing exponent (>= 0).
        alpha: weight of class 1 (``1 - alpha`` for the others); None: no weighting.
        reduction: ``mean`` over the batch, or ``none``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    q = target.float()
    if q.ndim == 1:
        q = two_class(q)
    focus = (1.0 - logp.exp()).clamp(min=0.0) ** gamma
    if alpha is not None:
        weights = torch.full((logits.shape[-1],), 1.0 - alpha, device=logits.device)
        weights[1] = alpha
        focus = focus * weights
    loss = -(q * focus * logp).sum(dim=-1)
    return loss if reduction == "none" else loss.mean()


def two_class(probability: Tensor) -> Tensor:
    """(B, 2) class distributions ``(1 - p, p)`` of (B,) nodule probabilities."""
    p = probability.float()
    return torch.stack([1.0 - p, p], dim=-1)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process (a one-element list without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


@runtime_checkable
class HasEvaluationTables(Protocol):
    """A data module that can put candidate ids back on scans (see ``Luna16DataModule``)."""

    def evaluation_tables(self, split: Any) -> Any:
        """Candidates (indexed by id), annotations, excluded and scans of a split."""


@dataclass(frozen=True)
class Evaluation:
    """The FROC evaluation of one validation or test epoch.

    Attributes:
        split: ``val`` or ``test``.
        epoch: the training epoch.
        result: the FROC result.
        predictions: the split's candidates (every column of the candidates table)
            with the classifier's ``probability``, in the order given to the evaluator
            (``detection_id`` of ``result.detections`` is the row here).
    """

    split: str
    epoch: int
    result: FrocResult
    predictions: pd.DataFrame


def needs_total_steps(factory: Any) -> bool:
    """Whether a scheduler factory (a ``functools.partial`` over the class, as LightningCLI
    makes) builds a class taking ``total_steps`` and sets neither it nor ``epochs``."""
    if not isinstance(factory, functools.partial):
        return False
    classes = [a for a in factory.args if inspect.isclass(a)]
    if not classes:
        return False
    try:
        parameters = inspect.signature(classes[-1]).parameters
    except (TypeError, ValueError):
        return False
    given = {k for k, v in factory.keywords.items() if v is not None}
    return "total_steps" in parameters and not given & {"total_steps", "epochs"}


class NoduleClassifier(pl.LightningModule):
    """Nodule / non-nodule classification of candidates' multiplanar patches.

    Args:
        net: the network, ``(B, V, H, W) -> (B, 2)`` logits.
        loss: ``cross_entropy`` or ``focal``.
        focal_gamma: focusing exponent of the focal loss.
        focal_alpha: weight of the nodule class in the focal loss (None: unweighted).
        optimizer: the optimiser (class path and arguments; the parameters are given here).
        scheduler: learning-rate schedule (class path and arguments; the optimiser is given
            here; None: constant). A schedule whose class takes ``total_steps`` (e.g.
            ``torch.optim.lr_scheduler.OneCycleLR``) and is given neither it nor
            ``epochs`` gets the run's length: the trainer's estimated optimiser steps
            with ``scheduler_interval: step``, ``max_epochs`` with ``epoch``.
        scheduler_monitor: metric a ReduceLROnPlateau-like schedule follows.
        scheduler_interval: ``epoch`` or ``step`` (how often the schedule steps).
        froc_bootstrap: bootstrap resamples of the validation/test FROC (0: none).
        max_marks_per_scan: per-scan cap of the FROC evaluation (LUNA16: 100).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: LossName = "cross_entropy",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/cpm",
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        froc_bootstrap: int = 0,
        max_marks_per_scan: int | None = 100,
    ) -> None:
        super().__init__()
        if loss not in ("cross_entropy", "focal"):
            raise ValueError(f"loss must be cross_entropy or focal, got {loss!r}")
        # Under LightningCLI the hyperparameters are the configuration (plain values, so a
        # checkpoint loads with weights_only=True and ``--ckpt_path`` can restore them);
        # otherwise the network and factories are objects and are left out.
        from_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if from_cli else ["net", "optimizer", "scheduler"])
        self.net = net
        self.loss_name = loss
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.scheduler_interval = scheduler_interval
        self.froc_bootstrap = froc_bootstrap
        self.max_marks_per_scan = max_marks_per_scan
        self.train_auroc = BinaryAUROC()
        self.val_auroc = BinaryAUROC()
        self.test_auroc = BinaryAUROC()
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"val": [], "test": []}
        self.last_evaluation: Evaluation | None = None
        self.pseudo_label_weight = 1.0
        """Weight of the pseudo-labelled candidates' loss (set each epoch by
        :class:`~nodule.training.pseudo_labels.PseudoLabelling`)."""
        self.consistency_weight = 0.0
        """Weight of the consistency loss against a batch's ``teacher_probability`` (set
        each step by :class:`~nodule.training.mean_teacher.MeanTeacher`)."""

    # ------------------------------------------------------------------ core

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 2)`` of patches ``(B, V, H, W)``."""
        out: Tensor = self.net(x)
        return out

    def compute_loss(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """The configured loss of a batch; with ``weight`` (B,), the mean of the weighted
        per-candidate losses."""
        if weight is None:
            if self.loss_name == "focal":
                return focal_loss(logits, target, self.focal_gamma, self.focal_alpha)
            return F.cross_entropy(logits, target)
        if self.loss_name == "focal":
            per = focal_loss(logits, target, self.focal_gamma, self.focal_alpha, reduction="none")
        else:
            per = F.cross_entropy(logits, target, reduction="none")
        return (per * weight).mean()

    def sample_weights(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Loss weights of a training batch: 1 for labelled candidates, the current
        :attr:`pseudo_label_weight` (Lee 2013's ramped alpha) times the row's weight for
        pseudo-labelled ones; None when the batch has no pseudo-label."""
        pseudo = batch.get("pseudo")
        if pseudo is None or not bool(pseudo.any()):
            return None
        weight = batch["weight"].float()
        return torch.where(pseudo.bool(), self.pseudo_label_weight * weight, torch.ones_like(weight))

    @staticmethod
    def probability(logits: Tensor) -> Tensor:
        """Nodule probability (class 1) of logits."""
        return F.softmax(logits.float(), dim=-1)[:, 1]

    @staticmethod
    def consistency_loss(
        logits: Tensor, teacher_probability: Tensor, reduction: Literal["mean", "none"] = "mean"
    ) -> Tensor:
        """Squared difference between the model's class probabilities and a teacher's nodule
        probabilities (Tarvainen & Valpola 2017), averaged over both classes and (``mean``)
        the batch; ``none``: per candidate."""
        student = F.softmax(logits.float(), dim=-1)
        squared = ((student - two_class(teacher_probability).detach()) ** 2).mean(dim=-1)
        return squared if reduction == "none" else squared.mean()

    def mixed_loss(
        self, logits: Tensor, batch: dict[str, Tensor], weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Supervised and consistency losses of a mixed batch (FocalMix; see
        :class:`~nodule.training.mean_teacher.MeanTeacher`): the configured loss against the
        soft ``mix_target`` for rows whose main part is labelled (``mix_labelled``), weighted
        by ``weight`` (B,) if given, and :meth:`consistency_loss` for the others; both summed
        over rows / B."""
        q = batch["mix_target"].float()
        labelled = batch["mix_labelled"].bool()
        gamma = self.focal_gamma if self.loss_name == "focal" else 0.0
        alpha = self.focal_alpha if self.loss_name == "focal" else None
        supervised = soft_focal_loss(logits, q, gamma, alpha, reduction="none")
        if weight is not None:
            supervised = supervised * weight
        squared = self.consistency_loss(logits, q, reduction="none")
        n = max(1, logits.shape[0])
        return (supervised * labelled).sum() / n, (squared * ~labelled).sum() / n

    def _shared_step(self, batch: dict[str, Tensor], prefix: str, auroc: BinaryAUROC) -> Tensor:
        logits = self(batch["image"])
        target = batch["label"].long()
        weight = self.sample_weights(batch) if prefix == "train" else None
        labelled = target >= 0  # -1: an unlabelled candidate, for the consistency loss only
        bs = target.shape[0]
        consistency: Tensor | None = None
        if prefix == "train" and "mix_target" in batch:
            loss, consistency = self.mixed_loss(logits, batch, weight)
        elif bool(labelled.any()):  # the mean over the labelled rows, times their share
            part = None if weight is None else weight[labelled]
            loss = self.compute_loss(logits[labelled], target[labelled], part) * (
                labelled.float().mean()
            )
        else:
            loss = logits.sum() * 0.0
        prob = self.probability(logits)
        on_step = prefix == "train"
        teacher = batch.get("teacher_probability")
        if prefix == "train" and consistency is None and teacher is not None:
            consistency = self.consistency_loss(logits, teacher)
        if consistency is not None:
            self.log("train/consistency", consistency, on_step=True, on_epoch=True, batch_size=bs)
            loss = loss + self.consistency_weight * consistency
        if bool(labelled.any()):
            auroc.update(prob.detach()[labelled], target[labelled])
        self.log(
            f"{prefix}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=bs,
            sync_dist=True,
        )
        self.log(f"{prefix}/auroc", auroc, on_step=False, on_epoch=True, batch_size=bs)
        if prefix in self._outputs:
            self._outputs[prefix].append(
                (batch["candidate_id"].detach().cpu().numpy(), prob.detach().cpu().numpy())
            )
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Loss of a training batch."""
        return self._shared_step(batch, "train", self.train_auroc)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Loss, AUROC and probabilities of a validation batch."""
        self._shared_step(batch, "val", self.val_auroc)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Loss, AUROC and probabilities of a test batch."""
        self._shared_step(batch, "test", self.test_auroc)

    def predict_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Tensor]:
        """Candidate ids and nodule probabilities of a batch."""
        return {
            "candidate_id": batch["candidate_id"].detach().cpu(),
            "probability": self.probability(self(batch["image"])).detach().cpu(),
        }

    # ------------------------------------------------------------------ FROC

    def on_validation_epoch_start(self) -> None:
        """Forget the previous epoch's probabilities."""
        self._outputs["val"] = []

    def on_test_epoch_start(self) -> None:
        """Forget the previous epoch's probabilities."""
        self._outputs["test"] = []

    def on_validation_epoch_end(self) -> None:
        """Validation CPM (``val/cpm``) and sensitivities."""
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        """Test CPM (``test/cpm``) and sensitivities."""
        self._evaluate("test")

    def gathered_probabilities(self, split: EvalSplit) -> pd.Series:
        """The split's probabilities of this epoch from every process, by candidate id."""
        parts = self._outputs[split]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        probs = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
        gathered = gather_objects((ids, probs))
        all_ids = np.concatenate([g[0] for g in gathered]).astype(np.int64)
        all_probs = np.concatenate([g[1] for g in gathered]).astype(np.float64)
        series = pd.Series(all_probs, index=pd.Index(all_ids, name="candidate_id"))
        return series[~series.index.duplicated()]  # a distributed sampler pads with repeats

    def _evaluate(self, split: EvalSplit) -> None:
        probs = self.gathered_probabilities(split)
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, HasEvaluationTables):
            return
        tables = datamodule.evaluation_tables(split)
        predictions = tables.candidates.loc[probs.index.intersection(tables.candidates.index)]
        predictions = predictions.assign(probability=probs.loc[predictions.index].to_numpy())
        result = evaluate_froc(
            predictions.reset_index(drop=True),
            tables.annotations,
            tables.excluded,
            seriesuids=tables.seriesuids,
            n_bootstrap=self.froc_bootstrap,
            seed=0,
            max_marks_per_scan=self.max_marks_per_scan,
        )
        cpm = 0.0 if math.isnan(result.cpm) else result.cpm
        # Every process evaluates the same gathered predictions: the values agree.
        self.log(f"{split}/cpm", cpm, prog_bar=True, sync_dist=True)
        for rate, sens in result.sensitivities.items():
            value = 0.0 if math.isnan(sens) else sens
            self.log(f"{split}/sensitivity@{rate:g}", value, sync_dist=True)
        self.last_evaluation = Evaluation(
            split=split,
            epoch=int(self.current_epoch),
            result=result,
            predictions=predictions.reset_index(),
        )

    # ------------------------------------------------------------------ optimisation

    def run_length(self) -> int:
        """Scheduler steps of the whole run: optimiser steps (``scheduler_interval: step``)
        or epochs (``epoch``), from the trainer."""
        trainer = self.trainer
        if self.scheduler_interval == "epoch":
            epochs = trainer.max_epochs
            if epochs is None or epochs < 1:
                raise ValueError("an epoch schedule without total_steps needs trainer.max_epochs")
            return int(epochs)
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps) or steps < 1:
            raise ValueError("a step schedule without total_steps needs a bounded run")
        return int(steps)

    def configure_optimizers(self) -> Any:
        """The configured optimiser and, if any, learning-rate schedule."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        factory: Any = self.scheduler_factory
        if needs_total_steps(factory):
            total = self.run_length()
            factory = functools.partial(factory, total_steps=total)
        scheduler = factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.scheduler_monitor,
                "interval": self.scheduler_interval,
            },
        }
