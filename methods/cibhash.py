"""CIBHash: unsupervised hashing with a contrastive information bottleneck (Qiu, Su, Ou, Yu, Chen; IJCAI 2021;
zexuanqiu/CIBHash).

Trained without labels, on two augmented views of each image. The backbone is frozen (the authors' VGG16 up to fc7;
here the run's backbone, in eval mode) but runs on every augmented view, so no feature cache can stand in for it.
A two-layer head (linear to 1024, ReLU, linear to ``bits``) gives a, the bits' probabilities p = sigmoid(a) and the
codes z = sign(p - 1/2), whose gradient passes to p unchanged (straight through; the authors' code thresholds where
the paper draws z from Bernoulli(p): ``binarise=sample``). The loss is the NT-Xent contrastive loss between the two views' codes (cosine similarity over
``temperature`` 0.3; each code's positive is its other view, the other 2B - 2 codes its negatives; the mean over the
2B anchors), plus ``beta`` (0.001) x the symmetric Kullback-Leibler divergence between the views' bit probabilities,
each against the other held fixed. Test codes: sign(a). Adam 1e-3, batch 64, no weight decay (authors).

The head's output is p - 1/2 (its sign is the code, p is recovered for the loss).

Deviations: the backbone is the run's, in eval mode (the authors' VGG16 keeps fc7's dropout on). The views are drawn
with the suite's augmentation on single-channel slices: a zoom of 0.6 to 1.4 for the authors' random crop of half to
all of the image (a zoom of 1 to 1.4), their blur (sigma up to 2, on every view rather than half), a brightness shift
of up to 0.2 for their colour jitter; no horizontal flip (a slice's left and right are anatomy, not symmetry), no
grayscale or hue (the slices have no colour). No validation-based early stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import sign_straight_through
from hashbench.model.method import FrozenFeatures, HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method
from hashbench.training.augment import Augmentation


class ProbabilityHead(nn.Module):
    """linear -> ReLU -> linear -> sigmoid, returned centred: p - 1/2."""

    def __init__(self, in_features: int, bits: int, hidden: int = 1024):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, bits))

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(torch.sigmoid(self.layers(features)) - 0.5)


def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """The mean over the 2B anchors of the cross-entropy of picking the anchor's other view among the 2B - 1 others,
    by cosine similarity over ``temperature``."""
    codes = F.normalize(torch.cat([first, second]), dim=1)
    n = len(first)
    similarity = codes @ codes.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=codes.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(codes.device)
    return F.cross_entropy(similarity, positives)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(p || q) of independent bits, summed over the bits, averaged over the batch (1e-8 inside each log, as the
    authors)."""
    terms = p * torch.log((p + eps) / (q + eps)) + (1 - p) * torch.log((1 - p + eps) / (1 - q + eps))
    return terms.sum(dim=1).mean()


class ContrastiveBottleneck(nn.Module):
    def __init__(self, temperature: float, beta: float, sample: bool):
        super().__init__()
        self.temperature, self.beta, self.sample = temperature, beta, sample

    def forward(self, output, labels, indices, info) -> dict[str, torch.Tensor]:
        first, second = (output.code + 0.5).chunk(2)  # the views' bit probabilities
        thresholds = [torch.rand_like(p) if self.sample else torch.full_like(p, 0.5) for p in (first, second)]
        codes = [sign_straight_through(p - t) for p, t in zip((first, second), thresholds)]
        kl = (bernoulli_kl(first, second.detach()) + bernoulli_kl(second, first.detach())) / 2
        return {"contrastive": nt_xent(*codes, self.temperature), "kl": self.beta * kl}


@register_method("cibhash")
class CIBHash(Method):
    paper = "Qiu, Su, Ou, Yu, Chen, Unsupervised Hashing with Contrastive Information Bottleneck, IJCAI 2021"
    supervised = False
    view_augmentation = Augmentation(scale=0.4, brightness=0.2, blur=2.0)
    not_freezable = "its two augmented views of every image need the backbone on the images, not cached features"
    train = TrainSettings(optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=64)

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(0.3, "NT-Xent temperature (the authors' grid: 0.2, 0.3, 0.4)", above=0.0)
        beta: float = option(0.001, "weight of the views' symmetric Kullback-Leibler divergence", at_least=0.0)
        binarise: Literal["threshold", "sample"] = option(
            "threshold", "training codes: sign(p - 1/2) as the authors' code, or a Bernoulli(p) draw as the paper"
        )

    def view_strengths(self) -> tuple[float, ...]:
        return (1.0, 1.0)

    def build_encoder(self, backbone: str) -> tuple[nn.Module, int]:
        encoder, width = super().build_encoder(backbone)
        return FrozenFeatures(encoder), width

    def build_head(self, in_features: int) -> nn.Module:
        return ProbabilityHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        return ContrastiveBottleneck(self.opt.temperature, self.opt.beta, self.opt.binarise == "sample")
