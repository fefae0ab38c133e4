"""Clusters at scale: fit on a bounded sample, per-shard assignments keyed by centroid version, stable ids."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import faiss
import numpy as np
import polars as pl
import pytest

from climb_assets.cluster.lake import (
    FitSettings,
    assign_shard,
    current_version,
    fit_centroids,
    scan_assignments,
    unassigned_shards,
)
from climb_assets.cluster.sample import draw_sample, npz_member_memmap, sample_rows
from climb_assets.embed.encode import write_embeddings
from climb_assets.lake import assignment_path
from climb_assets.quality.merge import super_cluster_table, text_sample_ids
from climb_assets_tests.conftest import retry_until_given_up

DIM, N_BLOBS, SHARD_DOCS = 16, 6, 300


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def centers() -> np.ndarray:
    return unit(np.random.default_rng(7).standard_normal((N_BLOBS + 1, DIM)))  # the last one is a "new kind"


def write_shard(home, name: str, centers: np.ndarray, seed: int, n: int = SHARD_DOCS) -> None:
    rng = np.random.default_rng(seed)
    vectors = unit(centers[rng.integers(0, len(centers), n)] + 0.05 * rng.standard_normal((n, DIM)))
    write_embeddings(home.lake_dir("embeddings") / f"{name}.npz", [f"{name}-{i}" for i in range(n)], vectors, "m")


def fingerprints(paths) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths}


SETTINGS = FitSettings(k=N_BLOBS, seed=0, nredo=3, max_points_per_centroid=40)  # sample: 240 of 900+ docs


def test_sample_rows_are_uniform_deterministic_and_exactly_the_sample():
    counts = [1000, 0, 250, 4000]
    a, b = sample_rows(counts, 500, seed=3), sample_rows(counts, 500, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert sum(len(x) for x in a) == 500 and len(a[1]) == 0
    assert all((x < n).all() and (np.diff(x) > 0).all() for x, n in zip(a, counts, strict=True) if len(x))
    assert not all(np.array_equal(x, y) for x, y in zip(a, sample_rows(counts, 500, seed=4), strict=True))
    with pytest.raises(ValueError, match="outside"):
        sample_rows(counts, 6000, seed=0)


def test_draw_sample_reads_only_the_sampled_rows(home, centers):
    for i in range(8):
        write_shard(home, f"s{i}", centers[:N_BLOBS], seed=i, n=5000)  # 40k docs x 16 dims
    paths = sorted(home.lake_dir("embeddings").glob("*.npz"))
    tracemalloc.start()
    sample, rows_read = draw_sample(paths, 1000, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows_read == 1000 and sample.shape == (1000, DIM) and sample.dtype == np.float32
    corpus_bytes = 40_000 * DIM * 4
    assert peak < corpus_bytes / 4, (peak, corpus_bytes)  # the maps are not copied; only the sample is held
    rows = sample_rows([5000] * 8, 1000, seed=0)
    expected = np.concatenate([np.asarray(npz_member_memmap(p))[r] for p, r in zip(paths, rows, strict=True)])
    assert np.array_equal(sample, expected.astype(np.float32))


def test_new_shard_is_assigned_alone_and_touches_no_other_file(home, centers):
    for i in range(3):
        write_shard(home, f"old-{i}", centers[:N_BLOBS], seed=i)
    version, info = fit_centroids(home, SETTINGS)
    assert info["sample_rows"] == info["rows_read"] == N_BLOBS * 40 < info["docs"]
    assert unassigned_shards(home) == ["old-0", "old-1", "old-2"]
    for shard in unassigned_shards(home):
        assign_shard(home, shard)
    old = sorted(p for p in (home.lake_dir("clusters") / version / "assignments").glob("*.parquet"))
    before = fingerprints(old)

    write_shard(home, "new-0", centers[:N_BLOBS], seed=10)
    assert unassigned_shards(home) == ["new-0"]
    with pytest.raises(FileNotFoundError, match="no assignment"):
        scan_assignments(home, version)
    result = assign_shard(home, "new-0")

    assert fingerprints(old) == before
    assert current_version(home) == version and result["centroid_version"] == version
    assert result["docs"] == SHARD_DOCS and 0.5 < result["drift"] < 1.25
    frame = pl.read_parquet(assignment_path(home, version, "new-0"))
    assert frame["doc_id"].to_list() == [f"new-0-{i}" for i in range(SHARD_DOCS)]
    assert scan_assignments(home, version).collect().height == 4 * SHARD_DOCS


def test_new_kind_of_text_shows_as_drift(home, centers):
    write_shard(home, "old-0", centers[:N_BLOBS], seed=0)
    fit_centroids(home, SETTINGS)
    write_shard(home, "alien", centers[N_BLOBS:], seed=5)
    assert assign_shard(home, "alien")["drift"] > 1.25


def test_refit_keeps_ids_stable_and_makes_every_shard_stale(home, centers):
    for i in range(3):
        write_shard(home, f"old-{i}", centers[:N_BLOBS], seed=i)
    first, _ = fit_centroids(home, SETTINGS)
    for shard in unassigned_shards(home):
        assign_shard(home, shard)
    second, info = fit_centroids(home, FitSettings(k=N_BLOBS, seed=1, nredo=3, max_points_per_centroid=40))
    assert second != first and second.startswith("v0002-") and current_version(home) == second
    assert info["previous_version"] == first and info["clusters_with_new_id"] == 0
    assert unassigned_shards(home) == ["old-0", "old-1", "old-2"]  # stale under the new centroids
    for shard in unassigned_shards(home):
        assign_shard(home, shard)
    old = pl.read_parquet(home.lake_dir("clusters") / first / "assignments" / "*.parquet")
    new = scan_assignments(home, second).collect()
    joined = old.join(new, on="doc_id", suffix="_new")
    assert joined.height == old.height and (joined["cluster_id"] == joined["cluster_id_new"]).mean() > 0.99


def test_the_current_version_is_one_file_replaced_by_a_rename(home, centers):
    write_shard(home, "old-0", centers[:N_BLOBS], seed=0)
    first, _ = fit_centroids(home, SETTINGS)
    assign_shard(home, "old-0")
    pointer = home.lake_dir("clusters") / "CURRENT"
    before = pointer.stat().st_ino
    second, _ = fit_centroids(home, FitSettings(k=N_BLOBS, seed=1, nredo=3, max_points_per_centroid=40))
    entries = {p.name for p in home.lake_dir("clusters").iterdir() if not p.name.startswith(".")}
    assert entries == {"CURRENT", first, second}  # one pointer: no second one (a symlink) to disagree with it
    assert pointer.is_file() and not pointer.is_symlink() and pointer.read_text() == second == current_version(home)
    assert pointer.stat().st_ino != before  # a new file renamed over the old, never rewritten in place
    assert scan_assignments(home, first).collect()["doc_id"].to_list() == [f"old-0-{i}" for i in range(SHARD_DOCS)]
    with pytest.raises(FileNotFoundError, match="no assignment under " + second):
        scan_assignments(home, second)


def test_labels_and_examples_read_a_bounded_text_sample():
    n = 5000
    docs = pl.DataFrame(
        {
            "doc_id": [f"d{i:05d}" for i in range(n)],
            "cluster_id": [i % 4 for i in range(n)],
            "super_cluster_id": [i % 2 if i % 4 else None for i in range(n)],
            "n_tokens": [10] * n,
            "quality_score": [3.0] * n,
            "distance": np.linspace(0, 1, n),
        }
    )
    wanted = text_sample_ids(docs, n_examples=3, max_label_docs=50)
    assert 100 <= wanted.len() <= 2 * (50 + 3)
    assert set(wanted) == set(text_sample_ids(docs, n_examples=3, max_label_docs=50))  # deterministic
    texts = pl.DataFrame({"doc_id": wanted, "text": [("alpha" if int(d[1:]) % 2 == 0 else "beta") + " words here" for d in wanted]})
    table = super_cluster_table(docs, texts, top_n=1, n_examples=3, max_label_docs=50)
    assert table["n_docs"].to_list() == [1250, 2500]  # statistics still cover every document
    assert table["label"].to_list() == ["alpha", "beta"]
    assert all(len(examples) == 3 for examples in table["examples"])


def sensor_resources(climb_resource) -> dict:
    from climb_assets.cluster.assets import SemanticDedupResource

    return {"climb": climb_resource, "semantic_dedup": SemanticDedupResource()}


def recluster_sensor_of(instance, climb_resource):
    """The code location's fit, assign, semantic and merge jobs, and one evaluation of a recluster sensor over them
    (no settling) per call of the returned function."""
    import dagster as dg

    from climb_assets.cluster.assets import build_recluster_sensor
    from climb_assets.definitions import build_definitions

    defs = build_definitions(climb=climb_resource)
    names = ("cluster_fit_job", "cluster_assign_job", "semantic_dedup_job", "recluster_job")
    jobs = [defs.resolve_job_def(name) for name in names]
    sensor = build_recluster_sensor(*jobs, settle_seconds=0)

    def evaluate(cursor=None):
        return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources(climb_resource)))

    return jobs, evaluate


def test_drift_requests_a_refit_then_every_shard_is_reassigned(home, centers, instance, climb_resource):
    import dagster as dg

    from climb_assets.cluster.assets import cluster_assignments

    jobs, evaluate = recluster_sensor_of(instance, climb_resource)

    write_shard(home, "old-0", centers[:N_BLOBS], seed=0)
    (first,) = evaluate().run_requests
    assert first.job_name == "cluster_fit_job" and first.run_key == "first-fit:attempt-1"
    version, _ = fit_centroids(home, SETTINGS)
    write_shard(home, "alien", centers[N_BLOBS:], seed=5)
    instance.add_dynamic_partitions("raw_shards", ["old-0", "alien"])
    assert sorted(r.partition_key for r in evaluate().run_requests) == ["alien", "old-0"]
    for shard in ("old-0", "alien"):
        assigned = dg.materialize([cluster_assignments], partition_key=shard, instance=instance,
                                  resources={"climb": climb_resource})  # fmt: skip
        # faiss runs where the step's device lease says (the CPU here; one leased GPU, never all, with faiss-gpu)
        device = assigned.asset_materializations_for_node("cluster_assignments")[0].metadata["faiss_device"].value
        assert device.startswith("cuda:") if faiss.get_num_gpus() else device == "cpu"

    (refit,) = evaluate().run_requests
    assert refit.job_name == "cluster_fit_job" and refit.run_key == f"refit-after-{version}:attempt-1"
    assert "alien" in refit.tags["climb/refit_reason"]
    assert jobs[0].execute_in_process(instance=instance, run_config={"ops": {"cluster_centroids": {"config": {
        "k": N_BLOBS, "max_points_per_centroid": 40}}}}).success  # fmt: skip
    assert current_version(home) != version
    stale = evaluate().run_requests  # every shard is stale under the new centroids
    assert sorted(r.partition_key for r in stale) == ["alien", "old-0"]
    assert {r.job_name for r in stale} == {"cluster_assign_job"}


def test_the_merge_waits_for_every_unfinished_assignment_and_semantic_run(home, centers, instance, climb_resource):
    """A run writes its files before Dagster stores its materialization: a merge requested in between ran twice (once
    per materialization) before the sensor waited for unfinished runs too."""
    import dagster as dg

    from climb_assets.cluster.assets import cluster_assignments, semantic_duplicates

    jobs, evaluate = recluster_sensor_of(instance, climb_resource)

    write_shard(home, "a", centers[:N_BLOBS], seed=0)
    home.lake_dir("raw_shards").mkdir(parents=True)  # the semantic step quotes duplicates' texts from the raw shard
    pl.DataFrame({"doc_id": [f"a-{i}" for i in range(SHARD_DOCS)], "text": [f"text {i}" for i in range(SHARD_DOCS)]}
                 ).write_parquet(home.lake_dir("raw_shards") / "a.parquet")  # fmt: skip
    instance.add_dynamic_partitions("raw_shards", ["a"])
    fit_centroids(home, SETTINGS)
    assert dg.materialize([cluster_assignments, semantic_duplicates], partition_key="a", instance=instance,
                          resources=sensor_resources(climb_resource)).success  # fmt: skip
    # the semantic run of a shard whose files are written but whose run has not finished
    running = instance.create_run_for_job(jobs[2], tags={"climb/attempt_of": "semantic-of-b"},
                                          status=dg.DagsterRunStatus.STARTED)  # fmt: skip
    waiting = evaluate()
    assert isinstance(waiting, dg.SkipReason)
    assert "waiting for 1 assignment or semantic runs to finish before the merge (semantic-of-b)" in waiting.skip_message
    instance.report_run_failed(running)
    (merge,) = evaluate().run_requests
    assert merge.job_name == "recluster_job" and merge.run_key.startswith("merge-")


def test_shards_re_embedded_by_another_model_wait_for_each_other_then_request_a_refit(home, centers, instance, climb_resource):
    import dagster as dg

    _, evaluate = recluster_sensor_of(instance, climb_resource)

    for shard, seed in (("a", 0), ("b", 1)):
        write_shard(home, shard, centers[:N_BLOBS], seed=seed)
    version, _ = fit_centroids(home, SETTINGS)
    rng = np.random.default_rng(2)  # shard a re-embedded by another model (a new proxy-lm checkpoint, say)
    write_embeddings(home.lake_dir("embeddings") / "a.npz", [f"a-{i}" for i in range(SHARD_DOCS)],
                     unit(rng.standard_normal((SHARD_DOCS, DIM))), "proxy-lm-new")  # fmt: skip
    waiting = evaluate()
    assert isinstance(waiting, dg.SkipReason)
    assert "embedded by 2 models" in waiting.skip_message  # no assignment against the wrong centroids meanwhile
    write_embeddings(home.lake_dir("embeddings") / "b.npz", [f"b-{i}" for i in range(SHARD_DOCS)],
                     unit(rng.standard_normal((SHARD_DOCS, DIM))), "proxy-lm-new")  # fmt: skip
    (refit,) = evaluate().run_requests
    assert refit.job_name == "cluster_fit_job" and refit.run_key == f"refit-{version}-for-proxy-lm-new:attempt-1"
    assert refit.tags["climb/refit_reason"] == "embedding model changed: m -> proxy-lm-new"


def test_a_failed_fit_is_retried_under_new_run_keys_then_reported(home, centers, instance, climb_resource):
    import dagster as dg

    (fit_job, *_), evaluate = recluster_sensor_of(instance, climb_resource)

    write_shard(home, "a", centers[:N_BLOBS], seed=0)
    rng = np.random.default_rng(1)  # a second embedding model: every fit fails until "b" is re-embedded
    other_model = unit(rng.standard_normal((2, DIM)))
    write_embeddings(home.lake_dir("embeddings") / "b.npz", ["b-0", "b-1"], other_model, "other")
    (request,) = evaluate().run_requests
    assert request.run_key == "first-fit:attempt-1"
    launched = instance.create_run_for_job(fit_job, tags=request.tags, status=dg.DagsterRunStatus.NOT_STARTED)
    waiting = evaluate()
    assert waiting.run_requests == []
    assert "waiting for the run in progress for first-fit" in waiting.skip_reason.skip_message
    instance.report_run_canceled(launched)  # a canceled attempt counts as a failed one
    failed = [launched.run_id]
    cursor = waiting.cursor
    gave_up = retry_until_given_up(
        evaluate, cursor, "first-fit",
        lambda request: fit_job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False), failed,
    )  # fmt: skip
    message = gave_up.skip_reason.skip_message
    assert "launch cluster_fit_job" in message and all(run_id in message for run_id in failed)
    (observation,) = gave_up.asset_events
    assert observation.asset_key == dg.AssetKey("cluster_centroids")
    assert json.loads(gave_up.cursor)["gave_up"] == {"first-fit": sorted(failed)}
    again = evaluate(gave_up.cursor)
    assert again.run_requests == [] and again.asset_events == [] and again.skip_reason.skip_message == message

    write_shard(home, "b", centers[:N_BLOBS], seed=1)  # the cause fixed, the fit run by hand: the sensor moves on
    assert fit_job.execute_in_process(instance=instance).success
    assert sorted(r.partition_key for r in evaluate(again.cursor).run_requests) == ["a", "b"]


def test_super_cluster_version_changes_when_a_new_shard_joins_under_the_same_centroids():
    from climb_assets.quality.super_clusters import super_clusters_version

    mapping = pl.DataFrame({"cluster_id": [0, 1], "decision": ["keep", "keep"], "super_cluster_id": [0, 0]})
    docs = pl.DataFrame({"doc_id": ["a", "b", "c"], "cluster_id": [0, 1, 1], "super_cluster_id": [0, 0, 0]})
    version = super_clusters_version("v0001-x", mapping, docs)
    assert version.startswith("v0001-x-s") and version == super_clusters_version("v0001-x", mapping, docs.reverse())
    assert version != super_clusters_version("v0001-x", mapping, docs.head(2))
    assert version != super_clusters_version("v0001-x", mapping, docs.with_columns(cluster_id=pl.lit(0)))


def test_super_cluster_version_is_a_plain_sha256_of_the_sorted_rows():
    """Independent of polars' row hashing (not stable across polars versions): the same version on any install."""
    from climb_assets.quality.super_clusters import super_clusters_version

    mapping = pl.DataFrame({"cluster_id": [0, 1], "decision": ["keep", "keep"], "super_cluster_id": [0, 0]})
    docs = pl.DataFrame({"doc_id": ["b", "a", "c"], "cluster_id": [1, 0, 1], "super_cluster_id": [0, 0, 0]})
    rows = sorted(zip(docs["cluster_id"], docs["doc_id"], docs["super_cluster_id"]))
    text = "cluster_id,doc_id,super_cluster_id\n" + "".join(f"{c},{d},{s}\n" for c, d, s in rows)
    expected = hashlib.sha256(mapping.write_csv().encode() + text.encode()).hexdigest()[:8]
    assert super_clusters_version("v0001-x", mapping, docs) == f"v0001-x-s{expected}"
