"""The one training engine: every method is trained by this loop, on CUDA when present.

It seeds everything, feeds uint8 slices to the device and normalises (and, for
training batches only, augments) them there, so the host only moves bytes; runs
mixed precision on CUDA, follows the method's learning-rate schedule, logs each
loss term, shows progress with an ETA, and checkpoints every epoch. Every random
draw of an epoch is seeded from (seed, epoch) and the schedule is a function of the
step, so a cell resumed from its checkpoint ends exactly where an uninterrupted one
would on the same machine (on a GPU, up to its non-deterministic kernels). It selects
nothing on the query set: it trains the configured epochs. Under torchrun the same loop
trains one cell on several processes (see :mod:`hashbench.distributed`).
"""

from __future__ import annotations

import json
import queue
import random
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from hashbench import distributed
from hashbench.model.method import HashNetwork, LrSchedule, Method, StepInfo, TrainSettings
from hashbench.store import atomic
from hashbench.training.augment import Augmentation, augment

IMAGENET_MEAN, IMAGENET_STD = (
    torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
    torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
)
GREY_MEAN, GREY_STD = 0.449, 0.226  # ImageNet's channel means and stds, averaged: the backbones expect them
IN_MEMORY_LIMIT = 2 * 2**30


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices


class ImageSource:
    """uint8 slices by id, as tensors ready for the device.

    Small sets are held in memory; large ones are read from the memory map. Batches
    are gathered (and pinned, for CUDA) one ahead on a background thread when that
    overlaps real waiting (disk reads, host-to-device copies); on a CPU with the data
    in memory a thread would only compete with the compute for the cores.
    """

    def __init__(self, images: np.ndarray, ids: np.ndarray, device: torch.device, in_memory: bool | None = None):
        self.device, self.images = device, images
        self.sorted_ids = np.sort(np.asarray(ids))
        if in_memory is None:  # a benchmark may ask for the memory map, the path of data sets too big to hold
            in_memory = len(self.sorted_ids) * images[0].nbytes <= IN_MEMORY_LIMIT
        self.memory = np.ascontiguousarray(images[self.sorted_ids]) if in_memory else None

    def fetch(self, ids: np.ndarray) -> torch.Tensor:
        if self.memory is not None:
            batch = torch.from_numpy(self.memory[np.searchsorted(self.sorted_ids, ids)])
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.images[ids]))
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def batches(self, id_batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(ids, uint8 batch) pairs."""
        items = ((ids, self.fetch(ids)) for ids in id_batches)
        return _prefetch(items) if self.device.type == "cuda" or self.memory is None else items

    def prepare(self, batch, image_size: int, augmentation=None, generator=None, normalisation=None) -> torch.Tensor:
        """The network's input: normalised, resized and (in training) augmented images on the device."""
        return to_input(batch, self.device, image_size, augmentation, generator, normalisation)


class FeatureSource:
    """A frozen backbone's cached features by slice id, as the head's input: what a head trains on under
    --freeze-backbone (no image is decoded or augmented)."""

    def __init__(self, features: np.ndarray, device: torch.device):
        self.features, self.device = features, device

    def batches(self, id_batches: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        return ((ids, torch.from_numpy(np.asarray(self.features[ids], np.float32))) for ids in id_batches)

    def prepare(self, batch, image_size: int, augmentation=None, generator=None, normalisation=None) -> torch.Tensor:
        return batch.to(self.device, non_blocking=True)


def _prefetch(items: Iterator, depth: int = 2) -> Iterator:
    done = object()
    buffer: queue.Queue = queue.Queue(depth)

    def produce() -> None:
        try:
            for item in items:
                buffer.put(item)
        except BaseException as exc:  # surfaced in the consumer
            buffer.put(exc)
        buffer.put(done)

    threading.Thread(target=produce, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def to_input(
    batch: torch.Tensor,
    device: torch.device,
    image_size: int,
    augmentation: Augmentation | None = None,
    generator: torch.Generator | None = None,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> torch.Tensor:
    """uint8 (B, S, S) grey or (B, S, S, 3) colour -> normalised float (B, 3, size, size) on the device, augmented when
    given an augmentation. ``normalisation``: the backbone's own (means, stds) per channel, a grey image repeated over
    the three; None: ImageNet's (a grey image normalised by their averages)."""
    x = batch.to(device, non_blocking=True).float().div_(255.0)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    if augmentation is not None and augmentation.enabled:
        x = augment(x, augmentation, generator)
    if normalisation is not None:
        mean, std = (torch.tensor(values, device=x.device).view(1, 3, 1, 1) for values in normalisation)
        return (x.expand(-1, 3, -1, -1) - mean) / std
    if x.shape[1] == 3:
        return (x - IMAGENET_MEAN.to(x.device)) / IMAGENET_STD.to(x.device)
    return ((x - GREY_MEAN) / GREY_STD).expand(-1, 3, -1, -1)


def build_optimizer(network: HashNetwork, settings: TrainSettings) -> torch.optim.Optimizer:
    groups = [
        {
            "params": [p for p in network.encoder.parameters() if p.requires_grad],
            "lr": settings.lr,
            "base_lr": settings.lr,
        },
        {
            "params": [p for p in network.head.parameters() if p.requires_grad],
            "lr": settings.lr * settings.head_lr_scale,
            "base_lr": settings.lr * settings.head_lr_scale,
        },
    ]
    groups = [g for g in groups if g["params"]]
    if settings.optimizer == "adam":
        return torch.optim.Adam(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; valid: adam, sgd, rmsprop")


@dataclass
class TrainData:
    """The training side: slice ids, class ids (0..C-1; or multi-hot rows for multi-label data) and the number of classes."""

    ids: np.ndarray
    labels: np.ndarray
    n_classes: int


def label_rows(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Labels as the float rows every loss takes: one-hot for class ids, as given for multi-hot rows."""
    labels = torch.from_numpy(np.asarray(labels))
    return labels.float() if labels.ndim == 2 else F.one_hot(labels.long(), n_classes).float()


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Execution:
    """How the engine runs on its device: nothing here changes what a cell computes beyond floating-point rounding.

    ``precision``: ``auto`` is bf16 autocast on CUDA (fp16 with a gradient scaler on GPUs without bf16) and
    fp32 elsewhere; ``fp16`` and ``bf16`` force one (on a CPU too, where autocast supports both).
    ``channels_last``: NHWC memory layout (faster convolutions on tensor cores); None means on CUDA.
    ``compile``: a ``torch.compile`` backend for the training forward pass (``inductor``), or None.
    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: str | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision}: valid: {', '.join(PRECISIONS)}")

    def dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device``; None for fp32."""
        precision = self.precision
        if precision == "auto":
            precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def nhwc(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else self.channels_last

    def describe(self, device: torch.device) -> dict[str, Any]:
        """What actually ran, for the record."""
        dtype = self.dtype(device)
        return {
            "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
            "gradient_scaler": dtype == torch.float16,
            "channels_last": self.nhwc(device),
            "compile": self.compile,
        }

    def autocast(self, device: torch.device):
        dtype = self.dtype(device)
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def prepare(self, network: nn.Module, device: torch.device) -> nn.Module:
        return network.to(memory_format=torch.channels_last) if self.nhwc(device) else network

    def layout(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and self.nhwc(device) else x


@dataclass(frozen=True)
class TrainJob:
    """One training run as the engine takes it: what trains, on which images, for how long, and where its state lives.

    ``validate`` (optional) is called after every epoch and its numbers are logged; they are for watching
    training, never for picking an epoch. ``augmentation`` applies to the training batches only.
    """

    method: Method
    network: HashNetwork
    loss: nn.Module
    source: ImageSource | FeatureSource  # images, or a frozen backbone's cached features
    data: TrainData
    settings: TrainSettings
    epochs: int
    image_size: int
    seed: int
    checkpoint: Path  # written after every epoch; a run finds it and resumes
    log: Path  # one line of loss terms per epoch
    augmentation: Augmentation | None = None
    execution: Execution = Execution()
    validate: Callable[[HashNetwork], dict[str, float]] | None = None
    identity: str = ""  # the cell trained: written into the checkpoint and every log line, resumed only from its own
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # given each epoch's log line (process 0): trackers


@dataclass(frozen=True)
class Start:
    """Where training started: ``epoch`` epochs were resumed; ``set_aside`` says why earlier progress could not be
    resumed and where it was kept ('' when nothing was set aside)."""

    epoch: int
    set_aside: str = ""


def train(job: TrainJob, progress: bool = False) -> Start:
    """Train for ``job.epochs``, resuming from ``job.checkpoint`` if it is this cell's and fits its network."""
    method, network, loss_fn, source, data, settings = (
        job.method,
        job.network,
        job.loss,
        job.source,
        job.data,
        job.settings,
    )
    epochs, image_size, seed, checkpoint, log = job.epochs, job.image_size, job.seed, job.checkpoint, job.log
    augmentation, execution, validate = job.augmentation, job.execution, job.validate
    view_augmentations = [augmentation and augmentation.scaled(strength) for strength in method.view_strengths()]
    device = source.device
    normalisation = network.normalisation
    execution.prepare(network.to(device), device).train()
    loss_fn.to(device)
    if settings.batch_size < distributed.world_size():
        raise ValueError(
            f"{method.name}: batch size {settings.batch_size} is smaller than the {distributed.world_size()} processes sharing each batch; raise it (--set batch_size=N)"
        )
    model = distributed.wrap(network, device)
    if execution.compile:
        model = torch.compile(model, backend=execution.compile)
    optimizer = build_optimizer(network, settings)
    schedule = LrSchedule.parse(settings.lr_schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=execution.dtype(device) == torch.float16)
    onehot = label_rows(data.labels, data.n_classes).to(device) if method.supervised else None  # never seen otherwise
    sampled = data.labels if method.supervised else np.zeros(len(data.labels), np.int64)  # what a sampler may read
    steps_per_epoch = sum(1 for _ in method.batches(sampled, settings.batch_size, np.random.default_rng(0)))
    method.begin_training(onehot)
    start = _resume(checkpoint, log, network, loss_fn, optimizer, scaler, job.identity)
    first_epoch = start.epoch
    progress = progress and distributed.is_main()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(
            f"{method.name} {method.bits} bits",
            total=epochs * steps_per_epoch,
            completed=first_epoch * steps_per_epoch,
            terms="",
        )
        for epoch in range(first_epoch, epochs):
            rng = np.random.default_rng([seed, epoch])
            torch.manual_seed(seed * 100_003 + epoch)
            augment_generator = torch.Generator(device=device).manual_seed(seed * 1_000_033 + epoch + 1)
            sums: dict[str, float] = {}
            started = time.perf_counter()
            # the whole batches, the same on every process
            positions = list(method.batches(sampled, settings.batch_size, rng))
            for step_in_epoch, (ids, batch) in enumerate(
                source.batches(data.ids[distributed.my_piece(p)] for p in positions)
            ):
                info = StepInfo(epoch, epoch * steps_per_epoch + step_in_epoch, steps_per_epoch, epochs)
                method.schedule(network, info)
                multiplier = schedule.multiplier(info.step, steps_per_epoch, epochs)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * multiplier
                index = torch.from_numpy(positions[step_in_epoch]).to(device)
                views = [  # each view draws its own augmentation; one forward pass over all of them
                    source.prepare(batch, image_size, view, augment_generator, normalisation)
                    for view in view_augmentations
                ]
                with execution.autocast(device):
                    output = model(execution.layout(torch.cat(views) if len(views) > 1 else views[0], device))
                sizes = distributed.piece_sizes(len(index))
                output = type(output)(  # every process's rows, view by view
                    *(
                        torch.cat([distributed.gather_rows(part.float(), sizes) for part in t.chunk(len(views))])
                        if t is not None
                        else None
                        for t in output
                    )
                )
                terms = loss_fn(output, None if onehot is None else onehot[index], index, info)
                total = sum(terms.values())
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"{method.name}: loss is {total.item()} at epoch {epoch}, step {step_in_epoch}; terms { ({k: v.item() for k, v in terms.items()}) }"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if method.max_grad_norm is not None:
                    scaler.unscale_(optimizer)  # the norm of the true gradient, not of the scaled one
                    nn.utils.clip_grad_norm_(network.parameters(), method.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                bar.update(
                    task, advance=1, terms=" ".join(f"{k} {v / (step_in_epoch + 1):.3f}" for k, v in sums.items())
                )
            method.end_epoch(StepInfo(epoch, (epoch + 1) * steps_per_epoch - 1, steps_per_epoch, epochs))
            record = {
                **({"cell": job.identity} if job.identity else {}),
                "epoch": epoch + 1,
                "seconds": round(time.perf_counter() - started, 3),
                "lr": optimizer.param_groups[0]["lr"],
                **{k: v / max(len(positions), 1) for k, v in sums.items()},
            }
            if validate is not None:
                record.update({f"validation {k}": v for k, v in validate(network).items()})
                network.train()
            if distributed.is_main():  # the others trained the same epoch: one log line, one checkpoint
                with open(log, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                _save(checkpoint, network, loss_fn, optimizer, epoch + 1, scaler, job.identity)
                if job.on_epoch is not None:
                    job.on_epoch(record)
            if progress and not bar.console.is_terminal:  # a log file gets one line per epoch instead of a live bar
                terms_text = ", ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k not in ("cell", "epoch", "seconds", "lr")
                )
                print(
                    f"{method.name} {method.bits} bits: epoch {epoch + 1}/{epochs} in {record['seconds']:.1f} s, {terms_text}",
                    file=sys.stderr,
                    flush=True,
                )
    return start


def _save(
    path: Path,
    network: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs_done: int,
    scaler: torch.amp.GradScaler | None = None,
    identity: str = "",
) -> None:
    state = {
        "cell": identity,
        "epochs_done": epochs_done,
        "network": network.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler else {},
    }
    atomic.atomic_write(path, lambda handle: torch.save(state, handle))


def _resume(
    path: Path | None,
    log: Path,
    network: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    identity: str = "",
) -> Start:
    """Load the checkpoint (if any) and trim the log to the epochs it holds.

    A kill between an epoch's log line and its checkpoint would otherwise leave that epoch logged twice. A checkpoint
    or log that cannot be resumed (unreadable, another cell's, a network of another shape, a garbled log line) is set
    aside, kept under another name, and training starts over: a run never fails on it again and again.
    """
    state, problem = None, ""
    if path is not None and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # written atomically, so only damaged from outside
            problem = f"{path.name} cannot be read ({type(exc).__name__})"
        else:
            problem = _checkpoint_problem(state, identity, network, loss_fn, optimizer)
    epochs_done = int(state["epochs_done"]) if state is not None and not problem else 0
    if not problem and log.exists():
        problem = _log_problem(log, epochs_done, identity)
    if problem:
        distributed.barrier()  # every process has read the files before process 0 moves them
        kept = (
            [atomic.set_aside(p) for p in (path, log) if p is not None and p.exists()] if distributed.is_main() else []
        )
        where = ", ".join(str(p) for p in kept)
        return Start(0, f"{problem}: trained from the first epoch{f'; kept {where}' if where else ''}")
    if state is not None:
        network.load_state_dict(state["network"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    if log.exists() and distributed.is_main():
        kept_lines = log.read_text().splitlines()[:epochs_done]
        atomic.write_text(log, "".join(line + "\n" for line in kept_lines))
    return Start(epochs_done)


def _checkpoint_problem(
    state: Any, identity: str, network: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer
) -> str:
    """Why a loaded checkpoint cannot be resumed into this cell's network, loss and optimiser, else ''."""
    if not isinstance(state, dict) or not {"epochs_done", "network", "loss", "optimizer"} <= set(state):
        return "checkpoint.pt is not a training checkpoint"
    if identity and state.get("cell") and state["cell"] != identity:
        return f"checkpoint.pt belongs to another cell ({state['cell']})"
    for name, module in (("network", network), ("loss", loss_fn)):
        wanted = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        held = {key: tuple(value.shape) for key, value in state[name].items()}
        if wanted != held:
            differing = sorted(set(wanted) ^ set(held)) or sorted(k for k in wanted if wanted[k] != held[k])
            return f"checkpoint.pt holds a {name} of another shape ({differing[0]}: {held.get(differing[0])} there, {wanted.get(differing[0])} here)"
    groups = state["optimizer"].get("param_groups", [])
    if [len(group["params"]) for group in groups] != [len(group["params"]) for group in optimizer.param_groups]:
        return "checkpoint.pt holds an optimiser of other parameter groups"
    return ""


def _log_problem(log: Path, epochs_done: int, identity: str) -> str:
    """Why the log's first ``epochs_done`` lines are not this cell's epochs 1 .. epochs_done, else ''."""
    lines = log.read_text(errors="replace").splitlines()[:epochs_done]
    if len(lines) < epochs_done:
        return f"{log.name} holds {len(lines)} epochs, the checkpoint {epochs_done}"
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return f"{log.name} line {number} is not JSON"
        if not isinstance(entry, dict) or entry.get("epoch") != number:
            return f"{log.name} line {number} is not epoch {number}'s"
        if identity and entry.get("cell", identity) != identity:
            return f"{log.name} line {number} belongs to another cell ({entry['cell']})"
    return ""


@torch.no_grad()
def encode(
    network: HashNetwork,
    source: ImageSource,
    ids: np.ndarray,
    image_size: int,
    batch_size: int = 256,
    execution: Execution = Execution(),
) -> np.ndarray:
    """Continuous codes (n, bits) for slices ``ids``, in that order."""
    return _outputs(lambda x: network(x).code, network, source, ids, image_size, batch_size, execution)


@torch.no_grad()
def features(
    network: HashNetwork, source: ImageSource, ids: np.ndarray, image_size: int, execution: Execution = Execution()
) -> np.ndarray:
    """The encoder's features (n, d) of slices ``ids``, in that order: what a training-free method is fitted to, and
    what the feature cache holds of a frozen backbone."""
    return _outputs(network.encoder, network, source, ids, image_size, 256, execution)


@torch.no_grad()
def codes_of_features(network: HashNetwork, features: np.ndarray, device: torch.device, batch_size: int = 4096):
    """Continuous codes (n, bits) of given features: the head alone, as a network on cached features encodes."""
    head = network.head.to(device).eval()
    chunks = [features[i : i + batch_size] for i in range(0, len(features), batch_size)]
    outputs = [head(torch.from_numpy(np.asarray(chunk, np.float32)).to(device)).code.float().cpu() for chunk in chunks]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def fit(
    method, network: HashNetwork, training_features: np.ndarray, log: Path, started: float, identity: str = ""
) -> None:
    """Fit a training-free method: its training slices' features set its head's state; one log line (the time since
    ``started``, a time.perf_counter(), so computing the features counts)."""
    method.fit(network.head, training_features.astype(np.float64))  # on every process alike: the features were gathered
    if not distributed.is_main():
        return
    with open(log, "w") as handle:
        handle.write(
            json.dumps(
                {
                    **({"cell": identity} if identity else {}),
                    "epoch": 0,
                    "seconds": round(time.perf_counter() - started, 3),
                    "fitted_on": len(training_features),
                    "feature_dimensions": training_features.shape[1],
                }
            )
            + "\n"
        )


@torch.no_grad()
def _outputs(
    function: Callable[[torch.Tensor], torch.Tensor],
    network: nn.Module,
    source: ImageSource,
    ids: np.ndarray,
    image_size: int,
    batch_size: int,
    execution: Execution,
) -> np.ndarray:
    execution.prepare(network, source.device).eval()
    normalisation = getattr(network, "normalisation", None)  # a HashNetwork's, or ImageNet's for a bare module
    shared = distributed.active() and len(ids) >= distributed.world_size()  # each process encodes its piece
    mine = distributed.my_piece(ids) if shared else ids
    chunks = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    outputs = []
    for _, batch in source.batches(chunks):
        with execution.autocast(source.device):
            outputs.append(
                function(
                    execution.layout(source.prepare(batch, image_size, normalisation=normalisation), source.device)
                )
                .float()
                .cpu()
            )
    if shared:  # NCCL gathers device tensors, gloo host ones
        return (
            distributed.gather_rows(torch.cat(outputs).to(source.device), distributed.piece_sizes(len(ids)))
            .cpu()
            .numpy()
        )
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)
