"""One proxy run end to end — mixture → token stream → training → target metrics — as a plain function.

The search's proxies and the ClimbMix proof use the same function, so a proof run differs from a proxy run only in
its settings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import torch

from climb_assets.home import ClimbHome
from climb_assets.lake import super_cluster_documents_path, super_cluster_table_path
from climb_assets.lm.mixture import DocPool, MixtureSampler, WindowPlan
from climb_assets.lm.model import GPT, GPTConfig, preset
from climb_assets.lm.targets import (
    MCItem,
    TargetSpec,
    bits_per_byte,
    evaluate_target,
    load_mc_tasks,
    load_target_texts,
)
from climb_assets.lm.token_files import (
    GroupDocs,
    TokenStore,
    cached_group_index,
    open_store,
)
from climb_assets.lm.tokenizer import TextTokenizer
from climb_assets.lm.train import TrainConfig, pack_documents, train_proxy

# windows: training windows, each group's count fixed by its weight, spread evenly over each group's token stream
# (randomised quasi-Monte Carlo; the default: 1.25-1.5x less seed noise than random_windows on the built-in corpora);
# random_windows: the same at independent random positions (nanoGPT's sampling; the default of stop 35, itself
# 1.2-1.4x less noisy than documents); documents: whole documents walked in epochs and packed (as ClimbMix's dataset)
TokenStream = Literal["windows", "random_windows", "documents"]


@dataclass
class SearchCorpus:
    """The kept documents grouped by super-cluster, as (shard, row) references into memory-mapped token files.

    Holds ids and ints only; tokens are read from the token files' memory maps and texts from the raw shards on
    demand, so a process's memory does not grow with the corpus's text or tokens.
    """

    groups: list[int]
    labels: dict[int, str]
    members: dict[int, GroupDocs]
    store: TokenStore
    version: str
    _heldout: dict[int, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)  # per_group -> positions

    def pools(self) -> dict[int, DocPool]:
        """Tokens-only pools for the sampler: ids are positions in the group, texts are fetched by ``records``."""
        return {g: DocPool(range(len(self.members[g])), self.members[g].n_tokens) for g in self.groups}

    def heldout(self, per_group: int) -> dict[int, np.ndarray]:
        """Positions of the documents each super-cluster keeps out of every training run, so its loss can be measured
        on text no proxy saw: ``per_group`` drawn by a fixed seed, at most a quarter of a small group. Drawn once per
        process (the corpus is loaded once per process)."""
        if per_group in self._heldout:
            return self._heldout[per_group]
        chosen = {}
        for g in self.groups:
            n = len(self.members[g])
            k = min(per_group, n // 4)
            chosen[g] = np.sort(np.random.default_rng([0, 2, g]).choice(n, size=k, replace=False)) if k else np.empty(0, np.int64)
        self._heldout[per_group] = chosen
        return chosen

    def training_pools(self, heldout: dict[int, np.ndarray]) -> dict[int, DocPool]:
        """``pools`` without the held-out documents; ids are still positions in the group."""
        pools = {}
        for g in self.groups:
            keep = np.setdiff1d(np.arange(len(self.members[g])), heldout.get(g, np.empty(0, np.int64)), assume_unique=True)
            pools[g] = DocPool(keep, self.members[g].n_tokens[keep])
        return pools

    def locate(self, groups: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw shard index, row, token count) of drawn documents given as (group, index in group), in draw order."""
        shard = np.empty(len(groups), dtype=np.int64)
        row = np.empty(len(groups), dtype=np.int64)
        n_tokens = np.empty(len(groups), dtype=np.int64)
        for g in np.unique(groups):
            at = groups == g
            docs = self.members[int(g)]
            shard[at], row[at], n_tokens[at] = docs.shard[indices[at]], docs.row[indices[at]], docs.n_tokens[indices[at]]
        return shard, row, n_tokens

    def records(self, groups: np.ndarray, indices: np.ndarray) -> tuple[list[str], list[str], list[str], np.ndarray]:
        """(doc_ids, texts, source shard names, token counts) of the drawn documents, in draw order."""
        shard, row, n_tokens = self.locate(groups, indices)
        doc_ids, texts = self.store.records(shard, row)
        return doc_ids, texts, [self.store.shard_names[s] for s in shard], n_tokens

    def tokens(self, group: int, index: int) -> np.ndarray:
        docs = self.members[group]
        return self.store.tokens(int(docs.shard[index]), int(docs.row[index]))

    def tokens_per_group(self) -> np.ndarray:
        return np.array([self.members[g].n_tokens.sum() for g in self.groups], dtype=np.float64)

    def natural_weights(self) -> np.ndarray:
        tokens = self.tokens_per_group()
        return tokens / tokens.sum()


def load_search_corpus(home: ClimbHome, tokenizer: TextTokenizer) -> SearchCorpus:
    """Tokenize any raw shard that lacks token files for this tokenizer, then index the super-clusters into them."""
    table = pl.read_parquet(super_cluster_table_path(home))
    store = open_store(home, tokenizer)
    index = cached_group_index(store, super_cluster_documents_path(home))
    version = str(table["version"][0]) if "version" in table.columns else ""
    corpus = SearchCorpus(sorted(index), {}, index, store, version)
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
    """Everything about a proxy run except its mixture weights and seed; logged verbatim as MLflow params.

    These defaults are the search's (``SearchSettings`` reads them from here)."""

    model_preset: str = "tiny"
    n_layer: int | None = None  # None: the preset's
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int = 128
    token_budget: int = 100_000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_frac: float = 0.05
    schedule: str = "cosine"
    max_repeats: float = 4.0
    token_stream: TokenStream = "windows"
    cluster_loss_docs: int = 4  # per super-cluster, held out of training; each run's loss on them is reported
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
    cluster_bpb: dict[str, float] = field(default_factory=dict)  # super-cluster id -> bits per byte, held out

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


HELDOUT_CHARS = 1_000  # a held-out document's first characters are scored: bounds the per-cluster loss's cost


def mixture_token_stream(
    corpus: SearchCorpus, weights: np.ndarray, budget: int, max_repeats: float, seed: int,
    heldout: dict[int, np.ndarray] | None = None,
):  # fmt: skip
    """Documents drawn by weight (same sampler as ClimbMix) as a lazy stream of memory-mapped token views, plus the
    sampler's stats: only the packer's shuffle pool is ever materialised. ``heldout`` documents are never drawn."""
    pools = corpus.training_pools(heldout or {})
    sampler = MixtureSampler(
        pools, {g: float(w) for g, w in zip(corpus.groups, weights)},
        token_budget=budget, max_repeats=max_repeats, seed=seed,
    )
    plan = sampler.plan()
    token_lists = (
        corpus.tokens(int(g), int(pools[int(g)].doc_ids[i])) for g, i in zip(plan.groups, plan.doc_indices)
    )
    return token_lists, plan.stats.to_dict()


def read_window(corpus: SearchCorpus, pool: DocPool, group: int, doc: int, offset: int, length: int, eot_id: int) -> np.ndarray:
    """``length`` tokens of ``group`` from ``offset`` into its ``doc``-th training document (each document preceded by
    its boundary token), running on into the next documents of the group (wrapping round a small group)."""
    pieces, have = [], 0
    while have < length:
        if offset == 0:  # the boundary token first
            pieces.append(np.array([eot_id]))
            have, offset = have + 1, 1
        # only the window's slice of the memory-mapped document is read, however long the document
        pieces.append(corpus.tokens(group, int(pool.doc_ids[doc]))[offset - 1 : offset - 1 + length - have])
        have += len(pieces[-1])
        doc, offset = (doc + 1) % len(pool.doc_ids), 0
    return np.concatenate(pieces)[:length].astype(np.int64)


def mixture_window_batches(
    corpus: SearchCorpus, weights: np.ndarray, train_cfg: TrainConfig, max_repeats: float, seed: int,
    heldout: dict[int, np.ndarray], eot_id: int, *, spread: bool = True,
) -> tuple[Iterator[torch.Tensor], dict]:  # fmt: skip
    """Exactly the run's batches of windows (``MixtureSampler.window_plan``), read one batch at a time from the
    memory-mapped token files, plus the plan's stats. ``heldout`` documents are never drawn."""
    pools = corpus.training_pools(heldout)
    windows = train_cfg.num_steps * train_cfg.grad_accum * train_cfg.batch_size
    plan: WindowPlan = MixtureSampler(
        pools, {g: float(w) for g, w in zip(corpus.groups, weights)},
        token_budget=windows * train_cfg.block_size, max_repeats=max_repeats, seed=seed,
    ).window_plan(train_cfg.block_size, spread=spread)  # fmt: skip

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(plan), train_cfg.batch_size):
            rows = [
                read_window(corpus, pools[int(g)], int(g), int(d), int(o), train_cfg.block_size + 1, eot_id)
                for g, d, o in zip(*(a[start : start + train_cfg.batch_size] for a in (plan.groups, plan.doc_indices, plan.offsets)))
            ]  # fmt: skip
            yield torch.from_numpy(np.stack(rows))

    return batches(), plan.stats.to_dict()


def cluster_losses(model: GPT, tokenizer: TextTokenizer, corpus: SearchCorpus,
                   heldout: dict[int, np.ndarray]) -> dict[str, float]:  # fmt: skip
    """Bits per byte on each super-cluster's held-out documents: what the model finds hard, cluster by cluster."""
    losses = {}
    for g, positions in heldout.items():
        if len(positions):
            _, texts, _, _ = corpus.records(np.full(len(positions), g), positions)
            losses[str(g)] = bits_per_byte(model, tokenizer, [text[:HELDOUT_CHARS] for text in texts])
    return losses


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
    heldout = corpus.heldout(settings.cluster_loss_docs)
    if settings.token_stream != "documents":
        batches, mixture = mixture_window_batches(corpus, weights, train_cfg, settings.max_repeats, seed, heldout,
                                                  tokenizer.eot_id, spread=settings.token_stream == "windows")  # fmt: skip
    else:
        # Packing drops a document boundary token per doc and the final partial batch: ask for a little more.
        token_lists, mixture = mixture_token_stream(
            corpus, weights, int(settings.token_budget * 1.1) + train_cfg.tokens_per_step, settings.max_repeats, seed,
            heldout,
        )  # fmt: skip
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
        cluster_bpb=cluster_losses(result.model, tokenizer, corpus, heldout),
    ), result.model
