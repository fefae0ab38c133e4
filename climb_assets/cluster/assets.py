"""``clusters``: fan-in over every embedded shard; a refit or an assign-only update with stable cluster ids."""

import hashlib
import time
from pathlib import Path

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.cluster.kmeans import (  # noqa: E402
    ClusterResult,
    assignments_frame,
    cluster_corpus,
    clusters_frame,
    drift,
    read_cluster_version,
    write_cluster_version,
)
from climb_assets.embed.assets import embeddings  # noqa: E402
from climb_assets.embed.encode import read_embeddings  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.metadata import figure_markdown  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.storage import atomic_path  # noqa: E402
from climb_assets.tags import CLUSTER_TAGS, CLUSTER_VERSION_POOL  # noqa: E402


class ClusterConfig(dg.Config):
    """``assign_only`` puts new documents on the existing centroids (work proportional to the new shards) and refits
    only when they fit worse than ``max_drift`` times the corpus did; ``refit`` always runs K-means again."""

    mode: str = "assign_only"
    k: int = 0  # 0: scaled to the corpus (paper: 1000 at full scale)
    seed: int = 0
    niter: int = 20
    nredo: int = 3  # restarts, best kept: cheap at demo scale, set 1 at K=1000 on millions of documents
    max_points_per_centroid: int = 256
    max_drift: float = 1.25


def clusters_root(home: ClimbHome) -> Path:
    return home.lake_dir("clusters")


def current_version(home: ClimbHome) -> str | None:
    pointer = clusters_root(home) / "CURRENT"
    return pointer.read_text().strip() if pointer.exists() else None


def current_cluster_dir(home: ClimbHome) -> Path:
    """A stable path holding the current version's files (what dbt reads)."""
    return clusters_root(home) / "current"


def load_all_embeddings(home: ClimbHome) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    ids, vectors, shards, models = [], [], [], set()
    for path in sorted(home.lake_dir("embeddings").glob("*.npz")):
        emb = read_embeddings(path)
        ids.append(emb.ids)
        vectors.append(emb.vectors)
        shards.append(np.full(len(emb.ids), path.name.removesuffix(".npz")))
        models.add(emb.model)
    if not ids:
        raise dg.Failure("no embeddings in the lake yet: ingest and embed a shard first")
    if len(models) > 1:
        raise dg.Failure(f"embeddings come from different models {sorted(models)}: re-embed every shard with one model")
    return np.concatenate(ids), np.concatenate(vectors).astype(np.float32), np.concatenate(shards), models.pop()


def update_clusters(home: ClimbHome, config: ClusterConfig, embedded) -> tuple[str, ClusterResult, dict]:
    """``embedded``: ``load_all_embeddings(home)``, loaded once by the caller (it also feeds the plots)."""
    ids, vectors, shards, model = embedded
    previous = current_version(home)
    info: dict = {"model": model, "previous_version": previous or ""}
    result = None
    if previous and config.mode == "assign_only":
        centroids, cluster_ids, old_clusters = read_cluster_version(clusters_root(home) / previous)
        old = pl.read_parquet(clusters_root(home) / previous / "assignments.parquet")
        is_new = ~np.isin(ids, old["doc_id"].to_numpy())
        reference = float(old_clusters["inertia"].sum() / max(int(old_clusters["size"].sum()), 1))
        measured = drift(vectors[is_new], centroids, reference) if is_new.any() else 1.0
        info |= {"new_docs": int(is_new.sum()), "drift": round(measured, 4)}
        if measured <= config.max_drift and centroids.shape[1] == vectors.shape[1]:
            fresh = assignments_frame(ids[is_new], shards[is_new], vectors[is_new], centroids, cluster_ids)
            kept = old.filter(pl.col("doc_id").is_in(pl.Series(ids[~is_new])))
            assignments = pl.concat([kept, fresh])
            result = ClusterResult(centroids, cluster_ids, assignments, clusters_frame(assignments, cluster_ids), 0)
            info["mode"] = "assign_only"
        else:
            info["mode"] = "refit (drift above bound)"
    if result is None:
        prior = read_cluster_version(clusters_root(home) / previous)[:2] if previous else None
        if prior is not None and prior[0].shape[1] != vectors.shape[1]:
            prior = None  # a different embedding model: nothing to keep ids stable against
        result = cluster_corpus(
            vectors, ids, shards, k=config.k or None, seed=config.seed, niter=config.niter, nredo=config.nredo,
            max_points_per_centroid=config.max_points_per_centroid, previous=prior,
        )  # fmt: skip
        info.setdefault("mode", "refit")
    digest = hashlib.sha256(np.ascontiguousarray(result.centroids).tobytes())
    digest.update(np.sort(ids).astype(str).tobytes())
    number = int(previous.split("-")[0][1:]) + 1 if previous else 1
    version = f"v{number:04d}-{digest.hexdigest()[:8]}"
    write_cluster_version(clusters_root(home) / version, result)
    with atomic_path(current_cluster_dir(home)) as tmp:
        tmp.mkdir()
        for name in ("assignments.parquet", "clusters.parquet", "centroids.npy"):
            (tmp / name).write_bytes((clusters_root(home) / version / name).read_bytes())
        (tmp / "VERSION").write_text(version)
    with atomic_path(clusters_root(home) / "CURRENT") as tmp:
        tmp.write_text(version)
    return version, result, info


def cluster_plots(result: ClusterResult, vectors_sample: np.ndarray, labels_sample: np.ndarray) -> dict:
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.hist(result.clusters["size"].to_numpy(), bins=30)
    axis.set(xlabel="documents per cluster", ylabel="clusters", title="cluster sizes")
    sizes = figure_markdown(figure)
    centred = vectors_sample - vectors_sample.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter(projected[:, 0], projected[:, 1], c=labels_sample % 20, cmap="tab20", s=4)
    axis.set(title="embeddings (PCA, sample), coloured by cluster", xticks=[], yticks=[])
    return {"cluster_sizes": sizes, "projection": figure_markdown(figure)}


@dg.asset(deps=[embeddings], group_name="cluster", pool=CLUSTER_VERSION_POOL, op_tags=CLUSTER_TAGS, kinds={"faiss"})
def clusters(config: ClusterConfig, climb: ClimbHomeResource) -> dg.MaterializeResult:
    """Fine K-means clusters over the whole corpus (CLIMB step 2), versioned, with ids stable across re-clusterings."""
    home = climb.home()
    started = time.perf_counter()
    embedded = load_all_embeddings(home)
    version, result, info = update_clusters(home, config, embedded)
    seconds = time.perf_counter() - started
    assignments = result.assignments
    rng = np.random.default_rng(0)
    sample = rng.choice(assignments.height, size=min(3000, assignments.height), replace=False)
    sample_ids = assignments["doc_id"].gather(sample)
    ids, vectors, _, _ = embedded
    lookup = {doc_id: row for row, doc_id in enumerate(ids)}
    sample_vectors = vectors[[lookup[d] for d in sample_ids]]
    sizes = result.clusters["size"]
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "k": len(result.cluster_ids),
            "docs": assignments.height,
            "clusters_with_new_id": result.moved_count,
            "empty_clusters": int((sizes == 0).sum()),
            "median_cluster_size": float(sizes.median()),
            "seconds": round(seconds, 2),
            **info,
            **cluster_plots(result, sample_vectors, assignments["cluster_id"].gather(sample).to_numpy()),
        }
    )


def build_recluster_sensor(job, settle_seconds: float = 30.0) -> dg.SensorDefinition:
    @dg.sensor(
        name="recluster_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Re-clusters (and re-scores clusters) once new shards' embeddings have landed and settled.",
    )
    def recluster_sensor(context: dg.SensorEvaluationContext):
        latest_embedding = context.instance.fetch_materializations(dg.AssetKey("embeddings"), limit=1).records
        if not latest_embedding:
            return dg.SkipReason("no embeddings yet")
        latest_clusters = context.instance.fetch_materializations(dg.AssetKey("clusters"), limit=1).records
        newest = latest_embedding[0]
        if latest_clusters and latest_clusters[0].storage_id > newest.storage_id:
            return dg.SkipReason("clusters are newer than every embeddings partition")
        if time.time() - newest.timestamp < settle_seconds:
            return dg.SkipReason(f"waiting {settle_seconds:.0f}s for more shards to land")
        return dg.RunRequest(run_key=f"embeddings-{newest.storage_id}")

    return recluster_sensor
