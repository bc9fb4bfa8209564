"""The published leaderboard (`leaderboard --format md`) of a results root holding several groups: every heading names
its group, each group's notes come once as a short list, figures are named by group and kind, and their text is
legible at the size they are shown, legends covering no panel."""

from __future__ import annotations

import re

import pytest

from hashbench import api
from hashbench.report import plots

TINY = "phantom-tiny-seed0"
GROUPS = {  # group name -> its figures' file-name part
    f"{TINY} · patient-level split · 2 epochs": f"{TINY}-patient-level-split-2-epochs",
    f"{TINY} · slice-level split": f"{TINY}-slice-level-split",  # training-free alone: its epochs tell nothing
    f"{TINY} · patient-level split · 1 epoch": f"{TINY}-patient-level-split-1-epoch",
}
TRAINING_FREE = f"{TINY} · slice-level split"
METRICS = ("map@1", "map@10", "search-ms")
MIN_POINTS = 9  # the smallest legible text, in pt at the size a figure is shown
PAGE_PIXELS = 900  # a markdown page shows a figure up to this wide unscaled


def drawn_text_problems(figure, dpi: int) -> list[str]:
    """What would make the figure hard to read as a page shows it: small text, a figure the page must shrink, a legend
    over a panel (its data area, ticks or labels)."""
    from matplotlib.text import Text

    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    problems = [
        f"{text.get_text()!r} at {text.get_fontsize():g} pt"
        for text in figure.findobj(Text)
        if text.get_visible() and text.get_text().strip() and text.get_fontsize() < MIN_POINTS
    ]
    if figure.get_figwidth() * dpi > PAGE_PIXELS:
        problems.append(f"{figure.get_figwidth() * dpi:.0f} pixels wide: shrunk on a page")
    panels = [axis for axis in figure.axes if axis.get_visible()]
    legends = [*figure.legends, *(axis.get_legend() for axis in panels if axis.get_legend())]
    problems += [
        f"legend over the panel {axis.get_title()!r}"
        for legend in legends
        for axis in panels
        if legend.get_window_extent(renderer).overlaps(axis.get_tightbbox(renderer))
    ]
    return problems


@pytest.fixture(scope="module")
def published(tiny_phantom, tmp_path_factory):
    """Three groups: trained methods at 2 epochs and at 1 on the patient-level split, training-free ones alone on the
    slice-level split; the markdown, its folder, and each figure's legibility problems as it was saved."""
    dataset = tiny_phantom.dataset
    out = tmp_path_factory.mktemp("published") / "runs"
    common = dict(dataset=dataset.name, profile="quick", device="cpu")
    requests = [
        api.RunRequest(methods=["dpsh", "hashnet"], bits=[8, 16], epochs=2, **common),
        api.RunRequest(methods=["dpsh"], bits=[16], epochs=1, **common),
        api.RunRequest(methods=["lsh", "itq"], bits=[16], epochs=2, split="slice", **common),
    ]
    for request in requests:
        assert all(o.status == "done" for o in api.run_grid(request, dataset, out))
    figures = {}
    save = plots.save_png

    def inspected(figure, path, dpi):
        figures[path.name] = drawn_text_problems(figure, dpi)
        save(figure, path, dpi)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_png", inspected)
        target = api.write_leaderboard(out, out / "leaderboard.md", METRICS, figures=True)
    return target.read_text(), out, figures


def sections(text: str) -> dict[str, str]:
    """Each '## ' section of the markdown by its heading."""
    return {part.split("\n", 1)[0]: part for part in re.split(r"^## ", text, flags=re.M)[1:]}


def notes(section: str) -> list[str]:
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def test_every_heading_is_unique_and_names_its_group(published):
    text, _, _ = published
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings)), [h for h in headings if headings.count(h) > 1]
    groups = [heading for heading in sections(text) if not heading.startswith("Figures")]
    assert sorted(groups) == sorted(GROUPS)
    for group in GROUPS:
        for metric in METRICS:
            assert any(h.startswith(f"### {metric.upper()}") and h.endswith(f" — {group}") for h in headings), metric
        assert f"## Figures — {group}" in headings


def test_figures_are_named_by_group_and_kind(published):
    text, out, figures = published
    kinds = ("pr", "precision-at-k", "cost", "metrics-vs-bits")
    expected = {f"leaderboard-{part}-{kind}.png" for part in GROUPS.values() for kind in kinds}
    assert {path.name for path in out.glob("*.png")} == expected == set(figures)
    for group, part in GROUPS.items():
        assert f"![PR curves by Hamming radius, {group}](leaderboard-{part}-pr.png)" in text


def test_figure_text_is_legible_at_the_size_shown_and_legends_cover_no_panel(published):
    _, _, figures = published
    assert figures and {name: problems for name, problems in figures.items() if problems} == {}


def test_each_group_says_what_ran_once_as_a_short_list(published):
    text, _, _ = published
    for group, section in sections(text).items():
        if group.startswith("Figures"):
            continue
        listed = notes(section)
        assert 4 <= len(listed) <= 10 and all(len(note) <= 300 for note in listed), listed
        assert section.count("data version") == 1 and sum(note.startswith("seeds ") for note in listed) == 1
        assert "synthetic phantom data" in listed[0] and "(the paper's: TCIA collections" in listed[0]
        assert "one run per cell: each number is a single sample" in section  # the honest notes stay, once
        assert section.count("95 % bootstrap interval") == 1 and "(n=1" in section
        assert any(note.startswith("ran on cpu") for note in listed)
    trained = notes(sections(text)[f"{TINY} · patient-level split · 1 epoch"])
    assert any(note.startswith("training (the paper's: 50 epochs") and "): 1 epoch;" in note for note in trained)
    assert any(note.startswith("features (the paper's: EfficientNet-B6") for note in trained)


def test_a_training_free_group_says_nothing_of_training(published):
    text, _, _ = published
    listed = notes(sections(text)[TRAINING_FREE])
    assert "row lsh (training-free): fitted on raw pixels (16 x 16 per channel)" in " ".join(listed)
    for word in ("epoch", "optimiser", "augmentation", "training:", "training (", "weights", "built by no row"):
        assert not any(word in note for note in listed), (word, listed)


def test_the_terminal_shows_each_group_and_its_notes_once_and_names_as_they_are(published):
    """`leaderboard` in a terminal: a group's notes once above its tables (not under each one), and text holding
    brackets (a variant's configuration hash) printed as it is, not read as a rich style."""
    from hashbench.cli.app import console, print_boards

    _, out, _ = published
    boards = api.leaderboard(out, METRICS)
    boards[0].table.index = [f"{name} [b955f5dd]" for name in boards[0].table.index]
    with pytest.MonkeyPatch.context() as patch, console.capture() as captured:
        patch.setattr(console, "width", 400)  # no note wrapped
        print_boards(boards)
    shown = captured.get()
    for group in GROUPS:
        assert shown.count(f"{METRICS[0].upper()} — {group}") == 1
    trained = next(board for board in boards if board.group == f"{TINY} · patient-level split · 1 epoch")
    training = next(note for note in trained.notes if note.startswith("training"))
    assert shown.count(training) == 1  # its group's own note, once for the group's three tables
    assert "[b955f5dd]" in shown
