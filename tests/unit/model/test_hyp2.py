"""HyP²: its threshold table, its loss against hand-worked and loop values, its learnable proxies, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hashbench.methods.hyp2 import BEST_LINEAR_DISTANCE, HybridProxyPairLoss, HyP2, ProxyHead, code_threshold
from hashbench.model.method import HashNetwork, MethodContext, StepInfo
from hashbench.training import engine

INFO = StepInfo(epoch=0, step=0, steps_per_epoch=1, epochs=1)


def identity_head(bits: int) -> ProxyHead:
    """A float64 head whose codes are its inputs and whose proxies are the unit vectors: cosines read off the codes."""
    head = ProxyHead(bits, bits, bits).double()
    with torch.no_grad():
        head.linear.weight.copy_(torch.eye(bits))
        head.linear.bias.zero_()
        head.proxies.copy_(torch.eye(bits))
    return head


def test_the_code_table_holds_distances_real_linear_codes_can_have():
    """Every entry obeys the Griesmer bound K >= sum_{i<m} ceil(d / 2^i), falls (weakly) as the dimension grows, and
    matches the codes known in closed form: repetition (d = K), the best two-word-dimension code (d = floor(2K/3)),
    first-order Reed-Muller [2^r, r + 1, 2^(r-1)]."""
    for bits, distances in BEST_LINEAR_DISTANCE.items():
        assert distances[0] == bits and distances[1] == 2 * bits // 3
        assert all(a >= b for a, b in zip(distances, distances[1:]))
        for dimension, d in enumerate(distances, 1):
            assert bits >= sum(math.ceil(d / 2**i) for i in range(dimension)), (bits, dimension)
    for r in (4, 5, 6, 7):
        assert BEST_LINEAR_DISTANCE[2**r][r] == 2 ** (r - 1)


def test_the_threshold_is_the_largest_cosine_of_the_code_for_the_classes():
    # 10 classes need 4 dimensions; [16, 4, 8]: 1 - 16/16. 3 classes need 2; [48, 2, 32]: 1 - 64/48.
    assert code_threshold(16, 10) == 0.0
    assert code_threshold(48, 3) == pytest.approx(-1 / 3, abs=1e-15)
    assert code_threshold(32, 2) == -1.0 and code_threshold(32, 1) == -1.0  # one class: as two
    assert code_threshold(8, 256) == 0.75  # [8, 8, 1]
    with pytest.raises(ValueError, match="hyp2.threshold"):
        code_threshold(20, 10)
    with pytest.raises(ValueError, match="up to 1024 classes"):
        code_threshold(16, 1025)
    assert HyP2(MethodContext(20, 10, 50, {"threshold": 0.1})).build_loss().threshold == 0.1


def test_the_loss_on_a_hand_worked_batch():
    """K = 4 bits, 4 classes with the unit vectors as proxies, so an image's cosines are its normalised code; zeta
    0.2, beta 0.5.

    u1 = (3, 4, 0, 0), labels {0, 1}: cosines 0.6, 0.8, 0, 0.    u2 = (4, 0, 3, 0), labels {2, 3}: 0.8, 0, 0.6, 0.
    u3 = (3, 0, 0, 4), label {3}: 0.6, 0, 0, 0.8.               u4 = (0, -3, 0, 4), no label: 0, -0.6, 0, 0.8.
    Positive entries (5): 1 - cos = 0.4 + 0.2 + 0.4 + 1 + 0.2 = 2.2, mean 0.44. Negative entries (11): those above
    0.2 are u2's 0.8, u3's 0.6 and u4's 0.8, so (0.6 + 0.4 + 0.6) / 11 = 1.6 / 11. Pairs: only u1 and u2 have two
    labels, and they share none: cos(u1, u2) = 12 / 25 = 0.48 both ways, 0.5 x (0.48 - 0.2) = 0.14. u3 shares no
    label with u1 and has cosine 9 / 25 with it, but has one label, so it is never paired.
    Total 0.44 + 1.6 / 11 + 0.14 = 0.725454..."""
    codes = torch.tensor([[3.0, 4, 0, 0], [4, 0, 3, 0], [3, 0, 0, 4], [0, -3, 0, 4]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float64)
    output = identity_head(4)(codes)
    terms = HybridProxyPairLoss(threshold=0.2, beta=0.5)(output, labels, torch.arange(4), INFO)
    assert terms["positive"].item() == pytest.approx(0.44, abs=1e-12)
    assert terms["negative"].item() == pytest.approx(1.6 / 11, abs=1e-12)
    assert terms["pair"].item() == pytest.approx(0.14, abs=1e-12)
    assert sum(terms.values()).item() == pytest.approx(0.725454545454545, abs=1e-12)


def test_single_label_batches_have_no_pairs_and_beta_zero_drops_the_term():
    codes = torch.tensor([[3.0, 4, 0, 0], [4, 0, 3, 0]], dtype=torch.float64)
    one_hot = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)
    output = identity_head(4)(codes)
    assert HybridProxyPairLoss(0.0, 0.5)(output, one_hot, torch.arange(2), INFO)["pair"].item() == 0.0
    assert "pair" not in HybridProxyPairLoss(0.0, 0.0)(output, one_hot, torch.arange(2), INFO)


def test_the_loss_against_a_loop_on_multi_label_codes():
    rng = np.random.default_rng(5)
    n, width, bits, classes = 9, 6, 8, 4
    torch.manual_seed(5)
    head = ProxyHead(width, bits, classes).double()
    features = torch.from_numpy(rng.normal(size=(n, width)))
    labels = torch.from_numpy((rng.random((n, classes)) < 0.5).astype(np.float64))
    # a label-disjoint pair of multi-label rows, a row without labels and a single-label one, among random rows
    labels[:4] = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    threshold, beta = code_threshold(bits, classes), 0.5  # [8, 2, 5]: -0.25
    output = head(features)
    terms = HybridProxyPairLoss(threshold, beta)(output, labels, torch.arange(n), INFO)

    u, proxies = output.code.detach(), head.proxies.detach()
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    pulled, positives, pushed, negatives = 0.0, 0, 0.0, 0
    for i in range(n):
        for c in range(classes):
            if labels[i, c] == 1:
                pulled, positives = pulled + 1 - cos(u[i], proxies[c]), positives + 1
            else:
                pushed, negatives = pushed + max(0.0, cos(u[i], proxies[c]) - threshold), negatives + 1
    apart, pairs = 0.0, 0
    for i in range(n):
        for j in range(n):
            several = labels[i].sum() > 1 and labels[j].sum() > 1
            if several and float(labels[i] @ labels[j]) == 0:
                apart, pairs = apart + max(0.0, cos(u[i], u[j]) - threshold), pairs + 1
    assert pairs >= 2  # rows 0 and 1 at least
    assert terms["positive"].item() == pytest.approx(pulled / positives, abs=1e-12)
    assert terms["negative"].item() == pytest.approx(pushed / negatives, abs=1e-12)
    assert terms["pair"].item() == pytest.approx(beta * apart / pairs, abs=1e-12)


def test_the_proxies_are_drawn_kaiming_normal_with_fan_out():
    torch.manual_seed(0)
    proxies = ProxyHead(4, 4096, 8).proxies.detach()
    assert proxies.mean().item() == pytest.approx(0.0, abs=0.01)
    assert proxies.std().item() == pytest.approx(math.sqrt(2 / 8), rel=0.02)


def test_the_proxies_get_a_gradient_and_train_with_the_head():
    torch.manual_seed(0)
    method = HyP2(MethodContext(16, 3, 12, seed=0))
    network = HashNetwork(torch.nn.Identity(), method.build_head(10))
    labels = torch.tensor([[1.0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    output = network(torch.randn(6, 10))
    sum(method.build_loss()(output, labels, torch.arange(6), INFO).values()).backward()
    assert network.head.proxies.grad is not None and network.head.proxies.grad.abs().sum() > 0
    head_group = engine.build_optimizer(network, method.train).param_groups[-1]
    assert any(p is network.head.proxies for p in head_group["params"])
    assert head_group["lr"] == pytest.approx(0.02)


def test_it_learns_on_the_phantom(quick_phantom_cell):
    metrics, floor = quick_phantom_cell("hyp2")
    # measured MAP@10 over seeds 0, 1, 2: 0.49, 0.39, 0.45 (random codes 0.22); mAP@all 0.51, 0.46, 0.51
    assert metrics["map@10"] > floor["map@10"] + 0.1
    assert metrics["map@all"] > 3 * floor["map@all"]
