"""HTML and text rendering for the pages: the highlighted token view with its hover
cards, its legend, and the metric cards' labels and formatted values.

The hover card is drawn by the app, not the browser's ``title`` tooltip: every token is
a ``<span>`` with a hidden child ``<span class="card">`` that CSS shows on ``:hover``
and, for target tokens (``tabindex="0"``), on keyboard ``:focus`` too. Pure HTML/CSS,
so it works inside ``st.html`` (no scripts)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl

from infosft.schemes import get as get_scheme, names as scheme_names

#: Colour stops (value in [0, 1] -> RGB): red (low) - amber - green (high).
_Q_STOPS = np.array([[0.0, 215, 48, 39], [0.5, 254, 224, 139], [1.0, 26, 152, 80]])
#: Weights: white (0) - blue (max).
_W_STOPS = np.array([[0.0, 255, 255, 255], [1.0, 49, 130, 189]])
LOGP_FLOOR = -10.0


class _Labels(Mapping):
    """Each registered scheme's label (:attr:`infosft.schemes.Scheme.label`), looked up in
    the registry on every read, so a user's ``module:function`` scheme, once loaded, has
    one too. Never loads a scheme: an unregistered name is missing (``.get`` gives its
    default)."""

    def __getitem__(self, name: str) -> str:
        if name not in scheme_names():
            raise KeyError(name)
        return get_scheme(name).label

    def __iter__(self) -> Iterator[str]:
        return iter(scheme_names())

    def __len__(self) -> int:
        return len(scheme_names())

    def get(self, name, default=None):  # an unregistered name: its own name, not None
        return self[name] if name in scheme_names() else (name if default is None
                                                           else default)


SCHEME_LABELS: Mapping[str, str] = _Labels()


def weight_schemes(row: Mapping[str, Any]) -> list[str]:
    """The schemes with a ``w_<scheme>`` column in a token view row, in its order."""
    return [k[2:] for k in row if k.startswith("w_")]

# A hidden card's insides are display: none as well, not only the card, and a card has
# no table: block children and table cells of a hidden element still break or pad the
# text WebDriver reads as the token view's "visible text". Shown, they get their usual
# display back. (A row: label and value, inline-blocks of fixed width.)
#
# Where the browser has CSS anchor positioning, the card hangs below its token and is
# kept inside the token view's width: left-aligned with the token, else right-aligned
# with it (flip-inline), else at the view's right edge. Its bottom inset far below the
# view only stops a card taller than the rest of the view from counting as overflow.
# Elsewhere it simply hangs below its token, left-aligned.

#: The weight colour scale: each scheme's own largest weight in the example gets the
#: full colour, or a fixed 0..1 for every scheme.
SCALES = ("per scheme max", "fixed 0..1")

CSS = """<style>
.tv {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85rem;
     line-height: 1.9; white-space: pre-wrap; word-break: break-word;}
.tv span.t, .tv span.p {position: relative;}
.tv span.t {border-radius: 3px; padding: 1px 0; cursor: help; color: #111;}
.tv span.t:hover, .tv span.t:focus {outline: 2px solid #222; outline-offset: 0;}
.tv span.p {color: #9a9a9a;}
.tv span.nl {color: #888; font-size: 0.75em;}
.tv .card {display: none; position: absolute; left: 0; top: calc(100% + 3px); z-index: 1000;
     width: max-content; min-width: min(13rem, 100%); max-width: min(24rem, 100%);
     padding: 0.45rem 0.6rem;
     background: #fff; color: #111; border: 1px solid #b8b8b8; border-radius: 6px;
     box-shadow: 0 4px 14px rgba(0, 0, 0, 0.2); font-size: 0.78rem; line-height: 1.4;
     white-space: normal; word-break: normal; cursor: default; text-align: left;}
.tv .card * {display: none;}
.tv span.t:hover > .card, .tv span.t:focus > .card, .tv span.t:focus-within > .card,
.tv span.p:hover > .card {display: block;}
.tv span.t:hover > .card *, .tv span.t:focus > .card *, .tv span.t:focus-within > .card *,
.tv span.p:hover > .card * {display: revert;}
.tv span.t:hover > .card .r > span, .tv span.t:focus > .card .r > span,
.tv span.t:focus-within > .card .r > span {display: inline-block;}
.tv .card .ch {font-weight: 600; white-space: pre; margin-bottom: 0.15rem;}
.tv .card .cs {color: #666; margin-top: 0.3rem;}
.tv .card .r {white-space: pre;}
.tv .card .r .k {min-width: 5.5rem;}
.tv .card .r .n {min-width: 4.5rem; text-align: right; font-variant-numeric: tabular-nums;}
.tv .card .r.on {font-weight: 600;}
/* min(..., 100%): a side-by-side column may be narrower than the card's usual width */
@position-try --tv-right {left: auto; right: 0;}
@supports (anchor-scope: all) {
  .tv {position: relative;}
  .tv span.t, .tv span.p {position: static; anchor-name: --tok; anchor-scope: --tok;}
  .tv .card {position-anchor: --tok; top: calc(anchor(bottom) + 3px); left: anchor(left);
       right: auto; bottom: -100vh; height: max-content;
       position-try-fallbacks: flip-inline, --tv-right;}
}
.tv-legend {display: flex; align-items: center; gap: 0.5rem; font-size: 0.8rem;}
.tv-legend .bar {width: 220px; height: 12px; border-radius: 3px;}
</style>"""


def interp(x: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``(n, 3)`` RGB for values ``x (n,)`` in [0, 1] along colour ``stops``."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0, 1)
    return np.stack([np.interp(x, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1)


def weight_scale(view: pl.DataFrame, scheme: str, scale: str = SCALES[0]) -> float:
    """The weight that gets the full colour: with ``"per scheme max"`` the largest weight
    of ``scheme`` among ``view``'s tokens (1 when it has none above 0), with
    ``"fixed 0..1"`` always 1."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    if scale == SCALES[1]:
        return 1.0
    w = view[f"w_{scheme}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    top = float(np.nanmax(w)) if np.isfinite(w).any() else 0.0
    return top if top > 0 else 1.0


def color_values(view: pl.DataFrame, color_by: str, scheme: str = "infosft",
                 scale: str = SCALES[0]) -> np.ndarray:
    """Values in [0, 1] to colour each token by: q, logp (floored at -10) or the weight
    under ``scheme`` divided by :func:`weight_scale`."""
    if color_by == "q":
        return view["q"].fill_null(np.nan).to_numpy()
    if color_by == "logp":
        lp = view["logp"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        return 1 - np.clip(lp, LOGP_FLOOR, 0) / LOGP_FLOOR
    w = view[f"w_{scheme}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return w / weight_scale(view, scheme, scale)


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


def scoring_text(s: dict) -> str:
    """A finished scoring job in one line (input: :func:`analysis.runs.scoring_summary`).

    >>> scoring_text({"examples": 200, "tokens": 27992, "target_tokens": 13013,
    ...               "seconds": 75.4, "tokens_per_s": 371.2, "mean_q": 0.6234})
    '200 examples · 13,013 target tokens of 27,992 · 1m 15s at 371 tokens/s · mean q 0.623'
    """
    parts = []
    if s.get("examples") is not None:
        parts.append(f"{s['examples']:,} examples")
    if s.get("target_tokens") is not None:
        parts.append(f"{s['target_tokens']:,} target tokens"
                     + (f" of {s['tokens']:,}" if s.get("tokens") is not None else ""))
    if s.get("seconds") is not None:
        parts.append(f"{duration(s['seconds'])}"
                     + (f" at {s['tokens_per_s']:,.0f} tokens/s" if s.get("tokens_per_s") else ""))
    if s.get("mean_q") is not None:
        parts.append(f"mean q {s['mean_q']:.3f}")
    return " · ".join(parts) or "finished"


def number_text(x: Any, fmt: str) -> str:
    """``x`` formatted with ``fmt``; a dash for a missing value (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def tooltip(row: dict[str, Any]) -> str:
    """The hover text of one token as plain text (q, logp, rank, entropy, all schemes'
    weights, top-k); :func:`card` draws the same numbers as the hover card."""
    if not row["is_target"]:
        return f"{row['token']!r}: prompt / template token (not trained on)"
    lines = [f"{row['token']!r}  q {number_text(row['q'], '.4f')}  logp {number_text(row['logp'], '.3f')}",
             f"rank {row['rank']}  entropy {number_text(row['entropy'], '.3f')} nats",
             "weights: " + "  ".join(f"{SCHEME_LABELS.get(s)} "
                                     f"{number_text(row[f'w_{s}'], '.3f')}"
                                     for s in weight_schemes(row))]
    pieces, probs = row.get("top_pieces") or [], row.get("top_probs") or []
    if pieces:
        lines.append("top-k: " + ", ".join(f"{p!r} {number_text(pr, '.3f')}"
                                           for p, pr in zip(pieces, probs)))
    return "\n".join(lines)


def _rows(cells: Sequence[tuple[str, str]], on: str | None = None) -> str:
    """``label value`` rows of a card (``on``'s row in bold)."""
    return "".join(f'<div class="r{" on" if label == on else ""}"><span class="k">{label}</span> '
                   f'<span class="n">{value}</span></div>' for label, value in cells)


def card(row: dict[str, Any], scheme: str | None = None) -> str:
    """The hover card of one token (HTML, escaped): the token, q, logp, rank, entropy,
    its weight under every scheme (``scheme``'s row in bold) and the top-k alternatives
    with their probabilities. Prompt tokens say they are not trained on."""
    head = f'<div class="ch">{html.escape(repr(row["token"]))}</div>'
    if not row["is_target"]:
        return head + '<div>prompt / template token (not trained on)</div>'
    rank = row.get("rank")
    stats = [("q", number_text(row["q"], ".4f")), ("logp", number_text(row["logp"], ".3f")),
             ("rank", "–" if rank is None else str(rank)),
             ("entropy", number_text(row["entropy"], ".3f") + " nats")]
    weights = [(html.escape(SCHEME_LABELS.get(s)), number_text(row[f"w_{s}"], ".3f"))
               for s in weight_schemes(row)]
    out = [head, _rows(stats), '<div class="cs">weight</div>',
           _rows(weights, html.escape(SCHEME_LABELS.get(scheme)) if scheme else None)]
    pieces, probs = row.get("top_pieces") or [], row.get("top_probs") or []
    if pieces:
        out += ['<div class="cs">top-k alternatives</div>',
                _rows([(html.escape(repr(p)), number_text(pr, ".3f"))
                       for p, pr in zip(pieces, probs)])]
    return "".join(out)


def text_card(text: str) -> str:
    """A hover card from plain text: escaped, first line bold, one line per line."""
    first, *rest = html.escape(text).split("\n")
    return f'<div class="ch">{first}</div>' + "".join(f"<div>{line}</div>" for line in rest)


def piece_html(token: str) -> str:
    """A token's text, escaped; a newline shows as a visible ↵ and then breaks the line."""
    parts = html.escape(token or "").split("\n")
    return '<span class="nl">↵</span>\n'.join(parts)


def token_html(view: pl.DataFrame, color_by: str = "q", scheme: str = "infosft",
               targets_only: bool = False, scale: str = SCALES[0]) -> str:
    """The example as HTML: target tokens on a colour background, prompt tokens grey,
    every token a ``<span>`` with its :func:`card` shown on hover / keyboard focus. One
    Python pass over the tokens of this one example (the only per-token loop in the app).
    With ``targets_only`` the prompt tokens are left out (for narrow side-by-side
    columns); ``scale`` is the weight colour scale (:data:`SCALES`)."""
    if targets_only:
        view = view.filter(pl.col("is_target"))
    return spans_html(view, colors(color_values(view, color_by, scheme, scale), color_by),
                      tooltip, card_of=lambda row: card(row, scheme))


def spans_html(view: pl.DataFrame, backgrounds: Sequence[str],
               title_of: Callable[[dict[str, Any]], str],
               card_of: Callable[[dict[str, Any]], str] | None = None) -> str:
    """One ``<span>`` per token row of ``view``: targets on their background colour
    (``backgrounds``, one CSS colour per row) and focusable (``tabindex="0"``), prompt
    tokens grey; each with a hover card: ``card_of(row)`` (HTML) when given, else
    ``title_of(row)``'s plain text (:func:`text_card`)."""
    out = []
    for row, color in zip(view.iter_rows(named=True), backgrounds):
        body = card_of(row) if card_of else text_card(title_of(row))
        c = f'<span class="card" role="tooltip">{body}</span>'
        if row["is_target"]:
            out.append(f'<span class="t" tabindex="0" data-pos="{row["position"]}" '
                       f'style="background:{color}">{piece_html(row["token"])}{c}</span>')
        else:
            out.append(f'<span class="p" data-pos="{row["position"]}">'
                       f'{piece_html(row["token"])}{c}</span>')
    return f'{CSS}<div class="tv">{"".join(out)}</div>'


def generated_html(tokens: pl.DataFrame, writer: str, other: str) -> str:
    """A generated answer (:func:`analysis.try_model.side_by_side`'s ``tokens``), each
    token coloured by its probability under the *other* model (red: the other model
    would not have said it), with both probabilities on its hover card."""
    view = tokens.with_columns(pl.lit(True).alias("is_target"))
    return spans_html(view, colors(view["q_other"].to_numpy(), "q"), lambda row: (
        f"{row['token']!r}\nq under the {writer} model (who wrote it) {row['q_self']:.4f}\n"
        f"q under the {other} model {row['q_other']:.4f}"))


def legend_html(color_by: str, scheme: str = "infosft", top: float | None = None,
                scale: str = SCALES[0]) -> str:
    """A colour bar with its end labels for the chosen colouring; for weights the right
    end names the weight that gets the full colour (``top``, from :func:`weight_scale`):
    the scheme's largest weight in the example, or 1 on the fixed scale."""
    stops = _W_STOPS if color_by == "weight" else _Q_STOPS
    grad = ", ".join(f"rgb({int(r)},{int(g)},{int(b)}) {x * 100:.0f}%" for x, r, g, b in stops)
    if color_by == "weight":
        lo, hi = "w = 0", weight_scale_text(scheme, 1.0 if top is None else top, scale)
    else:
        lo, hi = {"q": ("q = 0", "q = 1"), "logp": (f"logp ≤ {LOGP_FLOOR:g}", "logp = 0")}[color_by]
    return (f'{CSS}<div class="tv-legend"><span>{lo}</span><span class="bar" '
            f'style="background: linear-gradient(to right, {grad})"></span><span>{hi}</span>'
            '<span style="color:#9a9a9a">grey: prompt / template (not trained on)</span></div>')


def weight_scale_text(scheme: str, top: float, scale: str = SCALES[0]) -> str:
    """``w = 0.508 (InfoSFT's max in this example)`` or ``w = 1 (fixed scale)``."""
    if scale == SCALES[1]:
        return "w = 1 (fixed scale)"
    return f"w = {top:.3g} ({SCHEME_LABELS.get(scheme)}'s max in this example)"


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


def short_count(n: int) -> str:
    """A count for a narrow metric card: exact up to a million, three significant
    digits above (``104,000,000`` would be cut to ``104,00…`` in Overview's cards).

    >>> short_count(13_000), short_count(999_999), short_count(2_345_678)
    ('13,000', '999,999', '2.35M')
    >>> short_count(104_000_000), short_count(999_999_999), short_count(3_210_000_000)
    ('104M', '1B', '3.21B')
    """
    if n < 1_000_000:
        return f"{n:,}"
    value, unit = n / 1e6, "M"
    if float(f"{value:.3g}") >= 1000:  # 999.9996M rounds to a thousand: a billion
        value, unit = n / 1e9, "B"
    return f"{value:.3g}{unit}"


def fact_cards(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) metric cards of :func:`analysis.tune.overview_facts`."""
    cards = [("Examples", short_count(f["examples"])),
             ("Target tokens", short_count(f["target_tokens"])),
             ("All tokens", short_count(f["tokens"]))]
    if "mean_q" in f:
        cards += [("Mean q", f"{f['mean_q']:.3f}"), ("Median q", f"{f['median_q']:.3f}"),
                  ("Already known (q > 0.9)", pct(f["share_q_above_0.9"])),
                  ("Hard (q < 0.1)", pct(f["share_q_below_0.1"]))]
    return cards


def knobs_text(scheme: str, knobs: dict[str, Any]) -> str:
    """``infosft (C=2.587)`` style label."""
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items()]
    return SCHEME_LABELS.get(scheme) + (f" ({', '.join(parts)})" if parts else "")


def export_name(run_name: str, scheme: str, knobs: dict[str, Any]) -> str:
    """The default export file name (no suffix): the run, the scheme and its knobs, so
    that exports with other knobs do not collide: ``sample-infosft-C3.25``,
    ``sample-profit-higher-t0.1``, ``sample-profit-middle-0.1-0.9``,
    ``sample-profit-random-t0.3-seed0``, ``sample-sft``; any other scheme its knobs as
    name and value (``sample-eaft-alpha1``, ``sample-excess-keep0.6-all``; a user's
    ``mod:fn`` as ``mod-fn``)."""
    parts = [run_name, re.sub(r"[^A-Za-z0-9_.-]+", "-", scheme)]
    if scheme == "infosft":
        parts.append(f"C{float(knobs['C']):g}")
    elif scheme == "profit":
        tau, direction = knobs["threshold"], knobs["direction"]
        parts.append(direction)
        parts += ([f"{float(t):g}" for t in tau] if isinstance(tau, (list, tuple))
                  else [f"t{float(tau):g}"])
        if direction == "random":
            parts.append(f"seed{int(knobs.get('seed', 0))}")
    else:
        for k, v in knobs.items():
            v = f"{v:g}" if isinstance(v, float) else str(v)
            parts.append(re.sub(r"[^A-Za-z0-9_.-]+", "-", v if isinstance(knobs[k], str)
                                else f"{k}{v}"))
    return "-".join(parts)


def scheme_table_view(table, labels: dict[str, str]):
    """:func:`analysis.tune.scheme_table` as shown: each scheme's legend name, percentages
    as percentages, effective tokens as a count."""
    import polars as pl

    shares = ["share_nonzero", "effective_share", "weight_share_low", "weight_share_medium",
              "weight_share_high"]
    return table.select(
        pl.col("scheme").replace_strict(labels, default=pl.col("scheme")).alias("Scheme"),
        pl.col("mean_weight").round(4).alias("Mean weight"),
        *(pl.col(c).mul(100).round(1).alias(n) for c, n in zip(shares, (
            "w > 0 (%)", "Effective (%)", "Weight on low q (%)", "on medium q (%)",
            "on high q (%)"))),
        pl.col("effective_tokens").round(0).cast(pl.Int64).alias("Effective tokens"))


def scheme_labels(settings) -> dict[str, str]:
    """Legend names with the knobs in force, e.g. ``InfoSFT (C=2.59)``,
    ``EAFT (alpha=1)``: every registered scheme's."""
    tau = settings.knobs("profit")["threshold"]
    tau = f"{tau[0]:g}–{tau[1]:g}" if isinstance(tau, list) else f"{tau:g}"
    out = {}
    for name in SCHEME_LABELS:
        if name == "infosft":
            out[name] = f"InfoSFT (C={settings.C:.3g})"
        elif name == "profit":
            out[name] = f"ProFit ({settings.direction}, τ={tau})"
        else:
            try:
                out[name] = knobs_text(name, settings.knobs(name))
            except ValueError:
                out[name] = SCHEME_LABELS[name]
    return out
