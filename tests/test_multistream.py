"""Multistream ConvNet: shapes, gradients, fusion semantics, grouped-conv equivalence,
parameter counts and determinism. Small patches (32x32) keep it fast."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F

from nodule.models import MultiStreamNet, SetioStream, probability
from nodule.models.multistream import Fusion, GroupedLinear, default_groups, to_channels_last

SIZE = 32  # 32 -> 28 -> 14 -> 12 -> 6 -> 4 -> 2: a 48x2x2 map
CASES = [
    (fusion, shared, views)
    for fusion in ("committee", "late", "mixed")
    for shared in (True, False)
    for views in (1, 3, 9)
    if not (fusion == "mixed" and views == 1)
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is faster, and far faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(fusion: str, shared: bool, views: int, **kw: Any) -> MultiStreamNet:
    return MultiStreamNet(
        n_views=views, fusion=cast(Fusion, fusion), shared_weights=shared, input_size=SIZE, **kw
    )


@pytest.mark.parametrize(("fusion", "shared", "views"), CASES)
def test_forward_shape_and_gradients(fusion: str, shared: bool, views: int) -> None:
    torch.manual_seed(0)
    net = _net(fusion, shared, views)
    x = torch.randn(4, views, SIZE, SIZE)
    logits = net(x)
    assert logits.shape == (4, 2)
    p = probability(logits)
    assert p.shape == (4,)
    assert bool(((p >= 0) & (p <= 1)).all())
    F.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("average", ["probabilities", "logits"])
def test_committee_is_mean_of_members(shared: bool, average: str) -> None:
    torch.manual_seed(1)
    net = _net("committee", shared, 3, committee_average=average).eval()
    x = torch.randn(5, 3, SIZE, SIZE)
    members = net.member_logits(x)
    assert members.shape == (5, 3, 2)
    out = net(x)
    if average == "probabilities":  # softmax of the output = mean of the members' softmax
        torch.testing.assert_close(out.softmax(-1), members.softmax(-1).mean(1))
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(5))  # log-probabilities
    else:
        torch.testing.assert_close(out, members.mean(1))


def test_committee_member_is_single_view_classifier() -> None:
    """Member v of a committee with separate weights = stream v + classifier v on view v."""
    torch.manual_seed(2)
    net = _net("committee", False, 3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    members = net.member_logits(x)
    head = net.head
    assert isinstance(head, GroupedLinear)
    for v in range(3):
        feat = net.stream.single(v)(x[:, v : v + 1])[:, 0]
        expected = F.linear(feat, head.weight[v], head.bias[v])
        torch.testing.assert_close(members[:, v], expected, rtol=0, atol=1e-5)


def test_mixed_groups_late_fuse_then_committee() -> None:
    torch.manual_seed(3)
    net = _net("mixed", True, 9).eval()
    assert net.groups == ((0, 1, 2), (3, 4, 5), (6, 7, 8))
    x = torch.randn(2, 9, SIZE, SIZE)
    feats = net.features(x)
    members = net.member_logits(x)
    assert members.shape == (2, 3, 2)
    assert isinstance(net.head, torch.nn.ModuleList)
    for i, (g, lin) in enumerate(zip(net.groups, net.head, strict=True)):
        torch.testing.assert_close(members[:, i], lin(feats[:, list(g)].flatten(1)))
    torch.testing.assert_close(net(x).softmax(-1), members.softmax(-1).mean(1))


def test_custom_groups_and_errors() -> None:
    net = _net("mixed", True, 4, groups=[[0, 1], [2, 3], [0, 3]])
    assert net(torch.randn(2, 4, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(ValueError):
        default_groups(4)
    with pytest.raises(ValueError):
        _net("mixed", True, 3, groups=[[0, 5]])
    with pytest.raises(ValueError):
        _net("late", True, 3)(torch.randn(1, 2, SIZE, SIZE))  # wrong number of views


@pytest.mark.parametrize("channels_last", [True, False])
def test_grouped_streams_equal_per_view_loop(channels_last: bool) -> None:
    torch.manual_seed(4)
    stream = SetioStream(n_streams=9, input_size=SIZE)
    x = torch.randn(3, 9, SIZE, SIZE)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    grouped = stream(xin)
    loop = torch.stack([stream.single(v)(x[:, v : v + 1])[:, 0] for v in range(9)], dim=1)
    assert grouped.shape == (3, 9, 16)
    torch.testing.assert_close(grouped, loop, rtol=0, atol=1e-5)


def test_grouped_linear_equals_loop() -> None:
    torch.manual_seed(5)
    lin = GroupedLinear(4, 7, 3)
    x = torch.randn(6, 4, 7)
    expected = torch.stack([F.linear(x[:, i], lin.weight[i], lin.bias[i]) for i in range(4)], 1)
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-5)


def test_pool_before_relu_equals_relu_before_pool() -> None:
    torch.manual_seed(6)
    stream = SetioStream(input_size=SIZE)
    x = torch.randn(2, 1, SIZE, SIZE)
    h = x
    for conv in stream.convs:
        h = F.max_pool2d(F.relu(conv(h)), 2)
    expected = F.relu(stream.fc(h.reshape(2, 1, -1)))
    torch.testing.assert_close(stream.eval()(x), expected, rtol=0, atol=1e-6)


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("batch_norm", "fusion", "views", "shared", "separate"),
    [
        (False, "committee", 1, 49_138, 49_138),
        (False, "committee", 3, 49_138, 147_414),
        (False, "committee", 9, 49_138, 442_242),
        (False, "late", 3, 49_202, 147_410),
        (False, "late", 9, 49_394, 442_226),
        (False, "mixed", 9, 49_398, 442_230),
        (True, "committee", 1, 49_242, 49_242),
        (True, "committee", 3, 49_242, 147_726),
        (True, "committee", 9, 49_242, 443_178),
        (True, "late", 3, 49_306, 147_722),
        (True, "late", 9, 49_498, 443_162),
        (True, "mixed", 9, 49_502, 443_166),
    ],
)
def test_parameter_counts_match_docstring(
    batch_norm: bool, fusion: str, views: int, shared: int, separate: int
) -> None:
    stream = 49_208 if batch_norm else 49_104
    assert _count(SetioStream(batch_norm=batch_norm)) == stream
    f = cast(Fusion, fusion)
    assert _count(MultiStreamNet(views, f, True, batch_norm=batch_norm)) == shared
    assert _count(MultiStreamNet(views, f, False, batch_norm=batch_norm)) == separate
    assert _count(MultiStreamNet()) == 49_398
    from nodule.models import multistream

    assert multistream.__doc__ is not None
    assert f"{shared:,}" in multistream.__doc__ and f"{separate:,}" in multistream.__doc__
    assert f"{stream:,}" in multistream.__doc__


def test_deterministic_under_seed() -> None:
    x = torch.randn(2, 9, SIZE, SIZE)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        net = _net("mixed", False, 9)  # train mode: dropout draws from the seed too
        outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.manual_seed(8)
    assert not torch.equal(_net("mixed", False, 9)(x), outs[0])


def test_probability_is_softmax_class_one() -> None:
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    torch.testing.assert_close(probability(logits), torch.tensor([0.5, 0.75]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_built_from_yaml_config() -> None:
    """Fusion, weight sharing and stream hyperparameters come from a class_path config."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=torch.nn.Module)
    cfg = parser.parse_string(
        """
        model:
          class_path: nodule.models.MultiStreamNet
          init_args:
            n_views: 3
            fusion: committee
            shared_weights: false
            channels: [8, 16, 24]
            kernel_sizes: [5, 3, 3]
            input_size: 32
        """
    )
    net = parser.instantiate_classes(cfg).model
    assert isinstance(net, MultiStreamNet)
    assert (net.fusion, net.shared_weights, net.stream.channels) == (
        "committee",
        False,
        (8, 16, 24),
    )
    assert net(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 2)
    with pytest.raises(Exception, match="fusion"):
        parser.parse_string(
            "model: {class_path: nodule.models.MultiStreamNet, init_args: {fusion: early}}"
        )


def test_channels_last_same_result_and_layout() -> None:
    torch.manual_seed(9)
    x = torch.randn(2, 3, SIZE, SIZE)
    one = to_channels_last(x[:, :1])
    assert one.stride() == (SIZE * SIZE, 1, SIZE, 1) and torch.equal(one, x[:, :1])
    conv = torch.nn.Conv2d(1, 4, 3)
    assert conv(one).is_contiguous(memory_format=torch.channels_last)
    for shared in (True, False):
        net = _net("late", shared, 3).eval()
        plain = _net("late", shared, 3, channels_last=False).eval()
        plain.load_state_dict(net.state_dict())
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("fusion", "shared", "views"), CASES)
def test_batch_norm_forward_backward(fusion: str, shared: bool, views: int) -> None:
    torch.manual_seed(10)
    net = _net(fusion, shared, views, batch_norm=True)
    norms = net.stream.norms
    assert len(norms) == 3
    n_streams = 1 if shared else views
    for conv, bn in zip(net.stream.convs, norms, strict=True):
        assert isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
        assert conv.bias is None and bn.num_features == conv.out_channels
        assert conv.out_channels in (n_streams * c for c in (24, 32, 48))
    x = torch.randn(4, views, SIZE, SIZE)
    logits = net(x)
    assert logits.shape == (4, 2)
    F.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    bn0 = norms[0]
    assert isinstance(bn0, torch.nn.BatchNorm2d) and bn0.running_mean is not None
    assert int(cast(torch.Tensor, bn0.num_batches_tracked)) == 1
    assert bn0.running_mean.abs().sum() > 0  # statistics were updated in train mode


def test_batch_norm_eval_deterministic_and_per_sample() -> None:
    torch.manual_seed(11)
    net = _net("mixed", True, 9, batch_norm=True)
    x = torch.randn(6, 9, SIZE, SIZE)
    for _ in range(3):  # a few training forwards move the running statistics
        net(x)
    net.eval()
    stats = [b.clone() for b in net.buffers()]
    out = net(x)
    torch.testing.assert_close(net(x), out, rtol=0, atol=0)
    torch.testing.assert_close(net(x[:2]), out[:2], rtol=0, atol=1e-5)  # no batch statistics
    assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers(), strict=True))


def test_batch_norm_shared_normalises_over_all_views() -> None:
    """A shared stream's BatchNorm sees every view of every sample as one batch."""
    torch.manual_seed(12)
    net = _net("late", True, 3, batch_norm=True, channels_last=False)
    bn = net.stream.norms[0]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.running_mean is not None
    bn.momentum = 1.0  # running mean := the batch mean
    x = torch.randn(4, 3, SIZE, SIZE)
    net(x)
    pre = net.stream.convs[0](x.reshape(12, 1, SIZE, SIZE))
    torch.testing.assert_close(bn.running_mean, pre.mean(dim=(0, 2, 3)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_grouped_streams_equal_per_view_loop(train: bool) -> None:
    """Separate weights: view v's stream (conv, its own BatchNorm) = a one-stream copy."""
    torch.manual_seed(13)
    stream = SetioStream(n_streams=3, input_size=SIZE, batch_norm=True)
    x = torch.randn(5, 3, SIZE, SIZE)
    stream(x)  # move the running statistics away from their initial values
    stream.train(train)
    singles = [stream.single(v) for v in range(3)]
    grouped = stream(x)
    loop = torch.stack([singles[v](x[:, v : v + 1])[:, 0] for v in range(3)], dim=1)
    torch.testing.assert_close(grouped, loop, rtol=0, atol=1e-5)
    if train:  # and each view's statistics are its own
        for v in range(3):
            bn, bn_v = stream.norms[0], singles[v].norms[0]
            assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(bn_v, torch.nn.BatchNorm2d)
            assert bn.running_mean is not None and bn_v.running_mean is not None
            torch.testing.assert_close(
                bn.running_mean[v * 24 : (v + 1) * 24], bn_v.running_mean, rtol=0, atol=1e-6
            )
