"""A run folder keeps its pinned images' frames (TrainConfig.watch): the same as the loop records in process."""

from dataclasses import asdict

import torch

from core.data.encoded import EncodedDataset, encode_images, labels_of
from core.models.heads import starting_model
from core.runs import worker
from core.runs.jobs import create_run
from core.train import TrainConfig, fit
from tests.toys import Shapes

FROZEN = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]


def test_the_run_folder_keeps_the_frames_and_images_the_loop_records_in_process(store):
    config = TrainConfig(epochs=2, batch_size=8, freeze=FROZEN, image_size=32, watch=(0, 2), early_stopping=0)
    train, val = Shapes(8, 0), Shapes(4, 1)
    record = create_run(store, train, val, backbone="efficientnet_lite0", pretrained=True, config=config)
    assert worker.train_run_folder(store.folder(record.id)) == "finished"
    frames, images = store.load_watch(record.id)
    assert [(f["epoch"], f["index"]) for f in frames] == [(1, 0), (1, 2), (2, 0), (2, 2)]
    val_images = encode_images(val, 32)
    assert torch.equal(images, val_images[[0, 2]])
    # the same run in this process
    model = starting_model("efficientnet_lite0", ["disc", "square"], seed=0, image_size=32)
    history = fit(model, EncodedDataset(encode_images(train, 32), labels_of(train).tolist(), train.classes),
                  EncodedDataset(val_images, labels_of(val).tolist(), val.classes), config)
    assert frames == [asdict(f) for f in history.watch]
    assert "cam_movement" in store.get(record.id).info
