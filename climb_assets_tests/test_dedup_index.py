"""The on-disk de-duplication index: registration order decides, re-runs are identical, answers are bounded."""

import json

import polars as pl

from climb_assets.ingest.assets import ingest_to_lake
from climb_assets.ingest.dedup_index import DedupIndex
from climb_assets.ingest.shards import IngestSettings, text_hash
from climb_assets.lake import (
    dedup_index_path,
    duplicates_path,
    quarantine_path,
    raw_shard_path,
)

SETTINGS = IngestSettings()


def doc(i: int) -> str:
    return f"Document number {i} talks about rivers, printing presses and photosynthesis at some length."


def land(home, name, rows):
    (home.landing / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def lake_bytes(home, shard):
    return [p(home, shard).read_bytes() for p in (raw_shard_path, quarantine_path, duplicates_path)]


def indexed_rows(home) -> int:
    with DedupIndex(dedup_index_path(home)) as index:
        return index.connection.execute("SELECT count(*) FROM seen").fetchone()[0]


def test_registration_order_wins_and_rerun_is_byte_identical(home):
    land(home, "a.jsonl", [{"text": doc(0)}, {"text": doc(1)}])
    land(home, "b.jsonl", [{"text": doc(1)}, {"text": doc(2)}, {"id": "taken", "text": doc(3)}])
    land(home, "c.jsonl", [{"text": doc(2)}, {"text": doc(0)}, {"id": "taken", "text": doc(4)}, {"text": doc(5)}])
    order = ["a.jsonl", "b.jsonl", "c.jsonl"]
    for position, shard in enumerate(order):
        ingest_to_lake(home, shard, SETTINGS, order[:position])
    c_dups = pl.read_parquet(duplicates_path(home, "c.jsonl"))
    assert c_dups["duplicate_of_shard"].to_list() == ["b.jsonl", "a.jsonl"]
    assert pl.read_parquet(quarantine_path(home, "c.jsonl"))["reason"].str.starts_with("duplicate_id").to_list() == [True]
    assert pl.read_parquet(raw_shard_path(home, "c.jsonl"))["text"].to_list() == [doc(5)]

    before = {shard: lake_bytes(home, shard) for shard in order}
    rows = indexed_rows(home)
    for position, shard in reversed(list(enumerate(order))):  # re-run every shard, latest first
        ingest_to_lake(home, shard, SETTINGS, order[:position])
    assert {shard: lake_bytes(home, shard) for shard in order} == before
    assert indexed_rows(home) == rows == 2 + 2 + 1  # idempotent: each shard's accepted rows once


def test_lookup_answers_only_for_the_shard_and_only_from_earlier_shards(home):
    with DedupIndex(dedup_index_path(home)) as index:
        for n, shard in enumerate(["s1", "s2", "s3"]):
            hashes = [text_hash(doc(i)) for i in range(n * 1000, n * 1000 + 1000)]
            index.replace(shard, pl.DataFrame({"content_hash": hashes, "doc_id": [f"{shard}-{i}" for i in range(1000)]}))
        wanted = {text_hash(doc(5)), text_hash(doc(1500)), text_hash(doc(2500)), text_hash("unseen")}
        found, ids = index.lookup(wanted, {"s1-5", "s3-1", "nobody"}, ["s1", "s2"])
        assert found == {text_hash(doc(5)): ("s1-5", "s1"), text_hash(doc(1500)): ("s2-500", "s2")}
        assert ids == {"s1-5"}  # s3 is not earlier
        assert index.lookup(wanted, set(), [])[0] == {}
        index.replace("s2", pl.DataFrame({"content_hash": [text_hash(doc(5))], "doc_id": ["again"]}))
        found, _ = index.lookup({text_hash(doc(5))}, set(), ["s2", "s1"])  # first registered copy wins
        assert found == {text_hash(doc(5)): ("again", "s2")}
        assert index.lookup({text_hash(doc(1500))}, set(), ["s2"])[0] == {}  # s2's old rows were replaced
        assert index.indexed_shards() == {"s1", "s2", "s3"}
        index.connection.execute("DROP TABLE seen_shards")  # an index from before the shard list was kept
    with DedupIndex(dedup_index_path(home)) as index:
        assert index.indexed_shards() == {"s1", "s2", "s3"}
        index.replace("s3", pl.DataFrame({"content_hash": [text_hash(doc(7))], "doc_id": ["s3-again"]}))
        assert index.connection.execute("SELECT count(*) FROM seen WHERE shard = 's3'").fetchone()[0] == 1


def test_shards_ingested_before_the_index_existed_are_backfilled(home):
    land(home, "old.jsonl", [{"text": doc(0)}])
    land(home, "new.jsonl", [{"text": doc(0)}, {"text": doc(1)}])
    ingest_to_lake(home, "old.jsonl", SETTINGS, [])
    dedup_index_path(home).unlink()  # a lake from before the index
    ingest_to_lake(home, "new.jsonl", SETTINGS, ["old.jsonl"])
    assert pl.read_parquet(duplicates_path(home, "new.jsonl"))["duplicate_of_shard"].to_list() == ["old.jsonl"]
    assert indexed_rows(home) == 2
