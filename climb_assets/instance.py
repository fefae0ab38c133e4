"""The local Dagster instance that lives in ``CLIMB_HOME/dagster``."""

from __future__ import annotations

import os
import socket
import time

import dagster as dg
import sqlalchemy as sa
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.storage.event_log.schema import ConcurrencySlotsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._utils.concurrency import ConcurrencySlotStatus

from climb_assets.devices import default_slots
from climb_assets.home import ClimbHome
from climb_assets.storage import process_alive, sweep_abandoned_temps
from climb_assets.tags import GPU_POOL, HOST_TAG

# One slot per pool by default: lake writers never race each other's de-duplication. The gpu pool is capacity, sized
# to the machine's devices by ``prepare_instance``. Run monitoring frees a slot held by a crashed or cancelled run (a known pool pitfall).
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
nux:
  enabled: false
"""


def prepare_instance(home: ClimbHome, gpu_slots: int = 0) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at ``CLIMB_HOME/dagster``, write its dagster.yaml once, open the instance, size the ``gpu``
    pool (``gpu_slots``, or one slot per GPU, one on a CPU-only machine), and release the runs and remove the temp
    outputs a killed process left behind. Lake pools keep their single slot: they are locks, not capacity."""
    home.ensure()
    config = home.dagster / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    instance = dg.DagsterInstance.get()
    instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpu_slots or default_slots())
    wait_for_pool_slots_without_spinning()
    guard_pool_slot_claims()
    release_dead_runs(instance)
    sweep_abandoned_temps(home.root, skip=frozenset({home.dagster, home.mlflow}))  # their files grow with runs
    return instance


def _seconds_to_next_pool_claim_check(self: InstanceConcurrencyContext) -> float:
    if not self._pending_claims:
        return 0.0
    now = time.time()
    return max(0.0, min((ready_at - now for ready_at in self._pending_timeouts.values()), default=0.0))


def wait_for_pool_slots_without_spinning() -> None:
    """In this process, a step waiting for a pool slot sleeps until its next claim check.

    Dagster 1.13's in-process executor computes that wait as ``min(0, ...)``, never above zero, so a run whose step
    waits for the ``gpu`` slot (a second search on the same machine) spins a core for as long as it waits (measured:
    ~90% of a core). The climb CLI runs jobs in process, so it waits the interval Dagster itself scheduled (1 s,
    growing to 15 s) instead. Only the wait changes: when and in which order slots are claimed does not."""
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _seconds_to_next_pool_claim_check


def _claim_free_slot_only(
    self: SqlEventLogStorage, concurrency_key: str, run_id: str, step_key: str
) -> ConcurrencySlotStatus:
    with self.index_connection() as conn:
        free = sa.and_(
            ConcurrencySlotsTable.c.concurrency_key == concurrency_key,
            ConcurrencySlotsTable.c.step_key.is_(None),
            sa.not_(ConcurrencySlotsTable.c.deleted),
        )
        slot = conn.execute(sa.select(ConcurrencySlotsTable.c.id).where(free).limit(1)).scalar()
        if slot is None:
            return ConcurrencySlotStatus.BLOCKED
        claimed = conn.execute(
            ConcurrencySlotsTable.update()
            .values(run_id=run_id, step_key=step_key)
            .where(sa.and_(ConcurrencySlotsTable.c.id == slot, ConcurrencySlotsTable.c.step_key.is_(None)))
        ).rowcount
        return ConcurrencySlotStatus.CLAIMED if claimed else ConcurrencySlotStatus.BLOCKED


def guard_pool_slot_claims() -> None:
    """In this process, a pool slot is claimed only while it is still free.

    Dagster 1.13 claims a slot by selecting a free row and then updating it by id. On SQLite (the local instance)
    ``FOR UPDATE`` is a no-op, so two processes that select the same free row at once both update it and both
    step in: a lake pool stops being a lock and the ``gpu`` pool grants a device twice (reproduced by
    ``test_a_pool_slot_is_never_granted_twice``). The update now also requires the row to be free, which SQLite
    applies atomically; the loser is told BLOCKED and claims again at its next check, as for any busy pool."""
    SqlEventLogStorage._claim_concurrency_slot = _claim_free_slot_only


UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def _run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process that executed the run: the first engine event naming a pid (in-process or run worker)."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data
        pid = data.metadata.get("pid") if data else None
        if pid is not None:
            return int(pid.value)
    return None


def local_run_tags() -> dict[str, str]:
    """Tags for a run executed in this process (the climb CLI's): a sensor on this machine may release it if killed."""
    return {HOST_TAG: socket.gethostname()}


def release_dead_runs(instance: dg.DagsterInstance, host: str | None = None) -> list[str]:
    """Mark as failed every unfinished run whose process is gone, and free the pool slots it held (with ``host``:
    only the runs the climb CLI executed on that machine).

    A run killed mid-step (SIGKILL, OOM, a closed laptop) never reports its end: it stays STARTED and keeps its
    ``gpu`` slot, so the next GPU step of any run waits forever. Run monitoring only frees the slots of runs that
    ended, and cannot see that an in-process run died. Local instance only: a pid means something on this machine.
    """
    unfinished = dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: host} if host else {})
    released = []
    for run in instance.get_runs(filters=unfinished):
        pid = _run_pid(instance, run.run_id)
        if pid is None or process_alive(pid):
            continue
        instance.report_run_failed(run, f"Its process (pid {pid}) is gone: it was killed before it could finish.")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def build_dead_run_sensor() -> dg.SensorDefinition:
    """``climb ui`` releases what a killed ``climb`` command left running when it opens the instance; this sensor does
    the same under a ``dagster dev`` or daemon started any other way, for the runs the CLI executed on this machine
    (a pid from another machine proves nothing here, so other runs are left to Dagster's run monitoring)."""

    @dg.sensor(name="dead_run_sensor", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def dead_run_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        released = release_dead_runs(context.instance, host=socket.gethostname())
        for run_id in released:
            context.log.warning(f"Run {run_id} was killed with its climb process: marked failed, its pool slots freed")
        return dg.SkipReason(f"released {len(released)} runs of killed climb processes: {', '.join(released)}"
                             if released else "no run left behind by a killed climb process")  # fmt: skip

    return dead_run_sensor
