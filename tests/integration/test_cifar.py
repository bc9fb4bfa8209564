"""`ingest cifar`: CIFAR-10's python batches, the literature's three protocols with their exact sizes, colour kept."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from hashbench.api import RunRequest, plan, run_grid
from hashbench.cli import app
from hashbench.data.dicom import ImageOptions
from hashbench.data.splits import SEARCHED, TRAINED
from hashbench.datasets.cifar import ingest_cifar, load_batch

sys.path.insert(0, os.path.dirname(__file__))
from cifar_files import NAMES, write_cifar  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def full_cifar(tmp_path_factory):
    """A CIFAR-10 of the real size (6 x 10,000 images of 32 x 32 x 3), ingested once: 13 s."""
    root = tmp_path_factory.mktemp("cifar")
    folder = write_cifar(root)
    return folder, ingest_cifar(
        folder, "cifar10", root / "datasets", ImageOptions(size=32, colour="rgb"), workers=2
    ).dataset


def test_the_three_protocols_give_exactly_the_documented_sizes(full_cifar):
    folder, dataset = full_cifar
    assert dataset.protocol_sizes() == {
        "1k-5k-54k": {"query": 1_000, "train": 5_000, "database": 54_000},
        "1k-5k-59k": {"query": 1_000, "train": 5_000, "database": 59_000},
        "official": {"query": 10_000, "train": 50_000, "database": 50_000},
    }
    assert dataset.default_split == "1k-5k-54k" and dataset.published_metric("1k-5k-54k") == "map@all"
    labels = dataset.index["label"]
    for protocol in ("1k-5k-54k", "1k-5k-59k"):
        side = dataset.split(protocol, seed=0)
        queries, trained, searched = side == "query", side.isin(TRAINED), side.isin(SEARCHED)
        assert not (queries & (trained | searched)).any()  # no query is trained on or searched for
        assert (labels[queries].value_counts() == 100).all() and (labels[trained].value_counts() == 500).all()
        assert labels[queries].nunique() == labels[trained].nunique() == 10
        if protocol == "1k-5k-54k":
            assert not (trained & searched).any()  # training images excluded from the database
        else:
            assert (trained <= searched).all()  # training images inside the database
    first, again, other = (
        dataset.split("1k-5k-54k", seed=0),
        dataset.split("1k-5k-54k", seed=0),
        dataset.split("1k-5k-54k", seed=1),
    )
    assert first.equals(again) and (first == "query").sum() == (other == "query").sum() and not first.equals(other)
    assert (
        dataset.split("1k-5k-59k", seed=0)[first == "query"].eq("query").all()
    )  # one draw of queries for both per-class protocols
    official = dataset.split("official")
    assert (dataset.index.loc[official.index[official == "query"], "series"] == "test_batch").all()


def test_images_are_the_batches_pixels_in_colour_under_batches_meta_names(full_cifar):
    folder, dataset = full_cifar
    batch = load_batch((folder / "data_batch_3").read_bytes())
    rows = dataset.index[dataset.index["series"] == "data_batch_3"].sort_values("frame")
    assert dataset.images.shape == (60_000, 32, 32, 3)
    expected = np.asarray(batch["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(dataset.images[rows.index.to_numpy()], expected)
    assert list(rows["label"]) == [NAMES[i].decode() for i in batch["labels"]]


def test_a_method_learns_colour_only_classes_on_a_small_cifar_and_reports_map_at_all(tmp_path, monkeypatch, chance):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    folder = write_cifar(tmp_path, per_batch=48, classes=4, noise=30)
    result = runner.invoke(app, ["ingest", "cifar", str(tmp_path), "--name", "tinycifar", "--workers", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert (
        "split official (default): 48 queries, 240 training, 240 database" in text and "not available" in text
    )  # the per-class protocols need 600 per class
    from hashbench.datasets import load_dataset

    dataset = load_dataset("tinycifar")
    assert (
        dataset.default_split == "official"
        and dataset.channels == 3
        and "partial CIFAR-10" in dataset.describe_split("official")
    )
    request = RunRequest(["dpsh"], [16], dataset="tinycifar", epochs=6, profile="quick")
    planned = plan(request, dataset, "cpu")
    assert planned[0].config.image_size == 32  # the stored size, not the quick profile's 64
    outcome = run_grid(request, dataset, tmp_path / "runs")[0]
    assert outcome.status == "done", outcome.error
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.3, (
        outcome.metrics["map@10"],
        floor,
    )  # the classes differ in hue alone
    assert "map@all" in outcome.metrics
    with pytest.raises(
        ValueError, match="takes 100 queries and 500 training images of every class, but class airplane has 72 images"
    ):
        plan(
            RunRequest(["dpsh"], [16], dataset="tinycifar", split="1k-5k-54k"),
            dataset,
            __import__("torch").device("cpu"),
        )
    assert folder.exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: (f / "data_batch_4").unlink(), "missing data_batch_4"),
        (lambda f: (f / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()})), "refused to load posix.system"),
        (lambda f: (f / "data_batch_2").write_bytes(b"not a pickle"), "not a CIFAR python batch"),
        (
            lambda f: (f / "data_batch_1").write_bytes(
                pickle.dumps({b"data": np.zeros((4, 10), np.uint8), b"labels": [0, 1, 2, 3]})
            ),
            "expected (n, 3072) uint8",
        ),
    ],
    ids=["missing batch", "code in a pickle", "not a pickle", "wrong shape"],
)
def test_bad_batches_exit_2_with_the_reason(tmp_path, monkeypatch, spoil, message):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    folder = write_cifar(tmp_path, per_batch=12, classes=4)
    spoil(folder)
    result = runner.invoke(app, ["ingest", "cifar", str(folder)])
    assert result.exit_code == 2, result.output
    assert (
        message in " ".join(result.output.split()) and "Traceback" not in result.output and "pwned" not in result.output
    )
