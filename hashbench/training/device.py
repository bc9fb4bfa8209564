"""The device at work: how a result names it, the peak memory a cell took on it, and the CPU threads it may use."""

from __future__ import annotations

import os
import platform
import sys

import torch

try:
    import resource
except ImportError:  # Windows
    resource = None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def start_memory_watch(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> dict[str, float]:
    """Peak GPU memory allocated during the cell (CUDA), and the process's peak resident memory so far
    (the operating system keeps one peak per process: in a sweep, later cells include earlier ones)."""
    peak = {}
    if resource is not None:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak["process_rss_peak_so_far_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1
        )
    if device.type == "cuda":
        peak["cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


THREADS_GIVEN = "HASHBENCH_THREADS"  # set once a thread count is chosen: torchrun's share then leaves it alone


def core_share(processes: int = 1) -> int:
    """This process's share of the cores it may run on, when ``processes`` share them (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(processes, 1))


def use_threads(threads: int) -> None:
    """Compute on ``threads`` CPU threads: torch's intra-op pool, numba's parallel loops (:func:`use_numba_threads`)
    and the OpenMP pool of the processes this one starts. Several processes on one machine each taking every core
    run many times slower than one (measured: an epoch of 3.4 s took 15-150 s beside three others on 2 cores)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = os.environ[THREADS_GIVEN] = str(threads)


def use_numba_threads() -> None:
    """Numba's parallel loops on the chosen thread count, set where they run: setting it starts numba's thread pool,
    and starting that before training changed torch's arithmetic (measured: a resumed two-process cell then no longer
    ended where the uninterrupted one did)."""
    given = os.environ.get(THREADS_GIVEN)
    if given:
        import numba

        numba.set_num_threads(min(int(given), numba.config.NUMBA_NUM_THREADS))
