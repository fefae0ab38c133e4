"""The climb code location: every stage's assets, checks, jobs, sensors and resources."""

import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from climb_assets.climbmix.assets import build_climbmix_assets  # noqa: E402
from climb_assets.cluster.assets import (  # noqa: E402
    SETTLE_SECONDS,
    SemanticDedupResource,
    build_recluster_sensor,
    build_refit_schedule,
    cluster_assignments,
    cluster_centroids,
    semantic_duplicates,
)
from climb_assets.embed.assets import EmbeddingModelResource, embeddings  # noqa: E402
from climb_assets.ingest.assets import (  # noqa: E402
    raw_shards,
    raw_shards_conserve_rows,
    shard_partitions,
)
from climb_assets.ingest.sensors import SHARD_ASSETS, build_landing_sensor  # noqa: E402
from climb_assets.instance import build_dead_run_sensor, guard_pool_slot_claims  # noqa: E402
from climb_assets.quality.assets import QualityScorerResource, quality_signals  # noqa: E402
from climb_assets.quality.dbt import build_dbt_quality_assets, dbt_resource  # noqa: E402
from climb_assets.quality.super_clusters import (  # noqa: E402
    quality_filtered_clusters,
    super_clusters_partition_check,
)
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.search.assets import build_search_assets, proxy_token_files  # noqa: E402
from climb_assets.search.sensors import build_search_sensor  # noqa: E402
from climb_assets.search.settings import (  # noqa: E402
    SEARCH_ITERATIONS,
    ProofSettings,
    SearchSettings,
)
from climb_assets.search.tracking import MlflowTracking  # noqa: E402

guard_pool_slot_claims()  # run workers of this code location claim pool slots too, not only the climb CLI

per_shard = dg.AssetSelection.assets(*SHARD_ASSETS)

ingest_shard_job = dg.define_asset_job(
    "ingest_shard_job",
    selection=per_shard,
    partitions_def=shard_partitions,
    description="Everything done once per landed shard: ingest, embed, score. The landing sensor launches it.",
)

cluster_fit_job = dg.define_asset_job(
    "cluster_fit_job",
    selection=dg.AssetSelection.assets(cluster_centroids),
    description="Fit cluster centroids on a bounded sample across shards (a new version; ids kept stable).",
)

cluster_assign_job = dg.define_asset_job(
    "cluster_assign_job",
    selection=dg.AssetSelection.assets(cluster_assignments),
    partitions_def=shard_partitions,
    description="Assign one shard's documents to the current centroids (reads and writes that shard only).",
)

semantic_dedup_job = dg.define_asset_job(
    "semantic_dedup_job",
    selection=dg.AssetSelection.assets(semantic_duplicates),
    partitions_def=shard_partitions,
    description="SemDeDup one assigned shard inside its fine clusters, against the shards registered before it.",
)


tokenize_shard_job = dg.define_asset_job(
    "tokenize_shard_job",
    selection=dg.AssetSelection.assets(proxy_token_files),
    partitions_def=shard_partitions,
    description="Tokenize one shard with the search's kept proxy tokenizer (a new wave: its new shards only).",
)


def build_recluster_job(dbt_quality_models: dg.AssetsDefinition):
    return dg.define_asset_job(
        "recluster_job",
        selection=dg.AssetSelection.assets(quality_filtered_clusters) | dg.AssetSelection.assets(dbt_quality_models),
        description="Once every shard is assigned: re-run dbt_quality over the assignments, prune and merge into "
        "super-clusters.",
    )


def default_resources() -> dict:
    return {
        "climb": ClimbHomeResource(),
        "semantic_dedup": SemanticDedupResource(),
        "embedder": EmbeddingModelResource(),
        "quality_scorer": QualityScorerResource(),
        "dbt": dbt_resource(),
        "search": SearchSettings(),
        "proof": ProofSettings(),
        "mlflow_tracking": MlflowTracking(),
    }


def build_search_job(search_assets: list):
    return dg.define_asset_job(
        "search_job",
        selection=dg.AssetSelection.assets(*search_assets),
        description="The CLIMB search (all iterations), then ClimbMix and its proof.",
    )


def build_definitions(
    search_iterations: int = SEARCH_ITERATIONS,
    executor: dg.ExecutorDefinition | None = None,
    sensor_interval_seconds: int | None = None,
    settle_seconds: float = SETTLE_SECONDS,
    **resource_overrides,
) -> dg.Definitions:
    """The code location; tests and benchmarks pass resources (a temp CLIMB_HOME, tiny search settings), may unroll
    fewer search iterations, may choose the executor (a distributed one: see deploy/README.md), and may make the
    landing and recluster sensors tick faster (``sensor_interval_seconds``; None: each sensor's own interval) and
    merge sooner (``settle_seconds``)."""
    interval = {"minimum_interval_seconds": sensor_interval_seconds} if sensor_interval_seconds else {}
    search_assets = build_search_assets(search_iterations) + build_climbmix_assets(search_iterations)
    dbt_quality_models = build_dbt_quality_assets()
    recluster_job = build_recluster_job(dbt_quality_models)
    search_job = build_search_job(search_assets)
    return dg.Definitions(
        assets=[
            raw_shards, embeddings, quality_signals, cluster_centroids, cluster_assignments, semantic_duplicates,
            dbt_quality_models, quality_filtered_clusters, proxy_token_files, *search_assets,
        ],  # fmt: skip
        asset_checks=[raw_shards_conserve_rows, super_clusters_partition_check],
        jobs=[ingest_shard_job, cluster_fit_job, cluster_assign_job, semantic_dedup_job, recluster_job,
              tokenize_shard_job, search_job],
        sensors=[
            build_landing_sensor(ingest_shard_job, **interval),
            build_recluster_sensor(cluster_fit_job, cluster_assign_job, semantic_dedup_job, recluster_job,
                                   settle_seconds=settle_seconds, **interval),
            build_search_sensor(search_job, tokenize_shard_job),
            build_dead_run_sensor(),
        ],
        schedules=[build_refit_schedule(cluster_fit_job)],
        resources=default_resources() | resource_overrides,
        executor=executor,
    )


defs = build_definitions()


def resolved_job(name: str) -> dg.JobDefinition:
    """A job of this code location, for executors that rebuild it in every step's process."""
    return defs.resolve_job_def(name)
