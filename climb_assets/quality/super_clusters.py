"""``quality_filtered_clusters``: drop the clusters dbt_quality pruned, merge the rest into super-clusters."""

import hashlib

import dagster as dg
import polars as pl

from climb_assets.cluster.assets import SemanticDedupResource
from climb_assets.cluster.kmeans import read_cluster_version
from climb_assets.cluster.lake import (
    cluster_dir,
    embedded_shards,
    require_current_version,
    scan_assignments,
)
from climb_assets.cluster.semantic_dedup import SemanticSettings, read_semantic_duplicates
from climb_assets.home import ClimbHome
from climb_assets.lake import (
    cluster_decisions_path,
    quality_dir,
    raw_shards_glob,
    super_cluster_documents_path,
    super_cluster_table_path,
)
from climb_assets.metadata import markdown_table
from climb_assets.quality.merge import (
    check_partition,
    document_super_map,
    load_cluster_decisions,
    prune_and_merge,
    purity_table,
    super_cluster_table,
    text_sample_ids,
    write_super_clusters,
)
from climb_assets.resources import ClimbHomeResource
from climb_assets.tags import CLUSTER_VERSION_POOL


class MergeConfig(dg.Config):
    """Ward linkage on kept centroids, cut at ``distance_threshold`` (paper: 1.5) or into ``target_count``
    super-clusters when set (0 = use the threshold, falling back to ~20 when it gives too few or too many)."""

    distance_threshold: float = 1.5
    target_count: int = 0


VERSION_DIGEST_ROWS = 100_000  # rows serialised per digest update: memory stays bounded by the slice


def super_clusters_version(centroid_version: str, mapping: pl.DataFrame, doc_super: pl.DataFrame) -> str:
    """Keyed by the centroids, the fine -> super mapping and which documents are in it (new shards assigned under
    the same centroids change the version): sha256 over the rows sorted by every column, written as CSV, so it is
    order-free and the same on every polars version (``hash_rows`` promises neither)."""
    digest = hashlib.sha256(mapping.write_csv().encode())
    columns = sorted(doc_super.columns)
    rows = doc_super.select(columns).sort(columns)
    for start in range(0, rows.height, VERSION_DIGEST_ROWS):
        digest.update(rows.slice(start, VERSION_DIGEST_ROWS).write_csv(include_header=start == 0).encode())
    return f"{centroid_version}-s{digest.hexdigest()[:8]}"


def deduplicated_assignments(home: ClimbHome, version: str, semantic: SemanticSettings) -> tuple[pl.DataFrame, int]:
    """Every shard's assignment under ``version`` less its semantic duplicates under ``semantic``, and how many
    were left out."""
    assignments = scan_assignments(home, version).select("doc_id", "cluster_id", "distance").collect()
    removed = read_semantic_duplicates(home, version, semantic, list(embedded_shards(home))).select("doc_id")
    return assignments.join(removed, on="doc_id", how="anti"), removed.height


def build_super_clusters(
    home: ClimbHome, config: MergeConfig, centroid_version: str, semantic: SemanticSettings = SemanticSettings()
):
    """Everything read under one explicit ``centroid_version``: centroids, assignments less semantic duplicates,
    and dbt's decisions (refused when dbt ran under another version, e.g. a refit landed between the two steps)."""
    centroids, cluster_ids, _ = read_cluster_version(cluster_dir(home, centroid_version))
    decisions = load_cluster_decisions(cluster_decisions_path(home))
    decided_under = set(decisions["centroid_version"]) if decisions.height else {centroid_version}
    if decided_under != {centroid_version}:
        raise ValueError(f"dbt's cluster decisions were computed under {sorted(decided_under)}, not {centroid_version}"
                         " (a refit moved the current version since): run recluster_job again")  # fmt: skip
    result = prune_and_merge(
        centroids, cluster_ids, decisions,
        distance_threshold=config.distance_threshold, target_count=config.target_count or None,
    )  # fmt: skip
    assignments, semantic_removed = deduplicated_assignments(home, centroid_version, semantic)
    doc_super = document_super_map(assignments, result.mapping)
    raw = pl.scan_parquet(raw_shards_glob(home))
    quality = pl.scan_parquet(quality_dir(home) / "*.parquet").select("doc_id", "quality_score")
    docs = (  # no text column: labels and examples read text for a bounded sample of ids only
        doc_super.lazy()
        .join(assignments.lazy().select("doc_id", "distance"), on="doc_id", how="left")
        .join(raw.select("doc_id", "n_tokens", "source_kind"), on="doc_id", how="left")
        .join(quality, on="doc_id", how="left")
        .collect()
    )
    wanted = text_sample_ids(docs)
    texts = raw.select("doc_id", "text").filter(pl.col("doc_id").is_in(wanted.implode())).collect()
    version = super_clusters_version(centroid_version, result.mapping, doc_super)
    table = super_cluster_table(docs, texts).with_columns(
        version=pl.lit(version), centroid_version=pl.lit(centroid_version), semantic_dedup=pl.lit(semantic.key)
    )
    write_super_clusters(home, result, doc_super, table)
    return result, decisions, docs, table, version, semantic_removed


@dg.asset(
    deps=["cluster_centroids", "cluster_assignments", "semantic_duplicates", dg.AssetKey(["cluster_decisions"])],
    group_name="quality",
    pool=CLUSTER_VERSION_POOL,  # no refit moves the current version while a merge reads it
    kinds={"scipy"},
)
def quality_filtered_clusters(
    config: MergeConfig, climb: ClimbHomeResource, semantic_dedup: SemanticDedupResource
) -> dg.MaterializeResult:
    """Kept fine clusters merged into super-clusters, the dimensions of the mixture search (CLIMB step 3)."""
    home = climb.home()
    result, decisions, docs, table, version, semantic_removed = build_super_clusters(
        home, config, require_current_version(home), semantic_dedup.settings()
    )
    pruned = decisions.filter(pl.col("decision") != "keep")
    purity = purity_table(docs.select("doc_id", "super_cluster_id"), docs.select("doc_id", "source_kind"))
    dominant = (
        purity.drop_nulls("super_cluster_id").sort("n_docs", descending=True)
        .group_by("super_cluster_id", maintain_order=True).first()
        .select("super_cluster_id", dominant_kind="source_kind", purity="purity").sort("super_cluster_id")
    )  # fmt: skip
    kept_docs = docs.filter(pl.col("super_cluster_id").is_not_null())
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "super_clusters": result.n_super,
            "merge_method": result.method,
            "merge_note": result.note,
            "fine_clusters_kept": int((result.mapping["decision"] == "keep").sum()),
            "fine_clusters_pruned": pruned.height,
            "docs_kept": kept_docs.height,
            "docs_pruned": docs.height - kept_docs.height,
            "semantic_duplicates_left_out": semantic_removed,
            "pruned_clusters": markdown_table(pruned.sort("cluster_id"), max_rows=100),
            "super_cluster_table": markdown_table(
                table.select("super_cluster_id", "label", "n_clusters", "n_docs", "n_tokens", "mean_quality",
                             pl.col("examples").list.first().str.slice(0, 140).alias("example"))  # fmt: skip
            ),
            "purity_report_only": markdown_table(dominant),
            "mean_purity": float(dominant["purity"].mean()),
        }
    )


@dg.asset_check(asset=quality_filtered_clusters, blocking=True, description="No document in two super-clusters; "
                "kept + pruned + semantic duplicates reconcile with clusters' assignments.")  # fmt: skip
def super_clusters_partition_check(climb: ClimbHomeResource) -> dg.AssetCheckResult:
    home = climb.home()
    doc_super = pl.read_parquet(super_cluster_documents_path(home))
    # the version the merge read, not CURRENT: a refit landing between the merge and its check changes nothing here
    table = pl.read_parquet(super_cluster_table_path(home), columns=["centroid_version", "semantic_dedup"]).unique()
    ((version, semantic_key),) = table.rows()
    assignments, _ = deduplicated_assignments(home, version, SemanticSettings.from_key(semantic_key))
    passed, message = check_partition(doc_super, assignments)
    return dg.AssetCheckResult(passed=passed, description=message, metadata={"summary": message})
