"""The local Dagster instance that lives in ``CLIMB_HOME/dagster``."""

from __future__ import annotations

import os

import dagster as dg

from climb_assets.home import ClimbHome

# One slot per pool: GPU steps never share the GPU and lake writers never race each other's de-duplication.
# Run monitoring frees a slot held by a crashed or cancelled run (a known pool pitfall).
INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
    granularity: op
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 30
telemetry:
  enabled: false
"""


def prepare_instance(home: ClimbHome) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at ``CLIMB_HOME/dagster``, write its dagster.yaml once, and open the instance."""
    home.ensure()
    config = home.dagster / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    return dg.DagsterInstance.get()
