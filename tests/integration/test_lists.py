"""`ingest lists`: the hashing literature's list files (multi-hot rows), overlap reported, missing images skipped with a report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hashbench.cli import app

runner = CliRunner()
SIZE = 16


def write_images(root: Path, n: int, classes: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` PNGs under root/images, each class a bright quadrant (an image may show several), with their multi-hot rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        labels = (rng.random(classes) < 0.2).astype(int)
        if not labels.any():
            labels[i % classes] = 1
        pixels = rng.normal(40, 10, (SIZE, SIZE))
        for c in np.flatnonzero(labels):
            r, q = divmod(c, 2)
            pixels[r * 8 : (r + 1) * 8, q * 8 : (q + 1) * 8] += 160
        relative = f"images/{i // 50:02d}/img{i:04d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / relative)
        rows.append((relative, labels))
    return rows


def write_list(path: Path, rows) -> Path:
    path.write_text("".join(f"{image} {' '.join(map(str, labels))}\n" for image, labels in rows))
    return path


@pytest.fixture
def list_set(tmp_path, monkeypatch):
    """query 30, database 150 (5 queries planted in it, 1 image missing), train 80 of the database (1 row without label)."""
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    rows = write_images(tmp_path, 180)
    query, database = rows[:30], rows[30:]
    planted = query[:5]
    database = database[:145] + planted + [("images/99/gone.png", np.array([1, 0, 0, 0]))]
    train = database[:79] + [(database[79][0], np.array([0, 0, 0, 0]))]
    lists = {
        "query": write_list(tmp_path / "test.txt", query),
        "database": write_list(tmp_path / "database.txt", database),
        "train": write_list(tmp_path / "train.txt", train),
    }
    return tmp_path, lists


def ingest(lists, *extra):
    return runner.invoke(
        app,
        [
            "ingest",
            "lists",
            *(arg for role, path in lists.items() for arg in (f"--{role}", str(path))),
            "--name",
            "toylists",
            "--size",
            str(SIZE),
            "--top-k",
            "50",
            "--workers",
            "1",
            *extra,
        ],
    )


def test_the_lists_are_the_protocol_and_a_planted_overlap_is_reported(list_set, chance):
    root, lists = list_set
    result = ingest(lists)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "5 of 30 queries (16.7%) are also in the database list" in text
    assert "1 listed images are not on disk" in text and "images/99/gone.png" in text
    assert "1 rows carry no label" in text
    assert "split lists (default): 30 queries, 79 training, 150 database" in text
    from hashbench.datasets import load_dataset

    dataset = load_dataset("toylists")
    assert dataset.multi_label and dataset.manifest["overlap"]["query_database"]["images"] == 5
    assert dataset.manifest["overlap"]["query_train"]["images"] == 0
    from hashbench.api import RunRequest, run_grid

    outcome = run_grid(
        RunRequest(["dpsh"], [16], dataset="toylists", epochs=6, profile="quick"), dataset, root / "runs"
    )[0]
    assert outcome.status == "done", outcome.error
    assert outcome.config.split == "lists" and outcome.config.image_size == SIZE
    floor = chance(dataset)["map@10"]
    assert outcome.metrics["map@10"] > floor + 0.2, (
        outcome.metrics["map@10"],
        floor,
    )  # measured 0.86 against random codes' 0.47
    assert "map@50" in outcome.metrics  # the lists' published MAP@k, beside the rest
    board = runner.invoke(
        app,
        [
            "leaderboard",
            "--out",
            str(root / "runs"),
            "--format",
            "md",
            "--output",
            str(root / "board.md"),
            "--no-figures",
        ],
    )
    assert board.exit_code == 0, board.output
    markdown = (root / "board.md").read_text()
    assert (
        "MAP@50 (the metric this protocol is published with)" in markdown
        and "the published lists (30 query, 151 database, 80 train rows listed)" in markdown
    )


def test_a_changed_label_in_a_list_reaches_the_index_without_decoding_again(list_set):
    root, lists = list_set
    assert ingest(lists).exit_code == 0
    rows = lists["database"].read_text().splitlines()
    image = rows[0].split()[0]
    flags = [1 - int(flag) for flag in rows[0].split()[1:]]  # every other class: surely a new label
    rows[0] = f"{image} {' '.join(map(str, flags))}"
    lists["database"].write_text("\n".join(rows) + "\n")
    result = ingest(lists)
    assert result.exit_code == 0, result.output
    assert "0 decoded, 259 unchanged and reused" in " ".join(result.output.split())
    from hashbench.datasets import load_dataset

    index = load_dataset("toylists").index
    assert index.loc[index["path"] == f"database:{image}", "label"].tolist() == [
        "|".join(str(c) for c, flag in enumerate(flags) if flag)
    ]


def test_attributes_beside_the_query_list_reach_every_role_an_image_is_listed_in(list_set):
    root, lists = list_set
    planted = lists["query"].read_text().split()[0]  # also in the database list
    (root / "attributes.csv").write_text(f"path,manufacturer,slice_thickness\n{planted},  ACME ,1.50\n")
    result = ingest(lists)
    assert result.exit_code == 0, result.output
    from hashbench.datasets import load_dataset

    index = load_dataset("toylists").index
    tagged = index[index["manufacturer"] != ""]
    assert sorted(tagged["path"]) == [f"database:{planted}", f"query:{planted}"]
    assert set(tagged["manufacturer"]) == {"ACME"} and set(tagged["slice_thickness"]) == {"1.5"}
    (root / "attributes.csv").write_text("path,sex\nimages/77/none.png,F\n")
    refused = ingest(lists)
    assert refused.exit_code == 2 and "(e.g. images/77/none.png)" in " ".join(refused.output.split()), refused.output


def test_single_label_lists_are_not_multi_label(tmp_path, monkeypatch):
    monkeypatch.setenv("HASHBENCH_HOME", str(tmp_path / "home"))
    rows = [(image, np.eye(4, dtype=int)[i % 4]) for i, (image, _) in enumerate(write_images(tmp_path, 40))]
    lists = {"query": write_list(tmp_path / "q.txt", rows[:10]), "database": write_list(tmp_path / "db.txt", rows[10:])}
    result = runner.invoke(
        app,
        [
            "ingest",
            "lists",
            "--query",
            str(lists["query"]),
            "--database",
            str(lists["database"]),
            "--name",
            "onehot",
            "--preset",
            "imagenet-100",
            "--size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    from hashbench.datasets import load_dataset

    dataset = load_dataset("onehot")
    assert not dataset.multi_label and dataset.published_metric("lists") == "map@1000"
    assert dataset.protocol_sizes() == {"lists": {"query": 10, "train": 30, "database": 30}}


@pytest.mark.parametrize(
    "spoil, message",
    [
        (
            lambda root, lists: [
                write_list(path, [(f"nowhere/{role}.png", [1, 0, 0, 0])]) for role, path in lists.items()
            ],
            "none of the 3 listed images is under",
        ),
        (
            lambda root, lists: lists["query"].write_text("images/00/img0000.png 1 0 0 x\n"),
            "test.txt:1: expected 'IMAGE 0 1 0 ...'",
        ),
        (
            lambda root, lists: lists["train"].write_text("images/00/img0000.png 1 0 0 0\nimages/00/img0001.png 1 0\n"),
            "train.txt:2: 2 label columns where the rows above have 4",
        ),
        (lambda root, lists: lists["database"].unlink(), "no such file: --database"),
        (
            lambda root, lists: lists["database"].write_text(
                lists["database"].read_text() + lists["database"].read_text().splitlines()[0] + "\n"
            ),
            "is listed twice",
        ),
    ],
    ids=["all images missing", "malformed row", "ragged rows", "no list file", "duplicate row"],
)
def test_bad_lists_exit_2_with_the_reason(list_set, spoil, message):
    root, lists = list_set
    spoil(root, lists)
    result = ingest(lists)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
