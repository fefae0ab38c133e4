"""The climb code location."""


import dagster as dg

from climb_assets.ingest.assets import raw_shards, raw_shards_conserve_rows, shard_partitions
from climb_assets.ingest.sensors import build_landing_sensor
from climb_assets.resources import ClimbHomeResource

ingest_shard_job = dg.define_asset_job(
    "ingest_shard_job",
    selection=dg.AssetSelection.assets(raw_shards),
    partitions_def=shard_partitions,
    description="Everything done once per landed shard.",
)

defs = dg.Definitions(
    assets=[raw_shards],
    asset_checks=[raw_shards_conserve_rows],
    jobs=[ingest_shard_job],
    sensors=[build_landing_sensor(ingest_shard_job)],
    resources={"climb": ClimbHomeResource()},
)
