"""The Python API: the README's snippet runs as written, and the package re-exports the API without importing torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippet() -> str:
    section = README.read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_readme_python_snippet_plans_runs_and_publishes(default_phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the snippet writes to ./runs
    namespace: dict = {}
    exec(compile(readme_snippet(), str(README), "exec"), namespace)
    planned, outcomes = namespace["request"], namespace["outcomes"]
    assert len(outcomes) == 4 and {o.status for o in outcomes} == {"done"}, [o.error for o in outcomes]
    assert {o.config.method for o in outcomes} == set(planned.methods) == {"dpsh", "lsh"}
    printed = capsys.readouterr().out
    assert printed.count("training images") == 4  # one plan line per cell
    assert "### MAP@10" in printed and "dpsh" in printed and "lsh" in printed
    assert (tmp_path / "runs" / "phantom" / "dpsh" / "16bits").is_dir()
    board = namespace["hb"].leaderboard(tmp_path / "runs", ("map@10",))[0]
    scores = {name: float(str(value).split()[0]) for name, value in board.table.iloc[:, 0].items()}
    assert (
        len(scores) == 2 and min(scores.values()) > 0.22
    )  # both above a random ranking's MAP@10 on the phantom (about 0.22)


def test_import_hashbench_is_cheap_and_gives_the_api():
    code = "import sys, hashbench; assert 'torch' not in sys.modules; print(hashbench.RunRequest.__module__, hashbench.run_grid.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hashbench.runner.plan", "run_grid"]
