"""ClimbMix: final weights from the predictor, the sampled dataset with its manifest, and the proof table."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.lm.mixture import MixtureSampler
from climb_assets.lm.proxy import SearchCorpus
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

    Streams (``_write_shards``): each raw shard is read once and each output shard is held alone; the sampled
    texts are never all in memory."""
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
    raw_shard, raw_row, n_tokens = corpus.locate(groups, indices)
    names = np.asarray(corpus.store.shard_names, dtype=object)
    sampled = {
        int(g): {"docs": int((groups == g).sum()), "tokens": int(n_tokens[groups == g].sum())} for g in np.unique(groups)
    }
    per_raw_shard = Counter(names[raw_shard].tolist())
    unique = len(np.unique(raw_shard * (int(raw_row.max(initial=0)) + 1) + raw_row))
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        _write_shards(corpus, raw_shard, raw_row, groups, docs_per_shard, tmp, spill=tmp.parent / "spill")
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
            "unique_documents": unique,
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


def _write_shards(corpus, raw_shard, raw_row, groups, docs_per_shard: int, out: Path, *, spill: Path) -> None:
    """Write draw ``i`` into output shard ``i // docs_per_shard``, in draw order, in two bounded passes.

    (1) For each raw shard touched, read it once and spill its drawn rows, tagged with their draw position and
    sorted by it, into one Parquet file with small row groups. (2) For each output shard, read its position range
    back from the spill files (row-group statistics skip the rest) and write it. Memory: one raw shard, then one
    output shard; reading raw shards by row for every output shard instead would cost output x raw shard reads.
    """
    spill.mkdir()
    for s in np.unique(raw_shard):
        at = np.flatnonzero(raw_shard == s)
        name = corpus.store.shard_names[int(s)]
        raw = pl.read_parquet(corpus.store.raw_dir / f"{name}.parquet", columns=["text", "doc_id"])
        raw[raw_row[at]].with_columns(
            super_cluster_id=pl.Series(groups[at], dtype=pl.Int64), source_shard=pl.lit(name), position=pl.Series(at)
        ).write_parquet(spill / f"{name}.parquet", row_group_size=max(1, docs_per_shard // 4), statistics=True)
        del raw
    drawn = pl.scan_parquet(spill / "*.parquet")
    for i in range(math.ceil(len(groups) / docs_per_shard)):
        part = drawn.filter(pl.col("position").is_between(i * docs_per_shard, (i + 1) * docs_per_shard - 1))
        part.sort("position").drop("position").collect().write_parquet(
            out / f"climbmix-{i:05d}.parquet", compression="zstd"
        )


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
