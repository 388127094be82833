"""Features for clustering rows: model embeddings or cached-image thumbnails.

Per-image tables are put in manifest order by ``cxr_spurious.sources.contract.align_table``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_integer
from cxr_spurious.sources.contract import align_table


def embedding_columns(table: pd.DataFrame, *, name: str = "embeddings") -> list[str]:
    """The ``e0..e{D-1}`` columns of an embedding table, in order.

    Raises:
        ContractError: no ``image_id`` column or no ``e<i>`` columns.
    """
    cols = [
        c for c in table.columns if isinstance(c, str) and c.startswith("e") and c[1:].isdigit()
    ]
    if "image_id" not in table.columns or not cols:
        raise ContractError(
            f"{name}: expected columns image_id, e0..e{{D-1}}; got {list(table.columns)[:8]}"
        )
    return sorted(cols, key=lambda c: int(c[1:]))


def embedding_matrix(
    manifest: pd.DataFrame, embeddings: pd.DataFrame, *, split: str | None = None
) -> np.ndarray:
    """Embedding rows in manifest order as a float array (rows of other splits are NaN).

    Raises:
        ContractError: misaligned table or non-finite embeddings.
    """
    cols = embedding_columns(embeddings)
    aligned = align_table(manifest, embeddings, name="embeddings", split=split)
    out = np.full((len(manifest), len(cols)), np.nan)
    pos = manifest.index.get_indexer(aligned.index)
    values = aligned[cols].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ContractError("embeddings: contain NaN or infinite values")
    out[pos] = values
    return out


def thumbnails(images: np.ndarray, size: int = 16) -> np.ndarray:
    """Area-downsampled, flattened, [0, 1]-scaled thumbnails of ``(n, s, s)`` uint8 images.

    Raises:
        ParameterError: ``size`` is not a positive integer.
    """
    size = check_integer(size, "debiasing.thumbnail_size", low=1)
    out = np.empty((len(images), size * size), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = (
            cv2.resize(
                np.asarray(img, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA
            ).ravel()
            / 255.0
        )
    return out
