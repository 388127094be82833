"""``PhantomSourceDataset``: the generated phantom folder in the raw layer.

``save(PhantomRequest)`` runs the generator into the folder (atomically) unless the folder
already holds the output of the same request; ``load()`` returns the folder path, which the
ingestion pipeline reads with the phantom adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from cxr_spurious.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)
_REQUEST_FILE = ".phantom_request.json"
#: Where the pipeline keeps the generator settings, named in their errors.
_CONFIG_KEY = "ingestion.phantom"


@dataclass(frozen=True)
class PhantomRequest:
    """What to generate; ``enabled`` is False when another source is ingested."""

    enabled: bool
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    n_jobs: int = 1

    def digest(self) -> str:
        """Hash of what the request generates: the resolved config's ``fingerprint``, the
        seed and ``PHANTOM_VERSION`` (not ``n_jobs``: the output does not depend on it).

        The config is resolved (``PhantomConfig.from_dict``: defaults filled in, merged
        mappings in their fixed order), so settings that spell the same phantom give the
        same digest, and a change of a default in the code gives another. Its fingerprint
        keeps the order of the sites and demographic groups, which decides the cohort: two
        requests that list them in another order are different phantoms.

        Raises:
            ParameterError: a bad generator setting, naming its key under
                ``ingestion.phantom``.
        """
        from cxr_spurious.phantom import PHANTOM_VERSION, PhantomConfig

        fingerprint = PhantomConfig.from_dict(self.config, key=_CONFIG_KEY).fingerprint()
        blob = json.dumps(
            {"config": fingerprint, "seed": self.seed, "version": PHANTOM_VERSION}, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PhantomSourceDataset(AbstractDataset[PhantomRequest, str]):
    """The phantom generator's output folder."""

    def __init__(
        self, path: str, progress: bool = True, metadata: dict[str, Any] | None = None
    ) -> None:
        """Create the dataset.

        Args:
            path: Output folder of the generator.
            progress: Show the generator's progress bar.
            metadata: Kedro metadata.
        """
        self._path = Path(path)
        self._progress = progress
        self.metadata = metadata

    def load(self) -> str:
        """The folder path (the adapter reads it)."""
        return str(self._path.resolve())

    def save(self, data: PhantomRequest) -> None:
        """Generate the phantom unless disabled or already generated for this request."""
        if not data.enabled:
            logger.info("ingestion.source is not 'phantom': phantom generation skipped")
            return
        stamp = self._path / _REQUEST_FILE
        digest = data.digest()
        if stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
            logger.info(
                "Phantom dataset at %s is up to date (request %s); skipping generation",
                self._path,
                digest,
            )
            return
        from cxr_spurious.phantom import PhantomConfig, generate_phantom

        config = PhantomConfig.from_dict(data.config, key=_CONFIG_KEY)
        generate_phantom(
            config, self._path, seed=data.seed, n_jobs=data.n_jobs, progress=self._progress
        )
        write_text_atomic(stamp, json.dumps({"digest": digest, **asdict(data)}, default=str))

    def _exists(self) -> bool:
        return (self._path / _REQUEST_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
