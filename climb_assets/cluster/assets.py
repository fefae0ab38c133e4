"""Clustering as three assets: ``cluster_centroids`` (fitted on a bounded sample, versioned),
``cluster_assignments`` (one partition per shard, keyed by centroid version) and ``semantic_duplicates`` (SemDeDup
inside fine clusters, per shard), plus the sensor and schedule that keep them current: new shards are assigned and
checked on their own, a refit happens weekly or when drift crosses its bound."""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import faiss
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.attempts import ATTEMPT_TAG, bounded_attempts  # noqa: E402
from climb_assets.cluster.kmeans import (  # noqa: E402
    assign,
    faiss_gpu,
    read_cluster_version,
)
from climb_assets.cluster.lake import (  # noqa: E402
    FitSettings,
    assign_shard,
    current_version,
    embedded_shards,
    embedding_models,
    fit_centroids,
    read_fit_info,
    require_current_version,
    unassigned_shards,
)
from climb_assets.cluster.sample import draw_sample, shard_shape  # noqa: E402
from climb_assets.cluster.semantic_dedup import (  # noqa: E402
    DEFAULT_EPSILON,
    SemanticSettings,
    checked_shards,
    dedup_shard,
)
from climb_assets.devices import device_lease, gpu_slots  # noqa: E402
from climb_assets.embed.assets import embeddings  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.ingest.assets import earlier_shards, shard_partitions  # noqa: E402
from climb_assets.lake import cluster_dir, raw_shard_path  # noqa: E402
from climb_assets.metadata import figure_markdown, markdown_table  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.tags import CLUSTER_TAGS, CLUSTER_VERSION_POOL  # noqa: E402

DEFAULT_MAX_DRIFT = 1.25
SETTLE_SECONDS = 30.0  # the recluster sensor merges once nothing was assigned for this long
PLOT_SAMPLE = 3000


FIT_DEFAULTS = FitSettings()


class ClusterFitConfig(dg.Config):
    """K-means on ``k x max_points_per_centroid`` documents sampled across shards (faiss's own training bound)."""

    k: int = FIT_DEFAULTS.k  # 0: scaled to the corpus (paper: 1000 at full scale)
    seed: int = FIT_DEFAULTS.seed
    niter: int = FIT_DEFAULTS.niter
    nredo: int = FIT_DEFAULTS.nredo
    max_points_per_centroid: int = FIT_DEFAULTS.max_points_per_centroid


def cluster_plots(home: ClimbHome, version: str, seed: int = 0) -> dict:
    """Sample-size histogram and a PCA projection of a bounded sample, coloured by nearest centroid."""
    centroids, _, clusters = read_cluster_version(cluster_dir(home, version))
    figure, axis = plt.subplots(figsize=(5, 3))
    axis.hist(clusters["sample_docs"].to_numpy(), bins=30)
    axis.set(xlabel="sampled documents per cluster", ylabel="clusters", title="cluster sizes (fit sample)")
    sizes = figure_markdown(figure)
    paths = list(embedded_shards(home).values())
    total = sum(shard_shape(p)[0] for p in paths)
    vectors, _ = draw_sample(paths, min(PLOT_SAMPLE, total), seed + 1)
    rows, _ = assign(vectors, centroids)
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter(projected[:, 0], projected[:, 1], c=rows % 20, cmap="tab20", s=4)
    axis.set(title=f"embeddings (PCA, {len(vectors)} of {total} docs), by cluster", xticks=[], yticks=[])
    return {"cluster_sizes": sizes, "projection": figure_markdown(figure)}


@contextmanager
def faiss_device(context, home) -> Iterator[tuple[int | None, dict]]:
    """The GPU faiss may use in this step: one leased device (``cuda:N``, the lease every GPU step takes), never all
    of them while proxies train on the others. A faiss built without GPUs runs on the CPU and takes no lease."""
    if faiss.get_num_gpus() == 0:
        yield None, {"faiss_device": "cpu"}
        return
    with device_lease(home, gpu_slots(context.instance)) as lease:
        yield faiss_gpu(lease.device), lease.metadata() | {"faiss_device": lease.device}


@dg.asset(deps=[embeddings], group_name="cluster", pool=CLUSTER_VERSION_POOL, op_tags=CLUSTER_TAGS, kinds={"faiss"})
def cluster_centroids(
    context: dg.AssetExecutionContext, config: ClusterFitConfig, climb: ClimbHomeResource
) -> dg.MaterializeResult:
    """Fine K-means centroids (CLIMB step 2) fitted on a bounded sample across shards; versioned, ids stable
    across refits (Hungarian matching). A new version makes every shard's assignment stale."""
    home = climb.home()
    started = time.perf_counter()
    settings = FitSettings(**config.model_dump())
    with faiss_device(context, home) as (gpu, device):
        version, info = fit_centroids(home, settings, gpu=gpu)
    return dg.MaterializeResult(
        metadata={"version": version, "seconds": round(time.perf_counter() - started, 2), **info, **device,
                  **cluster_plots(home, version, config.seed)},  # fmt: skip
        data_version=dg.DataVersion(version),
    )


@dg.asset(
    deps=[embeddings, cluster_centroids],
    partitions_def=shard_partitions,
    group_name="cluster",
    kinds={"faiss"},
)
def cluster_assignments(context: dg.AssetExecutionContext, climb: ClimbHomeResource) -> dg.MaterializeResult:
    """Nearest centroid for every document of one shard, under the current centroid version: reads and writes
    that shard only. ``drift`` > its bound makes the recluster sensor request a refit."""
    home = climb.home()
    shard = context.partition_key
    with faiss_device(context, home) as (gpu, device):
        info = assign_shard(home, shard, gpu=gpu)
    return dg.MaterializeResult(metadata=info | device, data_version=dg.DataVersion(f"{info['centroid_version']}:{shard}"))


class SemanticDedupResource(dg.ConfigurableResource):
    """SemDeDup inside fine clusters: a document whose cosine similarity to an earlier document of its cluster is
    at least ``1 - epsilon`` is removed. A resource, not a step's config, because the semantic step and the merge
    must agree on it (the merge reads the results of exactly this setting)."""

    enabled: bool = True
    epsilon: float = DEFAULT_EPSILON

    def settings(self) -> SemanticSettings:
        return SemanticSettings(enabled=self.enabled, epsilon=self.epsilon)


EXAMPLE_PAIRS = 5


def example_pairs(home, duplicates) -> str:
    """The most similar few removed documents next to what they duplicate (texts read for those ids only)."""
    top = duplicates.sort("similarity", descending=True).head(EXAMPLE_PAIRS)
    wanted, texts = set(top["doc_id"].to_list()) | set(top["duplicate_of"].to_list()), {}
    for shard in set(top["shard"].to_list()) | set(top["duplicate_of_shard"].to_list()):
        found = pl.scan_parquet(raw_shard_path(home, shard)).filter(pl.col("doc_id").is_in(list(wanted)))
        texts |= dict(found.select("doc_id", pl.col("text").str.slice(0, 100)).collect().iter_rows())
    return markdown_table(top.select(
        "similarity", "cluster_id", removed=pl.col("doc_id").replace_strict(texts, default=""),
        kept=pl.col("duplicate_of").replace_strict(texts, default=""),
    ))  # fmt: skip


@dg.asset(
    deps=[cluster_assignments],
    partitions_def=shard_partitions,
    group_name="cluster",
    kinds={"numpy"},
)
def semantic_duplicates(
    context: dg.AssetExecutionContext, climb: ClimbHomeResource, semantic_dedup: SemanticDedupResource
) -> dg.MaterializeResult:
    """Semantic duplicates of one shard (SemDeDup): compared, cluster by cluster, with the documents of the same
    fine clusters in shards registered before it; written to ``lake/duplicates/semantic/`` and left out of the
    super-clusters (so of token counts, prior, baselines and every mixture)."""
    home = climb.home()
    shard = context.partition_key
    version = require_current_version(home)
    settings = semantic_dedup.settings()
    embedded = embedded_shards(home)
    earlier = [s for s in earlier_shards(context.instance.get_dynamic_partitions(shard_partitions.name), shard)
               if s in embedded]  # fmt: skip
    started = time.perf_counter()
    duplicates = dedup_shard(home, version, shard, earlier, settings)
    docs = shard_shape(embedded[shard])[0]
    return dg.MaterializeResult(
        metadata={
            "centroid_version": version,
            "semantic_dedup": dg.MetadataValue.json(settings.to_dict()),
            "docs": docs,
            "semantic_duplicates": duplicates.height,
            "removed_fraction": round(duplicates.height / max(docs, 1), 4),
            "within_shard": int((duplicates["duplicate_of_shard"] == shard).sum()),
            "compared_with_shards": len(earlier),
            "seconds": round(time.perf_counter() - started, 2),
            "examples": example_pairs(home, duplicates) if duplicates.height else "none",
        },
        data_version=dg.DataVersion(f"{version}:{settings.key}:{shard}:{len(earlier)}"),
    )


UNFINISHED_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                       dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]  # fmt: skip


def build_recluster_sensor(
    fit_job, assign_job, semantic_job, merge_job, *, settle_seconds: float = SETTLE_SECONDS,
    max_drift: float = DEFAULT_MAX_DRIFT, minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """Keeps clusters current without a global pass: first fit once there are embeddings; per-shard assignment
    runs for shards missing under the current version (new shards, or all after a refit); a refit when a shard
    assigned since the last fit drifted past ``max_drift``, or once every shard is embedded by a model other than
    the fit's (e.g. ``proxy-lm`` after a new base); once every shard is assigned, the semantic dedup of each
    shard not yet checked under this version and setting; then the merge (dbt_quality + super-clusters) once no
    assignment or semantic run is unfinished and nothing landed for ``settle_seconds``. A failed run is retried, up
    to MAX_ATTEMPTS (see ``bounded_attempts``)."""

    @dg.sensor(
        name="recluster_sensor",
        jobs=[fit_job, assign_job, semantic_job, merge_job],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def recluster_sensor(
        context: dg.SensorEvaluationContext, climb: ClimbHomeResource, semantic_dedup: SemanticDedupResource
    ):
        home = climb.home()
        if not embedded_shards(home):
            return dg.SkipReason("no embeddings yet")
        version = current_version(home)
        if version is None:
            first = dg.RunRequest(run_key="first-fit", job_name=fit_job.name)
            return bounded_attempts(context, [first], "cluster_centroids")
        models, fitted = set(embedding_models(home).values()), read_fit_info(home, version)["model"]
        if len(models) > 1:
            return dg.SkipReason(f"shards are embedded by {len(models)} models {sorted(models)[:3]}: waiting until "
                                 "every shard is re-embedded by one before refitting")  # fmt: skip
        (model,) = models
        if model != fitted:
            refit = dg.RunRequest(run_key=f"refit-{version}-for-{model}", job_name=fit_job.name,
                                  tags={"climb/refit_reason": f"embedding model changed: {fitted} -> {model}"})  # fmt: skip
            return bounded_attempts(context, [refit], "cluster_centroids")
        drifted = drifted_shards(context.instance, version, max_drift)
        if drifted:
            refit = dg.RunRequest(
                run_key=f"refit-after-{version}", job_name=fit_job.name,
                tags={"climb/refit_reason": f"drift > {max_drift} in {', '.join(drifted[:5])}"},
            )  # fmt: skip
            return bounded_attempts(context, [refit], "cluster_centroids")
        missing = unassigned_shards(home, version)
        if missing:
            return bounded_attempts(context, [
                dg.RunRequest(run_key=f"{version}:{shard}", job_name=assign_job.name, partition_key=shard)
                for shard in missing
            ], "cluster_assignments")  # fmt: skip
        settings = semantic_dedup.settings()
        unchecked = sorted(set(embedded_shards(home)) - checked_shards(home, version, settings))
        if unchecked:
            return bounded_attempts(context, [
                dg.RunRequest(run_key=f"{version}:{settings.key}:{shard}", job_name=semantic_job.name,
                              partition_key=shard)
                for shard in unchecked
            ], "semantic_duplicates")  # fmt: skip
        # a run writes its files before Dagster stores its materialization: merging on the files alone raced a run
        # still finishing, and the merge ran twice (once per materialization)
        busy = [run.tags.get(ATTEMPT_TAG, run.run_id) for job in (assign_job, semantic_job)
                for run in context.instance.get_runs(dg.RunsFilter(job_name=job.name, statuses=UNFINISHED_STATUSES))]  # fmt: skip
        if busy:
            return dg.SkipReason(f"waiting for {len(busy)} assignment or semantic runs to finish before the merge "
                                 f"({', '.join(busy[:3])})")  # fmt: skip
        latest = max(
            (r for key in ("cluster_assignments", "semantic_duplicates")
             for r in context.instance.fetch_materializations(dg.AssetKey(key), limit=1).records),
            key=lambda r: r.storage_id, default=None,
        )  # fmt: skip
        merged = context.instance.fetch_materializations(dg.AssetKey("quality_filtered_clusters"), limit=1).records
        if merged and latest and merged[0].storage_id > latest.storage_id:
            return dg.SkipReason(f"super-clusters are current for {version}")
        if latest and time.time() - latest.timestamp < settle_seconds:
            return dg.SkipReason(f"waiting {settle_seconds:.0f}s for more shards to land")
        merge = dg.RunRequest(run_key=f"merge-{version}-{latest.storage_id if latest else 0}", job_name=merge_job.name)
        return bounded_attempts(context, [merge], "quality_filtered_clusters")

    return recluster_sensor


def drifted_shards(instance: dg.DagsterInstance, version: str, max_drift: float, limit: int = 1000) -> list[str]:
    """Shards assigned under ``version`` whose drift exceeds ``max_drift`` (from the assignment events)."""
    records = instance.fetch_materializations(dg.AssetKey("cluster_assignments"), limit=limit).records
    out = []
    for record in records:
        materialization = record.asset_materialization
        meta = materialization.metadata if materialization else {}
        if meta.get("centroid_version") and meta["centroid_version"].value == version:
            if meta["drift"].value > max_drift:
                out.append(materialization.partition)
    return out


def build_refit_schedule(fit_job, cron_schedule: str = "0 4 * * 0") -> dg.ScheduleDefinition:
    """The scheduled refit (weekly by default): new centroids from a fresh sample; the recluster sensor then
    re-assigns every shard under them and re-merges."""
    return dg.ScheduleDefinition(
        name="cluster_refit_schedule",
        job=fit_job,
        cron_schedule=cron_schedule,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Refit cluster centroids on a fresh sample across shards (ids kept stable).",
    )
