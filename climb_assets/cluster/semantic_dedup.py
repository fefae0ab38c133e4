"""Semantic de-duplication inside fine clusters (SemDeDup, arXiv 2303.09540), one shard at a time.

The rule, the reference implementation's: documents are put in registration order (shard order, then row order
within a shard); inside each fine cluster, a document whose cosine similarity to any *earlier* document of the same
cluster reaches ``1 - epsilon`` is a semantic duplicate of the most similar one, and is removed. Every document of
each group but the earliest goes. Whether a document goes depends only on the embeddings and assignments of the
documents registered before it, never on which shard was checked first, so shards can be checked in any order or in
parallel and a re-run gives the same files.

A new shard is compared only with the documents of the clusters it lands in: ``cluster_assignments`` also writes
each shard's vectors in cluster order (``lake.by_cluster_dir``), so one cluster of an earlier shard is one slice
of a memory-mapped file, and memory holds one cluster at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.lake import by_cluster_dir, semantic_duplicates_dir, semantic_duplicates_path
from climb_assets.storage import atomic_path, write_parquet_atomic

DEFAULT_EPSILON = 0.01  # NeMo Curator's default: duplicates at cosine similarity >= 0.99
BLOCK_ROWS = 2048  # rows of a cluster compared at once: a block's similarity matrix bounds the memory

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
        lo, hi = np.searchsorted(self.cluster_ids, [cluster_id, cluster_id + 1])
        return slice(int(lo), int(hi))

    def clusters(self) -> np.ndarray:
        return np.unique(self.cluster_ids)


def _blocks(n: int) -> Iterator[slice]:
    for start in range(0, n, BLOCK_ROWS):
        yield slice(start, min(start + BLOCK_ROWS, n))


def nearest_earlier(new: np.ndarray, earlier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``new`` (unit rows, registration order): the highest cosine similarity to a row of
    ``earlier`` or to a *preceding* row of ``new``, and that row's index in ``[earlier; new]`` (-1: nothing before)."""
    n, m = len(new), len(earlier)
    best = np.full(n, -np.inf, dtype=np.float32)
    partner = np.full(n, -1, dtype=np.int64)
    if n and m:
        sims, rows = faiss.knn(new, earlier, 1, metric=faiss.METRIC_INNER_PRODUCT)
        best, partner = sims[:, 0].astype(np.float32), rows[:, 0].astype(np.int64)
    for block in _blocks(n):
        before = new[: block.stop]
        sims = new[block] @ before.T
        rows = np.arange(block.start, block.stop)[:, None]
        sims[np.arange(block.stop)[None, :] >= rows] = -np.inf  # only rows registered earlier
        top = sims.argmax(axis=1)
        top_sim = sims[np.arange(len(top)), top]
        better = top_sim > best[block]
        best[block] = np.where(better, top_sim, best[block])
        partner[block] = np.where(better, m + top, partner[block])
    return best, partner


def find_semantic_duplicates(
    shard: ByCluster, earlier: list[ByCluster], settings: SemanticSettings
) -> pl.DataFrame:
    """The documents of ``shard`` that are semantic duplicates of a document registered before them (``earlier``
    shards in registration order, then preceding rows of ``shard``), one cluster at a time."""
    threshold = 1.0 - settings.epsilon
    found = []
    for cluster_id in shard.clusters():
        cluster_id = int(cluster_id)
        own = shard.rows(cluster_id)
        new = np.asarray(shard.vectors[own], dtype=np.float32)
        parts = [(other, other.rows(cluster_id)) for other in earlier]
        parts = [(other, rows) for other, rows in parts if rows.stop > rows.start]
        before = (
            np.concatenate([np.asarray(other.vectors[rows], dtype=np.float32) for other, rows in parts])
            if parts else np.zeros((0, new.shape[1]), dtype=np.float32)
        )  # fmt: skip
        best, partner = nearest_earlier(new, before)
        hits = np.flatnonzero(best >= threshold)
        if not hits.size:
            continue
        owner_ids = np.concatenate([other.doc_ids[rows] for other, rows in parts] + [shard.doc_ids[own]])
        owner_shards = np.concatenate(
            [np.full(rows.stop - rows.start, other.shard) for other, rows in parts] + [np.full(len(new), shard.shard)]
        )
        found.append(pl.DataFrame({
            "doc_id": shard.doc_ids[own][hits],
            "shard": shard.shard,
            "cluster_id": cluster_id,
            "duplicate_of": owner_ids[partner[hits]],
            "duplicate_of_shard": owner_shards[partner[hits]],
            "kind": "semantic",
            "similarity": np.minimum(best[hits], 1.0).astype(np.float64),
        }, schema=DUPLICATE_SCHEMA))  # fmt: skip
    return pl.concat(found) if found else pl.DataFrame(schema=DUPLICATE_SCHEMA)


def dedup_shard(
    home: ClimbHome, version: str, shard: str, earlier: list[str], settings: SemanticSettings
) -> pl.DataFrame:
    """Check one shard against the shards registered before it under one centroid version; write its duplicates
    file (empty when none, or when switched off) and return it."""
    if settings.enabled:
        duplicates = find_semantic_duplicates(
            ByCluster.open(home, version, shard), [ByCluster.open(home, version, s) for s in earlier], settings
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
