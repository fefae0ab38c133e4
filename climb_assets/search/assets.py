"""The CLIMB search as assets: a tokenizer and base checkpoint, then per iteration k
``iteration_k/mixture_candidates → iteration_k/proxy_results → iteration_k/predictor``.

Each iteration is its own set of assets, so the graph shows the loop unrolled and any iteration can be re-run or
extended alone. Proxy training is GPU-tagged and, with one slot in the ``gpu`` pool, never shares a GPU.
"""

import json
import os
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

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
from climb_assets.search.predictor import Predictor, PredictorParams, cross_validate, fit_predictor  # noqa: E402
from climb_assets.search.proxy_runs import (  # noqa: E402
    ProxySettings,
    SearchCorpus,
    TargetData,
    load_search_corpus,
    run_proxy,
    super_cluster_documents_path,
)
from climb_assets.search.targets import TargetSpec  # noqa: E402
from climb_assets.search.tokenizer import load_tokenizer, train_bpe_tokenizer  # noqa: E402
from climb_assets.search.tracking import (  # noqa: E402
    MlflowTracking,
    label_params,
    log_run,
    run_url,
    tag_run,
    weight_params,
)
from climb_assets.search.training import load_checkpoint, save_checkpoint  # noqa: E402
from climb_assets.storage import write_json_atomic, write_parquet_atomic  # noqa: E402
from climb_assets.tags import GPU_POOL, GPU_TAGS  # noqa: E402

SEARCH_ITERATIONS = int(os.environ.get("CLIMB_SEARCH_ITERATIONS", "3"))


class SearchSettings(dg.ConfigurableResource):
    """Every knob of the search. Demo defaults fit 2 CPU cores; the paper's scale is a config change away
    (proxies_per_iteration=[64, 32, 16], model_preset="paper_62m", token_budget in the billions, on a GPU)."""

    proxies_per_iteration: list[int] = [16, 8, 8]
    seed: int = 0
    # target: "bpb" (bits per byte on target texts), "mc" (multiple choice) or "blend"
    target_kind: str = "bpb"
    target_blend_bpb: float = 1.0
    target_blend_mc: float = 1.0
    target_texts_path: str = ""  # default: CLIMB_HOME/targets/target.jsonl
    target_mc_path: str = ""  # default: CLIMB_HOME/targets/mc_target.jsonl
    max_target_texts: int = 40  # evaluation cost grows with it; 40 wiki articles ~ 100 kB
    # tokenizer and proxy model
    tokenizer_vocab_size: int = 4096
    tokenizer_sample_docs: int = 4000
    model_preset: str = "tiny"  # tiny ~0.9M params (2 layers x 128); demo, paper_62m, paper_350m for bigger runs
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

    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(
            model_preset=self.model_preset, n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            block_size=self.block_size,
            token_budget=self.token_budget, batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 10,
            max_repeats=self.max_repeats, num_threads=self.num_threads or None,
        )  # fmt: skip

    def target_spec(self) -> TargetSpec:
        weights = {"bpb": self.target_blend_bpb, "mc": self.target_blend_mc} if self.target_kind == "blend" else {}
        return TargetSpec(kind=self.target_kind, weights=weights)

    def target(self, home: ClimbHome) -> TargetData:
        texts = self.target_texts_path or str(home.targets / "target.jsonl")
        mc = self.target_mc_path or str(home.targets / "mc_target.jsonl")
        return TargetData.load(self.target_spec(), texts, mc, self.max_target_texts)

    def predictor_params(self) -> PredictorParams:
        return PredictorParams(min_child_samples=self.predictor_min_child_samples)

    def proxies(self, iteration: int) -> int:
        counts = self.proxies_per_iteration
        return counts[min(iteration, len(counts)) - 1]


def search_dir(home: ClimbHome) -> Path:
    return home.lake_dir("search")


def iteration_dir(home: ClimbHome, iteration: int) -> Path:
    return search_dir(home) / f"iteration_{iteration}"


def tokenizer_path(home: ClimbHome) -> Path:
    return search_dir(home) / "tokenizer.json"


def base_checkpoint_path(home: ClimbHome) -> Path:
    return search_dir(home) / "base_checkpoint.pt"


def predictor_path(home: ClimbHome, iteration: int) -> Path:
    return iteration_dir(home, iteration) / "predictor"


@lru_cache(maxsize=2)
def _cached_inputs(home_root: str, stamp: tuple):
    home = ClimbHome(Path(home_root))
    tokenizer = load_tokenizer(tokenizer_path(home))
    return tokenizer, load_search_corpus(home, tokenizer)


def search_inputs(home: ClimbHome):
    """Tokenizer and tokenized corpus, loaded once per process (keyed by the files' modification times)."""
    stamp = (tokenizer_path(home).stat().st_mtime_ns, super_cluster_documents_path(home).stat().st_mtime_ns)
    return _cached_inputs(str(home.root), stamp)


def weight_columns(groups: list[int]) -> list[str]:
    return [f"w_{g}" for g in groups]


def read_results(home: ClimbHome, up_to: int) -> pl.DataFrame:
    frames = [pl.read_parquet(p) for k in range(1, up_to + 1) if (p := iteration_dir(home, k) / "results.parquet").exists()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def search_id(corpus: SearchCorpus) -> str:
    return corpus.version or "unversioned"


@dg.asset(group_name="search", deps=["quality_filtered_clusters"], kinds={"tokenizers"})
def proxy_tokenizer(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
    """A byte-level BPE trained offline on a sample of the kept documents, shared by every proxy."""
    home = climb.home()
    members = pl.read_parquet(super_cluster_documents_path(home), columns=["doc_id", "super_cluster_id"]).drop_nulls()
    sample = members.sample(min(search.tokenizer_sample_docs, members.height), seed=search.seed)
    texts = (
        pl.scan_parquet(home.lake_dir("raw_shards") / "*.parquet").select("doc_id", "text")
        .join(sample.lazy(), on="doc_id").sort("doc_id").collect()["text"].to_list()
    )  # fmt: skip
    started = time.perf_counter()
    tokenizer = train_bpe_tokenizer(texts, vocab_size=search.tokenizer_vocab_size)
    tokenizer.save(tokenizer_path(home))
    encoded = tokenizer.encode_batch(texts[:500])
    bytes_per_token = sum(len(t.encode()) for t in texts[:500]) / max(1, sum(len(e) for e in encoded))
    return dg.MaterializeResult(
        metadata={
            "vocab_size": tokenizer.vocab_size,
            "trained_on_docs": len(texts),
            "bytes_per_token": round(bytes_per_token, 3),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(tokenizer_path(home))),
        }
    )


@dg.asset(group_name="search", deps=[proxy_tokenizer], pool=GPU_POOL, op_tags=GPU_TAGS, kinds={"pytorch"})
def proxy_base_checkpoint(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
    """One proxy trained on the natural mixture; every proxy continues from it, as the paper's proxies do
    (cuts the cost and the variance of each proxy run)."""
    home = climb.home()
    path = base_checkpoint_path(home)
    if search.base_token_budget <= 0:
        path.unlink(missing_ok=True)
        return dg.MaterializeResult(metadata={"enabled": False})
    tokenizer, corpus = search_inputs(home)
    settings = ProxySettings(**{**asdict(search.proxy_settings()), "token_budget": search.base_token_budget})
    outcome, model = run_proxy(
        corpus, tokenizer, corpus.natural_weights(), settings, search.target(home), seed=search.seed
    )
    save_checkpoint(path, model, extra={"settings": asdict(settings), "metrics": outcome.metrics})
    return dg.MaterializeResult(
        metadata={
            "enabled": True,
            "params": outcome.num_params,
            "tokens": outcome.tokens_seen,
            "seconds": round(outcome.seconds, 1),
            "tokens_per_second": round(outcome.tokens_seen / max(outcome.seconds, 1e-9)),
            **{f"target_{k}": round(v, 4) for k, v in outcome.metrics.items()},
        }
    )


def _candidate_frame(iteration: int, groups: list[int], weights: np.ndarray, version: str) -> pl.DataFrame:
    frame = pl.DataFrame(weights, schema=weight_columns(groups), orient="row")
    ids = [f"it{iteration}-c{j:03d}" for j in range(len(weights))]
    return frame.insert_column(0, pl.Series("candidate_id", ids)).with_columns(
        iteration=pl.lit(iteration), cluster_version=pl.lit(version)
    )


def propose_candidates(home: ClimbHome, search: SearchSettings, iteration: int) -> tuple[pl.DataFrame, dict]:
    """Iteration 1: Dirichlet around the token prior. Later: exploit the previous predictor, then explore."""
    _, corpus = search_inputs(home)
    prior = token_prior(corpus.tokens_per_group())
    n = search.proxies(iteration)
    rng = np.random.default_rng([search.seed, iteration])
    info = {"n": n, "groups": len(corpus.groups), "prior": [round(float(p), 4) for p in prior]}
    if iteration == 1:
        weights = sample_dirichlet_candidates(prior, n, rng)
    else:
        predictor = Predictor.load(predictor_path(home, iteration - 1))
        done = read_results(home, iteration - 1)
        evaluated = done.select(weight_columns(corpus.groups)).to_numpy()
        weights = next_iteration_candidates(predictor, prior, n, rng, pool_size=search.pool_size, evaluated=evaluated)
        predicted = predictor.predict(weights)
        info |= {"pool_size": search.pool_size, "top": max(n**2, 128), "mean_predicted_objective": float(predicted.mean())}
    return _candidate_frame(iteration, corpus.groups, weights, search_id(corpus)), info


def _log_proxy(
    tracking: MlflowTracking, parent: str, experiment: str, client, cid: str, tags: dict,
    weights: dict[str, float], settings: ProxySettings, seed: int,
) -> str:  # fmt: skip
    """Open the proxy's MLflow run; a run left RUNNING by a killed attempt is marked FAILED first."""
    stale = client.search_runs(
        [experiment], filter_string=f"tags.`climb.candidate` = '{cid}' and attributes.status = 'RUNNING'"
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status="FAILED")
    run_id = tracking.open_run(client, experiment, cid, tags | {"climb.candidate": cid}, parent_run_id=parent)
    log_run(client, run_id, params={**weights, **settings.params(), "seed": seed})
    return run_id


def train_candidates(
    context: dg.AssetExecutionContext, home: ClimbHome, search: SearchSettings, tracking: MlflowTracking, iteration: int
) -> pl.DataFrame:
    """Train every candidate of the iteration that has no finished result yet (a killed run resumes here)."""
    tokenizer, corpus = search_inputs(home)
    candidates = pl.read_parquet(iteration_dir(home, iteration) / "candidates.parquet")
    if candidates["cluster_version"][0] != search_id(corpus):
        raise dg.Failure(f"iteration {iteration}'s candidates were drawn for another cluster version: re-materialize them")
    settings = search.proxy_settings()
    target = search.target(home)
    base = base_checkpoint_path(home)
    init_state = load_checkpoint(base)[0].state_dict() if base.exists() else None
    client = tracking.client(home)
    experiment = tracking.experiment_id(client, home, search_id(corpus))
    run_tags = {"climb.search_id": search_id(corpus), "climb.iteration": str(iteration)}
    parent = tracking.open_run(client, experiment, f"iteration-{iteration}", run_tags, reuse=True)
    dagster_tags = run_tags | {"dagster.run_id": context.run_id, "dagster.asset": context.asset_key.to_user_string(),
                               "climb.cluster_version": search_id(corpus)}  # fmt: skip
    if not client.get_run(parent).data.params:
        log_run(client, parent, params=label_params(corpus.labels) | settings.params())
    proxies = iteration_dir(home, iteration) / "proxies"
    rows = []
    for row in candidates.iter_rows(named=True):
        cid = row["candidate_id"]
        done = proxies / f"{cid}.json"
        if not done.exists():
            weights = np.array([row[c] for c in weight_columns(corpus.groups)])
            named = weight_params(corpus.groups, weights)
            seed = search.seed * 1000 + iteration
            run_id = _log_proxy(tracking, parent, experiment, client, cid, dagster_tags, named, settings, seed)
            outcome, _ = run_proxy(corpus, tokenizer, weights, settings, target, seed=seed, init_state=init_state)
            log_run(client, run_id, metrics=outcome.metrics, curves={"train_loss_curve": outcome.loss_curve})
            client.set_terminated(run_id)
            write_json_atomic({**asdict(outcome), "mlflow_run_id": run_id, "candidate_id": cid}, done)
            context.log.info(f"{cid}: objective {outcome.metrics['objective']:.4f} in {outcome.seconds:.1f}s")
        result = json.loads(done.read_text())
        rows.append({"candidate_id": cid, **{k: float(v) for k, v in result["metrics"].items()},
                     "seconds": result["seconds"], "mlflow_run_id": result["mlflow_run_id"]})  # fmt: skip
    tag_run(client, parent, {"climb.proxies": str(len(rows))})
    results = candidates.join(pl.DataFrame(rows), on="candidate_id")
    write_parquet_atomic(results, iteration_dir(home, iteration) / "results.parquet")
    return results.with_columns(
        mlflow_url=pl.col("mlflow_run_id").map_elements(
            lambda r: run_url(tracking.uri(home), experiment, r), return_dtype=pl.String
        )
    )


def fit_iteration_predictor(home: ClimbHome, search: SearchSettings, tracking: MlflowTracking, iteration: int):
    """Refit LightGBM on every proxy run so far; report its k-fold held-out Spearman."""
    _, corpus = search_inputs(home)
    results = read_results(home, iteration)
    columns = weight_columns(corpus.groups)
    X, y = results.select(columns).to_numpy(), results["objective"].to_numpy()
    params = search.predictor_params()
    predictor = fit_predictor(X, y, seed=search.seed, params=params, feature_names=columns)
    cv = cross_validate(X, y, k=search.predictor_folds, seed=search.seed, params=params)
    predictor.extra |= {
        "spearman": cv.spearman,
        "cv": cv.to_dict(),
        # kept so reports can plot predicted vs. actual without re-running the cross-validation
        "cv_predictions": [None if np.isnan(v) else float(v) for v in cv.predictions],
    }
    predictor.save(predictor_path(home, iteration))
    client = tracking.client(home)
    experiment = tracking.experiment_id(client, home, search_id(corpus))
    run_tags = {"climb.search_id": search_id(corpus), "climb.iteration": str(iteration)}
    parent = tracking.open_run(client, experiment, f"iteration-{iteration}", run_tags, reuse=True)
    spearman = cv.spearman if np.isfinite(cv.spearman) else float("nan")
    log_run(
        client, parent,
        params={"predictor.num_rounds": predictor.num_rounds, **{f"predictor.{k}": v for k, v in asdict(params).items()}},
        metrics={"predictor_spearman": spearman, "runs_so_far": len(y), "best_objective_so_far": float(y.max())},
    )  # fmt: skip
    import mlflow.lightgbm

    with mlflow.start_run(run_id=parent):
        mlflow.lightgbm.log_model(predictor.booster, name="predictor")
    client.set_terminated(parent)
    return predictor, cv, results


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

    @dg.asset(name="mixture_candidates", key_prefix=prefix, group_name="search", deps=upstream, kinds={"numpy"})
    def mixture_candidates(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
        """Mixture weight vectors to try in this iteration."""
        home = climb.home()
        frame, info = propose_candidates(home, search, iteration)
        write_parquet_atomic(frame, iteration_dir(home, iteration) / "candidates.parquet")
        return dg.MaterializeResult(metadata={"candidates": frame.height, **info, "preview": markdown_table(frame.head(10))})

    @dg.asset(
        name="proxy_results", key_prefix=prefix, group_name="search",
        deps=[mixture_candidates, "proxy_base_checkpoint"], pool=GPU_POOL, op_tags=GPU_TAGS, kinds={"pytorch", "mlflow"},
    )  # fmt: skip
    def proxy_results(
        context: dg.AssetExecutionContext, climb: ClimbHomeResource, search: SearchSettings, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """One small proxy LM per candidate, trained for a fixed token budget; its target metric is the label."""
        home = climb.home()
        results = train_candidates(context, home, search, mlflow_tracking, iteration)
        best = results.sort("objective", descending=True).row(0, named=True)
        return dg.MaterializeResult(
            metadata={
                "proxies": results.height,
                "best_objective": best["objective"],
                "best_candidate": best["candidate_id"],
                "best_mlflow_run": dg.MetadataValue.url(best["mlflow_url"]),
                "mean_objective": float(results["objective"].mean()),
                "proxy_seconds_total": float(results["seconds"].sum()),
                "results": markdown_table(
                    results.select("candidate_id", "objective", *[c for c in ("bpb", "mc_acc") if c in results.columns],
                                   "seconds", "mlflow_url").sort("objective", descending=True)  # fmt: skip
                ),
            }
        )

    previous_predictor = [] if iteration == 1 else [dg.AssetKey([f"iteration_{iteration - 1}", "predictor"])]

    @dg.asset(name="predictor", key_prefix=prefix, group_name="search", deps=[proxy_results, *previous_predictor],
              kinds={"lightgbm", "mlflow"})  # fmt: skip
    def predictor(climb: ClimbHomeResource, search: SearchSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
        """LightGBM from mixture weights to target, refit on all proxy runs so far (paper settings)."""
        home = climb.home()
        fitted, cv, results = fit_iteration_predictor(home, search, mlflow_tracking, iteration)
        importance = fitted.feature_importance()
        return dg.MaterializeResult(
            metadata={
                "spearman_heldout": dg.MetadataValue.float(float(cv.spearman)),
                "cv_folds": cv.folds,
                "cv_note": cv.reason or "",
                "runs": cv.n,
                "num_rounds": fitted.num_rounds,
                "constant_model": bool(fitted.extra.get("constant", False)),
                "feature_importance": markdown_table(
                    pl.DataFrame({"weight": list(importance), "gain": list(importance.values())}).sort("gain", descending=True)
                ),
                "search_plot": _objective_plot(results, cv.predictions),
            }
        )

    return [mixture_candidates, proxy_results, predictor]


def final_predictor_key(iterations: int = SEARCH_ITERATIONS) -> dg.AssetKey:
    return dg.AssetKey([f"iteration_{iterations}", "predictor"])


search_assets = [proxy_tokenizer, proxy_base_checkpoint] + [
    asset for k in range(1, SEARCH_ITERATIONS + 1) for asset in build_iteration_assets(k)
]
