"""How much of the server one upload may take: every cap the data readers check.

Read at call time (``limits.MAX_SIDE``, not a copy taken at import), so a deployment or a test can
change one by setting it here.
"""

__all__ = [
    "MAX_SIDE",
    "MAX_IMAGE_PIXELS",
    "MAX_TOTAL_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_ENTRIES",
    "MAX_TOTAL_UNCOMPRESSED",
    "MAX_COMPRESSION_RATIO",
    "RATIO_EXEMPT_BYTES",
    "MAX_DIRECTORY_BYTES_PER_ENTRY",
    "MAX_CSV_BYTES",
    "MAX_FRAMES",
    "MAX_NAME_CHARS",
]

MAX_SIDE = 512  # longest side of an image held in memory
MAX_IMAGE_PIXELS = 50_000_000  # one image, from its header, before decoding (48 MP phones fit)
MAX_TOTAL_PIXELS = 400_000_000  # pixels decoded for one upload (JPEGs decode at reduced scale)
MAX_FILE_BYTES = 50 * 2**20  # one image file
MAX_ENTRIES = 20_000  # entries in a ZIP, and images in a dataset
MAX_TOTAL_UNCOMPRESSED = 2 * 2**30  # sum of the declared sizes of the ZIP entries we read
MAX_COMPRESSION_RATIO = 200  # per entry; real photos barely compress, bombs compress ~1000:1
# Below this size an entry cannot do harm whatever its ratio, and flat-colour BMPs compress well.
RATIO_EXEMPT_BYTES = 2**20
# Bounds the central directory before zipfile parses it (a record is >= 46 bytes + its name).
MAX_DIRECTORY_BYTES_PER_ENTRY = 512
MAX_CSV_BYTES = 20 * 2**20  # a labels.csv
# Frames of one multi-frame DICOM, from its header: a cine loop or a whole series in one file is
# skipped with this reason rather than read (or scanned for its middle frame).
MAX_FRAMES = 256
MAX_NAME_CHARS = 100  # a class, task or label name: a 100 KB one took 8.8 s to draw
