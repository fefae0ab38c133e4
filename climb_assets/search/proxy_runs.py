"""One proxy run end to end — mixture → token stream → training → target metrics — as a plain function.

The search's proxies and the ClimbMix proof use the same function, so a proof run differs from a proxy run only in
its settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.search.mixture import DocPool, MixtureSampler
from climb_assets.search.proxy_model import GPT, GPTConfig, preset
from climb_assets.search.targets import MCItem, TargetSpec, evaluate_target, load_mc_tasks, load_target_texts
from climb_assets.search.tokenizer import TextTokenizer
from climb_assets.search.training import TrainConfig, pack_documents, train_proxy


def super_cluster_documents_path(home: ClimbHome) -> Path:
    return home.lake_dir("super_clusters") / "documents.parquet"


def super_cluster_table_path(home: ClimbHome) -> Path:
    return home.lake_dir("super_clusters") / "super_clusters.parquet"


@dataclass
class SearchCorpus:
    """The kept documents grouped by super-cluster, tokenized once per process for every proxy run."""

    groups: list[int]
    labels: dict[int, str]
    doc_ids: dict[int, list[str]]
    shards: dict[int, list[str]]
    texts: dict[int, list[str]]
    token_ids: dict[int, list[np.ndarray]]
    version: str

    def pools(self) -> dict[int, DocPool]:
        return {
            g: DocPool(self.doc_ids[g], np.array([len(t) for t in self.token_ids[g]]), self.texts[g]) for g in self.groups
        }

    def tokens_per_group(self) -> np.ndarray:
        return np.array([sum(len(t) for t in self.token_ids[g]) for g in self.groups], dtype=np.float64)

    def natural_weights(self) -> np.ndarray:
        tokens = self.tokens_per_group()
        return tokens / tokens.sum()


def load_search_corpus(home: ClimbHome, tokenizer: TextTokenizer) -> SearchCorpus:
    members = pl.read_parquet(super_cluster_documents_path(home), columns=["doc_id", "super_cluster_id"]).drop_nulls()
    table = pl.read_parquet(super_cluster_table_path(home))
    texts = pl.scan_parquet(home.lake_dir("raw_shards") / "*.parquet").select("doc_id", "text", "shard")
    docs = members.lazy().join(texts, on="doc_id", how="inner").sort("super_cluster_id", "doc_id").collect()
    if docs.height != members.height:
        raise ValueError(f"{members.height - docs.height} super-cluster documents are missing from raw_shards")
    encoded = tokenizer.encode_batch(docs["text"].to_list())
    token_arrays = [np.asarray(ids, dtype=np.int32) for ids in encoded]
    groups = sorted(docs["super_cluster_id"].unique().to_list())
    corpus = SearchCorpus(groups, {}, {}, {}, {}, {}, version=str(table["version"][0]) if "version" in table.columns else "")
    group_column = docs["super_cluster_id"].to_numpy()
    for g in groups:
        rows = np.flatnonzero(group_column == g)
        corpus.doc_ids[g] = docs["doc_id"].gather(rows).to_list()
        corpus.shards[g] = docs["shard"].gather(rows).to_list()
        corpus.texts[g] = docs["text"].gather(rows).to_list()
        corpus.token_ids[g] = [token_arrays[i] for i in rows]
    corpus.labels = dict(zip(table["super_cluster_id"].to_list(), table["label"].to_list()))
    return corpus


@dataclass
class TargetData:
    spec: TargetSpec
    texts: list[str] = field(default_factory=list)
    mc_items: list[MCItem] = field(default_factory=list)

    @classmethod
    def load(cls, spec: TargetSpec, texts_path: str | None, mc_path: str | None, max_texts: int) -> "TargetData":
        texts = load_target_texts(texts_path)[:max_texts] if "bpb" in spec.needs else []
        items = load_mc_tasks(mc_path) if "mc" in spec.needs else []
        return cls(spec, texts, items)


@dataclass(frozen=True)
class ProxySettings:
    """Everything about a proxy run except its mixture weights and seed; logged verbatim as MLflow params."""

    model_preset: str = "tiny"
    n_layer: int | None = None  # None: the preset's
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int = 128
    token_budget: int = 300_000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_frac: float = 0.05
    schedule: str = "cosine"
    max_repeats: float = 4.0
    num_threads: int | None = None  # CPU threads for training; None = all cores (set 1 when runs share the cores)
    device: str = "auto"  # "auto": CUDA when present; a step's device lease pins it ("cuda:1", "cpu")

    def model_config(self, vocab_size: int) -> GPTConfig:
        shape = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd}
        overrides = {k: v for k, v in shape.items() if v}
        return preset(self.model_preset, vocab_size=vocab_size, block_size=self.block_size, **overrides)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            token_budget=self.token_budget,
            batch_size=self.batch_size,
            block_size=self.block_size,
            lr=self.lr,
            min_lr=self.min_lr,
            warmup_frac=self.warmup_frac,
            schedule=self.schedule,
            seed=seed,
            num_threads=self.num_threads,
            device=self.device,
        )

    def params(self) -> dict[str, object]:
        return {f"proxy.{k}": v for k, v in asdict(self).items()}


@dataclass
class ProxyOutcome:
    metrics: dict[str, float]
    loss_curve: list[tuple[int, float]]
    mixture: dict
    seconds: float
    tokens_seen: int
    num_params: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def mixture_token_stream(corpus: SearchCorpus, weights: np.ndarray, budget: int, max_repeats: float, seed: int):
    """Documents drawn by weight (same sampler as ClimbMix) as token lists, plus the sampler's stats."""
    sampler = MixtureSampler(
        corpus.pools(), {g: float(w) for g, w in zip(corpus.groups, weights)},
        token_budget=budget, max_repeats=max_repeats, seed=seed,
    )
    plan = sampler.plan()
    token_lists = [corpus.token_ids[int(g)][int(i)] for g, i in zip(plan.groups, plan.doc_indices)]
    return token_lists, plan.stats.to_dict()


def run_proxy(
    corpus: SearchCorpus,
    tokenizer: TextTokenizer,
    weights: np.ndarray,
    settings: ProxySettings,
    target: TargetData,
    *,
    seed: int,
    init_state=None,
) -> tuple[ProxyOutcome, GPT]:
    """Train one proxy on ``weights`` for the token budget and measure the target; returns the model too."""
    model_cfg = settings.model_config(tokenizer.vocab_size)
    train_cfg = settings.train_config(seed)
    # Packing drops a document boundary token per doc and the final partial batch: ask for a little more.
    token_lists, mixture = mixture_token_stream(
        corpus, weights, int(settings.token_budget * 1.1) + train_cfg.tokens_per_step, settings.max_repeats, seed
    )
    batches = pack_documents(token_lists, settings.block_size, tokenizer.eot_id, settings.batch_size, rng=seed)
    result = train_proxy(model_cfg, train_cfg, batches, init_state=init_state)
    metrics = evaluate_target(result.model, tokenizer, target.spec, texts=target.texts, mc_items=target.mc_items)
    metrics["train_loss"] = result.final_loss
    return ProxyOutcome(
        metrics=metrics,
        loss_curve=[(step, loss) for step, _, loss in result.loss_curve],
        mixture=mixture,
        seconds=result.seconds,
        tokens_seen=result.tokens_seen,
        num_params=result.model.num_params(),
    ), result.model
