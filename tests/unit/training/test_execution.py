"""The device paths on a CPU: fp16 autocast with a gradient scaler (the path of GPUs without bf16), bf16
autocast (the default on CUDA), channels-last memory, torch.compile: each trains what fp32 trains."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from hashbench.cli import app
from hashbench.data.sides import class_ids
from hashbench.model.method import MethodContext
from hashbench.model.registry import REGISTRY
from hashbench.training import engine

runner = CliRunner()


def train_dpsh(dataset, tmp_path, execution: engine.Execution, epochs: int = 2) -> tuple[list[dict], dict]:
    """DPSH on the tiny phantom's first 128 slices through the engine; the epoch log and the checkpoint."""
    ids = dataset.usable().index.to_numpy()[:SLICES]
    labels, names = class_ids(dataset.index.loc[ids, "label"])
    dpsh = REGISTRY.get("dpsh")
    options, _ = dpsh.resolve_options({})
    engine.seed_everything(0)
    method = dpsh(MethodContext(16, len(names), len(ids), options, 0, 32))
    network, loss = method.build("test_efficientnet")
    settings = dpsh.train.with_overrides(
        {"optimizer": "adam", "lr": 1e-3, "batch_size": BATCH, "lr_schedule": "constant"}, "dpsh"
    )
    checkpoint, log = tmp_path / f"{execution.precision}.pt", tmp_path / f"{execution.precision}.jsonl"
    source = engine.ImageSource(dataset.images, ids, torch.device("cpu"))
    data = engine.TrainData(ids, labels, len(names))
    engine.train(
        engine.TrainJob(
            method, network, loss, source, data, settings, epochs, 32, 0, checkpoint, log, execution=execution
        )
    )
    return [json.loads(line) for line in log.read_text().splitlines()], torch.load(checkpoint, weights_only=True)


@pytest.fixture(scope="module")
def fp32(tiny_phantom, tmp_path_factory):
    return train_dpsh(tiny_phantom.dataset, tmp_path_factory.mktemp("fp32"), engine.Execution("fp32"))[0]


# Significand bits of each autocast format (the implicit bit included): unit roundoff u = 2^-p.
SIGNIFICAND_BITS = {"fp16": 11, "bf16": 8}
SLICES, BATCH = 128, 32  # train_dpsh's data and batch: 4 optimiser steps an epoch


def drift_bound(precision: str, epoch: int) -> float:
    """How far an epoch's mean loss term may drift from fp32's, relative, after the steps taken so far.

    Each optimiser step rounds the operands of its forward pass to the format once and those of its
    backward pass once more, each a relative error of at most u = 2^-p; to first order, and in the worst
    case, these add up over the steps taken: 2 * steps * u. The bound depends on the format alone, so it
    holds whether a CPU emulates bf16 or has it natively (AMD EPYC with avx512_bf16), and on GPUs.
    """
    steps = (epoch + 1) * -(-SLICES // BATCH)
    return 2 * steps * 2.0 ** -SIGNIFICAND_BITS[precision]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_what_fp32_trains(tiny_phantom, tmp_path, fp32, precision):
    log, checkpoint = train_dpsh(tiny_phantom.dataset, tmp_path, engine.Execution(precision))
    for epoch, (full, mixed) in enumerate(zip(fp32, log, strict=True)):
        bound = drift_bound(precision, epoch)  # fp16: 0.39 % then 0.78 %; bf16: 3.1 % then 6.3 %
        for term in ("likelihood", "quantization"):
            assert mixed[term] == pytest.approx(full[term], rel=bound), (term, epoch)
        assert mixed["likelihood"] != full["likelihood"]  # autocast did run in half precision
    scaler = checkpoint["scaler"]
    if precision == "fp16":  # the scaler ran, and its state is what a resumed cell continues from
        assert scaler["scale"] > 0 and scaler["_growth_tracker"] > 0
    else:
        assert scaler == {}


def test_channels_last_and_compile_compute_what_the_plain_path_computes(tiny_phantom, tmp_path, fp32):
    for execution in (engine.Execution("fp32", channels_last=True), engine.Execution("fp32", compile="eager")):
        log, _ = train_dpsh(tiny_phantom.dataset, tmp_path, execution)
        for plain, other in zip(fp32, log, strict=True):
            assert other["likelihood"] == pytest.approx(plain["likelihood"], rel=1e-4), execution


def test_the_record_says_how_the_cell_ran_and_a_bad_precision_exits_2(tiny_phantom, tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            "--methods",
            "lsh",
            "--bits",
            "8",
            "--dataset",
            "phantom-tiny-seed0",
            "--out",
            str(tmp_path),
            "--precision",
            "fp16",
            "--channels-last",
        ],
    )
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(path.read_text()) for path in tmp_path.rglob("metrics.json")]
    assert record["execution"] == {
        "precision": "float16",
        "gradient_scaler": True,
        "channels_last": True,
        "compile": None,
    }
    assert record["processes"] == 1
    bad = runner.invoke(app, ["run", "--methods", "lsh", "--dataset", "phantom-tiny-seed0", "--precision", "fp8"])
    assert bad.exit_code == 2 and "valid: auto, fp32, bf16, fp16" in bad.output and "Traceback" not in bad.output


def test_auto_precision_is_fp32_on_a_cpu():
    execution = engine.Execution()
    assert execution.dtype(torch.device("cpu")) is None and not execution.nhwc(torch.device("cpu"))
