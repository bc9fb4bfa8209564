"""The one interface every hashing method implements: encoder, hash head, loss, sampler, defaults.

A method is a subclass of :class:`Method` that overrides only what differs from
the common case (a timm backbone with global pooling, a linear + tanh hash head,
shuffled batches, Adam). The engine, data pipeline, evaluator and results store
know nothing else about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterator, NamedTuple

import numpy as np
import timm
import torch
from torch import nn


class HashOutput(NamedTuple):
    """What a network gives for a batch: the continuous code (B x bits), optional class logits."""

    code: torch.Tensor
    logits: torch.Tensor | None = None


@dataclass(frozen=True)
class StepInfo:
    """Where training stands, for losses and heads that follow a schedule."""

    epoch: int
    step: int  # global step, from 0
    steps_per_epoch: int
    epochs: int


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and batch defaults a method declares (its paper's, scaled to the suite)."""

    optimizer: str = "adam"  # adam | sgd | rmsprop
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False
    batch_size: int = 64
    head_lr_scale: float = 1.0  # the hash head's learning rate multiplier (HashNet, DPSH: x10)

    def with_overrides(self, values: dict[str, Any]) -> "TrainSettings":
        return replace(self, **{k: type(getattr(self, k))(v) for k, v in values.items()})


@dataclass
class MethodContext:
    """What a method is built for: code length, classes, training set size, its options, the seed."""

    bits: int
    n_classes: int
    n_train: int
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # for anything a method draws at random once (e.g. DPN's class targets)
    image_size: int = 224  # for heads whose width depends on feature-map size (DAFH)


class HashNetwork(nn.Module):
    """encoder (backbone + neck) -> head. The head returns a :class:`HashOutput`."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> HashOutput:
        return self.head(self.encoder(images))


class TanhHead(nn.Module):
    """The common hash layer: linear -> tanh(scale * z). ``scale`` may follow a schedule."""

    def __init__(self, in_features: int, bits: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, bits, bias=bias)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(torch.tanh(self.scale * self.linear(features)))


class LinearHead(nn.Module):
    """A hash layer without squashing (DSH, DPN): codes are sign(z) at test time."""

    def __init__(self, in_features: int, bits: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, bits, bias=bias)

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(self.linear(features))


class Method:
    """Base class of every hashing method. Override only what differs.

    Class attributes a method sets: ``paper`` (reference), ``options`` (its own
    hyperparameters with defaults, each overridable as ``--set name.key=value``),
    ``train`` (optimiser and batch defaults). ``name`` and ``origin`` are set by
    registration.
    """

    name: ClassVar[str] = ""
    origin: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    train: ClassVar[TrainSettings] = TrainSettings()

    def __init__(self, context: MethodContext):
        self.context = context
        self.bits = context.bits
        self.opt = {**self.options, **context.options}

    @classmethod
    def resolve_options(cls, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split user overrides into (method options, train settings); unknown keys are errors."""
        train_keys = set(TrainSettings.__dataclass_fields__)
        unknown = set(overrides) - set(cls.options) - train_keys
        if unknown:
            valid = ", ".join(sorted(set(cls.options) | train_keys))
            raise ValueError(f"{cls.name}: unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
        options = {k: _coerce(cls.options[k], v) for k, v in overrides.items() if k in cls.options}
        train = {k: v for k, v in overrides.items() if k in train_keys}
        return options, train

    def build_encoder(self, backbone: str, pretrained: bool) -> tuple[nn.Module, int]:
        """A timm backbone with global pooling; returns the module and its feature width."""
        encoder = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        return encoder, encoder.num_features

    def build_head(self, in_features: int) -> nn.Module:
        return TanhHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        """A module: ``loss(output, labels_onehot, indices, info) -> {term: tensor}``, summed by the engine."""
        raise NotImplementedError(f"{type(self).__name__} must define build_loss")

    def build(self, backbone: str, pretrained: bool) -> tuple[HashNetwork, nn.Module]:
        encoder, width = self.build_encoder(backbone, pretrained)
        return HashNetwork(encoder, self.build_head(width)), self.build_loss()

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Training-set positions per batch for one epoch; default: a shuffle, last partial batch dropped."""
        order = rng.permutation(len(labels))
        for start in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
            yield order[start : start + batch_size]

    def schedule(self, model: HashNetwork, info: StepInfo) -> None:
        """Called before every training step, for continuation schedules (e.g. HashNet's beta)."""


def _coerce(default: Any, value: Any) -> Any:
    """Give an override the type of the option's default (CLI values arrive as text)."""
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes", "on")
    return type(default)(value)
