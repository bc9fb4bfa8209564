"""Throughput benchmarks, not in the default run: `pytest -m perf -s`.

Each compares hashbench with a plain baseline in the same run and reports the ratio,
so the numbers mean something on any machine.
"""

from __future__ import annotations

import os
import shutil
import time

import numba
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from hashbench.data.dicom import ImageOptions
from hashbench.datasets import phantom
from hashbench.datasets.tcia import ingest_tcia
from hashbench.evaluation.ranking import _popcount

pytestmark = pytest.mark.perf


def naive_png_conversion(files, out_dir, size=224):
    """What most projects do: one process, pydicom + PIL, one PNG per slice."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slices = 0
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        low, high = values.min(), values.max()
        grey = ((values - low) / max(high - low, 1e-9) * 255).astype(np.uint8)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            grey = 255 - grey
        Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR).save(out_dir / f"{i}.png")
        slices += 1
    return slices


def best_of(rounds, fn):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_ingest_throughput_against_naive_png_conversion(benchmark, tmp_path_factory):
    source = phantom.generate(tmp_path_factory.mktemp("bench") / "phantom", "default", seed=0)
    files = sorted(source.rglob("*.dcm"))
    scratch = tmp_path_factory.mktemp("scratch")

    def ours():
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        return ingest_tcia(source, "bench", scratch / "cache", ImageOptions(size=224))

    def naive():
        shutil.rmtree(scratch / "png", ignore_errors=True)
        return naive_png_conversion(files, scratch / "png")

    result = benchmark.pedantic(ours, rounds=3, iterations=1)
    ours_s = benchmark.stats.stats.min
    naive_s = best_of(3, naive)
    slices = len(result.dataset.index)
    ratio = naive_s / ours_s
    benchmark.extra_info.update(
        files=len(files), slices=slices, cores=os.cpu_count(), naive_s=naive_s, ours_s=ours_s, ratio=ratio
    )
    print(
        f"\ningest {len(files)} files -> {slices} slices on {os.cpu_count()} cores: hashbench {slices / ours_s:.0f} slices/s, naive pydicom+PIL PNG {slices / naive_s:.0f} slices/s, ratio {ratio:.2f}x"
    )
    assert ratio > 1.2


def test_engine_overhead_against_a_plain_pytorch_loop(benchmark, default_phantom, tmp_path):
    """One epoch of HashNet on the default phantom: the engine vs the same steps written by hand, without and with augmentation.

    The plain loop augments with the same on-device batch function, so both sides do the same work; the
    augmentation's own cost is reported against the plain loop without it.
    """
    import torch
    import torch.nn.functional as F

    from hashbench.data.sides import class_ids
    from hashbench.model.method import MethodContext, StepInfo
    from hashbench.model.registry import REGISTRY
    from hashbench.training import engine
    from hashbench.training.augment import PAPER_AUGMENTATION, augment

    dataset = default_phantom.dataset
    side = dataset.split("patient")
    ids = side.index.to_numpy()[(side == "database").to_numpy()]
    labels, names = class_ids(dataset.index.loc[ids, "label"])
    device = torch.device("cpu")
    hashnet = REGISTRY.get("hashnet")
    settings = hashnet.train.with_overrides(
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "lr_schedule": "constant"}
    )
    source = engine.ImageSource(dataset.images, ids, device)

    def fresh():
        engine.seed_everything(0)
        method = hashnet(MethodContext(16, len(names), len(ids), {}, 0))
        network, loss = method.build("test_efficientnet")
        return method, network, loss

    def ours(augmentation=None):
        method, network, loss = fresh()
        for name in ("checkpoint.pt", "log.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)
        data = engine.TrainData(ids, labels, len(names))
        checkpoint, log = tmp_path / "checkpoint.pt", tmp_path / "log.jsonl"
        engine.train(
            engine.TrainJob(method, network, loss, source, data, settings, 1, 64, 0, checkpoint, log, augmentation)
        )

    def plain(augmentation=None):
        method, network, loss = fresh()
        optimizer = engine.build_optimizer(network, settings)
        onehot = F.one_hot(torch.from_numpy(labels), len(names)).float()
        positions = list(method.batches(labels, settings.batch_size, np.random.default_rng([0, 0])))
        batches = [
            (torch.from_numpy(p), torch.from_numpy(np.ascontiguousarray(dataset.images[ids[p]]))) for p in positions
        ]
        generator = torch.Generator().manual_seed(1)
        network.train()
        for step, (index, images) in enumerate(batches):
            method.schedule(network, StepInfo(0, step, len(batches), 1))
            x = F.interpolate((images.float() / 255).unsqueeze(1), size=(64, 64), mode="bilinear", antialias=True)
            if augmentation is not None:
                x = augment(x, augmentation, generator)
            x = (x - engine.GREY_MEAN) / engine.GREY_STD
            total = sum(loss(network(x.expand(-1, 3, -1, -1)), onehot[index], index, None).values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()

    benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=1)
    plain()
    augmenting = []  # seconds spent inside augment() during the engine's augmented epochs: a share measured within one run

    def timed_augment(*args):
        start = time.perf_counter()
        result = augment(*args)
        augmenting[-1] += time.perf_counter() - start
        return result

    def ours_augmented():
        augmenting.append(0.0)
        ours(PAPER_AUGMENTATION)

    variants = {
        "ours": ours,
        "plain": plain,
        "ours augmented": ours_augmented,
        "plain augmented": lambda: plain(PAPER_AUGMENTATION),
    }
    times = {name: [] for name in variants}
    engine.augment = timed_augment
    try:
        for _ in range(5):  # interleaved, so a slow spell of the machine hits every variant alike
            for name, run in variants.items():
                times[name].append(best_of(1, run))
    finally:
        engine.augment = augment
    ours_s, plain_s, ours_augmented_s, plain_augmented_s = (min(times[name]) for name in variants)
    overhead, augmented_overhead = ours_s / plain_s - 1, ours_augmented_s / plain_augmented_s - 1
    augmentation_share = min(augmenting) / plain_s
    benchmark.extra_info.update(
        ours_s=ours_s,
        plain_s=plain_s,
        overhead=overhead,
        ours_augmented_s=ours_augmented_s,
        plain_augmented_s=plain_augmented_s,
        augmentation_share=augmentation_share,
    )
    print(
        f"\none HashNet epoch on the default phantom (test_efficientnet, 64 px, batch 32, CPU): engine {ours_s:.2f} s vs plain loop {plain_s:.2f} s, overhead {overhead:+.1%}; "
        f"with the paper's augmentation: engine {ours_augmented_s:.2f} s vs plain loop augmenting alike {plain_augmented_s:.2f} s, overhead {augmented_overhead:+.1%}; "
        f"augmenting takes {min(augmenting):.3f} s of the engine's epoch, {augmentation_share:.1%} of the plain loop's"
    )
    assert overhead < 0.10 and augmented_overhead < 0.10 and augmentation_share < 0.10


def per_query_argsort_loop(query_packed, query_labels, database_packed, database_labels, radius=2):
    """The DeepHash-pytorch style evaluator: per query, distances, one stable argsort, every stored metric from it.

    Written as a competent user would: numpy per query, the tie-aware forms by their closed forms per tie group (the
    same as hashbench's, vectorised over the groups), so the loop is as fast as a per-query sort allows. Returns
    {metric: per-query values} for the stored metrics, under the stable (database index) tie order.
    """
    n_items = len(database_packed)
    ranks = np.arange(1, n_items + 1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / ranks)])
    names = ("map@1", "map@1-tie", "map@10", "map@100", "map@all", "map@tie", "map@tie-best", "map@tie-worst")
    values = {name: np.zeros(len(query_packed)) for name in (*names, "p@10", f"p@r{radius}")}
    for q in range(len(query_packed)):
        distances = np.bitwise_count(query_packed[q] ^ database_packed).sum(axis=1)
        order = np.argsort(distances, kind="stable")
        relevant = database_labels[order] == query_labels[q]
        hits = np.cumsum(relevant)
        precision_sums = np.cumsum(hits / ranks * relevant)
        for k in (1, 10, 100, n_items):
            name = "map@all" if k == n_items else f"map@{k}"
            values[name][q] = precision_sums[k - 1] / hits[k - 1] if hits[k - 1] else 0.0
        values["p@10"][q] = hits[9] / 10
        inside = distances <= radius
        values[f"p@r{radius}"][q] = (database_labels[inside] == query_labels[q]).mean() if inside.any() else 0.0
        # tie groups from the sorted distances: n items, r relevant, after N items of which R relevant
        _, first, n = np.unique(distances[order], return_index=True, return_counts=True)
        r = np.add.reduceat(relevant, first)
        before_n, before_r = first, hits[first] - relevant[first]
        values["map@1-tie"][q] = r[0] / n[0]
        slope = np.divide(r - 1, n - 1, out=np.zeros(len(n)), where=n > 1)
        expected = n * slope + (before_r + 1 - slope * (1 + before_n)) * (harmonic[before_n + n] - harmonic[before_n])
        best = r + (before_r - before_n) * (harmonic[before_n + r] - harmonic[before_n])
        worst = r + (before_r - before_n - n + r) * (harmonic[before_n + n] - harmonic[before_n + n - r])
        found = hits[-1]
        values["map@tie"][q] = (r * expected / n).sum() / found if found else 0.0
        values["map@tie-best"][q] = best.sum() / found if found else 0.0
        values["map@tie-worst"][q] = worst.sum() / found if found else 0.0
    return values


@numba.njit(parallel=True)  # compiled on first call, outside the timing; no cache files beside the tests
def popcount_histogram_floor(query_words, query_labels, database_words_t, database_labels, n_bins, counts):
    """The least any evaluator does: per query, one popcount pass over the packed database and a histogram of
    (distance, relevant), counts[q, d] = (items at d, relevant items at d). Plain numba, parallel over queries."""
    n_items = database_words_t.shape[1]
    for q in numba.prange(query_words.shape[0]):
        keys = np.zeros(n_items, np.uint16)
        for w in range(database_words_t.shape[0]):
            word = query_words[q, w]
            for j in range(n_items):
                keys[j] += _popcount(word ^ database_words_t[w, j])
        label = query_labels[q]
        histogram = np.zeros(2 * n_bins, np.int64)
        for j in range(n_items):
            histogram[2 * keys[j] + (database_labels[j] == label)] += 1
        for d in range(n_bins):
            counts[q, d, 0] = histogram[2 * d] + histogram[2 * d + 1]
            counts[q, d, 1] = histogram[2 * d + 1]


def heavily_tied_codes(rng, n_queries, n_items, bits, distinct=1_000):
    """Codes drawn from ``distinct`` codes, as a trained model's cluster into buckets: about n_items / distinct items
    share each code, on top of the bits + 1 distances every code length allows."""
    pool = rng.integers(0, 256, (distinct, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n_queries)], pool[rng.integers(0, distinct, n_items)]


def test_evaluator_against_a_per_query_argsort_loop_and_a_popcount_floor(benchmark):
    """Q = 1,000 against N = 50,000 at 48 bits, heavily tied codes, every stored metric, against the per-query argsort
    loop and the floor (one popcount pass plus per-distance histograms), all from one run.

    Bounds, from the work per item. The floor does a popcount (vectorised) and a histogram increment. The evaluator's
    one pass does the popcount, the relevance test, the increment of its distance's running count and a store of that
    count (kept for a relevant item): about 1.4x the floor's time; summing each relevant item's precision in database
    order, a serial chain of additions over a tenth of the items here, brings its kernel to about 1.55x, and the rest
    (packing, label masks, the metrics from the counts: numpy, a few ms on one core while the other idles) to about
    1.8x on 2 cores. Asserted: 2x, the issue's bound (measured, best runs, 2 cores: 1.26-1.44x on an Intel Xeon,
    1.7-1.9x on an AMD EPYC). The loop sorts each query on one core, about 4.5 ms against about 66 us for the evaluator
    on one core: about 65x per core, over 100x on 2 (measured, the same runs: 121-138x on the Xeon in 8 runs).
    Asserted: 100x on a quiet machine. The evaluator takes every core and the loop one, so a process busy on one of
    the cores for the whole run slows the evaluator alone (measured so: 76x).
    """
    from hashbench.evaluation.evaluate import STORED_METRICS, evaluate_packed
    from hashbench.evaluation.ranking import packed_words

    rng = np.random.default_rng(0)
    n_queries, n_items, bits = 1_000, 50_000, 48
    query_packed, database_packed = heavily_tied_codes(rng, n_queries, n_items, bits)
    query_labels, database_labels = rng.integers(0, 10, n_queries), rng.integers(0, 10, n_items)

    def ours():  # index ties: the loop's stable argsort
        return evaluate_packed(
            query_packed,
            query_labels,
            database_packed,
            database_labels,
            bits,
            STORED_METRICS,
            device="cpu",
            tie_break="index",
        )

    query_words, database_words_t = packed_words(query_packed), np.ascontiguousarray(packed_words(database_packed).T)
    counts = np.zeros((n_queries, bits + 1, 2), np.int64)

    def floor():
        popcount_histogram_floor(query_words, query_labels, database_words_t, database_labels, bits + 1, counts)

    ours(), floor()  # compile (the evaluator's kernel is cached on disk after the first run)
    # The loop runs in chunks of queries, one before each round of the evaluator and of the floor, so the three are
    # timed over the same seconds and a slow spell of the machine hits all alike. The loop runs three times; each
    # chunk and the evaluator and floor count their best run (a spell of another process's work slows a run, never
    # speeds one up).
    passes, chunks = 3, np.array_split(np.arange(n_queries), 20)
    chunk_times, floor_times, loop_values = np.zeros((passes, len(chunks))), [], []

    def loop_chunk_and_floor():
        done = len(floor_times)
        chunk = chunks[done % len(chunks)]
        start = time.perf_counter()
        values = per_query_argsort_loop(query_packed[chunk], query_labels[chunk], database_packed, database_labels)
        chunk_times[done // len(chunks), done % len(chunks)] = time.perf_counter() - start
        if done < len(chunks):
            loop_values.append(values)
        floor_times.append(best_of(1, floor))

    result = benchmark.pedantic(ours, setup=loop_chunk_and_floor, rounds=passes * len(chunks), iterations=1)
    ours_s, floor_s, loop_s = benchmark.stats.stats.min, min(floor_times), float(chunk_times.min(axis=0).sum())
    expected = {name: np.concatenate([values[name] for values in loop_values]) for name in loop_values[0]}
    assert set(expected) == set(STORED_METRICS)
    for name in STORED_METRICS:
        np.testing.assert_allclose(result.per_query[name], expected[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(counts[..., 0], result.counts.distance_counts)  # the floor counts what we count
    np.testing.assert_array_equal(counts[..., 1], result.counts.relevant_counts)
    over_loop, over_floor = loop_s / ours_s, ours_s / floor_s
    benchmark.extra_info.update(
        loop_s=loop_s, ours_s=ours_s, floor_s=floor_s, over_loop=over_loop, over_floor=over_floor, cores=os.cpu_count()
    )
    print(
        f"\nevaluate Q={n_queries} x N={n_items} at {bits} bits, heavily tied (1,000 distinct codes), "
        f"{len(STORED_METRICS)} stored metrics on {os.cpu_count()} cores, best runs: hashbench {ours_s * 1e3:.0f} ms, "
        f"per-query argsort loop {loop_s:.2f} s ({over_loop:.0f}x faster), popcount + histogram floor "
        f"{floor_s * 1e3:.0f} ms (hashbench takes {over_floor:.2f}x the floor)"
    )
    assert over_floor <= 2, f"{over_floor:.2f}x the floor"
    assert over_loop >= 100, (
        f"{over_loop:.0f}x the loop: the evaluator runs on every core and the loop on one, so a process busy on a core "
        "slows the evaluator alone; rerun on a quiet machine"
    )


LARGE_EVALUATION = """
import resource, sys, time
import numpy as np
from hashbench.evaluation.evaluate import evaluate_packed
rng = np.random.default_rng(0)
q, n = 10_000, 1_000_000
query = rng.integers(0, 256, (q, 8), dtype=np.uint8)
database = rng.integers(0, 256, (n, 8), dtype=np.uint8)
start = time.perf_counter()
result = evaluate_packed(query, rng.integers(0, 100, q), database, rng.integers(0, 100, n), 64, ("map@1", "map@10", "map@1000", "map@all", "map@tie"), device="cpu")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"{seconds:.1f} {peak} " + " ".join(f"{v:.6f}" for v in result.metrics.values()))
"""


def test_evaluator_at_ten_thousand_by_a_million_in_bounded_memory():
    """Q = 10,000 against N = 1,000,000 at 64 bits: peak memory of the whole process under 4 GB."""
    import subprocess
    import sys

    output = subprocess.run(
        [sys.executable, "-c", LARGE_EVALUATION], capture_output=True, text=True, check=True
    ).stdout.split()
    seconds, peak = float(output[0]), int(output[1])
    print(
        f"\nevaluate Q=10,000 x N=1,000,000 at 64 bits, 5 metrics on {os.cpu_count()} cores: {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB; means {output[2:]}"
    )
    assert peak < 4 * 2**30
