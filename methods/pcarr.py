"""PCA-RR: PCA to ``bits`` dimensions, a random orthogonal rotation, sign (Moummad et al., Hashing-Baseline, 2025).

Training-free, meant for frozen foundation features: codes = sign((x - mean) P R), P the ``bits`` leading principal
directions of the training features, R a random orthogonal (bits x bits) matrix drawn from the run's seed. The
rotation spreads the variance PCA piles into the first directions over every bit, which ITQ does by optimisation
and PCA-RR by chance. The authors find the directions with a randomised low-rank PCA (two power iterations); this
uses the exact PCA, so its codes are the seed's alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hashbench.methods.pcah import principal_directions
from hashbench.model.method import TrainingFreeMethod
from hashbench.model.registry import register_method


def random_rotation(size: int, seed: int) -> np.ndarray:
    """A (size, size) orthogonal matrix uniform over rotations and reflections (Haar), fixed by ``seed``: the Q of a
    Gaussian matrix's QR, its columns' signs set by R's diagonal so the draw is not biased by the factorisation."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((size, size)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


@register_method("pcarr")
class PCARR(TrainingFreeMethod):
    paper = "Moummad, Zaher, Goëau, Joly, Hashing-Baseline: Rethinking Hashing in the Age of Pretrained Models, 2025"

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        self.check_dimensions(min(features.shape), self.bits)
        mean, directions = principal_directions(features, self.bits, self.context.seed)
        head.mean.copy_(torch.from_numpy(mean))
        head.projection.copy_(torch.from_numpy(directions @ random_rotation(self.bits, self.context.seed)))
