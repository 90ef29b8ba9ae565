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

The teacher's weights are in the checkpoint (this callback's state), so a resumed fit
goes on with the same teacher; the model that is validated, checkpointed and tested is
the student, as in every other recipe.
"""

from __future__ import annotations

import copy
import math
from typing import Any

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


class MeanTeacher(Callback):
    """Mean-teacher consistency training (module docstring).

    Args:
        max_weight: weight of the consistency loss after the ramp.
        ramp_epochs: epochs over which the weight rises (sigmoid ramp, by optimiser step).
        decay: EMA decay of the teacher's weights during the ramp.
        decay_after_ramp: EMA decay after it (Tarvainen & Valpola: 0.99 then 0.999).
    """

    def __init__(
        self,
        max_weight: float = 10.0,
        ramp_epochs: int = 2,
        decay: float = 0.99,
        decay_after_ramp: float = 0.999,
    ) -> None:
        if max_weight < 0 or ramp_epochs < 0:
            raise ValueError("max_weight and ramp_epochs must be >= 0")
        for name, value in (("decay", decay), ("decay_after_ramp", decay_after_ramp)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.max_weight = max_weight
        self.ramp_epochs = ramp_epochs
        self.decay = decay
        self.decay_after_ramp = decay_after_ramp
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
        batch["teacher_probability"] = NoduleClassifier.probability(logits)
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
