"""Multi-label data through the shared pieces (sampler, losses, per-class tables, label columns) and colour through the input path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hashbench.data.dicom import ImageOptions, resize
from hashbench.data.sides import class_ids
from hashbench.data.splits import split
from hashbench.evaluation.evaluate import per_class
from hashbench.model.components import focal_loss, triplet_batches
from hashbench.training.engine import label_rows, to_input


def test_multi_label_triplets_pair_each_anchor_with_one_that_shares_a_label_and_one_that_shares_none():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 5)) < 0.3).astype(np.uint8)
    labels[labels.sum(axis=1) == 0, 0] = 1
    batches = list(triplet_batches(labels, 50, np.random.default_rng(1)))
    assert len(batches) == 6
    for batch in batches:
        anchors, positives, negatives = np.split(batch, 3)
        shared = (labels[anchors] & labels[positives]).any(axis=1)
        assert shared.all() and (anchors != positives).all()
        has_stranger = ((labels[anchors] @ labels.T) == 0).any(axis=1)
        assert not (labels[anchors] & labels[negatives]).any(axis=1)[has_stranger].any()
        assert (
            negatives[~has_stranger] == anchors[~has_stranger]
        ).all()  # shares a label with everyone: no negative exists
    again = list(triplet_batches(labels, 50, np.random.default_rng(1)))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))


def test_focal_loss_spreads_a_multi_hot_target_over_its_labels_by_hand():
    logits = torch.zeros(1, 3)  # p = 1/3 for every class
    assert focal_loss(logits, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0).item() == pytest.approx(math.log(3))
    # gamma 2: each label weighs (1 - 1/3)^2 = 4/9
    assert focal_loss(logits, torch.tensor([[1.0, 1.0, 0.0]]), gamma=2).item() == pytest.approx(4 / 9 * math.log(3))
    assert focal_loss(logits, torch.tensor([[0.0, 1.0, 0.0]]), gamma=0).item() == pytest.approx(math.log(3))


def test_label_columns_become_multi_hot_rows_and_one_hot_for_single_label():
    matrix, names = class_ids(["b|c", "a", "c", "a|b|c"], multi_label=True)
    assert names == ["a", "b", "c"]
    assert matrix.tolist() == [[0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 1]]
    assert label_rows(matrix, 3).tolist() == matrix.astype(float).tolist()
    ids, names = class_ids(["b", "a", "b"])
    assert ids.tolist() == [1, 0, 1] and label_rows(ids, 2).tolist() == [[0, 1], [1, 0], [0, 1]]


def test_per_class_counts_a_multi_label_query_in_each_of_its_classes():
    values = np.array([1.0, 0.5, 0.0])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    assert per_class(values, labels, ["a", "b", "c"]) == {"a": 0.75, "b": 0.25}
    assert per_class(values, np.array([0, 0, 1]), ["a", "b"]) == {"a": 0.75, "b": 0.0}


def test_a_multi_label_split_is_stratified_by_label_set():
    index = pd.DataFrame({"label": ["a|b"] * 50 + ["a"] * 30 + ["b"] * 20, "patient": [f"p{i}" for i in range(100)]})
    side = split(index, "patient", seed=0, query_fraction=0.2)
    assert (side == "query").groupby(index["label"]).sum().to_dict() == {"a": 6, "a|b": 10, "b": 4}


def test_colour_images_keep_their_channels_through_resize_and_the_input_path():
    red = np.zeros((10, 20, 3), np.uint8)
    red[..., 0] = 255
    square = resize(red, ImageOptions(size=20, colour="rgb"))
    assert square.shape == (20, 20, 3) and square[5:15, :, 0].min() == 255 and square[:5].max() == 0  # padded on black
    grey = resize(np.full((8, 8), 100, np.uint8), ImageOptions(size=8, colour="rgb"))
    assert grey.shape == (8, 8, 3) and (grey == 100).all()
    x = to_input(torch.from_numpy(square[None]), torch.device("cpu"), 20)
    assert x.shape == (1, 3, 20, 20)
    assert x[0, :, 10, 10].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rel=1e-5)
    assert to_input(torch.full((1, 4, 4), 255, dtype=torch.uint8), torch.device("cpu"), 4)[
        0, :, 0, 0
    ].tolist() == pytest.approx([(1 - 0.449) / 0.226] * 3, rel=1e-5)
