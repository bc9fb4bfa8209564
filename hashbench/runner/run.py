"""Running the grid: (methods x bits x seeds) on one dataset, one cell at a time.

A run is planned first: every cell's full configuration is resolved and validated
(methods, options, optimiser and schedule, augmentation, split, backbones and
their weights) before anything is written, so a mistake costs nothing and
``--dry-run`` shows exactly what would run. Then each cell is trained by the
engine, evaluated by the evaluator and stored through its :class:`Cell`:

- a finished cell is skipped; ``force`` re-runs it beside the finished result,
  which is replaced only once the new one is complete (an interrupted re-run
  resumes on the next ``force``); an interrupted cell resumes from its last
  epoch and ends as an uninterrupted run would;
- a cell that fails (a NaN loss, out of memory, a bug in a plugin) records why and
  the grid goes on;
- a cell being run by another process is left to it (a lock per cell), and waited
  for at the end, so several processes can share one sweep.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hashbench.training import distributed, engine

from hashbench.data import splits
from hashbench.training.augment import PAPER_AUGMENTATION, Augmentation
from hashbench.data.dataset import LABEL_SEPARATOR, Dataset, split_hash
from hashbench.files.digest import file_sha256
from hashbench.evaluation.evaluate import DEFAULT_METRICS, DEFAULT_TIE_RULE, STORED_METRICS, binarize, evaluate, pack, tie_diagnostics
from hashbench.model.method import Method, MethodContext
from hashbench.runner.provenance import describe_device, git_state, peak_memory_mib, start_memory_watch, versions
from hashbench.model.registry import REGISTRY
from hashbench.store.results import CHECKPOINT, FAILURE, LOG, RECORD, Cell, CellConfig, ResultsStore
from hashbench.model.weights import WeightSource, architectures, cached_revision, ensure_available, is_cached, parse_weights_option, resolve

PAPER_BACKBONE = "tf_efficientnet_b6.aa_in1k"  # timm's efficientnet_b6 has no ImageNet weights; this is B6 ported from TensorFlow, ImageNet-1k


@dataclass(frozen=True)
class Profile:
    """Defaults a run starts from; every value is recorded in each cell and shown in captions."""

    description: str
    backbone: str
    epochs: int
    image_size: int
    pretrained: bool
    augment: Augmentation
    train: dict[str, Any] = field(default_factory=dict)  # overrides of every method's optimiser settings


PROFILES: dict[str, Profile] = {
    "full": Profile(
        "the paper's training protocol: EfficientNet-B6 with ImageNet weights, 224 px, 50 epochs, augmented training images, each method's own optimiser and schedule",
        PAPER_BACKBONE, 50, 224, True, PAPER_AUGMENTATION,
    ),
    "full-b0": Profile(
        "the full profile on EfficientNet-B0: a cheaper backbone than the paper's B6",
        "efficientnet_b0", 50, 224, True, PAPER_AUGMENTATION,
    ),
    "quick": Profile(
        "a CPU budget for the synthetic phantom: timm's tiny test EfficientNet from random weights, 64 px (or the stored size if smaller), 30 epochs, "
        "no augmentation, Adam 1e-3 with batch 32 and a constant rate for every method (the authors' fine-tuning optimisers need ImageNet weights)",
        "test_efficientnet", 30, 64, False, Augmentation(),
        {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "head_lr_scale": 1.0, "batch_size": 32, "lr_schedule": "constant"},
    ),
}


def _default_image_size(profile: Profile, dataset: Dataset) -> int:
    """A pretrained backbone's own input size; from random weights, no upsampling beyond the stored images (28-px MedMNIST trains at 28)."""
    return profile.image_size if profile.pretrained else min(profile.image_size, dataset.image_size)


def default_profile(dataset: Dataset, device: torch.device) -> str:
    return "quick" if dataset.manifest.get("synthetic") and device.type == "cpu" else "full"


@dataclass
class RunRequest:
    """What the user asked for; ``None`` means the profile's or the method's default."""

    methods: list[str]
    bits: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset: str = "phantom"
    backbone: str | None = None
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
    execution: engine.Execution = field(default_factory=engine.Execution)  # precision, memory layout, compilation
    shard: tuple[int, int] | None = None  # (i, n): run only share i of n balanced shares of the grid, 0 <= i < n


@dataclass
class PlannedCell:
    """A cell as it will run: its configuration and where each backbone's weights come from."""

    config: CellConfig
    weights: dict[str, WeightSource]

    def describe(self, out: Path) -> dict[str, Any]:
        """The full configuration as plain data, for ``--dry-run``."""
        weights = {model: source.describe() + ("" if is_cached(source) else " (not cached yet: downloaded before training starts)") for model, source in self.weights.items()}
        return {"cell": self.config.label(), **asdict(self.config), "weights": weights, "directory": str(self.config.directory(out))}


@dataclass
class CellOutcome:
    config: CellConfig
    status: str  # done | skipped | failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    note: str = ""


def plan(request: RunRequest, dataset: Dataset, device: torch.device) -> list[PlannedCell]:
    """Every cell's full configuration; raises ValueError (or the registry's errors) on anything invalid. Writes no cell."""
    request = replace(request, split=request.split or dataset.default_split)
    profile_name = request.profile or default_profile(dataset, device)
    if profile_name not in PROFILES:
        raise ValueError(f"unknown profile {profile_name!r}; valid: {', '.join(PROFILES)}")
    profile = PROFILES[profile_name]
    epochs = profile.epochs if request.epochs is None else request.epochs
    image_size = _default_image_size(profile, dataset) if request.image_size is None else request.image_size
    for name, value, low in (("--bits", min(request.bits, default=1), 1), ("--epochs", epochs, 1), ("--image-size", image_size, 16)):
        if value < low:
            raise ValueError(f"{name} {value} is too small: at least {low}")
    if not request.methods or not request.bits or not request.seeds:
        raise ValueError("a run needs at least one method, one code length and one seed")
    if min(request.seeds) < 0 or request.split_seed < 0:
        raise ValueError("--seeds and --split-seed take whole numbers from 0")
    strangers = set(request.overrides) - {"*", *request.methods}
    if strangers:
        raise ValueError(f"--set names {', '.join(sorted(strangers))}, not in this run ({', '.join(request.methods)}); write key=value for every method or method.key=value for one of them")
    augmentation = profile.augment if request.augment is None else Augmentation.parse(request.augment)
    sides = _checked_split(dataset, request)
    trained = sides.isin(splits.TRAINED)
    _, training_classes = class_ids(dataset.index.loc[sides.index[trained.to_numpy()], "label"], dataset.multi_label)
    if len(training_classes) < 2:
        raise ValueError(f"{dataset.name}: the training side holds {len(training_classes)} class(es); retrieval by class needs at least two")
    n_classes, n_train = len(class_ids(dataset.index.loc[sides.index, "label"], dataset.multi_label)[1]), int(trained.sum())
    run_backbone = request.backbone or profile.backbone
    pretrained = profile.pretrained if request.pretrained is None else request.pretrained
    files = parse_weights_option(request.weights)
    fingerprint, hashed_split = dataset.fingerprint, split_hash(sides)
    cells = []
    for name in dict.fromkeys(request.methods):
        method_cls = REGISTRY.get(name)
        user = {**request.overrides.get("*", {}), **request.overrides.get(name, {})}
        options, train = method_cls.resolve_options(user)
        settings = method_cls.train.with_overrides({**profile.train, **train}, name)
        _check_schedule(name, settings)
        method = method_cls(MethodContext(request.bits[0], n_classes, n_train, options, 0, image_size))
        backbones = method.backbones(run_backbone)
        weights = {model: resolve(model, pretrained, files, default_model=run_backbone) for model in backbones}
        for bits in dict.fromkeys(request.bits):
            for seed in dict.fromkeys(request.seeds):
                config = CellConfig(
                    dataset=dataset.name, method=name, bits=bits, seed=seed, backbone=" + ".join(backbones), epochs=epochs, image_size=image_size,
                    split=request.split, validation=request.validation, options=options, train=asdict(settings),
                    run_backbone=run_backbone, weights={m: w.identity() for m, w in weights.items()}, augment=augmentation.to_dict(), profile=profile_name,
                    split_seed=request.split_seed, dataset_fingerprint=fingerprint, split_hash=hashed_split,
                )
                cells.append(PlannedCell(config, weights))
    unused = files.models() - {model for cell in cells for model in cell.weights} - {model.split(".")[0] for cell in cells for model in cell.weights}
    if unused:
        raise ValueError(f"--weights names {', '.join(sorted(unused))}, which no method of this run builds (they build {', '.join(sorted({m for c in cells for m in c.weights}))})")
    return shard_cells(cells, *request.shard) if request.shard else cells


def estimated_cost(config: CellConfig) -> float:
    """A cell's relative training cost: epochs x pixels x backbones; a training-free cell costs next to nothing."""
    if getattr(REGISTRY.get(config.method), "fitted", False):
        return 1e-3 * config.image_size**2
    return float(config.epochs * config.image_size**2 * max(1, len(config.backbone.split(" + "))))


def shard_cells(cells: list[PlannedCell], index: int, count: int) -> list[PlannedCell]:
    """Share ``index`` (counted from 0, as scheduler array indices are) of ``count`` shares of the grid: every cell in exactly one share, shares balanced by estimated cost.

    Greedy longest-first onto the least-loaded share; the plan's order breaks ties, so every machine computes the same shares.
    """
    if not 0 <= index < count:
        raise ValueError(f"--shard {index}/{count}: expected I/N with 0 <= I < N (shares are counted from 0), e.g. --shard 0/8 ... --shard 7/8")
    loads, owner = [0.0] * count, {}
    for position in sorted(range(len(cells)), key=lambda p: (-estimated_cost(cells[p].config), p)):
        share = min(range(count), key=lambda s: (loads[s], s))
        owner[position] = share
        loads[share] += estimated_cost(cells[position].config)
    return [cell for position, cell in enumerate(cells) if owner[position] == index]


def _checked_split(dataset: Dataset, request: RunRequest):
    valid = [*splits.BUILT_IN, *dataset.protocols]
    if request.split not in valid:
        raise ValueError(f"unknown split {request.split!r} for {dataset.name}; valid: {', '.join(valid)}")
    sides = dataset.split(request.split, seed=request.split_seed, validation_fraction=request.validation)
    for name, members in (("training", splits.TRAINED), ("database", splits.SEARCHED), ("query", ("query",))):
        if not sides.isin(members).any():
            raise ValueError(f"{dataset.name}: the {dataset.describe_split(request.split)} (seed {request.split_seed}) leaves the {name} side empty; the dataset is too small")
    return sides


def _check_schedule(method: str, settings) -> None:
    """The one train setting whose validity is a grammar, not a type."""
    try:
        engine.LrSchedule.parse(settings.lr_schedule)
    except ValueError as exc:
        raise ValueError(f"{method}.{exc}") from None


def run_grid(request: RunRequest, dataset: Dataset, out: Path, progress: bool = False, on_cell: Callable[[CellOutcome], None] | None = None) -> list[CellOutcome]:
    """Plan, make sure every backbone's weights are at hand, then run each cell; returns the outcomes in plan order."""
    sweep_start = time.time()
    git_state.cache_clear()  # the code as this sweep starts is what its cells record
    git_state()
    device = engine.resolve_device(request.device)
    planned = plan(request, dataset, device)
    if distributed.launched() and request.shard:
        raise ValueError("--shard spreads cells over machines, torchrun spreads one cell over processes: use one or the other")
    if not distributed.follower():  # under torchrun the first process downloads; the others wait for it to join the group below
        ensure_available({source for cell in planned for source in cell.weights.values()})
    _check_writable(Path(out))
    device = distributed.start(device)
    try:
        return _run_planned(planned, request, dataset, device, Path(out), progress, on_cell, sweep_start)
    finally:
        distributed.stop()


def _run_planned(planned: list[PlannedCell], request: RunRequest, dataset: Dataset, device: torch.device, out: Path, progress: bool, on_cell, sweep_start: float) -> list[CellOutcome]:
    store = ResultsStore(out)
    outcomes: dict[int, CellOutcome] = {}

    def try_cell(position: int, wait: bool) -> bool:
        outcome = _attempt(planned[position], store.cell(planned[position].config), dataset, device, request, progress, wait, sweep_start)
        if outcome is not None:
            outcomes[position] = outcome
            if on_cell:
                on_cell(outcome)
        return outcome is not None

    held_elsewhere = [position for position in range(len(planned)) if not try_cell(position, wait=False)]
    for position in held_elsewhere:
        try_cell(position, wait=True)
    return [outcomes[i] for i in range(len(planned))]


def _check_writable(out: Path) -> None:
    """The results root can take files: found before the first epoch, not after it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):  # a unique name: several sweeps may share a root
            pass
    except OSError as exc:
        raise ValueError(f"--out {out} cannot be written ({exc.strerror or exc}); choose a folder you can write to") from None


def _attempt(planned: PlannedCell, cell: Cell, dataset: Dataset, device: torch.device, request: RunRequest, progress: bool, wait: bool, sweep_start: float) -> CellOutcome | None:
    """Run one cell under its lock; None when another process holds it and ``wait`` is off.

    A cell that another process finished or failed since this sweep started is left as it is, even
    with ``force``: two processes sharing a sweep never train a cell twice.
    """
    config = planned.config
    with cell.claim(wait=wait) if distributed.is_main() else nullcontext(True) as claimed:
        decision = distributed.broadcast(_decide(config, cell, claimed, request, sweep_start) if distributed.is_main() else None)  # the others follow process 0
        if decision is None or isinstance(decision, CellOutcome):
            return decision
        replace, note = decision
        try:
            metrics = run_cell(planned, dataset, device, cell, request.metrics, progress, replace, request.execution)
            failure = None
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this cell only: record why and go on
            failure = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            if distributed.is_main():
                cell.fail(failure, traceback.format_exc())
    if failure is not None:
        if device.type == "cuda":  # after the except block, so the traceback no longer holds the cell's tensors
            torch.cuda.empty_cache()
        return CellOutcome(config, "failed", error=failure, note=note)
    return CellOutcome(config, "done", metrics, note="; ".join(filter(None, [note, cell.collapse() if distributed.is_main() else ""])))


def _decide(config: CellConfig, cell: Cell, claimed: bool, request: RunRequest, sweep_start: float) -> CellOutcome | tuple[bool, str] | None:
    """What to do with a cell: None (another process holds it), an outcome (nothing to train), or (replace, note) to train it."""
    if not claimed:
        return None
    status = cell.status(check_model=True)
    if status == "finished" and cell.changed_since(RECORD, sweep_start):
        return CellOutcome(config, "skipped", note="finished by another process")
    if status == "failed" and cell.changed_since(FAILURE, sweep_start):
        return CellOutcome(config, "failed", error=cell.failure()["error"], note="failed in another process")
    if status == "finished" and not request.force:
        return CellOutcome(config, "skipped", note="finished earlier (--force to re-run)")
    note = f"was damaged ({cell.problem(check_model=True)}); trained it again" if status == "damaged" else ""
    replace = status == "finished"  # with --force: trained beside the finished result, which stays until the new one is complete
    if replace and cell.rerun_pending():
        note = "resumed an interrupted re-run"
    return replace, note


def class_ids(labels, multi_label: bool = False) -> tuple[np.ndarray, list[str]]:
    """Class numbers (n,) and the sorted class names; for multi-label data a multi-hot (n, classes) uint8 matrix instead."""
    if not multi_label:
        names = sorted(set(labels))
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[label] for label in labels], dtype=np.int64), names
    sets = [label.split(LABEL_SEPARATOR) if label else [] for label in labels]
    names = sorted({name for members in sets for name in members})
    lookup = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=np.uint8)
    for row, members in enumerate(sets):
        matrix[row, [lookup[name] for name in members]] = 1
    return matrix, names


def run_cell(
    planned: PlannedCell, dataset: Dataset, device: torch.device, cell: Cell, metrics: tuple[str, ...] = DEFAULT_METRICS, progress: bool = False, replace: bool = False,
    execution: engine.Execution = engine.Execution(),
) -> dict[str, float]:
    """Train, encode, evaluate and store one cell; returns its metrics. ``replace``: a finished cell trained again, its result replaced only when done."""
    config = planned.config
    if distributed.is_main():
        cell.start(config, replace)
    else:
        cell.follow(replace)
    distributed.barrier()  # the work directory is there before any process looks for a checkpoint in it
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    start_memory_watch(device)
    side = dataset.split(config.split, seed=config.split_seed, validation_fraction=config.validation)
    if split_hash(side) != config.split_hash:
        raise RuntimeError(f"the {config.split} split of {dataset.name} changed after the run was planned; run again")
    labels, class_names = class_ids(dataset.index.loc[side.index, "label"], dataset.multi_label)
    members = {"training": splits.TRAINED, "database": splits.SEARCHED, "query": ("query",), "validation": ("validation",)}
    by_side = {name: (side.index.to_numpy()[side.isin(sides).to_numpy()], labels[side.isin(sides).to_numpy()]) for name, sides in members.items()}
    (train_ids, train_labels), (database_ids, database_labels), (query_ids, query_labels) = by_side["training"], by_side["database"], by_side["query"]

    method_cls = REGISTRY.get(config.method)
    engine.seed_everything(config.seed)
    method: Method = method_cls(MethodContext(config.bits, len(class_names), len(train_ids), config.options, config.seed, config.image_size, planned.weights))
    network, loss = method.build(config.run_backbone)
    ran = _check_backbones(config, architectures(network))
    settings = method_cls.train.with_overrides(config.train, config.method)
    train_source = engine.ImageSource(dataset.images, train_ids, device)
    database_source = train_source if np.array_equal(train_ids, database_ids) else engine.ImageSource(dataset.images, database_ids, device)
    validate = None
    if len(by_side["validation"][0]):
        validation_ids, validation_labels = by_side["validation"]
        validation_source = engine.ImageSource(dataset.images, validation_ids, device)

        def validate(network) -> dict[str, float]:
            held_out = binarize(engine.encode(network, validation_source, validation_ids, config.image_size, execution=execution))
            training = binarize(engine.encode(network, train_source, train_ids, config.image_size, execution=execution))
            return evaluate(held_out, validation_labels, training, train_labels, ("map@10",)).metrics

    if getattr(method, "fitted", False):
        engine.fit(method, network, train_source, train_ids, config.image_size, cell.work_path(LOG), execution)
        resumed_from = 0
    else:
        resumed_from = engine.train(
            method, network, loss, train_source, engine.TrainData(train_ids, train_labels, len(class_names)), settings,
            config.epochs, config.image_size, config.seed, cell.work_path(CHECKPOINT), cell.work_path(LOG), progress, validate,
            Augmentation.from_dict(config.augment), execution,
        )
    query_source = engine.ImageSource(dataset.images, query_ids, device)
    query_bits = binarize(engine.encode(network, query_source, query_ids, config.image_size, execution=execution))
    database_embeddings = engine.encode(network, database_source, database_ids, config.image_size, execution=execution)
    if not distributed.is_main():  # process 0 evaluates and writes
        return {}
    epoch_seconds = [json.loads(line)["seconds"] for line in cell.work_path(LOG).read_text().splitlines()]
    database_bits = binarize(database_embeddings)
    wanted = tuple(dict.fromkeys(STORED_METRICS + tuple(filter(None, [dataset.published_metric(config.split)])) + tuple(metrics)))
    result = evaluate(query_bits, query_labels, database_bits, database_labels, wanted, device="cpu" if device.type == "cpu" else str(device), **DEFAULT_TIE_RULE)
    arrays = {
        "query_codes": pack(query_bits), "database_codes": pack(database_bits), "query_labels": query_labels, "database_labels": database_labels,
        "database_embeddings": database_embeddings.astype(np.float16),  # `hashbench search` breaks Hamming ties with these
        "query_ids": query_ids, "database_ids": database_ids, "class_names": np.array(class_names), "bits": np.array(config.bits),
        **{f"per_query/{name}": values for name, values in result.per_query.items()},
    }
    record = {
        "metrics": result.metrics,
        "ties": tie_diagnostics(result.counts, database_bits),
        "evaluation": DEFAULT_TIE_RULE,
        "backbones_ran": ran,
        "weights": {model: {"source": source.describe(), "revision": cached_revision(source)} for model, source in planned.weights.items()},
        "seconds": round(time.perf_counter() - started, 2),  # this attempt: training the epochs left, encoding, evaluating
        "train_seconds": round(sum(epoch_seconds), 2),  # every epoch, over all attempts
        "resumed_from_epoch": resumed_from,
        "started": started_at.isoformat(timespec="seconds"),
        "device": describe_device(device),
        "execution": execution.describe(device),
        "processes": distributed.world_size(),  # torchrun: one cell trained by this many processes, each on its own device
        "peak_memory_mib": peak_memory_mib(device),
        "git": git_state(),
        "versions": versions(),
        "origin": method_cls.origin,
        **({"origin_sha256": file_sha256(method_cls.origin.removeprefix("file:"))} if method_cls.origin.startswith("file:") else {}),
        "paper": method_cls.paper,
        "synthetic": bool(dataset.manifest.get("synthetic", False)),
        "n_query": len(query_ids),
        "n_database": len(database_ids),
        "n_train": len(train_ids),
        "split_description": dataset.describe_split(config.split),
        "published_metric": dataset.published_metric(config.split),
        "classes": class_names,
    }
    cell.finish(arrays, lambda handle: torch.save(network.state_dict(), handle), record)
    return result.metrics


def _check_backbones(config: CellConfig, ran: list[str]) -> list[str]:
    """The timm models the network holds must be the ones the method declared (the config says what ran)."""
    declared = [name.split(".")[0] for name in config.backbone.split(" + ") if name]
    if ran != declared:
        built = ", ".join(ran) or "no timm model"
        raise RuntimeError(f"{config.method} built {built} but declared {config.backbone}: its backbones() must list what build() creates")
    return ran
