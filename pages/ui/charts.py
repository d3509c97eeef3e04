"""Charts that fit a projector and follow the theme: colour scales, titles that wrap, category axes,
the training plan's timeline and the saliency sanity check's curves."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from core.analysis.saliency import METHOD_LABELS

__all__ = ["NEUTRAL_PLOT", "fading_scale", "diverging_scale", "wrap_title", "fit_title", "plan_figure",
           "category_axes", "decade_axis", "sanity_figure", "convergence_note"]


# A plot area and empty cells in a colour that reads on Streamlit's light and dark themes alike.
NEUTRAL_PLOT = "rgba(128, 128, 128, 0.12)"


def fading_scale(rgb: tuple[int, int, int]) -> list:
    """A colour scale from transparent (zero: the page's own background shows) to ``rgb``."""
    r, g, b = rgb
    return [[0.0, f"rgba({r},{g},{b},0)"], [1.0, f"rgba({r},{g},{b},1)"]]


def diverging_scale(low=(33, 102, 172), high=(178, 24, 43)) -> list:
    """Blue below zero, red above, transparent at zero: an all-zero map is the page's background."""
    return [[0.0, "rgba({},{},{},1)".format(*low)], [0.5, "rgba({},{},{},0)".format(*low)],
            [0.5, "rgba({},{},{},0)".format(*high)], [1.0, "rgba({},{},{},1)".format(*high)]]


def wrap_title(text: str, width: int = 34) -> tuple[str, int]:
    """A chart title broken into lines of at most ``width`` characters, and how many lines.

    Plotly never wraps a title: in a column of a 1024 px projector a long one is simply cut.
    """
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "<br>".join(lines), len(lines)


def fit_title(fig, width: int = 34):
    """Wrap ``fig``'s title to ``width`` characters a line and make room above the plot for it."""
    text = fig.layout.title.text
    if text:
        wrapped, n = wrap_title(text, width)
        top = (fig.layout.margin.t or 40) + 20 * (n - 1)
        fig.update_layout(title=dict(text=wrapped), margin=dict(t=top),
                          height=(fig.layout.height or 0) + 20 * (n - 1) or None)
    return fig


def plan_figure(plan: list[dict], title: str = "Which groups train in which epoch"):
    """A timeline: layer groups (rows, input at the bottom) by epoch, coloured by learning rate.

    The colour follows the multiplier's logarithm and starts well above transparent: on a linear
    scale from 0 a group training at ×0.1 beside the head's ×1 was drawn at a tenth of the colour,
    and last-stage fine-tuning's trained stage looked empty."""
    groups = list(plan[0]) if plan else []
    rates = sorted({m for epoch in plan for m in epoch.values() if m > 0}) or [1.0]
    low, high = math.log10(rates[0]), math.log10(rates[-1])
    low = min(low, high - 1)  # one rate alone: drawn at full colour
    z = [[math.log10(epoch[g]) if epoch[g] > 0 else None for epoch in plan] for g in groups]
    text = [[f"lr × {epoch[g]:.3g}" if epoch[g] > 0 else "frozen" for epoch in plan] for g in groups]
    ticks = rates if len(rates) <= 6 else rates[::max(1, len(rates) // 5)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, len(plan) + 1)), y=groups, text=text, zmin=low, zmax=high,
        colorscale=[[0.0, "rgba(203,24,29,0.35)"], [1.0, "rgba(203,24,29,1)"]],
        hovertemplate="epoch %{x} · %{y}: %{text}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(title="lr ×", tickvals=[math.log10(r) for r in ticks], ticktext=[f"{r:.3g}" for r in ticks]),
    ))
    fig.update_layout(title=title, height=120 + 22 * len(groups), margin=dict(l=0, r=0, t=40, b=0),
                      xaxis=dict(title="epoch", dtick=1 if len(plan) <= 20 else None), plot_bgcolor=NEUTRAL_PLOT)
    return fit_title(fig, 60)


def category_axes(fig, *axes: str):
    """Class names are names, even "0".."9": plotly would otherwise read them as numbers and draw
    a numeric axis that skips and merges classes."""
    fig.update_layout(**{axis: dict(type="category") for axis in axes})
    return fig


def decade_axis(fig, axis: str, values) -> go.Figure:
    """A log ``axis`` over whole decades, labelled only at powers of ten, when some of ``values`` are
    positive (else left linear). Plotly's own log ticks label every digit of a short range, and on
    a 330 px chart "5" to "9" were drawn over each other."""
    positive = [v for v in values if v > 0]
    if positive:
        low, high = math.floor(math.log10(min(positive))), math.floor(math.log10(max(positive))) + 1
        fig.update_layout(**{axis: dict(type="log", range=[low, high], dtick=1, exponentformat="power")})
    return fig


def sanity_figure(similarity: dict, names: list[str]):
    """The sanity check's curves: rank correlation with the original map as layers are randomised.

    The y-axis fits the data, always showing 0 (no relation) and 1 (unchanged): a rank correlation
    can fall to -1, and a fixed range would hide those points.
    """
    fig = go.Figure()
    values = [0.0, 1.0]
    for method, curve in similarity.items():
        fig.add_trace(go.Scatter(x=names[:len(curve)], y=list(curve), mode="lines+markers",
                                 name=METHOD_LABELS[method][0]))
        values += [float(v) for v in curve if v is not None and not math.isnan(float(v))]
    pad = 0.05 * (max(values) - min(values))
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=30, b=0), yaxis_range=[min(values) - pad, max(values) + pad],
                      yaxis_title="rank correlation with the original map",
                      xaxis_title="randomised from the head down to …")
    return category_axes(fig, "xaxis")


def convergence_note(delta: float, raw) -> str:
    """Integrated Gradients' convergence delta in words: its size relative to the attributions' total.

    The attributions should add up to the score's change from the baseline (black) image to this
    one; the delta is what they miss, in units of that score, so only its size next to the total
    says whether it is small.
    """
    total = float(np.sum(raw)) if raw is not None else float("nan")
    if not np.isfinite(total) or abs(total) < 1e-12:
        return f"convergence delta {delta:.3g} (the attributions add up to about 0, so it cannot be judged)"
    share = abs(delta) / abs(total)
    verdict = ("good: the attributions account for the score" if share <= 0.05 else
               "fair" if share <= 0.2 else "large: the map is a rough approximation; more steps would help")
    return f"convergence delta {delta:.3g}, {share:.0%} of the attributions' total {total:.3g} — {verdict}"
