"""The pages' small shared helpers: plain text, run names, what a run trained, chart axes."""

import re
import time

import numpy as np
import pytest

from core.runs import RunRecord
from pages.ui.charts import convergence_note, sanity_figure
from pages.ui.runs import describe_run, first_trained_epoch, frozen_groups, run_strategy
from pages.ui.text import chart_text, plain

GROUPS = ["stem", "stage1", "stage2", "head"]


def record(plan=None, label="", pretrained=True, backbone="efficientnet_lite0", **config):
    return RunRecord(id="0123456789abcdef", status="finished", created=time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)),
                     backbone=backbone, pretrained=pretrained, classes=["a", "b"],
                     config={"plan": plan or [], **config}, label=label, dataset="Digits.zip")


@pytest.mark.parametrize("name", ["**bold** :red[red] $x^2$", "![x](http://evil.example/x.png)", "<img src=x>",
                                  "# heading", "1. first", "- item", "a\nb", "[link](javascript:x)",
                                  "www.evil.example", ":material/home:", "http://evil.example", "me@evil.example"])
def test_plain_text_leaves_no_markdown_to_interpret(name):
    escaped = plain(name)
    # every character with a Markdown or Streamlit meaning is backslash-escaped, or gone (line breaks)
    assert not re.search(r"(?<!\\)[*_`\[\]<>$:~|&]", escaped)
    assert "\n" not in escaped
    assert not re.match(r"\s*([#>+\-=]|\d+[.)])", escaped)
    # and removing the escapes (and the invisible joiners that stop bare links) gives back what was typed
    assert re.sub(r"\\(.)", r"\1", escaped).replace("\u2060", "") == name.replace("\n", " ")


def test_invisible_characters_show_escaped_and_long_text_is_cut():
    assert plain("x\u202etxt.exe") == "x\\\\u202etxt.exe"  # a backslash, escaped: it reads x\u202etxt.exe
    assert plain("a\u200bb") == "a\\\\u200bb"
    assert plain("z" * 10_000, most=40) == "z" * 40 + "…"


def test_ordinary_names_read_the_same():
    assert plain("Demo shapes (source look)") == "Demo shapes (source look)"


def test_a_run_is_named_by_strategy_data_and_time_not_by_its_backbone():
    name = describe_run(record(plan=[{"stem": 0, "stage1": 0, "stage2": 0, "head": 1}],
                               label="efficientnet_lite0 pretrained"))
    assert name == f"Feature extraction · Digits.zip · {time.strftime('%H:%M:%S', time.localtime(record().created))}"
    scratch = describe_run(record(plan=[dict.fromkeys(GROUPS, 1.0)], pretrained=False,
                                  label="efficientnet_lite0 scratch"))
    assert scratch.startswith("Fine-tune all, from scratch · ")
    assert describe_run(record(label="Custom")).startswith("Custom · Digits.zip")
    assert describe_run(record(label="Custom", backbone="resnet18")).startswith("resnet18 · Custom")


def test_progressive_unfreezing_is_read_from_the_runs_own_plan():
    plan = [{"stem": 0, "stage1": 0, "stage2": 0, "head": 1},
            {"stem": 0, "stage1": 0, "stage2": 1, "head": 1}]
    run = record(plan=plan, freeze=[], unfreeze_every=1)
    assert frozen_groups(run) == ["stem", "stage1"]  # config["freeze"] is empty, yet these never trained
    assert first_trained_epoch(run) == {"stage2": 2, "head": 1}
    assert run_strategy(run) == "Progressive unfreezing"


def test_a_run_without_a_plan_falls_back_to_its_frozen_groups():
    assert frozen_groups(record(freeze=["stem"])) == ["stem"]


def test_the_convergence_delta_is_judged_against_the_attribution_total():
    raw = np.full((3, 4, 4), 1.0)  # the attributions add up to 48
    assert "2% of the attributions' total 48 — good" in convergence_note(1.0, raw)
    assert "large" in convergence_note(20.0, raw)
    assert "cannot be judged" in convergence_note(0.5, np.zeros((3, 2, 2)))


def test_the_sanity_chart_fits_points_below_zero():
    fig = sanity_figure({"gradcam": [1.0, 0.4, -0.7], "gradient": [1.0, 0.2]}, ["head", "stage2", "stage1"])
    low, high = fig.layout.yaxis.range
    assert low < -0.7 and high >= 1.0
    assert fig.layout.xaxis.type == "category"


def test_meta_training_runs_are_not_offered_as_models_of_a_data_set(monkeypatch):
    from types import SimpleNamespace

    import streamlit as st

    from core.runs import new_run_id
    from pages.ui.runs import finished_runs, run_store

    monkeypatch.setattr(st, "session_state", SimpleNamespace(owner="a" * 16))
    store = run_store()
    kinds = {}
    for kind in ("train", "meta"):
        run = RunRecord(id=new_run_id(), status="finished", created=time.time(), backbone="efficientnet_lite0",
                        pretrained=True, classes=["a", "b"], config={"kind": kind}, owner="a" * 16)
        store.create(run)
        (store.folder(run.id) / "model.safetensors").write_bytes(b"")  # has_model looks for the file only
        kinds[run.id] = kind
    assert [kinds[r.id] for r in finished_runs()] == ["train"]


@pytest.mark.parametrize("name", ["<b>bold</b>", "a<br>b", "<a href='http://evil.example'>x</a>", "&lt;i&gt;",
                                  "R&D", "x < y > z"])
def test_chart_text_leaves_plotly_no_markup_to_interpret(name):
    shown = chart_text(name)
    # no tag plotly could read, and every & starts one of the entities plotly turns back into a character
    assert "<" not in shown and ">" not in shown
    assert re.fullmatch(r"([^&]|&(amp|lt|gt);)*", shown)
    undone = shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert undone == name


def test_ordinary_class_names_reach_charts_unchanged():
    assert chart_text("thumbs up (left)") == "thumbs up (left)"


def test_a_followed_panel_draws_the_end_before_it_asks_for_the_full_rerun(monkeypatch):
    """``follow`` redraws a going run every second in a fragment. When the run ends, the fragment
    draws the ended state first and asks for the full rerun (which stops its timer) only in its
    next run: under load Streamlit can lose every message of one run, and a page that lost the run
    holding both kept showing "queued" for ever."""
    import pages.ui.tasks as shared

    class Rerun(Exception):
        pass

    def rerun():
        raise Rerun

    state: dict = {}
    monkeypatch.setattr(shared.st, "rerun", rerun)
    monkeypatch.setattr(shared.st, "session_state", state)
    drawn = []

    def draw(going):
        drawn.append(going)
        return going

    panel = shared._panel  # the fragment's body
    panel(draw, (True,))  # going: redrawn by its timer, nothing else
    panel(draw, (False,))  # ended: the ended state is drawn, no rerun yet
    with pytest.raises(Rerun):
        panel(draw, (False,))  # the next redraw asks for the full rerun
    assert drawn == [True, False, False] and not state


def test_a_followed_task_says_it_ended_before_it_asks_for_the_full_rerun(monkeypatch):
    """The analysis pages' task follower has the Train page's order: the redraw that finds the task
    ended says so, and only the next one asks for the full rerun that draws the result."""
    from types import SimpleNamespace

    import pages.ui.tasks as shared

    class Rerun(Exception):
        pass

    def rerun():
        raise Rerun

    snap = SimpleNamespace(done=False, status="running", phase="maps", progress=0.5, seconds=3.0)
    state = {"sanity": {"value": SimpleNamespace(snapshot=lambda: snap)}}
    bars = []
    monkeypatch.setattr(shared.st, "rerun", rerun)
    monkeypatch.setattr(shared.st, "session_state", state)
    monkeypatch.setattr(shared.st, "progress", lambda value, text: bars.append((value, text)))
    monkeypatch.setattr(shared.st, "button", lambda *args, **kwargs: False)

    def redraw():  # what the followed fragment runs every second
        shared._panel(shared._task_progress, ("sanity", "sanity check"))

    redraw()
    snap.done, snap.status = True, "finished"
    redraw()  # ended: said, no rerun yet
    with pytest.raises(Rerun):
        redraw()
    done = (1.0, "Sanity check: finished, drawing the result…")
    assert bars == [(0.5, "Sanity check: maps… (3 s)"), done, done]  # the rerun's run draws it again, then asks
