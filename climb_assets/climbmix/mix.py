"""ClimbMix: final weights from the predictor, the sampled dataset with its manifest, and the proof runs."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.search.mixture import MixtureSampler
from climb_assets.search.proxy_runs import ProxySettings, SearchCorpus, TargetData, run_proxy
from climb_assets.search.tokenizer import TextTokenizer
from climb_assets.storage import atomic_path


def write_climbmix(
    directory: Path,
    corpus: SearchCorpus,
    weights: np.ndarray,
    *,
    token_budget: int,
    max_repeats: float,
    seed: int,
    docs_per_shard: int,
    manifest_extra: dict,
) -> dict:
    """Sample documents by ``weights`` up to ``token_budget`` (same sampler and repetition cap as the proxies),
    in shuffled order, into Parquet shards plus ``manifest.json``; the whole directory appears atomically.

    Streams: one output shard's texts at a time, fetched from the raw shards by (shard, row); never all of them."""
    pools = corpus.pools()
    weighted = {g: float(w) for g, w in zip(corpus.groups, weights)}
    # Under the repetition cap the weighted groups hold at most max_repeats x their tokens: a larger budget would
    # have to repeat data more than the proxies did, so ClimbMix stops there and says so in the manifest.
    ceiling = int(0.999 * max_repeats * sum(pools[g].total_tokens for g, w in weighted.items() if w > 0))
    budget = min(token_budget, ceiling)
    sampler = MixtureSampler(pools, weighted, token_budget=budget, max_repeats=max_repeats, seed=seed)
    plan = sampler.plan()
    groups = np.asarray(plan.groups, dtype=np.int64)
    indices = np.asarray(plan.doc_indices, dtype=np.int64)
    stats = plan.stats.to_dict()
    shards = math.ceil(len(groups) / docs_per_shard)
    # One output shard at a time: only its documents' texts are fetched (by raw shard and row) and held.
    sampled: dict[int, dict[str, int]] = {}
    per_raw_shard: Counter[str] = Counter()
    unique: set[tuple[int, int]] = set()
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for i in range(shards):
            part = slice(i * docs_per_shard, (i + 1) * docs_per_shard)
            doc_ids, texts, sources, n_tokens = corpus.records(groups[part], indices[part])
            pl.DataFrame(
                {"text": texts, "doc_id": doc_ids, "super_cluster_id": groups[part], "source_shard": sources}
            ).write_parquet(tmp / f"climbmix-{i:05d}.parquet", compression="zstd")
            for g, n in zip(groups[part].tolist(), n_tokens.tolist()):
                entry = sampled.setdefault(g, {"docs": 0, "tokens": 0})
                entry["docs"] += 1
                entry["tokens"] += n
            per_raw_shard.update(sources)
            unique.update(zip(groups[part].tolist(), indices[part].tolist()))
        tokens_total = sum(e["tokens"] for e in sampled.values())
        manifest = {
            "weights": {
                str(g): {"label": corpus.labels.get(g, ""), "weight": float(w)} for g, w in zip(corpus.groups, weights)
            },
            "sampled": {
                str(g): {**e, "token_share": e["tokens"] / tokens_total} for g, e in sorted(sampled.items())
            },
            "token_budget": token_budget,
            "token_budget_used": budget,
            "budget_note": "" if budget == token_budget else (
                f"the weighted super-clusters hold {ceiling:,} tokens at {max_repeats:g} repeats: budget lowered"
            ),
            "tokens": tokens_total,
            "documents": len(groups),
            "unique_documents": len(unique),
            "max_repeats": max_repeats,
            "capped_groups": stats.get("capped_groups", []),
            "seed": seed,
            "cluster_version": corpus.version,
            "shards": [f"climbmix-{i:05d}.parquet" for i in range(shards)],
            "provenance": {
                "raw_shards": sorted(per_raw_shard),
                "documents_per_raw_shard": dict(sorted(per_raw_shard.items())),
            },
            **manifest_extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(_json_safe(manifest), indent=2, sort_keys=True, default=str))
    return manifest


def _json_safe(value):
    """NaN (e.g. a Spearman that could not be computed) becomes null: the manifest must be strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class ProofRun:
    mixture: str
    seed: int
    metrics: dict[str, float]
    seconds: float


def proof_runs(
    corpus: SearchCorpus,
    tokenizer: TextTokenizer,
    mixtures: dict[str, np.ndarray],
    settings: ProxySettings,
    target: TargetData,
    seeds: list[int],
    on_run=None,
) -> list[ProofRun]:
    """Train an evaluation model per mixture and seed from scratch at equal token budget and measure the target."""
    runs = []
    for seed in seeds:
        for name, weights in mixtures.items():
            outcome, _ = run_proxy(corpus, tokenizer, weights, settings, target, seed=seed)
            run = ProofRun(name, seed, outcome.metrics, outcome.seconds)
            if on_run is not None:
                on_run(run, outcome)
            runs.append(run)
    return runs


def proof_table(runs: list[ProofRun]) -> pl.DataFrame:
    """Mean ± standard deviation of every metric per mixture, best objective first."""
    frame = pl.DataFrame([{"mixture": r.mixture, "seed": r.seed, **r.metrics} for r in runs])
    metrics = [c for c in frame.columns if c not in ("mixture", "seed")]
    table = frame.group_by("mixture").agg(
        pl.len().alias("seeds"),
        *[pl.col(m).mean().alias(f"{m}_mean") for m in metrics],
        *[pl.col(m).std(ddof=1).fill_null(0.0).alias(f"{m}_std") for m in metrics],
    )
    return table.sort("objective_mean", descending=True)
