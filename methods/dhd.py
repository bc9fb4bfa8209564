"""DHD: Deep Hash Distillation (Jang, Gu, Cho; ECCV 2022; youngkyunJang/Deep-Hash-Distillation).

Each image is seen twice per step: weakly augmented (the teacher's view: the augmentation at ``teacher_strength``
of its magnitudes, 0.5 as the authors' for all backbones but AlexNet) and fully augmented (the student's view),
through the same network. The head is linear (no bias) -> LayerNorm -> tanh, with one learnable proxy per class
(initialised Xavier-uniform with tanh's gain 5/3). On the teacher's codes x_t: cross-entropy of the softmax over
cos(x_t, proxy_c) / ``temperature`` (0.2) against the labels divided by their count; plus ``distillation`` (0.1) x
mean(1 - cos(x_s, x_t)), the student pulled to the teacher held fixed; plus ``quantisation`` (0.1) x the Gaussian
BCE term: with g+(x) = exp(-(x - 1)^2 / (2 sigma^2)) and g-(x) = exp(-(x + 1)^2 / (2 sigma^2)), sigma 0.5, the
binary cross-entropy of g+ against [x > 0] plus that of g- against [x < 0], each a mean over all entries. Adam
3e-4 for the head and proxies, 0.05x for the backbone, weight decay 1e-5, batch 128 (authors). Test codes: sign.

Deviations: the views come from the suite's augmentation (zoom, blur, brightness on single-channel slices) where
the authors crop, flip, jitter colour and turn grey; no flip (a slice's left and right are anatomy); the authors'
cosine schedule, stepped once an epoch from epoch 10 with a period of twice the steps of one epoch, is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method
from hashbench.training.augment import Augmentation


class ProxyHead(nn.Module):
    """linear (no bias) -> LayerNorm -> tanh; class logits are the cosines of the codes with learnable proxies."""

    def __init__(self, in_features: int, bits: int, n_classes: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(in_features, bits, bias=False), nn.LayerNorm(bits)
        self.proxies = nn.Parameter(torch.empty(n_classes, bits))
        nn.init.xavier_uniform_(self.proxies, gain=nn.init.calculate_gain("tanh"))

    def forward(self, features: torch.Tensor) -> HashOutput:
        code = torch.tanh(self.norm(self.linear(features)))
        return HashOutput(code, F.normalize(code, dim=1) @ F.normalize(self.proxies, dim=1).T)


def gaussian_bce(codes: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """BCE(g+(x), [x > 0]) + BCE(g-(x), [x < 0]): each value pulled to the nearer of +1 and -1."""
    positive = (codes.detach() > 0).to(codes.dtype)
    near_plus = torch.exp(-((codes - 1) ** 2) / (2 * sigma**2))
    near_minus = torch.exp(-((codes + 1) ** 2) / (2 * sigma**2))
    return F.binary_cross_entropy(near_plus, positive) + F.binary_cross_entropy(near_minus, 1 - positive)


class DistillationLoss(nn.Module):
    def __init__(self, temperature: float, distillation: float, quantisation: float):
        super().__init__()
        self.temperature, self.distillation, self.quantisation = temperature, distillation, quantisation

    def forward(self, output, labels, indices, info) -> dict[str, torch.Tensor]:
        teacher, student = output.code.chunk(2)
        logits = output.logits.chunk(2)[0] / self.temperature
        targets = labels / labels.sum(dim=1, keepdim=True)
        return {
            "proxy": -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean(),
            "distillation": self.distillation * (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean(),
            "bce": self.quantisation * gaussian_bce(teacher),
        }


@register_method("dhd")
class DHD(Method):
    paper = "Jang, Gu, Cho, Deep Hash Distillation for Image Retrieval, ECCV 2022"
    quantization_term = "bce"
    view_augmentation = Augmentation(scale=0.5, brightness=0.3, blur=2.0)
    train = TrainSettings(optimizer="adam", lr=1.5e-5, weight_decay=1e-5, batch_size=128, head_lr_scale=20.0)

    @dataclass(frozen=True)
    class Options:
        temperature: float = option(0.2, "temperature of the proxy cosines", above=0.0)
        distillation: float = option(0.1, "weight of the student-teacher cosine distance", at_least=0.0)
        quantisation: float = option(0.1, "weight of the Gaussian BCE quantisation term", at_least=0.0)
        teacher_strength: float = option(
            0.5, "the teacher view's augmentation as a share of the student's (authors: 0.5; AlexNet 0.2)", at_least=0.0
        )

    def view_strengths(self) -> tuple[float, ...]:
        return (self.opt.teacher_strength, 1.0)

    def build_head(self, in_features: int) -> nn.Module:
        return ProxyHead(in_features, self.bits, self.context.n_classes)

    def build_loss(self) -> nn.Module:
        return DistillationLoss(self.opt.temperature, self.opt.distillation, self.opt.quantisation)
