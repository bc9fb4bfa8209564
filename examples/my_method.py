"""An example plugin: a new hashing method in one file.

Run it with ``hashbench run --plugin examples/my_method.py --methods center-hash --bits 16 32``.
A method subclasses :class:`hashbench.model.method.Method` and overrides only what differs;
the engine, evaluator, results store and leaderboards are shared.

Center hashing (in the spirit of CSQ, Yuan et al., CVPR 2020, simplified): every
class gets a random +/-1 centre; codes are pulled towards their class centre.
"""

from dataclasses import dataclass

import torch
from torch import nn

from hashbench.model.method import Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


class CentreLoss(nn.Module):
    def __init__(self, n_classes: int, bits: int, seed: int, quantisation: float):
        super().__init__()
        self.quantisation = quantisation
        centres = torch.randn(n_classes, bits, generator=torch.Generator().manual_seed(seed)).sign()
        self.register_buffer("centres", torch.where(centres == 0, torch.ones_like(centres), centres))

    def forward(self, output, labels, indices, info):
        target = (labels @ self.centres).sign()  # the sample's class centre
        terms = {"centre": (output.code - target).pow(2).mean()}
        if self.quantisation:
            terms["quantisation"] = self.quantisation * (output.code.abs() - 1).pow(2).mean()
        return terms


@register_method("center-hash")
class CenterHash(Method):
    paper = "example plugin (after Yuan et al., Central Similarity Quantization, CVPR 2020)"
    train = TrainSettings(optimizer="adam", lr=1e-4, weight_decay=1e-4, batch_size=64)

    @dataclass(frozen=True)
    class Options:  # each one settable as --set center-hash.<name>=<value>
        quantisation: float = option(0.0, "weight of a term pulling codes to +/-1", at_least=0.0)

    def build_loss(self) -> nn.Module:
        return CentreLoss(self.context.n_classes, self.bits, self.context.seed, self.opt.quantisation)
