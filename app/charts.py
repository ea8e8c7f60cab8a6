"""Plotly figures of the Overview and Tune pages. Inputs are the small frames of
``analysis.tune`` (histogram bins and weight curves), never per-token data."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from infosft.app.render import SCHEME_LABELS

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


# --- training curves (inputs: analysis.training.metrics_frame) ---------------------------

def _train_layout(fig: go.Figure, title: str, y_title: str) -> go.Figure:
    fig.update_xaxes(title="optimizer step")
    fig.update_layout(yaxis_title=y_title, height=340, margin=dict(l=10, r=10, t=60, b=10), title=title,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def loss_curve(metrics: pl.DataFrame) -> go.Figure:
    """One run's training loss per logging step and, on its own axis, its eval loss: the
    training loss is the scheme's weighted loss, the eval loss plain NLL, so their scales
    differ (InfoSFT's weighted loss can be 100x smaller)."""
    train = metrics.filter(pl.col("loss").is_not_null())
    evals = metrics.filter(pl.col("eval_loss").is_not_null())
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=train["step"], y=train["loss"], name="train loss (weighted)",
                             mode="lines+markers", line=dict(color="#d62728")),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=evals["step"], y=evals["eval_loss"],
                             name="eval loss (plain NLL)", mode="lines+markers",
                             marker=dict(size=9, symbol="diamond"),
                             line=dict(color="#1f77b4", dash="dot")), secondary_y=True)
    fig.update_yaxes(title="eval loss", secondary_y=True, showgrid=False)
    return _train_layout(fig, "loss per supervised token", "train loss")


def mean_weight_curve(metrics: pl.DataFrame) -> go.Figure:
    """One run's mean token weight and zero-weight share per logging step: how much of
    the batch the scheme still learns from (online weights move as the model learns)."""
    train = metrics.filter(pl.col("mean_weight").is_not_null())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=train["step"], y=train["mean_weight"], name="mean weight",
                             mode="lines+markers", line=dict(color="#2ca02c")))
    fig.add_trace(go.Scatter(x=train["step"], y=train["zero_weight_share"],
                             name="share of zero-weight tokens", mode="lines",
                             line=dict(color="#7f7f7f", dash="dash")))
    fig.update_yaxes(rangemode="tozero")
    return _train_layout(fig, "token weights during training", "weight / share")


def q_drift_heatmap(drift: pl.DataFrame) -> go.Figure:
    """Steps (x) by q bins (y), coloured by each bin's share of the step's supervised
    tokens (input: :func:`analysis.training.q_drift`): how the step-0 histogram of the
    analysis pages moves to the right as the model learns its data."""
    steps = sorted(drift["step"].unique().to_list())
    bins = drift.select("q_low", "q_high").unique().sort("q_low")
    share = {(s, lo): v for s, lo, v in drift.select("step", "q_low", "share").iter_rows()}
    z = [[share.get((s, lo), 0.0) for s in steps] for lo in bins["q_low"].to_list()]
    fig = go.Figure(go.Heatmap(
        x=steps, y=[(lo + hi) / 2 for lo, hi in bins.iter_rows()], z=z, colorscale="Viridis",
        colorbar=dict(title="share of<br>tokens", tickformat=".0%"),
        hovertemplate="step %{x}<br>q %{y:.3f}<br>%{z:.1%} of the step's supervised tokens"
                      "<extra></extra>"))
    fig.update_yaxes(title="q of the target token (under the model being trained)",
                     range=[0, 1], dtick=0.1)
    fig.update_xaxes(tickformat="d")
    return _train_layout(fig, "where the supervised tokens' q lies, step by step", "q")


BAND_COLORS = {"low": "#1f77b4", "medium": "#d62728", "high": "#2ca02c"}


def band_weight_curve(metrics: pl.DataFrame) -> go.Figure:
    """One run's share of the summed weight on low / medium / high q tokens per logging
    step (bands: ``infosft.weights.Q_BANDS``)."""
    from infosft.weights import Q_BANDS

    label = {"low": f"low q (< {Q_BANDS[0]})", "medium": "medium q",
             "high": f"high q (≥ {Q_BANDS[1]})"}
    fig = go.Figure()
    for band, color in BAND_COLORS.items():
        part = metrics.filter(pl.col(f"weight_share_{band}").is_not_null())
        fig.add_trace(go.Scatter(x=part["step"].to_list(),
                                 y=part[f"weight_share_{band}"].to_list(),
                                 name=label[band], mode="lines+markers",
                                 line=dict(color=color)))
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    fig.update_xaxes(tickformat="d")
    return _train_layout(fig, "share of the weight per q band", "share of the weight")


def loss_comparison(metrics: pl.DataFrame, column: str = "eval_loss") -> go.Figure:
    """``column`` (eval_loss or loss) of several runs on one chart, one line per run."""
    fig = go.Figure()
    rows = metrics.filter(pl.col(column).is_not_null())
    for (run,), part in rows.partition_by("run", as_dict=True, maintain_order=True).items():
        fig.add_trace(go.Scatter(x=part["step"], y=part[column], name=run,
                                 mode="lines+markers"))
    return _train_layout(fig, f"{column.replace('_', ' ')} by run", column.replace("_", " "))


# --- before/after evaluation (inputs: analysis.evaluate.report_table) --------------------

FORGOT_AXES = {"prior_kl": "forgot: mean KL(base ‖ tuned) on the prior set (nats/token)",
               "prior_delta_nll": "forgot: Δ NLL on the prior set (tuned − base)"}


def tradeoff_scatter(table: pl.DataFrame, x: str = "prior_kl") -> go.Figure:
    """Learned vs forgot, one point per evaluated run, coloured by scheme: up is more
    learned (the task NLL fell), right is more forgotten. Up and to the left is better."""
    done = table.filter(pl.col("task_delta_nll").is_not_null())
    fig = go.Figure()
    for (scheme,), part in done.partition_by("scheme", as_dict=True,
                                             maintain_order=True).items():
        fig.add_trace(go.Scatter(
            # lists, not arrays: plotly would ship arrays as base64 typed arrays
            x=part[x].to_list(), y=(-part["task_delta_nll"]).to_list(), mode="markers+text",
            text=part["run"].to_list(),
            textposition="top center", name=SCHEME_LABELS.get(scheme, str(scheme)),
            marker=dict(size=12, color=COLORS.get(scheme, "#9467bd")),
            customdata=part.select("knobs", "prior_delta_nll", "prior_kl").rows(),
            hovertemplate="<b>%{text}</b> %{customdata[0]}<br>learned: −Δ task NLL %{y:.4f}"
                          "<br>Δ prior NLL %{customdata[1]:+.4f}<br>KL %{customdata[2]:.4f}"
                          "<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#bbbbbb", dash="dot"))
    fig.update_xaxes(title=FORGOT_AXES.get(x, x))
    fig.update_yaxes(title="learned: task NLL drop (base − tuned, nats/token)")
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25), title="learn more, forget less")
    return fig


def _bars(part: pl.DataFrame, key: str) -> dict:
    """Asymmetric error bars from ``key``'s interval columns (none where unknown)."""
    v, lo, hi = (part[c].fill_null(part[key]) for c in (key, f"{key}_low", f"{key}_high"))
    return dict(type="data", symmetric=False, array=(hi - v).to_list(),
                arrayminus=(v - lo).to_list(), thickness=1.2, width=4)


def frontier_scatter(runs: pl.DataFrame, points: pl.DataFrame | None, *, learned: str,
                     forgot: str) -> go.Figure:
    """A sweep's learned (up) vs forgot (right), one marker per evaluated run with its
    95% bootstrap interval as error bars, coloured by scheme; runs on the frontier
    joined by a line, dominated ones grey. ``points`` (grid points over several seeds)
    adds a hollow diamond at each point's mean with the spread over seeds as bars.
    Up and to the left is better."""
    done = runs.filter(pl.col("learned").is_not_null() & pl.col("forgot").is_not_null())
    fig = go.Figure()
    for on in (False, True):
        for (scheme,), part in done.filter(pl.col("on_frontier") == on).partition_by(
                "scheme", as_dict=True, maintain_order=True).items():
            color = COLORS.get(scheme, "#9467bd") if on else "#c7c7c7"
            label = SCHEME_LABELS.get(scheme, str(scheme))
            fig.add_trace(go.Scatter(
                x=part["forgot"].to_list(), y=part["learned"].to_list(),
                mode="markers", name=label + ("" if on else " (dominated)"),
                legendgroup=f"{scheme}-{on}",
                marker=dict(size=11 if on else 9, color=color,
                            line=dict(width=1, color="#ffffff")),
                error_x=_bars(part, "forgot") | dict(color=color),
                error_y=_bars(part, "learned") | dict(color=color),
                text=part["name"].to_list(), customdata=part.select(
                    "knobs", "learned_low", "learned_high", "forgot_low", "forgot_high").rows(),
                hovertemplate="<b>%{text}</b> %{customdata[0]}<br>learned %{y:.4f} "
                              "[%{customdata[1]:.4f}, %{customdata[2]:.4f}]<br>forgot %{x:.4f} "
                              "[%{customdata[3]:.4f}, %{customdata[4]:.4f}]<extra></extra>"))
    front = done.filter("on_frontier").sort("forgot")
    if front.height > 1:
        fig.add_trace(go.Scatter(x=front["forgot"].to_list(), y=front["learned"].to_list(),
                                 mode="lines", name="frontier", hoverinfo="skip",
                                 line=dict(color="#444444", dash="dash", width=1)))
    if points is not None:
        multi = points.filter((pl.col("seeds") > 1) & pl.col("learned").is_not_null())
        if multi.height:
            fig.add_trace(go.Scatter(
                x=multi["forgot"].to_list(), y=multi["learned"].to_list(), mode="markers",
                name="grid point: mean over seeds (bars: min-max)",
                marker=dict(symbol="diamond-open", size=16, color="#222222", line=dict(width=2)),
                error_x=_bars(multi, "forgot") | dict(color="#222222"),
                error_y=_bars(multi, "learned") | dict(color="#222222"),
                text=multi["name"].to_list(), customdata=multi["seeds"].to_list(),
                hovertemplate="<b>%{text}</b> over %{customdata} seeds<br>learned %{y:.4f}"
                              "<br>forgot %{x:.4f}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#bbbbbb", dash="dot"))
    fig.update_xaxes(title=f"forgot: {forgot} (lower is better)", rangemode="tozero")
    fig.update_yaxes(title=f"learned: {learned} (higher is better)")
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25),
                      title="learn more, forget less: the sweep's frontier")
    return fig
