"""Document quality scoring, cluster pruning and merging into super-clusters (CLIMB step 3).

``signals``/``scorers`` score documents, ``dbt`` runs the ``dbt_quality`` project (repository root) that aggregates
them per fine cluster and decides keep/prune, ``merge`` turns the kept clusters into super-clusters.
"""
