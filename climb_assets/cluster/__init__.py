"""K-means clustering of document embeddings with stable cluster ids across re-fits (``kmeans``), kept in the
lake as versions with per-shard assignments (``lake``), kept current by a sensor and a schedule (``assets``)."""
