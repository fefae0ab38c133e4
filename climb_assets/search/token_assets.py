"""The token files as an asset: every raw shard tokenized once for the current tokenizer, before any proxy trains.

It sits between ``proxy_tokenizer`` and ``proxy_base_checkpoint`` (unpartitioned) rather than inside
``search_inputs`` alone: there, every proxy step's process would race to tokenize the same missing shards at once.
Here one step does it, and each later step's ``search_inputs`` only finds the files current (a stat per shard).
``search_inputs`` still calls the same ``ensure_token_files``, so a shard that arrives in between is never missed.
"""

from __future__ import annotations

import time

import dagster as dg

from climb_assets.resources import ClimbHomeResource
from climb_assets.search.plan import SearchPlan, SearchSettings
from climb_assets.search.token_files import ensure_token_files, token_dir, tokenizer_key
from climb_assets.search.tokenizer import load_tokenizer


@dg.asset(group_name="search", deps=["proxy_tokenizer"], kinds={"numpy"})
def proxy_token_files(climb: ClimbHomeResource, search: SearchSettings) -> dg.MaterializeResult:
    """Memory-mapped token files (``lake/tokens/<tokenizer sha256[:16]>/<shard>.bin|.idx``) for every raw shard;
    only shards without current files for this tokenizer are tokenized."""
    plan = SearchPlan(climb.home(), search)
    home = plan.home
    tokenizer = load_tokenizer(plan.tokenizer_path)
    started = time.perf_counter()
    done = ensure_token_files(home, tokenizer)
    return dg.MaterializeResult(
        metadata={
            "tokenizer_sha256": tokenizer_key(tokenizer),
            "shards_tokenized": len(done["tokenized"]),
            "shards_reused": len(done["reused"]),
            "tokenized": ", ".join(done["tokenized"][:20]) + (" ..." if len(done["tokenized"]) > 20 else ""),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(token_dir(home, tokenizer))),
        }
    )
