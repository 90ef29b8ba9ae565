"""The data sets of a split on disk: where they live, how they are made, whether a folder is one.

A data set of the split description (:mod:`nodule.data.splits`) lives in
``$NODULE_CACHE/sets/<name>`` unless a folder is given. :func:`make_dataset` runs the
command that defines it (``nodule synth`` or ``nodule insert`` with the split's
parameters; an insertion background's real findings become excluded regions);
:func:`check_dataset_folder` refuses a folder whose scans are not the data set's, so a
wrong path cannot pass for a split's data; :func:`real_findings` gives a real scan's
reference findings (the real LUNA16 tables for the LIDC scans, the recorded lesions
otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nodule.data.luna16 import read_annotations, read_excluded, read_folds, write_csv
from nodule.data.splits import RealScan, Split, SplitError, shape_part
from nodule.paths import REPO_ROOT, cache_dir, luna16_dir

FINDING_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "description"]


GENERATOR_RELEASES = {"0.1.0": "1877ec1", "0.2.0": "0af9abe", "0.3.0": "3e3fb1f", "0.4.0": "95bc398"}
"""The last commit of each earlier ``nodule synth`` generator version, for remaking the data
sets the split pins to it."""


def dataset_root(name: str) -> Path:
    """The default folder of a split's data set: ``$NODULE_CACHE/sets/<name>``."""
    return cache_dir("sets") / name


def real_findings(scan: RealScan) -> pd.DataFrame:
    """The reference findings of a real scan: for ``findings: luna16`` the scan's rows of the
    real LUNA16 ``annotations.csv`` and ``annotations_excluded.csv``, otherwise the rows of the
    known-findings CSV (relative to the repository). Columns :data:`FINDING_COLUMNS`;
    diameter -1 means unknown."""
    if scan.findings == "luna16":
        folder = luna16_dir()
        nodules = read_annotations(folder / "annotations.csv")
        excluded = read_excluded(folder / "annotations_excluded.csv")
        parts = [
            nodules[nodules["seriesuid"] == scan.seriesuid].assign(description="LUNA16 nodule"),
            excluded[excluded["seriesuid"] == scan.seriesuid].assign(description="LUNA16 excluded finding"),
        ]
        table = pd.concat(parts, ignore_index=True)
    elif scan.findings:
        table = pd.read_csv(REPO_ROOT / scan.findings, dtype={"seriesuid": str})
        table = table[table["seriesuid"] == scan.seriesuid]
        if "description" not in table:
            table = table.assign(description="")
    else:
        table = pd.DataFrame(columns=FINDING_COLUMNS)
    return table[FINDING_COLUMNS].reset_index(drop=True)


def folder_seriesuids(root: Path) -> dict[str, int]:
    """``{seriesuid: subset}`` of a LUNA16-layout folder, from its ``folds/subsetK.csv``."""
    return {uid: k for k, uids in read_folds(Path(root) / "folds").items() for uid in uids}


def check_dataset_folder(split: Split, name: str, root: Path) -> None:
    """Refuse a folder that is not the split's data set ``name`` (its scans and subsets
    must be those the split computes; an unfinished folder with fewer scans is refused too).

    Raises:
        SplitError: the folder's scans differ, naming the folder, the data set and the counts.
        FileNotFoundError: the folder has no ``folds/``.
    """
    expected = split.scans(name)
    if not (Path(root) / "folds").is_dir():
        raise FileNotFoundError(f"{root}: no folds/ folder; is it a data set (made by `nodule split make {name}`)?")
    found = folder_seriesuids(root)
    want = dict(zip(expected["seriesuid"], expected["subset"].astype(int), strict=True))
    missing = [u for u in want if u not in found]
    extra = [u for u in found if u not in want]
    moved = [u for u in want if u in found and found[u] != want[u]]
    if missing or extra or moved:
        raise SplitError(
            f"{root} is not data set {name} of split {split.tag} ({split.path}): "
            f"{len(missing)} of its {len(want)} scans missing, {len(extra)} scans it does not have, "
            f"{len(moved)} in another subset"
        )


def make_real_dataset(split: Split, name: str, out: Path) -> Path:
    """Lay out a ``real`` data set of the split in the LUNA16 layout without copying a byte:
    ``subsetK/<seriesuid>`` links to the DICOM folder in ``$NODULE_DATA/real_ct``, and the
    tables hold the real scans' reference standard (:func:`real_findings`: for the LIDC
    scans the real LUNA16 nodules go to ``annotations.csv`` and their excluded findings to
    ``annotations_excluded.csv``; recorded lesions of other scans are excluded regions).

    Returns:
        The folder.
    """
    from nodule.data.luna16 import write_annotations, write_excluded, write_folds, write_seriesuids
    from nodule.paths import write_text_atomic

    scans = split.scans(name)
    real = {s.seriesuid: s for s in split.real_scans.values()}
    nodules, excluded = [], []
    for uid, subset in zip(scans["seriesuid"], scans["subset"], strict=True):
        scan = real[uid]
        if not scan.path.is_dir():
            raise FileNotFoundError(f"data set {name}: real scan {scan.name} not found at {scan.path}")
        link = out / f"subset{int(subset)}" / uid
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() and link.resolve() != scan.path.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(scan.path.resolve(), target_is_directory=True)
        findings = real_findings(scan)
        is_nodule = findings["description"] == "LUNA16 nodule"
        nodules.append(findings[is_nodule])
        excluded.append(findings[~is_nodule])
    columns = FINDING_COLUMNS[:5]
    write_annotations(pd.concat(nodules, ignore_index=True)[columns], out / "annotations.csv")
    write_excluded(pd.concat(excluded, ignore_index=True), out / "annotations_excluded.csv")
    write_seriesuids(out / "seriesuids.csv", scans["seriesuid"])
    write_folds(out / "folds", {k: scans.loc[scans["subset"] == k, "seriesuid"].tolist() for k in sorted(set(scans["subset"]))})
    info = {"generator": "real", "dataset": name, "split": split.tag, "scans": [real[u].name for u in scans["seriesuid"]],
            "one_patient": scans["patient"].nunique() == 1}
    write_text_atomic(out / "generator.json", json.dumps(info, indent=1) + "\n")
    return out


def make_dataset(
    split: Split, name: str, root: Path | None = None, jobs: int = 1, progress: bool = True, candidates: bool = False
) -> Path:
    """Make (or resume) a split's data set with the command that defines it.

    ``synth`` data sets run ``nodule synth``; ``insert`` ones run ``nodule insert`` on the
    background's real scan, with nodule shapes from the set's part of the shape bank
    (``shapes``: ``insert``, held out, by default; ``synth`` for training sets) and its real findings (:func:`real_findings`) as excluded
    regions, written to ``<root>/background_findings.csv`` first; ``real`` ones are laid out
    by :func:`make_real_dataset`. ``luna16`` data sets are the user's own LUNA16 images and
    are not made.

    Args:
        split: the split description.
        name: the data set.
        root: its folder (default :func:`dataset_root`).
        jobs: worker processes.
        progress: progress bars.
        candidates: also run the candidate stage into ``<root>/candidates.csv`` (skipped
            when that file exists).

    Returns:
        The data set's folder.

    Raises:
        SplitError: a data set that is not made by a command.
    """
    dataset = split.dataset(name)
    out = Path(root) if root is not None else dataset_root(name)
    p = dataset.params
    if dataset.kind == "synth":
        from nodule.data.phantom import GENERATOR_VERSION
        from nodule.data.splits import generator_version
        from nodule.data.synth import run_synth

        wanted = generator_version(dataset)
        if wanted != GENERATOR_VERSION:
            last = GENERATOR_RELEASES.get(wanted, "unknown")
            raise SplitError(
                f"data set {name} of {split.path} is made by generator {wanted}; this code's generator is "
                f"{GENERATOR_VERSION}. Make it with the code of that generator (its last commit: {last}) "
                f"or give the data set generator {GENERATOR_VERSION} (new scans, a new data set)"
            )

        run_synth(
            out=out, scans=int(p["scans"]), seed=int(p["seed"]), preset=p["preset"], jobs=jobs, progress=progress,
            types=p.get("types"),
        )
    elif dataset.kind == "insert":
        from nodule.data.insert import build_insert_dataset
        from nodule.data.shapes import load_shape_bank

        background = split.real_scans[str(p["background"])]
        out.mkdir(parents=True, exist_ok=True)
        findings = write_csv(real_findings(background), out / "background_findings.csv")
        bank = load_shape_bank(shape_part(dataset))  # type: ignore[arg-type]
        build_insert_dataset(
            background.path, out, scans=int(p["scans"]), seed=int(p["seed"]), excluded=findings, bank=bank
        )
    elif dataset.kind == "real":
        make_real_dataset(split, name, out)
    else:
        raise SplitError(f"data set {name} ({dataset.kind}) is the user's own LUNA16 images, not made")
    check_dataset_folder(split, name, out)
    if candidates and not (out / "candidates.csv").exists():
        from nodule.candidates.batch import run_batch

        run_batch([out], out / "candidates.csv", jobs=jobs, progress=progress)
    return out


def check_report(split: Split, learned: dict[str, list[str] | None], folders: bool = True) -> tuple[str, bool]:
    """The report of ``nodule split check``: the split's rules, what each learned part saw,
    and (``folders``) whether the data set folders that exist under ``$NODULE_CACHE/sets``
    hold the split's scans.

    Args:
        split: the split description.
        learned: learned part -> the scans it records having trained on (None: it records
            none, which is itself a problem: its leakage cannot be checked).
        folders: also check the data set folders present on disk.

    Returns:
        The report text and whether every check passed.
    """
    from nodule.data.splits import (
        Problem,
        check_split,
        describe_leak,
        format_problems,
        leaked_scans,
    )

    problems = check_split(split)
    table = split.scan_table()
    for learner, uids in learned.items():
        if uids is None:
            problems.append(Problem("leak", f"{learner} records no training scans: its leakage cannot be checked; retrain it"))
            continue
        leaks = leaked_scans(uids, table)
        if len(leaks):
            problems.append(Problem("leak", describe_leak(learner, leaks)))
    rows = []
    for name in split.datasets:
        scans = split.scans(name)
        roles = ", ".join(f"{role} {n}" for role, n in scans.groupby("role", sort=False).size().items())
        state = ""
        root = dataset_root(name)
        if folders and (root / "folds").is_dir():
            try:
                check_dataset_folder(split, name, root)
                state = f"  [{root}: matches]"
            except (SplitError, FileNotFoundError) as error:
                problems.append(Problem("folder", str(error)))
                state = f"  [{root}: DIFFERS]"
        rows.append(f"  {name:<26} {len(scans):>4} scans, {scans['patient'].nunique():>4} patients: {roles}{state}")
    lines = [format_problems(split, problems), "", "data sets (scans per role):", *rows]
    for learner, uids in learned.items():
        lines.append(f"{learner}: trained on {'?' if uids is None else len(uids)} scans")
    return "\n".join(lines), not problems
