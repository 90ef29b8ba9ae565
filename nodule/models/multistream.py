"""Multi-view (multistream) ConvNet for nodule false-positive reduction (Setio et al. 2016).

Each candidate is seen through ``V`` two-dimensional views (1, 3 or 9 planes through its
centre, see :mod:`nodule.patches`). Every view goes through a *stream*, by default Setio's:
three ``conv -> max-pool`` blocks and a small fully connected layer. The streams' features are
then fused in one of the paper's three ways:

* ``committee``: one classifier per view; the per-view outputs are averaged.
* ``late``: the features of all views are concatenated and classified together.
* ``mixed``: views are split into groups (default three groups of three); each group is
  late-fused, then the groups form a committee.

Stream weights are either shared by all views or separate per view. Shared weights fold the
views into the batch (``(B*V, 1, H, W)``, one stream call); separate weights run all streams
in one call as grouped convolutions (``groups=V`` over a ``(B, V, H, W)`` tensor), which is
numerically the same as looping over ``V`` independent streams. Either way the convolutions
run in channels-last memory format by default (``channels_last=True``; see
:func:`to_channels_last` for the one-channel case), which on CPU (oneDNN) is about twice as
fast as NCHW here; ``scripts/bench_train.py`` measures both against a per-view loop.

Setio's stream takes 64x64 patches (50 mm, resampled) through 24 5x5, 32 3x3 and 48 3x3
convolutions, each followed by 2x2 max-pooling, then 16 fully connected units, with ReLU
activations; the defaults here. The dropout (0.5 after the fully connected layer) and the
default fusion (mixed, 9 views, shared weights) are this package's choices, as is the
option ``batch_norm=True``: a batch normalisation after each convolution (not in the paper),
per stream like the convolutions' weights.

Tensors: input ``(B, V, H, W)`` float32; output logits ``(B, num_classes)``, to be trained
with :func:`torch.nn.functional.cross_entropy`; :func:`probability` turns them into the
nodule probability (class 1).

Parameter counts of the default stream (channels (24, 32, 48), kernels (5, 3, 3), 16 fully
connected units, 64x64 input, so a 48x6x6 map before the fully connected layer):

====================  ===========  ===============
stream layer          parameters   with batch_norm
====================  ===========  ===============
conv 1x24, 5x5                624             648
conv 24x32, 3x3             6,944           6,976
conv 32x48, 3x3            13,872          13,920
fc 1728x16                 27,664          27,664
one stream                 49,104          49,208
====================  ===========  ===============

(``batch_norm=True`` drops each convolution's ``c_out`` biases and adds a BatchNorm2d with
``2 * c_out`` affine parameters: ``+104`` per stream; its running statistics are buffers.)

Whole :class:`MultiStreamNet` with ``num_classes=2``:

=========  =======  ============  ================  ==============  ================
fusion     views    shared        separate          shared, BN      separate, BN
=========  =======  ============  ================  ==============  ================
committee  1        49,138        49,138            49,242          49,242
committee  3        49,138        147,414           49,242          147,726
committee  9        49,138        442,242           49,242          443,178
late       3        49,202        147,410           49,306          147,722
late       9        49,394        442,226           49,498          443,162
mixed      9        49,398        442,230           49,502          443,166
=========  =======  ============  ================  ==============  ================

(committee with shared weights uses one classifier of 34 parameters for every view; with
separate weights one per view. Late fusion adds ``V*16*2 + 2``; mixed one late-fusion
classifier of ``3*16*2 + 2 = 98`` per group of three views. "BN" is ``batch_norm=True``:
``+104`` per stream, so ``+104`` shared and ``+104*V`` separate.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Fusion = Literal["committee", "late", "mixed"]
CommitteeAverage = Literal["probabilities", "logits"]

__all__ = [
    "CommitteeAverage",
    "Fusion",
    "GroupedLinear",
    "MultiStreamNet",
    "SetioStream",
    "default_groups",
    "probability",
    "to_channels_last",
]


def probability(logits: Tensor) -> Tensor:
    """Nodule probability from the logits of :class:`MultiStreamNet`.

    Args:
        logits: ``(..., num_classes)`` logits, class 1 being "nodule".

    Returns:
        ``(...)`` softmax probability of class 1.
    """
    return torch.softmax(logits, dim=-1)[..., 1]


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` (N, C, H, W) with channels-last strides, also when ``C == 1``.

    For one channel ``Tensor.contiguous(memory_format=torch.channels_last)`` keeps the NCHW
    strides, which convolutions then read as NCHW and answer with NCHW outputs; the
    ``(H*W, 1, W, 1)`` strides set here make them run, and answer, in channels-last.

    Args:
        x: a 4-D tensor.

    Returns:
        ``x`` or a copy of it in channels-last memory format.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    _, c, h, w = x.shape
    if c == 1 and x.stride() != (h * w, 1, w, 1):
        x = x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x


def default_groups(n_views: int) -> tuple[tuple[int, ...], ...]:
    """Default view groups of mixed fusion: three groups of consecutive views.

    For 9 views that is ``((0, 1, 2), (3, 4, 5), (6, 7, 8))``, Setio's three groups of three.

    Args:
        n_views: number of views, a multiple of 3.

    Returns:
        The groups as tuples of view indices.

    Raises:
        ValueError: if ``n_views`` is not a positive multiple of 3.
    """
    if n_views <= 0 or n_views % 3:
        raise ValueError(f"mixed fusion needs explicit groups for {n_views} views")
    size = n_views // 3
    return tuple(tuple(range(g * size, (g + 1) * size)) for g in range(3))


class GroupedLinear(nn.Module):
    """``n`` independent fully connected layers applied in one batched matrix product.

    Maps ``(B, n, in_features)`` to ``(B, n, out_features)``; slot ``i`` of the input goes
    through layer ``i`` only. Initialised like :class:`torch.nn.Linear`, layer by layer.

    Args:
        n: number of independent layers.
        in_features: input size of each layer.
        out_features: output size of each layer.
    """

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.n = n
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every layer as :class:`torch.nn.Linear` does."""
        bound = 1.0 / math.sqrt(self.in_features)
        for i in range(self.n):
            nn.init.kaiming_uniform_(self.weight[i], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Apply layer ``i`` to ``x[:, i]``.

        Args:
            x: ``(B, n, in_features)``.

        Returns:
            ``(B, n, out_features)``.
        """
        if self.n == 1:
            return F.linear(x, self.weight[0], self.bias[0])
        out = torch.bmm(x.transpose(0, 1), self.weight.transpose(1, 2))  # (n, B, out)
        return out.transpose(0, 1) + self.bias


class SetioStream(nn.Module):
    """Setio's 2-D stream, ``n_streams`` independent copies evaluated in one call.

    Per copy: for each ``(channels[i], kernel_sizes[i])`` a valid convolution, optionally a
    batch normalisation, a 2x2 max-pool and a ReLU (pooling before the ReLU: the same function
    and gradients as ReLU then pool, on a quarter of the elements); then a fully connected
    layer of ``fc_units``, ReLU and dropout. The copies are the groups of grouped
    convolutions, so the input carries ``n_streams * in_channels`` channels and copy ``i``
    sees channels ``i*in_channels:(i+1)*in_channels`` only. With the defaults one copy has
    49,104 parameters (49,208 with ``batch_norm``; see the module docstring).

    With ``batch_norm`` each convolution is followed by :class:`torch.nn.BatchNorm2d` over
    its ``n_streams * channels[i]`` channels, so every copy normalises with its own
    statistics and affine parameters (a shared stream, fed the views folded into the batch,
    normalises over all views together). The convolutions then have no bias (the
    normalisation's shift takes its place).

    Args:
        n_streams: number of independent streams (1 for a stream shared by all views).
        channels: output channels of the convolutions.
        kernel_sizes: square kernel size of each convolution (same length as ``channels``).
        fc_units: units of the fully connected layer (the feature size of the stream).
        dropout: dropout probability after the fully connected layer.
        input_size: height and width of the input patches.
        in_channels: channels of one view (1 for a CT patch).
        batch_norm: batch normalisation after each convolution (before pooling and ReLU).
    """

    def __init__(
        self,
        n_streams: int = 1,
        channels: Sequence[int] = (24, 32, 48),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        fc_units: int = 16,
        dropout: float = 0.0,
        input_size: int = 64,
        in_channels: int = 1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) != len(kernel_sizes) or not channels:
            raise ValueError("channels and kernel_sizes must be non-empty and of equal length")
        self.n_streams = n_streams
        self.channels = tuple(int(c) for c in channels)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.fc_units = fc_units
        self.dropout_p = dropout
        self.input_size = input_size
        self.in_channels = in_channels
        self.batch_norm = batch_norm
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()  # empty without batch_norm
        size, c_in = input_size, in_channels
        for c_out, k in zip(self.channels, self.kernel_sizes, strict=True):
            self.convs.append(
                nn.Conv2d(
                    n_streams * c_in, n_streams * c_out, k, groups=n_streams, bias=not batch_norm
                )
            )
            if batch_norm:
                self.norms.append(nn.BatchNorm2d(n_streams * c_out))
            size = (size - k + 1) // 2
            c_in = c_out
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for kernels {kernel_sizes}")
        self.feature_map = (c_in, size, size)
        self.fc = GroupedLinear(n_streams, c_in * size * size, fc_units)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Features of every stream.

        Args:
            x: ``(B, n_streams * in_channels, H, W)``.

        Returns:
            ``(B, n_streams, fc_units)``.
        """
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.batch_norm:
                x = self.norms[i](x)
            x = F.relu(F.max_pool2d(x, 2), inplace=True)  # the pool's output is fresh
        x = x.reshape(x.shape[0], self.n_streams, -1)
        out: Tensor = self.dropout(F.relu(self.fc(x), inplace=True))
        return out

    def single(self, i: int) -> SetioStream:
        """A one-stream copy holding the weights of stream ``i`` (for checks and baselines).

        Args:
            i: index of the stream, ``0 <= i < n_streams``.

        Returns:
            A new :class:`SetioStream` with ``n_streams=1``, copied weights and the same
            training mode.
        """
        out = SetioStream(
            1,
            self.channels,
            self.kernel_sizes,
            self.fc_units,
            self.dropout_p,
            self.input_size,
            self.in_channels,
            self.batch_norm,
        )
        with torch.no_grad():
            for src, dst in zip(self.convs, out.convs, strict=True):
                assert isinstance(src, nn.Conv2d) and isinstance(dst, nn.Conv2d)
                part = slice(i * dst.out_channels, (i + 1) * dst.out_channels)
                dst.weight.copy_(src.weight[part])
                if src.bias is not None and dst.bias is not None:
                    dst.bias.copy_(src.bias[part])
            for src_bn, dst_bn in zip(self.norms, out.norms, strict=True):
                assert isinstance(src_bn, nn.BatchNorm2d) and isinstance(dst_bn, nn.BatchNorm2d)
                part = slice(i * dst_bn.num_features, (i + 1) * dst_bn.num_features)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(dst_bn, name).copy_(getattr(src_bn, name)[part])
                assert src_bn.num_batches_tracked is not None
                assert dst_bn.num_batches_tracked is not None
                dst_bn.num_batches_tracked.copy_(src_bn.num_batches_tracked)
            out.fc.weight.copy_(self.fc.weight[i : i + 1])
            out.fc.bias.copy_(self.fc.bias[i : i + 1])
        return out.to(self.fc.weight.device).train(self.training)


class MultiStreamNet(nn.Module):
    """Multi-view ConvNet of Setio et al. (2016) with committee, late or mixed fusion.

    Input ``(B, n_views, input_size, input_size)``; output logits ``(B, num_classes)`` for
    :func:`torch.nn.functional.cross_entropy` (class 1 = nodule, see :func:`probability`).

    Committee (and the committee over groups in mixed fusion) averages the members' softmax
    *probabilities* by default (``committee_average="probabilities"``): the returned logits
    are then ``log(mean_i softmax(z_i))``, log-probabilities whose softmax is exactly that
    mean. With ``committee_average="logits"`` the members' logits are averaged instead
    (a normalised geometric mean of their probabilities). :meth:`member_logits` gives the
    members' own logits.

    With ``shared_weights`` one stream serves every view (and, for committee, one classifier
    serves every view); otherwise each view has its own stream (and classifier), run together
    as grouped convolutions. Mixed fusion has one late-fusion classifier per group.
    Parameter counts are tabulated in the module docstring (49,398 for the defaults).

    Args:
        n_views: number of views ``V`` per candidate (1, 3 or 9 in practice).
        fusion: ``"committee"``, ``"late"`` or ``"mixed"``.
        shared_weights: one stream for all views (True) or one per view (False).
        groups: view groups of mixed fusion; default :func:`default_groups`.
        num_classes: number of classes (2: non-nodule, nodule).
        channels: stream convolution channels.
        kernel_sizes: stream convolution kernel sizes.
        fc_units: stream feature size.
        dropout: dropout after the stream's fully connected layer.
        input_size: patch height and width in pixels.
        committee_average: what a committee averages, ``"probabilities"`` or ``"logits"``.
        channels_last: run the convolutions in channels-last memory format.
        batch_norm: batch normalisation after each stream convolution, per stream (shared
            weights: one normalisation over all views; separate: one per view's stream).
    """

    def __init__(
        self,
        n_views: int = 9,
        fusion: Fusion = "mixed",
        shared_weights: bool = True,
        groups: Sequence[Sequence[int]] | None = None,
        num_classes: int = 2,
        channels: Sequence[int] = (24, 32, 48),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        fc_units: int = 16,
        dropout: float = 0.5,
        input_size: int = 64,
        committee_average: CommitteeAverage = "probabilities",
        channels_last: bool = True,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in ("committee", "late", "mixed"):
            raise ValueError(f"unknown fusion {fusion!r}")
        if committee_average not in ("probabilities", "logits"):
            raise ValueError(f"unknown committee_average {committee_average!r}")
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2 (softmax logits)")
        self.n_views = n_views
        self.fusion: Fusion = fusion
        self.shared_weights = shared_weights
        self.num_classes = num_classes
        self.committee_average: CommitteeAverage = committee_average
        self.channels_last = channels_last
        self.stream = SetioStream(
            1 if shared_weights else n_views,
            channels,
            kernel_sizes,
            fc_units,
            dropout,
            input_size,
            batch_norm=batch_norm,
        )
        self.groups: tuple[tuple[int, ...], ...] = ()
        self.head: nn.Module
        if fusion == "committee":
            self.head = GroupedLinear(1 if shared_weights else n_views, fc_units, num_classes)
        elif fusion == "late":
            self.head = nn.Linear(n_views * fc_units, num_classes)
        else:
            self.groups = tuple(
                tuple(int(v) for v in g)
                for g in (default_groups(n_views) if groups is None else groups)
            )
            if not self.groups or any(
                not g or min(g) < 0 or max(g) >= n_views for g in self.groups
            ):
                raise ValueError(f"invalid groups {self.groups} for {n_views} views")
            self.head = nn.ModuleList(
                nn.Linear(len(g) * fc_units, num_classes) for g in self.groups
            )

    def features(self, x: Tensor) -> Tensor:
        """Stream features of every view.

        Args:
            x: ``(B, V, H, W)`` patches.

        Returns:
            ``(B, V, fc_units)``.
        """
        b, v, h, w = x.shape
        if v != self.n_views:
            raise ValueError(f"expected {self.n_views} views, got {v}")
        if self.shared_weights:
            x = x.reshape(b * v, 1, h, w)
        if self.channels_last:  # the convolutions follow the input's memory format
            x = to_channels_last(x)
        feats: Tensor = self.stream(x)
        return feats.reshape(b, v, -1)

    def member_logits(self, x: Tensor) -> Tensor:
        """Logits of each committee member: per view (committee) or per group (mixed).

        Args:
            x: ``(B, V, H, W)`` patches.

        Returns:
            ``(B, M, num_classes)`` with ``M = V`` (committee) or the number of groups (mixed).

        Raises:
            ValueError: for late fusion, which has no members.
        """
        return self._members(self.features(x))

    def _members(self, feats: Tensor) -> Tensor:
        b, v, f = feats.shape
        if self.fusion == "committee":
            if self.shared_weights:  # one classifier: fold the views into the batch
                out: Tensor = self.head(feats.reshape(b * v, 1, f))
                return out.reshape(b, v, -1)
            out = self.head(feats)
            return out
        if self.fusion == "mixed":
            assert isinstance(self.head, nn.ModuleList)
            return torch.stack(
                [
                    lin(self._group_features(feats, g).flatten(1))
                    for lin, g in zip(self.head, self.groups, strict=True)
                ],
                dim=1,
            )
        raise ValueError("late fusion has no committee members")

    @staticmethod
    def _group_features(feats: Tensor, group: tuple[int, ...]) -> Tensor:
        """``feats[:, group]``, as a view (no gather) when ``group`` is a run of views."""
        start = group[0]
        if group == tuple(range(start, start + len(group))):
            return feats[:, start : start + len(group)]
        return feats[:, list(group)]

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the fused classifier.

        Args:
            x: ``(B, V, H, W)`` float patches.

        Returns:
            ``(B, num_classes)`` logits (log-probabilities when a committee averages
            probabilities).
        """
        feats = self.features(x)
        if self.fusion == "late":
            return self.head(feats.flatten(1))  # type: ignore[no-any-return]
        members = self._members(feats)
        if self.committee_average == "logits":
            return members.mean(dim=1)
        return torch.logsumexp(F.log_softmax(members, dim=-1), dim=1) - math.log(members.shape[1])
