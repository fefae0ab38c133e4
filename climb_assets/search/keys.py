"""Keys: every cached unit of work is stored under a hash of everything that determined its result.

A position (``it1-c000``) or a file name says nothing about the settings a result was made with; reusing a result
under such a key silently reports work that never ran. Every cached result (tokenizer, base checkpoint, proxy run,
proof run, ClimbMix) is therefore stored under ``fingerprint(ingredients)``, and the ingredients are written next to
it. Same fingerprint: reuse (a killed run resumes). Any difference: the work is done again under a new key; old
results stay on disk but are never read for new work. ``SearchPlan`` derives one search's keys from its settings and
the lake's content.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from climb_assets import lake
from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import ProxySettings
from climb_assets.search.settings import SearchSettings, result_settings_of
from climb_assets.storage import exclusive_lock, file_sha256, write_json_atomic

# The code's own version of each algorithm: bump one when a change alters what that step produces, so results made
# by older code are never reused for it. Also used as the Dagster code_version of the assets that run the step.
ALGORITHM_VERSIONS = {
    "tokenizer": "bpe-1",
    "token_files": "tokens-1",
    "proxy": "proxy-3",  # 3: token_stream "windows" spreads each group's windows (random positions: random_windows)
    "predictor": "select-2",
    "candidates": "dirichlet-2",  # 2: a structure change searches again only what moved (partial restart)
    "climbmix": "climbmix-3",  # 3: the final picks refine around the best trained mixtures (search.final_pick)
    "proof": "proof-1",
    "loss_guided": "doremi-1",
}

FINGERPRINT_CHARS = 20


def _canonical(value: Any) -> Any:
    """JSON-stable form: floats by their exact repr (not rounded), dict keys sorted, tuples as lists."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot fingerprint a non-finite float: {value}")
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist())
    return value


def fingerprint(ingredients: dict[str, Any]) -> str:
    """A short, stable hash of ``ingredients`` (JSON with sorted keys, floats exact)."""
    blob = json.dumps(_canonical(ingredients), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def cached_file_sha256(path: str | os.PathLike | None) -> str | None:
    """sha256 of a file's bytes (cached per process by path, size and mtime); None when there is no such file."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class SearchPlan:
    """One search's identity and where its state lives, derived from the settings and the lake's content.

    The keys are computed, never stored as pointers, so every step (and every process) agrees on them.
    """

    home: ClimbHome
    search: SearchSettings

    @cached_property
    def cluster_version(self) -> str:
        table = lake.super_cluster_table_path(self.home)
        if not table.exists():
            raise dg.Failure("no super-clusters yet: materialize quality_filtered_clusters (recluster_job) first")
        versions = pl.read_parquet(table, columns=["version"])["version"].unique().to_list()
        return str(versions[0]) if versions else "unversioned"

    @cached_property
    def membership_sha(self) -> str:
        """Which documents are in which super-cluster (the cluster version names it; the hash proves it). A missing
        file is an error, never a key: a key made of "absent" would match every search's."""
        sha = cached_file_sha256(lake.super_cluster_documents_path(self.home))
        if sha is None:
            raise dg.Failure("no super-cluster membership file: materialize quality_filtered_clusters (recluster_job)")
        return sha

    @cached_property
    def corpus_ingredients(self) -> dict:
        return {"cluster_version": self.cluster_version, "membership_sha256": self.membership_sha}

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        """The key the tokenizer is stored under: its own settings, not who is in which super-cluster. The first
        tokenizer trained for them stays across crawl waves and re-clusterings (so does every shard's token file);
        ``tokenizer_generation`` asks for a new one. What it was trained on is recorded beside it, and every
        downstream key holds the tokenizer's content hash."""
        s = self.search
        return fingerprint({
            "algorithm": ALGORITHM_VERSIONS["tokenizer"], "vocab_size": s.tokenizer_vocab_size,
            "sample_docs": s.tokenizer_sample_docs, "seed": s.seed, "generation": s.tokenizer_generation,
        })  # fmt: skip

    @property
    def tokenizer_path(self) -> Path:
        return lake.tokenizer_path(self.home, self.tokenizer_fingerprint)

    @cached_property
    def tokenizer_sha(self) -> str:
        sha = cached_file_sha256(self.tokenizer_path)
        if sha is None:
            raise dg.Failure(f"no tokenizer for these settings ({self.tokenizer_fingerprint}): materialize proxy_tokenizer first")
        return sha

    @cached_property
    def parent_base(self) -> tuple[str, Path] | None:
        """(key, path) of the base checkpoint this search's base continues: the parent search's, when
        ``base_continue_fraction`` asks for it and that base is still in the lake; None: a base from scratch."""
        if self.search.base_token_budget <= 0 or self.search.base_continue_fraction <= 0 or not self.parent_search_key:
            return None
        entry = lake.lineage_dir(self.home, self.lineage_key) / "finished" / f"{self.parent_search_key}.json"
        key = json.loads(entry.read_text()).get("base_key") if entry.is_file() else None
        path = lake.base_checkpoint_path(self.home, key) if key else None
        return (key, path) if path is not None and path.is_file() else None

    @cached_property
    def base_key(self) -> str | None:
        if self.search.base_token_budget <= 0:
            return None
        ingredients = {
            "algorithm": ALGORITHM_VERSIONS["proxy"], **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "settings": result_settings_of(self.search.base_settings()), "seed": self.search.seed, "mixture": "natural",
        }  # fmt: skip
        if self.parent_base:  # trained on from the parent's base: its bytes and how far it trains on are the key too
            ingredients |= {"continues_sha256": cached_file_sha256(self.parent_base[1]),
                            "continue_settings": result_settings_of(self.search.base_continue_settings())}  # fmt: skip
        return fingerprint(ingredients)

    @property
    def base_path(self) -> Path | None:
        return lake.base_checkpoint_path(self.home, self.base_key) if self.base_key else None

    @property
    def base_cluster_loss_path(self) -> Path | None:
        """The base checkpoint's held-out bits per byte per super-cluster, kept with it."""
        return self.base_path.with_suffix(".cluster_bpb.parquet") if self.base_path else None

    @cached_property
    def base_sha(self) -> str | None:
        if self.base_path is None:
            return None
        sha = cached_file_sha256(self.base_path)
        if sha is None:
            raise dg.Failure(f"no base checkpoint for these settings ({self.base_key}): materialize proxy_base_checkpoint")
        return sha

    @cached_property
    def target_ingredients(self) -> dict:
        """What the target measures: its spec and the content of the files it reads."""
        spec = self.search.target_spec()
        texts, mc = self.search.target_paths(self.home)
        return {
            "kind": spec.kind,
            "weights": spec.weights,
            "texts_sha256": cached_file_sha256(texts) if "bpb" in spec.needs else None,
            "mc_sha256": cached_file_sha256(mc) if "mc" in spec.needs else None,
            "max_target_texts": self.search.max_target_texts,
        }

    @cached_property
    def lineage_key(self) -> str:
        """Everything that makes a search but the corpus: the searches of one lineage differ only in crawl waves (and
        re-clusterings), so a later one can continue an earlier one."""
        return fingerprint({
            "algorithms": ALGORITHM_VERSIONS, "tokenizer_sha256": self.tokenizer_sha, "target": self.target_ingredients,
            "settings": self.search.lineage_settings(),
        })  # fmt: skip

    @cached_property
    def parent_search_key(self) -> str | None:
        """The finished search of this lineage that this one continues: the latest finished over another corpus when
        this corpus was first searched, pinned then (so the key never changes once any of its steps ran, even after
        this search finishes itself); None for the first search of a lineage or with ``search_start: fresh``."""
        if self.search.search_start == "fresh":
            return None
        directory = lake.lineage_dir(self.home, self.lineage_key)
        corpus = fingerprint(self.corpus_ingredients)
        pin = directory / "parents" / f"{corpus}.json"
        with exclusive_lock(directory / "pins.lock"):
            if not pin.exists():
                finished = [json.loads(p.read_text()) for p in sorted((directory / "finished").glob("*.json"))]
                earlier = [f for f in finished if f["corpus"] != corpus]
                parent = max(earlier, key=lambda f: f["finished_ns"])["search_key"] if earlier else None
                write_json_atomic({"parent": parent, "corpus": self.corpus_ingredients, "pinned_ns": time.time_ns()}, pin)
            return json.loads(pin.read_text())["parent"]

    def register_finished(self, iterations: int) -> Path:
        """Record this search as finished in its lineage: the next crawl wave's search continues from it."""
        entry = {"search_key": self.search_key, "corpus": fingerprint(self.corpus_ingredients), "iterations": iterations,
                 "cluster_version": self.cluster_version, "base_key": self.base_key,
                 "finished_ns": time.time_ns()}  # fmt: skip
        return write_json_atomic(entry, lake.lineage_dir(self.home, self.lineage_key) / "finished" / f"{self.search_key}.json")

    @cached_property
    def search_key(self) -> str:
        """Cluster version + every setting + the tokenizer, base and target + the search it continues: one search,
        one directory."""
        return fingerprint({
            "algorithms": ALGORITHM_VERSIONS, **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "base": self.base_key, "target": self.target_ingredients, "settings": self.search.result_settings(),
            "parent": self.parent_search_key,
        })  # fmt: skip

    def candidates_path(self, iteration: int) -> Path:
        return lake.search_iteration_dir(self.home, self.search_key, iteration) / "candidates.parquet"

    def results_path(self, iteration: int) -> Path:
        return lake.search_iteration_dir(self.home, self.search_key, iteration) / "results.parquet"

    def cluster_loss_path(self, iteration: int) -> Path:
        """Per super-cluster: held-out bits per byte of the base and of the iteration's best proxy."""
        return lake.search_iteration_dir(self.home, self.search_key, iteration) / "cluster_loss.parquet"

    def predictor_path(self, iteration: int) -> Path:
        return lake.search_iteration_dir(self.home, self.search_key, iteration) / "predictor"

    def baseline_path(self) -> Path:
        """The random-search baselines' summary (best random proxy, RegMix's pick); results.parquet beside it."""
        return lake.search_state_dir(self.home, self.search_key) / "random_search" / "baselines.json"

    def run_key(self, weights: dict[str, float], settings: ProxySettings, seed: int, init: str | None) -> str:
        """The key of one training run: its mixture, settings, seed, starting point, data and target."""
        return fingerprint({
            "algorithm": ALGORITHM_VERSIONS["proxy"], **self.corpus_ingredients, "tokenizer_sha256": self.tokenizer_sha,
            "init_sha256": init, "target": self.target_ingredients, "weights": weights,
            "settings": result_settings_of(settings), "seed": seed,
        })  # fmt: skip

    def mlflow_tags(self) -> dict[str, str]:
        return {"climb.cluster_version": self.cluster_version, "climb.search_key": self.search_key,
                "climb.lineage": self.lineage_key, "climb.parent_search": self.parent_search_key or "none"}  # fmt: skip
