"""End to end: ``kedro run --pipeline ingestion`` on each real source's fixture tree.

Runs in a throwaway copy of the project configuration (``kedro_project`` in
tests/conftest.py), so nothing is written into the repository's ``data/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.sources.contract import validate_manifest

from .fixtures import (
    MIMIC_IMAGES,
    MURA_STUDIES,
    NIH_ROWS,
    build_chexpert,
    build_mimic,
    build_mura,
    build_nih,
    build_siim,
)


def _chexpert(base: Path) -> tuple[Path, str, int]:
    return build_chexpert(base), "", 13


def _siim(base: Path) -> tuple[Path, str, int]:
    return build_siim(base).root, ",ingestion.tube_labels=cxr_tube_dict.pkl", 8


def _nih(base: Path) -> tuple[Path, str, int]:
    return build_nih(base), "", len(NIH_ROWS)


def _mimic(base: Path) -> tuple[Path, str, int]:
    root = build_mimic(base)
    return root, f",ingestion.mimic_iv_dir={base / 'mimic-iv'}", len(MIMIC_IMAGES)


def _mura(base: Path) -> tuple[Path, str, int]:
    return build_mura(base), "", sum(int(s[4]) for s in MURA_STUDIES)


BUILDERS: dict[str, Callable[[Path], tuple[Path, str, int]]] = {
    "chexpert": _chexpert,
    "siim_acr": _siim,
    "nih_cxr14": _nih,
    "mimic_cxr": _mimic,
    "mura": _mura,
}


@pytest.mark.integration
@pytest.mark.parametrize("source", sorted(BUILDERS))
def test_kedro_ingestion_run(
    source: str, tmp_path: Path, kedro_project: Path, run_kedro: Callable[..., object]
) -> None:
    root, extra, n_images = BUILDERS[source](tmp_path / "data")
    # Kedro requires <project>/src; the package itself is imported from the installed checkout.
    (kedro_project / "src").mkdir(exist_ok=True)
    run_kedro(
        kedro_project,
        "run",
        "--pipeline",
        "ingestion",
        "--params",
        f"ingestion.source={source},ingestion.root={root},ingestion.n_jobs=1,ingestion.cache.size=32{extra}",
    )
    primary = kedro_project / "data" / "03_primary"
    manifest = pd.read_parquet(primary / "manifest.parquet")
    tasks = [c for c in manifest.columns if c not in ("image_id",)] and manifest.attrs.get("tasks")
    validate_manifest(manifest, tasks or None)
    assert len(manifest) == n_images and set(manifest["source"]) == {source}
    segmentations = json.loads((primary / "gt_segmentations.json").read_text())
    if source in ("siim_acr", "nih_cxr14"):
        assert segmentations and set(segmentations) <= set(manifest["image_id"])
    else:
        assert segmentations == {}
    produced = [p for p in (kedro_project / "data").rglob("*") if p.is_file()]
    assert any(p.suffix == ".npy" for p in produced)  # the image cache was built
    images = next(np.load(p, mmap_mode="r") for p in produced if p.name == "images.npy")
    assert images.shape[0] == n_images and images.dtype == np.uint8 and images.max() > 0
