"""A new crawl wave continues the previous search instead of restarting it: a refresh judges the old predictor on
new runs, the old runs become evidence, and fewer proxies are trained; a changed structure restarts, and says why."""

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from climb_assets import lake
from climb_assets.climbmix.assets import choose_climbmix, random_search_runs
from climb_assets.ingest.assets import shard_partitions
from climb_assets.lm.token_files import ensure_token_files, tokenizer_sha256
from climb_assets.resources import ClimbHomeResource
from climb_assets.search import continuation
from climb_assets.search.assets import build_search_assets, ensure_proxy_tokenizer, proxy_token_files
from climb_assets.search.keys import SearchPlan
from climb_assets.search.predictor import Predictor
from climb_assets.search.sensors import build_search_sensor
from climb_assets.search.settings import ClimbMixConfig, SearchSettings
from climb_assets.search.tracking import MlflowTracking, local_tracking_uri
from climb_assets_tests.conftest import TINY_SEARCH
from climb_assets_tests.test_resume import write_search_state

BASE = {**TINY_SEARCH, "proxies_per_iteration": [8, 4], "token_budget": 2_000, "base_token_budget": 2_000,
        "max_repeats": 20.0, "predictor_folds": 3}  # fmt: skip


def search(home, instance, **changes) -> dict[str, dict]:
    """A two-iteration search with ``changes`` on the tiny settings; every search asset's metadata."""
    resources = {"climb": ClimbHomeResource(root=str(home.root)), "search": SearchSettings(**(BASE | changes)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    result = dg.materialize(build_search_assets(2), resources=resources, instance=instance)
    assert result.success
    nodes = ["proxy_tokenizer", "proxy_base_checkpoint"] + [f"iteration_{k}__{name}" for k in (1, 2)
                                   for name in ("mixture_candidates", "proxy_results", "predictor")]  # fmt: skip
    return {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for node in nodes for m in result.asset_materializations_for_node(node)
    }


def land_wave(home, version: str, drop_group: int | None = None) -> None:
    """A new wave under the same centroids: reversed copies of shard-0's documents join their super-clusters (the
    super-cluster version moves, as a merge's does); ``drop_group`` makes that super-cluster vanish."""
    raw, supers = home.lake_dir("raw_shards"), home.lake_dir("super_clusters")
    wave = pl.read_parquet(raw / "shard-0.parquet").with_columns(
        doc_id=pl.col("doc_id") + "-w2", shard=pl.lit("shard-w2"), text=pl.col("text").str.reverse()
    )  # fmt: skip
    wave.write_parquet(raw / "shard-w2.parquet")
    members = pl.read_parquet(supers / "documents.parquet")
    new = wave.select("doc_id").join(members.with_columns(doc_id=pl.col("doc_id") + "-w2"), on="doc_id")
    members = pl.concat([members, new])
    table = pl.read_parquet(supers / "super_clusters.parquet").with_columns(version=pl.lit(version))
    mapping = pl.read_parquet(supers / "mapping.parquet")
    if drop_group is not None:
        members = members.filter(pl.col("super_cluster_id") != drop_group)
        table = table.filter(pl.col("super_cluster_id") != drop_group)
        mapping = mapping.filter(pl.col("super_cluster_id") != drop_group)
    members.write_parquet(supers / "documents.parquet")
    table.write_parquet(supers / "super_clusters.parquet")
    mapping.write_parquet(supers / "mapping.parquet")


def land_growth(home, version: str, group: int, copies: int) -> None:
    """A wave of ``copies`` edited copies of super-cluster ``group``'s documents (the crawl found much more of one kind
    of text): that super-cluster's share of the prior moves, the others keep their ratios."""
    raw, supers = home.lake_dir("raw_shards"), home.lake_dir("super_clusters")
    members = pl.read_parquet(supers / "documents.parquet")
    grown = pl.read_parquet(raw / "*.parquet").join(members.filter(pl.col("super_cluster_id") == group), on="doc_id")
    wave = pl.concat([
        grown.with_columns(doc_id=pl.col("doc_id") + f"-w2-{k}", text=pl.col("text").str.reverse() + f" {k}")
        for k in range(copies)
    ]).with_columns(shard=pl.lit("shard-w2"), row_number=pl.int_range(pl.len()).cast(pl.Int64))  # fmt: skip
    wave.drop("cluster_id", "super_cluster_id").write_parquet(raw / "shard-w2.parquet")
    pl.concat([members, wave.select(members.columns)]).write_parquet(supers / "documents.parquet")
    table = pl.read_parquet(supers / "super_clusters.parquet").with_columns(version=pl.lit(version))
    table.write_parquet(supers / "super_clusters.parquet")


def token_file_partitions(instance) -> dict[str, dict]:
    """Each shard's latest ``proxy_token_files`` materialization: its metadata and the run that made it."""
    latest = {}
    for record in instance.fetch_materializations(dg.AssetKey("proxy_token_files"), limit=1000).records:
        materialization = record.asset_materialization
        latest.setdefault(materialization.partition, {k: v.value for k, v in materialization.metadata.items()}
                          | {"run_id": record.run_id})  # fmt: skip
    return latest


@pytest.fixture
def first_search(home, instance):
    write_search_state(home)
    metadata = search(home, instance)
    shards = sorted(p.stem for p in home.lake_dir("raw_shards").glob("*.parquet"))
    # the first search's tokenizer step tokenized every shard, each recorded as its own partition
    assert metadata["proxy_tokenizer"]["shards_tokenized_here"] == len(shards) > 0
    assert sorted(token_file_partitions(instance)) == shards
    assert metadata["iteration_1/mixture_candidates"]["continuation_start"] == "first"
    assert metadata["iteration_1/proxy_results"]["trained"] == 8 and metadata["iteration_2/proxy_results"]["trained"] == 4
    return SearchPlan(home, SearchSettings(**BASE)).search_key


def test_a_new_wave_continues_the_previous_search_with_fewer_proxies(home, instance, first_search):
    land_wave(home, "v2")
    # keep the old runs (the reuse path), and train the first search's base on instead of a new one
    changes = {"continue_min_spearman": -1.0, "continue_max_p_value": 1.0, "base_continue_fraction": 0.25}
    before = token_file_partitions(instance)
    # the kept tokenizer: the new shard alone is tokenized, in its own partition's run (what `climb crawl` launches)
    instance.add_dynamic_partitions("raw_shards", ["shard-w2"])
    resources = {"climb": ClimbHomeResource(root=str(home.root)), "search": SearchSettings(**(BASE | changes))}
    tokenized = dg.materialize([proxy_token_files], partition_key="shard-w2", resources=resources, instance=instance)
    assert tokenized.success
    (made,) = tokenized.asset_materializations_for_node("proxy_token_files")
    assert made.partition == "shard-w2" and made.metadata["tokenized"].value is True
    raw_rows = pl.read_parquet(home.lake_dir("raw_shards") / "shard-w2.parquet").height
    assert made.metadata["rows"].value == raw_rows and made.metadata["tokens"].value > raw_rows
    again = dg.materialize([proxy_token_files], partition_key="shard-w2", resources=resources, instance=instance)
    (kept,) = again.asset_materializations_for_node("proxy_token_files")
    assert kept.metadata["tokenized"].value is False and kept.metadata["tokens"].value == made.metadata["tokens"].value
    after = token_file_partitions(instance)
    assert {shard: after[shard]["run_id"] for shard in before} == {shard: m["run_id"] for shard, m in before.items()}

    metadata = search(home, instance, **changes)
    assert metadata["proxy_tokenizer"]["reused"] is True and metadata["proxy_tokenizer"]["shards_tokenized_here"] == 0
    plan = SearchPlan(home, SearchSettings(**(BASE | changes)))
    # the base is the first search's, trained on for a quarter of its tokens on the new natural mixture (asked for)
    finished = lake.lineage_dir(home, plan.lineage_key) / "finished" / f"{first_search}.json"
    first_base = json.loads(finished.read_text())["base_key"]
    base = metadata["proxy_base_checkpoint"]
    assert plan.parent_base == (first_base, lake.base_checkpoint_path(home, first_base))
    assert base["continues_base"] == first_base and plan.base_key != first_base and not base["reused"]
    assert base["tokens"] == plan.search.base_continue_settings().token_budget < BASE["base_token_budget"]
    from_scratch = SearchPlan(home, SearchSettings(**(BASE | changes | {"base_continue_fraction": 0.0})))
    assert from_scratch.parent_base is None and from_scratch.base_key not in (plan.base_key, first_base)
    assert SearchPlan(home, SearchSettings(**(BASE | {"search_start": "fresh"}))).base_key == from_scratch.base_key
    start = metadata["iteration_1/mixture_candidates"]
    assert start["continuation_start"] == "refresh" and start["continuation_parent"] == first_search
    assert start["continuation_prior_shift"] <= 0.1 and start["random_candidates"] == 3
    # a quarter of the search's 12 proxies: a refresh of at least 6 (to judge a ranking), then at least 1 per iteration
    assert metadata["iteration_1/proxy_results"]["trained"] == 6 and metadata["iteration_2/proxy_results"]["trained"] == 1

    state = continuation.load(plan)
    assert state["decision"] == "reuse" and state["refresh_runs"] == 6 and 0 < state["refresh_p_value"] <= 1
    assert f"continued search `{first_search}` (its base trained on from base `{first_base}`)" in continuation.describe(state)
    assert state["base_continues"] == first_base and "kept as evidence" in continuation.describe(state)
    # the refresh's numbers are those of the predictor fitted on the carried runs, measured on the new runs
    own = pl.read_parquet(plan.results_path(1))
    columns = [c for c in own.columns if c.startswith("w_")]
    old_predictor = Predictor.load(lake.search_evidence_dir(home, plan.search_key) / "predictor")
    residual = own["objective"].to_numpy() - old_predictor.predict(own.select(columns).to_numpy())
    assert state["offset"] == pytest.approx(float(np.median(residual)))
    assert state["refresh_rmse"] == pytest.approx(float(np.sqrt(np.mean(residual**2))), abs=1e-5)

    # the old search's own runs are evidence, shifted by the offset, in every predictor of the continued search
    final = metadata["iteration_2/predictor"]
    assert final["runs_reused_from_parent"] == 12 and final["runs"] == 19 and final["continuation_decision"] == "reuse"
    evidence = continuation.training_set(plan, 2).filter(pl.col("evidence_from") == first_search)
    old_runs = pl.concat([pl.read_parquet(lake.search_iteration_dir(home, first_search, k) / "results.parquet") for k in (1, 2)])
    assert sorted(evidence["fingerprint"]) == sorted(old_runs["fingerprint"])
    shifted = evidence.join(old_runs.select("fingerprint", old="objective"), on="fingerprint")
    assert np.allclose(shifted["objective"] - shifted["old"], state["offset"])
    trained_on = Predictor.load(plan.predictor_path(2)).extra["trained_on"]
    assert set(old_runs["fingerprint"]) <= set(trained_on)

    client = MlflowClient(local_tracking_uri(home))
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string=f"tags.`climb.search_key` = '{plan.search_key}' and tags.`climb.iteration` = '1'")  # fmt: skip
    parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["climb.continuation"] == "reuse" and parent.data.tags["climb.parent_search"] == first_search
    assert parent.data.metrics["refresh_rmse"] == pytest.approx(state["refresh_rmse"])
    # the lineage's searches, wave after wave, are side by side in one experiment
    earlier = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`climb.search_key` = '{first_search}'")
    assert earlier and {r.data.tags["climb.lineage"] for r in earlier} == {plan.lineage_key}

    # the key is pinned: the finished continued search computes the same key, and its own wave has no other parent
    assert SearchPlan(home, SearchSettings(**(BASE | changes))).search_key == plan.search_key
    finished = json.loads((lake.lineage_dir(home, plan.lineage_key) / "finished" / f"{plan.search_key}.json").read_text())
    assert finished["iterations"] == 2
    fresh = SearchPlan(home, SearchSettings(**(BASE | {"search_start": "fresh"})))
    assert fresh.parent_search_key is None and fresh.lineage_key == plan.lineage_key and fresh.search_key != plan.search_key


def test_a_super_cluster_that_moved_is_searched_again_and_the_rest_kept_at_the_previous_ratios(home, instance,
                                                                                                first_search):  # fmt: skip
    first_pick, _, _ = choose_climbmix(ClimbMixConfig(), SearchPlan(home, SearchSettings(**BASE)), 2)
    land_growth(home, "v2", group=2, copies=8)
    metadata = search(home, instance)
    # nobody ran the new shard's partition (the search sensor's path): the search's tokenizer step tokenized it
    assert metadata["proxy_tokenizer"]["shards_tokenized_here"] == 1 and "shard-w2" in token_file_partitions(instance)
    plan = SearchPlan(home, SearchSettings(**BASE))
    state = continuation.load(plan)
    start = metadata["iteration_1/mixture_candidates"]
    assert start["continuation_start"] == "partial" and start["continuation_parent"] == first_search
    assert start["continuation_prior_shift"] > 0.1 and "(moved: [2])" in start["continuation_reasons"]
    assert state["searched_groups"] == [2] and state["frozen_groups"] == [0, 1]
    assert state["base_continues"] is None  # by default every wave's base is trained from scratch
    # super-clusters 0 and 1 keep the ratios of the first search's ClimbMix pick (same fine clusters: carried as is)
    assert np.allclose(state["parent_pick"], first_pick, atol=1e-6)
    assert np.allclose(state["frozen_ratios"], first_pick[:2] / first_pick[:2].sum())
    # proxies in proportion to what is searched (2 of 3 dimensions: super-cluster 2 and the block): 6 + 3, not 8 + 4
    assert metadata["iteration_1/proxy_results"]["trained"] == 6 and metadata["iteration_2/proxy_results"]["trained"] == 3
    assert metadata["iteration_2/predictor"]["runs_reused_from_parent"] == 0 and metadata["iteration_2/predictor"]["runs"] == 9
    for k in (1, 2):  # every candidate holds the block at those ratios, and varies super-cluster 2 and the block
        weights = pl.read_parquet(plan.candidates_path(k)).select("w_0", "w_1", "w_2").to_numpy()
        assert np.allclose(weights[:, 0] / weights[:, :2].sum(axis=1), state["frozen_ratios"][0])
        assert np.allclose(weights.sum(axis=1), 1.0) and np.ptp(weights[:, 2]) > 0
    # ClimbMix, the random baseline and RegMix's pick search the same space
    climbmix, _, _ = choose_climbmix(ClimbMixConfig(), plan, 2)
    assert climbmix[0] / climbmix[:2].sum() == pytest.approx(state["frozen_ratios"][0])
    randoms = np.array([run.weights for run in random_search_runs(plan, 2)])
    assert len(randoms) == 9 and np.allclose(randoms[:, 0] / randoms[:, :2].sum(axis=1), state["frozen_ratios"][0])
    assert "by searching again only super-clusters [2]" in continuation.describe(state)
    client = MlflowClient(local_tracking_uri(home))
    parents = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                 filter_string=f"tags.`climb.search_key` = '{plan.search_key}' and tags.`climb.iteration` = '1'")  # fmt: skip
    parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.tags["climb.continuation"] == "partial" and parent.data.tags["climb.searched_groups"] == "2"
    assert parent.data.tags["climb.frozen_groups"] == "0,1" and parent.data.metrics["prior_shift"] > 0.1

    # a forced full search still searches everything, from scratch
    full = search(home, instance, search_start="fresh")
    assert full["iteration_1/mixture_candidates"]["continuation_start"] == "fresh"
    assert full["iteration_1/proxy_results"]["trained"] == 8 and full["iteration_2/proxy_results"]["trained"] == 4


def test_a_vanished_super_cluster_alone_continues_and_says_why(home, instance, first_search):
    land_wave(home, "v2", drop_group=2)
    resources = {"climb": ClimbHomeResource(root=str(home.root)), "search": SearchSettings(**BASE),
                 "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    assets = build_search_assets(1)
    started = dg.materialize(assets, selection=[dg.AssetKey("proxy_tokenizer"), dg.AssetKey(["iteration_1", "mixture_candidates"])],
                             resources=resources, instance=instance)  # fmt: skip
    (start,) = started.asset_materializations_for_node("iteration_1__mixture_candidates")
    start = {k: v.value for k, v in start.metadata.items()}
    # its fine clusters are pruned: nothing else moved, so the old runs, carried without it, are refreshed
    assert start["continuation_start"] == "refresh" and start["continuation_prior_shift"] > 0.1
    assert "(vanished: [2])" in start["continuation_reasons"]
    assert "only a vanished share moved" in start["continuation_reasons"]
    assert start["n"] == 6 and start["continuation_evidence_runs"] + start.get("continuation_evidence_dropped", 0) == 12
    assert start["continuation_evidence_runs"] > 0


def test_old_runs_are_carried_into_recut_super_clusters_through_their_fine_clusters():
    # old: super-cluster 0 = fine clusters 0 (30 tokens) + 1 (10), super-cluster 1 = fine cluster 2 (60)
    old = pl.DataFrame({"super_cluster_id": [0, 0, 1], "cluster_id": [0, 1, 2], "n_tokens": [30, 10, 60],
                        "prior": [0.5, 0.5, 0.5]})  # fmt: skip
    # new: fine cluster 1 moved to super-cluster 1, and a new super-cluster 3 of a new fine cluster 4
    new = pl.DataFrame({"super_cluster_id": [0, 1, 1, 3], "cluster_id": [0, 1, 2, 4], "n_tokens": [30, 10, 60, 40],
                        "prior": [0.3, 0.3, 0.3, 0.4]})  # fmt: skip
    T, old_groups, new_groups = continuation.carry_matrix(old, new)
    assert old_groups == [0, 1] and new_groups == [0, 1, 3]
    assert np.allclose(T, [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0]])
    carried, kept = continuation.carry(np.array([[0.5, 0.5], [1.0, 0.0]]), T)
    assert np.allclose(carried, [[0.375, 0.625, 0.0], [0.75, 0.25, 0.0]]) and np.allclose(kept, 1.0)
    change = continuation.structure_change(old, new)
    assert change["appeared"] == [3] and change["vanished"] == [] and change["super_clusters_recut"]
    assert change["prior_shift"] == pytest.approx(0.5 * (0.075 + 0.325 + 0.4))
    # fine cluster 1 pruned now: a quarter of old super-cluster 0 is gone, counted as moved, and a run loses it
    pruned = new.filter(pl.col("cluster_id") != 1)
    carried, kept = continuation.carry(np.array([[1.0, 0.0]]), continuation.carry_matrix(old, pruned)[0])
    assert np.allclose(kept, 0.75) and np.allclose(carried, [[1.0, 0.0, 0.0]])
    assert continuation.structure_change(old, pruned)["old_prior_kept"] == pytest.approx(0.875)
    same = continuation.structure_change(old, old)
    assert same["prior_shift"] == pytest.approx(0.0) and not same["super_clusters_recut"]


def test_the_super_clusters_that_moved_are_searched_again_within_a_share_else_the_search_restarts():
    settings = SearchSettings(**BASE)  # continue_max_prior_shift 0.1, continue_max_changed_share 0.5
    prior = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    # super-cluster 4 vanished into 3 (its fine clusters moved there, a tenth of the old prior pruned with it): 3
    # moved, and is searched again alone
    carried = np.array([0.18, 0.18, 0.18, 0.36, 0.0])
    merged = np.array([0.15, 0.15, 0.15, 0.55])
    change = {"prior_shift": 0.5 * (np.abs(carried[:4] - merged).sum() + 0.1), "appeared": [], "vanished": [4]}
    assert continuation.moved_groups(carried[:4], merged, 0.1) == [3]
    start, moved, reasons = continuation.structure_decision(change, carried[:4], merged, [0, 1, 2, 3], settings)
    assert (start, moved) == ("partial", [3]) and "(vanished: [4]; moved: [3])" in reasons[0]
    # a super-cluster that appeared is always searched again, however small its share
    appeared = np.array([0.25, 0.25, 0.25, 0.25, 0.0])
    assert continuation.moved_groups(appeared, np.array([0.24, 0.24, 0.24, 0.24, 0.04]), 0.1) == [4]
    # only a vanished share moved: the rest agrees once renormalised, so the search is refreshed, and says why
    pruned = np.array([0.1, 0.1, 0.2, 0.2])
    start, moved, reasons = continuation.structure_decision({"prior_shift": 0.4, "appeared": [], "vanished": [4]},
                                                            pruned, pruned / pruned.sum(), [0, 1, 2, 3], settings)  # fmt: skip
    assert (start, moved) == ("refresh", []) and "only a vanished share moved" in reasons[1]
    # three of five moved > half: the whole search restarts
    shuffled = np.array([0.4, 0.05, 0.35, 0.1, 0.1])
    start, moved, reasons = continuation.structure_decision({"prior_shift": 0.3, "appeared": [], "vanished": []},
                                                            prior, shuffled, [0, 1, 2, 3, 4], settings)  # fmt: skip
    assert start == "restart" and len(moved) == 3 and "3 of 5 super-clusters moved > continue_max_changed_share 0.5" in reasons[1]
    assert continuation.structure_decision({"prior_shift": 0.05}, prior, prior, [0, 1, 2, 3, 4], settings)[0] == "refresh"
    # 0 turns the partial search off
    off = SearchSettings(**(BASE | {"continue_max_changed_share": 0.0}))
    assert continuation.structure_decision(change, carried[:4], merged, [0, 1, 2, 3], off)[0] == "restart"
    # its proxies: the schedule times the share of dimensions searched (moved + the block), at least 6 then 1
    assert continuation.partial_schedule([16, 8, 8], 1, 20) == [6, 1, 1]
    assert continuation.partial_schedule([64, 32, 16], 4, 20) == [16, 8, 4]
    state = {"start": "partial", "searched_groups": [7], "frozen_groups": [1, 2, 3]}
    assert [continuation.proxy_count(state, [16, 8, 8], k, 0.25) for k in (1, 2, 3)] == [8, 4, 4]
    # the space: the block's weight shared at the frozen ratios; reducing undoes expanding
    space = continuation.search_space(state | {"frozen_ratios": [0.5, 0.25, 0.25]}, [1, 2, 3, 7])
    full = space.expand(np.array([[0.3, 0.7], [0.9, 0.1]]))
    assert np.allclose(full, [[0.35, 0.175, 0.175, 0.3], [0.05, 0.025, 0.025, 0.9]])
    assert np.allclose(space.reduce(full), [[0.3, 0.7], [0.9, 0.1]]) and space.reduce(full[0]).shape == (2,)
    identity = continuation.search_space({"start": "refresh"}, [1, 2, 3, 7])
    assert identity.expand(full) is full and identity.reduce(full) is full


def test_a_refresh_that_does_not_rank_drops_the_carried_runs_and_searches_at_full_size():
    y = np.array([-3.5, -3.4, -3.3, -3.2, -3.1, -3.0])
    kept = continuation.refresh_verdict(y - 0.1 + np.array([0.0, 0.12, -0.12, 0.0, 0.0, 0.0]), y, 0.5, 0.05)  # a swap
    assert kept["decision"] == "reuse" and kept["refresh_spearman"] == pytest.approx(0.9429, abs=1e-4)
    assert kept["refresh_p_value"] == pytest.approx(6 / 720, abs=1e-4)  # orderings with Spearman >= 0.943: 1 + 5 swaps
    assert kept["offset"] == pytest.approx(0.1) and kept["refresh_rmse_after_shift"] < kept["refresh_rmse"]
    reversed_ranking = continuation.refresh_verdict(y[::-1].copy(), y, 0.5, 0.05)
    assert reversed_ranking["decision"] == "restart" and reversed_ranking["refresh_spearman"] == -1.0
    assert "Spearman -1.000 < continue_min_spearman 0.5" in reversed_ranking["refresh_reasons"][0]
    assert continuation.refresh_verdict(np.full(6, -3.0), y, -1.0, 1.0)["decision"] == "restart"  # no ranking at all
    # four runs with one pair swapped rank as well as that one time in six by chance: not evidence enough
    chance = continuation.refresh_verdict(np.array([-3.4, -3.2, -3.3, -3.1]), y[:4], 0.5, 0.05)
    assert chance["refresh_spearman"] == pytest.approx(0.8) and chance["refresh_p_value"] == pytest.approx(4 / 24, abs=1e-4)
    assert chance["decision"] == "restart" and "p = 0.167 > continue_max_p_value 0.05" in chance["refresh_reasons"][0]
    for state, counts in (({"start": "refresh", **kept}, [6, 1, 1]), ({"start": "refresh", **reversed_ranking}, [6, 8, 8]),
                          ({"start": "restart"}, [16, 8, 8]), ({"start": "first"}, [16, 8, 8])):  # fmt: skip
        assert [continuation.proxy_count(state, [16, 8, 8], k, 0.25) for k in (1, 2, 3)] == counts
    # the paper's schedule keeps a quarter of every iteration
    assert continuation.continued_schedule([64, 32, 16], 0.25) == [16, 8, 4]


def test_the_opt_in_search_sensor_tokenizes_new_shards_then_requests_one_search_per_version(home, instance, climb_resource):
    search_job = dg.define_asset_job("search_job", selection=dg.AssetSelection.assets(*build_search_assets(1)))
    tokenize_job = dg.define_asset_job("tokenize_shard_job", selection=dg.AssetSelection.assets(proxy_token_files),
                                       partitions_def=shard_partitions)  # fmt: skip
    sensor = build_search_sensor(search_job, tokenize_job)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED  # it costs proxies: the user turns it on
    settings = SearchSettings(**BASE)

    def tick():
        resources = {"climb": climb_resource, "search": settings}
        return sensor(dg.build_sensor_context(instance=instance, resources=resources))

    assert "no super-clusters yet" in tick().skip_message
    write_search_state(home)
    (request,) = tick().run_requests  # no tokenizer yet: the search trains it and tokenizes every shard itself
    assert request.run_key == "search-v1:attempt-1" and request.job_name == "search_job"
    assert request.tags["climb/super_cluster_version"] == "v1"

    plan = SearchPlan(home, settings)  # the search's kept tokenizer and its token files, as the first search left them
    tokenizer, _, _ = ensure_proxy_tokenizer(plan)
    ensure_token_files(home, tokenizer)
    land_wave(home, "v2")
    requests = tick().run_requests  # the new wave's shard is tokenized first, in its own partition's run
    assert [(r.job_name, r.partition_key) for r in requests] == [("tokenize_shard_job", "shard-w2")]
    assert requests[0].run_key == f"tokens-{tokenizer_sha256(tokenizer)[:16]}-shard-w2:attempt-1"
    ensure_token_files(home, tokenizer)  # what that run does
    (request,) = tick().run_requests
    assert request.run_key == "search-v2:attempt-1" and request.job_name == "search_job"
