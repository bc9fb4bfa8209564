"""ADSH: the asymmetric loss and the database codes' discrete step by hand and against loops, the outer iterations'
descent, the sampler, the engine's hooks, and learning on the phantom."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.methods.adsh import ADSH, AsymmetricLoss, dissimilar_weight, omega_batches, update_database_codes
from hashbench.model.method import HashNetwork, HashOutput, MethodContext, StepInfo, TanhHead, TrainSettings
from hashbench.runner.cell import with_learned_codes
from hashbench.training import engine

INFO = StepInfo(0, 0, 1, 1)
# the worked example: three training items (classes 0, 0, 1), two bits, gamma 2, r 1, Omega = items 0 and 1
LABELS = F.one_hot(torch.tensor([0, 0, 1]), 2).double()
V = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
U = torch.tensor([[0.5, -0.8], [-0.8, 0.5]], dtype=torch.float64)


def worked_loss() -> AsymmetricLoss:
    loss = AsymmetricLoss(3, 2, gamma=2.0, sample_size=10, seed=0).double()
    loss.attach(LABELS)
    loss.r = 1.0
    loss.codes.copy_(V)
    return loss


def objective(codes, outputs, rows, labels, r, gamma):
    """The authors' objective over the sampled rows, by loops: sum_(i, j) (u_i . v_j - bits S_ij)^2 + gamma sum_i
    |v_i - u_i|^2."""
    bits, total = codes.shape[1], 0.0
    for a, i in enumerate(rows):
        for j in range(len(codes)):
            s = 1.0 if float(labels[i] @ labels[j]) > 0 else -r
            total += (float(outputs[a] @ codes[j]) - bits * s) ** 2
        total += gamma * float((codes[i] - outputs[a]).pow(2).sum())
    return total


def test_the_loss_of_the_worked_example_by_hand():
    # u_0 V^T - 2 S_0 = (1.3, -0.3, -1.3) - (2, 2, -2): 0.49 + 5.29 + 0.49; u_1: (-1.3, -0.3, 1.3) - (2, 2, -2):
    # 10.89 + 5.29 + 10.89; gamma terms 2 (0.25 + 0.04) + 2 (3.24 + 0.25); over n |B| = 6
    terms = worked_loss()(HashOutput(U), LABELS[:2], torch.tensor([0, 1]), INFO)
    assert terms["asymmetric"].item() == pytest.approx(33.34 / 6, abs=1e-12)
    assert terms["database_tie"].item() == pytest.approx(7.56 / 6, abs=1e-12)


def test_the_loss_matches_loops_on_multi_label_rows():
    rng = np.random.default_rng(3)
    n, bits = 7, 5
    labels = torch.tensor(rng.integers(0, 2, size=(n, 4)), dtype=torch.float64)
    labels[labels.sum(1) == 0, 0] = 1
    loss = AsymmetricLoss(n, bits, gamma=3.0, sample_size=n, seed=0).double()
    loss.attach(labels)
    loss.codes.copy_(torch.tensor(rng.choice([-1.0, 1.0], size=(n, bits))))
    rows = torch.tensor([4, 1, 6])
    u = torch.tensor(rng.uniform(-1, 1, size=(3, bits)))
    terms = loss(HashOutput(u), labels[rows], rows, INFO)
    expected = objective(loss.codes, u, rows.tolist(), labels, loss.r, 3.0) / (n * 3)
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-12)


def test_r_is_the_similar_to_dissimilar_ratio():
    assert dissimilar_weight(LABELS, np.array([0, 1])) == 2.0  # 4 similar, 2 dissimilar pairs against all three
    assert dissimilar_weight(LABELS, np.array([0, 1, 2])) == 5 / 4


def test_the_discrete_step_of_the_worked_example():
    """Column 0 first: Q_0 + 2 V_1 (U_1 . U_0) = (-3.4, -3.4, 3.4) -> (-1, -1, 1); then column 1 sees the new column 0.
    Updating both columns from the old V (Jacobi) would give a different V."""
    loss = worked_loss()
    before = objective(V, U, [0, 1], LABELS, 1.0, 2.0)
    new = update_database_codes(V, U_rows(U), torch.tensor([True, True, False]), LABELS, 1.0, 2.0)
    assert new.tolist() == [[-1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]
    assert (before, objective(new, U, [0, 1], LABELS, 1.0, 2.0)) == pytest.approx((40.9, 26.5), abs=1e-9)
    assert new.tolist() != [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]]  # the Jacobi update
    loss(HashOutput(U), LABELS[:2], torch.tensor([0, 1]), INFO)  # records U for Omega
    loss.update_codes()
    assert torch.equal(loss.codes, new) and not loss.sampled.any()


def U_rows(outputs):
    """The recorded outputs of Omega = items 0 and 1, in a table of all three training items."""
    return torch.cat([outputs, torch.zeros(1, outputs.shape[1], dtype=outputs.dtype)])


def test_each_column_of_the_discrete_step_is_the_exact_minimiser_given_the_others():
    rng = np.random.default_rng(1)
    n, bits, gamma, r = 6, 4, 5.0, 0.7
    labels = F.one_hot(torch.tensor(rng.integers(0, 3, n)), 3).double()
    sampled = torch.tensor([True, False, True, True, False, False])
    outputs = torch.tensor(rng.uniform(-1, 1, size=(n, bits)))
    codes = torch.tensor(rng.choice([-1.0, 1.0], size=(n, bits)))
    rows = sampled.nonzero().flatten().tolist()
    for k in range(bits):  # replay the step one column at a time and brute-force that column over all 2^n choices
        after = update_database_codes(codes, outputs, sampled, labels, r, gamma)
        chosen = codes.clone()
        chosen[:, : k + 1] = after[:, : k + 1]

        def with_column(column):
            replaced = chosen.clone()
            replaced[:, k] = torch.tensor(column)
            return replaced

        best = min(
            objective(with_column(column), outputs[sampled], rows, labels, r, gamma)
            for column in itertools.product([-1.0, 1.0], repeat=n)
        )
        reached = objective(chosen, outputs[sampled], rows, labels, r, gamma)
        assert reached <= best * (1 + 1e-12)  # float64: the sums of a few hundred terms round at ~1e-14
    assert set(after.flatten().tolist()) == {-1.0, 1.0}


def test_the_loss_does_not_increase_over_outer_iterations_on_a_fixed_batch():
    """Omega is one fixed batch of 12 items; each outer iteration takes gradient steps on the network with V fixed,
    records U, then updates V. Both halves minimise the same objective over +/-1 codes, so once V holds such codes
    (after its first update: it starts at 0, outside that set) the objective never rises."""
    torch.manual_seed(0)
    n, bits = 12, 8
    features = torch.randn(n, 10, dtype=torch.float64)
    labels = F.one_hot(torch.arange(n) % 3, 3).double()
    head = TanhHead(10, bits).double()
    loss = AsymmetricLoss(n, bits, gamma=200.0, sample_size=n, seed=0).double()
    loss.attach(labels)
    optimizer = torch.optim.SGD(head.parameters(), lr=1e-3)
    everything = torch.arange(n)
    values = []

    def current() -> float:
        with torch.no_grad():  # the forward records U: the network's outputs now
            return sum(loss(head(features), labels, everything, INFO).values()).item()

    for _ in range(6):
        values.append(current())
        for _ in range(5):
            total = sum(loss(head(features), labels, everything, INFO).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        values.append(current())
        loss.update_codes()
    values.append(current())
    # each value is a float64 sum of ~150 terms: its rounding is far below 1e-12 of it
    settled = values[2:]  # from the first update of V on
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(settled, settled[1:])), values
    assert settled[-1] < 0.7 * settled[0]  # and it falls (measured: to 0.60 of it in six iterations)
    assert set(loss.codes.flatten().tolist()) == {-1.0, 1.0}


def test_omega_batches_pass_over_one_fixed_sample_in_one_order():
    batches = list(omega_batches(100, 16, 33, 3, np.random.default_rng(0)))
    assert [len(b) for b in batches] == [16, 17] * 3  # 33 = 16 + 16 + 1: the lone last item joins the batch before
    first_pass = np.concatenate(batches[:2])
    assert len(set(first_pass.tolist())) == 33 and all(
        np.array_equal(np.concatenate(batches[2 * p : 2 * p + 2]), first_pass) for p in range(3)
    )
    assert sorted(np.concatenate(list(omega_batches(20, 8, 2000, 1, np.random.default_rng(0)))).tolist()) == list(
        range(20)
    )  # fewer items than the sample size: all of them


def test_database_rows_of_training_items_take_their_learned_codes():
    database_ids = np.array([7, 3, 9, 5])
    network_codes = np.full((4, 2), 0.25, np.float32)
    learned = torch.tensor([[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]])  # training ids 5, 9, 2 in that order
    merged = with_learned_codes(database_ids, network_codes, np.array([5, 9, 2]), learned)
    assert merged.tolist() == [[0.25, 0.25], [0.25, 0.25], [-1.0, -1.0], [1.0, -1.0]]


def train_on_features(tmp_path, epochs: int, name: str) -> ADSH:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 12)).astype(np.float32)
    labels = np.arange(40) % 4
    torch.manual_seed(0)
    method = ADSH(MethodContext(8, 4, 40, {"sample_size": 24}, seed=0, frozen_backbone=True))
    network = HashNetwork(nn.Identity(), method.build_head(12))
    engine.train(
        engine.TrainJob(
            method,
            network,
            method.training_loss(),
            engine.FeatureSource(features, torch.device("cpu")),
            engine.TrainData(np.arange(40), labels, 4),
            TrainSettings(optimizer="sgd", lr=1e-2, momentum=0.0, batch_size=8),
            epochs,
            12,
            0,
            tmp_path / f"{name}.pt",
            tmp_path / f"{name}.jsonl",
        )
    )
    return method


def test_the_engine_updates_the_database_codes_each_epoch_and_a_resumed_cell_keeps_them(tmp_path):
    whole = train_on_features(tmp_path, 3, "whole")
    codes = whole.learned_codes()
    assert set(codes.flatten().tolist()) == {-1.0, 1.0}  # every bit decided, no 0 left
    train_on_features(tmp_path, 2, "interrupted")  # stopped after two epochs, then resumed to three
    resumed = train_on_features(tmp_path, 3, "interrupted")
    assert torch.equal(resumed.learned_codes(), codes)


def test_it_learns_on_the_phantom(quick_phantom_cell):
    metrics, floor = quick_phantom_cell("adsh", epochs=2)
    assert metrics["map@10"] > floor["map@10"] + 0.12  # measured +0.18 (two epochs), +0.21 (three)
