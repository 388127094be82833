"""The project's one label-preserving augmentation (training copies, ``augment_upsample``).

Small affine transform (rotation, scale, translation; applied identically to the dense
targets), intensity change (gamma, contrast) and Gaussian noise. Never a horizontal flip:
laterality (left/right lung, markers, tube side) is part of a chest X-ray's meaning.
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


def augment_pair(
    image: np.ndarray,
    target: np.ndarray | None,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Transform an image and (optionally) its dense targets with one random draw.

    Args:
        image: ``(h, w)`` float image in [0, 1].
        target: ``(T, h, w)`` masks moved with the same affine and the same reflecting
            border as the image (nearest neighbour), or None.
        rng: The example's generator (same state, same output).
        config: Ranges; the defaults when ``None``.

    Returns:
        The float32 image in [0, 1] and the moved targets.
    """
    cfg = config or AugmentConfig()
    if image.ndim != 2:
        raise ParameterError("image", f"expected a 2-D image, got shape {image.shape}")
    h, w = image.shape
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    scale = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
    shift = rng.uniform(-cfg.max_translation, cfg.max_translation, size=2) * np.array([w, h])
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(
        np.asarray(image, dtype=np.float32),
        matrix,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    x = np.clip(warped.astype(np.float64), 0.0, 1.0)
    x = x ** np.exp(rng.uniform(-cfg.max_gamma, cfg.max_gamma))
    x = (x - x.mean()) * (1.0 + rng.uniform(-cfg.max_contrast, cfg.max_contrast)) + x.mean()
    x = x + rng.normal(0.0, cfg.noise_std, size=x.shape)
    if target is not None:
        target = np.stack(
            [
                cv2.warpAffine(
                    np.asarray(t, dtype=np.float32),
                    matrix,
                    (w, h),
                    flags=cv2.INTER_NEAREST,
                    # the image's border rule: a finding the image reflects in from the
                    # edge is in the target too (a constant border would mark it background)
                    borderMode=cv2.BORDER_REFLECT_101,
                )
                for t in target
            ]
        )
    return np.clip(x, 0.0, 1.0).astype(np.float32), target


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
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ParameterError(
            "image", f"expected a 2-D uint8 array, got shape {image.shape} dtype {image.dtype}"
        )
    out, _ = augment_pair(
        image.astype(np.float32) / 255.0, None, np.random.default_rng(seed), config
    )
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
