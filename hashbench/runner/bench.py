"""``hashbench bench``: how fast this machine loads, trains and encodes, and what a full paper run would take; with
``--search``, how fast each search backend answers a query over a large database of codes.

Every rate comes from the paths a run takes: the loader reads the dataset's memory-mapped
cache in random batches (the path of data sets too big to hold in memory; a warm page
cache) and prepares each batch on the device as training does (resize, normalisation, the
paper's augmentations); training is the engine's loop on the method's network and loss,
the loader included, timed over its second epoch; encoding is the engine's. Backbones
start from random weights: throughput does not depend on the weights.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hashbench.data.dataset import Dataset
from hashbench.data.sides import class_ids
from hashbench.evaluation import cost
from hashbench.model.method import MethodContext
from hashbench.model.registry import create_method, method_class
from hashbench.training import engine
from hashbench.training.augment import PAPER_AUGMENTATION
from hashbench.training.device import describe_device, peak_memory_mib, start_memory_watch

PAPER_SLICES, PAPER_EPOCHS = 372_004, 50  # the paper's TCIA slices, and its epochs


@dataclass
class Rates:
    """Images per second on one device for one backbone at one image size."""

    method: str
    backbone: str
    image_size: int
    batch_size: int
    loading: float
    training: float
    encoding: float
    peak_memory_mib: dict[str, float]
    device: str
    execution: dict
    # images one epoch trains on per slice of the projected data set: 3 for DAFH, whose steps take triplets; fewer for
    # ADSH, whose epochs sample a fixed number of images whatever the data set's size
    images_per_slice: float = 1.0

    def projected_hours(self, slices: int = PAPER_SLICES, epochs: int = PAPER_EPOCHS) -> float:
        """Training ``slices`` for ``epochs`` (the images its sampler draws from them) and encoding them once, at the
        measured rates."""
        return (slices * self.images_per_slice * epochs / self.training + slices / self.encoding) / 3600

    @property
    def loader_margin(self) -> float:
        """How many times faster the loader delivers images than training consumes them: below 1, training waits for data."""
        return self.loading / self.training


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loading_rate(
    dataset: Dataset, device: torch.device, image_size: int, batch_size: int, images: int, seed: int = 0
) -> float:
    """Images/s from the memory-mapped cache to augmented, normalised device tensors, in random batches."""
    rng = np.random.default_rng(seed)
    ids = dataset.usable().index.to_numpy()
    source = engine.ImageSource(dataset.images, ids, device, in_memory=False)
    generator = torch.Generator(device=device).manual_seed(seed)

    def run(count: int) -> int:
        batches = [rng.choice(ids, batch_size) for _ in range(max(1, count // batch_size))]
        for _, batch in source.batches(batches):
            engine.to_input(batch, device, image_size, PAPER_AUGMENTATION, generator)
        _synchronise(device)
        return len(batches) * batch_size

    run(2 * batch_size)  # warm-up: first reads, kernel selection
    started = time.perf_counter()
    done = run(images)
    return _rate(done, time.perf_counter() - started)


def measure(
    dataset: Dataset,
    backbone: str,
    image_size: int,
    device: torch.device,
    method: str = "dafh",
    bits: int = 32,
    batch_size: int | None = None,
    steps: int = 5,
    execution: engine.Execution = engine.Execution(),
    slices: int = PAPER_SLICES,
) -> Rates:
    """Loading, training and encoding rates for ``method`` on ``backbone`` at ``image_size``, and the images its
    sampler draws per epoch from ``slices`` slices."""
    method_cls = method_class(method)
    if getattr(method_cls, "fitted", False):
        raise ValueError(
            f"{method} is training-free: bench measures training; name a trained method (dafh, hashnet, ...)"
        )
    options, train = method_cls.resolve_options({})
    settings = method_cls.train.with_overrides({**train, **({"batch_size": batch_size} if batch_size else {})}, method)
    ids = dataset.usable().index.to_numpy()
    ids = np.resize(ids, max(steps * settings.batch_size, settings.batch_size))  # repeated when the data set is smaller
    labels, names = class_ids(dataset.index.loc[ids, "label"], dataset.multi_label)
    start_memory_watch(device)
    loading = loading_rate(dataset, device, image_size, settings.batch_size, len(ids))

    engine.seed_everything(0)
    hasher = create_method(method, MethodContext(bits, len(names), len(ids), options, 0, image_size))
    network, loss = hasher.build(backbone)
    per_epoch = sum(len(batch) for batch in hasher.batches(labels, settings.batch_size, np.random.default_rng(0)))
    at_scale = np.arange(slices) % len(names)  # what the sampler draws per epoch from the projected data set
    epoch_images = sum(len(b) for b in hasher.batches(at_scale, settings.batch_size, np.random.default_rng(0)))
    source = engine.ImageSource(dataset.images, ids, device, in_memory=False)
    with tempfile.TemporaryDirectory(prefix="hashbench-bench-") as work:
        log = Path(work) / "log.jsonl"
        data = engine.TrainData(ids, labels, len(names))
        checkpoint = Path(work) / "checkpoint.pt"
        engine.train(
            engine.TrainJob(
                hasher,
                network,
                loss,
                source,
                data,
                settings,
                2,
                image_size,
                0,
                checkpoint,
                log,
                PAPER_AUGMENTATION,
                execution,
            )
        )
        second_epoch = json.loads(log.read_text().splitlines()[1])["seconds"]
    engine.encode(network, source, ids[: settings.batch_size], image_size, settings.batch_size, execution)  # warm-up
    _synchronise(device)
    started = time.perf_counter()
    engine.encode(network, source, ids, image_size, settings.batch_size, execution)
    encoding = _rate(len(ids), time.perf_counter() - started)
    return Rates(
        method,
        backbone,
        image_size,
        settings.batch_size,
        loading,
        _rate(per_epoch, second_epoch),
        encoding,
        peak_memory_mib(device),
        describe_device(device),
        execution.describe(device),
        epoch_images / slices,
    )


def to_json(rates: list[Rates], dataset: Dataset, slices: int, epochs: int) -> str:
    return json.dumps(
        {
            "dataset": dataset.name,
            "synthetic": bool(dataset.manifest.get("synthetic", False)),
            "stored_size": dataset.image_size,
            "projection": {"slices": slices, "epochs": epochs},
            "rates": [
                {
                    **asdict(rate),
                    "loader_margin": rate.loader_margin,
                    "projected_hours": rate.projected_hours(slices, epochs),
                }
                for rate in rates
            ],
        },
        indent=1,
    )


MAX_SEARCH_ITEMS = 100_000_000  # the scan and each index hold their own copy of the codes in memory
MAX_FLIPS = 4  # a 20-bit key has 6,196 buckets within 4 flips: deeper probes are a slow scan, not a lookup


@dataclass
class SearchRates:
    """Each search backend's cost per query over ``n_items`` random codes, beside the exact popcount scan's."""

    n_items: int
    bits: int
    queries: int
    seed: int
    flips: int
    backends: list[cost.BackendCost]
    not_run: dict[str, str]
    k: int = cost.K
    threads: int = cost.THREADS
    warm_up_queries: int = cost.WARM_UP_QUERIES

    @property
    def scan(self) -> cost.BackendCost:
        return next(b for b in self.backends if b.name == cost.BUILT_IN[0])

    def speedup(self, backend: cost.BackendCost) -> float:
        """How many times faster than the exact popcount scan, by median ms per query."""
        return self.scan.median_ms / max(backend.median_ms, 1e-9)


def check_search(n_items: int, queries: int, flips: int) -> None:
    """ValueError naming the flag and the fix for a database size, query count or probe depth the search bench cannot
    run."""
    if not 1 <= n_items <= MAX_SEARCH_ITEMS:
        raise ValueError(
            f"--search {n_items}: give the number of database codes, 1 to {MAX_SEARCH_ITEMS:,} "
            "(e.g. --search 1000000; every backend holds its own copy of the codes in memory)"
        )
    if queries < 1:
        raise ValueError(f"--queries {queries}: time at least one query (e.g. --queries 200)")
    if not 0 <= flips <= MAX_FLIPS:
        raise ValueError(
            f"--flips {flips}: bits flipped per hash key when probing, 0 to {MAX_FLIPS} (a probe visits every bucket "
            "within that many flips: 211 of a 20-bit key at 2, 6,196 at 4)"
        )


def measure_search(
    n_items: int,
    bits: int,
    queries: int = cost.TIMED_QUERIES,
    seed: int = 0,
    device: torch.device | None = None,
    flips: int = cost.FLIPS,
) -> SearchRates:
    """Every backend present over ``n_items`` uniformly random ``bits``-bit codes, answering ``queries`` random codes
    one at a time: ms per query, index bytes, recall@k against the exact ranking. Uniform codes have no near
    neighbours, the hard case for a hash table, whose probes find only what lies within a few flips. ``device``:
    a CUDA device also times the torch matmul ranking there. ``flips``: the hash indexes' probe depth."""
    check_search(n_items, queries, flips)
    rng = np.random.default_rng(seed)
    width = -(-bits // 8)
    padding = np.uint8((0xFF << (8 * width - bits)) & 0xFF)  # packbits' layout: a partial last byte's low bits are 0

    def draw(n: int) -> np.ndarray:
        codes = rng.integers(0, 256, (n, width), dtype=np.uint8)
        codes[:, -1] &= padding
        return codes

    database, query_codes = draw(n_items), draw(queries)
    on_gpu = device is not None and device.type == "cuda"
    backends, not_run = cost.binary_backends(database, bits, str(device) if on_gpu else None, flips)
    return SearchRates(n_items, bits, queries, seed, flips, cost.measure(backends, query_codes, database), not_run)


def search_json(rates: SearchRates) -> str:
    return json.dumps(
        {
            **{k: v for k, v in asdict(rates).items() if k != "backends"},
            "codes": "uniformly random, database and queries alike",
            "backends": [
                {"name": backend.name, **cost.as_record(backend), "speedup_over_scan": rates.speedup(backend)}
                for backend in rates.backends
            ],
        },
        indent=1,
    )
