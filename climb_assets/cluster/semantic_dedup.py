"""Semantic de-duplication inside fine clusters (SemDeDup, arXiv 2303.09540), one shard at a time.

The rule, the reference implementation's: documents are put in registration order (shard order, then row order
within a shard); inside each fine cluster, a document whose cosine similarity to any *earlier* document of the same
cluster reaches ``1 - epsilon`` is a semantic duplicate of the most similar one, and is removed. Every document of
each group but the earliest goes. Whether a document goes depends only on the embeddings and assignments of the
documents registered before it, never on which shard was checked first, so shards can be checked in any order or in
parallel and a re-run gives the same files.

A new shard is compared only with the documents of the clusters it lands in: ``cluster_assignments`` also writes
each shard's vectors in cluster order (``lake.by_cluster_dir``), so an earlier shard's documents in those clusters
are read from a memory-mapped file. Earlier shards are gathered into batches of at most ``BATCH_ROWS`` documents,
regrouped by cluster, and each batch is compared cluster by cluster: the work in Python is clusters x batches, not
clusters x earlier shards. Memory holds the new shard, one batch and one block of similarities.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.lake import by_cluster_dir, semantic_duplicates_dir, semantic_duplicates_path
from climb_assets.storage import atomic_path, write_parquet_atomic

DEFAULT_EPSILON = 0.01  # NeMo Curator's default: duplicates at cosine similarity >= 0.99
MAX_SIMILARITIES = 1 << 24  # entries of one block's similarity matrix (64 MiB): memory bound of a comparison
BATCH_ROWS = 1 << 16  # earlier documents compared in one pass over the clusters (float16: 32 MiB at 256 dims)

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


def write_by_cluster(home: ClimbHome, version: str, shard: str, assignments: pl.DataFrame, vectors: np.ndarray) -> None:
    """Store one shard's vectors in cluster order next to its assignment (rows of ``assignments`` and ``vectors``
    align; row order within a cluster is kept, so it stays the registration order)."""
    order = np.lexsort((np.arange(assignments.height), assignments["cluster_id"].to_numpy()))
    with atomic_path(by_cluster_dir(home, version, shard)) as tmp:
        tmp.mkdir()
        assignments.select("doc_id", "cluster_id")[order].write_parquet(tmp / "members.parquet")
        np.save(tmp / "vectors.npy", np.ascontiguousarray(vectors[order], dtype=np.float16))


def cluster_rows(sorted_cluster_ids: np.ndarray, cluster_id: int) -> slice:
    """The rows of one cluster in rows sorted by cluster."""
    lo, hi = np.searchsorted(sorted_cluster_ids, [cluster_id, cluster_id + 1])
    return slice(int(lo), int(hi))


@dataclass
class ByCluster:
    """One shard's documents in cluster order; ``slice(c)`` reads cluster ``c``'s vectors only."""

    shard: str
    doc_ids: np.ndarray
    cluster_ids: np.ndarray
    vectors: np.ndarray  # memory-mapped float16

    @classmethod
    def open(cls, home: ClimbHome, version: str, shard: str) -> "ByCluster":
        directory = by_cluster_dir(home, version, shard)
        if not directory.exists():
            raise FileNotFoundError(f"shard {shard} is not assigned under {version}: run cluster_assign_job for it")
        members = pl.read_parquet(directory / "members.parquet")
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        return cls(shard, members["doc_id"].to_numpy(), members["cluster_id"].to_numpy(), vectors)

    def rows(self, cluster_id: int) -> slice:
        return cluster_rows(self.cluster_ids, cluster_id)

    def clusters(self) -> np.ndarray:
        return np.unique(self.cluster_ids)


@dataclass
class EarlierBatch:
    """Documents of consecutive earlier shards in the new shard's clusters, sorted by cluster and, within one, in
    registration order (shard, then row), so the first of equal similarities is the earliest document."""

    doc_ids: np.ndarray
    shards: np.ndarray
    cluster_ids: np.ndarray
    vectors: np.ndarray  # float16, in memory

    def rows(self, cluster_id: int) -> slice:
        return cluster_rows(self.cluster_ids, cluster_id)


def earlier_batches(clusters: np.ndarray, earlier: Iterable[ByCluster], batch_rows: int) -> Iterator[EarlierBatch]:
    """The earlier shards' documents in ``clusters``, a batch of whole shards at a time (at least one shard each)."""
    pending: list[tuple[ByCluster, np.ndarray]] = []
    held = 0

    def flush() -> EarlierBatch:
        nonlocal pending, held
        ready, pending, held = pending, [], 0
        return gather(ready)  # the shards' mappings close here, before the batch is compared

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
    """The rows ``wanted`` of each shard, copied once, straight into cluster order (stable: registration order
    within a cluster)."""
    cluster_ids = np.concatenate([other.cluster_ids[wanted] for other, wanted in parts])
    order = np.argsort(cluster_ids, kind="stable")
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))
    vectors = np.empty((len(order), parts[0][0].vectors.shape[1]), dtype=np.float16)
    doc_ids, shards = np.empty(len(order), dtype=object), np.empty(len(order), dtype=object)
    start = 0
    for other, wanted in parts:
        rows = destination[start : start + len(wanted)]
        vectors[rows], doc_ids[rows], shards[rows] = other.vectors[wanted], other.doc_ids[wanted], other.shard
        start += len(wanted)
    return EarlierBatch(doc_ids, shards, cluster_ids[order], vectors)


def most_similar(new: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``new``: the highest cosine similarity to a row of ``before`` and that row (unit rows),
    in blocks of rows so the similarity matrix never exceeds MAX_SIMILARITIES entries."""
    best = np.full(len(new), -np.inf, dtype=np.float32)
    index = np.zeros(len(new), dtype=np.int64)
    step = max(1, MAX_SIMILARITIES // max(len(before), 1))
    for start in range(0, len(new) if len(before) else 0, step):
        sims = new[start : start + step] @ before.T
        index[start : start + step] = sims.argmax(axis=1)
        best[start : start + step] = sims[np.arange(len(sims)), index[start : start + step]]
    return best, index


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
    ``earlier`` shards (registration order; read in batches of whole shards, cluster by cluster), then the
    preceding documents of ``shard`` in the same cluster. A tie goes to the earlier document."""
    vectors = np.asarray(shard.vectors, dtype=np.float32)  # the shard itself is the one thing held whole
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    owner = np.full(len(vectors), None, dtype=object)
    owner_shard = np.full(len(vectors), None, dtype=object)
    present = shard.clusters()
    clusters = [shard.rows(int(c)) for c in present]

    def keep_better(own: slice, sims: np.ndarray, ids: np.ndarray, of_shards: np.ndarray | str) -> None:
        better = sims > best[own]  # strictly: an equal similarity found later belongs to a later document
        rows = np.arange(own.start, own.stop)[better]
        best[rows], owner[rows] = sims[better], ids[better]
        owner_shard[rows] = of_shards[better] if isinstance(of_shards, np.ndarray) else of_shards

    for batch in earlier_batches(present, earlier, BATCH_ROWS):
        for own in clusters:
            theirs = batch.rows(int(shard.cluster_ids[own.start]))
            if theirs.stop > theirs.start:
                sims, index = most_similar(vectors[own], batch.vectors[theirs].astype(np.float32))
                keep_better(own, sims, batch.doc_ids[theirs][index], batch.shards[theirs][index])
    for own in clusters:
        sims, index = nearest_preceding(vectors[own])
        keep_better(own, sims, shard.doc_ids[own][index], shard.shard)
    hits = np.flatnonzero(best >= 1.0 - settings.epsilon)
    return pl.DataFrame({
        "doc_id": shard.doc_ids[hits],
        "shard": np.full(len(hits), shard.shard),
        "cluster_id": shard.cluster_ids[hits],
        "duplicate_of": owner[hits].astype(str),
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
