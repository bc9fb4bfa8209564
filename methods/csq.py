"""CSQ: Central Similarity Quantization for Efficient Image and Video Retrieval (Yuan et al.; CVPR 2020).

Reference code: yuanli2333/Hadamard-Matrix-for-hashing. Defaults follow the commands of the authors' README for the
published numbers on single-label data (ImageNet); their multi-label runs (COCO, NUS-WIDE) differ in one place, named
below.

- One hash centre per class, fixed before training: rows of the Hadamard matrix of order ``bits`` (pairwise at
  Hamming distance bits / 2), then of [H; -H] when classes exceed them, without H's first row (all +1), which the
  authors' centre files leave out (``first_row=true`` puts it back: this suite's former default). Hadamard matrices
  are built here for powers of two; for other lengths (48 bits) and when classes exceed [H; -H] the centres are
  random balanced bits from the run's seed (the authors' fallback), the draw with the largest minimum distance of
  several.
- A multi-label image's centre is the sign of the mean of its labels' centres; bits where that mean is 0 take a
  random bit drawn once per run (authors).
- Loss (authors' train.py): binary cross-entropy between (u + 1) / 2 and (c + 1) / 2, plus ``quantisation`` x
  mean((|u| - 1)^2) (0.05), plus ``pairwise`` x the pairwise likelihood loss between the batch's two halves with
  sigmoid parameter 10 / bits: 0, as every published command passes ``--lambda1 0`` (0.2, their argparse default,
  was this suite's former default).
- Head: the suite's linear + tanh (the authors stack three layers on ResNet).
- Optimiser (authors): Adam, lr 1e-3 for the head and 1e-5 for the backbone (0.01x; their multi-label runs use 0.05x:
  ``--set csq.head_lr_scale=20``), x0.7 every 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.components import similar
from hashbench.model.method import Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


def hadamard(order: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of a power-of-two order: +/-1 rows, pairwise orthogonal."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"Sylvester's construction needs a power of two, not {order}")
    matrix = torch.ones(1, 1)
    while len(matrix) < order:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def hash_centres(n_classes: int, bits: int, seed: int, first_row: bool = False, tries: int = 64) -> torch.Tensor:
    """(classes, bits) +/-1 centres: rows of [H; -H] (without H's all-ones first row unless ``first_row``) where they
    suffice, else the best of seeded balanced draws."""
    if bits & (bits - 1) == 0 and n_classes <= 2 * bits - (0 if first_row else 1):
        rows = hadamard(bits)
        rows = torch.cat([rows, -rows]) if first_row else torch.cat([rows[1:], -rows])
        return rows[:n_classes].clone()
    generator = torch.Generator().manual_seed(seed)
    best, best_distance = None, -1.0
    for _ in range(tries):
        draw = torch.ones(n_classes, bits)
        for row in draw:
            row[torch.randperm(bits, generator=generator)[: bits // 2]] = -1
        distance = ((bits - draw @ draw.T) / 2 + torch.eye(n_classes) * bits).min().item()
        if distance > best_distance:
            best, best_distance = draw, distance
    return best


class CentralSimilarityLoss(nn.Module):
    def __init__(self, centres: torch.Tensor, tie_bits: torch.Tensor, quantisation: float, pairwise: float):
        super().__init__()
        self.quantisation, self.pairwise = quantisation, pairwise
        self.register_buffer("centres", centres)
        self.register_buffer("tie_bits", tie_bits)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Each image's centre: its class's, or for several labels the sign of their mean, ties broken by the run's random bits."""
        mean = labels @ self.centres / labels.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.where(mean == 0, self.tie_bits.expand_as(mean), mean.sign())

    def forward(self, output, labels, indices, info):
        u = output.code
        terms = {"centre": F.binary_cross_entropy((u + 1) / 2, (self.targets(labels) + 1) / 2)}
        terms["quantisation"] = self.quantisation * (u.abs() - 1).pow(2).mean()
        if self.pairwise > 0:
            half = len(u) // 2
            theta = 10.0 / u.shape[1] * u[:half] @ u[half : 2 * half].T
            s = similar(labels[:half], labels[half : 2 * half]).float()
            terms["pairwise"] = self.pairwise * (F.softplus(theta) - s * theta).mean()
        return terms


@register_method("csq")
class CSQ(Method):
    paper = "Yuan et al., Central Similarity Quantization for Efficient Image and Video Retrieval, CVPR 2020"
    quantization_term = "quantisation"

    @dataclass(frozen=True)
    class Options:
        quantisation: float = option(0.05, "weight of mean((|u| - 1)^2)", at_least=0.0)
        pairwise: float = option(
            0.0,
            "weight of the pairwise likelihood term of the authors' code: 0 in their published runs and the paper; "
            "0.2 their argparse default (this suite's former default)",
            at_least=0.0,
        )
        first_row: bool = option(
            False, "use the Hadamard row of all +1 as a centre (the authors' centre files skip it; the former default)"
        )

    train_follows = "the authors' single-label runs (ImageNet; their multi-label runs: head_lr_scale=20)"
    train = TrainSettings(
        optimizer="adam", lr=1e-5, weight_decay=0.0, batch_size=64, head_lr_scale=100.0, lr_schedule="step:10ep:0.7"
    )

    def build_loss(self) -> nn.Module:
        centres = hash_centres(self.context.n_classes, self.bits, self.context.seed, self.opt.first_row)
        tie_bits = (
            torch.randint(0, 2, (self.bits,), generator=torch.Generator().manual_seed(self.context.seed + 1)).float()
            * 2
            - 1
        )
        return CentralSimilarityLoss(centres, tie_bits, self.opt.quantisation, self.opt.pairwise)
