import io
import json
import zipfile

import pytest
import torch

from core import export, models
from core.errors import ConfigError
from core.export import build_bundle, check_export, export_bundle, export_onnx, export_safetensors, export_torchscript
from tests.toys import Shapes

CLASSES = ["disc", "square", "triangle"]


@pytest.fixture(scope="module")
def model(lite0):
    torch.manual_seed(0)
    m = models.classifier(lite0, 3, image_size=32, classes=CLASSES)
    with torch.no_grad():  # a head far from zero, so the classes really compete
        m.head.weight.normal_(0, 0.5)
    return m


@pytest.fixture(scope="module")
def images():
    return [img for img, _ in Shapes(5, 7).items]


def logits(model, images):
    return model(export._batch(model, images)).detach()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_reloads_with_torch_alone_and_agrees_with_the_model(model, images, tmp_path):
    path = export_torchscript(model, tmp_path / "m.pt")
    check = check_export(model, path, "torchscript", images)
    assert check.ran and check.images == 5
    assert check.max_abs_diff < 1e-4
    assert check.same_predictions
    # the batch of five runs through a module traced on a batch of one
    loaded = torch.jit.load(str(path))
    assert torch.equal(loaded(export._batch(model, images)).argmax(1), logits(model, images).argmax(1))
    extra = {"transfer_lab.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["transfer_lab.json"])["classes"] == CLASSES


def test_onnx_reloads_in_onnxruntime_with_a_free_batch_size(model, images, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / "m.onnx")
    check = check_export(model, path, "onnx", images)
    assert check.ran and check.same_predictions
    assert check.max_abs_diff < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image"
    assert session.run(None, {"image": export._batch(model, images[:2]).numpy()})[0].shape == (2, 3)


def test_without_onnxruntime_the_check_says_it_could_not_run(model, images, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not checked")
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    check = check_export(model, path, "onnx", images)
    assert not check.ran and not check.same_predictions
    assert "onnxruntime is not installed" in check.message


def test_safetensors_rebuilds_the_same_classifier_from_its_sidecar(model, images, tmp_path):
    path = export_safetensors(model, tmp_path / "m.safetensors")
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["classes"] == CLASSES and side["backbone"] == "efficientnet_lite0"
    assert side["preprocessing"]["image_size"] == 32
    assert side["preprocessing"]["mean"] == pytest.approx(list(model.mean))
    check = check_export(model, path, "safetensors", images)
    assert check.max_abs_diff == 0.0 and check.same_predictions
    rebuilt = export.load_safetensors(path)
    assert rebuilt.classes == CLASSES and rebuilt.image_size == 32
    # the safetensors metadata alone is enough when the JSON file got lost
    (tmp_path / "m.json").unlink()
    assert export.load_safetensors(path).classes == CLASSES


def test_a_wrong_export_is_caught_by_the_check(model, images, tmp_path):
    path = export_safetensors(model, tmp_path / "m.safetensors")
    other = models.classifier(models.load(pretrained=False), 3, image_size=32, classes=CLASSES)
    check = check_export(other, path, "safetensors", images)
    assert check.max_abs_diff > 1e-3


def test_exporting_leaves_the_model_as_it_was(model, tmp_path):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    try:
        export_torchscript(model, tmp_path / "m.pt")
        export_safetensors(model, tmp_path / "m.safetensors")
        assert model.training and model.get_submodule("_bn0").training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()


def test_a_bundle_is_a_zip_with_the_model_its_sidecar_and_a_readme(model, images):
    bundle = build_bundle(model, "safetensors", images)
    assert bundle.filename.endswith(".zip") and bundle.check.same_predictions
    names = zipfile.ZipFile(io.BytesIO(bundle.data)).namelist()
    assert sorted(names) == ["README.txt", "model.json", "model.safetensors"]
    data = export_bundle(model, "torchscript")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert "model.pt" in zf.namelist()
        assert json.loads(zf.read("model.json"))["classes"] == CLASSES


def test_without_the_onnx_package_the_export_says_what_to_install(model, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "onnx_export_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install onnx"):
        export_onnx(model, tmp_path / "m.onnx")


def test_an_unknown_format_is_refused(model, tmp_path):
    with pytest.raises(ConfigError, match="Unknown export format"):
        export.export_file(model, "pickle", tmp_path)


@pytest.mark.parametrize("kind", export.KINDS)
def test_the_readme_lists_its_files_in_aligned_columns(model, kind):
    text = zipfile.ZipFile(io.BytesIO(export_bundle(model, kind))).read("README.txt").decode()
    rows = [line for line in text.splitlines() if line.startswith("model")]
    assert [row.split()[0] for row in rows] == [f"model{export.SUFFIX[kind]}", "model.json"]
    starts = {len(row) - len(row.split(maxsplit=1)[1]) for row in rows}
    assert len(starts) == 1  # the descriptions start in one column


def test_the_torchscript_readme_says_it_is_deprecated_and_what_to_use_instead(model):
    text = zipfile.ZipFile(io.BytesIO(export_bundle(model, "torchscript"))).read("README.txt").decode()
    assert "deprecated" in text and "ONNX" in text and "onnxruntime" in text
