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
import torch
from torch import nn

from hashbench.weights import WeightSource, create_backbone


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
    lr_schedule: str = "constant"  # or step:<every><it|ep|%>:<factor>, e.g. step:2000it:0.5 (see engine.LrSchedule)

    def with_overrides(self, values: dict[str, Any]) -> "TrainSettings":
        return replace(self, **{k: _coerce(getattr(self, k), v, k) for k, v in values.items()})


@dataclass
class MethodContext:
    """What a method is built for: code length, classes, training set size, its options, the seed."""

    bits: int
    n_classes: int
    n_train: int
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # for anything a method draws at random once (e.g. DPN's class targets)
    image_size: int = 224  # for heads whose width depends on feature-map size (DAFH)
    weights: dict[str, WeightSource] = field(default_factory=dict)  # initial weights per backbone; missing: random init


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
    ``choices`` (the valid values of options that take one of a few), ``train``
    (optimiser and batch defaults). ``name`` and ``origin`` are set by registration.
    """

    name: ClassVar[str] = ""
    origin: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {}
    train: ClassVar[TrainSettings] = TrainSettings()

    def __init__(self, context: MethodContext):
        self.context = context
        self.bits = context.bits
        self.opt = {**self.options, **context.options}

    @classmethod
    def resolve_options(cls, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split user overrides into (method options, train settings); unknown keys and invalid values are errors."""
        train_keys = set(TrainSettings.__dataclass_fields__)
        unknown = set(overrides) - set(cls.options) - train_keys
        if unknown:
            valid = ", ".join(sorted(set(cls.options) | train_keys))
            raise ValueError(f"{cls.name}: unknown option(s) {', '.join(sorted(unknown))}; valid: {valid}")
        options = {k: _coerce(cls.options[k], v, f"{cls.name}.{k}") for k, v in overrides.items() if k in cls.options}
        for key, value in {**cls.options, **options}.items():
            if key in cls.choices and value not in cls.choices[key]:
                raise ValueError(f"{cls.name}: {key}={value!r} is not valid; valid: {', '.join(map(str, cls.choices[key]))}")
        train = {k: v for k, v in overrides.items() if k in train_keys}
        return options, train

    def backbones(self, run_backbone: str) -> list[str]:
        """The timm models this method builds when the run's backbone is ``run_backbone`` (a variant may bring its own).

        The run records them and checks them against what was actually built.
        """
        return [run_backbone]

    def create_backbone(self, name: str, **kwargs) -> nn.Module:
        """A timm model initialised as the run decided (ImageNet, a local file or random)."""
        return create_backbone(self.context.weights.get(name) or WeightSource(name, "random", "", ""), **kwargs)

    def build_encoder(self, backbone: str) -> tuple[nn.Module, int]:
        """A timm backbone with global pooling; returns the module and its feature width."""
        encoder = self.create_backbone(backbone, num_classes=0)
        return encoder, encoder.num_features

    def build_head(self, in_features: int) -> nn.Module:
        return TanhHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        """A module: ``loss(output, labels_onehot, indices, info) -> {term: tensor}``, summed by the engine."""
        raise NotImplementedError(f"{type(self).__name__} must define build_loss")

    def build(self, backbone: str) -> tuple[HashNetwork, nn.Module]:
        """Network and loss for the run's backbone ``backbone``."""
        encoder, width = self.build_encoder(backbone)
        return HashNetwork(encoder, self.build_head(width)), self.build_loss()

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Training-set positions per batch for one epoch; default: a shuffle, last partial batch dropped."""
        order = rng.permutation(len(labels))
        for start in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
            yield order[start : start + batch_size]

    def schedule(self, model: HashNetwork, info: StepInfo) -> None:
        """Called before every training step, for continuation schedules (e.g. HashNet's beta)."""


def _coerce(default: Any, value: Any, name: str = "option") -> Any:
    """Give an override the type of the option's default (CLI values arrive as text); a value that does not fit is an error."""
    if isinstance(value, bool) and not isinstance(default, bool) and default is not None:
        raise ValueError(f"{name}={value!r} is not valid; expected {type(default).__name__}")
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, bool):
        text = str(value).lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{name}={value!r} is not valid; expected true or false")
        return text in ("1", "true", "yes", "on")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        converted = type(default)(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not valid; expected {type(default).__name__}") from None
    if isinstance(default, int) and isinstance(value, float) and converted != value:
        raise ValueError(f"{name}={value!r} is not valid; expected a whole number")
    return converted
