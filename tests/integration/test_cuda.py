"""The CUDA paths, where torch sees a GPU (skipped elsewhere): training under mixed precision learns, the evaluator's
GPU ranking gives the compiled CPU kernel's counts, and encoding on the GPU gives the CPU's codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hashbench.api import RunRequest, run_grid
from hashbench.evaluation.evaluate import evaluate
from hashbench.evaluation.ranking import count_ranks_float, label_words
from hashbench.model.method import MethodContext
from hashbench.model.registry import create_method, method_class
from hashbench.training import engine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FP32_UNIT, BF16_UNIT = 2.0**-24, 2.0**-8  # unit roundoff: half the gap between 1 and the next number


@pytest.mark.parametrize("precision, scaler", [("auto", False), ("fp16", True)])
def test_training_under_mixed_precision_on_cuda_learns(default_phantom, tmp_path, chance, precision, scaler):
    """bf16 autocast (auto on a GPU with bf16), and fp16 with its gradient scaler: the quick profile's training learns
    on the GPU as on the CPU. Six epochs spread widely over seeds, so the mean of three seeds is held to the margin.

    Measured on an H200 (MAP@10, three seeds, chance 0.22): HashNet bf16 0.30/0.52/0.41, fp16 0.40/0.48/0.50;
    DAFH bf16 0.51/0.36/0.49, fp16 0.47/0.34/0.37; fp32 alike (HashNet mean 0.46, DAFH 0.41)."""
    floor = chance(default_phantom.dataset)["map@10"]
    run = RunRequest(
        methods=["hashnet", "dafh"],
        bits=[16],
        seeds=[0, 1, 2],
        epochs=6,
        profile="quick",
        device="cuda",
        execution=engine.Execution(precision=precision),
    )
    reached = {}
    for outcome in run_grid(run, default_phantom.dataset, tmp_path):
        assert outcome.status == "done", outcome.error
        record = json.loads((outcome.config.directory(tmp_path) / "metrics.json").read_text())
        assert record["device"].startswith("cuda") and record["execution"]["gradient_scaler"] is scaler
        assert record["execution"]["precision"] == ("float16" if scaler else "bfloat16")
        assert record["peak_memory_mib"]["cuda_allocated_mib"] > 0
        reached.setdefault(outcome.config.method, []).append(outcome.metrics["map@10"])
    for method, values in reached.items():
        assert np.mean(values) > floor + 0.10 and min(values) > floor + 0.04, (method, values, floor)


def heavy_ties(seed: int, n_queries: int, n_items: int, n_bits: int, n_classes: int):
    """Few bits for many items: most distances are shared, so the tie rule decides most of every ranking."""
    rng = np.random.default_rng(seed)
    return (
        rng.random((n_queries, n_bits)) < 0.5,
        rng.integers(0, n_classes, n_queries),
        rng.random((n_items, n_bits)) < 0.5,
        rng.integers(0, n_classes, n_items),
    )


@pytest.mark.parametrize("tie_break", ["random", "index"])
def test_the_gpu_ranking_gives_the_kernels_counts(tie_break):
    """Integer distances and a fixed tie key: the matmul path on the GPU must give exactly the kernel's counts, in
    chunks of a few queries, with each query's own patient left out."""
    query_bits, query_labels, db_bits, db_labels = heavy_ties(4, 300, 5000, 12, 6)
    rng = np.random.default_rng(5)
    groups = {"query_groups": rng.integers(-1, 40, 300), "database_groups": rng.integers(0, 40, 5000)}
    names = ("map@1", "map@10", "map@all", "p@100", "map@tie", "map@1-tie")
    kernel = evaluate(query_bits, query_labels, db_bits, db_labels, names, device="cpu", tie_break=tie_break, **groups)
    on_gpu = evaluate(
        query_bits,
        query_labels,
        db_bits,
        db_labels,
        names,
        device="cuda",
        tie_break=tie_break,
        memory_bytes=4 * 5000 * 64,
        **groups,
    )
    for name in ("distance_counts", "relevant_counts", "cutoffs", "hits", "top1", "ranked"):
        np.testing.assert_array_equal(getattr(on_gpu.counts, name), getattr(kernel.counts, name), err_msg=name)
    for name in names:  # sums of the same fractions in another order: a few float64 roundings apart
        np.testing.assert_allclose(on_gpu.per_query[name], kernel.per_query[name], rtol=0, atol=1e-12, err_msg=name)


def test_the_gpu_float_ranking_gives_the_cpus():
    """Cosine distances in float64: GPU and CPU differ by a few roundings (1e-16), far below the gaps between the
    distances of random features, so both rank alike."""
    rng = np.random.default_rng(6)
    queries, database = rng.normal(size=(200, 64)), rng.normal(size=(3000, 64))
    query_labels, database_labels = rng.integers(0, 5, 200), rng.integers(0, 5, 3000)
    words = [label_words(labels, 5) for labels in (query_labels, database_labels)]
    cpu, gpu = (
        count_ranks_float(queries, words[0], database, words[1], "cosine", (1, 10, 100), device=device, top=10)
        for device in ("cpu", "cuda")
    )
    for name in ("hits", "top1", "top_items"):
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name), err_msg=name)


def layer_stats(network: torch.nn.Module) -> tuple[int, int]:
    """(weighted layers, the largest fan-in): what a rounding bound of the network's output grows with."""
    layers = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    fan_in = max(m.weight[0].numel() for m in layers)
    return len(layers), fan_in


@pytest.mark.parametrize("method", ["dafh", "hashnet"])
def test_encoding_on_the_gpu_gives_the_cpus_codes(default_phantom, method):
    """The same network and images encoded on the CPU (fp32) and on the GPU, in fp32 and under bf16 autocast.

    Each layer's output carries at most fan-in x u of relative rounding error from its fp32 sums (u the unit
    roundoff), and under autocast u_bf16 more from rounding its inputs to bf16; over the network's L layers the
    outputs differ by at most L x (fan-in x u_fp32 + u_input) of their scale. The fp32 outputs must agree within
    that bound, and every bit whose CPU value lies beyond the bf16 bound must have the same sign."""
    dataset = default_phantom.dataset
    ids = np.arange(256)
    images = dataset.images
    torch.manual_seed(0)
    options, _ = method_class(method).resolve_options({})
    network, _ = create_method(method, MethodContext(32, 5, 1000, options, 0, 128)).build("test_efficientnet")
    layers, fan_in = layer_stats(network)
    cpu = engine.encode(network, engine.ImageSource(images, ids, torch.device("cpu")), ids, 128, 64)
    cuda = torch.device("cuda")
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # TF32 rounds inputs to 10 bits
    try:
        network.to(cuda)
        on_gpu = {
            precision: engine.encode(
                network, engine.ImageSource(images, ids, cuda), ids, 128, 64, engine.Execution(precision=precision)
            )
            for precision in ("fp32", "bf16")
        }
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
    scale = np.abs(cpu).max()
    fp32_bound = layers * fan_in * FP32_UNIT * scale
    bf16_bound = layers * (fan_in * FP32_UNIT + BF16_UNIT) * scale
    fp32_error, bf16_error = (float(np.abs(on_gpu[p] - cpu).max()) for p in ("fp32", "bf16"))
    print(
        f"\n{method}: {layers} layers, fan-in {fan_in}, output scale {scale:.3g}; GPU fp32 off by {fp32_error:.2e} "
        f"(bound {fp32_bound:.2e}), bf16 off by {bf16_error:.2e} (bound {bf16_bound:.2e})"
    )
    assert fp32_error <= fp32_bound
    clear = np.abs(cpu) > bf16_bound
    assert clear.mean() > 0.5  # the check covers most bits
    np.testing.assert_array_equal(np.sign(on_gpu["bf16"][clear]), np.sign(cpu[clear]))
