"""Pruning and merging fine clusters into super-clusters, their labels, tables and partition checks."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from climb_assets.home import ClimbHome
from climb_assets.quality.merge import (
    DEFAULT_TARGET_COUNT,
    NO_DOCUMENTS,
    check_partition,
    document_super_map,
    example_documents,
    label_super_clusters,
    load_cluster_decisions,
    prune_and_merge,
    purity_table,
    super_cluster_table,
    write_super_clusters,
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _decisions(keep: list[int], prune: list[int]) -> pl.DataFrame:
    rows = [(c, "keep") for c in keep] + [(c, "prune") for c in prune]
    return pl.DataFrame(rows, schema={"cluster_id": pl.Int64, "decision": pl.String}, orient="row")


def test_near_identical_clusters_merge_and_pruned_ones_are_left_out() -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(4, 16)))
    # Fine clusters 10 and 11 are the same topic (tiny perturbation); 12 and 13 are distinct; 14 is pruned;
    # 15 has a centroid but no documents (no decision row).
    centroids = np.vstack([base[0], _unit(base[0] + 0.01 * rng.normal(size=16)), base[1], base[2], base[3], base[3]])
    ids = [10, 11, 12, 13, 14, 15]
    result = prune_and_merge(centroids, ids, _decisions([10, 11, 12, 13], [14]), target_count=3)
    mapping = dict(result.mapping.select("cluster_id", "super_cluster_id").iter_rows())
    assert result.method == "target_count" and result.n_super == 3
    assert mapping[10] == mapping[11]
    assert len({mapping[10], mapping[12], mapping[13]}) == 3
    assert mapping[14] is None and mapping[15] is None
    decisions = dict(result.mapping.select("cluster_id", "decision").iter_rows())
    assert decisions[14] == "prune" and decisions[15] == NO_DOCUMENTS
    # Super ids are 0..S-1 in order of their smallest member fine cluster.
    assert [mapping[10], mapping[12], mapping[13]] == [0, 1, 2]
    assert result.as_dict() == {10: 0, 11: 0, 12: 1, 13: 2}
    again = prune_and_merge(centroids, ids, _decisions([10, 11, 12, 13], [14]), target_count=3)
    assert again.mapping.equals(result.mapping)


def test_distance_threshold_is_used_when_it_gives_a_usable_count() -> None:
    rng = np.random.default_rng(1)
    topics = rng.normal(size=(4, 8)) * 10  # far apart
    centroids = np.vstack([t + 0.05 * rng.normal(size=(3, 8)) for t in topics])  # 3 tight fine clusters each
    ids = list(range(12))
    result = prune_and_merge(centroids, ids, _decisions(ids, []), distance_threshold=1.5)
    assert result.method == "distance_threshold" and result.n_super == 4
    supers = result.mapping["super_cluster_id"].to_list()
    assert [len(set(supers[i : i + 3])) for i in range(0, 12, 3)] == [1, 1, 1, 1]


def test_threshold_that_collapses_everything_falls_back_to_a_target_count() -> None:
    # Orthogonal unit centroids are sqrt(2) ~ 1.41 apart: Ward at the paper's 1.5 merges them all into one.
    centroids = np.eye(30)[:25]
    ids = list(range(25))
    result = prune_and_merge(centroids, ids, _decisions(ids, []), distance_threshold=1.5)
    assert result.method == "target_count_fallback"
    assert result.n_super == DEFAULT_TARGET_COUNT
    assert "gave 1 super-clusters" in result.note
    # Too few for a mixture search (2 of 40 kept clusters): also cut to the target count.
    rng = np.random.default_rng(2)
    two_topics = np.vstack([t + 0.01 * rng.normal(size=(20, 8)) for t in rng.normal(size=(2, 8)) * 10])
    ids = list(range(40))
    coarse = prune_and_merge(two_topics, ids, _decisions(ids, []), distance_threshold=1.5)
    assert coarse.method == "target_count_fallback" and coarse.n_super == DEFAULT_TARGET_COUNT
    assert "gave 2 super-clusters" in coarse.note


def test_bad_inputs_are_errors() -> None:
    centroids = np.eye(3)
    with pytest.raises(ValueError, match="every cluster was pruned"):
        prune_and_merge(centroids, [0, 1, 2], _decisions([], [0, 1, 2]))
    with pytest.raises(ValueError, match="no centroid"):
        prune_and_merge(centroids, [0, 1, 2], _decisions([0, 7], []))
    with pytest.raises(ValueError, match="do not match"):
        prune_and_merge(centroids, [0, 1], _decisions([0], []))
    single = prune_and_merge(centroids, [0, 1, 2], _decisions([1], [0, 2]))
    assert single.as_dict() == {1: 0} and single.method == "single"


def test_load_cluster_decisions_drops_only_the_dbt_placeholder_row(tmp_path) -> None:
    path = tmp_path / "cluster_decisions.parquet"
    placeholder = pl.DataFrame(
        {"cluster_id": [None], "decision": [None], "mean_quality": [None]},
        schema={"cluster_id": pl.Int64, "decision": pl.String, "mean_quality": pl.Float64},
    )
    placeholder.write_parquet(path)
    assert load_cluster_decisions(path).height == 0
    pl.DataFrame({"cluster_id": [1, 2], "decision": ["keep", "maybe"]}).write_parquet(path)
    with pytest.raises(ValueError, match="unknown decisions"):
        load_cluster_decisions(path)
    pl.DataFrame({"cluster_id": [1, None], "decision": ["keep", "prune"]}).write_parquet(path)
    with pytest.raises(ValueError, match="null cluster_id"):
        load_cluster_decisions(path)


RIVER = [
    "The old stone bridge over the river was rebuilt after the flood.",
    "Boats moored under the bridge while the river rose during spring.",
    "People walked along the river path to see the restored bridge.",
]
CODE = [
    "def parse(tokens): return [token.strip() for token in tokens] people",
    "class Parser: def tokens(self): return self.lexer.tokens()",
    "import parser; tokens = parser.tokenize(source); print(tokens)",
]
DRUGS = [
    "This medication helped my migraine but caused nausea for days.",
    "After two weeks the dosage reduced my migraine, side effects were mild.",
    "People should ask a doctor: the medication dosage matters for nausea.",
]


def test_labels_come_from_each_super_clusters_own_distinctive_words() -> None:
    texts = {0: RIVER, 1: CODE, 2: DRUGS}
    labels = label_super_clusters(texts, top_n=3)
    assert set(labels) == {0, 1, 2}
    for key, label in labels.items():
        terms = label.split(", ")
        assert len(terms) == 3
        own = " ".join(texts[key]).lower()
        assert all(term in own for term in terms), (key, label)
    assert "bridge" in labels[0] and "river" in labels[0]
    assert "tokens" in labels[1]
    assert "migraine" in labels[2] or "medication" in labels[2]
    assert not any("people" in label for label in labels.values()), "a word shared by all clusters is not distinctive"
    assert label_super_clusters({0: ["12 34 !!"]}) == {0: "(no distinctive terms)"}


def _corpus() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Assignments for 4 fine clusters (0,1 river; 2 code; 3 drugs), docs with text/tokens/quality, kinds."""
    rows = []
    for cluster, texts, kind in [
        (0, RIVER[:2], "wiki"),
        (1, RIVER[2:], "wiki"),
        (2, CODE, "code"),
        (3, DRUGS, "review"),
    ]:
        for i, text in enumerate(texts):
            rows.append((f"c{cluster}-{i}", cluster, text, 10 * (i + 1), 5.0 - i - (cluster == 3), kind))
    frame = pl.DataFrame(
        rows, schema=["doc_id", "cluster_id", "text", "n_tokens", "quality_score", "source_kind"], orient="row"
    )
    assignments = frame.select("doc_id", "cluster_id", pl.lit("s1").alias("shard"))
    return assignments, frame, frame.select("doc_id", "source_kind")


def test_tables_checks_and_purity_on_a_small_corpus(tmp_path) -> None:
    assignments, docs, kinds = _corpus()
    centroids = np.array([[1.0, 0.0, 0.0], [0.99, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = prune_and_merge(centroids, [0, 1, 2, 3], _decisions([0, 1, 2], [3]), target_count=2)
    doc_super = document_super_map(assignments, result.mapping)
    ok, message = check_partition(doc_super, assignments)
    assert ok, message
    assert message == "9 documents: 6 kept in 2 super-clusters, 3 pruned"

    table = super_cluster_table(doc_super.join(docs.drop("cluster_id"), on="doc_id"), top_n=2, n_examples=1)
    river = table.filter(pl.col("super_cluster_id") == 0).row(0, named=True)
    river_docs = docs.filter(pl.col("cluster_id").is_in([0, 1]))
    assert river["n_clusters"] == 2 and river["n_docs"] == river_docs.height
    assert river["n_tokens"] == river_docs["n_tokens"].sum()
    assert river["mean_quality"] == pytest.approx(river_docs["quality_score"].mean())
    assert "bridge" in river["label"] or "river" in river["label"]
    best = river_docs.sort(["quality_score", "doc_id"], descending=[True, False])["text"][0]
    assert river["examples"] == [best]
    assert table.height == 2  # the pruned drug cluster has no row

    purity = purity_table(doc_super, kinds)
    shares = purity.group_by("super_cluster_id").agg(pl.col("share_of_super").sum())
    assert shares["share_of_super"].to_list() == pytest.approx([1.0] * shares.height)
    assert purity.filter(pl.col("super_cluster_id").is_null())["source_kind"].to_list() == ["review"]
    assert purity.filter(pl.col("super_cluster_id").is_not_null())["purity"].to_list() == [1.0, 1.0]

    out = write_super_clusters(ClimbHome(tmp_path), result, doc_super, table)
    assert sorted(p.name for p in out.iterdir()) == [
        "documents.parquet",
        "mapping.parquet",
        "summary.json",
        "super_clusters.parquet",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == {"keep": 3, "prune": 1} and summary["n_super"] == 2
    assert pl.read_parquet(out / "documents.parquet").equals(doc_super)


def test_check_partition_reports_broken_partitions() -> None:
    assignments, _, _ = _corpus()
    result = prune_and_merge(np.eye(4), [0, 1, 2, 3], _decisions([0, 1, 2], [3]), target_count=3)
    doc_super = document_super_map(assignments, result.mapping)

    twice = pl.concat([doc_super, doc_super.head(1).with_columns(super_cluster_id=pl.lit(2, dtype=pl.Int64))])
    ok, message = check_partition(twice, assignments)
    assert not ok and "1 documents appear more than once" in message and "split across" in message

    ok, message = check_partition(doc_super.tail(-2), assignments)
    assert not ok and "2 assigned documents are missing" in message

    pruned_kept = doc_super.with_columns(
        super_cluster_id=pl.when(pl.col("decision") == "prune").then(0).otherwise(pl.col("super_cluster_id"))
    )
    ok, message = check_partition(pruned_kept, assignments)
    assert not ok and "3 pruned have one" in message

    with pytest.raises(ValueError, match="no decision"):
        document_super_map(assignments, result.mapping.filter(pl.col("cluster_id") != 2))


def test_example_documents_prefer_quality_then_closeness() -> None:
    docs = pl.DataFrame(
        {
            "doc_id": ["a", "b", "c", "d"],
            "super_cluster_id": [0, 0, 0, None],
            "text": ["low   quality", "near " * 100, "far", "pruned"],
            "quality_score": [2.0, 4.0, 4.0, 5.0],
            "distance": [0.0, 0.1, 0.9, 0.0],
        }
    )
    examples = example_documents(docs, n=2, max_chars=20)
    assert list(examples) == [0]
    assert examples[0][0].startswith("near near") and examples[0][0].endswith("…") and len(examples[0][0]) == 20
    assert examples[0][1] == "far"
