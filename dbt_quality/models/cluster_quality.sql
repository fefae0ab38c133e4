-- Per fine cluster: size in documents and tokens, the quality distribution and the share of
-- duplicate-heavy documents (Gopher repetition limits, see dbt_project.yml vars).
select
    cluster_id,
    count(*) as n_docs,
    cast(sum(n_tokens) as bigint) as n_tokens,
    avg(quality_score) as mean_quality,
    quantile_cont(quality_score, 0.1) as p10_quality,
    quantile_cont(quality_score, 0.5) as p50_quality,
    quantile_cont(quality_score, 0.9) as p90_quality,
    avg(case when is_duplicate_heavy then 1.0 else 0.0 end) as duplicate_rate,
    avg(distance) as mean_distance
from {{ ref('doc_quality') }}
group by cluster_id
