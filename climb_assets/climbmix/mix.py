"""ClimbMix: final weights from the predictor, the sampled dataset with its manifest, and the proof runs."""

from __future__ import annotations

import json
import math
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
    in shuffled order, into Parquet shards plus ``manifest.json``; the whole directory appears atomically."""
    pools = corpus.pools()
    weighted = {g: float(w) for g, w in zip(corpus.groups, weights)}
    # Under the repetition cap the weighted groups hold at most max_repeats x their tokens: a larger budget would
    # have to repeat data more than the proxies did, so ClimbMix stops there and says so in the manifest.
    ceiling = int(0.999 * max_repeats * sum(pools[g].total_tokens for g, w in weighted.items() if w > 0))
    budget = min(token_budget, ceiling)
    sampler = MixtureSampler(pools, weighted, token_budget=budget, max_repeats=max_repeats, seed=seed)
    plan = sampler.plan()
    groups = np.asarray(plan.groups)
    indices = np.asarray(plan.doc_indices)
    rows = pl.DataFrame(
        {
            "text": [corpus.texts[int(g)][int(i)] for g, i in zip(groups, indices)],
            "doc_id": [corpus.doc_ids[int(g)][int(i)] for g, i in zip(groups, indices)],
            "super_cluster_id": groups.astype(np.int64),
            "source_shard": [corpus.shards[int(g)][int(i)] for g, i in zip(groups, indices)],
            "n_tokens": [len(corpus.token_ids[int(g)][int(i)]) for g, i in zip(groups, indices)],
        }
    )
    stats = plan.stats.to_dict()
    per_group = rows.group_by("super_cluster_id").agg(docs=pl.len(), tokens=pl.col("n_tokens").sum()).sort("super_cluster_id")
    tokens_total = int(rows["n_tokens"].sum())
    shards = math.ceil(rows.height / docs_per_shard)
    manifest = {
        "weights": {
            str(g): {"label": corpus.labels.get(g, ""), "weight": float(w)} for g, w in zip(corpus.groups, weights)
        },
        "sampled": {
            str(r["super_cluster_id"]): {"docs": r["docs"], "tokens": int(r["tokens"]), "token_share": r["tokens"] / tokens_total}
            for r in per_group.iter_rows(named=True)
        },
        "token_budget": token_budget,
        "token_budget_used": budget,
        "budget_note": "" if budget == token_budget else (
            f"the weighted super-clusters hold {ceiling:,} tokens at {max_repeats:g} repeats: budget lowered"
        ),
        "tokens": tokens_total,
        "documents": rows.height,
        "unique_documents": rows["doc_id"].n_unique(),
        "max_repeats": max_repeats,
        "capped_groups": stats.get("capped_groups", []),
        "seed": seed,
        "cluster_version": corpus.version,
        "shards": [f"climbmix-{i:05d}.parquet" for i in range(shards)],
        "provenance": {
            "raw_shards": sorted(rows["source_shard"].unique().to_list()),
            "documents_per_raw_shard": dict(rows.group_by("source_shard").len().sort("source_shard").iter_rows()),
        },
        **manifest_extra,
    }
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for i in range(shards):
            rows.slice(i * docs_per_shard, docs_per_shard).drop("n_tokens").write_parquet(
                tmp / f"climbmix-{i:05d}.parquet", compression="zstd"
            )
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
