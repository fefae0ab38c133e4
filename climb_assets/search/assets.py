"""The CLIMB search as assets: a tokenizer and base checkpoint, then per iteration k
``iteration_k/mixture_candidates → iteration_k/proxy_results → iteration_k/predictor``.

Each iteration is its own set of assets, so the graph shows the loop unrolled and any iteration can be re-run or
extended alone. Every cached unit of work is keyed by a fingerprint of what determined it (``search/fingerprint.py``):
the tokenizer, the base checkpoint and every proxy run live in content-addressed files, and a search's candidates,
results and predictors live under the search's own key (cluster version + every setting + input hashes), so a
re-cluster or a settings change starts a new search instead of reading the old one's results.
"""

import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.home import ClimbHome  # noqa: E402
from climb_assets.metadata import figure_markdown, markdown_table  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.search.candidates import (  # noqa: E402
    next_iteration_candidates,
    sample_dirichlet_candidates,
    token_prior,
)
from climb_assets.search.fingerprint import ALGORITHM_VERSIONS, content_hash, fingerprint  # noqa: E402
from climb_assets.search.predictor import (  # noqa: E402
    PREDICTOR_KINDS,
    Predictor,
    PredictorKind,
    PredictorParams,
    select_predictor,
)
from climb_assets.search.proxy_runs import (  # noqa: E402
    ProxySettings,
    TargetData,
    load_search_corpus,
    run_proxy,
    super_cluster_documents_path,
    super_cluster_table_path,
)
from climb_assets.search.targets import TargetSpec  # noqa: E402
from climb_assets.search.tokenizer import load_tokenizer, train_bpe_tokenizer  # noqa: E402
from climb_assets.search.tracking import (  # noqa: E402
    MlflowTracking,
    label_params,
    log_lightgbm_model,
    log_run,
    run_url,
    tag_run,
    weight_params,
)
from climb_assets.search.training import load_checkpoint, save_checkpoint  # noqa: E402
from climb_assets.storage import atomic_path, write_json_atomic, write_parquet_atomic  # noqa: E402
from climb_assets.tags import GPU_POOL, GPU_TAGS  # noqa: E402

TargetKind = Literal["bpb", "mc", "blend"]
ModelPreset = Literal["tiny", "demo", "paper_62m", "paper_350m"]
# Settings that change how fast a result is made, never what it is: left out of every fingerprint.
SPEED_ONLY_SETTINGS = frozenset({"num_threads"})


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
    # auto: cross-validate LightGBM (the paper's), ridge on the weights and their logs, and their average; keep the
    # best each iteration. LightGBM's held-out score is reported either way.
    predictor_kind: Literal["auto", "lightgbm", "ridge", "ensemble"] = "auto"

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


@dg.asset(group_name="search", deps=["quality_filtered_clusters"], kinds={"tokenizers"},
          code_version=ALGORITHM_VERSIONS["tokenizer"])  # fmt: skip
def proxy_tokenizer(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
    """A byte-level BPE trained offline on a sample of the kept documents, shared by every proxy (reused when the
    super-clusters and tokenizer settings are unchanged)."""
    plan = SearchPlan(climb.home(), search)
    path = plan.tokenizer_path
    reused = path.exists()
    started = time.perf_counter()
    members = pl.read_parquet(super_cluster_documents_path(plan.home), columns=["doc_id", "super_cluster_id"]).drop_nulls()
    sample = members.sample(min(search.tokenizer_sample_docs, members.height), seed=search.seed)
    texts = (
        pl.scan_parquet(plan.home.lake_dir("raw_shards") / "*.parquet").select("doc_id", "text")
        .join(sample.lazy(), on="doc_id").sort("doc_id").collect()["text"].to_list()
    )  # fmt: skip
    if reused:
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = train_bpe_tokenizer(texts, vocab_size=search.tokenizer_vocab_size)
        with atomic_path(path) as tmp:
            tokenizer.save(tmp)
    encoded = tokenizer.encode_batch(texts[:500])
    bytes_per_token = sum(len(t.encode()) for t in texts[:500]) / max(1, sum(len(e) for e in encoded))
    return dg.MaterializeResult(
        metadata={
            "reused": reused,
            "fingerprint": plan.tokenizer_key,
            "vocab_size": tokenizer.vocab_size,
            "trained_on_docs": len(texts),
            "bytes_per_token": round(bytes_per_token, 3),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(plan.tokenizer_sha),
    )


@dg.asset(group_name="search", deps=[proxy_tokenizer], pool=GPU_POOL, op_tags=GPU_TAGS, kinds={"pytorch"},
          code_version=ALGORITHM_VERSIONS["proxy"])  # fmt: skip
def proxy_base_checkpoint(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
    """One proxy trained on the natural mixture; every proxy continues from it, as the paper's proxies do
    (cuts the cost and the variance of each proxy run). Reused when its fingerprint is unchanged."""
    plan = SearchPlan(climb.home(), search)
    if plan.base_path is None:
        return dg.MaterializeResult(metadata={"enabled": False}, data_version=dg.DataVersion("disabled"))
    path = plan.base_path
    if not path.exists():
        tokenizer, corpus = search_inputs(plan)
        settings = search.base_settings()
        outcome, model = run_proxy(
            corpus, tokenizer, corpus.natural_weights(), settings, search.target(plan.home), seed=search.seed
        )
        save_checkpoint(path, model, extra={"settings": asdict(settings), "metrics": outcome.metrics,
                                            "tokens_seen": outcome.tokens_seen, "seconds": outcome.seconds,
                                            "fingerprint": plan.base_key})  # fmt: skip
        reused = False
    else:
        reused = True
    extra = load_checkpoint(path)[1]
    return dg.MaterializeResult(
        metadata={
            "enabled": True,
            "reused": reused,
            "fingerprint": plan.base_key,
            "tokens": extra.get("tokens_seen", 0),
            "seconds": round(extra.get("seconds", 0.0), 1),
            "path": dg.MetadataValue.path(str(path)),
            **{f"target_{k}": round(v, 4) for k, v in extra.get("metrics", {}).items()},
        },
        data_version=dg.DataVersion(plan.base_sha),
    )


def _candidate_frame(iteration: int, groups: list[int], weights: np.ndarray, version: str) -> pl.DataFrame:
    frame = pl.DataFrame(weights, schema=weight_columns(groups), orient="row")
    ids = [f"it{iteration}-c{j:03d}" for j in range(len(weights))]
    return frame.insert_column(0, pl.Series("candidate_id", ids)).with_columns(
        iteration=pl.lit(iteration), cluster_version=pl.lit(version)
    )


def propose_candidates(plan: SearchPlan, iteration: int) -> tuple[pl.DataFrame, dict]:
    """Iteration 1: Dirichlet around the token prior. Later: exploit the previous predictor, then explore."""
    search = plan.search
    _, corpus = search_inputs(plan)
    prior = token_prior(corpus.tokens_per_group())
    n = search.proxies(iteration)
    rng = np.random.default_rng([search.seed, iteration])
    info = {"n": n, "groups": len(corpus.groups), "prior": [round(float(p), 4) for p in prior], "search_key": plan.search_key}
    if iteration == 1:
        weights = sample_dirichlet_candidates(prior, n, rng)
    else:
        predictor = Predictor.load(plan.predictor_path(iteration - 1))
        done = read_results(plan, iteration - 1)
        evaluated = done.select(weight_columns(corpus.groups)).to_numpy()
        weights = next_iteration_candidates(predictor, prior, n, rng, pool_size=search.pool_size, evaluated=evaluated)
        predicted = predictor.predict(weights)
        info |= {"pool_size": search.pool_size, "top": max(n**2, 128), "mean_predicted_objective": float(predicted.mean())}
    return _candidate_frame(iteration, corpus.groups, weights, plan.cluster_version), info


@dataclass(frozen=True)
class TrainingRun:
    """One proxy or proof training run: its display name, mixture, settings, seed and starting checkpoint."""

    name: str
    groups: list[int]
    weights: np.ndarray
    settings: ProxySettings
    seed: int
    init_path: Path | None = None

    def named_weights(self) -> dict[str, float]:
        return weight_params(self.groups, self.weights)


@dataclass
class RunLog:
    """Where a training run reports: the MLflow experiment, the parent run and tags, and the step's logger."""

    tracking: MlflowTracking
    client: object
    experiment: str
    parent: str | None
    tags: dict[str, str]
    log: object


def train_or_reuse(plan: SearchPlan, run: TrainingRun, marker_dir: Path, sink: RunLog) -> dict:
    """The finished record of ``run``: read from its fingerprinted marker, or trained now (as a new MLflow run).

    A run left RUNNING in MLflow by a killed attempt with the same key is marked FAILED first; the marker is written
    last and atomically, so a killed training leaves no record and is redone, and a finished one is never repeated.
    """
    init_sha = content_hash(run.init_path) if run.init_path else None
    key = plan.run_key(run.named_weights(), run.settings, run.seed, init_sha)
    marker = marker_dir / f"{key}.json"
    if marker.exists():
        return json.loads(marker.read_text()) | {"reused": True}
    client = sink.client
    stale = client.search_runs(
        [sink.experiment], filter_string=f"tags.`climb.fingerprint` = '{key}' and attributes.status = 'RUNNING'"
    )
    for old in stale:
        client.set_terminated(old.info.run_id, status="FAILED")
    tags = sink.tags | {"climb.candidate": run.name, "climb.fingerprint": key}
    run_id = sink.tracking.open_run(client, sink.experiment, run.name, tags, parent_run_id=sink.parent)
    log_run(client, run_id, params={**run.named_weights(), **run.settings.params(), "seed": run.seed,
                                    "init_sha256": init_sha or "scratch"})  # fmt: skip
    tokenizer, corpus = search_inputs(plan)
    init_state = load_checkpoint(run.init_path)[0].state_dict() if run.init_path else None
    outcome, _ = run_proxy(
        corpus, tokenizer, run.weights, run.settings, plan.search.target(plan.home), seed=run.seed, init_state=init_state
    )
    log_run(client, run_id, metrics=outcome.metrics, curves={"train_loss_curve": outcome.loss_curve})
    client.set_terminated(run_id)
    record = {
        **asdict(outcome), "name": run.name, "fingerprint": key, "mlflow_run_id": run_id, "weights": run.named_weights(),
        "seed": run.seed, "settings": asdict(run.settings), "init_sha256": init_sha,
        "tokenizer_sha256": plan.tokenizer_sha, "target": plan.target_ingredients, **plan.corpus_ingredients,
    }  # fmt: skip
    write_json_atomic(record, marker)
    sink.log.info(f"{run.name}: objective {outcome.metrics['objective']:.4f} in {outcome.seconds:.1f}s ({key})")
    return record | {"reused": False}


def iteration_parent_run(plan: SearchPlan, tracking: MlflowTracking, iteration: int):
    """The iteration's MLflow parent run of this search (a new search key gets new parent runs)."""
    client = tracking.client(plan.home)
    experiment = tracking.experiment_id(client, plan.home, plan.cluster_version)
    tags = plan.mlflow_tags() | {"climb.iteration": str(iteration)}
    parent = tracking.open_run(client, experiment, f"iteration-{iteration}", tags, reuse=True)
    return client, experiment, parent, tags


def candidate_runs(plan: SearchPlan, iteration: int) -> list[TrainingRun]:
    """The iteration's proxy runs, one per candidate, all continuing from the base checkpoint."""
    _, corpus = search_inputs(plan)
    candidates = pl.read_parquet(plan.iteration_dir(iteration) / "candidates.parquet")
    settings = plan.search.proxy_settings()
    seed = plan.search.seed * 1000 + iteration
    columns = weight_columns(corpus.groups)
    return [
        TrainingRun(row["candidate_id"], corpus.groups, np.array([row[c] for c in columns]), settings, seed, plan.base_path)
        for row in candidates.iter_rows(named=True)
    ]


def train_candidates(
    context: dg.AssetExecutionContext, plan: SearchPlan, tracking: MlflowTracking, iteration: int
) -> pl.DataFrame:
    """Train every candidate of the iteration whose fingerprinted result does not exist yet (a killed run resumes)."""
    _, corpus = search_inputs(plan)
    plan.base_sha  # fails clearly when the base checkpoint for these settings is missing
    client, experiment, parent, tags = iteration_parent_run(plan, tracking, iteration)
    if not client.get_run(parent).data.params:
        log_run(client, parent, params=label_params(corpus.labels) | plan.search.proxy_settings().params())
    sink = RunLog(tracking, client, experiment, parent,
                  tags | {"dagster.run_id": context.run_id, "dagster.asset": context.asset_key.to_user_string()},
                  context.log)  # fmt: skip
    rows = []
    for run in candidate_runs(plan, iteration):
        record = train_or_reuse(plan, run, proxy_markers_dir(plan.home), sink)
        rows.append({"candidate_id": run.name, **{k: float(v) for k, v in record["metrics"].items()},
                     "seconds": record["seconds"], "tokens_seen": record["tokens_seen"],
                     "fingerprint": record["fingerprint"], "reused": record["reused"],
                     "mlflow_run_id": record["mlflow_run_id"]})  # fmt: skip
    tag_run(client, parent, {"climb.proxies": str(len(rows))})
    candidates = pl.read_parquet(plan.iteration_dir(iteration) / "candidates.parquet")
    results = candidates.join(pl.DataFrame(rows), on="candidate_id")
    write_parquet_atomic(results, plan.iteration_dir(iteration) / "results.parquet")
    return results.with_columns(
        mlflow_url=pl.col("mlflow_run_id").map_elements(
            lambda r: run_url(tracking.uri(plan.home), experiment, r), return_dtype=pl.String
        )
    )


def fit_iteration_predictor(plan: SearchPlan, tracking: MlflowTracking, iteration: int):
    """Refit the predictor on every proxy run so far; report each kind's k-fold held-out Spearman."""
    search = plan.search
    _, corpus = search_inputs(plan)
    results = read_results(plan, iteration)
    columns = weight_columns(corpus.groups)
    X, y = results.select(columns).to_numpy(), results["objective"].to_numpy()
    params = search.predictor_params()
    predictor, scores = select_predictor(
        X, y, search.seed, k=search.predictor_folds, params=params, feature_names=columns, kinds=search.predictor_kinds()
    )
    cv = scores[predictor.kind]
    predictor.extra |= {
        "spearman": cv.spearman,
        "cv": cv.to_dict(),
        # kept so reports can plot predicted vs. actual without re-running the cross-validation
        "cv_predictions": [None if np.isnan(v) else float(v) for v in cv.predictions],
        "trained_on": sorted(results["fingerprint"].to_list()),
    }
    predictor.save(plan.predictor_path(iteration))
    client, _, parent, _ = iteration_parent_run(plan, tracking, iteration)
    by_kind = {f"predictor_spearman_{kind}": score.spearman for kind, score in scores.items()}
    log_run(
        client, parent,
        params={f"predictor.{k}": v for k, v in asdict(params).items()} | {"predictor.kinds": ",".join(scores)},
        # rounds and the chosen kind follow the data: metrics and tags, so a refit never conflicts with a param
        metrics={"predictor_spearman": cv.spearman, "predictor_num_rounds": predictor.num_rounds,
                 "runs_so_far": len(y), "best_objective_so_far": float(y.max()), **by_kind},
    )  # fmt: skip
    tag_run(client, parent, {"climb.predictor_kind": predictor.kind})
    if predictor.booster is not None:
        log_lightgbm_model(client, parent, predictor.booster, "predictor")
    if predictor.linear is not None:
        client.log_dict(parent, predictor.linear.to_dict(), "predictor/linear.json")
    client.set_terminated(parent)
    return predictor, scores, results


def _objective_plot(results: pl.DataFrame, predicted: np.ndarray | None):
    figure, axes = plt.subplots(1, 2 if predicted is not None else 1, figsize=(9 if predicted is not None else 5, 3.5))
    axes = np.atleast_1d(axes)
    for k, group in results.group_by("iteration", maintain_order=True):
        axes[0].scatter(np.full(group.height, k[0]) + np.random.default_rng(0).uniform(-0.15, 0.15, group.height),
                        group["objective"], s=14, label=f"iteration {k[0]}")  # fmt: skip
    axes[0].set(xlabel="iteration", ylabel="objective (higher is better)", title="proxy runs")
    if predicted is not None:
        axes[1].scatter(results["objective"], predicted, s=14)
        axes[1].set(xlabel="actual objective", ylabel="out-of-fold prediction", title="predictor (held out)")
    figure.tight_layout()
    return figure_markdown(figure)


def build_iteration_assets(iteration: int) -> list[dg.AssetsDefinition]:
    """The three assets of one search iteration, wired to the previous iteration's predictor."""
    prefix = f"iteration_{iteration}"
    upstream = ["proxy_tokenizer"] if iteration == 1 else [dg.AssetKey([f"iteration_{iteration - 1}", "predictor"])]

    @dg.asset(name="mixture_candidates", key_prefix=prefix, group_name="search", deps=upstream, kinds={"numpy"},
              code_version=ALGORITHM_VERSIONS["candidates"])  # fmt: skip
    def mixture_candidates(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
        """Mixture weight vectors to try in this iteration."""
        plan = SearchPlan(climb.home(), search)
        frame, info = propose_candidates(plan, iteration)
        write_parquet_atomic(frame, plan.iteration_dir(iteration) / "candidates.parquet")
        return dg.MaterializeResult(
            metadata={"candidates": frame.height, **info, "preview": markdown_table(frame.head(10))},
            data_version=dg.DataVersion(fingerprint({"search": plan.search_key, "candidates": frame.to_dicts()})),
        )

    @dg.asset(
        name="proxy_results", key_prefix=prefix, group_name="search",
        deps=[mixture_candidates, "proxy_base_checkpoint"], pool=GPU_POOL, op_tags=GPU_TAGS, kinds={"pytorch", "mlflow"},
        code_version=ALGORITHM_VERSIONS["proxy"],
    )  # fmt: skip
    def proxy_results(
        context: dg.AssetExecutionContext, climb: ClimbHomeResource, search: SearchSettings, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """One small proxy LM per candidate, trained for a fixed token budget; its target metric is the label."""
        plan = SearchPlan(climb.home(), search)
        results = train_candidates(context, plan, mlflow_tracking, iteration)
        best = results.sort("objective", descending=True).row(0, named=True)
        return dg.MaterializeResult(
            metadata={
                "proxies": results.height,
                "trained": int((~results["reused"]).sum()),
                "reused": int(results["reused"].sum()),
                "search_key": plan.search_key,
                "best_objective": best["objective"],
                "best_candidate": best["candidate_id"],
                "best_mlflow_run": dg.MetadataValue.url(best["mlflow_url"]),
                "mean_objective": float(results["objective"].mean()),
                "proxy_seconds_total": float(results["seconds"].sum()),
                "results": markdown_table(
                    results.select("candidate_id", "objective", *[c for c in ("bpb", "mc_acc") if c in results.columns],
                                   "seconds", "reused", "fingerprint", "mlflow_url").sort("objective", descending=True)  # fmt: skip
                ),
            },
            data_version=dg.DataVersion(fingerprint({"runs": sorted(results["fingerprint"].to_list())})),
        )

    previous_predictor = [] if iteration == 1 else [dg.AssetKey([f"iteration_{iteration - 1}", "predictor"])]

    @dg.asset(name="predictor", key_prefix=prefix, group_name="search", deps=[proxy_results, *previous_predictor],
              kinds={"lightgbm", "mlflow"}, code_version=ALGORITHM_VERSIONS["predictor"])  # fmt: skip
    def predictor(climb: ClimbHomeResource, search: SearchSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
        """Mixture weights → target, refit on all proxy runs so far: LightGBM (paper settings), ridge or both,
        whichever ranks held-out runs best."""
        plan = SearchPlan(climb.home(), search)
        fitted, scores, results = fit_iteration_predictor(plan, mlflow_tracking, iteration)
        cv = scores[fitted.kind]
        importance = fitted.feature_importance()
        return dg.MaterializeResult(
            metadata={
                "spearman_heldout": dg.MetadataValue.float(float(cv.spearman)),
                "predictor_kind": fitted.kind,
                **{f"spearman_{kind}": dg.MetadataValue.float(float(score.spearman)) for kind, score in scores.items()},
                "cv_folds": cv.folds,
                "cv_note": cv.reason or "",
                "runs": cv.n,
                "num_rounds": fitted.num_rounds,
                "search_key": plan.search_key,
                "constant_model": bool(fitted.extra.get("constant", False)),
                "feature_importance": markdown_table(
                    pl.DataFrame({"weight": list(importance), "gain": list(importance.values())}).sort("gain", descending=True)
                ),
                "search_plot": _objective_plot(results, cv.predictions),
            },
            data_version=dg.DataVersion(fingerprint({"search": plan.search_key, "runs": fitted.extra["trained_on"]})),
        )

    return [mixture_candidates, proxy_results, predictor]


def final_predictor_key(iterations: int) -> dg.AssetKey:
    return dg.AssetKey([f"iteration_{iterations}", "predictor"])


def build_search_assets(iterations: int) -> list[dg.AssetsDefinition]:
    """The tokenizer, the base checkpoint and ``iterations`` unrolled search iterations."""
    if iterations < 1:
        raise ValueError(f"a search needs at least one iteration, got {iterations}")
    return [proxy_tokenizer, proxy_base_checkpoint] + [
        asset for k in range(1, iterations + 1) for asset in build_iteration_assets(k)
    ]
