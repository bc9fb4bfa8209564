"""Commands that train: run (a grid of cells) and bench (throughput on this device)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

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
from hashbench.evaluation.evaluate import DEFAULT_METRICS


@app.command("run")
def run_command(
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
        [], "--set", help="Option override: method.key=value, or key=value for every method."
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
    exclude: str = EXCLUDE_OPTION,
    level: str = LEVEL_OPTION,
    case_code: str = CASE_CODE_OPTION,
    case_distance: str = CASE_DISTANCE_OPTION,
    relevance: str = RELEVANCE_OPTION,
    ap_norm: str = AP_NORM_OPTION,
    empty: str = EMPTY_OPTION,
    ranking: str = RANKING_OPTION,
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
    )
    request = api.with_suite_settings(request, chosen)
    try:
        data = api.load_dataset(dataset, progress=not console.quiet)
        if dry_run:
            _print_plan(api.plan(request, data), out, as_json)
            return
        outcomes = api.run_grid(
            request, data, out, progress=not console.quiet, on_cell=lambda outcome: _report_cell(outcome, metrics)
        )
    except api.USER_ERRORS as exc:
        fail(exc.args[0] if exc.args else exc)
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


def _print_plan(planned, out: Path, as_json: bool) -> None:
    """One line per cell: its full configuration and where it would be written, or why its method could not be built."""
    from hashbench.config.profiles import PROFILES

    for cell in planned:
        described = cell.describe(out)
        if as_json:
            print(json.dumps(described, default=str))
            continue
        flat = " ".join(
            f"{k}={json.dumps(v, default=str, ensure_ascii=False)}"
            for k, v in described.items()
            if k not in ("cell", "directory", "unbuildable")
        )
        where = (
            f"unbuildable: the method could not be built: {described['unbuildable']}"
            if cell.unbuildable
            else described["directory"]
        )
        print(f"{described['cell']}: {flat} -> {where}")
    if not as_json:
        for name in sorted({cell.config.profile for cell in planned}):
            console.print(f"profile {name}: {PROFILES[name].description}")
        unbuildable = sum(bool(cell.unbuildable) for cell in planned)
        failing = f", {unbuildable} of them unbuildable: they would fail" if unbuildable else ""
        console.print(f"{len(planned)} cells planned{failing}; nothing was run (--dry-run).")


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
) -> None:
    """Images/s for loading, training and encoding on this device, peak memory, and the projected time of a full run."""
    from hashbench import api

    execution = _execution(precision, channels_last, compile_model)

    def measuring(backbone: str, size: int, where) -> None:
        console.print(f"[dim]measuring {method} on {backbone} at {size} px on {where}...[/dim]")

    try:
        data = api.load_dataset(dataset, progress=True)
        rates = api.bench(
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
        )
    except api.USER_ERRORS as exc:
        fail(exc.args[0] if exc.args else exc)
    table = Table(box=box.SIMPLE_HEAD, title=f"{rates[0].device}; {rates[0].execution['precision']}; images/s")
    for column in (
        "backbone",
        "px",
        "batch",
        "loading",
        "training",
        "encoding",
        "loader / training",
        "peak memory (MiB)",
        f"{slices:,} x {epochs} epochs",
    ):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    for rate in rates:
        memory = rate.peak_memory_mib.get("cuda_allocated_mib", rate.peak_memory_mib.get("process_rss_peak_so_far_mib"))
        table.add_row(
            rate.backbone,
            str(rate.image_size),
            str(rate.batch_size),
            f"{rate.loading:,.0f}",
            f"{rate.training:,.1f}",
            f"{rate.encoding:,.1f}",
            f"{rate.loader_margin:,.0f}x",
            f"{memory:,.0f}",
            f"{rate.projected_hours(slices, epochs):,.1f} h",
        )
    console.print(table)
    console.print(
        f"{data.name}{' (synthetic)' if data.manifest.get('synthetic') else ''}, stored at {data.image_size} px; loading: memory-mapped cache (warm page cache) "
        f"to augmented device tensors; training: {method}, {bits} bits, the engine's loop, second epoch timed; peak memory: "
        f"{'GPU allocated' if 'cuda_allocated_mib' in rates[0].peak_memory_mib else 'process resident so far'}; projection: training plus one encoding pass."
    )
    if as_json:
        from hashbench.store.atomic import write_text

        write_text(as_json, api.rates_json(rates, data, slices, epochs))
