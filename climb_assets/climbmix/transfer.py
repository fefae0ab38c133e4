"""The transfer check: do the proxies' verdicts on the proof's mixtures hold for a larger model?

The proof's runs are replicas of the proxy (same shape, same tokens, from the same base), so they measure whether the
proxy agrees with itself. Here every proof mixture is trained again by a model ``transfer_width`` x wider and
``transfer_layers`` x deeper (non-embedding parameters grow with layers x width^2), from scratch on
``transfer_token_multiplier`` x the tokens, paired by seed. Reported, DataDecide-style: the rank correlation of the
mixtures' means at the two scales, the share of mixture pairs whose order the proxies decide the same way as the
larger model (pairwise decision accuracy), and ClimbMix's paired differences at the larger scale.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
from scipy import stats

from climb_assets.lm.model import GPT
from climb_assets.lm.proxy import ProxySettings
from climb_assets.metadata import markdown_table


def parameters(settings: ProxySettings, vocab_size: int) -> tuple[int, int]:
    """(all, non-embedding) parameters of a model of these settings: the token table and the position table are
    the embedding ones."""
    model = GPT(settings.model_config(vocab_size))
    total = model.num_params()
    return total, total - model.transformer.wte.weight.numel() - model.transformer.wpe.weight.numel()


def scale_table(proxy_runs: pl.DataFrame, large_runs: pl.DataFrame, metric: str = "objective") -> pl.DataFrame:
    """Per mixture: its mean (and sd) at the proxies' scale and at the larger one, and its rank at each."""
    def summary(runs: pl.DataFrame, suffix: str) -> pl.DataFrame:
        return runs.group_by("mixture").agg(
            pl.col(metric).mean().alias(f"{metric}_{suffix}"), pl.col(metric).std(ddof=1).fill_null(0.0).alias(f"sd_{suffix}"),
            pl.len().alias(f"seeds_{suffix}"),
        )  # fmt: skip

    table = summary(proxy_runs, "proxy").join(summary(large_runs, "large"), on="mixture", how="inner")
    return table.with_columns(
        rank_proxy=pl.col(f"{metric}_proxy").rank(descending=True, method="min").cast(pl.Int64),
        rank_large=pl.col(f"{metric}_large").rank(descending=True, method="min").cast(pl.Int64),
    ).sort(f"{metric}_large", descending=True)


def agreement(table: pl.DataFrame, metric: str = "objective") -> dict[str, float]:
    """Spearman of the two scales' means, and the share of mixture pairs the proxies order as the larger model does."""
    small, large = table[f"{metric}_proxy"].to_numpy(), table[f"{metric}_large"].to_numpy()
    pairs = list(combinations(range(len(small)), 2))
    agree = [np.sign(small[i] - small[j]) == np.sign(large[i] - large[j]) for i, j in pairs]
    return {
        "spearman": float(stats.spearmanr(small, large).statistic) if len(small) > 2 else float("nan"),
        "decision_accuracy": float(np.mean(agree)) if agree else float("nan"),
        "pairs": len(pairs),
    }


def transfer_markdown(table: pl.DataFrame, paired: pl.DataFrame, scores: dict[str, float], proxy: ProxySettings,
                      large: ProxySettings, sizes: dict[str, tuple[int, int]], seeds: list[int]) -> str:  # fmt: skip
    def shape(settings: ProxySettings) -> str:
        config = settings.model_config(vocab_size=256)
        return f"{config.n_layer} layers x {config.n_embd} wide, {settings.token_budget:,} tokens"

    ratio = sizes["large"][1] / max(sizes["proxy"][1], 1)
    return "\n".join([
        "# Transfer check: the proof's mixtures at a larger scale",
        "",
        f"Proxy-scale evaluation: {shape(proxy)} ({sizes['proxy'][1]:,} non-embedding parameters). Larger model: "
        f"{shape(large)} ({sizes['large'][1]:,} non-embedding parameters, {ratio:.1f}x), from scratch, seeds {seeds} "
        "(paired across mixtures).",
        "",
        markdown_table(table).value,
        "",
        f"Spearman of the mixtures' means at the two scales: {scores['spearman']:.3f}; the proxies order "
        f"{scores['decision_accuracy']:.0%} of the {scores['pairs']} mixture pairs as the larger model does.",
        "",
        "ClimbMix at the larger scale, paired by seed:",
        "",
        markdown_table(paired).value,
        "",
    ])
