"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang, Yu; ICCV 2017).

Reference code: thuml/HashNet (Caffe and PyTorch). Also compared: DeepHash-pytorch (DHP).

- Head: linear -> tanh(beta * z) (the common TanhHead); beta follows the authors' continuation,
  beta = sqrt(1 + gamma * iteration), updated every ``beta_step`` iterations
  (gamma = 0.005, step 200). ``schedule="dhp"`` gives DHP's sqrt(floor(epoch / 20) + 1).
- Loss: weighted pairwise cross-entropy over all pairs of the batch (self pairs
  included, as in the authors' code), theta_ij = alpha * <u_i, u_j>,
  l_ij = log(1 + exp(theta_ij)) - s_ij * theta_ij; similar pairs weigh |S| / |S1|,
  dissimilar |S| / |S0|; the loss is the weighted sum divided by |S|.
  alpha = 10 / bits (authors); DHP fixes alpha = 0.1 (``alpha=0.1``).
- Optimiser (authors): SGD, Nesterov, momentum 0.9, weight decay 5e-4, hash layer
  lr x10. Their base lr (3e-4) is for fine-tuning ImageNet weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.components import similar
from hashbench.method import HashNetwork, Method, StepInfo, TrainSettings
from hashbench.registry import register_method


class WeightedPairwiseLoss(nn.Module):
    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, output, labels, indices, info):
        u = output.code
        s = similar(labels).float()
        theta = self.alpha * u @ u.T
        pair_loss = F.softplus(theta) - s * theta  # log(1 + e^theta) - s * theta, stable
        n_similar, n_total = s.sum(), s.numel()
        n_dissimilar = n_total - n_similar
        weights = torch.where(s > 0, n_total / n_similar.clamp(min=1), n_total / n_dissimilar.clamp(min=1))
        return {"pairwise": (weights * pair_loss).sum() / n_total}


@register_method("hashnet")
class HashNet(Method):
    paper = "Cao et al., HashNet: Deep Learning to Hash by Continuation, ICCV 2017"
    options = {"alpha": 0.0, "gamma": 0.005, "beta_step": 200, "schedule": "authors"}  # alpha 0: 10 / bits
    train = TrainSettings(optimizer="sgd", lr=3e-4, weight_decay=5e-4, momentum=0.9, nesterov=True, batch_size=64, head_lr_scale=10.0)

    def build_loss(self) -> nn.Module:
        return WeightedPairwiseLoss(self.opt["alpha"] or 10.0 / self.bits)

    def schedule(self, model: HashNetwork, info: StepInfo) -> None:
        if self.opt["schedule"] == "dhp":
            beta = math.sqrt(info.epoch // 20 + 1)
        elif self.opt["schedule"] == "authors":
            beta = math.sqrt(1.0 + self.opt["gamma"] * (info.step // self.opt["beta_step"]) * self.opt["beta_step"])
        else:
            raise ValueError(f"hashnet: schedule={self.opt['schedule']!r}; valid: authors, dhp")
        model.head.scale.fill_(beta)
