"""`hashbench search`: a trained cell finds a database image itself, first, at distance 0."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hashbench.api import RunRequest, run_grid
from hashbench.cli import app
from hashbench.runner.search import CellIndex


@pytest.fixture(scope="module")
def trained_cell(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    request = RunRequest(["hashnet"], [16], dataset=tiny_phantom.dataset.name, epochs=3, profile="quick")
    outcome = run_grid(request, tiny_phantom.dataset, out)[0]
    assert outcome.status == "done", outcome.error
    return outcome.config.directory(out), tiny_phantom.dataset


def source_of(dataset, slice_id) -> Path:
    return Path(dataset.manifest["source"]) / dataset.index.loc[slice_id, "path"]


@pytest.mark.parametrize("use_faiss", [False, True])
def test_a_database_dicom_finds_itself_first_at_distance_zero(trained_cell, use_faiss):
    if use_faiss:
        pytest.importorskip("faiss")
    directory, dataset = trained_cell
    index = CellIndex(directory, "cpu", use_faiss)
    picks = index.database_ids[[0, len(index.database_ids) // 2, -1]]
    images, names, skipped = index.load_images([source_of(dataset, s) for s in picks])
    assert not skipped and len(images) == 3
    np.testing.assert_array_equal(images, dataset.images[picks])  # decoded exactly as ingested
    for slice_id, hits in zip(picks, index.search(index.embed(images), k=5)):
        assert hits[0].slice_id == slice_id and hits[0].distance == 0
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        assert hits[0].label == dataset.index.loc[slice_id, "label"]


def test_faiss_and_the_builtin_ranker_agree_in_index_order(trained_cell):
    pytest.importorskip("faiss")
    directory, dataset = trained_cell
    builtin, with_faiss = CellIndex(directory, "cpu", False), CellIndex(directory, "cpu", True)
    embeddings = builtin.embed(dataset.images[builtin.database_ids[:20]])
    for a, b in zip(builtin.search(embeddings, 25, "index"), with_faiss.search(embeddings, 25, "index")):
        assert [(h.slice_id, h.distance) for h in a] == [(h.slice_id, h.distance) for h in b]


def test_search_cli_with_a_png_and_a_bad_file(trained_cell, tmp_path):
    directory, dataset = trained_cell
    slice_id = int(CellIndex(directory, "cpu", False).database_ids[3])
    png = tmp_path / "query.png"
    Image.fromarray(dataset.images[slice_id]).save(png)
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom")
    result = CliRunner().invoke(app, ["search", str(directory), str(png), str(bad), "--k", "3", "--json", "--no-faiss"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.dcm" in result.output
    hits = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))["hits"]
    assert hits[0]["slice_id"] == slice_id and hits[0]["distance"] == 0 and len(hits) == 3
    assert CliRunner().invoke(app, ["search", str(tmp_path), str(png)]).exit_code == 2  # not a cell


def test_search_with_a_cell_whose_weights_are_gone_says_so_without_a_traceback(trained_cell, tmp_path):
    import shutil

    directory, dataset = trained_cell
    copy = tmp_path / "cell"
    shutil.copytree(directory, copy)
    (copy / "model.pt").unlink()
    query = source_of(dataset, int(dataset.usable().index[0]))
    result = CliRunner().invoke(app, ["search", str(copy), str(query)])
    assert result.exit_code == 2 and "model.pt is missing" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("k", ["0", "-5"])
def test_search_refuses_a_k_below_one(trained_cell, k):
    directory, dataset = trained_cell
    query = source_of(dataset, int(dataset.usable().index[0]))
    result = CliRunner().invoke(app, ["search", str(directory), str(query), "--k", k])
    assert result.exit_code == 2 and "--k" in result.output and "Traceback" not in result.output
    index = CellIndex(directory, "cpu", False)
    with pytest.raises(ValueError, match="at least one neighbour"):
        index.search(index.embed(dataset.images[index.database_ids[:1]]), int(k))


def test_a_query_that_is_not_a_regular_file_is_skipped_unread(trained_cell, tmp_path):
    """A FIFO would block the read for ever and a link to /dev/zero read without end: both are skipped with the reason,
    the real query is answered."""
    directory, dataset = trained_cell
    index = CellIndex(directory, "cpu", False)
    png = tmp_path / "query.png"
    Image.fromarray(dataset.images[int(index.database_ids[0])]).save(png)
    fifo, zeros = tmp_path / "fifo.png", tmp_path / "zeros.png"
    os.mkfifo(fifo)
    zeros.symlink_to("/dev/zero")
    answer = {}
    reader = threading.Thread(target=lambda: answer.update(loaded=index.load_images([fifo, zeros, png])), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # unblock the read so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO query blocked")
    images, names, skipped = answer["loaded"]
    assert names == [str(png)] and len(images) == 1
    assert skipped == [(str(path), "not a regular file: only regular files are read") for path in (fifo, zeros)]
