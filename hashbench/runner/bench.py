"""``hashbench bench``: how fast this machine loads, trains and encodes, and what a full paper run would take; with
``--search``, how fast each search backend answers a query over a large database of codes.

Every rate comes from the paths a run takes: the loader reads the dataset's memory-mapped
cache in random batches (the path of data sets too big to hold in memory; a warm page
cache) and prepares each batch on the device as training does (resize, normalisation, the
paper's augmentations); training is the engine's loop on the method's network and loss,
the loader included, timed over its second epoch; encoding is the engine's. Backbones
start from random weights: throughput does not depend on the weights. Before each
measurement a probe in a separate process estimates the memory its training will take
(:func:`training_memory`): one that would not fit in the free memory is skipped with the
reason, rather than killed, perhaps with its neighbours on a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hashbench.data.dataset import Dataset
from hashbench.data.sides import class_ids
from hashbench.evaluation import cost
from hashbench.model.method import MethodContext, TrainSettings
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


def training_setup(
    dataset: Dataset, method: str, batch_size: int | None, steps: int
) -> tuple[TrainSettings, dict, np.ndarray, np.ndarray, list]:
    """What a measurement trains: the method's settings (``batch_size`` overriding its own) and options, and the slice
    ids of ``steps`` batches (the data set repeated when smaller) with their class ids and the class names."""
    method_cls = method_class(method)
    if getattr(method_cls, "fitted", False):
        raise ValueError(
            f"{method} is training-free: bench measures training; name a trained method (dafh, hashnet, ...)"
        )
    options, train = method_cls.resolve_options({})
    settings = method_cls.train.with_overrides({**train, **({"batch_size": batch_size} if batch_size else {})}, method)
    ids = dataset.usable().index.to_numpy()
    ids = np.resize(ids, max(steps * settings.batch_size, settings.batch_size))
    labels, names = class_ids(dataset.index.loc[ids, "label"], dataset.multi_label)
    return settings, options, ids, labels, names


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
    settings, options, ids, labels, names = training_setup(dataset, method, batch_size, steps)
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


@dataclass
class Skipped:
    """A backbone at an image size left unmeasured: training it would need more memory than the device has free."""

    method: str
    backbone: str
    image_size: int
    batch_size: int
    needed_mib: float | None  # None: the probe itself was killed
    available_mib: float
    reason: str


@dataclass
class MemoryNeed:
    """The memory training ``images`` images a step takes on a device, in bytes beyond what the process holds; None
    where the probe itself was killed."""

    needed: int | None
    images: int
    batch_size: int


MIB = 2**20
PROBE_IMAGES = (2, 3)  # a probe's two batch sizes, their difference the cost of one more image (not 1: BatchNorm1d
# refuses a training batch of one)
PROBE_STEPS = 2  # steps per probe size after a warm-up step: a step's peak rises while the heap settles
GLIBC_MMAP_CEILING = 32 * MIB  # glibc maps a block of this size or more on its own and unmaps it when freed (its mmap
# threshold rises to this at most); smaller ones may come from its heaps, which keep freed blocks resident
PREFETCHED = 3  # uint8 batches the memory-mapped loader holds beside the probe's one: its queue of 2 and the one read


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """The bytes a measurement on ``device`` may still take and where that figure comes from; None where it cannot be
    read (a CPU outside Linux, mps). On a CPU the smaller of the kernel's MemAvailable and the room under a cgroup
    memory limit, the one the OOM killer enforces in a container."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # what earlier measurements left in torch's cache is free to this one
        return torch.cuda.mem_get_info(device)[0], f"{device} free"
    if device.type != "cpu":
        return None
    readings = [
        (figure, where)
        for figure, where in ((_meminfo_available(), "RAM available"), (_cgroup_room(), "the cgroup limit's room"))
        if figure is not None
    ]
    return min(readings) if readings else None


def _meminfo_available() -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)


CGROUP_FILES = (  # in a cgroup's folder: limit, usage, statistics, the cache reclaimed before an OOM kill (v2, v1)
    ("memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
)


def _cgroup_room(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes left under the tightest memory limit on this process's cgroup or any above it (a batch job's limit sits
    on the job's own cgroup, a container's on the cgroup the container sees as its root); None without a limit."""
    rooms = [room for folder in _cgroup_folders(root, membership) if (room := _room_in(folder)) is not None]
    return min(rooms) if rooms else None


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """The folders of this process's memory cgroup and of each one above it up to the mount (v2: the unified tree at
    ``root``; v1: the memory controller's at ``root/memory``), those that exist here."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:  # membership unknown: the roots, where a container's own limit is
        lines = ["0::/", "0:memory:/"]
    folders = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers and "memory" not in controllers.split(","):
            continue
        base = root / ("memory" if controllers else "")
        folder = base / path.strip("/")
        folders += [folder, *(parent for parent in folder.parents if parent.is_relative_to(base))]
    return [folder for folder in dict.fromkeys(folders) if folder.is_dir()]


def _room_in(folder: Path) -> int | None:
    """The limit set on one cgroup less what it uses, its inactive page cache counted free; None where it has none."""
    for limit_file, usage_file, stat_file, reclaimable in CGROUP_FILES:
        try:
            limit = (folder / limit_file).read_text().strip()
            usage = int((folder / usage_file).read_text())
            stats = dict(line.split() for line in (folder / stat_file).read_text().splitlines())
        except (OSError, ValueError):
            continue
        # v2 writes "max" for no limit; v1 a number near 2**63, far above the memory present
        if limit.isdigit() and int(limit) < 2**60:
            return int(limit) - usage + int(stats.get(reclaimable, 0))
    return None


def training_memory(
    dataset: Dataset,
    backbone: str,
    image_size: int,
    device: torch.device,
    method: str = "dafh",
    bits: int = 32,
    batch_size: int | None = None,
    steps: int = 5,
    execution: engine.Execution = engine.Execution(),
) -> MemoryNeed:
    """An upper bound of the memory :func:`measure` takes to train ``backbone`` at ``image_size``: growth of the
    process's resident set on a CPU, of reserved memory on CUDA.

    A probe in a fresh process (:func:`probe_memory`; should it be killed, this process lives on) trains the method's
    network with its optimiser on 2 and then on 3 images. Its peak on 2 holds what does not grow with the batch
    (parameters, gradients, optimiser state, the runtime's buffers) and 2 images' share. A step on N images (every
    image it forwards: DAFH's triplets are 3 per item of its batch) takes that peak and N - 2 images more, each the
    larger of

    - the rise from the probe's 2 images to 3 (uneven: at such small batches the allocator's rounding shows), and
    - what the step's peak holds for an image, counted: the tensors autograd saved for it; beside them the backward
      pass's gradients of one layer's input and output, at most twice the largest; on a CPU, once more those tensors
      that at N images glibc serves from its heap, whose freed blocks stay resident where the next step's blocks
      may not fit.

    Added: the loader's queue of prefetched uint8 batches, which the probe does not hold."""
    settings, options, ids, labels, names = training_setup(dataset, method, batch_size, steps)
    hasher = create_method(method, MethodContext(bits, len(names), len(ids), options, 0, image_size))
    first_batch = next(iter(hasher.batches(labels, settings.batch_size, np.random.default_rng(0))))
    images = len(first_batch) * len(hasher.view_strengths())
    spec = {
        "method": method,
        "backbone": backbone,
        "image_size": image_size,
        "device": str(device),
        "bits": bits,
        "classes": len(names),
        "train_items": len(ids),
        "options": options,
        "settings": asdict(settings),
        "stored_shape": list(dataset.images.shape[1:]),
        "precision": execution.precision,
        "channels_last": execution.channels_last,
        "threads": torch.get_num_threads(),
    }
    probe = subprocess.run(
        [sys.executable, "-c", "from hashbench.runner.bench import probe_main; probe_main()", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if probe.returncode < 0:  # killed, by the OOM killer as a rule
        return MemoryNeed(None, images, settings.batch_size)
    if probe.returncode:
        error = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit status {probe.returncode}"
        raise RuntimeError(f"the memory probe of {backbone} at {image_size} px failed: {error}")
    measured = json.loads(probe.stdout.splitlines()[-1])
    if "refused" in measured:
        raise ValueError(measured["refused"])
    (small, large), (warm_up, peak_small, peak_large) = PROBE_IMAGES, measured["peaks"]
    saved = [size / large for size in measured["saved"]]  # per image: each tensor's bytes for one image of the batch
    held = sum(saved) + 2 * max(saved)
    on_heap = sum(size for size in saved if size * images < GLIBC_MMAP_CEILING) if device.type == "cpu" else 0
    per_image = max((peak_large - peak_small) / (large - small), held + on_heap)
    prefetched = PREFETCHED * images * dataset.images[0].nbytes if device.type == "cpu" else 0
    return MemoryNeed(
        round(max(warm_up, peak_small) + (images - small) * per_image + prefetched), images, settings.batch_size
    )


def check_memory(
    dataset: Dataset,
    backbone: str,
    image_size: int,
    device: torch.device,
    method: str = "dafh",
    bits: int = 32,
    batch_size: int | None = None,
    steps: int = 5,
    execution: engine.Execution = engine.Execution(),
) -> Skipped | None:
    """Why ``backbone`` at ``image_size`` is not to be measured on ``device``: its training needs more memory than is
    free, and would be killed (on a shared machine, perhaps its neighbours instead). None where it fits, or where the
    free memory cannot be read."""
    available = available_memory(device)
    if available is None:
        return None
    free, where = available
    need = training_memory(dataset, backbone, image_size, device, method, bits, batch_size, steps, execution)
    if need.needed is not None and need.needed <= free:
        return None
    step = f"training {method} at batch {need.batch_size} ({need.images} images a step)"
    fix = "or a GPU with more memory" if device.type == "cuda" else "or a GPU (--device cuda)"
    needs = (
        f"needs about {need.needed / 2**30:.1f} GiB"
        if need.needed is not None
        else f"cannot be estimated: the probe training {PROBE_IMAGES[-1]} images was killed"
    )
    reason = (
        f"{step} {needs}, {where}: {free / 2**30:.1f} GiB; skipped: use a smaller --batch-size or --image-sizes, {fix}"
    )
    needed_mib = None if need.needed is None else need.needed / MIB
    return Skipped(method, backbone, image_size, need.batch_size, needed_mib, free / MIB, reason)


def probe_memory(spec: dict) -> dict:
    """:func:`training_memory`'s probe, run in a fresh process. ``peaks``: bytes above what the process held before
    building the network, at the warm-up step on 2 images, then over steps on 2, then over steps on 3; ``saved``: the
    bytes of each tensor autograd saved for the backward pass on 3 (parameters aside)."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    execution = engine.Execution(spec["precision"], spec["channels_last"])
    context = MethodContext(spec["bits"], spec["classes"], spec["train_items"], spec["options"], 0, spec["image_size"])
    before = _peak_memory(device, reset=True)
    network, _ = create_method(spec["method"], context).build(spec["backbone"])
    execution.prepare(network.to(device), device).train()
    optimizer = engine.build_optimizer(network, TrainSettings(**spec["settings"]))
    parameters = {p.untyped_storage().data_ptr() for p in network.parameters()}
    generator = torch.Generator(device=device).manual_seed(0)
    saved: dict[int, int] = {}  # storage address: bytes

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def step(images: int) -> None:
        """A training step as the engine takes it, its loss aside (a few numbers per image)."""
        batch = torch.zeros((images, *spec["stored_shape"]), dtype=torch.uint8)
        x = engine.to_input(batch, device, spec["image_size"], PAPER_AUGMENTATION, generator, network.normalisation)
        saved.clear()
        with execution.autocast(device), torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            output = network(execution.layout(x, device))
        loss = sum(part.float().square().mean() for part in output if part is not None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(PROBE_IMAGES[0])
    peaks = [_peak_memory(device) - before]
    for images in PROBE_IMAGES:
        _peak_memory(device, reset=True)
        for _ in range(PROBE_STEPS):
            step(images)
        peaks.append(_peak_memory(device) - before)
    return {"peaks": peaks, "saved": sorted(saved.values())}


def _peak_memory(device: torch.device, reset: bool = False) -> int:
    """The peak of reserved CUDA memory, or of this process's resident set, since the last reset; ``reset`` starts a
    new peak at the present use. Where the kernel refuses the reset, the peak runs on from the process's start and
    the per-image figure rests on the count alone."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_reserved(device)
    if reset:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # Linux: the resident peak (VmHWM) restarts from now
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def probe_main() -> None:
    """The probe process: the spec as its argument, its measurements as the last line of its output; bad input (a
    backbone timm does not know) as ``refused``, raised again by the caller as the ValueError it was."""
    try:
        measured = probe_memory(json.loads(sys.argv[1]))
    except ValueError as exc:
        measured = {"refused": str(exc)}
    print(json.dumps(measured))


def to_json(results: list[Rates | Skipped], dataset: Dataset, slices: int, epochs: int) -> str:
    """The measured rates with their projections, and the backbones skipped with the reason."""
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
                for rate in results
                if isinstance(rate, Rates)
            ],
            "skipped": [asdict(skipped) for skipped in results if isinstance(skipped, Skipped)],
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
