"""Helpers that turn frames and figures into metadata the Dagster UI renders."""

from __future__ import annotations

import base64
import io

import dagster as dg
import polars as pl


def markdown_table(frame: pl.DataFrame, max_rows: int = 50) -> dg.MetadataValue:
    """A markdown table (cells flattened to one line) for asset metadata."""
    frame = frame.head(max_rows)
    def cell(value) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("\n", " ").replace("|", "\\|")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


def figure_markdown(figure) -> dg.MetadataValue:
    """A matplotlib figure as an inline PNG that the Dagster UI shows in the asset's metadata."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{encoded})")
