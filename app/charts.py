"""Plotly figures of the Overview and Tune pages. Inputs are the small frames of
``analysis.tune`` (histogram bins and weight curves), never per-token data."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots
import polars as pl

from infosft.app.render import SCHEME_LABELS

COLORS = {"sft": "#7f7f7f", "dft": "#1f77b4", "infosft": "#d62728", "profit": "#2ca02c",
          "eaft": "#ff7f0e", "excess": "#8c564b"}
#: a scheme without a colour of its own (a user's ``module:function``)
OTHER_COLORS = ("#9467bd", "#e377c2", "#17becf", "#bcbd22")
#: SFT's w = 1 coincides with ProFit's kept tokens, and DFT's w = q with InfoSFT's low-q
#: end: wide dashed SFT under the rest, dotted ProFit, so every curve stays visible
LINES = {"sft": dict(width=5, dash="dash"), "dft": dict(width=2),
         "infosft": dict(width=2.5), "profit": dict(width=2.5, dash="dot"),
         "eaft": dict(width=2.5, dash="dashdot"), "excess": dict(width=2.5, dash="longdash")}


def color(scheme: str) -> str:
    """A scheme's line colour (a user's scheme: one of :data:`OTHER_COLORS` by name)."""
    if scheme in COLORS:
        return COLORS[scheme]
    return OTHER_COLORS[sum(map(ord, str(scheme))) % len(OTHER_COLORS)]


def line(scheme: str) -> dict:
    return dict(color=color(scheme), **LINES.get(scheme, dict(width=2.5)))


#: the columns of ``analysis.tune.weighted_histogram`` that are not a scheme
HIST_COLUMNS = ("lo", "hi", "count")


def _label(labels, scheme: str) -> str:
    return labels.get(scheme) or SCHEME_LABELS.get(scheme)


#: a second y axis with round ticks of its own (an overlaying axis otherwise gets ticks
#: aligned to the first axis' gridlines: 0.103, 0.207, 0.31)
OWN_TICKS = dict(tickmode="auto", nticks=6)


def nice_step(span: float, target: int = 5) -> float:
    """A 1 / 2 / 2.5 / 5 x 10^k tick step giving about ``target`` ticks over ``span``.

    >>> nice_step(1.05), nice_step(3.0), nice_step(0.3), nice_step(40)
    (0.25, 1.0, 0.1, 10.0)
    """
    if span <= 0:
        return 1.0
    raw = span / target
    base = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw))


def log_q_ticks(low: float = 1e-8) -> dict:
    """Tick values and labels for a log-scale probability axis: 10⁻ⁿ below 0.01, plain
    decimals above (not Plotly's SI "1µ"), from ``low`` to 1.

    >>> log_q_ticks(1e-3)["ticktext"]
    ['10⁻³', '0.01', '0.1', '1']
    """
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    vals, v = [], 1.0
    while v >= low * 0.999:
        vals.append(v)
        v /= 10
    vals.reverse()
    text = [f"{x:g}" if x >= 0.01 else f"10{str(round(math.log10(x))).translate(sup)}"
            for x in vals]
    return dict(tickmode="array", tickvals=vals, ticktext=text)


def _q_axis(fig: go.Figure, hist: pl.DataFrame, log_x: bool, title: str) -> None:
    if log_x:
        low = max(float(hist["lo"].min()), 1e-12) if hist.height else 1e-8
        fig.update_xaxes(title=title, type="log", **log_q_ticks(low))
    else:
        fig.update_xaxes(title=title, type="linear", range=[0, 1], dtick=0.1)


def _steps(hist: pl.DataFrame, col: str) -> tuple[list[float], list[float]]:
    """Step outline (x at bin edges) of a histogram column, so log-x axes draw right."""
    x = hist["lo"].to_list() + [hist["hi"][-1]]
    y = hist[col].to_list() + [hist[col][-1]]
    return x, y


def q_histogram_with_curves(hist: pl.DataFrame, curves: pl.DataFrame, *, log_x: bool,
                            labels: dict[str, str] | None = None) -> go.Figure:
    """Count of target tokens per q bin, with every scheme's w(q) on a second axis."""
    labels = labels or SCHEME_LABELS
    fig = go.Figure()  # a second y axis by hand: make_subplots costs ~10 ms a slider move
    x, y = _steps(hist, "count")
    fig.add_trace(go.Scatter(x=x, y=y, line_shape="hv", fill="tozeroy", name="target tokens",
                             line=dict(color="#8c8c8c", width=1),
                             fillcolor="rgba(140,140,140,0.45)"))
    schemes = [c for c in curves.columns if c != "q"]  # those of q alone: EAFT has no w(q)
    for s in schemes:
        fig.add_trace(go.Scatter(x=curves["q"].to_list(), y=curves[s].to_list(), yaxis="y2",
                                 name=f"w(q) {_label(labels, s)}", line=line(s)))
    _q_axis(fig, hist, log_x, "q (base model probability of the target token)")
    top = max([1.0, *(float(curves[s].max()) for s in schemes)])
    # its own round ticks (0, 0.2, ...), not ticks aligned to the count axis' gridlines
    fig.update_layout(
        yaxis=dict(title="target tokens", rangemode="tozero"),
        yaxis2=dict(title="weight w(q)", overlaying="y", side="right", range=[0, top * 1.05],
                    tick0=0, dtick=nice_step(top), tickmode="linear", showgrid=False),
        height=380, margin=dict(l=10, r=10, t=60, b=10),
        legend=dict(orientation="h", y=-0.25), title="q of target tokens")
    return fig


def weight_share_histogram(hist: pl.DataFrame, *, log_x: bool,
                           labels: dict[str, str] | None = None) -> go.Figure:
    """Per q bin, the share of each scheme's total weight: where the learning signal goes."""
    labels = labels or SCHEME_LABELS
    fig = go.Figure()
    for s in [c for c in hist.columns if c not in HIST_COLUMNS]:
        x, y = _steps(hist, s)
        fig.add_trace(go.Scatter(x=x, y=y, line_shape="hv", name=_label(labels, s),
                                 line=line(s)))
    _q_axis(fig, hist, log_x, "q")
    fig.update_yaxes(title="share of the scheme's total weight", tickformat=".0%",
                     rangemode="tozero")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25),
                      title="where the learning signal goes")
    return fig


# --- training curves (inputs: analysis.training.metrics_frame) ---------------------------

def _train_layout(fig: go.Figure, title: str, y_title: str,
                  steps: pl.Series | None = None) -> go.Figure:
    # whole steps only: Plotly would tick 1.5, 2.5 on a short run
    top = int(steps.max()) if steps is not None and len(steps) and steps.max() else 0
    step_ticks = dict(tick0=0, dtick=max(1, round(nice_step(top)))) if top else {}
    fig.update_xaxes(title="optimizer step", tickformat="d", **step_ticks)
    fig.update_layout(yaxis_title=y_title, height=340, margin=dict(l=10, r=10, t=60, b=10), title=title,
                      legend=dict(orientation="h", y=-0.3))
    return fig


def loss_curve(metrics: pl.DataFrame) -> go.Figure:
    """One run's training loss per logging step and, on its own axis, its eval loss: the
    training loss is the scheme's weighted loss, the eval loss plain NLL, so their scales
    differ (InfoSFT's weighted loss can be 100x smaller)."""
    train = metrics.filter(pl.col("loss").is_not_null())
    evals = metrics.filter(pl.col("eval_loss").is_not_null())
    fig = make_subplots(specs=[[{"secondary_y": not evals.is_empty()}]])
    fig.add_trace(go.Scatter(x=train["step"].to_list(), y=train["loss"].to_list(),
                             name="train loss (weighted)", mode="lines+markers",
                             line=dict(color="#d62728")), **({"secondary_y": False}
                                                              if not evals.is_empty() else {}))
    if not evals.is_empty():  # its own axis only once there is an eval point to show
        fig.add_trace(go.Scatter(x=evals["step"].to_list(), y=evals["eval_loss"].to_list(),
                                 name="eval loss (plain NLL)", mode="lines+markers",
                                 marker=dict(size=9, symbol="diamond"),
                                 line=dict(color="#1f77b4", dash="dot")), secondary_y=True)
        fig.update_yaxes(title="eval loss", secondary_y=True, showgrid=False,
                         rangemode="tozero", **OWN_TICKS)
    fig.update_yaxes(rangemode="tozero")
    return _train_layout(fig, "loss per supervised token", "train loss", metrics["step"])


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
    return _train_layout(fig, "token weights during training", "weight / share",
                         metrics["step"])


def optimizer_curve(metrics: pl.DataFrame) -> go.Figure:
    """One run's learning rate and gradient norm per logging step, each on its own axis."""
    train = metrics.filter(pl.col("loss").is_not_null())
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=train["step"].to_list(), y=train["learning_rate"].to_list(),
                             name="learning rate", mode="lines", line=dict(color="#9467bd")),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=train["step"].to_list(), y=train["grad_norm"].to_list(),
                             name="gradient norm", mode="lines+markers",
                             line=dict(color="#ff7f0e", dash="dot")), secondary_y=True)
    fig.update_yaxes(title="learning rate", secondary_y=False, rangemode="tozero",
                     exponentformat="e")
    fig.update_yaxes(title="gradient norm", secondary_y=True, rangemode="tozero",
                     showgrid=False, **OWN_TICKS)
    return _train_layout(fig, "optimizer", "learning rate", metrics["step"])


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
        fig.add_trace(go.Scatter(x=part["step"].to_list(), y=part[column].to_list(), name=run,
                                 mode="lines+markers"))
    if column.startswith("weight_share"):
        fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return _train_layout(fig, f"{column.replace('_', ' ')} by run", column.replace("_", " "),
                         rows["step"])


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
    fig.update_xaxes(title=FORGOT_AXES.get(x, x),
                     **({"rangemode": "tozero"} if x == "prior_kl" else {}))  # KL >= 0
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


# --- breakdowns by a record column (input: analysis.breakdown.breakdown) -----------------

def group_share_bars(table: pl.DataFrame, schemes: list[str] | tuple[str, ...],
                     labels: dict[str, str] | None = None, column: str = "group") -> go.Figure:
    """Per group (x), its share of the run's target tokens (grey) next to its share of
    each scheme's total weight: a bar above the grey one is a group the scheme leans on
    more than its size (hover: the ratio, ``emphasis``)."""
    labels = labels or SCHEME_LABELS
    first = table.filter(pl.col("scheme") == table["scheme"][0]) if table.height else table
    groups = first["group"].to_list()
    fig = go.Figure()
    fig.add_trace(go.Bar(x=groups, y=first["token_share"].to_list(), name="target tokens",
                         marker_color="#b0b0b0",
                         customdata=first.select("target_tokens", "examples").rows(),
                         hovertemplate="<b>%{x}</b><br>%{y:.1%} of the target tokens "
                                       "(%{customdata[0]:,} in %{customdata[1]:,} examples)"
                                       "<extra></extra>"))
    for s in schemes:
        part = table.filter(pl.col("scheme") == s)
        fig.add_trace(go.Bar(x=part["group"].to_list(), y=part["weight_share"].to_list(),
                             name=f"weight {labels.get(s, s)}",
                             marker_color=COLORS.get(s, "#9467bd"),
                             customdata=part.select("emphasis", "mean_weight").rows(),
                             hovertemplate="<b>%{x}</b><br>%{y:.1%} of the weight<br>"
                                           "emphasis %{customdata[0]:.2f}x its size, mean w "
                                           "%{customdata[1]:.3f}<extra></extra>"))
    top = max([0.0, *first["token_share"].to_list(),
               *table.filter(pl.col("scheme").is_in(list(schemes)))["weight_share"].to_list()])
    fig.update_yaxes(title="share", tickformat=".0%", range=[0, top * 1.1 or 1],
                     tick0=0, dtick=nice_step(top or 1.0), tickmode="linear")
    fig.update_xaxes(title=column, type="category")
    fig.update_layout(barmode="group", height=380, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.25),
                      title=f"which {column} each scheme emphasizes: share of tokens vs "
                            "share of weight")
    return fig
