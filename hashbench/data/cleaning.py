"""The paper's cleaning (section 3.1): per-image statistics and the IQR outlier rule.

The paper computes mean, variance and quartiles of every image and drops outliers
with the interquartile-range rule, without saying over which group or statistic.
hashbench applies the rule within each (label, modality) group, since a PET slice is
not an outlier among CT slices just for being darker, to the image mean and standard
deviation: an image is an outlier when either lies outside [Q1 - k*IQR, Q3 + k*IQR],
k = 1.5 (Tukey). Blank slices, scouts and burnt-in screenshots are what it catches.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STAT_COLUMNS = ("mean", "variance", "q1", "median", "q3")
IQR_FEATURES = ("mean", "std")


def image_stats(image: np.ndarray) -> dict[str, float]:
    """Mean, variance and quartiles of one uint8 image, from its histogram (no sort).

    Quartiles use numpy's default linear interpolation, read off the cumulative counts.
    """
    counts = np.bincount(image.reshape(-1), minlength=256).astype(np.float64)
    cumulative, levels, n = np.cumsum(counts), np.arange(256, dtype=np.float64), float(image.size)
    mean = counts @ levels / n
    quartiles = []
    for q in (0.25, 0.5, 0.75):
        position = q * (n - 1)
        below = int(position)
        low, high = np.searchsorted(cumulative, [below, min(below + 1, n - 1)], side="right")
        quartiles.append(low + (position - below) * (high - low))
    return {
        "mean": mean,
        "variance": counts @ (levels - mean) ** 2 / n,
        "q1": quartiles[0],
        "median": quartiles[1],
        "q3": quartiles[2],
    }


def iqr_outliers(index: pd.DataFrame, k: float = 1.5, by: tuple[str, ...] = ("label", "modality")) -> pd.Series:
    """Boolean Series, True for images outside the IQR fences of their group."""
    features = pd.DataFrame({"mean": index["mean"], "std": np.sqrt(index["variance"])})
    keys = [index[column] for column in by]
    outlier = pd.Series(False, index=index.index)
    for name in IQR_FEATURES:
        grouped = features.groupby(keys)[name]
        q1, q3 = grouped.transform("quantile", 0.25), grouped.transform("quantile", 0.75)
        spread = q3 - q1
        outlier |= (features[name] < q1 - k * spread) | (features[name] > q3 + k * spread)
    return outlier
