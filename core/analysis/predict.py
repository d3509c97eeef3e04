"""What a trained model says about images: class probabilities for PIL images (or a dataset), for
one head or for every task's head."""

from __future__ import annotations

import torch
from torchvision.transforms import v2 as T

from core.data.encoded import normalise
from core.models.heads import Classifier

__all__ = ["predict_proba", "predict_tasks"]


def predict_proba(model: Classifier, images, device: str | torch.device = "cpu", batch_size: int = 64) -> torch.Tensor:
    """Class probabilities for a list of PIL images (or a dataset), Tensor[N, classes]."""
    device = torch.device(device)
    size = model.image_size
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    batch = torch.stack([resize(img) for img in images])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            x = normalise(batch[start:start + batch_size].to(device), mean, std)
            out.append(model(x).float().softmax(1).cpu())
    return torch.cat(out)


@torch.inference_mode()
def predict_tasks(model, images, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Every task's class probabilities for a list of PIL images (or a dataset): {task: Tensor[N, C]}."""
    device = torch.device(device)
    images = [img[0] if isinstance(img, tuple) else img for img in images]
    resize = T.Compose([T.ToImage(), T.Resize(model.image_size, antialias=True), T.CenterCrop(model.image_size)])
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {t: [] for t in model.tasks}
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([resize(img.convert("RGB")) for img in images[start:start + batch_size]])
            for t, logits in model(normalise(batch.to(device), mean, std)).items():
                out[t].append(logits.float().softmax(1).cpu())
    finally:
        model.train(was_training)
    return {t: torch.cat(v) if v else torch.empty(0, len(model.tasks[t])) for t, v in out.items()}

