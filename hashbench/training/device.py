"""The device at work: how a result names it, and the peak memory a cell took on it."""

from __future__ import annotations

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
