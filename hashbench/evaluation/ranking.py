"""Hamming ranking without sorting: the per-query counts every metric is computed from.

A ranking by ascending Hamming distance, ties broken by database index, is fully
described for retrieval metrics by two things per query (the evaluator chooses the tie
order by permuting the database rows beforehand, see :func:`tie_order`):

- the histograms over distance: ``n_d`` items and ``r_d`` relevant items at distance d
  (enough for the tie-aware metrics, their bounds, radius precision and PR curves);
- for a few rank cutoffs k, the relevant items ranked within k and the sum of their
  precisions (enough for MAP@k, P@k and mAP@all under the stable order).

A query may leave database items out of its ranking (its own patient's slices, say): each
side carries a group id per row, and an item of the query's group (ids >= 0) is neither
counted nor ranked, so every count is that of the ranking without it.

Both come from at most two passes over the database per query and no sort: the rank of
item j at distance d is ``(items nearer than d) + (items at d with a lower index) + 1``,
and the second term is a running counter per distance (recorded for the relevant items
as the first pass goes, where the whole database is one block, so one pass suffices). On
the CPU this is a compiled (numba) kernel over packed 64-bit words with popcount,
parallel over queries, holding no query x database matrix at all; the database is
walked in blocks sized so that the scratch of all threads stays within ``memory_bytes``.
Where codes and labels are one word each (up to 64 bits, up to 64 classes) and the query
leaves nothing out, the one pass takes each item's distance and relevance straight from
the words as it counts it; otherwise it counts keys (2 * distance + relevant) filled
first. The one pass does, per item, one popcount, one increment of its distance's count
and one store of that count (kept for a relevant item): measured at 1,000 x 50,000, 48
bits and ten classes, 1.4x the time of a popcount pass and a histogram alone, 1.55x with
the relevant items' precisions summed in database order. On a GPU the same counts come
from a +/-1 matmul and one sort of unique (distance, index) keys per chunk of queries,
the chunk sized by ``memory_bytes``. Both backends give the same numbers (tests hold them
to 1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from hashbench.training.device import use_numba_threads

DEFAULT_MEMORY_BYTES = 1 << 30  # scratch: CPU database blocks over all threads; GPU query chunks
CPU_BYTES_PER_ITEM = 12  # per database item in a block, per thread: key, relevance flag, packed rank
GPU_BYTES_PER_PAIR = (
    64  # per (query, item): int64 key, order and hit count, float64 precision and its sum, float32 product, relevance
)


@dataclass
class RankCounts:
    """Per-query sufficient statistics of the stable Hamming ranking."""

    distance_counts: np.ndarray  # (q, bits + 1) items at each distance
    relevant_counts: np.ndarray  # (q, bits + 1) relevant items at each distance
    cutoffs: np.ndarray  # (m,) ascending rank cutoffs, each at most the database size
    hits: np.ndarray  # (q, m) relevant items ranked within each cutoff
    precision_sums: np.ndarray  # (q, m) sum over those items of (relevant up to its rank) / rank
    top1: np.ndarray  # (q,) database index of the first-ranked item (-1 for an empty database)
    top_items: (
        np.ndarray
    )  # (q, t) database indices of the first t ranked items, -1 past the ranking (t = 0: none asked)
    # what the evaluator adds when a metric reads the first t items (graded relevance, majority votes)
    top_labels: np.ndarray | None = (
        None  # (q, t, classes) bool: the label rows of the first t items (none past the ranking)
    )
    query_classes: np.ndarray | None = None  # (q, classes) bool: each query's labels
    top_grades: np.ndarray | None = None  # (q, t) relevance grade of each of the first t items, 0 past the ranking
    ideal_grades: np.ndarray | None = None  # (q, t) the t best grades the query's ranking holds, descending

    # Read by several metrics of one evaluation, so each is computed once; the histograms are final when the
    # counting pass returns.
    @cached_property
    def ranked(self) -> np.ndarray:
        """(q,) each query's ranking length: the database less the items the query leaves out."""
        return self.distance_counts.sum(axis=1)

    @cached_property
    def n_database(self) -> int:
        """The largest ranking's length: the database size, or less when every query leaves items out."""
        return int(self.ranked.max()) if len(self.ranked) else 0

    @cached_property
    def items_before(self) -> np.ndarray:
        """(q, bits + 1) the items ranked before each distance group."""
        return np.cumsum(self.distance_counts, axis=1) - self.distance_counts

    @cached_property
    def relevant_before(self) -> np.ndarray:
        """(q, bits + 1) the relevant items ranked before each distance group."""
        return np.cumsum(self.relevant_counts, axis=1) - self.relevant_counts

    def at(self, k: int) -> int:
        """Column of cutoff ``min(k, n_database)``."""
        return int(np.searchsorted(self.cutoffs, min(k, self.n_database)))


def code_words(bits: np.ndarray) -> np.ndarray:
    """Boolean (n, b) codes as (n, ceil(b / 64)) uint64 words; padding bits are zero."""
    packed = np.packbits(np.asarray(bits, dtype=bool), axis=1)
    return packed_words(packed)


def packed_words(packed: np.ndarray) -> np.ndarray:
    """np.packbits rows (uint8) as uint64 words, zero-padded to whole words."""
    n, width = packed.shape
    words = max(1, -(-width // 8))
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :width] = packed
    return padded.view(np.uint64)


# the one-word mask of each class id below 64, bit 7 - c % 8 of byte c // 8 as np.packbits lays it out: labels become
# masks by one look-up (measured: a fifth of the time of shifting each label into place)
CLASS_WORDS = np.uint64(1) << (8 * (np.arange(64) // 8) + 7 - np.arange(64) % 8).astype(np.uint64)


def label_words(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Labels as uint64 bit masks so 'shares a label' is a bitwise AND: class ids (1-D) or multi-hot rows (2-D)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        n_classes = int(labels.max()) + 1 if n_classes is None and len(labels) else (n_classes or 1)
        if n_classes <= 64:
            return CLASS_WORDS[labels][:, None]
        hot = np.zeros((len(labels), n_classes), dtype=bool)
        hot[np.arange(len(labels)), labels] = True
        labels = hot
    return packed_words(np.packbits(labels.astype(bool), axis=1))


def _splitmix64_mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 arrays (multiplications wrap modulo 2**64 by design)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=8)
def tie_order(n_items: int, seed: int) -> np.ndarray:
    """Database positions in the seeded tie order: a random permutation fixed by a hash, not by numpy's RNG,
    so it is the same on every machine and every numpy version.

    key(position) = splitmix64_mix(seed * 2**32 + position), all arithmetic modulo 2**64, where
    splitmix64_mix(x): z = x + 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31). The order is the positions sorted by key
    (a stable argsort: equal keys, practically never, fall back to position). Ranking the database permuted by
    this order with ties by index breaks every tie by key.
    """
    positions = np.arange(n_items, dtype=np.uint64) + np.uint64(int(seed) * 2**32 % 2**64)
    order = np.argsort(_splitmix64_mix(positions), kind="stable")
    order.flags.writeable = False  # cached: shared by every evaluation of a database this size
    return order


@intrinsic
def _popcount(typingctx, word):
    """LLVM's ctpop: one POPCNT instruction on x86-64."""
    if not isinstance(word, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        function = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(function, [args[0]])

    return types.uint64(types.uint64), codegen


@numba.njit(inline="always")
def _fill_keys(
    q,
    start,
    size,
    query_codes,
    query_labels,
    database_codes_t,
    database_labels_t,
    query_groups,
    database_groups,
    left_out,
    keys,
    shares,
):
    """keys[:size] = 2 * distance + relevant for database items start..start+size (loops the compiler vectorises);
    an item of the query's group gets the key past every distance, which no count reads."""
    keys[:size] = 0
    shares[:size] = 0
    for w in range(database_codes_t.shape[0]):
        word = query_codes[q, w]
        column = database_codes_t[w, start : start + size]
        for j in range(size):
            keys[j] += _popcount(word ^ column[j])
    for w in range(database_labels_t.shape[0]):
        word = query_labels[q, w]
        column = database_labels_t[w, start : start + size]
        for j in range(size):
            shares[j] |= (word & column[j]) != 0
    for j in range(size):
        keys[j] = 2 * keys[j] + shares[j]
    if query_groups.shape[0] and query_groups[q] >= 0:
        group = query_groups[q]
        for j in range(size):
            if database_groups[start + j] == group:
                keys[j] = left_out


# The one-pass kernel packs, per distance d, (d << DISTANCE_SHIFT) + (items << COUNT_BITS) + relevant items into one
# int64: one read-modify-write per item, an increment of ONE_ITEM + relevant (no shift), and the value recorded for a
# relevant item says its distance too.
COUNT_BITS = 26  # items of one ranking: fewer than 2**26 (67 million) for the one-pass kernel
DISTANCE_SHIFT = 2 * COUNT_BITS  # distances up to 2047 fit above the two counts: codes up to 2046 bits
COUNT_MASK = (1 << COUNT_BITS) - 1
COUNTS_MASK = (1 << DISTANCE_SHIFT) - 1
ONE_ITEM = 1 << COUNT_BITS


@numba.njit(inline="always")
def _count_words(word, label, codes, labels, seen, recorded):
    """The one pass over one-word codes and labels, for a query that leaves nothing out: each item's distance and
    relevance are computed where the item is counted, so no keys array is written and read back (measured at 50,000
    items: a seventh less time than filling keys and counting them). Returns how many items it recorded (the
    relevant ones)."""
    written = 0
    for j in range(codes.shape[0]):
        distance = _popcount(word ^ codes[j])
        relevant = np.int64((label & labels[j]) != 0)
        packed = seen[distance] + ONE_ITEM + relevant
        seen[distance] = packed
        recorded[written] = packed  # kept only when relevant: the slot is reused otherwise
        written += relevant
    return written


@numba.njit(inline="always")
def _count_keys(keys, seen, recorded):
    """The one pass over keys from :func:`_fill_keys` (codes or labels of several words, items left out)."""
    written = 0
    for j in range(keys.shape[0]):
        key = np.int64(keys[j])
        relevant = key & 1
        packed = seen[key >> 1] + ONE_ITEM + relevant
        seen[key >> 1] = packed
        recorded[written] = packed  # kept only when relevant: the slot is reused otherwise
        written += relevant
    return written


@numba.njit(inline="always")
def _one_pass_counts(q, seen, recorded, written, cutoffs, distance_counts, relevant_counts, hits, precision_sums):
    """Every count of a query but its top-1 from one pass (:func:`_count_words` or :func:`_count_keys`); returns the
    nearest distance (-1 when the query ranks nothing), whose first item is the top-1.

    The rank of item j at distance d is (items nearer than d) + (items at d before j) + 1, and only the second term
    depends on j: the pass keeps it per distance as it goes and records it, with the hits so far, for the relevant
    items. Once the histograms are whole, each recorded item's rank is its count plus the items nearer than its
    distance; precisions are summed in database order, so every value is the two-pass kernel's, bit for bit, for one
    store per item fewer.
    """
    n_bins = distance_counts.shape[1]
    before = np.zeros(n_bins + 1, np.int64)  # (items nearer than each distance << COUNT_BITS) + relevant among them
    nearer, nearest = np.int64(0), -1
    for d in range(n_bins):
        before[d] = nearer
        at = seen[d] & COUNTS_MASK
        distance_counts[q, d] = at >> COUNT_BITS
        relevant_counts[q, d] = at & COUNT_MASK
        if nearest < 0 and at >> COUNT_BITS:
            nearest = d
        nearer += at
    n_cutoffs = cutoffs.shape[0]
    if n_cutoffs == 0:
        return nearest
    hit_count = np.zeros(n_cutoffs, np.int64)
    precision_sum = np.zeros(n_cutoffs, np.float64)
    # the largest cutoff takes nearly every item: its sums stay in registers, the others' in memory, reached only
    # by the few items ranked within the second largest
    last, last_hits, last_sum = cutoffs[n_cutoffs - 1], 0, 0.0
    second = cutoffs[n_cutoffs - 2] if n_cutoffs > 1 else 0
    for i in range(written):
        packed = (recorded[i] & COUNTS_MASK) + before[np.uint64(recorded[i]) >> DISTANCE_SHIFT]
        rank = packed >> COUNT_BITS
        precision = (packed & COUNT_MASK) / rank
        if rank <= last:
            last_hits += 1
            last_sum += precision
            if rank <= second:
                m = n_cutoffs - 2  # cutoffs ascend: stop at the first one the rank exceeds
                while m >= 0 and rank <= cutoffs[m]:
                    hit_count[m] += 1
                    precision_sum[m] += precision
                    m -= 1
    hit_count[n_cutoffs - 1], precision_sum[n_cutoffs - 1] = last_hits, last_sum
    hits[q, :] = hit_count
    precision_sums[q, :] = precision_sum
    return nearest


@numba.njit(parallel=True, cache=True, nogil=True)
def _count_kernel(
    query_codes,
    query_labels,
    database_codes_t,
    database_labels_t,
    query_groups,
    database_groups,
    key_prototype,
    block,
    cutoffs,
    distance_counts,
    relevant_counts,
    hits,
    precision_sums,
    top1,
    top_items,
    stable,
):
    """Per query and database block: keys, their histogram; then, with the whole histogram known, the stable pass.

    With one block the keys are kept between the passes; with several they are recomputed, so the scratch
    memory is ``block`` items per thread whatever the database size. With one block and no first items to record,
    one pass does both (:func:`_one_pass_counts`), from the codes themselves where they and the labels are one word
    each and the query leaves nothing out (:func:`_count_words`), else from keys.
    """
    n_items = database_codes_t.shape[1]
    n_bins = distance_counts.shape[1]
    left_out = 2 * n_bins  # the key of an item the query leaves out: one bin past every distance, which no count reads
    n_cutoffs = cutoffs.shape[0]
    n_top = top_items.shape[1]
    n_blocks = max(1, -(-n_items // block))
    one_pass = stable and n_blocks == 1 and n_top == 0 and 0 < n_items <= COUNT_MASK and n_bins < 1 << 11
    one_word = database_codes_t.shape[0] == 1 and database_labels_t.shape[0] == 1
    for q in numba.prange(query_codes.shape[0]):
        if one_pass:
            seen = (np.arange(n_bins + 1) << DISTANCE_SHIFT).astype(np.int64)  # the last bin takes the items left out
            recorded = np.empty(n_items, np.int64)
            if one_word and not (query_groups.shape[0] and query_groups[q] >= 0):
                word, codes = query_codes[q, 0], database_codes_t[0]
                written = _count_words(word, query_labels[q, 0], codes, database_labels_t[0], seen, recorded)
                nearest = _one_pass_counts(
                    q, seen, recorded, written, cutoffs, distance_counts, relevant_counts, hits, precision_sums
                )
                for j in range(n_items if nearest >= 0 else 0):
                    if np.int64(_popcount(word ^ codes[j])) == nearest:
                        top1[q] = j
                        break
                continue
            keys, shares = np.empty(n_items, key_prototype.dtype), np.empty(n_items, key_prototype.dtype)
            _fill_keys(
                q,
                0,
                n_items,
                query_codes,
                query_labels,
                database_codes_t,
                database_labels_t,
                query_groups,
                database_groups,
                left_out,
                keys,
                shares,
            )
            written = _count_keys(keys, seen, recorded)
            nearest = _one_pass_counts(
                q, seen, recorded, written, cutoffs, distance_counts, relevant_counts, hits, precision_sums
            )
            for j in range(n_items if nearest >= 0 else 0):
                if keys[j] >> 1 == nearest:
                    top1[q] = j
                    break
            continue
        keys = np.empty(min(block, n_items), key_prototype.dtype)
        shares = np.empty(min(block, n_items), key_prototype.dtype)
        # four interleaved histograms break the store-to-load chain of repeated keys
        histogram = np.zeros((4, 2 * n_bins + 1), np.int64)
        for start in range(0, n_items, block):
            size = min(block, n_items - start)
            _fill_keys(
                q,
                start,
                size,
                query_codes,
                query_labels,
                database_codes_t,
                database_labels_t,
                query_groups,
                database_groups,
                left_out,
                keys,
                shares,
            )
            whole = size // 4 * 4
            for j in range(0, whole, 4):
                histogram[0, keys[j]] += 1
                histogram[1, keys[j + 1]] += 1
                histogram[2, keys[j + 2]] += 1
                histogram[3, keys[j + 3]] += 1
            for j in range(whole, size):
                histogram[0, keys[j]] += 1
        for d in range(n_bins):
            relevant = (
                histogram[0, 2 * d + 1] + histogram[1, 2 * d + 1] + histogram[2, 2 * d + 1] + histogram[3, 2 * d + 1]
            )
            relevant_counts[q, d] = relevant
            distance_counts[q, d] = (
                relevant + histogram[0, 2 * d] + histogram[1, 2 * d] + histogram[2, 2 * d] + histogram[3, 2 * d]
            )
        if not stable or n_items == 0:
            continue
        # Per distance, one int64 packs (hits << 32) + rank of the latest item seen there, starting from the
        # items nearer than d: one read-modify-write per item, and no branch on relevance
        latest = np.zeros(n_bins + 1, np.int64)
        latest[n_bins] = (
            1 << 31
        )  # the items left out: counted from 2**31, past every cutoff and every top place; never relevant
        nearer, nearer_relevant, nearest = 0, 0, -1
        for d in range(n_bins):
            if nearest < 0 and distance_counts[q, d] > 0:
                nearest = d
            latest[d] = nearer + (nearer_relevant << 32)
            nearer += distance_counts[q, d]
            nearer_relevant += relevant_counts[q, d]
        relevant_items = np.empty(min(block, n_items), np.int64)
        hit_count = np.zeros(n_cutoffs, np.int64)
        precision_sum = np.zeros(n_cutoffs, np.float64)
        for start in range(0, n_items, block):
            size = min(block, n_items - start)
            if n_blocks > 1:
                _fill_keys(
                    q,
                    start,
                    size,
                    query_codes,
                    query_labels,
                    database_codes_t,
                    database_labels_t,
                    query_groups,
                    database_groups,
                    left_out,
                    keys,
                    shares,
                )
            if top1[q] < 0:
                for j in range(size):
                    if keys[j] >> 1 == nearest:
                        top1[q] = start + j
                        break
            written = 0
            if n_top == 0:  # the usual pass, kept free of the branch that records the first items
                for j in range(size):
                    key = np.int64(keys[j])
                    relevant = key & 1
                    packed = latest[key >> 1] + 1 + (relevant << 32)
                    latest[key >> 1] = packed
                    relevant_items[written] = packed  # kept only when relevant: the slot is reused otherwise
                    written += relevant
            else:
                for j in range(size):
                    key = np.int64(keys[j])
                    relevant = key & 1
                    packed = latest[key >> 1] + 1 + (relevant << 32)
                    latest[key >> 1] = packed
                    rank = packed & 0xFFFFFFFF
                    if rank <= n_top:
                        top_items[q, rank - 1] = start + j
                    relevant_items[written] = packed
                    written += relevant
            for i in range(written):
                rank = relevant_items[i] & 0xFFFFFFFF
                precision = (relevant_items[i] >> 32) / rank
                m = n_cutoffs - 1  # cutoffs ascend: stop at the first one the rank exceeds
                while m >= 0 and rank <= cutoffs[m]:
                    hit_count[m] += 1
                    precision_sum[m] += precision
                    m -= 1
        hits[q, :] = hit_count
        precision_sums[q, :] = precision_sum


def count_ranks(
    query_words: np.ndarray,
    query_label_words: np.ndarray,
    database_words: np.ndarray,
    database_label_words: np.ndarray,
    n_bits: int,
    cutoffs=(),
    stable: bool = True,
    device: str = "cpu",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
    top: int = 0,
) -> RankCounts:
    """The ranking counts for every query.

    ``query_groups`` (q,) and ``database_groups`` (n,), int64 (both or neither): a query leaves out of its ranking
    the database items of its own group; a negative id is no group (nothing left out for such a query).

    ``top``: how many of the first-ranked items to record per query (``top_items``; implies the stable pass).
    ``stable`` False skips the second pass (cutoff sums and top-1): the histograms alone serve the tie-aware
    metrics. ``device``: 'cpu' runs the compiled kernel; 'auto' picks CUDA when torch sees one, else the
    kernel; any other torch device ('cuda', 'cuda:1') runs the matmul path, and 'torch:cpu' runs that path
    on the CPU (to check it against the kernel).
    """
    n_items = len(database_words)
    cuts, query_groups, database_groups = _checked(cutoffs, n_items, len(query_words), query_groups, database_groups)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    stable = stable or top > 0
    if device != "cpu":
        import torch

        torch_device = torch.device(device.removeprefix("torch:"))
        database, queries = (
            _unpacked_signs(database_words, n_bits).to(torch_device),
            _unpacked_signs(query_words, n_bits),
        )

        def distances_of(start: int, stop: int):
            # +/-1 codes: <a, b> = bits - 2 * hamming; exact in float32 for any practical code length
            return ((n_bits - queries[start:stop].to(torch_device) @ database.T) / 2).round().long()

        return _count_torch(
            distances_of,
            query_label_words,
            database_label_words,
            n_bits,
            cuts,
            torch_device,
            memory_bytes,
            query_groups,
            database_groups,
            top,
        )
    n_queries = len(query_words)
    counts = RankCounts(
        np.zeros((n_queries, n_bits + 1), np.int64),
        np.zeros((n_queries, n_bits + 1), np.int64),
        cuts,
        np.zeros((n_queries, len(cuts)), np.int64),
        np.zeros((n_queries, len(cuts)), np.float64),
        np.full(n_queries, -1, np.int64),
        np.full((n_queries, top), -1, np.int64),
    )
    key_type = np.uint8 if 2 * (n_bits + 1) <= 255 else np.uint16  # the largest key: an item left out
    use_numba_threads()
    block = max(64, memory_bytes // (numba.get_num_threads() * CPU_BYTES_PER_ITEM))
    _count_kernel(
        np.ascontiguousarray(query_words),
        np.ascontiguousarray(query_label_words),
        np.ascontiguousarray(database_words.T),
        np.ascontiguousarray(database_label_words.T),
        query_groups,
        database_groups,
        np.zeros(0, key_type),
        block,
        cuts,
        counts.distance_counts,
        counts.relevant_counts,
        counts.hits,
        counts.precision_sums,
        counts.top1,
        counts.top_items,
        stable,
    )
    return counts


def _checked(cutoffs, n_items: int, n_queries: int, query_groups, database_groups):
    """The cutoffs capped to the database and made unique, and the groups checked (empty arrays for none)."""
    cuts = (
        np.unique(np.minimum(np.asarray(list(cutoffs), dtype=np.int64), n_items))
        if len(cutoffs)
        else np.zeros(0, np.int64)
    )
    if (query_groups is None) != (database_groups is None):
        raise ValueError("groups: give both sides' (the queries' and the database's), or neither")
    if query_groups is None:
        query_groups = database_groups = np.zeros(0, np.int64)
    elif len(query_groups) != n_queries or len(database_groups) != n_items:
        raise ValueError("groups: one id per query and one per database item")
    return (
        cuts[cuts > 0],
        np.ascontiguousarray(query_groups, dtype=np.int64),
        np.ascontiguousarray(database_groups, dtype=np.int64),
    )


def count_ranks_from_distances(
    distances: np.ndarray,
    query_label_words: np.ndarray,
    database_label_words: np.ndarray,
    n_bits: int,
    cutoffs=(),
    device: str = "cpu",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
    top: int = 0,
) -> RankCounts:
    """The ranking counts from a given (q, n) matrix of integer distances in 0..n_bits (a set distance between cases,
    say), ties by index as :func:`count_ranks`; with torch on ``device`` ('auto': CUDA when present, else the CPU)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    distances = np.asarray(distances, dtype=np.int64)
    if distances.size and (distances.min() < 0 or distances.max() > n_bits):
        raise ValueError(f"distances must lie in 0..{n_bits}")
    n_queries, n_items = len(query_label_words), len(database_label_words)
    cuts, query_groups, database_groups = _checked(cutoffs, n_items, n_queries, query_groups, database_groups)
    torch_device = torch.device(device.removeprefix("torch:"))
    matrix = torch.from_numpy(distances.reshape(n_queries, n_items))
    return _count_torch(
        lambda start, stop: matrix[start:stop].to(torch_device),
        query_label_words,
        database_label_words,
        n_bits,
        cuts,
        torch_device,
        memory_bytes,
        query_groups,
        database_groups,
        top,
    )


FLOAT_DISTANCES = ("cosine", "euclidean")


def count_ranks_float(
    query_features: np.ndarray,
    query_label_words: np.ndarray,
    database_features: np.ndarray,
    database_label_words: np.ndarray,
    distance: str = "cosine",
    cutoffs=(),
    device: str = "cpu",
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    query_groups: np.ndarray | None = None,
    database_groups: np.ndarray | None = None,
    top: int = 0,
) -> RankCounts:
    """The ranking counts of continuous features, by cosine distance (1 - cosine similarity) or Euclidean distance, in
    float64; equal distances by index. The histograms have one column (the whole ranking): float rankings have no
    tie groups to count."""
    import torch

    if distance not in FLOAT_DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(FLOAT_DISTANCES)}, not {distance!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_device = torch.device(device.removeprefix("torch:"))
    n_queries, n_items = len(query_features), len(database_features)
    cuts, query_groups, database_groups = _checked(cutoffs, n_items, n_queries, query_groups, database_groups)
    queries = torch.from_numpy(np.asarray(query_features, dtype=np.float64))
    database = torch.from_numpy(np.asarray(database_features, dtype=np.float64)).to(torch_device)
    if distance == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
        database = torch.nn.functional.normalize(database, dim=1)

    def distances_of(start: int, stop: int):
        chunk = queries[start:stop].to(torch_device)
        if distance == "cosine":
            return 1 - chunk @ database.T
        return torch.cdist(chunk, database)

    return _count_torch(
        distances_of,
        query_label_words,
        database_label_words,
        None,
        cuts,
        torch_device,
        memory_bytes,
        query_groups,
        database_groups,
        top,
    )


def _unpacked_signs(words: np.ndarray, n_bits: int):
    import torch

    bits = np.unpackbits(words.view(np.uint8), axis=1)[:, :n_bits]
    return torch.from_numpy(bits.astype(np.float32) * 2 - 1)


def _count_torch(
    distances_of,
    query_label_words,
    database_label_words,
    n_bits,
    cuts,
    device,
    memory_bytes,
    query_groups,
    database_groups,
    top,
) -> RankCounts:
    """The same counts with torch (on a GPU): distances of each chunk of queries from ``distances_of(start, stop)``
    (a +/-1 matmul of codes, or a given matrix), the stable order from one sort of unique keys.

    An item a query leaves out takes the distance past every other (bits + 1) and no relevance: it sorts after every
    ranked item, so no rank changes, and its column of the histogram is dropped. ``n_bits`` None: the distances are
    real numbers (float features), sorted stably (equal ones by index), and the histograms have one column, the
    whole ranking."""
    import torch

    n_queries, n_items = len(query_label_words), len(database_label_words)
    database_labels = torch.from_numpy(
        np.unpackbits(database_label_words.view(np.uint8), axis=1).astype(np.float32)
    ).to(device)
    query_labels = torch.from_numpy(np.unpackbits(query_label_words.view(np.uint8), axis=1).astype(np.float32))
    index = torch.arange(n_items, device=device)
    ranks = torch.arange(1, n_items + 1, device=device, dtype=torch.float64)
    cut_columns = torch.from_numpy(cuts - 1).to(device)
    grouped = len(query_groups) > 0
    if grouped:
        database_group_ids = torch.from_numpy(database_groups).to(device)
        query_group_ids = torch.from_numpy(query_groups)
    chunk = max(1, memory_bytes // max(n_items * GPU_BYTES_PER_PAIR, 1))
    parts = []
    for start in range(0, n_queries, chunk):
        distances = distances_of(start, start + chunk)
        relevant = (query_labels[start : start + chunk].to(device) @ database_labels.T) > 0
        left_out = torch.zeros_like(relevant)
        if grouped:
            own = query_group_ids[start : start + chunk].to(device)
            left_out = (own[:, None] >= 0) & (own[:, None] == database_group_ids[None, :])
            distances = distances.masked_fill(left_out, float("inf") if n_bits is None else n_bits + 1)
            relevant = relevant & ~left_out
        if n_bits is None:
            n_at, r_at = (~left_out).sum(dim=1, keepdim=True), relevant.sum(dim=1, keepdim=True)
            order = torch.sort(distances, dim=1, stable=True).indices
        else:
            n_at = torch.zeros(len(distances), n_bits + 2, dtype=torch.long, device=device).scatter_add_(
                1, distances, torch.ones_like(distances)
            )
            r_at = torch.zeros_like(n_at).scatter_add_(1, distances, relevant.long())
            n_at, r_at = n_at[:, : n_bits + 1], r_at[:, : n_bits + 1]
            order = torch.argsort(distances * n_items + index, dim=1)  # unique keys: the stable order
        in_order = relevant.gather(1, order)
        found = torch.cumsum(in_order, dim=1)
        precision = torch.where(in_order, found / ranks, 0.0)
        summed = torch.cumsum(precision, dim=1)
        parts.append(
            [
                n_at,
                r_at,
                found[:, cut_columns],
                summed[:, cut_columns],
                torch.where(n_at.sum(dim=1) > 0, order[:, 0], -1)
                if n_items
                else torch.full((len(distances),), -1, device=device),
                _first_ranked(order, n_at.sum(dim=1), top),
            ]
        )
    if not parts:  # no queries
        n_bins = 1 if n_bits is None else n_bits + 1
        return RankCounts(
            np.zeros((0, n_bins), np.int64),
            np.zeros((0, n_bins), np.int64),
            cuts,
            np.zeros((0, len(cuts)), np.int64),
            np.zeros((0, len(cuts))),
            np.zeros(0, np.int64),
            np.zeros((0, top), np.int64),
        )
    n_at, r_at, found, summed, top1, top_items = (
        torch.cat([part[i] for part in parts]).cpu().numpy() for i in range(6)
    )
    return RankCounts(
        n_at, r_at, cuts, found.astype(np.int64), summed.astype(np.float64), top1.astype(np.int64), top_items
    )


def _first_ranked(order, ranked, top: int):
    """(q, top) int64: the first ``top`` items of each query's order, -1 past its ranking (what it leaves out sorts last)."""
    import torch

    first = torch.full((len(order), top), -1, dtype=torch.long, device=order.device)
    shown = min(top, order.shape[1])
    positions = torch.arange(shown, device=order.device)
    first[:, :shown] = torch.where(positions[None, :] < ranked[:, None], order[:, :shown], -1)
    return first
