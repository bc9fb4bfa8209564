"""A split drawn once for a run: each side's slice ids and labels, as the engine and the evaluator take them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hashbench.data import splits
from hashbench.data.dataset import LABEL_SEPARATOR, Dataset, split_hash
from hashbench.store.results import ATTRIBUTES, GROUP_LEVELS


def class_ids(labels, multi_label: bool = False) -> tuple[np.ndarray, list[str]]:
    """Class numbers (n,) and the sorted class names; for multi-label data a multi-hot (n, classes) uint8 matrix instead."""
    if not multi_label:
        names = sorted(set(labels))
        lookup = {name: i for i, name in enumerate(names)}
        return np.array([lookup[label] for label in labels], dtype=np.int64), names
    sets = [label.split(LABEL_SEPARATOR) if label else [] for label in labels]
    names = sorted({name for members in sets for name in members})
    lookup = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=np.uint8)
    for row, members in enumerate(sets):
        matrix[row, [lookup[name] for name in members]] = 1
    return matrix, names


def group_ids(index: pd.DataFrame) -> np.ndarray:
    """(n, 3) int64: each row's patient, study and series as numbers shared by every side; -1 where unknown ('')."""
    columns = []
    for level in GROUP_LEVELS:
        codes, _ = pd.factorize(index[level], sort=True)
        columns.append(np.where(index[level].to_numpy() == "", -1, codes))
    return np.stack(columns, axis=1).astype(np.int64) if len(index) else np.zeros((0, len(GROUP_LEVELS)), np.int64)


def attribute_values(index: pd.DataFrame) -> np.ndarray:
    """(n, len(ATTRIBUTES)) str: each row's modality, body part, sex, age, ...; '' where unknown."""
    return index.reindex(columns=list(ATTRIBUTES), fill_value="").fillna("").astype(str).to_numpy(dtype=str)


@dataclass(frozen=True)
class Side:
    """The slices of one side, in the split's order, their class numbers (or multi-hot rows), their patient, study
    and series ids (:data:`GROUP_LEVELS`, columns of ``groups``) and attributes (:data:`ATTRIBUTES`, columns of
    ``attributes``)."""

    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    attributes: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class DrawnSplit:
    """Everything a cell needs of its split, resolved once when the run is planned."""

    protocol: str
    seed: int
    validation_fraction: float
    hash: str  # part of each cell's identity
    description: str  # how captions name it
    published_metric: str | None  # the metric a declared protocol is published with (MAP@5000 for NUS-WIDE lists, ...)
    class_names: tuple[str, ...]
    training: Side
    database: Side
    query: Side
    validation: Side


MEMBERS = {"training": splits.TRAINED, "database": splits.SEARCHED, "query": ("query",), "validation": ("validation",)}


def draw_split(dataset: Dataset, protocol: str, seed: int = 0, validation_fraction: float = 0.0) -> DrawnSplit:
    """Draw ``protocol`` on ``dataset``; ValueError when the protocol is unknown or leaves a side empty or one class to train on."""
    valid = [*splits.BUILT_IN, *dataset.protocols]
    if protocol not in valid:
        raise ValueError(f"unknown split {protocol!r} for {dataset.name}; valid: {', '.join(valid)}")
    side = dataset.split(protocol, seed=seed, validation_fraction=validation_fraction)
    for name, members in (("training", splits.TRAINED), ("database", splits.SEARCHED), ("query", ("query",))):
        if not side.isin(members).any():
            raise ValueError(
                f"{dataset.name}: the {dataset.describe_split(protocol)} (seed {seed}) leaves the {name} side empty; the dataset is too small"
            )
    labels, class_names = class_ids(dataset.index.loc[side.index, "label"], dataset.multi_label)
    groups = group_ids(dataset.index.loc[side.index])
    attributes = attribute_values(dataset.index.loc[side.index])
    ids = side.index.to_numpy()
    sides = {}
    for name, members in MEMBERS.items():
        chosen = side.isin(members).to_numpy()
        sides[name] = Side(ids[chosen], labels[chosen], groups[chosen], attributes[chosen])
    training_labels = sides["training"].labels
    training_classes = (
        int((training_labels.sum(axis=0) > 0).sum()) if dataset.multi_label else len(np.unique(training_labels))
    )
    if training_classes < 2:
        raise ValueError(
            f"{dataset.name}: the training side holds {training_classes} class(es); retrieval by class needs at least two"
        )
    return DrawnSplit(
        protocol,
        seed,
        validation_fraction,
        split_hash(side),
        dataset.describe_split(protocol),
        dataset.published_metric(protocol),
        tuple(class_names),
        **sides,
    )
