"""Chart helpers of pages/ui/charts.py: titles that fit a projector's column, colours that follow the theme."""

import re

import pytest

from pages.ui.charts import NEUTRAL_PLOT, diverging_scale, fading_scale, fit_title, plan_figure, wrap_title


def alpha(colour: str) -> float:
    m = re.fullmatch(r"rgba\((\d+),\s*(\d+),\s*(\d+),\s*([\d.]+)\)", colour)
    assert m, f"{colour!r} is not an rgba() colour"
    return float(m.group(4))


def test_a_long_chart_title_wraps_into_lines_that_fit_and_keeps_every_word():
    title = "Relative weight change ‖W_after − W_before‖ / ‖W_before‖"
    wrapped, n = wrap_title(title, 30)
    lines = wrapped.split("<br>")
    assert n == len(lines) > 1
    assert all(len(line) <= 30 for line in lines)
    assert " ".join(lines) == title


def test_a_wrapped_title_gets_room_above_the_plot():
    import plotly.graph_objects as go

    fig = go.Figure(layout=dict(title="MMD² of 1,000 random relabellings vs the observed one", height=320,
                                margin=dict(t=40)))
    fit_title(fig, 34)
    assert fig.layout.margin.t == 60 and fig.layout.height == 340


@pytest.mark.parametrize("scale", [fading_scale((8, 81, 156)), diverging_scale()])
def test_zero_is_transparent_so_the_theme_background_shows(scale):
    zero = [colour for stop, colour in scale if stop == (0.0 if len(scale) == 2 else 0.5)]
    assert zero and all(alpha(c) == 0 for c in zero)
    assert alpha(scale[-1][1]) == 1


def test_the_plan_chart_has_no_light_plot_area_of_its_own():
    fig = plan_figure([{"stem": 0.0, "head": 1.0}, {"stem": 0.1, "head": 1.0}])
    assert fig.layout.plot_bgcolor == NEUTRAL_PLOT and alpha(NEUTRAL_PLOT) < 0.5
    assert fig.data[0].z[0][0] is None  # a frozen cell is not drawn: the theme's background shows


def test_a_group_training_at_a_tenth_of_the_heads_rate_is_plainly_coloured_in_the_plan():
    # last-stage fine-tuning: stage7 at ×0.1 beside the head's ×1 looked like an empty row
    plan = [{"stage6": 0.0, "stage7": 0.1, "head": 1.0}] * 4
    heat = plan_figure(plan).data[0]
    row = list(heat.y).index("stage7")
    z = heat.z[row][0]
    zmax = heat.zmax if heat.zmax is not None else max(v for r in heat.z for v in r if v is not None)
    zmin = heat.zmin if heat.zmin is not None else 0
    position = (z - zmin) / (zmax - zmin)
    (s0, c0), (s1, c1) = heat.colorscale[0], heat.colorscale[-1]
    opacity = alpha(c0) + (alpha(c1) - alpha(c0)) * (position - s0) / (s1 - s0)
    assert opacity >= 0.3, opacity
