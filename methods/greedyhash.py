"""GreedyHash: Towards Fast Optimization for Accurate Hash Coding in CNN (Su, Zhang, Huang, Tian; NeurIPS 2018).

Reference code: ssppp/GreedyHash.

- Head: linear to ``bits`` (u); the code is sign(u) in the forward pass, and the
  gradient passes through the sign unchanged (straight through: the greedy
  principle), into a linear classifier without bias that reads the codes.
- Loss (authors): cross-entropy of the classifier on sign(u), plus ``penalty`` x
  mean(| |u| - 1 |^3) pulling u towards the codes it is read as: 0.1 as in the authors'
  CIFAR-10 run, whose ten classes are nearer the few of a medical collection than
  ImageNet-100's hundred (their ImageNet run: 1, ``--set greedyhash.penalty=1``).
  Multi-label targets are spread evenly over an image's labels.
- Optimiser (authors, CIFAR-10): SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
  batch 32, lr x0.1 after 30 of 50 epochs (60 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hashbench.model.components import focal_loss, sign_straight_through
from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class GreedyHead(nn.Module):
    def __init__(self, in_features: int, bits: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, bits)
        self.classifier = nn.Linear(bits, n_classes, bias=False)

    def forward(self, features: torch.Tensor) -> HashOutput:
        u = self.linear(features)
        return HashOutput(u, self.classifier(sign_straight_through(u)))


class GreedyLoss(nn.Module):
    def __init__(self, penalty: float):
        super().__init__()
        self.penalty = penalty

    def forward(self, output, labels, indices, info):
        classification = focal_loss(output.logits, labels, gamma=0.0)  # cross-entropy
        return {"classification": classification, "penalty": self.penalty * (output.code.abs() - 1).abs().pow(3).mean()}


@register_method("greedyhash")
class GreedyHash(Method):
    paper = (
        "Su, Zhang, Huang, Tian, Greedy Hash: Towards Fast Optimization for Accurate Hash Coding in CNN, NeurIPS 2018"
    )
    quantization_term = "penalty"

    @dataclass(frozen=True)
    class Options:
        penalty: float = option(
            0.1, "weight of mean(| |u| - 1 |^3): the authors' CIFAR-10 run; their ImageNet run: 1", at_least=0.0
        )

    train_follows = "the authors' CIFAR-10 run"
    train = TrainSettings(
        optimizer="sgd", lr=1e-3, weight_decay=5e-4, momentum=0.9, batch_size=32, lr_schedule="step:60%:0.1"
    )

    def build_head(self, in_features: int) -> nn.Module:
        return GreedyHead(in_features, self.bits, self.context.n_classes)

    def build_loss(self) -> nn.Module:
        return GreedyLoss(self.opt.penalty)
