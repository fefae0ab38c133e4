-- Keep or prune each fine cluster (CLIMB: prune mean quality < 3.0), with the reason.
-- Also written to Parquet so Python reads it without taking the DuckDB file lock.
{{ config(
    materialized='external',
    location=env_var('CLIMB_LAKE_CLUSTER_DECISIONS'),
    format='parquet'
) }}

with flagged as (
    select
        *,
        mean_quality < {{ var('min_mean_quality') }} as is_low_quality,
        n_docs < {{ var('min_cluster_docs') }} as is_too_small
    from {{ ref('cluster_quality') }}
)

select
    cluster_id,
    n_docs,
    n_tokens,
    mean_quality,
    p10_quality,
    p50_quality,
    p90_quality,
    duplicate_rate,
    case when is_low_quality or is_too_small then 'prune' else 'keep' end as decision,
    case
        when is_low_quality and is_too_small then 'low_quality_and_too_few_docs'
        when is_low_quality then 'low_quality'
        when is_too_small then 'too_few_docs'
        else 'kept'
    end as reason,
    cast({{ var('min_mean_quality') }} as double) as min_mean_quality,
    cast({{ var('min_cluster_docs') }} as bigint) as min_cluster_docs,
    '{{ env_var('CLIMB_CLUSTER_VERSION', 'unset') }}' as centroid_version  -- the merge checks it is its version
from flagged
order by cluster_id
