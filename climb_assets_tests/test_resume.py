"""Resuming after a killed proxy: a crashed proxy run is re-run alone; finished runs are never repeated.

A tiny search state is written by hand (raw shards, super-clusters, a target set), the tokenizer and the iteration-1
candidates are materialized in-process, then ``iteration_1/proxy_results`` runs in a child process that is SIGKILLed
while it trains a proxy. Everything runs on the platform's own instance (``prepare_instance``: one slot per pool), so
the killed run leaves its ``gpu`` slot claimed, as it would for a user. Re-materializing must release that slot, keep
every finished proxy's result file untouched, train only the rest, and mark the MLflow run the killed process left
RUNNING as FAILED.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from climb_assets.demo.corpus import _kind_docs
from climb_assets.home import ClimbHome
from climb_assets.instance import prepare_instance, release_dead_runs
from climb_assets.lake import proxy_markers_dir
from climb_assets.resources import ClimbHomeResource
from climb_assets.search.assets import build_search_assets
from climb_assets.search.keys import SearchPlan
from climb_assets.search.settings import SearchSettings
from climb_assets.search.tracking import MlflowTracking, local_tracking_uri
from climb_assets.storage import atomic_path
from climb_assets.tags import GPU_POOL
from climb_assets_tests.conftest import TINY_SEARCH

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = 4
# Proxies long enough (about a second each) that the child is reliably caught in the middle of one.
SETTINGS = {**TINY_SEARCH, "proxies_per_iteration": [CANDIDATES, 3, 3], "token_budget": 32_000,
            "base_token_budget": 0, "max_repeats": 20.0}  # fmt: skip
PROXY_RESULTS = dg.AssetKey(["iteration_1", "proxy_results"])
# The child trains on one core: its proxies then take the same time however busy the other core is.
# A base long enough (a few seconds) to be caught while it trains.
BASE_SETTINGS = {**SETTINGS, "base_token_budget": 96_000}
CHILD = """
import json, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from climb_assets_tests.test_resume import materialize_search
materialize_search(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))
"""


def start_child(home: ClimbHome, keys: list[list[str]], settings: dict, log: Path) -> subprocess.Popen:
    """``materialize_search`` in a child process on one core, its output in ``log``."""
    env = {**os.environ, "CLIMB_HOME": str(home.root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(home.root), json.dumps(keys), json.dumps(settings)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)


def materialize_search(root: str, keys: list[list[str]], settings: dict = SETTINGS) -> bool:
    """Materialize some assets of the tiny search in this process, on the platform instance in CLIMB_HOME/dagster."""
    home = ClimbHome(Path(root))
    resources = {
        "climb": ClimbHomeResource(root=root),
        "search": SearchSettings(**settings),
        "mlflow_tracking": MlflowTracking(tracking_uri=local_tracking_uri(home)),
    }
    with prepare_instance(home) as instance:
        result = dg.materialize(
            build_search_assets(1), selection=[dg.AssetKey(k) for k in keys], resources=resources, instance=instance
        )
        return result.success


def write_search_state(home: ClimbHome) -> None:
    """What the search reads: two raw shards, three super-clusters of clearly different text, a target set."""
    prose = [d.text for d in _kind_docs("shakespeare", 0, 30)]
    code = [d.text for d in _kind_docs("code", 0, 20)]
    digits = [" ".join(str((i * 7919 + j * 31) % 1000) for j in range(150)) for i in range(20)]
    rows = [
        (g, f"g{g}-{i:03d}", text) for g, texts in enumerate([prose[:24], code, digits]) for i, text in enumerate(texts)
    ]
    docs = pl.DataFrame(
        {
            "doc_id": [doc_id for _, doc_id, _ in rows],
            "text": [text for _, _, text in rows],
            "shard": [f"shard-{i % 2}" for i in range(len(rows))],
            "super_cluster_id": [g for g, _, _ in rows],
        }
    ).with_columns(
        row_number=pl.int_range(pl.len()).over("shard").cast(pl.Int64),
        n_chars=pl.col("text").str.len_chars().cast(pl.Int64),
        n_tokens=pl.col("text").str.count_matches(r"\w+|[^\w\s]").cast(pl.Int64),
        source_kind=pl.lit(None, pl.String),
        meta=pl.lit(None, pl.String),
    )
    raw = home.lake_dir("raw_shards")
    raw.mkdir(parents=True)
    for (shard,), frame in docs.group_by("shard"):
        frame.drop("super_cluster_id").write_parquet(raw / f"{shard}.parquet")
    supers = home.lake_dir("super_clusters")
    supers.mkdir(parents=True)
    fine = (pl.col("super_cluster_id") * 2 + pl.int_range(pl.len()).over("super_cluster_id") % 2).alias("cluster_id")
    docs.select("doc_id", fine, "super_cluster_id").write_parquet(supers / "documents.parquet")
    pl.DataFrame(
        {"super_cluster_id": [0, 1, 2], "label": ["prose", "code", "digits"], "version": ["v1"] * 3}
    ).write_parquet(supers / "super_clusters.parquet")
    pl.DataFrame({"cluster_id": list(range(7)), "decision": ["keep"] * 6 + ["prune"],
                  "super_cluster_id": [0, 0, 1, 1, 2, 2, None]}).write_parquet(supers / "mapping.parquet")  # fmt: skip
    (home.targets / "target.jsonl").write_text("".join(json.dumps({"text": t[:1500]}) + "\n" for t in prose[24:]))


def proxy_runs(home: ClimbHome) -> list:
    """Every proxy run (not the iteration's parent run) in the local MLflow store."""
    client = MlflowClient(local_tracking_uri(home))
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith("climb-search/")]
    runs = client.search_runs(experiments, max_results=1000) if experiments else []
    return [r for r in runs if "climb.candidate" in r.data.tags]


def wait_for(condition, timeout: float, child: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if child.poll() is not None:
            pytest.fail(f"the proxy process exited ({child.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{log.read_text()[-4000:]}")


@pytest.fixture
def killed_search(home, tmp_path, monkeypatch):
    """The search state with iteration 1's proxy training killed by SIGKILL part way through."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))  # prepare_instance sets it; restored after the test
    write_search_state(home)
    assert materialize_search(str(home.root), [["proxy_tokenizer"], ["proxy_base_checkpoint"],
                                               ["iteration_1", "mixture_candidates"]])  # fmt: skip
    proxies = proxy_markers_dir(home)
    log = tmp_path / "child.log"
    child = start_child(home, [PROXY_RESULTS.path], SETTINGS, log)
    try:
        wait_for(lambda: list(proxies.glob("*.json")), 240, child, log, "the first proxy result")

        def in_training():
            """Proxy runs opened but with no metrics yet: the proxy is training, its result seconds away."""
            finished = {p.stem for p in proxies.glob("*.json")}
            return [r for r in proxy_runs(home) if r.info.status == "RUNNING" and not r.data.metrics
                    and r.data.tags["climb.fingerprint"] not in finished]  # fmt: skip

        with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
            assert release_dead_runs(instance) == []  # the child's run is alive: never released
        wait_for(in_training, 120, child, log, "a proxy run in training")
    finally:
        kill(child)
    assert child.returncode == -signal.SIGKILL
    return home


def test_killed_proxy_run_is_rerun_alone(killed_search):
    home = killed_search
    plan = SearchPlan(home, SearchSettings(**SETTINGS))
    proxies = proxy_markers_dir(home)
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in proxies.glob("*.json")}
    assert 1 <= len(finished) < CANDIDATES
    left_running = {
        r.info.run_id: r.data.tags["climb.fingerprint"] for r in proxy_runs(home) if r.info.status == "RUNNING"
    }
    assert left_running and not {f"{key}.json" for key in left_running.values()} & set(finished)
    # the killed Dagster run never reported its end and still holds the only gpu slot
    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        (killed,) = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        slots = instance.event_log_storage.get_concurrency_info(GPU_POOL)
        assert slots.slot_count == 1
        # every proxy is its own step: the slot is held by the very proxy that was killed
        ((run_id, step),) = [(s.run_id, s.step_key) for s in slots.claimed_slots]
        assert run_id == killed.run_id and step.startswith("iteration_1__proxy_results.iteration_1_proxy_train[it1_c")
    # opening the platform instance releases it (else the resumed step would wait for the slot forever)
    with prepare_instance(home) as instance:
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots == []

    assert materialize_search(str(home.root), [PROXY_RESULTS.path])

    # finished proxies were not trained again: their result files are byte-identical and untouched
    for name, (mtime, content) in finished.items():
        assert (proxies / name).stat().st_mtime_ns == mtime and (proxies / name).read_bytes() == content
    candidates = pl.read_parquet(plan.candidates_path(1))["candidate_id"].to_list()
    assert len(candidates) == CANDIDATES
    results = pl.read_parquet(plan.results_path(1))
    assert sorted(results["candidate_id"]) == sorted(candidates) and results["objective"].is_finite().all()
    keys = results["fingerprint"].to_list()
    assert sorted(p.stem for p in proxies.glob("*.json")) == sorted(keys)
    # exactly the finished ones were reused; the rest were trained by the resumed run
    assert {f"{k}.json" for k in results.filter(pl.col("reused"))["fingerprint"]} == set(finished)

    runs = proxy_runs(home)
    by_id = {r.info.run_id: r for r in runs}
    for run_id in left_running:
        assert by_id[run_id].info.status == "FAILED"
    for key in keys:
        mine = [r for r in runs if r.data.tags["climb.fingerprint"] == key]
        done = [r for r in mine if r.info.status == "FINISHED"]
        assert len(done) == 1, (key, [r.info.status for r in mine])
        assert json.loads((proxies / f"{key}.json").read_text())["mlflow_run_id"] == done[0].info.run_id
        # a finished proxy has its one run; a killed one has that run (now FAILED) and the re-run
        assert len(mine) == (1 if f"{key}.json" in finished else 1 + (key in left_running.values()))
    assert not [r for r in runs if r.info.status == "RUNNING"]

    # the resume is a new, successful Dagster run, and it gave its slot back
    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        resumed, failed = instance.get_runs(limit=2)
        assert failed.run_id == killed.run_id and failed.status == dg.DagsterRunStatus.FAILURE
        assert resumed.status == dg.DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(PROXY_RESULTS)
        assert event.run_id == resumed.run_id
        assert event.asset_materialization.metadata["proxies"].value == CANDIDATES
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots == []


def test_a_base_checkpoint_killed_while_it_trains_leaves_nothing_and_is_trained_again(home, tmp_path, monkeypatch):
    """SIGKILL in the base checkpoint step (a second point of the main job, before any proxy): no checkpoint is
    visible, its lock and gpu slot are free again, and the next run trains it and the proxies go on from it."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    write_search_state(home)
    assert materialize_search(str(home.root), [["proxy_tokenizer"]], BASE_SETTINGS)
    plan = SearchPlan(home, SearchSettings(**BASE_SETTINGS))
    lock = plan.base_path.with_suffix(".lock")
    log = tmp_path / "child.log"
    child = start_child(home, [["proxy_base_checkpoint"]], BASE_SETTINGS, log)
    try:  # the lock holds the trainer's pid from the moment it starts loading the corpus to the checkpoint's rename
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(child.pid), 120, child, log, "the base training")
    finally:
        kill(child)
    assert child.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    assert not plan.base_path.exists() and not plan.base_path.with_suffix(".json").exists()

    with prepare_instance(home) as instance:  # releases the killed run's gpu slot
        assert instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots == []
    assert materialize_search(str(home.root), [["proxy_base_checkpoint"]], BASE_SETTINGS)
    with dg.DagsterInstance.from_config(str(home.dagster)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("proxy_base_checkpoint"))
        assert event.asset_materialization.metadata["reused"].value is False
    record = json.loads(plan.base_path.with_suffix(".json").read_text())
    assert record["fingerprint"] == plan.base_key and record["tokens_seen"] >= BASE_SETTINGS["base_token_budget"]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from climb_assets.storage import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    (tmp / "part-0.parquet").write_bytes(b"half written")
    os.kill(os.getpid(), signal.SIGKILL)
"""


KILLED_SWAP = """
import os, signal, sys
from pathlib import Path
from climb_assets.storage import atomic_path
final = Path(sys.argv[1])
final.mkdir(parents=True)
(final / "part-0.parquet").write_bytes(b"version 1")
replace, calls = os.replace, []
def replace_then_die(src, dst):  # the swap's second rename never happens
    calls.append(dst)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
os.replace = replace_then_die
with atomic_path(final) as tmp:
    tmp.mkdir()
    (tmp / "part-0.parquet").write_bytes(b"version 2")
"""


def test_a_directory_swap_killed_between_its_renames_gets_its_last_version_back(home, monkeypatch):
    """Killed after moving the old version aside and before moving the new one in: the output is missing until the
    next ``prepare_instance`` puts the previous complete version back (and removes the new one's temp)."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    final = home.lake / "climbmix" / "key"
    child = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(final)], cwd=REPO, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not final.exists() and len([p for p in final.parent.iterdir() if p.name.endswith(".old")]) == 1
    with prepare_instance(home):
        pass
    assert (final / "part-0.parquet").read_bytes() == b"version 1"
    assert [p.name for p in final.parent.iterdir()] == ["key"]


def test_a_killed_writers_temp_output_is_swept_and_a_live_writers_is_kept(home, monkeypatch):
    """A writer SIGKILLed inside ``atomic_path`` leaves its hidden temp directory (never visible as the output);
    the next ``prepare_instance`` removes it, and never touches the temp of a writer that is still alive."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    final = home.lake / "search" / "token_files" / "shard-0"
    child = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final)], cwd=REPO, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    abandoned = [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.pid")]
    assert len(abandoned) == 1 and not final.exists()
    with atomic_path(home.lake / "live" / "result.json") as live:
        live.write_text("{}")
        with prepare_instance(home):
            pass
        assert not abandoned[0].exists()
        assert live.exists()  # this process is alive: its temp stays until its own rename
    assert (home.lake / "live" / "result.json").read_text() == "{}"


KILLED_CHILD = """
import sys, time
import dagster as dg
from climb_assets.instance import guard_pool_slot_claims, local_run_tags

guard_pool_slot_claims()  # as in every climb process: three started at once claim three different slots

@dg.op(pool="gpu")
def train():
    print("training", flush=True)
    time.sleep(600)

@dg.job
def proxy():
    train()

with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    proxy.execute_in_process(instance=instance, tags=local_run_tags() if sys.argv[2] == "climb" else {})
"""


def test_the_dead_run_sensor_releases_what_a_killed_climb_process_left_on_this_machine_only(tmp_path):
    """Under a ``dagster dev`` started without ``climb ui``, nothing else frees the pool slot of a run that a killed
    ``climb`` command executed in its own process; runs from elsewhere (another launcher, another machine) and live
    ones are left alone."""
    from climb_assets.instance import INSTANCE_YAML, build_dead_run_sensor

    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text(INSTANCE_YAML)
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, 3)
        children = {}
        for name, launched_by in (("killed", "climb"), ("alive", "climb"), ("elsewhere", "other")):
            children[name] = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(tmp_path / "dagster"), launched_by],
                                              stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
        try:
            for child in children.values():
                assert child.stdout.readline().strip() == "training"  # inside the op, holding a gpu slot
            for name in ("killed", "elsewhere"):
                kill(children[name])
            runs = instance.get_runs()
            assert len(runs) == 3 and len(instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots) == 3

            result = build_dead_run_sensor()(dg.build_sensor_context(instance=instance))
            statuses = {run.run_id: instance.get_run_by_id(run.run_id).status for run in runs}
            assert sorted(status.value for status in statuses.values()) == ["FAILURE", "STARTED", "STARTED"]
            (released,) = [run_id for run_id, status in statuses.items() if status == dg.DagsterRunStatus.FAILURE]
            assert instance.get_run_by_id(released).tags["climb/host"] and released in result.skip_message
            claimed = {slot.run_id for slot in instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots}
            assert released not in claimed and len(claimed) == 2  # the live run's and the other launcher's stay
        finally:
            for child in children.values():
                kill(child)


def test_a_pool_slot_is_never_granted_twice(tmp_path):
    """Two processes both assigned a step of a one-slot pool (Dagster checks for a free slot, then queues, so two at
    once both pass) and both past the select of the same free slot row: the second's update must not overwrite the
    first's claim. Unguarded, both are told CLAIMED and both write: a lake pool stops being a lock."""
    import sqlalchemy as sa

    from climb_assets.instance import INSTANCE_YAML, guard_pool_slot_claims

    guard_pool_slot_claims()
    (tmp_path / "dagster.yaml").write_text(INSTANCE_YAML)
    open_instance = dg.DagsterInstance.from_config
    with open_instance(str(tmp_path)) as first, open_instance(str(tmp_path)) as second:
        first.event_log_storage.set_concurrency_slots("lake_test", 1)
        for run_id in ("run-a", "run-b"):
            first.event_log_storage.add_pending_step("lake_test", run_id, "write", should_assign=True)
        first_claim = []

        def first_claims_in_between(conn, cursor, statement, *args):
            if not first_claim and statement.startswith("UPDATE concurrency_slots"):  # second selected the free row
                first_claim.append("claiming")  # its own update comes through here too
                first_claim[0] = first.event_log_storage.claim_concurrency_slot("lake_test", "run-a", "write")

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", first_claims_in_between)
        try:
            second_claim = second.event_log_storage.claim_concurrency_slot("lake_test", "run-b", "write")
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", first_claims_in_between)
        assert first_claim[0].is_claimed and not second_claim.is_claimed
        claimed = first.event_log_storage.get_concurrency_info("lake_test").claimed_slots
        assert [(slot.run_id, slot.step_key) for slot in claimed] == [("run-a", "write")]
        first.event_log_storage.free_concurrency_slot_for_step("run-a", "write")
        assert second.event_log_storage.claim_concurrency_slot("lake_test", "run-b", "write").is_claimed  # its turn


def test_every_process_that_loads_the_code_location_claims_pool_slots_through_the_guard():
    """Run workers of ``dagster dev`` and the daemon never call ``prepare_instance``; loading the definitions is what
    they share with the climb CLI."""
    check = ("from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage as S\n"
             "import climb_assets.definitions\n"
             "from climb_assets.instance import _claim_free_slot_only\n"
             "print(S._claim_concurrency_slot is _claim_free_slot_only)")  # fmt: skip
    loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip().splitlines()[-1] == "True", loaded.stderr[-2000:]


WAITING_CHILD = """
import sys, time
from pathlib import Path
import dagster as dg
from climb_assets.home import ClimbHome
from climb_assets.instance import prepare_instance

@dg.op(pool="gpu")
def train():
    print("training", flush=True)
    while not Path(sys.argv[2]).exists():  # holds the slot until the test says
        time.sleep(0.1)

@dg.job
def proxy():
    train()

proxy.execute_in_process(instance=prepare_instance(ClimbHome(Path(sys.argv[1]))))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_run_waiting_for_the_gpu_slot_sleeps_instead_of_spinning(tmp_path):
    """Two climb processes on one machine, one gpu slot: the second waits for it without burning a core (Dagster's
    own in-process wait is always 0 s), and runs as soon as the first lets go."""
    home = ClimbHome(tmp_path / "climb").ensure()
    release = tmp_path / "release"
    children = [subprocess.Popen([sys.executable, "-c", WAITING_CHILD, str(home.root), str(release)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]  # fmt: skip
    try:
        assert children[0].stdout.readline().strip() == "training"  # holds the only gpu slot
        children.append(subprocess.Popen([sys.executable, "-c", WAITING_CHILD, str(home.root), str(release)],
                                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        waiting = children[1]
        for line in waiting.stderr:
            if "Step blocked by limit for pool gpu" in line:
                break
        else:
            pytest.fail("the second run never waited for the gpu slot")
        used = cpu_seconds(waiting.pid)
        time.sleep(6)
        assert cpu_seconds(waiting.pid) - used < 0.6, "the waiting run spins"  # < 10% of a core while it waits
        release.touch()
        assert waiting.stdout.readline().strip() == "training"  # the slot freed, the waiting step ran
        assert waiting.wait(timeout=60) == 0 and children[0].wait(timeout=60) == 0
    finally:
        for child in children:
            kill(child)
