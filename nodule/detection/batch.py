"""Batch detection of CT studies: ``nodule detect`` and its Python API :func:`detect`.

A batch finds the studies of its inputs (:mod:`nodule.detection.studies`), runs each
through :func:`~nodule.detection.pipeline.run_study` (in this process, or in ``workers``
processes that each load the model once and use one thread), and writes each study's
document and record as it finishes (:mod:`nodule.detection.outputs`). Inputs that hold no
study, unreadable studies and studies without lungs are failed rows with a reason; the
batch goes on. The same series reached twice is processed once (``duplicate`` row).

Resuming: a study whose record exists is skipped, any other is done (again); the batch's
settings and model are fingerprinted in ``detect.json`` and a rerun with others into the
same folder is refused. ``shard=(I, N)`` processes the studies whose key falls in part I
of N, so that the machines of a job array share an archive (:func:`merge_batches` joins them).

Exit status (:meth:`DetectResult.exit_code`): 0 when every study is ok; 1 when every
study failed (including when no study was found), always; 1 when any failed and
``strict``; otherwise 0 (failed studies are in the summary).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from nodule.candidates.detect import set_detector_threads
from nodule.detection.outputs import FORMATS, read_records, write_aggregates, write_study
from nodule.detection.pipeline import NOTICE, DetectSettings, StudyOutcome, base_row, run_study
from nodule.detection.studies import EmptyInput, StudyRef, find_studies, in_shard
from nodule.errors import batch_exit_code
from nodule.fingerprint import check_fingerprint, fingerprint
from nodule.models.bundle import ModelBundle, load_model
from nodule.paths import check_output_dir, write_text_atomic

logger = logging.getLogger(__name__)

AGGREGATE_EVERY_S = 30.0
"""The summary and detections are rewritten at most this often during a batch (and at its end)."""


@dataclass
class DetectResult:
    """What a batch did.

    Attributes:
        out: the batch folder.
        summary: one row per study of this run's part (shard) of the batch.
        detections: one row per finding of its ok studies.
        processed: studies processed by this run (the rest were done before).
        warnings: discovery notes (duplicates, skipped series).
    """

    out: Path
    summary: pd.DataFrame
    detections: pd.DataFrame
    processed: int
    warnings: list[str]

    @property
    def n_ok(self) -> int:
        """Studies with status ok."""
        return int((self.summary["status"] == "ok").sum())

    @property
    def n_failed(self) -> int:
        """Studies (and inputs without a study) that failed."""
        return int((self.summary["status"] == "failed").sum())

    def exit_code(self, strict: bool = False) -> int:
        """1 when every study failed (or none was found), or any failed with ``strict``; else 0
        (:func:`nodule.errors.batch_exit_code`)."""
        return batch_exit_code(self.n_ok, self.n_failed, strict)


# --------------------------------------------------------------------------- workers

_WORKER_MODEL: ModelBundle | None = None


def _init_worker(model_path: Path | None, threads: int) -> None:
    """Each worker loads the model once and uses ``threads`` threads (1 when several run)."""
    global _WORKER_MODEL
    import numba
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    set_detector_threads(threads)
    _WORKER_MODEL = load_model(model_path)


def _work(ref: StudyRef, settings: DetectSettings, out: Path) -> StudyOutcome:
    assert _WORKER_MODEL is not None, "worker not initialised"
    return run_study(ref, _WORKER_MODEL, settings, out)


def _empty_row(item: EmptyInput) -> dict[str, Any]:
    row = base_row(StudyRef(item.path))
    row.update(key=item.key, reason=item.reason, seconds_total=0.0)
    return row


# --------------------------------------------------------------------------- batch


def _start_folder(out: Path, params: dict[str, Any]) -> str:
    """Create or reuse the batch folder; refuse one made with other settings or model."""
    manifest_path = out / "detect.json"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise ValueError(f"{manifest_path}: unreadable batch manifest ({exc}); remove the folder to start over") from exc
        return check_fingerprint(out, "a nodule detect batch", manifest.get("params", {}), params, manifest.get("fingerprint"))
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(params)
    text = json.dumps(
        {"format": FORMATS["batch"], "notice": NOTICE, "formats": FORMATS, "params": params, "fingerprint": fp},
        indent=1,
    )
    write_text_atomic(manifest_path, text + "\n")
    return fp


def detect(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    settings: DetectSettings | None = None,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    series_uid: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> DetectResult:
    """Detect nodules in every study of ``inputs``; results go to the batch folder ``out``.

    Args:
        inputs: files and folders (DICOM folders, ``.mhd/.mha/.nii/.nii.gz``, LUNA16 layouts).
        out: the batch folder (see :mod:`nodule.detection.outputs`).
        checkpoint: a model file or Lightning checkpoint; None: the shipped default model.
        settings: threshold, merging, overlays, device (None: defaults).
        workers: processes running studies in parallel (each with one thread).
        shard: ``(I, N)``: only part I of N of the studies (see :func:`~nodule.detection.studies.parse_shard`).
        series_uid: only the series with this SeriesInstanceUID (or file stem).
        retry_failed: also redo studies recorded as failed.
        progress: show a progress bar.

    Returns:
        The summary and detections of this run's part of the batch.

    Raises:
        ModelLoadError: the model cannot be loaded (before any study is read).
        OutputPathError: the output folder cannot be used.
        FingerprintMismatch: ``out`` holds a batch made with other settings or model.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or DetectSettings()
    model_path = Path(checkpoint) if checkpoint is not None else None
    model = load_model(model_path)
    out_dir = Path(out)
    paths = [Path(p) for p in inputs]
    check_output_dir(out_dir, paths)
    params = settings.fingerprint_params(model)
    _start_folder(out_dir, params)

    found = find_studies(paths, series_uid=series_uid)
    for note in found.warnings:
        logger.warning(note)
    done = read_records(out_dir)
    for item in found.empty:
        if in_shard(item.key, shard) and item.key not in done:
            write_study(out_dir, _empty_row(item), None)
    owners = {
        r["row"]["series_uid"]: r["row"] for r in done.values() if r["row"].get("status") == "ok"
    }
    todo = [
        ref
        for ref in found.studies
        if in_shard(ref.key, shard)
        and (ref.key not in done or (retry_failed and done[ref.key]["row"].get("status") == "failed"))
    ]
    model_info = params["model"]
    bar = tqdm(total=len(todo), unit="study", desc="detect", disable=not progress)
    counts = {"ok": 0, "failed": 0, "duplicate": 0}
    last_aggregate = time.monotonic()

    def finish(outcome: StudyOutcome) -> None:
        nonlocal last_aggregate
        row, document = outcome.row, outcome.document
        owner = owners.get(row["series_uid"]) if row["status"] == "ok" else None
        if owner is not None and owner["key"] != row["key"]:
            row = {**row, "status": "duplicate", "reason": f"the same series as {owner['input']}: processed once"}
            document = None
            logger.warning("%s: %s", row["input"], row["reason"])
        elif row["status"] == "ok":
            owners[row["series_uid"]] = row
        write_study(out_dir, row, document)
        counts[row["status"]] += 1
        bar.set_postfix(ok=counts["ok"], failed=counts["failed"], s_per_study=f"{row['seconds_total']:.1f}")
        bar.update()
        if time.monotonic() - last_aggregate > AGGREGATE_EVERY_S:
            write_aggregates(out_dir, shard, model=model_info)
            last_aggregate = time.monotonic()

    try:
        if workers == 1 or len(todo) <= 1:
            for ref in todo:
                finish(run_study(ref, model, settings, out_dir))
        else:
            _run_parallel(todo, model_path, settings, out_dir, workers, finish)
    finally:
        bar.close()
        summary, detections = write_aggregates(out_dir, shard, model=model_info)
    return DetectResult(out_dir, summary, detections, len(todo), found.warnings)


def _run_parallel(
    todo: list[StudyRef],
    model_path: Path | None,
    settings: DetectSettings,
    out_dir: Path,
    workers: int,
    finish: Any,
) -> None:
    """Run studies in ``workers`` processes. A worker that dies (killed, out of memory) breaks
    the pool and every study in flight with it: the rest of the batch goes on in a fresh
    pool, and the studies that were in flight are tried again at the end one at a time, so
    that only a study that kills its worker on its own is recorded as failed."""
    queue = list(reversed(todo))
    suspects: list[StudyRef] = []
    while queue:
        suspects += _pool_pass(queue, model_path, settings, out_dir, workers, finish)
    for ref in suspects:
        if _pool_pass([ref], model_path, settings, out_dir, 1, finish):
            row = base_row(ref)
            row["reason"] = f"{ref.path}: the worker processing it stopped (killed, or out of memory?)"
            finish(StudyOutcome(None, row))


def _pool_pass(
    queue: list[StudyRef],
    model_path: Path | None,
    settings: DetectSettings,
    out_dir: Path,
    workers: int,
    finish: Any,
) -> list[StudyRef]:
    """Run studies from ``queue`` (taken from its end) in one pool until it is empty or the
    pool breaks; returns the studies in flight when it broke."""
    broken: list[StudyRef] = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(model_path, 1)) as pool:
        pending: dict[Future[StudyOutcome], StudyRef] = {}
        while (queue or pending) and not broken:
            while queue and len(pending) < 2 * workers:
                ref = queue.pop()
                pending[pool.submit(_work, ref, settings, out_dir)] = ref
            ready, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in ready:
                ref = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken.append(ref)
                    continue
                except Exception as exc:  # e.g. a result that could not be sent back
                    row = base_row(ref)
                    row["reason"] = f"{ref.path}: the worker failed ({type(exc).__name__}: {exc})"
                    outcome = StudyOutcome(None, row)
                finish(outcome)
        broken += list(pending.values())
    return broken
