"""DAFH: shapes, attention and fusion switches, Ptanh, focal loss, triplets, and learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.model.components import CBAM, Ptanh, focal_loss, triplet_batches
from hashbench.model.method import HashOutput, MethodContext, StepInfo
from hashbench.model.registry import REGISTRY

INFO = StepInfo(0, 0, 1, 1)


def build(name="dafh", bits=32, image_size=64, backbone="test_efficientnet", n_classes=4, **options):
    cls = REGISTRY.get(name)
    method = cls(MethodContext(bits, n_classes, 20, options, seed=0, image_size=image_size))
    network, loss = method.build(backbone)
    return method, network, loss


@pytest.mark.parametrize(
    "backbone, image_size, mid_shape",
    [
        ("efficientnet_b0", 224, (192, 7, 7)),
        ("efficientnet_b0", 64, (192, 2, 2)),
        ("efficientnet_b2", 224, (208, 7, 7)),
        ("efficientnet_b2", 64, (208, 2, 2)),
        (
            "tf_efficientnet_b6.aa_in1k",
            64,
            (344, 2, 2),
        ),  # the paper's backbone, as the full profile runs it (here from random weights)
    ],
)
def test_shapes_through_dafh(backbone, image_size, mid_shape):
    _, network, _ = build(backbone=backbone, image_size=image_size)
    encoder, head = network.encoder, network.head
    assert encoder.mid_shape == mid_shape  # the penultimate MBConv stage, found at any input size
    flat = int(np.prod(mid_shape))
    assert head.linear1.in_features == encoder.backbone.num_features + flat  # [F_CBAM, F_EfficientNet]
    assert head.linear2.in_features == 512 + flat  # [Linear1, flatten(F_CBAM)]
    network.eval()
    with torch.no_grad():
        output = network(torch.randn(2, 3, image_size, image_size))
    assert output.code.shape == (2, 32) and output.logits.shape == (2, 4)
    assert output.code.abs().max() < 1


def test_pooled_fusion_option_feeds_linear1_the_pooled_map():
    _, network, _ = build(fusion_pool="pool")
    channels, h, w = network.encoder.mid_shape
    assert network.head.linear1.in_features == network.encoder.backbone.num_features + channels
    assert network.head.linear2.in_features == 512 + channels * h * w


def test_with_attention_off_cbam_is_not_in_the_graph():
    _, network, _ = build("dafh-ab-lf")
    assert not any(isinstance(m, CBAM) for m in network.modules())
    _, with_attention, loss = build("dafh")
    cbams = [m for m in with_attention.modules() if isinstance(m, CBAM)]
    assert len(cbams) == 1
    labels = F.one_hot(torch.tensor([0, 1, 0, 1, 2, 3]), 4).float()
    sum(loss(with_attention(torch.randn(6, 3, 64, 64)), labels, torch.arange(6), INFO).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cbams[0].parameters())


def _cbam_by_hand(x: np.ndarray, cbam: CBAM, reference: bool) -> np.ndarray:
    """CBAM written out with numpy: channel gate from the shared MLP, then the spatial gate (batch statistics)."""
    first, second = cbam.channel.mlp[0], cbam.channel.mlp[2]
    w1, w2 = first.weight.detach().numpy()[:, :, 0, 0], second.weight.detach().numpy()[:, :, 0, 0]
    b1 = first.bias.detach().numpy() if reference else 0.0
    b2 = second.bias.detach().numpy() if reference else 0.0

    def mlp(v):
        return w2 @ np.maximum(w1 @ v + b1, 0) + b2

    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    gated = np.stack(
        [x[n] * sigmoid(mlp(x[n].mean((1, 2))) + mlp(x[n].max((1, 2))))[:, None, None] for n in range(len(x))]
    )
    kernel = cbam.spatial.conv.weight.detach().numpy()[0]
    k = kernel.shape[-1]
    maps = np.pad(np.stack([gated.mean(1), gated.max(1)], axis=1), ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    n, _, h, w = gated.shape
    logits = np.array(
        [[[(maps[b, :, i : i + k, j : j + k] * kernel).sum() for j in range(w)] for i in range(h)] for b in range(n)]
    )
    if reference:  # BatchNorm in training mode: the batch's mean and biased variance, eps 1e-5, weight 1, bias 0
        logits = (logits - logits.mean()) / np.sqrt(logits.var() + 1e-5)
    return gated * sigmoid(logits)[:, None]


@pytest.mark.parametrize("reference", [True, False])
def test_cbam_matches_its_equations_with_and_without_the_authors_bias_and_norm(reference):
    torch.manual_seed(0)
    cbam = CBAM(8, reduction=2, kernel_size=3, reference=reference).double()
    for conv in cbam.channel.mlp[::2]:
        if reference:
            torch.nn.init.uniform_(conv.bias, -1, 1)  # non-zero biases, so leaving them out would show
    x = torch.randn(3, 8, 5, 4, dtype=torch.float64)
    np.testing.assert_allclose(cbam(x).detach().numpy(), _cbam_by_hand(x.numpy(), cbam, reference), rtol=1e-10)
    has_norm = any(isinstance(m, torch.nn.BatchNorm2d) for m in cbam.modules())
    assert has_norm == reference and all((conv.bias is not None) == reference for conv in cbam.channel.mlp[::2])


@pytest.mark.parametrize("activation", ["none", "relu"])
def test_linear1_is_affine_by_default_and_a_relu_is_an_option(activation):
    _, network, _ = build(linear1_activation=activation)
    seen = {}
    network.head.linear1.register_forward_hook(lambda m, i, o: seen.update(linear1=o))
    network.head.classifier.register_forward_hook(lambda m, i, o: seen.update(classifier_input=i[0]))
    network.eval()
    with torch.no_grad():
        network(torch.randn(4, 3, 64, 64))
    linear1 = seen["linear1"]
    assert (linear1 < 0).any()  # there is something a ReLU would change
    expected = linear1 if activation == "none" else linear1.clamp(min=0)
    torch.testing.assert_close(seen["classifier_input"], expected, rtol=0, atol=0)


def test_with_fusion_off_the_head_sees_only_the_backbone_output():
    _, network, _ = build("dafh-ab-at")
    final_dim = network.encoder.backbone.num_features
    assert network.head.linear1.in_features == final_dim and network.head.linear2.in_features == 512
    network.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, mid = network.encoder(images)
        reference = network.head((final, mid)).code
        shuffled = network.head((final, torch.randn_like(mid))).code  # the mid-level map has no way in
    assert torch.equal(reference, shuffled)


def test_ptanh_alpha_stays_above_one_through_training_steps():
    layer = Ptanh(8)
    assert layer.alpha.item() == pytest.approx(2.0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=50.0)
    for _ in range(100):  # push alpha down as hard as possible
        optimizer.zero_grad()
        layer.alpha.backward()
        optimizer.step()
        assert layer.alpha.item() > 1.0
    assert layer.alpha.item() < 1.01


def test_dafh_alpha_stays_above_one_when_trained_through_its_loss():
    _, network, loss = build()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.05)
    labels = F.one_hot(torch.tensor([0, 1, 0, 1, 2, 3]), 4).float()
    for _ in range(5):
        optimizer.zero_grad()
        sum(loss(network(torch.randn(6, 3, 64, 64)), labels, torch.arange(6), INFO).values()).backward()
        optimizer.step()
        assert network.head.hash.alpha.item() > 1.0


def test_focal_loss_by_hand_and_gamma_zero_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=torch.float64)
    p = torch.softmax(logits, dim=1)
    by_hand = (-((1 - p[0, 0]) ** 1.5) * torch.log(p[0, 0]) - (1 - p[1, 2]) ** 1.5 * torch.log(p[1, 2])) / 2
    assert focal_loss(logits, targets, 1.5).item() == pytest.approx(by_hand.item(), abs=1e-12)
    assert focal_loss(logits, targets, 0.0).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([0, 2])).item(), abs=1e-12
    )


def test_dafh_loss_is_lambda_times_three_focal_terms_plus_triplet():
    _, _, loss = build(lam=0.5, beta=2.0, margin=0.3)
    code = torch.tensor([[0.5, -0.5], [0.4, -0.6], [-0.9, 0.9]], dtype=torch.float64)
    logits = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.2, 0, 0], [0, 0, 2.0, 0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)
    terms = loss(type("Out", (), {"code": code, "logits": logits})(), labels, torch.arange(3), INFO)
    focal = sum(focal_loss(logits[i : i + 1], labels[i : i + 1], 1.5) for i in range(3))
    triplet = max(float(torch.dist(code[0], code[1]) - torch.dist(code[0], code[2])) + 0.3, 0.0)
    assert terms["focal"].item() == pytest.approx(0.5 * focal.item(), abs=1e-9)
    assert terms["triplet"].item() == pytest.approx(2.0 * triplet, abs=1e-6)


def torch_triplet_distance(x, y, eps=1e-6):
    """||x - y + eps||_2, as torch's triplet_margin_loss measures it (pairwise_distance adds eps to the difference)."""
    return sum((float(a) - float(b) + eps) ** 2 for a, b in zip(x, y)) ** 0.5


def test_triplet_reduction_sum_is_the_papers_sum_over_triplets_and_b_times_the_mean():
    anchors = [[0.5, -0.5], [0.9, 0.1], [-0.3, 0.8]]
    positives = [[0.4, -0.6], [-0.9, 0.2], [-0.2, 0.7]]
    negatives = [[-0.9, 0.9], [0.8, 0.0], [-0.1, 0.9]]  # the first triplet is already satisfied, the other two are not
    code = torch.tensor(anchors + positives + negatives, dtype=torch.float64)
    labels = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 1]), 4).double()
    output = HashOutput(code, torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    hinges = [
        max(torch_triplet_distance(a, p) - torch_triplet_distance(a, n) + 0.5, 0.0)
        for a, p, n in zip(anchors, positives, negatives)
    ]
    assert hinges[0] == 0 and min(hinges[1:]) > 0
    summed = build(triplet_reduction="sum")[2](output, labels, torch.arange(9), INFO)["triplet"].item()
    mean = build()[2](output, labels, torch.arange(9), INFO)["triplet"].item()
    assert summed == pytest.approx(sum(hinges), abs=1e-12)
    assert mean == pytest.approx(sum(hinges) / 3, abs=1e-12)
    assert summed == pytest.approx(3 * mean, abs=1e-12)


def test_classifier_on_the_hash_layer_reads_the_codes_and_the_focal_loss_trains_the_hash_layer():
    torch.manual_seed(0)
    labels = F.one_hot(torch.tensor([0, 1, 0, 1, 2, 3]), 4).float()
    images = torch.randn(6, 3, 64, 64)

    def focal_gradients(network, loss):
        output = network(images)
        head = network.head
        focal = loss(output, labels, torch.arange(6), INFO)["focal"]
        hash_layer = [head.linear2.weight, head.hash.raw_alpha, head.hash.bias]
        return output, torch.autograd.grad(focal, hash_layer, allow_unused=True)

    _, network, loss = build(classifier_input="hash")
    assert network.head.classifier.in_features == 32
    output, gradients = focal_gradients(network, loss)
    assert output.logits.shape == (6, 4)
    assert torch.equal(output.logits, network.head.classifier(output.code))
    assert all(g is not None and g.abs().sum() > 0 for g in gradients)

    _, network, loss = build()  # section 3.3.2: the classifier reads Linear1, upstream of the hash layer
    assert network.head.classifier.in_features == 512
    _, gradients = focal_gradients(network, loss)
    assert all(g is None for g in gradients)


def test_triplet_sampler_respects_classes_and_uses_every_anchor_once():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # class 3 has a single item
    rng = np.random.default_rng(0)
    for _ in range(20):
        batches = list(triplet_batches(labels, 2, rng))
        anchors = np.concatenate([b[:2] for b in batches])
        assert len(set(anchors)) == len(anchors) == 10
        for batch in batches:
            anchor, positive, negative = batch[:2], batch[2:4], batch[4:]
            assert (labels[positive] == labels[anchor]).all()
            assert (labels[negative] != labels[anchor]).all()
            alone = labels[anchor] == 3
            assert (positive[~alone] != anchor[~alone]).all()  # another item of the class whenever there is one


def test_batch_hard_mining_trains():
    _, network, loss = build(mining="batch-hard")
    labels = F.one_hot(torch.tensor([0, 1, 0, 1, 2, 3]), 4).float()
    terms = loss(network(torch.randn(6, 3, 64, 64)), labels, torch.arange(6), INFO)
    assert torch.isfinite(terms["triplet"]) and terms["triplet"] > 0


def test_dafh_learns_on_the_phantom_at_16_32_48_bits(default_phantom, tmp_path, chance):
    from hashbench.api import RunRequest, run_grid

    floor = chance(default_phantom.dataset)  # measured: MAP@10 0.22, mAP@all 0.11
    outcomes = run_grid(
        RunRequest(methods=["dafh"], bits=[16, 32, 48], epochs=5, profile="quick"), default_phantom.dataset, tmp_path
    )
    for outcome in outcomes:
        assert outcome.status == "done", outcome.error
        # measured after 5 quick epochs: MAP@10 0.39, 0.50, 0.60 and mAP@all 0.41, 0.54, 0.58 at 16, 32, 48 bits
        assert outcome.metrics["map@10"] > floor["map@10"] + 0.08, outcome.config.bits
        assert outcome.metrics["map@all"] > 3 * floor["map@all"], outcome.config.bits


@pytest.mark.parametrize("name", [n for n in REGISTRY.names("dafh*")])
def test_every_variant_trains_and_encodes_through_the_engine(name, tiny_phantom, tmp_path):
    from hashbench.api import RunRequest, run_grid

    light = {
        k: v
        for k, v in {"backbone": "test_resnet", "vit": "test_vit"}.items()
        if REGISTRY.get(name).default_options()[k]
    }
    request = RunRequest(
        methods=[name],
        bits=[32],
        epochs=1,
        dataset="phantom-tiny-seed0",
        overrides={name: {**light, "batch_size": 16}},
        profile="quick",
    )
    outcome = run_grid(request, tiny_phantom.dataset, tmp_path)[0]
    assert outcome.status == "done", outcome.error
    assert 0 <= outcome.metrics["map@10"] <= 1
