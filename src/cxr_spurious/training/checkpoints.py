"""Per-epoch checkpoints: one dict per epoch, written atomically, resumable.

A checkpoint holds ``model``, ``optimizer``, ``scheduler`` and ``objective`` states,
``epoch`` (completed epochs), ``config``, ``rng`` (torch CPU/CUDA RNG states), ``history``
(list of per-epoch dicts), ``best`` (``metric``, ``epoch``, ``state_dict``) and
``bad_epochs`` (early-stopping counter), and ``fingerprint`` / ``fingerprint_items``: what
determines the result (every training parameter that changes the weights, the resolved
precision and device type, the number of processes, a digest of the training data, the
SHA-256 of the pretrained weights file when ``training.pretrained`` is set (the path alone
would let a run continue a model started from other weights put at the same path), and a
digest of the source of every project module the training code runs, ``RESULT_MODULES``:
a checkpoint written before the model, loss or data code changed is not continued under
the new code).
Files are ``epoch_XXX.pt`` under ``<checkpoint_dir>/<variant>/<fingerprint[:16]>/``, so
runs with different settings never share a folder: a fresh run starts its own folder over
and never resumes or prunes another configuration's checkpoints, and ``resume`` refuses a
checkpoint written with other settings, naming what differs. The settings left out of the
fingerprint are checked when a run resumes instead (``load_latest_checkpoint``): a
checkpoint past ``training.epochs``, or one whose steps ``training.max_steps`` no longer
allows, is refused; the stopping rules are decided again with this run's settings
(``engine.fit``). They are a side channel for resuming only; the trained model goes through
the catalog.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.atomic import atomic_path, write_text_atomic
from cxr_spurious.io.safe_pickle import MODEL_FILE_MAX_BYTES, check_torch_zip

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^epoch_(\d+)\.pt$")
FINGERPRINT_FILE = "fingerprint.json"
# Training keys that do not change the weights a run arrives at: where files go, how
# progress is shown, how many checkpoints are kept, evaluation-only settings, and the
# stopping rules (a run stopped early continues along the same trajectory; a resumed run
# decides them again with its own settings). ``max_steps`` changes the weights once it cuts
# an epoch short: ``load_latest_checkpoint`` refuses such a checkpoint under another value.
NOT_RESULT_KEYS: frozenset[str] = frozenset(
    {
        "resume",
        "checkpoint_dir",
        "keep_checkpoints",
        "progress",
        "num_workers",
        "n_boot",
        "ci_level",
        "max_dropped_share",
        "max_steps",
        "time_budget_s",
        "patience",
        "variants",
    }
)
# Config keys that must agree between a checkpoint and the run resuming from it.
COMPATIBLE_KEYS: tuple[str, ...] = (
    "architecture",
    "supervision",
    "tasks",
    "batch_size",
    "seed",
    "objective",
)


# The project modules whose code decides the weights a training run arrives at: the import
# closure of ``training.engine`` and ``training.distributed`` inside the package (a test
# keeps this list equal to it). Their sources are digested into the fingerprint as
# ``_code``, so a checkpoint is resumed only by the code that wrote it.
RESULT_MODULES: tuple[str, ...] = (
    "cxr_spurious.augment",
    "cxr_spurious.debiasing.objectives",
    "cxr_spurious.errors",
    "cxr_spurious.io.atomic",
    "cxr_spurious.io.images",
    "cxr_spurious.io.masks",
    "cxr_spurious.io.safe_pickle",
    "cxr_spurious.logging_filters",
    "cxr_spurious.models.base",
    "cxr_spurious.models.classifiers",
    "cxr_spurious.models.ops",
    "cxr_spurious.models.pretrained",
    "cxr_spurious.models.registry",
    "cxr_spurious.models.unet",
    "cxr_spurious.progress",
    "cxr_spurious.sources.cache",
    "cxr_spurious.stats.bootstrap",
    "cxr_spurious.stats.metrics",
    "cxr_spurious.stats.seed_param",
    "cxr_spurious.training.checkpoints",
    "cxr_spurious.training.config",
    "cxr_spurious.training.data",
    "cxr_spurious.training.device",
    "cxr_spurious.training.distributed",
    "cxr_spurious.training.engine",
    "cxr_spurious.training.objectives",
)


def code_digests(modules: tuple[str, ...] = RESULT_MODULES) -> dict[str, str]:
    """``{module: sha256 of its source file, first 16 hex digits}`` for ``modules``."""
    out = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"result module {name!r} has no source file")
        out[name] = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]
    return out


# Config keys renamed since checkpoints were first written -> the name they had then. The
# fingerprint digests such a key under its old name, so a run's digest (and its checkpoint
# folder) is the one it had before the rename and its checkpoints stay resumable; the
# setting is the same one, only its name changed. A checkpoint's stored ``config`` is read
# under either name.
FINGERPRINT_NAMES: dict[str, str] = {"supervision": "method"}
_CURRENT_NAMES = {old: new for new, old in FINGERPRINT_NAMES.items()}


_HASH_CHUNK_BYTES = 1 << 20


def weights_digest(pretrained: str) -> str:
    """SHA-256 (hex) of the weights file ``training.pretrained`` names.

    The file is the one the model loads (``models.pretrained.resolve_weights_file``: a
    path, or a torchvision weights name in the torch hub cache), read in 1 MiB chunks
    (a weights file is ~100 MB; it is hashed once per run).

    Raises:
        ParameterError: ``pretrained`` names no local file.
    """
    # imported here: the robustness summaries import this module for its digests, and their
    # code digest (pipelines.robustness.nodes.SUMMARY_MODULES) does not cover the models
    from cxr_spurious.models.pretrained import resolve_weights_file

    digest = hashlib.sha256()
    with resolve_weights_file(pretrained).open("rb") as fh:
        while block := fh.read(_HASH_CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_folder(checkpoint_dir: str | Path, variant: str) -> Path:
    """``<checkpoint_dir>/<variant>``."""
    return Path(checkpoint_dir) / variant


def result_fingerprint(
    cfg: Mapping[str, Any], *, data: str, precision: str, device: str, world: int = 1
) -> tuple[str, dict[str, Any]]:
    """Digest of everything that determines a training run's result, and its items.

    Args:
        cfg: Resolved training config. Every key except ``NOT_RESULT_KEYS`` counts (a key
            of ``FINGERPRINT_NAMES`` under its old name); ``epochs`` counts only with the
            cosine schedule (whose learning rates depend on it), so a constant- or
            step-schedule run can be resumed for more epochs.
        data: Digest of the training data (tables and image cache).
        precision: Resolved training precision (``fp32`` / ``bf16``).
        device: Device type (``cpu`` / ``cuda``).
        world: Number of processes (DDP world size): 1- and N-process runs give different
            weights (per-process BatchNorm statistics and loss means). Digested as
            ``_world`` when above 1.

    The items also hold ``_code``, ``code_digests()``: the source digest of each module of
    ``RESULT_MODULES``, and, when ``cfg["pretrained"]`` is set, ``_weights``: the SHA-256
    of its file (``weights_digest``; ``pretrained`` itself is only the path or name, the
    same for any file put there). A run without pretrained weights has no ``_weights``
    item: its items are what they were before the item existed.

    Returns:
        The hex digest and the dict it was computed from (JSON-ready).
    """
    items = {
        FINGERPRINT_NAMES.get(k, k): v for k, v in sorted(cfg.items()) if k not in NOT_RESULT_KEYS
    }
    if cfg.get("schedule") != "cosine":
        items.pop("epochs", None)
    items = json.loads(json.dumps(items, sort_keys=True, default=str))
    items.update(
        {"_data": data, "_precision": precision, "_device": device, "_code": code_digests()}
    )
    if int(world) != 1:
        items["_world"] = int(world)
    if cfg.get("pretrained"):
        items["_weights"] = weights_digest(str(cfg["pretrained"]))
    blob = json.dumps(items, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), items


def data_digest(*tables: pd.DataFrame, extra: str = "") -> str:
    """SHA-256 of ``tables`` and ``extra``.

    The tables are hashed as CSV (values, columns and index); ``extra`` is a cache fingerprint.
    """
    digest = hashlib.sha256(extra.encode())
    for table in tables:
        digest.update(table.to_csv().encode())
    return digest.hexdigest()


def training_data_digest(train: pd.DataFrame, val: pd.DataFrame, cache: Any) -> str:
    """The ``_data`` item of ``result_fingerprint``: the train and validation rows a run
    trains and selects on (``training.data.split_training_table``) and the image cache's
    fingerprint (``ImageCache.fingerprint``: its image ids, settings and source files)."""
    return data_digest(train, val, extra=str(cache.fingerprint))


def changed_code_modules(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The ``RESULT_MODULES`` whose source digest differs between two ``code_digests()``
    (a module present on one side only counts as changed), sorted."""
    return sorted(m for m in set(old) | set(new) if old.get(m) != new.get(m))


def _describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    names = {
        "_data": "training data",
        "_precision": "precision",
        "_device": "device",
        "_world": "number of processes (world size)",
        "_weights": "pretrained weights (SHA-256 of the training.pretrained file)",
    }
    defaults = {"_world": 1}  # not digested for one process
    parts = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
        if key == "_code" and old != new:
            parts.append(_describe_code_change(old, new))
        elif old != new:
            label = names.get(key, f"training.{_CURRENT_NAMES.get(key, key)}")
            parts.append(f"{label}: checkpoint {old!r}, this run {new!r}")
    return "; ".join(parts) or "unknown settings"


def _describe_code_change(old: Any, new: Any) -> str:
    if not isinstance(old, Mapping):
        return "training code: the checkpoint predates code digests (an older version)"
    changed = changed_code_modules(old, new or {})
    return "training code: the source of " + ", ".join(changed) + " changed since the checkpoint"


def prepare_run_folder(
    variant_dir: str | Path,
    fingerprint: str,
    items: Mapping[str, Any],
    *,
    resume: bool,
    rank: int = 0,
) -> Path:
    """The checkpoint folder of this configuration under ``variant_dir``.

    A fresh run (``resume`` false) empties its own folder (rank 0) and leaves every other
    configuration's folder alone. With ``resume``, when this configuration has no checkpoint
    but another one does (or an old unfingerprinted ``epoch_XXX.pt`` lies in
    ``variant_dir``), the run stops and names the settings that differ rather than silently
    starting over or continuing the other run.

    Raises:
        DataFormatError: resume asked for, and only checkpoints of other settings exist.
    """
    variant_dir = Path(variant_dir)
    folder = variant_dir / fingerprint[:16]
    if not resume:
        if rank == 0 and folder.exists():
            logger.info(
                "Fresh run (training.resume: false): "
                "removing this configuration's old checkpoints in %s",
                folder,
            )
            shutil.rmtree(folder)
    elif not list_checkpoints(folder):
        legacy = list_checkpoints(variant_dir)
        if legacy:
            raise DataFormatError(
                legacy[-1],
                "checkpoint written without a fingerprint (by an older version), so it cannot be "
                "shown to match this run; delete it or set training.resume: false",
            )
        others = sorted(
            (p for p in variant_dir.glob(f"*/{FINGERPRINT_FILE}")
             if p.parent != folder and list_checkpoints(p.parent)),
            key=lambda p: p.stat().st_mtime,
        )  # fmt: skip
        if others:
            newest = others[-1]
            try:
                saved = json.loads(newest.read_text())
            except (OSError, ValueError) as exc:
                raise DataFormatError(newest, f"unreadable checkpoint fingerprint: {exc}") from exc
            raise DataFormatError(
                newest.parent,
                "training.resume: true, but the only checkpoints of this variant were written with "
                f"other settings ({_describe_difference(saved, items)}); run with the checkpoint's "
                "settings to resume it, or set training.resume: false to start this configuration",
            )
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            folder / FINGERPRINT_FILE, json.dumps(dict(items), indent=1, sort_keys=True)
        )
    return folder


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


def load_latest_checkpoint(
    folder: str | Path,
    config: Mapping[str, Any],
    *,
    fingerprint: tuple[str, Mapping[str, Any]] | None = None,
    epoch_steps: int | None = None,
) -> dict[str, Any] | None:
    """The newest checkpoint of ``folder`` (None if there is none), checked against ``config``.

    Besides the fingerprint, the settings it leaves out must allow continuing the checkpoint
    to this run's result (``check_continuation``): ``training.epochs`` at least the
    checkpoint's epoch, and ``training.max_steps`` neither below its steps nor changed
    after it cut the checkpoint's last epoch short.

    Args:
        folder: A run folder from ``prepare_run_folder``.
        config: This run's resolved config.
        fingerprint: This run's ``result_fingerprint`` (digest, items); when given, the
            checkpoint's digest must equal it.
        epoch_steps: Optimiser steps of a whole epoch (the training loader's length); tells
            whether ``max_steps`` cut the checkpoint's last epoch short (None: assume it did
            when the checkpoint reached its ``max_steps``).

    Raises:
        DataFormatError: the file is unreadable, is not a complete checkpoint (not a dict,
            or without a key of ``CHECKPOINT_KEYS``), was written with other settings, or
            cannot be continued to this run's result (naming the file and what differs).
    """
    paths = list_checkpoints(folder)
    if not paths:
        return None
    path = paths[-1]
    check_torch_zip(path, max_bytes=MODEL_FILE_MAX_BYTES)  # no compressed entries (zip bomb)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(path, f"unreadable checkpoint: {exc}") from exc
    if not isinstance(loaded, dict):
        raise DataFormatError(
            path,
            f"not a training checkpoint: it holds a {type(loaded).__name__}, not the dict "
            "save_checkpoint writes; delete it or set training.resume: false",
        )
    state: dict[str, Any] = loaded
    if (
        fingerprint is not None
        and "fingerprint" in state
        and state["fingerprint"] != fingerprint[0]
    ):
        differs = _describe_difference(state.get("fingerprint_items") or {}, fingerprint[1])
        raise DataFormatError(
            path,
            f"checkpoint was written with other settings ({differs}); "
            "delete the checkpoint folder or set training.resume: false",
        )
    check_checkpoint_keys(path, state)
    saved = state["config"]
    for key in COMPATIBLE_KEYS:
        value = saved.get(key, saved.get(FINGERPRINT_NAMES.get(key, key)))
        if value != config.get(key):
            what = "architecture" if key == "architecture" else f"'{key}'"
            raise DataFormatError(
                path,
                f"checkpoint was written with {what} {value!r} "
                f"but this run uses {config.get(key)!r}; "
                "delete the checkpoint folder or set training.resume: false",
            )
    check_continuation(path, state, config, epoch_steps=epoch_steps)
    logger.info("Resuming from %s (epoch %d)", path, state["epoch"])
    return state


# What a checkpoint must hold, and of which type, for a run to resume from it: the keys
# ``engine.save_epoch_checkpoint`` writes (``TrainState.to_checkpoint`` and the states of
# the model, optimiser, scheduler and RNG) that resuming reads unconditionally.
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "global_step": int,
    "bad_epochs": int,
    "history": list,
    "best": (dict, type(None)),
    "stopped": str,
    "fingerprint": str,
    "fingerprint_items": dict,
    "config": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
}


def check_checkpoint_keys(path: str | Path, state: Mapping[str, Any]) -> None:
    """Refuse a checkpoint payload that lacks a key of ``CHECKPOINT_KEYS`` or holds one of
    another type (a truncated or foreign file that still unpickles), so that resuming
    fails naming the file rather than with a ``KeyError`` or ``AttributeError`` later.

    Raises:
        DataFormatError: naming the file, the missing keys and those of the wrong type.
    """
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    wrong = [
        f"'{key}' is a {type(state[key]).__name__}"
        for key, kind in CHECKPOINT_KEYS.items()
        if key in state and not isinstance(state[key], kind)
    ]
    if missing or wrong:
        problems = ([f"missing {', '.join(repr(k) for k in missing)}"] if missing else []) + wrong
        raise DataFormatError(
            path,
            f"not a complete training checkpoint ({'; '.join(problems)}); expected the keys "
            f"{', '.join(CHECKPOINT_KEYS)} as save_checkpoint writes them: delete the file "
            "(the run resumes from the one before, or starts over) or set "
            "training.resume: false",
        )


def check_continuation(
    path: str | Path,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    epoch_steps: int | None = None,
) -> None:
    """Refuse a checkpoint that this run cannot continue to its own result.

    The fingerprint leaves out ``epochs`` (except with the cosine schedule) and the stopping
    rules, since a run continued for more epochs, or stopped earlier or later, follows the
    same trajectory. That holds only forward: a checkpoint that has trained more epochs than
    ``config['epochs']``, or more optimiser steps than ``config['max_steps']``, holds weights
    this run would never reach; and once ``max_steps`` cut an epoch short, the weights
    depend on it, so the checkpoint continues only under the same ``max_steps``.

    Args:
        path: The checkpoint file (named in the error).
        state: The loaded checkpoint (``epoch``, ``global_step``, ``history``, ``config``).
        config: This run's resolved config.
        epoch_steps: Optimiser steps of a whole epoch (see ``load_latest_checkpoint``).

    Raises:
        DataFormatError: naming the setting, the checkpoint's value and this run's.
    """
    epoch, epochs = int(state["epoch"]), int(config["epochs"])
    if epoch > epochs:
        raise DataFormatError(
            path,
            f"checkpoint has {epoch} completed epochs, more than this run's training.epochs "
            f"({epochs}); a resumed run cannot train fewer epochs than its checkpoint: set "
            f"training.epochs to {epoch} or more to continue it, or training.resume: false "
            "to start over",
        )
    steps = int(state.get("global_step", 0))
    saved_max = state.get("config", {}).get("max_steps")
    new_max = config.get("max_steps")
    history = state.get("history") or []
    last_steps = int(history[-1]["steps"]) if history else 0
    cut_short = (
        saved_max is not None
        and steps >= int(saved_max)
        and (epoch_steps is None or last_steps < int(epoch_steps))
    )
    if cut_short and saved_max != new_max:
        raise DataFormatError(
            path,
            f"training.max_steps {saved_max!r} cut the checkpoint's last epoch (epoch {epoch}) "
            f"short after {steps} optimiser steps, but this run has training.max_steps "
            f"{'null' if new_max is None else new_max}; the checkpoint's weights depend on "
            f"where that epoch was cut: run with training.max_steps: {saved_max} to resume it, "
            "or set training.resume: false to start over",
        )
    if new_max is not None and steps > int(new_max):
        raise DataFormatError(
            path,
            f"checkpoint has taken {steps} optimiser steps, more than this run's "
            f"training.max_steps ({new_max}); set training.max_steps to {steps} or more "
            "(or null) to continue it, or training.resume: false to start over",
        )


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
