"""Multi-task transfer: several labels per image, one shared backbone with a head per task, trained
through the one loop (missing labels masked), and what the tasks' gradients do to each other."""

import io
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core import data, models
from core.data.multitask import MultiTaskDataset
from core.errors import ConfigError, DataError
from core.methods.multitask import compare_shared_separate
from core.models.backbones import Backbone, LayerGroup
from core.models.multitask import multitask_classifier, task_view
from core.train.base import TrainConfig
from core.train.fitting import fit
from core.train.multitask import MultiTask, fit_multitask


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.block(self.stem(x))).flatten(1)))


def tiny_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    groups = [LayerGroup("stem", ["stem"]), LayerGroup("block", ["block"]), LayerGroup("head", ["fc"])]
    return Backbone("tiny", TinyNet().eval(), None, groups, None, (0.5,) * 3, (0.25,) * 3, 32, "fc", False, ("drop",))


TASKS = {"shade": ["dark", "light"], "tint": ["red", "blue"]}


def toy(n: int = 16, seed: int = 0, missing: float = 0.0) -> MultiTaskDataset:
    """Noisy squares: dark or light (shade), reddish or bluish (tint); some labels dropped."""
    rng = np.random.default_rng(seed)
    images, shade, tint = [], [], []
    for i in range(n):
        s, t = i % 2, (i // 2) % 2
        base = np.array([60 + 120 * s] * 3, dtype=float)
        base[0 if t == 0 else 2] += 60
        images.append(Image.fromarray(np.clip(rng.normal(base, 20, (32, 32, 3)), 0, 255).astype(np.uint8)))
        shade.append(s if rng.random() >= missing else -1)
        tint.append(t if rng.random() >= missing or shade[-1] == -1 else -1)
    return MultiTaskDataset(images, TASKS, {"shade": shade, "tint": tint})


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=8, lr=0.01, image_size=32, augment=False), **changes})


# --- data -----------------------------------------------------------------------------------------


def test_demo_labels_every_image_for_three_tasks_and_split_keeps_every_shape_on_both_sides():
    ds = data.demo_multitask(per_class=6, seed=0)
    assert len(ds.tasks) >= 3 and len(ds) == 6 * len(ds.tasks["shape"])
    image, labels = ds[0]
    assert image.mode == "RGB" and set(labels) == set(ds.tasks)
    assert all(0 <= labels[t] < len(ds.tasks[t]) for t in ds.tasks)
    for t in ds.tasks:  # every class of every task occurs
        assert set(ds.task_labels(t)) == set(range(len(ds.tasks[t])))
    train, val = data.split(ds, 0.25, seed=0)
    assert isinstance(train, MultiTaskDataset) and len(train) + len(val) == len(ds)
    assert set(val.task_labels("shape")) == set(train.task_labels("shape")) == {0, 1, 2, 3}
    assert data.demo_multitask(per_class=6, seed=0).fingerprint == ds.fingerprint


def test_gaps_in_the_first_task_split_like_a_class_of_their_own():
    ds = toy(16, 0, missing=0.4)
    assert -1 in ds.task_labels("shade")  # split stratifies on the first task
    train, val = data.split(ds, 0.25, seed=0)
    assert len(train) + len(val) == len(ds)
    assert -1 in train.task_labels("shade") and -1 in val.task_labels("shade")
    assert set(train.task_labels("shade")) - {-1} == set(val.task_labels("shade")) - {-1} == {0, 1}


def _zip(files: dict[str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (value, value, 255 - value)).save(buf, "PNG")
    return buf.getvalue()


GOOD_CSV = "path,shape,colour\nimg/a.png,circle,red\nimg/b.png,square,\nimg/c.png,,blue\nimg/d.png,circle,blue\n"


def test_labels_csv_zip_loads_as_a_multitask_dataset_with_gaps_as_minus_one():
    files = {f"set/img/{n}.png": _png(i * 40) for i, n in enumerate("abcd")}
    ds, report = data.load_zip(_zip({**files, "set/labels.csv": GOOD_CSV}))  # paths relative to the CSV
    assert isinstance(ds, MultiTaskDataset) and report.loaded == 4
    assert ds.tasks == {"shape": ["circle", "square"], "colour": ["blue", "red"]}
    assert [ds[i][1] for i in range(4)] == [{"shape": 0, "colour": 1}, {"shape": 1, "colour": -1},
                                           {"shape": -1, "colour": 0}, {"shape": 0, "colour": 0}]
    assert any("'colour'" in w for w in report.warnings)


@pytest.mark.parametrize("csv_text, files, words", [
    (GOOD_CSV.replace("img/d.png", "img/zzz.png"), "abcd", ["not in the ZIP", "img/zzz.png"]),
    (GOOD_CSV + "img/a.png,square,red\n", "abcd", ["more than once", "img/a.png"]),
    ("path,shape,colour\nimg/a.png,circle,red\nimg/b.png,circle,blue\n", "ab", ["'shape' has 1", "two classes"]),
    (GOOD_CSV.replace("img/c.png,,blue", "img/c.png,,"), "abcd", ["no label for any task", "img/c.png"]),
    (GOOD_CSV, "abcde", ["no row in labels.csv", "img/e.png"]),
    ("path\nimg/a.png\n", "a", ["no task columns"]),
])
def test_bad_labels_csv_is_refused_with_a_message_that_names_the_problem(csv_text, files, words):
    archive = _zip({**{f"img/{n}.png": _png(i * 40) for i, n in enumerate(files)}, "labels.csv": csv_text})
    with pytest.raises(DataError) as caught:
        data.load_zip(archive)
    for word in words:
        assert word in str(caught.value)


def test_folder_zips_without_labels_csv_still_load_as_single_task():
    archive = _zip({"a/1.png": _png(0), "a/2.png": _png(10), "b/1.png": _png(200), "b/2.png": _png(220)})
    ds, _ = data.load_zip(archive)
    assert isinstance(ds, data.ImageDataset) and ds.classes == ["a", "b"]


# --- the model --------------------------------------------------------------------------------------


def test_each_head_has_its_task_s_classes_and_a_batch_of_one_keeps_its_batch_dimension():
    model = multitask_classifier(tiny_backbone(), {"a": ["x", "y", "z"], "b": ["p", "q"]})
    out = model(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (1, 3), "b": (1, 2)}
    assert [g.name for g in model.layer_groups][-1].startswith("head")
    view = task_view(model, "a")
    assert tuple(view(torch.randn(2, 3, 32, 32)).shape) == (2, 3)
    mlp = multitask_classifier(tiny_backbone(), {"a": ["x", "y"], "b": ["p", "q"]}, head={"b": "mlp"})
    assert isinstance(mlp.task_heads.heads["a"], nn.Linear) and isinstance(mlp.task_heads.heads["b"], nn.Sequential)


def test_forward_features_then_forward_head_equals_the_model_for_every_task():
    model = multitask_classifier(tiny_backbone(), TASKS)
    x = torch.randn(3, 3, 32, 32)
    whole, parts = model(x), model.forward_head(model.forward_features(x))
    assert all(torch.allclose(whole[t], parts[t], atol=1e-6) for t in TASKS)


# --- training ---------------------------------------------------------------------------------------


def _fake_trainer(model, labels):
    return SimpleNamespace(inputs=lambda source, idx, seed: torch.randn(len(idx), 3, 32, 32),
                           logits=model, labels={"train": labels}, device=torch.device("cpu"),
                           config=config())


def test_a_task_with_every_label_missing_in_a_batch_gives_its_head_no_gradient():
    model = multitask_classifier(tiny_backbone(), TASKS).train()
    objective = MultiTask()
    objective.tasks = list(TASKS)
    labels = torch.tensor([[0, -1], [1, -1], [0, -1], [1, -1]])
    loss, stats = objective.loss(_fake_trainer(model, labels), (torch.arange(4), 0))
    loss.backward()
    heads = model.task_head_parameters()
    assert all(p.grad is None for p in heads["tint"])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads["shade"])
    assert stats["n:shade"] == 4 and "n:tint" not in stats


def test_missing_labels_are_left_out_of_the_loss_not_counted_as_a_class():
    objective = MultiTask()
    objective.tasks = ["a"]
    logits = torch.randn(4, 3)
    y = torch.tensor([[2], [-1], [0], [-1]])
    loss = objective.task_losses({"a": logits}, y)["a"][0]
    expected = nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([2, 0]))
    assert torch.allclose(loss, expected)


def test_training_records_per_task_figures_and_gradient_conflict_is_a_cosine_matrix():
    model = multitask_classifier(tiny_backbone(), TASKS)
    history = fit_multitask(model, toy(24, 0, missing=0.2), toy(8, 1), config(), MultiTask(conflict_batches=3, pcgrad=True))
    for e in history.epochs:
        assert set(e.val_acc_by_task) == set(e.train_loss_by_task) == set(TASKS)
        assert e.val_acc == pytest.approx(np.mean(list(e.val_acc_by_task.values())))
        cos = np.array(e.grad_cosine)
        assert cos.shape == (2, 2) and e.grad_on == "parameters"
        assert np.all(cos >= -1) and np.all(cos <= 1) and np.allclose(np.diag(cos), 1)
        assert cos[0, 1] == pytest.approx(cos[1, 0]) and abs(cos[0, 1]) < 1
        assert 0 <= e.grad_conflict <= 1


def test_with_a_frozen_body_the_heads_train_on_cached_features_and_conflict_is_measured_on_them():
    model = multitask_classifier(tiny_backbone(), TASKS)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    history = fit_multitask(model, toy(24, 0), toy(8, 1), config(freeze=["stem", "block"]))
    assert history.cache == "head"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())
    cos = np.array(history.epochs[-1].grad_cosine)
    assert history.epochs[-1].grad_on == "features" and np.allclose(np.diag(cos), 1) and np.all(np.abs(cos) <= 1)


def test_uncertainty_weighting_learns_its_task_weights_through_the_loop_s_optimizer():
    model = multitask_classifier(tiny_backbone(), TASKS)
    history = fit_multitask(model, toy(24, 0), toy(8, 1), config(epochs=2), MultiTask("uncertainty", conflict_batches=0))
    weights = [e.task_weights for e in history.epochs]
    assert all(set(w) == set(TASKS) for w in weights)
    assert any(abs(w - 1.0) > 1e-3 for w in weights[-1].values())  # moved from exp(-0) = 1
    assert weights[0] != weights[-1]


def test_manual_weights_for_unknown_tasks_and_single_task_data_are_refused():
    model = multitask_classifier(tiny_backbone(), TASKS)
    with pytest.raises(ConfigError, match="unknown task"):
        fit_multitask(model, toy(8), toy(4), config(), MultiTask("manual", {"nope": 2.0}))
    with pytest.raises(ConfigError, match="label per task"):
        fit_multitask(model, data.demo_dataset(per_class=2), None, config(), MultiTask())


def test_fit_trains_a_multitask_model_on_every_task_as_fit_multitask_does_with_equal_weights():
    torch.manual_seed(0)
    model = multitask_classifier(tiny_backbone(), TASKS)
    twin = multitask_classifier(tiny_backbone(), TASKS)
    twin.load_state_dict(model.state_dict())
    history = fit(model, toy(24, 0, missing=0.2), toy(8, 1), config())
    reference = fit_multitask(twin, toy(24, 0, missing=0.2), toy(8, 1), config(), MultiTask())
    assert [set(e.val_acc_by_task) for e in history.epochs] == [set(TASKS)] * 2
    assert [e.train_loss for e in history.epochs] == [e.train_loss for e in reference.epochs]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(),
                                                 strict=True))


def test_fit_refuses_labels_for_several_tasks_on_a_model_with_one_head_and_names_what_to_use():
    model = models.classifier(tiny_backbone(), 2)
    with pytest.raises(ConfigError, match="multitask_classifier.*as_single_task"):
        fit(model, toy(8), toy(4), config())


def test_frozen_pretrained_backbone_with_linear_heads_learns_every_demo_task(lite0):
    ds = data.demo_multitask()
    train, val = data.split(ds, 0.2, seed=0)
    model = multitask_classifier(lite0, ds.tasks)
    cfg = config(epochs=5, image_size=128, batch_size=8, lr=0.01, augment=True,
                 freeze=[g.name for g in model.layer_groups[:-1]])
    history = fit_multitask(model, train, val, cfg, MultiTask(conflict_batches=1))
    assert history.cache == "head"
    final = history.epochs[-1].val_acc_by_task
    assert set(final) == {"shape", "colour", "size"} and min(final.values()) >= 0.9, final


def test_shared_versus_separate_compares_each_task_on_the_same_split():
    train, val = toy(24, 0), toy(8, 1)
    result = compare_shared_separate(tiny_backbone(), train, val, config(epochs=2))
    assert result.tasks == list(TASKS)
    for t in TASKS:
        assert 0 <= result.shared_acc[t] <= 1 and 0 <= result.separate_acc[t] <= 1
    body = sum(p.numel() for n, p in tiny_backbone().model.named_parameters() if not n.startswith("fc."))
    assert result.separate_params - result.shared_params == body  # one more copy of the body
    assert result.shared_seconds > 0 and result.separate_seconds > 0
    assert [r["task"] for r in result.rows()] == list(TASKS)


def test_pcgrad_gives_the_shared_body_a_gradient_that_conflicts_with_no_task():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed in range(30):  # find a model and labels whose two tasks' gradients on the body conflict
        model = multitask_classifier(tiny_backbone(seed), TASKS)  # eval mode: no dropout noise
        labels = torch.randint(0, 2, (8, 2), generator=torch.Generator().manual_seed(seed))
        body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
        out = model(x)
        per_task = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            nn.functional.cross_entropy(out[t], labels[:, k]), body, retain_graph=True)]) for k, t in enumerate(TASKS)]
        if per_task[0] @ per_task[1] < 0:
            break
    else:
        pytest.fail("no conflicting pair found")
    objective = MultiTask(pcgrad=True)
    objective.tasks = list(TASKS)
    trainer = SimpleNamespace(inputs=lambda source, idx, seed: x, logits=model, labels={"train": labels},
                              device=torch.device("cpu"), config=config(), model=model,
                              param_groups=[{"params": list(model.parameters())}])
    loss, _ = objective.loss(trainer, (torch.arange(8), 0))
    plain = sum(nn.functional.cross_entropy(out[t], labels[:, k]) for k, t in enumerate(TASKS))
    assert loss.item() == pytest.approx(plain.item())
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in body])
    assert (g - (per_task[0] + per_task[1])).abs().max() > 1e-6  # projected, not the plain sum
    assert g @ per_task[0] >= -1e-6 and g @ per_task[1] >= -1e-6


def test_saliency_explains_each_head_on_its_own():
    from core.analysis import saliency

    model = multitask_classifier(tiny_backbone(), TASKS)
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = {t: saliency.attribute(task_view(model, t), image, 1, "gradient") for t in TASKS}
    assert all(m.shape == (32, 32) and np.all(m >= 0) for m in maps.values())
    assert not np.allclose(maps["shade"], maps["tint"])  # two heads, two different explanations


def test_every_task_is_predicted_at_once_and_confusion_counts_only_labelled_images():
    from core.analysis.evaluation import confusion_by_task
    from core.analysis.predict import predict_tasks

    model = multitask_classifier(tiny_backbone(), TASKS)
    val = toy(12, 1, missing=0.3)
    probs = predict_tasks(model, val.images[:5])
    assert {t: tuple(p.shape) for t, p in probs.items()} == {"shade": (5, 2), "tint": (5, 2)}
    assert torch.allclose(probs["tint"].sum(1), torch.ones(5))
    confusion = confusion_by_task(model, val)
    for t in TASKS:
        assert confusion[t].shape == (2, 2)
        assert confusion[t].sum() == sum(v != -1 for v in val.task_labels(t))
    assert confusion["shade"].sum() < len(val)  # some labels were dropped, and not counted


def test_onnx_export_has_one_named_output_per_task_that_matches_the_model(tmp_path):
    from core.export import check_export, export_onnx, onnx_available

    model = multitask_classifier(tiny_backbone(), TASKS)
    path = export_onnx(model, tmp_path / "model.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["shade", "tint"] and [i.name for i in graph.input] == ["image"]
    images = toy(5, 2).images
    check = check_export(model, path, "onnx", images)
    if onnx_available():  # onnxruntime reloads it: each task's logits as the model's
        assert check.ran and check.same_predictions and check.max_abs_diff < 1e-4 and check.images == 5
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["tasks"] == TASKS and sidecar["outputs"] == ["shade", "tint"]


def test_torchscript_export_of_a_multitask_model_returns_every_task(tmp_path):
    from core.export import check_export, export_torchscript

    model = multitask_classifier(tiny_backbone(), TASKS, head={"shade": "mlp"})
    path = export_torchscript(model, tmp_path / "model.pt")
    check = check_export(model, path, "torchscript", toy(4, 3).images)
    assert check.ran and check.same_predictions and check.max_abs_diff < 1e-4


def test_a_task_view_names_its_layers_as_the_model_does_and_follows_its_mode():
    model = multitask_classifier(tiny_backbone(), TASKS)
    view = task_view(model, "tint")
    assert dict(view.named_modules())["block.0"] is model.get_submodule("block.0")
    assert "fc.heads.tint" in dict(view.named_modules())
    view.eval()
    assert not model.training and not model.get_submodule("drop").training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(view(x), model(x)["tint"])


def test_the_accuracy_per_task_a_run_kept_is_its_best_epochs_with_early_stopping_else_its_last():
    from core.methods.multitask import kept_accuracy_by_task

    epochs = [{"epoch": 1, "val_acc_by_task": {"shape": 0.5}}, {"epoch": 2, "val_acc_by_task": {"shape": 0.9}},
              {"epoch": 3, "val_acc_by_task": {"shape": 0.7}}]
    assert kept_accuracy_by_task(epochs, best_epoch=2) == {"shape": 0.9}
    assert kept_accuracy_by_task(epochs) == {"shape": 0.7}
    assert kept_accuracy_by_task([]) == {}
