"""``climbmix`` (the final mixture as a dataset) and ``climbmix_proof`` (does it beat the obvious alternatives?)."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from climb_assets import lake
from climb_assets.climbmix.baselines import paired_comparison, random_search_weights
from climb_assets.climbmix.mix import ProofRun, proof_table, write_climbmix
from climb_assets.climbmix.transfer import agreement, parameters, scale_table, transfer_markdown
from climb_assets.metadata import markdown_table
from climb_assets.resources import ClimbHomeResource
from climb_assets.climbmix import loss_guided
from climb_assets.devices import gpu_slots
from climb_assets.lm.proxy import ProxySettings
from climb_assets.search.assets import final_predictor_key, waiting_in
from climb_assets.search.candidates import token_prior
from climb_assets.search.fanout import RunLog, TrainingRun, run_log, training_fan_out
from climb_assets.search.keys import (
    ALGORITHM_VERSIONS,
    SearchPlan,
    cached_file_sha256,
    fingerprint,
)
from climb_assets.search.predictor import Predictor, select_predictor
from climb_assets.search.reports import (
    base_cluster_losses,
    cluster_loss_report,
    cluster_loss_table,
    predictor_plot,
    proof_markdown,
    proof_plot,
    search_progress,
    weights_plot,
)
from climb_assets.search.settings import ClimbMixConfig, ProofSettings, SearchSettings
from climb_assets.search import continuation
from climb_assets.search.state import search_inputs, weight_columns
from climb_assets.search.tracking import MlflowTracking, log_run
from climb_assets.storage import atomic_path, write_json_atomic, write_parquet_atomic
from climb_assets.tags import GPU_POOL, GPU_TAGS


def predictor_fingerprint(plan: SearchPlan, iteration: int) -> str:
    path = plan.predictor_path(iteration)
    return fingerprint({p.name: cached_file_sha256(p) for p in sorted(path.iterdir())}) if path.exists() else "absent"


def choose_climbmix(config: ClimbMixConfig, plan: SearchPlan, iterations: int) -> tuple[np.ndarray, float, str]:
    """The final mixture and the fingerprint of everything that made it (final predictor, config, corpus)."""
    _, corpus = search_inputs(plan)
    predictor = Predictor.load(plan.predictor_path(iterations))
    space = continuation.search_space(continuation.load(plan), corpus.groups)
    runs = continuation.training_set(plan, iterations)
    trained = runs.select(weight_columns(corpus.groups)).to_numpy()
    weights, predicted = space.best_mixture(predictor, token_prior(corpus.tokens_per_group()), trained,
                                            runs["objective"].to_numpy(), config.seed, pool_size=config.pool_size,
                                            top_k=config.top_k_average, pick=plan.search.final_pick)  # fmt: skip
    key = fingerprint({
        "algorithm": ALGORITHM_VERSIONS["climbmix"], "search_key": plan.search_key, "config": config.model_dump(),
        "predictor": predictor_fingerprint(plan, iterations), "tokenizer_sha256": plan.tokenizer_sha,
        **plan.corpus_ingredients,
    })  # fmt: skip
    return weights, predicted, key


def random_search_runs(plan: SearchPlan, iterations: int) -> list[TrainingRun]:
    """N random proxies, N = every proxy the search trains (a continued search: the ones it trained itself), with
    the search's proxy seed and settings, so iteration 1's random draws are the first here, reused by fingerprint."""
    search = plan.search
    _, corpus = search_inputs(plan)
    columns = weight_columns(corpus.groups)
    state = continuation.load(plan)
    space = continuation.search_space(state, corpus.groups)
    first = pl.read_parquet(plan.candidates_path(1)).select(columns).to_numpy()[: state["random_candidates"]]
    total = sum(continuation.proxies(plan, k) for k in range(1, iterations + 1))
    # drawn in the search's space; iteration 1's rows as trained (expanding their reduced form would round them)
    drawn = random_search_weights(space.reduce(first), space.reduce(token_prior(corpus.tokens_per_group())), total,
                                  search.seed)  # fmt: skip
    weights = np.vstack([first[:total], space.expand(drawn[len(first):])])
    seed = search.proxy_seed()
    return [TrainingRun(f"random-{j:03d}", corpus.groups, w, search.proxy_settings(), seed, plan.base_path)
            for j, w in enumerate(weights)]  # fmt: skip


def random_search_run_log(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
    return run_log(plan, tracking, context, parent="random-search-baseline", tags={"climb.stage": "random_search_baseline"})


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
    space = continuation.search_space(continuation.load(plan), corpus.groups)  # RegMix searches the same space
    regmix, regmix_predicted = space.best_mixture(predictor, token_prior(corpus.tokens_per_group()), weights, y,
                                                  search.seed, pool_size=search.pool_size,
                                                  pick=search.final_pick)  # fmt: skip
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
    write_parquet_atomic(results, plan.baseline_path().with_name("results.parquet"))
    write_json_atomic(summary, plan.baseline_path())
    return results, summary


def mixture_runs(plan: SearchPlan, proof: ProofSettings, settings: ProxySettings, seeds: list[int],
                 init: Path | None) -> list[TrainingRun]:
    """Every proof mixture × seed, paired: the same seeds (data order, initialisation) for every mixture."""
    _, corpus = search_inputs(plan)
    manifest = json.loads(lake.climbmix_manifest_path(plan.home, plan.search_key).read_text())
    return [
        TrainingRun(f"{name}-seed{seed}", corpus.groups, weights, settings, seed, init)
        for seed in seeds
        for name, weights in proof_mixtures(plan, corpus, manifest, proof).items()
    ]


def proof_runs_of(plan: SearchPlan, proof: ProofSettings) -> list[TrainingRun]:
    """The proof: the proxies' model (or ``proof``'s shape), from the base checkpoint unless ``start: scratch``."""
    init = plan.base_path if proof.start == "base" else None
    return mixture_runs(plan, proof, proof.proxy_settings(plan.search), proof.seeds, init)


def proof_run_log(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
    return run_log(plan, tracking, context, experiment_suffix="-proof", tags={"climb.stage": "proof"})


def transfer_runs_of(plan: SearchPlan, proof: ProofSettings) -> list[TrainingRun]:
    """The proof's mixtures × ``transfer_seeds``, trained from scratch by the larger model (none when no seeds)."""
    return mixture_runs(plan, proof, proof.transfer_settings(plan.search), proof.transfer_seeds, None)


def transfer_run_log(plan: SearchPlan, tracking: MlflowTracking, context) -> RunLog:
    return run_log(plan, tracking, context, experiment_suffix="-proof", tags={"climb.stage": "transfer"})


def collect_transfer(context: dg.OpExecutionContext, plan: SearchPlan, records: list[dict]) -> dg.Output:
    """The larger model's runs next to the proof's: rank agreement, decision accuracy, paired differences."""
    proof = context.resources.proof
    if not records:
        return dg.Output(None, metadata={"enabled": False, "reason": "proof.transfer_seeds is empty: set it to run"},
                         data_version=dg.DataVersion("disabled"))  # fmt: skip
    large = pl.DataFrame([{"mixture": r["name"].rsplit("-seed", 1)[0], "seed": r["seed"], **r["metrics"]} for r in records])
    table = scale_table(pl.read_parquet(lake.proof_runs_path(plan.home, plan.search_key)), large)
    scores = agreement(table)
    paired = paired_comparison(large)
    tokenizer, _ = search_inputs(plan)
    settings = {"proxy": proof.proxy_settings(plan.search), "large": proof.transfer_settings(plan.search)}
    sizes = {scale: parameters(s, tokenizer.vocab_size) for scale, s in settings.items()}
    report = transfer_markdown(table, paired, scores, settings["proxy"], settings["large"], sizes, proof.transfer_seeds)
    sink = transfer_run_log(plan, context.resources.mlflow_tracking, context)
    summary_run = sink.tracking.open_run(sink.client, sink.experiment, "transfer-summary", sink.tags)
    log_run(sink.client, summary_run, metrics={
        "transfer_spearman": scores["spearman"], "transfer_decision_accuracy": scores["decision_accuracy"],
        **{f"transfer_delta_{row['baseline']}": row["mean_delta"] for row in paired.iter_rows(named=True)},
    })  # fmt: skip
    sink.client.set_terminated(summary_run)
    with atomic_path(lake.transfer_report_path(plan.home, plan.search_key)) as tmp:
        tmp.write_text(report)
    write_parquet_atomic(large, lake.transfer_runs_path(plan.home, plan.search_key))
    return dg.Output(
        None,
        metadata={
            "enabled": True,
            "table": markdown_table(table),
            "paired_differences": markdown_table(paired),
            "spearman": scores["spearman"],
            "decision_accuracy": scores["decision_accuracy"],
            "beats": [row["baseline"] for row in paired.iter_rows(named=True) if row["verdict"] == "beats"],
            "non_embedding_parameters": {scale: size[1] for scale, size in sizes.items()},
            "report": dg.MetadataValue.md(report),
            "seconds": float(sum(r["seconds"] for r in records)),
            "trained": sum(not r["reused"] for r in records),
            "reused": sum(r["reused"] for r in records),
        },
        data_version=dg.DataVersion(fingerprint({"runs": sorted(r["fingerprint"] for r in records)})),
    )


def build_climbmix_assets(iterations: int) -> list[dg.AssetsDefinition]:
    """``random_search_baseline``, ``climbmix`` and ``climbmix_proof`` downstream of the search; every baseline and
    proof run is its own GPU step."""

    def collect_random(context: dg.OpExecutionContext, plan: SearchPlan, records: list[dict]) -> dg.Output:
        results, summary = summarize_random_search(plan, context.resources.mlflow_tracking, records, context)
        return dg.Output(
            None,
            metadata={
                "proxies": summary["proxies"],
                "trained": int((~results["reused"]).sum()),
                "reused": int(results["reused"].sum()),
                "best_random_objective": summary["best_random_objective"],
                "regmix_predicted_objective": summary["regmix_predicted_objective"],
                "regmix_predictor_kind": summary["regmix_predictor_kind"],
                "path": dg.MetadataValue.path(str(plan.baseline_path())),
            },
            data_version=dg.DataVersion(fingerprint({"runs": sorted(results["fingerprint"].to_list()),
                                                     "summary": summary})),  # fmt: skip
        )

    random_fan_out = training_fan_out(
        "random_search",
        inputs=["first_iteration"],
        runs_of=lambda context, plan: random_search_runs(plan, iterations),
        markers_of=lake.proxy_markers_dir,
        run_log_of=random_search_run_log,
        collect=collect_random,
    )

    @dg.graph_asset(
        group_name="climbmix", kinds={"pytorch", "mlflow"},
        ins={"first_iteration": dg.AssetIn(key=dg.AssetKey(["iteration_1", "proxy_results"]), dagster_type=dg.Nothing)},
    )  # fmt: skip
    def random_search_baseline(first_iteration):
        """The same proxy budget spent without iterating: the best of N random mixtures, and RegMix's one-shot
        predictor pick from them (the baselines the proof compares ClimbMix with); one GPU step per proxy."""
        return random_fan_out(first_iteration=first_iteration)

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
        manifest_path = lake.climbmix_manifest_path(home, plan.search_key)
        existing = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        reused = existing.get("fingerprint") == key
        if reused:
            manifest = existing
        else:
            results = continuation.training_set(plan, iterations)
            spearman = {
                f"iteration_{k}": Predictor.load(plan.predictor_path(k)).extra.get("spearman") for k in range(1, iterations + 1)
            }
            manifest = write_climbmix(
                manifest_path.parent, corpus, weights, token_budget=config.token_budget, max_repeats=config.max_repeats,
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
                "weights_plot": weights_plot(labels, weights, corpus.natural_weights()),
                "manifest": dg.MetadataValue.path(str(manifest_path)),
            },
            data_version=dg.DataVersion(key),
        )

    def collect_proof(context: dg.OpExecutionContext, plan: SearchPlan, records: list[dict]) -> dg.Output:
        home, search, proof = plan.home, plan.search, context.resources.proof
        runs = [ProofRun(r["name"].rsplit("-seed", 1)[0], r["seed"], r["metrics"], r["seconds"]) for r in records]
        table = proof_table(runs)
        runs_frame = pl.DataFrame([{"mixture": r.mixture, "seed": r.seed, **r.metrics} for r in runs])
        paired = paired_comparison(runs_frame)
        progress = search_progress(plan, iterations)
        closing = [compute_sentence(plan, proof, iterations), continuation.describe(continuation.load(plan))]
        report = proof_markdown(table, paired, search.target_kind, proof, proof.proxy_settings(search), progress,
                                closing)  # fmt: skip
        sink = proof_run_log(plan, context.resources.mlflow_tracking, context)
        summary_run = sink.tracking.open_run(sink.client, sink.experiment, "proof-summary", sink.tags)
        log_run(sink.client, summary_run, metrics={
            f"{stat}_{row['baseline']}": row[column] for row in paired.iter_rows(named=True)
            for stat, column in (("delta", "mean_delta"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))
        })  # fmt: skip
        sink.client.set_terminated(summary_run)
        with atomic_path(lake.proof_report_path(home, plan.search_key)) as tmp:
            tmp.write_text(report)
        write_parquet_atomic(runs_frame, lake.proof_runs_path(home, plan.search_key))
        write_parquet_atomic(proof_cluster_losses(plan, records), lake.proof_cluster_loss_path(home, plan.search_key))
        metric = "bpb" if "bpb_mean" in table.columns else "objective"
        return dg.Output(
            None,
            metadata={
                "table": markdown_table(table),
                "paired_differences": markdown_table(paired),
                "search_progress": markdown_table(progress),
                "beats": [row["baseline"] for row in paired.iter_rows(named=True) if row["verdict"] == "beats"],
                "report": dg.MetadataValue.md(report),
                "proof_plot": proof_plot(runs_frame, table, metric),
                "search_plot": predictor_plot(plan, iterations),
                **cluster_loss_report(lake.proof_cluster_loss_path(home, plan.search_key)),
                "climbmix_rank": table["mixture"].to_list().index("climbmix") + 1,
                "seconds": float(sum(r.seconds for r in runs)),
                "trained": sum(not r["reused"] for r in records),
                "reused": sum(r["reused"] for r in records),
            },
            data_version=dg.DataVersion(fingerprint({"runs": sorted(r["fingerprint"] for r in records)})),
        )

    @dg.asset(group_name="climbmix", deps=["proxy_base_checkpoint"], pool=GPU_POOL, op_tags=GPU_TAGS,
              kinds={"pytorch", "mlflow"}, code_version=ALGORITHM_VERSIONS["loss_guided"])  # fmt: skip
    def loss_guided_baseline(context: dg.AssetExecutionContext, climb: ClimbHomeResource, search: SearchSettings,
                             proof: ProofSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:  # fmt: skip
        """Loss-guided bootstrapping (DoReMi's rule): rounds of training from the base, each re-weighting the
        super-clusters by the model's own excess held-out loss; its mixture is a proof baseline. One GPU step."""
        plan = SearchPlan(climb.home(), search)
        why_not = loss_guided.unavailable(plan, proof)
        if why_not:
            return dg.MaterializeResult(metadata={"enabled": False, "reason": why_not},
                                        data_version=dg.DataVersion("disabled"))  # fmt: skip
        record, reused, lease_metadata = loss_guided.ensure_loss_guided(
            plan, proof, gpu_slots(context.instance), waiting_in(context))
        _, corpus = search_inputs(plan)
        if not reused:
            loss_guided.log_rounds(proof_run_log(plan, mlflow_tracking, context), record, proof, corpus.groups)
        labels = [corpus.labels.get(g, str(g)) for g in corpus.groups]
        weights = np.asarray(record["weights"])
        table = pl.DataFrame({
            "super_cluster": corpus.groups, "label": labels, "natural": corpus.natural_weights().round(4),
            **{f"round_{r['round']}": np.round(r["next_weights"], 4) for r in record["rounds"]}, "final": weights.round(4),
        })  # fmt: skip
        return dg.MaterializeResult(
            metadata={
                "enabled": True, "reused": reused, "fingerprint": record["fingerprint"], "rounds": len(record["rounds"]),
                "tokens": record["tokens"], "seconds": round(record["seconds"], 1),
                "objective_by_round": [round(r["objective"], 4) for r in record["rounds"]],
                "weights": markdown_table(table), "weights_plot": weights_plot(labels, weights, corpus.natural_weights()),
                **lease_metadata,
            },
            data_version=dg.DataVersion(record["fingerprint"]),
        )

    proof_fan_out = training_fan_out(
        "proof",
        inputs=["climbmix", "baselines", "loss_guided_run"],
        runs_of=lambda context, plan: proof_runs_of(plan, context.resources.proof),
        markers_of=lake.proof_markers_dir,
        run_log_of=proof_run_log,
        collect=collect_proof,
        resources=frozenset({"proof"}),
    )

    @dg.graph_asset(
        group_name="climbmix", kinds={"pytorch", "mlflow"},
        ins={"climbmix": dg.AssetIn(key=dg.AssetKey("climbmix"), dagster_type=dg.Nothing),
             "baselines": dg.AssetIn(key=dg.AssetKey("random_search_baseline"), dagster_type=dg.Nothing),
             "loss_guided_run": dg.AssetIn(key=loss_guided_baseline.key, dagster_type=dg.Nothing)},
    )  # fmt: skip
    def climbmix_proof(climbmix, baselines, loss_guided_run):
        """Equal-budget training on ClimbMix vs natural, uniform, the best random proxy, RegMix's pick and
        loss-guided bootstrapping's mixture, paired by seed, one GPU step per mixture × seed; every run is
        fingerprinted, so a re-run trains only what changed."""
        return proof_fan_out(climbmix=climbmix, baselines=baselines, loss_guided_run=loss_guided_run)

    transfer_fan_out = training_fan_out(
        "transfer",
        inputs=["proof"],
        runs_of=lambda context, plan: transfer_runs_of(plan, context.resources.proof),
        markers_of=lake.proof_markers_dir,
        run_log_of=transfer_run_log,
        collect=collect_transfer,
        resources=frozenset({"proof"}),
    )

    @dg.graph_asset(
        group_name="climbmix", kinds={"pytorch", "mlflow"},
        ins={"proof": dg.AssetIn(key=climbmix_proof.key, dagster_type=dg.Nothing)},
    )  # fmt: skip
    def climbmix_transfer(proof):
        """The transfer check: the proof's mixtures trained by a larger model from scratch (``proof.transfer_*``),
        paired by seed; does the proxies' ranking hold? Runs only when ``transfer_seeds`` is set."""
        return transfer_fan_out(proof=proof)

    return [random_search_baseline, loss_guided_baseline, climbmix, climbmix_proof, climbmix_transfer]


def proof_cluster_losses(plan: SearchPlan, records: list[dict]) -> pl.DataFrame:
    """Held-out bits per byte per super-cluster: the base's, and each mixture's evaluation models' mean over seeds,
    so a user sees where ClimbMix's model gained or lost against the baselines."""
    by_mixture: dict[str, list[dict[str, float]]] = {}
    for record in records:
        by_mixture.setdefault(record["name"].rsplit("-seed", 1)[0], []).append(record.get("cluster_bpb") or {})
    losses = {"base": base_cluster_losses(plan)}
    for mixture, per_seed in by_mixture.items():
        groups = set.intersection(*(set(seed) for seed in per_seed))
        losses[mixture] = {g: float(np.mean([seed[g] for seed in per_seed])) for g in groups}
    return cluster_loss_table(plan, losses)


def proof_mixtures(plan: SearchPlan, corpus, manifest: dict, proof: ProofSettings) -> dict[str, np.ndarray]:
    """ClimbMix against natural, uniform, the best of N random proxies, RegMix's one-shot pick (same N) and, when
    there is one, loss-guided bootstrapping's mixture."""
    baselines = json.loads(plan.baseline_path().read_text())
    mixtures = {
        "climbmix": np.array([manifest["weights"][str(g)]["weight"] for g in corpus.groups]),
        "natural": corpus.natural_weights(),
        "uniform": np.full(len(corpus.groups), 1.0 / len(corpus.groups)),
        "best_random_proxy": np.asarray(baselines["best_random"], dtype=np.float64),
        "regmix": np.asarray(baselines["regmix"], dtype=np.float64),
    }
    record = loss_guided.finished(plan, proof)
    if record:
        mixtures["loss_guided"] = np.asarray(record["weights"], dtype=np.float64)
    return mixtures


def compute_sentence(plan: SearchPlan, proof: ProofSettings, iterations: int) -> str:
    """What each strategy spent on proxies, in tokens, for the proof's report."""
    budget = plan.search.token_budget
    searched = continuation.training_set(plan, iterations).filter(pl.col("iteration") > 0).height
    sentence = f"Proxy compute: the search trained {searched} proxies of {budget:,} tokens ({searched * budget:,} tokens)"
    record = loss_guided.finished(plan, proof)
    if record:
        rounds = len(record["rounds"])
        sentence += (f"; loss-guided bootstrapping trained {rounds} rounds ({record['tokens']:,} tokens, "
                     f"{searched * budget / max(record['tokens'], 1):.1f}x less)")  # fmt: skip
    return sentence + ", each continuing from the base checkpoint."
