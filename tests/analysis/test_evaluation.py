import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core import models
from core.analysis.evaluation import Evaluation, cell_examples, evaluate_dataset, worst_mistakes
from core.analysis.predict import predict_proba
from core.errors import ConfigError, DataError
from tests.toys import Shapes


class ColourModel(nn.Module):
    """Three classes, red, green and blue: the logits are the mean channel intensities × 10."""

    classes = ["red", "green", "blue"]
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    image_size = 8

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        return x.mean((2, 3)) * self.scale


class Solid:
    """Solid-colour images with chosen labels (some deliberately wrong)."""

    classes = ["red", "green", "blue"]

    def __init__(self, items):
        self.items = [(Image.new("RGB", (8, 8), colour), label) for colour, label in items]
        self.labels = [label for _, label in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SOLID = Solid([
    (RED, 0), (RED, 0), ((200, 150, 0), 0),  # the third looks more red than green: right, but unsure
    (GREEN, 1), ((255, 40, 0), 1),  # a red-looking image labelled green: a confident mistake
    ((120, 100, 0), 1),  # mostly red again: a mistake, less sure
    (BLUE, 2), ((0, 150, 200), 2),
])


@pytest.fixture(scope="module")
def solid_eval():
    return evaluate_dataset(ColourModel(), SOLID)


def test_the_confusion_matrix_has_true_classes_in_rows_and_predictions_in_columns(solid_eval):
    assert solid_eval.preds.tolist() == [0, 0, 0, 1, 0, 0, 2, 2]
    expected = np.array([[3, 0, 0],
                         [2, 1, 0],
                         [0, 0, 2]])
    assert np.array_equal(solid_eval.confusion(), expected)
    assert solid_eval.accuracy == pytest.approx(6 / 8)


def test_the_normalised_confusion_matrix_gives_each_true_class_its_recall():
    ev = Evaluation(probs=np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]]),
                    labels=np.array([0, 1, 1]), classes=["a", "b", "c"])
    normalised = ev.confusion(normalize=True)
    assert normalised[0].tolist() == [1.0, 0.0, 0.0]
    assert normalised[1].tolist() == [0.5, 0.5, 0.0]
    assert normalised[2].tolist() == [0.0, 0.0, 0.0]  # no image of class c: zeros, not NaN


def test_per_class_scores_match_a_count_by_hand(solid_eval):
    rows = {row["class"]: row for row in solid_eval.per_class()}
    # red: 5 predicted red, 3 of them red; all 3 red images found
    assert rows["red"]["precision"] == pytest.approx(3 / 5)
    assert rows["red"]["recall"] == pytest.approx(1.0)
    assert rows["red"]["f1"] == pytest.approx(2 * 0.6 * 1 / 1.6)
    assert rows["green"] == {"class": "green", "precision": 1.0, "recall": pytest.approx(1 / 3),
                             "f1": pytest.approx(0.5), "support": 3}
    assert rows["blue"]["support"] == 2 and rows["blue"]["f1"] == 1.0


def test_an_unpredicted_class_scores_zero_rather_than_failing():
    ev = Evaluation(probs=np.array([[0.9, 0.1], [0.8, 0.2]]), labels=np.array([0, 1]), classes=["a", "b"])
    b = ev.per_class()[1]
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == (0.0, 0.0, 0.0, 1)


def test_the_most_confidently_wrong_come_first_with_their_top_three(solid_eval):
    mistakes = solid_eval.most_confidently_wrong(k=12)
    assert [m.index for m in mistakes] == [4, 5]  # only the two mistakes, the surer one first
    index, true, predicted, confidence, top3 = mistakes[0]
    assert (true, predicted) == ("green", "red")
    assert confidence == pytest.approx(solid_eval.probs[4].max())
    assert [c for c, _ in top3] == ["red", "green", "blue"]
    assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)
    assert mistakes[0].confidence > mistakes[1].confidence
    assert solid_eval.most_confidently_wrong(k=1) == mistakes[:1]


def test_a_cell_holds_exactly_the_images_with_that_true_and_predicted_class(solid_eval):
    n = len(solid_eval.classes)
    for t in range(n):
        for p in range(n):
            cell = cell_examples(solid_eval, t, p)
            assert len(cell) == solid_eval.confusion()[t, p]
            expected = {i for i in range(len(solid_eval.labels))
                        if solid_eval.labels[i] == t and solid_eval.preds[i] == p}
            assert {e.index for e in cell} == expected
            assert all((e.true, e.predicted) == (solid_eval.classes[t], solid_eval.classes[p]) for e in cell)
    # names work as well as indices; the unsure red image (index 2) leads its correct cell
    assert [e.index for e in cell_examples(solid_eval, "green", "red")] == [4, 5]
    assert [e.index for e in cell_examples(solid_eval, "red", "red")] == [2, 0, 1]
    with pytest.raises(ConfigError, match="choose one of red, green, blue"):
        cell_examples(solid_eval, "purple", "red")


def test_worst_mistakes_are_only_the_wrong_ones_sorted_by_loss_not_by_confidence():
    ev = Evaluation(probs=np.array([
        [0.05, 0.90, 0.05],  # wrong and very sure of class 1, yet gave class 0 5%: loss 3.0
        [0.01, 0.60, 0.39],  # wrong, less sure, but gave the true class only 1%: loss 4.6
        [0.10, 0.20, 0.70],  # right, unsure: a high loss, but no mistake
        [0.30, 0.00, 0.70],  # wrong and the true class... is class 1 at probability 0: the worst
    ]), labels=np.array([0, 0, 2, 1]), classes=["a", "b", "c"])
    worst = worst_mistakes(ev)
    assert [e.index for e in worst] == [3, 1, 0]
    assert all(e.true != e.predicted for e in worst)
    assert [e.loss for e in worst] == sorted((e.loss for e in worst), reverse=True)
    assert worst[1].loss == pytest.approx(-np.log(0.01)) and worst[1].confidence == pytest.approx(0.6)
    assert np.isfinite(worst[0].loss)  # a zero probability is very wrong, not infinitely
    assert (worst[1].true, worst[1].predicted) == ("a", "b")
    assert [m.index for m in ev.most_confidently_wrong()] == [0, 3, 1]  # surest first is another order
    assert worst_mistakes(ev, k=2) == worst[:2]


def test_a_real_classifier_is_evaluated_with_predict_proba_and_keeps_its_modes(lite0):
    model = models.classifier(lite0, 2, image_size=32, classes=["disc", "square"])
    model.train()
    model.get_submodule("_bn0").eval()  # a frozen BatchNorm, as fit leaves it while training
    ds = Shapes(6, 3)
    ev = evaluate_dataset(model, ds)
    assert ev.probs.shape == (6, 2) and ev.classes == ["disc", "square"]
    assert np.allclose(ev.probs.sum(1), 1)
    assert ev.labels.tolist() == ds.labels
    assert model.training and not model.get_submodule("_bn0").training
    assert model.get_submodule("_blocks.0").training
    expected = predict_proba(model, [img for img, _ in ds.items])
    assert np.allclose(ev.probs, expected.numpy(), atol=1e-6)


def test_a_dataset_with_other_classes_is_refused_with_a_way_out():
    other = Solid([(RED, 0), (GREEN, 1)])
    other.classes = ["cat", "dog", "bird"]
    with pytest.raises(DataError, match="trained on the classes red, green, blue"):
        evaluate_dataset(ColourModel(), other)
    with pytest.raises(DataError, match="validation split is empty"):
        evaluate_dataset(ColourModel(), Solid([]))
