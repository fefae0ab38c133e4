"""``raw_shards``: one dynamic partition per landed crawl file, ingested into the lake in two steps."""

import hashlib
import json
import shutil

import dagster as dg
import polars as pl
from pydantic import model_validator

from climb_assets.home import ClimbHome
from climb_assets.ingest.dedup_index import DedupIndex
from climb_assets.ingest.landing import landed_path
from climb_assets.ingest.near_dedup import FuzzySettings
from climb_assets.ingest.shards import (
    IngestSettings,
    ShardResult,
    UnreadableShardError,
    count_shard_rows,
    read_shard,
    remove_near_duplicates,
)
from climb_assets.lake import (
    dedup_index_path,
    duplicates_path,
    ingest_staging_dir,
    quarantine_path,
    raw_shard_path,
)
from climb_assets.metadata import markdown_table
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import atomic_path, write_parquet_atomic
from climb_assets.tags import LAKE_WRITER_POOL

shard_partitions = dg.DynamicPartitionsDefinition(name="raw_shards")


class IngestConfig(dg.Config):
    text_field: str = "text"
    id_field: str = "id"
    min_chars: int = 20
    max_chars: int = 200_000
    fuzzy_dedup: bool = True  # MinHash-LSH near-duplicates (near_dedup.py); exact duplicates are always removed
    fuzzy_threshold: float = FuzzySettings.threshold
    fuzzy_ngram: int = FuzzySettings.ngram
    fuzzy_bands: int = FuzzySettings.bands
    fuzzy_rows: int = FuzzySettings.rows

    @model_validator(mode="after")
    def _check(self) -> "IngestConfig":
        """A bad setting is refused when the run's config is built, named, before any shard is read."""
        self.settings()
        return self

    def settings(self) -> IngestSettings:
        fuzzy = (
            FuzzySettings(ngram=self.fuzzy_ngram, bands=self.fuzzy_bands, rows=self.fuzzy_rows, threshold=self.fuzzy_threshold)
            if self.fuzzy_dedup else None
        )  # fmt: skip
        return IngestSettings(
            text_field=self.text_field, id_field=self.id_field, min_chars=self.min_chars, max_chars=self.max_chars,
            fuzzy=fuzzy,
        )  # fmt: skip


def earlier_shards(registered: list[str], shard: str) -> list[str]:
    """Shards registered before ``shard``: the ones it is de-duplicated against.

    Using registration order (not "everything in the lake") keeps a re-materialization identical even after later
    shards have landed.
    """
    return registered[: registered.index(shard)] if shard in registered else list(registered)


def stage_exact(home: ClimbHome, shard: str, settings: IngestSettings, earlier: list[str]) -> ShardResult:
    """``raw_shards``' first step: validate the landed file and remove exact duplicates (the index is asked about this
    shard's hashes and ids only); the result is staged, nothing in the lake changes yet."""
    source = landed_path(home, shard)
    if not source.exists():
        raise UnreadableShardError(f"{shard}: no such file in {home.landing}")
    with DedupIndex(dedup_index_path(home)) as index:
        index.backfill(earlier, lambda s: raw_shard_path(home, s))
        result = read_shard(source, shard, settings, seen=lambda hashes, ids: index.lookup(hashes, ids, earlier))
    with atomic_path(ingest_staging_dir(home, shard)) as staging:
        result.save(staging)
    return result


def finish_near(home: ClimbHome, shard: str, settings: IngestSettings, earlier: list[str]) -> ShardResult:
    """``raw_shards``' second step: remove near-duplicates from the staged shard (the index is asked about its MinHash
    bands only; only its candidates' texts are read back), then write quarantine and duplicates, the documents file,
    and the index, last."""
    staging = ingest_staging_dir(home, shard)
    if not staging.exists():
        raise FileNotFoundError(f"{shard} has no staged rows in {staging.parent}: its exact step has not run")
    result = ShardResult.load(staging)
    fuzzy = settings.fuzzy
    with DedupIndex(dedup_index_path(home)) as index:
        if fuzzy:
            index.backfill(earlier, lambda s: raw_shard_path(home, s), fuzzy)
            result = remove_near_duplicates(
                result, shard, fuzzy,
                lambda bands: index.near_candidates(bands, earlier, fuzzy), lambda wanted: earlier_texts(home, wanted),
            )  # fmt: skip
        write_parquet_atomic(result.quarantine, quarantine_path(home, shard))
        write_parquet_atomic(result.duplicates, duplicates_path(home, shard))
        write_parquet_atomic(result.documents, raw_shard_path(home, shard))
        # after the documents file: a crash before this is healed by backfill
        index.replace(shard, result.documents, result.bands, fuzzy)
    shutil.rmtree(staging)
    return result


def ingest_to_lake(home: ClimbHome, shard: str, settings: IngestSettings, earlier: list[str]) -> ShardResult:
    """Both steps of ``raw_shards`` for one landed file, as the asset runs them."""
    stage_exact(home, shard, settings, earlier)
    return finish_near(home, shard, settings, earlier)


def earlier_texts(home: ClimbHome, wanted: dict[str, list[str]]) -> dict[tuple[str, str], str]:
    """The texts of a few accepted documents of earlier shards (near-duplicate candidates), in one scan of the shards
    that hold them: a file per shard would cost a read per shard, and candidates spread over more shards as the
    corpus grows."""
    if not wanted:
        return {}
    ids = [doc_id for doc_ids in wanted.values() for doc_id in doc_ids]
    found = (
        pl.scan_parquet([raw_shard_path(home, shard) for shard in wanted]).select("shard", "doc_id", "text")
        .filter(pl.col("doc_id").is_in(ids)).collect()
    )  # fmt: skip
    return {(shard, doc_id): text for shard, doc_id, text in found.iter_rows()}  # ids are unique among accepted


def ingest_version(file_sha256: str, settings: IngestSettings) -> str:
    """The shard's data version: its bytes and the de-duplication settings that decided which documents stay."""
    fuzzy = settings.fuzzy.to_dict() if settings.fuzzy else None
    return hashlib.sha256(json.dumps([file_sha256, fuzzy], sort_keys=True).encode()).hexdigest()


def conservation(home: ClimbHome, shard: str, settings: IngestSettings) -> dict[str, int]:
    """Rows in the landed file vs. rows in the three lake outputs, counted independently of ingestion."""
    counts = {
        "rows_read": count_shard_rows(landed_path(home, shard), settings),
        "accepted": pl.scan_parquet(raw_shard_path(home, shard)).select(pl.len()).collect().item(),
        "quarantined": pl.scan_parquet(quarantine_path(home, shard)).select(pl.len()).collect().item(),
        "duplicates": pl.scan_parquet(duplicates_path(home, shard)).select(pl.len()).collect().item(),
    }
    return counts


def shard_and_earlier(context: dg.OpExecutionContext) -> tuple[str, list[str]]:
    shard = context.partition_key
    return shard, earlier_shards(context.instance.get_dynamic_partitions(shard_partitions.name), shard)


@dg.op(out=dg.Out(dg.Nothing), pool=LAKE_WRITER_POOL)
def exact_dedup(context: dg.OpExecutionContext, config: IngestConfig, climb: ClimbHomeResource) -> None:
    """Validate and normalise the landed file, quarantine bad rows with a reason, remove exact duplicates (staged)."""
    shard, earlier = shard_and_earlier(context)
    try:
        result = stage_exact(climb.home(), shard, config.settings(), earlier)
    except UnreadableShardError as exc:
        raise dg.Failure(description=f"Cannot ingest {shard}: {exc}", allow_retries=False) from exc
    context.add_output_metadata({
        "rows_read": result.rows_read,
        "validated_unique": len(result.documents),
        "quarantined": len(result.quarantine),
        "exact_duplicates": len(result.duplicates),
    })  # fmt: skip


@dg.op(ins={"staged": dg.In(dg.Nothing)}, pool=LAKE_WRITER_POOL)
def fuzzy_dedup(context: dg.OpExecutionContext, config: IngestConfig, climb: ClimbHomeResource) -> dg.MaterializeResult:
    """Remove near-duplicates (MinHash-LSH, verified by Jaccard) and write the shard into the lake."""
    home = climb.home()
    shard, earlier = shard_and_earlier(context)
    settings = config.settings()
    result = finish_near(home, shard, settings, earlier)
    docs = result.documents
    return dg.MaterializeResult(
        metadata={
            "rows_read": result.rows_read,
            "accepted": len(docs),
            "quarantined": len(result.quarantine),
            "duplicates": len(result.duplicates),
            "exact_duplicates": int((result.duplicates["kind"] == "exact").sum()),
            "fuzzy_duplicates": int((result.duplicates["kind"] == "fuzzy").sum()),
            "fuzzy_dedup": dg.MetadataValue.json(settings.fuzzy.to_dict() if settings.fuzzy else {"enabled": False}),
            "quarantine_reasons": dg.MetadataValue.json(result.reasons),
            "bytes_in": landed_path(home, shard).stat().st_size,
            "text_bytes": int(docs["text"].str.len_bytes().sum() or 0),
            "tokens": int(docs["n_tokens"].sum() or 0),
            "file_sha256": result.file_sha256,
            "landed_file": landed_path(home, shard).name,
            "path": dg.MetadataValue.path(str(raw_shard_path(home, shard))),
            "preview": markdown_table(
                docs.head(5).select("doc_id", pl.col("text").str.slice(0, 120), "n_tokens", "source_kind")
            ),
        },
        data_version=dg.DataVersion(ingest_version(result.file_sha256, settings)),
    )


@dg.config_mapping
def both_steps(config: IngestConfig) -> dict:
    """One ``raw_shards`` config (``ops: {raw_shards: {config: ...}}``) for both of its steps."""
    return {step: {"config": config.model_dump()} for step in ("exact_dedup", "fuzzy_dedup")}


@dg.graph_asset(partitions_def=shard_partitions, group_name="ingest", kinds={"polars", "parquet"}, config=both_steps)
def raw_shards():
    """Landed crawl file → normalised, id'd, de-duplicated documents in the lake (rejects quarantined with a reason).
    Two steps: exact duplicates, then near-duplicates."""
    return fuzzy_dedup(exact_dedup())


@dg.asset_check(
    asset=raw_shards,
    partitions_def=shard_partitions,
    blocking=True,
    description="rows read = accepted + quarantined + duplicates",
)
def raw_shards_conserve_rows(
    context: dg.AssetCheckExecutionContext, config: IngestConfig, climb: ClimbHomeResource
) -> dg.AssetCheckResult:
    counts = conservation(climb.home(), context.partition_key, config.settings())
    balance = counts["rows_read"] - counts["accepted"] - counts["quarantined"] - counts["duplicates"]
    return dg.AssetCheckResult(passed=balance == 0, metadata={**counts, "unaccounted_rows": balance})
