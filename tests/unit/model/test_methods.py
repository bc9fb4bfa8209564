"""Every registered method builds and trains; every loss matches a brute-force reference."""

from __future__ import annotations

import math
from typing import Literal, get_args, get_origin

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.evaluation.evaluate import binarize
from hashbench.model.method import HashOutput, MethodContext, StepInfo
from hashbench.model.options import type_hints
from hashbench.model.registry import REGISTRY

BACKBONE = "test_efficientnet"  # timm's tiny EfficientNet for tests
LIGHT = {"backbone": "test_resnet", "vit": "test_vit"}
INFO = StepInfo(epoch=0, step=0, steps_per_epoch=10, epochs=1)


def build(name, bits, n_classes=3, n_train=12, image_size=32, **options):
    cls = REGISTRY.get(name)
    light = {
        k: v for k, v in LIGHT.items() if cls.default_options().get(k)
    }  # tiny stand-ins for the big backbones of Table 4
    method = cls(MethodContext(bits, n_classes, n_train, {**light, **options}, seed=0, image_size=image_size))
    network, loss = method.build(BACKBONE)
    return method, network, loss


def train_a_step(name, bits, **options):
    """Build, run one forward and backward pass, and check the loss, the gradients and the codes."""
    torch.manual_seed(0)
    method, network, loss_fn = build(name, bits, **options)
    if getattr(method, "fitted", False):  # training-free: fitted to features, nothing to back-propagate
        images = torch.randn(64, 3, 32, 32)
        with torch.no_grad():
            features = network.encoder(images)
            method.fit(network.head, features.double().numpy())
            output = network(images)
        if method.float_distance:  # a float reference ranks the features themselves
            assert torch.equal(output.code, features.float())
        else:
            assert output.code.shape == (64, bits)
        assert torch.isfinite(output.code).all()
        assert not [n for n, p in network.named_parameters() if p.requires_grad]
        return
    labels = F.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).float()
    views = len(method.view_strengths())  # the engine stacks each image's views, view by view
    images = torch.randn(6 * views, 3, 32, 32)
    method.begin_training(torch.cat([labels, labels]))  # every training item's labels, as the engine hands them
    method.schedule(network, INFO)
    output = network(images)
    assert output.code.shape == (6 * views, bits)
    terms = loss_fn(output, labels, torch.arange(6), INFO)
    total = sum(terms.values())
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    missing = [
        n
        for n, p in network.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"
    codes = 2 * binarize(output.code.detach().numpy()).astype(int) - 1
    assert set(np.unique(codes)) <= {-1, 1}


@pytest.mark.parametrize("bits", [16, 32, 48])
@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_method_builds_trains_a_step_and_gives_plus_minus_one_codes(name, bits):
    train_a_step(name, bits)


def choices(name):
    """The options of a method typed as a Literal, with their valid values."""
    hints = type_hints(REGISTRY.get(name).Options)
    return {key: get_args(hint) for key, hint in hints.items() if get_origin(hint) is Literal}


NON_DEFAULT_CHOICES = [
    (name, key, value)
    for name in ("hashnet", "dsh", "dpn", "dafh", "itq")
    for key, values in choices(name).items()
    for value in values
    if value != REGISTRY.get(name).default_options()[key]
]


def test_the_non_default_choices_cover_every_option_that_takes_one_of_a_few():
    assert {(name, key) for name, key, _ in NON_DEFAULT_CHOICES} >= {
        ("hashnet", "pairing"),
        ("hashnet", "schedule"),
        ("dsh", "pair_gradient"),
        ("dafh", "triplet_reduction"),
        ("dafh", "classifier_input"),
        ("dafh", "fusion_pool"),
        ("dafh", "mining"),
        ("dpn", "targets"),
        ("itq", "features"),
    }


@pytest.mark.parametrize(
    "name, key, value", NON_DEFAULT_CHOICES, ids=[f"{n}-{k}={v}" for n, k, v in NON_DEFAULT_CHOICES]
)
def test_every_non_default_choice_builds_and_trains_a_step(name, key, value):
    train_a_step(name, 16, **{key: value})


# --- brute-force references on hand-made codes ------------------------------------------

U = torch.tensor(
    [[0.9, -0.2, 0.5, -1.0], [0.8, -0.1, -0.4, -0.9], [-0.7, 0.6, 0.3, 0.2], [0.1, 0.3, -0.8, 0.7]], dtype=torch.float64
)
CLASSES = [0, 0, 1, 2]
Y = F.one_hot(torch.tensor(CLASSES), 3).double()


def similar(i, j, classes=CLASSES):
    return 1.0 if classes[i] == classes[j] else 0.0


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def hashnet_by_hand(codes, classes, alpha, pairs):
    """The paper's weighted loss over the (i, j) pairs given, weights from those pairs only."""
    n_similar = sum(similar(i, j, classes) for i, j in pairs)
    n_dissimilar = len(pairs) - n_similar
    total = 0.0
    for i, j in pairs:
        theta = alpha * dot(codes[i], codes[j])
        weight = len(pairs) / n_similar if similar(i, j, classes) else len(pairs) / n_dissimilar
        total += weight * (math.log(1 + math.exp(theta)) - similar(i, j, classes) * theta)
    return total / len(pairs)


def hashnet_loss(codes, classes, **options):
    _, _, loss_fn = build("hashnet", codes.shape[1], **options)
    return loss_fn(HashOutput(codes), F.one_hot(torch.tensor(classes), 3).double(), torch.arange(len(codes)), INFO)[
        "pairwise"
    ]


HALVES_CLASSES = [0, 1, 0, 2]  # across the halves: one similar pair (0, 2), three dissimilar


def test_hashnet_by_default_pairs_the_first_half_of_the_batch_with_the_second():
    halves = [(i, j) for i in (0, 1) for j in (2, 3)]
    assert hashnet_loss(U, HALVES_CLASSES, alpha=0.5).item() == pytest.approx(
        hashnet_by_hand(U, HALVES_CLASSES, 0.5, halves), abs=1e-12
    )


def test_hashnet_all_pairs_include_self_pairs_as_in_deephash_pytorch():
    every_pair = [(i, j) for i in range(len(U)) for j in range(len(U))]
    value = hashnet_loss(U, CLASSES, alpha=0.5, pairing="all").item()
    assert value == pytest.approx(hashnet_by_hand(U, CLASSES, 0.5, every_pair), abs=1e-12)


def test_hashnet_halves_leave_the_last_item_of_an_odd_batch_out():
    last = torch.tensor([[0.3, 0.9, -0.6, 0.4]], dtype=torch.float64)
    codes = torch.cat([U, last]).requires_grad_()
    value = hashnet_loss(codes, HALVES_CLASSES + [0], alpha=0.5)
    halves = [(i, j) for i in (0, 1) for j in (2, 3)]
    assert value.item() == pytest.approx(hashnet_by_hand(codes.detach(), HALVES_CLASSES, 0.5, halves), abs=1e-12)
    (gradient,) = torch.autograd.grad(value, codes)
    assert gradient[:4].abs().sum() > 0 and torch.equal(gradient[4], torch.zeros(4, dtype=torch.float64))
    other_last_item = hashnet_loss(torch.cat([U, -last]), HALVES_CLASSES + [1], alpha=0.5)
    assert other_last_item.item() == value.item()


@pytest.mark.parametrize("pairing", ["halves", "all"])
def test_hashnet_loss_scale_one_half_is_the_authors_train_py_loss(pairing):
    full = hashnet_loss(U, HALVES_CLASSES, pairing=pairing)
    assert (
        full.item() > 0 and hashnet_loss(U, HALVES_CLASSES, pairing=pairing, loss_scale=0.5).item() == 0.5 * full.item()
    )


def test_hashnet_alpha_defaults_to_ten_over_bits_and_beta_follows_the_authors_continuation():
    method, network, loss_fn = build("hashnet", 32)
    assert loss_fn.alpha == pytest.approx(10 / 32)
    method.schedule(network, StepInfo(epoch=0, step=399, steps_per_epoch=1000, epochs=1))
    assert network.head.scale.item() == pytest.approx(math.sqrt(1 + 0.005 * 200))
    method.schedule(network, StepInfo(epoch=0, step=400, steps_per_epoch=1000, epochs=1))
    assert network.head.scale.item() == pytest.approx(math.sqrt(1 + 0.005 * 400))


def test_dpsh_loss_uses_and_updates_the_memory_by_hand():
    n_train, eta = 6, 0.3
    _, _, loss_fn = build("dpsh", 4, n_train=n_train, eta=eta)
    loss_fn.double()
    memory = torch.tensor(
        [[1.0, 1, -1, -1], [-1, -1, 1, 1], [1, -1, 1, -1], [0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [-1, 1, -1, 1]],
        dtype=torch.float64,
    )
    memory_classes = [0, 1, 2, 0, 1, 2]
    loss_fn.codes.copy_(memory)
    loss_fn.labels.copy_(F.one_hot(torch.tensor(memory_classes), 3).double())
    indices = torch.tensor([3, 1])  # the batch overwrites memory rows 3 and 1 first
    batch, batch_classes = U[:2], [0, 1]
    expected_memory = memory.clone()
    expected_memory[3], expected_memory[1] = batch[0], batch[1]
    classes_after = list(memory_classes)
    classes_after[3], classes_after[1] = batch_classes
    likelihood = 0.0
    for i in range(2):
        for j in range(n_train):
            theta = 0.5 * dot(batch[i], expected_memory[j])
            s = 1.0 if batch_classes[i] == classes_after[j] else 0.0
            likelihood += math.log(1 + math.exp(theta)) - s * theta
    quantization = sum((float(v) - (1.0 if v > 0 else -1.0)) ** 2 for row in batch for v in row)
    terms = loss_fn(HashOutput(batch), F.one_hot(torch.tensor(batch_classes), 3).double(), indices, INFO)
    assert terms["likelihood"].item() == pytest.approx(likelihood / (2 * n_train), abs=1e-6)
    assert terms["quantization"].item() == pytest.approx(eta * quantization / 8, abs=1e-6)
    assert torch.equal(loss_fn.codes, expected_memory)


def test_dpsh_eta_is_the_papers_lambda_in_mean_form():
    _, _, loss_fn = build("dpsh", 48, n_train=5000)
    assert loss_fn.eta == pytest.approx(10 * 48 / 5000)


def test_dsh_loss_by_hand():
    margin, alpha = 3.0, 0.01
    _, _, loss_fn = build("dsh", 4, margin=margin, alpha=alpha)
    n = len(U)
    pair_terms = []
    for i in range(n):
        for j in range(i + 1, n):
            d = sum((float(a) - float(b)) ** 2 for a, b in zip(U[i], U[j]))
            pair_terms.append(0.5 * similar(i, j) * d + 0.5 * (1 - similar(i, j)) * max(margin - d, 0.0))
    regulariser = alpha * sum(sum(abs(abs(float(v)) - 1) for v in row) for row in U) / n
    terms = loss_fn(HashOutput(U), Y, torch.arange(n), INFO)
    assert terms["pairs"].item() == pytest.approx(sum(pair_terms) / len(pair_terms), abs=1e-6)
    assert terms["regulariser"].item() == pytest.approx(regulariser, abs=1e-6)


def test_dsh_half_pair_gradient_keeps_the_value_and_halves_only_the_pair_terms_gradient():
    codes = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    labels = F.one_hot(torch.tensor([0, 0, 1, 1, 2, 0]), 3).double()
    full = build("dsh", 4)[2](HashOutput(codes), labels, torch.arange(6), INFO)
    half = build("dsh", 4, pair_gradient="half")[2](HashOutput(codes), labels, torch.arange(6), INFO)
    assert half["pairs"].item() == full["pairs"].item() and half["regulariser"].item() == full["regulariser"].item()
    (full_pairs,) = torch.autograd.grad(full["pairs"], codes)
    (half_pairs,) = torch.autograd.grad(half["pairs"], codes)
    assert full_pairs.abs().min() > 0
    assert torch.equal(half_pairs, 0.5 * full_pairs)
    assert torch.equal(
        torch.autograd.grad(half["regulariser"], codes)[0], torch.autograd.grad(full["regulariser"], codes)[0]
    )


def test_dsh_margin_defaults_to_twice_the_bits():
    assert build("dsh", 32)[2].margin == 64


def test_dpn_polarisation_loss_by_hand_with_multi_label():
    _, _, loss_fn = build("dpn", 4, margin=1.0)
    targets = torch.tensor([[1.0, 1, -1, -1], [-1, 1, 1, -1], [1, -1, 1, 1]], dtype=torch.float64)
    loss_fn.targets = targets
    labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]], dtype=torch.float64)
    total = 0.0
    for i in range(len(U)):
        for c in range(3):
            if labels[i, c]:
                total += sum(max(1.0 - float(U[i, k]) * float(targets[c, k]), 0.0) for k in range(4))
    value = loss_fn(HashOutput(U), labels, torch.arange(4), INFO)["polarisation"].item()
    assert value == pytest.approx(total / len(U), abs=1e-6)


def test_dpn_targets_are_seeded_and_balanced_on_request():
    first = build("dpn", 16)[2].targets
    assert torch.equal(first, build("dpn", 16)[2].targets)
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    balanced = build("dpn", 16, targets="balanced")[2].targets
    assert (balanced.sum(dim=1) == 0).all()


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*valid: .*alpha"):
        REGISTRY.get("hashnet").resolve_options({"alpah": 1})


@pytest.mark.parametrize(
    "name, key, value, valid",
    [
        ("hashnet", "pairing", "thirds", "halves, all"),
        ("hashnet", "schedule", "linear", "authors, dhp"),
        ("dsh", "pair_gradient", "quarter", "full, half"),
        ("dafh", "triplet_reduction", "max", "mean, sum"),
        ("dafh", "classifier_input", "linear2", "linear1, hash"),
        ("dafh", "fusion_pool", "max", "flatten, pool"),
        ("dafh", "mining", "semi-hard", "random, batch-hard"),
        ("dafh-ab-base", "triplet_reduction", "max", "mean, sum"),  # variants inherit the choices
    ],
)
def test_a_value_outside_the_choices_is_rejected_at_plan_time_with_the_valid_ones(name, key, value, valid):
    method = REGISTRY.get(name)
    with pytest.raises(ValueError) as caught:
        method.resolve_options({key: value})
    assert str(caught.value) == f"{name}.{key}={value} is not valid; expected one of {valid}"
    chosen = valid.split(", ")[-1]
    options, train = method.resolve_options({key: chosen})
    assert options == {**method.default_options(), key: chosen} and train == {}
