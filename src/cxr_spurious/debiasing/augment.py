"""Label-preserving augmentation for the copies made by ``augment_upsample``.

Small affine (rotation, scale, translation), intensity (gamma, contrast) and Gaussian
noise. Never a horizontal flip: laterality (left/right lung, markers, tube side) is part
of the label's meaning on a chest X-ray. The training loader calls ``augment_image`` on
rows whose ``augment`` flag is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr_spurious.errors import ParameterError


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform (each drawn uniformly in ``[-x, x]``)."""

    max_rotation_deg: float = 5.0
    max_scale: float = 0.05
    max_translation: float = 0.03
    max_gamma: float = 0.15
    max_contrast: float = 0.1
    noise_std: float = 0.02


def augment_image(image: np.ndarray, seed: int, config: AugmentConfig | None = None) -> np.ndarray:
    """Apply one random label-preserving transform to a 2-D uint8 image.

    Args:
        image: ``(h, w)`` uint8 image.
        seed: Seed of the local generator (same seed, same output).
        config: Ranges; the defaults when ``None``.

    Returns:
        A new ``(h, w)`` uint8 image.

    Raises:
        ParameterError: the image is not a 2-D uint8 array.
    """
    cfg = config or AugmentConfig()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ParameterError("image", f"expected a 2-D uint8 array, got shape {image.shape} dtype {image.dtype}")
    rng = np.random.default_rng(seed)
    h, w = image.shape
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    scale = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
    shift = rng.uniform(-cfg.max_translation, cfg.max_translation, size=2) * np.array([w, h])
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    x = warped.astype(np.float64) / 255.0
    x = x ** np.exp(rng.uniform(-cfg.max_gamma, cfg.max_gamma))
    x = (x - x.mean()) * (1.0 + rng.uniform(-cfg.max_contrast, cfg.max_contrast)) + x.mean()
    x = x + rng.normal(0.0, cfg.noise_std, size=x.shape)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
