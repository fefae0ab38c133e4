"""Prune low-quality fine clusters and merge the survivors into super-clusters (CLIMB step 3), then describe them.

The keep/prune decision comes from the ``dbt_quality`` project (``lake/dbt/cluster_decisions.parquet``); this
module does what SQL cannot: Ward linkage on the kept centroids, c-TF-IDF labels, and the partition checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.cluster.hierarchy import cut_tree, fcluster, linkage

from climb_assets import lake
from climb_assets.home import ClimbHome
from climb_assets.storage import atomic_path

DEFAULT_TARGET_COUNT = 20  # ~20 super-clusters (paper)
# A distance-threshold cut is trusted only within this many super-clusters; fewer leaves the mixture search
# almost nothing to choose between, more is not a "super"-clustering.
USABLE_SUPER_COUNT = (DEFAULT_TARGET_COUNT // 4, 2 * DEFAULT_TARGET_COUNT)
NO_DOCUMENTS = "no_documents"  # decision for a centroid that no document is assigned to


@dataclass(frozen=True)
class MergeResult:
    """``mapping``: one row per fine cluster (cluster_id, decision, super_cluster_id; null super when not kept)."""

    mapping: pl.DataFrame
    method: str
    n_super: int
    note: str

    def as_dict(self) -> dict[int, int]:
        """Kept fine cluster id -> super-cluster id."""
        kept = self.mapping.drop_nulls("super_cluster_id")
        return dict(zip(kept["cluster_id"].to_list(), kept["super_cluster_id"].to_list(), strict=True))

    def summary(self) -> dict[str, object]:
        counts = self.mapping["decision"].value_counts().sort("decision")
        return {
            "method": self.method,
            "n_super": self.n_super,
            "note": self.note,
            "decisions": dict(zip(counts["decision"].to_list(), counts["count"].to_list(), strict=True)),
        }


def load_cluster_decisions(path: str | Path) -> pl.DataFrame:
    """Read dbt's ``cluster_decisions.parquet``, validated.

    dbt-duckdb writes a single all-null row when the model is empty (so the file has a schema); that row is
    recognised and removed. Any other null cluster id or unknown decision is an error.
    """
    frame = pl.read_parquet(path)
    missing = {"cluster_id", "decision"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    frame = frame.filter(~pl.all_horizontal(pl.all().is_null()))
    if frame["cluster_id"].null_count():
        raise ValueError(f"{path}: {frame['cluster_id'].null_count()} rows have a null cluster_id")
    bad = frame.filter(~pl.col("decision").is_in(["keep", "prune"]))
    if bad.height:
        raise ValueError(f"{path}: unknown decisions {bad['decision'].unique().to_list()}")
    return frame.with_columns(pl.col("cluster_id").cast(pl.Int64))


def _cut_to(tree: np.ndarray, count: int) -> np.ndarray:
    """Exactly ``count`` clusters (fcluster's maxclust returns fewer when merge heights tie)."""
    return cut_tree(tree, n_clusters=count).ravel()


def _cut(
    tree: np.ndarray, n_kept: int, distance_threshold: float, target_count: int | None
) -> tuple[np.ndarray, str, str]:
    """Labels for the kept clusters, the method used and why.

    Ward merge heights grow with cluster size (sqrt(2 n1 n2 / (n1 + n2)) x centroid distance) and centroids of
    L2-normalised embeddings lie within distance 2 of each other, so the paper's 1.5 (tuned at K=1000) can
    collapse everything into a couple of super-clusters or leave dozens at demo scale (measured on MiniLM
    embeddings of news + code: K=50 -> 2, K=100 -> 6). The threshold is therefore only used when it yields a
    count in ``USABLE_SUPER_COUNT``; otherwise, or when ``target_count`` is given, the tree is cut to a fixed
    number of super-clusters (DEFAULT_TARGET_COUNT, at most the number of kept clusters).
    """
    if target_count is not None:
        want = max(1, min(target_count, n_kept))
        return _cut_to(tree, want), "target_count", f"cut to {want} super-clusters"
    labels = fcluster(tree, t=distance_threshold, criterion="distance")
    found = len(np.unique(labels))
    low, high = USABLE_SUPER_COUNT
    # With few kept clusters the fallback (cut to min(target, n_kept)) would merge nothing, so any 2+ is used.
    if 2 <= found <= high and (found >= low or n_kept <= DEFAULT_TARGET_COUNT):
        return labels, "distance_threshold", f"Ward distance {distance_threshold} gave {found} super-clusters"
    want = min(DEFAULT_TARGET_COUNT, n_kept)
    note = f"Ward distance {distance_threshold} gave {found} super-clusters (usable: {low}..{high}); cut to {want}"
    return _cut_to(tree, want), "target_count_fallback", note


def prune_and_merge(
    centroids: np.ndarray,
    cluster_ids: Sequence[int] | np.ndarray,
    decisions: pl.DataFrame,
    *,
    distance_threshold: float = 1.5,
    target_count: int | None = None,
) -> MergeResult:
    """Drop pruned clusters, Ward-link the kept centroids and cut the tree into super-clusters.

    ``centroids[i]`` is the centroid of ``cluster_ids[i]``; ``decisions`` has cluster_id and decision
    (keep/prune). A centroid with no decision row had no documents and is reported as ``no_documents``.
    Super-cluster ids are 0..S-1, numbered by their smallest member fine-cluster id (deterministic).
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    ids = np.asarray(cluster_ids, dtype=np.int64)
    if centroids.ndim != 2 or len(centroids) != len(ids):
        raise ValueError(f"centroids {centroids.shape} do not match {len(ids)} cluster ids")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("cluster ids are not unique")
    if decisions["cluster_id"].n_unique() != decisions.height:
        raise ValueError("decisions has more than one row for a cluster")
    unknown = set(decisions["cluster_id"].to_list()) - set(ids.tolist())
    if unknown:
        raise ValueError(f"decisions name clusters with no centroid: {sorted(unknown)[:10]}")
    mapping = (
        pl.DataFrame({"cluster_id": ids, "row": np.arange(len(ids))})
        .join(decisions.select(pl.col("cluster_id").cast(pl.Int64), "decision"), on="cluster_id", how="left")
        .with_columns(pl.col("decision").fill_null(NO_DOCUMENTS))
        .sort("cluster_id")
    )
    kept = mapping.filter(pl.col("decision") == "keep")
    if kept.height == 0:
        raise ValueError("every cluster was pruned; lower min_mean_quality or check the quality scores")
    if kept.height == 1:
        labels, method, note = np.array([1]), "single", "only one cluster kept"
    else:
        tree = linkage(centroids[kept["row"].to_numpy()], method="ward")
        labels, method, note = _cut(tree, kept.height, distance_threshold, target_count)
    # Renumber: super-cluster of the smallest kept fine cluster id is 0, and so on (kept is sorted by id).
    order = {label: i for i, label in enumerate(dict.fromkeys(labels.tolist()))}
    kept = kept.with_columns(super_cluster_id=pl.Series([order[label] for label in labels.tolist()], dtype=pl.Int64))
    mapping = mapping.join(kept.select("cluster_id", "super_cluster_id"), on="cluster_id", how="left").drop("row")
    return MergeResult(mapping=mapping, method=method, n_super=len(order), note=note)


def document_super_map(assignments: pl.DataFrame, mapping: pl.DataFrame) -> pl.DataFrame:
    """Per document: its fine cluster, that cluster's decision and super-cluster (null when pruned)."""
    joined = assignments.select("doc_id", "cluster_id").join(
        mapping.select("cluster_id", "decision", "super_cluster_id"), on="cluster_id", how="left", validate="m:1"
    )
    orphans = joined.filter(pl.col("decision").is_null())
    if orphans.height:
        raise ValueError(
            f"{orphans.height} documents are in clusters with no decision: "
            f"{orphans['cluster_id'].unique().sort().to_list()[:10]}"
        )
    return joined


def check_partition(doc_super_map: pl.DataFrame, assignments: pl.DataFrame) -> tuple[bool, str]:
    """Every assigned document appears exactly once, in the super-cluster of its fine cluster or pruned, and
    kept + pruned documents add up to all documents."""
    problems: list[str] = []
    dupes = doc_super_map.height - doc_super_map["doc_id"].n_unique()
    if dupes:
        problems.append(f"{dupes} documents appear more than once")
    expected = set(assignments["doc_id"].to_list())
    seen = set(doc_super_map["doc_id"].to_list())
    if expected - seen:
        problems.append(f"{len(expected - seen)} assigned documents are missing")
    if seen - expected:
        problems.append(f"{len(seen - expected)} documents are not in the assignments")
    moved = doc_super_map.join(assignments.select("doc_id", assigned=pl.col("cluster_id")), on="doc_id").filter(
        pl.col("cluster_id") != pl.col("assigned")
    )
    if moved.height:
        problems.append(f"{moved.height} documents carry a different fine cluster than assigned")
    split = (
        doc_super_map.group_by("cluster_id")
        .agg(pl.col("super_cluster_id").n_unique().alias("n"))
        .filter(pl.col("n") > 1)
    )
    if split.height:
        problems.append(f"fine clusters split across super-clusters: {split['cluster_id'].to_list()[:10]}")
    kept_without = doc_super_map.filter((pl.col("decision") == "keep") & pl.col("super_cluster_id").is_null())
    pruned_with = doc_super_map.filter((pl.col("decision") != "keep") & pl.col("super_cluster_id").is_not_null())
    if kept_without.height or pruned_with.height:
        problems.append(f"{kept_without.height} kept docs lack a super-cluster, {pruned_with.height} pruned have one")
    kept = doc_super_map["super_cluster_id"].is_not_null().sum()
    pruned = doc_super_map.height - kept
    if kept + pruned != assignments.height:
        problems.append(f"kept {kept} + pruned {pruned} != {assignments.height} assigned documents")
    n_super = doc_super_map["super_cluster_id"].drop_nulls().n_unique()
    summary = f"{assignments.height} documents: {kept} kept in {n_super} super-clusters, {pruned} pruned"
    return (not problems, summary if not problems else f"{summary}; " + "; ".join(problems))


def label_super_clusters(texts_by_super: Mapping[int, Sequence[str]], top_n: int = 5) -> dict[int, str]:
    """A readable label per super-cluster: its ``top_n`` most distinctive terms by class-based TF-IDF.

    c-TF-IDF (BERTopic): each super-cluster's texts form one document; a term scores
    tf(term, class) x log(1 + mean words per class / total frequency of the term), so words frequent in one
    super-cluster but rare elsewhere win. English stop words and tokens under 3 letters are ignored.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    keys = sorted(texts_by_super)
    joined = ["\n".join(texts_by_super[key]) for key in keys]
    vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", lowercase=True)
    try:
        counts = vectorizer.fit_transform(joined).toarray().astype(np.float64)
    except ValueError:  # no usable term at all (e.g. only code symbols or numbers)
        return {key: "(no distinctive terms)" for key in keys}
    terms = vectorizer.get_feature_names_out()
    words_per_class = counts.sum(axis=1)
    tf = counts / np.maximum(words_per_class, 1.0)[:, None]
    idf = np.log1p(words_per_class.mean() / np.maximum(counts.sum(axis=0), 1.0))
    scores = tf * idf
    labels = {}
    for row, key in enumerate(keys):
        # Highest score first; ties broken alphabetically so labels are deterministic.
        order = np.lexsort((terms, -scores[row]))
        best = [terms[i] for i in order[:top_n] if scores[row, i] > 0]
        labels[key] = ", ".join(best) if best else "(no distinctive terms)"
    return labels


def _snippet(text: str, max_chars: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "…"


def text_sample_ids(docs: pl.DataFrame, *, n_examples: int = 3, max_label_docs: int = 2000, seed: int = 0) -> pl.Series:
    """The documents whose text labels and examples need: per super-cluster, ``max_label_docs`` drawn uniformly
    (by a seeded hash of doc_id, so deterministic) plus its ``n_examples`` best examples. Bounded by the number of
    super-clusters, never the corpus; the caller reads text for these ids only."""
    kept = docs.drop_nulls("super_cluster_id")
    label_ids = (
        kept.sort(["super_cluster_id", pl.col("doc_id").hash(seed), "doc_id"])
        .group_by("super_cluster_id", maintain_order=True)
        .head(max_label_docs)["doc_id"]
    )
    return pl.concat([label_ids, _example_rows(kept, n_examples)["doc_id"]]).unique().sort()


def _example_rows(docs: pl.DataFrame, n: int) -> pl.DataFrame:
    """Best quality first, then closest to the centroid (``distance``), then doc_id; pruned docs ignored."""
    sort_cols = [c for c in ("quality_score", "distance") if c in docs.columns] + ["doc_id"]
    descending = [c == "quality_score" for c in sort_cols]
    return (
        docs.drop_nulls("super_cluster_id")
        .sort(["super_cluster_id", *sort_cols], descending=[False, *descending])
        .group_by("super_cluster_id", maintain_order=True)
        .head(n)
    )


def example_documents(docs: pl.DataFrame, *, n: int = 3, max_chars: int = 300) -> dict[int, list[str]]:
    """Up to ``n`` representative snippets per super-cluster: best quality first, then closest to the centroid
    (``distance``), then doc_id. ``docs`` needs super_cluster_id, doc_id, text (null where not read);
    quality_score and distance are used when present. Pruned documents (null super-cluster) are ignored."""
    examples: dict[int, list[str]] = {}
    for key, text in _example_rows(docs, n).select("super_cluster_id", "text").iter_rows():
        examples.setdefault(key, []).append(_snippet(text or "", max_chars))
    return examples


def super_cluster_table(
    docs: pl.DataFrame, texts: pl.DataFrame | None = None, *, top_n: int = 5, n_examples: int = 3,
    max_label_docs: int = 2000, seed: int = 0,
) -> pl.DataFrame:  # fmt: skip
    """One row per super-cluster: fine clusters, documents, tokens, mean quality, label and example snippets.

    ``docs``: doc_id, cluster_id, super_cluster_id (null = pruned, left out), n_tokens, quality_score (distance
    optional) and no text; ``texts``: doc_id, text for at least ``text_sample_ids(docs, ...)`` (when None, docs
    carries a text column). Labels read at most ``max_label_docs`` uniformly sampled documents per super-cluster.
    """
    if texts is None:
        texts, docs = docs.select("doc_id", "text"), docs.drop("text")
    kept = docs.drop_nulls("super_cluster_id")
    stats = (
        kept.group_by("super_cluster_id")
        .agg(
            n_clusters=pl.col("cluster_id").n_unique(),
            n_docs=pl.len(),
            n_tokens=pl.col("n_tokens").sum(),
            mean_quality=pl.col("quality_score").mean(),
        )
        .sort("super_cluster_id")
    )
    sampled = kept.join(texts.select("doc_id", "text"), on="doc_id", how="left", validate="1:1")
    label_rows = sampled.filter(
        pl.col("doc_id").is_in(text_sample_ids(kept, n_examples=0, max_label_docs=max_label_docs, seed=seed).implode())
    )
    grouped = label_rows.group_by("super_cluster_id").agg(pl.col("text").drop_nulls())
    labels = label_super_clusters(dict(zip(grouped["super_cluster_id"], grouped["text"].to_list(), strict=True)), top_n)
    examples = example_documents(sampled, n=n_examples)
    ids = stats["super_cluster_id"].to_list()
    return stats.with_columns(
        label=pl.Series([labels[i] for i in ids], dtype=pl.String),
        examples=pl.Series([examples[i] for i in ids], dtype=pl.List(pl.String)),
    )


def purity_table(doc_super: pl.DataFrame, source_kind: pl.DataFrame) -> pl.DataFrame:
    """How the demo's hidden source kinds spread over super-clusters (reports only, never a method input).

    ``doc_super``: doc_id, super_cluster_id (null = pruned); ``source_kind``: doc_id, source_kind. One row per
    (super-cluster, kind) with counts, the kind's share of the super-cluster and of the kind, and the
    super-cluster's purity (share of its largest kind).
    """
    joined = doc_super.select("doc_id", "super_cluster_id").join(
        source_kind.select("doc_id", "source_kind"), on="doc_id", how="left", validate="1:1"
    )
    return (
        joined.with_columns(pl.col("source_kind").fill_null("(unknown)"))
        .group_by("super_cluster_id", "source_kind")
        .agg(n_docs=pl.len())
        .with_columns(
            share_of_super=pl.col("n_docs") / pl.col("n_docs").sum().over("super_cluster_id"),
            share_of_kind=pl.col("n_docs") / pl.col("n_docs").sum().over("source_kind"),
        )
        .with_columns(purity=pl.col("share_of_super").max().over("super_cluster_id"))
        .sort(["super_cluster_id", "n_docs", "source_kind"], descending=[False, True, False], nulls_last=True)
    )


def write_super_clusters(home: ClimbHome, result: MergeResult, doc_super: pl.DataFrame, table: pl.DataFrame) -> Path:
    """Write one super-cluster version atomically (the whole directory is swapped): the fine -> super mapping, the
    doc -> super map, the table and summary.json."""
    directory = lake.super_clusters_dir(home)
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        result.mapping.write_parquet(tmp / lake.super_cluster_mapping_path(home).name)
        doc_super.write_parquet(tmp / lake.super_cluster_documents_path(home).name)
        table.write_parquet(tmp / lake.super_cluster_table_path(home).name)
        (tmp / "summary.json").write_text(json.dumps(result.summary(), indent=2, sort_keys=True))
    return directory
