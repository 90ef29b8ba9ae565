"""``nodule fit | validate | test | predict``: LightningCLI over the classifier and data module.

In the manner of torchgeo's ``main()``: the model and data module are given by
``class_path`` in YAML (``subclass_mode``), the network inside the model too. Every
configuration also gets three callbacks as top-level groups, so that they can be set
from YAML or the command line without repeating ``trainer.callbacks``:

* ``checkpoint``: :class:`~pytorch_lightning.callbacks.ModelCheckpoint` on ``val/cpm``
  (mode max);
* ``submission``: :class:`~nodule.training.callbacks.SubmissionWriter`
  (``--submission.output out.csv`` for ``predict``);
* ``wandb_media``: :class:`~nodule.training.callbacks.WandbFrocLogger`.

Run folders live outside the repository: the configurations write their paths as
``${NODULE_CACHE}/runs/<name>``, and before anything is built the CLI expands ``~`` and
environment variables (``$VAR``, ``${VAR}``) in the path settings (:data:`PATH_KEYS`:
the trainer's ``default_root_dir``, the loggers' ``save_dir``, ``checkpoint.dirpath``,
``submission.output`` and the data module's paths), ``NODULE_CACHE`` defaulting to
:func:`nodule.paths.cache_dir` (``~/.cache/nodule``). Paths given explicitly, in YAML or
on the command line, are used as given (relative ones from the working directory).

The whole configuration goes to the logger's hyperparameters (the W&B run config).
A ``WandbLogger`` in the configuration runs offline when it says so, unless the
environment says otherwise: ``WANDB_MODE=online`` (or ``disabled``) overrides
``offline: true``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from nodule.paths import cache_dir
from nodule.training.callbacks import SubmissionWriter, WandbFrocLogger
from nodule.training.classifier import NoduleClassifier
from nodule.training.datamodule import Luna16DataModule, folder_folds


class LoggedConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` to the log folder and gives the whole config to the loggers."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the configuration as hyperparameters (the W&B run config)."""
        config = json.loads(self.parser.dump(self.config, format="json"))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


def _respect_wandb_mode(config: Any) -> None:
    """Let ``WANDB_MODE`` override a configured WandbLogger's ``offline``."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if not mode:
        return
    loggers = config.get("trainer", {}).get("logger") if hasattr(config, "get") else None
    if loggers is None or isinstance(loggers, bool):
        return
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        class_path = str(getattr(logger, "class_path", ""))
        init_args = getattr(logger, "init_args", None)
        if class_path.endswith("WandbLogger") and init_args is not None:
            init_args["offline"] = mode in ("offline", "dryrun")


PATH_KEYS = (
    "trainer.default_root_dir",
    "checkpoint.dirpath",
    "submission.output",
    "data.init_args.root",
    "data.init_args.candidates",
    "data.init_args.annotations",
    "data.init_args.excluded",
    "data.init_args.folds",
    "data.init_args.cache_dir",
)
"""Path settings in which ``~`` and environment variables are expanded (and the
``save_dir`` / ``dir`` of every logger of ``trainer.logger``)."""

_ENV_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_path(value: str, env: Mapping[str, str] | None = None) -> str:
    """Expand environment variables (``$VAR``, ``${VAR}``) and then ``~`` in a path.

    Unknown variables are left as written. ``NODULE_CACHE`` defaults to
    :func:`nodule.paths.cache_dir` when the environment does not set it.

    Args:
        value: the path as written in a configuration.
        env: the variables (default: ``os.environ`` with the ``NODULE_CACHE`` default).

    Returns:
        The expanded path, as a string.
    """
    if env is None:
        env = dict(os.environ)
        if "NODULE_CACHE" in value and not env.get("NODULE_CACHE"):
            env["NODULE_CACHE"] = str(cache_dir())

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return env.get(name, match.group(0))

    return os.path.expanduser(_ENV_VAR.sub(replace, value))


def _expanded(value: Any) -> Any:
    if isinstance(value, Path):
        return Path(expand_path(str(value)))
    if isinstance(value, str):
        return expand_path(value)
    return value


def expand_config_paths(config: Any) -> None:
    """Expand ``~`` and environment variables in the path settings of a configuration."""
    if not hasattr(config, "get"):
        return
    for key in PATH_KEYS:
        value = config.get(key)
        if value is not None:
            config[key] = _expanded(value)
    loggers = config.get("trainer.logger")
    if loggers is None or isinstance(loggers, bool):
        return
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = getattr(logger, "init_args", None)
        if init_args is None:
            continue
        for key in ("save_dir", "dir"):
            if init_args.get(key) is not None:
                init_args[key] = _expanded(init_args[key])


def folder_data_args(
    root: Path,
    train: Sequence[int] = (),
    val: Sequence[int] = (),
    predict: Sequence[int] | None = None,
    candidates: Path | None = None,
) -> list[str]:
    """LightningCLI arguments that point the data module at one LUNA16-layout folder and
    nothing else, whatever the configuration names: its tables (annotations and excluded
    findings where they exist, ``candidates`` or ``root/candidates.csv``, its folds), the
    patch cache in its default folder for ``root``, no split data set (the caller checks
    the split), and the given folds (no test folds; ``predict`` default: every fold).
    """
    annotations = root / "annotations.csv"
    excluded = root / "annotations_excluded.csv"
    folds = root / "folds"
    predict = list(folder_folds(root)) if predict is None else list(predict)
    return [
        "--data.init_args.dataset=null",
        f"--data.init_args.root={root}",
        f"--data.init_args.candidates={candidates or root / 'candidates.csv'}",
        f"--data.init_args.annotations={annotations if annotations.is_file() else 'null'}",
        f"--data.init_args.excluded={excluded if excluded.is_file() else 'null'}",
        f"--data.init_args.folds={folds if folds.is_dir() else 'null'}",
        "--data.init_args.cache_dir=null",
        f"--data.init_args.train_folds={list(train)}",
        f"--data.init_args.val_folds={list(val)}",
        "--data.init_args.test_folds=[]",
        f"--data.init_args.predict_folds={predict}",
    ]


class NoduleCLI(LightningCLI):
    """LightningCLI with the checkpoint, submission and W&B callbacks as top-level groups."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the callback groups and their defaults."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/cpm",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-cpm{val/cpm:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(SubmissionWriter, "submission")
        parser.add_lightning_class_args(WandbFrocLogger, "wandb_media")

    def before_instantiate_classes(self) -> None:
        """Expand the path settings and apply ``WANDB_MODE`` to the configured W&B logger."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        expand_config_paths(config)
        _respect_wandb_mode(config)


def lightning_main(args: list[str] | None = None) -> LightningCLI:
    """Run ``fit``, ``validate``, ``test`` or ``predict`` with LightningCLI.

    Args:
        args: command-line arguments, e.g. ``["fit", "--config", "configs/tiny.yaml"]``.

    Returns:
        The CLI (its ``trainer``, ``model`` and ``datamodule``).
    """
    if args is not None and list(args) == sys.argv[1:]:
        args = None  # the same arguments: let LightningCLI read sys.argv without warning
    cli = NoduleCLI(
        model_class=NoduleClassifier,
        datamodule_class=Luna16DataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggedConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )
    finish_wandb(cli.trainer)
    return cli


def finish_wandb(trainer: Trainer) -> None:
    """Close the trainer's W&B runs, so that their files (summary, config) are complete."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()
            logger._experiment = None
