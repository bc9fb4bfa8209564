"""BiHalf: the bi-half layer and its loss against hand-worked values; trained without labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hashbench.methods.bihalf import BiHalf, BiHalfSign, CosineMatching
from hashbench.model.method import HashNetwork, HashOutput, MethodContext, TrainSettings
from hashbench.training import engine

U = [[0.9, 0.2], [0.3, -0.6], [-0.4, -0.1], [0.1, -0.8]]
X = [[1.0, 0, 0], [0, 2, 0], [1, 1, 0], [1, 1, 1]]


def test_the_layer_and_the_loss_on_a_hand_worked_batch():
    """Column 0 ranks rows 0, 1, 3, 2; column 1 rows 0, 2, 1, 3. The pairs (0, 2) and (1, 3) have code cosines 0 and 0,
    feature cosines 1/sqrt(2) and 1/sqrt(3): loss (1/2 + 1/3) / 2 = 5/12."""
    values = torch.tensor(U, dtype=torch.float64, requires_grad=True)
    bits = BiHalfSign.apply(values, 6.0)
    assert bits.tolist() == [[1, 1], [1, -1], [-1, 1], [-1, -1]]
    terms = CosineMatching()(HashOutput(bits, features=torch.tensor(X, dtype=torch.float64)), None, None, None)
    assert terms["cosine"].item() == pytest.approx(5 / 12, abs=1e-12)
    terms["cosine"].backward()
    # dL/dB by hand for the pairs, then straight through plus 6 (U - B) / 8
    s2, s3 = 0.5**0.5 / 2, (1 / 3) ** 0.5 / 2
    d_bits = np.array([[s2, -s2], [s3, s3], [-s2, -s2], [-s3, s3]])
    expected = d_bits + 0.75 * (np.array(U) - bits.detach().numpy())
    assert np.abs(values.grad.numpy() - expected).max() <= 1e-12


@pytest.mark.parametrize("n", [8, 9, 64])
def test_every_bit_gives_exactly_half_the_batch_plus_one(n):
    values = torch.randn(n, 16, generator=torch.Generator().manual_seed(n))
    bits = BiHalfSign.apply(values, 6.0)
    assert ((bits == 1).sum(dim=0) == n // 2).all() and ((bits == -1).sum(dim=0) == n - n // 2).all()
    median_split = values >= values.median(dim=0, keepdim=True).values  # the larger half gets +1
    assert (bits[median_split.sum(dim=0, keepdim=True).expand_as(values) == n // 2] != 0).all()


def test_it_trains_with_labels_withheld(tmp_path):
    """Labels of -7 break any supervised loss (no one-hot row exists for them); BiHalf never reads them."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 12)).astype(np.float32)
    broken = np.full(40, -7)
    context = MethodContext(8, 3, 40, seed=0, frozen_backbone=True)
    method = BiHalf(context)
    head = method.build_head(12)
    job = engine.TrainJob(
        method,
        HashNetwork(nn.Identity(), head),
        method.build_loss(),
        engine.FeatureSource(features, torch.device("cpu")),
        engine.TrainData(np.arange(40), broken, 3),
        TrainSettings(optimizer="adam", lr=1e-2, batch_size=8),
        3,
        16,
        0,
        tmp_path / "checkpoint.pt",
        tmp_path / "log.jsonl",
    )
    before = head.linear.weight.detach().clone()
    engine.train(job)
    assert not torch.equal(before, head.linear.weight)
    with pytest.raises(RuntimeError):  # what a supervised method would have met
        engine.label_rows(broken, 3)


def test_it_learns_on_the_phantom_without_labels_and_is_marked_unsupervised(default_phantom, tmp_path, chance):
    from hashbench import api

    dataset = default_phantom.dataset
    request = api.RunRequest(
        methods=["bihalf"], bits=[32], dataset=dataset.name, device="cpu", epochs=100, overrides={"*": {"lr": 0.01}}
    )
    (outcome,) = api.run_grid(request, dataset, tmp_path / "runs")
    assert outcome.status == "done" and outcome.config.frozen_backbone, outcome.error
    # measured 0.325 against 0.22 for random codes (the float cosine of the same random-init features: 0.374)
    assert outcome.metrics["map@10"] > chance(dataset)["map@10"] + 0.05, outcome.metrics
    (board,) = api.leaderboard(tmp_path / "runs", ("map@10",))
    assert list(board.table.index) == ["bihalf (frozen backbone) (unsupervised)"]
