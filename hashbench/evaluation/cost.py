"""Retrieval cost: what a code costs to store and to search, measured beside what it retrieves.

A hashing method exists to make retrieval cheap, and accuracy alone cannot rank methods whose search costs differ
(Cai, arXiv 1612.07545: counting search time, plain LSH ranked first of eleven methods). Every cell therefore records,
beside its metrics, its encoding rate, the bytes of one database item, and the latency of one query against its
database for each search backend present:

- ``popcount``: hashbench's exact linear scan (numpy popcount over 64-bit words, the k nearest found from the histogram
  of distances; ties by database position), always present: the baseline every ratio is taken to;
- ``faiss-flat``: faiss's exact scan ``IndexBinaryFlat``, when faiss is installed;
- ``faiss-hash`` and ``faiss-multihash``: faiss's hash tables ``IndexBinaryHash`` (one table on the first key bits) and
  ``IndexBinaryMultiHash`` (multi-index hashing, Norouzi et al., TPAMI 2014: one table per disjoint substring), which
  look only at the buckets within ``flips`` bit flips of the query's keys and so may miss neighbours: their recall@k
  against the exact ranking is recorded with them;
- ``torch``: the +/-1 matmul the evaluator ranks with on a GPU, where one is named;
- float references: ``float-scan`` (numpy, float32) and ``faiss-float-flat`` (faiss ``IndexFlatIP`` on normalised
  features for cosine, ``IndexFlatL2`` for Euclidean).

Recall@k of a backend, per query, is the share of the k places of its answer holding an item whose distance is at
most the exact k-th distance (k capped at the database size): ties at the k-th distance count as found, whichever of
them a backend returns, so every exact backend scores 1. Distances are recomputed from the codes, never read from
the backend. Latency is per query, one query at a time (what a user's search waits for), after warm-up queries, timed
with ``perf_counter_ns``; faiss runs on one thread (``omp_set_num_threads(1)``, restored after), and numpy's popcount is
single-threaded, so backends compare on equal terms. The median and the 95th percentile are kept.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from hashbench.evaluation.ranking import packed_words

K = 10  # recall@K and the K nearest every backend is asked for
TIMED_QUERIES = 200  # at most this many of a cell's queries are timed: well under a second on a phantom cell
WARM_UP_QUERIES = 5  # run untimed first: first-touch page faults, faiss's lazy allocations, CUDA kernels
FLIPS = 2  # bits flipped per hash key when probing buckets (faiss's nflip)
BUILT_IN = ("popcount", "float-scan")  # the exact scans that are always present: the leaderboard's search-ms
THREADS = 1  # faiss's OpenMP threads while timing; numpy's popcount is single-threaded


@dataclass
class Backend:
    """One way of finding the k nearest database items of a query."""

    name: str
    exact: bool
    index_bytes: int  # what the index holds in memory: the codes, plus tables for the hash indexes
    prepare: Callable[[np.ndarray], object]  # the queries as this backend takes them (untimed: done once)
    search: Callable[[object, int, int], np.ndarray]  # (prepared queries, row, k) -> ids, -1 where none was found
    parameters: dict = field(default_factory=dict)
    build_seconds: float = 0.0  # building the index from the packed codes


@dataclass
class BackendCost:
    """What one backend cost per query, and how much of the exact top k it found."""

    name: str
    exact: bool
    median_ms: float
    p95_ms: float
    index_bytes: int
    recall: float | None  # recall@k against the exact ranking; None where it has no meaning (float features)
    parameters: dict = field(default_factory=dict)
    build_seconds: float = 0.0


@contextmanager
def single_threaded(faiss) -> Iterator[None]:
    """faiss on :data:`THREADS` threads while timing, its setting restored after (faiss None: nothing to set)."""
    if faiss is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(THREADS)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def import_faiss():
    """faiss when installed (``pip install 'hashbench[faiss]'``), else None: the built-in scan runs either way."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


# --- binary codes ----------------------------------------------------------------------


def hamming_distances(query_words: np.ndarray, database_words_t: np.ndarray) -> np.ndarray:
    """(n,) Hamming distances of one query's 64-bit words to a database stored word-major ((words, n))."""
    distances = np.bitwise_count(database_words_t[0] ^ query_words[0]).astype(np.uint16)
    for w in range(1, len(database_words_t)):
        distances += np.bitwise_count(database_words_t[w] ^ query_words[w])
    return distances


def kth_distance(distances: np.ndarray, k: int) -> int:
    """The k-th smallest of integer distances (1 <= k <= their number), from their histogram: no sort."""
    return int(np.searchsorted(np.cumsum(np.bincount(distances)), k))


def nearest_by_histogram(distances: np.ndarray, k: int) -> np.ndarray:
    """The k nearest positions in (distance, position) order, from the histogram of integer distances: no sort of
    the database, one pass to count and one to collect."""
    k = min(k, len(distances))
    if k == 0:
        return np.zeros(0, np.int64)
    kth = kth_distance(distances, k)
    nearer = np.flatnonzero(distances < kth)
    found = np.concatenate([nearer, np.flatnonzero(distances == kth)[: k - len(nearer)]])
    return found[np.argsort(distances[found], kind="stable")]


def popcount_backend(database_packed: np.ndarray) -> Backend:
    """hashbench's exact linear scan: numpy popcount over 64-bit words, the k nearest from the distance histogram."""
    started = time.perf_counter()
    words_t = np.ascontiguousarray(packed_words(database_packed).T)

    def search(queries: np.ndarray, row: int, k: int) -> np.ndarray:
        return nearest_by_histogram(hamming_distances(queries[row], words_t), k)

    built = time.perf_counter() - started
    return Backend("popcount", True, words_t.nbytes, packed_words, search, build_seconds=built)


def hash_parameters(n_items: int, bits: int, flips: int = FLIPS) -> dict[str, dict[str, int]]:
    """Table shapes from the database size: a key of about log2(n) bits leaves about one item per bucket, and
    multi-index hashing cuts the code into about bits / log2(n) such substrings (Norouzi et al.'s rule); each probe
    visits the buckets within ``flips`` bit flips of the query's key (more: higher recall, slower)."""
    key_bits = int(min(bits, max(1, round(math.log2(max(n_items, 2))))))
    tables = int(min(bits, max(1, round(bits / key_bits))))
    table_bits = bits // tables
    return {
        "faiss-hash": {"key_bits": key_bits, "flips": min(flips, key_bits)},
        "faiss-multihash": {"tables": tables, "key_bits": table_bits, "flips": min(flips, table_bits)},
    }


def _faiss_backend(faiss, name: str, index, database: np.ndarray, parameters: dict) -> Backend:
    """``index`` filled with ``database`` (timed); its size is its codes' for the flat index, its serialised size
    (codes and tables) for a hash index."""
    started = time.perf_counter()
    index.add(database)
    built = time.perf_counter() - started
    exact = name == "faiss-flat"

    def search(queries: np.ndarray, row: int, k: int) -> np.ndarray:
        return index.search(queries[row : row + 1], k)[1][0]

    index_bytes = index.ntotal * index.code_size if exact else len(faiss.serialize_index_binary(index))
    return Backend(name, exact, int(index_bytes), np.ascontiguousarray, search, parameters, built)


def faiss_backends(faiss, database_packed: np.ndarray, bits: int, flips: int = FLIPS) -> list[Backend]:
    """faiss's exact binary scan and its two hash-table indexes over the packed codes (padding bits are zero on every
    code, so distances are exact at any code length)."""
    database = np.ascontiguousarray(database_packed)
    dimension = database.shape[1] * 8
    shapes = hash_parameters(len(database), bits, flips)
    single, multi = shapes["faiss-hash"], shapes["faiss-multihash"]
    hashed = faiss.IndexBinaryHash(dimension, single["key_bits"])
    hashed.nflip = single["flips"]
    multi_hashed = faiss.IndexBinaryMultiHash(dimension, multi["tables"], multi["key_bits"])
    multi_hashed.nflip = multi["flips"]
    return [
        _faiss_backend(faiss, "faiss-flat", faiss.IndexBinaryFlat(dimension), database, {}),
        _faiss_backend(faiss, "faiss-hash", hashed, database, single),
        _faiss_backend(faiss, "faiss-multihash", multi_hashed, database, multi),
    ]


def torch_backend(database_packed: np.ndarray, bits: int, device: str) -> Backend:
    """The evaluator's GPU ranking: +/-1 codes, distance = (bits - <query, item>) / 2 from one matmul, then top-k.
    float16 on CUDA (sums of +/-1 up to 2048 terms are exact in it), float32 elsewhere."""
    import torch

    where = torch.device(device)
    dtype = torch.float16 if where.type == "cuda" else torch.float32
    started = time.perf_counter()
    signs = _signs(database_packed, bits).to(where, dtype)
    built = time.perf_counter() - started

    def prepare(packed: np.ndarray):
        return _signs(packed, bits).to(where, dtype)

    def search(queries, row: int, k: int) -> np.ndarray:
        distances = (bits - signs @ queries[row]) / 2
        found = torch.topk(distances, min(k, len(signs)), largest=False, sorted=True).indices
        return found.cpu().numpy()  # to the host: the wait for the device is timed

    index_bytes = signs.numel() * signs.element_size()
    return Backend("torch", True, index_bytes, prepare, search, {"device": str(where)}, built)


def _signs(packed: np.ndarray, bits: int):
    import torch

    unpacked = np.unpackbits(np.asarray(packed, np.uint8), axis=1)[:, :bits]
    return torch.from_numpy(unpacked.astype(np.float32) * 2 - 1)


def binary_backends(
    database_packed: np.ndarray, bits: int, torch_device: str | None = None, flips: int = FLIPS
) -> tuple[list[Backend], dict[str, str]]:
    """Every backend present for packed codes, and why each absent one did not run."""
    backends, not_run = [popcount_backend(database_packed)], {}
    faiss = import_faiss()
    if faiss is None:
        for name in ("faiss-flat", "faiss-hash", "faiss-multihash"):
            not_run[name] = "faiss not installed (pip install 'hashbench[faiss]')"
    else:
        backends += faiss_backends(faiss, database_packed, bits, flips)
    if torch_device is None:
        not_run["torch"] = "no GPU: the torch matmul ranking runs on CUDA"
    else:
        backends.append(torch_backend(database_packed, bits, torch_device))
    return backends, not_run


def exact_kth_distances(queries_packed: np.ndarray, database_packed: np.ndarray, k: int) -> np.ndarray:
    """(q,) each query's exact k-th nearest distance (k capped at the database size): the bar of recall@k."""
    k = min(k, len(database_packed))
    query_words, words_t = packed_words(queries_packed), np.ascontiguousarray(packed_words(database_packed).T)
    return np.array([kth_distance(hamming_distances(q, words_t), k) for q in query_words], np.int64)


def recall_at(
    answers: list[np.ndarray], kth: np.ndarray, queries_packed: np.ndarray, database_packed: np.ndarray, k: int
) -> float:
    """Mean over queries of the share of the k places of an answer holding an item at most as far as the exact k-th
    nearest, ``kth`` (:func:`exact_kth_distances`; k capped at the database size): ties at the k-th distance count,
    whichever of them is returned; distances are recomputed from the codes, -1 (nothing found) never counts, and an
    item returned twice counts once."""
    k = min(k, len(database_packed))
    query_words, database_words = packed_words(queries_packed), packed_words(database_packed)
    shares = []
    for q, answer in enumerate(answers):
        found = np.asarray(answer)[:k]
        found = np.unique(found[found >= 0])
        distances = np.bitwise_count(database_words[found] ^ query_words[q]).sum(axis=1)
        shares.append((distances <= kth[q]).sum() / k)
    return float(np.mean(shares))


def time_queries(backend: Backend, queries: np.ndarray, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Milliseconds per query, each query alone, after :data:`WARM_UP_QUERIES` untimed ones; and each answer."""
    prepared = backend.prepare(queries)
    for row in range(min(WARM_UP_QUERIES, len(queries))):
        backend.search(prepared, row, k)
    times, answers = np.empty(len(queries)), []
    for row in range(len(queries)):
        start = time.perf_counter_ns()
        answer = backend.search(prepared, row, k)
        times[row] = time.perf_counter_ns() - start
        answers.append(answer)
    return times / 1e6, answers


def measure(
    backends: list[Backend], queries: np.ndarray, database_packed: np.ndarray | None, k: int = K
) -> list[BackendCost]:
    """Each backend's latency per query (faiss on :data:`THREADS` threads) and, for binary codes (``database_packed``
    given), its recall@k against the exact ranking."""
    costs = []
    kth = None if database_packed is None else exact_kth_distances(queries, database_packed, k)
    with single_threaded(import_faiss()):
        for backend in backends:
            times, answers = time_queries(backend, queries, k)
            recall = None if kth is None else recall_at(answers, kth, queries, database_packed, k)
            costs.append(
                BackendCost(
                    backend.name,
                    backend.exact,
                    round(float(np.median(times)), 6),  # to the nanosecond the clock resolves
                    round(float(np.percentile(times, 95)), 6),
                    backend.index_bytes,
                    recall,
                    backend.parameters,
                    round(backend.build_seconds, 6),
                )
            )
    return costs


# --- float features --------------------------------------------------------------------


def float_backends(database_features: np.ndarray, distance: str) -> tuple[list[Backend], dict]:
    """The exact scans of float features: numpy (always) and faiss (when installed), by cosine or Euclidean distance."""
    started = time.perf_counter()
    database = np.ascontiguousarray(database_features, np.float32)
    if distance == "cosine":
        database = _unit(database)
    squared_norms = (database**2).sum(axis=1)
    built = time.perf_counter() - started

    def prepare(features: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(features, np.float32)
        return _unit(features) if distance == "cosine" else features

    def search(queries: np.ndarray, row: int, k: int) -> np.ndarray:
        products = database @ queries[row]
        # cosine: 1 - product; Euclidean: |item|^2 - 2 product (the query's own norm orders nothing)
        scores = -products if distance == "cosine" else squared_norms - 2 * products
        k = min(k, len(scores))
        nearest = np.argpartition(scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        return nearest[np.argsort(scores[nearest], kind="stable")]

    backends = [Backend("float-scan", True, database.nbytes, prepare, search, build_seconds=built)]
    faiss = import_faiss()
    if faiss is None:
        return backends, {"faiss-float-flat": "faiss not installed (pip install 'hashbench[faiss]')"}
    started = time.perf_counter()
    index = faiss.IndexFlatIP(database.shape[1]) if distance == "cosine" else faiss.IndexFlatL2(database.shape[1])
    index.add(database)
    built = time.perf_counter() - started

    def faiss_search(queries: np.ndarray, row: int, k: int) -> np.ndarray:
        return index.search(queries[row : row + 1], k)[1][0]

    backends.append(Backend("faiss-float-flat", True, database.nbytes, prepare, faiss_search, build_seconds=built))
    return backends, {}


def _unit(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), np.float32(1e-12))


# --- a cell's cost ---------------------------------------------------------------------


@dataclass
class Encoding:
    """The encoding a cell does anyway (queries and database), timed: how fast new images become codes."""

    images: int
    seconds: float
    source: str  # "images" (the network on the stored images) or "cached backbone features" (the head alone)


def cell_cost(
    encoding: Encoding,
    query_packed: np.ndarray | None = None,
    database_packed: np.ndarray | None = None,
    bits: int = 0,
    query_features: np.ndarray | None = None,
    database_features: np.ndarray | None = None,
    float_distance: str = "",
    torch_device: str | None = None,
) -> dict:
    """The record's ``cost``: encoding rate, bytes per database item, and per backend the latency of one of the cell's
    own queries (at most :data:`TIMED_QUERIES`) against its database, with recall@:data:`K` for binary codes.

    Binary codes: ``query_packed``, ``database_packed`` and ``bits``; a float reference: its features and
    ``float_distance``. ``torch_device``: also time the torch ranking there (a CUDA device)."""
    if float_distance:
        backends, not_run = float_backends(database_features, float_distance)
        not_run.update({name: "float features: no binary code to hash" for name in ("faiss-hash", "faiss-multihash")})
        queries, database, bytes_per_item = query_features, None, 4 * database_features.shape[1]
        n_items, code = len(database_features), {"float_dims": int(database_features.shape[1])}
    else:
        backends, not_run = binary_backends(database_packed, bits, torch_device)
        queries, database, bytes_per_item = query_packed, database_packed, database_packed.shape[1]
        n_items, code = len(database_packed), {"bits": bits}
    timed = queries[:TIMED_QUERIES]
    if len(timed) == 0 or n_items == 0:
        not_run = {backend.name: "no queries or no database to time" for backend in backends} | not_run
        backends = []
    costs = measure(backends, timed, database) if backends else []
    return {
        "encode_images_per_s": encoding.images / encoding.seconds if encoding.seconds > 0 else None,
        "encoded_images": encoding.images,
        "encode_seconds": round(encoding.seconds, 4),
        "encoded_from": encoding.source,
        **code,
        "bytes_per_item": int(bytes_per_item),
        "database_items": int(n_items),
        "k": K,
        "queries_timed": len(timed) if backends else 0,
        "warm_up_queries": min(WARM_UP_QUERIES, len(timed)) if backends else 0,
        "threads": THREADS,
        "cpu_count": os.cpu_count(),
        "search": {cost.name: as_record(cost) for cost in costs},
        "not_run": not_run,
    }


def as_record(cost: BackendCost) -> dict:
    """A backend's cost as records and JSON hold it: its recall named with its k."""
    entry = asdict(cost)
    del entry["name"]
    entry[f"recall@{K}"] = entry.pop("recall")
    return entry


# --- the leaderboard's columns ---------------------------------------------------------


@dataclass(frozen=True)
class CostColumn:
    """A leaderboard column read from a cell's recorded cost, not computed from its ranking: ``key`` of the first of
    ``backends`` the cell timed (no backends: a key of the cost itself)."""

    help: str
    key: str
    digits: str  # how a mean is formatted: ".3g", ",.0f", ...
    backends: tuple[str, ...] = ()

    def value(self, cost: dict) -> float | None:
        if not self.backends:
            return cost.get(self.key)
        searched = cost.get("search") or {}
        timed = next((searched[name] for name in self.backends if name in searched), None)
        return timed.get(self.key) if isinstance(timed, dict) else None


ONE_THREAD = "one query at a time, one thread"
COST_COLUMNS: dict[str, CostColumn] = {
    "search-ms": CostColumn(
        f"median ms per query, exact linear scan by hashbench's popcount ranker (float references: its float scan), "
        f"{ONE_THREAD}",
        "median_ms",
        ".3g",
        BUILT_IN,
    ),
    "search-ms-p95": CostColumn("95th percentile of ms per query, the same scan", "p95_ms", ".3g", BUILT_IN),
    "search-ms-flat": CostColumn(
        f"median ms per query, faiss IndexBinaryFlat (exact; float references: IndexFlat), {ONE_THREAD}",
        "median_ms",
        ".3g",
        ("faiss-flat", "faiss-float-flat"),
    ),
    "search-ms-hash": CostColumn(
        f"median ms per query, faiss IndexBinaryHash (one hash table, approximate), {ONE_THREAD}",
        "median_ms",
        ".3g",
        ("faiss-hash",),
    ),
    "search-ms-multihash": CostColumn(
        f"median ms per query, faiss IndexBinaryMultiHash (multi-index hashing, approximate), {ONE_THREAD}",
        "median_ms",
        ".3g",
        ("faiss-multihash",),
    ),
    f"recall@{K}-hash": CostColumn(
        f"share of the exact top {K} that faiss IndexBinaryHash finds (ties at the {K}th distance count)",
        f"recall@{K}",
        ".3f",
        ("faiss-hash",),
    ),
    f"recall@{K}-multihash": CostColumn(
        f"share of the exact top {K} that faiss IndexBinaryMultiHash finds (ties at the {K}th distance count)",
        f"recall@{K}",
        ".3f",
        ("faiss-multihash",),
    ),
    "bytes": CostColumn(
        "bytes per database item: the packed code (float references: 4 x feature dimensions)", "bytes_per_item", ",.0f"
    ),
    "encode-ips": CostColumn(
        "images encoded per second (queries and database, as the cell encoded them)", "encode_images_per_s", ",.0f"
    ),
}


def cost_value(name: str, cost: dict | None) -> tuple[float | None, str]:
    """A cost column's value in a cell's recorded cost, or None and why not: a cell from before costs were recorded,
    or a backend that did not run there (faiss missing, a float reference with no code to hash)."""
    if not isinstance(cost, dict):
        return None, "not measured"
    column = COST_COLUMNS[name]
    value = column.value(cost)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), ""
    reasons = cost.get("not_run") or {}
    reason = next((reasons[b] for b in column.backends if b in reasons), "")
    return None, f"not run: {reason}" if reason else "not measured"
