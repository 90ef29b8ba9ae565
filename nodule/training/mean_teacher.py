"""Mean teacher (Tarvainen & Valpola 2017), as a Lightning callback.

The teacher is an exponential moving average (EMA) of the model's weights. For every
training batch it scores a second, independent augmentation of each candidate
(``image_teacher``: other mirroring, noise and, for candidates with a cube, other
multiplanar planes; see ``teacher_views`` of the data module), and the model is pulled
towards the teacher's probabilities on its own augmentation by a consistency loss (the
mean squared difference of the class probabilities,
:meth:`~nodule.training.classifier.NoduleClassifier.consistency_loss`). The loss covers
every candidate of the batch, labelled or not: the unlabelled candidates (label -1, drawn
at the data module's ``unlabelled_fraction`` from the hidden training scans and the
``unlabelled_train`` data sets, e.g. real CT) give no supervised loss, only this one. Its
weight rises with Laine & Aila's sigmoid ramp. Used for domain adaptation this is French
et al. 2018's self-ensembling: the unlabelled real scans shape the model that is tested
on real scans.

With ``mixup_alpha`` set the callback does FocalMix (Wang et al. 2020, for nodule
detection; MixMatch's recipe): each candidate gets a soft target (its label if labelled,
the teacher's probability sharpened by ``sharpen_temperature`` if not), and the batch is
mixed with a permutation of itself (``lambda ~ Beta(alpha, alpha)``, kept >= 0.5 so that
each row stays mostly itself), images and targets alike; the model then takes the
configured loss (focal or cross-entropy) against the mixed soft targets of the mostly
labelled rows and the consistency loss on the mostly unlabelled ones
(:meth:`~nodule.training.classifier.NoduleClassifier.mixed_loss`).

The teacher's weights are in the checkpoint (this callback's state), so a resumed fit
goes on with the same teacher; the model that is validated, checkpointed and tested is
the student, as in every other recipe.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from nodule.training.classifier import NoduleClassifier


def sigmoid_ramp(step: int, ramp_steps: int) -> float:
    """Laine & Aila's ramp-up ``exp(-5 (1 - t)^2)`` for ``t = step / ramp_steps`` in [0, 1]."""
    if ramp_steps <= 0:
        return 1.0
    t = min(max(step / ramp_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for the parameters; the
    buffers (BatchNorm statistics) are copied from the student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        tb.copy_(sb)


def sharpen(probability: torch.Tensor, temperature: float) -> torch.Tensor:
    """MixMatch's sharpening of two-class probabilities: ``p^(1/T) / (p^(1/T) + (1-p)^(1/T))``."""
    p = probability.float().clamp(1e-6, 1 - 1e-6)
    a, b = p ** (1.0 / temperature), (1.0 - p) ** (1.0 / temperature)
    return a / (a + b)


def mix_batch(
    batch: dict[str, Any], teacher_probability: torch.Tensor, alpha: float, temperature: float, rng: np.random.Generator
) -> None:
    """FocalMix a training batch in place: ``image`` mixed with a permutation of itself,
    ``mix_target`` (soft nodule probability) and ``mix_labelled`` (the row's main part is
    labelled) added."""
    labels = batch["label"]
    labelled = labels >= 0
    soft = torch.where(labelled, labels.clamp(min=0).float(), sharpen(teacher_probability, temperature))
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.from_numpy(rng.permutation(labels.shape[0])).to(labels.device)
    image = batch["image"]
    batch["image"] = lam * image + (1.0 - lam) * image[perm]
    batch["mix_target"] = lam * soft + (1.0 - lam) * soft[perm]
    batch["mix_labelled"] = labelled


class MeanTeacher(Callback):
    """Mean-teacher consistency training (module docstring).

    Args:
        max_weight: weight of the consistency loss after the ramp.
        ramp_epochs: epochs over which the weight rises (sigmoid ramp, by optimiser step).
        decay: EMA decay of the teacher's weights during the ramp.
        decay_after_ramp: EMA decay after it (Tarvainen & Valpola: 0.99 then 0.999).
        mixup_alpha: FocalMix's Beta parameter (module docstring); None: no mixing.
        sharpen_temperature: temperature of the unlabelled candidates' soft targets.
        seed: seed of the mixing.
    """

    def __init__(
        self,
        max_weight: float = 10.0,
        ramp_epochs: int = 2,
        decay: float = 0.99,
        decay_after_ramp: float = 0.999,
        mixup_alpha: float | None = None,
        sharpen_temperature: float = 0.5,
        seed: int = 0,
    ) -> None:
        if mixup_alpha is not None and mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        if sharpen_temperature <= 0:
            raise ValueError(f"sharpen_temperature must be > 0, got {sharpen_temperature}")
        if max_weight < 0 or ramp_epochs < 0:
            raise ValueError("max_weight and ramp_epochs must be >= 0")
        for name, value in (("decay", decay), ("decay_after_ramp", decay_after_ramp)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.max_weight = max_weight
        self.ramp_epochs = ramp_epochs
        self.decay = decay
        self.decay_after_ramp = decay_after_ramp
        self.mixup_alpha = mixup_alpha
        self.sharpen_temperature = sharpen_temperature
        self.seed = seed
        self.teacher: nn.Module | None = None
        self._state: dict[str, torch.Tensor] | None = None

    def _ramp_steps(self, trainer: pl.Trainer) -> int:
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int) or per_epoch <= 0:
            per_epoch = 1
        return self.ramp_epochs * per_epoch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Make the teacher: a copy of the network (or the saved teacher of a resumed fit)."""
        if not isinstance(pl_module, NoduleClassifier):
            raise TypeError(f"MeanTeacher needs a NoduleClassifier, got {type(pl_module).__name__}")
        self.teacher = copy.deepcopy(pl_module.net)
        if self._state is not None:
            self.teacher.load_state_dict(self._state)
            self._state = None
        self.teacher.requires_grad_(False)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Score the batch's second augmentation with the teacher; set the loss weight."""
        assert self.teacher is not None and isinstance(pl_module, NoduleClassifier)
        if "image_teacher" not in batch:
            raise ValueError(
                "MeanTeacher needs a second augmentation of each training candidate: set "
                "data.init_args.teacher_views: true"
            )
        self.teacher.to(pl_module.device)
        self.teacher.train(pl_module.training)  # dropout noise as the student's
        with torch.no_grad():
            logits = self.teacher(batch["image_teacher"])
        probability = NoduleClassifier.probability(logits)
        if self.mixup_alpha is None:
            batch["teacher_probability"] = probability
        else:
            rng = np.random.default_rng([self.seed, trainer.global_step])
            mix_batch(batch, probability, self.mixup_alpha, self.sharpen_temperature, rng)
        ramp = sigmoid_ramp(trainer.global_step, self._ramp_steps(trainer))
        pl_module.consistency_weight = self.max_weight * ramp
        pl_module.log("train/consistency_weight", pl_module.consistency_weight, on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Move the teacher towards the updated student."""
        assert self.teacher is not None and isinstance(pl_module, NoduleClassifier)
        ramped = trainer.global_step >= self._ramp_steps(trainer)
        decay = self.decay_after_ramp if ramped else self.decay
        # Early steps average over fewer steps (as Tarvainen & Valpola's code does).
        decay = min(decay, 1.0 - 1.0 / (trainer.global_step + 1))
        ema_update(self.teacher, pl_module.net, decay)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights."""
        if self.teacher is None:
            return {}
        return {"teacher": {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's teacher for :meth:`on_fit_start`."""
        self._state = state_dict.get("teacher")
