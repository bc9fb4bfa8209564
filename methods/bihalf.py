"""Bi-half: unsupervised hashing by maximising bit entropy (Li, van Gemert, AAAI 2021; liyunqianggyn/Deep-Unsupervised-
Image-Hashing).

Trained without labels, on a frozen backbone (the authors' VGG16 fc7, frozen; here the run's backbone, frozen, its
features cached). The bi-half layer sends, per bit, the larger half of a batch's values to +1 and the rest to -1 (the
batch median as threshold: every bit splits the batch in half, the most entropy a bit can carry); its backward pass is
straight-through plus the gradient of gamma / (2 N D) ||U - B||^2, which pulls the continuous values towards their
bits. The loss pairs sample i with sample i + N/2 of the batch and matches the cosine of their codes to the cosine of
their features. At test time codes are sign(U): the layer acts in training only.

Deviations: the backbone is the run's (not VGG16), and runs in eval mode (the authors leave fc7's dropout on); with an
odd batch the last sample goes unpaired (as CISiPLab/cisip-FIRe does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class BiHalfSign(torch.autograd.Function):
    """Per column, the top floor(N/2) values -> +1, the rest -> -1; gradient straight through plus gamma (U - B) / (N D)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, gamma: float) -> torch.Tensor:
        n = values.shape[0]
        order = torch.argsort(values, dim=0, descending=True, stable=True)
        ranked = torch.cat(
            [values.new_ones((n // 2, values.shape[1])), -values.new_ones((n - n // 2, values.shape[1]))]
        )
        bits = torch.empty_like(values).scatter_(0, order, ranked)
        ctx.save_for_backward(values, bits)
        ctx.gamma = gamma
        return bits

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, bits = ctx.saved_tensors
        return grad + ctx.gamma * (values - bits) / values.numel(), None


class BiHalfHead(nn.Module):
    """linear -> bi-half in training (sign(linear) at test time); hands its input features on for the loss."""

    def __init__(self, in_features: int, bits: int, gamma: float):
        super().__init__()
        self.linear, self.gamma = nn.Linear(in_features, bits), gamma

    def forward(self, features: torch.Tensor) -> HashOutput:
        values = self.linear(features)
        code = BiHalfSign.apply(values, self.gamma) if self.training else values
        return HashOutput(code, features=features)


class CosineMatching(nn.Module):
    """Mean over the pairs (i, i + N/2) of (cos(b_i, b_j) - cos(x_i, x_j))^2; the features are a fixed target."""

    def forward(self, output: HashOutput, labels, indices, info) -> dict[str, torch.Tensor]:
        half = output.code.shape[0] // 2
        codes, features = output.code, output.features.detach()
        similar = nn.functional.cosine_similarity
        gap = similar(codes[:half], codes[half : 2 * half]) - similar(features[:half], features[half : 2 * half])
        return {"cosine": gap.pow(2).mean()}


@register_method("bihalf")
class BiHalf(Method):
    paper = "Li, van Gemert, Deep Unsupervised Image Hashing by Maximizing Bit Entropy, AAAI 2021"
    supervised = False
    trains_backbone = False
    train = TrainSettings(optimizer="sgd", lr=1e-4, weight_decay=5e-4, momentum=0.9, batch_size=32)

    @dataclass(frozen=True)
    class Options:
        gamma: float = option(6.0, "weight of the pull of the continuous values towards their bits", at_least=0.0)

    def build_head(self, in_features: int) -> nn.Module:
        return BiHalfHead(in_features, self.bits, self.opt.gamma)

    def build_loss(self) -> nn.Module:
        return CosineMatching()
