"""``climbmix`` (the final mixture as a dataset) and ``climbmix_proof`` (does it beat the obvious alternatives?)."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.climbmix.baselines import paired_comparison, random_search_weights  # noqa: E402
from climb_assets.climbmix.mix import ProofRun, proof_table, write_climbmix  # noqa: E402
from climb_assets.metadata import figure_markdown, markdown_table  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.search.assets import final_predictor_key  # noqa: E402
from climb_assets.search.candidates import best_predicted_mixture, token_prior  # noqa: E402
from climb_assets.search.fingerprint import ALGORITHM_VERSIONS, content_hash, fingerprint  # noqa: E402
from climb_assets.search.plan import (  # noqa: E402
    SearchPlan,
    SearchSettings,
    proof_markers_dir,
    proxy_markers_dir,
    read_results,
    search_inputs,
    search_progress,
    weight_columns,
)
from climb_assets.search.predictor import Predictor, select_predictor  # noqa: E402
from climb_assets.search.proxy_runs import ProxySettings  # noqa: E402
from climb_assets.search.runs import RunLog, TrainingRun, dynamic_runs, training_step  # noqa: E402
from climb_assets.search.tracking import MlflowTracking, log_run  # noqa: E402
from climb_assets.storage import atomic_path, write_json_atomic, write_parquet_atomic  # noqa: E402


class ClimbMixConfig(dg.Config):
    token_budget: int = 2_000_000
    top_k_average: int = 1  # 1: the single best predicted mixture; >1: mean of the top k (as RegMix does)
    pool_size: int = 100_000
    max_repeats: float = 4.0
    docs_per_shard: int = 5_000
    seed: int = 0


def _weights_plot(labels: list[str], weights: np.ndarray, natural: np.ndarray):
    figure, axis = plt.subplots(figsize=(7, 0.28 * len(labels) + 1))
    y = np.arange(len(labels))
    axis.barh(y - 0.2, natural, height=0.4, label="natural (token share)")
    axis.barh(y + 0.2, weights, height=0.4, label="ClimbMix")
    axis.set_yticks(y, [label[:45] for label in labels], fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="weight", title="final mixture by super-cluster")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure_markdown(figure)


def predictor_fingerprint(plan: SearchPlan, iteration: int) -> str:
    path = plan.predictor_path(iteration)
    return fingerprint({p.name: content_hash(p) for p in sorted(path.iterdir())}) if path.exists() else "absent"


def choose_climbmix(config: "ClimbMixConfig", plan: SearchPlan, iterations: int) -> tuple[np.ndarray, float, str]:
    """The final mixture and the fingerprint of everything that made it (final predictor, config, corpus)."""
    _, corpus = search_inputs(plan)
    predictor = Predictor.load(plan.predictor_path(iterations))
    trained = read_results(plan, iterations).select(weight_columns(corpus.groups)).to_numpy()
    weights, predicted = best_predicted_mixture(
        predictor, token_prior(corpus.tokens_per_group()), config.seed,
        pool_size=config.pool_size, top_k=config.top_k_average, upper_bounds=trained.max(axis=0),
    )  # fmt: skip
    key = fingerprint({
        "algorithm": ALGORITHM_VERSIONS["climbmix"], "search_key": plan.search_key, "config": config.model_dump(),
        "predictor": predictor_fingerprint(plan, iterations), "tokenizer_sha256": plan.tokenizer_sha,
        **plan.corpus_ingredients,
    })  # fmt: skip
    return weights, predicted, key


def baseline_path(plan: SearchPlan) -> Path:
    return plan.state_dir / "random_search" / "baselines.json"


def random_search_runs(plan: SearchPlan, iterations: int) -> list[TrainingRun]:
    """N random proxies, N = every proxy the search trains, with the search's proxy seed and settings, so
    iteration 1's n1 proxies are the first n1 here and are reused by fingerprint."""
    search = plan.search
    _, corpus = search_inputs(plan)
    columns = weight_columns(corpus.groups)
    first = pl.read_parquet(plan.iteration_dir(1) / "candidates.parquet").select(columns).to_numpy()
    total = sum(search.proxies(k) for k in range(1, iterations + 1))
    weights = random_search_weights(first, token_prior(corpus.tokens_per_group()), total, search.seed)
    seed = search.proxy_seed()
    return [TrainingRun(f"random-{j:03d}", corpus.groups, w, search.proxy_settings(), seed, plan.base_path)
            for j, w in enumerate(weights)]  # fmt: skip


def random_search_run_log(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
    client = tracking.client(plan.home)
    experiment = tracking.experiment_id(client, plan.home, plan.cluster_version)
    tags = plan.mlflow_tags() | {"climb.stage": "random_search_baseline"}
    parent = tracking.open_run(client, experiment, "random-search-baseline", tags, reuse=True)
    return RunLog(tracking, client, experiment, parent, tags | {"dagster.run_id": context.run_id}, context.log)


def summarize_random_search(plan: SearchPlan, tracking: MlflowTracking, records: list[dict], context) -> tuple[pl.DataFrame, dict]:
    """The best of the N random proxies, and RegMix's one-shot pick: one predictor fitted on them, its best mixture
    under the same selection rule as ClimbMix (search pool, within the weights its proxies trained on)."""
    search = plan.search
    _, corpus = search_inputs(plan)
    columns = weight_columns(corpus.groups)
    weights = np.array([[r["weights"][f"w_{int(g):02d}"] for g in corpus.groups] for r in records])
    y = np.array([r["metrics"]["objective"] for r in records])
    results = pl.DataFrame(weights, schema=columns, orient="row").with_columns(
        objective=pl.Series(y), fingerprint=pl.Series([r["fingerprint"] for r in records]),
        reused=pl.Series([r["reused"] for r in records]),
    )  # fmt: skip
    predictor, scores = select_predictor(weights, y, search.seed, k=search.predictor_folds,
                                         params=search.predictor_params(), feature_names=columns,
                                         kinds=search.predictor_kinds())  # fmt: skip
    regmix, regmix_predicted = best_predicted_mixture(
        predictor, token_prior(corpus.tokens_per_group()), search.seed, pool_size=search.pool_size,
        upper_bounds=weights.max(axis=0),
    )  # fmt: skip
    summary = {
        "proxies": len(records),
        "best_random": weights[int(np.argmax(y))].tolist(),
        "best_random_objective": float(y.max()),
        "regmix": regmix.tolist(),
        "regmix_predicted_objective": regmix_predicted,
        "regmix_predictor_kind": predictor.kind,
        "regmix_spearman_by_kind": predictor.extra["spearman_by_kind"],
        "groups": corpus.groups,
    }
    sink = random_search_run_log(plan, tracking, context)
    log_run(sink.client, sink.parent, metrics={"best_random_objective": float(y.max()), "runs": len(records),
                                               **{f"predictor_spearman_{k}": cv.spearman for k, cv in scores.items()}})  # fmt: skip
    sink.client.set_terminated(sink.parent)
    write_parquet_atomic(results, baseline_path(plan).with_name("results.parquet"))
    write_json_atomic(summary, baseline_path(plan))
    return results, summary


def proof_runs_of(plan: SearchPlan, proof: "ProofSettings") -> list[TrainingRun]:
    """Every mixture × seed, paired: the same seeds (data order, initialisation) for every mixture."""
    _, corpus = search_inputs(plan)
    manifest = json.loads((plan.home.climbmix / "manifest.json").read_text())
    settings = proof.proxy_settings(plan.search)
    init = plan.base_path if proof.start == "base" else None
    return [
        TrainingRun(f"{name}-seed{seed}", corpus.groups, weights, settings, seed, init)
        for seed in proof.seeds
        for name, weights in proof_mixtures(plan, corpus, manifest).items()
    ]


def proof_run_log(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
    client = tracking.client(plan.home)
    experiment = tracking.experiment_id(client, plan.home, f"{plan.cluster_version}-proof")
    tags = plan.mlflow_tags() | {"dagster.run_id": context.run_id, "climb.stage": "proof"}
    return RunLog(tracking, client, experiment, None, tags, context.log)


def build_climbmix_assets(iterations: int) -> list[dg.AssetsDefinition]:
    """``random_search_baseline``, ``climbmix`` and ``climbmix_proof`` downstream of the search; every baseline and
    proof run is its own GPU step."""

    @dg.op(name="random_search_runs", ins={"first_iteration": dg.In(dg.Nothing)}, out=dg.DynamicOut(TrainingRun))
    def list_random(context: dg.OpExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
                    mlflow_tracking: MlflowTracking):  # fmt: skip
        plan = SearchPlan(climb.home(), search)
        random_search_run_log(plan, mlflow_tracking, context)  # the parent run, once
        yield from dynamic_runs(random_search_runs(plan, iterations))

    train_random = training_step("random_search", lambda plan: proxy_markers_dir(plan.home), random_search_run_log)

    @dg.op(name="random_search_collect")
    def collect_random(context: dg.OpExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
                       mlflow_tracking: MlflowTracking, records: list[dict]) -> dg.Output:  # fmt: skip
        plan = SearchPlan(climb.home(), search)
        results, summary = summarize_random_search(plan, mlflow_tracking, records, context)
        return dg.Output(
            None,
            metadata={
                "proxies": summary["proxies"],
                "trained": int((~results["reused"]).sum()),
                "reused": int(results["reused"].sum()),
                "best_random_objective": summary["best_random_objective"],
                "regmix_predicted_objective": summary["regmix_predicted_objective"],
                "regmix_predictor_kind": summary["regmix_predictor_kind"],
                "path": dg.MetadataValue.path(str(baseline_path(plan))),
            },
            data_version=dg.DataVersion(fingerprint({"runs": sorted(results["fingerprint"].to_list()),
                                                     "summary": summary})),  # fmt: skip
        )

    @dg.graph_asset(
        group_name="climbmix", kinds={"pytorch", "mlflow"},
        ins={"first_iteration": dg.AssetIn(key=dg.AssetKey(["iteration_1", "proxy_results"]), dagster_type=dg.Nothing)},
    )  # fmt: skip
    def random_search_baseline(first_iteration):
        """The same proxy budget spent without iterating: the best of N random mixtures, and RegMix's one-shot
        predictor pick from them (the baselines the proof compares ClimbMix with); one GPU step per proxy."""
        return collect_random(list_random(first_iteration=first_iteration).map(train_random).collect())

    @dg.asset(deps=[final_predictor_key(iterations)], group_name="climbmix", kinds={"parquet"},
              code_version=ALGORITHM_VERSIONS["climbmix"])  # fmt: skip
    def climbmix(
        config: ClimbMixConfig, climb: ClimbHomeResource, search: SearchSettings, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        """The best weights under the final predictor, sampled into Parquet shards with a manifest (rewritten only
        when its fingerprint changes)."""
        plan = SearchPlan(climb.home(), search)
        home = plan.home
        _, corpus = search_inputs(plan)
        weights, predicted, key = choose_climbmix(config, plan, iterations)
        manifest_path = home.climbmix / "manifest.json"
        existing = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        reused = existing.get("fingerprint") == key
        if reused:
            manifest = existing
        else:
            results = read_results(plan, iterations)
            spearman = {
                f"iteration_{k}": Predictor.load(plan.predictor_path(k)).extra.get("spearman") for k in range(1, iterations + 1)
            }
            manifest = write_climbmix(
                home.climbmix, corpus, weights, token_budget=config.token_budget, max_repeats=config.max_repeats,
                seed=config.seed, docs_per_shard=config.docs_per_shard,
                manifest_extra={
                    "fingerprint": key,
                    "search_key": plan.search_key,
                    "predicted_objective": predicted,
                    "target": plan.target_ingredients,
                    "predictor_spearman": spearman,
                    "top_k_average": config.top_k_average,
                    "mlflow": {"tracking_uri": mlflow_tracking.uri(home),
                               "proxy_run_ids": results["mlflow_run_id"].to_list()},
                    "search_id": plan.cluster_version,
                },
            )  # fmt: skip
        labels = [corpus.labels.get(g, str(g)) for g in corpus.groups]
        table = pl.DataFrame(
            {
                "super_cluster": corpus.groups,
                "label": labels,
                "weight": weights.round(4),
                "natural": corpus.natural_weights().round(4),
                "sampled_share": [round(manifest["sampled"].get(str(g), {}).get("token_share", 0.0), 4) for g in corpus.groups],
            }
        )
        return dg.MaterializeResult(
            metadata={
                "reused": reused,
                "fingerprint": key,
                "documents": manifest["documents"],
                "tokens": manifest["tokens"],
                "shards": len(manifest["shards"]),
                "predicted_objective": predicted,
                "weights": markdown_table(table.sort("weight", descending=True)),
                "weights_plot": _weights_plot(labels, weights, corpus.natural_weights()),
                "manifest": dg.MetadataValue.path(str(manifest_path)),
            },
            data_version=dg.DataVersion(key),
        )

    @dg.op(name="proof_runs", ins={"climbmix": dg.In(dg.Nothing), "baselines": dg.In(dg.Nothing)},
           out=dg.DynamicOut(TrainingRun))  # fmt: skip
    def list_proof(climb: ClimbHomeResource, search: SearchSettings, proof: ProofSettings):
        yield from dynamic_runs(proof_runs_of(SearchPlan(climb.home(), search), proof))

    train_proof = training_step("proof", lambda plan: proof_markers_dir(plan.home), proof_run_log)

    @dg.op(name="proof_collect")
    def collect_proof(context: dg.OpExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
                      proof: ProofSettings, mlflow_tracking: MlflowTracking, records: list[dict]) -> dg.Output:  # fmt: skip
        plan = SearchPlan(climb.home(), search)
        home = plan.home
        runs = [ProofRun(r["name"].rsplit("-seed", 1)[0], r["seed"], r["metrics"], r["seconds"]) for r in records]
        table = proof_table(runs)
        runs_frame = pl.DataFrame([{"mixture": r.mixture, "seed": r.seed, **r.metrics} for r in runs])
        paired = paired_comparison(runs_frame)
        progress = search_progress(plan, iterations)
        report = proof_markdown(table, paired, search.target_kind, proof, proof.proxy_settings(search), progress)
        sink = proof_run_log(plan, mlflow_tracking, context)
        summary_run = mlflow_tracking.open_run(sink.client, sink.experiment, "proof-summary", sink.tags)
        log_run(sink.client, summary_run, metrics={
            f"{stat}_{row['baseline']}": row[column] for row in paired.iter_rows(named=True)
            for stat, column in (("delta", "mean_delta"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))
        })  # fmt: skip
        sink.client.set_terminated(summary_run)
        with atomic_path(home.climbmix / "proof.md") as tmp:
            tmp.write_text(report)
        with atomic_path(home.climbmix / "proof_runs.parquet") as tmp:
            runs_frame.write_parquet(tmp)
        metric = "bpb" if "bpb_mean" in table.columns else "objective"
        return dg.Output(
            None,
            metadata={
                "table": markdown_table(table),
                "paired_differences": markdown_table(paired),
                "search_progress": markdown_table(progress),
                "beats": [row["baseline"] for row in paired.iter_rows(named=True) if row["verdict"] == "beats"],
                "report": dg.MetadataValue.md(report),
                "proof_plot": _proof_plot(runs_frame, table, metric),
                "search_plot": _search_plot(plan, iterations),
                "climbmix_rank": table["mixture"].to_list().index("climbmix") + 1,
                "seconds": float(sum(r.seconds for r in runs)),
                "trained": sum(not r["reused"] for r in records),
                "reused": sum(r["reused"] for r in records),
            },
            data_version=dg.DataVersion(fingerprint({"runs": sorted(r["fingerprint"] for r in records)})),
        )

    @dg.graph_asset(
        group_name="climbmix", kinds={"pytorch", "mlflow"},
        ins={"climbmix": dg.AssetIn(key=dg.AssetKey("climbmix"), dagster_type=dg.Nothing),
             "baselines": dg.AssetIn(key=dg.AssetKey("random_search_baseline"), dagster_type=dg.Nothing)},
    )  # fmt: skip
    def climbmix_proof(climbmix, baselines):
        """Equal-budget training on ClimbMix vs natural, uniform, the best random proxy and RegMix's pick, paired by
        seed, one GPU step per mixture × seed; every run is fingerprinted, so a re-run trains only what changed."""
        return collect_proof(list_proof(climbmix=climbmix, baselines=baselines).map(train_proof).collect())

    return [random_search_baseline, climbmix, climbmix_proof]


class ProofSettings(dg.ConfigurableResource):
    """Evaluation runs: every mixture trained at the same token budget with the same seeds (paired: same data order
    and initialisation). ``base`` continues from the search's base checkpoint, like the proxies, which gives an
    evaluation model at least as good as a proxy with far less seed noise than ``scratch``."""

    seeds: list[int] = [0, 1, 2, 3, 4]
    start: Literal["base", "scratch"] = "base"
    n_layer: int = 0  # 0: the proxies' shape (the only shape that can start from the base)
    n_head: int = 0
    n_embd: int = 0
    token_budget: int = 100_000

    def proxy_settings(self, search: SearchSettings) -> ProxySettings:
        proxy = search.proxy_settings()
        shape = {k: getattr(self, k) or getattr(proxy, k) for k in ("n_layer", "n_head", "n_embd")}
        if self.start == "base" and search.base_token_budget > 0 and any(shape[k] != getattr(proxy, k) for k in shape):
            raise dg.Failure(f"proof runs start from the base checkpoint, so their shape must be the proxies' "
                             f"({[getattr(proxy, k) for k in shape]}); got {list(shape.values())}: set start: scratch")  # fmt: skip
        return ProxySettings(**{**asdict(proxy), **shape, "token_budget": self.token_budget})


def proof_mixtures(plan: SearchPlan, corpus, manifest: dict) -> dict[str, np.ndarray]:
    """ClimbMix against natural, uniform, the best of N random proxies and RegMix's one-shot pick (same N)."""
    baselines = json.loads(baseline_path(plan).read_text())
    return {
        "climbmix": np.array([manifest["weights"][str(g)]["weight"] for g in corpus.groups]),
        "natural": corpus.natural_weights(),
        "uniform": np.full(len(corpus.groups), 1.0 / len(corpus.groups)),
        "best_random_proxy": np.asarray(baselines["best_random"], dtype=np.float64),
        "regmix": np.asarray(baselines["regmix"], dtype=np.float64),
    }


def _proof_plot(runs_frame: pl.DataFrame, table: pl.DataFrame, metric: str):
    figure, axis = plt.subplots(figsize=(6, 3))
    names = table["mixture"].to_list()
    axis.bar(names, table[f"{metric}_mean"], yerr=table[f"{metric}_std"], capsize=4, color="#8da0cb")
    for i, name in enumerate(names):
        values = runs_frame.filter(pl.col("mixture") == name)[metric]
        axis.scatter(np.full(len(values), i), values, color="black", s=10, zorder=3)
    low = float(runs_frame[metric].min())
    high = float(runs_frame[metric].max())
    axis.set_ylim(low - 0.1 * (high - low + 1e-9) * 5, high + 0.1 * (high - low + 1e-9) * 5)
    axis.set(ylabel=metric, title=f"target {metric} by mixture (mean ± sd over seeds, dots = seeds)")
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return figure_markdown(figure)


def _search_plot(plan: SearchPlan, iterations: int):
    """Targets per proxy run by iteration, and the final predictor's held-out predictions against them."""
    results = read_results(plan, iterations)
    y = results["objective"].to_numpy()
    final = Predictor.load(plan.predictor_path(iterations)).extra
    predicted = np.array([np.nan if v is None else v for v in final["cv_predictions"]], dtype=np.float64)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for k in range(1, iterations + 1):
        values = results.filter(pl.col("iteration") == k)["objective"].to_numpy()
        axes[0].scatter(np.full(len(values), k), values, s=12)
    axes[0].set(xlabel="iteration", ylabel="objective", title="target per proxy run")
    axes[1].scatter(y, predicted, s=12)
    axes[1].set(xlabel="actual", ylabel="predicted (held out)", title=f"predictor: Spearman {final['spearman']:.2f}")
    figure.tight_layout()
    return figure_markdown(figure)


def proof_markdown(table: pl.DataFrame, paired: pl.DataFrame, target: str, config: ProofSettings,
                   settings: ProxySettings, progress: pl.DataFrame) -> str:  # fmt: skip
    metric_columns = [c for c in table.columns if c.endswith("_mean")]
    start = "continued from the search's base checkpoint" if config.start == "base" else "trained from scratch"
    shape = settings.model_config(vocab_size=256)
    lines = [
        "# ClimbMix proof",
        "",
        f"Target: `{target}` (objective: higher is better; for bpb the objective is -bits per byte). "
        f"Seeds: {config.seeds}, paired (same data order and initialisation for every mixture). Evaluation model: "
        f"{settings.model_preset} preset, n_layer={shape.n_layer}, n_embd={shape.n_embd}, "
        f"{settings.token_budget:,} training tokens per run, {start}.",
        "",
        "| mixture | seeds | " + " | ".join(c.removesuffix("_mean") + " (mean ± sd)" for c in metric_columns) + " |",
        "|---|---|" + "---|" * len(metric_columns),
    ]
    for row in table.iter_rows(named=True):
        cells = [f"{row[c]:.4f} ± {row[c.removesuffix('_mean') + '_std']:.4f}" for c in metric_columns]
        lines.append(f"| {row['mixture']} | {row['seeds']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences, ClimbMix minus baseline, in objective (positive: ClimbMix is better), 95% t-interval:",
        "",
        "| baseline | seeds | mean difference | sd | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in paired.iter_rows(named=True):
        lines.append(
            f"| {row['baseline']} | {row['seeds']} | {row['mean_delta']:+.4f} | {row['sd_delta']:.4f} | "
            f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {row['verdict']} |"
        )
    spearman = [c for c in progress.columns if c.startswith("spearman_")]
    lines += [
        "",
        "The search, iteration by iteration (held-out Spearman of the predictor kept, then of each kind by"
        " cross-validation; proxy objectives, higher is better):",
        "",
        "| iteration | runs so far | predictor kept | Spearman | " + " | ".join(c.removeprefix("spearman_") for c in spearman)
        + " | best proxy | mean proxy |",
        "|---|---|---|---|" + "---|" * len(spearman) + "---|---|",
    ]
    for row in progress.iter_rows(named=True):
        cells = ["n/a" if row[c] is None else f"{row[c]:.3f}" for c in ("spearman", *spearman)]
        lines.append(f"| {row['iteration']} | {row['runs_so_far']} | {row['predictor_kept']} | " + " | ".join(cells)
                     + f" | {row['best_proxy']:.4f} | {row['mean_proxy']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"
