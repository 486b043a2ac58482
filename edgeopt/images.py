"""Image files -> the input contract (uint8 HWC, `size` x `size`, 1 or 3 channels). Torch-free.

The one decoder used wherever an image file becomes model input: `prepare` (training data), `edgeopt predict`
and release evaluation on a device. The same file therefore gives the same pixels everywhere. A file that cannot
be used raises ImageError with `kind` naming the problem class (prepare groups its report by it).

Order of operations (the contract a release manifest records): convert to the colour mode (PIL "L" or "RGB"),
then resize with bilinear interpolation.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from edgeopt.errors import ImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Pillow's own bomb guard (~89 M pixels) is far above any classifier input; refuse decoding beyond this.
MAX_PIXELS = 50_000_000

NOT_REGULAR = "not a regular file"
CORRUPT = "corrupt or truncated image"
HIGH_DEPTH = "unsupported mode (16-bit/float; convert to 8-bit)"
BOMB = "too large (decompression bomb guard)"
WRONG_SIZE = "wrong size (data.resize is false)"
NOT_IMAGE = "not an image file"


def is_high_depth(mode: str) -> bool:
    """32-bit int/float and 16-bit modes: PIL's convert() clips them to 0/255 instead of scaling."""
    return mode in ("I", "F") or mode.startswith("I;")


def check_regular_file(path: str | Path) -> None:
    """Refuse FIFOs, devices, sockets and directories before opening (opening a FIFO blocks forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as exc:
        raise ImageError(path, CORRUPT, exc.strerror or type(exc).__name__) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(path, NOT_REGULAR)


def open_regular(path: str | Path):
    """A binary file object for a regular file. The file is opened non-blocking and checked on the open
    descriptor, so a FIFO or device swapped in after the stat check is refused too, never waited on."""
    check_regular_file(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ImageError(path, CORRUPT, exc.strerror or type(exc).__name__) from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise ImageError(path, NOT_REGULAR)
    return fh


def decode(path: str | Path, channels: int, size: int, resize: bool = True) -> np.ndarray:
    """Decode one image file into a uint8 (size, size, channels) array, exactly as `prepare` does."""
    from PIL import Image, UnidentifiedImageError

    fh = open_regular(path)
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(path, BOMB, f"{w}x{h} pixels > {MAX_PIXELS:,}")
                im.load()  # decodes fully: catches truncated files that verify() misses
                if is_high_depth(im.mode):
                    raise ImageError(path, HIGH_DEPTH, f"mode {im.mode}")
                if not resize and im.size != (size, size):
                    raise ImageError(path, WRONG_SIZE, f"{w}x{h}, expected {size}x{size}")
                return to_contract(im, channels, size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, BOMB, str(exc).split(",")[0]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, CORRUPT, type(exc).__name__) from None


def to_contract(img, channels: int, size: int) -> np.ndarray:
    """PIL image -> uint8 HWC array: colour mode first, then bilinear resize."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
