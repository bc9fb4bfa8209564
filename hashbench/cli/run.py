"""Commands that train: run (a grid of cells) and bench (throughput on this device)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from hashbench.cli.app import (
    AP_NORM_OPTION,
    CASE_CODE_OPTION,
    CASE_DISTANCE_OPTION,
    EMPTY_OPTION,
    EXCLUDE_OPTION,
    LEVEL_OPTION,
    RANKING_OPTION,
    RELEVANCE_OPTION,
    app,
    check_metrics,
    chosen_suite,
    console,
    fail,
    in_range,
    load_plugins,
    out_option,
    parse_overrides,
    parse_view,
    print_boards,
)
from hashbench.cli.argv import COMMA_LISTS
from hashbench.evaluation.metrics import DEFAULT_METRICS

INVOCATION_ONLY = ("config", "like", "dry-run", "json", "force")  # how to run this once, not what a sweep is


def _sweep_flags(ctx: typer.Context) -> dict[str, Any]:
    """The flags a sweep file may hold, by key: the flag's name without its dashes."""
    named = {param.opts[0].removeprefix("--"): param for param in ctx.command.params if param.opts}
    return {key: param for key, param in named.items() if key not in INVOCATION_ONLY}


def _sweep_settings(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """--config FILE or --like CELL: the settings of the sweep file or of the stored cell become the defaults of the
    flags not given."""
    if value is None:
        return value
    if ctx.default_map is not None:
        fail("--config and --like both give a sweep's settings: give one of them")
    from hashbench.config.sweep import cell_settings, read_sweep

    try:
        settings = read_sweep(value, _sweep_flags(ctx)) if param.name == "config" else cell_settings(value)
    except ValueError as exc:
        fail(exc)
    _use_as_defaults(ctx, settings, str(value if param.name == "config" else value / "config.json"))
    return value


def _use_as_defaults(ctx: typer.Context, settings: dict[str, Any], source: str) -> None:
    """Each setting becomes the default of its flag, read and checked as the flag's own value would be (exit 2 naming
    the source, the key and what is wrong); a flag given on the command line still wins."""
    flags = _sweep_flags(ctx)
    defaults = {}
    for key, value in settings.items():
        flag = flags[key]
        try:
            defaults[flag.name] = _as_given(flag, value)
            flag.process_value(ctx, defaults[flag.name])
        except ValueError as exc:
            fail(f"{source}: {key} = {json.dumps(value, default=str)}: {exc}")
        except typer.BadParameter as exc:
            fail(f"{source}: {key} = {json.dumps(value, default=str)}: {exc.message}")
    ctx.default_map = defaults


def _as_given(flag, value: Any) -> Any:
    """A TOML value as the command line gives its flag: true or false for a switch, else text (a list of texts for a
    flag that takes several, commas splitting where they do on the command line), for the flag's own type to read."""
    if flag.is_flag:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not true or false")
        return value
    if isinstance(value, list) and not flag.multiple:
        raise ValueError(f"takes one value, not a list {value!r}")
    values = value if isinstance(value, list) else [value]
    wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, (str, int, float))]
    if wrong:
        raise ValueError(f"{wrong[0]!r} is not text or a number" + ("" if flag.multiple else "; write one value"))
    texts = [str(v) for v in values]
    if not flag.multiple:
        return texts[0]
    return [part for text in texts for part in text.split(",") if part] if flag.opts[0] in COMMA_LISTS else texts


def _added_to_sweep_settings(ctx: typer.Context, param: typer.CallbackParam, value: List[str]) -> List[str]:
    """--set texts, checked for their form where they are read (a sweep file's too); beside --config or --like they add
    to their settings (parsed in order: the later setting of an option wins), where any other flag replaces the value
    they give."""
    parse_overrides(value)
    source = ctx.get_parameter_source(param.name)
    if source is not None and source.name == "COMMANDLINE":
        return [*(ctx.default_map or {}).get(param.name, []), *value]
    return value


@app.command("run")
def run_command(
    ctx: typer.Context,
    methods: List[str] = typer.Option([], "--methods", help="Methods to run: --methods hashnet dpsh, or hashnet,dpsh."),
    bits: List[int] = typer.Option(
        [],
        "--bits",
        help="Code lengths: --bits 16 32 48, or 16,32,48 (default 16 32 48, or the suite's).",
        callback=in_range("bits"),
    ),
    suite: Optional[str] = typer.Option(
        None,
        "--suite",
        help="Run a suite: a paper table (paper-table3, paper-table4, paper-table5) or foundation (frozen features, "
        "give --backbone), its methods, bits and settings.",
    ),
    with_baselines: bool = typer.Option(
        False, "--with-baselines", help="Also run the training-free floor (lsh, pcah, itq, sh) on the same split."
    ),
    seeds: List[int] = typer.Option(
        [0], "--seeds", help="Training seeds; the leaderboard shows mean +/- std over them."
    ),
    split_seed: int = typer.Option(
        0, "--split-seed", help="Seed of the database/query split; vary it to measure split variance."
    ),
    dataset: str = typer.Option(
        "phantom", "--dataset", help="An ingested dataset (see `hashbench datasets`); phantom is built on first use."
    ),
    backbones: List[str] = typer.Option(
        [],
        "--backbone",
        help="The backbone every method builds: a timm name, hf-hub:ORG/NAME (timm format) or open-clip:hf-hub:ORG/NAME; several (a,b) run the grid once per backbone. Default: the profile's (quick: test_efficientnet, full: tf_efficientnet_b6.aa_in1k, full-b0: efficientnet_b0).",
    ),
    pretrained: Optional[bool] = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start from ImageNet weights (default: the profile's; full: yes, quick: no).",
    ),
    weights: List[str] = typer.Option(
        [],
        "--weights",
        help="Local weights: FILE (the run's backbone), MODEL=FILE, or DIR of MODEL.safetensors/.pth files. For machines without internet.",
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Default: the profile's (quick: 30, full: 50)."),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Default: the profile's (quick: 64, full: 224).", callback=in_range("image_size")
    ),
    split: Optional[str] = typer.Option(
        None,
        "--split",
        help="patient, slice (the paper's), or a protocol the dataset declares (official for MedMNIST; 1k-5k-54k, 1k-5k-59k, official for CIFAR-10; lists for list files). Default: the dataset's own, else patient.",
    ),
    validation: float = typer.Option(
        0.0,
        "--validation",
        help="Share of the training side held out; its MAP@10 is logged each epoch (never used to pick an epoch).",
    ),
    augment: Optional[str] = typer.Option(
        None,
        "--augment",
        help="Training-image augmentation: none, paper, or e.g. rotation=10,scale=0.1,brightness=0.1,noise=0.02,blur=1 (default: the profile's).",
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    profile: Optional[str] = typer.Option(
        None,
        "--profile",
        help="full (the paper's training protocol), full-b0 (cheaper backbone) or quick (CPU budget); default: quick for the phantom on a CPU, else full.",
    ),
    out: Path = out_option("Results root; finished cells there are skipped (default: ./runs)."),
    plugin: List[Path] = typer.Option([], "--plugin", help="A local plugin file registering methods."),
    overrides: List[str] = typer.Option(
        [],
        "--set",
        help="Option override: method.key=value, or key=value for every method; beside --config or --like, added to "
        "their settings (the later setting of an option wins).",
        callback=_added_to_sweep_settings,
    ),
    metrics: List[str] = typer.Option(list(DEFAULT_METRICS), "--metrics", help="Metrics to compute and show."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Re-run finished cells: the old result stays until the new one is complete; an interrupted re-run resumes on the next --force.",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved plan, one line per cell with its full configuration, and run nothing.",
    ),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: one JSON object per cell."),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 autocast on CUDA, fp16 with a gradient scaler where bf16 is missing, fp32 on a CPU), fp32, bf16 or fp16.",
    ),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC memory layout; default: on CUDA."
    ),
    compile_model: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the training forward pass (inductor): slower first epoch, faster later ones.",
    ),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        help="I/N: run only share I (counted from 0) of N shares of the grid (balanced by estimated cost; every cell in one share), e.g. --shard $SLURM_ARRAY_TASK_ID/8.",
    ),
    freeze_backbone: bool = typer.Option(
        False,
        "--freeze-backbone",
        help="Deep methods keep the backbone's initial weights and train their head alone, on its features computed "
        "once and cached (DAFH, which fuses feature maps, refuses).",
    ),
    track: List[str] = typer.Option(
        [],
        "--track",
        help="Mirror each cell's training to experiment trackers: tensorboard (event files in the cell), mlflow (a run "
        "per cell); e.g. --track tensorboard,mlflow. Extras: pip install 'hashbench[tensorboard]' / '[mlflow]'.",
    ),
    mlflow_uri: Optional[str] = typer.Option(
        None,
        "--mlflow-uri",
        help="Where --track mlflow writes: sqlite:///PATH.db or a server's http://...; default $MLFLOW_TRACKING_URI, "
        "else mlflow.db in --out.",
    ),
    exclude: str = EXCLUDE_OPTION,
    level: str = LEVEL_OPTION,
    case_code: str = CASE_CODE_OPTION,
    case_distance: str = CASE_DISTANCE_OPTION,
    relevance: str = RELEVANCE_OPTION,
    ap_norm: str = AP_NORM_OPTION,
    empty: str = EMPTY_OPTION,
    ranking: str = RANKING_OPTION,
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        is_eager=True,
        callback=_sweep_settings,
        help="A sweep file (TOML) holding this command's flags, each key a flag without its dashes (see "
        "examples/sweep.toml); flags given beside it override its values. A run keeps a copy as "
        "<out>/sweeps/<name>-<hash>.toml; --dry-run prints the sweep with every value resolved.",
    ),
    like: Optional[Path] = typer.Option(
        None,
        "--like",
        is_eager=True,
        callback=_sweep_settings,
        help="Plan a stored cell again (its directory): its method, bits, seed, data, split, profile, backbone, training "
        "and options; flags given beside it change them (e.g. --seeds 1, --dataset other).",
    ),
) -> None:
    """Train and evaluate every (method, bits, seed) cell, then print the leaderboard (judged as the view options say;
    each cell stores its codes, so any other view is a `hashbench leaderboard` away)."""
    from hashbench import api, distributed

    console.quiet = distributed.follower()  # under torchrun, the first process speaks for all
    load_plugins(plugin)
    check_metrics(metrics)
    view = parse_view(exclude, level, case_code, case_distance, relevance, ap_norm, empty, ranking)
    chosen = chosen_suite(suite, with_baselines)
    methods, bits = api.methods_and_bits(methods, bits, chosen, with_baselines)
    if not methods:
        raise typer.BadParameter(
            "name methods (--methods hashnet,dpsh) or a suite (--suite paper-table3)", param_hint="--methods"
        )
    request = api.RunRequest(
        methods=methods,
        bits=bits,
        seeds=list(seeds),
        dataset=dataset,
        backbones=list(backbones),
        pretrained=pretrained,
        weights=list(weights),
        epochs=epochs,
        image_size=image_size,
        split=split,
        split_seed=split_seed,
        validation=validation,
        device=device,
        profile=profile,
        augment=augment,
        overrides=parse_overrides(overrides),
        metrics=tuple(metrics),
        force=force,
        shard=_parse_shard(shard),
        execution=_execution(precision, channels_last, compile_model),
        freeze_backbone=freeze_backbone,
        tracking=_tracking(track, mlflow_uri),
    )
    request = api.with_suite_settings(request, chosen)
    try:
        data = api.load_dataset(dataset, progress=not console.quiet)
        if dry_run:
            planned = api.plan(request, data)
            standings = api.standings(planned, out)
            _print_plan(planned, standings, out, force, as_json, _resolved_sweep(ctx, api.with_defaults(request, data)))
            if like and not as_json:
                _print_likeness(like, planned)
            return
        if config:
            console.print(f"sweep file {config} kept as {api.keep_sweep(config, out)}")
        outcomes = api.run_grid(
            request,
            data,
            out,
            progress=not console.quiet,
            on_cell=lambda outcome: _report_cell(outcome, metrics),
            on_start=_report_start,
        )
    except api.USER_ERRORS as exc:
        read_from = f"{config or like} (or a flag beside it): " if config or like else ""
        fail(read_from + str(exc.args[0] if exc.args else exc))
    except KeyboardInterrupt:
        console.print(
            "\n[yellow]interrupted[/yellow]: finished cells are kept and the current one resumes from its last epoch; run the same command again."
        )
        raise typer.Exit(130) from None
    try:
        ran = {str(o.config.directory(out)) for o in outcomes}
        print_boards(api.leaderboard(out, tuple(metrics), suite=chosen, directories=ran, view=view))
    except ValueError as exc:  # cells kept from an older hashbench, stored without what the view needs
        fail(exc)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    console.print(
        f"{len(outcomes)} cells: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    )
    if failed:
        for outcome in failed:
            label, reason = outcome.config.label(), escape(outcome.error.splitlines()[-1])
            if isinstance(outcome, api.UnbuildableOutcome):  # never run, so no failed.json
                console.print(f"  [red]failed[/red] {label}: {outcome.note}: {reason}  (traceback below)")
            else:
                where = outcome.config.directory(out) / "failed.json"
                console.print(f"  [red]failed[/red] {label}: {reason}  ({where})")
        unbuildable = {o.traceback: o.config.method for o in failed if isinstance(o, api.UnbuildableOutcome)}
        for text, method in unbuildable.items():  # once per method, not per cell
            console.print(
                f"{method} could not be built:\n{text.rstrip()}", markup=False, highlight=False, soft_wrap=True
            )
        raise typer.Exit(1)


def _resolved_sweep(ctx: typer.Context, request) -> str:
    """The sweep as a file: every flag's value, with those the plan decides (profile, epochs, size, ...) as decided."""
    from hashbench.config.sweep import request_settings, to_toml

    given = {key: ctx.params[flag.name] for key, flag in _sweep_flags(ctx).items()}
    return to_toml({**given, **request_settings(request)})


def _print_likeness(directory: Path, planned) -> None:
    """How each planned cell differs from the stored one --like named."""
    from hashbench.config.sweep import differences
    from hashbench.store.results import Cell

    stored = Cell(directory).config
    for cell in planned:
        changed = differences(stored, cell.config)
        what = "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        console.print(
            f"like {stored.identity()}: {cell.config.label()} differs in {what}"
            if changed
            else f"like {stored.identity()}: {cell.config.label()} is the same cell",
            markup=False,
            highlight=False,
        )


def _tracking(track: List[str], mlflow_uri: str | None):
    from hashbench.runner.tracking import Tracking

    try:
        return Tracking(tuple(dict.fromkeys(track)), mlflow_uri or "")
    except ValueError as exc:
        fail(exc)


def _execution(precision: str, channels_last: bool | None, compile_model: bool):
    from hashbench.training.engine import Execution

    try:
        return Execution(precision, channels_last, "inductor" if compile_model else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--precision "), param_hint="--precision") from None


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    """I/N as two whole numbers; whether share I exists is the plan's to say."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if match is None:
        raise typer.BadParameter(
            f"{text!r}: expected I/N with 0 <= I < N (shares are counted from 0), e.g. --shard 0/8 ... --shard 7/8",
            param_hint="--shard",
        )
    return int(match[1]), int(match[2])


def _report_start(where) -> None:
    """cell i of N, what it resumes, and the sweep's time left once a cell has trained here."""
    resumes = f" (resumes after epoch {where.standing.epochs_done})" if where.standing.epochs_done else ""
    left = "" if where.seconds_left is None else f"; the sweep: about {_duration(where.seconds_left)} left"
    console.print(
        f"cell {where.position} of {where.total}: {where.spec.config.label()}{resumes}{left}", highlight=False
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _report_cell(outcome, metrics: List[str]) -> None:
    label = outcome.config.label()
    # the note says why a cell is special: collapse, damage, another process
    note = f" [yellow]({outcome.note})[/yellow]" if outcome.note and outcome.status != "skipped" else ""
    if outcome.status == "done":
        shown = ", ".join(f"{k} {outcome.metrics[k]:.3f}" for k in metrics if k in outcome.metrics)
        console.print(f"[green]done[/green] {label}: {shown}{note}")
    elif outcome.status == "skipped":
        console.print(f"[dim]skipped {label}: {outcome.note}[/dim]")
    else:  # an error's text is not markup: "[...]" in it is shown as it is
        console.print(f"[red]failed[/red] {label}: {escape(outcome.error)}{note}")


def _print_plan(planned, standings, out: Path, force: bool, as_json: bool, resolved_sweep: str) -> None:
    """One line per cell: its full configuration, where it would be written and what running it would do (skip a
    finished cell, resume an interrupted one), or why its method could not be built; then (not with --json) the
    resolved sweep, a file --config reads back."""
    from hashbench.config.profiles import PROFILES

    for cell, standing in zip(planned, standings):
        described = {**cell.describe(out), "standing": standing.describe(cell, force)}
        if as_json:
            print(json.dumps(described, default=str))
            continue
        flat = " ".join(
            f"{k}={json.dumps(v, default=str, ensure_ascii=False)}"
            for k, v in described.items()
            if k not in ("cell", "directory", "unbuildable", "standing")
        )
        where = (
            f"unbuildable: the method could not be built: {described['unbuildable']}"
            if cell.unbuildable
            else f"{described['directory']} [{described['standing']}]"
        )
        print(f"{described['cell']}: {flat} -> {where}")
    if not as_json:
        print("# the resolved sweep: save it as a file and run it with --config FILE")
        print(resolved_sweep, end="")
        for name in sorted({cell.config.profile for cell in planned}):
            console.print(f"profile {name}: {PROFILES[name].description}")
        unbuildable = sum(bool(cell.unbuildable) for cell in planned)
        failing = f", {unbuildable} of them unbuildable: they would fail" if unbuildable else ""
        finished = sum(standing.status == "finished" for standing in standings)
        kept = f", {finished} finished already ({'re-run: --force' if force else 'skipped'})" if finished else ""
        resuming = sum(bool(standing.epochs_done) for standing in standings)
        resumes = f", {resuming} resume where they stopped" if resuming else ""
        console.print(f"{len(planned)} cells planned{failing}{kept}{resumes}; nothing was run (--dry-run).")


@app.command("bench")
def bench_command(
    dataset: str = typer.Option("phantom", "--dataset", help="Whose cache the loader reads."),
    backbones: List[str] = typer.Option(
        ["tf_efficientnet_b6.aa_in1k"],
        "--backbones",
        help="timm models, e.g. --backbones efficientnet_b0,tf_efficientnet_b6.aa_in1k (random weights: rates do not depend on them).",
    ),
    image_sizes: List[int] = typer.Option(
        [224],
        "--image-sizes",
        help="Training image sizes, e.g. --image-sizes 224 384.",
        callback=in_range("image_size"),
    ),
    method: str = typer.Option("dafh", "--method", help="The method whose network and loss are trained."),
    bits: int = typer.Option(32, "--bits", callback=in_range("bits")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Default: the method's."),
    steps: int = typer.Option(5, "--steps", min=1, help="Training steps per epoch; the second of two epochs is timed."),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16 (as for run)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last"),
    compile_model: bool = typer.Option(False, "--compile"),
    slices: int = typer.Option(
        372_004, "--slices", help="Projection: slices to train on (default: the paper's 372,004)."
    ),
    epochs: int = typer.Option(50, "--epochs", help="Projection: epochs (default: the paper's 50)."),
    as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the rates to this file."),
    memory_check: bool = typer.Option(
        True,
        "--memory-check/--no-memory-check",
        help="Skip a backbone whose training is estimated not to fit in free memory; --no-memory-check measures it "
        "anyway (swap, or an estimate you know to be high; the kernel may kill it).",
    ),
    search: Optional[int] = typer.Option(
        None,
        "--search",
        help="Measure search instead of training: N random codes of --bits bits in the database (e.g. 1000000); each "
        "backend's ms per query and index bytes, its speed-up over the exact popcount scan, the hash indexes' recall@10.",
    ),
    queries: int = typer.Option(200, "--queries", help="With --search: queries timed, one at a time (median)."),
    flips: int = typer.Option(
        2,
        "--flips",
        help="With --search: bits flipped per hash key when the hash indexes probe (more: recall up, slower).",
    ),
) -> None:
    """Images/s for loading, training and encoding on this device, peak memory, and the projected time of a full run;
    with --search, the cost of a query over N codes for each search backend."""
    from hashbench import api

    if search is not None:
        try:
            searched = api.bench_search(search, bits, queries, device, flips=flips)
        except api.USER_ERRORS as exc:
            fail(exc.args[0] if exc.args else exc)
        _print_search_rates(searched)
        if as_json:
            from hashbench.store.atomic import write_text

            write_text(as_json, api.search_rates_json(searched))
        return
    execution = _execution(precision, channels_last, compile_model)
    projection = f"{slices:,} x {epochs} epochs"
    columns = ("px", "batch", "loading", "training", "encoding", "loader / training", "peak memory (MiB)", projection)
    widths = [max(len(name) for name in [*backbones, "backbone"]), *(max(len(column), 8) for column in columns)]
    results: list = []

    def line(cells) -> None:
        first, *rest = cells
        text = "  ".join([str(first).ljust(widths[0]), *(str(cell).rjust(w) for cell, w in zip(rest, widths[1:]))])
        console.print(escape(text), highlight=False)

    def measuring(backbone: str, size: int, where) -> None:
        console.print(f"[dim]measuring {method} on {backbone} at {size} px on {where}...[/dim]")

    def finished(result) -> None:
        """Print each row, and rewrite the JSON file, as soon as it is done: a later failure or kill loses nothing."""
        if isinstance(result, api.Skipped):
            console.print(f"{escape(result.backbone)} at {result.image_size} px: {escape(result.reason)}")
        else:
            if not any(isinstance(earlier, api.Rates) for earlier in results):
                line(("backbone", *columns))
            memory = result.peak_memory_mib
            line(
                (
                    result.backbone,
                    result.image_size,
                    result.batch_size,
                    f"{result.loading:,.0f}",
                    f"{result.training:,.1f}",
                    f"{result.encoding:,.1f}",
                    f"{result.loader_margin:,.0f}x",
                    f"{memory.get('cuda_allocated_mib', memory.get('process_rss_peak_so_far_mib')):,.0f}",
                    f"{result.projected_hours(slices, epochs):,.1f} h",
                )
            )
        results.append(result)
        if as_json:
            from hashbench.store.atomic import write_text

            write_text(as_json, api.rates_json(results, data, slices, epochs))

    try:
        data = api.load_dataset(dataset, progress=True)
        api.bench(
            data,
            backbones,
            image_sizes,
            device,
            method,
            bits,
            batch_size,
            steps,
            execution,
            on_measure=measuring,
            slices=slices,
            on_result=finished,
            memory_check=memory_check,
        )
    except api.USER_ERRORS as exc:
        fail(exc.args[0] if exc.args else exc)
    measured = [result for result in results if isinstance(result, api.Rates)]
    if not measured:
        console.print("[red]nothing measured[/red]: every backbone and image size was skipped (above)")
        raise typer.Exit(1)
    console.print(
        f"images/s on {measured[0].device}, {measured[0].execution['precision']}. "
        f"{data.name}{' (synthetic)' if data.manifest.get('synthetic') else ''}, stored at {data.image_size} px; loading: memory-mapped cache (warm page cache) "
        f"to augmented device tensors; training: {method}, {bits} bits, the engine's loop, second epoch timed; peak memory: "
        f"{'GPU allocated' if 'cuda_allocated_mib' in measured[0].peak_memory_mib else 'process resident so far'}; projection: training plus one encoding pass."
    )


def _print_search_rates(rates) -> None:
    """The search bench as a table: one row per backend, the exact popcount scan first, and what did not run."""
    title = f"search over {rates.n_items:,} random {rates.bits}-bit codes; {rates.queries} queries, one at a time"
    table = Table(box=box.SIMPLE_HEAD, title=title)
    for column in (
        "backend",
        "exact",
        "ms/query",
        "p95 ms",
        "speed-up over scan",
        f"recall@{rates.k}",
        "index MiB",
        "build s",
        "parameters",
    ):
        table.add_column(column, justify="left" if column in ("backend", "parameters") else "right")
    for backend in rates.backends:
        table.add_row(
            backend.name,
            "yes" if backend.exact else "no",
            f"{backend.median_ms:.4g}",
            f"{backend.p95_ms:.4g}",
            f"{rates.speedup(backend):,.2f}x",
            "-" if backend.recall is None else f"{backend.recall:.3f}",
            f"{backend.index_bytes / 2**20:,.1f}",
            f"{backend.build_seconds:.2f}",
            ", ".join(f"{k}={v}" for k, v in backend.parameters.items()),
        )
    console.print(table)
    console.print(
        f"popcount: hashbench's exact scan (numpy); faiss on {rates.threads} thread; median over {rates.queries} "
        f"queries after {rates.warm_up_queries} warm-up; recall@{rates.k}: share of the exact top {rates.k} found "
        f"(ties at the {rates.k}th distance count). Uniform random codes have no near neighbours, the hard case for a "
        "hash table; every cell records the same measurement on its own codes (the cost in its metrics.json)."
    )
    for name, reason in rates.not_run.items():
        console.print(f"[dim]{name} not run: {reason}[/dim]")
