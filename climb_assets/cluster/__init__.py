"""K-means clustering of document embeddings with stable cluster ids across re-fits."""

from climb_assets.cluster.kmeans import (
    ClusterResult,
    assign,
    assignments_frame,
    cluster_corpus,
    cluster_stats,
    clusters_frame,
    default_k,
    drift,
    fit_kmeans,
    match_to_previous,
    read_cluster_version,
    write_cluster_version,
)

__all__ = [
    "ClusterResult",
    "assign",
    "assignments_frame",
    "cluster_corpus",
    "cluster_stats",
    "clusters_frame",
    "default_k",
    "drift",
    "fit_kmeans",
    "match_to_previous",
    "read_cluster_version",
    "write_cluster_version",
]
