"""Exact and near-duplicate removal: the `ExactDedup` and `NearDedup` steps.

Exact: a 128-bit hash of the normalised text of every turn (`exact_key`, set as `dkey` by the
filter step), grouped with `groupby(dkey).aggregate(Count, Min(order))`; in each group the
record with the smallest stable `order` (source order, file, row) is kept.

Near: MinHash-LSH. Signatures are computed in `map_batches` with a vectorised numpy MinHash
(seeded `(a*x+b) mod (2^61-1)` permutations over 32-bit word-shingle hashes, as datasketch
does); each signature is cut into `bands` band keys, `groupby([band, key]).count()` finds the
colliding buckets, and only those candidates (a small list) reach the driver, where pairs are
verified (estimated Jaccard >= threshold) and joined into clusters (union-find) that keep their
smallest `order`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from med42ray.config import NearDedupConfig
from med42ray.data.steps import (
    Decision,
    Removal,
    RemoveOrders,
    Step,
    shuffle_partitions,
    sort_shuffled,
)
from med42ray.data.text import ngram_hashes, normalize, word_hashes

_PRIME = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
MAX_BUCKET_PAIRS = 64
"""Buckets larger than this are verified against their smallest member only."""


class MinHasher:
    """Vectorised MinHash over word shingles, with seeded permutations."""

    def __init__(self, num_perm: int, shingle_size: int, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.a = rng.randint(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.b = rng.randint(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
        self.num_perm, self.shingle_size = num_perm, shingle_size

    def signature(self, tokens: list[str]) -> np.ndarray:
        hashes = word_hashes(tokens)
        n = min(self.shingle_size, len(hashes)) or 1
        shingles = np.unique(ngram_hashes(hashes, n) & _MAX32) if len(hashes) else None
        if shingles is None or not len(shingles):
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        with np.errstate(over="ignore"):
            phv = (np.outer(shingles, self.a) + self.b) % _PRIME & _MAX32
        return phv.min(axis=0).astype(np.uint32)

    def bands(self, sig: np.ndarray, bands: int) -> list[int]:
        import xxhash

        rows = self.num_perm // bands
        return [
            xxhash.xxh3_64_intdigest(sig[i * rows : (i + 1) * rows].tobytes()) >> 1
            for i in range(bands)
        ]  # 63 bits: fits int64 columns


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """MinHash estimate of the Jaccard similarity of two signatures."""
    return float(np.mean(a == b))


def record_text(messages: list[dict[str, str]], roles=("system", "user", "assistant")) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] in roles)


def exact_key(messages: list[dict[str, str]]) -> str:
    """Exact-dedup key: hash of role + normalised text of every turn."""
    import xxhash

    blob = "\x1f".join(f"{m['role']}\x1e{normalize(m['content'])}" for m in messages)
    return xxhash.xxh3_128_hexdigest(blob.encode("utf-8"))


# ---------------------------------------------------------------------------- exact dedup
def _key_rows(batch: pa.Table) -> pa.Table:
    batch = batch.filter(pc.equal(batch.column("drop"), ""))
    return pa.table({"dkey": batch.column("dkey"), "order": batch.column("order")})


def exact_groups(ds) -> dict[str, int]:
    """dkey -> smallest `order`, for every exact-duplicate group (`groupby` on the key)."""
    from ray.data.aggregate import Count, Min

    keys = sort_shuffled(ds.map_batches(_key_rows, batch_format="pyarrow"))
    groups = keys.groupby("dkey", num_partitions=shuffle_partitions())
    groups = groups.aggregate(Count(), Min("order"))
    groups = groups.map_batches(_collisions, batch_format="pyarrow").to_pandas()
    if groups.empty:  # no collisions: Ray returns a frame without columns
        return {}
    return {k: int(o) for k, o in zip(groups["dkey"], groups["min(order)"], strict=True)}


def _collisions(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.greater(batch.column("count()"), 1))


class ExactDedup(Step):
    """Removes a live record whose exact-dedup key (`dkey`, set by the cleaning filter) an
    earlier record has: `groupby(dkey)` finds the groups in the data, the driver keeps their
    smallest `order`, and a per-batch task marks the others."""

    category = "deduplicated"

    def __init__(self, ids: Callable[[int], str]):
        self.ids = ids
        self.keep: dict[str, int] = {}  # dkey -> order kept, for every group of two or more
        self.kept_ids: dict[int, str] = {}

    @property
    def stats(self) -> dict[str, int]:
        return {"exact_groups": len(self.keep)}

    def decide(self, batch: pa.Table, live: list[int]) -> Decision:
        keys = batch.column("dkey").to_pylist()
        orders = batch.column("order").to_pylist()
        out = {}
        for i in live:
            kept = self.keep.get(keys[i])
            if kept is not None and kept != orders[i]:
                out[i] = Removal("exact", f"duplicate of {self.kept_ids[kept]}")
        return out

    def apply(self, ds):
        self.keep = exact_groups(ds)
        if not self.keep:
            return ds
        self.kept_ids = {o: self.ids(o) for o in self.keep.values()}
        return super().apply(ds)


# ----------------------------------------------------------------------------- near dedup
def _signatures(batch: pa.Table, cfg: NearDedupConfig, seed: int) -> pa.Table:
    batch = batch.filter(pc.equal(batch.column("drop"), ""))
    hasher = MinHasher(cfg.num_perm, cfg.shingle_size, seed)
    sigs, bands = [], []
    for msgs in batch.column("messages").to_pylist():
        sig = hasher.signature(normalize(record_text(msgs)).split())
        sigs.append(sig.tolist())
        bands.append(hasher.bands(sig, cfg.bands))
    return pa.table(
        {
            "order": batch.column("order"),
            "sig": pa.array(sigs, pa.list_(pa.uint32())),
            "bands": pa.array(bands, pa.list_(pa.int64())),
        }
    )


def _explode(batch: pa.Table) -> pa.Table:
    bands = batch.column("bands").combine_chunks()
    width = len(bands[0]) if len(bands) else 0
    keys = pc.list_flatten(bands)
    return pa.table(
        {
            "band": pa.array([i % width for i in range(len(keys))] if width else [], pa.int32()),
            "bkey": keys,
            "order": pa.array(
                [o for o in batch.column("order").to_pylist() for _ in range(width)], pa.int64()
            ),
        }
    )


def find_near_duplicates(
    ds, cfg: NearDedupConfig, ids: Callable[[int], str] | None = None, seed: int = 1
) -> tuple[dict[int, str], dict]:
    """order -> detail for live records in a MinHash-LSH cluster with a smaller `order`.

    Signatures and band keys: `map_batches`; colliding buckets: `groupby([band, bkey])`; the
    candidates (only rows with a colliding band) go to the driver for the pairwise check."""
    sigs = ds.map_batches(
        _signatures, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "seed": seed}
    ).materialize()
    hits = (
        sort_shuffled(sigs.map_batches(_explode, batch_format="pyarrow"))
        .groupby(["band", "bkey"], num_partitions=shuffle_partitions())
        .count()
    )
    hits = hits.map_batches(_collisions, batch_format="pyarrow").to_pandas()
    stats = {"buckets_with_collisions": len(hits), "candidate_pairs": 0, "verified_pairs": 0}
    if hits.empty:
        return {}, stats
    colliding = set(zip(hits["band"].tolist(), hits["bkey"].tolist(), strict=True))

    def candidates(batch: pa.Table) -> pa.Table:
        keep = [
            any((b, k) in colliding for b, k in enumerate(bands))
            for bands in batch.column("bands").to_pylist()
        ]
        return batch.filter(pa.array(keep, pa.bool_()))

    rows = sigs.map_batches(candidates, batch_format="pyarrow").to_pandas()
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    signature: dict[int, np.ndarray] = {}
    for order, sig, bands in zip(rows["order"], rows["sig"], rows["bands"], strict=True):
        signature[int(order)] = np.asarray(sig, dtype=np.uint32)
        for b, k in enumerate(bands):
            if (b, int(k)) in colliding:
                buckets[(b, int(k))].append(int(order))
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        members = sorted(set(members))
        if len(members) <= MAX_BUCKET_PAIRS:
            pairs.update(combinations(members, 2))
        else:
            pairs.update((members[0], o) for o in members[1:])
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    verified = 0
    for a, b in sorted(pairs):
        if jaccard(signature[a], signature[b]) >= cfg.threshold:
            verified += 1
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    stats.update(candidate_pairs=len(pairs), verified_pairs=verified)
    out = {}
    for o in sorted(signature):
        root = find(o)
        if root != o:
            kept = ids(root) if ids else str(root)
            out[o] = f"near-duplicate of {kept} (MinHash Jaccard >= {cfg.threshold})"
    return out, stats


class NearDedup(RemoveOrders):
    """Removes a live record in a MinHash-LSH cluster with an earlier record (see
    :func:`find_near_duplicates`, run in `apply`); a per-batch task marks them."""

    category = "near_deduplicated"
    reason: ClassVar[str] = "minhash"

    def __init__(self, cfg: NearDedupConfig, seed: int, ids: Callable[[int], str]):
        self.cfg, self.seed, self.ids = cfg, seed, ids
        self.orders: dict[int, str] = {}
        self.stats: dict[str, Any] = {"enabled": cfg.enabled}

    def apply(self, ds):
        self.orders, found = find_near_duplicates(ds, self.cfg, self.ids, self.seed)
        self.stats.update(found)
        return super().apply(ds) if self.orders else ds
