"""CSQ, OrthoHash and GreedyHash: their losses against loop references on hand-made codes, their fixed codes, their gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hashbench.methods.csq import CentralSimilarityLoss, hadamard, hash_centres
from hashbench.methods.greedyhash import GreedyLoss, sign_straight_through
from hashbench.methods.orthohash import OrthoHashLoss, class_codes
from hashbench.model.method import HashOutput


def test_hadamard_centres_are_pairwise_at_half_the_bits():
    for bits, classes in ((16, 10), (32, 32), (64, 21)):
        centres = hash_centres(classes, bits, seed=0)
        distance = (bits - centres @ centres.T) / 2
        off_diagonal = distance[~torch.eye(classes, dtype=torch.bool)]
        assert (off_diagonal == bits / 2).all() and set(centres.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(hadamard(4) @ hadamard(4).T, 4 * torch.eye(4))


def test_centres_beyond_hadamard_are_seeded_balanced_and_far_apart():
    centres = hash_centres(10, 48, seed=3)  # 48 is no power of two
    assert torch.equal(centres, hash_centres(10, 48, seed=3)) and not torch.equal(centres, hash_centres(10, 48, seed=4))
    assert (centres.sum(dim=1) == 0).all()  # balanced: half the bits -1
    distance = (48 - centres @ centres.T) / 2
    assert distance[~torch.eye(10, dtype=torch.bool)].min() >= 12  # measured 16 to 18; random pairs average 24
    assert len(hash_centres(40, 16, seed=0).unique(dim=0)) == 40  # more classes than [H; -H] holds: drawn, all distinct


def csq_loop(u, labels, centres, tie_bits, quantisation, pairwise):
    n, bits = u.shape
    total_bce = 0.0
    for i in range(n):
        members = [c for c in range(len(centres)) if labels[i, c] > 0]
        mean = sum(centres[c] for c in members) / len(members)
        target = [float(tie_bits[k]) if mean[k] == 0 else math.copysign(1.0, mean[k]) for k in range(bits)]
        for k in range(bits):
            p, t = (u[i, k] + 1) / 2, (target[k] + 1) / 2
            total_bce -= t * math.log(p) + (1 - t) * math.log(1 - p)
    q = sum((abs(u[i, k]) - 1) ** 2 for i in range(n) for k in range(bits)) / (n * bits)
    half, pair = n // 2, 0.0
    for i in range(half):
        for j in range(half):
            theta = 10.0 / bits * sum(u[i, k] * u[half + j, k] for k in range(bits))
            s = float(any(labels[i, c] and labels[half + j, c] for c in range(labels.shape[1])))
            pair += math.log(1 + math.exp(theta)) - s * theta
    return total_bce / (n * bits) + quantisation * q + pairwise * pair / half**2


def test_csq_loss_against_a_loop_reference_single_and_multi_label():
    rng = np.random.default_rng(0)
    u = rng.uniform(-0.95, 0.95, (6, 8))
    centres = hash_centres(4, 8, seed=0)
    tie_bits = torch.tensor([1.0, -1, 1, -1, -1, 1, 1, -1])
    labels = np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=float
    )  # rows 3-6 multi-label
    loss = CentralSimilarityLoss(centres, tie_bits, quantisation=0.05, pairwise=0.2).double()
    terms = loss(HashOutput(torch.tensor(u)), torch.tensor(labels), None, None)
    expected = csq_loop(u, labels, centres.double().numpy(), tie_bits.numpy(), 0.05, 0.2)
    assert sum(terms.values()).item() == pytest.approx(expected, rel=1e-9)
    both = (
        centres[0] + centres[1]
    )  # a two-label image: its centre agrees with both where they agree, the run's tie bits elsewhere
    assert (loss.targets(torch.tensor(labels[2:3]))[0].float() == torch.where(both == 0, tie_bits, both.sign())).all()


def orthohash_loop(u, labels, codes, scale, margin):
    total = 0.0
    for i in range(len(u)):
        cosines = [float(u[i] @ c / (np.linalg.norm(u[i]) * np.linalg.norm(c))) for c in codes]
        logits = [scale * (cos - margin * labels[i, c]) for c, cos in enumerate(cosines)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        members = [c for c in range(len(codes)) if labels[i, c]]
        total += -sum(logits[c] - log_z for c in members) / len(members)
    return total / len(u)


def test_orthohash_loss_against_a_loop_reference_single_and_multi_label():
    rng = np.random.default_rng(1)
    u = rng.normal(size=(5, 16))
    codes = class_codes(3, 16, seed=0)
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=float)
    cosines = (
        torch.nn.functional.normalize(torch.tensor(u), dim=1) @ torch.nn.functional.normalize(codes.double(), dim=1).T
    )
    terms = OrthoHashLoss(scale=8.0, margin=0.2, quantisation=0.0)(
        HashOutput(torch.tensor(u), cosines), torch.tensor(labels), None, None
    )
    assert terms["classification"].item() == pytest.approx(
        orthohash_loop(u, labels, codes.double().numpy(), 8.0, 0.2), rel=1e-9
    )


def test_orthohash_class_codes_are_seeded_and_far_apart():
    codes = class_codes(10, 32, seed=0)
    assert torch.equal(codes, class_codes(10, 32, seed=0))
    distance = (32 - codes @ codes.T) / 2 / 32
    assert (
        distance[~torch.eye(10, dtype=torch.bool)].min() >= 0.5
    )  # the bound starts at 0.61 and is lowered only when no draw fits


def test_greedyhash_forward_is_the_sign_and_its_gradient_that_of_the_identity():
    u = torch.tensor([[-0.7, 0.0, 0.2, 3.0]], requires_grad=True)
    codes = sign_straight_through(u)
    assert codes.tolist() == [[-1.0, 1.0, 1.0, 1.0]]
    weights = torch.tensor([[0.5, -2.0, 1.5, 4.0]])
    (codes * weights).sum().backward()
    identity = u.detach().clone().requires_grad_(True)
    (identity * weights).sum().backward()
    assert torch.equal(u.grad, identity.grad)


def test_greedyhash_loss_by_hand():
    u = torch.tensor([[0.5, -2.0]])
    logits = torch.tensor([[1.0, 0.0, 0.0]])
    terms = GreedyLoss(penalty=0.1)(HashOutput(u, logits), torch.tensor([[1.0, 0.0, 0.0]]), None, None)
    assert terms["classification"].item() == pytest.approx(-math.log(math.e / (math.e + 2)))
    assert terms["penalty"].item() == pytest.approx(0.1 * (0.5**3 + 1.0**3) / 2)


def test_csq_leaves_out_the_all_ones_row_as_the_authors_centre_files_do():
    default, former = hash_centres(8, 16, seed=0), hash_centres(8, 16, seed=0, first_row=True)
    ones = torch.ones(16)
    assert not (default == ones).all(dim=1).any() and (former[0] == ones).all()
    assert torch.equal(default, hadamard(16)[1:9]) and torch.equal(former, hadamard(16)[:8])
    # 31 classes at 16 bits: H's last 15 rows, then all of -H's 16
    assert torch.equal(hash_centres(31, 16, seed=0), torch.cat([hadamard(16)[1:], -hadamard(16)]))


def test_orthohash_codebook_defaults_to_the_authors_coin_flips():
    from hashbench.methods.orthohash import OrthoHash, bernoulli_codes
    from hashbench.model.method import MethodContext

    codes = bernoulli_codes(10, 64, seed=0)
    assert torch.equal(codes, bernoulli_codes(10, 64, seed=0)) and not torch.equal(codes, bernoulli_codes(10, 64, 1))
    assert set(codes.unique().tolist()) == {-1.0, 1.0} and abs(codes.mean().item()) < 0.1  # 640 fair flips
    for codebook, expected in (("bernoulli", codes), ("min-distance", class_codes(10, 64, seed=0))):
        head = OrthoHash(MethodContext(64, 10, 100, {"codebook": codebook}, seed=0)).build_head(32)
        assert torch.equal(head.codes, expected), codebook
