"""One process of a multi-process cell, as torchrun starts it: run by path (``runpy.run_path``) with
``rank``, ``world``, ``port``, ``request``, ``out``, ``home``, ``plugin`` and ``pause`` as globals."""

import os

import torch

os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HASHBENCH_HOME=home)  # noqa: F821
if pause:  # noqa: F821
    os.environ["HASHBENCH_TEST_PAUSE"] = pause  # noqa: F821
torch.set_num_threads(1)  # torchrun's default: one thread a process

from hashbench.cli import _load_plugins  # noqa: E402
from hashbench.datasets import load_dataset  # noqa: E402
from hashbench.runner.run import run_grid  # noqa: E402

_load_plugins([plugin] if plugin else [])  # noqa: F821
run_grid(request, load_dataset(request.dataset), out)  # noqa: F821
