-- One row per clustered document: its fine cluster, quality score and token count.
-- Left joins from the assignments, so a document with no quality row or no raw row surfaces as a null
-- (failing a not_null test) instead of silently vanishing from the cluster statistics.
with assignments as (
    select doc_id, shard, cluster_id, distance
    from {{ source('lake', 'cluster_assignments') }}
),

quality as (
    select doc_id, quality_score, dup_line_fraction, dup_5gram_char_fraction
    from {{ source('lake', 'quality_signals') }}
),

docs as (
    select doc_id, n_tokens
    from {{ source('lake', 'raw_docs') }}
)

select
    a.doc_id,
    a.shard,
    a.cluster_id,
    a.distance,
    d.n_tokens,
    q.quality_score,
    (
        q.dup_line_fraction > {{ var('max_dup_line_fraction') }}
        or q.dup_5gram_char_fraction > {{ var('max_dup_5gram_char_fraction') }}
    ) as is_duplicate_heavy
from assignments as a
left join quality as q on a.doc_id = q.doc_id
left join docs as d on a.doc_id = d.doc_id
