"""Semantic de-duplication inside fine clusters (SemDeDup, arXiv 2303.09540), one shard at a time.

The rule, the reference implementation's: documents are put in registration order (shard order, then row order
within a shard); inside each fine cluster, a document whose cosine similarity to any *earlier* document of the same
cluster reaches ``1 - epsilon`` is a semantic duplicate of the most similar one, and is removed. Every document of
each group but the earliest goes. Whether a document goes depends only on the embeddings and assignments of the
documents registered before it, never on which shard was checked first, so shards can be checked in any order or in
parallel and a re-run gives the same files.

A new shard is compared only with the documents of the clusters it lands in: ``cluster_assignments`` also writes
each shard's vectors in cluster order (``lake.by_cluster_dir``) with their cluster ids and a 256-bit SimHash code per
document (random hyperplanes, Charikar 2002). An earlier shard's codes in those clusters are gathered into batches of
at most ``BATCH_ROWS`` documents, regrouped by cluster; within a cluster only pairs whose codes differ in at most
``max_differing_bits(epsilon)`` bits (30 of 256 at ε = 0.01) have their cosine computed, from the two vectors
(the earlier one read from its memory map). A pair exactly at the threshold is missed with probability at most
``MISS_PROBABILITY`` (1e-6), a closer pair less often; a pair at cosine 0.8 is compared with probability 2e-4, so
the work per earlier document is a 32-byte code, not a 512-byte vector. Inside the new shard every pair is compared.
Memory holds the new shard, one batch of codes and one block of distances.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.lake import by_cluster_dir, semantic_duplicates_dir, semantic_duplicates_path
from climb_assets.storage import atomic_path, write_parquet_atomic

DEFAULT_EPSILON = 0.01  # NeMo Curator's default: duplicates at cosine similarity >= 0.99
MAX_SIMILARITIES = 1 << 24  # entries of one block's similarity or distance matrix: memory bound of a comparison
BATCH_ROWS = 1 << 18  # earlier documents' codes compared in one pass over the clusters (about 14 MiB with their origin)
CODE_BITS, CODE_WORDS = 256, 4  # SimHash code per document: 256 random hyperplanes, packed into 4 uint64s
SIMHASH_SEED = 0  # the hyperplanes: fixed, so codes written at assignment and computed later agree
PAIRS_PER_READ = 1 << 15  # candidate pairs whose vectors are read at once (64 MiB at 256 dims)
MISS_PROBABILITY = 1e-6  # chance that a pair exactly at the threshold is never compared (ε = 0.01: radius 30 bits)

DUPLICATE_SCHEMA = {
    "doc_id": pl.String,
    "shard": pl.String,
    "cluster_id": pl.Int64,
    "duplicate_of": pl.String,
    "duplicate_of_shard": pl.String,
    "kind": pl.String,
    "similarity": pl.Float64,
}


@dataclass(frozen=True)
class SemanticSettings:
    enabled: bool = True
    epsilon: float = DEFAULT_EPSILON

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon < 1.0:
            raise ValueError(f"semantic dedup epsilon must be in (0, 1), got {self.epsilon}")

    @property
    def key(self) -> str:
        """The results' directory name: a changed setting is a different result, never a stale one."""
        return f"eps{self.epsilon:g}" if self.enabled else "off"

    @classmethod
    def from_key(cls, key: str) -> "SemanticSettings":
        return cls(enabled=False) if key == "off" else cls(epsilon=float(key.removeprefix("eps")))

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "epsilon": self.epsilon}


def simhash_codes(vectors: np.ndarray) -> np.ndarray:
    """Each row's side of CODE_BITS fixed random hyperplanes (Charikar's SimHash), packed into CODE_WORDS uint64s."""
    vectors = np.asarray(vectors, dtype=np.float32)
    planes = np.random.default_rng(SIMHASH_SEED).standard_normal((vectors.shape[1], CODE_BITS), dtype=np.float32)
    bits = np.packbits(vectors @ planes > 0, axis=1)
    return np.ascontiguousarray(bits).view(np.uint64).reshape(len(vectors), CODE_WORDS)


def max_differing_bits(epsilon: float) -> int:
    """The Hamming radius that keeps a pair at cosine ``1 - epsilon``: its angle θ splits it across a random
    hyperplane with probability θ/π, so the differing bits are Binomial(CODE_BITS, θ/π); the smallest radius whose
    upper tail is at most MISS_PROBABILITY (more similar pairs are missed less often still)."""
    p = math.acos(1.0 - epsilon) / math.pi
    tail = 1.0
    for radius in range(CODE_BITS + 1):
        tail -= math.comb(CODE_BITS, radius) * p**radius * (1.0 - p) ** (CODE_BITS - radius)
        if tail <= MISS_PROBABILITY:
            return radius
    return CODE_BITS


def write_by_cluster(home: ClimbHome, version: str, shard: str, assignments: pl.DataFrame, vectors: np.ndarray) -> None:
    """Store one shard's vectors, cluster ids and SimHash codes in cluster order next to its assignment (rows of
    ``assignments`` and ``vectors`` align; row order within a cluster is kept, so it stays the registration order)."""
    order = np.lexsort((np.arange(assignments.height), assignments["cluster_id"].to_numpy()))
    ordered = np.ascontiguousarray(vectors[order], dtype=np.float16)
    with atomic_path(by_cluster_dir(home, version, shard)) as tmp:
        tmp.mkdir()
        assignments.select("doc_id", "cluster_id")[order].write_parquet(tmp / "members.parquet")
        np.save(tmp / "vectors.npy", ordered)
        np.save(tmp / "cluster_ids.npy", assignments["cluster_id"].to_numpy()[order].astype(np.int64))
        np.save(tmp / "codes.npy", simhash_codes(ordered))


def member_ids(directory: Path) -> np.ndarray:
    """A shard's document ids in cluster order."""
    return pl.read_parquet(directory / "members.parquet", columns=["doc_id"])["doc_id"].to_numpy()


def cluster_rows(sorted_cluster_ids: np.ndarray, cluster_id: int) -> slice:
    """The rows of one cluster in rows sorted by cluster."""
    lo, hi = np.searchsorted(sorted_cluster_ids, [cluster_id, cluster_id + 1])
    return slice(int(lo), int(hi))


@dataclass
class ByCluster:
    """One shard's documents in cluster order: cluster ids and SimHash codes in memory, vectors memory-mapped (a
    comparison reads only its candidates' rows), document ids read only when asked for."""

    shard: str
    directory: Path
    cluster_ids: np.ndarray
    codes: np.ndarray
    vectors: np.ndarray  # memory-mapped float16

    @classmethod
    def open(cls, home: ClimbHome, version: str, shard: str) -> "ByCluster":
        directory = by_cluster_dir(home, version, shard)
        if not directory.exists():
            raise FileNotFoundError(f"shard {shard} is not assigned under {version}: run cluster_assign_job for it")
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        if (directory / "codes.npy").exists():
            return cls(shard, directory, np.load(directory / "cluster_ids.npy"), np.load(directory / "codes.npy"), vectors)
        # assigned before the codes were stored: computed here, the same from the same vectors
        cluster_ids = pl.read_parquet(directory / "members.parquet", columns=["cluster_id"])["cluster_id"].to_numpy()
        return cls(shard, directory, cluster_ids, simhash_codes(vectors), vectors)

    def doc_ids(self) -> np.ndarray:
        return member_ids(self.directory)

    def rows(self, cluster_id: int) -> slice:
        return cluster_rows(self.cluster_ids, cluster_id)

    def clusters(self) -> np.ndarray:
        return np.unique(self.cluster_ids)


@dataclass
class EarlierBatch:
    """Codes of documents of consecutive earlier shards in the new shard's clusters, sorted by cluster and, within
    one, in registration order (shard, then row), so the first of equal similarities is the earliest document; each
    row knows its shard (``sources[origin]``) and its row there."""

    sources: list[ByCluster]
    origin: np.ndarray
    source_rows: np.ndarray
    cluster_ids: np.ndarray
    codes: np.ndarray

    def rows(self, cluster_id: int) -> slice:
        return cluster_rows(self.cluster_ids, cluster_id)

    def vectors(self, batch_rows: np.ndarray) -> np.ndarray:
        """The float32 vectors of some rows of the batch, read from their shards' memory maps."""
        out = np.empty((len(batch_rows), self.sources[0].vectors.shape[1]), dtype=np.float32)
        origin = self.origin[batch_rows]
        for source in np.unique(origin):
            mine = np.flatnonzero(origin == source)
            out[mine] = self.sources[source].vectors[self.source_rows[batch_rows[mine]]]
        return out


def earlier_batches(clusters: np.ndarray, earlier: Iterable[ByCluster], batch_rows: int) -> Iterator[EarlierBatch]:
    """The earlier shards' documents in ``clusters``, a batch of whole shards at a time (at least one shard each)."""
    pending: list[tuple[ByCluster, np.ndarray]] = []
    held = 0

    def flush() -> EarlierBatch:
        nonlocal pending, held
        ready, pending, held = pending, [], 0
        return gather(ready)

    for other in earlier:
        wanted = np.flatnonzero(np.isin(other.cluster_ids, clusters))
        if len(wanted):
            pending.append((other, wanted))
            held += len(wanted)
        if held >= batch_rows:
            yield flush()
    if pending:
        yield flush()


def gather(parts: list[tuple[ByCluster, np.ndarray]]) -> EarlierBatch:
    """The rows ``wanted`` of each shard, straight into cluster order (stable: registration order within a
    cluster)."""
    cluster_ids = np.concatenate([other.cluster_ids[wanted] for other, wanted in parts])
    order = np.argsort(cluster_ids, kind="stable")
    origin = np.concatenate([np.full(len(wanted), n) for n, (_, wanted) in enumerate(parts)])
    source_rows = np.concatenate([wanted for _, wanted in parts])
    codes = np.concatenate([other.codes[wanted] for other, wanted in parts])
    return EarlierBatch([other for other, _ in parts], origin[order], source_rows[order], cluster_ids[order], codes[order])


def close_pairs(new: np.ndarray, before: np.ndarray, radius: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(i, j) of the row pairs of codes ``new`` x ``before`` at Hamming distance <= ``radius``, in row-major order,
    a block of rows at a time so the distance matrix never exceeds MAX_SIMILARITIES / CODE_WORDS entries."""
    step = max(1, MAX_SIMILARITIES // (max(len(before), 1) * CODE_WORDS))
    for start in range(0, len(new) if len(before) else 0, step):
        block = new[start : start + step]
        distance = np.zeros((len(block), len(before)), dtype=np.uint16)
        for word in range(CODE_WORDS):  # a word at a time: the XOR block stays a quarter of MAX_SIMILARITIES
            distance += np.bitwise_count(block[:, None, word] ^ before[None, :, word])
        i, j = np.nonzero(distance <= radius)
        if len(i):
            yield i + start, j


def pair_similarities(vectors: np.ndarray, rows: np.ndarray, batch: "EarlierBatch", batch_rows: np.ndarray) -> np.ndarray:
    """Cosine of each pair (``vectors[rows]``, the batch's row), PAIRS_PER_READ pairs' vectors at a time."""
    sims = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), PAIRS_PER_READ):
        part = slice(start, start + PAIRS_PER_READ)
        sims[part] = np.einsum("ij,ij->i", vectors[rows[part]], batch.vectors(batch_rows[part]))
    return sims


def best_per_row(rows: np.ndarray, sims: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Positions of each row's highest similarity among pairs (``rows``, ``sims``), the smallest ``order`` first
    among equals."""
    ranked = np.lexsort((order, -sims, rows))
    first = np.ones(len(ranked), dtype=bool)
    first[1:] = rows[ranked][1:] != rows[ranked][:-1]
    return ranked[first]


def nearest_preceding(new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``new``: the highest cosine similarity to a *preceding* row, and that row (-inf and 0 for
    the first row)."""
    best = np.full(len(new), -np.inf, dtype=np.float32)
    index = np.zeros(len(new), dtype=np.int64)
    step = max(1, MAX_SIMILARITIES // max(len(new), 1))
    for start in range(1, len(new), step):
        stop = min(start + step, len(new))
        sims = new[start:stop] @ new[:stop].T
        sims[np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]] = -np.inf  # only rows registered earlier
        index[start:stop] = sims.argmax(axis=1)
        best[start:stop] = sims[np.arange(stop - start), index[start:stop]]
    return best, index


def find_semantic_duplicates(
    shard: ByCluster, earlier: Iterable[ByCluster], settings: SemanticSettings
) -> pl.DataFrame:
    """The documents of ``shard`` that are semantic duplicates of a document registered before them: the
    ``earlier`` shards (registration order; read in batches of whole shards, cluster by cluster; only pairs whose
    SimHash codes are within ``max_differing_bits`` are compared), then the preceding documents of ``shard`` in the
    same cluster (all compared). A tie goes to the earlier document."""
    vectors = np.asarray(shard.vectors, dtype=np.float32)  # the shard itself is the one thing held whole
    radius = max_differing_bits(settings.epsilon)
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    owner_shard = np.full(len(vectors), None, dtype=object)
    owner_row = np.zeros(len(vectors), dtype=np.int64)
    clusters = [shard.rows(int(c)) for c in shard.clusters()]
    directories = {shard.shard: shard.directory}

    def keep_better(rows: np.ndarray, sims: np.ndarray, shards: np.ndarray, their_rows: np.ndarray) -> None:
        better = sims > best[rows]  # strictly: an equal similarity found later belongs to a later document
        best[rows[better]], owner_shard[rows[better]], owner_row[rows[better]] = sims[better], shards[better], their_rows[better]

    for batch in earlier_batches(shard.clusters(), earlier, BATCH_ROWS):
        names = np.array([source.shard for source in batch.sources], dtype=object)
        directories.update((source.shard, source.directory) for source in batch.sources)
        for own in clusters:
            in_batch = batch.rows(int(shard.cluster_ids[own.start]))
            for i, j in close_pairs(shard.codes[own], batch.codes[in_batch], radius):
                mine, theirs = i + own.start, j + in_batch.start
                sims = pair_similarities(vectors, mine, batch, theirs)
                top = best_per_row(mine, sims, theirs)
                keep_better(mine[top], sims[top], names[batch.origin[theirs[top]]], batch.source_rows[theirs[top]])
        del batch  # before the next one is gathered: one batch in memory at a time
    for own in clusters:
        sims, index = nearest_preceding(vectors[own])
        rows = np.arange(own.start, own.stop)
        keep_better(rows, sims, np.full(len(rows), shard.shard, dtype=object), index + own.start)
    hits = np.flatnonzero(best >= 1.0 - settings.epsilon)
    owner_ids = np.empty(len(hits), dtype=object)
    for name in set(owner_shard[hits]):  # ids are read from the shards that hold an owner only
        owned = owner_shard[hits] == name
        owner_ids[owned] = member_ids(directories[name])[owner_row[hits][owned]]
    return pl.DataFrame({
        "doc_id": shard.doc_ids()[hits],
        "shard": np.full(len(hits), shard.shard),
        "cluster_id": shard.cluster_ids[hits],
        "duplicate_of": owner_ids.astype(str),
        "duplicate_of_shard": owner_shard[hits].astype(str),
        "kind": np.full(len(hits), "semantic"),
        "similarity": np.minimum(best[hits], 1.0).astype(np.float64),
    }, schema=DUPLICATE_SCHEMA)  # fmt: skip


def dedup_shard(
    home: ClimbHome, version: str, shard: str, earlier: list[str], settings: SemanticSettings
) -> pl.DataFrame:
    """Check one shard against the shards registered before it under one centroid version; write its duplicates
    file (empty when none, or when switched off) and return it."""
    if settings.enabled:
        duplicates = find_semantic_duplicates(
            ByCluster.open(home, version, shard), (ByCluster.open(home, version, s) for s in earlier), settings
        )
    else:
        duplicates = pl.DataFrame(schema=DUPLICATE_SCHEMA)
    write_parquet_atomic(duplicates, semantic_duplicates_path(home, version, settings.key, shard))
    return duplicates


def checked_shards(home: ClimbHome, version: str, settings: SemanticSettings) -> set[str]:
    return {p.stem for p in semantic_duplicates_dir(home, version, settings.key).glob("*.parquet")}


def semantic_duplicates_glob(home: ClimbHome, version: str, settings: SemanticSettings) -> Path:
    return semantic_duplicates_dir(home, version, settings.key) / "*.parquet"


def read_semantic_duplicates(home: ClimbHome, version: str, settings: SemanticSettings, shards: list[str]) -> pl.DataFrame:
    """Every shard's semantic duplicates; fails clearly while a shard has not been checked under these settings."""
    missing = sorted(set(shards) - checked_shards(home, version, settings))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} shards have no semantic dedup result under {version}/{settings.key} (e.g. {missing[:3]}):"
            " run semantic_dedup_job for them (the recluster sensor requests it)"
        )
    if not shards:
        return pl.DataFrame(schema=DUPLICATE_SCHEMA)
    paths = [semantic_duplicates_path(home, version, settings.key, s) for s in shards]
    return pl.scan_parquet(paths).collect().cast(DUPLICATE_SCHEMA)
