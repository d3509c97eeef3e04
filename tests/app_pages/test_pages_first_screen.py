"""The first screen says what the app is for and where to start."""

from tests.app_pages.pages_helpers import fresh_app, texts


def test_the_first_screen_says_what_the_app_does_and_points_to_lesson_1_and_your_own_images():
    app = fresh_app(timeout=60)
    assert texts(app.title) == ["Data"]
    intro = texts(app.markdown)[:2]
    assert "pretrained" in intro[0] and "your" in intro[0]
    assert "bring your own images" in intro[1].lower()
    lesson = [link.proto for link in app.get("page_link") if "Lesson 1" in link.proto.label]
    assert lesson and "lessons" in lesson[0].page and not lesson[0].external, [p.page for p in lesson]
