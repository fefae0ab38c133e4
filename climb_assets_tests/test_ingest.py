"""raw_shards: sensor, ingestion, quarantine, de-duplication, conservation and idempotence, on real files."""

import gzip
import json
import os

import dagster as dg
import polars as pl
import pytest

from climb_assets.definitions import build_definitions, defs
from climb_assets.embed.assets import EmbeddingModelResource
from climb_assets.ingest.assets import (
    raw_shards,
    raw_shards_conserve_rows,
    shard_partitions,
)
from climb_assets.ingest.sensors import build_landing_sensor
from climb_assets.lake import duplicates_path, quarantine_path, raw_shard_path
from climb_assets.storage import lake_file, safe_name
from climb_assets_tests.conftest import retry_until_given_up

PROSE = [
    "The river flooded the valley after three days of heavy rain, and the village moved its market uphill.",
    "A short history of printing: movable type spread across Europe within fifty years of its invention.",
    "Photosynthesis converts light energy into chemical energy stored in sugars inside plant cells.",
]


def write_jsonl(path, rows, gz=False):
    lines = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()
    path.write_bytes(gzip.compress(lines) if gz else lines)
    return path


def ingest(instance, climb_resource, shard):
    instance.add_dynamic_partitions(shard_partitions.name, [shard])
    return dg.materialize(
        [raw_shards, raw_shards_conserve_rows],
        partition_key=shard,
        instance=instance,
        resources={"climb": climb_resource},
        raise_on_error=False,
    )


def ingest_whole_shard(instance, climb_resource, shard, tags=None):
    """What the landing sensor's run does: ``ingest_shard_job`` (raw shard, embeddings, quality signals) for one shard."""
    job = build_definitions(climb=climb_resource, embedder=EmbeddingModelResource(model="minilm", max_seq_length=64)
                            ).resolve_job_def("ingest_shard_job")  # fmt: skip
    return job.execute_in_process(instance=instance, partition_key=shard, tags=tags or {}, raise_on_error=False)


def check_passed(result) -> bool:
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1
    return evaluations[0].passed


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("ingest_shard_job")
    assert job.partitions_def == shard_partitions  # one run per landed shard
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {"raw_shards", "embeddings",
                                                                                   "quality_signals"}  # fmt: skip


def test_sensor_registers_new_files_and_ignores_seen_ones(home, climb_resource, instance):
    write_jsonl(home.landing / "a.jsonl", [{"text": PROSE[0]}])
    write_jsonl(home.landing / "b.jsonl.gz", [{"text": PROSE[1]}], gz=True)
    (home.landing / "notes.txt").write_text("not a shard")
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))

    first = sensor(dg.build_sensor_context(instance=instance, resources={"climb": climb_resource}))
    assert sorted(r.partition_key for r in first.run_requests) == ["a.jsonl", "b.jsonl.gz"]
    # a file that is not a shard is refused visibly, with its reason
    (refused,) = [e for e in first.asset_events if "rejected_files" in e.metadata]
    assert refused.metadata["newly_rejected"].value == ["notes.txt"]
    assert sorted(first.dynamic_partitions_requests[0].partition_keys) == ["a.jsonl", "b.jsonl.gz"]
    instance.add_dynamic_partitions(shard_partitions.name, ["a.jsonl", "b.jsonl.gz"])
    for request in first.run_requests:  # what the daemon launches
        assert ingest_whole_shard(instance, climb_resource, request.partition_key, request.tags).success

    again = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"climb": climb_resource}))
    assert again.run_requests == [] and again.dynamic_partitions_requests == []

    write_jsonl(home.landing / "a.jsonl", [{"text": PROSE[2]}])  # same name, new content
    write_jsonl(home.landing / "c.parquet.jsonl", [{"text": PROSE[2]}])
    changed = sensor(dg.build_sensor_context(instance=instance, cursor=again.cursor, resources={"climb": climb_resource}))
    assert [r.partition_key for r in changed.run_requests] == ["c.parquet.jsonl"]
    observed = [e for e in changed.asset_events if e.partition == "a.jsonl"]
    assert observed and observed[0].metadata["changed_after_ingestion"].value is True


def test_sensor_with_lost_cursor_does_not_reingest(home, climb_resource, instance):
    write_jsonl(home.landing / "a.jsonl", [{"text": PROSE[0]}])
    instance.add_dynamic_partitions(shard_partitions.name, ["a.jsonl"])
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))
    assert ingest(instance, climb_resource, "a.jsonl").success  # the raw shard only: its run did not finish
    unfinished = sensor(dg.build_sensor_context(instance=instance, resources={"climb": climb_resource}))
    assert [r.partition_key for r in unfinished.run_requests] == ["a.jsonl"]
    assert ingest_whole_shard(instance, climb_resource, "a.jsonl").success
    result = sensor(dg.build_sensor_context(instance=instance, resources={"climb": climb_resource}))
    assert result.run_requests == []


def test_a_failed_ingestion_is_retried_under_new_run_keys_then_reported(home, climb_resource, instance):
    """A registered shard whose run failed (or whose process was killed) is never left out for good: the sensor
    requests it again under a fresh run key (Dagster never launches a key twice), up to MAX_ATTEMPTS, then says so."""
    write_jsonl(home.landing / "a.jsonl", [{"text": PROSE[0]}])
    (home.landing / "junk.parquet").write_bytes(b"this is not parquet at all")  # lands, then fails in its run
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))

    def evaluate(cursor=None):
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"climb": climb_resource}))

    first = evaluate()
    assert sorted(r.run_key for r in first.run_requests) == ["ingest-a.jsonl:attempt-1", "ingest-junk.parquet:attempt-1"]
    instance.add_dynamic_partitions(shard_partitions.name, ["a.jsonl", "junk.parquet"])
    cursor, failed = first.cursor, []
    for request in first.run_requests:
        run = ingest_whole_shard(instance, climb_resource, request.partition_key, request.tags)
        assert run.success == (request.partition_key == "a.jsonl")
        failed += [] if run.success else [run.run_id]

    def launch(request):  # a.jsonl is ingested: only the failed shard is requested again
        assert request.partition_key == "junk.parquet"
        return ingest_whole_shard(instance, climb_resource, "junk.parquet", request.tags)

    gave_up = retry_until_given_up(evaluate, cursor, "ingest-junk.parquet", launch, failed)
    assert "ingest_shard_job" in gave_up.skip_reason.skip_message
    (observation,) = gave_up.asset_events
    assert observation.asset_key == dg.AssetKey("raw_shards") and observation.partition == "junk.parquet"
    again = evaluate(gave_up.cursor)
    assert again.run_requests == [] and again.asset_events == []


def test_a_restored_home_with_new_mtimes_is_not_reported_changed(home, climb_resource, instance):
    from climb_assets.ingest.landing import registered

    path = write_jsonl(home.landing / "a.jsonl", [{"text": PROSE[0]}])
    sensor = build_landing_sensor(defs.resolve_job_def("ingest_shard_job"))
    first = sensor(dg.build_sensor_context(instance=instance, resources={"climb": climb_resource}))
    assert [r.partition_key for r in first.run_requests] == ["a.jsonl"]
    instance.add_dynamic_partitions(shard_partitions.name, ["a.jsonl"])
    assert ingest_whole_shard(instance, climb_resource, "a.jsonl", first.run_requests[0].tags).success
    mtime = path.stat().st_mtime_ns + 3_600 * 10**9  # copied from a backup: same bytes, a new mtime (and ctime)
    os.utime(path, ns=(mtime, mtime))

    restored = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"climb": climb_resource}))
    assert restored.run_requests == [] and restored.asset_events == []
    assert registered(home, "a.jsonl").mtime_ns == mtime  # refreshed: a lost cursor does not hash it again
    again = sensor(dg.build_sensor_context(instance=instance, resources={"climb": climb_resource}))
    assert again.run_requests == [] and again.asset_events == []

    write_jsonl(path, [{"text": PROSE[0].replace("river", "rover")}])  # same size, other bytes: still reported
    assert path.stat().st_size == registered(home, "a.jsonl").size
    changed = sensor(dg.build_sensor_context(instance=instance, cursor=restored.cursor, resources={"climb": climb_resource}))
    (observed,) = changed.asset_events
    assert observed.partition == "a.jsonl" and observed.metadata["changed_after_ingestion"].value is True


def test_two_shards_end_to_end_with_cross_shard_dedup(home, climb_resource, instance):
    write_jsonl(home.landing / "s1.jsonl", [{"id": "a", "text": PROSE[0], "kind": "news"}, {"text": PROSE[1]}])
    pl.DataFrame({"text": [PROSE[1] + "  ", PROSE[2]], "url": ["u1", "u2"]}).write_parquet(home.landing / "s2.parquet")
    assert ingest(instance, climb_resource, "s1.jsonl").success
    result = ingest(instance, climb_resource, "s2.parquet")
    assert result.success and check_passed(result)

    first = pl.read_parquet(raw_shard_path(home, "s1.jsonl"))
    second = pl.read_parquet(raw_shard_path(home, "s2.parquet"))
    assert first["doc_id"].to_list()[0] == "a" and first["source_kind"].to_list() == ["news", None]
    assert second["text"].to_list() == [PROSE[2]]
    assert json.loads(second["meta"][0]) == {"url": "u2"}
    duplicates = pl.read_parquet(duplicates_path(home, "s2.parquet"))
    assert duplicates["duplicate_of"].to_list() == [first["doc_id"][1]]
    assert duplicates["duplicate_of_shard"].to_list() == ["s1.jsonl"]
    materialization = result.asset_materializations_for_node("raw_shards")[0]
    assert materialization.metadata["duplicates"].value == 1 and materialization.metadata["accepted"].value == 1


BAD_ROWS = [
    ('{"text": "unterminated', "invalid_json"),
    ("[1, 2, 3]", "not_a_json_object"),
    ({"body": PROSE[0]}, "missing_text"),
    ({"text": 42}, "non_string_text"),
    ({"text": "   \n\t "}, "empty_text"),
    ({"text": "tiny"}, "too_short"),
    ({"text": "x" * 200_001}, "too_long"),
    ({"id": ["no"], "text": PROSE[2]}, "invalid_id"),
    ("", "blank_line"),
]


def test_every_bad_row_is_quarantined_with_its_reason(home, climb_resource, instance):
    rows = [{"text": PROSE[0]}] + [row for row, _ in BAD_ROWS]
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    data += b'{"text": "caf\xe9 is not utf-8 here and long enough"}\n'
    (home.landing / "bad.jsonl").write_bytes(data)
    result = ingest(instance, climb_resource, "bad.jsonl")
    assert result.success and check_passed(result)

    quarantine = pl.read_parquet(quarantine_path(home, "bad.jsonl"))
    reasons = [reason.split(":")[0] for reason in quarantine["reason"]]
    assert reasons == [reason for _, reason in BAD_ROWS] + ["invalid_utf8"]
    assert quarantine["row_number"].to_list() == list(range(1, len(BAD_ROWS) + 2))
    assert quarantine.filter(pl.col("reason").str.starts_with("too_long"))["raw_value"].str.len_chars()[0] <= 501
    assert pl.read_parquet(raw_shard_path(home, "bad.jsonl")).height == 1


def test_wrong_parquet_schema_quarantines_every_row(home, climb_resource, instance):
    pl.DataFrame({"text": [1, 2, 3]}).write_parquet(home.landing / "ints.parquet")
    result = ingest(instance, climb_resource, "ints.parquet")
    assert result.success and check_passed(result)
    quarantine = pl.read_parquet(quarantine_path(home, "ints.parquet"))
    assert quarantine.height == 3 and quarantine["reason"].str.starts_with("wrong_parquet_schema").all()


def test_length_bounds_are_configurable(home, climb_resource, instance):
    write_jsonl(home.landing / "len.jsonl", [{"text": PROSE[0]}, {"text": "medium length text here"}])
    instance.add_dynamic_partitions(shard_partitions.name, ["len.jsonl"])
    result = dg.materialize(
        [raw_shards, raw_shards_conserve_rows],
        partition_key="len.jsonl",
        instance=instance,
        resources={"climb": climb_resource},
        run_config={"ops": {"raw_shards": {"config": {"min_chars": 50}}}},
    )
    assert result.success
    quarantine = pl.read_parquet(quarantine_path(home, "len.jsonl"))
    assert quarantine["reason"].to_list() == ["too_short: 23 < 50 chars"]


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("cut.jsonl.gz", gzip.compress(b'{"text": "hello world, a row of text"}\n' * 50, mtime=0)[:-20], "gzip"),
        ("junk.parquet", b"this is not parquet at all", "Parquet"),
    ],
)
def test_unreadable_file_fails_its_partition_and_writes_nothing(home, climb_resource, instance, name, payload, message):
    (home.landing / name).write_bytes(payload)
    result = ingest(instance, climb_resource, name)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert name in failure.message and message in failure.message
    for path in (raw_shard_path(home, name), quarantine_path(home, name), duplicates_path(home, name)):
        assert not path.exists()
    assert not any(p.name.startswith(".") for p in home.lake.rglob("*"))


def test_rematerializing_is_idempotent_after_later_shards(home, climb_resource, instance):
    write_jsonl(home.landing / "s1.jsonl", [{"text": PROSE[0]}, {"text": PROSE[1]}, {"text": PROSE[0]}])
    write_jsonl(home.landing / "s2.jsonl", [{"text": PROSE[1]}, {"text": PROSE[2]}])
    assert ingest(instance, climb_resource, "s1.jsonl").success
    before = pl.read_parquet(raw_shard_path(home, "s1.jsonl"))
    assert ingest(instance, climb_resource, "s2.jsonl").success
    again = dg.materialize(
        [raw_shards, raw_shards_conserve_rows], partition_key="s1.jsonl", instance=instance,
        resources={"climb": climb_resource},
    )
    assert again.success and check_passed(again)
    assert pl.read_parquet(raw_shard_path(home, "s1.jsonl")).equals(before)
    assert pl.read_parquet(duplicates_path(home, "s1.jsonl"))["row_number"].to_list() == [2]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x\x00y", ""])
def test_shard_names_cannot_escape_the_lake(home, name):
    with pytest.raises(ValueError):
        lake_file(home.lake_dir("raw_shards"), name, ".parquet")
    with pytest.raises(ValueError):
        safe_name(name)
