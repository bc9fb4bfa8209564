"""The command line answers quickly: heavy libraries load only in the commands that use them, help read through a pipe
is whole, and the shell can complete commands, sources and flags."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "torchvision", "timm", "numba", "pandas", "pydicom", "sklearn", "PIL", "matplotlib", "faiss")
LOADED_BY = """
import contextlib, io, sys
sys.argv = ["hashbench", *sys.argv[1:]]
from hashbench.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit:
        pass
print(" ".join(sorted(name for name in {heavy} if name in sys.modules)))
"""


def heavy_modules_loaded(*args: str) -> set[str]:
    """The heavy libraries a command imports, run in a fresh interpreter."""
    script = LOADED_BY.format(heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "command", [["--version"], ["--help"], ["suites"], ["run", "--help"], ["bench", "--help"], ["export", "--help"]]
)
def test_version_help_and_suites_load_no_heavy_library(command):
    assert heavy_modules_loaded(*command) == set()


@pytest.mark.parametrize("command", [["list"], ["options", "dafh"]])
def test_listing_methods_loads_torch_but_not_timm_torchvision_or_the_data_stack(command):
    """A method class is a torch module, so listing methods needs torch; timm (with torchvision beneath it: seconds)
    loads only where a backbone is built, and pandas, pydicom and scikit-learn only where data is read or fitted."""
    assert heavy_modules_loaded(*command) <= {"torch", "numba"}


def best_seconds(command: list[str], rounds: int = 3) -> float:
    """The fastest of ``rounds`` runs: what the command costs, without the machine's other work."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def test_version_takes_under_half_a_second_beyond_the_interpreter_and_list_little_beyond_torch():
    """Against what no command can avoid: the interpreter's start for --version (0.5 s beyond it), importing torch for
    list. Beyond torch, list imports numba (one method's compiled kernels), the command line's modules and every
    built-in method (their classes and option dataclasses): together about 0.4 of torch's import on 2 cores, quiet or
    loaded alike (measured 1.40-1.45x), so list stays within 1.7x of importing torch."""
    hashbench = [sys.executable, "-m", "hashbench"]
    interpreter = best_seconds([sys.executable, "-c", "pass"])
    version = best_seconds([*hashbench, "--version"])
    torch_import = best_seconds([sys.executable, "-c", "import torch"])
    listing = best_seconds([*hashbench, "list"])
    print(
        f"\npython -c pass {interpreter:.2f} s; hashbench --version {version:.2f} s; "
        f"python -c 'import torch' {torch_import:.2f} s; hashbench list {listing:.2f} s"
    )
    assert version - interpreter < 0.5
    assert listing < 1.7 * torch_import


def test_help_read_through_a_pipe_keeps_option_values_whole():
    """Help in a log or a pager is not cut at 80 columns (the README's backbone names and $SLURM_ARRAY_TASK_ID)."""
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "TERMINAL_WIDTH")}
    bench = subprocess.run(
        [sys.executable, "-m", "hashbench", "bench", "--help"], capture_output=True, text=True, env=env, check=True
    )
    run = subprocess.run(
        [sys.executable, "-m", "hashbench", "run", "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "tf_efficientnet_b6.aa_in1k" in bench.stdout and "$SLURM_ARRAY_TASK_ID" in run.stdout
    assert "…" not in bench.stdout + run.stdout


def complete(words: str) -> list[str]:
    """What bash completion offers after ``words`` (the cursor on the last word)."""
    env = {
        **os.environ,
        "_HASHBENCH_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    result = subprocess.run([sys.executable, "-m", "hashbench"], capture_output=True, text=True, env=env)
    return result.stdout.split()


def test_the_shell_completes_commands_sources_and_flags():
    assert complete("hashbench lea") == ["leaderboard"]
    assert {"tcia", "phantom", "folder", "medmnist"} <= set(complete("hashbench ingest "))
    assert {"--methods", "--metrics"} <= set(complete("hashbench run --met"))
