"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu; ICCV 2017).

Reference code: thuml/HashNet (Caffe and PyTorch). Also compared: DeepHash-pytorch (DHP).

- Head: linear -> tanh(beta * z) (the common TanhHead); beta follows the authors' continuation,
  beta = sqrt(1 + gamma * iteration), updated every ``beta_step`` iterations
  (gamma = 0.005, step 200). ``schedule="dhp"`` gives DHP's sqrt(floor(epoch / 20) + 1).
- Loss: weighted pairwise cross-entropy over the pairs S of the batch, theta_ij =
  alpha * <u_i, u_j>, l_ij = log(1 + exp(theta_ij)) - s_ij * theta_ij; similar pairs
  weigh |S| / |S1|, dissimilar |S| / |S0| (S1, S0: the similar and dissimilar pairs
  of S); the loss is ``loss_scale`` x the weighted sum / |S|.
  alpha = 10 / bits (authors); DHP fixes alpha = 0.1 (``alpha=0.1``).
- Pairs (``pairing``): ``halves`` (default, the authors'): the first half of the
  batch against the second half, as their Caffe code does (their PyTorch code pairs
  two loaders), so no item is paired with itself; an odd batch's last item is left
  out. ``all``: every ordered pair of the batch, self pairs included (DHP's u @ u.T).
- Scale (``loss_scale``): 1.0 (default) is the paper's weighted maximum likelihood,
  which is also the authors' ``pairwise_loss_updated`` and DHP's loss. The authors'
  train.py optimises their older ``pairwise_loss``, exactly half of it, so the same
  lr steps half as far; ``loss_scale=0.5`` reproduces that.
- Optimiser (authors): SGD, Nesterov, momentum 0.9, weight decay 5e-4, hash layer
  lr x10, lr x0.5 every 2,000 iterations (``lr_schedule``; ``constant`` turns it off).
  Their base lr (3e-4) is for fine-tuning ImageNet weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import similar
from hashbench.model.method import HashNetwork, Method, StepInfo, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class WeightedPairwiseLoss(nn.Module):
    def __init__(self, alpha: float, pairing: str, scale: float):
        super().__init__()
        self.alpha, self.pairing, self.scale = alpha, pairing, scale

    def forward(self, output, labels, indices, info):
        rows, columns, row_labels, column_labels = self.pairs(output.code, labels)
        s = similar(row_labels, column_labels).to(rows.dtype)
        theta = self.alpha * rows @ columns.T
        pair_loss = F.softplus(theta) - s * theta  # log(1 + e^theta) - s * theta, stable
        n_similar, n_total = s.sum(), s.numel()
        n_dissimilar = n_total - n_similar
        weights = torch.where(s > 0, n_total / n_similar.clamp(min=1), n_total / n_dissimilar.clamp(min=1))
        return {"pairwise": self.scale * (weights * pair_loss).sum() / n_total}

    def pairs(
        self, u: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes and labels of the pairs' rows and columns: the batch's two halves, or the whole batch twice."""
        if self.pairing == "all":
            return u, u, labels, labels
        half = len(u) // 2
        return u[:half], u[half : 2 * half], labels[:half], labels[half : 2 * half]


@register_method("hashnet")
class HashNet(Method):
    paper = "Cao et al., HashNet: Deep Learning to Hash by Continuation, ICCV 2017"

    @dataclass(frozen=True)
    class Options:
        alpha: float | None = option(None, "sigmoid sharpness of the pair likelihood; none: 10 / bits", above=0.0)
        gamma: float = option(0.005, "growth of the tanh scale beta (authors' schedule)", at_least=0.0)
        beta_step: int = option(200, "steps between beta updates (authors' schedule)", at_least=1)
        schedule: Literal["authors", "dhp"] = option(
            "authors", "beta continuation: the authors' code, or DeepHash-pytorch's sqrt(epoch // 20 + 1)"
        )
        pairing: Literal["halves", "all"] = option(
            "halves", "pairs between the batch's two halves (authors), or all pairs"
        )
        loss_scale: float = option(1.0, "multiplier of the loss", above=0.0)

    train = TrainSettings(
        optimizer="sgd",
        lr=3e-4,
        weight_decay=5e-4,
        momentum=0.9,
        nesterov=True,
        batch_size=64,
        head_lr_scale=10.0,
        lr_schedule="step:2000it:0.5",
    )

    def build_loss(self) -> nn.Module:
        return WeightedPairwiseLoss(self.opt.alpha or 10.0 / self.bits, self.opt.pairing, self.opt.loss_scale)

    def schedule(self, model: HashNetwork, info: StepInfo) -> None:
        if self.opt.schedule == "dhp":
            beta = math.sqrt(info.epoch // 20 + 1)
        else:
            beta = math.sqrt(1.0 + self.opt.gamma * (info.step // self.opt.beta_step) * self.opt.beta_step)
        model.head.scale.fill_(beta)
