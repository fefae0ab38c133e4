-- Every row of every landed file is in exactly one of the three ingest outputs: accepted (raw_docs), quarantined
-- with a reason, or removed as an exact or near duplicate. Row numbers are 0-based positions in the landed file,
-- so per shard they must run 0..n-1 with none twice: a row lost or written twice fails this test. (The blocking
-- Python check raw_shards_conserve_rows also re-counts the landed file, which catches lost trailing rows.)
-- Returns the shards that break the invariant. It reads sources only, so it names the model it guards (doc_quality,
-- built from the accepted documents) for dagster-dbt to show it as that asset's check instead of a bare observation.
-- depends_on: {{ ref('doc_quality') }}
{{ config(meta={'dagster': {'ref': {'name': 'doc_quality'}}}) }}
with landed_rows as (
    select shard, row_number from {{ source('lake', 'raw_docs') }}
    union all
    select shard, row_number from {{ source('lake', 'quarantine') }}
    union all
    select shard, row_number from {{ source('lake', 'ingest_duplicates') }}
)

select
    shard,
    count(*) as rows_out,
    count(distinct row_number) as distinct_rows,
    min(row_number) as first_row,
    max(row_number) as last_row
from landed_rows
group by shard
having count(*) != count(distinct row_number) or min(row_number) != 0 or max(row_number) != count(*) - 1
