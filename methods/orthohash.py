"""OrthoHash: One Loss for All (Hoe, Ng, Yap, Kang, Chan; NeurIPS 2021).

Reference code: kamwoh/orthohash. Defaults follow the authors' default configuration.

- One fixed code per class, +/-1 bits from the run's seed: Bernoulli(0.5) draws (the authors' default,
  ``--codebook-method B``); ``codebook=min-distance`` keeps a draw only when at least ``min_distance`` x bits from
  every earlier one, the bound lowered when no draw fits (the authors' option, said to add 1 to 2 mAP; this suite's
  former default).
- Head (authors): linear without bias + batch norm to ``bits`` (u); class logits are the cosine similarities of u
  with the class codes.
- Loss (authors): cross-entropy of scale x (cos - margin at the true class), scale 8, margin 0.2; a multi-label image
  spreads its target over its labels (the authors' default, label smoothing). ``quantisation`` (0, authors' default)
  adds mean(1 - cos(u, sign(u))).
- Optimiser (authors): Adam lr 1e-4 for the head, 0.1x that for the backbone, weight decay 5e-4, batch 256, x0.1 at
  80 % of training. This suite's former defaults (one rate 1e-4, no weight decay, no schedule):
  ``--set orthohash.head_lr_scale=1 --set orthohash.lr=1e-4 --set orthohash.weight_decay=0
  --set orthohash.lr_schedule=constant``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import focal_loss
from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


def bernoulli_codes(n_classes: int, bits: int, seed: int) -> torch.Tensor:
    """Seeded +/-1 codes, each bit a fair coin (the authors' default codebook)."""
    return torch.randint(0, 2, (n_classes, bits), generator=torch.Generator().manual_seed(seed)).float() * 2 - 1


def class_codes(
    n_classes: int, bits: int, seed: int, min_distance: float = 0.61, tries: int = 10_000, draws: int = 1024
) -> torch.Tensor:
    """Seeded +/-1 codes, each at least min_distance x bits from the earlier ones (bound lowered by 0.01 after ``tries`` misses).

    The authors' search one draw at a time, run on ``draws`` candidates at once: the first that fits is taken.
    """
    generator = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, bits)
    bound, misses = min_distance, 0
    while len(codes) < n_classes:
        candidates = torch.randint(0, 2, (draws, bits), generator=generator).float() * 2 - 1
        distance = ((bits - candidates @ codes.T) / (2 * bits)).min(dim=1).values if len(codes) else torch.ones(draws)
        fits = torch.nonzero(distance >= bound).flatten()
        if len(fits) and misses + int(fits[0]) < tries:
            codes = torch.cat([codes, candidates[fits[0] : fits[0] + 1]])
            misses = 0
        else:
            misses += draws
            if misses >= tries:
                bound, misses = bound - 0.01, 0
    return codes


class CosineHead(nn.Module):
    def __init__(self, in_features: int, bits: int, codes: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(in_features, bits, bias=False)
        nn.init.normal_(self.linear.weight, std=0.01)
        self.norm = nn.BatchNorm1d(bits)
        self.register_buffer("codes", codes)

    def forward(self, features: torch.Tensor) -> HashOutput:
        u = self.norm(self.linear(features))
        return HashOutput(u, F.normalize(u, dim=1) @ F.normalize(self.codes, dim=1).T)


class OrthoHashLoss(nn.Module):
    def __init__(self, scale: float, margin: float, quantisation: float):
        super().__init__()
        self.scale, self.margin, self.quantisation = scale, margin, quantisation

    def forward(self, output, labels, indices, info):
        logits = self.scale * (output.logits - self.margin * (labels > 0).to(output.logits.dtype))
        terms = {"classification": focal_loss(logits, labels, gamma=0.0)}  # cross-entropy
        if self.quantisation > 0:
            terms["quantisation"] = (
                self.quantisation * (1 - F.cosine_similarity(output.code, output.code.detach().sign(), dim=1)).mean()
            )
        return terms


@register_method("orthohash")
class OrthoHash(Method):
    paper = "Hoe, Ng, Yap, Kang, Chan, One Loss for All: Deep Hashing with a Single Cosine Similarity based Learning Objective, NeurIPS 2021"
    quantization_term = "quantisation"

    @dataclass(frozen=True)
    class Options:
        scale: float = option(8.0, "scale of the cosine logits", above=0.0)
        margin: float = option(0.2, "cosine margin at the true class", at_least=0.0)
        quantisation: float = option(0.0, "weight of mean(1 - cos(u, sign(u)))", at_least=0.0)
        codebook: Literal["bernoulli", "min-distance"] = option(
            "bernoulli",
            "class codes: fair coin flips (the authors' default) or draws kept at least min_distance apart "
            "(their option; the former default)",
        )
        min_distance: float = option(
            0.61,
            "least Hamming distance between class codes, as a share of the bits (codebook=min-distance)",
            at_least=0.0,
        )

    train_follows = (
        "the authors' default run (this suite's former defaults: lr=1e-4, head_lr_scale=1, weight_decay=0, "
        "lr_schedule=constant)"
    )
    train = TrainSettings(
        optimizer="adam", lr=1e-5, weight_decay=5e-4, batch_size=256, head_lr_scale=10.0, lr_schedule="step:80%:0.1"
    )

    def build_head(self, in_features: int) -> nn.Module:
        context = self.context
        if self.opt.codebook == "bernoulli":
            codes = bernoulli_codes(context.n_classes, self.bits, context.seed)
        else:
            codes = class_codes(context.n_classes, self.bits, context.seed, self.opt.min_distance)
        return CosineHead(in_features, self.bits, codes)

    def build_loss(self) -> nn.Module:
        return OrthoHashLoss(self.opt.scale, self.opt.margin, self.opt.quantisation)
