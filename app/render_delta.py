"""HTML of the before/after token view: each target token on a diverging colour by
``delta = logp_tuned - logp_base`` (red: the fine-tune made it less likely, white:
unchanged, green: more likely), prompt tokens grey, numbers in the tooltip. The same
markup and CSS as the token view (``app.render``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from infosft.app.render import CSS, interp, number_text, spans_html

#: Diverging colour stops: red (delta <= -scale) - white (0) - green (delta >= +scale).
DELTA_STOPS = np.array([[0.0, 215, 48, 39], [0.5, 255, 255, 255], [1.0, 26, 152, 80]])


def delta_colors(delta: np.ndarray, scale: float) -> list[str]:
    """CSS ``rgb()`` strings for deltas ``(n,)`` (NaN: white), clipped at +-``scale``."""
    x = 0.5 + np.clip(np.nan_to_num(delta, nan=0.0), -scale, scale) / (2 * scale)
    rgb = interp(x, DELTA_STOPS).round().astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in rgb]


def delta_tooltip(row: dict[str, Any]) -> str:
    """Hover text of one token of :func:`analysis.delta.example_delta`'s frame."""
    if not row["is_target"]:
        return f"{row['token']!r}: prompt / template token (not scored)"
    n = number_text
    lines = [f"{row['token']!r}  Δlogp {n(row['delta'], '+.3f')}",
             f"logp base {n(row['logp_base'], '.3f')} → tuned {n(row['logp_tuned'], '.3f')}",
             f"q base {n(row['q_base'], '.4f')} → tuned {n(row['q_tuned'], '.4f')}"]
    if row.get("kl") is not None:
        lines.append(f"KL(base‖tuned) {number_text(row['kl'], '.4f')} nats")
    return "\n".join(lines)


def delta_html(view: pl.DataFrame, scale: float = 2.0) -> str:
    """One example as HTML, target tokens coloured by delta, hover text per token
    (the same markup as ``app.render.token_html``)."""
    bg = delta_colors(view["delta"].cast(pl.Float64).fill_null(np.nan).to_numpy(), scale)
    return spans_html(view, bg, delta_tooltip)


def delta_legend(scale: float = 2.0) -> str:
    """The diverging colour bar with its end labels."""
    grad = ", ".join(f"rgb({int(r)},{int(g)},{int(b)}) {x * 100:.0f}%" for x, r, g, b in DELTA_STOPS)
    return (f'{CSS}<div class="tv-legend"><span>Δlogp ≤ −{scale:g} (less likely)</span>'
            f'<span class="bar" style="background: linear-gradient(to right, {grad})"></span>'
            f'<span>≥ +{scale:g} (more likely)</span>'
            '<span style="color:#9a9a9a">grey: prompt / template</span></div>')
