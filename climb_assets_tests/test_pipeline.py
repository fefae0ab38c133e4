"""The main job's stages end to end on a tiny corpus, through the real Dagster jobs, sensors, dbt and MLflow.

Tests run in file order on one session-scoped platform: ingestion, then re-clustering, then the search.
"""

import hashlib
import json
import math
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import polars as pl
import pytest

from climb_assets.cluster.assets import SemanticDedupResource, build_recluster_sensor
from climb_assets.cluster.semantic_dedup import SemanticSettings, read_semantic_duplicates
from climb_assets.definitions import SEARCH_ITERATIONS
from climb_assets.embed.encode import read_embeddings
from climb_assets.lake import climbmix_dir
from climb_assets.resources import ClimbHomeResource
from climb_assets.search.keys import SearchPlan
from climb_assets.search.predictor import Predictor
from climb_assets.search.settings import SearchSettings
from climb_assets.search.tracking import local_tracking_uri
from climb_assets_tests.conftest import TINY_SEARCH, TINY_SEARCH_RUN_CONFIG


def materialized_partitions(instance, key: str) -> list[str]:
    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    return [r.event_log_entry.dagster_event.partition for r in records]


def test_second_wave_only_touches_new_partitions(tiny_platform):
    p = tiny_platform
    assert len(p.wave1) == 4 and len(p.wave2) == 2 and not set(p.wave1) & set(p.wave2)
    for key in ("raw_shards", "embeddings", "quality_signals"):
        counts = {name: materialized_partitions(p.instance, key).count(name) for name in p.wave1 + p.wave2}
        assert set(counts.values()) == {1}, (key, counts)


def test_embeddings_are_normalised_and_keyed_by_document(tiny_platform):
    home = tiny_platform.home
    for shard in tiny_platform.wave1 + tiny_platform.wave2:
        emb = read_embeddings(home.lake_dir("embeddings") / f"{shard}.npz")
        docs = pl.read_parquet(home.lake_dir("raw_shards") / f"{shard}.parquet", columns=["doc_id"])
        assert emb.ids.tolist() == docs["doc_id"].to_list()
        assert emb.vectors.dtype == np.float16
        assert np.allclose(np.linalg.norm(emb.vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)


def file_fingerprints(paths) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


def test_recluster_sensor_assigns_only_new_shards_then_merges(tiny_platform):
    p = tiny_platform
    names = ("cluster_fit_job", "cluster_assign_job", "semantic_dedup_job", "recluster_job")
    sensor = build_recluster_sensor(*[p.defs.resolve_job_def(name) for name in names], settle_seconds=0)
    resources = {"climb": ClimbHomeResource(root=str(p.home.root)), "semantic_dedup": SemanticDedupResource()}
    context = lambda: dg.build_sensor_context(instance=p.instance, resources=resources)  # noqa: E731
    version = (p.home.lake_dir("clusters") / "CURRENT").read_text()
    assert version == p.first_clusters
    old_files = sorted((p.home.lake_dir("clusters") / version / "assignments").glob("*.parquet"))
    assert [f.stem for f in old_files] == sorted(p.wave1)
    before = file_fingerprints(old_files)

    requests = sensor(context()).run_requests
    assert {r.job_name for r in requests} == {"cluster_assign_job"}
    assert sorted(r.partition_key for r in requests) == sorted(p.wave2)  # only the new shards
    assign_job = p.defs.resolve_job_def("cluster_assign_job")
    for request in requests:
        assert assign_job.execute_in_process(instance=p.instance, partition_key=request.partition_key).success

    assert file_fingerprints(old_files) == before  # old shards' assignments untouched (bytes and mtimes)
    assert (p.home.lake_dir("clusters") / "CURRENT").read_text() == version  # no refit
    checks = sensor(context()).run_requests  # then the semantic dedup of the new shards only
    assert {r.job_name for r in checks} == {"semantic_dedup_job"}
    assert sorted(r.partition_key for r in checks) == sorted(p.wave2)
    semantic_job = p.defs.resolve_job_def("semantic_dedup_job")
    for request in checks:
        assert semantic_job.execute_in_process(instance=p.instance, partition_key=request.partition_key).success
    (merge,) = sensor(context()).run_requests
    assert merge.job_name == "recluster_job"
    p.run_job(p.defs, p.instance, "recluster_job")
    assert isinstance(sensor(context()), dg.SkipReason)

    after = pl.read_parquet(p.home.lake_dir("clusters") / version / "assignments" / "*.parquet")
    all_docs = pl.scan_parquet(p.home.lake_dir("raw_shards") / "*.parquet").select("doc_id").collect()
    assert sorted(after["doc_id"].to_list()) == sorted(all_docs["doc_id"].to_list())
    clusters = pl.read_parquet(p.home.lake_dir("clusters") / version / "clusters.parquet")
    assert set(after["cluster_id"].unique()) <= set(clusters["cluster_id"])
    semantic = read_semantic_duplicates(p.home, version, SemanticSettings(), sorted(p.wave1 + p.wave2))
    merged = pl.read_parquet(p.home.lake_dir("super_clusters") / "documents.parquet")["doc_id"]  # kept + pruned
    assert set(merged).isdisjoint(semantic["doc_id"])  # semantic duplicates are left out of every super-cluster...
    assert set(merged) | set(semantic["doc_id"]) == set(after["doc_id"])  # ...and nothing else is
    checked = p.instance.fetch_materializations(dg.AssetKey("semantic_duplicates"), limit=100).records
    assert {r.asset_materialization.partition for r in checked} >= set(p.wave2)
    events = p.instance.fetch_materializations(dg.AssetKey("cluster_assignments"), limit=100).records
    latest = {r.asset_materialization.partition: r.asset_materialization.metadata for r in reversed(events)}
    for shard in p.wave2:
        assert latest[shard]["centroid_version"].value == version
        assert latest[shard]["docs"].value == after.filter(pl.col("shard") == shard).height > 0
        assert latest[shard]["drift"].value > 0


def test_dbt_models_ran_and_their_tests_passed(tiny_platform):
    p = tiny_platform
    decisions = pl.read_parquet(p.home.lake / "dbt" / "cluster_decisions.parquet")
    assert set(decisions["decision"].unique()) <= {"keep", "prune"}
    checks = p.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("cluster_decisions"), "not_null_cluster_decisions_cluster_id"), limit=5
    )
    assert checks and checks[0].status.value == "SUCCEEDED"


def test_super_clusters_partition_the_kept_documents(tiny_platform):
    home = tiny_platform.home
    docs = pl.read_parquet(home.lake_dir("super_clusters") / "documents.parquet")
    assert docs["doc_id"].n_unique() == docs.height
    table = pl.read_parquet(home.lake_dir("super_clusters") / "super_clusters.parquet")
    assert table.height >= 2 and all(label and label != "(no distinctive terms)" for label in table["label"])
    assert table["n_docs"].sum() == docs["super_cluster_id"].is_not_null().sum()
    check = tiny_platform.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("quality_filtered_clusters"), "super_clusters_partition_check"), limit=1
    )
    assert check[0].status.value == "SUCCEEDED"


@pytest.fixture(scope="module")
def searched(tiny_platform):
    tiny_platform.run_job(tiny_platform.defs, tiny_platform.instance, "search_job", TINY_SEARCH_RUN_CONFIG)
    return tiny_platform


def test_every_proxy_is_an_mlflow_run_with_params_metrics_and_tags(searched):
    client = mlflow.tracking.MlflowClient(local_tracking_uri(searched.home))
    experiments = [e for e in client.search_experiments() if e.name.startswith("climb-search/") and "proof" not in e.name]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and "climb.iteration" in r.data.tags]
    proxies = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in {p.info.run_id for p in parents}]
    baseline = [r for r in runs if r.data.tags.get("climb.stage") == "random_search_baseline"]
    # the random-search baseline's own runs are the extra proxies only (iteration 1's are reused, not re-run)
    extra = sum(TINY_SEARCH["proxies_per_iteration"][1:])
    assert len([r for r in baseline if "mlflow.parentRunId" in r.data.tags]) == extra
    assert sorted(r.data.tags["climb.iteration"] for r in parents) == [str(k) for k in range(1, SEARCH_ITERATIONS + 1)]
    assert len(proxies) == sum(TINY_SEARCH["proxies_per_iteration"])
    for run in proxies:
        assert run.info.status == "FINISHED"
        weights = [float(v) for k, v in run.data.params.items() if k.startswith("w_")]
        assert math.isclose(sum(weights), 1.0, abs_tol=1e-3)
        assert {"objective", "bpb", "train_loss"} <= set(run.data.metrics)
        assert any(k.startswith("cluster_bpb_") for k in run.data.metrics)  # held-out loss per super-cluster
        assert run.data.tags["dagster.run_id"] and run.data.tags["climb.cluster_version"]
        assert len(client.get_metric_history(run.info.run_id, "train_loss_curve")) > 1
    for parent in parents:
        assert "predictor_spearman" in parent.data.metrics and "label_00" in parent.data.params


def test_later_iterations_use_the_previous_predictor(searched):
    plan = SearchPlan(searched.home, SearchSettings(**TINY_SEARCH))
    for k in range(1, SEARCH_ITERATIONS + 1):
        results = pl.read_parquet(plan.results_path(k))
        assert results.height == TINY_SEARCH["proxies_per_iteration"][k - 1]
        predictor = Predictor.load(plan.predictor_path(k))
        assert predictor.n_train == sum(TINY_SEARCH["proxies_per_iteration"][:k])
        event = searched.instance.get_latest_materialization_event(dg.AssetKey([f"iteration_{k}", "predictor"]))
        metadata = event.asset_materialization.metadata
        # LightGBM's held-out score is reported whichever kind was chosen
        assert {"spearman_lightgbm", "spearman_ridge", "spearman_ensemble"} <= set(metadata)
        assert metadata["predictor_kind"].value == predictor.kind
    event = searched.instance.get_latest_materialization_event(dg.AssetKey(["iteration_2", "mixture_candidates"]))
    assert event.asset_materialization.metadata["top"].value == 128


def test_base_and_each_iterations_best_proxy_report_their_loss_per_super_cluster(searched):
    plan = SearchPlan(searched.home, SearchSettings(**TINY_SEARCH))
    groups = [c for c in pl.read_parquet(plan.results_path(1)).columns if c.startswith("w_")]
    base = pl.read_parquet(plan.base_cluster_loss_path)
    assert base.height == len(groups) and base["base"].is_not_null().sum() >= 1
    for k in range(1, SEARCH_ITERATIONS + 1):
        table = pl.read_parquet(plan.cluster_loss_path(k))
        results = pl.read_parquet(plan.results_path(k))
        best = results.sort("objective", descending=True).row(0, named=True)
        assert table["best_candidate"].unique().to_list() == [best["candidate_id"]]
        measured = table.drop_nulls("best_proxy")
        assert measured.height >= 1 and measured["base"].null_count() == 0
        for g, value in zip(measured["super_cluster_id"], measured["best_proxy"]):
            assert value == best[f"cluster_bpb_{g}"]
        node = dg.AssetKey([f"iteration_{k}", "proxy_results"])
        metadata = searched.instance.get_latest_materialization_event(node).asset_materialization.metadata
        assert {"cluster_bpb", "cluster_bpb_plot"} <= set(metadata)
    metadata = searched.instance.get_latest_materialization_event(dg.AssetKey("proxy_base_checkpoint")).asset_materialization.metadata
    assert "cluster_bpb" in metadata
    proof = pl.read_parquet(climbmix_of(searched.home) / "proof_cluster_loss.parquet")
    mixtures = ["climbmix", "natural", "uniform", "best_random_proxy", "regmix", "loss_guided"]
    assert set(mixtures) <= set(proof.columns) and proof.height == len(groups)
    assert proof.drop_nulls("climbmix").height >= 1 and (proof.drop_nulls("climbmix")["climbmix"] > 0).all()
    metadata = searched.instance.get_latest_materialization_event(dg.AssetKey("climbmix_proof")).asset_materialization.metadata
    assert "cluster_bpb_plot" in metadata


def climbmix_of(home) -> Path:
    """The tiny search's own ClimbMix directory."""
    return climbmix_dir(home, SearchPlan(home, SearchSettings(**TINY_SEARCH)).search_key)


def test_climbmix_manifest_matches_the_sampled_shards(searched):
    home = searched.home
    manifest = json.loads((climbmix_of(home) / "manifest.json").read_text())
    weights = {g: v["weight"] for g, v in manifest["weights"].items()}
    assert math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6)
    rows = pl.concat([pl.read_parquet(climbmix_of(home) / name) for name in manifest["shards"]])
    assert rows.height == manifest["documents"]
    assert set(rows.columns) == {"text", "doc_id", "super_cluster_id", "source_shard"}
    if not manifest["capped_groups"]:
        for group, sampled in manifest["sampled"].items():
            assert abs(sampled["token_share"] - weights[group]) < 0.05
    # every document traces back to the raw shard that holds it
    raw = pl.scan_parquet(home.lake_dir("raw_shards") / "*.parquet").select("doc_id", "shard").collect()
    traced = rows.join(raw, on="doc_id", how="left")
    assert (traced["shard"] == traced["source_shard"]).all()
    assert set(manifest["provenance"]["raw_shards"]) <= set(searched.wave1 + searched.wave2)
    # the repetition cap holds
    assert rows.group_by("doc_id").len()["len"].max() <= math.ceil(manifest["max_repeats"])


def test_proof_table_comes_from_real_training_runs(searched):
    home = searched.home
    runs = pl.read_parquet(climbmix_of(home) / "proof_runs.parquet")
    assert sorted(runs["mixture"].unique()) == ["best_random_proxy", "climbmix", "loss_guided", "natural", "regmix", "uniform"]
    assert runs.group_by("mixture").len()["len"].to_list() == [2] * 6
    assert runs["bpb"].is_finite().all()
    # each seed is its own training run (two mixtures may coincide on a tiny corpus once the repetition cap bites)
    assert (runs.group_by("mixture").agg(pl.col("bpb").n_unique())["bpb"] == 2).all()
    report = (climbmix_of(home) / "proof.md").read_text()
    for name, bpb in runs.group_by("mixture").agg(pl.col("bpb").mean()).iter_rows():
        assert f"| {name} | 2 | {bpb:.4f} ± " in report
    # every baseline has its paired difference, computed from the same seeds' runs
    objective = {(m, s): o for m, s, o in runs.select("mixture", "seed", "objective").iter_rows()}
    for name in ("best_random_proxy", "natural", "regmix", "uniform", "loss_guided"):
        delta = sum(objective[("climbmix", s)] - objective[(name, s)] for s in (0, 1)) / 2
        assert f"| {name} | 2 | {delta:+.4f} |" in report


def test_random_search_baseline_spends_the_search_budget_reusing_iteration_1(searched):
    event = searched.instance.get_latest_materialization_event(dg.AssetKey("random_search_baseline"))
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["proxies"] == sum(TINY_SEARCH["proxies_per_iteration"])
    # iteration 1's candidates are random draws with the same settings and seed: their proxies are reused
    assert metadata["reused"] == TINY_SEARCH["proxies_per_iteration"][0]
    assert metadata["trained"] == metadata["proxies"] - metadata["reused"]


def test_proof_report_shows_the_search_iteration_by_iteration(searched):
    """Every iteration's Spearman and proxy objectives, read back from the predictors and results on disk."""
    plan = SearchPlan(searched.home, SearchSettings(**TINY_SEARCH))
    report = (climbmix_of(searched.home) / "proof.md").read_text()
    runs_so_far = 0
    for k in range(1, SEARCH_ITERATIONS + 1):
        results = pl.read_parquet(plan.results_path(k))
        runs_so_far += results.height
        predictor = Predictor.load(plan.predictor_path(k))
        row = f"| {k} | {runs_so_far} | {predictor.kind} | {predictor.extra['spearman']:.3f} |"
        assert row in report and f"| {results['objective'].max():.4f} | {results['objective'].mean():.4f} |" in report
    assert report.rstrip().endswith("The search started from scratch (the first of its lineage).")
    event = searched.instance.get_latest_materialization_event(dg.AssetKey("climbmix_proof"))
    assert "| iteration |" in event.asset_materialization.metadata["search_progress"].value


def test_loss_guided_bootstrapping_reweights_by_excess_loss_and_is_a_proof_baseline(searched):
    from climb_assets.climbmix.loss_guided import loss_guided_path, update_weights
    from climb_assets.search.reports import base_cluster_losses
    from climb_assets.search.settings import ProofSettings

    plan = SearchPlan(searched.home, SearchSettings(**TINY_SEARCH))
    proof = ProofSettings(**TINY_SEARCH_RUN_CONFIG["resources"]["proof"]["config"])
    record = json.loads(loss_guided_path(plan, proof).read_text())
    groups = record["groups"]
    reference = np.array([base_cluster_losses(plan).get(str(g), np.nan) for g in groups])
    assert len(record["rounds"]) == proof.loss_guided_rounds
    for r in record["rounds"]:  # each round's next weights are the rule applied to what that round measured
        losses = np.array([r["cluster_bpb"].get(str(g), np.nan) for g in groups])
        expected = update_weights(np.array(r["trained_on"]), losses, reference, proof.loss_guided_eta, proof.loss_guided_floor)
        assert np.allclose(r["next_weights"], expected) and math.isclose(sum(r["next_weights"]), 1.0)
    assert np.allclose(record["weights"], np.mean([r["next_weights"] for r in record["rounds"]], axis=0))
    assert record["tokens"] == sum(r["tokens"] for r in record["rounds"]) > 0
    report = (climbmix_of(searched.home) / "proof.md").read_text()
    assert f"loss-guided bootstrapping trained {proof.loss_guided_rounds} rounds ({record['tokens']:,} tokens" in report
    event = searched.instance.get_latest_materialization_event(dg.AssetKey("loss_guided_baseline"))
    assert event.asset_materialization.metadata["rounds"].value == proof.loss_guided_rounds


def test_the_loss_guided_rule_favours_what_the_model_has_not_learned():
    from climb_assets.climbmix.loss_guided import update_weights

    weights = np.array([0.5, 0.3, 0.2])
    reference = np.array([2.0, 2.0, 2.0])
    moved = update_weights(weights, np.array([1.5, 1.9, np.nan]), reference, eta=1.0, floor=0.0)
    assert moved[1] / moved[0] > weights[1] / weights[0]  # improved least: gains weight against the mastered one
    assert math.isclose(moved[2] / moved[1], weights[2] / weights[1] * math.exp(0.1))  # unmeasured: no tilt of its own
    assert np.allclose(update_weights(weights, np.array([1.0, 5.0, 1.0]), reference, eta=1.0, floor=1.0), 1 / 3)


def test_transfer_check_trains_the_proof_mixtures_at_a_larger_scale_only_when_asked(searched):
    """Off by default (the search job ran without it); with transfer seeds, only the larger model's runs train."""
    from climb_assets.climbmix.transfer import agreement
    from climb_assets.search.settings import ProofSettings

    off = searched.instance.get_latest_materialization_event(dg.AssetKey("climbmix_transfer")).asset_materialization
    assert off.metadata["enabled"].value is False and "transfer_seeds" in off.metadata["reason"].value
    proof = TINY_SEARCH_RUN_CONFIG["resources"]["proof"]["config"] | {"transfer_seeds": [0, 1]}
    config = TINY_SEARCH_RUN_CONFIG | {"resources": {"proof": {"config": proof}}}
    searched.run_job(searched.defs, searched.instance, "search_job", config)

    metadata = searched.instance.get_latest_materialization_event(dg.AssetKey("climbmix_transfer")).asset_materialization.metadata
    proof_event = searched.instance.get_latest_materialization_event(dg.AssetKey("climbmix_proof"))
    assert proof_event.asset_materialization.metadata["trained"].value == 0  # the proof's runs were all reused
    assert metadata["trained"].value == 12 and metadata["reused"].value == 0  # 6 mixtures x 2 seeds, larger model
    sizes = metadata["non_embedding_parameters"].value
    assert sizes["large"] >= 3.9 * sizes["proxy"]  # 2x wide: ~4x the non-embedding parameters
    large = pl.read_parquet(climbmix_of(searched.home) / "transfer_runs.parquet")
    small = pl.read_parquet(climbmix_of(searched.home) / "proof_runs.parquet")
    assert sorted(large["mixture"].unique()) == sorted(small["mixture"].unique())
    assert large.height == 12 and large["bpb"].is_finite().all()
    assert not large.join(small, on=["mixture", "seed"]).filter(pl.col("bpb") == pl.col("bpb_right")).height
    settings = ProofSettings(**proof).transfer_settings(SearchSettings(**TINY_SEARCH))
    proxy_shape = SearchSettings(**TINY_SEARCH).proxy_settings().model_config(vocab_size=256)
    assert settings.token_budget == 3 * proof["token_budget"] and settings.n_embd == 2 * proxy_shape.n_embd
    proxy_means, large_means = (dict(runs.group_by("mixture").agg(pl.col("objective").mean()).iter_rows())
                                for runs in (small, large))  # fmt: skip
    table = pl.DataFrame({"mixture": list(proxy_means), "objective_proxy": list(proxy_means.values()),
                          "objective_large": [large_means[m] for m in proxy_means]})  # fmt: skip
    expected = agreement(table)
    assert metadata["spearman"].value == pytest.approx(expected["spearman"])
    assert metadata["decision_accuracy"].value == pytest.approx(expected["decision_accuracy"])
    report = (climbmix_of(searched.home) / "transfer.md").read_text()
    assert f"{expected['decision_accuracy']:.0%} of the 15 mixture pairs" in report
    client = mlflow.tracking.MlflowClient(local_tracking_uri(searched.home))
    summaries = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   filter_string="tags.mlflow.runName = 'transfer-summary'")  # fmt: skip
    assert summaries and summaries[0].data.metrics["transfer_spearman"] == pytest.approx(expected["spearman"])


def test_confirm_top_trains_the_best_proxies_again_and_the_predictor_learns_their_means(searched):
    """``confirm_top: 2`` on iteration 1 (its proxies reused from the default search by their keys): the two best by
    their first run get a second run, a step each; their results are the means; the rest are untouched."""
    from climb_assets.lake import proxy_markers_dir

    settings = TINY_SEARCH | {"confirm_top": 2}
    plan = SearchPlan(searched.home, SearchSettings(**settings))
    first_runs = pl.read_parquet(SearchPlan(searched.home, SearchSettings(**TINY_SEARCH)).results_path(1))
    selection = [dg.AssetKey("proxy_tokenizer"), dg.AssetKey("proxy_base_checkpoint"),
                 *[dg.AssetKey(["iteration_1", name]) for name in ("mixture_candidates", "proxy_results", "predictor")]]  # fmt: skip
    config = TINY_SEARCH_RUN_CONFIG | {"resources": {"search": {"config": settings}}}
    outcome = searched.run_job(searched.defs, searched.instance, "search_job", config, asset_selection=selection)

    results = pl.read_parquet(plan.results_path(1))
    assert results["objective_first_seed"].to_list() == first_runs["objective"].to_list()  # the same first runs
    top = set(first_runs.sort("objective", descending=True)["candidate_id"][:2])
    confirmed = results.filter(pl.col("seeds") == 2)
    assert set(confirmed["candidate_id"]) == top
    for row in confirmed.iter_rows(named=True):
        second = json.loads((proxy_markers_dir(searched.home) / f"{row['confirm_fingerprint']}.json").read_text())
        assert second["seed"] == plan.search.confirm_seed() != plan.search.proxy_seed()
        assert row["objective"] == pytest.approx((row["objective_first_seed"] + second["metrics"]["objective"]) / 2)
        assert row["objective"] != row["objective_first_seed"]
    single = results.filter(pl.col("seeds") == 1)
    assert single.height == 2 and single["objective"].to_list() == single["objective_first_seed"].to_list()
    steps = {e.step_key.split(".")[-1] for e in outcome.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {f"iteration_1_confirm_train[{c.replace('-', '_')}_confirm]" for c in top} <= steps
    predictor = Predictor.load(plan.predictor_path(1))
    assert predictor.n_train == results.height and len(predictor.extra["trained_on"]) == results.height + 2
    metadata = searched.instance.get_latest_materialization_event(
        dg.AssetKey(["iteration_1", "proxy_results"])).asset_materialization.metadata  # fmt: skip
    assert metadata["confirmed"].value == 2 and metadata["best_objective"].value == results["objective"].max()
