"""Train, measure and export the shipped default model (``nodule/models/default/``).

Three stages, each resumable (a rerun skips what is finished):

1. ``train``: ``scripts/train_synth.py`` with ``configs/default_model.yaml`` (variant
   ``default``: the configuration as it is, late fusion) on its data set (``train_seed6300``)
   (subsets 0-6 train, 7 validates, 8-9 test): ``nodule fit``, the test evaluation with a
   bootstrap CI, and the external sets (nodules inserted into LIDC-IDRI-0001 and -0002,
   the real LIDC scans), into ``OUT/default`` with ``OUT/results.json``;
2. ``crossval``: ``nodule crossval`` of the same recipe over the 10 folds of
   ``cv_small_seed7000`` (role ``crossval`` in the split) into ``OUT/crossval``;
3. ``export``: :func:`nodule.training.export.export_model`: the best checkpoint (by
   validation CPM), the operating threshold chosen on the validation subset (the lowest
   probability with at most ``--max-fp-per-scan`` false positives per validation scan),
   the model file and ``MODEL_CARD.md`` beside it.

``OUT`` defaults to ``$NODULE_CACHE/experiments/default_model``. The wall time of every
stage that ran is kept in ``OUT/timings.json`` (the first measurement of a stage is kept;
remove the file to measure again) and goes to the model card.

    nodule split make train_seed6300 train_cptac_seed0 train_a0001_seed0 cv_small_seed7000 \\
        external_lidc0001_seed0 external_lidc0002_seed0 real_lidc --candidates true
    .venv/bin/python scripts/train_default_model.py

The configuration's extra training sets (``extra_train``: nodules inserted into the
training-side real scans) train only: the test, external and validation predictions read
only their own data set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nodule.paths import REPO_ROOT, cache_dir, write_text_atomic

EXTERNAL = ("external_lidc0001_seed0", "external_lidc0002_seed0", "real_lidc")
STAGES = ("train", "crossval", "export")
TIMINGS = "timings.json"


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _data_args(config: Path) -> dict[str, Any]:
    """The ``data.init_args`` of a training configuration."""
    import yaml

    return dict(yaml.safe_load(config.read_text())["data"]["init_args"])


def _patch_cache(dataset: str, data: dict[str, Any]) -> str:
    """Whether a patch cache of the configuration's geometry (``data``: its ``data.init_args``) exists for ``dataset``."""
    patch = data["patch"]
    geometry = f"v{patch['n_views']}_px{patch['size_px']}_fov{float(patch['fov_mm']):g}_*"
    found = list(cache_dir("patches").glob(f"{dataset}-*/{geometry}"))
    return "present" if found else "empty"


def _timed(out: Path, stage: str, step: list[str], cache: str) -> None:
    """Run ``step``; record its wall time in ``out/timings.json`` unless one is recorded."""
    start = time.perf_counter()
    _run(step)
    seconds = time.perf_counter() - start
    path = out / TIMINGS
    timings = json.loads(path.read_text()) if path.is_file() else {}
    if stage not in timings:
        timings[stage] = {
            "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "patch_cache_at_start": cache,
        }
        write_text_atomic(path, json.dumps(timings, indent=1) + "\n")
    print(f"{stage}: {seconds / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "default_model.yaml")
    parser.add_argument("--dataset", default=None, help="training data set of the split (default: the configuration's)")
    parser.add_argument("--cv-dataset", default="cv_small_seed7000", help="data set of the cross-validation")
    parser.add_argument("--out", type=Path, default=None, help="experiment folder (default $NODULE_CACHE/experiments/default_model)")
    parser.add_argument("--model-out", type=Path, default=None, help="model file (default: the package's default model)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--max-fp-per-scan", type=float, default=1.0, help="validation operating point of the threshold")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    from nodule.data.sets import dataset_root

    out = (args.out or cache_dir("experiments") / "default_model").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    nodule = str(Path(python).parent / "nodule")
    config = args.config.resolve()
    data = _data_args(config)
    dataset = args.dataset or str(data["dataset"])
    train_cmd = [
        python, str(REPO_ROOT / "scripts" / "train_synth.py"), "--dataset", dataset,
        "--config", str(config), "--variants", "default", "--external", *EXTERNAL,
        "--bootstrap", str(args.bootstrap), "--out", str(out),
    ]
    cv_dir = out / "crossval"
    cv_cmd = [
        nodule, "crossval", "--config", str(config), "--data", str(dataset_root(args.cv_dataset)),
        "--folds", "0-9", "--bootstrap", str(args.bootstrap), "--out", str(cv_dir),
    ]
    if "train" in args.stages:
        _timed(out, "train", train_cmd, _patch_cache(dataset, data))
    if "crossval" in args.stages:
        _timed(out, "crossval", cv_cmd, _patch_cache(args.cv_dataset, data))
    if "export" in args.stages:
        from nodule.models.bundle import DEFAULT_MODEL
        from nodule.training.export import export_model

        model_out = (args.model_out or DEFAULT_MODEL).expanduser().resolve()
        timings = json.loads((out / TIMINGS).read_text()) if (out / TIMINGS).is_file() else {}
        def plain(cmd: list[str]) -> str:
            text = " ".join(cmd).replace(str(REPO_ROOT) + "/", "")
            return text.replace(str(cache_dir()), "$NODULE_CACHE")

        extra = data.get("extra_train") or []
        has_cv = (cv_dir / "summary.json").is_file()
        sets = [dataset, *extra, *([args.cv_dataset] if has_cv else []), *EXTERNAL]
        stages = "" if has_cv else " --stages train export"
        shown = [
            f"nodule split make {' '.join(sets)} --candidates true",
            f".venv/bin/python scripts/train_default_model.py{stages}",
            "# which runs, each step resumable:",
            plain(["python", "scripts/train_synth.py", *train_cmd[2:]]),
            *([plain(["nodule", *cv_cmd[1:]])] if has_cv else []),
            plain(["python", "scripts/train_default_model.py", "--stages", "export"])
            + f"  # export_model(OUT/default, {plain([str(model_out)])})",
        ]
        bundle = export_model(
            out / "default",
            model_out,
            results=out / "results.json",
            crossval=cv_dir if has_cv else None,
            recipe=config,
            max_fp_per_scan=args.max_fp_per_scan,
            timings=timings,
            commands=shown,
        )
        print(f"model {bundle.version} -> {bundle.path} (threshold {bundle.threshold:.4f}); card {bundle.path.parent / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
