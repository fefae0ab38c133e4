"""The landing sensor: new crawl files become ``raw_shards`` partitions and get their runs requested."""


import json
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from climb_assets.ingest.assets import shard_partitions
from climb_assets.ingest.shards import file_sha256, is_shard_file
from climb_assets.resources import ClimbHomeResource
from climb_assets.storage import safe_name


@dataclass
class LandingScan:
    new: list[str] = field(default_factory=list)
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (name, old sha256, new sha256)
    unsafe: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)


def scan_landing(landing: Path, known: dict[str, dict]) -> LandingScan:
    """Compare the landing directory with what the cursor has seen.

    Size and mtime are the fast path; the content hash decides, so a touched-but-identical file is not "changed"
    and a rewritten file under an old name is reported instead of silently ignored.
    """
    scan = LandingScan(files=dict(known))
    if not landing.exists():
        return scan
    for path in sorted(landing.iterdir()):
        if not is_shard_file(path):
            continue
        try:
            safe_name(path.name)
        except ValueError:
            scan.unsafe.append(path.name)
            continue
        stat = path.stat()
        seen = known.get(path.name)
        if seen and seen["size"] == stat.st_size and seen["mtime_ns"] == stat.st_mtime_ns:
            continue
        digest = file_sha256(path)
        scan.files[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        if seen is None:
            scan.new.append(path.name)
        elif seen["sha256"] != digest:
            scan.changed.append((path.name, seen["sha256"], digest))
    return scan


def build_landing_sensor(job) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers each new file in CLIMB_HOME/landing as a raw_shards partition and ingests it.",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, climb: ClimbHomeResource) -> dg.SensorResult:
        home = climb.home()
        known = json.loads(context.cursor) if context.cursor else {}
        scan = scan_landing(home.landing, known)
        # A lost cursor must not re-ingest the whole landing directory: registered shards are not new.
        registered = set(context.instance.get_dynamic_partitions(shard_partitions.name))
        to_ingest = [name for name in scan.new if name not in registered]
        for name in scan.unsafe:
            context.log.warning(f"Ignoring {name!r}: not a safe shard name (letters, digits, . _ - only)")
        events = []
        for name, old, new in scan.changed:
            context.log.warning(f"{name} changed after ingestion (sha256 {old[:12]} -> {new[:12]}); not re-ingested")
            events.append(
                dg.AssetObservation(
                    asset_key=dg.AssetKey("raw_shards"),
                    partition=name,
                    metadata={"changed_after_ingestion": True, "old_sha256": old, "new_sha256": new},
                )
            )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=name, run_key=f"{name}:{scan.files[name]['sha256']}") for name in to_ingest
            ],
            dynamic_partitions_requests=[shard_partitions.build_add_request(to_ingest)] if to_ingest else [],
            asset_events=events,
            cursor=json.dumps(scan.files, sort_keys=True),
        )

    return landing_sensor
