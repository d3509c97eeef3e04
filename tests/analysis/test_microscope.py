"""The Microscope: the images that excite a channel most, and an image optimised to excite it."""

import threading

import pytest
import torch

from core import microscope, models
from core.data import demo_dataset
from core.errors import ConfigError
from core.models.heads import classifier, starting_model
from tests.toys import Shapes, tiny


@pytest.fixture(scope="module")
def lite0_model():
    return classifier(models.load(), 4, image_size=64)


def test_a_visualization_excites_its_channel_more_than_the_channels_best_dataset_example(lite0_model):
    # three channels of a middle layer of the default backbone, against the demo set's best image for each
    images = demo_dataset("source", per_class=6, seed=0)
    stats = microscope.channel_stats(lite0_model, "stage4", images, image_size=64)
    for channel in (0, 7, 21):
        (index, best, box), *_ = microscope.top_examples(lite0_model, "stage4", channel, images, k=3, stats=stats)
        picture = microscope.visualize(lite0_model, "stage4", channel, size=64, steps=48, seed=0)
        assert picture.size == (64, 64)
        assert microscope.channel_activation(lite0_model, "stage4", channel, [picture])[0] > best


def test_top_examples_come_highest_first_with_a_box_inside_the_image():
    model = tiny()
    data = Shapes(12, seed=0, size=32)
    found = microscope.top_examples(model, "block", 3, data, k=5, image_size=32)
    assert len(found) == 5
    values = [v for _, v, _ in found]
    assert values == sorted(values, reverse=True)
    means = microscope.channel_stats(model, "block", data, image_size=32)["means"][:, 3]
    assert found[0][0] == int(means.argmax())
    for _, _, (left, top, right, bottom) in found:
        assert 0 <= left < right <= 32 and 0 <= top < bottom <= 32


def test_the_same_seed_gives_the_same_image_and_another_seed_another():
    model = tiny()
    a = microscope.visualize(model, "block", 2, size=32, steps=6, seed=1)
    b = microscope.visualize(model, "block", 2, size=32, steps=6, seed=1)
    c = microscope.visualize(model, "block", 2, size=32, steps=6, seed=2)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_bad_channels_and_layers_get_a_message_and_the_model_is_left_as_it_was():
    model = tiny().train()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ConfigError, match="Channel 8 does not exist: block has 8 channels"):
        microscope.visualize(model, "block", 8, size=32, steps=2)
    with pytest.raises(ConfigError, match="no channels with a spatial map"):
        microscope.top_examples(model, "head", 0, Shapes(4, seed=0, size=32))
    with pytest.raises(ConfigError, match="no spatial output"):
        microscope.top_examples(model, "pool", 0, Shapes(4, seed=0, size=32), image_size=32)
    with pytest.raises(ConfigError, match="not a layer of this model"):
        microscope.channel_count(model, "layer9")
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


def test_a_stopped_visualization_ends_with_a_message():
    stop = threading.Event()
    stop.set()
    with pytest.raises(microscope.MicroscopeStopped):
        microscope.visualize(tiny(), "block", 0, size=32, steps=50, stop=stop)


def test_the_channels_fine_tuning_changed_most_come_first():
    before = {"means": torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 1.0], [3.0, 3.0, 2.0]])}
    # channel 1 keeps its order of images, channel 2 reverses it
    after = {"means": torch.tensor([[1.0, 2.0, 2.0], [2.0, 4.0, 1.0], [3.0, 6.0, 0.0]])}
    ranked = microscope.changed_channels(before, after, k=3)
    assert ranked[0][0] == 2 and ranked[0][1] == pytest.approx(2.0)
    assert {c for c, _ in ranked[1:]} == {0, 1} and all(v == pytest.approx(0.0, abs=1e-6) for _, v in ranked[1:])


@pytest.mark.parametrize("name", [b.name for b in models.list_backbones()])
def test_every_registry_backbone_can_be_looked_at_channel_by_channel(name):
    model = starting_model(name, ["a", "b"], pretrained=False, image_size=64)
    group = model.layer_groups[len(model.layer_groups) // 2].name
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    found = microscope.top_examples(model, group, 1, images, k=2)
    assert len(found) == 2 and found[0][1] >= found[1][1]
    assert microscope.visualize(model, group, 1, size=64, steps=1).size == (64, 64)
