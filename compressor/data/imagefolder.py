"""ImageNet-style class folders (``train/<class>/*.jpg``, ``val/<class>/*.jpg``) read with Pillow.

Pillow is an optional extra, imported only when an image is needed; without it ``ImageFolder``
raises ``DatasetError`` saying how to install it. The transforms are torchvision's standard ImageNet
ones written here without torchvision: for training, a random resized crop (area 8-100 %, aspect
3/4-4/3) to 224x224 and a horizontal flip with probability 1/2; for evaluation, a resize of the
shorter side to 256 and a 224x224 centre crop; then scaling to [0, 1] and normalization with the
ImageNet mean and std. A sample's randomness can be fixed by indexing with ``(index, seed)``, which
the loaders do, so augmentation is reproducible whatever the number of worker processes. The
scan follows symbolic links but walks each real folder once, refuses a class folder without
images, and error messages escape control characters in file names so they stay one line.
"""
from __future__ import annotations

import math
import os
import random
from typing import List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch

from .base import DatasetError
from .transforms import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def pillow_image():
    """The ``PIL.Image`` module, or ``DatasetError`` when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError("reading image folders needs Pillow, which is not installed: "
                           "pip install Pillow (the 'images' extra)") from None
    return Image


def _bilinear(Image):  # Pillow >= 9.1 has enums; older ones only the module constants
    return getattr(Image, "Resampling", Image).BILINEAR


def _flip(Image):
    return getattr(Image, "Transpose", Image).FLIP_LEFT_RIGHT


def shown(path: str) -> str:
    """``path`` fit for a one-line message: control characters and undecodable bytes (which
    ``os`` gives back as lone surrogates) are written as escapes."""
    return "".join(c if c.isprintable() and not "\ud800" <= c <= "\udfff" else
                   repr(c)[1:-1] for c in path)


def expected_image_folders(data_dir: str) -> str:
    return (f"expected {os.path.join(data_dir, 'train')}/<class>/<image> and "
            f"{os.path.join(data_dir, 'val')}/<class>/<image> "
            f"({', '.join(IMAGE_EXTENSIONS)})")


def scan_class_folders(root: str, classes: Optional[Sequence[str]] = None
                       ) -> Tuple[Tuple[str, ...], List[Tuple[str, int]]]:
    """Class names (sorted sub-folder names) and ``(path, class_index)`` for every image under root.

    With ``classes`` given (the training set's), the folder must use only those names, and indices
    follow that list: a validation folder that lacks a class keeps every other class's index.
    """
    try:
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as e:
        raise DatasetError(f"cannot list image folder {shown(root)}: {e.strerror or e}") from None
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{shown(root)} has class folders the training set lacks: "
                               f"{', '.join(shown(u) for u in unknown[:5])}"
                               f"{' ...' if len(unknown) > 5 else ''}")
    index = {name: i for i, name in enumerate(classes)}
    samples: List[Tuple[str, int]] = []
    empty: List[str] = []
    seen: Set[Tuple[int, int]] = set()  # (device, inode) of every folder walked, across classes
    for name in found:
        before = len(samples)
        _walk(os.path.join(root, name), index[name], samples, seen)
        if len(samples) == before:
            empty.append(name)
    if not samples:
        raise DatasetError(f"no images in {shown(root)}: expected {shown(root)}/<class>/<image> "
                           f"({', '.join(IMAGE_EXTENSIONS)})")
    if empty:
        raise DatasetError(f"{shown(root)} has class folders without images: "
                           f"{', '.join(shown(n) for n in empty[:5])}"
                           f"{' ...' if len(empty) > 5 else ''} (every class needs at least one "
                           f"{'/'.join(IMAGE_EXTENSIONS)} file, or remove the folder)")
    return tuple(classes), samples


def _walk(folder: str, target: int, samples: List[Tuple[str, int]],
          seen: Set[Tuple[int, int]]) -> None:
    """Append ``(path, target)`` for the images under ``folder``, in sorted order.

    Symbolic links are followed, but a folder already walked (the same device and inode, however it
    was reached) is skipped, so a link loop or a link to a sibling cannot repeat samples.
    """
    try:
        st = os.stat(folder)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DatasetError(f"cannot list image folder {shown(folder)}: {e.strerror or e}"
                           ) from None
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen.add(key)
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows links; a dangling link is neither file nor folder
        except OSError:
            continue
        if is_dir:
            _walk(e.path, target, samples, seen)
        elif e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
            samples.append((e.path, target))


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: Tuple[float, float] = (0.08, 1.0),
                            ratio: Tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> Tuple[int, int, int, int]:
    """(left, top, crop_width, crop_height) as torchvision's ``RandomResizedCrop`` draws it: ten
    tries at a random area fraction and log-uniform aspect ratio, then a centre crop whose aspect
    is clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_shorter(width: int, height: int, size: int) -> Tuple[int, int]:
    """New (width, height) with the shorter side ``size`` and the aspect kept (torchvision's
    ``Resize(int)``)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred ``size`` x ``size`` square (torchvision's
    rounding)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


class ImageFolder(torch.utils.data.Dataset):
    """Images in ``root/<class>/`` as normalized float32 (3, size, size) tensors and int labels.

    ``train=True`` applies the random resized crop and flip, ``train=False`` the resize and centre
    crop. Index with an int, or with ``(index, seed)`` to fix that sample's augmentation.
    """

    def __init__(self, root: str, train: bool, classes: Optional[Sequence[str]] = None,
                 image_size: int = 224, resize_size: int = 256,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 samples: Optional[List[Tuple[str, int]]] = None):
        self.root, self.train = root, train
        self.image_size, self.resize_size = image_size, resize_size
        if samples is None:
            self.classes, self.samples = scan_class_folders(root, classes)
        else:  # sharing another view's listing, e.g. the training folder seen with eval transforms
            self.classes, self.samples = tuple(classes or ()), list(samples)
        self.targets = [t for _, t in self.samples]
        self._image = pillow_image()
        self._normalize = Normalize(mean, std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[index]
        Image = self._image
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except Exception as e:  # Pillow's decoders raise many types (SyntaxError, struct.error..)
            reason = shown(str(e)) or type(e).__name__
            raise DatasetError(f"cannot read image {shown(path)}: {reason}") from None
        size = self.image_size
        if self.train:
            rng = random.Random(seed)
            left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
            img = img.resize((size, size), _bilinear(Image),
                             box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                img = img.transpose(_flip(Image))
        else:
            img = img.resize(resize_shorter(img.width, img.height, self.resize_size),
                             _bilinear(Image))
            img = img.crop(center_crop_box(img.width, img.height, size))
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return self._normalize(pixels.unsqueeze(0))[0], target


def find_image_folders(data_dir: str) -> Tuple[str, str]:
    """``data_dir/train`` and ``data_dir/val``, or ``DatasetError`` saying what was expected."""
    train, val = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
    if os.path.isdir(train) and os.path.isdir(val):
        return train, val
    missing = " and ".join(p for p in (train, val) if not os.path.isdir(p))
    reason = (" (no such directory)" if not os.path.isdir(data_dir)
              else f" ({shown(missing)} missing)")
    raise DatasetError(f"image folders not found in {shown(data_dir)}{reason}: "
                       f"{expected_image_folders(data_dir)}")
