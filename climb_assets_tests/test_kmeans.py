"""K-means on the unit sphere: blob recovery, exact assignment, stable ids across re-fits, drift, persistence."""

from __future__ import annotations

import faiss
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import adjusted_rand_score

from climb_assets.cluster.kmeans import (
    assign,
    assignments_frame,
    default_k,
    drift,
    faiss_gpu,
    fit_kmeans,
    match_to_previous,
)
from climb_assets.cluster.lake import (
    FitSettings,
    assign_shard,
    fit_centroids,
    scan_assignments,
)
from climb_assets.embed.encode import write_embeddings
from climb_assets.lake import embeddings_path

DIM = 32
N_BLOBS = 8
HAS_FAISS_GPU = faiss.get_num_gpus() > 0
# K equal to the true number of blobs is the hard case for any single seeding (see kmeans.py): use restarts.
REDO = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_blobs(n: int, centers: np.ndarray, seed: int, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Points around unit-vector centers, projected back onto the sphere (like normalised text embeddings)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centers), n)
    return unit(centers[labels] + noise * rng.standard_normal((n, centers.shape[1]))), labels


@pytest.fixture(scope="module")
def centers() -> np.ndarray:
    return unit(np.random.default_rng(42).standard_normal((N_BLOBS + 1, DIM)))  # the last one is a "new kind"


@pytest.fixture(scope="module")
def corpus(centers):
    vectors, labels = make_blobs(2000, centers[:N_BLOBS], seed=1)
    ids = np.array([f"doc-{i:05d}" for i in range(len(vectors))])
    shards = np.where(np.arange(len(vectors)) < 1000, "shard-a", "shard-b")
    return vectors, labels, ids, shards


@pytest.mark.parametrize(
    ("n_docs", "expected"), [(1, 1), (5, 5), (50, 8), (800, 8), (30_000, 300), (100_000, 1000), (5_000_000, 1000)]
)
def test_default_k_scales_with_corpus_and_caps_at_paper_k(n_docs, expected):
    assert default_k(n_docs) == expected


def test_default_k_rejects_empty_corpus():
    with pytest.raises(ValueError, match="empty"):
        default_k(0)


def test_fit_recovers_blobs_with_unit_centroids_deterministically(corpus):
    vectors, labels, _, _ = corpus
    centroids = fit_kmeans(vectors, N_BLOBS, seed=3, nredo=REDO)
    assert centroids.shape == (N_BLOBS, DIM) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    rows, _ = assign(vectors, centroids)
    assert adjusted_rand_score(labels, rows) > 0.9
    np.testing.assert_array_equal(centroids, fit_kmeans(vectors, N_BLOBS, seed=3, nredo=REDO))


def test_fit_accepts_float16_lake_vectors(corpus):
    vectors, labels, _, _ = corpus
    rows, _ = assign(vectors.astype(np.float16), fit_kmeans(vectors.astype(np.float16), N_BLOBS, seed=0, nredo=REDO))
    assert adjusted_rand_score(labels, rows) > 0.9


def test_assign_matches_brute_force_in_small_batches(corpus):
    vectors, _, _, _ = corpus
    centroids = fit_kmeans(vectors, 16, seed=0)
    rows, dist = assign(vectors, centroids, batch_size=97)  # several ragged batches
    brute = np.linalg.norm(vectors[:, None, :] - centroids[None, :, :], axis=2)
    np.testing.assert_array_equal(rows, brute.argmin(axis=1))
    np.testing.assert_allclose(dist, brute.min(axis=1), atol=1e-3)


def test_bad_inputs_raise_clear_errors(corpus):
    vectors, _, _, _ = corpus
    with pytest.raises(ValueError, match="k must be"):
        fit_kmeans(vectors[:5], 6)
    bad = vectors.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_kmeans(bad, 4)
    with pytest.raises(ValueError, match="dimension mismatch"):
        assign(vectors, np.ones((3, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="init"):
        fit_kmeans(vectors, 4, init="bogus")


@pytest.mark.skipif(HAS_FAISS_GPU, reason="checks the CPU-only refusal")
def test_a_gpu_faiss_cannot_see_is_an_error_and_a_cuda_lease_runs_faiss_on_cpu(corpus):
    with pytest.raises(RuntimeError, match="faiss sees 0 GPUs"):
        fit_kmeans(corpus[0], 4, gpu=0)
    with pytest.raises(RuntimeError, match="faiss sees 0 GPUs"):
        assign(corpus[0], corpus[0][:4], gpu=1)
    # faiss-cpu beside a CUDA torch: the step's cuda lease does not send faiss to a GPU it cannot use
    assert faiss_gpu("cuda:1") is None and faiss_gpu("cpu") is None


@pytest.mark.skipif(not HAS_FAISS_GPU, reason="needs faiss-gpu and CUDA")
def test_gpu_fit_and_assign_recover_blobs_on_the_leased_device_only(corpus):
    vectors, labels, _, _ = corpus
    last = faiss.get_num_gpus() - 1  # the lease's device, not the first N GPUs that faiss's gpu= option takes
    assert faiss_gpu(f"cuda:{last}") == last and faiss_gpu("cpu") is None
    rows, _ = assign(vectors, fit_kmeans(vectors, N_BLOBS, seed=3, nredo=REDO, gpu=last), gpu=last)
    assert adjusted_rand_score(labels, rows) > 0.9


def land_embeddings(home, name: str, vectors: np.ndarray, ids) -> None:
    write_embeddings(embeddings_path(home, name), list(ids), vectors, "m")


def fit_and_assign(home, settings: FitSettings) -> tuple[str, dict, pl.DataFrame]:
    version, info = fit_centroids(home, settings)
    for shard in ("shard-a", "shard-b", "shard-n"):
        if embeddings_path(home, shard).exists():
            assign_shard(home, shard, version)
    return version, info, scan_assignments(home, version).collect().sort("doc_id")


def test_fit_centroids_assigns_every_document_once_and_recovers_blobs(home, corpus):
    vectors, labels, ids, shards = corpus
    for shard in ("shard-a", "shard-b"):
        at = shards == shard
        land_embeddings(home, shard, vectors[at], ids[at])
    _, info, assignments = fit_and_assign(home, FitSettings(k=N_BLOBS, seed=0, nredo=REDO))
    assert assignments.columns == ["doc_id", "shard", "cluster_id", "distance"]
    assert assignments["doc_id"].to_list() == sorted(ids.tolist())
    assert adjusted_rand_score(labels, assignments["cluster_id"].to_numpy()) > 0.9
    assert sorted(assignments["cluster_id"].unique().to_list()) == list(range(N_BLOBS))
    assert info["clusters_with_new_id"] == 0 and info["docs"] == len(ids)


def test_match_to_previous_keeps_ids_of_nearby_centroids_and_numbers_new_ones(centers):
    prev = centers[:4]
    prev_ids = np.array([10, 3, 7, 12])
    rng = np.random.default_rng(0)
    perm = np.array([2, 0, 3, 1])
    new = np.vstack([unit(prev[perm] + 0.01 * rng.standard_normal((4, DIM))), centers[N_BLOBS : N_BLOBS + 1]])
    ids, moved = match_to_previous(new, prev, prev_ids)
    assert ids.tolist() == [7, 10, 12, 3, 13]
    assert moved == 1
    ids_strict, moved_strict = match_to_previous(new, prev, prev_ids, max_distance=1e-6)
    assert ids_strict.tolist() == [13, 14, 15, 16, 17] and moved_strict == 5


def test_a_new_kind_of_text_shows_as_drift_and_gets_a_fresh_id_at_the_refit(home, corpus, centers):
    vectors, _, ids, shards = corpus
    land_embeddings(home, "shard-a", vectors, ids)
    first, info, _ = fit_and_assign(home, FitSettings(k=N_BLOBS, seed=0, nredo=REDO))
    novel, _ = make_blobs(300, centers[N_BLOBS:], seed=3)
    same, _ = make_blobs(300, centers[:N_BLOBS], seed=4)
    centroids = np.load(home.lake / "clusters" / first / "centroids.npy")
    reference = info["reference_mean_sq_distance"]
    assert drift(assign(same, centroids)[1], reference) == pytest.approx(1.0, abs=0.15)

    land_embeddings(home, "shard-n", novel, [f"novel-{i}" for i in range(len(novel))])
    assert assign_shard(home, "shard-n", first)["drift"] > 5.0
    _, refit, assignments = fit_and_assign(home, FitSettings(k=N_BLOBS + 1, seed=5, nredo=REDO))
    assert refit["clusters_with_new_id"] == 1
    assert assignments.filter(pl.col("shard") == "shard-n")["cluster_id"].unique().to_list() == [N_BLOBS]


def test_assign_only_for_a_new_shard_uses_stable_ids(corpus, centers):
    vectors, labels, _, _ = corpus
    centroids = fit_kmeans(vectors, N_BLOBS, seed=0, nredo=REDO)
    cluster_ids = np.arange(N_BLOBS)
    extra, extra_labels = make_blobs(50, centers[:N_BLOBS], seed=9)
    frame = assignments_frame([f"x{i}" for i in range(50)], ["shard-x"] * 50, extra, centroids, cluster_ids)
    label_to_cluster = dict(zip(labels.tolist(), assign(vectors, centroids)[0].tolist()))
    assert frame["cluster_id"].to_list() == [label_to_cluster[lab] for lab in extra_labels.tolist()]
    with pytest.raises(ValueError, match="differ"):
        assignments_frame(["a"], ["s", "s"], extra[:1], centroids, cluster_ids)
