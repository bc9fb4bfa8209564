"""The one interface every hashing method implements: encoder, hash head, loss, sampler, defaults.

A method is a subclass of :class:`Method` that overrides only what differs from
the common case (a timm backbone with global pooling, a linear + tanh hash head,
shuffled batches, Adam). The engine, data pipeline, evaluator and results store
know nothing else about it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Iterator, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from hashbench.model import options
from hashbench.model.components import HSWDQuantization
from hashbench.model.options import option
from hashbench.model.weights import WeightSource, create_backbone, fixed_input_size, pretrained_statistics
from hashbench.training.augment import Augmentation


class HashOutput(NamedTuple):
    """What a network gives for a batch: the continuous code (B x bits), optional class logits, and optionally the
    features the head read (for losses that compare codes with them: BiHalf)."""

    code: torch.Tensor
    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None


@dataclass(frozen=True)
class StepInfo:
    """Where training stands, for losses and heads that follow a schedule."""

    epoch: int
    step: int  # global step, from 0
    steps_per_epoch: int
    epochs: int


@dataclass(frozen=True)
class LrSchedule:
    """The learning rate as a function of the global step: constant, or times ``factor`` every ``every`` units.

    Written ``constant`` or ``step:<every><unit>:<factor>`` with unit ``it`` (iterations), ``ep``
    (epochs) or ``%`` (of all training steps): HashNet's authors ``step:2000it:0.5``, DPN's
    ``step:50%:0.1`` (x0.1 at half the epochs). Stateless, so a resumed cell follows it exactly.
    """

    every: float = 0.0
    unit: str = "it"
    factor: float = 1.0

    PATTERN = re.compile(r"^step:(?P<every>\d+(?:\.\d+)?)(?P<unit>it|ep|%):(?P<factor>\d+(?:\.\d+)?(?:e-?\d+)?)$")

    @classmethod
    def parse(cls, text: str) -> "LrSchedule":
        if text == "constant":
            return cls()
        match = cls.PATTERN.match(text)
        if not match or float(match["every"]) <= 0:
            raise ValueError(
                f"lr_schedule={text} is not valid; use constant or step:<every><it|ep|%>:<factor>, e.g. step:2000it:0.5, step:30ep:0.1, step:50%:0.1"
            )
        return cls(float(match["every"]), match["unit"], float(match["factor"]))

    def multiplier(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        if not self.every:
            return 1.0
        period = {
            "it": self.every,
            "ep": self.every * steps_per_epoch,
            "%": self.every / 100 * epochs * steps_per_epoch,
        }[self.unit]
        return self.factor ** (step // max(1, round(period)))


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and batch defaults a method declares (its paper's, scaled to the suite); typed like method options."""

    optimizer: Literal["adam", "sgd", "rmsprop"] = option("adam", "the optimiser")
    lr: float = option(1e-4, "learning rate of the backbone", above=0.0)
    weight_decay: float = option(1e-4, "L2 weight decay", at_least=0.0)
    momentum: float = option(0.9, "momentum of sgd and rmsprop", at_least=0.0)
    nesterov: bool = option(False, "Nesterov momentum (sgd)")
    batch_size: int = option(64, "images per training step", at_least=2)
    head_lr_scale: float = option(1.0, "the hash head's learning rate multiplier (HashNet, DPSH: x10)", above=0.0)
    lr_schedule: str = option("constant", "constant, or step:<every><it|ep|%>:<factor>, e.g. step:2000it:0.5")

    def with_overrides(self, values: dict[str, Any], owner: str = "train") -> "TrainSettings":
        """These settings with ``values`` replaced, each checked by its type; ``lr_schedule`` by its grammar too."""
        settings = options.parse(TrainSettings, {**asdict(self), **values}, owner)
        try:
            LrSchedule.parse(settings.lr_schedule)
        except ValueError as exc:
            raise ValueError(f"{owner}.{exc}") from None
        return settings


@dataclass
class MethodContext:
    """What a method is built for: code length, classes, training set size, its options, the seed."""

    bits: int
    n_classes: int
    n_train: int
    options: dict[str, Any] = field(default_factory=dict)  # the method's options as stored in the cell's config
    seed: int = 0  # for anything a method draws at random once (e.g. DPN's class targets)
    image_size: int = 224  # for heads whose width depends on feature-map size (DAFH)
    weights: dict[str, WeightSource] = field(default_factory=dict)  # initial weights per backbone; missing: random init
    frozen_backbone: bool = False  # --freeze-backbone: the head alone trains, on the backbone's cached features


class HashNetwork(nn.Module):
    """encoder (backbone + neck) -> head. The head returns a :class:`HashOutput`.

    ``normalisation``: the (means, stds) per channel its input is normalised with, where not ImageNet's (None)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, normalisation=None):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.normalisation = normalisation

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


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none of its own."""


@dataclass(frozen=True)
class LossSwitches:
    """Options every trained method takes, whatever its loss; a cell stores those that differ from these defaults."""

    quantization: Literal["own", "hswd"] = option(
        "own", "the quantisation term: the method's own, or HSWD (One Loss for Quantization, CVPR 2022) in its place"
    )
    hswd_weight: float = option(0.1, "weight of the HSWD term (the authors' with HashNet)", at_least=0.0)
    hswd_target: Literal["random", "balanced"] = option(
        "random", "HSWD's target: fresh coin flips each step (the authors') or exactly half -1, half +1 per bit"
    )


SWITCH_DEFAULTS = asdict(LossSwitches())


class Method:
    """Base class of every hashing method. Override only what differs.

    Class attributes a method sets: ``paper`` (reference), ``Options`` (a frozen
    dataclass of its own hyperparameters, typed, each overridable as
    ``--set name.key=value``; see :mod:`hashbench.model.options`), ``train`` (optimiser
    and batch defaults). ``name`` and ``origin`` are set by registration. An
    instance reads its options as ``self.opt.<key>``.
    """

    name: ClassVar[str] = ""
    origin: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    train: ClassVar[TrainSettings] = TrainSettings()
    # the augmentation a method's views draw from, replacing the run's (and recorded in its cells); None: the run's
    view_augmentation: ClassVar[Augmentation | None] = None
    # the key of the loss's own quantisation term, which quantization=hswd replaces ('' : none, HSWD is added)
    quantization_term: ClassVar[str] = ""
    # whose published run the train defaults follow, and any former defaults they replaced (`hashbench options`)
    train_follows: ClassVar[str] = ""
    # why the head cannot train on cached pooled features ('' : it can; --freeze-backbone)
    not_freezable: ClassVar[str] = ""
    # a float reference ranks its unhashed features by this distance ('cosine', 'euclidean'); '' : the method hashes
    float_distance: ClassVar[str] = ""
    # False: trained without labels (its loss is handed None; labels only judge its codes)
    supervised: ClassVar[bool] = True
    # False: the authors keep the backbone frozen, so the head always trains alone on its cached features
    trains_backbone: ClassVar[bool] = True
    # the authors clip the gradient's total norm at this before each step (MDSH: 5); None: no clipping
    max_grad_norm: ClassVar[float | None] = None

    def __init__(self, context: MethodContext):
        self.context = context
        self.bits = context.bits
        owner = self.name or type(self).__name__
        own = {k: v for k, v in context.options.items() if k not in SWITCH_DEFAULTS}
        self.opt = options.parse(self.Options, own, owner)
        self.switches = options.parse(
            LossSwitches, {k: context.options[k] for k in SWITCH_DEFAULTS.keys() & context.options}, owner
        )

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return asdict(cls.Options())

    @classmethod
    def option_tables(cls) -> tuple[options.OptionTable, ...]:
        """What a user may change: its options, and for a trained method its train settings and the loss switches."""
        tables = [options.OptionTable("method options", tuple(options.rows(cls.Options)))]
        if getattr(cls, "fitted", False):
            return tuple(tables)
        from hashbench.config.profiles import PROFILES

        profiles = "; ".join(
            f"{name} sets " + ", ".join(f"{k}={v}" for k, v in profile.train.items())
            for name, profile in PROFILES.items()
            if profile.train
        )
        follows = f", after {cls.train_follows}" if cls.train_follows else ""
        replaced = f"replaces its term '{cls.quantization_term}'" if cls.quantization_term else "is added"
        return (
            *tables,
            options.OptionTable(
                "train settings",
                tuple(options.rows(TrainSettings, cls.train)),
                f"the method's defaults{follows}; a profile may replace some ({profiles}); "
                "--dry-run shows what a run will use",
            ),
            options.OptionTable(
                "loss switches (every trained method)",
                tuple(options.rows(LossSwitches)),
                f"--set quantization=hswd for every method of a run; for {cls.name} HSWD {replaced}",
            ),
        )

    @classmethod
    def resolve_options(cls, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split user overrides into (every method option, plus the loss switches that differ from their defaults;
        train overrides); unknown keys and values that do not fit are errors."""
        option_keys, train_keys = {f.name for f in fields(cls.Options)}, {f.name for f in fields(TrainSettings)}
        switch_keys = set(SWITCH_DEFAULTS) if not getattr(cls, "fitted", False) else set()
        unknown = set(overrides) - option_keys - train_keys - switch_keys
        if unknown:
            raise ValueError(
                f"{cls.name}: unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(option_keys | train_keys | switch_keys))} (see `hashbench options {cls.name}`)"
            )
        chosen = options.parse(cls.Options, {k: v for k, v in overrides.items() if k in option_keys}, cls.name)
        switches = asdict(
            options.parse(LossSwitches, {k: v for k, v in overrides.items() if k in switch_keys}, cls.name)
        )
        changed = {k: v for k, v in switches.items() if v != SWITCH_DEFAULTS[k]}
        return {**asdict(chosen), **changed}, {k: v for k, v in overrides.items() if k in train_keys}

    def view_strengths(self) -> tuple[float, ...]:
        """One entry per view of each image the loss sees, each the strength (0 to 1) of the augmentation it draws:
        (1.0, 1.0) hands two equally augmented views, (0.5, 1.0) a weak and a strong one. The loss sees the rows
        view by view: the first view of the whole batch, then the second."""
        return (1.0,)

    def backbones(self, run_backbone: str) -> list[str]:
        """The timm models this method builds when the run's backbone is ``run_backbone`` (a variant may bring its own).

        The run records them and checks them against what was actually built.
        """
        return [run_backbone]

    @property
    def reads_cached_features(self) -> bool:
        """Whether the encoder is a backbone never trained here, whose features come from the feature cache: a head
        trained alone (--freeze-backbone), or a training-free method on backbone features."""
        return self.context.frozen_backbone

    def create_backbone(self, name: str, **kwargs) -> nn.Module:
        """A timm model initialised as the run decided (ImageNet, a local file or random); one built for a fixed
        input size (a ViT) is built for the run's image size."""
        if fixed_input_size(name):
            kwargs.setdefault("img_size", self.context.image_size)
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
        normalisation = self.input_statistics(backbone, encoder)
        if self.reads_cached_features:
            encoder = FrozenFeatures(encoder)
        return HashNetwork(encoder, self.build_head(width), normalisation), self.training_loss()

    def training_loss(self) -> nn.Module:
        """The method's loss as the cell trains it: with HSWD in place of its quantisation term where asked."""
        loss = self.build_loss()
        if self.switches.quantization == "hswd":
            loss = HSWDQuantization(loss, self.quantization_term, self.switches.hswd_weight, self.switches.hswd_target)
        return loss

    def input_statistics(self, backbone: str, encoder: nn.Module):
        """The channel statistics the backbone's pretrained weights expect their input normalised with, where not
        ImageNet's; None for ImageNet's and for a random init (whose weights expect nothing in particular)."""
        source = self.context.weights.get(backbone)
        return None if source is None or source.kind == "random" else pretrained_statistics(encoder)

    def batches(self, labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Training-set positions per batch for one epoch; default: a shuffle, last partial batch dropped."""
        order = rng.permutation(len(labels))
        for start in range(0, max(len(order) - batch_size, 0) + 1, batch_size):
            yield order[start : start + batch_size]

    def schedule(self, model: HashNetwork, info: StepInfo) -> None:
        """Called before every training step, for continuation schedules (e.g. HashNet's beta)."""

    def begin_training(self, labels: torch.Tensor | None) -> None:
        """Called once before the first step with every training item's label rows (None when unsupervised), in
        training-set order: for losses that compare a batch with the whole training set (ADSH)."""

    def end_epoch(self, info: StepInfo) -> None:
        """Called after each epoch's last step, before its checkpoint: for state a method updates outside the gradient
        steps (ADSH's database codes)."""

    def learned_codes(self) -> torch.Tensor | None:
        """Codes learned for the training items themselves (n_train x bits, in training-set order), which stand for the
        network's codes of those items in the database (ADSH); None: the network encodes every item."""
        return None


class PixelFeatures(nn.Module):
    """Raw pixels as features: the network's input averaged down to ``side`` x ``side`` per channel, flattened."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, self.side).flatten(1)


class FrozenFeatures(nn.Module):
    """A backbone's pooled features, never trained: what a training-free method on deep features, or a head trained
    alone, reads (from the feature cache)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenFeatures":
        return super().train(False)  # batch norm statistics stay the pretrained ones

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


class TrainingFreeMethod(Method):
    """A method fitted once, in closed form, to the training set's features instead of trained by gradients.

    The encoder gives features (raw pixels by default, or a frozen backbone's), ``fit``
    turns the training features into the head's state, and from there the run is a
    deep method's: the same encoding, evaluation and results store. A subclass gives
    ``fit``, which fills the head's buffers (a linear projection unless it brings its own head).
    """

    fitted: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Options:
        features: Literal["pixels", "backbone"] = option(
            "pixels", "what is hashed: raw pixels, or the run's backbone's features (frozen)"
        )
        pixels: int = option(16, "side of the downsampled image that pixel features are read from", at_least=1)

    def backbones(self, run_backbone: str) -> list[str]:
        return [run_backbone] if self.reads_cached_features else []

    @property
    def reads_cached_features(self) -> bool:
        return self.opt.features == "backbone"

    def build_encoder(self, backbone: str) -> tuple[nn.Module, int]:
        if self.reads_cached_features:
            return super().build_encoder(backbone)
        return PixelFeatures(self.opt.pixels), 3 * self.opt.pixels**2

    def build_head(self, in_features: int) -> nn.Module:
        return ProjectionHead(in_features, self.bits)

    def build_loss(self) -> nn.Module:
        return nn.Module()  # nothing is trained

    def fit(self, head: nn.Module, features: np.ndarray) -> None:
        """Fill ``head``'s buffers from the training features (n, d), seeded by the run's seed."""
        raise NotImplementedError(f"{type(self).__name__} must define fit")

    def check_dimensions(self, width: int, needed: int) -> None:
        if width < needed:
            raise ValueError(
                f"{self.name}: {needed} projections need at least {needed} feature dimensions, the features have {width}; raise --set {self.name}.pixels or use fewer bits"
            )


class ProjectionHead(nn.Module):
    """codes = (x - mean) @ projection: the head of LSH, PCAH and ITQ, its state set by ``fit``."""

    def __init__(self, in_features: int, bits: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("projection", torch.zeros(in_features, bits))

    def forward(self, features: torch.Tensor) -> HashOutput:
        return HashOutput((features.float() - self.mean) @ self.projection)
