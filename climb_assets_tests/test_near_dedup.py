"""Near-duplicates (MinHash-LSH, verified by Jaccard): found across and inside shards, in registration order,
recorded with what they duplicate, bounded by the shard, and the same on a re-run."""

import json
import random

import dagster as dg
import polars as pl
import pytest

from climb_assets.ingest.assets import IngestConfig, conservation, ingest_to_lake, raw_shards, shard_partitions
from climb_assets.ingest.dedup_index import DedupIndex
from climb_assets.ingest.near_dedup import Bander, FuzzySettings, find_near_duplicates, jaccard, shingles
from climb_assets.ingest.shards import IngestSettings
from climb_assets.lake import dedup_index_path, duplicates_path, ingest_staging_dir, quarantine_path, raw_shard_path

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze") for b in "aeiouybcdfgh"]


def article(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words)) + "."


def edited(text: str, every: int, seed: int = 0) -> str:
    """Replace one word in ``every``: an edit rate of 1/every."""
    rng = random.Random(seed)
    words = text.split()
    for i in range(0, len(words), every):
        words[i] = rng.choice(VOCAB) + "x"
    return " ".join(words)


def land(home, name, texts):
    (home.landing / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def test_shingle_jaccard_tracks_the_edit_rate():
    original = article(1)
    light, heavy = edited(original, 75), edited(original, 5)
    assert jaccard(shingles(original, 5), shingles(original, 5)) == 1.0
    assert jaccard(shingles(original, 5), shingles(light, 5)) > 0.8 > jaccard(shingles(original, 5), shingles(heavy, 5))
    assert shingles("!!! ??? ...", 5).size == 0  # no words: never anyone's duplicate


def test_inside_a_shard_the_first_copy_stays_and_unrelated_text_is_kept():
    texts = [article(1), article(2), edited(article(1), 75), edited(article(1), 5), edited(article(2), 70, seed=3)]
    found, bands = find_near_duplicates("s", [f"d{i}" for i in range(5)], texts, FuzzySettings())
    assert sorted(found) == [2, 4]
    assert (found[2].duplicate_of, found[2].duplicate_of_shard) == ("d0", "s")
    assert found[4].duplicate_of == "d1" and 0.8 <= found[4].similarity < 1.0
    assert set(bands["doc_id"].unique().to_list()) == {"d0", "d1", "d3"}  # only kept documents are indexed
    assert bands.height == 3 * FuzzySettings().bands


def test_across_shards_the_earlier_shard_wins_and_rerun_is_identical(home):
    original, copy = article(7), edited(article(7), 75)
    land(home, "a.jsonl", [original, article(8)])
    land(home, "b.jsonl", [article(9), copy, edited(article(9), 60)])
    order = ["a.jsonl", "b.jsonl"]
    settings = IngestSettings()
    for position, shard in enumerate(order):
        ingest_to_lake(home, shard, settings, order[:position])
    dups = pl.read_parquet(duplicates_path(home, "b.jsonl"))
    a_ids = pl.read_parquet(raw_shard_path(home, "a.jsonl"))["doc_id"].to_list()
    b_ids = pl.read_parquet(raw_shard_path(home, "b.jsonl"))["doc_id"].to_list()
    assert dups["kind"].to_list() == ["fuzzy", "fuzzy"]
    assert dups["duplicate_of_shard"].to_list() == ["a.jsonl", "b.jsonl"]
    assert dups["duplicate_of"].to_list() == [a_ids[0], b_ids[0]]
    assert dups["similarity"].min() >= 0.8
    assert pl.read_parquet(raw_shard_path(home, "b.jsonl"))["text"].to_list() == [article(9)]
    counts = conservation(home, "b.jsonl", settings)
    assert counts == {"rows_read": 3, "accepted": 1, "quarantined": 0, "duplicates": 2}

    before = [p(home, s).read_bytes() for s in order for p in (raw_shard_path, quarantine_path, duplicates_path)]
    for position, shard in reversed(list(enumerate(order))):  # a re-run after later shards landed: same answer
        ingest_to_lake(home, shard, settings, order[:position])
    assert [p(home, s).read_bytes() for s in order for p in (raw_shard_path, quarantine_path, duplicates_path)] == before
    with DedupIndex(dedup_index_path(home)) as index:
        banded = index.connection.execute("SELECT count(DISTINCT doc_id) FROM minhash_bands").fetchone()[0]
    assert banded == 3  # a's two documents and b's one: idempotent


def test_an_exact_copy_of_a_removed_near_duplicate_names_the_kept_document(home):
    """b's second row is a near-copy of a's document, its fourth an exact copy of the second: both name a's."""
    original, near = article(7), edited(article(7), 75)
    land(home, "a.jsonl", [original])
    land(home, "b.jsonl", [article(9), near, article(10), near])
    ingest_to_lake(home, "a.jsonl", IngestSettings(), [])
    ingest_to_lake(home, "b.jsonl", IngestSettings(), ["a.jsonl"])
    (kept,) = pl.read_parquet(raw_shard_path(home, "a.jsonl"))["doc_id"].to_list()
    dups = pl.read_parquet(duplicates_path(home, "b.jsonl")).sort("row_number")
    assert dups["row_number"].to_list() == [1, 3] and dups["kind"].to_list() == ["fuzzy", "fuzzy"]
    assert dups["duplicate_of"].to_list() == [kept, kept] and dups["duplicate_of_shard"].to_list() == ["a.jsonl"] * 2
    assert dups["similarity"][0] == dups["similarity"][1] >= 0.8


def test_switched_off_keeps_near_duplicates_and_new_settings_backfill_their_own_bands(home):
    land(home, "a.jsonl", [article(11)])
    land(home, "b.jsonl", [edited(article(11), 75)])
    off = IngestConfig(fuzzy_dedup=False).settings()
    ingest_to_lake(home, "a.jsonl", off, [])
    ingest_to_lake(home, "b.jsonl", off, ["a.jsonl"])
    assert pl.read_parquet(raw_shard_path(home, "b.jsonl")).height == 1
    # switching it on later: shard a gets bands under the new settings on first use, and b's copy is found
    trigrams = IngestConfig(fuzzy_ngram=3).settings()
    ingest_to_lake(home, "b.jsonl", trigrams, ["a.jsonl"])
    assert pl.read_parquet(duplicates_path(home, "b.jsonl"))["kind"].to_list() == ["fuzzy"]
    with DedupIndex(dedup_index_path(home)) as index:
        assert index.banded_shards(trigrams.fuzzy) == {"a.jsonl", "b.jsonl"}
        rows = index.connection.execute("SELECT shard, count(*) FROM minhash_bands GROUP BY shard").fetchall()
        assert rows == [("a.jsonl", trigrams.fuzzy.bands)]  # b's only document is a duplicate: it has no bands
        assert index.banded_shards(FuzzySettings()) == set()


def test_the_index_answers_only_for_this_shards_documents(home):
    fuzzy = FuzzySettings(max_candidates=2)
    bander = Bander(fuzzy)
    with DedupIndex(dedup_index_path(home)) as index:
        base = article(21)
        for shard in ("s1", "s2", "s3"):  # every earlier shard holds copies of the same article
            texts = [edited(base, 75, seed=i) for i in range(4)]
            ids = [f"{shard}-{i}" for i in range(4)]
            index.replace(shard, pl.DataFrame({"content_hash": ids, "doc_id": ids}), bander.bands_frame(ids, texts), fuzzy)
        incoming = bander.bands_frame(["new", "other"], [edited(base, 75, seed=9), article(22)])
        found = index.near_candidates(incoming, ["s1", "s2"], fuzzy)
    assert set(found["doc_id"]) == {"new"}  # the unrelated document has no candidates
    assert found.height == 2 and set(found["other_shard"]) <= {"s1", "s2"}  # capped, and never from a later shard


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"bands": 0}, {"threshold": 1.5}])
def test_bad_settings_name_themselves(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        FuzzySettings(**bad)


def test_a_bad_ingest_setting_is_refused_when_the_config_is_built():
    with pytest.raises(ValueError, match="fuzzy_threshold must be in"):
        IngestConfig(fuzzy_threshold=1.5)
    assert IngestConfig(fuzzy_dedup=False, fuzzy_threshold=0.5).settings().fuzzy is None


def test_exact_and_fuzzy_removal_are_two_steps_of_raw_shards_with_one_config(home, climb_resource, instance):
    """The UI shows each step with its own counts; ``ops: {raw_shards: {config}}`` reaches both; the staging between
    them is gone once the shard is in the lake; a bad setting is refused before any step starts."""
    land(home, "a.jsonl", [article(31)])
    land(home, "b.jsonl", [article(32), edited(article(31), 75), article(32), article(33)])

    def materialize(shard, config=None):
        instance.add_dynamic_partitions(shard_partitions.name, [shard])
        return dg.materialize([raw_shards], partition_key=shard, instance=instance, resources={"climb": climb_resource},
                              run_config={"ops": {"raw_shards": {"config": config or {}}}})  # fmt: skip

    materialize("a.jsonl")
    result = materialize("b.jsonl")
    steps = [e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS]
    assert steps == ["raw_shards.exact_dedup", "raw_shards.fuzzy_dedup"]
    (exact_output,) = [e for e in result.all_events
                       if e.event_type == dg.DagsterEventType.STEP_OUTPUT and e.step_key == "raw_shards.exact_dedup"]  # fmt: skip
    exact_counts = {k: v.value for k, v in exact_output.event_specific_data.metadata.items()}
    assert exact_counts == {"rows_read": 4, "validated_unique": 3, "quarantined": 0, "exact_duplicates": 1}
    (materialization,) = result.asset_materializations_for_node("raw_shards")
    assert materialization.metadata["fuzzy_duplicates"].value == 1 and materialization.metadata["accepted"].value == 2
    assert not ingest_staging_dir(home, "b.jsonl").exists()

    materialize("b.jsonl", {"fuzzy_dedup": False})  # the same config switches the second step off
    assert pl.read_parquet(raw_shard_path(home, "b.jsonl")).height == 3
    with pytest.raises(Exception) as refused:
        materialize("b.jsonl", {"fuzzy_threshold": 1.5})
    assert "fuzzy_threshold must be in" in "".join(str(e) for e in (refused.value, refused.value.__cause__))
    assert pl.read_parquet(raw_shard_path(home, "b.jsonl")).height == 3  # nothing ran
