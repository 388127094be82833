"""``TorchModelDataset``: a model artifact ``{"state_dict", "config"}`` in one torch file.

A trained model's artifact also records the ``variant`` it was trained as, its training
``fingerprint`` (``training.checkpoints.result_fingerprint``: settings, precision, data) and
``trained_as`` (precision, device type and DDP processes it trained with), ``trained_on``
(digests of its training data and code) and ``train_set`` (the resampling and the train
row and image counts its MLflow run reports);
a dataset configured with ``variant`` refuses a file of another variant (a model copied
over another's), naming the file and both variants.

Saved with ``torch.save`` (locally to a temporary file renamed into place, so a crash
never leaves half a model); loaded with ``torch.load(weights_only=True)``, so a model file
can never run code, after ``check_torch_zip`` (no compressed entries: no zip bomb).
fsspec URLs (``s3://``...) are written and read through fsspec; their filesystem options
come from ``credentials`` (a Kedro credentials entry) and ``fs_args``. ``save`` refuses,
before anything is written, an artifact that ``load`` could not read back (a numpy scalar
or a ``Path`` in ``config``: ``weights_only=True`` refuses them), naming the key
(``artifact_bytes``, also used for the model MLflow runs log).
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io import AbstractDataset
from kedro.io.core import get_protocol_and_path

from cxr_spurious.errors import DataFormatError
from cxr_spurious.io.atomic import atomic_path
from cxr_spurious.io.safe_pickle import MODEL_FILE_MAX_BYTES, check_torch_zip


def _round_trip_error(value: Any) -> Exception | None:
    """Why ``torch.load(weights_only=True)`` cannot read ``value`` back; None if it can."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:
        return exc
    return None


def _reason(exc: Exception) -> str:
    """The line of ``exc`` that says why (torch's weights_only message runs to a page)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"unsupported global {found.group(1)}"
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _offending(value: Any, where: str = "") -> tuple[str, Any]:
    """The innermost key under ``value`` (at ``where``; "" for the artifact itself) whose
    value does not round-trip, and that value (``value`` itself when no single item is to
    blame, e.g. a numpy dict key)."""
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return where, value
    for key, item in items:
        if not isinstance(item, torch.Tensor) and _round_trip_error(item) is not None:
            return _offending(item, f"{where}[{key!r}]" if where else str(key))
    return where, value


def artifact_bytes(payload: Mapping[str, Any], source: str) -> bytes:
    """``torch.save(payload)``, checked to load back with ``torch.load(weights_only=True)``.

    Args:
        payload: The model artifact (``{"state_dict", "config", ...}``).
        source: The file it goes to, for the error message.

    Returns:
        The bytes to write.

    Raises:
        DataFormatError: a value cannot be saved or would not load back (a numpy scalar,
            a ``Path``, an object), naming the key (``config['lr']``) and its type.
    """
    buffer = io.BytesIO()
    try:
        torch.save(dict(payload), buffer)
        torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    except Exception as exc:
        where, value = _offending(payload)
        kind = type(value)
        raise DataFormatError(
            source,
            f"{where or 'the artifact'} holds a {kind.__module__}.{kind.__qualname__} "
            f"({_reason(exc)}), which torch.load(weights_only=True) would not read back; "
            "store plain Python values (float(), int(), str(), lists, dicts) or tensors",
        ) from exc
    return buffer.getvalue()


class TorchModelDataset(AbstractDataset[Mapping[str, Any], dict[str, Any]]):
    """A model artifact: a state dict and the config that rebuilds its architecture."""

    def __init__(
        self,
        filepath: str,
        architecture: str | None = None,
        variant: str | None = None,
        fs_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            filepath: Path or fsspec URL of the ``.pt`` file.
            architecture: If given, ``load`` refuses an artifact of another architecture.
            variant: If given, ``load`` refuses an artifact that does not record this variant
                (another variant's model, or a file written without the record).
            fs_args: Extra arguments for the fsspec filesystem.
            credentials: fsspec filesystem arguments from a Kedro credentials entry (e.g.
                ``key``, ``secret``, ``client_kwargs: {endpoint_url: ...}`` for s3fs);
                ``fs_args`` wins on a key given in both.
            metadata: Free-form metadata (kedro-viz layer).
        """
        protocol, path = get_protocol_and_path(filepath)
        self._protocol = protocol
        self._filepath = PurePosixPath(path)
        self._fs = fsspec.filesystem(protocol, **{**(credentials or {}), **(fs_args or {})})
        self._architecture = architecture
        self._variant = variant
        self.metadata = metadata

    @property
    def _url(self) -> str:
        return (
            str(self._filepath)
            if self._protocol == "file"
            else f"{self._protocol}://{self._filepath}"
        )

    def load(self) -> dict[str, Any]:
        """Read the artifact with ``weights_only=True`` and check its shape and architecture.

        Raises:
            DataFormatError: unreadable, not ``{"state_dict", "config"}``, or another
                architecture than the configured one (naming the file and both).
        """
        try:
            with self._fs.open(self._url, "rb") as fh:
                data = io.BytesIO(fh.read())
            if data.getbuffer()[:2] == b"PK":  # torch.save's zip: no compressed entries
                check_torch_zip(data, max_bytes=MODEL_FILE_MAX_BYTES, name=self._url)
            artifact = torch.load(data, map_location="cpu", weights_only=True)
        except (FileNotFoundError, DataFormatError):
            raise
        except Exception as exc:
            raise DataFormatError(
                self._url,
                f"not a readable torch model artifact (loaded with weights_only=True): {exc}",
            ) from exc
        if not isinstance(artifact, dict) or not {"state_dict", "config"} <= set(artifact):
            keys = sorted(artifact) if isinstance(artifact, dict) else type(artifact).__name__
            raise DataFormatError(
                self._url, f"expected a dict with 'state_dict' and 'config', got {keys}"
            )
        arch = artifact["config"].get("architecture")
        if self._architecture is not None and arch != self._architecture:
            raise DataFormatError(
                self._url,
                f"holds a '{arch}' model but this dataset expects architecture "
                f"'{self._architecture}'",
            )
        recorded = artifact.get("variant")
        if self._variant is not None and recorded != self._variant:
            problem = (
                f"holds the model of variant '{recorded}' (training fingerprint "
                f"{str(artifact.get('fingerprint', ''))[:12] or 'unknown'}), "
                f"not of '{self._variant}'"
                if recorded is not None
                else f"does not record which variant it was trained as (expected '{self._variant}')"
            )
            raise DataFormatError(
                self._url,
                f"{problem}; retrain it (`kedro run --pipeline training`) "
                "or restore the right file",
            )
        return artifact

    def save(self, data: Mapping[str, Any]) -> None:
        """Write ``{"state_dict", "config"}`` (tensors moved to CPU), with the records
        ``variant``, ``fingerprint``, ``trained_as``, ``trained_on`` and ``train_set``
        where present."""
        if not isinstance(data, Mapping) or not {"state_dict", "config"} <= set(data):
            raise DataFormatError(self._url, "can only save a dict with 'state_dict' and 'config'")
        payload = {
            "state_dict": {k: v.detach().cpu() for k, v in data["state_dict"].items()},
            "config": dict(data["config"]),
            **{
                k: data[k]
                for k in ("variant", "fingerprint", "trained_as", "trained_on", "train_set")
                if data.get(k) is not None
            },
        }
        if self._variant is not None and payload.get("variant") not in (None, self._variant):
            raise DataFormatError(
                self._url,
                f"refusing to save the model of variant '{payload['variant']}' "
                f"as '{self._variant}'",
            )
        data = artifact_bytes(payload, self._url)  # nothing is written when load would fail
        if self._protocol == "file":
            with atomic_path(self._url, suffix=".pt") as tmp:
                tmp.write_bytes(data)
            return
        parent = str(self._filepath.parent)
        self._fs.makedirs(f"{self._protocol}://{parent}", exist_ok=True)
        with self._fs.open(self._url, "wb") as fh:
            fh.write(data)

    def _exists(self) -> bool:
        return bool(self._fs.exists(self._url))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._url, "architecture": self._architecture, "variant": self._variant}
