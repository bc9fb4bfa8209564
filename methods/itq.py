"""ITQ: Iterative Quantization (Gong, Lazebnik, Gordo, Perronnin; CVPR 2011 / TPAMI 2013).

Training-free: PCA to ``bits`` dimensions (V), then an orthogonal rotation R that
minimises the quantisation loss ||sign(V R) - V R||^2 by alternating B = sign(V R)
and R from the SVD of V^T B (an orthogonal Procrustes problem), ``iterations`` times
(50, the authors'), from a random rotation drawn from the run's seed. Codes =
sign((x - mean) P R).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hashbench.methods.pcah import principal_directions
from hashbench.model.method import TrainingFreeMethod
from hashbench.model.options import option
from hashbench.model.registry import register_method


def itq_rotation(projected: np.ndarray, iterations: int, seed: int) -> tuple[np.ndarray, list[float]]:
    """The rotation (bits, bits) and the quantisation loss before each update (non-increasing)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((projected.shape[1], projected.shape[1])))
    losses = []
    for _ in range(iterations):
        rotated = projected @ rotation
        codes = np.where(rotated >= 0, 1.0, -1.0)
        losses.append(float(((codes - rotated) ** 2).sum()))
        left, _, right = np.linalg.svd(projected.T @ codes)
        rotation = left @ right
    return rotation, losses


@register_method("itq")
class ITQ(TrainingFreeMethod):
    paper = "Gong, Lazebnik, Gordo, Perronnin, Iterative Quantization: A Procrustean Approach to Learning Binary Codes, TPAMI 2013"

    @dataclass(frozen=True)
    class Options(TrainingFreeMethod.Options):
        iterations: int = option(50, "rotation updates", at_least=0)

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        self.check_dimensions(min(features.shape), self.bits)
        mean, directions = principal_directions(features, self.bits, self.context.seed)
        rotation, _ = itq_rotation((features - mean) @ directions, self.opt.iterations, self.context.seed)
        head.mean.copy_(torch.from_numpy(mean))
        head.projection.copy_(torch.from_numpy(directions @ rotation))
