"""The ``nodule synth`` job: many phantom scans in the LUNA16 layout, resumable.

Each scan's random streams depend only on ``(seed, index)``
(:func:`nodule.data.phantom.generate_phantom`), so the number of worker processes and
interruptions do not change a single byte. Scans already complete (sidecar present)
are kept when the job is run again; the tables are assembled at the end from the
sidecars of this run's scans (indices ``0 .. scans-1``). ``DIR/generator.json`` records
the generator version, seed, parameters and their fingerprint
(:func:`nodule.data.layout.claim_folder`): a rerun with other parameters into the same
folder is refused, and so is a rerun asking for fewer scans than the folder holds (more
scans extend the set). Arguments are checked before anything is written
(:func:`check_synth_arguments`), and a ``generator.json`` left by a job that failed
before its first scan binds nothing. On resume each finished scan is checked against
the sizes and hashes its sidecar records, and a damaged one is made again
(:func:`nodule.data.layout.is_complete`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from nodule.data import phantom
from nodule.data.layout import (
    GENERATOR_FILE,
    Format,
    assemble_tables,
    claim_folder,
    is_complete,
    write_scan,
)
from nodule.data.scanner import KERNELS, Kernel
from nodule.data.shapes import BANK_VERSION, ShapeBank, load_shape_bank
from nodule.paths import check_output_dir

ShapeSource = Literal["lidc", "ellipsoid"]
_BANK: ShapeBank | None = None


def _params(
    seed: int,
    preset: str,
    fmt: str,
    slice_thickness: float | None,
    pixel_spacing: float | None,
    kernel: str | None,
    noise: float | None,
    shapes: str,
    shape_patients: int | None,
    types: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    # ``types`` is recorded only when given: the sets made before it existed still match
    extra = {"types": phantom.check_type_p(types)} if types is not None else {}
    return {
        "generator": "nodule.data.phantom",
        "version": phantom.GENERATOR_VERSION,
        "seed": int(seed),
        "preset": preset,
        "format": fmt,
        "slice_thickness": slice_thickness,
        "pixel_spacing": pixel_spacing,
        "kernel": kernel,
        "noise": noise,
        "shapes": shapes,
        "shape_bank_version": BANK_VERSION if shapes == "lidc" else None,
        "shape_patients": shape_patients,
        **extra,
    }


def check_synth_arguments(
    scans: int,
    seed: int,
    preset: str,
    fmt: str,
    jobs: int,
    slice_thickness: float | None,
    pixel_spacing: float | None,
    kernel: str | None,
    noise: float | None,
    shapes: str,
    shape_patients: int | None,
) -> None:
    """Refuse bad arguments of :func:`run_synth` before anything is written.

    Raises:
        ValueError: naming the argument, its value and what it must be.
    """
    for name, value, allowed in (
        ("preset", preset, tuple(phantom.PRESETS)),
        ("format", fmt, ("mhd", "dicom")),
        ("kernel", kernel, (None, *KERNELS)),
        ("shapes", shapes, ("lidc", "ellipsoid")),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    for name, number, least in (
        ("scans", scans, 1),
        ("seed", seed, 0),
        ("jobs", jobs, 1),
        ("shape_patients", shape_patients, 1),
    ):
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {number!r}")
    for name, size, zero_ok in (
        ("slice_thickness", slice_thickness, False),
        ("pixel_spacing", pixel_spacing, False),
        ("noise", noise, True),
    ):
        if size is None:
            continue
        if not math.isfinite(size) or size < 0 or (size == 0 and not zero_ok):
            raise ValueError(f"{name} must be a number {'>=' if zero_ok else '>'} 0, got {size!r}")


def _init_worker(shapes: str, shape_patients: int | None) -> None:
    global _BANK
    _BANK = load_shape_bank("synth", max_patients=shape_patients) if shapes == "lidc" else None


def _one(args: tuple[int, dict[str, Any], str]) -> dict[str, Any]:
    index, params, out = args
    t0 = time.process_time()
    uid = phantom.default_series_uid(params["seed"], index, params["preset"])
    fmt: Format = params["format"]
    if is_complete(Path(out), index, uid, fmt):
        return {"index": index, "skipped": True}
    scan = phantom.generate_phantom(
        params["seed"],
        index,
        params["preset"],
        slice_thickness=params["slice_thickness"],
        pixel_spacing=params["pixel_spacing"],
        kernel=params["kernel"],
        noise=params["noise"],
        shape_bank=_BANK,
        series_uid=uid,
        type_p=params.get("types"),
    )
    record = {
        "scan": scan.meta,
        "findings": [f.as_dict() for f in scan.findings],
    }
    write_scan(Path(out), index, scan.volume, record, fmt)
    return {"index": index, "skipped": False, "cpu_s": time.process_time() - t0}


def run_synth(
    out: Path,
    scans: int,
    seed: int = 0,
    preset: phantom.Preset = "small",
    fmt: Format = "mhd",
    jobs: int = 1,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    kernel: Kernel | None = None,
    noise: float | None = None,
    shapes: ShapeSource = "lidc",
    shape_patients: int | None = None,
    progress: bool = True,
    types: Mapping[str, float] | None = None,
) -> dict[str, Path]:
    """Generate ``scans`` phantom scans into ``out`` in the LUNA16 layout.

    Args:
        out: dataset folder (created).
        scans: number of scans (indices 0 .. scans-1).
        seed: seed of the set.
        preset: ``small`` or ``full``.
        fmt: ``mhd`` or ``dicom``.
        jobs: worker processes.
        slice_thickness: fix the slice thickness of every scan, mm.
        pixel_spacing: fix the pixel size, mm.
        kernel: fix the kernel (soft, standard, sharp).
        noise: fix the noise SD, HU.
        shapes: ``lidc`` (nodule shapes from the LIDC shape bank) or ``ellipsoid``.
        shape_patients: use a shape bank of this many LIDC patients (tests).
        progress: show a progress bar.
        types: nodule type probabilities (:func:`nodule.data.phantom.check_type_p`);
            default the generator's screening mix (:data:`nodule.data.phantom.TYPE_P`).

    Returns:
        Name -> path of the dataset tables (plus ``generator``).

    Raises:
        ValueError: a bad argument (checked before anything is written), or ``out``
            holds a set made with other parameters, or more scans than ``scans``.
        OutputPathError: ``out`` is not a folder that can be written.
    """
    check_synth_arguments(scans, seed, preset, fmt, jobs, slice_thickness, pixel_spacing, kernel, noise, shapes, shape_patients)
    out = Path(out)
    check_output_dir(out, [], overwrite=True)
    params = _params(seed, preset, fmt, slice_thickness, pixel_spacing, kernel, noise, shapes, shape_patients, types)
    uids = [phantom.default_series_uid(seed, i, preset) for i in range(int(scans))]
    # sets made before the version was recorded used bank version 1
    claim_folder(out, params, uids, legacy={"shape_bank_version": 1 if shapes == "lidc" else None})
    tasks = [(i, params, str(out)) for i in range(int(scans))]
    if shapes == "lidc":  # build (or check) the cached bank once here, not in every worker
        load_shape_bank("synth", max_patients=shape_patients, jobs=jobs)
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(shapes, shape_patients)) as pool:
            results = list(tqdm(pool.map(_one, tasks), total=len(tasks), disable=not progress, desc="synth"))
    else:
        _init_worker(shapes, shape_patients)
        results = [_one(t) for t in tqdm(tasks, disable=not progress, desc="synth")]
    del results
    tables = assemble_tables(out, uids)
    return {**tables, "generator": out / GENERATOR_FILE}
