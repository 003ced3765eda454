"""The embedded default dataset: scikit-learn's 8x8 handwritten digits, framed like MNIST.

``sklearn.datasets.load_digits`` ships 1797 real 8x8 digit images (pixel values 0-16) inside the
scikit-learn package, so this dataset needs no download and no data directory. Each image is scaled
to [0, 1], resized bilinearly to 20x20 and centred in a 28x28 black frame -- MNIST's own framing
(its digits are fitted to a 20x20 box inside 28x28) -- then stored as uint8 (0-255), so that MNIST
architectures and the MNIST loading path run on it unchanged. The split is fixed: the first 1438
images train, the last 359 (20 %) test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ArraySplits, DatasetError

DIGITS_TEST_SIZE = 359  # the last 20 % of the 1797 images, floor(1797 / 5)
DIGITS_BOX = 20  # MNIST fits each digit into a 20x20 box ...
DIGITS_FRAME = 28  # ... centred in a 28x28 image


def load_digits28() -> ArraySplits:
    """scikit-learn's digits as uint8 images (N, 1, 28, 28) and int64 labels: 1438 train, 359 test.

    Raises ``DatasetError`` when scikit-learn (an optional extra) is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the 'digits' dataset needs scikit-learn, which is not installed: "
                           "pip install scikit-learn (the 'digits' extra), or use mnist, cifar10 "
                           "or imagenet with a data directory") from None
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # values are 0..16
    labels = torch.from_numpy(bunch.target).long()
    # align_corners=False keeps the 8 source pixels' centres evenly spread over the 20x20 box.
    boxed = F.interpolate(images, size=(DIGITS_BOX, DIGITS_BOX), mode="bilinear",
                          align_corners=False)
    margin = (DIGITS_FRAME - DIGITS_BOX) // 2
    framed = F.pad(boxed, (margin, margin, margin, margin))
    images8 = (framed * 255).round_().clamp_(0, 255).to(torch.uint8)
    n_train = len(images8) - DIGITS_TEST_SIZE
    return ArraySplits(images8[:n_train].contiguous(), labels[:n_train].contiguous(),
                       images8[n_train:].contiguous(), labels[n_train:].contiguous(),
                       tuple(str(d) for d in range(10)))
