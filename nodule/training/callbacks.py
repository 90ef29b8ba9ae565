"""Callbacks of the training CLI: the submission writer and the W&B FROC / gallery logger.

* :class:`SubmissionWriter` gathers the predicted probabilities of every process and
  writes a LUNA16 submission CSV (the candidates' own columns kept after the five
  LUNA16 ones; the candidate detector's score, if any, renamed
  ``candidate_probability``).
* :class:`WandbFrocLogger` logs, after every validation (and test) epoch, the FROC curve
  as a W&B table, line plot and PNG, a gallery of the highest-scoring false positives
  and of the missed nodules (their views as one image each, captioned with the
  seriesuid and probability only), and keeps the best checkpoint's path in the run
  summary. It does nothing without a :class:`~pytorch_lightning.loggers.WandbLogger`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from nodule.data.luna16 import write_submission
from nodule.evaluation.froc import FALSE_POSITIVE, FrocResult
from nodule.evaluation.report import plot_froc
from nodule.paths import atomic_path
from nodule.training.classifier import Evaluation, HasEvaluationTables, gather_objects
from nodule.training.labels import LABEL, NODULE_ID, ON_EXCLUDED

SUBMISSION_DROP = (LABEL, ON_EXCLUDED, NODULE_ID)
"""Columns added by labelling, not written to submissions."""


def submission_table(candidates: pd.DataFrame, probabilities: pd.Series) -> pd.DataFrame:
    """A submission: the candidates with the classifier's probabilities.

    Args:
        candidates: candidates indexed by candidate id (any extra columns).
        probabilities: nodule probability by candidate id.

    Returns:
        ``seriesuid, coordX, coordY, coordZ, probability`` then the candidates' other
        columns (a detector score ``probability`` becomes ``candidate_probability``),
        in candidate-id order, for the candidates that have a probability.
    """
    rows = candidates.loc[candidates.index.intersection(probabilities.index)].sort_index()
    rows = rows.drop(columns=[c for c in SUBMISSION_DROP if c in rows.columns])
    if "probability" in rows.columns:
        rows = rows.rename(columns={"probability": "candidate_probability"})
    rows.insert(4, "probability", probabilities.loc[rows.index].to_numpy(np.float64))
    first = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]
    return rows[first + [c for c in rows.columns if c not in first]].reset_index(drop=True)


class SubmissionWriter(BasePredictionWriter):
    """Writes the predictions of ``nodule predict`` as a LUNA16 submission CSV.

    The CSV is written to a temporary file beside the output and renamed into place
    (:func:`~nodule.paths.atomic_path`): the output exists only once it is complete.

    Args:
        output: the CSV to write; default ``<trainer.default_root_dir>/submission.csv``.
    """

    def __init__(self, output: Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self._ids: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self.written: Path | None = None

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a new submission."""
        self._ids, self._probs = [], []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Keep a batch's candidate ids and probabilities."""
        self._ids.append(torch.as_tensor(prediction["candidate_id"]).numpy().astype(np.int64))
        self._probs.append(torch.as_tensor(prediction["probability"]).float().numpy())

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather every process's predictions; the first process writes the CSV."""
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        probs = np.concatenate(self._probs) if self._probs else np.zeros(0, np.float32)
        gathered = gather_objects((ids, probs))
        if not trainer.is_global_zero:
            return
        series = pd.Series(
            np.concatenate([g[1] for g in gathered]).astype(np.float64),
            index=np.concatenate([g[0] for g in gathered]).astype(np.int64),
        )
        series = series[~series.index.duplicated()]
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, HasEvaluationTables):
            raise RuntimeError("SubmissionWriter needs a data module with evaluation_tables()")
        table = submission_table(datamodule.evaluation_tables("predict").candidates, series)
        output = Path(self.output or Path(trainer.default_root_dir) / "submission.csv").expanduser()
        with atomic_path(output) as part:  # a failed write leaves no half submission
            write_submission(table, part)
        self.written = output
        rank_zero_info(f"submission of {len(table)} candidates -> {self.written}")


def views_montage(views: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """The views of one candidate tiled in a near-square grid, as a uint8 image.

    Args:
        views: (V, H, W) scaled patches.
        low: value shown black.
        high: value shown white.

    Returns:
        (rows * (H + 2) - 2, cols * (W + 2) - 2) uint8 with 2-pixel gaps.
    """
    n, h, w = views.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + 2) - 2, cols * (w + 2) - 2), np.uint8)
    scaled = np.clip((views - low) / (high - low), 0.0, 1.0) * 255.0
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = scaled[i]
    return out


def top_false_positives(result: FrocResult, n: int) -> pd.DataFrame:
    """The ``n`` most probable false positives of an evaluation (rows of ``result.detections``)."""
    detections = result.detections
    fps = detections[detections["status"] == FALSE_POSITIVE]
    return fps.sort_values("probability", ascending=False, kind="stable").head(n)


def missed_nodules(result: FrocResult, operating_fps: float = 1.0) -> pd.DataFrame:
    """Nodules missed at an operating point: scored below the threshold of the FROC's last
    point at or under ``operating_fps`` FP/scan, or never detected (rows of ``result.nodules``,
    the never detected first, then by probability ascending)."""
    curve = result.curve
    reached = np.flatnonzero(curve.fps <= operating_fps)
    threshold = float(curve.thresholds[reached[-1]]) if reached.size else math.inf
    nodules = result.nodules
    prob = nodules["probability"].to_numpy(np.float64)
    missed = nodules[np.isnan(prob) | (prob < threshold)]
    missed = missed.assign(_order=missed["probability"].fillna(-1.0))
    ordered: pd.DataFrame = missed.sort_values("_order", kind="stable").drop(columns="_order")
    return ordered


def wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The trainer's W&B logger, if any."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger
    return None


class WandbFrocLogger(Callback):
    """Logs the FROC, a gallery of errors and the best checkpoint to W&B.

    Keys (``split`` is ``val`` or ``test``): ``{split}/froc_table`` (table
    ``fp_per_scan, sensitivity, threshold``), ``{split}/froc_curve`` (line plot),
    ``{split}/froc_png`` (image of :func:`~nodule.evaluation.report.plot_froc`),
    ``{split}/false_positives`` and ``{split}/missed_nodules`` (lists of images);
    summary ``best_checkpoint`` and ``best_val_cpm``.

    Args:
        gallery_size: images per gallery.
        operating_fps: FP/scan rate of the operating point that decides which nodules
            count as missed (those scored below its threshold, or never detected).
        every_n_epochs: log the FROC and galleries every n validation epochs.
    """

    def __init__(
        self, gallery_size: int = 8, operating_fps: float = 1.0, every_n_epochs: int = 1
    ) -> None:
        super().__init__()
        self.gallery_size = gallery_size
        self.operating_fps = operating_fps
        self.every_n_epochs = max(1, every_n_epochs)

    # ------------------------------------------------------------------ hooks

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the validation FROC and galleries, and the best checkpoint so far."""
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit" and pl_module.current_epoch % self.every_n_epochs:
            return
        self._log_evaluation(trainer, pl_module, "val")
        self._log_best(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the test FROC and galleries."""
        self._log_evaluation(trainer, pl_module, "test")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the best checkpoint's path in the run summary."""
        self._log_best(trainer)

    # ------------------------------------------------------------------ parts

    def _log_best(self, trainer: pl.Trainer) -> None:
        logger = wandb_logger(trainer)
        checkpoint = trainer.checkpoint_callback
        if logger is None or checkpoint is None or not trainer.is_global_zero:
            return
        best = getattr(checkpoint, "best_model_path", "")
        if best:
            logger.experiment.summary["best_checkpoint"] = str(best)
            score = getattr(checkpoint, "best_model_score", None)
            if score is not None:
                logger.experiment.summary["best_val_cpm"] = float(score)

    def _log_evaluation(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str
    ) -> None:
        logger = wandb_logger(trainer)
        evaluation: Evaluation | None = getattr(pl_module, "last_evaluation", None)
        if logger is None or evaluation is None or evaluation.split != split:
            return
        if not trainer.is_global_zero:
            return
        import wandb

        result = evaluation.result
        curve = result.curve
        table = wandb.Table(
            columns=["fp_per_scan", "sensitivity", "threshold"],
            data=[
                [float(f), float(s), float(t)]
                for f, s, t in zip(curve.fps, curve.sensitivity, curve.thresholds, strict=True)
            ],
        )
        data: dict[str, Any] = {
            f"{split}/froc_table": table,
            f"{split}/froc_curve": wandb.plot.line(
                table, "fp_per_scan", "sensitivity", title=f"{split} FROC (CPM {result.cpm:.3f})"
            ),
        }
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_froc(result, Path(tmp) / "froc.png")
            data[f"{split}/froc_png"] = wandb.Image(str(png), caption=f"CPM {result.cpm:.3f}")
            datamodule = getattr(trainer, "datamodule", None)
            false_positives = self._false_positives(evaluation, datamodule)
            missed = self._missed(evaluation, datamodule)
            if false_positives:
                data[f"{split}/false_positives"] = false_positives
            if missed:
                data[f"{split}/missed_nodules"] = missed
            data["trainer/global_step"] = trainer.global_step
            logger.experiment.log(data)

    def _image(self, views: np.ndarray, datamodule: Any, uid: str, prob: float | None) -> Any:
        import wandb

        patch = getattr(datamodule, "patch", None)
        low, high = (patch.out_min, patch.out_max) if patch is not None else (0.0, 1.0)
        text = "none" if prob is None or math.isnan(prob) else f"{prob:.3f}"
        return wandb.Image(views_montage(views, low, high), caption=f"{uid} p={text}")

    def _false_positives(self, evaluation: Evaluation, datamodule: Any) -> list[Any]:
        views_of = getattr(datamodule, "views_of", None)
        if views_of is None:
            return []
        fps = top_false_positives(evaluation.result, self.gallery_size)
        if fps.empty:
            return []
        rows = evaluation.predictions.iloc[fps["detection_id"].to_numpy()]
        views = views_of(evaluation.split, rows["candidate_id"].to_numpy())
        return [
            self._image(v, datamodule, str(uid), float(p))
            for v, uid, p in zip(views, rows["seriesuid"], rows["probability"], strict=True)
        ]

    def _missed(self, evaluation: Evaluation, datamodule: Any) -> list[Any]:
        views_of = getattr(datamodule, "views_of", None)
        views_at = getattr(datamodule, "views_at", None)
        if views_of is None or views_at is None:
            return []
        missed = missed_nodules(evaluation.result, self.operating_fps).head(self.gallery_size)
        images = []
        for _, nod in missed.iterrows():
            uid = str(nod["seriesuid"])
            if int(nod["detection_id"]) >= 0:
                cid = int(evaluation.predictions.iloc[int(nod["detection_id"])]["candidate_id"])
                views = views_of(evaluation.split, np.array([cid]))[0]
            else:
                views = views_at(uid, np.array([nod["coordX"], nod["coordY"], nod["coordZ"]]))
            images.append(self._image(views, datamodule, uid, float(nod["probability"])))
        return images
