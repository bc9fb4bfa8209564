"""HyP²: hybrid proxy-pair loss (Xu et al., HyP² Loss: Beyond Hypersphere Metric Space for Multi-label Image
Retrieval, ACM MM 2022; JerryXu0129/HyP2-Loss).

Why: a proxy loss trains fast (each image against C proxies, not against every other image), but with one proxy per
class it cannot place an image with several labels so that it stays away from every image it shares no label with;
HyP² adds a pair term over exactly those label-disjoint pairs.

- Proxies (authors' model.py): one learnable vector of K dimensions per class, drawn Kaiming-normal with fan-out, so
  N(0, 2 / C). They live in the head here, trained with the network (see the deviations).
- Proxy term: the mean over the batch's positive (image, class) entries of 1 - cos(u, p_c), plus the mean over its
  negative entries of max(0, cos(u, p_c) - zeta). An image without labels has negative entries only.
- zeta (authors' codetable.xlsx, read at row K, column ceil(log2 C)): the largest cosine two words of the best known
  binary linear code of length K and dimension m = ceil(log2 C) must have, 1 - 2 d / K with d that code's minimum
  distance (the tables of codetables.de). :data:`BEST_LINEAR_DISTANCE` holds d for the common code lengths up to
  1024 classes; other lengths need ``threshold``.
- Pair term: ``beta`` (0.5) x the mean over ordered pairs (i, j) of images with at least two labels that share none
  of max(0, cos(u_i, u_j) - zeta); 0 where the batch has no such pair. Single-label images never enter it (authors),
  so on single-label data the loss is the proxy term alone.
- Network output (authors): a linear layer on the backbone's features, no squashing; test codes are its signs.
- Optimiser (authors' GoogLeNet runs, their default, VOC 2007 and 2012): SGD with momentum 0.9 and weight decay
  5e-4, lr 0.02 for backbone, hash layer and proxies alike, batch 100, the rate halved every 10 epochs (of 100).

Deviations: the engine optimises the network's parameters only, so the proxies sit in the head, which hands the
loss the codes' cosines with them as its logits (computed in at least float32 under mixed precision); they train at
the head's rate, which is the authors' for GoogLeNet (their AlexNet runs give the proxies 0.02 against the network's
0.01, which one head rate cannot express); where a batch has no positive (or no negative) entry that mean is 0
(authors: 0 / 0); the last partial batch of an epoch is dropped (the suite's sampler; authors keep it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method

# d of the best known binary linear [K, m] code (codetables.de, as in the authors' table), K -> (d for m = 1, 2, ...)
BEST_LINEAR_DISTANCE = {
    8: (8, 5, 4, 4, 2, 2, 2, 1),
    12: (12, 8, 6, 6, 4, 4, 4, 3, 2, 2),
    16: (16, 10, 8, 8, 8, 6, 6, 5, 4, 4),
    24: (24, 16, 13, 12, 12, 10, 10, 8, 8, 8),
    32: (32, 21, 18, 16, 16, 16, 14, 13, 12, 12),
    36: (36, 24, 20, 18, 17, 16, 16, 16, 14, 14),
    48: (48, 32, 27, 24, 24, 24, 22, 22, 20, 20),
    64: (64, 42, 36, 33, 32, 32, 32, 29, 28, 28),
    96: (96, 64, 54, 50, 48, 48, 48, 46, 44, 44),
    128: (128, 85, 72, 68, 64, 64, 64, 64, 60, 60),
}


def code_threshold(bits: int, n_classes: int) -> float:
    """zeta: the largest cosine between two of 2^m words of the best known linear code of ``bits`` bits,
    m = ceil(log2 n_classes) (at least 1)."""
    dimension = max(1, (n_classes - 1).bit_length())
    distances = BEST_LINEAR_DISTANCE.get(bits, ())
    if dimension > len(distances):
        lengths = ", ".join(map(str, BEST_LINEAR_DISTANCE))
        raise ValueError(
            f"hyp2: the code table holds no entry for {bits} bits and {n_classes} classes (bits {lengths}; up to "
            "1024 classes); give zeta with --set hyp2.threshold=<the largest cosine unrelated codes may keep>"
        )
    return 1 - 2 * distances[dimension - 1] / bits


class ProxyHead(nn.Module):
    """A linear hash layer; its logits are the codes' cosines with one learnable proxy per class."""

    def __init__(self, in_features: int, bits: int, n_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, bits)
        self.proxies = nn.Parameter(torch.empty(n_classes, bits))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(self, features: torch.Tensor) -> HashOutput:
        code = self.linear(features)
        precision = torch.promote_types(code.dtype, torch.float32)  # cosines near zeta are not left to bf16
        with torch.autocast(code.device.type, enabled=False):
            cosines = F.normalize(code.to(precision)) @ F.normalize(self.proxies.to(precision)).T
        return HashOutput(code, cosines)


class HybridProxyPairLoss(nn.Module):
    def __init__(self, threshold: float, beta: float):
        super().__init__()
        self.threshold, self.beta = threshold, beta

    def forward(self, output, labels, indices, info) -> dict[str, torch.Tensor]:
        cosines, positive = output.logits, labels > 0
        terms = {
            "positive": (1 - cosines)[positive].sum() / positive.sum().clamp(min=1),
            "negative": F.relu(cosines - self.threshold)[~positive].sum() / (~positive).sum().clamp(min=1),
        }
        if self.beta > 0:
            several = labels.sum(dim=1) > 1
            codes, multi_labels = F.normalize(output.code[several]), labels[several]
            disjoint = multi_labels @ multi_labels.T == 0
            pushed = F.relu(codes @ codes.T - self.threshold)[disjoint]
            terms["pair"] = self.beta * pushed.sum() / max(len(pushed), 1)
        return terms


@register_method("hyp2")
class HyP2(Method):
    paper = "Xu et al., HyP² Loss: Beyond Hypersphere Metric Space for Multi-label Image Retrieval, ACM MM 2022"
    train_follows = "the authors' GoogLeNet runs (their default; their AlexNet runs: lr 0.01, proxies 0.02)"
    train = TrainSettings(
        optimizer="sgd", lr=0.02, weight_decay=5e-4, momentum=0.9, batch_size=100, lr_schedule="step:10ep:0.5"
    )

    @dataclass(frozen=True)
    class Options:
        beta: float = option(0.5, "weight of the pair term over label-disjoint multi-label pairs", at_least=0.0)
        threshold: float | None = option(
            None,
            "zeta, the cosine above which unrelated codes are pushed apart; none: the authors' code table "
            "(1 - 2d/K of the best known linear code of K bits for the classes)",
            at_least=-1.0,
        )

    def build_head(self, in_features: int) -> nn.Module:
        return ProxyHead(in_features, self.bits, self.context.n_classes)

    def build_loss(self) -> nn.Module:
        threshold = self.opt.threshold
        if threshold is None:
            threshold = code_threshold(self.bits, self.context.n_classes)
        return HybridProxyPairLoss(threshold, self.opt.beta)
