"""One thread budget for torch, numba and OpenMP: chosen with --threads, or each local process's share under torchrun."""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hashbench import distributed
from hashbench.cli import app
from hashbench.evaluation.evaluate import evaluate
from hashbench.training import device


@pytest.fixture
def restored_threads(monkeypatch):
    """Whatever a test sets, the next test starts with this process's thread counts and environment."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(device.THREADS_GIVEN, raising=False)
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


def test_threads_given_before_the_command_bound_torch_numba_and_openmp(restored_threads):
    result = CliRunner().invoke(app, ["--threads", "1", "datasets"])
    assert result.exit_code == 0, result.output
    evaluate(np.zeros((2, 8), bool), np.array([0, 1]), np.ones((3, 8), bool), np.array([0, 1, 1]), ("map@1",))
    assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1  # numba's from its first kernel on
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ[device.THREADS_GIVEN] == "1"
    refused = CliRunner().invoke(app, ["--threads", "0", "datasets"])
    assert refused.exit_code == 2 and "--threads" in refused.output


@pytest.mark.parametrize("cores, processes, share", [(16, 4, 4), (16, 3, 5), (2, 4, 1), (1, 1, 1)])
def test_a_process_takes_its_share_of_the_cores_it_may_run_on(monkeypatch, cores, processes, share):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert device.core_share(processes) == share


def test_under_a_launcher_each_process_takes_its_share_unless_threads_were_given(restored_threads, monkeypatch):
    chosen = []
    monkeypatch.setattr(distributed, "use_threads", chosen.append)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two machines of two processes each
    distributed.start(torch.device("cpu"))
    monkeypatch.setenv(device.THREADS_GIVEN, "3")
    distributed.start(torch.device("cpu"))
    assert chosen == [4]
