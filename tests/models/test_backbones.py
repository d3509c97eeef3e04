import copy
import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core import models
from core.errors import CheckpointError, ConfigError
from core.models import backbones, weights
from core.models.backbones import DEFAULT_BACKBONE, load
from core.models.heads import classifier, group_parameters

skimage_data = pytest.importorskip("skimage.data")


def top_label(bb, image: Image.Image) -> str:
    with torch.inference_mode():
        logits = bb.model(bb.preprocess(image)[None])
    return bb.categories[int(logits.argmax())]


def test_default_backbone_is_offline_and_labels_real_photos(lite0):
    info = {i.name: i for i in models.list_backbones()}[DEFAULT_BACKBONE]
    assert info.offline and info.source == "bundled"
    assert not lite0.model.training
    assert top_label(lite0, Image.fromarray(skimage_data.coffee())) == "espresso"
    assert "cat" in top_label(lite0, Image.fromarray(skimage_data.chelsea())).lower()


@pytest.mark.parametrize("name", [i.name for i in models.list_backbones()])
def test_every_parameter_belongs_to_exactly_one_layer_group(name):
    bb = load(name, pretrained=False)
    groups = group_parameters(bb.model, bb.layer_groups)
    assert "other" not in groups
    assert sum(len(p) for p in groups.values()) == len(list(bb.model.parameters()))
    assert bb.layer_groups[0].name == "stem" and bb.layer_groups[-1].name == "head"
    assert bb.categories is None


def test_classifier_keeps_backbone_names_and_replaces_only_the_head(lite0):
    model = classifier(lite0, 3, classes=["a", "b", "c"], image_size=64)
    names = [n for n, _ in model.named_modules()][1:]
    assert names == [n for n, _ in lite0.model.named_modules()][1:]
    assert model.head.out_features == 3
    assert lite0.model.get_submodule("_fc").out_features == 1000  # the backbone is untouched
    assert torch.equal(model.get_submodule("_conv_stem").weight, lite0.model.get_submodule("_conv_stem").weight)
    model.get_submodule("_conv_stem").weight.data.zero_()
    assert lite0.model.get_submodule("_conv_stem").weight.abs().sum() > 0
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    clone = copy.deepcopy(model)
    clone.get_submodule("_fc").weight.data.add_(1)
    assert not torch.equal(clone.head.weight, model.head.weight)


def test_each_load_returns_a_model_no_other_caller_shares():
    a, b = load(), load()
    a.model.get_submodule("_conv_stem").weight.data.zero_()
    assert b.model.get_submodule("_conv_stem").weight.abs().sum() > 0
    assert load().model.get_submodule("_conv_stem").weight.abs().sum() > 0


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ConfigError, match="resnet18"):
        load("resnet9000")


def test_torchvision_weights_missing_offline_give_instructions(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    assert not {i.name: i for i in models.list_backbones()}["resnet18"].offline
    with pytest.raises(CheckpointError) as err:
        load("resnet18", pretrained=True)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and "TORCH_HOME" in message and DEFAULT_BACKBONE in message


def test_torchvision_weights_in_the_torch_cache_load_offline():
    reference = load("resnet18", pretrained=False)
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.model.state_dict(), cache / "resnet18-f37072fd.pth")
    backbones._state_dict_cache.pop("resnet18", None)
    try:
        assert {i.name: i for i in models.list_backbones()}["resnet18"].offline
        loaded = load("resnet18", pretrained=True)
    finally:
        backbones._state_dict_cache.pop("resnet18", None)
    assert torch.equal(loaded.model.conv1.weight, reference.model.conv1.weight)
    assert len(loaded.categories) == 1000


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_own_weights_file_loads_with_its_number_of_classes(tmp_path, lite0, suffix):
    model = classifier(lite0, 4, image_size=64)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"mine{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load(DEFAULT_BACKBONE, weights_path=path)
    assert loaded.model.get_submodule("_fc").out_features == 4
    assert torch.equal(loaded.model.get_submodule("_fc").weight, model.head.weight)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['TRANSFER_LAB_DATA_DIR']}-pwned",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"_fc.weight": _Exploit()}, fh)
    torch.save({"w": _Exploit()}, tmp_path / "evil2.pth")
    for candidate in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="refused"):
            load(DEFAULT_BACKBONE, weights_path=candidate)
    assert not Path(os.environ["TRANSFER_LAB_DATA_DIR"] + "-pwned").exists()


def test_weights_of_another_architecture_are_explained(tmp_path):
    torch.save(load("resnet18", pretrained=False).model.state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="missing .*unexpected"):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "resnet.pt")
    state = load(DEFAULT_BACKBONE, pretrained=False).model.state_dict()
    state["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(CheckpointError, match=r"_conv_stem.weight: file \(8, 3, 3, 3\)"):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "shapes.pt")


def test_oversized_or_foreign_weights_files_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    monkeypatch.setattr(weights, "MAX_WEIGHTS_BYTES", 100)
    with pytest.raises(CheckpointError, match="MB"):
        load(DEFAULT_BACKBONE, weights_path=path)
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="safetensors"):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "w.onnx")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "junk.safetensors")


def _lite0_state():
    return load(DEFAULT_BACKBONE, pretrained=False).model.state_dict()


def test_integer_weights_that_would_load_as_garbage_are_refused(tmp_path):
    state = {k: (v * 100).to(torch.int8) if v.is_floating_point() else v for k, v in _lite0_state().items()}
    torch.save(state, tmp_path / "quantised.pt")
    with pytest.raises(CheckpointError, match=r"quantised.pt holds int8 values .*floating-point"):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "quantised.pt")


def test_half_precision_weights_are_floating_point_and_load(tmp_path):
    state = {k: v.half() if v.is_floating_point() else v for k, v in _lite0_state().items()}
    save_file(state, str(tmp_path / "half.safetensors"))
    loaded = load(DEFAULT_BACKBONE, weights_path=tmp_path / "half.safetensors")
    assert loaded.model.get_submodule("_fc").weight.dtype == torch.float32


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_with_nan_or_infinite_values_are_refused(tmp_path, value):
    state = _lite0_state()
    state["_blocks.3._depthwise_conv.weight"][0, 0, 0, 0] = value
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensors \(e.g. _blocks.3._depthwise"):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "diverged.pt")


@pytest.mark.parametrize("weight, bias, message", [
    (torch.zeros(1280), torch.zeros(1280), r"_fc.weight has shape \(1280,\).*\(number of classes, 1280\)"),
    (torch.zeros(4, 999), torch.zeros(4), r"_fc.weight has shape \(4, 999\).*\(number of classes, 1280\)"),
    (torch.zeros(4, 1280), torch.zeros(5), r"_fc.bias has shape \(5,\).*needs \(4,\)"),
    (torch.zeros(1000, 1280), torch.zeros(4), r"_fc.bias has shape \(4,\).*needs \(1000,\)"),
])
def test_a_head_of_the_wrong_shape_is_explained(tmp_path, weight, bias, message):
    state = _lite0_state()
    state["_fc.weight"], state["_fc.bias"] = weight, bias
    torch.save(state, tmp_path / "head.pt")
    with pytest.raises(CheckpointError, match=message):
        load(DEFAULT_BACKBONE, weights_path=tmp_path / "head.pt")
