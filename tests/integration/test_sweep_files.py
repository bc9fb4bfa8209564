"""Sweeps as files: `run --config FILE` plans what the same flags plan, `--like CELL` plans a stored cell again, and a
bad file is one line naming the file, the key and the fix."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hashbench import api
from hashbench.cli import app, expand_multi_value_options, parse_overrides
from hashbench.config import sweep
from hashbench.model.options import coerce
from hashbench.store.atomic import write_json
from hashbench.store.results import CellConfig

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

runner = CliRunner()
EXAMPLE = Path(__file__).parents[2] / "examples" / "sweep.toml"
TINY = "phantom-tiny-seed0"


def invoke(*argv: str):
    return runner.invoke(app, expand_multi_value_options(["run", *argv]))


def resolved_sweep(output: str) -> str:
    """The resolved sweep a text dry run prints: the `key = value` lines after its heading."""
    lines = output.splitlines()
    start = lines.index("# the resolved sweep: save it as a file and run it with --config FILE") + 1
    end = next(i for i in range(start, len(lines)) if " = " not in lines[i])
    return "\n".join(lines[start:end]) + "\n"


def test_the_example_sweep_plans_exactly_what_its_flags_plan(default_phantom):
    flags = [
        *("--methods", "dafh,hashnet,dpsh", "--bits", "16", "32", "48", "--seeds", "0", "1", "2"),
        *("--dataset", "phantom", "--split", "patient", "--split-seed", "0", "--profile", "quick"),
        *("--set", "dpsh.lam=10", "--out", "runs", "--metrics", "map@1,map@1-tie,map@10,map@all,map@tie"),
    ]
    for output in ([], ["--json"]):
        from_file = invoke("--config", str(EXAMPLE), "--dry-run", *output)
        from_flags = invoke(*flags, "--dry-run", *output)
        assert from_file.exit_code == 0, from_file.output
        assert from_file.output == from_flags.output
    lines = [json.loads(line) for line in from_file.output.splitlines()]
    assert len(lines) == 27 and {line["profile"] for line in lines} == {"quick"}
    assert {line["options"]["lam"] for line in lines if line["method"] == "dpsh"} == {10.0}


def test_the_resolved_sweep_is_a_file_that_plans_the_same_again(tiny_phantom, tmp_path):
    flags = [
        *("--methods", "hashnet,lsh", "--bits", "16", "--seeds", "0", "1", "--dataset", TINY, "--out", str(tmp_path)),
        *("--augment", "rotation=5,noise=0.01", "--validation", "0.1", "--shard", "0/2", "--precision", "fp32"),
        *("--channels-last", "--compile", "--set", "hashnet.alpha=0.25", "--set", "nesterov=off"),
    ]
    first = invoke(*flags, "--dry-run")
    assert first.exit_code == 0, first.output
    resolved = resolved_sweep(first.output)
    values = tomllib.loads(resolved)
    assert (values["profile"], values["epochs"], values["image-size"], values["split"]) == ("quick", 30, 64, "patient")
    assert values["backbone"] == ["test_efficientnet"] and values["pretrained"] is False and values["device"] == "cpu"
    assert values["set"] == ["hashnet.alpha=0.25", "nesterov=off"] and values["shard"] == "0/2"
    file = tmp_path / "resolved.toml"
    file.write_text(resolved)
    again = invoke("--config", str(file), "--dry-run")
    assert again.exit_code == 0, again.output
    assert again.output == first.output
    assert not list(tmp_path.glob(f"{TINY}/*")) and not (tmp_path / "sweeps").exists()  # a dry run writes nothing


def test_flags_beside_a_file_override_it_and_set_adds_to_its_settings(tiny_phantom, tmp_path):
    file = tmp_path / "small.toml"
    file.write_text(
        f'methods = "hashnet,dpsh"\nbits = 16\nseeds = [0]\ndataset = "{TINY}"\nsplit_seed = 2\n'
        'set = ["hashnet.alpha=0.1", "batch_size=16"]\n'
    )
    result = invoke("--config", str(file), "--seeds", "3", "--set", "hashnet.alpha=0.2", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    hashnet, dpsh = (json.loads(line) for line in result.output.splitlines())
    assert (hashnet["seed"], dpsh["seed"], hashnet["split_seed"]) == (3, 3, 2)  # split_seed is read as split-seed
    assert hashnet["options"]["alpha"] == 0.2 and hashnet["train"]["batch_size"] == dpsh["train"]["batch_size"] == 16


BAD_FILES = [
    ("bits = [16,\n", "not valid TOML"),
    ("bitz = [16]\n", "unknown key bitz; valid: methods, bits, suite,"),
    ("dry_run = true\n", "unknown key dry-run; valid:"),  # how to run once is not part of a sweep
    ("bits = [0]\n", "bits = [0]: 0 is outside the valid range 1 to 1024"),
    ("image-size = 4096\n", "image-size = 4096: 4096 is outside the valid range 16 to 2048"),
    ('bits = ["sixteen"]\n', 'bits = ["sixteen"]: '),
    ('dataset = ["a", "b"]\n', 'dataset = ["a", "b"]: takes one value, not a list'),
    ('compile = "yes"\n', "compile = \"yes\": 'yes' is not true or false"),
    ("epochs = true\n", "epochs = true: True is not text or a number"),
    ("[set]\nalpha = 1\n", "set = {\"alpha\": 1}: {'alpha': 1} is not text or a number"),
    ('set = ["alpha"]\n', "set = [\"alpha\"]: 'alpha': expected method.key=value or key=value"),
    ('methods = ["nope"]\n', "(or a flag beside it): unknown method 'nope'; valid:"),
    ('methods = ["dpn"]\nset = ["dpn.margin=-1"]\n', "(or a flag beside it): dpn.margin=-1 is not valid"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[message[:30] for _, message in BAD_FILES])
def test_a_bad_sweep_file_exits_2_naming_the_file_the_key_and_the_fix(tiny_phantom, tmp_path, text, message):
    file = tmp_path / "bad.toml"
    file.write_text(f'dataset = "{TINY}"\n' + text if "dataset" not in text else text)
    result = invoke("--config", str(file), "--dry-run")
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert shown.startswith(f"error: {file}") and message in shown, result.output
    assert "Traceback" not in result.output


def test_a_missing_file_or_two_sources_exit_2(tmp_path):
    missing = invoke("--config", str(tmp_path / "nowhere.toml"), "--dry-run")
    assert missing.exit_code == 2 and "nowhere.toml: no such file" in missing.output
    file = tmp_path / "empty.toml"
    file.write_text("")
    both = invoke("--config", str(file), "--like", str(tmp_path), "--dry-run")
    assert both.exit_code == 2 and "--config and --like both give a sweep's settings" in both.output
    not_a_cell = invoke("--like", str(tmp_path), "--dry-run")
    assert not_a_cell.exit_code == 2 and "no config.json there; --like takes a cell's directory" in not_a_cell.output


def test_a_run_keeps_its_sweep_file_then_like_plans_its_cell_again(tiny_phantom, tmp_path):
    out = tmp_path / "runs"
    file = tmp_path / "lsh.toml"
    file.write_text(f'methods = ["lsh"]\nbits = [16]\ndataset = "{TINY}"\nout = "{out}"\n')
    ran = invoke("--config", str(file))
    assert ran.exit_code == 0, ran.output
    (kept,) = (out / "sweeps").iterdir()
    assert kept.name.startswith("lsh-") and kept.read_bytes() == file.read_bytes() and str(kept) in ran.output
    (cell,) = out.glob(f"{TINY}/lsh/16bits/seed0-*")
    stored = json.loads((cell / "config.json").read_text())

    same = invoke("--like", str(cell), "--dry-run", "--json")
    assert same.exit_code == 0, same.output
    (planned,) = (json.loads(line) for line in same.output.splitlines())
    assert planned["directory"] == str(cell)  # the same identity: the same cell
    assert {key: planned[key] for key in stored} == stored

    other_seed = invoke("--like", str(cell), "--seeds", "1", "--dry-run", "--json")
    (planned,) = (json.loads(line) for line in other_seed.output.splitlines())
    assert {key for key in stored if planned[key] != stored[key]} == {"seed"} and planned["seed"] == 1
    told = invoke("--like", str(cell), "--seeds", "1", "--dry-run")
    assert f"like {TINY}/lsh/16bits/{cell.name}: {TINY}/lsh/16 bits/seed 1 differs in seed 0 -> 1" in told.output


def test_like_plans_every_kind_of_cell_again_as_it_was(tiny_phantom, tmp_path):
    """Options, train settings, augmentation, frozen backbones, float references, suite variants: each planned cell,
    stored as a config alone, planned again by --like is the same cell."""
    data = tiny_phantom.dataset
    requests = [
        api.RunRequest(
            methods=["hashnet", "dafh"],
            bits=[16],
            dataset=data.name,
            overrides={"hashnet": {"alpha": "0.1"}, "*": {"batch_size": "16"}},
            augment="rotation=5,noise=0.01",
            epochs=2,
        ),
        api.RunRequest(
            methods=["dpsh", "float-cosine", "itq"],
            bits=[32],
            dataset=data.name,
            freeze_backbone=True,
            split="slice",
            split_seed=3,
            validation=0.1,
            image_size=32,
        ),
        api.with_suite_settings(
            api.RunRequest(methods=["dafh-ab-at", "dafh-resnet50"], bits=[48], dataset=data.name, profile="quick"),
            api.suite("paper-table4"),
        ),
    ]
    for request in requests:
        for cell in api.plan(request, data):
            directory = cell.config.directory(tmp_path)
            directory.mkdir(parents=True)
            write_json(directory / "config.json", asdict(cell.config))
            again = invoke("--like", str(directory), "--dry-run", "--json")  # into the cell's own results root
            assert again.exit_code == 0, again.output
            assert [json.loads(line)["directory"] for line in again.output.splitlines()] == [str(directory)]


def test_a_sweep_file_reads_its_keys_and_refuses_others(tmp_path):
    file = tmp_path / "sweep.toml"
    file.write_text('image_size = 32\nsplit-seed = 1\nmethods = ["dpsh"]\n')
    assert sweep.read_sweep(file, ["methods", "image-size", "split-seed"]) == {
        "image-size": 32,
        "split-seed": 1,
        "methods": ["dpsh"],
    }
    with pytest.raises(ValueError, match=r"sweep.toml: unknown key split-seed; valid: methods, image-size$"):
        sweep.read_sweep(file, ["methods", "image-size"])


def test_settings_written_as_toml_read_back_unchanged():
    settings = {
        "methods": ["dafh", "hashnet"],
        "bits": [16, 32],
        "validation": 0.1,
        "pretrained": False,
        "augment": 'rotation=5 "quoted" ±',
        "out": Path("runs/x"),
        "channels-last": None,
    }
    read = tomllib.loads(sweep.to_toml(settings))
    assert read == {**{k: v for k, v in settings.items() if v is not None}, "out": "runs/x"}


def test_set_texts_read_back_as_the_typed_values_they_came_from():
    overrides = {
        "dpsh": {"eta": None, "lam": 0.1 + 0.2, "margin": 5},
        "*": {"nesterov": True, "lr_schedule": "constant"},
    }
    texts = sweep.override_texts(overrides)
    assert texts == [
        "dpsh.eta=none",
        "dpsh.lam=0.30000000000000004",
        "dpsh.margin=5",
        "nesterov=true",
        "lr_schedule=constant",
    ]
    parsed = parse_overrides(texts)
    assert (
        coerce(parsed["dpsh"]["lam"], float, "lam") == 0.1 + 0.2 and coerce(parsed["*"]["nesterov"], bool, "n") is True
    )
    assert coerce(parsed["dpsh"]["eta"], float | None, "eta") is None


def test_a_float_reference_is_planned_again_at_every_code_length(tmp_path):
    config = CellConfig("toy", "float-cosine", 0, 2, "resnet50", 1, 32, "patient", weights={"resnet50": "hub:x"})
    directory = config.directory(tmp_path)
    directory.mkdir(parents=True)
    write_json(directory / "config.json", asdict(config))
    settings = sweep.cell_settings(directory)
    assert "bits" not in settings and settings["seeds"] == [2] and settings["pretrained"] is True
    assert settings["out"] == str(tmp_path)  # planned into the results root the cell sits in


def test_a_kept_sweep_file_is_never_replaced_by_another_version(tmp_path):
    file = tmp_path / "grid.toml"
    file.write_text("seeds = [0]\n")
    first = sweep.keep_copy(file, tmp_path / "runs")
    assert sweep.keep_copy(file, tmp_path / "runs") == first  # the same content: the same copy
    file.write_text("seeds = [1]\n")
    second = sweep.keep_copy(file, tmp_path / "runs")
    assert second != first and first.read_text() == "seeds = [0]\n" and second.read_text() == "seeds = [1]\n"
    assert first.parent == tmp_path / "runs" / "sweeps" and first.name.startswith("grid-")
