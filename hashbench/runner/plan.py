"""Planning a run: the user's request resolved, once, into one :class:`CellSpec` per cell.

Everything is resolved and validated here (profile, methods and their options, optimiser
and schedule, augmentation, the split and its labels, backbones and their weights)
before anything is written, so a mistake costs nothing and ``--dry-run`` shows exactly
what would run. The cell runner consumes a spec as it is and looks nothing up again.
"""

from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from hashbench.config.limits import check_range
from hashbench.config.profiles import default_profile, get_profile
from hashbench.data.dataset import Dataset
from hashbench.data.sides import DrawnSplit, draw_split
from hashbench.evaluation.evaluate import DEFAULT_METRICS, STORED_METRICS, parse_metric
from hashbench.model.method import Method, MethodContext, TrainingFreeMethod, TrainSettings
from hashbench.model.registry import method_class
from hashbench.model.weights import WeightSource, is_cached, parse_weights_option, resolve
from hashbench.runner.tracking import Tracking
from hashbench.store.digest import file_sha256
from hashbench.store.results import NO_CODE, CellConfig
from hashbench.training.augment import PAPER_AUGMENTATION, Augmentation
from hashbench.training.engine import Execution
from hashbench.training.features import FeatureKey


@dataclass
class RunRequest:
    """What the user asked for; ``None`` means the profile's or the method's default."""

    methods: list[str]
    bits: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset: str = "phantom"
    backbones: list[str] = field(default_factory=list)  # the grid runs once per backbone; empty: the profile's
    pretrained: bool | None = None
    weights: list[str] = field(default_factory=list)  # --weights values: FILE, MODEL=FILE or DIR
    epochs: int | None = None
    image_size: int | None = None
    split: str | None = None  # None: the dataset's own (official where the data ships a split, else patient)
    split_seed: int = 0
    validation: float = 0.0
    device: str = "auto"
    profile: str | None = None
    augment: str | None = None  # none, paper, or key=value,...; None: the profile's
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name (or "*") -> key -> value
    metrics: tuple[str, ...] = DEFAULT_METRICS
    force: bool = False
    execution: Execution = field(default_factory=Execution)  # precision, memory layout, compilation
    shard: tuple[int, int] | None = None  # (i, n): run only share i of n balanced shares of the grid, 0 <= i < n
    freeze_backbone: bool = False  # deep methods train their head alone, on the backbone's cached features
    tracking: Tracking = field(default_factory=Tracking)  # experiment trackers fed a copy of each cell's training


ENCODER_STEPS = ("build", "build_encoder", "create_backbone", "input_statistics")  # what makes the cached features


@dataclass(frozen=True)
class Unbuildable:
    """Why a method could not be built at plan time (a plugin raising in ``__init__`` or ``backbones``): its cells
    fail with this, the rest of the grid runs."""

    reason: str  # the exception, as a traceback's last line says it
    traceback: str


@dataclass(frozen=True)
class CellSpec:
    """One cell as it will run, fully resolved: what the cell runner trains, evaluates and stores."""

    config: CellConfig  # what determines the result (and names its directory)
    method: type[Method]
    settings: TrainSettings
    weights: dict[str, WeightSource]  # initial weights per backbone
    split: DrawnSplit
    augmentation: Augmentation
    metrics: tuple[str, ...]  # computed and stored: the stored set, the protocol's published metric, the requested ones
    execution: Execution
    synthetic: bool  # the dataset is generated (records and captions say so)
    device: torch.device  # where the cell trains, encodes and ranks (under torchrun, each process its own of this type)
    reads_cached_features: bool = False  # the method's encoder is a frozen backbone (as the plan built it)
    unbuildable: Unbuildable | None = None  # the method failed to build: the cell fails without running
    tracking: Tracking = Tracking()  # the trackers each attempt at the cell feeds

    @property
    def context(self) -> MethodContext:
        """What the method is built for in this cell."""
        config = self.config
        return MethodContext(
            config.bits,
            len(self.split.class_names),
            len(self.split.training),
            config.options,
            config.seed,
            config.image_size,
            self.weights,
            config.frozen_backbone,
        )

    @property
    def feature_key(self) -> FeatureKey | None:
        """The cached features this cell hashes, for a method on a frozen backbone (None: it trains its encoder, or
        hashes pixels)."""
        if not self.reads_cached_features:
            return None
        config = self.config
        source = self.weights.get(config.backbone)
        weights = source.identity() if source else "random"
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.execution.dtype(self.device)]
        return FeatureKey(
            config.dataset,
            config.dataset_fingerprint,
            config.backbone + self._own_encoder(),
            weights + (f" seed {config.seed}" if weights == "random" else ""),
            config.image_size,
            precision,
        )

    def _own_encoder(self) -> str:
        """'' for the pooled backbone every method shares; else which method's own encoder gives the features (its
        origin, and a local file's digest: an edited encoder is another cache)."""
        own = [
            name
            for name in ENCODER_STEPS
            if getattr(self.method, name) not in (getattr(Method, name), getattr(TrainingFreeMethod, name))
        ]
        if not own:
            return ""
        origin = self.method.origin
        digest = file_sha256(origin.removeprefix("file:"))[:16] if origin.startswith("file:") else ""
        return f" via {self.method.__qualname__}.{'/'.join(own)} of {origin} {digest}".rstrip()

    @property
    def training_free(self) -> bool:
        return bool(getattr(self.method, "fitted", False))

    def estimated_cost(self) -> float:
        """Relative training cost: epochs x pixels x backbones; a training-free cell costs next to nothing."""
        config = self.config
        if self.training_free:
            return 1e-3 * config.image_size**2
        return float(config.epochs * config.image_size**2 * max(1, len(config.backbone.split(" + "))))

    def describe(self, out: Path) -> dict[str, Any]:
        """The full configuration as plain data, for ``--dry-run``; an unbuildable cell says why instead of where its
        directory would be (the method's backbones, which name it, are unknown)."""
        if self.unbuildable:  # and its backbones and their weights unknown
            known = {k: v for k, v in asdict(self.config).items() if k not in ("backbone", "weights")}
            return {"cell": self.config.label(), **known, "unbuildable": self.unbuildable.reason}
        weights = {
            model: source.describe()
            + ("" if is_cached(source) else " (not cached yet: downloaded before training starts)")
            for model, source in self.weights.items()
        }
        key = self.feature_key
        return {
            "cell": self.config.label(),
            **asdict(self.config),
            "weights": weights,
            **({"feature_cache": f"{key.dataset}/{key.digest()}"} if key else {}),
            "directory": str(self.config.directory(out)),
        }


def resolve_device(name: str = "auto") -> torch.device:
    """The device a name asks for (``auto``: CUDA when present); ValueError naming the valid ones."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name!r}: hashbench trains on cpu, cuda or mps")
    return device


def with_defaults(request: RunRequest, dataset: Dataset, device: torch.device) -> RunRequest:
    """The request with every value it leaves to the profile, the dataset or the machine filled in: the one place
    defaults are decided, for :func:`plan` and for the resolved sweep a dry run prints."""
    profile_name = request.profile or default_profile(bool(dataset.manifest.get("synthetic")), device.type)
    profile = get_profile(profile_name)
    return replace(
        request,
        profile=profile_name,
        epochs=profile.epochs if request.epochs is None else request.epochs,
        image_size=profile.image_size_for(dataset.image_size) if request.image_size is None else request.image_size,
        split=request.split or dataset.default_split,
        backbones=list(dict.fromkeys(request.backbones)) or [profile.backbone],
        pretrained=profile.pretrained if request.pretrained is None else request.pretrained,
        augment=augment_option(profile.augment) if request.augment is None else request.augment,
        device=str(device),
    )


def augment_option(augmentation: Augmentation) -> str:
    """The --augment text that parses back to ``augmentation``: none, paper, or its non-zero magnitudes."""
    if not augmentation.enabled:
        return "none"
    if augmentation == PAPER_AUGMENTATION:
        return "paper"
    return ",".join(f"{name}={value!r}" for name, value in augmentation.to_dict().items() if value)


def plan(request: RunRequest, dataset: Dataset, device: torch.device | None = None) -> list[CellSpec]:
    """Every cell's full specification; raises ValueError (or the registry's errors) on anything invalid. Writes no cell.

    ``device``: where the cells will run; by default the request's (``auto``: CUDA when present).
    """
    device = resolve_device(request.device) if device is None else device
    request = with_defaults(request, dataset, device)
    profile_name, epochs, image_size = request.profile, request.epochs, request.image_size
    profile = get_profile(profile_name)
    for bits in request.bits:
        check_range("bits", bits)
    check_range("image_size", image_size)
    if epochs < 1:
        raise ValueError(f"--epochs {epochs} is too small: at least 1")
    if not request.methods or not request.bits or not request.seeds:
        raise ValueError("a run needs at least one method, one code length and one seed")
    if min(request.seeds) < 0 or request.split_seed < 0:
        raise ValueError("--seeds and --split-seed take whole numbers from 0")
    strangers = set(request.overrides) - {"*", *request.methods}
    if strangers:
        raise ValueError(
            f"--set names {', '.join(sorted(strangers))}, not in this run ({', '.join(request.methods)}); write key=value for every method or method.key=value for one of them"
        )
    augmentation = Augmentation.parse(request.augment)
    split = draw_split(dataset, request.split, request.split_seed, request.validation)
    metrics = tuple(
        dict.fromkeys(STORED_METRICS + tuple(filter(None, [split.published_metric])) + tuple(request.metrics))
    )
    run_backbones = request.backbones
    synthetic = bool(dataset.manifest.get("synthetic", False))
    pretrained = request.pretrained
    files = parse_weights_option(request.weights)
    if len(run_backbones) > 1 and None in files.by_model:
        raise ValueError(
            f"--weights {files.by_model[None]} names no model and the run has {len(run_backbones)} backbones; write "
            "--weights MODEL=FILE for each"
        )
    named = files.models()
    cells = []
    for run_backbone, name in ((b, m) for b in run_backbones for m in dict.fromkeys(request.methods)):
        method = method_class(name)
        # fitted ones: their own option; a method whose authors freeze the backbone: always
        frozen = (request.freeze_backbone or not method.trains_backbone) and not getattr(method, "fitted", False)
        if frozen and method.not_freezable:
            raise ValueError(f"--freeze-backbone: {name} cannot train on cached features: {method.not_freezable}")
        cell_augmentation = Augmentation() if frozen else augmentation  # cached features are of the images as stored
        cell_augmentation = method.view_augmentation or cell_augmentation  # a two-view method's views are its own
        user = {**request.overrides.get("*", {}), **request.overrides.get(name, {})}
        options, train = method.resolve_options(user)
        settings = method.train.with_overrides({**profile.train, **train}, name)
        context = MethodContext(
            request.bits[0], len(split.class_names), len(split.training), options, 0, image_size, frozen_backbone=frozen
        )
        backbones, reads_cached_features, unbuildable = build_method(method, context, run_backbone)
        weights = {model: resolve(model, pretrained, files, default_model=run_backbone) for model in backbones}
        lengths = (NO_CODE,) if method.float_distance else request.bits  # a float reference has no code length
        # and draws nothing: its features differ by seed only where a seed draws the backbone's random init
        seeds = request.seeds[:1] if method.float_distance and not any_random(weights) else request.seeds
        measured = tuple(m for m in metrics if not (method.float_distance and parse_metric(m).radius))
        for bits in dict.fromkeys(lengths):
            for seed in dict.fromkeys(seeds):
                config = CellConfig(
                    dataset=dataset.name,
                    method=name,
                    bits=bits,
                    seed=seed,
                    backbone=" + ".join(backbones),
                    epochs=epochs,
                    image_size=image_size,
                    split=split.protocol,
                    validation=request.validation,
                    options=options,
                    train=asdict(settings),
                    run_backbone=run_backbone,
                    weights={m: w.identity() for m, w in weights.items()},
                    augment=cell_augmentation.to_dict(),
                    profile=profile_name,
                    split_seed=request.split_seed,
                    dataset_fingerprint=dataset.fingerprint,
                    split_hash=split.hash,
                    frozen_backbone=frozen,
                )
                cells.append(
                    CellSpec(
                        config,
                        method,
                        settings,
                        weights,
                        split,
                        cell_augmentation,
                        measured,
                        request.execution,
                        synthetic,
                        device,
                        reads_cached_features,
                        unbuildable,
                        request.tracking,
                    )
                )
    unused = (
        named
        - {model for cell in cells for model in cell.weights}
        - {model.partition(".")[0] for cell in cells for model in cell.weights}
    )
    if unused:
        raise ValueError(
            f"--weights names {', '.join(sorted(unused))}, which no method of this run builds (they build {', '.join(sorted({m for c in cells for m in c.weights}))})"
        )
    return shard_cells(cells, *request.shard) if request.shard else cells


def build_method(
    method: type[Method], context: MethodContext, run_backbone: str
) -> tuple[list[str], bool, Unbuildable | None]:
    """Build ``method`` once for its cells: (the backbones it builds, whether it reads cached features, None); a method
    whose construction raises (a plugin's bug, as at train time) gives ([], False, why) and fails only its own cells."""
    try:
        built = method(context)
        return built.backbones(run_backbone), built.reads_cached_features, None
    except Exception as exc:
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return [], False, Unbuildable(reason, traceback.format_exc())


def any_random(weights: dict[str, WeightSource]) -> bool:
    return any(source.kind == "random" for source in weights.values())


def shard_cells(cells: list[CellSpec], index: int, count: int) -> list[CellSpec]:
    """Share ``index`` (counted from 0, as scheduler array indices are) of ``count`` shares of the grid: every cell in exactly one share, shares balanced by estimated cost.

    Greedy longest-first onto the least-loaded share; the plan's order breaks ties, so every machine computes the same shares.
    """
    if not 0 <= index < count:
        raise ValueError(
            f"--shard {index}/{count}: expected I/N with 0 <= I < N (shares are counted from 0), e.g. --shard 0/8 ... --shard 7/8"
        )
    loads, owner = [0.0] * count, {}
    for position in sorted(range(len(cells)), key=lambda p: (-cells[p].estimated_cost(), p)):
        share = min(range(count), key=lambda s: (loads[s], s))
        owner[position] = share
        loads[share] += cells[position].estimated_cost()
    return [cell for position, cell in enumerate(cells) if owner[position] == index]
