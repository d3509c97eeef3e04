"""A trained classifier as files other programs can load: safetensors + JSON, TorchScript, ONNX.

Every export works on a CPU copy of the model in eval mode, so the caller's model is never
touched. Each file can be reloaded and compared with the source model (``check_export``). The
JSON sidecar carries what the weights alone do not: the class names and the preprocessing
(resize the short side to ``image_size``, centre crop, scale to [0, 1], subtract ``mean``,
divide by ``std``).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2 as T

from core.data.encoded import normalise
from core.errors import CheckpointError, ConfigError
from core.models import backbones
from core.models.heads import Classifier, classifier
from core.models.multitask import multitask_classifier

__all__ = [
    "KINDS",
    "ExportCheck",
    "Bundle",
    "export_safetensors",
    "export_torchscript",
    "export_onnx",
    "export_file",
    "load_safetensors",
    "check_export",
    "build_bundle",
    "export_bundle",
    "sidecar",
    "readme",
    "onnx_available",
    "onnx_export_available",
]

KINDS = ("safetensors", "torchscript", "onnx")
SUFFIX = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
FORMAT = "transfer-lab-classifier/1"
# The legacy (TorchScript-based) ONNX exporter: fast, needs no onnxscript, and every runtime of the
# last years reads opset 17. torch.export's exporter (dynamo) is the fallback; it needs opset >= 18.
ONNX_OPSET = 17
TORCHSCRIPT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportCheck:
    """How a reloaded export compares with the model it came from, on one batch."""

    max_abs_diff: float  # largest |logit difference|; NaN when the check could not run
    same_predictions: bool  # the same top class for every image (False when the check did not run)
    ran: bool = True
    message: str = ""
    images: int = 0


@dataclass(frozen=True)
class Bundle:
    """A downloadable ZIP: the exported file, its JSON sidecar and a short README."""

    data: bytes
    filename: str
    kind: str
    check: ExportCheck | None = None


def _head_kind(model: Classifier) -> str | dict[str, str]:
    if _tasks(model):
        return dict(model.task_heads.kinds)
    return "linear" if isinstance(model.head, nn.Linear) else "mlp"


def _tasks(model) -> dict[str, list[str]] | None:
    """A multi-task model's tasks (task -> classes, in output order), None for a single head."""
    tasks = getattr(model, "tasks", None)
    return {t: list(c) for t, c in tasks.items()} if tasks else None


def _output_names(model) -> list[str]:
    """The exported graph's outputs: one per task, named after it, or ``logits``."""
    return list(_tasks(model) or ["logits"])


def sidecar(model: Classifier) -> dict:
    """What a program needs besides the weights: classes (per task for a multi-task model) and
    preprocessing."""
    tasks = _tasks(model)
    labels = ({"tasks": tasks, "outputs": list(tasks)} if tasks else
              {"classes": list(model.classes), "num_classes": len(model.classes)})
    return {
        "format": FORMAT,
        "backbone": model.backbone_name,
        "head": _head_kind(model),
        "head_module": model.head_module,
        **labels,
        "preprocessing": {
            "image_size": int(model.image_size),
            "resize": "short side to image_size, then centre crop image_size x image_size",
            "scale": "RGB pixels divided by 255",
            "mean": [float(v) for v in model.mean],
            "std": [float(v) for v in model.std],
            "layout": "NCHW float32",
        },
        "output": ("one output per task, named after it (see outputs): that task's logits, in its classes' "
                   "order (apply softmax for probabilities)" if tasks else
                   "logits (apply softmax for probabilities)"),
    }


def _cpu_copy(model: Classifier) -> Classifier:
    clone = copy.deepcopy(model).to("cpu").eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _example(model: Classifier, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, int(model.image_size), int(model.image_size))


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _write_sidecar(model: Classifier, path: Path) -> Path:
    target = _sidecar_path(path)
    target.write_text(json.dumps(sidecar(model), indent=1))
    return target


def export_safetensors(model: Classifier, path) -> Path:
    """The state_dict as safetensors (with the sidecar in its metadata) plus ``<name>.json`` beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar(model).items()}
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    _write_sidecar(model, path)
    return path


def export_torchscript(model: Classifier, path) -> Path:
    """A traced TorchScript module (``torch.jit.load`` runs it without this code), sidecar embedded too."""
    path = Path(path)
    clone = _cpu_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated yet still the portable format
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # check_trace re-runs the model to compare; check_export does that on real images instead
        # a multi-task model returns {task: logits}: strict=False lets the trace keep that dict
        traced = torch.jit.trace(clone, _example(clone), check_trace=False, strict=not _tasks(clone))
        torch.jit.save(traced, str(path), _extra_files={"transfer_lab.json": json.dumps(sidecar(model))})
    _write_sidecar(model, path)
    return path


def onnx_available() -> bool:
    """True when the ONNX runtime needed to check an ONNX export is installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_export_available() -> bool:
    """True when the onnx package that torch's ONNX exporter needs is installed."""
    return importlib.util.find_spec("onnx") is not None


def export_onnx(model: Classifier, path) -> Path:
    """An ONNX graph with input ``image`` [batch, 3, S, S] and output ``logits`` [batch, classes]
    (a multi-task model: one output per task, named after the task); the batch size is free."""
    if not onnx_export_available():
        raise ConfigError("Exporting to ONNX needs the onnx package, which is not installed on this server "
                          "(pip install onnx onnxruntime). The TorchScript and safetensors exports work without it.")
    path = Path(path)
    clone = _cpu_copy(model)
    example = (_example(clone),)
    outputs = _output_names(clone)
    if "image" in outputs:
        raise ConfigError("A task called 'image' would share its name with the ONNX input; rename that "
                          "column of labels.csv and train again, or use the TorchScript or safetensors export.")
    names = dict(input_names=["image"], output_names=outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # constant-folding notes
        try:
            torch.onnx.export(clone, example, str(path), opset_version=ONNX_OPSET, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]}, **names)
        except Exception as legacy_error:  # noqa: BLE001 - a torch without the legacy exporter
            try:
                torch.onnx.export(clone, example, str(path), dynamo=True, verbose=False,
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **names)
            except Exception as exc:
                raise ConfigError(
                    f"This model could not be exported to ONNX ({type(legacy_error).__name__}: {legacy_error}; "
                    f"then {type(exc).__name__}: {exc}). Use the TorchScript or safetensors export instead."
                ) from exc
    _write_sidecar(model, path)
    return path


_EXPORTERS = {"safetensors": export_safetensors, "torchscript": export_torchscript, "onnx": export_onnx}


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"Unknown export format {kind!r}: use one of {', '.join(KINDS)}.")
    return kind


def export_file(model: Classifier, kind: str, folder) -> Path:
    """Export to ``folder/model<suffix>`` (and its sidecar); returns the model file's path."""
    kind = _kind(kind)
    return _EXPORTERS[kind](model, Path(folder) / f"model{SUFFIX[kind]}")


def load_safetensors(path) -> Classifier:
    """Rebuild a Classifier from ``export_safetensors``'s file and sidecar (no pretrained weights needed)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    side = _sidecar_path(path)
    try:
        if side.is_file():
            info = json.loads(side.read_text())
        else:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            info = {k: (json.loads(v) if k in ("classes", "preprocessing", "num_classes", "tasks", "outputs")
                        or v.startswith("{") else v) for k, v in meta.items()}
        pre = info["preprocessing"]
        base = backbones.load(info["backbone"], pretrained=False)
        if "tasks" in info:  # one head per task
            model = multitask_classifier(base, info["tasks"], info.get("head", "linear"),
                                         image_size=int(pre["image_size"]))
        else:
            classes = list(info["classes"])
            model = classifier(base, len(classes), head=info.get("head", "linear"), classes=classes,
                               image_size=int(pre["image_size"]))
        model.load_state_dict(load_file(str(path), device="cpu"))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a Transfer Lab export ({type(exc).__name__}: {exc}).") from exc
    model.mean, model.std = tuple(pre["mean"]), tuple(pre["std"])
    return model.eval()


def _batch(model: Classifier, images) -> torch.Tensor:
    """A float batch for the model: a ready tensor as is, or PIL images preprocessed as in training."""
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu()
    size = int(model.image_size)
    resize = T.Compose([T.ToImage(), T.Resize(size, antialias=True), T.CenterCrop(size)])
    pil = [images[i][0] if isinstance(images[i], tuple) else images[i] for i in range(len(images))]
    if not pil:
        raise ConfigError("Checking an export needs at least one image.")
    batch = torch.stack([resize(img) for img in pil])
    return normalise(batch, torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1))


def _outputs(y) -> dict[str, torch.Tensor]:
    """A model's output as {name: logits}: a multi-task model's dict as it is, one tensor as ``logits``."""
    if isinstance(y, dict):
        return {str(k): v.float() for k, v in y.items()}
    return {"logits": y.float()}


def _reloaded_logits(path: Path, kind: str, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return _outputs(module(x))
    if kind == "onnx":
        if not onnx_available():
            return None
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        return {n: torch.from_numpy(v).float() for n, v in zip(names, session.run(None, {name: x.numpy()}), strict=True)}
    reloaded = load_safetensors(path)
    with torch.inference_mode():
        return _outputs(reloaded(x))


def check_export(model: Classifier, path, kind: str, images) -> ExportCheck:
    """Reload ``path`` the way a user would and compare its logits with ``model``'s on ``images``.

    ``images``: PIL images, a dataset, or a preprocessed Tensor[N, 3, S, S].
    """
    kind = _kind(kind)
    path = Path(path)
    clone = _cpu_copy(model)
    x = _batch(clone, images)
    with torch.inference_mode():
        expected = _outputs(clone(x))
    got = _reloaded_logits(path, kind, x)
    if got is None:
        return ExportCheck(float("nan"), False, ran=False, images=len(x),
                           message="The ONNX file was written, but onnxruntime is not installed here, so "
                                   "it could not be reloaded and checked (pip install onnxruntime).")
    if list(got) != list(expected):
        return ExportCheck(float("inf"), False, images=len(x),
                           message=f"The reloaded model's outputs are {', '.join(got)}, not {', '.join(expected)}.")
    for name in expected:
        if got[name].shape != expected[name].shape:
            return ExportCheck(float("inf"), False, images=len(x),
                               message=f"The reloaded model gives logits of shape {tuple(got[name].shape)}"
                                       f"{'' if name == 'logits' else f' for {name}'}, "
                                       f"not {tuple(expected[name].shape)}.")
    diff = max(float((got[n] - expected[n]).abs().max()) for n in expected)
    same = all(torch.equal(got[n].argmax(1), expected[n].argmax(1)) for n in expected)
    if not math.isfinite(diff):
        same = False
    return ExportCheck(diff, same, images=len(x))


_README = """Transfer Lab export ({kind})

{files}

Preprocessing: resize the short side to {size} px, centre crop {size}x{size}, RGB / 255,
subtract mean {mean}, divide by std {std}; NCHW float32. The output is logits.

{howto}
"""

_HOWTO = {
    "safetensors": "Load: rebuild the architecture and `model.load_state_dict(safetensors.torch.load_file("
                   "'model.safetensors'))`, or with Transfer Lab's code: `core.export.load_safetensors(path)`.",
    # TorchScript stays because it is the one format that runs with PyTorch alone (Python or C++ LibTorch),
    # no model code and no onnx package; PyTorch has deprecated it, so the README says what to move to.
    "torchscript": "Load: `model = torch.jit.load('model.pt'); logits = model(batch)` (no Transfer Lab code "
                   "needed; LibTorch in C++ loads it too).\n"
                   "PyTorch has deprecated TorchScript: recent versions warn when torch.jit.load runs, yet the "
                   "file still loads. For new projects use the ONNX export with onnxruntime, or the "
                   "safetensors export with your own copy of the architecture.",
    "onnx": "Load: `onnxruntime.InferenceSession('model.onnx').run(None, {'image': batch})[0]`; "
            "the batch size is free.",
}


def readme(model: Classifier, kind: str) -> str:
    """The bundle's README.txt: its files in two aligned columns, the preprocessing, how to load."""
    tasks = _tasks(model)
    if tasks:
        about = ", ".join(f"{t}: {len(c)} classes" for t, c in tasks.items())
        files = [(f"model{SUFFIX[kind]}", f"the multi-task model ({model.backbone_name}; {about})"),
                 ("model.json", "each task's class names (output order), the outputs' order, preprocessing")]
    else:
        files = [(f"model{SUFFIX[kind]}", f"the classifier ({model.backbone_name}, {len(model.classes)} classes)"),
                 ("model.json", "class names (output order) and preprocessing")]
    width = max(len(name) for name, _ in files) + 2
    howto = _HOWTO[kind]
    if tasks:
        howto += (f"\nOne output per task, named after it, in this order: {', '.join(tasks)} (ONNX returns a list "
                  "in that order; TorchScript and the rebuilt model a dict task -> logits).")
    return _README.format(kind=kind, files="\n".join(f"{name:<{width}}{about}" for name, about in files),
                          size=model.image_size, mean=list(model.mean), std=list(model.std), howto=howto)


def build_bundle(model: Classifier, kind: str, images=None) -> Bundle:
    """Export once, check the file on ``images`` when given, and zip it with its sidecar and a README."""
    kind = _kind(kind)
    with tempfile.TemporaryDirectory(prefix="transfer-lab-export-") as folder:
        path = export_file(model, kind, folder)
        check = check_export(model, path, kind, images) if images is not None else None
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(path, path.name)
            zf.write(_sidecar_path(path), "model.json")
            zf.writestr("README.txt", readme(model, kind))
    filename = f"transfer-lab-{model.backbone_name}-{kind}.zip"
    return Bundle(buffer.getvalue(), filename, kind, check)


def export_bundle(model: Classifier, kind: str) -> bytes:
    """A ZIP (exported file + ``model.json`` + README) ready for a download button."""
    return build_bundle(model, kind).data
