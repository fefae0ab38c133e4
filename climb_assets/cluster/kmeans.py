"""Fine-grained K-means over document embeddings, with cluster ids that stay stable across re-fits.

Choices (see DESIGN.md's faiss pitfalls):
- **Spherical** k-means: embeddings are unit vectors compared by cosine, so centroids are kept on the unit
  sphere too. Plain k-means would shrink the centroids of diffuse clusters toward the origin, making them look
  close to each other; unit centroids keep the centroid distances used for id matching and for the Ward merge
  downstream on one scale. For unit vectors ``||x - c||^2 = 2 - 2 cos(x, c)``, so L2 search ranks as cosine.
- **Init**: AFK-MC² (an MCMC approximation of k-means++ D² seeding) instead of faiss's default uniform random
  points: seeds spread over the data (8 exact blobs recovered in 14/30 seeds vs 7/30 for random), for ~2 s extra
  at 100k x K=1000 where exact k-means++ (O(n·k·d), 11/30) costs ~16 s, several full iterations.
- **Restarts**: ``nredo`` fits from different seeds and keeps the lowest objective. Any single seeding can
  put two seeds in one dense region and leave another unseeded, which Lloyd iterations cannot repair; that
  matters when K is close to the number of real topics (small demo corpora: use 5-10, it is cheap there)
  and hardly at all at K=1000, where super-clustering merges neighbours anyway (keep 1: each redo is a full fit).
- **Sampling**: faiss trains on at most ``max_points_per_centroid * k`` points (256 by default, 256k at K=1000);
  that is plenty to place centroids. ``cluster.sample`` draws exactly that many rows across shards before the fit
  (the corpus is never loaded), and every shard is assigned afterwards on its own (``cluster.lake.assign_shard``).
- Distances reported are Euclidean (not squared); inertia is the sum of squared distances.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import polars as pl
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

K_INIT_PAPER = 1000
DEFAULT_NITER = 20
DEFAULT_MAX_POINTS_PER_CENTROID = 256
_INIT_METHODS = {
    "afkmc2": faiss.ClusteringInitMethod_AFK_MC2,
    "kmeans++": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    "random": faiss.ClusteringInitMethod_RANDOM,
}
_ASSIGN_BATCH = 65_536


def default_k(n_docs: int, *, docs_per_cluster: int = 100, k_min: int = 8, k_max: int = K_INIT_PAPER) -> int:
    """K for a corpus: the paper's 1000 at scale, ~``n/docs_per_cluster`` for small corpora, never more than n."""
    if n_docs < 1:
        raise ValueError("cannot cluster an empty corpus")
    return min(n_docs, max(k_min, min(k_max, round(n_docs / docs_per_cluster))))


def faiss_gpu(torch_device: str) -> int | None:
    """The GPU faiss runs on for a step holding ``torch_device`` (``cuda:N`` -> N): None (CPU) for a CPU lease or
    a faiss built without GPU support (faiss-cpu next to a CUDA torch)."""
    if not torch_device.startswith("cuda") or faiss.get_num_gpus() == 0:
        return None
    return int(torch_device.partition(":")[2] or 0)


def _on_gpu(index: faiss.Index, gpu: int | None) -> tuple[faiss.Index, object]:
    """``index`` moved to GPU ``gpu`` (one device, never all of them: another step may hold the others), with the
    GPU resources the caller must keep alive while the index is used; unchanged on CPU."""
    if gpu is None:
        return index, None
    if not 0 <= gpu < faiss.get_num_gpus():
        raise RuntimeError(f"gpu={gpu} but faiss sees {faiss.get_num_gpus()} GPUs (faiss-gpu-cu12 on a CUDA machine)")
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, gpu, index), resources


def _as_f32(vectors: np.ndarray) -> np.ndarray:
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("vectors contain non-finite values")
    return out


def fit_kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_points_per_centroid: int = DEFAULT_MAX_POINTS_PER_CENTROID,
    niter: int = DEFAULT_NITER,
    init: str = "afkmc2",
    nredo: int = 1,
    spherical: bool = True,
    gpu: int | None = None,
) -> np.ndarray:
    """Fit K-means and return float32 ``(k, d)`` centroids (unit rows when ``spherical``), on CPU or on GPU ``gpu``.
    Deterministic per seed."""
    x = _as_f32(vectors)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in [1, n_docs={len(x)}], got {k}")
    if init not in _INIT_METHODS:
        raise ValueError(f"init must be one of {sorted(_INIT_METHODS)}, got {init!r}")
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=spherical,
        init_method=_INIT_METHODS[init],
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small demo corpora: do not warn below faiss's 39 points per centroid
        verbose=False,
    )
    km.index, _resources = _on_gpu(km.index, gpu)  # faiss's own ``gpu=`` option takes the first N GPUs, not ours
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(
    vectors: np.ndarray, centroids: np.ndarray, *, gpu: int | None = None, batch_size: int = _ASSIGN_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid for every vector: ``(row index into centroids int64, Euclidean distance float32)``.

    Searched in batches so a large shard never needs an n x K distance matrix in memory.
    """
    x, c = _as_f32(vectors), _as_f32(centroids)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"dimension mismatch: vectors {x.shape[1]} vs centroids {c.shape[1]}")
    index, _resources = _on_gpu(faiss.IndexFlatL2(c.shape[1]), gpu)
    index.add(c)
    rows = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        sq, idx = index.search(x[start : start + batch_size], 1)
        rows[start : start + len(idx)] = idx[:, 0]
        dist[start : start + len(idx)] = np.sqrt(np.maximum(sq[:, 0], 0.0))
    return rows, dist


def cluster_stats(rows: np.ndarray, distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per centroid row: size (int64) and inertia (sum of squared distances, float64); empty clusters get 0."""
    sizes = np.bincount(rows, minlength=k).astype(np.int64)
    inertia = np.bincount(rows, weights=distances.astype(np.float64) ** 2, minlength=k)
    return sizes, inertia


def _median_nn_distance(centroids: np.ndarray) -> float:
    if len(centroids) < 2:
        return float("inf")
    d = cdist(centroids, centroids)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))


def match_to_previous(
    new_centroids: np.ndarray,
    prev_centroids: np.ndarray,
    prev_ids: np.ndarray,
    max_distance: float | None = None,
) -> tuple[np.ndarray, int]:
    """Stable ids for a re-fit: ``(id per new centroid row, how many rows got a fresh id)``.

    Hungarian matching on centroid distances pairs each new centroid with at most one old one; a pair closer
    than ``max_distance`` keeps the old id, so downstream joins (quality, mixture weights) still line up. Other
    new centroids get fresh ids ``max(prev_ids) + 1, ...``; ids are never reused for a different cluster.
    ``max_distance`` defaults to half the median nearest-neighbour distance between the old centroids: a new
    centroid inherits an id only if it is clearly nearer that old centroid than any of its neighbours.
    """
    new_c, prev_c = _as_f32(new_centroids), _as_f32(prev_centroids)
    prev_ids = np.asarray(prev_ids, dtype=np.int64)
    if len(prev_ids) != len(prev_c) or len(np.unique(prev_ids)) != len(prev_ids):
        raise ValueError("prev_ids must be unique, one per previous centroid")
    if max_distance is None:
        max_distance = 0.5 * _median_nn_distance(prev_c)
    ids = np.full(len(new_c), -1, dtype=np.int64)
    if len(prev_c):
        cost = cdist(new_c, prev_c)
        new_rows, prev_rows = linear_sum_assignment(cost)
        keep = cost[new_rows, prev_rows] <= max_distance
        ids[new_rows[keep]] = prev_ids[prev_rows[keep]]
    fresh = np.flatnonzero(ids < 0)
    start = int(prev_ids.max()) + 1 if len(prev_ids) else 0
    ids[fresh] = np.arange(start, start + len(fresh), dtype=np.int64)
    return ids, len(fresh)


def drift(distances: np.ndarray, reference_mean_sq_distance: float) -> float:
    """How much worse the centroids fit new documents than the sample they were fitted on: the new documents' mean
    squared distance to their centroid over the fit's. ~1: the shard looks like the corpus, assign-only is enough;
    well above 1 (e.g. > 1.25): a new kind of text arrived, refit."""
    if reference_mean_sq_distance <= 0:
        raise ValueError("reference_mean_sq_distance must be positive")
    return float(np.mean(np.asarray(distances, dtype=np.float64) ** 2) / reference_mean_sq_distance)


def assignments_frame(
    doc_ids: list[str] | np.ndarray,
    shards: list[str] | np.ndarray,
    vectors: np.ndarray,
    centroids: np.ndarray,
    cluster_ids: np.ndarray,
    *,
    gpu: int | None = None,
) -> pl.DataFrame:
    """Assign documents to clusters (also the assign-only path for a new shard): doc_id, shard, cluster_id, distance."""
    if not len(doc_ids) == len(shards) == len(vectors):
        raise ValueError(f"doc_ids ({len(doc_ids)}), shards ({len(shards)}) and vectors ({len(vectors)}) differ")
    rows, dist = assign(vectors, centroids, gpu=gpu)
    return pl.DataFrame(
        {
            "doc_id": pl.Series(list(doc_ids), dtype=pl.String),
            "shard": pl.Series(list(shards), dtype=pl.String),
            "cluster_id": np.asarray(cluster_ids, dtype=np.int64)[rows],
            "distance": dist,
        }
    )


def read_cluster_version(directory: Path) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    """``(centroids, cluster_ids, clusters frame)`` of a written version: what assign-only and re-fits need."""
    directory = Path(directory)
    centroids = np.load(directory / "centroids.npy", allow_pickle=False)
    clusters = pl.read_parquet(directory / "clusters.parquet")
    if len(clusters) != len(centroids):
        raise ValueError(f"{directory}: {len(centroids)} centroids but {len(clusters)} cluster rows")
    return centroids, clusters["cluster_id"].to_numpy(), clusters
