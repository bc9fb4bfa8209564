"""A bad day, survived: a plugin that cannot be built, absurd sizes, a full disk, a read-only root, --out at a system
folder, compare pointed at the wrong root. Each gives one line saying what to do, and nothing finished is lost."""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.cli import app, expand_multi_value_options

runner = CliRunner()

BROKEN_PLUGIN = """
from hashbench.model.method import Method
from hashbench.model.registry import register_method


@register_method("broken-init")
class BrokenInit(Method):
    paper = "a plugin whose constructor raises"

    def __init__(self, context):
        super().__init__(context)
        raise RuntimeError("this plugin cannot be built [on purpose]")
"""


def invoke(*argv: str):
    return runner.invoke(app, expand_multi_value_options(list(argv)))


def flat(text: str) -> str:
    """The output as one line, whatever rich wrapped."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    from hashbench.model.registry import REGISTRY

    REGISTRY.discover()
    monkeypatch.setattr(REGISTRY, "entries", dict(REGISTRY.entries))  # the plugin leaves with the test
    plugin = tmp_path / "broken_init.py"
    plugin.write_text(BROKEN_PLUGIN)
    return plugin


def test_a_plugin_that_cannot_be_built_fails_its_cells_and_the_rest_of_the_grid_runs(
    tiny_phantom, broken_plugin, tmp_path
):
    out = tmp_path / "runs"
    argv = ["run", "--methods", "lsh,broken-init", "--bits", "16", "--dataset", "phantom-tiny-seed0", "--epochs", "1"]
    argv += ["--plugin", str(broken_plugin), "--out", str(out)]
    dry = invoke(*argv, "--dry-run")
    assert dry.exit_code == 0, dry.output
    shown = flat(dry.output)
    assert (
        "broken-init/16 bits/seed 0:" in shown
        and "-> unbuildable: the method could not be built: RuntimeError" in shown
    )
    assert "2 cells planned, 1 of them unbuildable" in shown

    result = invoke(*argv)
    assert result.exit_code == 1, result.output
    shown = flat(result.output)
    assert "done phantom-tiny-seed0/lsh/16 bits/seed 0" in shown
    assert (
        "failed phantom-tiny-seed0/broken-init/16 bits/seed 0: the method could not be built: RuntimeError: this "
        "plugin cannot be built [on purpose] (traceback below)" in shown
    )
    assert "Traceback (most recent call last)" in result.output and str(broken_plugin) in result.output
    assert list(out.glob("phantom-tiny-seed0/lsh/16bits/*/metrics.json"))  # lsh is stored
    assert not (out / "phantom-tiny-seed0" / "broken-init").exists()  # nothing written for the unbuildable cells
    # what the user typed is still checked before anything runs: exit 2, as for any method
    typo = invoke(*argv, "--set", "broken-init.nope=1", "--dry-run")
    assert typo.exit_code == 2 and "broken-init: unknown option(s) nope" in flat(typo.output)


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["run", "--methods", "lsh", "--bits", "100000"], "1 to 1024"),
        (["run", "--methods", "lsh", "--bits", "16,100000"], "1 to 1024"),
        (["run", "--methods", "lsh", "--image-size", "100000"], "16 to 2048"),
        (["bench", "--bits", "100000"], "1 to 1024"),
        (["bench", "--image-sizes", "224,100000"], "16 to 2048"),
        (["compare", "a", "b", "--bits", "100000"], "1 to 1024"),
    ],
)
def test_sizes_beyond_the_valid_range_are_refused_before_any_dataset_loads(argv, valid):
    result = invoke(*argv, "--dataset", "never-ingested")  # reached only if parsing let the size through
    assert result.exit_code == 2, result.output
    assert f"100000 is outside the valid range {valid}" in flat(result.output)
    assert "Traceback" not in result.output and "never-ingested" not in result.output


def test_the_python_api_refuses_the_same_sizes(tiny_phantom):
    from hashbench import api

    dataset = tiny_phantom.dataset
    with pytest.raises(ValueError, match="--bits 100000 is outside the valid range 1 to 1024"):
        api.plan(api.RunRequest(methods=["lsh"], bits=[16, 100000], dataset=dataset.name), dataset)
    with pytest.raises(ValueError, match="--image-size 100000 is outside the valid range 16 to 2048"):
        api.plan(api.RunRequest(methods=["lsh"], bits=[16], image_size=100000, dataset=dataset.name), dataset)


@pytest.fixture
def results_root(tmp_path, cell_writer):
    """Two finished cells written straight from codes: a root the report commands read in seconds."""
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    for method in ("alpha", "beta"):
        cell = cell_writer(root, method, rng.random((60, 16)) < 0.5, labels, rng.random((60, 16)) < 0.5, labels)
    return root, cell


def refuse_writes_under(monkeypatch, root: Path, error: int) -> None:
    """Every file opened for writing under ``root`` fails as a real disk would: EROFS when opened; ENOSPC (0 bytes
    free) once its data is flushed, the file left empty, as it is on a full disk."""
    real_open = builtins.open

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.pending = handle, False

        def write(self, data):
            self.pending = True
            return len(data)

        def flush(self):
            if self.pending:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.handle.close()
            if self.pending:
                self.pending = False
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fileno(self):  # everything goes through write(), never straight to the descriptor
            raise io.UnsupportedOperation("fileno")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    def guarded_open(file, mode="r", *args, **kwargs):
        writing = any(flag in mode for flag in "wax+")
        if not writing or not isinstance(file, (str, os.PathLike)) or root not in Path(file).resolve().parents:
            return real_open(file, mode, *args, **kwargs)
        if error == errno.EROFS:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return FullDisk(real_open(file, mode, *args, **kwargs))

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)


def hashbench_main(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """The console entry point in this process, as a user runs it: (exit code, stdout, stderr)."""
    from hashbench.cli import main

    monkeypatch.setattr(sys, "argv", ["hashbench", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.mark.parametrize("figures", ["--figures", "--no-figures"])
def test_a_full_disk_leaves_no_empty_figure_or_markdown_and_the_last_leaderboard_stands(
    results_root, monkeypatch, capsys, figures
):
    root, _ = results_root
    (root / "leaderboard.md").write_text("the last leaderboard\n")
    refuse_writes_under(monkeypatch, root.resolve(), errno.ENOSPC)
    code, out, err = hashbench_main(monkeypatch, capsys, "leaderboard", "--out", str(root), "--format", "md", figures)
    assert code == 2, out + err
    (line,) = err.strip().splitlines()
    written = "leaderboard-pr.png" if figures == "--figures" else "leaderboard.md"
    assert line == f"error: {root / written}: No space left on device; free space there, or write elsewhere " + (
        "(--out for results, $HASHBENCH_HOME for datasets)"
    )
    assert "Traceback" not in out + err
    assert (root / "leaderboard.md").read_text() == "the last leaderboard\n"
    assert not list(root.glob("*.png")) and not list(root.glob(".*.tmp"))


@pytest.mark.parametrize("command", ["leaderboard", "confusion"])
def test_a_read_only_root_is_one_line_naming_the_file(results_root, monkeypatch, capsys, command):
    root, cell = results_root
    argv = (
        ["leaderboard", "--out", str(root), "--format", "md"] if command == "leaderboard" else ["confusion", str(cell)]
    )
    refuse_writes_under(monkeypatch, root.resolve(), errno.EROFS)
    code, out, err = hashbench_main(monkeypatch, capsys, *argv)
    assert code == 2, out + err
    (line,) = err.strip().splitlines()
    target = root / "leaderboard-pr.png" if command == "leaderboard" else cell / "confusion.png"
    assert line == f"error: {target}: Read-only file system; choose a folder you can write to " + (
        "(--out for results, $HASHBENCH_HOME for datasets)"
    )  # the file asked for, not the temporary name it is written under
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--methods", "lsh", "--dry-run"],
        ["leaderboard"],
        ["compare", "a", "b"],
        ["ties"],
    ],
)
@pytest.mark.parametrize("folder, said", [("/", "is the filesystem root"), ("/etc", "is a system folder")])
def test_out_at_the_filesystem_root_or_a_system_folder_is_refused(argv, folder, said):
    result = invoke(*argv, "--out", folder)
    assert result.exit_code == 2, result.output
    assert f"{folder} {said}: give results a folder of their own, e.g. ./runs" in flat(result.output)


def test_out_at_the_home_directory_itself_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    result = invoke("leaderboard", "--out", str(tmp_path))
    assert result.exit_code == 2 and "is your home directory itself" in flat(result.output)


def test_compare_on_names_not_under_the_root_says_where_it_looked_and_to_pass_out(results_root, monkeypatch, tmp_path):
    root, cell = results_root
    monkeypatch.chdir(tmp_path)  # ./runs: not where the cells are
    for a, b in (("alpha", "beta"), (str(cell), "alpha")):
        result = invoke("compare", a, b)
        assert result.exit_code == 2, result.output
        shown = flat(result.output)
        assert f"searched {tmp_path / 'runs'}" in shown and "pass --out with the results root" in shown
    found = invoke("compare", "alpha", "beta", "--out", str(root))
    assert found.exit_code == 0, found.output
