"""One search's settings and identity: every knob, the keys derived from them, and where the search's state lives.

A search is keyed by its cluster version and every setting that can change a result (``SearchPlan.search_key``), so
a re-cluster or a settings change starts a new search instead of reading the old one's results.
"""

from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.search.fingerprint import ALGORITHM_VERSIONS, content_hash, fingerprint
from climb_assets.search.predictor import PREDICTOR_KINDS, Predictor, PredictorKind, PredictorParams
from climb_assets.search.proxy_runs import (
    ProxySettings,
    TargetData,
    load_search_corpus,
    super_cluster_documents_path,
    super_cluster_table_path,
)
from climb_assets.search.targets import TargetSpec
from climb_assets.search.tokenizer import load_tokenizer

TargetKind = Literal["bpb", "mc", "blend"]
ModelPreset = Literal["tiny", "demo", "paper_62m", "paper_350m"]
# Settings that change how fast a result is made, never what it is: left out of every fingerprint.
SPEED_ONLY_SETTINGS = frozenset({"num_threads", "device"})


class SearchSettings(dg.ConfigurableResource):
    """Every knob of the search. Demo defaults fit 2 CPU cores; the paper's scale is a config change away
    (proxies_per_iteration=[64, 32, 16], model_preset="paper_62m", token_budget in the billions, on a GPU)."""

    proxies_per_iteration: list[int] = [16, 8, 8]
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
    model_preset: ModelPreset = "tiny"  # tiny ~0.9M params (2 layers x 128); demo, paper_62m, paper_350m for bigger runs
    n_layer: int = 0  # 0: the preset's shape
    n_head: int = 0
    n_embd: int = 0
    block_size: int = 128
    token_budget: int = 100_000
    base_token_budget: int = 300_000  # 0 = every proxy starts from scratch
    batch_size: int = 16
    lr: float = 2e-3
    max_repeats: float = 4.0
    num_threads: int = 0  # CPU threads per proxy (0 = all cores); 1 avoids thrashing when processes share cores
    # candidate sampling and predictor (paper: min_child_samples 5 with 64+ runs; fewer runs need smaller leaves)
    pool_size: int = 100_000
    predictor_min_child_samples: int = 2
    predictor_folds: int = 5
    # auto: cross-validate LightGBM (the paper's), ridge on the weights and their logs, their average and a Gaussian
    # process; keep the best each iteration. LightGBM's held-out score is reported either way.
    predictor_kind: Literal["auto", "lightgbm", "ridge", "ensemble", "gp"] = "auto"

    def proxy_seed(self) -> int:
        """One seed for every proxy of a search (common random numbers): iterations and the random baseline differ
        only in their weights, so their objectives compare, and the predictor learns weights, not seed noise."""
        return self.seed * 1000 + 1

    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(
            model_preset=self.model_preset, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            block_size=self.block_size,
            token_budget=self.token_budget, batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 10,
            max_repeats=self.max_repeats, num_threads=self.num_threads or None,
        )  # fmt: skip

    def base_settings(self) -> ProxySettings:
        return ProxySettings(**{**asdict(self.proxy_settings()), "token_budget": self.base_token_budget})

    def result_settings(self) -> dict:
        """Every setting that can change a result (all of them but the speed-only ones)."""
        return {k: v for k, v in self.model_dump().items() if k not in SPEED_ONLY_SETTINGS}

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

    def target_ingredients(self, home: ClimbHome) -> dict:
        """What the target measures: its spec and the content of the files it reads."""
        spec = self.target_spec()
        texts, mc = self.target_paths(home)
        return {
            "kind": spec.kind,
            "weights": spec.weights,
            "texts_sha256": content_hash(texts) if "bpb" in spec.needs else None,
            "mc_sha256": content_hash(mc) if "mc" in spec.needs else None,
            "max_target_texts": self.max_target_texts,
        }

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


def search_dir(home: ClimbHome) -> Path:
    return home.lake_dir("search")


def proxy_markers_dir(home: ClimbHome) -> Path:
    """Finished proxy runs' records, content-addressed (``<fingerprint>.json``): any search whose proxy has the
    same key reuses it."""
    return search_dir(home) / "proxies"


def proof_markers_dir(home: ClimbHome) -> Path:
    """Finished proof runs' records, content-addressed like the proxies'."""
    return search_dir(home) / "proof_runs"


def result_settings_of(settings: ProxySettings) -> dict:
    return {k: v for k, v in asdict(settings).items() if k not in SPEED_ONLY_SETTINGS}


@dataclass(frozen=True)
class SearchPlan:
    """One search's identity and where its state lives, derived from the settings and the lake's content.

    The keys are computed, never stored as pointers, so every step (and every process) agrees on them.
    """

    home: ClimbHome
    search: SearchSettings

    @cached_property
    def cluster_version(self) -> str:
        table = super_cluster_table_path(self.home)
        if not table.exists():
            raise dg.Failure("no super-clusters yet: materialize quality_filtered_clusters (recluster_job) first")
        versions = pl.read_parquet(table, columns=["version"])["version"].unique().to_list()
        return str(versions[0]) if versions else "unversioned"

    @cached_property
    def membership_sha(self) -> str:
        """Which documents are in which super-cluster (the cluster version names it; the hash proves it)."""
        return content_hash(super_cluster_documents_path(self.home)) or "absent"

    @cached_property
    def corpus_ingredients(self) -> dict:
        return {"cluster_version": self.cluster_version, "membership_sha256": self.membership_sha}

    @cached_property
    def tokenizer_key(self) -> str:
        s = self.search
        return fingerprint({
            "algorithm": ALGORITHM_VERSIONS["tokenizer"], **self.corpus_ingredients,
            "vocab_size": s.tokenizer_vocab_size, "sample_docs": s.tokenizer_sample_docs, "seed": s.seed,
        })  # fmt: skip

    @property
    def tokenizer_path(self) -> Path:
        return search_dir(self.home) / "tokenizers" / f"{self.tokenizer_key}.json"

    @cached_property
    def tokenizer_sha(self) -> str:
        sha = content_hash(self.tokenizer_path)
        if sha is None:
            raise dg.Failure(f"no tokenizer for these settings ({self.tokenizer_key}): materialize proxy_tokenizer first")
        return sha

    @cached_property
    def base_key(self) -> str | None:
        if self.search.base_token_budget <= 0:
            return None
        return fingerprint({
            "algorithm": ALGORITHM_VERSIONS["proxy"], **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "settings": result_settings_of(self.search.base_settings()), "seed": self.search.seed, "mixture": "natural",
        })  # fmt: skip

    @property
    def base_path(self) -> Path | None:
        return search_dir(self.home) / "base" / f"{self.base_key}.pt" if self.base_key else None

    @cached_property
    def base_sha(self) -> str | None:
        if self.base_path is None:
            return None
        sha = content_hash(self.base_path)
        if sha is None:
            raise dg.Failure(f"no base checkpoint for these settings ({self.base_key}): materialize proxy_base_checkpoint")
        return sha

    @cached_property
    def target_ingredients(self) -> dict:
        return self.search.target_ingredients(self.home)

    @cached_property
    def search_key(self) -> str:
        """Cluster version + every setting + the tokenizer, base and target: one search, one directory."""
        return fingerprint({
            "algorithms": ALGORITHM_VERSIONS, **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "base": self.base_key, "target": self.target_ingredients, "settings": self.search.result_settings(),
        })  # fmt: skip

    @property
    def state_dir(self) -> Path:
        """This search's own state: its iterations and its baselines."""
        return search_dir(self.home) / "searches" / self.search_key

    def iteration_dir(self, iteration: int) -> Path:
        return self.state_dir / f"iteration_{iteration}"

    def predictor_path(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "predictor"

    def run_key(self, weights: dict[str, float], settings: ProxySettings, seed: int, init: str | None) -> str:
        """The key of one training run: its mixture, settings, seed, starting point, data and target."""
        return fingerprint({
            "algorithm": ALGORITHM_VERSIONS["proxy"], **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "init_sha256": init, "target": self.target_ingredients, "weights": weights,
            "settings": result_settings_of(settings), "seed": seed,
        })  # fmt: skip

    def mlflow_tags(self) -> dict[str, str]:
        return {"climb.search_id": self.cluster_version, "climb.cluster_version": self.cluster_version,
                "climb.search_key": self.search_key}


@lru_cache(maxsize=2)
def _cached_inputs(home_root: str, tokenizer_file: str, stamp: tuple):
    tokenizer = load_tokenizer(tokenizer_file)
    return tokenizer, load_search_corpus(ClimbHome(Path(home_root)), tokenizer)


def search_inputs(plan: SearchPlan):
    """Tokenizer and tokenized corpus, loaded once per process (keyed by the tokenizer's and membership's content)."""
    return _cached_inputs(str(plan.home.root), str(plan.tokenizer_path), (plan.tokenizer_sha, plan.membership_sha))


def weight_columns(groups: list[int]) -> list[str]:
    return [f"w_{g}" for g in groups]


def read_results(plan: SearchPlan, up_to: int) -> pl.DataFrame:
    """Every proxy result of this search up to iteration ``up_to``; a missing iteration is an error, not a gap."""
    paths = [plan.iteration_dir(k) / "results.parquet" for k in range(1, up_to + 1)]
    missing = [k for k, p in enumerate(paths, start=1) if not p.exists()]
    if missing:
        raise dg.Failure(f"search {plan.search_key} has no proxy results for iteration(s) {missing}: materialize them first")
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")


def search_progress(plan: SearchPlan, iterations: int) -> pl.DataFrame:
    """One row per iteration: proxies so far, the predictor kept and every kind's held-out Spearman, and the
    iteration's best and mean proxy objective (higher is better), so a search that stalls shows it."""
    results = read_results(plan, iterations)
    rows = []
    for k in range(1, iterations + 1):
        predictor = Predictor.load(plan.predictor_path(k))
        objective = results.filter(pl.col("iteration") == k)["objective"]
        rows.append({
            "iteration": k, "runs_so_far": results.filter(pl.col("iteration") <= k).height,
            "predictor_kept": predictor.kind, "spearman": predictor.extra["spearman"],
            **{f"spearman_{kind}": v for kind, v in sorted(predictor.extra.get("spearman_by_kind", {}).items())},
            "best_proxy": float(objective.max()), "mean_proxy": float(objective.mean()),
        })  # fmt: skip
    return pl.DataFrame(rows)
