"""The command line's shared parts: the typer apps, the console, and the parsing every command uses."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hashbench.config.limits import check_range

app = typer.Typer(
    help="hashbench: benchmark deep hashing methods for medical image retrieval.",
    no_args_is_help=True,
)
ingest_app = typer.Typer(help="Turn DICOM data into a dataset once: decoded, cleaned, split.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

# On a terminal, rich fits its width; in a log (a pipe, a file, a batch job) 80 columns would wrap every table.
LOG_WIDTH = 160
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH)
DEFAULT_OUT = Path("runs")  # beside the user's work; a repository's curated results/ is written only when asked for
# where a results tree would be strewn among the system's files, or the user's own (and, as root, written)
SYSTEM_FOLDERS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr", "/var")
# How stored codes are judged (a View): every command that reads cells takes these, recomputed from the stored codes
EXCLUDE_OPTION = typer.Option(
    "none",
    "--exclude",
    help="Leave each query's own patient, study or series out of its ranking: none, same-patient, same-study, "
    "same-series.",
)
LEVEL_OPTION = typer.Option(
    "slice", "--level", help="Retrieve slices, or cases built from them: slice, series, study, patient."
)
CASE_CODE_OPTION = typer.Option(
    "vote",
    "--case-code",
    help="With --level: a case's code is each bit's majority over its slices (vote) or the sign of their mean "
    "continuous code (mean).",
)
CASE_DISTANCE_OPTION = typer.Option(
    "code",
    "--case-distance",
    help="With --level: rank cases by the Hamming distance of their codes (code) or of their closest pair of slices "
    "(min).",
)
RANKING_OPTION = typer.Option(
    "hamming",
    "--ranking",
    help="Rank by the binary codes (hamming), or by the cosine or euclidean distance of the continuous codes before "
    "binarisation: what binarising costs each method.",
)
RELEVANCE_OPTION = typer.Option(
    "",
    "--relevance",
    help="Graded relevance for ndcg@K, acg@K, wmap@K: attributes that must agree, each worth 1 or its weight, e.g. "
    "label,modality or label=2,body_part (default: a shared label).",
)
AP_NORM_OPTION = typer.Option(
    "found",
    "--ap-norm",
    help="AP@k divided by the relevant found in the top k (found: the DAFH paper's and DeepHash-pytorch's), by "
    "min(R, k) (min), or by all R relevant (all).",
)
EMPTY_OPTION = typer.Option(
    "zero",
    "--empty-queries",
    help="A query with nothing relevant to divide AP or nDCG by scores 0 (zero) or is left out of the mean (drop: "
    "HashNet's test code).",
)


def _print_version(value: bool) -> None:
    if value:
        import hashbench

        print(f"hashbench {hashbench.__version__}")
        raise typer.Exit()


def _use_threads(value: int | None) -> int | None:
    if value is not None:
        from hashbench.training.device import use_threads

        use_threads(value)
    return value


@app.callback()
def _global_options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        min=1,
        callback=_use_threads,
        help="CPU threads for torch, numba and OpenMP (before the command: hashbench --threads 2 run ...). Default: "
        "every core, or this process's share under torchrun; give each of several processes sharing a machine "
        "(--shard siblings) its share.",
    ),
) -> None:
    """hashbench: benchmark deep hashing methods for medical image retrieval."""


def parse_view(
    exclude: str,
    level: str,
    case_code: str,
    case_distance: str,
    relevance: str,
    ap_norm: str,
    empty: str,
    ranking: str = "hamming",
):
    """The View the options name; a bad value exits 2 with the valid ones."""
    from hashbench.evaluation.view import View

    try:
        return View.from_options(exclude, level, case_code, case_distance, relevance, ap_norm, empty, ranking)
    except ValueError as exc:
        fail(exc)


def results_folder(path: Path | None) -> Path | None:
    """The callback of every option naming a folder hashbench writes under (--out): the filesystem root, a system
    folder or the home directory itself is refused at parse time, before anything is written."""
    if path is None:
        return None
    where = path.expanduser().resolve()
    home = Path.home().resolve()
    if where == home:
        raise typer.BadParameter(
            f"{path} is your home directory itself: give results a folder of their own, e.g. {home / 'runs'}"
        )
    if where in {Path(folder).resolve() for folder in SYSTEM_FOLDERS}:
        raise typer.BadParameter(
            f"{path} is {'the filesystem root' if where == Path('/') else 'a system folder'}: give results a folder "
            f"of their own, e.g. ./runs or {home / 'runs'}"
        )
    return path


def out_option(help: str) -> Any:
    """--out, the results root, as every command declares it."""
    return typer.Option(DEFAULT_OUT, "--out", help=help, callback=results_folder)


def in_range(name: str) -> Callable[[typer.CallbackParam, Any], Any]:
    """A callback refusing at parse time, before any dataset loads, a value outside ``RANGES[name]``
    (:mod:`hashbench.config.limits`); the message names the valid range."""

    def check(param: typer.CallbackParam, value: Any) -> Any:
        flag = param.opts[0]
        for each in value if isinstance(value, (list, tuple)) else [value]:
            if each is not None:
                try:
                    check_range(name, each, flag)
                except ValueError as exc:
                    raise typer.BadParameter(str(exc).removeprefix(f"{flag} ")) from None
        return value

    return check


def fail(message: object) -> NoReturn:
    """Bad input: the message as written (brackets in it are not markup), exit code 2, no traceback."""
    console.print(f"[red]error:[/red] {escape(str(message))}")
    raise typer.Exit(2)


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``method.key=value`` (one method) or ``key=value`` (every method); values stay text until the option's type reads them."""
    overrides: dict[str, dict] = {}
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"{item!r}: expected method.key=value or key=value", param_hint="--set")
        key, value = item.split("=", 1)
        method, _, option = key.rpartition(".")
        overrides.setdefault(method or "*", {})[option] = value
    return overrides


def load_plugins(plugins: list[Path]) -> None:
    """Load local plugin files; a broken one is reported and the command goes on."""
    from hashbench.model.registry import load_plugin

    for path in plugins:
        for entry in load_plugin(path):
            if entry.error:
                console.print(f"[yellow]plugin {path} is broken[/yellow]: {entry.error}")


def check_metrics(metrics: list[str], with_costs: bool = False) -> None:
    """Every metric name is known (the message lists the valid forms); ``with_costs``: a table of stored cells may also
    show the retrieval costs each cell recorded."""
    from hashbench.evaluation.cost import COST_COLUMNS
    from hashbench.evaluation.evaluate import parse_metric

    for name in metrics:
        if with_costs and name in COST_COLUMNS:
            continue
        try:
            parse_metric(name)
        except ValueError as exc:
            costs = f"; or a recorded cost: {', '.join(COST_COLUMNS)}" if with_costs else ""
            raise typer.BadParameter(exc.args[0] + costs, param_hint="--metrics") from None


def chosen_suite(name: str | None, with_baselines: bool = False):
    """The paper suite ``--suite`` names, with the training-free floor when asked; None without one."""
    from hashbench.api import suite

    try:
        return suite(name, with_baselines)
    except KeyError as exc:
        raise typer.BadParameter(exc.args[0], param_hint="--suite") from None


def print_boards(boards: list) -> None:
    """Each group's name, notes and legend once, then its leaderboards as rich tables (a table whose legend is not the
    group's says its own below it), as the published markdown has them."""
    legend = None
    for number, board in enumerate(boards):
        if number == 0 or board.group != boards[number - 1].group:
            legend = board.legend
            console.rule(escape(board.group))
            for note in board.notes:
                console.print(f"- {escape(note)}", highlight=False)
            console.print(escape(legend), highlight=False)
        own = escape(board.legend) if board.legend != legend else None
        table = Table(title=f"{escape(board.title)} — {escape(board.group)}", caption=own, caption_justify="left")
        table.add_column(escape(board.table.index.name or "method"))
        for column in board.table.columns:
            table.add_column(escape(column), justify="right")
        for method, row in board.table.iterrows():  # escaped: a variant's "[b955f5dd]" is not a style to rich
            table.add_row(escape(str(method)), *(escape(str(value)) for value in row))
        console.print(table)
