"""The opt-in search sensor: new super-clusters launch the search (which continues the previous one). Off by default,
because every search trains proxies; turn it on in the UI (Automation) to keep the mixture current unattended."""

import dagster as dg
import polars as pl

from climb_assets import lake
from climb_assets.attempts import bounded_attempts
from climb_assets.resources import ClimbHomeResource


def build_search_sensor(search_job) -> dg.SensorDefinition:
    """One search per super-cluster version, once the merge that made it has finished; failed searches are retried
    up to the recluster sensor's bound and then reported, as its work is."""

    @dg.sensor(name="search_sensor", job=search_job, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.STOPPED)  # fmt: skip
    def search_sensor(context: dg.SensorEvaluationContext, climb: ClimbHomeResource):
        table = lake.super_cluster_table_path(climb.home())
        if not table.exists():
            return dg.SkipReason("no super-clusters yet: the recluster sensor makes them")
        (version,) = pl.read_parquet(table, columns=["version"])["version"].unique().to_list()
        return bounded_attempts(context, [dg.RunRequest(run_key=f"search-{version}", job_name=search_job.name,
                                                        tags={"climb/super_cluster_version": version})],
                                "proxy_tokenizer")  # fmt: skip

    return search_sensor
