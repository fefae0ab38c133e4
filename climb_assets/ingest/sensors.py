"""The landing sensor: new crawl files become ``raw_shards`` partitions and get their runs requested; files that
cannot be ingested are refused visibly (lake table + asset observation), never skipped in silence. A registered
shard whose ingestion failed or was killed is requested again (bounded attempts), never left out for good."""

import json

import dagster as dg

from climb_assets.attempts import bounded_attempts
from climb_assets.ingest.assets import shard_partitions
from climb_assets.ingest.landing import (
    LandedFile,
    changed_content,
    record_rejections,
    register,
    scan_landing,
)
from climb_assets.lake import landing_rejected_path
from climb_assets.metadata import markdown_table
from climb_assets.resources import ClimbHomeResource

RAW_SHARDS = dg.AssetKey("raw_shards")
# What one shard's ingest run (``ingest_shard_job``) writes: a shard is ingested once all three are materialized.
SHARD_ASSETS = [RAW_SHARDS, dg.AssetKey("embeddings"), dg.AssetKey("quality_signals")]


def build_landing_sensor(job, *, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new file in CLIMB_HOME/landing as a raw_shards partition and ingests it; "
        "refused files go to lake/landing_rejected with their reason.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, climb: ClimbHomeResource) -> dg.SensorResult:
        home = climb.home()
        cursor = json.loads(context.cursor) if context.cursor else {}
        known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        scan = scan_landing(home, cursor, known)
        for landed in scan.new:
            register(home, landed)
        changed = changed_content(home, scan.changed, lambda key: _ingested_sha256(context.instance, key))
        events = [_changed_event(context, landed, size, mtime) for landed, size, mtime in changed]
        if scan.rejected:
            table = record_rejections(home, scan.rejected)
            for rejection in scan.rejected:
                context.log.warning(f"Refused {rejection.name!r}: {rejection.reason}")
            events.append(dg.AssetObservation(asset_key=RAW_SHARDS, metadata={
                "rejected_files": markdown_table(table.tail(50)),
                "rejected_total": table.height,
                "newly_rejected": [r.name for r in scan.rejected],
                "rejected_table": dg.MetadataValue.path(str(landing_rejected_path(home))),
            }))  # fmt: skip
        keys = [landed.key for landed in scan.new]
        names = {landed.key: landed.name for landed in scan.new}
        # every registered shard whose ingest run has not completed: the new ones, and any whose run failed or died
        # (killed, OOM) before all of the job's assets were written
        done = set.intersection(*(context.instance.get_materialized_partitions(key) for key in SHARD_ASSETS))
        pending = sorted((known | set(keys)) - done)
        attempts = bounded_attempts(context, [
            dg.RunRequest(run_key=f"ingest-{key}", job_name=job.name, partition_key=key,
                          tags={"climb/landed_file": names.get(key, key)[:200]})
            for key in pending
        ], RAW_SHARDS.to_user_string())  # fmt: skip
        return dg.SensorResult(
            run_requests=attempts.run_requests,
            skip_reason=attempts.skip_reason if not attempts.run_requests and pending else None,
            dynamic_partitions_requests=[shard_partitions.build_add_request(keys)] if keys else [],
            asset_events=events + list(attempts.asset_events),
            cursor=json.dumps(scan.cursor | json.loads(attempts.cursor), sort_keys=True),
        )

    return landing_sensor


def _ingested_sha256(instance: dg.DagsterInstance, key: str) -> str | None:
    """The sha256 of the file as its latest ``raw_shards`` run ingested it (None if it never was)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_SHARDS, asset_partitions=[key]), limit=1
    ).records
    metadata = records[0].asset_materialization.metadata if records else {}
    return metadata["file_sha256"].value if "file_sha256" in metadata else None


def _changed_event(context, landed: LandedFile, size: int, mtime_ns: int) -> dg.AssetObservation:
    """A file rewritten under a name that was already ingested: reported, never silently re-ingested."""
    context.log.warning(f"{landed.name!r} changed after ingestion (size {landed.size} -> {size}); not re-ingested")
    return dg.AssetObservation(
        asset_key=RAW_SHARDS,
        partition=landed.key,
        metadata={"changed_after_ingestion": True, "landed_file": landed.name, "registered_size": landed.size,
                  "size_now": size, "registered_mtime_ns": landed.mtime_ns, "mtime_ns_now": mtime_ns},
    )  # fmt: skip
