"""Train the candidate stage's learned detector (``nodule/candidates/detector.pt``).

The training data is the split description's (``--split``, default
``configs/splits/default.yaml``): the ``train`` subsets of the data sets its learner
``detector`` names (``nodule split make NAME`` makes them), found in ``--sets-dir/<name>``
(default ``$NODULE_CACHE/sets``) and checked to be those data sets. No other subset is
read, and the weights record the scans they learned from (``info.trained_on_uids``) so
that ``nodule split check`` can refuse a test on them.

1. Patches (resumable: one ``.npz`` per scan under ``--cache/<set>``): each scan is read,
   its lungs segmented and cut to the candidate stage's 1 mm working grid
   (:func:`nodule.candidates.detect.working_grid`); cubes of ``PATCH`` voxels (int16 HU)
   are cut around every nodule, ``--random`` random lung voxels, ``--dense`` lung voxels
   of -750 to -450 HU (vessel walls, partial-volume rims) and ``--blobs`` local maxima of
   the HU smoothed at 1.5 mm that lie between -700 and -300 HU (small vessels' tips,
   bifurcations and crossings: the confusers of faint ground glass), with the scan's nodules and excluded findings in
   working voxels.
2. Training: random ``CROP`` cubes of those patches (flips, y/x transposes), half of them
   around nodules (nodules under 8 mm drawn twice as often), the loss a focal loss on the
   cells' labels (:func:`nodule.candidates.learned.training_target`) plus a smooth L1 on the
   centre offsets of positive cells. Every ``--save-every`` steps the state is saved to
   ``--cache/train_state.pt``, from which an interrupted run resumes.
   With ``--hard-from WEIGHTS``, each training scan also gets ``--hard`` cubes around those
   weights' best false-positive peaks (``<uid>.hard.npz``, :func:`extract_hard`), and the
   network starts from those weights (state in ``--cache/finetune_state.pt``).
3. The weights go to ``--out`` (default the shipped ``nodule/candidates/detector.pt``).

    .venv/bin/python scripts/train_candidate_detector.py --jobs 2 --steps 3000 --out v2.pt
    .venv/bin/python scripts/train_candidate_detector.py --jobs 2 --steps 1500 --lr 5e-4 \
        --hard-from v2.pt --out v3.pt

Deterministic for ``--seed`` (on one machine and thread count).
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from tqdm import tqdm

from nodule.candidates.detect import working_grid
from nodule.candidates.learned import (
    CELL,
    LEARNED_SPACING_MM,
    CandidateNet,
    LearnedConfig,
    detect_learned,
    load_detector,
    save_detector,
    scale_hu,
    training_target,
)
from nodule.data.luna16 import read_annotations, read_excluded
from nodule.data.sets import check_dataset_folder
from nodule.data.splits import DEFAULT_SPLIT, load_split
from nodule.io import read_volume
from nodule.lung import segment_lungs
from nodule.paths import cache_dir

PATCH = 64
CROP = 48
SMALL_MM = 8.0


def _world_to_work(work: Any, table: pd.DataFrame) -> np.ndarray:
    """(N, 4) centre in working voxels (z, y, x) and diameter of a LUNA16 table's rows."""
    if len(table) == 0:
        return np.zeros((0, 4))
    zyx = work.world_to_voxel(table[["coordX", "coordY", "coordZ"]].to_numpy(np.float64))
    return np.column_stack([zyx, table["diameter_mm"].to_numpy(np.float64)])


def cut(array: np.ndarray, corner: np.ndarray, size: int, fill: float = -1024.0) -> np.ndarray:
    """The ``size``-cube of ``array`` at ``corner`` (z, y, x), padded with ``fill`` outside."""
    out = np.full((size, size, size), fill, dtype=array.dtype)
    lo = np.maximum(corner, 0)
    hi = np.minimum(corner + size, array.shape)
    if np.any(hi <= lo):
        return out
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner, strict=True))
    out[dst] = array[src]
    return out


def _scan(mhd: str, uid: str, ann_csv: str, exc_csv: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scan on the working grid: HU, lung labels, and its nodules and excluded findings
    (:func:`_world_to_work`)."""
    volume = read_volume(mhd)
    work, array, work_labels = working_grid(volume, segment_lungs(volume).labels)
    ann = read_annotations(ann_csv)
    exc = read_excluded(exc_csv) if Path(exc_csv).exists() else ann.iloc[:0]
    nodules = _world_to_work(work, ann[ann["seriesuid"] == uid])
    excluded = _world_to_work(work, exc[exc["seriesuid"] == uid])
    return array, work_labels, nodules, excluded


def _write(target: Path, array: np.ndarray, centres: np.ndarray, kinds: np.ndarray, nodules: np.ndarray, excluded: np.ndarray) -> None:
    """Cubes of ``array`` around ``centres`` (working voxels) with their kinds, atomically."""
    corners = np.asarray(centres, int).reshape(-1, 3) - PATCH // 2
    hu = np.rint(array).astype(np.int16)
    patches = np.stack([cut(hu, c, PATCH) for c in corners]) if len(corners) else np.zeros((0, PATCH, PATCH, PATCH), np.int16)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, patches=patches, corners=corners, kinds=kinds, nodules=nodules, excluded=excluded)
    tmp.replace(target)


def extract_scan(task: tuple[str, str, str, str, str, int, int, int, int]) -> str:
    """Write one scan's patches (see the module docstring) to its ``.npz``; skip a scan already done."""
    mhd, uid, ann_csv, exc_csv, out, seed, n_random, n_dense, n_blobs = task
    target = Path(out)
    if target.exists():
        return "skipped"
    array, work_labels, nodules, excluded = _scan(mhd, uid, ann_csv, exc_csv)
    rng = np.random.default_rng([seed, zlib.crc32(uid.encode())])
    lung = work_labels > 0
    lung_idx = np.flatnonzero(lung)
    dense_idx = np.flatnonzero(lung & (array > -750.0) & (array < -450.0))
    picks = [rng.choice(lung_idx, min(n_random, len(lung_idx)), replace=False)] if len(lung_idx) else []
    if len(dense_idx):
        picks.append(rng.choice(dense_idx, min(n_dense, len(dense_idx)), replace=False))
    smooth = ndi.gaussian_filter(array, 1.5)
    faint = lung & (smooth > -700.0) & (smooth < -300.0)
    blob_idx = np.flatnonzero(faint & (smooth == ndi.maximum_filter(smooth, size=5)))
    if len(blob_idx):
        picks.append(rng.choice(blob_idx, min(n_blobs, len(blob_idx)), replace=False))
    negatives = np.column_stack(np.unravel_index(np.concatenate(picks), array.shape)) if picks else np.zeros((0, 3))
    centres = np.vstack([np.rint(nodules[:, :3]), negatives]).astype(int)
    kinds = np.array([1] * len(nodules) + [0] * len(negatives), np.int8)
    _write(target, array, centres, kinds, nodules, excluded)
    return "done"


def extract_hard(task: tuple[str, str, str, str, str, str, int]) -> str:
    """Write one scan's hard negatives: cubes around the best ``n_hard`` peaks of the detector
    ``weights`` that lie farther than a finding's radius plus 5 mm from every nodule and
    excluded finding (their false positives); skip a scan already done."""
    mhd, uid, ann_csv, exc_csv, out, weights, n_hard = task
    target = Path(out)
    if target.exists():
        return "skipped"
    array, work_labels, nodules, excluded = _scan(mhd, uid, ann_csv, exc_csv)
    found = detect_learned(array, work_labels > 0, (LEARNED_SPACING_MM,) * 3, LearnedConfig(weights=weights, max_candidates=4 * n_hard, min_probability=0.0))
    peaks = found[["z", "y", "x"]].to_numpy(np.float64)
    findings = np.vstack([nodules, excluded])
    if len(findings) and len(peaks):
        d = np.linalg.norm(peaks[:, None] - findings[None, :, :3], axis=2)
        peaks = peaks[np.all(d > findings[None, :, 3] / 2 + 5.0, axis=1)]
    centres = np.rint(peaks[:n_hard]).astype(int)
    _write(target, array, centres, np.zeros(len(centres), np.int8), nodules, excluded)
    return "done"


def build_cache(
    split_path: Path, sets_dir: Path, cache: Path, seed: int, n_random: int, n_dense: int, n_blobs: int, jobs: int,
    hard_from: str | None = None, n_hard: int = 0,
) -> list[Path]:
    """Patches of every training scan of the learner ``detector`` (and, with ``hard_from``,
    the hard negatives of those weights: :func:`extract_hard`); returns their files."""
    split = load_split(split_path)
    scans = split.training_scans("detector")
    tasks: list[Any] = []
    hard: list[Any] = []
    for name, group in scans.groupby("dataset", sort=False):
        root = sets_dir / str(name)
        check_dataset_folder(split, str(name), root)
        for row in group.itertuples():
            mhd = root / f"subset{int(row.subset)}" / f"{row.seriesuid}.mhd"
            out = cache / str(name) / f"{row.seriesuid}.npz"
            tables = (str(root / "annotations.csv"), str(root / "annotations_excluded.csv"))
            tasks.append((str(mhd), str(row.seriesuid), *tables, str(out), seed, n_random, n_dense, n_blobs))
            if hard_from is not None:
                hard.append((str(mhd), str(row.seriesuid), *tables, str(out.with_suffix(".hard.npz")), hard_from, n_hard))
    files = []
    for work, jobs_list, desc in ((extract_scan, tasks, "patches"), (extract_hard, hard, "hard negatives")):
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                list(tqdm(pool.map(work, jobs_list), total=len(jobs_list), desc=desc))
        else:
            for t in tqdm(jobs_list, desc=desc):
                work(t)
        files += [Path(t[4]) for t in jobs_list]
    return files


class PatchSet:
    """Every cached patch in memory, with the nodules and excluded findings of its scan."""

    def __init__(self, files: list[Path]) -> None:
        self.patches: list[np.ndarray] = []
        self.nodules: list[np.ndarray] = []
        self.excluded: list[np.ndarray] = []
        self.kind: list[int] = []
        self.small: list[bool] = []
        self.uids: list[str] = []
        for f in tqdm(files, desc="load"):
            z = np.load(f)
            self.uids.append(f.name.removesuffix(".npz").removesuffix(".hard"))
            for p, corner, kind in zip(z["patches"], z["corners"], z["kinds"], strict=True):
                self.patches.append(p)
                self.nodules.append(z["nodules"] - np.r_[corner, 0.0])
                self.excluded.append(z["excluded"] - np.r_[corner, 0.0])
                self.kind.append(int(kind))
                local = np.linalg.norm(z["nodules"][:, :3] - (corner + PATCH // 2), axis=1) if len(z["nodules"]) else np.array([])
                d = float(z["nodules"][int(np.argmin(local)), 3]) if kind and len(local) else 99.0
                self.small.append(d < SMALL_MM)

    def weights(self) -> np.ndarray:
        """Draw probabilities: half to nodule patches (small ones twice), half to the rest."""
        kind = np.asarray(self.kind)
        w = np.where(kind == 1, np.where(self.small, 2.0, 1.0), 1.0)
        pos = kind == 1
        w[pos] *= 0.5 / max(w[pos].sum(), 1e-9)
        w[~pos] *= 0.5 / max(w[~pos].sum(), 1e-9)
        return w / w.sum()

    def sample(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A random crop of patch ``i`` (flipped, y/x transposed): input and targets."""
        start = rng.integers(0, PATCH - CROP + 1, size=3)
        window = tuple(slice(int(s), int(s) + CROP) for s in start)
        x = self.patches[i][window].astype(np.float32)
        nod = self.nodules[i].copy()
        exc = self.excluded[i].copy()
        for rows in (nod, exc):
            rows[:, :3] -= start
        for axis in range(3):
            if rng.random() < 0.5:
                x = np.flip(x, axis)
                for rows in (nod, exc):
                    rows[:, axis] = CROP - 1 - rows[:, axis]
        if rng.random() < 0.5:
            x = np.swapaxes(x, 1, 2)
            for rows in (nod, exc):
                rows[:, [1, 2]] = rows[:, [2, 1]]
        inside = lambda r: r[np.all((r[:, :3] > -r[:, 3:4] / 2) & (r[:, :3] < CROP + r[:, 3:4] / 2), axis=1)]  # noqa: E731
        label, weight, offset = training_target((CROP // CELL,) * 3, inside(nod), inside(exc))
        return np.ascontiguousarray(x), label, weight, offset


def detector_loss(out: torch.Tensor, label: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> torch.Tensor:
    """Focal loss of the cells (normalised by the positives, at least one) plus smooth L1 of
    the positive cells' offsets."""
    logit = out[:, 0]
    p = torch.sigmoid(logit)
    ce = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
    pt = torch.where(label > 0, p, 1 - p)
    a = torch.where(label > 0, alpha, 1 - alpha)
    focal = (a * (1 - pt) ** gamma * ce * weight).sum()
    npos = label.sum().clamp(min=1.0)
    pos = label > 0
    reg = F.smooth_l1_loss(out[:, 1:].permute(0, 2, 3, 4, 1)[pos], offset.permute(0, 2, 3, 4, 1)[pos], reduction="sum")
    return (focal + reg) / npos


def train(
    data: PatchSet, cache: Path, steps: int, batch: int, lr: float, seed: int, save_every: int, channels: tuple[int, int, int],
    init: str | None = None,
) -> CandidateNet:
    """Train the network (from the weights ``init`` if given; resuming from
    ``cache/train_state.pt``, or ``cache/finetune_state.pt`` with ``init``)."""
    torch.manual_seed(seed)
    net = CandidateNet(channels)
    if init is not None:
        start, _ = load_detector(init)
        net = CandidateNet(start.channels)
        net.load_state_dict(start.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    state_file = cache / ("finetune_state.pt" if init is not None else "train_state.pt")
    step = 0
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        rng = np.random.default_rng([seed, step])
        print(f"resumed at step {step}")
    p = data.weights()
    net.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc="train")
    while step < steps:
        idx = rng.choice(len(p), size=batch, p=p)
        items = [data.sample(int(i), rng) for i in idx]
        x = scale_hu(torch.from_numpy(np.stack([it[0] for it in items]))[:, None])
        label, weight, offset = (torch.from_numpy(np.stack([it[k] for it in items])) for k in (1, 2, 3))
        loss = detector_loss(net(x), label, weight, offset)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(float(loss))
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", s_per_step=f"{(time.perf_counter() - t0) / len(losses):.2f}")
        if step % save_every == 0 or step == steps:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step}, state_file)
    bar.close()
    net.eval()
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    parser.add_argument("--sets-dir", type=Path, default=None, help="default $NODULE_CACHE/sets")
    parser.add_argument("--cache", type=Path, default=None, help="default $NODULE_CACHE/detector")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "nodule" / "candidates" / "detector.pt")
    parser.add_argument("--random", type=int, default=8, help="random lung patches per scan")
    parser.add_argument("--dense", type=int, default=8, help="patches at -750 to -450 HU per scan")
    parser.add_argument("--blobs", type=int, default=12, help="patches at bright local maxima per scan")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--channels", type=int, nargs=3, default=(8, 16, 32))
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patches-only", action="store_true", help="build the patch cache and stop")
    parser.add_argument("--hard-from", default=None, help="weights whose false-positive peaks become hard negatives; training starts from them")
    parser.add_argument("--hard", type=int, default=16, help="hard negatives per scan (with --hard-from)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets_dir = args.sets_dir or cache_dir("sets")
    cache = args.cache or cache_dir("detector")
    files = build_cache(args.split, sets_dir, cache, args.seed, args.random, args.dense, args.blobs, args.jobs, args.hard_from, args.hard)
    if args.patches_only:
        return
    data = PatchSet(files)
    print(f"{len(data.patches)} patches, {sum(data.kind)} around nodules ({sum(data.small)} under {SMALL_MM:g} mm), {len(files)} scans")
    net = train(data, cache, args.steps, args.batch, args.lr, args.seed, args.save_every, tuple(args.channels), args.hard_from)
    split = load_split(args.split)
    info = {
        "trained_on_uids": sorted(set(data.uids)),
        "learner": "detector",
        "split": split.tag,
        "split_fingerprint": split.fingerprint(),
        "datasets": list(split.learners["detector"]),
        "patches": len(data.patches),
        "nodule_patches": int(sum(data.kind)),
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "random": args.random,
        "dense": args.dense,
        "blobs": args.blobs,
        "hard_from": args.hard_from,
        "hard": args.hard if args.hard_from else 0,
    }
    print(save_detector(net, args.out, info))


if __name__ == "__main__":
    main()
