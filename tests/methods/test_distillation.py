import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import models
from core.data.encoded import encode_images
from core.errors import ConfigError
from core.methods.distillation import distill, distillation_loss, paired_views, soften
from core.train.base import TrainConfig, augment_batch, make_augmenter
from tests.toys import Shapes


def reference_loss(student, teacher, targets, T, alpha):
    """The Hinton et al. loss written out in float64 numpy, sample by sample."""
    s, t = student.double().numpy(), teacher.double().numpy()

    def log_softmax(z):
        z = z - z.max()
        return z - math.log(np.exp(z).sum())

    ce, kl = 0.0, 0.0
    for i in range(len(s)):
        ce -= log_softmax(s[i])[targets[i]]
        log_p_t, log_p_s = log_softmax(t[i] / T), log_softmax(s[i] / T)
        kl += float((np.exp(log_p_t) * (log_p_t - log_p_s)).sum())
    n = len(s)
    return (1 - alpha) * ce / n + alpha * T * T * kl / n


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 1.0), (0.5, 0.3)])
def test_the_loss_is_hard_cross_entropy_plus_t_squared_times_kl_to_the_teacher(T, alpha):
    g = torch.Generator().manual_seed(int(T * 10 + alpha * 100))
    student, teacher = torch.randn(6, 4, generator=g) * 3, torch.randn(6, 4, generator=g) * 3
    targets = torch.randint(4, (6,), generator=g)
    got = distillation_loss(student, teacher, targets, T, alpha)
    assert got.item() == pytest.approx(reference_loss(student, teacher, targets.tolist(), T, alpha), rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy_whatever_the_teacher_says():
    student, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    for teacher in (torch.randn(5, 3), torch.full((5, 3), float("nan"))):
        assert torch.equal(distillation_loss(student, teacher, targets, 3.0, 0.0), F.cross_entropy(student, targets))


def test_a_student_that_matches_the_teacher_pays_only_the_hard_part():
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    loss = distillation_loss(logits, logits.clone(), targets, 4.0, 0.7)
    assert loss.item() == pytest.approx(0.3 * F.cross_entropy(logits, targets).item(), rel=1e-5)


def test_the_soft_term_pulls_the_student_towards_the_teacher():
    student = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, -2.0]])
    distillation_loss(student, teacher, torch.tensor([1]), 2.0, 1.0).backward()
    # gradient descent raises the teacher's favourite and lowers its least liked class
    assert student.grad[0, 0] < 0 < student.grad[0, 2]


def test_a_higher_temperature_softens_without_reordering():
    logits = torch.tensor([3.0, 1.0, 0.2, -1.0])
    sharp, soft = soften(logits, 1.0), soften(logits, 5.0)
    assert torch.allclose(sharp, torch.softmax(logits, 0))
    assert soft.sum().item() == pytest.approx(1.0)
    assert torch.equal(soft.argsort(), sharp.argsort())
    entropy = lambda p: -(p * p.log()).sum()  # noqa: E731
    assert entropy(soft) > entropy(sharp)
    assert soft.max() < sharp.max()


def test_impossible_settings_are_refused():
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(x, x, y, 0.0, 0.5)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        distillation_loss(x, x, y, 2.0, 1.5)


@pytest.fixture(scope="module")
def data():
    return Shapes(16, 0, size=32), Shapes(6, 1, size=32)


def head_only(model):
    return [g.name for g in model.layer_groups if g.name != "head"]


def make(lite0, seed, classes=("disc", "square")):
    torch.manual_seed(seed)
    return models.classifier(lite0, len(classes), image_size=32, classes=list(classes))


def test_a_short_distillation_trains_the_student_and_leaves_the_teacher_alone(lite0, data):
    teacher, student = make(lite0, 1), make(lite0, 2)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    head_before = student.head.weight.detach().clone()
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, image_size=32, freeze=head_only(student))
    history = distill(student, teacher, *data, config, temperature=3.0, alpha=0.7)
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert all(0 <= e.val_acc <= 1 and math.isfinite(e.train_loss) for e in history.epochs)
    assert history.stopped is None
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert not torch.equal(head_before, student.head.weight)
    assert all(p.requires_grad for p in student.parameters())  # distill puts requires_grad back


def test_with_alpha_one_the_student_learns_to_imitate_the_teacher(lite0, data):
    teacher, student = make(lite0, 3), make(lite0, 4)
    with torch.no_grad():
        teacher.head.weight.normal_(0, 0.3)  # a teacher with opinions of its own
    train, _ = data
    x = torch.stack([student.preprocess(img) for img, _ in train.items])

    def kl_to_teacher():
        with torch.no_grad():
            return F.kl_div(F.log_softmax(student(x), 1), F.softmax(teacher(x), 1), reduction="batchmean").item()

    before = kl_to_teacher()
    config = TrainConfig(epochs=4, batch_size=8, lr=3e-2, image_size=32, freeze=head_only(student), augment=False)
    distill(student, teacher, train, data[1], config, temperature=1.0, alpha=1.0)
    assert kl_to_teacher() < 0.5 * before


def test_teacher_and_student_must_share_their_classes(lite0, data):
    teacher, student = make(lite0, 1), make(lite0, 2, classes=("cat", "dog"))
    with pytest.raises(ConfigError, match="same, in the same order"):
        distill(student, teacher, *data, TrainConfig(epochs=1, image_size=32), 2.0, 0.5)


def teacher_inputs(teacher):
    """Every input the teacher is run on, as a list filled while a distillation runs."""
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("cached", [True, False], ids=["cached-student", "uncached-student"])
def test_the_teacher_sees_the_datasets_images_at_its_own_size_not_the_students_scaled_up(lite0, cached):
    train, val = Shapes(12, 0, size=64), Shapes(4, 1, size=64)
    torch.manual_seed(1)
    teacher = models.classifier(lite0, 2, image_size=64, classes=["disc", "square"])
    student = make(lite0, 2)  # 32 px
    seen = teacher_inputs(teacher)
    config = TrainConfig(epochs=1, batch_size=4, image_size=32, freeze=head_only(student), augment=False,
                         cache_features=cached)
    history = distill(student, teacher, train, val, config, temperature=2.0, alpha=0.5)
    assert history.used_feature_cache is cached
    mean, std = torch.tensor(teacher.mean).view(1, 3, 1, 1), torch.tensor(teacher.std).view(1, 3, 1, 1)
    expected = (encode_images(train, 64).float() / 255 - mean) / std
    inputs = torch.cat(seen)
    assert inputs.shape[1:] == expected.shape[1:]
    # each image the teacher saw is one of the dataset's images at 64 px, exactly
    nearest = torch.cdist(inputs.flatten(1), expected.flatten(1)).min(dim=1).values
    assert float(nearest.max()) < 1e-3


def test_with_augmentation_the_teacher_sees_the_students_crop_of_the_original():
    train = Shapes(6, 0, size=64)
    small, big = encode_images(train, 32), encode_images(train, 64)
    augmenter = make_augmenter(32, flip=True, color_jitter=True)
    student, teacher = paired_views(small, big, augmenter, 123, 64)
    assert torch.equal(student, augment_batch(small, augmenter, 123))  # the views the loop makes
    assert teacher.shape == (6, 3, 64, 64)

    def shrunk(views):
        return F.interpolate(views.float(), size=(32, 32), mode="bilinear", antialias=True)

    same = (shrunk(teacher) - student.float()).abs().mean()
    _, other = paired_views(small, big, augmenter, 7, 64)  # another draw: other crops
    assert same < 0.25 * (shrunk(other) - student.float()).abs().mean()


class InProcess:
    """A worker pool that trains a run folder in this process, so a test can watch the teacher."""

    def run(self, folder, on_start=None):
        from core.runs.worker import train_run_folder

        return train_run_folder(folder), ""


def test_a_distillation_run_folder_teaches_from_the_training_images_at_the_teachers_size(tmp_path, monkeypatch):
    from core.methods.distillation import Distillation
    from core.runs import RunStore
    from core.runs.jobs import create_run
    from core.runs.kinds.distill import start_distillation
    from core.runs.tasks import TaskQueue
    from core.runs.worker import train_run_folder

    store = RunStore(tmp_path / "data")
    train, val = Shapes(8, 0, size=64), Shapes(4, 1, size=64)
    frozen = [g for g in models.group_names("efficientnet_lite0") if g != "head"]
    teacher = create_run(store, train, val, backbone="efficientnet_lite0", pretrained=True,
                         config=TrainConfig(epochs=1, batch_size=8, freeze=frozen, image_size=64))
    assert train_run_folder(store.folder(teacher.id)) == "finished"
    seen = []
    teach = Distillation._teach
    monkeypatch.setattr(Distillation, "_teach", lambda self, trainer, images: (seen.append(images.cpu()),
                                                                                teach(self, trainer, images))[1])
    student = TrainConfig(epochs=1, batch_size=8, freeze=frozen, image_size=32, augment=False)
    job = start_distillation(store, teacher.id, train, val, student, 2.0, 0.5, backbone="efficientnet_lite0",
                             queue=TaskQueue(1, pool=InProcess()))
    assert job.join(120) and store.get(job.run_id).status == "finished", store.get(job.run_id).message
    originals = encode_images(train, 64)
    shown = torch.cat(seen)
    assert shown.shape[1:] == originals.shape[1:]
    assert all(any(torch.equal(image, original) for original in originals) for image in shown)


def test_a_run_folders_images_at_another_size_are_resized_not_an_endless_loop():
    from core.data.encoded import EncodedDataset

    train = Shapes(4, 0, size=64)
    ds = EncodedDataset(encode_images(train, 64), train.labels, train.classes)
    small = encode_images(ds, 32)  # asked the dataset itself before, which asked encode_images again
    assert small.shape == (4, 3, 32, 32) and small.dtype == torch.uint8
    assert (small.float() - encode_images(train, 32).float()).abs().mean() < 4  # the same pictures, smaller
