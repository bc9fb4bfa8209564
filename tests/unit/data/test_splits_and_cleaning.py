"""Patient- and slice-level splits, the validation side, and the IQR cleaning rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hashbench.data.cleaning import image_stats, iqr_outliers
from hashbench.data.splits import split


def synthetic_index(n_classes=5, patients_per_class=10, seed=0) -> pd.DataFrame:
    """Patients with uneven slice counts, as real series are."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_classes):
        for p in range(patients_per_class):
            for s in range(int(rng.integers(5, 40))):
                rows.append({"label": f"C{c}", "patient": f"C{c}-P{p}", "path": f"C{c}/P{p}/{s}.dcm"})
    return pd.DataFrame(rows)


def proportions(index, side, name):
    return index.loc[side == name, "label"].value_counts(normalize=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patient_split_shares_no_patient_and_keeps_class_proportions(seed):
    index = synthetic_index(seed=seed)
    side = split(index, "patient", seed=seed)
    assert side.groupby(index["patient"]).nunique().max() == 1
    gap = (proportions(index, side, "database") - proportions(index, side, "query")).abs().max()
    assert gap < 0.05
    assert 0.17 < (side == "query").mean() < 0.23


def test_slice_split_is_the_papers_stratified_8_to_2_and_leaks_patients():
    index = synthetic_index()
    side = split(index, "slice", seed=0)
    queries = index[side == "query"]["label"].value_counts()
    sizes = index["label"].value_counts()
    for label, size in sizes.items():
        assert queries[label] == round(0.2 * size)
    assert (side.groupby(index["patient"]).nunique() > 1).sum() > 10  # the leak the patient split avoids


def test_splits_are_seeded_and_reproducible():
    index = synthetic_index()
    assert split(index, "patient", seed=3).equals(split(index, "patient", seed=3))
    assert not split(index, "patient", seed=3).equals(split(index, "patient", seed=4))


def test_split_does_not_depend_on_row_order():
    index = synthetic_index()
    shuffled = index.sample(frac=1.0, random_state=0)
    for protocol in ("patient", "slice"):
        assert split(index, protocol, seed=0).sort_index().equals(split(shuffled, protocol, seed=0).sort_index())


def test_validation_is_carved_from_the_database_side_by_patient():
    index = synthetic_index()
    plain = split(index, "patient", seed=0)
    with_validation = split(index, "patient", seed=0, validation_fraction=0.1)
    assert ((plain == "query") == (with_validation == "query")).all()  # queries unchanged
    assert set(with_validation[plain == "database"]) == {"database", "validation"}
    assert with_validation.groupby(index["patient"]).nunique().max() == 1


def test_unknown_protocol_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: patient, slice"):
        split(synthetic_index(), "study")


def test_image_stats_by_hand():
    image = np.array([[0, 10], [20, 30]], np.uint8)
    stats = image_stats(image)
    assert stats["mean"] == 15 and stats["variance"] == 125
    assert (stats["q1"], stats["median"], stats["q3"]) == (7.5, 15, 22.5)


def test_iqr_rule_flags_images_outside_the_fences_of_their_group_only():
    # CT means: 90, 90.5, ..., 110 plus 0 (blank), 78 and 119. Sorted, n = 44: Q1 = 94.375 and
    # Q3 = 105.125 (linear interpolation), IQR = 10.75, fences at 78.25 and 121.25.
    means = [*np.linspace(90, 110, 41), 0.0, 78.0, 119.0]
    rows = [{"label": "A", "modality": "CT", "mean": m, "variance": 900.0} for m in means]
    rows += [
        {"label": "A", "modality": "PT", "mean": m, "variance": 100.0} for m in np.linspace(15, 25, 11)
    ]  # darker, a group of its own
    outlier = iqr_outliers(pd.DataFrame(rows))
    assert outlier[outlier].index.tolist() == [41, 42]


@pytest.mark.parametrize("shape", [(2, 2), (3, 5), (7, 1), (64, 64)])
def test_histogram_stats_match_numpy_on_random_images(shape):
    rng = np.random.default_rng(sum(shape))
    for levels in (256, 3):  # dense and heavily tied grey levels
        image = (rng.integers(0, levels, shape) * (255 // (levels - 1))).astype(np.uint8)
        stats = image_stats(image)
        np.testing.assert_allclose(
            [stats["q1"], stats["median"], stats["q3"]], np.percentile(image, (25, 50, 75)), rtol=0, atol=1e-9
        )
        np.testing.assert_allclose([stats["mean"], stats["variance"]], [image.mean(), image.var()], rtol=1e-12)
