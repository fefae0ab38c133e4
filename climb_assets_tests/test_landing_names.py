"""Every landed file is ingested or visibly refused, whatever its name: through the real sensor and real ingestion."""

import gzip
import json
import os
import time
import unicodedata

import dagster as dg
import polars as pl

from climb_assets.definitions import defs
from climb_assets.ingest.assets import (
    shard_partitions,
)
from climb_assets.ingest.landing import partition_key_for
from climb_assets.ingest.sensors import build_landing_sensor
from climb_assets.lake import landing_rejected_path, raw_shard_path
from climb_assets.storage import safe_name
from climb_assets_tests.test_ingest import ingest_whole_shard

WORD = "ñame ünïcode"
HOSTILE = [
    "it's a shard; DROP TABLE docs;--.jsonl",
    f"{unicodedata.normalize('NFC', WORD)} with spaces.jsonl",
    f"{unicodedata.normalize('NFD', WORD)} with spaces.jsonl",  # looks identical, is another file
    "part 0001 (copy).jsonl.gz",
    "weird$name`rm -rf ~`\"quoted\".parquet",
    "C:\\crawl\\part 7.jsonl",
    "x" * 230 + " long.jsonl",
    "UPPER.JSONL",
]
REFUSED = {".hidden upload.jsonl": "hidden file", "..\\..\\escape.jsonl": "hidden file", "notes.txt": "unknown extension",
           "a directory.jsonl": "regular file"}  # fmt: skip


def land(home, name: str, texts: list[str]) -> None:
    rows = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    path = home.landing / name
    if name.lower().endswith(".gz"):
        path.write_bytes(gzip.compress(rows))
    elif name.endswith(".parquet"):
        pl.DataFrame({"text": texts}).write_parquet(path)
    else:
        path.write_bytes(rows)


def tick(sensor, instance, climb_resource, cursor=None, launch=False):
    """One evaluation, its partitions registered; with ``launch``, its runs done too (what the daemon does)."""
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"climb": climb_resource}))
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for request in result.run_requests if launch else []:
        assert ingest_whole_shard(instance, climb_resource, request.partition_key, request.tags).success
    return result


def texts_for(i: int) -> list[str]:
    return [f"Document {j} of landed file number {i}: a paragraph long enough to be kept by ingestion." for j in range(3)]


def test_hostile_names_are_ingested_and_refusals_are_visible(home, climb_resource, instance):
    for i, name in enumerate(HOSTILE):
        land(home, name, texts_for(i))
    land(home, ".hidden upload.jsonl", texts_for(99))
    land(home, "..\\..\\escape.jsonl", texts_for(98))
    (home.landing / "notes.txt").write_text("not a shard")
    (home.landing / "a directory.jsonl").mkdir()
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))

    first = tick(sensor, instance, climb_resource)
    keys = {r.tags["climb/landed_file"]: r.partition_key for r in first.run_requests}
    assert sorted(keys) == sorted(name[:200] for name in HOSTILE)
    assert len(set(keys.values())) == len(HOSTILE)  # NFC and NFD spellings stay two partitions
    for name, key in keys.items():
        assert safe_name(key) == key and len(key.encode()) < 120
    assert keys["UPPER.JSONL"] == "UPPER.JSONL"  # a name that is already safe is its own key

    for i, name in enumerate(HOSTILE):
        key = partition_key_for(name)
        result = ingest_whole_shard(instance, climb_resource, key)
        assert result.success, name
        (materialization,) = result.asset_materializations_for_node("raw_shards")
        assert materialization.metadata["landed_file"].value == name
        assert pl.read_parquet(raw_shard_path(home, key))["text"].to_list() == texts_for(i)

    # refusals: a lake table and an observation in the catalog, each with its reason
    rejected = {r["name"]: r["reason"] for r in pl.read_parquet(landing_rejected_path(home)).iter_rows(named=True)}
    assert set(rejected) == set(REFUSED)
    for name, why in REFUSED.items():
        assert why in rejected[name]
    (observation,) = [e for e in first.asset_events if "rejected_files" in e.metadata]
    assert sorted(observation.metadata["newly_rejected"].value) == sorted(REFUSED)

    # nothing new on the next tick, nor with a lost cursor; a renamed upload is picked up
    assert tick(sensor, instance, climb_resource, first.cursor).run_requests == []
    assert tick(sensor, instance, climb_resource).run_requests == []
    os.rename(home.landing / ".hidden upload.jsonl", home.landing / "finished upload.jsonl")
    later = tick(sensor, instance, climb_resource, first.cursor)
    assert [r.tags["climb/landed_file"] for r in later.run_requests] == ["finished upload.jsonl"]
    assert len(instance.get_dynamic_partitions(shard_partitions.name)) == len(HOSTILE) + 1


def test_a_file_moved_in_with_an_old_mtime_is_still_seen(home, climb_resource, instance, tmp_path):
    """`mv` keeps a file's mtime; the cursor's high-water mark is on ctime, which the rename sets."""
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))
    land(home, "first.jsonl", texts_for(1))
    first = tick(sensor, instance, climb_resource, launch=True)
    staged = tmp_path / "old crawl.jsonl"
    staged.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts_for(2)))
    a_year_ago = time.time() - 365 * 86400
    os.utime(staged, (a_year_ago, a_year_ago))
    os.rename(staged, home.landing / staged.name)
    moved = tick(sensor, instance, climb_resource, first.cursor)
    assert [r.tags["climb/landed_file"] for r in moved.run_requests] == ["old crawl.jsonl"]
    # the cursor stays bounded: a high-water mark and the few names that share it
    assert set(json.loads(moved.cursor)) == {"high_water_ctime_ns", "names_at_high_water", "gave_up"}
    assert json.loads(moved.cursor)["gave_up"] == {}
    assert len(json.loads(moved.cursor)["names_at_high_water"]) <= 2
