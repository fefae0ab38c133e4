"""What a search reads back: its tokenizer and tokenized corpus (loaded once per process) and its proxy results."""

from functools import lru_cache
from pathlib import Path

import dagster as dg
import polars as pl

from climb_assets.home import ClimbHome
from climb_assets.lm.proxy import SearchCorpus, load_search_corpus
from climb_assets.lm.tokenizer import BPETokenizer, load_tokenizer
from climb_assets.search.keys import SearchPlan


@lru_cache(maxsize=2)
def _cached_inputs(home_root: str, tokenizer_file: str, stamp: tuple):
    tokenizer = load_tokenizer(tokenizer_file)
    return tokenizer, load_search_corpus(ClimbHome(Path(home_root)), tokenizer)


def search_inputs(plan: SearchPlan) -> tuple[BPETokenizer, SearchCorpus]:
    """Tokenizer and tokenized corpus, loaded once per process (keyed by the tokenizer's and membership's content)."""
    return _cached_inputs(str(plan.home.root), str(plan.tokenizer_path), (plan.tokenizer_sha, plan.membership_sha))


def weight_columns(groups: list[int]) -> list[str]:
    return [f"w_{g}" for g in groups]


def read_results(plan: SearchPlan, up_to: int) -> pl.DataFrame:
    """Every proxy result of this search up to iteration ``up_to``; a missing iteration is an error, not a gap."""
    paths = [plan.results_path(k) for k in range(1, up_to + 1)]
    missing = [k for k, p in enumerate(paths, start=1) if not p.exists()]
    if missing:
        raise dg.Failure(f"search {plan.search_key} has no proxy results for iteration(s) {missing}: materialize them first")
    return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
