"""``climbmix`` (the final mixture as a dataset) and ``climbmix_proof`` (does it beat the obvious alternatives?)."""

import json
from dataclasses import asdict

import dagster as dg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.climbmix.mix import ProofRun, proof_table, write_climbmix  # noqa: E402
from climb_assets.metadata import figure_markdown, markdown_table  # noqa: E402
from climb_assets.resources import ClimbHomeResource  # noqa: E402
from climb_assets.search.assets import (  # noqa: E402
    RunLog,
    SearchPlan,
    SearchSettings,
    TrainingRun,
    final_predictor_key,
    proof_markers_dir,
    read_results,
    search_inputs,
    train_or_reuse,
    weight_columns,
)
from climb_assets.search.candidates import best_predicted_mixture, token_prior  # noqa: E402
from climb_assets.search.fingerprint import ALGORITHM_VERSIONS, content_hash, fingerprint  # noqa: E402
from climb_assets.search.predictor import Predictor  # noqa: E402
from climb_assets.search.proxy_runs import ProxySettings  # noqa: E402
from climb_assets.search.tracking import MlflowTracking  # noqa: E402
from climb_assets.storage import atomic_path  # noqa: E402
from climb_assets.tags import GPU_POOL, GPU_TAGS  # noqa: E402


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
    weights, predicted = best_predicted_mixture(
        predictor, token_prior(corpus.tokens_per_group()), config.seed,
        pool_size=config.pool_size, top_k=config.top_k_average,
    )  # fmt: skip
    key = fingerprint({
        "algorithm": ALGORITHM_VERSIONS["climbmix"], "search_key": plan.search_key, "config": config.model_dump(),
        "predictor": predictor_fingerprint(plan, iterations), "tokenizer_sha256": plan.tokenizer_sha,
        **plan.corpus_ingredients,
    })  # fmt: skip
    return weights, predicted, key


def build_climbmix_assets(iterations: int) -> list[dg.AssetsDefinition]:
    """``climbmix`` and ``climbmix_proof`` downstream of the final iteration's predictor."""

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

    @dg.asset(deps=[climbmix], group_name="climbmix", pool=GPU_POOL, op_tags=GPU_TAGS, kinds={"pytorch", "mlflow"},
              code_version=ALGORITHM_VERSIONS["proof"])  # fmt: skip
    def climbmix_proof(
        context: dg.AssetExecutionContext, config: ProofConfig, climb: ClimbHomeResource, search: SearchSettings,
        mlflow_tracking: MlflowTracking,
    ) -> dg.MaterializeResult:  # fmt: skip
        """Equal-budget training on ClimbMix vs natural, uniform and best-random mixtures, several seeds each; every
        run is fingerprinted, so a re-run with the same mixtures and settings trains nothing."""
        plan = SearchPlan(climb.home(), search)
        home = plan.home
        _, corpus = search_inputs(plan)
        manifest = json.loads((home.climbmix / "manifest.json").read_text())
        mixtures = proof_mixtures(plan, corpus, manifest)
        settings = proof_settings(search, config)
        client = mlflow_tracking.client(home)
        experiment = mlflow_tracking.experiment_id(client, home, f"{plan.cluster_version}-proof")
        sink = RunLog(mlflow_tracking, client, experiment, None,
                      plan.mlflow_tags() | {"dagster.run_id": context.run_id, "climb.stage": "proof"}, context.log)  # fmt: skip
        runs, records = [], []
        for seed in config.seeds:
            for name, weights in mixtures.items():
                job = TrainingRun(f"{name}-seed{seed}", corpus.groups, weights, settings, seed)
                record = train_or_reuse(plan, job, proof_markers_dir(home), sink)
                runs.append(ProofRun(name, seed, record["metrics"], record["seconds"]))
                records.append(record)
        table = proof_table(runs)
        runs_frame = pl.DataFrame([{"mixture": r.mixture, "seed": r.seed, **r.metrics} for r in runs])
        report = proof_markdown(table, search.target_kind, config.seeds, settings)
        with atomic_path(home.climbmix / "proof.md") as tmp:
            tmp.write_text(report)
        with atomic_path(home.climbmix / "proof_runs.parquet") as tmp:
            runs_frame.write_parquet(tmp)
        metric = "bpb" if "bpb_mean" in table.columns else "objective"
        return dg.MaterializeResult(
            metadata={
                "table": markdown_table(table),
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

    return [climbmix, climbmix_proof]


class ProofConfig(dg.Config):
    """Evaluation models: the proxy code, somewhat larger, from scratch, same token budget for every mixture."""

    seeds: list[int] = [0, 1, 2]
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    token_budget: int = 150_000


def proof_settings(search: SearchSettings, config: ProofConfig) -> ProxySettings:
    return ProxySettings(
        **{**asdict(search.proxy_settings()), "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
           "token_budget": config.token_budget}  # fmt: skip
    )


def proof_mixtures(plan: SearchPlan, corpus, manifest: dict) -> dict[str, np.ndarray]:
    """ClimbMix against the natural mixture, the uniform mixture, and the best random (iteration-1) candidate."""
    first = read_results(plan, 1).sort("objective", descending=True)
    best_random = first.select(weight_columns(corpus.groups)).row(0)
    return {
        "climbmix": np.array([manifest["weights"][str(g)]["weight"] for g in corpus.groups]),
        "natural": corpus.natural_weights(),
        "uniform": np.full(len(corpus.groups), 1.0 / len(corpus.groups)),
        "best_random_candidate": np.asarray(best_random, dtype=np.float64),
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


def proof_markdown(table: pl.DataFrame, target: str, seeds: list[int], settings: ProxySettings) -> str:
    metric_columns = [c for c in table.columns if c.endswith("_mean")]
    lines = [
        "# ClimbMix proof",
        "",
        f"Target: `{target}` (objective: higher is better; for bpb the objective is -bits per byte). "
        f"Seeds: {seeds}. Evaluation model: {settings.model_preset} preset, n_layer={settings.n_layer}, "
        f"n_embd={settings.n_embd}, {settings.token_budget:,} training tokens per run, trained from scratch.",
        "",
        "| mixture | seeds | " + " | ".join(c.removesuffix("_mean") + " (mean ± sd)" for c in metric_columns) + " |",
        "|---|---|" + "---|" * len(metric_columns),
    ]
    for row in table.iter_rows(named=True):
        cells = [f"{row[c]:.4f} ± {row[c.removesuffix('_mean') + '_std']:.4f}" for c in metric_columns]
        lines.append(f"| {row['mixture']} | {row['seeds']} | " + " | ".join(cells) + " |")
    climb = table.filter(pl.col("mixture") == "climbmix").row(0, named=True)
    lines.append("")
    for row in table.filter(pl.col("mixture") != "climbmix").iter_rows(named=True):
        delta = climb["objective_mean"] - row["objective_mean"]
        spread = max(climb["objective_std"], row["objective_std"])
        verdict = "beats" if delta > 0 else "does not beat"
        lines.append(
            f"- ClimbMix {verdict} **{row['mixture']}** by {delta:+.4f} objective "
            f"({'more' if abs(delta) > spread else 'less'} than the larger seed spread, {spread:.4f})."
        )
    return "\n".join(lines) + "\n"


