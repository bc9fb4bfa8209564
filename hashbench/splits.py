"""Seeded, stratified database/query splits, by patient (default) or by slice (the paper).

The paper splits slices 8:2, so neighbouring slices of one patient, which are near
duplicates, land on both sides and retrieval partly measures memorisation. The
patient-level split keeps every patient on one side; the slice-level split is kept
as an option so the size of that leak can be measured.

Sides: ``database`` (= the training set, as in the paper), ``query``, and an
optional ``validation`` side carved from the database side by the same rule, held
out of training for methods that monitor something.

``official``: a split that ships with the data (MedMNIST's train / val / test), read
from each slice's ``series`` with the dataset's mapping of parts to sides; no seed,
no fractions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PROTOCOLS = ("patient", "slice", "official")


def describe(protocol: str) -> str:
    """How a caption names the split."""
    return "the dataset's official split" if protocol == "official" else f"{protocol}-level split"


def split(index: pd.DataFrame, protocol: str = "patient", seed: int = 0, query_fraction: float = 0.2, validation_fraction: float = 0.0, official: dict[str, str] | None = None) -> pd.Series:
    """Side of every row of ``index`` (needs columns label, patient; series for ``official``, with ``official`` mapping its parts to sides)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if protocol == "official":
        if not official:
            raise ValueError("this dataset ships no official split; valid: patient, slice")
        side = index["series"].map(official)
        if side.isna().any():
            raise ValueError(f"slices whose part is not in the official split: {', '.join(sorted(set(index['series'][side.isna()])))}")
        return side.astype(object)
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


def _pick(index: pd.DataFrame, protocol: str, fraction: float, rng: np.random.Generator) -> pd.Index:
    """Rows of the units (patients or slices) chosen to make up ``fraction`` of each class."""
    if protocol == "slice":
        # Ordered by where each slice comes from, so row order (e.g. after a resumed ingest) cannot change the split.
        order = index.sort_values([c for c in ("patient", "path", "frame") if c in index.columns], kind="stable").index
        per_unit = pd.DataFrame({"label": index.loc[order, "label"], "size": 1}, index=order)
    else:
        # A patient's class is its most frequent label (a TCIA subject belongs to one collection).
        per_unit = index.groupby("patient", sort=True)["label"].agg(label=lambda s: s.mode().iloc[0], size="size")
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
