"""Images in, datasets out: safe decoding of uploads and ZIPs, generated and sample sets, splits.

Every image, whatever its source, goes through one decoder (``core.data.images``): an allow-list of
formats, caps read from the header before anything is decoded (``core.data.limits``), every colour
mode turned into RGB, EXIF orientation applied, the longest side at most ``limits.MAX_SIDE``.
Datasets hold those small decoded images in memory, so training never reopens a file; archives
are read in memory, never extracted. The modules, from the ground up:

- ``limits``, ``names``: the caps, and names as a person sees them;
- ``images``: decoding one file; ``datasets``, ``multitask``: one label or one per task;
- ``files``, ``entries``, ``archives``, ``labels_csv``: single files, and ZIPs (class folders or a
  ``labels.csv``) through one reader;
- ``demo``, ``samples``: generated sets and real pictures shipped with installed packages;
- ``splits``: training/validation splits and plain-words checks; ``encoded``: what a model reads.
"""

from core.data.archives import load_zip
from core.data.datasets import ImageDataset, LoadReport
from core.data.demo import DEMO_CLASSES, DEMO_DOMAINS, DEMO_TASKS, demo_dataset, demo_fewshot, demo_multitask
from core.data.encoded import EncodedDataset, EncodedMultiTaskDataset, encode_images, labels_of, normalise
from core.data.files import add_images, load_images
from core.data.images import IMAGE_EXTENSIONS, IMAGE_FORMATS, image_digest, open_image
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
)

__all__ = [
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
