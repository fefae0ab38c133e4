"""Proxies as parallel steps: with two ``gpu`` slots every proxy is its own process-isolated step, two train at once on
two different leased devices (CPU stand-ins here), and the results are identical to the one-slot run."""

import dagster as dg
import numpy as np
import polars as pl
import pytest

from climb_assets.cli import run_job
from climb_assets.definitions import defs
from climb_assets.home import ClimbHome
from climb_assets.instance import prepare_instance
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import SearchSettings
from climb_assets.search.tracking import local_tracking_uri
from climb_assets.tags import GPU_POOL
from climb_assets_tests.conftest import TINY_SEARCH
from climb_assets_tests.test_resume import write_search_state

CANDIDATES = 4
# one thread per proxy in both runs, so the two runs compute bit for bit the same thing
SETTINGS = {**TINY_SEARCH, "proxies_per_iteration": [CANDIDATES], "token_budget": 12_000, "base_token_budget": 4_000,
            "max_repeats": 20.0, "num_threads": 1}  # fmt: skip
ITERATION_1 = [["proxy_tokenizer"], ["proxy_base_checkpoint"], ["iteration_1", "mixture_candidates"],
               ["iteration_1", "proxy_results"]]  # fmt: skip


def run_iteration_1(home: ClimbHome, slots: int, settings: dict = SETTINGS):
    """Iteration 1 of the search through the CLI's job runner with ``slots`` gpu slots; the results table and, per
    proxy step, its start, end and output metadata (device, pid)."""
    run_config = {"resources": {
        "climb": {"config": {"root": str(home.root)}},
        "search": {"config": settings},
        "mlflow_tracking": {"config": {"tracking_uri": local_tracking_uri(home)}},
    }}  # fmt: skip
    with prepare_instance(home, slots) as instance:
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count == slots
        outcome = run_job(defs, instance, "search_job", run_config, gpu_slots=slots,
                          asset_selection=[dg.AssetKey(k) for k in ITERATION_1])  # fmt: skip
        steps: dict[str, dict] = {}
        for entry in instance.all_logs(outcome.run_id):
            event = entry.dagster_event
            if event is None or not (entry.step_key or "").startswith("iteration_1__proxy_results.iteration_1_proxy_train["):
                continue
            step = steps.setdefault(entry.step_key, {})
            if event.event_type == dg.DagsterEventType.STEP_START:
                step["start"] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                step["end"] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_OUTPUT:
                step["metadata"] = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    results = pl.read_parquet(SearchPlan(home, SearchSettings(**settings)).results_path(1))
    return results, steps


@pytest.fixture
def two_homes(tmp_path, monkeypatch):
    homes = []
    for name in ("one-slot", "two-slots"):
        home = ClimbHome(tmp_path / name).ensure()
        write_search_state(home)
        homes.append(home)
    monkeypatch.setenv("DAGSTER_HOME", str(homes[0].dagster))  # prepare_instance sets it; restored afterwards
    return homes


def test_two_slots_train_proxies_side_by_side_with_identical_results(two_homes):
    one, two = two_homes
    serial, serial_steps = run_iteration_1(one, 1)
    parallel, steps = run_iteration_1(two, 2)

    # every proxy is its own step, each ran on a leased device, and two devices were in use at the same time
    assert len(steps) == len(serial_steps) == CANDIDATES
    devices = {s["metadata"]["device"] for s in steps.values()}
    assert devices == {"cpu-slot-0", "cpu-slot-1"}
    assert len({s["metadata"]["pid"] for s in steps.values()}) == CANDIDATES  # one process per step
    spans = sorted((s["start"], s["end"]) for s in steps.values())
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:])), spans
    assert {s["metadata"]["device"] for s in serial_steps.values()} == {"cpu-slot-0"}

    # the same proxies, the same results, bit for bit
    columns = ["candidate_id", "fingerprint", "objective", "bpb", "tokens_seen"]
    assert parallel.select(columns).equals(serial.select(columns))


def test_embedding_and_base_checkpoint_steps_take_a_device_lease(home, climb_resource, instance):
    """Every gpu-pool step holds its own device: with cpu-slot-0 held elsewhere, both land on cpu-slot-1."""
    from climb_assets.devices import device_lease
    from climb_assets.embed.assets import EmbeddingModelResource, embeddings
    from climb_assets.lake import raw_shard_path, raw_shards_dir
    from climb_assets.search.assets import build_search_assets
    from climb_assets.search.tracking import MlflowTracking

    instance.event_log_storage.set_concurrency_slots(GPU_POOL, 2)
    write_search_state(home)
    shard = sorted(p.stem for p in raw_shards_dir(home).glob("*.parquet"))[0]
    instance.add_dynamic_partitions("raw_shards", [shard])
    assert raw_shard_path(home, shard).exists()
    resources = {"climb": climb_resource, "embedder": EmbeddingModelResource(model="minilm", max_seq_length=32),
                 "search": SearchSettings(**SETTINGS), "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    with device_lease(home, 2) as held:
        assert held.name == "cpu-slot-0"
        embedded = dg.materialize([embeddings], partition_key=shard, resources=resources, instance=instance)
        base = dg.materialize(build_search_assets(1), selection=[dg.AssetKey(k) for k in ITERATION_1[:3]],
                              resources=resources, instance=instance)  # fmt: skip
    embed_meta = embedded.asset_materializations_for_node("embeddings")[0].metadata
    base_meta = base.asset_materializations_for_node("proxy_base_checkpoint")[0].metadata
    assert embed_meta["device_lease"].value == "cpu-slot-1"
    assert base_meta["device"].value == "cpu-slot-1" and base_meta["torch_device"].value == "cpu"


def test_the_base_checkpoint_embeds_documents_in_the_models_own_space(home, climb_resource, instance):
    """``proxy-lm``: the shard embedded with the base's mean-pooled hidden states, named by the checkpoint's hash."""
    import hashlib

    from climb_assets.embed.assets import EmbeddingModelResource, embeddings
    from climb_assets.embed.encode import read_embeddings
    from climb_assets.lake import embeddings_path, newest_base_checkpoint, raw_shard_path, raw_shards_dir
    from climb_assets.lm.train import load_checkpoint
    from climb_assets.search.assets import build_search_assets
    from climb_assets.search.tracking import MlflowTracking

    write_search_state(home)
    shard = sorted(p.stem for p in raw_shards_dir(home).glob("*.parquet"))[0]
    instance.add_dynamic_partitions("raw_shards", [shard])
    resources = {"climb": climb_resource, "embedder": EmbeddingModelResource(model="proxy-lm"),
                 "search": SearchSettings(**SETTINGS), "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home))}  # fmt: skip
    early = dg.materialize([embeddings], partition_key=shard, resources=resources, instance=instance, raise_on_error=False)
    (failure,) = [event for event in early.all_events if event.is_step_failure]
    assert "no base checkpoint" in failure.step_failure_data.error.to_string()
    assert dg.materialize(build_search_assets(1), selection=[dg.AssetKey(k) for k in ITERATION_1[:3]],
                          resources=resources, instance=instance).success  # fmt: skip
    embedded = dg.materialize([embeddings], partition_key=shard, resources=resources, instance=instance)
    checkpoint = newest_base_checkpoint(home)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    assert embedded.asset_materializations_for_node("embeddings")[0].metadata["model"].value == f"proxy-lm-{digest}"
    vectors = read_embeddings(embeddings_path(home, shard))
    docs = pl.read_parquet(raw_shard_path(home, shard), columns=["doc_id"])
    assert vectors.model == f"proxy-lm-{digest}" and vectors.ids.tolist() == docs["doc_id"].to_list()
    assert vectors.vectors.shape[1] == load_checkpoint(checkpoint)[0].config.n_embd
    assert np.allclose(np.linalg.norm(vectors.vectors.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert len(np.unique(vectors.vectors, axis=0)) > len(docs) // 2  # distinct texts, distinct places
