"""Uploaded weights files: kept by content, never replaced, refused ones leave nothing behind."""

import os
import time

import pytest
import torch

from core import models
from core.errors import CheckpointError
from core.runs import RunRecord, RunStore
from core.runs.uploads import UploadStore


def weights_bytes(tmp_path, fill: float) -> bytes:
    path = tmp_path / f"w{fill}.pt"
    torch.save({"w": torch.full((4,), fill)}, path)
    return path.read_bytes()


def read_w(path):
    return models.read_state_dict(path)["w"]


def test_a_later_upload_under_the_same_name_leaves_the_earlier_file_as_it_was(tmp_path):
    store = UploadStore(tmp_path / "data")
    first = store.add(weights_bytes(tmp_path, 1.0), "weights.pt", check=models.read_state_dict)
    second = store.add(weights_bytes(tmp_path, 2.0), "weights.pt", check=models.read_state_dict)
    assert first.path != second.path
    assert first.path.parent == second.path.parent == tmp_path / "data" / "uploads"
    assert first.path.name == f"{first.sha256}.pt" and len(first.sha256) == 64
    assert torch.equal(read_w(first.path), torch.full((4,), 1.0))
    assert torch.equal(read_w(second.path), torch.full((4,), 2.0))
    again = store.add(weights_bytes(tmp_path, 1.0), "copy.pth")
    assert again.path == first.path and store.files() == sorted([first.path, second.path])


def test_a_refused_upload_keeps_the_earlier_good_file_and_names_the_persons_file(tmp_path):
    store = UploadStore(tmp_path / "data")
    good = store.add(weights_bytes(tmp_path, 1.0), "mine.pt", check=models.read_state_dict)
    with pytest.raises(CheckpointError, match=r"^my model \(v2\)\.pt is not a plain PyTorch state_dict"):
        store.add(b"not a torch file", "my model (v2).pt", check=models.read_state_dict)
    assert torch.equal(read_w(good.path), torch.full((4,), 1.0))
    assert store.files() == [good.path]
    assert sorted(p.name for p in store.root.iterdir()) == [good.path.name]  # no half-checked leftovers
    with pytest.raises(CheckpointError, match=r"^model\.onnx: weights must be"):
        store.add(b"x", "model.onnx")


def test_a_weights_file_that_does_not_fit_is_explained_under_its_own_name(tmp_path):
    store = UploadStore(tmp_path / "data")
    state = models.load(models.DEFAULT_BACKBONE, pretrained=False).model.state_dict()
    state["_fc.bias"] = torch.zeros(3)
    path = tmp_path / "x.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"^finetuned\.pt's classifier head _fc\.bias"):
        store.add(path.read_bytes(), "finetuned.pt",
                  check=lambda p: models.load(models.DEFAULT_BACKBONE, pretrained=False, weights_path=p))
    assert store.files() == []


def test_prune_keeps_files_a_run_started_from_and_recent_uploads(tmp_path):
    store = UploadStore(tmp_path / "data")
    runs = RunStore(tmp_path / "data")
    used = store.add(weights_bytes(tmp_path, 1.0), "a.pt")
    unused = store.add(weights_bytes(tmp_path, 2.0), "b.pt")
    fresh = store.add(weights_bytes(tmp_path, 3.0), "c.pt")
    runs.create(RunRecord(id="0123456789abcdef", status="finished", created=time.time(), backbone="efficientnet_lite0",
                          pretrained=True, classes=["a", "b"], config={"weights_file": str(used.path)}))
    day_ago = time.time() - 2 * 24 * 3600
    for path in (used.path, unused.path):
        os.utime(path, (day_ago, day_ago))
    removed = store.prune(r.config.get("weights_file") for r in runs.list())
    assert removed == [unused.path]
    assert used.path.is_file() and fresh.path.is_file() and not unused.path.exists()


def test_usage_counts_every_stored_byte(tmp_path):
    store = UploadStore(tmp_path / "data")
    assert store.usage_bytes() == 0
    a = store.add(weights_bytes(tmp_path, 1.0), "a.pt")
    b = store.add(weights_bytes(tmp_path, 2.0), "b.pt")
    assert store.usage_bytes() == a.path.stat().st_size + b.path.stat().st_size > 0
