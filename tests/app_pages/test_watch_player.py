"""The Train page's player of pinned images: one animation frame per epoch, the kept epoch marked."""

import torch

from pages.ui.watch import default_pins, watch_figure


def frames(epochs: int, pins=(0, 5)) -> list[dict]:
    return [{"epoch": e, "index": i, "probs": [0.2 * e % 1, 1 - 0.2 * e % 1], "cam": [[e / epochs] * 14] * 14,
             "target": 1, "channels": {}} for e in range(1, epochs + 1) for i in pins]


def test_the_player_has_a_frame_and_a_slider_step_per_epoch_and_marks_the_kept_one():
    fig = watch_figure(frames(4), torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ["<b>cat</b>", "dog"], kept=3)
    assert [f.name for f in fig.frames] == ["1", "2", "3", "4"]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2", "3 ★", "4"]
    assert fig.layout.sliders[0].active == 3 and "kept epoch 3" in fig.layout.title.text
    # each frame changes every pin's CAM and bars: the second pin's CAM at epoch 2
    heatmaps = [d for d in fig.frames[1].data if d.type == "heatmap"]
    assert len(heatmaps) == 2 and heatmaps[1].z[0][0] == 0.5
    assert any(b.label == "▶ Play" for b in fig.layout.updatemenus[0].buttons)
    # a class name is text in a chart, never markup
    assert "<b>" not in str(fig.data[2].x)


def test_the_default_pins_are_one_validation_image_per_class():
    class Val:
        labels = [0, 0, 1, 2, 1, 2, 0]

        def __len__(self):
            return len(self.labels)

    assert default_pins(Val()) == [0, 2, 3]
    assert default_pins(Val(), limit=2) == [0, 2]
