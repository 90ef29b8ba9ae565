"""Reading what ModelCheckpoint recorded: the best checkpoint of a run folder and its score."""

from __future__ import annotations

from pathlib import Path


def read_best(folder: Path) -> tuple[Path, float | None]:
    """The best checkpoint by the monitored metric and its score, as the ModelCheckpoint
    callback recorded them in ``folder/last.ckpt`` (read with ``weights_only=True``).

    Args:
        folder: the checkpoint folder (``checkpoint.dirpath``).

    Returns:
        The best checkpoint's path and its score (None when none was recorded).

    Raises:
        FileNotFoundError: no ``last.ckpt``.
        ValueError: no ModelCheckpoint state with a best checkpoint.
    """
    import torch

    last = Path(folder) / "last.ckpt"
    if not last.exists():
        raise FileNotFoundError(f"{last}: no last checkpoint")
    state = torch.load(last, map_location="cpu", weights_only=True)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            score = value.get("best_model_score")
            return Path(value["best_model_path"]), None if score is None else float(score)
    raise ValueError(f"{last}: no ModelCheckpoint state with a best checkpoint")


def best_checkpoint(folder: Path) -> Path:
    """The best checkpoint by the monitored metric (see :func:`read_best`)."""
    return read_best(folder)[0]
