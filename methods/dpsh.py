"""DPSH: Feature Learning based Deep Supervised Hashing with Pairwise Labels (Li, Wang, Kang; IJCAI 2016).

Reference code: jiangqy/DPSH-pytorch. Also compared: DeepHash-pytorch (DHP).

- A memory U (n_train x bits) holds the latest code of every training sample, and
  Y their labels; each step first writes the batch into U at its indices, then
  theta = 0.5 * u U^T and the loss is mean(log(1 + exp(theta)) - s * theta) +
  eta * mean((u - sign(u))^2) over the batch against the whole training set.
- eta: the paper's lambda = 10 in sum form is eta = lambda * bits / n_train in this
  mean form (``eta`` overrides it; DHP fixes eta = 0.1, about 3x too strong at 16 bits
  on 5,000 samples).
- Head: linear, no squashing (the authors' network); codes are sign(u).
- Optimiser (authors): SGD lr 0.05, weight decay 1e-5, batch 128, lr x0.1 every
  50 epochs (``lr_schedule``; it never fires within the paper's 50 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import similar
from hashbench.model.method import LinearHead, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class PairwiseMemoryLoss(nn.Module):
    def __init__(self, n_train: int, bits: int, n_classes: int, eta: float):
        super().__init__()
        self.eta = eta
        self.register_buffer("codes", torch.zeros(n_train, bits))
        self.register_buffer("labels", torch.zeros(n_train, n_classes))

    def forward(self, output, labels, indices, info):
        u = output.code
        self.codes[indices] = u.detach()
        self.labels[indices] = labels
        s = similar(labels, self.labels).float()
        theta = 0.5 * u @ self.codes.T
        likelihood = (F.softplus(theta) - s * theta).mean()
        quantization = self.eta * (u - u.detach().sign()).pow(2).mean()
        return {"likelihood": likelihood, "quantization": quantization}


@register_method("dpsh")
class DPSH(Method):
    paper = "Li, Wang, Kang, Feature Learning based Deep Supervised Hashing with Pairwise Labels, IJCAI 2016"
    quantization_term = "quantization"

    @dataclass(frozen=True)
    class Options:
        lam: float = option(10.0, "the authors' quantisation weight, from which eta is derived", at_least=0.0)
        eta: float | None = option(
            None, "weight of the quantisation term; none: lam * bits / training images", above=0.0
        )

    train = TrainSettings(
        optimizer="sgd", lr=0.05, weight_decay=1e-5, momentum=0.0, batch_size=128, lr_schedule="step:50ep:0.1"
    )

    def build_head(self, in_features: int) -> nn.Module:
        return LinearHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        eta = self.opt.eta or self.opt.lam * self.bits / self.context.n_train
        return PairwiseMemoryLoss(self.context.n_train, self.bits, self.context.n_classes, eta)
