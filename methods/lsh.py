"""LSH: random Gaussian projections and a sign (Charikar, STOC 2002; Datar et al., SoCG 2004), the floor every learned hash must clear.

Training-free: codes = sign((x - mean) W), W drawn once from the run's seed, the
mean taken over the training features (centring, as the hashing baselines of ITQ's
authors do, splits each projection near the data's middle). Features: raw pixels by
default, a frozen backbone's with ``--set lsh.features=backbone``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hashbench.model.method import TrainingFreeMethod
from hashbench.model.registry import register_method


@register_method("lsh")
class LSH(TrainingFreeMethod):
    paper = "Charikar, Similarity Estimation Techniques from Rounding Algorithms, STOC 2002 (sign random projections)"

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        generator = torch.Generator().manual_seed(self.context.seed)
        head.mean.copy_(torch.from_numpy(features.mean(axis=0)))
        head.projection.copy_(torch.randn(features.shape[1], self.bits, generator=generator))
