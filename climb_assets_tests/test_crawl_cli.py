"""`climb crawl`: a user's own shards and target, end to end without the UI, as a script would run it."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from climb_assets.demo.corpus import _kind_docs
from climb_assets_tests.conftest import TINY_SEARCH, TINY_SEARCH_RUN_CONFIG

REPO = Path(__file__).resolve().parents[1]


def climb(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIMB_HOME": str(home), "CLIMB_EMBEDDING_MODEL": "minilm", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "climb_assets.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def test_crawl_ingests_clusters_and_searches_for_the_named_target(tmp_path):
    home = tmp_path / "climb"
    landing = home / "landing"
    landing.mkdir(parents=True)
    kinds = {"code": 40, "shakespeare": 40, "news": 50}
    docs = {kind: [d.text for d in _kind_docs(kind, 0, n)] for kind, n in kinds.items()}
    for i, kind in enumerate(kinds):
        rows = [{"text": t} for t in docs[kind][:-10]]
        (landing / f"part-{i:04d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "my_domain_heldout.jsonl"
    target.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs["news"][-10:]))
    config = tmp_path / "tiny.yaml"
    resources = TINY_SEARCH_RUN_CONFIG["resources"] | {"search": {"config": TINY_SEARCH}}
    config.write_text(yaml.safe_dump({**TINY_SEARCH_RUN_CONFIG, "resources": resources}))

    missing = climb(home, "crawl", "--target-texts", str(tmp_path / "nope.jsonl"))
    assert missing.returncode != 0 and "no such file" in missing.stderr

    done = climb(home, "crawl", "--target-texts", str(target), "--config", str(config))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((home / "crawl_summary.json").read_text())
    climbmix = home / "climbmix" / summary["search_key"]  # this search's own ClimbMix
    assert summary["climbmix"] == str(climbmix) and f"ClimbMix + manifest.json  {climbmix}" in done.stdout
    assert sorted(summary["new_shards"]) == ["part-0000.jsonl", "part-0001.jsonl", "part-0002.jsonl"]
    manifest = json.loads((climbmix / "manifest.json").read_text())
    assert manifest["search_key"] == summary["search_key"]
    # the search measured the user's target file, not the default one
    assert manifest["target"]["texts_sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert (climbmix / "proof.md").exists()

    again = climb(home, "ingest")
    assert again.returncode == 0 and "nothing new" in again.stdout


def test_ingest_reports_refused_files_in_the_catalog(tmp_path):
    home = tmp_path / "climb"
    (home / "landing").mkdir(parents=True)
    (home / "landing" / "notes.txt").write_text("not a shard")
    done = climb(home, "ingest")
    assert done.returncode == 0 and "nothing new" in done.stdout
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (record,) = instance.fetch_observations(dg.AssetKey("raw_shards"), limit=5).records
        assert record.asset_observation.metadata["newly_rejected"].value == ["notes.txt"]
