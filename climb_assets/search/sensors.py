"""The opt-in search sensor: new super-clusters launch the search (which continues the previous one). Off by default,
because every search trains proxies; turn it on in the UI (Automation) to keep the mixture current unattended."""

import dagster as dg
import polars as pl

from climb_assets import lake
from climb_assets.attempts import bounded_attempts
from climb_assets.lm.token_files import token_dir, tokenizer_sha256, untokenized_shards
from climb_assets.lm.tokenizer import load_tokenizer
from climb_assets.resources import ClimbHomeResource
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import SearchSettings


def shards_to_tokenize(plan: SearchPlan) -> tuple[str, list[str]]:
    """The kept tokenizer's hash and the raw shards without current token files for it (none before the first
    search trains the tokenizer: its own step tokenizes every shard)."""
    if not plan.tokenizer_path.exists():
        return "", []
    tokenizer = load_tokenizer(plan.tokenizer_path)
    return tokenizer_sha256(tokenizer), untokenized_shards(plan.home, token_dir(plan.home, tokenizer))


def build_search_sensor(search_job, tokenize_job) -> dg.SensorDefinition:
    """One search per super-cluster version, once the merge that made it has finished and every shard has token
    files for the kept tokenizer: a new wave's shards are tokenized first, one ``tokenize_job`` run per shard (side
    by side, each visible as its partition). Failed runs are retried up to the recluster sensor's bound and then
    reported, as its work is."""

    @dg.sensor(name="search_sensor", jobs=[search_job, tokenize_job], minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED)  # fmt: skip
    def search_sensor(context: dg.SensorEvaluationContext, climb: ClimbHomeResource, search: SearchSettings):
        table = lake.super_cluster_table_path(climb.home())
        if not table.exists():
            return dg.SkipReason("no super-clusters yet: the recluster sensor makes them")
        tokenizer, shards = shards_to_tokenize(SearchPlan(climb.home(), search))
        if shards:
            return bounded_attempts(context, [dg.RunRequest(run_key=f"tokens-{tokenizer[:16]}-{shard}",
                                                            job_name=tokenize_job.name, partition_key=shard)
                                              for shard in shards], "proxy_token_files")  # fmt: skip
        (version,) = pl.read_parquet(table, columns=["version"])["version"].unique().to_list()
        return bounded_attempts(context, [dg.RunRequest(run_key=f"search-{version}", job_name=search_job.name,
                                                        tags={"climb/super_cluster_version": version})],
                                "proxy_tokenizer")  # fmt: skip

    return search_sensor
