"""The Few-shot page, driven through Streamlit's AppTest (no browser)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "fewshot.py")


def test_the_few_shot_page_opens_on_its_own_and_shows_an_episode_of_novel_classes():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Few-shot"]
    assert "An episode: 5-way 1-shot" in [s.value for s in at.subheader]
    novel = at.caption[0].value.split("Novel: ")[1].rstrip(".").split(", ")
    shown = [m.value.strip("*") for m in at.markdown if m.value.startswith("**")]
    assert len(shown) == 5 and set(shown) <= set(novel)
    at.slider[0].set_value(3).run()
    assert "An episode: 3-way 1-shot" in [s.value for s in at.subheader]


def test_scoring_prototypes_gives_one_and_five_shot_accuracies_with_intervals():
    at = AppTest.from_file(PAGE, default_timeout=600).run()
    at.multiselect[0].set_value(["prototypes"]).run()
    at.slider[1].set_value(20).run()
    [b for b in at.button if b.label == "Score the methods"][0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["method", "1-shot", "5-shot"]
    assert "±" in table.iloc[0]["1-shot"] and "±" in table.iloc[0]["5-shot"]
