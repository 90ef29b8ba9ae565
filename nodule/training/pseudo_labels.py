"""Pseudo-labelling in teacher-student rounds (Lee 2013), as a Lightning callback.

The data module's ``unlabelled`` split (training scans whose labels are hidden by
``label_fraction``, and the ``unlabelled_train`` data sets) holds candidates without
labels. :class:`PseudoLabelling` runs rounds inside one ``fit``: the model trains on the
labelled scans alone until ``first_epoch`` (the first teacher); at the start of round
``r`` (epoch ``first_epoch + r * epochs_per_round``) the current model, the teacher,
scores every unlabelled candidate on its fixed views; the confident ones become
pseudo-labels (:func:`select_pseudo_labels`: thresholds, or the top and bottom of each
scan); the model, now the student, goes on training on the labelled plus pseudo-labelled
candidates, and at the next round it is the teacher. The pseudo-label loss is ramped up
from the first round (:func:`ramp_weight`, Lee's alpha schedule) and optionally weighted
by each pseudo-label's confidence. (The student starts from the teacher's weights rather
than afresh, so that rounds cost no more epochs than supervised training: the
comparison with supervised training is at the same compute.)

Each round writes ``<run>/pseudo_labels/round_R.csv`` (the pseudo-labels: candidate,
probability, label, weight) and ``rounds.json`` (per round: counts per class, precision
and recall against the hidden labels where the scans have them, and the student's
validation CPM at the round's last epoch), and logs the same figures to the trainer's
loggers (W&B) as ``pseudo/...``. The hidden labels are read only for those figures
(:meth:`~nodule.training.datamodule.Luna16DataModule.hidden_labels`), never for
selection. The rounds' state is in the checkpoint: a fit resumed from ``last.ckpt`` goes
on with the same pseudo-labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from nodule.patches import scale_hu
from nodule.paths import write_text_atomic
from nodule.training.classifier import NoduleClassifier
from nodule.training.datamodule import FROM_ANNOTATIONS
from nodule.training.labels import LABEL

Selection = Literal["threshold", "rank", "prior"]


def select_pseudo_labels(
    scores: pd.DataFrame,
    selection: Selection = "threshold",
    positive_threshold: float = 0.9,
    negative_threshold: float = 0.1,
    top_k: int = 1,
    bottom_k: int = 20,
    max_negatives_per_positive: float | None = None,
    confidence_weighting: bool = False,
    positive_prior: float | None = None,
    prior_share: float = 0.5,
) -> pd.DataFrame:
    """Turn a teacher's scores into pseudo-labels.

    Args:
        scores: ``candidate_id``, ``seriesuid``, ``probability`` (one row a candidate).
        selection: ``threshold``: positives at ``probability >= positive_threshold``,
            negatives at ``<= negative_threshold``; ``rank``: per scan the ``top_k``
            highest (and at least ``positive_threshold``) are positives and the
            ``bottom_k`` lowest (and at most ``negative_threshold``) negatives; ``prior``
            (class-balanced by the labelled data's class prior, as in distribution
            alignment): the ``prior_share * positive_prior * N`` highest-scored candidates
            (above ``negative_threshold``) are positives, whatever the teacher's
            calibration, and those at most ``negative_threshold`` negatives.
        positive_threshold: see ``selection``.
        negative_threshold: see ``selection``.
        top_k: positives per scan with ``rank``.
        bottom_k: negatives per scan with ``rank``.
        max_negatives_per_positive: class balance: keep at most this many negatives per
            positive (the most confident ones); None: no cap.
        confidence_weighting: weight each pseudo-label by its confidence (``p`` for a
            positive, ``1 - p`` for a negative); otherwise 1.
        positive_prior: the share of positives among labelled candidates (``prior``).
        prior_share: the share of the expected positives taken (``prior``).

    Returns:
        The pseudo-labelled candidates, indexed by ``candidate_id``: ``seriesuid``,
        ``probability``, ``pseudo_label`` (0/1) and ``weight``.
    """
    if not 0.0 <= negative_threshold < positive_threshold <= 1.0:
        raise ValueError(
            f"need 0 <= negative_threshold < positive_threshold <= 1, got {negative_threshold}, {positive_threshold}"
        )
    table = scores.set_index("candidate_id")[["seriesuid", "probability"]]
    p = table["probability"].to_numpy(float)
    if selection == "threshold":
        positive = p >= positive_threshold
        negative = p <= negative_threshold
    elif selection == "rank":
        by_scan = table.groupby("seriesuid")["probability"]
        high = by_scan.rank(method="first", ascending=False).to_numpy() <= top_k
        low = by_scan.rank(method="first", ascending=True).to_numpy() <= bottom_k
        positive = high & (p >= positive_threshold)
        negative = low & (p <= negative_threshold) & ~positive
    elif selection == "prior":
        if positive_prior is None or not 0.0 <= positive_prior <= 1.0 or not 0.0 < prior_share <= 1.0:
            raise ValueError(
                f"selection prior needs positive_prior in [0, 1] and prior_share in (0, 1], got "
                f"{positive_prior}, {prior_share}"
            )
        n_positive = round(prior_share * positive_prior * len(p))
        order = np.argsort(-p, kind="stable")[:n_positive]
        positive = np.zeros(len(p), bool)
        positive[order] = True
        positive &= p > negative_threshold
        negative = (p <= negative_threshold) & ~positive
    else:
        raise ValueError(f"selection must be threshold, rank or prior, got {selection!r}")
    if max_negatives_per_positive is not None:
        keep = math.floor(max_negatives_per_positive * int(positive.sum()))
        order = np.argsort(p, kind="stable")  # most confident negatives first
        ranked = order[negative[order]]
        negative = np.zeros_like(negative)
        negative[ranked[:keep]] = True
    out = table[positive | negative].copy()
    out["pseudo_label"] = positive[positive | negative].astype(np.int64)
    prob = out["probability"].to_numpy(float)
    confidence = np.where(out["pseudo_label"].to_numpy() == 1, prob, 1.0 - prob)
    out["weight"] = confidence.astype(np.float32) if confidence_weighting else np.float32(1.0)
    return out


def pseudo_label_quality(pseudo: pd.DataFrame, hidden: pd.Series) -> dict[str, Any]:
    """Counts, precision and recall of pseudo-labels against hidden labels.

    Args:
        pseudo: :func:`select_pseudo_labels`' table (indexed by candidate id).
        hidden: hidden 0/1 labels of every unlabelled candidate, by candidate id.

    Returns:
        ``n_unlabelled``, ``n_hidden_positive``, ``n_positive`` / ``n_negative``
        (pseudo-labels per class), ``precision_positive`` / ``recall_positive`` (of the
        hidden nodules' candidates) and ``precision_negative`` / ``recall_negative``
        (NaN where undefined).
    """
    truth = hidden.reindex(pseudo.index).to_numpy()
    label = pseudo["pseudo_label"].to_numpy()
    all_truth = hidden.to_numpy()

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    tp = int(((label == 1) & (truth == 1)).sum())
    tn = int(((label == 0) & (truth == 0)).sum())
    return {
        "n_unlabelled": len(hidden),
        "n_hidden_positive": int((all_truth == 1).sum()),
        "n_positive": int((label == 1).sum()),
        "n_negative": int((label == 0).sum()),
        "precision_positive": ratio(tp, int((label == 1).sum())),
        "recall_positive": ratio(tp, int((all_truth == 1).sum())),
        "precision_negative": ratio(tn, int((label == 0).sum())),
        "recall_negative": ratio(tn, int((all_truth == 0).sum())),
    }


def ramp_weight(epoch: int, start: int, ramp_epochs: int, max_weight: float) -> float:
    """Lee 2013's alpha: 0 before ``start``, rising linearly over ``ramp_epochs`` epochs
    (the first pseudo-labelled epoch already gets ``1 / ramp_epochs`` of it), then ``max_weight``."""
    if epoch < start:
        return 0.0
    if ramp_epochs <= 0:
        return float(max_weight)
    return float(max_weight) * min(1.0, (epoch - start + 1) / ramp_epochs)


def labelled_prior(datamodule: Any) -> float:
    """The share of positives among the labelled training scans' detected candidates (the
    annotated centres added for training left out)."""
    rows = datamodule.split_candidates("train")
    if FROM_ANNOTATIONS in rows.columns:
        rows = rows[~rows[FROM_ANNOTATIONS].to_numpy(bool)]
    return float((rows[LABEL] == 1).mean()) if len(rows) else 0.0


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


class PseudoLabelling(Callback):
    """Teacher-student pseudo-label rounds inside one fit (module docstring).

    Args:
        rounds: pseudo-labelling rounds.
        first_epoch: the epoch of the first round (the first teacher trains on the
            labelled scans alone before it).
        epochs_per_round: epochs between rounds.
        selection: ``threshold`` or ``rank`` (:func:`select_pseudo_labels`).
        positive_threshold: see :func:`select_pseudo_labels`.
        negative_threshold: see :func:`select_pseudo_labels`.
        top_k: see :func:`select_pseudo_labels`.
        bottom_k: see :func:`select_pseudo_labels`.
        max_negatives_per_positive: see :func:`select_pseudo_labels`.
        confidence_weighting: see :func:`select_pseudo_labels`.
        prior_share: see :func:`select_pseudo_labels` (``positive_prior`` is the share of
            positives among the labelled training candidates, the detected ones).
        max_weight: Lee's final alpha, the pseudo-label loss weight.
        ramp_epochs: epochs over which alpha rises from 0 (from ``first_epoch``).
        batch_size: candidates scored at once by the teacher.
        output_dir: where ``round_R.csv`` and ``rounds.json`` go (default
            ``<trainer.default_root_dir>/pseudo_labels``).
    """

    def __init__(
        self,
        rounds: int = 2,
        first_epoch: int = 4,
        epochs_per_round: int = 2,
        selection: Selection = "threshold",
        positive_threshold: float = 0.9,
        negative_threshold: float = 0.1,
        top_k: int = 1,
        bottom_k: int = 20,
        max_negatives_per_positive: float | None = None,
        confidence_weighting: bool = False,
        prior_share: float = 0.5,
        max_weight: float = 1.0,
        ramp_epochs: int = 2,
        batch_size: int = 256,
        output_dir: Path | None = None,
    ) -> None:
        if rounds < 1 or first_epoch < 1 or epochs_per_round < 1:
            raise ValueError("rounds, first_epoch and epochs_per_round must be >= 1")
        self.rounds = rounds
        self.first_epoch = first_epoch
        self.epochs_per_round = epochs_per_round
        self.selection: dict[str, Any] = {
            "selection": selection,
            "positive_threshold": positive_threshold,
            "negative_threshold": negative_threshold,
            "top_k": top_k,
            "bottom_k": bottom_k,
            "max_negatives_per_positive": max_negatives_per_positive,
            "confidence_weighting": confidence_weighting,
            "prior_share": prior_share,
        }
        self.max_weight = max_weight
        self.ramp_epochs = ramp_epochs
        self.batch_size = batch_size
        self.output_dir = None if output_dir is None else Path(output_dir).expanduser()
        self.records: list[dict[str, Any]] = []
        self.teacher_val_cpm: float | None = None
        self.current: pd.DataFrame | None = None

    # ------------------------------------------------------------------ schedule

    def round_starting_at(self, epoch: int) -> int | None:
        """The round that starts at ``epoch``, or None."""
        offset = epoch - self.first_epoch
        if offset < 0 or offset % self.epochs_per_round:
            return None
        r = offset // self.epochs_per_round
        return r if r < self.rounds else None

    def _folder(self, trainer: pl.Trainer) -> Path:
        return self.output_dir or Path(trainer.default_root_dir) / "pseudo_labels"

    # ------------------------------------------------------------------ hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put back the pseudo-labels of a resumed fit."""
        if self.current is not None:
            getattr(trainer, "datamodule", None).set_pseudo_labels(self.current)  # type: ignore[union-attr]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run a round when one starts at this epoch; set this epoch's pseudo-label weight."""
        epoch = int(trainer.current_epoch)
        r = self.round_starting_at(epoch)
        if r is not None and r >= len(self.records):
            self._run_round(r, trainer, pl_module)
        weight = ramp_weight(epoch, self.first_epoch, self.ramp_epochs, self.max_weight)
        pl_module.pseudo_label_weight = weight  # type: ignore[assignment]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the validation CPM of the teacher (before the first round) or of the
        current round's student (its last epoch wins)."""
        cpm = trainer.callback_metrics.get("val/cpm")
        if cpm is None or trainer.sanity_checking:
            return
        if not self.records:
            self.teacher_val_cpm = float(cpm)
            return
        self.records[-1]["val_cpm"] = float(cpm)
        self.records[-1]["val_epoch"] = int(trainer.current_epoch)
        self._write(trainer)

    def state_dict(self) -> dict[str, Any]:
        """The rounds so far and the pseudo-labels in use."""
        current = None if self.current is None else self.current.reset_index().to_dict(orient="list")
        return {"records": self.records, "teacher_val_cpm": self.teacher_val_cpm, "current": current}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the rounds of a checkpoint."""
        self.records = list(state_dict.get("records") or [])
        self.teacher_val_cpm = state_dict.get("teacher_val_cpm")
        current = state_dict.get("current")
        self.current = None if current is None else pd.DataFrame(current).set_index("candidate_id")

    # ------------------------------------------------------------------ a round

    @torch.no_grad()
    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> pd.DataFrame:
        """The current model's nodule probability of every unlabelled candidate (fixed views)."""
        datamodule: Any = getattr(trainer, "datamodule", None)
        if "unlabelled" not in datamodule.datasets:
            datamodule.setup("fit")
        dataset = datamodule.datasets.get("unlabelled")
        if dataset is None or len(dataset) == 0:
            raise ValueError(
                "PseudoLabelling: the data module has no unlabelled candidates "
                "(set data.init_args.label_fraction < 1 or data.init_args.unlabelled_train)"
            )
        was_training = pl_module.training
        pl_module.eval()
        probs: list[np.ndarray] = []
        try:
            for start in range(0, len(dataset), self.batch_size):
                views = scale_hu(dataset.patches_hu[start : start + self.batch_size], dataset.patch)
                x = torch.from_numpy(np.ascontiguousarray(views)).to(pl_module.device)
                probs.append(NoduleClassifier.probability(pl_module(x)).cpu().numpy())
        finally:
            pl_module.train(was_training)
        ids = dataset.candidate_ids
        seriesuid = datamodule.tables()["candidates"].loc[ids, "seriesuid"].to_numpy()
        return pd.DataFrame(
            {"candidate_id": ids, "seriesuid": seriesuid, "probability": np.concatenate(probs)}
        )

    def _run_round(self, r: int, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule: Any = getattr(trainer, "datamodule", None)
        scores = self.score(trainer, pl_module)
        pseudo = select_pseudo_labels(scores, **self.selection, positive_prior=labelled_prior(datamodule))
        datamodule.set_pseudo_labels(pseudo)
        self.current = pseudo
        # The hidden labels, for the quality figures only.
        quality = pseudo_label_quality(pseudo, datamodule.hidden_labels(scores["candidate_id"]))
        record: dict[str, Any] = {
            "round": r,
            "epoch": int(trainer.current_epoch),
            "teacher_val_cpm": self.teacher_val_cpm if r == 0 else self.records[-1].get("val_cpm"),
            **quality,
            "val_cpm": None,
        }
        self.records.append(record)
        folder = self._folder(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            table = pseudo.reset_index()
            write_text_atomic(folder / f"round_{r}.csv", table.to_csv(index=False, float_format="%.6f"))
        self._write(trainer)
        metrics = {f"pseudo/{k}": float(v) for k, v in quality.items() if v is not None}
        metrics["pseudo/round"] = float(r)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=int(trainer.global_step))

    def _write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": {
                "rounds": self.rounds,
                "first_epoch": self.first_epoch,
                "epochs_per_round": self.epochs_per_round,
                "max_weight": self.max_weight,
                "ramp_epochs": self.ramp_epochs,
                **self.selection,
            },
            "teacher_val_cpm": self.teacher_val_cpm,
            "rounds": [{k: _number(v) for k, v in rec.items()} for rec in self.records],
        }
        write_text_atomic(folder / "rounds.json", json.dumps(payload, indent=1) + "\n")
        for logger in trainer.loggers:
            if self.records and self.records[-1].get("val_cpm") is not None:
                rec = self.records[-1]
                logger.log_metrics(
                    {"pseudo/student_val_cpm": float(rec["val_cpm"]), "pseudo/round": float(rec["round"])},
                    step=int(trainer.global_step),
                )
