"""MDSH: its target distance, its centres meeting it, its loss against hand-worked and loop values, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hashbench.methods.mdsh import MDSH, SeparatedCentreLoss, distances, mdsh_centres, minimum_distance
from hashbench.model.method import HashNetwork, HashOutput, MethodContext, StepInfo, TrainSettings
from hashbench.training import engine


def test_the_minimum_distance_is_the_smallest_gilbert_varshamov_radius():
    for bits, classes in ((4, 2), (16, 5), (16, 40), (32, 196), (48, 10), (64, 100)):
        d = minimum_distance(bits, classes)
        volume = lambda radius: sum(math.comb(bits, i) for i in range(radius))  # noqa: E731
        assert volume(d) >= 2**bits / classes > volume(d - 1), (bits, classes)
    # the authors' worked settings: 32 bits for 196 classes (Stanford Cars), 64 for 100 (ImageNet-100)
    assert (minimum_distance(32, 196), minimum_distance(64, 100), minimum_distance(4, 2)) == (10, 24, 3)


@pytest.mark.parametrize("bits, classes", [(16, 40), (32, 70), (48, 10), (64, 100)])
def test_the_centres_meet_their_minimum_distance(bits, classes):
    """Hadamard starts (16, 32, 64 bits; past 2 x bits classes, balanced random rows) and a random one (48 bits),
    each short of the distance before the sweeps for all but 64 bits."""
    centres = mdsh_centres(classes, bits, seed=0).numpy()
    assert centres.shape == (classes, bits) and set(np.unique(centres)) == {-1.0, 1.0}
    assert distances(centres).min() >= minimum_distance(bits, classes)


def test_the_loss_on_a_hand_worked_batch():
    """K = 4, centres c0 = 1111 and c1 = 11-1-1; u1 = 0.5 x 1111 (class 0) has cosines 1 and 0 with them, so
    probabilities e^2 / (e^2 + 1) and 1 / (e^2 + 1); u2 = 0.5 x (1, -1, 1, -1) (class 1) has cosines 0 and 0, so 1/2
    each. Mean BCE over the four entries: (log(1 + e^-2) + log 2) / 2 = 0.410038. Quantisation: every |u| is 0.5,
    1e-4 x 0.25. The pair term pairs each image with itself alone (no other shares its label): log(1 + e^0) = log 2."""
    centres = torch.tensor([[1.0, 1, 1, 1], [1, 1, -1, -1]], dtype=torch.float64)
    u = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, -0.5]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0], [0, 1]], dtype=torch.float64)
    loss = SeparatedCentreLoss(centres, 2, 1e-4, pair=1.0, pair_from_epoch=9).double()
    early = loss(HashOutput(u), labels, torch.tensor([0, 1]), StepInfo(8, 0, 1, 20))
    centre = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert centre == pytest.approx(0.410038, abs=1e-6)
    assert early["centre"].item() == pytest.approx(centre, abs=1e-12)
    assert early["quantisation"].item() == pytest.approx(2.5e-5, abs=1e-15) and "pair" not in early
    late = loss(HashOutput(u), labels, torch.tensor([0, 1]), StepInfo(9, 0, 1, 20))
    assert late["pair"].item() == pytest.approx(math.log(2), abs=1e-12)
    assert sum(late.values()).item() == pytest.approx(1.103210, abs=1e-6)


def test_the_loss_against_a_loop_on_multi_label_codes():
    rng = np.random.default_rng(3)
    n, bits, classes, stored = 6, 8, 3, 10
    centres = torch.from_numpy(mdsh_centres(classes, bits, 0).numpy().astype(np.float64))
    u = torch.from_numpy(np.tanh(rng.normal(size=(n, bits))))
    labels = torch.from_numpy((rng.random((n, classes)) < 0.5).astype(np.float64))
    labels[0] = torch.tensor([1.0, 1, 0])  # two labels: both classes are targets
    loss = SeparatedCentreLoss(centres, stored, 1e-4, pair=0.5, pair_from_epoch=0).double()
    earlier = torch.from_numpy(np.tanh(rng.normal(size=(stored, bits))))
    earlier_labels = torch.from_numpy((rng.random((stored, classes)) < 0.5).astype(np.float64))
    loss.stored_codes.copy_(earlier)
    loss.stored_labels.copy_(earlier_labels)
    indices = torch.tensor([0, 2, 3, 5, 7, 9])
    terms = loss(HashOutput(u), labels, indices, StepInfo(0, 0, 1, 1))

    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    bce = 0.0
    for i in range(n):
        logits = [math.sqrt(bits) * cos(u[i], centres[k]) for k in range(classes)]
        total = sum(math.exp(v) for v in logits)
        for k in range(classes):
            p = math.exp(logits[k]) / total
            bce -= math.log(p) if labels[i, k] else math.log(1 - p)
    assert terms["centre"].item() == pytest.approx(bce / (n * classes), abs=1e-12)
    codes, stored_labels = earlier.clone(), earlier_labels.clone()
    codes[indices], stored_labels[indices] = u, labels  # the batch is stored before it is paired
    pulled, pairs = 0.0, 0
    for i in range(n):
        for j in range(stored):
            if float(labels[i] @ stored_labels[j]) > 0:
                pulled += math.log(1 + math.exp((1 - cos(u[i], codes[j])) / 2))
                pairs += 1
    assert terms["pair"].item() == pytest.approx(0.5 * pulled / pairs, abs=1e-12)


def test_the_engine_clips_the_gradient_norm_where_a_method_asks(tmp_path):
    """A step of MDSH's head on fixed features: its gradient's norm is held to max_grad_norm (here tiny, below what
    the step produces unclipped)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16, 12)).astype(np.float32)
    labels = np.arange(16) % 3

    class Tiny(MDSH):
        name = "mdsh-tiny-clip"
        max_grad_norm = 1e-6

    norms = {}
    for method_cls in (MDSH, Tiny):
        torch.manual_seed(0)
        method = method_cls(MethodContext(8, 3, 16, seed=0, frozen_backbone=True))
        network = HashNetwork(nn.Identity(), method.build_head(12))
        engine.train(
            engine.TrainJob(
                method,
                network,
                method.build_loss(),
                engine.FeatureSource(features, torch.device("cpu")),
                engine.TrainData(np.arange(16), labels, 3),
                TrainSettings(optimizer="sgd", lr=1e-3, batch_size=16),
                1,
                16,
                0,
                tmp_path / f"{method_cls.__name__}.pt",
                tmp_path / f"{method_cls.__name__}.jsonl",
            )
        )
        norms[method_cls] = torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None]).norm()
    assert norms[MDSH] > 1e-3  # unclipped (5 is far above it)
    assert norms[Tiny] <= 1e-6 * (1 + 1e-5)


def test_it_learns_on_the_phantom(quick_phantom_cell):
    metrics, floor = quick_phantom_cell("mdsh")
    # measured MAP@10 over seeds 0, 1, 2: 0.52, 0.44, 0.46 (random codes 0.22); mAP@all 0.57, 0.50, 0.53
    assert metrics["map@10"] > floor["map@10"] + 0.12
    assert metrics["map@all"] > 3 * floor["map@all"]
