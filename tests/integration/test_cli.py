"""The command line end to end: ingest (report, no-op re-run, errors) and the dataset listing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.datasets import UnknownDatasetError, load_dataset

runner = CliRunner()
SERIES = ("01-01-2000-NA-CT ABDOMEN-12345", "2.000000-AX-67890")


def make_download(root, dicom):
    for patient in ("OV-1", "OV-2"):
        for i in range(3):
            pixels = np.full((32, 32), 1024 + 10 * i, np.uint16)
            dicom(
                root / "TCGA-OV" / patient / SERIES[0] / SERIES[1] / f"1-0{i}.dcm",
                pixels,
                patient=patient,
                RescaleIntercept=-1024,
                RescaleSlope=1,
            )
    broken = root / "TCGA-OV" / "OV-2" / SERIES[0] / SERIES[1] / "broken.dcm"
    broken.write_text("not an image")
    return broken


def test_ingest_tcia_prints_what_was_kept_and_skipped_then_is_a_no_op(tmp_path, dicom):
    broken = make_download(tmp_path / "dl", dicom)
    result = runner.invoke(
        app, ["ingest", "tcia", str(tmp_path / "dl"), "--name", "cli-test", "--size", "32", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "kept 6 files -> 6 slices of 2 patients in 1 classes" in result.output
    assert "skipped 1 files" in result.output and "not DICOM" in result.output
    assert broken.relative_to(tmp_path / "dl").as_posix() in result.output.replace("\n", "")
    assert "files.csv" in result.output
    again = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "dl"), "--name", "cli-test", "--size", "32"])
    assert again.exit_code == 0 and "up to date" in again.output
    listing = runner.invoke(app, ["datasets"])
    assert listing.exit_code == 0 and "cli-test" in listing.output


def test_ingest_errors_are_actionable(tmp_path):
    missing = runner.invoke(app, ["ingest", "tcia", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such folder" in missing.output
    bad_window = runner.invoke(app, ["ingest", "tcia", str(tmp_path), "--window", "bone"])
    assert bad_window.exit_code == 2 and "auto, percentile, minmax" in bad_window.output
    bad_profile = runner.invoke(app, ["ingest", "phantom", "--profile", "huge"])
    assert bad_profile.exit_code == 2 and "tiny, default, large" in bad_profile.output


def test_ingest_phantom_tiny_through_the_cli(tiny_phantom):
    result = runner.invoke(app, ["ingest", "phantom", "--profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output and "TCGA-LUAD" in result.output


def test_unknown_dataset_lists_the_valid_names(tiny_phantom):
    with pytest.raises(UnknownDatasetError, match="valid: .*phantom.*phantom-tiny-seed0"):
        load_dataset("no-such-dataset")


def test_the_console_script_is_installed():
    script = Path(sys.executable).with_name("hashbench")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ingest" in result.stdout


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["run", "--methods", "dafh,hashnet", "--bits", "16", "32", "48"],
            ["run", "--methods", "dafh", "--methods", "hashnet", "--bits", "16", "--bits", "32", "--bits", "48"],
        ),
        (
            ["run", "--bits", "16,32,48", "--epochs", "2"],
            ["run", "--bits", "16", "--bits", "32", "--bits", "48", "--epochs", "2"],
        ),
        (
            ["run", "--bits=16,32", "--set", "hashnet.alpha=0.2", "lr=0.001", "--force"],
            ["run", "--bits", "16", "--bits", "32", "--set", "hashnet.alpha=0.2", "--set", "lr=0.001", "--force"],
        ),
        (["run", "--set=dpn.margin=2", "--out", "x"], ["run", "--set", "dpn.margin=2", "--out", "x"]),
        # positionals are never taken for values: only integers follow --bits/--seeds, elsewhere one value per flag
        (["list", "--plugin", "examples/my_method.py", "c*"], ["list", "--plugin", "examples/my_method.py", "c*"]),
        (
            ["compare", "--metrics", "map@10", "dafh", "hashnet", "--bits", "32"],
            ["compare", "--metrics", "map@10", "dafh", "hashnet", "--bits", "32"],
        ),
        (
            ["compare", "dafh", "hashnet", "--bits", "16", "32", "--metrics", "map@1,map@10"],
            ["compare", "dafh", "hashnet", "--bits", "16", "--bits", "32", "--metrics", "map@1", "--metrics", "map@10"],
        ),
        (["confusion", "--metrics", "map@1", "CELL"], ["confusion", "--metrics", "map@1", "CELL"]),
        (
            ["run", "--seeds", "-1", "--bits", "-3"],
            ["run", "--seeds", "-1", "--bits", "-3"],
        ),  # kept, so the plan can refuse them
        (
            ["leaderboard", "--metrics", "map@1", "map@10", "--format", "md"],
            ["leaderboard", "--metrics", "map@1", "--metrics", "map@10", "--format", "md"],
        ),
    ],
)
def test_multi_value_options_are_expanded_for_click(argv, expected):
    from hashbench.cli import expand_multi_value_options

    assert expand_multi_value_options(argv) == expected


def test_overrides_are_per_method_or_for_all_and_stay_text_until_typed():
    from hashbench.cli import parse_overrides

    assert parse_overrides(
        ["hashnet.alpha=0.2", "batch_size=32", "dpn.targets=balanced", "dsh.alpha=1e-3", "lr_schedule=step:2000it:0.5"]
    ) == {
        "hashnet": {"alpha": "0.2"},
        "*": {"batch_size": "32", "lr_schedule": "step:2000it:0.5"},
        "dpn": {"targets": "balanced"},
        "dsh": {"alpha": "1e-3"},
    }


def test_run_then_leaderboard_end_to_end(tiny_phantom, tmp_path):
    from hashbench.cli import expand_multi_value_options

    out = tmp_path / "results"
    argv = [
        "run",
        "--methods",
        "hashnet,dpn",
        "--bits",
        "8",
        "16",
        "--dataset",
        "phantom-tiny-seed0",
        "--epochs",
        "1",
        "--set",
        "hashnet.alpha=0.2",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    assert result.output.count("done phantom-tiny-seed0/") == 4
    assert "MAP@10" in result.output and "synthetic phantom" in result.output and "test_efficientnet" in result.output
    again = runner.invoke(app, expand_multi_value_options(argv))
    assert again.output.count("skipped phantom-tiny-seed0/") == 4
    markdown = runner.invoke(app, ["leaderboard", "--out", str(out), "--format", "md"])
    assert markdown.exit_code == 0
    text = (out / "leaderboard.md").read_text()
    assert "| method | 8 bits | 16 bits |" in text and "| hashnet |" in text and "| dpn |" in text and "(n=1" in text
    bad_option = runner.invoke(
        app, expand_multi_value_options([*argv[:-2], "--set", "hashnet.alpah=1", "--out", str(out)])
    )
    assert bad_option.exit_code == 2 and "unknown option(s) alpah" in bad_option.output


def test_a_plugin_flag_never_swallows_the_pattern_and_negative_seeds_are_refused():
    from hashbench.cli import expand_multi_value_options
    from hashbench.model.registry import REGISTRY

    example = Path(__file__).resolve().parents[2] / "examples" / "my_method.py"
    try:
        listed = runner.invoke(app, expand_multi_value_options(["list", "--plugin", str(example), "c*"]))
    finally:
        REGISTRY.entries.pop("center-hash", None)  # other tests list the registry's names
    assert listed.exit_code == 0, listed.output
    assert "center-hash" in listed.output and "broken" not in listed.output and "dafh" not in listed.output
    negative = runner.invoke(app, expand_multi_value_options(["run", "--methods", "dpn", "--seeds", "-1", "--dry-run"]))
    assert negative.exit_code == 2 and "--seeds and --split-seed take whole numbers from 0" in negative.output


def test_version_suites_and_an_empty_leaderboard_say_what_they_are(tmp_path):
    import hashbench

    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"hashbench {hashbench.__version__}"
    suites = runner.invoke(app, ["suites"])
    assert suites.exit_code == 0 and all(
        name in suites.output for name in ("paper-table3", "paper-table4", "paper-table5", "Table 5")
    )
    wrong_place = runner.invoke(app, ["list", "suites"])
    assert wrong_place.exit_code == 2 and "`hashbench suites`" in " ".join(wrong_place.output.split())  # as wrapped
    for output_format in ("rich", "md"):
        empty = runner.invoke(app, ["leaderboard", "--out", str(tmp_path / "nothing"), "--format", output_format])
        assert empty.exit_code == 2 and "no finished cells under" in empty.output
    assert not (tmp_path / "nothing").exists()


def test_runs_go_to_runs_by_default_never_into_results():
    from hashbench.cli import DEFAULT_OUT

    assert DEFAULT_OUT == Path("runs")
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    assert (
        subprocess.run(
            ["git", "check-ignore", "-q", "runs/phantom/dafh/16bits/seed0-x/metrics.json"], cwd=root
        ).returncode
        == 0
    )


BAD_INPUTS = [
    (["run", "--methods", "nope", "--dry-run"], "unknown method 'nope'"),
    (["run", "--methods", "dpn", "--bits", "0", "--dry-run"], "0 is outside the valid range 1 to 1024"),
    (["run", "--methods", "dpn", "--bits", "-3", "--dry-run"], "-3 is outside the valid range 1 to 1024"),
    (["run", "--methods", "dpn", "--epochs=-2", "--dry-run"], "--epochs -2 is too small"),
    (["run", "--methods", "dpn", "--epochs", "0", "--dry-run"], "--epochs 0 is too small"),
    (["run", "--methods", "dpn", "--image-size", "0", "--dry-run"], "0 is outside the valid range 16 to 2048"),
    (["run", "--methods", "dpn", "--seeds", "-1", "--dry-run"], "take whole numbers from 0"),
    (
        ["run", "--methods", "dpn", "--split", "nope", "--dry-run"],
        "unknown split 'nope' for phantom; valid: patient, slice",
    ),
    (["run", "--methods", "dpn", "--dataset", "/tmp", "--dry-run"], "is not allowed"),
    (["run", "--methods", "dpn", "--dataset", "never-ingested", "--dry-run"], "unknown dataset 'never-ingested'"),
    (["run", "--methods", "dpn", "--device", "foo", "--dry-run"], "--device 'foo' is not a device"),
    (
        ["run", "--methods", "dpn", "--set", "batch_size=0.5", "--dry-run"],
        "dpn.batch_size=0.5 is not valid; expected a whole number",
    ),
    (
        ["run", "--methods", "dpn", "--set", "batch_size=1", "--dry-run"],
        "dpn.batch_size=1 is not valid; expected a whole number >= 2",
    ),
    (["run", "--methods", "dpn", "--set", "lr=0", "--dry-run"], "dpn.lr=0 is not valid; expected a number > 0"),
    (
        ["run", "--methods", "dpn", "--set", "optimizer=adagrad", "--dry-run"],
        "dpn.optimizer=adagrad is not valid; expected one of adam, sgd, rmsprop",
    ),
    (
        ["run", "--methods", "dpn", "--set", "nesterov=maybe", "--dry-run"],
        "dpn.nesterov=maybe is not valid; expected true or false",
    ),
    (
        ["run", "--methods", "dpn", "--set", "dpn.targets=even", "--dry-run"],
        "dpn.targets=even is not valid; expected one of random, balanced",
    ),
    (
        ["run", "--methods", "dpn", "--set", "dpn.margin=-1", "--dry-run"],
        "dpn.margin=-1 is not valid; expected a number >= 0",
    ),
    (["run", "--methods", "dpn", "--set", "dpn.marign=1", "--dry-run"], "dpn: unknown option(s) marign; valid:"),
    (
        ["run", "--methods", "hashnet", "--set", "hashnet.beta_step=2.5", "--dry-run"],
        "hashnet.beta_step=2.5 is not valid; expected a whole number >= 1",
    ),
    (
        ["run", "--methods", "hashnet", "--set", "hashnet.alpha=none!", "--dry-run"],
        "hashnet.alpha=none! is not valid; expected a number > 0, or none",
    ),
    (["run", "--methods", "dpn", "--set", "dpnn.margin=1", "--dry-run"], "--set names dpnn"),
    (
        ["run", "--methods", "dpn", "--bits", "8", "--epochs", "1", "--out", "/proc/hashbench-cannot-write"],
        "cannot be written",
    ),
    (["run", "--methods", "dpn", "--bits", "8", "--epochs", "1", "--out", "/dev/null/runs"], "cannot be written"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[2:4]) + " " + a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_the_problem_and_no_traceback(tiny_phantom, argv, message):
    from hashbench.cli import expand_multi_value_options

    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not an exception that escaped
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_a_run_written_to_a_log_gets_one_line_per_epoch_and_readable_ties(tiny_phantom, tmp_path):
    from hashbench.cli import expand_multi_value_options

    result = runner.invoke(
        app,
        expand_multi_value_options(
            [
                "run",
                "--methods",
                "dpn",
                "--bits",
                "8",
                "--epochs",
                "2",
                "--dataset",
                "phantom-tiny-seed0",
                "--out",
                str(tmp_path),
            ]
        ),
    )
    assert result.exit_code == 0, result.output
    assert (
        re.search(r"dpn 8 bits: epoch 1/2 in \d+\.\d s, polarisation \d", result.output)
        and "dpn 8 bits: epoch 2/2" in result.output
    )
    ties = runner.invoke(app, ["ties", "--out", str(tmp_path)])
    assert ties.exit_code == 0
    lines = ties.output.splitlines()
    row = next(line for line in lines if line.startswith("dpn "))
    assert row.split()[:4] == ["dpn", "8", "0", "patient"] and len(row.split()) == 14
    assert max(len(line) for line in lines[: lines.index(row) + 1]) <= 120


@pytest.mark.parametrize(
    "text, expected",
    [("false", False), ("False", False), ("no", False), ("off", False), ("0", False), ("true", True), ("on", True)],
)
def test_set_nesterov_reaches_the_plan_as_a_boolean(tiny_phantom, text, expected):
    from hashbench.cli import expand_multi_value_options

    argv = [
        "run",
        "--methods",
        "hashnet",
        "--bits",
        "16",
        "--dataset",
        "phantom-tiny-seed0",
        "--set",
        f"hashnet.nesterov={text}",
        "--dry-run",
        "--json",
    ]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    planned = json.loads(result.output.splitlines()[0])
    assert planned["train"]["nesterov"] is expected and f'"nesterov": {str(expected).lower()}' in result.output


def test_derived_options_are_none_in_the_plan_and_an_explicit_value_wins(tiny_phantom):
    from hashbench.cli import expand_multi_value_options

    argv = [
        "run",
        "--methods",
        "hashnet,dsh",
        "--bits",
        "16",
        "--dataset",
        "phantom-tiny-seed0",
        "--set",
        "dsh.margin=5",
        "--dry-run",
        "--json",
    ]
    result = runner.invoke(app, expand_multi_value_options(argv))
    assert result.exit_code == 0, result.output
    hashnet, dsh = (json.loads(line) for line in result.output.splitlines())
    assert hashnet["options"]["alpha"] is None and dsh["options"]["margin"] == 5.0


def test_options_shows_a_methods_tables_and_names_the_valid_methods_for_an_unknown_one():
    from hashbench.model.registry import method_class

    dafh = runner.invoke(app, ["options", "dafh"], env={"COLUMNS": "250"})
    assert dafh.exit_code == 0, dafh.output
    assert "dafh: method options" in dafh.output and "dafh: train settings" in dafh.output
    fusion = next(line for line in dafh.output.splitlines() if "│ fusion " in line)
    assert "true" in fusion and "inter-layer fusion" in fusion
    titles = [table.title for table in method_class("dafh").option_tables()]
    assert titles == ["method options", "train settings", "loss switches (every trained method)"]
    lsh = runner.invoke(app, ["options", "lsh"], env={"COLUMNS": "250"})
    assert lsh.exit_code == 0 and "lsh is training-free" in lsh.output and "lsh: train settings" not in lsh.output
    unknown = runner.invoke(app, ["options", "dafh-[x]"])
    assert unknown.exit_code == 2 and "unknown method 'dafh-[x]'" in unknown.output and "hashnet" in unknown.output
