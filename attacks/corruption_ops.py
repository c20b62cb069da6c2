"""The image corruptions of MedMNIST-C, written from their published definitions (package ``medmnistc`` 0.1.0).

Di Salvo, Doerrich and Ledig, "MedMNIST-C: Comprehensive benchmark and improved classifier robustness by
simulating realistic image corruptions" (2024), and its package ``medmnistc`` 0.1.0
(github.com/francescodisalvo05/medmnistc-api, Apache-2.0). That package needs torchvision, OpenCV, scikit-image
and ImageMagick (Wand), which robustmed does not install, so each operation here reimplements its definition:

- every operation takes and returns an 8-bit RGB image (H, W, 3), as the package's corruptions do on MedMNIST's
  images opened as RGB; greyscale data sets go in as three equal channels and come back through the ITU-R 601
  luma conversion (:func:`to_grey`), the package's pipeline;
- pixelation, JPEG, brightness and contrast are Pillow's own operations, as in the package;
- noises draw from the given generator and quantise by truncation (``(x·255).astype(uint8)``), as the package does;
- Gaussian blur follows torchvision's ``gaussian_blur`` (σ from the kernel size, reflect padding, rounding);
- motion blur follows ImageMagick's ``MotionBlurImage`` (a one-sided Gaussian line kernel of 2⌈r⌉ + 1 taps at a
  random angle in [−45°, 45°], edge pixels repeated);
- gamma correction follows torchvision's ``adjust_gamma`` lookup table.

``scale`` is the image side over the 224 pixels MedMNIST-C's parameters were set at: blur radii and widths,
given in pixels of a 224-pixel image, shrink with it, so a blur covers the same share of the anatomy at any size
(:mod:`robustmed.attacks.corruption_sets` documents the rule).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) uint8 by Pillow's ``convert("L")`` (ITU-R 601-2 luma), the package's last step."""
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def _truncate(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 1) * 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = img / 255.0
    return _truncate(x + rng.normal(size=x.shape, scale=sigma))


def speckle_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    x = img / 255.0
    return _truncate(x + x * rng.normal(size=x.shape, scale=sigma))


def impulse_noise(img: np.ndarray, amount: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Salt and pepper: each value flips with probability ``amount``, to 1 or 0 with equal odds."""
    x = img / 255.0
    flipped = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    x = np.where(flipped & salt, 1.0, np.where(flipped & ~salt, 0.0, x))
    return _truncate(x)


def shot_noise(img: np.ndarray, photons: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Poisson noise: fewer photons per unit intensity is the stronger corruption."""
    x = img / 255.0
    return _truncate(rng.poisson(x * photons) / photons)


def pixelate(img: np.ndarray, factor: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Box-filtered down to ``factor`` of the side and back up, as Pillow resizes (a relative factor)."""
    image = Image.fromarray(img, "RGB")
    width, height = image.size
    small = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.BOX)
    return np.asarray(small.resize((width, height), Image.BOX))


def jpeg_compression(img: np.ndarray, quality: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(img, "RGB").save(buffer, "JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def brightness(img: np.ndarray, factor: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(img, "RGB")).enhance(factor))


def contrast(img: np.ndarray, factor: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(img, "RGB")).enhance(factor))


def gamma_correction(img: np.ndarray, gamma: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """torchvision's lookup table: ⌊(256 − 10⁻³)·(v/255)^γ⌋."""
    table = np.floor((256 - 1e-3) * (np.arange(256) / 255.0) ** gamma).astype(np.uint8)
    return table[img]


def blur_sigma(kernel: int) -> float:
    """torchvision's σ for a kernel size when none is given."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def gaussian_blur(img: np.ndarray, kernel: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Separable Gaussian of torchvision's σ(kernel)·scale, half-width min((kernel − 1)/2, max(1, ⌈3σ⌉)),
    reflect padding, rounded back to 8 bits; at scale 1 exactly torchvision's kernel."""
    sigma = blur_sigma(kernel) * scale
    half = int(min((kernel - 1) // 2, max(1, math.ceil(3 * sigma))))
    half = min(half, min(img.shape[:2]) - 1)  # reflect padding needs a border narrower than the image
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    weights /= weights.sum()
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[:, None].float()  # (3, 1, H, W)
    x = F.pad(x, (half, half, half, half), mode="reflect")
    x = F.conv2d(x, weights.view(1, 1, 1, -1))
    x = F.conv2d(x, weights.view(1, 1, -1, 1))
    return x.round().clamp(0, 255)[:, 0].permute(1, 2, 0).to(torch.uint8).numpy()


def motion_blur(img: np.ndarray, radius_sigma: tuple, rng: np.random.Generator, scale: float) -> np.ndarray:
    """ImageMagick's motion blur: weights exp(−i²/2s²) for i = 0 … 2⌈r⌉ along a random angle, edges repeated."""
    radius, sigma = radius_sigma[0] * scale, radius_sigma[1] * scale
    angle = math.radians(rng.uniform(-45, 45))
    width = 2 * math.ceil(radius) + 1
    taps = np.arange(width)
    weights = np.exp(-(taps ** 2) / (2 * sigma * sigma))
    weights /= weights.sum()
    dx = np.ceil(taps * math.cos(angle) - 0.5).astype(int)  # ImageMagick's rounding of each tap's offset
    dy = np.ceil(taps * math.sin(angle) - 0.5).astype(int)
    height, wide = img.shape[:2]
    rows, cols = np.arange(height)[:, None], np.arange(wide)[None, :]
    out = np.zeros(img.shape, dtype=np.float64)
    for weight, ox, oy in zip(weights, dx, dy):
        out += weight * img[np.clip(rows + oy, 0, height - 1), np.clip(cols + ox, 0, wide - 1)]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


OPERATIONS = {
    "gaussian_noise": gaussian_noise, "speckle_noise": speckle_noise, "impulse_noise": impulse_noise,
    "shot_noise": shot_noise, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
    "brightness": brightness, "contrast": contrast, "gamma_correction": gamma_correction,
    "gaussian_blur": gaussian_blur, "motion_blur": motion_blur,
}
