"""Features for clustering rows: model embeddings or cached-image thumbnails, and
alignment of per-image tables with the manifest."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, ParameterError


def embedding_columns(table: pd.DataFrame, *, name: str = "embeddings") -> list[str]:
    """The ``e0..e{D-1}`` columns of an embedding table, in order.

    Raises:
        ContractError: no ``image_id`` column or no ``e<i>`` columns.
    """
    cols = [c for c in table.columns if isinstance(c, str) and c.startswith("e") and c[1:].isdigit()]
    if "image_id" not in table.columns or not cols:
        raise ContractError(f"{name}: expected columns image_id, e0..e{{D-1}}; got {list(table.columns)[:8]}")
    return sorted(cols, key=lambda c: int(c[1:]))


def align_table(manifest: pd.DataFrame, table: pd.DataFrame, *, name: str, split: str | None = None) -> pd.DataFrame:
    """Rows of ``table`` in manifest order (optionally only the rows of one split).

    Args:
        manifest: The manifest (``image_id``, ``split``).
        table: A per-image table with an ``image_id`` column.
        name: Dataset name for error messages.
        split: Restrict the required ids to this split (``None``: all rows).

    Returns:
        ``table`` reindexed on the manifest ids (index = manifest index of those rows).

    Raises:
        ContractError: duplicated ids in ``table`` or manifest ids missing from it.
    """
    if "image_id" not in table.columns:
        raise ContractError(f"{name}: no image_id column; got {list(table.columns)[:8]}")
    ids = table["image_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ContractError(f"{name}: image_id must be unique; duplicated {list(dup.unique()[:5])}")
    wanted = manifest if split is None else manifest[manifest["split"] == split]
    want_ids = wanted["image_id"].astype(str)
    missing = ~want_ids.isin(ids)
    if missing.any():
        raise ContractError(
            f"{name} is misaligned with the manifest: {int(missing.sum())} of {len(want_ids)} "
            f"{split or 'manifest'} image_id(s) are absent, e.g. {list(want_ids[missing][:3])}"
        )
    out = table.assign(image_id=ids).set_index("image_id").loc[want_ids.to_numpy()]
    out.index = wanted.index
    return out


def embedding_matrix(manifest: pd.DataFrame, embeddings: pd.DataFrame, *, split: str | None = None) -> np.ndarray:
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
    if int(size) < 1:
        raise ParameterError("debiasing.thumbnail_size", f"must be >= 1, got {size}")
    out = np.empty((len(images), size * size), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = cv2.resize(np.asarray(img, dtype=np.float32), (size, size), interpolation=cv2.INTER_AREA).ravel() / 255.0
    return out
