"""Leaderboards from stored cells: rows = methods, columns = bits, one table per metric.

Cells are compared only within one protocol and one version of the data (dataset and
its fingerprint, split, the run's backbone and whether it was pretrained, epochs, image
size, augmentation, profile): each such group gets its own tables, under a name that
says what tells it apart from the other groups, and notes saying what ran (a row's own
backbone where a variant brings one) and, beside each setting, the paper's where it
differs. A cell shows the mean over runs (training seeds, and split
seeds where several), +/- their std where there are several, the 95 % bootstrap
interval over queries in brackets, and n. A collapsed model (dead bits) is flagged
beside its number; a failed or damaged cell says so in its place.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hashbench.config.suites import Suite
from hashbench.data import splits
from hashbench.evaluation.cost import COST_COLUMNS, cost_value
from hashbench.evaluation.evaluate import mean_over_queries, parse_metric
from hashbench.evaluation.stats import bootstrap_interval
from hashbench.evaluation.stored import (
    DEFAULT_VIEW,
    cell_per_query,
    clusters_of,
    query_clusters,
    query_patients,
    query_subgroups,
)
from hashbench.evaluation.view import View
from hashbench.store.results import NO_CODE, Cell, CellError

COMPARISON_KEYS = (
    "dataset",
    "dataset_fingerprint",
    "split",
    "validation",
    "run_backbone",
    "pretrained",
    "epochs",
    "image_size",
    "profile",
)  # and the augmentation, of the rows whose training sees it (_groups)
VARIANT_KEYS = ("backbone", "options", "train", "weights")  # what makes two cells of one method different methods
CELL_LEGEND = "cells: mean ± std over runs [95 % bootstrap interval over queries] (n = runs: seeds x split seeds)"
CLUSTERED_LEGEND = CELL_LEGEND.replace("over queries", "resampling patients, whose slices are not independent")
UNCLUSTERED_LEGEND = CELL_LEGEND.replace(
    "over queries", "over queries, as if independent: these cells were stored without their patients"
)
COST_LEGEND = (
    "cells: mean ± std over runs (n = runs) of what each cell recorded when it ran, timed on its own machine (the "
    "record's device) against its own database of slices, whatever the view; '-' where a cell recorded none"
)
MIXED_LEGEND = CELL_LEGEND.replace(
    "over queries",
    "resampling patients in cells whose queries share them; over queries in the others, as if independent in cells "
    "stored without their patients",
)


@dataclass
class Leaderboard:
    title: str
    group: str  # the comparable group's name: its dataset, and what tells it apart from the other groups shown
    notes: list[str]  # what ran, one short note each (:func:`caption_parts`)
    table: pd.DataFrame  # index: method (or the paper's row), columns: "16 bits", ...; cells formatted
    legend: str = CELL_LEGEND

    @property
    def caption(self) -> str:
        """The notes in one line, as a terminal table's caption."""
        return "; ".join(self.notes)


def summarise(
    rows: pd.DataFrame, metric: str, view: View = DEFAULT_VIEW, subgroup: tuple[str, str] | None = None
) -> str:
    """One leaderboard cell from the runs in ``rows``: mean, spread over runs, interval over queries (over patients
    where queries share patients), flags. ``subgroup`` (by, value): only the queries of that subgroup."""
    if rows.empty:
        return "-"
    if (rows["bits"] == NO_CODE).all():
        if parse_metric(metric).radius:
            return "- (no code: no Hamming radius)"
        if view.case_distance != "code":
            return "- (no code: cases are their slices' mean features)"
    finished = rows[rows["status"] == "finished"]
    problems = [note for note in rows.loc[rows["status"] != "finished", "note"]]
    per_run, queries, patients = [], [], []
    for directory in finished["directory"]:
        try:
            cell = Cell(directory)
            values = cell_per_query(cell, metric, view)
            chosen = (
                np.ones(len(values), bool)
                if subgroup is None
                else query_subgroups(cell, subgroup[0], view) == subgroup[1]
            )
            per_run.append(values[chosen])
            queries.append(cell.query_ids())
            patients.append(query_patients(cell, view)[chosen])
        except CellError as exc:
            problems.append(f"damaged: {exc}")
    if not per_run:
        return "; ".join(problems) or "-"
    means = np.array([mean_over_queries(values) for values in per_run])
    spread = f" ± {np.std(means, ddof=1):.3f}" if len(means) > 1 else ""
    same_queries = all(np.array_equal(ids, queries[0]) for ids in queries)
    if same_queries:
        low, high = bootstrap_interval(np.stack(per_run), clusters=clusters_of(patients[0]))
    else:  # several split seeds: their queries pooled, a patient one cluster across them
        pooled = np.concatenate(patients)
        low, high = bootstrap_interval(np.concatenate(per_run)[None], clusters=clusters_of(pooled))
    flags = _flags([n for n in finished["note"] if n], len(finished), problems)
    return f"{means.mean():.3f}{spread} [{low:.3f}, {high:.3f}] (n={len(means)}{flags})"


def summarise_cost(rows: pd.DataFrame, name: str) -> str:
    """One leaderboard cell of a cost column (:data:`~hashbench.evaluation.cost.COST_COLUMNS`): the mean over runs of
    what each recorded, ± their std where several, n; why not, where none did (a cell from before costs were recorded,
    a backend that did not run there)."""
    if rows.empty:
        return "-"
    problems = [note for note in rows.loc[rows["status"] != "finished", "note"]]
    values, reasons = [], []
    for directory in rows.loc[rows["status"] == "finished", "directory"]:
        try:
            value, reason = cost_value(name, Cell(directory).record.get("cost"))
        except CellError as exc:
            problems.append(f"damaged: {exc}")
            continue
        if value is None:
            reasons.append(reason)
        else:
            values.append(value)
    if not values:
        return "; ".join([*(f"- ({r})" for r in sorted(set(reasons))), *problems]) or "-"
    digits = COST_COLUMNS[name].digits
    spread = f" ± {np.std(values, ddof=1):{digits}}" if len(values) > 1 else ""
    unmeasured = f"; {len(reasons)} of {len(reasons) + len(values)} runs {reasons[0]}" if reasons else ""
    return f"{np.mean(values):{digits}}{spread} (n={len(values)}{unmeasured}{_flags([], len(values), problems)})"


def _flags(collapsed: list[str], runs: int, problems: list[str]) -> str:
    parts = []
    if collapsed:
        parts.append(
            collapsed[0]
            if runs == 1
            else f"{len(collapsed)} of {runs} runs with degenerate codes ({'; '.join(sorted(set(collapsed)))})"
        )
    failed = sum(p.startswith("failed") for p in problems)
    if failed:
        parts.append(f"{failed} failed")
    if len(problems) > failed:
        parts.append(f"{len(problems) - failed} damaged")
    return "".join(f"; {p}" for p in parts)


def caption_parts(rows: pd.DataFrame) -> list[str]:
    """What ran, one short note each: data, split, features, training, seeds, device, profile, and what rows bring of
    their own. Beside each setting, the paper's where it differs; only what applies: no training where no row trains,
    no backbone where no row built it."""
    from hashbench.config.profiles import PROFILES

    paper, first = PROFILES["full"], rows.iloc[0]
    finished = rows[rows["status"] == "finished"]
    synthetic = bool(rows["synthetic"].any())
    split_seeds = sorted(rows["split_seed"].unique())
    held_out = f" ({first['validation']:.0%} of training held out for validation)" if first["validation"] else ""
    settings = [  # (what, what ran, the paper's where it differs)
        (
            "data",
            f"{first['dataset']}{' (synthetic phantom data)' if synthetic else ''} at {first['image_size']} px, data "
            f"version {_version_text(first['dataset'], first['dataset_fingerprint'])}",
            _differing(
                (synthetic, "TCIA collections"), (first["image_size"] != paper.image_size, f"{paper.image_size} px")
            ),
        ),
        (
            "split",
            f"{_split_text(rows)}, split seed{'s' if len(split_seeds) > 1 else ''} {', '.join(map(str, split_seeds))}"
            + held_out,
            _differing((first["split"] != "slice", "slice-level"), (bool(first["validation"]), "nothing held out")),
        ),
        *_features_setting(rows, paper),
        *_training_setting(rows, paper),
    ]
    parts = [
        f"{what} (the paper's: {', '.join(theirs)}): {ran}" if theirs else f"{what}: {ran}"
        for what, ran, theirs in settings
    ]
    seeds = ", ".join(str(s) for s in sorted(finished["seed"].unique())) or "none finished"
    runs = finished.groupby(["row", "bits"]).size()
    sample = (
        "; one run per cell: each number is a single sample, its seed-to-seed spread unmeasured"
        if len(runs) and runs.max() == 1
        else ""
    )
    parts.append(f"seeds {seeds}{sample}")
    devices = _devices(finished)
    parts += [f"ran on {devices}"] if devices else []
    profile = f"profile {first['profile'] or 'unrecorded'}"
    if not any(theirs for _, _, theirs in settings):
        trains = any(what == "training" for what, _, _ in settings)
        remark = " (augmentation magnitudes are hashbench's choice: the paper gives none)" if trains else ""
        profile += f": the paper's protocol{remark}"
    parts.append(profile)
    floats = rows.loc[rows["bits"] == NO_CODE, "method"].unique()
    if len(floats):
        parts.append(
            f"{_column_name(NO_CODE)}: {', '.join(floats)} {'ranks' if len(floats) == 1 else 'rank'} the features "
            "themselves, unhashed, by its own distance"
        )
    if _frozen(rows).any():
        parts.append(
            f"rows marked{FROZEN}: the backbone kept its initial weights and the head alone trained, on the "
            "backbone's cached features of the unaugmented images"
        )
    changed = _changed_options(rows)
    return parts + ([f"options changed: {changed}"] if changed else [])


def _differing(*settings: tuple[bool, str]) -> list[str]:
    """The paper's settings, of (differs, the paper's) pairs, that this group's differ from."""
    return [theirs for differs, theirs in settings if differs]


def _features_setting(rows: pd.DataFrame, paper) -> list[tuple[str, str, list[str]]]:
    """The run's backbone and its weights where a row built it, and what rows hashed of their own (training-free
    features, a variant's backbone); none where the group has neither."""
    first = rows.iloc[0]
    weights = _weights_text(rows)
    ran = ([f"backbone {first['run_backbone']} ({weights})"] if weights else []) + _own_backbones(rows)
    if not ran:
        return []
    kinds = {source.split(":")[0] for built in rows["weights"] for source in (built or {}).values()}
    theirs = _differing(
        (bool(weights) and first["run_backbone"] != paper.backbone, f"EfficientNet-B6, {paper.backbone}"),
        (bool(kinds) and kinds != {"hub"}, "ImageNet weights from the hub"),
    )
    return [("features", "; ".join(ran), theirs)]


def _training_setting(rows: pd.DataFrame, paper) -> list[tuple[str, str, list[str]]]:
    """Epochs, augmentation and optimisers of the rows that train; none where every row is training-free."""
    from hashbench.model.registry import REGISTRY

    trained = rows[~rows["method"].map(_is_training_free).astype(bool)]
    if trained.empty:
        return []
    first = rows.iloc[0]

    def own_optimiser(method: str, train: dict) -> bool:
        try:
            return train == asdict(REGISTRY.get(method).train)
        except (LookupError, RuntimeError):  # a plugin not loaded here: cannot tell
            return False

    optimisers = sorted(
        {
            f"{t['optimizer']} lr {t['lr']:g}"
            + ("" if t.get("lr_schedule", "constant") == "constant" else f" ({t['lr_schedule']})")
            for t in trained["train"]
            if "optimizer" in t
        }
    )
    augmentation = f"augmentation: {first['augmentation']}" + (
        " (of the images the trained rows train on; the other rows never see it)"
        if first["augmentation"] != "none" and not _sees_augmentation(rows).all()
        else ""
    )
    ran = "; ".join([_epochs(first["epochs"]), augmentation, f"optimiser {' / '.join(optimisers)}"])
    theirs = _differing(
        (first["epochs"] != paper.epochs, _epochs(paper.epochs)),
        (
            first["augmentation"] != paper.augment.describe(),
            "augmentation by rotation, scaling, brightness, noise, blur",
        ),
        (
            not all(own_optimiser(m, t) for m, t in zip(trained["method"], trained["train"])),
            "each method's own optimiser",
        ),
    )
    return [("training", ran, theirs)]


def _devices(finished: pd.DataFrame) -> str:
    """The machines the finished cells recorded running on ('' where none did)."""
    devices = set()
    for directory in finished["directory"]:
        try:
            devices.add(Cell(directory).record.get("device") or "")
        except CellError:
            continue
    return " / ".join(sorted(devices - {""}))


def _split_text(rows: pd.DataFrame) -> str:
    """The split as its cells describe it (they know their data: an image-level split, a literature protocol)."""
    described = rows["split_description"].dropna() if "split_description" in rows else ()
    return described.iloc[0] if len(described) else splits.describe(rows.iloc[0]["split"])


def _weights_text(rows: pd.DataFrame) -> str:
    """Where the run backbone's weights came from, over every row that built it ('' where none did)."""
    sources = {
        weights[backbone]
        for weights, backbone in zip(rows["weights"], rows["run_backbone"])
        if backbone in (weights or {})
    }
    kinds = {source.split(":")[0] for source in sources}
    texts = {"random": "random init", "hub": "pretrained weights from the hub", "file": "weights from a local file"}
    return " / ".join(texts.get(kind, kind) for kind in sorted(kinds))


def _version_text(dataset: str, fingerprint: str) -> str:
    """The fingerprint, and whether the dataset on this machine has since been re-ingested with other content."""
    if not fingerprint:
        return "unrecorded (cells from before data versions were recorded)"
    from hashbench.store.paths import datasets_dir

    manifest = datasets_dir() / dataset / "manifest.json"
    try:
        current = json.loads(manifest.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        current = None
    return fingerprint + (
        " (superseded: the dataset was re-ingested with other content since)"
        if current and current != fingerprint
        else ""
    )


def _own_backbones(rows: pd.DataFrame) -> list[str]:
    """The rows that hashed something else than the run's backbone trained: training-free rows, Table 4's own backbones."""
    parts = []
    for _, row in rows[rows["status"] != "damaged"].drop_duplicates("row").iterrows():
        features = _training_free_features(row)
        if features:
            parts.append(f"row {row['row']}: {features}")
        elif row["backbone"] != row["run_backbone"]:
            parts.append(f"row {row['row']}: backbone {row['backbone']}")
    return parts


def _is_training_free(method: str) -> bool:
    from hashbench.model.registry import REGISTRY

    try:
        return bool(getattr(REGISTRY.get(method), "fitted", False))
    except (LookupError, RuntimeError):  # a plugin not loaded here: cannot tell
        return False


def _is_unsupervised(method: str) -> bool:
    from hashbench.model.registry import REGISTRY

    try:
        return not getattr(REGISTRY.get(method), "supervised", True)
    except (LookupError, RuntimeError):  # a plugin not loaded here: cannot tell
        return False


def _training_free_features(row: pd.Series) -> str:
    """'fitted on ...' for a method fitted without gradients (what it hashed), else ''."""
    if not _is_training_free(row["method"]):
        return ""
    options = row["options"] or {}
    if options.get("features") == "backbone":
        features = f"frozen {row['backbone']} features"
    else:
        features = f"raw pixels ({options.get('pixels')} x {options.get('pixels')} per channel)"
    return f"{features}, unhashed" if row["bits"] == NO_CODE else f"fitted on {features}"


def _changed_options(rows: pd.DataFrame) -> str:
    """Per row, the method options that differ from the registered defaults, and the training settings in which rows
    of one method differ, so a table says what each row ran (a variant's hash alone says nothing)."""
    from hashbench.model.registry import REGISTRY

    notes = []
    for method, variants in rows.drop_duplicates("row").groupby("method", sort=True):
        try:
            defaults = REGISTRY.get(method).default_options()
        except (LookupError, RuntimeError):  # a plugin not loaded here, or broken: nothing to compare with
            continue
        trained = [train or {} for train in variants["train"]]
        differing = sorted(key for key in set().union(*trained) if len({json.dumps(t.get(key)) for t in trained}) > 1)
        for row, options, train in zip(variants["row"], variants["options"], trained):
            changed = [f"{k}={v}" for k, v in sorted(options.items()) if defaults.get(k) != v]
            changed += [f"{k}={train.get(k)}" for k in differing]
            if changed:
                notes.append(f"{row} {', '.join(changed)}")
    return "; ".join(notes)


def with_augment_text(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with an ``augment_text`` column: each cell's augmentation as a caption says it (and compares it)."""
    from hashbench.training.augment import Augmentation

    if cells.empty or "augment_text" in cells:
        return cells
    return cells.assign(augment_text=[Augmentation.from_dict(a or {}).describe() for a in cells["augment"]])


def _groups(cells: pd.DataFrame):
    """(rows with a 'row' label and the group's ``augmentation``) per comparable group of cells.

    Runs of several split seeds share a table; runs of one split seed whose splits differ (another
    cleaning or split rule) do not. Rows trained with other augmentations do not either; rows whose
    training never sees it (fitted without training, heads on cached features) join every group.
    """
    cells = with_augment_text(cells)
    for _, rows in cells.groupby(list(COMPARISON_KEYS), sort=True, dropna=False):
        augmented = _sees_augmentation(rows)
        for text in sorted(rows.loc[augmented, "augment_text"].unique()) or ["none"]:
            kept = rows[~augmented | (rows["augment_text"] == text)].assign(augmentation=text)
            consistent = kept.groupby("split_seed")["split_hash"].nunique().max() == 1
            for _, part in [(None, kept)] if consistent else kept.groupby("split_hash", sort=True):
                yield part.assign(row=_row_names(part))


def _trains(rows: pd.DataFrame) -> bool:
    """Whether a row of the group trains (is not fitted without training)."""
    return not rows["method"].map(_is_training_free).astype(bool).all()


def _builds_backbone(rows: pd.DataFrame) -> bool:
    """Whether a row of the group built the run's backbone."""
    return bool(_weights_text(rows))


def _epochs(count) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


NAMED_SETTINGS = (  # (setting, what a group's name says of it, whether it applies to a group: None where always)
    ("dataset_fingerprint", lambda first, rows: f"data version {first['dataset_fingerprint'] or 'unrecorded'}", None),
    ("split", lambda first, rows: _split_text(rows), None),
    ("validation", lambda first, rows: f"{first['validation']:.0%} held out for validation", None),
    ("run_backbone", lambda first, rows: f"backbone {first['run_backbone']}", _builds_backbone),
    (
        "pretrained",
        lambda first, rows: {True: "pretrained", False: "not pretrained"}.get(
            first["pretrained"], "pretraining unrecorded"
        ),
        _builds_backbone,
    ),
    ("epochs", lambda first, rows: _epochs(first["epochs"]), _trains),
    ("image_size", lambda first, rows: f"{first['image_size']} px", None),
    ("augmentation", lambda first, rows: f"augmentation {first['augmentation']}", _trains),
    ("profile", lambda first, rows: f"profile {first['profile'] or 'unrecorded'}", None),
)


def named_groups(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Each comparable group of cells (:func:`_groups`) with its name: its dataset, then the settings in which the
    groups differ, those that apply to it (no epochs for a training-free group) unless only they tell two groups
    apart, and the split's content where nothing else does, so that no two names are alike."""
    groups = list(_groups(cells))
    firsts = [rows.iloc[0] for rows in groups]
    differing = [
        setting for setting in NAMED_SETTINGS if len({json.dumps(f[setting[0]], default=str) for f in firsts}) > 1
    ]

    def names(applying_only: bool) -> list[str]:
        return [
            " · ".join(
                [first["dataset"]]
                + [
                    text(first, rows)
                    for _, text, applies in differing
                    if not applying_only or applies is None or applies(rows)
                ]
            )
            for first, rows in zip(firsts, groups)
        ]

    named = names(applying_only=True)
    if len(set(named)) < len(named):  # settings that do not apply to a group are all that tells it apart
        named = names(applying_only=False)
    if len(set(named)) < len(named):  # one protocol whose splits differ in content (another cleaning or split rule)
        named = [f"{name} · split {str(first['split_hash'])[:8]}" for name, first in zip(named, firsts)]
    return list(zip(named, groups))


def slug(name: str) -> str:
    """A group's name as a file name's part: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _sees_augmentation(rows: pd.DataFrame) -> pd.Series:
    """Which rows trained on augmented images (not fitted without training, not a head on cached features)."""
    return ~(rows["method"].map(_is_training_free).astype(bool) | _frozen(rows))


def _legend(rows: pd.DataFrame, view: View) -> str:
    """The cell legend, saying when intervals resample patients rather than queries, and when they could not: one
    legend when every cell's intervals are of one kind, else one naming each kind."""
    legends = set()
    for directory in rows.loc[rows["status"] == "finished", "directory"]:
        try:
            cell = Cell(directory)
            if "query_groups" not in cell.codes():
                legends.add(UNCLUSTERED_LEGEND)
            else:
                legends.add(CLUSTERED_LEGEND if query_clusters(cell, view) is not None else CELL_LEGEND)
        except CellError:
            continue
    return legends.pop() if len(legends) == 1 else MIXED_LEGEND if legends else CELL_LEGEND


def subgroups(rows: pd.DataFrame, by: str, view: View) -> dict[str, int]:
    """Each subgroup of the queries under ``by`` with its number of queries, from the first readable finished cell."""
    for directory in rows.loc[rows["status"] == "finished", "directory"]:
        try:
            values, counts = np.unique(query_subgroups(Cell(directory), by, view), return_counts=True)
        except CellError:
            continue
        return dict(zip(values.tolist(), counts.tolist()))
    return {}


def build(
    cells: pd.DataFrame, metrics: tuple[str, ...], view: View = DEFAULT_VIEW, by: str | None = None
) -> list[Leaderboard]:
    """One table per metric and comparable group of cells (and per subgroup of the queries under ``by``), judged as
    ``view`` says."""
    boards = []
    if cells.empty:
        return boards
    for group, rows in named_groups(cells):
        bits = sorted(rows["bits"].unique(), key=lambda b: (b == NO_CODE, b))  # the float column last
        notes = caption_parts(rows) + _view_notes(view)
        legend = _legend(rows, view)
        published = rows["published_metric"].dropna().unique() if "published_metric" in rows else []
        parts = (
            [(None, "")]
            if by is None
            else [((by, v), f", {by} {v} (n = {n} queries)") for v, n in subgroups(rows, by, view).items()]
        )
        for metric in (*metrics, *(m for m in published if m not in metrics)):
            if metric in COST_COLUMNS:  # recorded per cell when it ran, not computed from a ranking: no subgroups
                table = _table(rows, bits, lambda cells, name=metric: summarise_cost(cells, name))
                title = f"{metric.upper()}: {COST_COLUMNS[metric].help}"
                boards.append(Leaderboard(title, group, notes, table, COST_LEGEND))
                continue
            for subgroup, named in parts:
                table = _table(rows, bits, lambda cells, name=metric, part=subgroup: summarise(cells, name, view, part))
                published_note = " (the metric this protocol is published with)" if metric in published else ""
                title = metric.upper() + published_note + named
                boards.append(Leaderboard(title, group, notes, table, legend))
    return boards


def _view_notes(view: View) -> list[str]:
    """How the stored codes were judged, as one note where it is not the default view."""
    judged = view.caption().removeprefix("; ")
    return [judged] if judged else []


def _table(rows: pd.DataFrame, bits: list[int], summary) -> pd.DataFrame:
    """Rows = methods (reference rows last), columns = code lengths; each cell ``summary`` of its runs."""
    return _reference_rows_last(
        pd.DataFrame(
            {
                _column_name(b): {
                    row: summary(group[group["bits"] == b]) for row, group in rows.groupby("row", sort=True)
                }
                for b in bits
            }
        )
    ).rename_axis("method")


def build_suite(cells: pd.DataFrame, suite: Suite, view: View = DEFAULT_VIEW) -> list[Leaderboard]:
    """The paper's table layout: its rows, and beside each measured value the paper's."""
    boards = []
    cells = cells[cells["method"].isin(suite.methods)] if not cells.empty else cells
    if cells.empty:
        return boards
    for group, rows in named_groups(cells):
        lengths = (*suite.bits, *([NO_CODE] if (rows["bits"] == NO_CODE).any() else []))
        columns = [(metric, bits) for metric in suite.metrics for bits in lengths]
        table = {}
        for label, method in suite.rows:
            mine = rows[rows["method"] == method]
            line = {}
            for metric, bits in columns:
                name = (
                    " ".join(
                        part
                        for part, shown in (
                            (metric.upper(), len(suite.metrics) > 1),
                            (_column_name(bits), len(lengths) > 1),
                        )
                        if shown
                    )
                    or metric.upper()
                )
                line[name] = summarise(mine[mine["bits"] == bits], metric, view)
                if suite.paper:
                    paper = suite.paper.get((label, metric, bits))
                    line[f"{name} paper"] = "-" if paper is None else f"{paper:.3f}"
            table[f"{label} ({method})"] = line
        frame = pd.DataFrame.from_dict(table, orient="index").rename_axis("model")
        note = "Paper: TCIA collections (372,004 slices), slice-level 8:2 split, EfficientNet-B6, 224 px, 50 epochs, augmented training images; one run per number, no intervals."
        notes = caption_parts(rows) + _view_notes(view) + ([note] if suite.paper else [])
        boards.append(Leaderboard(suite.title, group, notes, frame, _legend(rows, view)))
    return boards


def figures(cells: pd.DataFrame, metrics: tuple[str, ...], markdown: Path, view: View = DEFAULT_VIEW) -> str:
    """Write each group's figures next to ``markdown`` (named by the group where there are several) and return the
    markdown that shows them, a section per group headed by its name."""
    from hashbench.report.plots import COST_FIGURE, FIGURE_KINDS, leaderboard_figures

    parts = []
    if cells.empty:
        return ""
    named = named_groups(cells)
    for group, rows in named:
        stem = markdown.with_suffix("") if len(named) == 1 else markdown.with_name(f"{markdown.stem}-{slug(group)}")
        ranked = tuple(m for m in metrics if m not in COST_COLUMNS)  # cost columns have no per-query values to draw
        paths = leaderboard_figures(rows[rows["status"] == "finished"], ranked, group, stem, view)
        if paths:
            links = "\n\n".join(
                f"![{FIGURE_KINDS[p.stem.removeprefix(stem.name + '-')]}, {group}]({p.name})" for p in paths
            )
            cost = (
                "; MAP against the search time per query and the bytes per item each cell recorded (each point a code "
                "length, the mean over the runs that recorded a cost, timed on each cell's own machine)"
                if any(p.name.endswith(COST_FIGURE) for p in paths)
                else ""
            )
            parts.append(
                f"## Figures — {group}\n\nPR curves by Hamming radius, P@k (seeded tie order), metrics against code "
                f"length (error bars: std over runs); computed from the stored codes{cost}.\n\n{links}"
            )
    return "\n\n".join(parts) + ("\n" if parts else "")


def _column_name(bits: int) -> str:
    """A column's name: its code length, or the float references' column."""
    return "float (no code)" if bits == NO_CODE else f"{bits} bits"


REFERENCE = " (training-free)"  # the mark of a reference row
UNSUPERVISED = " (unsupervised)"  # the mark of a row trained without labels
FROZEN = " (frozen backbone)"  # the mark of a row whose head alone trained, on cached features
HSWD = " (HSWD)"  # the mark of a row whose quantisation term was HSWD (--set quantization=hswd)


def _frozen(rows: pd.DataFrame) -> pd.Series:
    """Which rows trained their head alone (cells from before the flag existed did not)."""
    flags = rows["frozen_backbone"] if "frozen_backbone" in rows else pd.Series(False, index=rows.index)
    return flags.fillna(False).astype(bool)


def _reference_rows_last(table: pd.DataFrame) -> pd.DataFrame:
    return table.loc[sorted(table.index, key=lambda row: (row.endswith(REFERENCE), row))]


def _row_names(rows: pd.DataFrame) -> pd.Series:
    """The method's name, with a variant hash when one method ran with several option sets in one group.

    Training-free methods are reference rows: marked so, and sorted below the trained ones. Methods trained without
    labels are marked so, and so are rows trained with HSWD in place of their quantisation term.
    """
    variant = rows[list(VARIANT_KEYS)].apply(
        lambda r: hashlib.sha1(json.dumps(r.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8], axis=1
    )
    method = rows["method"].where(~_frozen(rows), rows["method"] + FROZEN)
    variants = variant.groupby(method).transform("nunique")
    names = method.where(variants == 1, method + " [" + variant + "]")
    reference = rows["method"].map(_is_training_free)
    unsupervised = rows["method"].map(_is_unsupervised)
    switched = rows["options"].map(lambda options: (options or {}).get("quantization") == "hswd")
    names = names.where(~switched, names + HSWD)
    return names.where(~reference, names + REFERENCE).where(~unsupervised, names + UNSUPERVISED)


def to_markdown(boards: list[Leaderboard]) -> str:
    """Each group once, headed by its name, with its notes as a list and its legend; then its tables, each headed by
    what it shows and the group's name (a table whose legend is not the group's says its own)."""
    parts, legend = [], None
    for number, board in enumerate(boards):
        if number == 0 or board.group != boards[number - 1].group:
            legend = board.legend
            notes = "\n".join(f"- {note}" for note in board.notes)
            parts.append(f"## {board.group}\n\n{notes}\n\n{legend}")
        table = board.table.reset_index()
        header = "| " + " | ".join(table.columns) + " |"
        rule = "|" + "|".join("---" for _ in table.columns) + "|"
        lines = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
        own = f"{board.legend}\n\n" if board.legend != legend else ""
        parts.append(f"### {board.title} — {board.group}\n\n{own}" + "\n".join([header, rule, *lines]))
    return "\n\n".join(parts) + "\n"
