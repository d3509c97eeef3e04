"""What training promises on a CUDA GPU: mixed precision, untouched frozen layers, the CPU's
predictions, and no memory left behind. Skipped where torch sees no CUDA GPU.

Run on a GPU machine with ``bash scripts/gpu-check.sh`` (or ``pytest -m gpu tests/train/test_gpu.py``).
"""

import gc

import pytest
import torch

from core import models
from core.data import demo_dataset, split
from core.data.encoded import encode_images
from core.train.base import TrainConfig
from core.train.fitting import fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SIZE = 64
BODY = ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"]


@pytest.fixture(scope="module")
def shapes():
    """The demo shapes, 12 per class: a tiny train/val split at the test's input size."""
    return split(demo_dataset("source", per_class=12, seed=0, size=SIZE), 0.25, seed=0)


def snapshot(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def test_fit_on_cuda_trains_in_mixed_precision_and_reports_finite_metrics(lite0, shapes):
    model = models.classifier(lite0, 4, image_size=SIZE)
    seen = []
    # the head's output dtype shows what autocast ran the network in
    handle = model.head.register_forward_hook(lambda _m, _a, out: seen.append((out.dtype, out.device.type)))
    try:
        history = fit(model, *shapes, TrainConfig(epochs=2, batch_size=8, lr=1e-3, augment=False,
                                                  device="cuda", image_size=SIZE))
    finally:
        handle.remove()
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert (expected, "cuda") in seen
    assert len(history.epochs) == 2 and history.stopped is None
    for e in history.epochs:
        for value in (e.train_loss, e.train_acc, e.val_loss, e.val_acc):
            assert torch.isfinite(torch.tensor(value)), e
    assert all(p.is_cuda for p in model.parameters())


@pytest.mark.parametrize("cache_features", [False, True], ids=["plain", "prefix-cache"])
def test_frozen_groups_stay_exactly_as_they_were_on_the_gpu(lite0, shapes, cache_features):
    model = models.classifier(lite0, 4, image_size=SIZE)
    frozen = BODY[:7]  # stem .. stage6; stage7, top and head train
    before = snapshot(model)
    fit(model, *shapes, TrainConfig(epochs=1, batch_size=8, lr=1e-2, freeze=frozen, augment=False,
                                    device="cuda", image_size=SIZE, cache_features=cache_features))
    after = snapshot(model)
    frozen_modules = [m for g in model.layer_groups if g.name in frozen for m in g.modules]
    checked = 0
    for key in before:
        if any(key.startswith(m + ".") for m in frozen_modules):
            assert torch.equal(before[key], after[key]), key  # weights and BatchNorm statistics alike
            checked += 1
    assert checked > 100
    # the run did train: the unfrozen groups moved
    assert not torch.equal(before["_conv_head.weight"], after["_conv_head.weight"])
    assert not torch.equal(before["_blocks.15._bn2.running_mean"], after["_blocks.15._bn2.running_mean"])


def test_a_model_on_cuda_predicts_the_same_classes_as_on_the_cpu(lite0):
    images = encode_images(demo_dataset("source", per_class=4, seed=3, size=128), 128)
    mean = torch.tensor(lite0.mean).view(1, 3, 1, 1)
    std = torch.tensor(lite0.std).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    cpu_model = models.load().model  # pretrained: ImageNet logits, so the argmax means something
    with torch.inference_mode():
        on_cpu = cpu_model(x)
    gpu_model = models.load().model.cuda()
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # full fp32, as on the CPU
    try:
        with torch.inference_mode():
            on_gpu = gpu_model(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    assert torch.allclose(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)
    top2 = on_cpu.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # a near tie may go either way in another summation order
    assert clear.sum() >= len(x) // 2
    assert torch.equal(on_gpu.argmax(1)[clear], on_cpu.argmax(1)[clear])


def test_gpu_memory_returns_to_where_it_was_once_the_model_is_deleted(lite0, shapes):
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, augment=False, device="cuda", image_size=SIZE)

    def one_run() -> None:
        model = models.classifier(lite0, 4, image_size=SIZE)
        fit(model, *shapes, config)
        del model
        gc.collect()

    one_run()  # first use: the CUDA context, cuBLAS/cuDNN workspaces, which stay by design
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    one_run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    assert peak - start > 20 * 2**20  # the run did hold the model, its gradients and AdamW's state
    assert torch.cuda.memory_allocated() - start < 4 * 2**20
