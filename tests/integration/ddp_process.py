# ruff: noqa: F821 (the globals below are given by the test that runs this file)
"""One process of a multi-process cell, as torchrun starts it: run by path (``runpy.run_path``) with
``rank``, ``world``, ``port``, ``request``, ``out``, ``home``, ``plugin`` and ``pause`` as globals."""

import os

import torch

os.environ.update(
    WORLD_SIZE=str(world),
    RANK=str(rank),
    LOCAL_RANK=str(rank),
    MASTER_ADDR="127.0.0.1",
    MASTER_PORT=str(port),
    HASHBENCH_HOME=home,
)
if pause:
    os.environ["HASHBENCH_TEST_PAUSE"] = pause
torch.set_num_threads(1)  # torchrun's default: one thread a process

from hashbench.api import load_dataset, load_plugin, run_grid  # noqa: E402

if plugin:
    load_plugin(plugin)
run_grid(request, load_dataset(request.dataset), out)
