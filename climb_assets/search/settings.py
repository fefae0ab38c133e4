"""Every knob of the search, the proof and ClimbMix, each defined once with its default.

The demo defaults fit 2 CPU cores; ``PAPER_SCALE`` is the paper's scale as data, a config change away on GPUs.
A proxy's own hyperparameters default to ``ProxySettings``'s (the language-model package's), so the search and a
proxy run outside Dagster agree on them.
"""

from dataclasses import asdict, replace
from typing import Literal

import dagster as dg
from pydantic import model_validator

from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import ProxySettings, TargetData, TokenStream
from climb_assets.lm.targets import TargetSpec
from climb_assets.search.candidates import FinalPick
from climb_assets.search.predictor import (
    MIN_RUNS_TO_FIT,
    PREDICTOR_KINDS,
    PredictorKind,
    PredictorParams,
)

TargetKind = Literal["bpb", "mc", "blend"]
ModelPreset = Literal["tiny", "demo", "paper_62m", "paper_350m"]
PredictorChoice = Literal["auto", "lightgbm", "ridge", "ensemble", "gp"]
SearchStart = Literal["continue", "fresh"]
# How iteration k > 1 picks its candidates from the predictor's scored pool (search/candidates.py).
Acquisition = Literal["paper", "exploit_first"]
# Settings that change how fast a result is made, never what it is: left out of every fingerprint.
SPEED_ONLY_SETTINGS = frozenset({"num_threads", "device"})
# How a search continues its lineage's previous one: part of a search's key, not of the lineage's (a user who tunes
# them keeps continuing the same line of searches).
CONTINUATION_SETTINGS = frozenset({"search_start", "continued_proxy_fraction", "continue_min_spearman",
                                   "continue_max_p_value", "continue_max_prior_shift",
                                   "continue_max_changed_share", "base_continue_fraction"})  # fmt: skip

PROXY = ProxySettings()
DEFAULT_PROXIES_PER_ITERATION = (16, 8, 8)
# The number of search iterations shapes the asset graph (iteration_1 ... iteration_N), so the code location is
# built with it; it is the length of the default schedule, and a run's schedule must have that many entries.
SEARCH_ITERATIONS = len(DEFAULT_PROXIES_PER_ITERATION)
DEFAULT_POOL_SIZE = 100_000  # fresh Dirichlet samples scored by a predictor (paper: ~100k)

# The paper's scale (CLIMB, arXiv 2504.13161): 64 / 32 / 16 proxies of 62M parameters, LightGBM leaves of >= 5 runs.
# Token budgets are the user's to set for their hardware (billions of tokens per proxy on GPUs).
PAPER_SCALE = {
    "proxies_per_iteration": [64, 32, 16],
    "model_preset": "paper_62m",
    "block_size": 1024,
    "predictor_min_child_samples": 5,
}


class SettingsError(ValueError):
    """Settings that cannot make a result, named with their allowed range: raised when the settings are built (a
    run's first step, and before launch for the ``climb`` commands), never minutes later inside a step."""


def check(owner: str, problems: list[str]) -> None:
    if problems:
        raise SettingsError(f"invalid {owner}: " + "; ".join(problems))


def at_least(name: str, value: float, low: float, why: str = "") -> list[str]:
    return [] if value >= low else [f"{name} must be >= {low:g}{f' ({why})' if why else ''}, got {value:g}"]


def result_settings_of(settings: ProxySettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in SPEED_ONLY_SETTINGS}


class SearchSettings(dg.ConfigurableResource):
    """Every knob of the search (``PAPER_SCALE`` holds the paper's values)."""

    proxies_per_iteration: list[int] = list(DEFAULT_PROXIES_PER_ITERATION)
    seed: int = 0
    target_kind: TargetKind = "bpb"  # bits per byte on target texts, multiple choice, or a weighted blend
    target_blend_bpb: float = 1.0
    target_blend_mc: float = 1.0
    target_texts_path: str = ""  # default: CLIMB_HOME/targets/target.jsonl
    target_mc_path: str = ""  # default: CLIMB_HOME/targets/mc_target.jsonl
    max_target_texts: int = 40  # evaluation cost grows with it; 40 wiki articles ~ 100 kB
    # tokenizer and proxy model
    tokenizer_vocab_size: int = 4096
    tokenizer_sample_docs: int = 4000
    tokenizer_generation: int = 0  # bump to train a new tokenizer; else the first one trained stays across waves
    model_preset: ModelPreset = PROXY.model_preset  # tiny ~0.9M params (2 layers x 128); demo, paper_62m, paper_350m
    n_layer: int = 0  # 0: the preset's shape
    n_head: int = 0
    n_embd: int = 0
    block_size: int = PROXY.block_size
    token_budget: int = PROXY.token_budget
    base_token_budget: int = 300_000  # 0 = every proxy starts from scratch
    batch_size: int = PROXY.batch_size
    lr: float = PROXY.lr  # the proxies' peak learning rate; they decay to lr / 10
    max_repeats: float = PROXY.max_repeats
    # how a proxy's tokens are drawn: windows with each super-cluster's count fixed by its weight, spread evenly over
    # each super-cluster (the default), at random positions, or whole documents packed (lm/proxy.py's TokenStream)
    token_stream: TokenStream = PROXY.token_stream
    cluster_loss_docs: int = PROXY.cluster_loss_docs  # per super-cluster, held out of training: per-cluster loss
    num_threads: int = 0  # CPU threads per proxy (0 = all cores); 1 avoids thrashing when processes share cores
    # candidate sampling and predictor (paper: min_child_samples 5 with 64+ runs; fewer runs need smaller leaves)
    pool_size: int = DEFAULT_POOL_SIZE
    # paper: n at random from the top max(n^2, 128) of the pool (explore within the predictor's best region);
    # exploit_first: the predictor's own best mixture (within the weights trained proxies gave each super-cluster,
    # as ClimbMix's pick is) is trained first, the rest drawn as the paper does
    acquisition: Acquisition = "paper"
    # the final picks (ClimbMix's and RegMix's): refine: the predictor's best of the paper's pool, the trained
    # mixtures and fine draws around the best of them (search/candidates.py, best_predicted_mixture); pool: the
    # paper's pool alone
    final_pick: FinalPick = "refine"
    # > 0: after an iteration's proxies, its best ``confirm_top`` are trained again with the next seed (each its own
    # step) and their objective becomes the mean of the two: the predictor and "the best proxy" see less of one
    # seed's luck (the winner's curse of a single-seed maximum). 0: the paper's one run per candidate
    confirm_top: int = 0
    predictor_min_child_samples: int = 2
    predictor_folds: int = 5
    # auto: cross-validate LightGBM (the paper's), ridge on the weights and their logs, their average and a Gaussian
    # process; keep the best each iteration. LightGBM's held-out score is reported either way.
    predictor_kind: PredictorChoice = "auto"
    # a new crawl wave: continue the previous search with the same settings (its runs become evidence once a refresh
    # shows its predictor still ranks new runs), or search from scratch
    search_start: SearchStart = "continue"
    continued_proxy_fraction: float = 0.25  # a continued search trains this share of the search's proxies
    continue_min_spearman: float = 0.5  # the old predictor's rank correlation on the refresh runs, to keep its runs
    # ... and how likely a correlation that high is by chance (exact permutation test, one-sided), to keep its runs
    continue_max_p_value: float = 0.05
    continue_max_prior_shift: float = 0.1  # total variation between the old and new token priors, to continue at all
    # beyond it, Olmix-style: search again only the super-clusters that moved (the fewest whose removal brings the
    # rest within continue_max_prior_shift), the rest held at the previous search's ratios as one block, when they
    # are at most this share of the super-clusters; else (or at 0) restart the whole search
    continue_max_changed_share: float = 0.5
    # > 0: a continued search's base checkpoint is the previous search's base trained on, on the new natural mixture,
    # for this share of base_token_budget; 0 (default): every wave trains its base from scratch. Off because on the
    # demo the refresh ranked worse from a base trained on (README, "A new crawl wave continues the search")
    base_continue_fraction: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "SearchSettings":
        step = self.batch_size * self.block_size
        counts = self.proxies_per_iteration
        problems = [] if counts and min(counts) >= 1 else [f"proxies_per_iteration must be one count >= 1 per "
                                                           f"iteration, got {counts}"]  # fmt: skip
        if counts:
            problems += at_least("proxies_per_iteration[0]", counts[0], MIN_RUNS_TO_FIT, "the first predictor's runs")
            top = max(max(n * n for n in counts), 128)
            problems += at_least("pool_size", self.pool_size, top, "the top max(n^2, 128) set is drawn from it")
            if not 0 <= self.confirm_top <= min(counts):
                problems.append(f"confirm_top must be in [0, {min(counts)}] (the fewest proxies of an iteration), "
                                f"got {self.confirm_top}")  # fmt: skip
        problems += at_least("seed", self.seed, 0)
        problems += at_least("max_target_texts", self.max_target_texts, 1)
        problems += at_least("tokenizer_vocab_size", self.tokenizer_vocab_size, 258, "256 bytes + EOT + one merge")
        problems += at_least("tokenizer_sample_docs", self.tokenizer_sample_docs, 1)
        problems += at_least("tokenizer_generation", self.tokenizer_generation, 0)
        for name in ("n_layer", "n_head", "n_embd", "num_threads"):
            problems += at_least(name, getattr(self, name), 0, "0 means the default")
        if self.n_head and self.n_embd and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        problems += at_least("block_size", self.block_size, 1) + at_least("batch_size", self.batch_size, 1)
        problems += at_least("token_budget", self.token_budget, step, "batch_size x block_size: one optimizer step")
        if self.base_token_budget:
            problems += at_least("base_token_budget", self.base_token_budget, step, "0 disables the base; else one step")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr:g}")
        problems += at_least("max_repeats", self.max_repeats, 1, "each document at least once")
        problems += at_least("cluster_loss_docs", self.cluster_loss_docs, 0, "0 holds none out and measures none")
        problems += at_least("predictor_min_child_samples", self.predictor_min_child_samples, 1)
        problems += at_least("predictor_folds", self.predictor_folds, 2)
        if not 0 < self.continued_proxy_fraction <= 1:
            problems.append(f"continued_proxy_fraction must be in (0, 1], got {self.continued_proxy_fraction:g}")
        if not -1 <= self.continue_min_spearman <= 1:
            problems.append(f"continue_min_spearman must be in [-1, 1], got {self.continue_min_spearman:g}")
        if not 0 < self.continue_max_p_value <= 1:
            problems.append(f"continue_max_p_value must be in (0, 1], got {self.continue_max_p_value:g}")
        if not 0 <= self.base_continue_fraction <= 1:
            problems.append(f"base_continue_fraction must be in [0, 1], got {self.base_continue_fraction:g}")
        if not 0 <= self.continue_max_prior_shift <= 1:
            problems.append(f"continue_max_prior_shift must be in [0, 1], got {self.continue_max_prior_shift:g}")
        if not 0 <= self.continue_max_changed_share <= 1:
            problems.append(f"continue_max_changed_share must be in [0, 1], got {self.continue_max_changed_share:g}")
        if self.target_kind == "blend":
            problems += at_least("target_blend_bpb", self.target_blend_bpb, 0) + at_least("target_blend_mc",
                                                                                        self.target_blend_mc, 0)
            if self.target_blend_bpb + self.target_blend_mc <= 0:
                problems.append("target_blend_bpb + target_blend_mc must be > 0 for target_kind: blend")
        check("search settings", problems)
        return self

    def proxy_seed(self) -> int:
        """One seed for every proxy of a search (common random numbers): iterations and the random baseline differ
        only in their weights, so their objectives compare, and the predictor learns weights, not seed noise."""
        return self.seed * 1000 + 1

    def confirm_seed(self) -> int:
        """The second seed of a confirmed proxy: the next after the search's own."""
        return self.proxy_seed() + 1

    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(
            model_preset=self.model_preset, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            block_size=self.block_size,
            token_budget=self.token_budget, batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 10,
            max_repeats=self.max_repeats, token_stream=self.token_stream, cluster_loss_docs=self.cluster_loss_docs,
            num_threads=self.num_threads or None,
        )  # fmt: skip

    def base_settings(self) -> ProxySettings:
        return ProxySettings(**{**asdict(self.proxy_settings()), "token_budget": self.base_token_budget})

    def base_continue_settings(self) -> ProxySettings:
        """How a continued search's base trains on from the previous one: the base's settings, a share of its tokens
        (at least one optimizer step)."""
        tokens = max(self.batch_size * self.block_size, round(self.base_token_budget * self.base_continue_fraction))
        return ProxySettings(**{**asdict(self.proxy_settings()), "token_budget": tokens})

    def result_settings(self) -> dict:
        """Every setting that can change a result (all of them but the speed-only ones)."""
        return {k: v for k, v in self.model_dump().items() if k not in SPEED_ONLY_SETTINGS}

    def lineage_settings(self) -> dict:
        """The settings searches must share for one to continue another."""
        return {k: v for k, v in self.result_settings().items() if k not in CONTINUATION_SETTINGS}

    def target_spec(self) -> TargetSpec:
        weights = {"bpb": self.target_blend_bpb, "mc": self.target_blend_mc} if self.target_kind == "blend" else {}
        return TargetSpec(kind=self.target_kind, weights=weights)

    def target_paths(self, home: ClimbHome) -> tuple[str, str]:
        return (
            self.target_texts_path or str(home.targets / "target.jsonl"),
            self.target_mc_path or str(home.targets / "mc_target.jsonl"),
        )

    def target(self, home: ClimbHome) -> TargetData:
        texts, mc = self.target_paths(home)
        return TargetData.load(self.target_spec(), texts, mc, self.max_target_texts)

    def predictor_params(self) -> PredictorParams:
        return PredictorParams(min_child_samples=self.predictor_min_child_samples)

    def predictor_kinds(self) -> tuple[PredictorKind, ...]:
        """The kinds cross-validated each iteration: all with ``auto``, else the chosen one and LightGBM for parity."""
        if self.predictor_kind == "auto":
            return PREDICTOR_KINDS
        return tuple(dict.fromkeys([self.predictor_kind, "lightgbm"]))

    def proxies(self, iteration: int) -> int:
        counts = self.proxies_per_iteration
        return counts[min(iteration, len(counts)) - 1]


class ProofSettings(dg.ConfigurableResource):
    """Evaluation runs: every mixture trained at the same token budget with the same seeds (paired: same data order
    and initialisation). ``base`` continues from the search's base checkpoint, like the proxies, which gives an
    evaluation model at least as good as a proxy with far less seed noise than ``scratch``."""

    seeds: list[int] = [0, 1, 2, 3, 4]
    start: Literal["base", "scratch"] = "base"
    n_layer: int = 0  # 0: the proxies' shape (the only shape that can start from the base)
    n_head: int = 0
    n_embd: int = 0
    token_budget: int = PROXY.token_budget
    # loss-guided bootstrapping (climbmix/loss_guided.py), a fifth baseline: rounds of proxy-sized training from the
    # base, each re-weighting super-clusters by exp(eta x excess held-out loss over the base), mixed with uniform
    loss_guided_rounds: int = 3  # 0: no loss-guided baseline
    loss_guided_eta: float = 1.0
    loss_guided_floor: float = 0.1
    # the transfer check (climbmix/transfer.py): the same mixtures trained by a larger model from scratch, to see
    # whether the proxies' verdicts hold at scale. Off by default: on 2 CPU cores it costs about as much as the demo
    transfer_seeds: list[int] = []
    transfer_width: int = 2  # x the proxies' n_embd (4x their non-embedding parameters at 2)
    transfer_layers: int = 1  # x the proxies' n_layer
    transfer_token_multiplier: float = 3.0  # x the proof's token budget

    @model_validator(mode="after")
    def _check(self) -> "ProofSettings":
        problems = [] if self.seeds and len(set(self.seeds)) == len(self.seeds) else [
            f"seeds must be distinct and at least one, got {self.seeds}"]  # fmt: skip
        for name in ("n_layer", "n_head", "n_embd"):
            problems += at_least(name, getattr(self, name), 0, "0 means the proxies' shape")
        problems += at_least("token_budget", self.token_budget, 1)
        problems += at_least("loss_guided_rounds", self.loss_guided_rounds, 0, "0 turns the baseline off")
        if len(set(self.transfer_seeds)) != len(self.transfer_seeds):
            problems.append(f"transfer_seeds must be distinct, got {self.transfer_seeds}")
        problems += at_least("transfer_width", self.transfer_width, 1)
        problems += at_least("transfer_layers", self.transfer_layers, 1)
        if not self.transfer_token_multiplier >= 1:
            problems.append(f"transfer_token_multiplier must be >= 1, got {self.transfer_token_multiplier:g}")
        if not self.loss_guided_eta > 0:
            problems.append(f"loss_guided_eta must be > 0, got {self.loss_guided_eta:g}")
        if not 0 <= self.loss_guided_floor <= 1:
            problems.append(f"loss_guided_floor must be in [0, 1], got {self.loss_guided_floor:g}")
        check("proof settings", problems)
        return self

    def proxy_settings(self, search: SearchSettings) -> ProxySettings:
        proxy = search.proxy_settings()
        shape = {k: getattr(self, k) or getattr(proxy, k) for k in ("n_layer", "n_head", "n_embd")}
        if self.start == "base" and search.base_token_budget > 0 and any(shape[k] != getattr(proxy, k) for k in shape):
            raise dg.Failure(f"proof runs start from the base checkpoint, so their shape must be the proxies' "
                             f"({[getattr(proxy, k) for k in shape]}); got {list(shape.values())}: set start: scratch")  # fmt: skip
        return ProxySettings(**{**asdict(proxy), **shape, "token_budget": self.token_budget})

    def transfer_settings(self, search: SearchSettings) -> ProxySettings:
        """The larger model of the transfer check: the proxies' shape widened and deepened by the multipliers,
        trained from scratch on ``transfer_token_multiplier`` x the proof's tokens, otherwise the proxies' settings."""
        proxy = search.proxy_settings()
        shape = proxy.model_config(vocab_size=256)
        return replace(
            proxy, n_layer=shape.n_layer * self.transfer_layers, n_head=shape.n_head,
            n_embd=shape.n_embd * self.transfer_width, token_budget=round(self.token_budget * self.transfer_token_multiplier),
        )  # fmt: skip


class ClimbMixConfig(dg.Config):
    """The final dataset: the best predicted mixture sampled up to ``token_budget`` tokens."""

    token_budget: int = 2_000_000
    top_k_average: int = 1  # 1: the single best predicted mixture; >1: mean of the top k (as RegMix does)
    pool_size: int = DEFAULT_POOL_SIZE
    max_repeats: float = PROXY.max_repeats
    docs_per_shard: int = 5_000
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "ClimbMixConfig":
        problems = at_least("token_budget", self.token_budget, 1) + at_least("top_k_average", self.top_k_average, 1)
        problems += at_least("pool_size", self.pool_size, self.top_k_average, "top_k_average is drawn from it")
        problems += at_least("max_repeats", self.max_repeats, 1) + at_least("docs_per_shard", self.docs_per_shard, 1)
        check("climbmix config", problems)
        return self
