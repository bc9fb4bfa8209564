"""One cell, from its spec to its stored result: claim -> train (or fit) -> encode -> evaluate -> write.

A cell that fails (a NaN loss, out of memory, a bug in a plugin) records why, and its outcome says so: the sweep goes
on. Under torchrun, process 0 claims, decides, evaluates and writes; the other processes follow its decision and train
beside it.
"""

from __future__ import annotations

import json
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch
from torch import nn

from hashbench import distributed
from hashbench.evaluation.cost import COST_COLUMNS, Encoding, cell_cost, cost_value
from hashbench.evaluation.evaluate import DEFAULT_TIE_RULE, binarize, evaluate, evaluate_features, pack, tie_diagnostics
from hashbench.model.method import HashNetwork
from hashbench.model.weights import cached_revision, declared_backbones_ran
from hashbench.runner.plan import CellSpec
from hashbench.runner.provenance import git_state, versions
from hashbench.runner.tracking import CellTracking
from hashbench.store.digest import file_sha256
from hashbench.store.results import (
    CHECKPOINT,
    LOG,
    Cell,
    CellConfig,
    ResultsStore,
    collapse_note,
    largest_class_share,
)
from hashbench.training import engine
from hashbench.training.device import describe_device, peak_memory_mib, start_memory_watch
from hashbench.training.features import cached_features


@dataclass
class CellOutcome:
    config: CellConfig
    status: str  # done | skipped | failed
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    note: str = ""
    epochs_trained: int = 0  # by this attempt: what a sweep's time estimate learns from (0 when nothing trained)


def attempt(
    spec: CellSpec,
    store: ResultsStore,
    images: np.ndarray,
    device: torch.device,
    force: bool = False,
    progress: bool = False,
    wait: bool = True,
    sweep_start: float = 0.0,
    on_start: Callable[[], None] | None = None,
) -> CellOutcome | None:
    """Run one cell under its lock, as the store decides (:meth:`Cell.decide`); None when another process holds it and
    ``wait`` is off. ``on_start`` is called once the cell is to be trained here, before it starts."""
    config = spec.config
    cell = store.cell(config)
    main = distributed.is_main()
    with cell.claim(wait=wait) if main else nullcontext(True) as claimed:
        decision = distributed.broadcast(cell.decide(force, sweep_start) if main and claimed else None)
        if decision is None:
            return None
        if not decision.train:
            return CellOutcome(config, decision.status, error=decision.error, note=decision.note)
        if on_start:
            on_start()
        tracking = open_tracking(spec, cell, store, device) if main else CellTracking([])
        try:
            metrics, notes, epochs_trained = run_cell(spec, images, device, cell, progress, decision.replace, tracking)
            failure = None
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this cell only: record why and go on
            failure = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            tracking.fail(failure)
            if main:
                try:
                    cell.fail(failure, traceback.format_exc())
                except OSError as unrecorded:  # a full or read-only disk: the outcome still says why
                    failure += f" (and {unrecorded.filename} could not be written: {unrecorded.strerror})"
    if failure is not None:
        if device.type == "cuda":  # after the except block, so the traceback no longer holds the cell's tensors
            torch.cuda.empty_cache()
        return CellOutcome(config, "failed", error=failure, note=decision.note)
    return CellOutcome(
        config, "done", metrics, note="; ".join(filter(None, [decision.note, notes])), epochs_trained=epochs_trained
    )


def open_tracking(spec: CellSpec, cell: Cell, store: ResultsStore, device: torch.device) -> CellTracking:
    """The run's trackers for this attempt at the cell, tagged with what ran it."""
    git = git_state()
    tags = {
        "hashbench.git_commit": str(git.get("commit")),
        "hashbench.git_dirty": str(git.get("dirty")),
        "hashbench.device": describe_device(device),
        "hashbench.synthetic": str(spec.synthetic),
        **{f"version.{name}": str(version) for name, version in versions().items()},
    }
    return spec.tracking.open(spec.config, cell.directory, store.root, tags)


def run_cell(
    spec: CellSpec,
    images: np.ndarray,
    device: torch.device,
    cell: Cell,
    progress: bool = False,
    replace: bool = False,
    tracking: CellTracking | None = None,
) -> tuple[dict[str, float], str, int]:
    """Train, encode, evaluate and store one cell on the dataset's ``images``; returns its metrics, its notes and the
    epochs this attempt trained.

    The notes say what was dead in the codes (a collapsed cell's score is not a plain score), after which epoch
    training resumed, and what earlier progress could not be resumed; all are empty on every process of a torchrun
    group but the first, which alone evaluates.

    ``replace``: a finished cell trained again, its result replaced only when done.
    """
    config, split, execution = spec.config, spec.split, spec.execution
    if distributed.is_main():
        cell.start(config, replace)
    else:
        cell.follow(replace)
    checkpoint, log = cell.work_path(CHECKPOINT), cell.work_path(LOG)
    distributed.barrier()  # the work directory is there before any process looks for a checkpoint in it
    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    start_memory_watch(device)
    training, database, query = split.training, split.database, split.query

    engine.seed_everything(config.seed)
    method = spec.method(spec.context)
    network, loss = method.build(config.run_backbone)
    train_source = engine.ImageSource(images, training.ids, device)
    fit_started = time.perf_counter()
    cached = None
    feature_key = spec.feature_key if not distributed.active() else None  # under torchrun each process encodes
    if feature_key is not None:  # a frozen backbone: its features of every slice, computed once for every cell
        network.to(device)
        every_slice = engine.ImageSource(images, np.arange(len(images)), device, in_memory=False)
        cached = cached_features(
            feature_key,
            len(images),
            lambda rows: engine.features(network, every_slice, rows, config.image_size, execution),
        )

    def encode(ids: np.ndarray, source: engine.ImageSource | None = None) -> np.ndarray:
        if cached is not None:
            return engine.codes_of_features(network, cached[ids], device)
        source = source or engine.ImageSource(images, ids, device)
        return engine.encode(network, source, ids, config.image_size, execution=execution)

    validate = None
    if len(split.validation):
        validation_source = engine.ImageSource(images, split.validation.ids, device)

        def validate(network) -> dict[str, float]:
            held_out, trained = (
                binarize(encode(split.validation.ids, validation_source)),
                binarize(encode(training.ids, train_source)),
            )
            return evaluate(held_out, split.validation.labels, trained, training.labels, ("map@10",)).metrics

    if spec.training_free:
        network.to(device)
        fitted_on = (
            cached[training.ids]
            if cached is not None
            else engine.features(network, train_source, training.ids, config.image_size, execution)
        )
        engine.fit(method, network, fitted_on, log, fit_started, cell.identity)
        network.head.to(device)
        start = engine.Start(0)
    else:
        frozen = cached is not None  # the head alone trains, on the backbone's cached features
        job = engine.TrainJob(
            method,
            HashNetwork(nn.Identity(), network.head) if frozen else network,
            loss,
            engine.FeatureSource(cached, device) if frozen else train_source,
            engine.TrainData(training.ids, training.labels, len(split.class_names)),
            spec.settings,
            config.epochs,
            config.image_size,
            config.seed,
            checkpoint,
            log,
            spec.augmentation,
            execution,
            validate,
            cell.identity,
            tracking.epoch if tracking else None,
        )
        start = engine.train(job, progress)
    encoding_started = time.perf_counter()
    query_embeddings = encode(query.ids)
    database_embeddings = encode(database.ids, train_source if np.array_equal(training.ids, database.ids) else None)
    encoding = Encoding(
        len(query) + len(database),
        time.perf_counter() - encoding_started,
        "images" if cached is None else "cached backbone features",
    )
    if not distributed.is_main():  # process 0 evaluates and writes
        return {}, "", 0
    learned = method.learned_codes()
    if learned is not None:  # codes learned for the training items stand in for the network's in the database
        database_embeddings = with_learned_codes(database.ids, database_embeddings, training.ids, learned)
    float_distance = spec.method.float_distance
    if float_distance:  # a float reference: its features ranked as they are, and a code of no bits
        query_embeddings, database_embeddings = (
            query_embeddings.astype(np.float32),
            database_embeddings.astype(np.float32),
        )
        query_bits, database_bits = (np.zeros((len(side), 0), bool) for side in (query, database))
        result = evaluate_features(
            query_embeddings,
            query.labels,
            database_embeddings,
            database.labels,
            spec.metrics,
            float_distance,
            device=str(device) if device.type == "cuda" else "cpu",  # in float64, which mps lacks
            **DEFAULT_TIE_RULE,
        )
    else:
        query_bits, database_bits = binarize(query_embeddings), binarize(database_embeddings)
        query_embeddings, database_embeddings = (e.astype(np.float16) for e in (query_embeddings, database_embeddings))
        result = evaluate(
            query_bits,
            query.labels,
            database_bits,
            database.labels,
            spec.metrics,
            device="cpu" if device.type == "cpu" else str(device),
            **DEFAULT_TIE_RULE,
        )
    ran_on = {
        "device": describe_device(device),
        "execution": execution.describe(device),
        "processes": distributed.world_size(),  # torchrun: one cell trained by this many processes, each on its own device
        "peak_memory_mib": peak_memory_mib(device),  # training, encoding and evaluating
    }
    backbones_ran = declared_backbones_ran(network, config.backbone, config.method)
    weights = {
        model: {"source": source.describe(), "revision": cached_revision(source)}
        for model, source in spec.weights.items()
    }
    if float_distance:
        retrieval_cost = cell_cost(
            encoding,
            query_features=query_embeddings,
            database_features=database_embeddings,
            float_distance=float_distance,
        )
    else:
        on_gpu = str(device) if device.type == "cuda" else None  # the torch ranking is timed where it would run
        retrieval_cost = cell_cost(encoding, pack(query_bits), pack(database_bits), config.bits, torch_device=on_gpu)
    ties = {} if float_distance else tie_diagnostics(result.counts, database_bits)
    ties["largest_class_share"] = largest_class_share(database.labels)
    arrays = {
        "query_codes": pack(query_bits),
        "database_codes": pack(database_bits),
        "query_labels": query.labels,
        "database_labels": database.labels,
        "database_embeddings": database_embeddings,  # `hashbench search` breaks Hamming ties with these
        "query_ids": query.ids,
        "database_ids": database.ids,
        "query_embeddings": query_embeddings,  # a case's mean code at --level series, --ranking cosine, ...
        "query_groups": query.groups,  # patient, study, series: what --exclude leaves out, what --level builds cases of
        "database_groups": database.groups,
        "query_attributes": query.attributes,  # modality, body part, ...: graded relevance and --by subgroups
        "database_attributes": database.attributes,
        "class_names": np.array(split.class_names),
        "bits": np.array(config.bits),
        **{f"per_query/{name}": values for name, values in result.per_query.items()},
    }
    origin = spec.method.origin
    record = {
        "metrics": result.metrics,
        "cost": retrieval_cost,  # encoding rate, bytes per item, search latency per backend (evaluation.cost)
        "ties": ties,
        "evaluation": DEFAULT_TIE_RULE,
        **({"float_distance": float_distance} if float_distance else {}),
        "backbones_ran": backbones_ran,
        "weights": weights,
        "seconds": round(
            time.perf_counter() - started, 2
        ),  # this attempt: training the epochs left, encoding, evaluating
        "train_seconds": round(
            sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()), 2
        ),  # all attempts
        "resumed_from_epoch": start.epoch,
        "started": started_at.isoformat(timespec="seconds"),
        **ran_on,
        "git": git_state(),
        "versions": versions(),
        "origin": origin,
        **({"origin_sha256": file_sha256(origin.removeprefix("file:"))} if origin.startswith("file:") else {}),
        "paper": spec.method.paper,
        "synthetic": spec.synthetic,
        "n_query": len(query),
        "n_database": len(database),
        "n_train": len(training),
        "split_description": split.description,
        "published_metric": split.published_metric,
        "classes": list(split.class_names),
    }
    collapse = (
        ""
        if float_distance
        else collapse_note(ties["dead_bits"], config.bits, ties["largest_bucket_share"], ties["largest_class_share"])
    )
    kept = network.head if float_distance else network  # a float reference's network is its backbone's, unchanged
    saved = {"cell": cell.identity, "network": kept.state_dict()}
    cell.finish(arrays, lambda handle: torch.save(saved, handle), record)
    if tracking:
        costs = {name: cost_value(name, retrieval_cost)[0] for name in COST_COLUMNS}
        tracking.finish({**result.metrics, **{k: v for k, v in costs.items() if v is not None}}, config.epochs)
    resumed = f"resumed after epoch {start.epoch} of {config.epochs}" if start.epoch else ""
    trained = 0 if spec.training_free else config.epochs - start.epoch
    return result.metrics, "; ".join(filter(None, [resumed, start.set_aside, collapse])), trained


def with_learned_codes(
    database_ids: np.ndarray, database_embeddings: np.ndarray, training_ids: np.ndarray, learned: torch.Tensor
) -> np.ndarray:
    """The database's codes with each training item's row replaced by the code learned for it (training-set order);
    database items outside the training set keep the network's code."""
    order = np.argsort(training_ids)
    at = np.searchsorted(training_ids, database_ids, sorter=order)
    at = np.minimum(at, len(training_ids) - 1)
    found = training_ids[order[at]] == database_ids
    merged = database_embeddings.copy()
    merged[found] = learned.detach().float().cpu().numpy()[order[at[found]]]
    return merged
