"""SH: Spectral Hashing (Weiss, Torralba, Fergus; NIPS 2008).

Training-free: PCA to min(bits, d) dimensions; along each principal direction, the
data's range [lo, hi] gives one-dimensional Laplacian eigenfunctions
sin(pi / 2 + k pi (y - lo) / (hi - lo)), k = 1, 2, ...; the ``bits`` with the
smallest eigenvalues (k / (hi - lo))^2 over all directions are the bits, each
thresholded at zero (the authors' SH.m, ranges from the training minimum and
maximum).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from hashbench.methods.pcah import principal_directions
from hashbench.model.method import HashOutput, TrainingFreeMethod
from hashbench.model.registry import register_method


class SpectralHead(nn.Module):
    """bit b = sin(pi / 2 + frequency_b * (y_{direction_b} - low_{direction_b})), y = (x - mean) @ directions."""

    def __init__(self, in_features: int, bits: int):
        super().__init__()
        dimensions = min(bits, in_features)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("directions", torch.zeros(in_features, dimensions))
        self.register_buffer("low", torch.zeros(dimensions))
        self.register_buffer("direction", torch.zeros(bits, dtype=torch.long))
        self.register_buffer("frequency", torch.zeros(bits))

    def forward(self, features: torch.Tensor) -> HashOutput:
        y = (features.float() - self.mean) @ self.directions - self.low
        return HashOutput(torch.sin(math.pi / 2 + y[:, self.direction] * self.frequency))


def spectral_modes(ranges: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``bits`` lowest-frequency eigenfunctions: their direction and frequency k pi / range (ties: first direction, then k)."""
    candidates = [
        (k / r, direction, k * math.pi / r) for direction, r in enumerate(ranges) if r > 0 for k in range(1, bits + 1)
    ]
    chosen = sorted(candidates, key=lambda c: (c[0], c[1]))[:bits]
    return np.array([c[1] for c in chosen]), np.array([c[2] for c in chosen])


@register_method("sh")
class SH(TrainingFreeMethod):
    paper = "Weiss, Torralba, Fergus, Spectral Hashing, NIPS 2008"

    def build_head(self, in_features: int) -> nn.Module:
        return SpectralHead(in_features, self.bits)

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        dimensions = head.directions.shape[1]
        self.check_dimensions(min(features.shape), dimensions)
        mean, directions = principal_directions(features, dimensions, self.context.seed)
        projected = (features - mean) @ directions
        low, high = projected.min(axis=0), projected.max(axis=0)
        direction, frequency = spectral_modes(high - low, self.bits)
        if len(direction) < self.bits:
            raise ValueError(f"sh: the training features vary along too few directions for {self.bits} bits")
        for name, value in (
            ("mean", mean),
            ("directions", directions),
            ("low", low),
            ("direction", direction),
            ("frequency", frequency),
        ):
            getattr(head, name).copy_(torch.from_numpy(value))
