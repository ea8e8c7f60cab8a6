"""Plotly figures of the Overview and Tune pages. Inputs are the small frames of
``analysis.tune`` (histogram bins and weight curves), never per-token data."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from app.render import SCHEME_LABELS

COLORS = {"sft": "#7f7f7f", "dft": "#1f77b4", "infosft": "#d62728", "profit": "#2ca02c"}


def _steps(hist: pl.DataFrame, col: str) -> tuple[list[float], list[float]]:
    """Step outline (x at bin edges) of a histogram column, so log-x axes draw right."""
    x = hist["lo"].to_list() + [hist["hi"][-1]]
    y = hist[col].to_list() + [hist[col][-1]]
    return x, y


def q_histogram_with_curves(hist: pl.DataFrame, curves: pl.DataFrame, *, log_x: bool,
                            labels: dict[str, str] | None = None) -> go.Figure:
    """Count of target tokens per q bin, with every scheme's w(q) on a second axis."""
    labels = labels or SCHEME_LABELS
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x, y = _steps(hist, "count")
    fig.add_trace(go.Scatter(x=x, y=y, line_shape="hv", fill="tozeroy", name="target tokens",
                             line=dict(color="#bbbbbb"), fillcolor="rgba(160,160,160,0.35)"),
                  secondary_y=False)
    for s in SCHEME_LABELS:
        fig.add_trace(go.Scatter(x=curves["q"], y=curves[s], name=f"w(q) {labels[s]}",
                                 line=dict(color=COLORS[s], width=2)), secondary_y=True)
    fig.update_xaxes(title="q (base model probability of the target token)",
                     type="log" if log_x else "linear")
    fig.update_yaxes(title="target tokens", secondary_y=False)
    top = max(1.0, max(float(curves[s].max()) for s in SCHEME_LABELS))
    fig.update_yaxes(title="weight w(q)", secondary_y=True, range=[0, top * 1.05],
                     showgrid=False)
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25), title="q of target tokens")
    return fig


def weight_share_histogram(hist: pl.DataFrame, *, log_x: bool,
                           labels: dict[str, str] | None = None) -> go.Figure:
    """Per q bin, the share of each scheme's total weight: where the learning signal goes."""
    labels = labels or SCHEME_LABELS
    fig = go.Figure()
    for s in SCHEME_LABELS:
        x, y = _steps(hist, s)
        fig.add_trace(go.Scatter(x=x, y=y, line_shape="hv", name=labels[s],
                                 line=dict(color=COLORS[s], width=2)))
    fig.update_xaxes(title="q", type="log" if log_x else "linear")
    fig.update_yaxes(title="share of the scheme's total weight", tickformat=".0%")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25),
                      title="where the learning signal goes")
    return fig
