"""One cell on several processes: ``torchrun --nproc_per_node N hashbench run ...``.

Every process plans the same grid. Process 0 alone claims cells, writes checkpoints,
logs and results; the others follow its decisions. Within a cell each global batch
(the one a single process would draw, from the same seeded sampler) is cut into N
contiguous pieces, one per process, so no image is seen twice and none is missed.
The network's outputs are gathered back into the whole batch before the loss, and
every process computes the loss of the whole batch: the gradient then equals the
single-process gradient, and losses with state (DPSH's code memory, DAFH's triplets)
see every row and stay identical on every process. Encoding is shared out the same
way. BatchNorm layers normalise with the whole batch's statistics, summed over the
processes, so the network computes what it would on one process; what still differs is
the order of floating-point sums and each process's own dropout draws.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hashbench.training.device import THREADS_GIVEN, core_share, use_threads


def launched() -> bool:
    """Started by torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def follower() -> bool:
    """A process other than the launcher's first: it prints nothing (known before the process group starts)."""
    return launched() and int(os.environ.get("RANK", "0")) != 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def start(device: torch.device) -> torch.device:
    """Join the launcher's process group (NCCL on CUDA, else gloo); returns this process's device."""
    if not launched() or active():
        return device
    if THREADS_GIVEN not in os.environ:  # each local process its share of the cores (torchrun's default is one)
        use_threads(core_share(int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE", "1"))))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def stop() -> None:
    if active():
        dist.destroy_process_group()


def piece_sizes(count: int, world: int | None = None) -> list[int]:
    """How many of ``count`` rows each process takes: contiguous pieces differing by at most one."""
    world = world or world_size()
    return [len(piece) for piece in np.array_split(np.arange(count), world)]


def my_piece(rows: np.ndarray, process: int | None = None, world: int | None = None) -> np.ndarray:
    """This process's contiguous piece of ``rows`` (a batch's positions, or ids to encode)."""
    return np.array_split(rows, world or world_size())[rank() if process is None else process]


class _GatherRows(torch.autograd.Function):
    """All processes' pieces, concatenated in process order; the backward pass hands each process its rows' gradient summed over processes."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        first = sum(ctx.sizes[: rank()])
        return grad[first : first + ctx.sizes[rank()]], None


def gather_rows(rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The whole batch from every process's piece (``sizes``: every piece's length); differentiable; the identity on one process."""
    return _GatherRows.apply(rows, sizes) if active() else rows


def broadcast(value):
    """Process 0's ``value`` (any picklable object), on every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


class _SumOverProcesses(torch.autograd.Function):
    """An all-reduce (sum) whose backward pass is one too: every process's statistics feed every process's loss."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        values = values.clone()
        dist.all_reduce(values)
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class _WholeBatchStatistics:
    """Mixed into a BatchNorm layer: in training under several processes, normalise with the whole batch's mean and variance.

    The same code on CPU (gloo) and CUDA (NCCL), unlike torch's SyncBatchNorm, which runs on GPUs only;
    timm's fused BatchNorm + activation layers keep their activation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        channels, dims = x.shape[1], [0, *range(2, x.ndim)]
        values = x.float()
        count = values.new_tensor([values.numel() / channels])
        totals = _SumOverProcesses.apply(torch.cat([values.sum(dims), (values * values).sum(dims), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        variance = (totals[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((variance * n / (n - 1)).to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (x.ndim - 2)
        y = (values - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        y = y.to(x.dtype)
        if hasattr(self, "act") and hasattr(self, "drop"):
            y = self.act(self.drop(y))
        return y


_WHOLE_BATCH_CLASSES: dict[type, type] = {}


def whole_batch_batch_norm(network: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``network`` normalises with the whole batch's statistics (in place; the state dict is unchanged)."""
    for module in network.modules():
        kind = type(module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, _WholeBatchStatistics):
            if kind not in _WHOLE_BATCH_CLASSES:
                _WHOLE_BATCH_CLASSES[kind] = type(f"WholeBatch{kind.__name__}", (_WholeBatchStatistics, kind), {})
            module.__class__ = _WHOLE_BATCH_CLASSES[kind]
    return network


def wrap(network: nn.Module, device: torch.device) -> nn.Module:
    """The network as DistributedDataParallel trains it (itself on one process), its BatchNorm layers seeing the whole batch."""
    if not active():
        return network
    whole_batch_batch_norm(network)
    # static_graph: a plugin whose loss leaves some parameters unused (the same ones every step) still trains
    return nn.parallel.DistributedDataParallel(
        network, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
    )
