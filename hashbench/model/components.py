"""Building blocks any method can compose: attention, a learnable tanh, focal loss, triplets.

DAFH and its variants are compositions of these; so can a user's method be.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def similar(labels: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """s_ij: True where items share a label (one-hot or multi-hot rows), within a batch or against ``others``."""
    return labels @ (labels if others is None else others).T > 0


class ChannelAttention(nn.Module):
    """CBAM's channel attention: a shared MLP over average- and max-pooled channels (biases as in the authors' code)."""

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(weights)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: a k x k convolution over the channel mean and max maps.

    ``batch_norm``: the CBAM authors' code normalises the convolution's output
    (BatchNorm, momentum 0.01) before the sigmoid; the paper's equations do not.
    """

    def __init__(self, kernel_size: int = 7, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(1, momentum=0.01) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(maps)))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel, then spatial attention.

    ``reference`` (default): as the authors' code (MLP biases, BatchNorm in the spatial
    gate); off: the bare equations, neither.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, reference: bool = True):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction, bias=reference)
        self.spatial = SpatialAttention(kernel_size, batch_norm=reference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class Ptanh(nn.Module):
    """H = tanh(alpha * z + b) with a learnable scalar alpha kept above 1.

    alpha = 1.001 + softplus(p): the 0.001 keeps it strictly above 1 even where
    softplus underflows to 0 in float32.
    """

    FLOOR = 1.001

    def __init__(self, bits: int, initial_alpha: float = 2.0):
        super().__init__()
        self.raw_alpha = nn.Parameter(torch.tensor(float(np.log(np.expm1(initial_alpha - self.FLOOR)))))
        self.bias = nn.Parameter(torch.zeros(bits))

    @property
    def alpha(self) -> torch.Tensor:
        return self.FLOOR + F.softplus(self.raw_alpha)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * z + self.bias)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal loss (Lin et al., ICCV 2017), mean over the batch: -sum_c y_c (1 - p_c)^gamma log p_c.

    ``targets`` is one-hot, a distribution, or multi-hot (spread evenly over an image's labels);
    gamma = 0 is cross-entropy.
    """
    log_p = F.log_softmax(logits, dim=1)
    targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1)
    return -(targets * (1 - log_p.exp()).pow(gamma) * log_p).sum(dim=1).mean()


def triplet_batches(labels: np.ndarray, triplets: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch of batches [anchors | positives | negatives], ``triplets`` of each.

    Every training item is an anchor once (last partial batch dropped); its positive
    is another item of its class (itself only if it is alone), its negative an item
    of another class. Multi-hot rows: the positive shares a label with the anchor
    (through one of its labels drawn at random), the negative shares none.
    """
    labels = np.asarray(labels)
    anchors = rng.permutation(len(labels))
    if labels.ndim == 2:
        positives, negatives = _multi_label_pairs(labels.astype(bool), anchors, rng)
    else:
        positives, negatives = anchors.copy(), anchors.copy()
        for label in np.unique(labels):
            members, others = np.flatnonzero(labels == label), np.flatnonzero(labels != label)
            mine = np.flatnonzero(labels[anchors] == label)
            positives[mine] = _other_member(members, anchors[mine], rng)
            if len(others):
                negatives[mine] = others[rng.integers(0, len(others), len(mine))]
    for start in range(0, max(len(anchors) - triplets, 0) + 1, triplets):
        window = slice(start, start + triplets)
        yield np.concatenate([anchors[window], positives[window], negatives[window]])


def _other_member(members: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each anchor (one of the sorted ``members``), another member drawn uniformly; the anchor itself if it is alone."""
    if len(members) < 2:
        return anchors.copy()
    rank = np.searchsorted(members, anchors)
    draw = rng.integers(0, len(members) - 1, len(anchors))
    return members[draw + (draw >= rank)]


def _multi_label_pairs(
    labels: np.ndarray, anchors: np.ndarray, rng: np.random.Generator, tries: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Positives through a random label of each anchor; negatives drawn until they share no label (else searched for)."""
    chosen = np.argmax(rng.random(labels.shape) * labels[anchors], axis=1)  # a uniform pick among the anchor's labels
    positives = anchors.copy()
    for label in np.unique(chosen[labels[anchors].any(axis=1)]):
        mine = np.flatnonzero((chosen == label) & labels[anchors, label])
        positives[mine] = _other_member(np.flatnonzero(labels[:, label]), anchors[mine], rng)
    negatives = rng.integers(0, len(labels), len(anchors))
    for _ in range(tries):
        clash = np.flatnonzero((labels[negatives] & labels[anchors]).any(axis=1))
        if not len(clash):
            break
        negatives[clash] = rng.integers(0, len(labels), len(clash))
    for position in np.flatnonzero(
        (labels[negatives] & labels[anchors]).any(axis=1)
    ):  # rare: few items share no label with it
        strangers = np.flatnonzero(~(labels & labels[anchors[position]]).any(axis=1))
        negatives[position] = strangers[rng.integers(len(strangers))] if len(strangers) else anchors[position]
    return positives, negatives


def batch_hard_triplets(codes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every item of the batch: itself, its farthest positive and its nearest negative (Hermans et al., 2017)."""
    distances = torch.cdist(codes, codes)
    same = similar(labels)
    eye = torch.eye(len(codes), dtype=torch.bool, device=codes.device)
    hardest_positive = distances.masked_fill(~same | eye, float("-inf")).argmax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).argmin(dim=1)
    valid = (same & ~eye).any(dim=1) & (~same).any(dim=1)
    index = torch.arange(len(codes), device=codes.device)[valid]
    return codes[index], codes[hardest_positive[index]], codes[hardest_negative[index]]


def hswd(codes: torch.Tensor, target: str = "random") -> torch.Tensor:
    """HSWD (Doan et al., One Loss for Quantization, CVPR 2022): the squared 1-D Wasserstein distance, per bit, between
    the batch's values and a sample of +/-1 bits, averaged over the bits: mean over (i, k) of (U_(i)k - T_(i)k)^2 with
    each column sorted. ``random``: T fair coin flips drawn from torch's generator (the authors'), so the term is not
    exactly zero even at perfect codes; ``balanced``: T exactly half -1, half +1 per bit (zero at balanced +/-1 codes)."""
    n, bits = codes.shape
    if target == "random":
        sample = torch.where(torch.rand(n, bits, device=codes.device) < 0.5, -1.0, 1.0).to(codes.dtype)
        sample = sample.sort(dim=0).values
    elif target == "balanced":
        sample = torch.cat([-codes.new_ones(n // 2, bits), codes.new_ones(n - n // 2, bits)])
    else:
        raise ValueError(f"hswd target must be random or balanced, not {target!r}")
    return (codes.sort(dim=0).values - sample).pow(2).mean()


class HSWDQuantization(nn.Module):
    """A method's loss with its own quantisation term (``replaced``, if it has one) swapped for weight x HSWD."""

    def __init__(self, loss: nn.Module, replaced: str, weight: float, target: str):
        super().__init__()
        self.loss, self.replaced, self.weight, self.target = loss, replaced, weight, target

    def forward(self, output, labels, indices, info) -> dict[str, torch.Tensor]:
        terms = {k: v for k, v in self.loss(output, labels, indices, info).items() if k != self.replaced}
        terms["hswd"] = self.weight * hswd(output.code, self.target)
        return terms


class _SignStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @staticmethod
    def backward(ctx, grad):
        return grad


def sign_straight_through(u: torch.Tensor) -> torch.Tensor:
    """sign(u) (+1 at 0, as hashbench binarises) forward; the identity's gradient backward (GreedyHash, CIBHash)."""
    return _SignStraightThrough.apply(u)
