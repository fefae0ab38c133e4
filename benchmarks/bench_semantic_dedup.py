"""Semantic dedup (SemDeDup inside fine clusters): what it finds next to MinHash, against the whole corpus at once,
and what a shard costs as the corpus grows.

    python benchmarks/bench_semantic_dedup.py                  # quality on the demo corpus with injected copies
    python benchmarks/bench_semantic_dedup.py --scale          # 100 shards x 10,000 documents (1M), cost per shard
    python benchmarks/bench_semantic_dedup.py --scale --quick  # 30 shards x 2,000 documents

Quality: ``bench_near_dedup``'s corpus (the demo's landing documents in 8 shards plus copies of known originals:
word substitutions at five edit rates, boilerplate with a changed date, re-ordered paragraphs). Two lakes: exact
dedup only at ingest, then the semantic step alone; and the shipped order, exact + MinHash at ingest, then the
semantic step on what is left. Each: embedded with the default CPU model (static, distilled from MiniLM), centroids
at the default K, every shard assigned, then ``dedup_shard`` shard by shard in registration order. Printed per kind
of copy: removed by each step, and how many point at their own family; the corpus's own documents removed; and the
same rule run on the whole corpus at once (all documents of a cluster, triangular max of the similarity matrix, as
SemDeDup's code does).

Scale: random unit vectors (256-d, float16 as in the lake) around 1,000 fixed centroids, 1% of each shard a
near-copy of a document two shards back; every shard assigned and then checked in a forked child (wall time and
peak RSS its own).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest import write_shard  # noqa: E402
from bench_near_dedup import quality_corpus  # noqa: E402

from climb_assets.cluster.kmeans import assignments_frame, default_k, fit_kmeans  # noqa: E402
from climb_assets.cluster.lake import FitSettings, assign_shard, fit_centroids, scan_assignments  # noqa: E402
from climb_assets.cluster.semantic_dedup import (  # noqa: E402
    SemanticSettings,
    dedup_shard,
    read_semantic_duplicates,
    write_by_cluster,
)
from climb_assets.embed.encode import embed_documents, read_embeddings, write_embeddings  # noqa: E402
from climb_assets.embed.models import load_model  # noqa: E402
from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.ingest.assets import ingest_to_lake  # noqa: E402
from climb_assets.ingest.near_dedup import FuzzySettings  # noqa: E402
from climb_assets.ingest.shards import IngestSettings  # noqa: E402
from climb_assets.lake import duplicates_path, embeddings_path, raw_shard_path  # noqa: E402


def build_lake(root: Path, shards: list[list[dict]], fuzzy: FuzzySettings | None, model) -> tuple[ClimbHome, list[str], str, float]:
    """Ingest, embed, fit, assign: the lake as the pipeline leaves it before the semantic step."""
    home = ClimbHome(root).ensure()
    names: list[str] = []
    for number, rows in enumerate(shards, start=1):
        names.append(write_shard(home, number, rows))
        ingest_to_lake(home, names[-1], IngestSettings(fuzzy=fuzzy), names[:-1])
        docs = pl.read_parquet(raw_shard_path(home, names[-1]), columns=["doc_id", "text"])
        vectors, empty = embed_documents(model, docs["text"].to_list())
        kept = np.setdiff1d(np.arange(docs.height), empty)
        write_embeddings(embeddings_path(home, names[-1]), docs["doc_id"].to_numpy()[kept], vectors, model.name)
    version, _ = fit_centroids(home, FitSettings())
    for name in names:
        assign_shard(home, name, version)
    start = time.perf_counter()
    for i, name in enumerate(names):
        dedup_shard(home, version, name, names[:i], SemanticSettings())
    return home, names, version, time.perf_counter() - start


def whole_corpus(home: ClimbHome, names: list[str], version: str, threshold: float) -> set[str]:
    """SemDeDup's rule on everything at once: per cluster, the triangular max over all documents in registration
    order."""
    ids, vectors = [], []
    for name in names:
        embedded = read_embeddings(embeddings_path(home, name))
        ids.append(embedded.ids)
        vectors.append(embedded.vectors.astype(np.float32))
    ids, vectors = np.concatenate(ids), np.concatenate(vectors)
    cluster = dict(scan_assignments(home, version).select("doc_id", "cluster_id").collect().iter_rows())
    clusters = np.array([cluster[d] for d in ids])
    removed: set[str] = set()
    for c in np.unique(clusters):
        rows = np.flatnonzero(clusters == c)
        sims = np.triu(vectors[rows] @ vectors[rows].T, 1)
        removed |= set(ids[rows[sims.max(axis=0) >= threshold]])
    return removed




def quality(seed: int) -> None:
    shards, truth = quality_corpus(seed)
    family = defaultdict(set)
    for copy_id, (_, original) in truth.items():
        family[original] |= {original, copy_id}
    by_kind = defaultdict(list)
    for copy_id, (kind, original) in truth.items():
        by_kind[kind].append((copy_id, original))
    settings = SemanticSettings()
    print(f"{sum(map(len, shards))} documents in {len(shards)} shards, {len(truth)} injected copies; "
          f"semantic epsilon {settings.epsilon}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-semdedup-") as root:
        model = load_model("static", cache_dir=Path(root) / "models")
        results = {}
        for label, fuzzy in (("semantic alone", None), ("MinHash, then semantic", FuzzySettings())):
            home, names, version, seconds = build_lake(Path(root) / label.replace(" ", "-").replace(",", ""), shards, fuzzy, model)
            semantic = read_semantic_duplicates(home, version, settings, names)
            fuzzy_removed = pl.concat([pl.read_parquet(duplicates_path(home, n)) for n in names]).filter(pl.col("kind") == "fuzzy")
            reference = whole_corpus(home, names, version, 1 - settings.epsilon)
            docs = sum(pl.scan_parquet(raw_shard_path(home, n)).select(pl.len()).collect().item() for n in names)
            results[label] = (semantic, fuzzy_removed)
            same = set(semantic["doc_id"]) == reference
            print(f"\n{label}: {docs} documents after ingest, semantic step {seconds:.1f} s for {len(names)} shards; "
                  f"removed {semantic.height} ({semantic.height / docs:.2%}); whole corpus at once: {len(reference)}, "
                  f"identical set: {same} (only here {len(set(semantic['doc_id']) - reference)}, only there "
                  f"{len(reference - set(semantic['doc_id']))})")  # fmt: skip
            natural = semantic.filter(~pl.col("doc_id").is_in(list(truth)))
            print(f"  corpus's own documents removed: {natural.height}; their similarity: min "
                  f"{natural['similarity'].min()}, median {natural['similarity'].median()}")  # fmt: skip
        print(f"\n{'copies':<12} {'injected':>9} | {'semantic alone':>14} {'own family':>11} | {'MinHash':>8} "
              f"{'then semantic':>14} {'missed':>7}")  # fmt: skip
        alone, _ = results["semantic alone"]
        after, fuzzy_removed = results["MinHash, then semantic"]
        alone_of = dict(zip(alone["doc_id"], alone["duplicate_of"], strict=True))
        for kind, pairs in by_kind.items():
            hit = [c for c, _ in pairs if c in alone_of]
            own = [c for c, o in pairs if c in alone_of and alone_of[c] in family[o]]
            by_minhash = sum(c in set(fuzzy_removed["doc_id"]) for c, _ in pairs)
            then = sum(c in set(after["doc_id"]) for c, _ in pairs)
            print(f"{kind:<12} {len(pairs):>9} | {len(hit):>14} {len(own):>11} | {by_minhash:>8} {then:>14} "
                  f"{len(pairs) - by_minhash - then:>7}")  # fmt: skip
        copies = int(alone["doc_id"].str.starts_with("copy-").sum())
        print(f"\nsemantic alone removed {copies} injected copies and {alone.height - copies} documents of the corpus")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def own_vectors(shard: int, n_docs: int, centroids: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(shard)
    noise = 0.08 * rng.standard_normal((n_docs, centroids.shape[1]))
    return unit(centroids[rng.integers(0, len(centroids), n_docs)] + noise)


def scale_vectors(shard: int, n_docs: int, centroids: np.ndarray) -> np.ndarray:
    """The shard's documents; its first 1% are near-copies of documents of shard n-2 (from that shard's own rows)."""
    vectors = own_vectors(shard, n_docs, centroids)
    if shard > 2:
        copies = n_docs // 100
        originals = own_vectors(shard - 2, n_docs, centroids)[copies : 2 * copies]
        rng = np.random.default_rng(-shard % 2**32)
        vectors[:copies] = unit(originals + 0.002 * rng.standard_normal(originals.shape))
    return vectors.astype(np.float16)


def fit_in_child(root: str, k: int, dim: int) -> None:
    """Centroids as a fit leaves them, on a sample around random centres."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((k, dim)))
    sample = unit(centres[rng.integers(0, k, 20 * k)] + 0.08 * rng.standard_normal((20 * k, dim)))
    np.save(Path(root) / "centroids.npy", fit_kmeans(sample.astype(np.float32), k, seed=0, niter=5, nredo=1))


def check_in_child(root: str, shard: str, earlier: list[str], n_docs: int, queue) -> None:
    home = ClimbHome(Path(root))
    centroids = np.load(Path(root) / "centroids.npy")
    vectors = scale_vectors(int(shard), n_docs, centroids)
    start = time.perf_counter()
    frame = assignments_frame([f"{shard}-{i}" for i in range(n_docs)], np.full(n_docs, shard), vectors, centroids,
                              np.arange(len(centroids)))  # fmt: skip
    write_by_cluster(home, "v", shard, frame, vectors)
    found = dedup_shard(home, "v", shard, earlier, SemanticSettings())
    wall = time.perf_counter() - start
    queue.put((wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, found.height))


def scale(n_shards: int, n_docs: int, dim: int = 256) -> None:
    k = default_k(n_shards * n_docs)
    print(f"{n_shards} shards x {n_docs} documents, {dim}-d, K = {k} (the default for the final corpus); "
          "1% of each shard a near-copy of shard n-2")  # fmt: skip
    report_at = sorted({1, 10, 30, 50, 100, n_shards} & set(range(1, n_shards + 1)))
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="bench-semdedup-scale-") as root:
        fit = context.Process(target=fit_in_child, args=(root, k, dim))  # faiss's threads never start in this
        fit.start()  # process: a child forked after OpenMP ran can spin forever
        fit.join()
        measured, registered = {}, []
        print(f"{'shard':>6} {'wall s':>8} {'peak RSS MiB':>13} {'removed':>8} {'store MiB':>10}")
        for shard in range(1, n_shards + 1):
            name = f"{shard:04d}"
            queue = context.Queue()
            child = context.Process(target=check_in_child, args=(root, name, list(registered), n_docs, queue))
            child.start()
            wall, rss, removed = queue.get()
            child.join()
            registered.append(name)
            measured[shard] = (wall, rss)
            if shard in report_at:
                store = sum(p.stat().st_size for p in Path(root).rglob("vectors.npy")) / 2**20
                print(f"{shard:>6} {wall:>8.2f} {rss:>13.0f} {removed:>8} {store:>10.0f}", flush=True)
        first, last = measured[1], measured[n_shards]
        print(f"shard {n_shards} / shard 1: wall x{last[0] / first[0]:.2f}, peak RSS x{last[1] / first[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", action="store_true", help="cost per shard as the corpus grows")
    parser.add_argument("--quick", action="store_true", help="with --scale: 30 shards x 2,000 documents")
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.scale:
        scale(*((30, 2_000) if args.quick else (args.shards, args.docs)))
    else:
        quality(args.seed)


if __name__ == "__main__":
    main()
