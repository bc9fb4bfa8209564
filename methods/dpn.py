"""DPN: Deep Polarized Network for Supervised Learning of Accurate Binary Hashing Codes (Fan et al.; IJCAI 2020).

Reference code: kamwoh/DPN. Also compared: DeepHash-pytorch (DHP).

- One target code t_c in {-1, +1}^bits per class, drawn once from the run's seed:
  sign(randn) as the authors do (``targets="random"``), or DHP's rows with exactly
  bits / 2 entries of -1 (``targets="balanced"``).
- Polarisation loss: sum over bits of max(m - u * t, 0), averaged over the batch,
  m = 1. Multi-label samples sum the loss over their labels (the authors' rule;
  DHP's sign(y T) is a variant not implemented here).
- Head: linear without bias (authors); codes are sign(u).
- Optimiser (authors): SGD lr 1e-4, momentum 0.9, weight decay 5e-4, batch 256,
  lr x0.1 at half the epochs (``lr_schedule``; ``constant`` turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hashbench.model.method import LinearHead, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


def class_targets(n_classes: int, bits: int, seed: int, balanced: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if not balanced:
        targets = torch.randn(n_classes, bits, generator=generator).sign()
        targets[targets == 0] = 1
        return targets
    rows = torch.ones(n_classes, bits)
    for row in rows:
        row[torch.randperm(bits, generator=generator)[: bits // 2]] = -1
    return rows


class PolarisationLoss(nn.Module):
    def __init__(self, targets: torch.Tensor, margin: float):
        super().__init__()
        self.margin = margin
        self.register_buffer("targets", targets)

    def forward(self, output, labels, indices, info):
        u = output.code
        per_label = (self.margin - u[:, None, :] * self.targets[None, :, :]).clamp(min=0).sum(dim=2)  # (B, C)
        return {"polarisation": (per_label * labels).sum(dim=1).mean()}


@register_method("dpn")
class DPN(Method):
    paper = "Fan et al., Deep Polarized Network for Supervised Learning of Accurate Binary Hashing Codes, IJCAI 2020"

    @dataclass(frozen=True)
    class Options:
        margin: float = option(1.0, "polarisation margin", at_least=0.0)
        targets: Literal["random", "balanced"] = option(
            "random", "class target codes: random bits (authors), or balanced bits"
        )

    train = TrainSettings(
        optimizer="sgd", lr=1e-4, weight_decay=5e-4, momentum=0.9, batch_size=256, lr_schedule="step:50%:0.1"
    )

    def build_head(self, in_features: int) -> nn.Module:
        return LinearHead(in_features, self.bits, bias=False)

    def build_loss(self) -> nn.Module:
        targets = class_targets(self.context.n_classes, self.bits, self.context.seed, self.opt.targets == "balanced")
        return PolarisationLoss(targets, self.opt.margin)
