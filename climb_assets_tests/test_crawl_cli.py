"""`climb crawl`: a user's own shards and target, end to end without the UI, as a script would run it."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from climb_assets.demo.corpus import _kind_docs
from climb_assets.home import ClimbHome
from climb_assets.lake import proxy_markers_dir, raw_shard_path, search_root
from climb_assets_tests.conftest import TINY_SEARCH, TINY_SEARCH_RUN_CONFIG

REPO = Path(__file__).resolve().parents[1]


def climb(home: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """``climb <args>`` in its own process, as a user's shell runs it (``wait=False``: started, not waited for)."""
    env = {**os.environ, "CLIMB_HOME": str(home), "CLIMB_EMBEDDING_MODEL": "minilm", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "climb_assets.cli", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its own process group: a kill takes its children too
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def crawl_inputs(tmp_path_factory):
    """A landing directory of three kinds of text, a target of held-out news, and tiny search settings."""
    tmp_path = tmp_path_factory.mktemp("crawl")
    home = tmp_path / "climb"
    landing = home / "landing"
    landing.mkdir(parents=True)
    kinds = {"code": 40, "shakespeare": 40, "news": 50}
    docs = {kind: [d.text for d in _kind_docs(kind, 0, n)] for kind, n in kinds.items()}
    for i, kind in enumerate(kinds):
        rows = [{"text": t} for t in docs[kind][:-10]]
        (landing / f"part-{i:04d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = {}
    for kind in kinds:
        targets[kind] = tmp_path / f"{kind}_heldout.jsonl"
        targets[kind].write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[kind][-10:]))
    config = tmp_path / "tiny.yaml"
    resources = TINY_SEARCH_RUN_CONFIG["resources"] | {"search": {"config": TINY_SEARCH}}
    config.write_text(yaml.safe_dump({**TINY_SEARCH_RUN_CONFIG, "resources": resources}))
    return home, targets, config


def test_crawl_ingests_clusters_and_searches_for_the_named_target(crawl_inputs):
    home, targets, config = crawl_inputs
    target = targets["news"]
    missing = climb(home, "crawl", "--target-texts", str(target.parent / "nope.jsonl"))
    assert missing.returncode != 0 and "no such file" in missing.stderr

    done = climb(home, "crawl", "--target-texts", str(target), "--config", str(config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((home / "crawl_summary.json").read_text())
    climbmix = home / "climbmix" / summary["search_key"]  # this search's own ClimbMix
    assert summary["climbmix"] == str(climbmix) and f"ClimbMix + manifest.json  {climbmix}" in done.stdout
    assert sorted(summary["new_shards"]) == ["part-0000.jsonl", "part-0001.jsonl", "part-0002.jsonl"]
    assert summary["shards_tokenized_before_search"] == []  # no tokenizer yet: the search's own step tokenized them
    manifest = json.loads((climbmix / "manifest.json").read_text())
    assert manifest["search_key"] == summary["search_key"]
    # the search measured the user's target file, not the default one
    assert manifest["target"]["texts_sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert (climbmix / "proof.md").exists()

    again = climb(home, "ingest")
    assert again.returncode == 0 and "nothing new" in again.stdout


def test_two_search_jobs_started_at_once_on_one_home_each_finish_with_their_own_outputs(crawl_inputs):
    """Two users (two targets) launch ``search_job`` on one home at the same moment: two processes, one Dagster
    instance, one MLflow store, one lake. Both finish; each ClimbMix, manifest and proof is its own search's, and
    what they share (the tokenizer, the base checkpoint) is made once."""
    home, targets, config = crawl_inputs
    crawled(home, targets, config)
    shared = search_root(ClimbHome(home))
    made = sorted((shared / "base").glob("*.pt")) + sorted((shared / "tokenizers").glob("*.json"))
    started = [climb(home, "run", "search_job", "--target-texts", str(targets[kind]), "--config", str(config),
                     wait=False) for kind in ("code", "shakespeare")]  # fmt: skip
    finished = [process.communicate(timeout=900) + (process.returncode,) for process in started]
    for out, err, code in finished:
        assert code == 0, out[-3000:] + err[-3000:]

    manifests = {}
    for kind in ("code", "shakespeare"):
        sha = hashlib.sha256(targets[kind].read_bytes()).hexdigest()
        (manifest,) = [m for m in map(json.loads, map(Path.read_text, (home / "climbmix").glob("*/manifest.json")))
                       if m["target"]["texts_sha256"] == sha]  # fmt: skip
        manifests[kind] = manifest
        climbmix = home / "climbmix" / manifest["search_key"]
        shards = pl.concat([pl.read_parquet(climbmix / name) for name in manifest["shards"]])
        assert shards.height == manifest["documents"]  # no half-written or foreign shard in its directory
        runs = pl.read_parquet(climbmix / "proof_runs.parquet")
        assert sorted(runs["mixture"].unique()) == [
            "best_random_proxy", "climbmix", "loss_guided", "natural", "regmix", "uniform"]
        assert "climbmix" in (climbmix / "proof.md").read_text()
    assert manifests["code"]["search_key"] != manifests["shakespeare"]["search_key"]
    # the crawl's tokenizer and base, reused by both: neither was made again
    assert sorted((shared / "base").glob("*.pt")) + sorted((shared / "tokenizers").glob("*.json")) == made
    assert not [p for d in ("lake", "climbmix") for p in (home / d).rglob("*.tmp")], "a half-written output is left"


def crawled(home: Path, targets: dict, config: Path) -> dict:
    """The crawl of ``home`` with the news target (run here unless a test above ran it): its summary."""
    if not (home / "crawl_summary.json").exists():
        done = climb(home, "crawl", "--target-texts", str(targets["news"]), "--config", str(config))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((home / "crawl_summary.json").read_text())


def kill_when(process: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL ``process`` and its children (dbt) as soon as ``ready()`` holds (polled), as a closed laptop would."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the crawl ended before the kill point"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def step_started(instance, step_key: str) -> bool:
    """Has any run on ``instance`` started the step ``step_key``?"""
    started = dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_START)
    return any(r.event_log_entry.step_key == step_key for r in instance.get_event_records(started, limit=200))


def test_a_crawl_killed_at_every_stage_ends_as_an_uninterrupted_one(crawl_inputs, tmp_path):
    """kill -9 while the shards are ingested, then inside the fit, the re-cluster's dbt build, a proxy's training and
    ClimbMix; the same command again each time. The final ClimbMix and proof equal an uninterrupted crawl's (same
    search key, weights and objectives), and no proxy that had finished before a kill is trained again."""
    reference_home, targets, config = crawl_inputs
    reference = crawled(reference_home, targets, config)
    home = tmp_path / "climb"
    shutil.copytree(reference_home / "landing", home / "landing")
    command = ("crawl", "--target-texts", str(targets["news"]), "--config", str(config))
    climb_home = ClimbHome(home)

    first_shard = raw_shard_path(climb_home, "part-0000.jsonl")  # written: the kill lands inside the ingest runs
    kill_when(climb(home, *command, wait=False), first_shard.exists)
    markers = proxy_markers_dir(climb_home)
    finished_before_a_kill = []  # after each kill: the proxies whose results were on disk
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        for kill_point in (
            lambda: step_started(instance, "cluster_centroids"),
            # dbt's build is most of the merge job (seconds); the merge step after it takes ~0.2 s, too short for a
            # polled kill to land inside it on a loaded machine
            lambda: step_started(instance, "dbt_quality_models"),
            lambda: len(list(markers.glob("*.json"))) >= 2,
            lambda: step_started(instance, "climbmix"),
        ):
            kill_when(climb(home, *command, wait=False), kill_point)
            finished_before_a_kill.append({p.name: p.stat().st_mtime_ns for p in markers.glob("*.json")})
        done = climb(home, *command)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # each kill left one run unfinished, inside the job it aimed at; the next command marked it failed
        killed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))[::-1]
        assert [run.job_name for run in killed] == [
            "ingest_shard_job", "cluster_fit_job", "recluster_job", "search_job", "search_job"]

    summary = json.loads((home / "crawl_summary.json").read_text())
    assert summary["search_key"] == reference["search_key"]
    manifests = [json.loads((h / "climbmix" / reference["search_key"] / "manifest.json").read_text())
                 for h in (reference_home, home)]  # fmt: skip
    assert manifests[0]["weights"] == manifests[1]["weights"]
    proofs = [pl.read_parquet(h / "climbmix" / reference["search_key"] / "proof_runs.parquet")
              .select("mixture", "seed", "objective").sort("mixture", "seed") for h in (reference_home, home)]  # fmt: skip
    assert proofs[0].equals(proofs[1])
    # the proxies that had finished before a kill were reused, not trained again
    now = {p.name: p.stat().st_mtime_ns for p in markers.glob("*.json")}
    assert finished_before_a_kill[-1] and all(now.items() >= finished.items() for finished in finished_before_a_kill)
    assert not [p for d in ("lake", "climbmix") for p in (home / d).rglob("*.tmp")], "a half-written output is left"


def test_ingest_reports_refused_files_in_the_catalog(tmp_path):
    home = tmp_path / "climb"
    (home / "landing").mkdir(parents=True)
    (home / "landing" / "notes.txt").write_text("not a shard")
    done = climb(home, "ingest")
    assert done.returncode == 0 and "nothing new" in done.stdout
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (record,) = instance.fetch_observations(dg.AssetKey("raw_shards"), limit=5).records
        assert record.asset_observation.metadata["newly_rejected"].value == ["notes.txt"]
