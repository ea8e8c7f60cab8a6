"""HTML and text rendering for the pages: the highlighted token view with tooltips,
its legend, and the metric cards' labels and formatted values."""

from __future__ import annotations

import html
import math
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from infosft.weights import SCHEMES

#: Colour stops (value in [0, 1] -> RGB): red (low) - amber - green (high).
_Q_STOPS = np.array([[0.0, 215, 48, 39], [0.5, 254, 224, 139], [1.0, 26, 152, 80]])
#: Weights: white (0) - blue (max).
_W_STOPS = np.array([[0.0, 255, 255, 255], [1.0, 49, 130, 189]])
LOGP_FLOOR = -10.0
SCHEME_LABELS = {"sft": "SFT", "dft": "DFT", "infosft": "InfoSFT", "profit": "ProFit"}

CSS = """<style>
.tv {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85rem;
     line-height: 1.9; white-space: pre-wrap; word-break: break-word;}
.tv span.t {border-radius: 3px; padding: 1px 0; cursor: help; color: #111;}
.tv span.t:hover {outline: 2px solid #222;}
.tv span.p {color: #9a9a9a;}
.tv span.nl {color: #888; font-size: 0.75em;}
.tv-legend {display: flex; align-items: center; gap: 0.5rem; font-size: 0.8rem;}
.tv-legend .bar {width: 220px; height: 12px; border-radius: 3px;}
</style>"""


def interp(x: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``(n, 3)`` RGB for values ``x (n,)`` in [0, 1] along colour ``stops``."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0, 1)
    return np.stack([np.interp(x, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1)


def color_values(view: pl.DataFrame, color_by: str, scheme: str = "infosft") -> np.ndarray:
    """Values in [0, 1] to colour each token by: q, logp (floored at -10) or the weight
    under ``scheme`` (scaled by the example's largest weight, at least 1)."""
    if color_by == "q":
        return view["q"].fill_null(np.nan).to_numpy()
    if color_by == "logp":
        lp = view["logp"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        return 1 - np.clip(lp, LOGP_FLOOR, 0) / LOGP_FLOOR
    w = view[f"w_{scheme}"].fill_null(np.nan).to_numpy()
    top = np.nanmax(w) if np.isfinite(w).any() else 1.0
    return w / max(float(top), 1.0)


def colors(values: np.ndarray, color_by: str) -> list[str]:
    """CSS ``rgb()`` strings for values in [0, 1]."""
    rgb = interp(values, _W_STOPS if color_by == "weight" else _Q_STOPS).round().astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in rgb]


def duration(seconds) -> str:
    """``1h 02m``, ``3m 05s``, ``12s``; ``estimating...`` when unknown."""
    if seconds is None:
        return "estimating..."
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def number_text(x: Any, fmt: str) -> str:
    """``x`` formatted with ``fmt``; a dash for a missing value (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def tooltip(row: dict[str, Any]) -> str:
    """The hover text of one token: q, logp, rank, entropy, all schemes' weights, top-k."""
    if not row["is_target"]:
        return f"{row['token']!r}: prompt / template token (not trained on)"
    lines = [f"{row['token']!r}  q {number_text(row['q'], '.4f')}  logp {number_text(row['logp'], '.3f')}",
             f"rank {row['rank']}  entropy {number_text(row['entropy'], '.3f')} nats",
             "weights: " + "  ".join(f"{SCHEME_LABELS[s]} {number_text(row[f'w_{s}'], '.3f')}"
                                     for s in SCHEMES)]
    pieces, probs = row.get("top_pieces") or [], row.get("top_probs") or []
    if pieces:
        lines.append("top-k: " + ", ".join(f"{p!r} {number_text(pr, '.3f')}"
                                           for p, pr in zip(pieces, probs)))
    return "\n".join(lines)


def piece_html(token: str) -> str:
    """A token's text, escaped; a newline shows as a visible ↵ and then breaks the line."""
    parts = html.escape(token or "").split("\n")
    return '<span class="nl">↵</span>\n'.join(parts)


def token_html(view: pl.DataFrame, color_by: str = "q", scheme: str = "infosft",
               targets_only: bool = False) -> str:
    """The example as HTML: target tokens on a colour background, prompt tokens grey,
    every token a ``<span title=...>`` with :func:`tooltip`'s text. One Python pass over
    the tokens of this one example (the only per-token loop in the app). With
    ``targets_only`` the prompt tokens are left out (for narrow side-by-side columns)."""
    if targets_only:
        view = view.filter(pl.col("is_target"))
    return spans_html(view, colors(color_values(view, color_by, scheme), color_by), tooltip)


def spans_html(view: pl.DataFrame, backgrounds: Sequence[str],
               title_of: Callable[[dict[str, Any]], str]) -> str:
    """One ``<span>`` per token row of ``view``: targets on their background colour
    (``backgrounds``, one CSS colour per row), prompt tokens grey, each with
    ``title_of(row)`` as its hover text."""
    out = []
    for row, color in zip(view.iter_rows(named=True), backgrounds):
        title = html.escape(title_of(row), quote=True).replace("\n", "&#10;")
        if row["is_target"]:
            out.append(f'<span class="t" data-pos="{row["position"]}" title="{title}" '
                       f'style="background:{color}">{piece_html(row["token"])}</span>')
        else:
            out.append(f'<span class="p" data-pos="{row["position"]}" title="{title}">'
                       f'{piece_html(row["token"])}</span>')
    return f'{CSS}<div class="tv">{"".join(out)}</div>'


def legend_html(color_by: str, scheme: str = "infosft") -> str:
    """A colour bar with its end labels for the chosen colouring."""
    stops = _W_STOPS if color_by == "weight" else _Q_STOPS
    grad = ", ".join(f"rgb({int(r)},{int(g)},{int(b)}) {x * 100:.0f}%" for x, r, g, b in stops)
    lo, hi = {"q": ("q = 0", "q = 1"), "logp": (f"logp ≤ {LOGP_FLOOR:g}", "logp = 0"),
              "weight": ("w = 0", f"max w ({SCHEME_LABELS[scheme]})")}[color_by]
    return (f'{CSS}<div class="tv-legend"><span>{lo}</span><span class="bar" '
            f'style="background: linear-gradient(to right, {grad})"></span><span>{hi}</span>'
            '<span style="color:#9a9a9a">grey: prompt / template (not trained on)</span></div>')


def pct(x: float) -> str:
    return number_text(100 * x if x is not None else None, ".1f") + "%"


def summary_cards(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) metric cards of a scheme summary (``Targets.summary``)."""
    return [("Mean weight", f"{s['mean_weight']:.4f}"),
            ("Tokens with w > 0", pct(s["share_nonzero"])),
            ("Effective tokens", f"{s['effective_tokens']:,.0f} ({pct(s['effective_share'])})"),
            ("Weight on low q (<0.1)", pct(s["weight_share_low"])),
            ("Weight on medium q", pct(s["weight_share_medium"])),
            ("Weight on high q (≥0.9)", pct(s["weight_share_high"]))]


def fact_cards(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) metric cards of :func:`analysis.tune.overview_facts`."""
    cards = [("Examples", f"{f['examples']:,}"), ("Target tokens", f"{f['target_tokens']:,}"),
             ("All tokens", f"{f['tokens']:,}")]
    if "mean_q" in f:
        cards += [("Mean q", f"{f['mean_q']:.3f}"), ("Median q", f"{f['median_q']:.3f}"),
                  ("Already known (q > 0.9)", pct(f["share_q_above_0.9"])),
                  ("Hard (q < 0.1)", pct(f["share_q_below_0.1"]))]
    return cards


def knobs_text(scheme: str, knobs: dict[str, Any]) -> str:
    """``infosft (C=2.587)`` style label."""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()]
    return SCHEME_LABELS[scheme] + (f" ({', '.join(parts)})" if parts else "")


def scheme_labels(settings) -> dict[str, str]:
    """Legend names with the knobs in force, e.g. ``InfoSFT (C=2.59)``."""
    tau = settings.knobs("profit")["threshold"]
    tau = f"{tau[0]:g}–{tau[1]:g}" if isinstance(tau, list) else f"{tau:g}"
    return {**SCHEME_LABELS, "infosft": f"InfoSFT (C={settings.C:.3g})",
            "profit": f"ProFit ({settings.direction}, τ={tau})"}
