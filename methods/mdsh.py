"""MDSH: hash centres separated by a minimum distance (Wang et al., Hashing with Minimum-Distance-Separated Hash Centers,
CVPR 2023; Wangld5/Center-Hashing).

- Centres, fixed before training: the minimum distance ``d`` two of C centres of K bits can be guaranteed is the
  Gilbert-Varshamov bound, the smallest d with sum_{i<d} binom(K, i) >= 2^K / C. Starting from the rows of [H; -H]
  (H Hadamard of order K, balanced random rows past 2K classes; random signs when K is not a power of two), each
  centre in turn is re-optimised against the others (Gauss-Seidel sweeps, at most 50, until every pair is at least d
  apart): l_p-box ADMM over b in [-1, 1]^K on the sphere |b|^2 = K with <b, c_j> <= K - 2d for every other centre,
  minimising <b, mean of the others>; the penalty rho grows x1.09 from 1e-5 to 1e7, and of the signs visited at the
  cap the one with the best mean + minimum - variance of its distances is kept. Of the sweeps, the centres with the
  best such statistic over all pairs are kept.
- Loss (authors' cos_eps_loss): binary cross-entropy over every (image, class) entry of softmax_k(sqrt(K) cos(u, c_k))
  against the labels (several for a multi-label image), plus ``quantisation`` x mean((|u| - 1)^2) (1e-4), plus
  ``pair`` x a pair term from epoch ``pair_from_epoch`` on: over the pairs of each image with the stored codes of the
  training images sharing a label, log(1 + exp((1 - cos) / 2)).
- Head (authors): linear -> BatchNorm1d -> tanh. Optimiser (authors): RMSprop lr 1e-5, weight decay 1e-5, gradient
  norm clipped at 5.

Deviations: the pair term is off by default (``pair=0``; the authors' 1 pairs a momentum key encoder's codes, which
the suite has not: here the stored codes are the network's own, detached); its store starts with no labels (the
authors' starts with random ones, so before every slot is written it pairs random images); the ADMM always projects
its box variable (the authors' feasibility check cannot fail on the box, so it sometimes skips that projection); a
centre whose ADMM converges before the penalty reaches its cap is judged where it converged (the authors' loop stops
there and keeps the old centre, so random starts never move).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.model.method import HashOutput, Method, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method

GOLDEN = (1 + 5**0.5) / 2  # the ADMM's dual step


def minimum_distance(bits: int, n_classes: int) -> int:
    """The Gilbert-Varshamov distance: the smallest d with sum_{i<d} binom(bits, i) >= 2^bits / n_classes."""
    covered, d = 0, 0
    while covered * n_classes < 2**bits:
        covered += comb(bits, d)
        d += 1
    return d


def distances(centres: np.ndarray) -> np.ndarray:
    """The Hamming distances of every pair of +/-1 rows (upper triangle, flattened)."""
    bits = centres.shape[1]
    pairwise = (bits - centres @ centres.T) / 2
    return pairwise[np.triu_indices(len(centres), 1)]


def spread(values: np.ndarray) -> float:
    """The authors' figure of merit for a set of distances: mean + minimum - variance."""
    return values.mean() + values.min() - values.var()


def initial_centres(n_classes: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    if bits & (bits - 1):
        return np.where(rng.random((n_classes, bits)) < 0.5, -1.0, 1.0)
    order = 1
    rows = np.ones((1, 1))
    while order < bits:
        rows, order = np.block([[rows, rows], [rows, -rows]]), order * 2
    centres = np.concatenate([rows, -rows])[:n_classes]
    extra = np.ones((max(0, n_classes - 2 * bits), bits))
    for row in extra:
        row[rng.permutation(bits)[: bits // 2]] = -1
    return np.concatenate([centres, extra])


def improve_centre(
    centre: np.ndarray,
    others: np.ndarray,
    d: int,
    dual_box: np.ndarray,
    dual_sphere: np.ndarray,
    dual_slack: np.ndarray,
    rho: float = 1e-5,
    cap: float = 1e7,
) -> np.ndarray:
    """One centre re-optimised against the fixed ``others`` by l_p-box ADMM from the given duals; returns the best
    sign vector visited at the penalty cap or where the iterations end, or ``centre`` if none beats it (run compiled,
    :func:`compiled_improve_centre`: thousands of small steps)."""
    bits = len(centre)
    bound = bits - 2 * d  # <b, c_j> at most this: distance at least d
    pull = others.sum(axis=0) / len(others)
    system = np.linalg.inv(2 * np.eye(bits) + others.T @ others)  # the b-update's matrix over rho, fixed here
    b = centre.copy()
    box, sphere = b.copy(), b.copy()
    slack = bound - others @ np.sign(b)
    best = centre.copy()
    apart = (bits - others @ np.sign(centre)) / 2
    best_merit, best_min = spread(apart), apart.min()
    at_cap = 0
    for _ in range(1000):
        for _ in range(10):
            b = system @ (
                box
                + sphere
                + others.T @ (bound - slack)
                - (dual_box + dual_sphere + others.T @ dual_slack + pull) / rho
            )
            box, sphere, slack = b + dual_box / rho, b + dual_sphere / rho, bound - others @ b - dual_slack / rho
            # the unprojected variables already lie in their sets: this inner loop is done
            feasible = np.all(np.abs(box) <= 1) and np.all(slack >= 0) and abs(sphere @ sphere - bits) <= 1e-3
            box = np.clip(box, -1.0, 1.0)
            sphere = np.sqrt(bits) * sphere / np.linalg.norm(sphere)
            slack = np.maximum(slack, 0.0)
            dual_box = dual_box + GOLDEN * rho * (b - box)
            dual_sphere = dual_sphere + GOLDEN * rho * (b - sphere)
            dual_slack = dual_slack + GOLDEN * rho * (others @ b + slack - bound)
            if feasible:
                break
        rho = min(1.09 * rho, cap)
        if rho == cap:
            at_cap += 1
            apart = (bits - others @ np.sign(b)) / 2
            value, closest = spread(apart), apart.min()
            if value > best_merit or closest > best_min:
                best, best_merit, best_min = np.sign(b), value, closest
            if at_cap == 100:
                break
        residual = max(np.abs(b - box).max(), np.abs(b - sphere).max(), np.abs(others @ b + slack - bound).max())
        if residual < 1e-6:
            break
    apart = (bits - others @ np.sign(b)) / 2  # where it ends, converged before the cap too
    if spread(apart) > best_merit or apart.min() > best_min:
        best = np.sign(b)
    return best


@lru_cache(maxsize=1)
def compiled_improve_centre():
    """:func:`improve_centre` compiled by numba (cached on disk), on first use: importing numba with this module would
    cost every command that lists the methods a quarter of a second."""
    import numba
    from numba.extending import register_jitable

    register_jitable(spread)  # callable from compiled code, and still a plain function
    return numba.njit(cache=True)(improve_centre)


def mdsh_centres(n_classes: int, bits: int, seed: int, sweeps: int = 50) -> torch.Tensor:
    """(classes, bits) +/-1 centres, every pair at least :func:`minimum_distance` apart where the sweeps reach it."""
    rng = np.random.default_rng(seed)
    centres = initial_centres(n_classes, bits, rng)
    if n_classes < 2:
        return torch.from_numpy(centres).float()
    d = minimum_distance(bits, n_classes)
    best, best_spread = centres.copy(), -np.inf
    improve = compiled_improve_centre()
    for _ in range(sweeps):
        for i in range(n_classes):
            duals = rng.random(bits), rng.random(bits), rng.random(n_classes - 1)
            centres[i] = improve(centres[i], np.delete(centres, i, axis=0), d, *duals)
        apart = distances(centres)
        if spread(apart) > best_spread:
            best, best_spread = centres.copy(), spread(apart)
        if apart.min() >= d:
            break
    return torch.from_numpy(best).float()


class CentreHead(nn.Module):
    """linear -> BatchNorm1d -> tanh (the authors' hash layer)."""

    def __init__(self, in_features: int, bits: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(in_features, bits), nn.BatchNorm1d(bits)

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(torch.tanh(self.norm(self.linear(features))))


class SeparatedCentreLoss(nn.Module):
    def __init__(self, centres: torch.Tensor, n_train: int, quantisation: float, pair: float, pair_from_epoch: int):
        super().__init__()
        self.quantisation, self.pair, self.pair_from_epoch = quantisation, pair, pair_from_epoch
        self.register_buffer("centres", centres)
        if pair > 0:  # the codes and labels of every training image, as last seen
            self.register_buffer("stored_codes", torch.zeros(n_train, centres.shape[1]))
            self.register_buffer("stored_labels", torch.zeros(n_train, len(centres)))

    def forward(self, output, labels, indices, info) -> dict[str, torch.Tensor]:
        u = output.code
        bits = u.shape[1]
        logits = bits**0.5 * F.normalize(u) @ F.normalize(self.centres).T
        terms = {"centre": F.binary_cross_entropy(torch.softmax(logits, dim=1), labels)}
        terms["quantisation"] = self.quantisation * (u.abs() - 1).pow(2).mean()
        if self.pair > 0:
            self.stored_codes[indices] = u.detach()
            self.stored_labels[indices] = labels
            if info is not None and info.epoch >= self.pair_from_epoch:
                shares = (labels @ self.stored_labels.T > 0).float()
                cosine = F.normalize(u) @ F.normalize(self.stored_codes).T
                pulled = shares * torch.log1p(torch.exp((1 - cosine) / 2))
                terms["pair"] = self.pair * pulled.sum() / shares.sum().clamp(min=1)
        return terms


@register_method("mdsh")
class MDSH(Method):
    paper = "Wang et al., Hashing with Minimum-Distance-Separated Hash Centers, CVPR 2023"
    quantization_term = "quantisation"
    train = TrainSettings(optimizer="rmsprop", lr=1e-5, weight_decay=1e-5, momentum=0.0, batch_size=64)
    max_grad_norm = 5.0

    @dataclass(frozen=True)
    class Options:
        quantisation: float = option(1e-4, "weight of mean((|u| - 1)^2)", at_least=0.0)
        pair: float = option(
            0.0, "weight of the pair term against stored codes (the authors: 1, with a momentum encoder)", at_least=0.0
        )
        pair_from_epoch: int = option(9, "the epoch (from 0) the pair term starts at", at_least=0)

    def build_head(self, in_features: int) -> nn.Module:
        return CentreHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        centres = mdsh_centres(self.context.n_classes, self.bits, self.context.seed)
        return SeparatedCentreLoss(
            centres, self.context.n_train, self.opt.quantisation, self.opt.pair, self.opt.pair_from_epoch
        )
