"""Every path in the lake, in one place: each stage reads and writes through these functions, and the dbt sources
get theirs from ``dbt_environment``. Names from the landing directory go through ``lake_file``, so a partition key
can never escape its directory.

```
lake/
  raw_shards/<shard>.parquet          accepted documents (doc_id, text, n_tokens, metadata)
  quarantine/<shard>.parquet          rejected rows with their reason
  duplicates/<shard>.parquet          exact and near-duplicates: the id they duplicate, kind, similarity
  duplicates/semantic/<version>/<settings>/<shard>.parquet   semantic duplicates inside fine clusters
  dedup_index/index.duckdb            hashes, ids and MinHash bands of every registered shard
  ingest_staging/<shard>/             a shard between raw_shards' exact and fuzzy steps (removed after the second)
  landing_registry/, landing_rejected/ what the landing sensor registered or refused
  embeddings/<shard>.npz              document embeddings; embedding_quarantine/<shard>.parquet
  quality/<shard>.parquet             per-document quality signals
  clusters/<version>/                 centroids.npy, clusters.parquet, fit.json, assignments/<shard>.parquet,
                                      by_cluster/<shard>/ (vectors in cluster order, for semantic dedup); CURRENT
  dbt/cluster_decisions.parquet       dbt_quality's keep/prune decisions; quality.duckdb is dbt's database
  super_clusters/                     documents.parquet (doc -> super-cluster), super_clusters.parquet (table)
  tokens/<tokenizer sha[:16]>/        memory-mapped token files per raw shard
  search/                             tokenizers/, base/, proxies/, proof_runs/, loss_guided/ (content-addressed),
                                      searches/<key>/
climbmix/<search key>/                the final mixture's shards, manifest.json, proof.md, proof_runs.parquet,
                                      proof_cluster_loss.parquet, transfer.md, transfer_runs.parquet
```
"""

from __future__ import annotations

from pathlib import Path

from climb_assets.home import ClimbHome
from climb_assets.storage import lake_file

# --- ingest -----------------------------------------------------------------------------------------------------


def raw_shards_dir(home: ClimbHome) -> Path:
    return home.lake_dir("raw_shards")


def raw_shard_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(raw_shards_dir(home), shard, ".parquet")


def raw_shards_glob(home: ClimbHome) -> Path:
    """Every raw shard, for a lazy scan (``pl.scan_parquet``)."""
    return raw_shards_dir(home) / "*.parquet"


def quarantine_dir(home: ClimbHome) -> Path:
    return home.lake_dir("quarantine")


def quarantine_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(quarantine_dir(home), shard, ".parquet")


def duplicates_dir(home: ClimbHome) -> Path:
    """Exact and near duplicates removed at ingest, one file per shard; ``semantic/`` holds the semantic step's."""
    return home.lake_dir("duplicates")


def duplicates_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(duplicates_dir(home), shard, ".parquet")


def ingest_staging_dir(home: ClimbHome, shard: str) -> Path:
    """A shard's validated, exactly de-duplicated rows between ``raw_shards``' two steps (gone once it is ingested)."""
    return lake_file(home.lake_dir("ingest_staging"), shard, "")


def dedup_index_path(home: ClimbHome) -> Path:
    return home.lake_dir("dedup_index") / "index.duckdb"


def landing_registry_dir(home: ClimbHome) -> Path:
    return home.lake_dir("landing_registry")


def landing_rejected_path(home: ClimbHome) -> Path:
    return home.lake_dir("landing_rejected") / "rejected.parquet"


# --- embed and quality ------------------------------------------------------------------------------------------


def embeddings_dir(home: ClimbHome) -> Path:
    return home.lake_dir("embeddings")


def embeddings_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(embeddings_dir(home), shard, ".npz")


def embedding_quarantine_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(home.lake_dir("embedding_quarantine"), shard, ".parquet")


def quality_dir(home: ClimbHome) -> Path:
    return home.lake_dir("quality")


def quality_path(home: ClimbHome, shard: str) -> Path:
    return lake_file(quality_dir(home), shard, ".parquet")


# --- clusters and dbt -------------------------------------------------------------------------------------------


def clusters_root(home: ClimbHome) -> Path:
    return home.lake_dir("clusters")


def current_version_path(home: ClimbHome) -> Path:
    """The one pointer to the current centroid version (its name), replaced by a rename."""
    return clusters_root(home) / "CURRENT"


def cluster_dir(home: ClimbHome, version: str) -> Path:
    """One fit: centroids.npy, clusters.parquet, fit.json, and assignments/."""
    return clusters_root(home) / version


def assignments_dir(home: ClimbHome, version: str) -> Path:
    return cluster_dir(home, version) / "assignments"


def assignment_path(home: ClimbHome, version: str, shard: str) -> Path:
    return lake_file(assignments_dir(home, version), shard, ".parquet")


def by_cluster_dir(home: ClimbHome, version: str, shard: str) -> Path:
    """One shard's documents in fine-cluster order: members.parquet (doc_id, cluster_id) and vectors.npy (float16,
    the same rows), so one cluster's vectors are a contiguous slice read through a memory map."""
    return lake_file(cluster_dir(home, version) / "by_cluster", shard, "")


def semantic_duplicates_dir(home: ClimbHome, version: str, settings_key: str) -> Path:
    return duplicates_dir(home) / "semantic" / version / settings_key


def semantic_duplicates_path(home: ClimbHome, version: str, settings_key: str, shard: str) -> Path:
    """The documents of one shard removed as semantic duplicates under one centroid version and setting; the file
    exists (perhaps empty) once the shard has been checked."""
    return lake_file(semantic_duplicates_dir(home, version, settings_key), shard, ".parquet")


def dbt_dir(home: ClimbHome) -> Path:
    return home.lake_dir("dbt")


def cluster_decisions_path(home: ClimbHome) -> Path:
    """Where ``dbt build`` leaves the keep/prune decisions for Python (read with merge.load_cluster_decisions)."""
    return dbt_dir(home) / "cluster_decisions.parquet"


def dbt_database_path(home: ClimbHome) -> Path:
    return home.lake / "quality.duckdb"


def super_clusters_dir(home: ClimbHome) -> Path:
    return home.lake_dir("super_clusters")


def super_cluster_documents_path(home: ClimbHome) -> Path:
    """Which kept document is in which super-cluster (doc_id, cluster_id, super_cluster_id)."""
    return super_clusters_dir(home) / "documents.parquet"


def super_cluster_table_path(home: ClimbHome) -> Path:
    """One row per super-cluster: label, counts, mean quality, examples and the version."""
    return super_clusters_dir(home) / "super_clusters.parquet"


def super_cluster_mapping_path(home: ClimbHome) -> Path:
    """Fine cluster -> super-cluster (or pruned) with the merge's decision."""
    return super_clusters_dir(home) / "mapping.parquet"


# --- search -----------------------------------------------------------------------------------------------------


def tokens_root(home: ClimbHome) -> Path:
    return home.lake_dir("tokens")


def search_root(home: ClimbHome) -> Path:
    return home.lake_dir("search")


def tokenizer_path(home: ClimbHome, tokenizer_fingerprint: str) -> Path:
    return search_root(home) / "tokenizers" / f"{tokenizer_fingerprint}.json"


def tokenizer_record_path(home: ClimbHome, tokenizer_fingerprint: str) -> Path:
    """What the tokenizer was trained on (sample size and digest, the super-cluster version then current)."""
    return search_root(home) / "tokenizers" / f"{tokenizer_fingerprint}.sample.json"


def base_checkpoint_path(home: ClimbHome, base_fingerprint: str) -> Path:
    """The weights; ``.json`` beside them records how they were made, and with which tokenizer."""
    return search_root(home) / "base" / f"{base_fingerprint}.pt"


def newest_base_checkpoint(home: ClimbHome) -> Path:
    found = sorted((search_root(home) / "base").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no base checkpoint under {search_root(home) / 'base'}: run search_job once first")
    return found[-1]


def loss_guided_path(home: ClimbHome, key: str) -> Path:
    """One loss-guided bootstrapping run (its rounds' weights and losses, its final mixture), by its fingerprint."""
    return search_root(home) / "loss_guided" / f"{key}.json"


def proxy_markers_dir(home: ClimbHome) -> Path:
    """Finished proxy runs' records, content-addressed (``<fingerprint>.json``): any search whose proxy has the
    same key reuses it."""
    return search_root(home) / "proxies"


def proof_markers_dir(home: ClimbHome) -> Path:
    """Finished proof runs' records, content-addressed like the proxies'."""
    return search_root(home) / "proof_runs"


def search_state_dir(home: ClimbHome, search_key: str) -> Path:
    """One search's own state: its iterations and its baselines."""
    return search_root(home) / "searches" / search_key


def search_iteration_dir(home: ClimbHome, search_key: str, iteration: int) -> Path:
    """An iteration's candidates.parquet, results.parquet and predictor/."""
    return search_state_dir(home, search_key) / f"iteration_{iteration}"


def search_groups_path(home: ClimbHome, search_key: str) -> Path:
    """The super-clusters a search searched over (per kept fine cluster: its super-cluster, tokens and the token
    prior), kept with the search: the lake's move on with the crawl, and a later search carries runs through these."""
    return search_state_dir(home, search_key) / "groups.parquet"


def search_continuation_path(home: ClimbHome, search_key: str) -> Path:
    """How a search started: from scratch, or continuing its lineage's previous search (and the refresh's verdict)."""
    return search_state_dir(home, search_key) / "continuation.json"


def search_evidence_dir(home: ClimbHome, search_key: str) -> Path:
    """A continued search's evidence: the previous search's runs carried into its super-clusters (runs.parquet) and
    the predictor fitted on them (predictor/)."""
    return search_state_dir(home, search_key) / "evidence"


def lineage_dir(home: ClimbHome, lineage: str) -> Path:
    """Searches with the same settings, tokenizer and target over a growing crawl: ``finished/<search key>.json``
    per completed search, ``parents/<corpus>.json`` pins which one a search over that corpus continues."""
    return search_root(home) / "lineages" / lineage


# --- ClimbMix ---------------------------------------------------------------------------------------------------


def climbmix_dir(home: ClimbHome, search_key: str) -> Path:
    """One search's ClimbMix (shards, manifest, proof), swapped whole: two searches in one home (two targets, two
    settings) never overwrite each other's mixture, and a proof reads only its own search's weights."""
    return home.climbmix / search_key


def climbmix_manifest_path(home: ClimbHome, search_key: str) -> Path:
    return climbmix_dir(home, search_key) / "manifest.json"


def proof_report_path(home: ClimbHome, search_key: str) -> Path:
    return climbmix_dir(home, search_key) / "proof.md"


def proof_runs_path(home: ClimbHome, search_key: str) -> Path:
    return climbmix_dir(home, search_key) / "proof_runs.parquet"


def proof_cluster_loss_path(home: ClimbHome, search_key: str) -> Path:
    """Per super-cluster: held-out bits per byte of the base and of each proof mixture's models (mean over seeds)."""
    return climbmix_dir(home, search_key) / "proof_cluster_loss.parquet"


def transfer_runs_path(home: ClimbHome, search_key: str) -> Path:
    """The transfer check's runs: every proof mixture trained by the larger model, per seed."""
    return climbmix_dir(home, search_key) / "transfer_runs.parquet"


def transfer_report_path(home: ClimbHome, search_key: str) -> Path:
    return climbmix_dir(home, search_key) / "transfer.md"


# --- the dbt sources --------------------------------------------------------------------------------------------


def dbt_environment(home: ClimbHome, cluster_version: str) -> dict[str, str]:
    """Environment variables for a dbt run of ``dbt_quality`` over ``home``'s lake under one centroid version (read
    once by the caller and passed down, so the assignments and the decisions dbt writes name the same version): the
    sources' paths come from here (``dbt_quality/models/sources.yml`` reads them with ``env_var``).

    Also creates ``lake/dbt/``: dbt-duckdb writes cluster_decisions.parquet with DuckDB's COPY, which does not
    create directories.
    """
    dbt_dir(home).mkdir(parents=True, exist_ok=True)
    return {
        "CLIMB_HOME": str(home.root),
        "DBT_DUCKDB_PATH": str(dbt_database_path(home)),
        "CLIMB_LAKE_RAW_SHARDS": str(raw_shards_glob(home)),
        "CLIMB_LAKE_QUARANTINE": str(quarantine_dir(home) / "*.parquet"),
        "CLIMB_LAKE_DUPLICATES": str(duplicates_dir(home) / "*.parquet"),
        "CLIMB_LAKE_QUALITY": str(quality_dir(home) / "*.parquet"),
        "CLIMB_LAKE_ASSIGNMENTS": str(assignments_dir(home, cluster_version) / "*.parquet"),
        "CLIMB_CLUSTER_VERSION": cluster_version,
        "CLIMB_LAKE_CLUSTER_DECISIONS": str(cluster_decisions_path(home)),
    }
