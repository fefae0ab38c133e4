"""No cached result is reused for work it does not describe.

A tiny search state is materialized once; then every ingredient of the fingerprint is changed in turn (a training
setting, the seed, the base checkpoint, the tokenizer, the target file, the super-clusters, the code's algorithm
version) and the test asserts that exactly the work that depends on it is redone, that the new records describe the
new settings, and that changing nothing redoes nothing.
"""

import json
import logging
import threading

import dagster as dg
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from climb_assets.lake import proxy_markers_dir
from climb_assets.resources import ClimbHomeResource
from climb_assets.search import keys as fingerprint_module
from climb_assets.search.assets import build_search_assets, ensure_base_checkpoint, ensure_proxy_tokenizer
from climb_assets.search.fanout import RunLog, TrainingRun, train_or_reuse
from climb_assets.search.keys import SearchPlan, fingerprint
from climb_assets.search.settings import SearchSettings
from climb_assets.search.state import search_inputs
from climb_assets.search.tracking import MlflowTracking, local_tracking_uri
from climb_assets_tests.conftest import TINY_SEARCH
from climb_assets_tests.test_resume import write_search_state

BASE = {**TINY_SEARCH, "proxies_per_iteration": [3], "token_budget": 2_000, "base_token_budget": 2_000,
        "max_repeats": 20.0, "predictor_folds": 3}  # fmt: skip
ITERATION_1 = [["proxy_tokenizer"], ["proxy_base_checkpoint"], ["iteration_1", "mixture_candidates"],
               ["iteration_1", "proxy_results"], ["iteration_1", "predictor"]]  # fmt: skip


def materialize(home, instance, **changes) -> dict[str, dict]:
    """Run iteration 1 of the search with ``changes`` on top of the tiny settings; each asset's metadata."""
    resources = {
        "climb": ClimbHomeResource(root=str(home.root)),
        "search": SearchSettings(**(BASE | changes)),
        "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home)),
    }
    result = dg.materialize(
        build_search_assets(1), selection=[dg.AssetKey(k) for k in ITERATION_1], resources=resources, instance=instance
    )
    assert result.success
    return {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("iteration_1__proxy_results")
        + result.asset_materializations_for_node("proxy_tokenizer")
        + result.asset_materializations_for_node("proxy_base_checkpoint")
    }


def proxy_records(home, plan: SearchPlan) -> list[dict]:
    results = pl.read_parquet(plan.results_path(1))
    return [json.loads((proxy_markers_dir(home) / f"{k}.json").read_text()) for k in results["fingerprint"]]


def proxy_run_count(home) -> int:
    client = MlflowClient(local_tracking_uri(home))
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("climb-search/")]
    return len([r for r in client.search_runs(experiments, max_results=1000) if "climb.fingerprint" in r.data.tags])


@pytest.fixture
def searched(home, instance):
    write_search_state(home)
    first = materialize(home, instance)
    assert first["iteration_1/proxy_results"]["trained"] == 3
    return home, instance


def test_nothing_changed_nothing_redone(searched):
    home, instance = searched
    plan = SearchPlan(home, SearchSettings(**BASE))
    before = {p.name: p.stat().st_mtime_ns for p in proxy_markers_dir(home).glob("*.json")}
    runs = proxy_run_count(home)
    again = materialize(home, instance)
    assert again["proxy_tokenizer"]["reused"] and again["proxy_base_checkpoint"]["reused"]
    assert (again["iteration_1/proxy_results"]["trained"], again["iteration_1/proxy_results"]["reused"]) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in proxy_markers_dir(home).glob("*.json")} == before
    assert proxy_run_count(home) == runs
    assert again["iteration_1/proxy_results"]["search_key"] == plan.search_key


def test_a_new_token_budget_retrains_every_proxy_and_records_it(searched):
    """The reported scenario: a smaller budget must not read back results trained on the larger one."""
    home, instance = searched
    old_plan = SearchPlan(home, SearchSettings(**BASE))
    old = proxy_records(home, old_plan)
    runs = proxy_run_count(home)
    changed = materialize(home, instance, token_budget=1_000, base_token_budget=1_500)
    assert changed["proxy_tokenizer"]["reused"] and not changed["proxy_base_checkpoint"]["reused"]
    assert changed["iteration_1/proxy_results"]["trained"] == 3
    new_plan = SearchPlan(home, SearchSettings(**(BASE | {"token_budget": 1_000, "base_token_budget": 1_500})))
    assert new_plan.search_key != old_plan.search_key and new_plan.base_key != old_plan.base_key
    new = proxy_records(home, new_plan)
    assert all(r["settings"]["token_budget"] == 1_000 and 1_000 <= r["tokens_seen"] < 2_000 for r in new)
    assert all(r["tokens_seen"] >= 2_000 for r in old)
    assert {r["mlflow_run_id"] for r in new}.isdisjoint(r["mlflow_run_id"] for r in old)
    assert proxy_run_count(home) == runs + 3
    # the old search's results and records are still on disk, untouched, and the old key finds them again
    assert proxy_records(home, old_plan) == old
    back = materialize(home, instance)
    assert back["iteration_1/proxy_results"]["trained"] == 0


@pytest.mark.parametrize(
    ("change", "redone"),
    [
        ({"seed": 1}, {"tokenizer", "base", "proxies"}),
        ({"lr": 1e-3}, {"base", "proxies"}),
        ({"block_size": 32}, {"base", "proxies"}),
        ({"base_token_budget": 0}, {"proxies"}),  # proxies from scratch instead of from the base
        ({"tokenizer_vocab_size": 300}, {"tokenizer", "base", "proxies"}),
        # a new tokenizer on request; trained on the same lake it has the same bytes, so everything keyed by its
        # content is reused (on a grown lake it differs, and the base and proxies follow)
        ({"tokenizer_generation": 1}, {"tokenizer"}),
        ({"max_target_texts": 3}, {"proxies"}),
        ({"num_threads": 1}, set()),  # speed only: the same results
    ],
)
def test_each_setting_redoes_exactly_what_depends_on_it(searched, change, redone):
    home, instance = searched
    metadata = materialize(home, instance, **change)
    assert (not metadata["proxy_tokenizer"]["reused"]) == ("tokenizer" in redone)
    assert (not metadata["proxy_base_checkpoint"].get("reused", False)) == ("base" in redone or change.get("base_token_budget") == 0)
    assert metadata["iteration_1/proxy_results"]["trained"] == (3 if "proxies" in redone else 0)


def test_a_new_target_file_retrains_proxies_but_not_the_base(searched):
    home, instance = searched
    target = home.targets / "target.jsonl"
    extra = json.dumps({"text": "A new held-out document: what the user cares about changed, so must the proxies."})
    target.write_text(extra + "\n" + target.read_text())
    metadata = materialize(home, instance)
    assert metadata["proxy_base_checkpoint"]["reused"]
    assert metadata["iteration_1/proxy_results"]["trained"] == 3


def test_new_super_clusters_start_a_new_search(searched):
    home, instance = searched
    old_key = SearchPlan(home, SearchSettings(**BASE)).search_key
    table = home.lake_dir("super_clusters") / "super_clusters.parquet"
    pl.read_parquet(table).with_columns(version=pl.lit("v2")).write_parquet(table)
    metadata = materialize(home, instance)
    assert metadata["proxy_tokenizer"]["reused"]  # the tokenizer stays; its content hash is in every key below
    assert metadata["iteration_1/proxy_results"]["trained"] == 3
    assert metadata["iteration_1/proxy_results"]["search_key"] != old_key
    # one lineage (same settings, tokenizer and target): both cluster versions' searches side by side in one experiment
    client = MlflowClient(local_tracking_uri(home))
    plan = SearchPlan(home, SearchSettings(**BASE))
    experiment = client.get_experiment_by_name(MlflowTracking().experiment_name(plan.lineage_key))
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["climb.lineage"] == plan.lineage_key
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "climb.iteration" in r.data.tags
               and "mlflow.parentRunId" not in r.data.tags]  # fmt: skip
    assert {(r.data.tags["climb.cluster_version"], r.data.tags["climb.search_key"]) for r in parents} == {
        ("v1", old_key), ("v2", plan.search_key)}


def test_a_new_wave_keeps_the_tokenizer_and_tokenizes_only_its_new_shards(searched):
    home, instance = searched
    before = {p.name: p.stat().st_mtime_ns for p in (home.lake / "tokens").rglob("*.bin")}
    raw = home.lake_dir("raw_shards")
    wave = pl.read_parquet(raw / "shard-0.parquet").with_columns(
        doc_id=pl.col("doc_id") + "-w2", shard=pl.lit("shard-w2"), text=pl.col("text").str.reverse()
    )  # fmt: skip
    wave.write_parquet(raw / "shard-w2.parquet")
    members = home.lake_dir("super_clusters") / "documents.parquet"
    old = pl.read_parquet(members)
    new_members = wave.select("doc_id").join(old.with_columns(doc_id=pl.col("doc_id") + "-w2"), on="doc_id")
    pl.concat([old, new_members]).write_parquet(members)  # the new wave joins the same super-clusters

    resources = {"climb": ClimbHomeResource(root=str(home.root)), "search": SearchSettings(**BASE),
                 "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    result = dg.materialize(build_search_assets(1), selection=[dg.AssetKey(k) for k in ITERATION_1[:1]],
                            resources=resources, instance=instance)  # fmt: skip
    made = {}
    for event in result.get_asset_materialization_events():
        made.setdefault(event.asset_key.to_user_string(), []).append(event.materialization)
    (tokenizer,) = made["proxy_tokenizer"]
    assert tokenizer.metadata["reused"].value and tokenizer.metadata["shards_tokenized_here"].value == 1
    assert [m.partition for m in made["proxy_token_files"]] == ["shard-w2"]  # recorded as the new shard's partition
    after = {p.name: p.stat().st_mtime_ns for p in (home.lake / "tokens").rglob("*.bin")}
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {"shard-w2.bin"}


def test_a_missing_membership_file_is_an_error_not_a_key(home):
    write_search_state(home)
    (home.lake_dir("super_clusters") / "documents.parquet").unlink()  # e.g. mid-swap of the directory
    with pytest.raises(dg.Failure, match="no super-cluster membership file"):
        SearchPlan(home, SearchSettings(**BASE)).membership_sha


def test_a_new_algorithm_version_retrains(searched, monkeypatch):
    home, instance = searched
    monkeypatch.setitem(fingerprint_module.ALGORITHM_VERSIONS, "proxy", "proxy-test-bump")
    metadata = materialize(home, instance)
    assert not metadata["proxy_base_checkpoint"]["reused"]
    assert metadata["iteration_1/proxy_results"]["trained"] == 3


def test_predictor_refit_with_other_settings_does_not_collide_in_mlflow(searched):
    """MLflow refuses to change a logged param: a new search key gets its own parent run instead."""
    home, instance = searched
    materialize(home, instance, predictor_min_child_samples=1, predictor_folds=2)
    client = MlflowClient(local_tracking_uri(home))
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("climb-search/")]
    parents = [r for r in client.search_runs(experiments) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and len({r.data.tags["climb.search_key"] for r in parents}) == 2
    assert {r.data.params["predictor.min_child_samples"] for r in parents} == {"1", "2"}
    # other predictor settings are another lineage, so another experiment
    assert len({r.info.experiment_id for r in parents}) == 2


def test_fingerprints_are_exact_and_order_free():
    assert fingerprint({"a": 1, "b": [0.1, 0.2]}) == fingerprint({"b": [0.1, 0.2], "a": 1})
    assert fingerprint({"w": 0.30000000000000004}) != fingerprint({"w": 0.3})
    with pytest.raises(ValueError, match="non-finite"):
        fingerprint({"w": float("nan")})


def test_two_attempts_of_one_run_train_it_once_and_fail_nothing(home, instance):
    """A retry while the first attempt is alive, or two searches sharing a run: the second waits and reuses."""
    write_search_state(home)
    resources = {"climb": ClimbHomeResource(root=str(home.root)), "search": SearchSettings(**BASE),
                 "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    assert dg.materialize(build_search_assets(1), selection=[dg.AssetKey(k) for k in ITERATION_1[:2]],
                          resources=resources, instance=instance).success  # fmt: skip
    plan = SearchPlan(home, SearchSettings(**BASE))
    _, corpus = search_inputs(plan)
    run = TrainingRun("twice", corpus.groups, corpus.natural_weights(), plan.search.proxy_settings(),
                      plan.search.proxy_seed(), plan.base_path)  # fmt: skip
    tracking = resources["mlflow_tracking"]
    client = tracking.client(home)
    sink = RunLog(tracking, client, tracking.experiment_id(client, home, plan.lineage_key), None,
                  plan.mlflow_tags(), logging.getLogger("test"))  # fmt: skip
    start = threading.Barrier(2)
    records: list[dict] = []

    def attempt() -> None:
        start.wait()
        records.append(train_or_reuse(plan, run, proxy_markers_dir(home), sink))

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["reused"] for r in records) == [False, True]
    assert records[0]["fingerprint"] == records[1]["fingerprint"] and records[0]["metrics"] == records[1]["metrics"]
    runs = client.search_runs([sink.experiment], filter_string=f"tags.`climb.fingerprint` = '{records[0]['fingerprint']}'")
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_two_searches_sharing_a_tokenizer_and_a_base_make_each_once(home, instance):
    """Two searches launched together in one home (two targets share the tokenizer and the base): the second of each
    pair waits for the first and reuses its file, instead of training its own and overwriting it under a key the
    first search's proxies already hashed."""
    write_search_state(home)
    plan = SearchPlan(home, SearchSettings(**BASE))

    def together(make) -> list:
        start, outcomes, waits = threading.Barrier(2), [], []

        def attempt() -> None:
            start.wait()
            outcomes.append(make(waits.append))

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes, waits

    tokenizers, waits = together(lambda on_wait: ensure_proxy_tokenizer(plan, on_wait))
    assert sorted(reused for _, _, reused in tokenizers) == [False, True] and len(waits) == 1
    assert tokenizers[0][1] == tokenizers[1][1]  # one training record, read back by the waiter

    bases, waits = together(lambda on_wait: ensure_base_checkpoint(plan, 1, on_wait))
    assert sorted(reused for _, reused, _ in bases) == [False, True] and len(waits) == 1
    trained = next(record for record, reused, _ in bases if not reused)
    assert all(record == trained for record, _, _ in bases)
    assert [lease["device"] for _, reused, lease in bases if not reused] == ["cpu-slot-0"]
