"""Image input for verification, calibration and evaluation: letterboxing and tensors in each family's convention."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    """How a family feeds images: channel order, scale and the letterbox fill value."""

    rgb: bool = True
    scale: float = 1 / 255
    fill: int = 114


def check_imgsz(imgsz: int, stride: int = 32) -> int:
    """A positive multiple of the model's largest stride, or a clear error."""
    if imgsz < stride or imgsz % stride:
        raise ValueError(f"--imgsz must be a positive multiple of {stride}, got {imgsz}")
    return imgsz


def sample_image() -> Path:
    """A real photo that ships with ultralytics (``bus.jpg``), used to verify exports."""
    from ultralytics.utils import ASSETS

    return Path(ASSETS) / "bus.jpg"


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image; a clear error when the file is missing or not an image."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


def letterbox(image: np.ndarray, size: int, fill: int = 114) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size``; returns the image, the scale and the
    (left, top) padding, so boxes map back with ``(xy - pad) / scale``."""
    h, w = image.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = round(h * scale), round(w * scale)
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
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ValueError(f"no images in {folder}")
    return found
