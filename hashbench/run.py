"""Running the grid: (methods x bits x seeds) on one dataset, one cell at a time.

Each cell is trained by the engine, evaluated by the evaluator and stored by the
results store. A finished cell is skipped (``force`` re-runs it); a failing cell is
reported and the grid goes on; an interrupted cell resumes from its last epoch.
"""

from __future__ import annotations

import platform
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import hashbench
from hashbench import atomic, engine
from hashbench.dataset import Dataset
from hashbench.evaluate import DEFAULT_METRICS, STORED_METRICS, binarize, evaluate, pack, tie_diagnostics
from hashbench.method import Method, MethodContext
from hashbench.registry import REGISTRY
from hashbench.results import CellConfig, is_finished, write_codes

# Training profiles. 'full' is the paper's protocol (Table 2: EfficientNet-B0, 50 epochs,
# 224 px) with each method's own optimiser. 'quick' is for the synthetic phantom on a
# CPU: timm's tiny test EfficientNet at 64 px for 30 epochs, and, since no pretrained
# weights can be fetched offline, one optimiser with which every method learns from
# scratch in that budget. Both are recorded in every result and shown in captions.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {"backbone": "efficientnet_b0", "epochs": 50, "image_size": 224, "train": {}},
    "quick": {"backbone": "test_efficientnet", "epochs": 30, "image_size": 64, "train": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "head_lr_scale": 1.0, "batch_size": 32}},
}


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
    pretrained: bool = False
    epochs: int | None = None
    image_size: int | None = None
    split: str = "patient"
    validation: float = 0.0
    device: str = "auto"
    profile: str | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method name (or "*") -> key -> value
    metrics: tuple[str, ...] = DEFAULT_METRICS
    force: bool = False


@dataclass
class CellOutcome:
    config: CellConfig
    status: str  # done | skipped | failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def plan(request: RunRequest, dataset: Dataset, device: torch.device) -> list[CellConfig]:
    """Resolve every cell's full configuration (raises on unknown methods or options)."""
    profile = PROFILES[request.profile or default_profile(dataset, device)]
    cells = []
    for name in request.methods:
        method = REGISTRY.get(name)
        user = {**request.overrides.get("*", {}), **request.overrides.get(name, {})}
        options, train = method.resolve_options(user)
        settings = method.train.with_overrides({**profile["train"], **train})
        for bits in request.bits:
            for seed in request.seeds:
                cells.append(
                    CellConfig(
                        dataset=dataset.name, method=name, bits=bits, seed=seed, backbone=request.backbone or profile["backbone"], pretrained=request.pretrained,
                        epochs=request.epochs or profile["epochs"], image_size=request.image_size or profile["image_size"],
                        split=request.split, validation=request.validation, options={**method.options, **options}, train=asdict(settings),
                    )
                )
    return cells


def run_grid(request: RunRequest, dataset: Dataset, out: Path, progress: bool = False, on_cell: Callable[[CellOutcome], None] | None = None) -> list[CellOutcome]:
    device = engine.resolve_device(request.device)
    outcomes = []
    for config in plan(request, dataset, device):
        directory = config.directory(out)
        if is_finished(directory) and not request.force:
            outcome = CellOutcome(config, "skipped")
        else:
            try:
                outcome = CellOutcome(config, "done", run_cell(config, dataset, device, directory, request.metrics, progress, request.force))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                directory.mkdir(parents=True, exist_ok=True)
                atomic.write_json(directory / "failed.json", {"error": error, "traceback": traceback.format_exc()})
                outcome = CellOutcome(config, "failed", error=error)
        outcomes.append(outcome)
        if on_cell:
            on_cell(outcome)
    return outcomes


def class_ids(labels) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(labels))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[label] for label in labels], dtype=np.int64), names


def run_cell(config: CellConfig, dataset: Dataset, device: torch.device, directory: Path, metrics: tuple[str, ...] = DEFAULT_METRICS, progress: bool = False, restart: bool = False) -> dict[str, float]:
    """Train, encode, evaluate and store one cell; returns its metrics."""
    if restart:
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "failed.json").unlink(missing_ok=True)
    atomic.write_json(directory / "config.json", asdict(config))
    started = time.perf_counter()
    side = dataset.split(config.split, validation_fraction=config.validation)
    labels, class_names = class_ids(dataset.index.loc[side.index, "label"])
    by_side = {name: (side.index.to_numpy()[(side == name).to_numpy()], labels[(side == name).to_numpy()]) for name in ("database", "query", "validation")}
    (database_ids, database_labels), (query_ids, query_labels) = by_side["database"], by_side["query"]

    method_cls = REGISTRY.get(config.method)
    engine.seed_everything(config.seed)
    method: Method = method_cls(MethodContext(config.bits, len(class_names), len(database_ids), config.options, config.seed, config.image_size))
    network, loss = method.build(config.backbone, config.pretrained)
    settings = method_cls.train.with_overrides(config.train)
    train_source = engine.ImageSource(dataset.images, database_ids, device)
    validate = None
    if len(by_side["validation"][0]):
        validation_ids, validation_labels = by_side["validation"]
        validation_source = engine.ImageSource(dataset.images, validation_ids, device)

        def validate(network) -> dict[str, float]:
            held_out = binarize(engine.encode(network, validation_source, validation_ids, config.image_size))
            training = binarize(engine.encode(network, train_source, database_ids, config.image_size))
            return evaluate(held_out, validation_labels, training, database_labels, ("map@10",)).metrics

    engine.train(
        method, network, loss, train_source, engine.TrainData(database_ids, database_labels, len(class_names)), settings,
        config.epochs, config.image_size, config.seed, directory / "checkpoint.pt", directory / "train_log.jsonl", progress, validate,
    )
    query_source = engine.ImageSource(dataset.images, query_ids, device)
    query_bits = binarize(engine.encode(network, query_source, query_ids, config.image_size))
    database_embeddings = engine.encode(network, train_source, database_ids, config.image_size)
    database_bits = binarize(database_embeddings)
    metrics = tuple(dict.fromkeys(STORED_METRICS + tuple(metrics)))
    result = evaluate(query_bits, query_labels, database_bits, database_labels, metrics, device="cpu" if device.type == "cpu" else str(device))
    write_codes(
        directory, query_codes=pack(query_bits), database_codes=pack(database_bits), query_labels=query_labels, database_labels=database_labels,
        database_embeddings=database_embeddings.astype(np.float16),  # `hashbench search` breaks Hamming ties with these
        query_ids=query_ids, database_ids=database_ids, class_names=np.array(class_names), bits=np.array(config.bits),
        **{f"per_query/{name}": values for name, values in result.per_query.items()},
    )
    atomic.atomic_write(directory / "model.pt", lambda handle: torch.save(network.state_dict(), handle))
    (directory / "checkpoint.pt").unlink(missing_ok=True)
    atomic.write_json(
        directory / "metrics.json",
        {
            "metrics": result.metrics,
            "ties": tie_diagnostics(result.counts, database_bits),
            "seconds": round(time.perf_counter() - started, 2),
            "device": str(device),
            "origin": method_cls.origin,
            "paper": method_cls.paper,
            "synthetic": bool(dataset.manifest.get("synthetic", False)),
            "n_query": len(query_ids),
            "n_database": len(database_ids),
            "classes": class_names,
            "versions": versions(),
        },
    )
    return result.metrics


def versions() -> dict[str, str]:
    import pydicom
    import timm

    return {"hashbench": hashbench.__version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__, "pydicom": pydicom.__version__, "python": platform.python_version()}
