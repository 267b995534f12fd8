"""Colour descriptors of product photos: histograms of the product's pixels in CIE Lab (or HSV).

An ImageNet trunk sees shape and texture well and colour poorly: on held-out fashion photos its
nearest neighbours of the same article type have another colour most of the time (black / brown,
black / blue, blue / navy). A colour histogram of the product region says what the trunk misses.
Product photos are shot on white, so near-white, near-neutral pixels (L > 92, |a| and |b| < 4) are
left out; a photo with almost nothing else (a white product on white) keeps all its pixels.

Each histogram is normalised to sum 1, square-rooted (the Hellinger map: the dot product of two
descriptors is then the Bhattacharyya coefficient of their histograms) and L2-normalised, so it
fuses with a unit photo vector as ``cos = w * cos_photo + (1 - w) * cos_colour``.

Descriptors register by name (:data:`DESCRIPTORS`). Measured: docs/benchmarks/photo_colour.md.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Background: near-white and near-neutral; below MIN_FOREGROUND of the pixels the whole photo counts.
BACKGROUND_L, BACKGROUND_AB, MIN_FOREGROUND = 92.0, 4.0, 0.02
# a and b: 8 bins 15 units wide from -52.5 (bin 3, [-7.5, 7.5], holds the neutrals); L: 4 bins over 0-100.
AB_LOW, AB_WIDTH, AB_BINS, L_BINS = -52.5, 15.0, 8, 4
HUE_BINS, SATURATION_BINS = 16, 4

_C = np.arange(256) / 255.0
_LINEAR = np.where(_C <= 0.04045, _C / 12.92, ((_C + 0.055) / 1.055) ** 2.4).astype(np.float32)
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], np.float32)
_D65 = np.array([0.95047, 1.0, 1.08883], np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of 8-bit sRGB pixels, shape (pixels, 3)."""
    xyz = (_LINEAR[np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)] @ _RGB_TO_XYZ.T) / _D65
    edge = (6 / 29) ** 3
    f = np.where(xyz > edge, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def foreground(lab: np.ndarray) -> np.ndarray:
    """Pixels that are not the white studio background (all pixels when almost none are left)."""
    keep = ~((lab[:, 0] > BACKGROUND_L) & (np.abs(lab[:, 1]) < BACKGROUND_AB) & (np.abs(lab[:, 2]) < BACKGROUND_AB))
    return keep if keep.sum() >= MIN_FOREGROUND * len(keep) else np.ones_like(keep)


def _hellinger(counts: np.ndarray) -> np.ndarray:
    h = np.sqrt(counts / max(float(counts.sum()), 1e-12))
    return (h / max(float(np.linalg.norm(h)), 1e-12)).astype(np.float32)


def _ab_bins(values: np.ndarray) -> np.ndarray:
    return np.clip(((values - AB_LOW) // AB_WIDTH).astype(np.int64), 0, AB_BINS - 1)


def lab_l4ab8(rgb: np.ndarray) -> np.ndarray:
    """Joint L (4) x a (8) x b (8) histogram of the product's pixels: 256 values."""
    lab = rgb_to_lab(rgb)
    lab = lab[foreground(lab)]
    light = np.clip((lab[:, 0] / (100 / L_BINS)).astype(np.int64), 0, L_BINS - 1)
    index = (light * AB_BINS + _ab_bins(lab[:, 1])) * AB_BINS + _ab_bins(lab[:, 2])
    return _hellinger(np.bincount(index, minlength=L_BINS * AB_BINS * AB_BINS).astype(np.float64))


def lab_ab8(rgb: np.ndarray, *, mask: bool = True) -> np.ndarray:
    """a (8) x b (8) histogram (chroma only) of the product's pixels (of every pixel without ``mask``)."""
    lab = rgb_to_lab(rgb)
    if mask:
        lab = lab[foreground(lab)]
    index = _ab_bins(lab[:, 1]) * AB_BINS + _ab_bins(lab[:, 2])
    return _hellinger(np.bincount(index, minlength=AB_BINS * AB_BINS).astype(np.float64))


def hsv16x4(rgb: np.ndarray) -> np.ndarray:
    """Hue (16) x saturation (4) histogram of the product's pixels."""
    from PIL import Image

    rgb = np.asarray(rgb, dtype=np.uint8)
    hsv = np.asarray(Image.fromarray(rgb.reshape(-1, 1, 3) if rgb.ndim == 2 else rgb).convert("HSV")).reshape(-1, 3)
    keep = foreground(rgb_to_lab(rgb))
    hue = (hsv[keep, 0].astype(np.int64) * HUE_BINS) >> 8
    saturation = (hsv[keep, 1].astype(np.int64) * SATURATION_BINS) >> 8
    return _hellinger(np.bincount(hue * SATURATION_BINS + saturation,
                                  minlength=HUE_BINS * SATURATION_BINS).astype(np.float64))


DESCRIPTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lab_l4ab8": lab_l4ab8,
    "lab_ab8": lab_ab8,
    "lab_ab8_whole_photo": lambda rgb: lab_ab8(rgb, mask=False),
    "hsv16x4": hsv16x4,
}


def load_rgb(image: str | Path | bytes) -> np.ndarray:
    """An image file or its bytes as an (H, W, 3) uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
        return np.asarray(im.convert("RGB"))


def colour_descriptors(images: list[str | Path | bytes], name: str = "lab_l4ab8") -> np.ndarray:
    """The descriptor ``name`` of each image, stacked (images, dims)."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown colour descriptor {name!r}; known: {', '.join(DESCRIPTORS)}")
    describe = DESCRIPTORS[name]
    return np.stack([describe(load_rgb(image)) for image in images])
