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


ALICE, BOB, CAROL = "a" * 16, "b" * 16, "c" * 16


def blob(tmp_path, k: int, kb: int = 10) -> bytes:
    """A distinct weights file of about ``kb`` KB."""
    path = tmp_path / f"blob{k}.pt"
    torch.save({"w": torch.full((kb * 256,), float(k))}, path)
    return path.read_bytes()


def test_uploads_are_charged_to_their_owner_within_a_quota_the_oldest_unused_making_room(tmp_path):
    store = UploadStore(tmp_path / "data", quota_bytes=25 * 1024)
    first = store.add(blob(tmp_path, 1), "one.pt", owner=ALICE)
    os.utime(first.path, (time.time() - 60, time.time() - 60))
    second = store.add(blob(tmp_path, 2), "two.pt", owner=ALICE)
    third = store.add(blob(tmp_path, 3), "three.pt", owner=ALICE)  # over 25 KB: the oldest unused one goes
    assert not first.path.exists() and second.path.exists() and third.path.exists()
    assert set(store.usage_of(ALICE)) == {second.path, third.path}
    with pytest.raises(CheckpointError) as refused:  # both in use by runs: nothing can make room
        store.add(blob(tmp_path, 4), "four.pt", owner=ALICE, in_use=[second.path, third.path])
    assert "four.pt" in str(refused.value) and "one person may upload" in str(refused.value)
    assert len(store.files()) == 2  # the refused file was never written
    assert store.add(blob(tmp_path, 4), "four.pt", owner=BOB).path.exists()  # another person's quota is their own


def test_the_disk_cap_removes_the_uploaders_unused_files_before_anyone_elses_runs(tmp_path):
    data = tmp_path / "data"
    runs = RunStore(data, cap_mb=2)
    uploads = UploadStore(data)
    old = time.time() - 2 * 3600
    for k in range(4):  # one person's four unused uploads, 0.5 MB each
        path = uploads.add(blob(tmp_path, k, kb=512), f"w{k}.pt", owner=ALICE).path
        os.utime(path, (old + k, old + k))
    carol = RunRecord(id="c" * 15 + "1", status="finished", created=old - 60, backbone="efficientnet_lite0",
                      pretrained=True, classes=["a", "b"], config={}, owner=CAROL, finished=old)
    runs.create(carol)
    (runs.folder(carol.id) / "model.safetensors").write_bytes(b"\0" * (2**20 // 2))
    assert runs.usage_bytes() > 2 * 2**20
    assert runs.enforce_cap() == []  # no run removed: Carol's run is not what fills the disk
    assert runs.get(carol.id) is not None
    assert runs.usage_bytes() <= 2 * 2**20
    assert len(uploads.files()) < 4


def test_weights_whose_head_has_more_classes_than_allowed_are_refused():
    from torch import nn

    from core.models.weights import MAX_HEAD_CLASSES, load_user_state

    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    state = {"0.weight": torch.zeros(8, 4), "0.bias": torch.zeros(8),
             "1.weight": torch.zeros(MAX_HEAD_CLASSES + 1, 8), "1.bias": torch.zeros(MAX_HEAD_CLASSES + 1)}
    with pytest.raises(CheckpointError) as refused:
        load_user_state(model, state, title="a toy", head_module="1", filename="big-head.pt")
    assert "1,001 outputs" in str(refused.value) and "at most 1,000 classes" in str(refused.value)
