"""Per-epoch checkpoints: one dict per epoch, written atomically, resumable.

A checkpoint holds ``model``, ``optimizer``, ``scheduler`` and ``objective`` states,
``epoch`` (completed epochs), ``config``, ``rng`` (torch CPU/CUDA RNG states), ``history``
(list of per-epoch dicts), ``best`` (``metric``, ``epoch``, ``state_dict``) and
``bad_epochs`` (early-stopping counter). Files are ``epoch_XXX.pt`` under
``<checkpoint_dir>/<variant>/``. They are a side channel for resuming only; the trained
model goes through the catalog.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.atomic import atomic_path

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^epoch_(\d+)\.pt$")
# Config keys that must agree between a checkpoint and the run resuming from it.
COMPATIBLE_KEYS: tuple[str, ...] = (
    "architecture",
    "method",
    "tasks",
    "batch_size",
    "seed",
    "objective",
)


def checkpoint_folder(checkpoint_dir: str | Path, variant: str) -> Path:
    """``<checkpoint_dir>/<variant>``."""
    return Path(checkpoint_dir) / variant


def save_checkpoint(folder: str | Path, state: Mapping[str, Any], *, keep: int = 2) -> Path:
    """Write ``state`` as ``epoch_XXX.pt`` atomically and keep only the last ``keep`` files."""
    folder = Path(folder)
    path = folder / f"epoch_{int(state['epoch']):03d}.pt"
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Checkpoint files of ``folder`` by epoch (oldest first)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(folder: str | Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest checkpoint of ``folder`` (None if there is none), checked against ``config``.

    Raises:
        DataFormatError: the file is unreadable, or was written with another architecture,
            method, task list, batch size, seed or objective (naming the file and both values).
    """
    paths = list_checkpoints(folder)
    if not paths:
        return None
    path = paths[-1]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(path, f"unreadable checkpoint: {exc}") from exc
    saved = state.get("config", {})
    for key in COMPATIBLE_KEYS:
        if saved.get(key) != config.get(key):
            what = "architecture" if key == "architecture" else f"'{key}'"
            raise DataFormatError(
                path,
                f"checkpoint was written with {what} {saved.get(key)!r} but this run uses {config.get(key)!r}; "
                "delete the checkpoint folder or set training.resume: false",
            )
    logger.info("Resuming from %s (epoch %d)", path, state["epoch"])
    return state


def rng_state() -> dict[str, Any]:
    """Global torch RNG states (CPU and, when present, CUDA)."""
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
