"""Training throughput of the default :class:`~nodule.models.multistream.MultiStreamNet`.

**Goal**: the default model trains at least twice as fast (patches/s) as ``loop``, a
straightforward per-view implementation of the same network, on a 2-core CPU with 2 threads.
Read the ``vs loop`` column of the ``default`` row: ``>= 2.00x`` meets the goal.

Measures patches per second of full training steps (forward, cross-entropy, backward,
optimiser step) at batch 128 with 9 views of 64x64, for

* ``loop``: a straightforward implementation of the same network (same fusion, groups and
  parameter count) that calls the stream once per view, NCHW, ReLU before pooling;
* ``default``: ``MultiStreamNet()`` as configured by default (shared weights: the views
  folded into the batch, one stream call; channels-last; max-pool before an in-place ReLU);
* optional extra variants (``--variants``): ``nchw`` (the default without channels-last),
  ``separate`` / ``loop_separate`` (separate stream weights), ``bn`` (``batch_norm=True``),
  ``bf16`` / ``loop_bf16`` (bf16 autocast of the forward pass; compare ``bf16`` with
  ``loop_bf16`` for a like-for-like speed-up, with ``loop`` for the gain over fp32), and
  ``compile`` (the default under :func:`torch.compile`, compiled during the warm-up step).

Columns: ``params`` (parameters), ``step s`` (median seconds per training step over the
rounds), ``patches/s`` (batch / step s), ``vs loop`` (median over the rounds of the loop's
step time divided by the variant's, measured back to back in the same round), ``GFLOP/s``
(FLOPs of one fp32 training step of the default model, counted by
:class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, forward
and backward, divided by the variant's step time; the same count for every variant since
they compute the same network) and ``of ref`` (that rate as a fraction of the GFLOP/s of a
256-channel 3x3 convolution on a 64x64 input, forward and backward, timed in the same run:
roughly what this machine's convolutions can reach).

The variants are timed interleaved (round robin, ``--repeats`` rounds of ``--steps`` steps)
so that load from other processes hits them alike; on a shared machine compare ratios within
one run rather than absolute figures across runs. ``--no-mmap`` makes glibc serve large
allocations from its heap and keep freed memory (``mallopt``), which saves the page faults
of every step's freshly allocated activations; it applies to all variants alike.

Usage::

    python scripts/bench_train.py                       # CPU, 2 threads, table on stdout
    python scripts/bench_train.py --variants nchw bf16 loop_bf16 compile --no-mmap
    python scripts/bench_train.py --json bench.json     # also write the figures as JSON
    python scripts/bench_train.py --device cuda --variants nchw separate bf16
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from nodule.models.multistream import MultiStreamNet, default_groups


class LoopMultiStream(nn.Module):
    """Baseline: the default network written plainly, one stream call per view.

    Same layers and parameter count as ``MultiStreamNet(n_views, "mixed", shared_weights)``:
    Setio's stream as an ``nn.Sequential`` (conv, ReLU, max-pool x3, linear, ReLU, dropout),
    called on ``x[:, v:v+1]`` for each view; mixed fusion over consecutive groups of three
    views; committee over the groups by averaging probabilities.

    Args:
        n_views: number of views.
        shared_weights: one stream for all views, or one per view.
        dropout: dropout after the stream's fully connected layer.
    """

    def __init__(self, n_views: int = 9, shared_weights: bool = True, dropout: float = 0.5) -> None:
        super().__init__()

        def stream() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(1, 24, 5), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(24, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 48, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(48 * 6 * 6, 16), nn.ReLU(), nn.Dropout(dropout),
            )  # fmt: skip

        self.n_views = n_views
        self.streams = nn.ModuleList(
            [stream()] if shared_weights else [stream() for _ in range(n_views)]
        )
        self.groups = default_groups(n_views)
        self.heads = nn.ModuleList(nn.Linear(16 * len(g), 2) for g in self.groups)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 2)`` (log of the mean group probabilities) of ``(B, V, H, W)`` patches."""
        feats = [self.streams[v % len(self.streams)](x[:, v : v + 1]) for v in range(self.n_views)]
        members = [
            head(torch.cat([feats[v] for v in g], dim=1))
            for head, g in zip(self.heads, self.groups, strict=True)
        ]
        probs = torch.stack([torch.softmax(m, dim=1) for m in members]).mean(0)
        return torch.log(probs)


def n_params(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def sync(device: torch.device) -> None:
    """Wait for queued kernels on ``device``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One model under test with its optimiser and step function.

    Args:
        name: label in the table.
        model: the network (already on the device).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        autocast: bf16 autocast on the forward pass.
        compile: wrap the model in :func:`torch.compile`.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        optimizer: str,
        autocast: bool = False,
        compile: bool = False,
    ) -> None:
        self.name = name
        self.model = model
        self.params = n_params(model)
        self.autocast = autocast
        self.fn: Callable[[Tensor], Tensor] = torch.compile(model) if compile else model
        self.opt: torch.optim.Optimizer = (
            torch.optim.Adam(model.parameters(), lr=1e-3)
            if optimizer == "adam"
            else torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        )
        self.times: list[float] = []

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step; returns the loss."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.fn(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        self.opt.step()
        return loss.detach()


def step_flops(variant: Variant, x: Tensor, y: Tensor) -> int:
    """FLOPs of one training step (forward and backward) counted by FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter:
        variant.opt.zero_grad(set_to_none=True)
        F.cross_entropy(variant.model(x), y).backward()
    variant.opt.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def reference_conv(device: torch.device, batch: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a 256->256 channel 3x3 convolution on 64x64 (forward + backward).

    Args:
        device: where to run.
        batch: images per call.
        repeats: timed calls (median reported).

    Returns:
        ``{"gflop": ..., "seconds": ..., "gflops": ...}`` per call.
    """
    conv = nn.Conv2d(256, 256, 3, padding=1).to(device)
    x = torch.randn(batch, 256, 64, 64, device=device, requires_grad=True)

    def call() -> None:
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        call()
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"gflop": flops / 1e9, "seconds": sec, "gflops": flops / 1e9 / sec}


VARIANTS = ["nchw", "separate", "loop_separate", "bn", "bf16", "loop_bf16", "compile"]


def heap_allocations() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory.

    By default glibc maps every allocation above a threshold (at most 32 MiB) afresh and
    unmaps it when freed, so each training step page-faults its activations in again.
    ``M_MMAP_MAX = 0`` and a 1 GiB ``M_TRIM_THRESHOLD`` let later steps reuse the memory.

    Returns:
        True if both settings were accepted (False off glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def build_variants(names: Sequence[str], optimizer: str, device: torch.device) -> list[Variant]:
    """The baseline loop, the default model and the requested extra variants."""
    out = [
        Variant("loop", LoopMultiStream().to(device), optimizer),
        Variant("default", MultiStreamNet().to(device), optimizer),
    ]
    for name in names:
        if name == "nchw":
            out.append(Variant(name, MultiStreamNet(channels_last=False).to(device), optimizer))
        elif name == "separate":
            out.append(Variant(name, MultiStreamNet(shared_weights=False).to(device), optimizer))
        elif name == "loop_separate":
            out.append(Variant(name, LoopMultiStream(shared_weights=False).to(device), optimizer))
        elif name == "bn":
            out.append(Variant(name, MultiStreamNet(batch_norm=True).to(device), optimizer))
        elif name == "bf16":
            out.append(Variant(name, MultiStreamNet().to(device), optimizer, autocast=True))
        elif name == "loop_bf16":
            out.append(Variant(name, LoopMultiStream().to(device), optimizer, autocast=True))
        elif name == "compile":
            out.append(Variant(name, MultiStreamNet().to(device), optimizer, compile=True))
        else:
            raise ValueError(f"unknown variant {name!r}")
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, optionally write JSON; returns the figures."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--views", type=int, default=9, help="only 9 is wired to the baseline")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=1, help="timed steps per round and variant")
    p.add_argument("--repeats", type=int, default=5, help="rounds (medians are reported)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=VARIANTS,
        help="extra variants to time beside loop and default",
    )
    p.add_argument(
        "--ref-batch", type=int, default=4, help="batch of the 256-channel reference conv"
    )
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument(
        "--no-mmap",
        action="store_true",
        help="glibc: large allocations from the heap, kept when freed (all variants)",
    )
    args = p.parse_args(argv)
    if args.views != 9 or args.size != 64:
        p.error("the baseline is wired for 9 views of 64x64")

    no_mmap = heap_allocations() if args.no_mmap else False
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.views, args.size, args.size, device=device)
    y = torch.randint(0, 2, (args.batch,), device=device)
    variants = build_variants(args.variants, args.optimizer, device)

    flops = step_flops(variants[1], x, y)
    for v in variants:  # warm-up (and compilation)
        v.step(x, y)
        sync(device)
    for _ in range(args.repeats):
        for v in variants:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                v.step(x, y)
            sync(device)
            v.times.append((time.perf_counter() - t0) / args.steps)
    ref = reference_conv(device, args.ref_batch, args.repeats)

    base = variants[0].times
    rows = []
    for v in variants:
        sec = statistics.median(v.times)
        rows.append(
            {
                "variant": v.name,
                "params": v.params,
                "step_s": sec,
                "step_s_all": v.times,
                "patches_per_s": args.batch / sec,
                "speedup_vs_loop": statistics.median(
                    b / t for b, t in zip(base, v.times, strict=True)
                ),
                "gflops": flops / 1e9 / sec,
                "fraction_of_ref_conv": flops / 1e9 / sec / ref["gflops"],
            }
        )
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "views": args.views,
        "size": args.size,
        "optimizer": args.optimizer,
        "no_mmap": no_mmap,
        "steps": args.steps,
        "repeats": args.repeats,
        "gflop_per_step": flops / 1e9,
        "reference_conv_256x3x3_64x64": ref,
        "variants": rows,
    }

    print(
        f"device {result['device']} ({result['device_name']}), torch {torch.__version__}, "
        f"threads {result['threads']}, batch {args.batch} x {args.views} views {args.size}x{args.size}, "
        f"{args.optimizer}, {flops / 1e9:.1f} GFLOP per step (fwd+bwd)"
        f"{', no-mmap' if no_mmap else ''}"
    )
    print(
        f"{'variant':<14}{'params':>9}{'step s':>9}{'patches/s':>11}{'vs loop':>9}{'GFLOP/s':>9}{'of ref':>8}"
    )
    for r in rows:
        print(
            f"{r['variant']:<14}{r['params']:>9,}{r['step_s']:>9.3f}{r['patches_per_s']:>11.1f}"
            f"{r['speedup_vs_loop']:>8.2f}x{r['gflops']:>9.1f}{r['fraction_of_ref_conv']:>8.0%}"
        )
    print(
        f"reference conv 256->256 3x3 on {args.ref_batch}x64x64 fwd+bwd: "
        f"{ref['gflop']:.1f} GFLOP in {ref['seconds']:.3f} s = {ref['gflops']:.1f} GFLOP/s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
