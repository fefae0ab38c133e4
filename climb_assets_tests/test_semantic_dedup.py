"""Semantic dedup inside fine clusters: the SemDeDup rule, shard by shard, equal to the whole corpus at once."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from climb_assets.cluster.lake import FitSettings, assign_shard, fit_centroids, scan_assignments
from climb_assets.cluster.semantic_dedup import (
    ByCluster,
    SemanticSettings,
    best_per_row,
    close_pairs,
    dedup_shard,
    max_differing_bits,
    nearest_preceding,
    read_semantic_duplicates,
    simhash_codes,
)
from climb_assets.embed.encode import write_embeddings
from climb_assets.lake import semantic_duplicates_path

DIM, N_BLOBS = 16, 4
SHARDS = ["s0", "s1", "s2"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_comparisons_look_only_at_earlier_rows_in_bounded_blocks(monkeypatch):
    from climb_assets.cluster import semantic_dedup

    new = unit(np.array([[1.0, 0.01], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])).astype(np.float32)
    best, index = nearest_preceding(new)
    assert best[0] == -np.inf and index[1:].tolist() == [0, 0, 2]  # row 3's twin is row 2, which precedes it
    assert best[1] > 0.9999 and abs(best[2]) < 0.02 and best[3] > 0.9999
    codes = simhash_codes(new)
    expected = next(close_pairs(codes, codes[:2], radius=30))  # one block
    monkeypatch.setattr(semantic_dedup, "MAX_SIMILARITIES", 1)  # one row per block: the blocks must add up
    found = [np.concatenate(a) for a in zip(*close_pairs(codes, codes[:2], radius=30), strict=True)]
    assert [a.tolist() for a in found] == [a.tolist() for a in expected] == [[0, 0, 1, 1], [0, 1, 0, 1]]
    assert list(close_pairs(codes, codes[:0], radius=30)) == []
    # the best pair per row: highest similarity, then the smallest order (the earliest document)
    rows, sims, order = np.array([0, 0, 1, 1, 1]), np.array([0.5, 0.9, 0.7, 0.7, 0.2]), np.array([3, 4, 9, 2, 1])
    assert best_per_row(rows, sims, order).tolist() == [1, 3]


def test_the_simhash_radius_keeps_every_pair_at_the_threshold_and_skips_distant_ones():
    """Pairs planted exactly at cosine 1 - ε (and closer) are all within the radius; unrelated pairs are not."""
    rng = np.random.default_rng(7)
    for epsilon in (0.01, 0.05):
        radius = max_differing_bits(epsilon)
        base = unit(rng.standard_normal((2_000, 256)))
        orthogonal = unit(rng.standard_normal((2_000, 256)))
        orthogonal = unit(orthogonal - (orthogonal * base).sum(1, keepdims=True) * base)
        for cosine in (1 - epsilon, 1 - epsilon / 4):
            twin = cosine * base + np.sqrt(1 - cosine**2) * orthogonal
            differing = np.bitwise_count(simhash_codes(base) ^ simhash_codes(twin)).sum(axis=1)
            assert differing.max() <= radius
    far = 0.8 * base + 0.6 * orthogonal  # cosine 0.8: at ε = 0.01 almost never compared
    assert np.mean(np.bitwise_count(simhash_codes(base) ^ simhash_codes(far)).sum(axis=1) <= max_differing_bits(0.01)) < 0.01
    assert max_differing_bits(0.01) == 30  # 256 bits, a miss at the threshold at most 1e-6


@pytest.fixture
def corpus(home):
    """Three shards of blob-shaped embeddings with planted near-copies (within a shard and across shards) and a
    copy whose original sits in another cluster's region."""
    rng = np.random.default_rng(3)
    centers = unit(rng.standard_normal((N_BLOBS, DIM)))
    shards = {}
    for i, name in enumerate(SHARDS):
        n = 120
        vectors = unit(centers[rng.integers(0, N_BLOBS, n)] + 0.3 * rng.standard_normal((n, DIM)))
        shards[name] = vectors
    # near-copies (cosine ~0.999): of a doc two shards back, of one in the same shard, and a doc repeated 3 times
    shards["s2"][5] = unit(shards["s0"][7] + 0.01 * rng.standard_normal(DIM))
    shards["s1"][40] = unit(shards["s1"][3] + 0.01 * rng.standard_normal(DIM))
    shards["s2"][60] = shards["s2"][61] = unit(shards["s1"][9] + 0.005 * rng.standard_normal(DIM))
    shards["s1"][10] = shards["s2"][10] = shards["s0"][10]  # exact copies: s2-10 ties between s0-10 and s1-10
    for name, vectors in shards.items():
        write_embeddings(home.lake_dir("embeddings") / f"{name}.npz", [f"{name}-{i}" for i in range(len(vectors))],
                         vectors, "m")  # fmt: skip
    version, _ = fit_centroids(home, FitSettings(k=N_BLOBS, seed=0, max_points_per_centroid=100))
    for name in SHARDS:
        assign_shard(home, name, version)
    return home, version, shards


def whole_corpus(home, version, shards, threshold):
    """The reference rule on everything at once: per cluster, all documents in registration order, a document goes
    when its largest similarity to any earlier one reaches the threshold (the triangular max of SemDeDup's code)."""
    assigned = scan_assignments(home, version).collect()
    ids = np.array([f"{name}-{i}" for name in SHARDS for i in range(len(shards[name]))])
    vectors = np.concatenate([shards[name] for name in SHARDS]).astype(np.float16).astype(np.float32)
    cluster = dict(zip(assigned["doc_id"], assigned["cluster_id"], strict=True))
    removed = set()
    for c in set(cluster.values()):
        rows = np.array([i for i, d in enumerate(ids) if cluster[d] == c])
        sims = np.triu(vectors[rows] @ vectors[rows].T, 1)
        removed |= set(ids[rows[sims.max(axis=0) >= threshold]])
    return removed


def test_shard_by_shard_equals_the_whole_corpus_and_finds_the_planted_copies(corpus):
    home, version, shards = corpus
    settings = SemanticSettings(epsilon=0.01)
    found = pl.concat([dedup_shard(home, version, name, SHARDS[:i], settings) for i, name in enumerate(SHARDS)])
    assert set(found["doc_id"]) == whole_corpus(home, version, shards, 0.99)
    pairs = dict(zip(found["doc_id"], found["duplicate_of"], strict=True))
    assert {"s2-5", "s1-40", "s2-60", "s2-61"} <= set(pairs)  # every planted copy, whatever its cluster's crowd
    assert pairs["s2-5"] == "s0-7" and pairs["s1-40"] == "s1-3" and pairs["s2-60"] == "s1-9"
    assert pairs["s2-61"] in {"s1-9", "s2-60"}  # the third copy: removed, pointing at an earlier copy
    assert found.filter(pl.col("doc_id") == "s2-5")["duplicate_of_shard"].item() == "s0"
    assert (found["similarity"] >= 0.99).all() and set(found["kind"]) == {"semantic"}
    for row in found.iter_rows(named=True):  # duplicates are found inside their own fine cluster only
        (own,) = scan_assignments(home, version).filter(pl.col("doc_id") == row["doc_id"]).collect()["cluster_id"]
        assert own == row["cluster_id"]
    assert read_semantic_duplicates(home, version, settings, SHARDS).sort("doc_id").equals(found.sort("doc_id"))


def test_order_of_checking_does_not_change_the_answer_and_a_rerun_is_byte_identical(corpus):
    home, version, _ = corpus
    settings = SemanticSettings()
    for name in reversed(SHARDS):  # the last shard first: its answer depends on the earlier shards' vectors only
        dedup_shard(home, version, name, SHARDS[: SHARDS.index(name)], settings)
    paths = [semantic_duplicates_path(home, version, settings.key, name) for name in SHARDS]
    first = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    ordered = [dedup_shard(home, version, name, SHARDS[:i], settings) for i, name in enumerate(SHARDS)]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == first
    assert sum(frame.height for frame in ordered) >= 4


def test_batches_of_earlier_shards_give_the_answer_of_one_shard_at_a_time_and_ties_go_to_the_earliest(
    corpus, monkeypatch
):
    from climb_assets.cluster import semantic_dedup

    home, version, _ = corpus
    settings = SemanticSettings()
    answers = []
    for batch_rows, pairs_per_read in ((1, 1), (10**6, 10**6)):  # one earlier shard (and pair) at a time; all at once
        monkeypatch.setattr(semantic_dedup, "BATCH_ROWS", batch_rows)
        monkeypatch.setattr(semantic_dedup, "PAIRS_PER_READ", pairs_per_read)
        answers.append(dedup_shard(home, version, "s2", ["s0", "s1"], settings))
    assert answers[0].equals(answers[1]) and answers[0].height >= 4
    tie = answers[0].filter(pl.col("doc_id") == "s2-10").row(0, named=True)
    assert (tie["duplicate_of"], tie["duplicate_of_shard"]) == ("s0-10", "s0")


def test_epsilon_widens_the_net_switched_off_removes_nothing_and_each_setting_keeps_its_own_result(corpus):
    home, version, shards = corpus
    loose = SemanticSettings(epsilon=0.2)
    found = pl.concat([dedup_shard(home, version, name, SHARDS[:i], loose) for i, name in enumerate(SHARDS)])
    assert set(found["doc_id"]) == whole_corpus(home, version, shards, 0.8)
    off = SemanticSettings(enabled=False)
    assert all(dedup_shard(home, version, name, [], off).height == 0 for name in SHARDS)
    assert read_semantic_duplicates(home, version, loose, SHARDS).height == found.height  # untouched by "off"
    with pytest.raises(FileNotFoundError, match="run semantic_dedup_job"):
        read_semantic_duplicates(home, version, SemanticSettings(epsilon=0.05), SHARDS)
    assert SemanticSettings.from_key(loose.key) == loose and SemanticSettings.from_key("off") == off
    with pytest.raises(ValueError, match="epsilon"):
        SemanticSettings(epsilon=0.0)


def test_memory_holds_one_cluster_at_a_time(corpus):
    home, version, _ = corpus
    shard = ByCluster.open(home, version, "s2")
    assert isinstance(shard.vectors, np.memmap)  # read through a memory map, one cluster's slice at a time
    sizes = [shard.rows(int(c)).stop - shard.rows(int(c)).start for c in shard.clusters()]
    assert sum(sizes) == 120 and max(sizes) < 120
    with pytest.raises(FileNotFoundError, match="not assigned"):
        ByCluster.open(home, version, "nope")
