"""Training data over the memory-mapped image cache.

``build_training_table`` checks the inputs and turns the (resampled) manifest into one
row per training example with its cache row, labels, sample weight, augmentation flag,
Group-DRO group and whether its location label is used. ``CacheBatches`` reads whole
batches from the cache (one fancy-indexed read per array) and builds dense targets and
augmentations; ``GlobalBatchSampler`` shuffles with a per-epoch ``torch.Generator`` and
gives each DDP rank its slice of the same global batch, so one process and N processes
see the same global batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from cxr_spurious.augment import augment_pair
from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.training.config import DENSE_SUPERVISIONS

logger = logging.getLogger(__name__)

LABEL_PREFIX = "y_"


def build_training_table(
    manifest: pd.DataFrame,
    cache: ImageCache,
    cfg: Mapping[str, Any],
    *,
    name: str = "resampled_manifest",
) -> pd.DataFrame:
    """One row per example (train rows may repeat), with everything the loader needs.

    Args:
        manifest: The resampled manifest (or the plain manifest): ``image_id``, ``split``,
            the task columns, the subgroup column, optionally ``weight``, ``augment``, ``group``.
        cache: The image cache holding every image of ``manifest``.
        cfg: Resolved training config (``tasks``, ``supervision``, ``location_fraction``,
            ``subgroup``, ``seed``).
        name: Dataset name used in error messages.

    Returns:
        Columns ``image_id, split, row, y_<task>..., weight, augment, group, loc, subgroup``.

    Raises:
        ContractError: a task column is missing.
        DataFormatError: a task has no positive (or no negative) in train, location
            labels are required but missing (naming the image ids), or the subgroup
            column holds a value other than 0 / 1 / empty.
        DataFormatError: no validation rows (the model is selected on them).
        ParameterError: the validation rows cannot define ``selection_metric`` (no task
            with both classes for ``auroc``; see ``_check_robust_selection`` for
            ``robust_auroc``), or ``batch_size`` exceeds the train rows (the loader drops
            the incomplete last batch, so no step would run).
    """
    tasks = list(cfg["tasks"])
    missing = [t for t in tasks if t not in manifest.columns]
    if missing:
        raise ContractError(
            f"{name}: missing target task column(s) {missing} (training.tasks); "
            f"it has task-like columns {list(manifest.attrs.get('tasks', []))}"
        )
    for col in ("image_id", "split"):
        if col not in manifest.columns:
            raise ContractError(f"{name}: missing column '{col}'")
    table = pd.DataFrame(
        {
            "image_id": manifest["image_id"].astype(str).to_numpy(),
            "split": manifest["split"].astype(str).to_numpy(),
        }
    )
    table["row"] = cache.rows(table["image_id"])
    for task in tasks:
        cache.task_index(task)
        table[LABEL_PREFIX + task] = pd.to_numeric(manifest[task], errors="coerce").to_numpy(
            dtype=float
        )
    n = len(manifest)
    table["weight"] = (
        manifest["weight"].to_numpy(dtype=float) if "weight" in manifest else np.ones(n)
    )
    table["augment"] = (
        manifest["augment"].fillna(False).to_numpy(dtype=bool)
        if "augment" in manifest
        else np.zeros(n, bool)
    )
    table["group"] = (
        manifest["group"].fillna(-1).to_numpy(dtype=np.int64)
        if "group" in manifest
        else np.full(n, -1, np.int64)
    )
    table["subgroup"] = subgroup_column(manifest, str(cfg["subgroup"]), name)
    _check_labels(table, tasks, name)
    _check_fits_a_batch(table, int(cfg["batch_size"]), name)
    if cfg.get("selection_metric") == "robust_auroc":
        _check_robust_selection(table, tasks, str(cfg["subgroup"]), name)
    else:
        _check_auroc_selection(table, tasks, name)
    table["loc"] = select_location_labels(table, cache, cfg, name)
    table = table.reset_index(drop=True)
    # the resampling's label travels with the table (``outputs.resampling_name``)
    table.attrs.update(
        {k: manifest.attrs[k] for k in ("resampling", "strategy") if manifest.attrs.get(k)}
    )
    return table


def split_training_table(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train rows (fitted on) and the validation rows (selected on) of a training
    table, each with a fresh index: what ``engine.fit`` receives and digests."""
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    return train, val


def subgroup_column(
    manifest: pd.DataFrame, subgroup: str, name: str, *, warn_missing: bool = True
) -> np.ndarray:
    """The ``training.subgroup`` column as floats 1 / 0 / NaN (the robust AUROC's spurious
    feature); all NaN when the manifest has no such column (a dataset without that
    attribute: the robust AUROC is then undefined), with a warning if ``warn_missing``.

    Raises:
        DataFormatError: a value that is neither empty nor 0 / 1 (e.g. a text attribute).
    """
    if subgroup not in manifest.columns:
        if not warn_missing:
            return np.full(len(manifest), np.nan)
        logger.warning(
            "%s has no column '%s' (training.subgroup): the robust AUROC is undefined (NaN)",
            name,
            subgroup,
        )
        return np.full(len(manifest), np.nan)
    raw = manifest[subgroup]
    values = pd.to_numeric(raw, errors="coerce")
    bad = raw.notna().to_numpy() & ~values.isin((0, 1)).to_numpy()
    if bad.any():
        examples = manifest.loc[bad, ["image_id", subgroup]].head(3).to_dict("records")
        raise DataFormatError(
            name,
            f"column '{subgroup}' (training.subgroup) must be 1 (has the spurious feature), "
            f"0 or empty; {int(bad.sum())} row(s) are not, e.g. {examples}",
        )
    return values.to_numpy(dtype=float)


def _check_robust_selection(
    table: pd.DataFrame, tasks: Sequence[str], subgroup: str, name: str
) -> None:
    """``selection_metric: robust_auroc`` needs, in the validation rows, for some task,
    positives without the spurious feature and negatives with it; otherwise every epoch's
    value is NaN and selection would keep the first epoch without a word."""
    val = table[table["split"] == "val"]
    s = val["subgroup"].to_numpy(dtype=float)
    for task in tasks:
        y = val[LABEL_PREFIX + task].to_numpy(dtype=float)
        if ((y == 1) & (s == 0)).any() and ((y == 0) & (s == 1)).any():
            return
    known = int(np.isfinite(s).sum())
    raise ParameterError(
        "training.selection_metric",
        f"robust_auroc is undefined on {name}'s validation split: it needs positives without "
        f"and negatives with '{subgroup}' (training.subgroup), and {known} of {len(val)} "
        "validation rows have a known value (the SIIM adapter, for one, puts every "
        "tube-labelled patient in test); select on auroc, or give validation rows that "
        "attribute",
    )


def _check_fits_a_batch(table: pd.DataFrame, batch_size: int, name: str) -> None:
    """The train loader drops an incomplete last batch (``engine``: ``drop_last``), so with
    fewer train rows than ``batch_size`` no optimiser step would run and the untrained
    weights would be kept as the selected model."""
    n_train = int((table["split"] == "train").sum())
    if n_train < batch_size:
        raise ParameterError(
            "training.batch_size",
            f"{batch_size} is more than {name}'s {n_train} train rows: the training loader "
            "drops an incomplete batch, so no step would run; lower it to at most "
            f"{n_train} (or give more training images)",
        )


def _check_auroc_selection(table: pd.DataFrame, tasks: Sequence[str], name: str) -> None:
    """``selection_metric: auroc`` needs some task with both classes in the validation
    rows; otherwise every epoch's value is NaN and selection would keep the first epoch."""
    val = table[table["split"] == "val"]
    for task in tasks:
        y = val[LABEL_PREFIX + task]
        if (y == 1).any() and (y == 0).any():
            return
    raise ParameterError(
        "training.selection_metric",
        f"auroc is undefined on {name}'s validation split: no task of {list(tasks)} has both "
        f"a positive and a negative among its {len(val)} validation rows, so every epoch "
        "would score NaN and the first would be kept; give the validation split both classes "
        "(e.g. more images, or other split fractions)",
    )


def _check_labels(table: pd.DataFrame, tasks: Sequence[str], name: str) -> None:
    train = table[table["split"] == "train"]
    if train.empty:
        raise DataFormatError(name, "has no train rows (split == 'train')")
    if not (table["split"] == "val").any():
        raise DataFormatError(
            name, "has no validation rows (split == 'val'); the model is selected on them"
        )
    for task in tasks:
        y = train[LABEL_PREFIX + task]
        if not (y == 1).any():
            raise DataFormatError(
                name,
                f"task '{task}' has no positive label in train ({int((y == 0).sum())} negatives, "
                f"{int(y.isna().sum())} unknown); it cannot be learned",
                where=f"column '{task}'",
            )
        if not (y == 0).any():
            raise DataFormatError(
                name,
                f"task '{task}' has no negative label in train; it cannot be learned",
                where=f"column '{task}'",
            )
    if (table["weight"] < 0).any() or not np.isfinite(table["weight"]).all():
        raise DataFormatError(name, "column 'weight' must hold finite values >= 0")


def location_known(table: pd.DataFrame, cache: ImageCache, tasks: Sequence[str]) -> np.ndarray:
    """(n, T) bool: the location label is known (a mask exists, or the label is negative)."""
    cols = [cache.task_index(t) for t in tasks]
    has = np.asarray(cache.has_mask)[table["row"].to_numpy()][:, cols]
    negative = np.stack([table[LABEL_PREFIX + t].to_numpy() == 0 for t in tasks], axis=1)
    return has | negative


def select_location_labels(
    table: pd.DataFrame, cache: ImageCache, cfg: Mapping[str, Any], name: str = "resampled_manifest"
) -> np.ndarray:
    """Which train rows use their location label (dense supervisions only).

    ``location_fraction`` of the distinct train images (rounded, at least one for a positive
    fraction, with a warning) are drawn with ``seed`` among those whose location labels are
    known for every task; repeated rows of one image share the draw. Val/test rows never
    use location labels in the loss.

    Raises:
        DataFormatError: more images are needed than have masks; names the first ones missing.
    """
    loc = np.zeros(len(table), dtype=bool)
    if cfg["supervision"] not in DENSE_SUPERVISIONS:
        return loc
    train = (table["split"] == "train").to_numpy()
    known = location_known(table, cache, cfg["tasks"]).all(axis=1)
    ids = pd.unique(table.loc[train, "image_id"])
    per_id = pd.Series(known[train], index=table.loc[train, "image_id"]).groupby(level=0).all()
    candidates = np.array([i for i in ids if per_id[i]], dtype=object)
    fraction = float(cfg["location_fraction"])
    needed = int(round(fraction * len(ids)))
    if needed == 0 and fraction > 0 and len(ids):
        needed = 1  # a dense run with no location label at all would be an ERM run
        logger.warning(
            "training.location_fraction=%s of %d train images rounds to none; using the "
            "location labels of 1 of %d images instead (variant %s)",
            cfg["location_fraction"], len(ids), len(ids), cfg.get("variant", "?"),
        )  # fmt: skip
    if needed > len(candidates):
        lacking = [i for i in ids if not per_id[i]]
        raise DataFormatError(
            name,
            f"supervision '{cfg['supervision']}' with "
            f"location_fraction={cfg['location_fraction']} needs location labels "
            f"for {needed} train images but only {len(candidates)} have them; "
            f"missing masks (has_mask false for a positive label) for e.g. {lacking[:5]}",
            where="image cache has_mask",
        )
    rng = np.random.default_rng(int(cfg["seed"]))
    chosen = set(rng.choice(candidates, size=needed, replace=False).tolist()) if needed else set()
    loc[train] = table.loc[train, "image_id"].isin(chosen).to_numpy()
    return loc


class GlobalBatchSampler:
    """Per-epoch shuffled global batches, each split into equal rank slices.

    Global batch ``k`` of epoch ``e`` is ``perm_e[k*B:(k+1)*B]`` for every world size, so
    a DDP run with per-rank batch ``B / world`` sees the same examples per step as one
    process with batch ``B``. Incomplete last batches are dropped in training.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if batch_size % world:
            raise ParameterError(
                "training.batch_size",
                f"global batch {batch_size} must be divisible by the number of processes {world}",
            )
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = (
            n,
            batch_size,
            seed,
            shuffle,
            drop_last,
        )
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(int(self.seed) * 100_003 + self.epoch)
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        order = self._order()
        per_rank = self.batch_size // self.world
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            if len(batch) < self.batch_size and (self.drop_last or self.world > 1):
                break  # ranks must get equal slices; an incomplete batch is dropped
            if self.world > 1:
                batch = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield self.epoch, batch.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last and self.world == 1 else 0)


def dense_targets(cache: ImageCache, rows: np.ndarray, cfg: Mapping[str, Any]) -> np.ndarray:
    """``(n, T, S, S)`` float32 targets of a dense supervision for cache ``rows``.

    ``seg``/``multitask``: pixel masks; ``box``: filled boxes; ``coarse``: masks dilated by
    ``coarse_radius`` px (``coarse_mode: dilate``) or the ``grid_cell`` cells a mask touches
    (``grid``). ``target_dilation`` > 0 dilates seg / box targets too (thin lesions).
    """
    cols = [cache.task_index(t) for t in cfg["tasks"]]
    source = cache.boxes if cfg["supervision"] == "box" else cache.masks
    order = np.argsort(rows, kind="stable")
    picked = np.empty((len(rows), len(cols), cache.size, cache.size), dtype=np.float32)
    picked[order] = np.asarray(source[rows[order]])[:, cols].astype(np.float32)
    radius = (
        int(cfg["coarse_radius"]) if cfg["supervision"] == "coarse" else int(cfg["target_dilation"])
    )
    if cfg["supervision"] == "coarse" and cfg["coarse_mode"] == "grid":
        return grid_cells(picked, int(cfg["grid_cell"]))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        for idx in np.ndindex(picked.shape[:2]):
            if picked[idx].any():
                picked[idx] = cv2.dilate(picked[idx], kernel)
    return picked


def grid_cells(masks: np.ndarray, cell: int) -> np.ndarray:
    """Mark every ``cell`` x ``cell`` grid cell that a mask touches (coarse supervision)."""
    s = masks.shape[-1]
    n_cells = -(-s // cell)
    padded = np.zeros((*masks.shape[:-2], n_cells * cell, n_cells * cell), dtype=masks.dtype)
    padded[..., :s, :s] = masks
    blocks = padded.reshape(*masks.shape[:-2], n_cells, cell, n_cells, cell).max(axis=(-3, -1))
    return np.repeat(np.repeat(blocks, cell, axis=-2), cell, axis=-1)[..., :s, :s].astype(
        np.float32
    )


class CacheBatches(torch.utils.data.Dataset):
    """Whole batches read from the image cache: ``dataset[(epoch, indices)] -> dict``.

    Batch keys: ``image (B,1,S,S)`` float in [0, 1], ``labels (B,T)`` (NaN -> 0),
    ``valid (B,T)`` bool, ``weight (B,)``, ``group (B,)`` long, ``index (B,)`` long (table
    position), and for dense supervisions ``target (B,T,S,S)`` and ``dense_valid (B,T)`` bool.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        cache: ImageCache,
        cfg: Mapping[str, Any],
        *,
        train: bool,
        render: str | None = None,
    ) -> None:
        self.cache, self.cfg, self.train, self.render = cache, dict(cfg), train, render
        self.tasks = list(cfg["tasks"])
        self.rows = table["row"].to_numpy(dtype=np.int64)
        self.ids = table["image_id"].tolist()
        self.labels = table[[LABEL_PREFIX + t for t in self.tasks]].to_numpy(dtype=np.float32)
        self.weight = table["weight"].to_numpy(dtype=np.float32)
        self.group = table["group"].to_numpy(dtype=np.int64)
        self.augment = table["augment"].to_numpy(dtype=bool) & train
        self.dense = train and cfg["supervision"] in DENSE_SUPERVISIONS
        self.dense_valid = (
            (location_known(table, cache, self.tasks) & table["loc"].to_numpy()[:, None])
            if self.dense
            else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    def _images(self, idx: np.ndarray) -> np.ndarray:
        if self.render is not None and self.render != "original":
            return (
                self.cache.render(self.render, [self.ids[i] for i in idx]).astype(np.float32)
                / 255.0
            )
        rows = self.rows[idx]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.cache.size, self.cache.size), dtype=np.float32)
        out[order] = np.asarray(self.cache.images[rows[order]], dtype=np.float32) / 255.0
        return out

    def __getitem__(self, key: tuple[int, Sequence[int]]) -> dict[str, torch.Tensor]:
        epoch, indices = key
        idx = np.asarray(indices, dtype=np.int64)
        images = self._images(idx)
        labels = self.labels[idx]
        batch: dict[str, torch.Tensor] = {}
        targets = dense_targets(self.cache, self.rows[idx], self.cfg) if self.dense else None
        for j, i in enumerate(idx):
            if self.augment[i]:
                rng = np.random.default_rng([int(self.cfg["seed"]), int(epoch), int(i)])
                images[j], tgt = augment_pair(
                    images[j], None if targets is None else targets[j], rng
                )
                if targets is not None:
                    targets[j] = tgt
        batch["image"] = torch.from_numpy(images[:, None])
        batch["labels"] = torch.from_numpy(np.nan_to_num(labels, nan=0.0))
        batch["valid"] = torch.from_numpy(np.isfinite(labels))
        batch["weight"] = torch.from_numpy(self.weight[idx])
        batch["group"] = torch.from_numpy(self.group[idx])
        batch["index"] = torch.from_numpy(idx)
        if targets is not None:
            batch["target"] = torch.from_numpy(targets)
            batch["dense_valid"] = torch.from_numpy(self.dense_valid[idx])
        return batch


def make_loader(
    dataset: CacheBatches,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    drop_last: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``CacheBatches`` driven by a ``GlobalBatchSampler`` (batch_size=None)."""
    sampler = GlobalBatchSampler(
        len(dataset),
        batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        rank=rank,
        world=world,
    )
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
