"""DSH: Deep Supervised Hashing for Fast Image Retrieval (Liu, Wang, Shan, Chen; CVPR 2016).

Reference code: the authors' Caffe release. Also compared: DeepHash-pytorch (DHP).

- Pairs are formed inside the batch (authors); DHP pairs against a memory of all
  training codes, which is slow and memory hungry, and is not done here.
- d_ij = ||u_i - u_j||^2; pair loss 0.5 * s_ij * d_ij + 0.5 * (1 - s_ij) *
  max(m - d_ij, 0), margin m = 2 * bits, averaged over the pairs i < j; plus
  alpha * mean_i || |u_i| - 1 ||_1, alpha = 0.01.
- Pair gradient (``pair_gradient``): the authors' Caffe loss layer computes this
  loss exactly, but its hand-written backward gives half the derivative of the pair
  term, so they trained with the regulariser at twice its stated weight relative to
  the pairs. ``full`` (default): the paper's loss, differentiated by autograd.
  ``half``: the authors' backward; the pair term keeps its value (it is logged) but
  passes back half its gradient.
- Head: linear, no squashing; codes are sign(u).
- Optimiser: the paper trains from scratch with its own small network; here Adam
  1e-4, the suite's common default, with the suite's backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hashbench.model.components import similar
from hashbench.model.method import LinearHead, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class ContrastivePairLoss(nn.Module):
    def __init__(self, margin: float, alpha: float, pair_gradient: str):
        super().__init__()
        self.margin, self.alpha, self.pair_gradient = margin, alpha, pair_gradient

    def forward(self, output, labels, indices, info):
        u = output.code
        s = similar(labels).float()
        distance = torch.cdist(u, u).pow(2)
        pair_loss = 0.5 * s * distance + 0.5 * (1 - s) * (self.margin - distance).clamp(min=0)
        upper = torch.triu(torch.ones_like(s, dtype=torch.bool), diagonal=1)
        pairs = pair_loss[upper].mean()
        if self.pair_gradient == "half":
            pairs = 0.5 * pairs + 0.5 * pairs.detach()  # same value, half the gradient
        regulariser = self.alpha * (u.abs() - 1).abs().sum(dim=1).mean()
        return {"pairs": pairs, "regulariser": regulariser}


@register_method("dsh")
class DSH(Method):
    paper = "Liu, Wang, Shan, Chen, Deep Supervised Hashing for Fast Image Retrieval, CVPR 2016"
    quantization_term = "regulariser"

    @dataclass(frozen=True)
    class Options:
        margin: float | None = option(None, "Hamming-space margin of dissimilar pairs; none: 2 * bits", above=0.0)
        alpha: float = option(0.01, "weight of the regulariser pulling codes to +/-1", at_least=0.0)
        pair_gradient: Literal["full", "half"] = option(
            "full", "the pair term's gradient: full, or half (the authors' Caffe layer)"
        )

    train = TrainSettings(optimizer="adam", lr=1e-4, weight_decay=1e-4, batch_size=64)

    def build_head(self, in_features: int) -> nn.Module:
        return LinearHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        return ContrastivePairLoss(self.opt.margin or 2.0 * self.bits, self.opt.alpha, self.opt.pair_gradient)
