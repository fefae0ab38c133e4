"""Cluster state in the lake: versioned centroids fitted on a sample, and per-shard assignments keyed by version.

```
lake/clusters/
  vNNNN-<hash>/centroids.npy, clusters.parquet, fit.json   one fit (centroids + stats measured on its sample)
  vNNNN-<hash>/assignments/<shard>.parquet                 doc_id, shard, cluster_id, distance: one file per shard
  CURRENT                                                  the current version's name: the only pointer
```

A refit writes a new version: every shard's assignment under it is missing (stale) until that shard is assigned
again; a new shard under the same centroids writes one file and touches no other. ``CURRENT`` is replaced by a
rename, so a reader sees the old name or the new one; a reader reads it once and passes that version down (dbt
gets it as ``CLIMB_CLUSTER_VERSION``), so centroids, assignments and decisions always come from one version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.cluster.kmeans import (
    DEFAULT_MAX_POINTS_PER_CENTROID,
    DEFAULT_NITER,
    assign,
    assignments_frame,
    cluster_stats,
    default_k,
    drift,
    fit_kmeans,
    match_to_previous,
    read_cluster_version,
)
from climb_assets.cluster.semantic_dedup import write_by_cluster
from climb_assets.cluster.sample import draw_sample, sample_size, shard_shape
from climb_assets.embed.encode import read_embeddings
from climb_assets.home import ClimbHome
from climb_assets.lake import (
    assignment_path,
    assignments_dir,
    cluster_dir,
    current_version_path,
    embeddings_dir,
)
from climb_assets.storage import atomic_path, write_parquet_atomic


def current_version(home: ClimbHome) -> str | None:
    pointer = current_version_path(home)
    return pointer.read_text().strip() if pointer.exists() else None


def require_current_version(home: ClimbHome) -> str:
    """The current version, or a clear error where nothing downstream of clustering can run yet."""
    version = current_version(home)
    if version is None:
        raise FileNotFoundError("no cluster centroids yet: run cluster_fit_job (or climb crawl) first")
    return version


def embedded_shards(home: ClimbHome) -> dict[str, Path]:
    """Shard name -> its embeddings file, sorted by name (the sample's shard order)."""
    return {p.name.removesuffix(".npz"): p for p in sorted(embeddings_dir(home).glob("*.npz"))}


def unassigned_shards(home: ClimbHome, version: str | None = None) -> list[str]:
    """Embedded shards with no assignment file under ``version`` (default: the current one)."""
    version = version or current_version(home)
    shards = list(embedded_shards(home))
    if version is None:
        return shards
    done = {p.stem for p in assignments_dir(home, version).glob("*.parquet")}
    return [s for s in shards if s not in done]


def scan_assignments(home: ClimbHome, version: str) -> pl.LazyFrame:
    """Every shard's assignment under ``version``; fails clearly while some shard is still unassigned."""
    missing = unassigned_shards(home, version)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} embedded shards have no assignment under {version} (e.g. {missing[:3]}): "
            "run cluster_assign_job for them (the recluster sensor requests it)"
        )
    return pl.scan_parquet(assignments_dir(home, version) / "*.parquet")


@dataclass(frozen=True)
class FitSettings:
    k: int = 0  # 0: scaled to the corpus (paper: 1000 at full scale)
    seed: int = 0
    niter: int = DEFAULT_NITER
    nredo: int = 3  # restarts, best kept: cheap at demo scale, set 1 at K=1000 on millions of documents
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID


def _embedding_model(path: Path) -> str:
    with np.load(path, allow_pickle=False) as data:  # reads only the small ``model`` member
        return str(data["model"])


def embedding_models(home: ClimbHome) -> dict[str, str]:
    """Shard -> the model its embeddings come from."""
    return {shard: _embedding_model(path) for shard, path in embedded_shards(home).items()}


def fit_centroids(home: ClimbHome, settings: FitSettings, *, gpu: int | None = None) -> tuple[str, dict]:
    """Fit centroids on a bounded sample across shards (on CPU, or on faiss GPU ``gpu``), keep ids stable against the
    current version, write a new version and make it current. Returns ``(version, fit info)``."""
    shards = embedded_shards(home)
    if not shards:
        raise FileNotFoundError("no embeddings in the lake yet: ingest and embed a shard first")
    models = set(embedding_models(home).values())
    if len(models) > 1:
        raise ValueError(f"embeddings come from different models {sorted(models)}: re-embed every shard with one")
    n_docs = sum(shard_shape(p)[0] for p in shards.values())
    k = settings.k or default_k(n_docs)
    size = sample_size(n_docs, k, settings.max_points_per_centroid)
    sample, rows_read = draw_sample(list(shards.values()), size, settings.seed)
    centroids = fit_kmeans(
        sample, k, seed=settings.seed, niter=settings.niter, nredo=settings.nredo,
        max_points_per_centroid=settings.max_points_per_centroid, gpu=gpu,
    )  # fmt: skip
    previous = current_version(home)
    prior = read_cluster_version(cluster_dir(home, previous))[:2] if previous else None
    if prior is not None and prior[0].shape[1] == centroids.shape[1]:
        ids, moved = match_to_previous(centroids, prior[0], prior[1])
    else:  # first fit, or a different embedding model: nothing to keep ids stable against
        ids, moved = np.arange(k, dtype=np.int64), 0
    order = np.argsort(ids)
    centroids, ids = centroids[order], ids[order]
    rows, dist = assign(sample, centroids, gpu=gpu)
    sizes, inertia = cluster_stats(rows, dist, k)
    info = {
        "model": models.pop(),
        "k": k,
        "seed": settings.seed,
        "docs": n_docs,
        "shards": len(shards),
        "sample_rows": size,
        "rows_read": rows_read,
        "reference_mean_sq_distance": float(inertia.sum() / max(size, 1)),
        "previous_version": previous or "",
        "clusters_with_new_id": moved,
    }
    digest = hashlib.sha256(centroids.tobytes() + ids.tobytes() + info["model"].encode()).hexdigest()[:8]
    number = int(previous.split("-")[0][1:]) + 1 if previous else 1
    version = f"v{number:04d}-{digest}"
    with atomic_path(cluster_dir(home, version)) as tmp:
        (tmp / "assignments").mkdir(parents=True)
        np.save(tmp / "centroids.npy", centroids)
        pl.DataFrame({"cluster_id": ids, "sample_docs": sizes, "sample_inertia": inertia}).write_parquet(
            tmp / "clusters.parquet"
        )
        (tmp / "fit.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    with atomic_path(current_version_path(home)) as pointer:  # written aside, renamed over the old one
        pointer.write_text(version)
    return version, info


def read_fit_info(home: ClimbHome, version: str) -> dict:
    return json.loads((cluster_dir(home, version) / "fit.json").read_text())


def assign_shard(home: ClimbHome, shard: str, version: str | None = None, *, gpu: int | None = None) -> dict:
    """Assign one shard to ``version``'s centroids (default: current): reads that shard only, writes its file only.

    Returns counts and ``drift``: the shard's mean squared distance to its centroid over the fit sample's.
    """
    version = version or require_current_version(home)
    centroids, cluster_ids, _ = read_cluster_version(cluster_dir(home, version))
    info = read_fit_info(home, version)
    embedded = read_embeddings(embedded_shards(home)[shard])
    if embedded.model != info["model"]:
        raise ValueError(f"shard {shard} embedded with {embedded.model}, centroids {version} with {info['model']}")
    frame = assignments_frame(embedded.ids, np.full(len(embedded.ids), shard), embedded.vectors, centroids, cluster_ids,
                               gpu=gpu)  # fmt: skip
    write_by_cluster(home, version, shard, frame, embedded.vectors)  # first: the assignment file marks it done
    write_parquet_atomic(frame, assignment_path(home, version, shard))
    return {
        "centroid_version": version,
        "docs": frame.height,
        "drift": round(drift(frame["distance"].to_numpy(), info["reference_mean_sq_distance"]), 4) if frame.height else 1.0,
    }

