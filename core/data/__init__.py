"""Images in, datasets out: safe decoding of uploads and ZIPs, generated and sample sets, splits.

Every image, whatever its source, goes through one decoder (``core.data.images``): an allow-list of
formats, caps read from the header before anything is decoded (``core.data.limits``), every colour
mode turned into RGB, EXIF orientation applied, the longest side at most ``limits.MAX_SIDE``. Images
of more than 8 bits (16-bit PNG/TIFF, float TIFF, DICOM through ``core.data.dicom``) stay at full
depth, and a dataset's ``Window`` (``core.data.window``) makes what the model sees of them.
Datasets hold those small decoded images in memory, so training never reopens a file; archives
are read in memory, never extracted. The modules, from the ground up:

- ``limits``, ``names``: the caps, and names as a person sees them;
- ``window``: the window of full-depth images; ``dicom``: DICOM files, patient data never kept;
- ``images``: decoding one file; ``datasets``, ``multitask``: one label or one per task;
- ``files``, ``entries``, ``archives``, ``labels_csv``: single files, and ZIPs (class folders or a
  ``labels.csv``) through one reader;
- ``demo``, ``samples``: generated sets and real pictures shipped with installed packages;
- ``splits``: training/validation splits and plain-words checks; ``encoded``: what a model reads.
"""

from core.data.archives import load_zip
from core.data.datasets import ImageDataset, LoadReport
from core.data.demo import DEMO_CLASSES, DEMO_DOMAINS, DEMO_TASKS, demo_dataset, demo_fewshot, demo_multitask
from core.data.dicom import FRAME_CHOICES, is_dicom
from core.data.encoded import EncodedDataset, EncodedMultiTaskDataset, encode_images, labels_of, normalise
from core.data.files import add_images, load_images
from core.data.images import IMAGE_EXTENSIONS, IMAGE_FORMATS, image_digest, open_image, read_image
from core.data.labels_csv import LABELS_CSV
from core.data.multitask import MISSING, MultiTaskDataset
from core.data.names import dataset_name
from core.data.samples import SAMPLE_SETS, digits_multitask, sample_dataset
from core.data.splits import (
    MIN_IMAGES_PER_CLASS,
    augmentation_note,
    check_split,
    dataset_warnings,
    grayscale_share,
    split,
    spread,
)
from core.data.window import DEFAULT_PERCENTILES, Window, apply_window, default_window, histogram

__all__ = [
    "spread",
    "IMAGE_FORMATS",
    "IMAGE_EXTENSIONS",
    "DEMO_CLASSES",
    "DEMO_DOMAINS",
    "DEMO_TASKS",
    "MIN_IMAGES_PER_CLASS",
    "MISSING",
    "LABELS_CSV",
    "SAMPLE_SETS",
    "ImageDataset",
    "MultiTaskDataset",
    "LoadReport",
    "EncodedDataset",
    "EncodedMultiTaskDataset",
    "open_image",
    "read_image",
    "is_dicom",
    "FRAME_CHOICES",
    "Window",
    "DEFAULT_PERCENTILES",
    "default_window",
    "apply_window",
    "histogram",
    "load_images",
    "add_images",
    "image_digest",
    "dataset_name",
    "load_zip",
    "demo_dataset",
    "demo_fewshot",
    "demo_multitask",
    "sample_dataset",
    "digits_multitask",
    "split",
    "check_split",
    "dataset_warnings",
    "grayscale_share",
    "augmentation_note",
    "encode_images",
    "labels_of",
    "normalise",
]
