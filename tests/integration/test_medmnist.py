"""`ingest medmnist`: MedMNIST-shaped .npz files, their official split as the protocol, every bad file a clear message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.api import RunRequest, plan, run_grid
from hashbench.cli import app
from hashbench.datasets.medmnist import ingest_medmnist

runner = CliRunner()
PARTS = {"train": 300, "val": 30, "test": 60}


def write_npz(path: Path, size: int = 28, colour: bool = False, classes: int = 3, drop: str = "") -> Path:
    """A MedMNIST-shaped file whose classes differ in brightness (learnable), in the official key layout."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in PARTS.items():
        labels = np.arange(n) % classes
        images = np.clip(rng.normal(40 + 80 * labels[:, None, None], 12, (n, size, size)), 0, 255).astype(np.uint8)
        if colour:
            images = np.stack([images, images, images], axis=-1)
        arrays[f"{part}_images"] = images
        arrays[f"{part}_labels"] = labels[:, None]
    arrays.pop(drop, None)
    np.savez_compressed(path, **arrays)
    return path


def write_multi_label_npz(path: Path, findings: int = 4, size: int = 28) -> Path:
    """A ChestMNIST-shaped file: a 0/1 column per finding, each finding a bright quadrant of the image (learnable)."""
    rng = np.random.default_rng(1)
    arrays = {}
    half = size // 2
    for part, n in PARTS.items():
        labels = (rng.random((n, findings)) < 0.3).astype(np.uint8)
        images = rng.normal(40, 10, (n, size, size))
        for finding in range(findings):
            rows, columns = divmod(finding, 2)
            images[labels[:, finding] == 1, rows * half : (rows + 1) * half, columns * half : (columns + 1) * half] += (
                150
            )
        arrays[f"{part}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{part}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("colour", [False, True], ids=["grey", "colour"])
def test_the_official_split_is_the_protocol_and_sizes_are_the_files(tmp_path, colour):
    source = write_npz(tmp_path / "toymnist_28.npz", colour=colour)
    dataset = ingest_medmnist(source, "toy", tmp_path / "datasets", workers=1).dataset
    assert dataset.image_size == 28 and dataset.images.shape == (
        sum(PARTS.values()),
        28,
        28,
        *((3,) if colour else ()),
    )  # colour kept
    assert dataset.default_split == "official" and dataset.manifest["parts"] == PARTS
    sides = dataset.split("official")
    assert sides.value_counts().to_dict() == {
        "database": PARTS["train"],
        "query": PARTS["test"],
        "validation": PARTS["val"],
    }
    index = dataset.index
    assert (
        index.loc[sides.index, "series"].map({"train": "database", "val": "validation", "test": "query"}) == sides
    ).all()
    third = sum(PARTS.values()) // 3
    assert (
        index["label"].value_counts().to_dict() == {"0": third, "1": third, "2": third} and index["patient"].is_unique
    )
    first_query = index[index["series"] == "test"].iloc[0]
    assert first_query["label"] == "0" and abs(float(np.median(dataset.images[first_query.name])) - 40) < 10
    assert "hashbench ingest medmnist" in dataset.rebuild_command()
    assert ingest_medmnist(source, "toy", tmp_path / "datasets", workers=1).up_to_date


def test_a_method_learns_on_the_official_split_by_default(tmp_path, monkeypatch, chance):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    source = write_npz(tmp_path / "toymnist.npz")
    result = runner.invoke(app, ["ingest", "medmnist", str(source)])
    assert result.exit_code == 0, result.output
    from hashbench.datasets import load_dataset

    dataset = load_dataset("toymnist")
    request = RunRequest(["dpsh"], [8], dataset="toymnist", epochs=8, image_size=28, profile="quick")
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    assert outcome.config.split == "official"
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.3, (
        outcome.metrics["map@10"],
        floor,
    )  # three brightness classes: far above random codes
    with pytest.raises(ValueError, match="unknown split 'slices' for toymnist; valid: patient, slice, official"):
        plan(RunRequest(["dpsh"], [8], dataset="toymnist", split="slices"), dataset, __import__("torch").device("cpu"))


def test_a_multi_label_set_keeps_every_finding_and_a_method_learns_relevance_as_sharing_one(
    tmp_path, monkeypatch, chance
):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    source = write_multi_label_npz(tmp_path / "toychest.npz")
    arrays = np.load(source)
    dataset = ingest_medmnist(source, "toychest", tmp_path / "home" / "datasets", workers=1).dataset
    assert dataset.multi_label
    stored = dataset.index[dataset.index["series"] == "train"]["label"].to_numpy()
    expected = ["|".join(map(str, np.flatnonzero(row))) or "none" for row in arrays["train_labels"]]
    assert list(stored) == expected and "none" in stored and any("|" in label for label in stored)
    assert dataset.summary()["classes"] == 5  # four findings and none
    request = RunRequest(["dpsh"], [16], dataset="toychest", epochs=8, image_size=28, profile="quick")
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.3, (
        outcome.metrics["map@10"],
        floor,
    )  # measured 1.00 against random codes' 0.52
    cell = next((tmp_path / "runs").rglob("metrics.json")).parent
    result = runner.invoke(app, ["confusion", str(cell), "--output-dir", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "figures" / "confusion.png").exists()  # no confusion matrix for multi-label codes
    table = (tmp_path / "figures" / "confusion.md").read_text()
    assert "multi-label" in table and all(f"| {name} |" in table for name in ("0", "1", "2", "3", "none"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_npz(p / "a.npz", drop="val_labels"), "missing val_labels"),
        (lambda p: (p / "b.npz").write_bytes(b"not a zip") and p / "b.npz", "not a readable .npz file"),
        (lambda p: p / "missing.npz", "no such file"),
    ],
    ids=["missing keys", "not an npz", "no file"],
)
def test_bad_files_exit_2_with_the_reason(tmp_path, make, message):
    path = make(tmp_path)
    result = runner.invoke(app, ["ingest", "medmnist", str(path)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


@pytest.mark.skipif(
    importlib.util.find_spec("medmnist") is not None,
    reason="the medmnist package is installed here: a name would be fetched",
)
def test_a_set_name_without_the_medmnist_package_says_how_to_get_it():
    result = runner.invoke(app, ["ingest", "medmnist", "pathmnist"])
    assert result.exit_code == 2 and "pip install medmnist" in result.output and "pathmnist.npz" in result.output


def test_the_official_split_is_refused_where_the_data_ships_none(tiny_phantom):
    result = runner.invoke(
        app, ["run", "--methods", "dpn", "--dataset", "phantom-tiny-seed0", "--split", "official", "--dry-run"]
    )
    assert result.exit_code == 2 and "valid: patient, slice" in result.output
