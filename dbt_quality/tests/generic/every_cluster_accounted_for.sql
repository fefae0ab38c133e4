{#- Every cluster in the assignments has exactly one decision row whose n_docs equals its assigned documents,
    so kept + pruned documents always add up to all documents. Returns the clusters that do not reconcile. -#}
{% test every_cluster_accounted_for(model, assignments, cluster_column='cluster_id', count_column='n_docs') %}
with expected as (
    select {{ cluster_column }} as cluster_id, count(*) as n_docs
    from {{ assignments }}
    group by 1
),

decided as (
    select {{ cluster_column }} as cluster_id, sum({{ count_column }}) as n_docs, count(*) as n_rows
    from {{ model }}
    group by 1
)

select
    coalesce(e.cluster_id, d.cluster_id) as cluster_id,
    e.n_docs as assigned_docs,
    d.n_docs as decided_docs,
    d.n_rows as decision_rows
from expected as e
full outer join decided as d on e.cluster_id = d.cluster_id
where e.n_docs is distinct from d.n_docs or d.n_rows is distinct from 1
{% endtest %}
