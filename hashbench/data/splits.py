"""Seeded, stratified splits into sides, by patient (default) or by slice (the paper), or a protocol the data declares.

The paper splits slices 8:2, so neighbouring slices of one patient, which are near
duplicates, land on both sides and retrieval partly measures memorisation. The
patient-level split keeps every patient on one side; the slice-level split is kept
as an option so the size of that leak can be measured. Both stratify by label (by
label set, for multi-label data).

Sides: ``database`` (trained on and searched: the paper's protocol), ``query``, an
optional ``validation`` side carved from the database side by the same rule, held
out of training for methods that monitor something, and for the hashing
literature's protocols ``train`` (trained on, not searched) and ``gallery``
(searched, never trained on).

Declared protocols come with a dataset (its manifest's ``protocols``), in two kinds:

- ``parts``: a split the data ships (MedMNIST's train / val / test, CIFAR-10's test
  batch, the query / database / train lists of a list-file set), read from each
  slice's ``series`` (or the index column the protocol names as ``by``: a 3-D
  MedMNIST volume is its own series, so its part is read from its ``path``) through
  a mapping of parts to sides; no seed, no fractions;
- ``per_class``: seeded counts per class (CIFAR-10's 100 queries and 500 training
  images per class), the rest the gallery, or the gallery plus the training images
  (``train_in_database``).

A protocol that documents its ``sizes`` (queries, training images, database) is
checked against them every time it is drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BUILT_IN = ("patient", "slice")
SIDES = ("database", "query", "validation", "train", "gallery")
TRAINED = ("database", "train")
SEARCHED = ("database", "gallery")


def describe(protocol: str, declared: dict[str, dict] | None = None) -> str:
    """How a caption names the split."""
    if declared and protocol in declared:
        return declared[protocol].get("description", f"the dataset's {protocol} split")
    return f"{protocol}-level split"


def split(
    index: pd.DataFrame,
    protocol: str = "patient",
    seed: int = 0,
    query_fraction: float = 0.2,
    validation_fraction: float = 0.0,
    declared: dict[str, dict] | None = None,
) -> pd.Series:
    """Side of every row of ``index`` (columns label, patient; series for ``parts`` protocols; path, frame order slices)."""
    declared = declared or {}
    if protocol not in BUILT_IN and protocol not in declared:
        raise ValueError(f"unknown split protocol {protocol!r}; valid: {', '.join([*BUILT_IN, *declared])}")
    if protocol in declared:
        spec = declared[protocol]
        if validation_fraction > 0 and "parts" not in spec:
            raise ValueError(
                f"the {protocol} protocol fixes its sides; a validation side is not carved from it (leave --validation at 0)"
            )
        side = (
            _parts(index, spec["parts"], spec.get("by", "series"))
            if "parts" in spec
            else _per_class(index, protocol, spec, seed)
        )
        expected = spec.get("sizes")
        if expected and validation_fraction == 0 and side_sizes(side) != expected:
            raise ValueError(
                f"the {protocol} protocol gives {side_sizes(side)}, not the documented {expected}: the data is not the full set it was written for"
            )
        return side
    if not 0 < query_fraction < 1 or not 0 <= validation_fraction < 1:
        raise ValueError("query_fraction must be in (0, 1) and validation_fraction in [0, 1)")
    rng = np.random.default_rng(seed)
    side = pd.Series("database", index=index.index, dtype=object)
    side[_pick(index, protocol, query_fraction, rng)] = "query"
    if validation_fraction > 0:
        database = index[side == "database"]
        side[_pick(database, protocol, validation_fraction, rng)] = "validation"
    if protocol == "patient":
        sides_per_patient = side.groupby(index["patient"]).nunique()
        assert (sides_per_patient == 1).all(), "a patient fell on two sides of a patient-level split"
    return side


def side_sizes(side: pd.Series) -> dict[str, int]:
    """Queries, training images and database size of a split (training and database may overlap)."""
    return {
        "query": int((side == "query").sum()),
        "train": int(side.isin(TRAINED).sum()),
        "database": int(side.isin(SEARCHED).sum()),
    }


def _parts(index: pd.DataFrame, parts: dict[str, str], by: str) -> pd.Series:
    side = index[by].map(parts)
    if side.isna().any():
        raise ValueError(f"slices whose part is not in the split: {', '.join(sorted(set(index[by][side.isna()])))}")
    return side.astype(object)


def _per_class(index: pd.DataFrame, protocol: str, spec: dict, seed: int) -> pd.Series:
    """Exactly ``query`` and ``train`` images of each class, drawn by seed from the images in source order."""
    rng = np.random.default_rng(seed)
    n_query, n_train = spec["per_class"]["query"], spec["per_class"]["train"]
    ordered = index.sort_values(["path", "frame"], kind="stable")
    side = pd.Series("gallery", index=index.index, dtype=object)
    for label, members in ordered.groupby("label", sort=True):
        if len(members) < n_query + n_train:
            raise ValueError(
                f"the {protocol} protocol takes {n_query} queries and {n_train} training images of every class, but class {label} has {len(members)} images"
            )
        drawn = members.index.to_numpy()[rng.permutation(len(members))]
        side[drawn[:n_query]] = "query"
        side[drawn[n_query : n_query + n_train]] = "database" if spec.get("train_in_database") else "train"
    return side


def _pick(index: pd.DataFrame, protocol: str, fraction: float, rng: np.random.Generator) -> pd.Index:
    """Rows of the units (patients or slices) chosen to make up ``fraction`` of each class."""
    if protocol == "slice":
        # Ordered by where each slice comes from, so row order (e.g. after a resumed ingest) cannot change the split.
        order = index.sort_values([c for c in ("patient", "path", "frame") if c in index.columns], kind="stable").index
        per_unit = pd.DataFrame({"label": index.loc[order, "label"], "size": 1}, index=order)
    else:
        # A patient's class is its most frequent label, the first by name among equals (a TCIA subject belongs to one collection).
        counts = index.groupby(["patient", "label"], sort=True).size().rename("n").reset_index()
        modes = (
            counts.sort_values(["patient", "n", "label"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("patient")
            .set_index("patient")["label"]
        )
        per_unit = pd.DataFrame({"label": modes, "size": index.groupby("patient", sort=True).size()})
    chosen = []
    for _, members in per_unit.groupby("label", sort=True):
        chosen.extend(_closest_subset(members, fraction, rng))
    unit = index["patient"] if protocol == "patient" else pd.Series(index.index, index=index.index)
    return index.index[unit.isin(chosen).to_numpy()]


def _closest_subset(members: pd.DataFrame, fraction: float, rng: np.random.Generator, tries: int = 32) -> list:
    """Units whose total size is closest to ``fraction`` of the class, best of seeded greedy passes.

    Each pass walks a shuffle and takes a unit when that brings the total closer to the
    target. Keeps at least one unit on each side when the class has two or more.
    """
    units, sizes = members.index.to_numpy(), members["size"].to_numpy()
    target = fraction * sizes.sum()
    if (sizes == 1).all():  # slices: exact, one pass
        return list(units[rng.permutation(len(units))[: int(round(target))]])
    best, best_gap = [], np.inf
    for _ in range(tries):
        taken, total = [], 0
        for position in rng.permutation(len(units)):
            if abs(total + sizes[position] - target) < abs(total - target) and len(taken) < len(units) - 1:
                taken.append(position)
                total += sizes[position]
        if not taken and len(units) > 1:
            taken, total = [0], sizes[0]
        if abs(total - target) < best_gap:
            best, best_gap = taken, abs(total - target)
    return list(units[best])
