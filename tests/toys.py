"""Toy datasets and a tiny model that tests on several floors share (none of them is a test).

``Shapes``: discs vs squares drawn on random backgrounds, enough for a pretrained backbone to learn something.
``Toy``: dark vs light noisy squares. ``tiny()``: a two-block convolutional classifier with BatchNorm and
dropout before the head, as EfficientNet-Lite0 has, that trains in well under a second.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from core.models.backbones import LayerGroup
from core.models.heads import Classifier


class Shapes:
    """A tiny in-memory dataset: discs vs squares, enough for a model to learn something."""

    def __init__(self, n: int, seed: int, size: int = 48):
        rng = np.random.default_rng(seed)
        self.classes = ["disc", "square"]
        self.items = []
        for i in range(n):
            label = i % 2
            img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(180, 255, 3)))
            draw = ImageDraw.Draw(img)
            x, y = (int(v) for v in rng.integers(2, size // 2, 2))
            s = int(rng.integers(size // 4, size // 2))
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            (draw.ellipse if label == 0 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
            self.items.append((img, label))
        self.labels = [label for _, label in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class TinyNet(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Sequential(nn.BatchNorm2d(8)), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.block(self.stem(x))).flatten(1)))


def tiny(seed: int = 0, classes=("dark", "light")) -> Classifier:
    torch.manual_seed(seed)
    groups = [LayerGroup("stem", ["stem"]), LayerGroup("block", ["block"]), LayerGroup("head", ["fc"])]
    return Classifier(TinyNet(len(classes)), backbone_name="tiny", layer_groups=groups, head_module="fc",
                      classes=list(classes), mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32, pretrained=False,
                      pre_head=("drop",)).eval()


class Toy:
    """Dark vs light noisy squares."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.classes = ["dark", "light"]
        self.labels = [i % 2 for i in range(n)]
        self.images = [Image.fromarray(np.clip(rng.normal(70 + 110 * y, 40, (32, 32, 3)), 0, 255).astype(np.uint8))
                       for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


# --- DICOM files made here, never downloaded ---------------------------------------------------------

DICOM_PATIENT = "Zqxwv^Uniquename-7f3a"  # a patient name found nowhere but inside the DICOM files made here


def dicom_bytes(pixels, *, photometric: str = "MONOCHROME2", bits_stored: int = 12, modality: str = "CR",
                patient: str = DICOM_PATIENT, window=None, rescale=None, syntax=None, preamble: bool = True,
                **tags) -> bytes:
    """A DICOM Part 10 file holding ``pixels`` (uint8/uint16/int16 array: (rows, cols), (frames, rows,
    cols) or (..., 3) for colour; None for no pixel data) with identifying tags set, as scanners write."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = tags.pop("sop_class", SecondaryCaptureImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient, "ID-" + patient, "19500101"
    ds.AccessionNumber, ds.InstitutionName, ds.Modality = "ACC" + patient[:8], "Hospital of " + patient, modality
    if pixels is not None:
        arr = np.asarray(pixels)
        colour = arr.shape[-1] == 3 and photometric in ("RGB", "YBR_FULL")
        frames = arr.shape[0] if arr.ndim == (4 if colour else 3) else 1
        ds.Rows, ds.Columns = arr.shape[-3:-1] if colour else arr.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = min(bits_stored, ds.BitsAllocated)
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(arr.dtype.kind == "i")
        ds.PixelData = arr.tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return data if preamble else data[132:]


def twelve_bit_scan(label: int, seed: int, size: int = 48) -> np.ndarray:
    """A synthetic 12-bit scan: noise on a dark field and a bright blob, round (0) or square (1)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(900, 120, (size, size))
    y, x = np.mgrid[:size, :size]
    cy, cx = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
    r = int(rng.integers(size // 6, size // 4))
    blob = (y - cy) ** 2 + (x - cx) ** 2 <= r * r if label == 0 else (abs(y - cy) <= r) & (abs(x - cx) <= r)
    img[blob] += 2400
    return np.clip(img, 0, 4095).astype(np.uint16)


def dicom_zip(per_class: int = 6, patient: str = DICOM_PATIENT, classes=("round", "square"), seed: int = 0,
              names=lambda c, i: f"{c}/IM{i:04d}.dcm") -> bytes:
    """A ZIP of class folders holding synthetic 12-bit DICOMs whose patient name is ``patient``."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for label, c in enumerate(classes):
            for i in range(per_class):
                zf.writestr(names(c, i), dicom_bytes(twelve_bit_scan(label, seed + 1000 * label + i),
                                                    patient=patient))
    return buf.getvalue()
