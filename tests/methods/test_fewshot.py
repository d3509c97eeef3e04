"""Few-shot transfer: episodes, MAML's inner loop against a hand-written reference, meta-training
in the one loop, and the methods on the generated many-class demo."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.data import demo_fewshot
from core.errors import ConfigError, DataError
from core.methods import fewshot
from core.models.backbones import LayerGroup
from core.models.heads import Classifier
from core.runs.kinds.meta import load_meta_run, meta_run

# --- MAML's inner loop --------------------------------------------------------------------------


def _reference_adapt(w, b, x, y, lr, steps, first_order):
    """Softmax regression's inner steps with the cross-entropy gradient written out by hand:
    dL/dW = (softmax(xW^T + b) - onehot(y))^T x / n, dL/db = mean(softmax - onehot)."""
    onehot = F.one_hot(y, w.shape[0]).float()
    for _ in range(steps):
        err = (torch.softmax(x @ w.T + b, 1) - onehot) / len(y)
        gw, gb = err.T @ x, err.sum(0)
        if first_order:
            gw, gb = gw.detach(), gb.detach()
        w, b = w - lr * gw, b - lr * gb
    return w, b


def _episode(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    return xs, torch.tensor([0, 1, 2, 0, 1, 2]), xq, torch.tensor([0, 1, 2] * 3)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_gives_the_query_loss_gradient_of_a_hand_written_maml(steps, first_order):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    xs, ys, xq, yq = _episode()
    lr = 0.5

    adapted = fewshot.adapt(model, xs, ys, lr, steps, first_order=first_order)
    loss = F.cross_entropy(fewshot.forward_with(model, adapted, xq), yq)
    got = torch.autograd.grad(loss, [model.weight, model.bias])

    w, b = model.weight.detach().clone().requires_grad_(), model.bias.detach().clone().requires_grad_()
    rw, rb = _reference_adapt(w, b, xs, ys, lr, steps, first_order)
    assert torch.allclose(adapted["weight"], rw, atol=1e-5) and torch.allclose(adapted["bias"], rb, atol=1e-5)
    want = torch.autograd.grad(F.cross_entropy(xq @ rw.T + rb, yq), [w, b])
    for g, r in zip(got, want, strict=True):
        assert torch.allclose(g, r, atol=1e-5), (g, r)


def test_second_order_and_first_order_gradients_differ():
    # the check above could not tell them apart if the Hessian term vanished on this episode
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    xs, ys, xq, yq = _episode()
    grads = []
    for first_order in (False, True):
        adapted = fewshot.adapt(model, xs, ys, 0.5, 1, first_order=first_order)
        grads.append(torch.autograd.grad(F.cross_entropy(fewshot.forward_with(model, adapted, xq), yq),
                                         [model.weight])[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def test_first_order_adapted_weights_carry_no_second_order_graph():
    model = nn.Linear(4, 3)
    xs, ys, xq, yq = _episode()
    adapted = fewshot.adapt(model, xs, ys, 0.5, 2, first_order=True)
    # d(adapted)/d(start) is the identity: the query gradient is the gradient at the adapted weights
    loss = F.cross_entropy(fewshot.forward_with(model, adapted, xq), yq)
    at_start = torch.autograd.grad(loss, [model.weight])[0]
    w = adapted["weight"].detach().requires_grad_()
    at_adapted = torch.autograd.grad(F.cross_entropy(xq @ w.T + adapted["bias"].detach(), yq), [w])[0]
    assert torch.allclose(at_start, at_adapted, atol=1e-6)


def test_forward_with_swaps_parameters_and_keeps_buffers():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    x = torch.randn(5, 4)
    w = torch.randn(4, 4)
    out = fewshot.forward_with(model, {"0.weight": w}, x)
    bn = model[1]
    want = F.batch_norm(x @ w.T + model[0].bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, False,
                        0.0, bn.eps)
    assert torch.allclose(out, want, atol=1e-6)
    assert torch.allclose(fewshot.forward_with(model, {}, x), model(x))


def test_adapt_leaves_the_model_unchanged():
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    xs, ys, _, _ = _episode()
    with torch.no_grad():  # evaluation code often runs under no_grad: the inner loop still works
        adapted = fewshot.adapt(model, xs, ys, 0.5, 2)
    assert torch.equal(model.weight, before)
    assert not torch.equal(adapted["weight"], before)


# --- episodes -----------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 8)


def test_episodes_draw_n_ways_of_k_shots_and_q_queries_from_the_given_classes_only():
    novel = [1, 4, 5, 7, 9]
    for ep in fewshot.sample_episodes(LABELS, novel, n_way=3, k_shot=2, n_query=4, count=30, seed=1):
        assert set(ep.classes) <= set(novel) and len(set(ep.classes)) == 3
        assert len(ep.support) == 6 and len(ep.query) == 12
        assert not set(ep.support) & set(ep.query)
        for idx, ways in ((ep.support, ep.support_y), (ep.query, ep.query_y)):
            assert [ep.classes[w] for w in ways] == LABELS[idx].tolist()


def test_base_and_novel_episodes_never_share_a_class():
    classes = [f"c{i}" for i in range(10)]
    split = fewshot.split_classes(classes, seed=3)
    assert not set(split.base) & set(split.novel) and set(split.base) | set(split.novel) == set(classes)
    base = [classes.index(c) for c in split.base]
    novel = [classes.index(c) for c in split.novel]
    seen_base = {c for ep in fewshot.sample_episodes(LABELS, base, 3, 1, 2, 50) for c in ep.classes}
    seen_novel = {c for ep in fewshot.sample_episodes(LABELS, novel, 3, 1, 2, 50) for c in ep.classes}
    assert seen_base <= set(base) and seen_novel <= set(novel)
    assert fewshot.split_classes(classes, novel=["c2", "c5"]).novel == ("c2", "c5")
    with pytest.raises(DataError, match="not among"):
        fewshot.split_classes(classes, novel=["zebra"])


def test_the_same_seed_gives_the_same_episodes():
    a = fewshot.sample_episodes(LABELS, range(10), 5, 1, 3, 20, seed=7)
    b = fewshot.sample_episodes(LABELS, range(10), 5, 1, 3, 20, seed=7)
    c = fewshot.sample_episodes(LABELS, range(10), 5, 1, 3, 20, seed=8)
    same = lambda x, y: x.classes == y.classes and np.array_equal(x.support, y.support) and np.array_equal(  # noqa
        x.query, y.query)
    assert all(same(x, y) for x, y in zip(a, b, strict=True))
    assert not all(same(x, y) for x, y in zip(a, c, strict=True))
    # more episodes never change the first ones
    assert all(same(x, y) for x, y in zip(a, fewshot.sample_episodes(LABELS, range(10), 5, 1, 3, 5, seed=7), strict=False))


def test_too_few_images_or_classes_for_an_episode_is_a_clear_message():
    with pytest.raises(DataError, match="lower K or the queries"):
        fewshot.sample_episodes(LABELS, range(10), 5, 5, 5, 1)
    with pytest.raises(ConfigError, match="smaller N"):
        fewshot.sample_episodes(LABELS, [0, 1], 5, 1, 1, 1)


def test_demo_fewshot_has_many_named_classes_and_is_reproducible():
    ds = demo_fewshot(n_classes=12, per_class=3, size=32)
    assert len(ds.classes) == 12 and len(set(ds.classes)) == 12 and len(ds) == 36
    assert ds.counts() == dict.fromkeys(ds.classes, 3)
    assert demo_fewshot(n_classes=12, per_class=3, size=32).fingerprint == ds.fingerprint
    assert demo_fewshot(n_classes=12, per_class=3, size=32, seed=1).fingerprint != ds.fingerprint
    with pytest.raises(ConfigError):
        demo_fewshot(n_classes=100)


# --- meta-training in the one loop ------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self, ways=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, ways)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.body(x))).flatten(1))


def tiny(ways=3):
    torch.manual_seed(0)
    groups = [LayerGroup("body", ["body"]), LayerGroup("block", ["block"]), LayerGroup("head", ["fc"])]
    return Classifier(TinyNet(ways), backbone_name="tiny", layer_groups=groups, head_module="fc",
                      classes=[f"way {i}" for i in range(ways)], mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32,
                      pretrained=False).eval()


@pytest.fixture(scope="module")
def colours():
    """Six flat colours, a few noisy images each."""
    from PIL import Image

    from core.data import ImageDataset

    rng = np.random.default_rng(0)
    hues = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    images, labels = [], []
    for label, rgb in enumerate(hues):
        for _ in range(6):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    return ImageDataset(images, labels, [f"colour {i}" for i in range(6)])


def test_anil_meta_trains_the_head_on_cached_features_and_leaves_the_body_alone(colours):
    model = tiny()
    body = [p.detach().clone() for p in model.body.parameters()]
    head = model.fc.weight.detach().clone()
    config = fewshot.MetaConfig(episodes=6, episodes_per_batch=2, n_query=2, inner="head", adapt_groups=1,
                                image_size=32, inner_lr=0.5, meta_lr=0.05)
    history = fewshot.meta_train(model, colours, 3, 2, config)
    assert history.cache == "head" and len(history.epochs) == 1
    assert 0 <= history.epochs[0].train_acc <= 1
    assert all(torch.equal(a, b) for a, b in zip(body, model.body.parameters(), strict=True))
    assert not torch.equal(head, model.fc.weight)


def test_maml_meta_training_moves_the_body_through_the_inner_steps(colours):
    model = tiny()
    body = model.body[0].weight.detach().clone()
    config = fewshot.MetaConfig(episodes=4, episodes_per_batch=2, n_query=2, adapt_groups=None, image_size=32,
                                inner_steps=2)
    history = fewshot.meta_train(model, colours, 3, 1, config)
    assert history.cache == "" and history.stopped is None
    assert not torch.equal(body, model.body[0].weight)


def test_maml_on_the_top_groups_runs_past_a_cached_frozen_prefix(colours):
    model = tiny()
    body, block = model.body[0].weight.detach().clone(), model.block[0].weight.detach().clone()
    config = fewshot.MetaConfig(episodes=4, episodes_per_batch=2, n_query=2, adapt_groups=2, image_size=32)
    history = fewshot.meta_train(model, colours, 3, 1, config)
    assert history.cache == "prefix"
    assert torch.equal(body, model.body[0].weight) and not torch.equal(block, model.block[0].weight)


def test_meta_training_refuses_a_head_of_the_wrong_width(colours):
    with pytest.raises(ConfigError, match="reset the classifier"):
        fewshot.meta_train(tiny(ways=4), colours, 3, 1, fewshot.MetaConfig(image_size=32))


def test_every_method_scores_novel_episodes_of_a_tiny_model(colours):
    split = fewshot.ClassSplit(base=("colour 0", "colour 1", "colour 2"), novel=("colour 3", "colour 4", "colour 5"))
    for method in fewshot.METHODS:
        meta = fewshot.meta_config(method, episodes=2, episodes_per_batch=2, n_query=2, image_size=32,
                                   test_steps=2) if method in fewshot.META_METHODS else None
        result = fewshot.evaluate(tiny(), colours, method, 3, 1, n_query=2, episodes=5, split=split, meta=meta,
                                  image_size=32)
        assert len(result.per_episode) == 5 and 0 <= result.mean <= 1 and result.ci95 >= 0
        if meta is not None:
            assert len(result.curve) == 3
    with pytest.raises(ConfigError, match="Unknown few-shot method"):
        fewshot.evaluate(tiny(), colours, "magic", 3, 1)


# --- the methods on the demo, with the pretrained default backbone ------------------------------


@pytest.mark.slow
def test_on_the_demo_prototypes_reach_ninety_percent_and_five_shots_beat_one(lite0):
    ds = demo_fewshot(n_classes=10, per_class=12)
    split = fewshot.split_classes(ds.classes, seed=0)
    few = dict(maml=10, fomaml=10, anil=20)  # the meta-learned methods adapt per episode: fewer episodes
    base = ds.subset([i for i, y in enumerate(ds.labels) if ds.classes[y] in split.base])
    results = {}
    for method in fewshot.METHODS:
        meta, trained = None, None
        if method in fewshot.META_METHODS:  # meta-trained once, then scored with 1 and 5 shots
            meta = fewshot.meta_config(method, episodes=8)
            trained = fewshot.few_shot_model(lite0, 5, meta.image_size)
            fewshot.meta_train(trained, base, 5, 5, meta)
        for k in (1, 5):
            results[method, k] = fewshot.evaluate(lite0, ds, method, 5, k, n_query=5, episodes=few.get(method, 60),
                                                  split=split, meta=meta, meta_model=trained)
    assert results["prototypes", 5].mean >= 0.9
    for method in fewshot.METHODS:
        assert results[method, 5].mean > results[method, 1].mean, method


# --- one episode's predictions --------------------------------------------------------------------


class MeanColour(nn.Module):
    """Pooled features = the image's mean colour (a 1x1 convolution set to the identity)."""

    def __init__(self, ways=3):
        super().__init__()
        self.body = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.body.bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, ways)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


def mean_colour(ways=3):
    torch.manual_seed(0)
    groups = [LayerGroup("body", ["body"]), LayerGroup("head", ["fc"])]
    return Classifier(MeanColour(ways), backbone_name="mean colour", layer_groups=groups, head_module="fc",
                      classes=[f"way {i}" for i in range(ways)], mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32,
                      pretrained=True).eval()


def test_prototypes_name_every_query_of_a_trivially_separable_episode_right(colours):
    # flat colours far apart, and features that are the mean colour: nearest class mean cannot miss
    episode = fewshot.sample_episodes(colours.labels, range(6), 4, 2, 3, 1, seed=3)[0]
    pred = fewshot.predict_episode(mean_colour(), colours, episode, "prototypes", image_size=32)
    assert pred.shape == (12,)
    assert pred.tolist() == episode.query_y.tolist()


def test_every_method_predicts_one_way_per_query_image(colours):
    base_classes = [0, 1, 2]
    episode = fewshot.sample_episodes(colours.labels, [3, 4, 5], 3, 1, 2, 1, seed=0)[0]
    for method in fewshot.METHODS:
        meta, trained = None, None
        if method in fewshot.META_METHODS:
            meta = fewshot.meta_config(method, episodes=2, episodes_per_batch=2, n_query=2, image_size=32,
                                       test_steps=2)
            trained = tiny()
            fewshot.meta_train(trained, colours.subset([i for i, y in enumerate(colours.labels) if y in base_classes]),
                               3, 1, meta)
        pred = fewshot.predict_episode(tiny(), colours, episode, method, image_size=32, meta=meta, meta_model=trained)
        assert len(pred) == len(episode.query) == 6, method
        assert set(pred.tolist()) <= {0, 1, 2}, method
    with pytest.raises(ConfigError, match="meta-train"):
        fewshot.predict_episode(tiny(), colours, episode, "anil", image_size=32)


def test_meta_training_scores_novel_episodes_after_each_epoch(colours):
    base = colours.subset([i for i, y in enumerate(colours.labels) if y < 3])
    novel = colours.subset([i for i, y in enumerate(colours.labels) if y >= 3])
    config = fewshot.MetaConfig(epochs=2, episodes=4, episodes_per_batch=2, n_query=2, inner="head", adapt_groups=1,
                                image_size=32, inner_lr=0.5, meta_lr=0.05, test_steps=3, val_episodes=4)
    history = fewshot.meta_train(tiny(), base, 3, 2, config, novel_ds=novel)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert all(0 <= e.val_acc <= 1 and e.val_loss > 0 for e in history.epochs)
    assert np.isnan(fewshot.meta_train(tiny(), base, 3, 2, config).epochs[0].val_acc)  # nothing to score


# --- meta-training as a run in a worker process -------------------------------------------------------


def test_a_meta_training_run_finishes_in_a_worker_and_its_record_carries_the_epochs(tmp_path):
    from core.runs import RunStore
    from core.runs.jobs import start_folder_run
    from core.runs.processes import WorkerPool
    from core.runs.tasks import TaskQueue

    ds = demo_fewshot(n_classes=6, per_class=6, size=32)
    split = fewshot.split_classes(ds.classes, seed=0)
    config = fewshot.meta_config("anil", epochs=2, episodes=4, episodes_per_batch=2, n_query=2, image_size=32,
                                 test_steps=2, val_episodes=3)
    store = RunStore(tmp_path / "data")
    record, inputs = meta_run(ds, split, "anil", 3, 1, config, owner="a" * 16, eval_episodes=5)
    pool = WorkerPool(1, threads=1)
    try:
        job = start_folder_run(store, record, inputs, queue=TaskQueue(1, pool=pool))
        assert job.join(300), "the meta-training run did not finish in time"
        snap = job.snapshot()
    finally:
        pool.close()
    after = store.get(record.id)
    assert after.status == "finished", after.message
    assert [e["epoch"] for e in after.epochs] == [1, 2] and [e.epoch for e in snap.epochs] == [1, 2]
    assert all(0 <= e["train_acc"] <= 1 and 0 <= e["val_acc"] <= 1 for e in after.epochs)
    assert after.info["cache"] == "head"  # ANIL: the body frozen, its features computed once
    assert set(after.info["novel"]) == {"1"} and len(after.info["novel"]["1"]["curve"]) == 3  # 5 shots: too few images
    model, meta, cfg = load_meta_run(store, record.id)
    assert model.classes == ["way 1", "way 2", "way 3"] and meta == config and cfg["novel_classes"] == list(split.novel)
