"""ADSH: Asymmetric Deep Supervised Hashing (Jiang, Li; AAAI 2018).

Reference code: jiangqy/ADSH-AAAI2018 (its PyTorch version). The database's codes V
(n_train x bits, +/-1) are learned directly; the network learns only to encode queries,
tied to V by asymmetric inner products u_i . v_j ~ bits * S_ij.

- An epoch here is one of the authors' outer iterations: a fresh sample Omega of
  ``sample_size`` (2,000) training items, ``passes`` (3) passes over it in one fixed
  order (the authors' sampler keeps the permutation's order), then V's update.
- Loss per batch B of Omega, against every training item j:
  [sum_{i in B, j} (u_i . v_j - bits * S_ij)^2 + gamma * sum_{i in B} |v_i - u_i|^2] / (n_train * |B|),
  gamma 200; S_ij = 1 where i and j share a label, else -r, r = #similar / #dissimilar
  pairs (the authors' soft constraint).
- V's update: U = the network's outputs for Omega as its last pass recorded them,
  Ubar = U on Omega's rows and 0 elsewhere, Q = -2 bits S^T U - 2 gamma Ubar; column by
  column, V_k = -sign(Q_k + 2 V_{~k} U_{~k}^T U_k), each the exact minimiser of the
  objective given the other columns. V starts at 0.
- Database codes: V for the training items; the network encodes queries and any
  database item outside the training set.
- Head: linear -> tanh. Optimiser (authors): SGD lr 1e-3 without momentum, weight decay
  5e-4, batch 64, x0.1 every 10 outer iterations (the authors' drops come one iteration
  later: after iterations 10, 20, ...).
- HSWD (``quantization=hswd``) is added beside the gamma term: that term also ties the
  network to V, so it stays.

Where this differs from the authors' code, on edge cases only: r is counted once, over a
sample of ``sample_size`` items (drawn with the cell's seed; all of them when fewer)
against every training item, where the authors recount it for each Omega; a bit whose
argument is exactly 0 becomes +1 (the authors' sign leaves a 0 in V); a lone last item
of Omega joins the batch before it (batch norm cannot train on one image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from hashbench.model.method import Method, StepInfo, TrainSettings
from hashbench.model.options import option
from hashbench.model.registry import register_method


def soft_similarity(rows: torch.Tensor, others: torch.Tensor, r: float) -> torch.Tensor:
    """S: 1 where the label rows share a label, -r where they share none."""
    shared = (rows @ others.T > 0).to(rows.dtype)
    return shared * (1 + r) - r


def dissimilar_weight(labels: torch.Tensor, sample: np.ndarray) -> float:
    """r = #similar / #dissimilar pairs between the ``sample`` rows and every row (1 where no pair is dissimilar)."""
    similar = sum(
        float((labels[part] @ labels.T > 0).sum()) for part in np.array_split(sample, max(1, len(sample) // 256))
    )
    dissimilar = len(sample) * len(labels) - similar
    return similar / dissimilar if dissimilar else 1.0


def update_database_codes(
    codes: torch.Tensor, outputs: torch.Tensor, sampled: torch.Tensor, labels: torch.Tensor, r: float, gamma: float
) -> torch.Tensor:
    """ADSH's discrete step: V (n x bits) updated column by column given the network's outputs U for the sampled rows.

    Q = -2 bits S^T U - 2 gamma Ubar; V_k = -sign(Q_k + 2 V_{~k} U_{~k}^T U_k) in place, later columns seeing the
    earlier ones' new values (the authors' order); sign(0) is +1.
    """
    bits = codes.shape[1]
    u = outputs[sampled].double()
    sampled_labels = labels[sampled]
    q = torch.cat(
        [
            soft_similarity(labels[start : start + 16_384], sampled_labels, r).double() @ u
            for start in range(0, len(labels), 16_384)
        ]
    ).mul_(-2 * bits)
    q[sampled] -= 2 * gamma * u
    gram = u.T @ u
    v = codes.double()
    for k in range(bits):
        argument = q[:, k] + 2 * (v @ gram[:, k] - v[:, k] * gram[k, k])
        v[:, k] = torch.where(argument > 0, -1.0, 1.0)
    return v.to(codes.dtype)


class AsymmetricLoss(nn.Module):
    """ADSH's loss of a batch against the database codes V, and V's own update (see the module docstring).

    V is kept with the checkpoint; the labels, r and this epoch's recorded outputs are rebuilt or refilled.
    """

    def __init__(self, n_train: int, bits: int, gamma: float, sample_size: int, seed: int):
        super().__init__()
        self.gamma, self.sample_size, self.seed = gamma, sample_size, seed
        self.r = 1.0
        self.register_buffer("codes", torch.zeros(n_train, bits))
        self.register_buffer("outputs", torch.zeros(n_train, bits), persistent=False)
        self.register_buffer("sampled", torch.zeros(n_train, dtype=torch.bool), persistent=False)
        self.register_buffer("labels", torch.zeros(n_train, 0), persistent=False)

    def attach(self, labels: torch.Tensor) -> None:
        """Every training item's label rows, and r counted from them."""
        self.labels = labels.to(self.codes.device, self.codes.dtype)
        n = len(labels)
        sample = np.random.default_rng(self.seed).permutation(n)[: self.sample_size]
        self.r = dissimilar_weight(self.labels, np.sort(sample))

    def forward(self, output, labels, indices, info):
        if self.labels.shape[1] == 0:
            raise RuntimeError("ADSH's loss needs every training label first: Method.begin_training(labels)")
        u = output.code.to(self.codes.dtype)
        self.outputs[indices] = u.detach()
        self.sampled[indices] = True
        n, batch = len(self.codes), len(u)
        similarity = soft_similarity(labels.to(self.labels.dtype), self.labels, self.r)
        asymmetric = (u @ self.codes.T - self.codes.shape[1] * similarity).pow(2).sum() / (n * batch)
        tie = self.gamma * (self.codes[indices] - u).pow(2).sum() / (n * batch)
        return {"asymmetric": asymmetric, "database_tie": tie}

    @torch.no_grad()
    def update_codes(self) -> None:
        """V's discrete step from this epoch's sample, then a clean record for the next one."""
        if self.sampled.any():
            self.codes.copy_(
                update_database_codes(self.codes, self.outputs, self.sampled, self.labels, self.r, self.gamma)
            )
        self.outputs.zero_()
        self.sampled.zero_()


def omega_batches(n: int, batch_size: int, sample_size: int, passes: int, rng: np.random.Generator):
    """One outer iteration's batches: ``passes`` passes, in one fixed order, over a fresh sample of ``sample_size``
    items (all n when fewer); a lone last item joins the batch before it."""
    omega = rng.permutation(n)[:sample_size]
    chunks = [omega[start : start + batch_size] for start in range(0, len(omega), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [np.concatenate(chunks[-2:])]
    for _ in range(passes):
        yield from chunks


@register_method("adsh")
class ADSH(Method):
    paper = "Jiang, Li, Asymmetric Deep Supervised Hashing, AAAI 2018"
    train = TrainSettings(
        optimizer="sgd", lr=1e-3, weight_decay=5e-4, momentum=0.0, batch_size=64, lr_schedule="step:10ep:0.1"
    )
    train_follows = "the authors' PyTorch code (CIFAR-10 and NUS-WIDE alike)"

    @dataclass(frozen=True)
    class Options:
        gamma: float = option(200.0, "weight of |v_i - u_i|^2, tying the network to the database codes", at_least=0.0)
        sample_size: int = option(2000, "training items sampled per epoch (the authors' outer iteration)", at_least=2)
        passes: int = option(3, "passes over each epoch's sample", at_least=1)

    def build_loss(self) -> nn.Module:
        context = self.context
        self.asymmetric = AsymmetricLoss(context.n_train, self.bits, self.opt.gamma, self.opt.sample_size, context.seed)
        return self.asymmetric

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        return omega_batches(len(labels), batch_size, self.opt.sample_size, self.opt.passes, rng)

    def begin_training(self, labels: torch.Tensor | None) -> None:
        self.asymmetric.attach(labels)

    def end_epoch(self, info: StepInfo) -> None:
        self.asymmetric.update_codes()

    def learned_codes(self) -> torch.Tensor:
        return self.asymmetric.codes
