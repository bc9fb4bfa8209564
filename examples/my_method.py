"""An example plugin: a new hashing method in one file.

Run it with ``hashbench run --plugin examples/my_method.py --methods center-hash --bits 16 32``.
A method subclasses :class:`hashbench.method.Method` and overrides only what differs;
the engine, evaluator, results store and leaderboards are shared.

Center hashing (in the spirit of CSQ, Yuan et al., CVPR 2020, simplified): every
class gets a random +/-1 centre; codes are pulled towards their class centre.
"""

import torch
from torch import nn

from hashbench.method import Method, TrainSettings
from hashbench.registry import register_method


class CentreLoss(nn.Module):
    def __init__(self, n_classes: int, bits: int, seed: int):
        super().__init__()
        centres = torch.randn(n_classes, bits, generator=torch.Generator().manual_seed(seed)).sign()
        self.register_buffer("centres", torch.where(centres == 0, torch.ones_like(centres), centres))

    def forward(self, output, labels, indices, info):
        target = (labels @ self.centres).sign()  # the sample's class centre
        return {"centre": (output.code - target).pow(2).mean()}


@register_method("center-hash")
class CenterHash(Method):
    paper = "example plugin (after Yuan et al., Central Similarity Quantization, CVPR 2020)"
    options = {}
    train = TrainSettings(optimizer="adam", lr=1e-4, weight_decay=1e-4, batch_size=64)

    def build_loss(self) -> nn.Module:
        return CentreLoss(self.context.n_classes, self.bits, self.context.seed)
