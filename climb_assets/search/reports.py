"""What a search reports: its progress per iteration, the plots in the assets' metadata and the proof's markdown."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from climb_assets.lm.proxy import ProxySettings  # noqa: E402
from climb_assets.metadata import figure_markdown, markdown_table  # noqa: E402
from climb_assets.search.continuation import training_set  # noqa: E402
from climb_assets.search.keys import SearchPlan  # noqa: E402
from climb_assets.search.predictor import Predictor  # noqa: E402
from climb_assets.search.settings import ProofSettings  # noqa: E402
from climb_assets.search.state import search_inputs  # noqa: E402


def search_progress(plan: SearchPlan, iterations: int) -> pl.DataFrame:
    """One row per iteration: proxies so far, the predictor kept and every kind's held-out Spearman, and the
    iteration's best and mean proxy objective (higher is better), so a search that stalls shows it."""
    results = training_set(plan, iterations)
    rows = []
    for k in range(1, iterations + 1):
        predictor = Predictor.load(plan.predictor_path(k))
        objective = results.filter(pl.col("iteration") == k)["objective"]
        rows.append({
            "iteration": k, "runs_so_far": results.filter(pl.col("iteration") <= k).height,
            "predictor_kept": predictor.kind, "spearman": predictor.extra["spearman"],
            **{f"spearman_{kind}": v for kind, v in sorted(predictor.extra.get("spearman_by_kind", {}).items())},
            "best_proxy": float(objective.max()), "mean_proxy": float(objective.mean()),
        })  # fmt: skip
    return pl.DataFrame(rows)


def search_plot(results: pl.DataFrame, predicted: np.ndarray, spearman: float):
    """Targets per proxy run by iteration, and the predictor's held-out (out-of-fold) predictions against them."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    jitter = np.random.default_rng(0)
    for (k,), group in results.group_by("iteration", maintain_order=True):
        axes[0].scatter(np.full(group.height, k) + jitter.uniform(-0.15, 0.15, group.height), group["objective"], s=14,
                        label=f"iteration {k}")  # fmt: skip
    axes[0].set(xlabel="iteration", ylabel="objective (higher is better)", title="proxy runs")
    axes[1].scatter(results["objective"], predicted, s=14)
    axes[1].set(xlabel="actual objective", ylabel="out-of-fold prediction", title=f"predictor: Spearman {spearman:.2f}")
    figure.tight_layout()
    return figure_markdown(figure)


def predictor_plot(plan: SearchPlan, iteration: int):
    """``search_plot`` for the search up to ``iteration``, with that iteration's predictor."""
    extra = Predictor.load(plan.predictor_path(iteration)).extra
    predicted = np.array([np.nan if v is None else v for v in extra["cv_predictions"]], dtype=np.float64)
    return search_plot(training_set(plan, iteration), predicted, extra["spearman"])


def weights_plot(labels: list[str], weights: np.ndarray, natural: np.ndarray):
    figure, axis = plt.subplots(figsize=(7, 0.28 * len(labels) + 1))
    y = np.arange(len(labels))
    axis.barh(y - 0.2, natural, height=0.4, label="natural (token share)")
    axis.barh(y + 0.2, weights, height=0.4, label="ClimbMix")
    axis.set_yticks(y, [label[:45] for label in labels], fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="weight", title="final mixture by super-cluster")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure_markdown(figure)


def cluster_loss_plot(table: pl.DataFrame, models: list[str]):
    """Held-out bits per byte per super-cluster, one bar per model: what each model finds hard."""
    labels = [f"{g}: {label[:40]}" for g, label in zip(table["super_cluster_id"], table["label"])]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(labels) * max(1, len(models) / 2) + 1))
    y = np.arange(len(labels))
    height = 0.8 / len(models)
    for i, model in enumerate(models):
        axis.barh(y + (i - (len(models) - 1) / 2) * height, table[model].fill_null(np.nan).to_numpy(), height=height,
                  label=model)  # fmt: skip
    axis.set_yticks(y, labels, fontsize=7)
    axis.invert_yaxis()
    axis.set(xlabel="held-out bits per byte (lower: the model has it)", title="loss by super-cluster")
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure_markdown(figure)


def base_cluster_losses(plan: SearchPlan) -> dict[str, float]:
    record = plan.base_path.with_suffix(".json") if plan.base_path else None
    return json.loads(record.read_text()).get("cluster_bpb", {}) if record and record.exists() else {}


def cluster_loss_table(plan: SearchPlan, losses: dict[str, dict[str, float]]) -> pl.DataFrame:
    """One row per super-cluster: its label and held-out bits per byte under each named model (null: not measured)."""
    _, corpus = search_inputs(plan)
    return pl.DataFrame({
        "super_cluster_id": corpus.groups,
        "label": [corpus.labels.get(g, "") for g in corpus.groups],
        **{name: pl.Series([by_group.get(str(g)) for g in corpus.groups], dtype=pl.Float64)
           for name, by_group in losses.items()},
    })  # fmt: skip


def cluster_loss_report(path: Path | None) -> dict:
    """The per-cluster loss table and plot for an asset's metadata (nothing when no cluster was measured)."""
    if path is None or not path.exists():
        return {}
    table = pl.read_parquet(path)
    models = [c for c in table.columns if c not in ("super_cluster_id", "label", "best_candidate")]
    return {"cluster_bpb": markdown_table(table), "cluster_bpb_plot": cluster_loss_plot(table, models)}


def proof_plot(runs_frame: pl.DataFrame, table: pl.DataFrame, metric: str):
    figure, axis = plt.subplots(figsize=(6, 3))
    names = table["mixture"].to_list()
    axis.bar(names, table[f"{metric}_mean"], yerr=table[f"{metric}_std"], capsize=4, color="#8da0cb")
    for i, name in enumerate(names):
        values = runs_frame.filter(pl.col("mixture") == name)[metric]
        axis.scatter(np.full(len(values), i), values, color="black", s=10, zorder=3)
    low = float(runs_frame[metric].min())
    high = float(runs_frame[metric].max())
    axis.set_ylim(low - 0.1 * (high - low + 1e-9) * 5, high + 0.1 * (high - low + 1e-9) * 5)
    axis.set(ylabel=metric, title=f"target {metric} by mixture (mean ± sd over seeds, dots = seeds)")
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return figure_markdown(figure)


def proof_markdown(table: pl.DataFrame, paired: pl.DataFrame, target: str, config: ProofSettings,
                   settings: ProxySettings, progress: pl.DataFrame, closing: list[str]) -> str:  # fmt: skip
    """The proof's report; ``closing``: paragraphs after the tables (compute spent, how the search started)."""
    metric_columns = [c for c in table.columns if c.endswith("_mean")]
    start = "continued from the search's base checkpoint" if config.start == "base" else "trained from scratch"
    shape = settings.model_config(vocab_size=256)
    lines = [
        "# ClimbMix proof",
        "",
        f"Target: `{target}` (objective: higher is better; for bpb the objective is -bits per byte). "
        f"Seeds: {config.seeds}, paired (same data order and initialisation for every mixture). Evaluation model: "
        f"{settings.model_preset} preset, n_layer={shape.n_layer}, n_embd={shape.n_embd}, "
        f"{settings.token_budget:,} training tokens per run, {start}.",
        "",
        "| mixture | seeds | " + " | ".join(c.removesuffix("_mean") + " (mean ± sd)" for c in metric_columns) + " |",
        "|---|---|" + "---|" * len(metric_columns),
    ]
    for row in table.iter_rows(named=True):
        cells = [f"{row[c]:.4f} ± {row[c.removesuffix('_mean') + '_std']:.4f}" for c in metric_columns]
        lines.append(f"| {row['mixture']} | {row['seeds']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences, ClimbMix minus baseline, in objective (positive: ClimbMix is better), 95% t-interval:",
        "",
        "| baseline | seeds | mean difference | sd | 95% interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in paired.iter_rows(named=True):
        lines.append(
            f"| {row['baseline']} | {row['seeds']} | {row['mean_delta']:+.4f} | {row['sd_delta']:.4f} | "
            f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {row['verdict']} |"
        )
    spearman = [c for c in progress.columns if c.startswith("spearman_")]
    lines += [
        "",
        "The search, iteration by iteration (held-out Spearman of the predictor kept, then of each kind by"
        " cross-validation; proxy objectives, higher is better):",
        "",
        "| iteration | runs so far | predictor kept | Spearman | " + " | ".join(c.removeprefix("spearman_") for c in spearman)
        + " | best proxy | mean proxy |",
        "|---|---|---|---|" + "---|" * len(spearman) + "---|---|",
    ]
    for row in progress.iter_rows(named=True):
        cells = ["n/a" if row[c] is None else f"{row[c]:.3f}" for c in ("spearman", *spearman)]
        lines.append(f"| {row['iteration']} | {row['runs_so_far']} | {row['predictor_kept']} | " + " | ".join(cells)
                     + f" | {row['best_proxy']:.4f} | {row['mean_proxy']:.4f} |")  # fmt: skip
    return "\n".join(lines + [line for paragraph in closing for line in ("", paragraph)]) + "\n"
