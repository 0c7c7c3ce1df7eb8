"""Image input for verification, calibration and evaluation: letterboxing and tensors in each family's convention."""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from yoloprune.options import MAX_IMGSZ, check_imgsz  # noqa: F401  (re-exported: sizes are checked in options)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 16384 * 16384  # 0.8 GB decoded: an image declaring more is a decompression bomb or a broken file
ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 2-4 flips and a half turn, 5-8 swap width and height


@dataclass(frozen=True)
class Preprocess:
    """How a family feeds images: channel order, scale and the letterbox fill value."""

    rgb: bool = True
    scale: float = 1 / 255
    fill: int = 114


def sample_image() -> Path:
    """A real photo that ships with ultralytics (``bus.jpg``), used to verify exports."""
    from ultralytics.utils import ASSETS

    return Path(ASSETS) / "bus.jpg"


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 when it has none or an unreadable one)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, TypeError):  # what Pillow raises for malformed EXIF
        return 1
    return value if value in range(1, 9) else 1


def _upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels turned the way their EXIF ``orientation`` says they are shown."""
    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(turns[orientation](image)) if orientation in turns else image


def _pillow_open(source: str | Path | io.BytesIO) -> Image.Image:
    """Pillow's own ``Image.open``: importing ultralytics replaces it with one that, for a file Pillow cannot identify,
    logs an attempt to install pi-heif and raises ImportError when that is not installed."""
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", Image.open)(source)


def _header(source: str | Path | io.BytesIO, path: str | Path) -> tuple[int, int, int] | None:
    """(width, height, EXIF orientation) from an image's header, None when Pillow cannot read it; an image declaring
    more than ``MAX_PIXELS`` is refused before a pixel is decoded."""
    too_big = f"cannot read image {path}: it declares more than {MAX_PIXELS:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _pillow_open(source) as im:
                (width, height), orientation = im.size, _orientation(im)
    except Image.DecompressionBombError:  # Pillow's own refusal, when its limit is set (above ours)
        raise ValueError(too_big) from None
    except OSError:
        return None
    if width * height > MAX_PIXELS:
        raise ValueError(too_big)
    return width, height, orientation


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as the model sees it: upright, as ``read_image`` returns it (header only)."""
    header = _header(path, path)
    if header is None:
        raise ValueError(f"cannot read image {path}: not an image file")
    width, height, orientation = header
    return (height, width) if orientation >= 5 else (width, height)


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image, upright (its EXIF orientation applied, as ``image_size`` reports it); a clear error when the
    file is missing or not an image."""
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    header = _header(io.BytesIO(data), path)  # None: a format OpenCV reads and Pillow does not, no EXIF to honour
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # turned here, the same way for every format
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return _upright(image, header[2] if header else 1)


def letterbox(image: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size``; returns the image, the scale and the
    (left, top) padding, so boxes map back with ``(xy - pad) / scale``. A side that would round to nothing (a
    20000x1 image) keeps one pixel."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size, 3), fill, dtype=np.uint8)
    out[top : top + nh, left : left + nw] = image
    return out, scale, (left, top)


def to_tensor(image: np.ndarray, spec: Preprocess = Preprocess()) -> torch.Tensor:
    """A (1, 3, H, W) float32 tensor from a BGR uint8 image."""
    if spec.rgb:
        image = image[..., ::-1]
    array = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) * spec.scale
    return torch.from_numpy(array)[None]


def load_batch(path: str | Path, size: int, spec: Preprocess = Preprocess()) -> torch.Tensor:
    """One image file, letterboxed to ``size`` and converted the family's way."""
    return to_tensor(letterbox(read_image(path), size, spec.fill)[0], spec)


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder (sorted); a clear error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())  # no FIFOs
    if not found:
        raise ValueError(f"no images in {folder}")
    return found


def example_input(imgsz: int, batch: int = 1) -> torch.Tensor:
    """A zero image batch at ``imgsz`` (the graph only needs shapes)."""
    return torch.zeros(batch, 3, check_imgsz(imgsz), check_imgsz(imgsz))
