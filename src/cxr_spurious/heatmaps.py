"""``HeatmapSet``: saliency maps of one model and method, the saliency -> localization contract.

``maps`` holds one float map per (image, task) at map resolution (any (h, w)): the
project's methods all give maps at the model's input size, e.g. 96x96 at 96 px (the CAM
methods too: pytorch-grad-cam resizes its maps to the input), while an imported CheXlocalize
folder keeps its own; ``index`` has one row per map:

==========  =======  ===========================================================
column      dtype    meaning
==========  =======  ===========================================================
image_id    str      CheXlocalize cxr id
task        str      pathology name
prob        float    model probability for the task
gt          float    image label for the task (1 / 0 / NaN)
cxr_w       int      original image width  (CheXlocalize ``cxr_dims[0]``)
cxr_h       int      original image height (CheXlocalize ``cxr_dims[1]``)
model       str      model name (variant), e.g. ``erm``
method      str      saliency method, e.g. ``gradcam``
==========  =======  ===========================================================

A set computed by the saliency pipeline also has ``model_fingerprint`` (str): the trained
model artifact's fingerprint, which the localization tables keep and the study compares
with the model's ``test_metrics`` (``training.provenance``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_integer

INDEX_COLUMNS: tuple[str, ...] = (
    "image_id",
    "task",
    "prob",
    "gt",
    "cxr_w",
    "cxr_h",
    "model",
    "method",
)


@dataclass
class HeatmapSet:
    """Maps (n, h, w) aligned row for row with ``index``."""

    index: pd.DataFrame
    maps: np.ndarray

    def __post_init__(self) -> None:
        missing = [c for c in INDEX_COLUMNS if c not in self.index.columns]
        if missing:
            raise ContractError(
                f"HeatmapSet index lacks column(s) {missing}; expected {list(INDEX_COLUMNS)}"
            )
        if self.maps.ndim != 3 or self.maps.shape[0] != len(self.index):
            raise ContractError(
                f"HeatmapSet maps must be (n, h, w) with n = {len(self.index)} rows, "
                f"got {self.maps.shape}"
            )
        keys = self.index["image_id"].astype(str) + "|" + self.index["task"].astype(str)
        if keys.duplicated().any():
            raise ContractError(
                "HeatmapSet has duplicate (image_id, task) rows: "
                f"{list(keys[keys.duplicated()][:3])}"
            )

    def __len__(self) -> int:
        return len(self.index)

    @property
    def pairs(self) -> pd.DataFrame:
        """(image_id, task) of each row (a folder-backed set answers without reading)."""
        return self.index[["image_id", "task"]].reset_index(drop=True)

    def select(self, mask: np.ndarray | pd.Series) -> HeatmapSet:
        """Rows where ``mask`` is true, as a new ``HeatmapSet``."""
        m = np.asarray(mask, dtype=bool)
        return HeatmapSet(self.index.loc[m].reset_index(drop=True), self.maps[m])


def sample_positives_first(
    heatmaps: HeatmapSet, n: int, seed: int, *, parameter: str, positive: np.ndarray | None = None
) -> np.ndarray:
    """Row numbers of a seeded sample of at most ``n`` maps, positive rows drawn first.

    The one "positives first" sampler of the overlay figures: ``n`` rows are drawn without
    replacement from the positive rows with ``np.random.default_rng(seed)``, and the rest
    (if any) from the other rows with the same generator, so a seed picks the same maps
    on every run.

    Args:
        heatmaps: The set.
        n: Sample size (fewer rows when the set is smaller).
        seed: Seed of the local generator.
        parameter: The parameter ``n`` comes from, named by the error (e.g.
            ``saliency.overlays.n_images``).
        positive: Boolean mask of the rows drawn first; by default the rows whose image
            label is positive (``gt == 1``). An all-false mask draws uniformly.

    Returns:
        Sorted row numbers.

    Raises:
        ParameterError: ``n`` < 1, naming ``parameter``.
        ContractError: ``positive`` is not one flag per row.
    """
    n = check_integer(n, parameter, low=1)
    first = (
        heatmaps.index["gt"].to_numpy(dtype=float) == 1
        if positive is None
        else np.asarray(positive, dtype=bool)
    )
    if first.shape != (len(heatmaps),):
        raise ContractError(
            f"positive mask has shape {first.shape}; expected one flag per row ({len(heatmaps)},)"
        )
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for pool in (np.flatnonzero(first), np.flatnonzero(~first)):
        take = min(n - len(picked), pool.size)
        if take > 0:
            picked += rng.choice(pool, size=take, replace=False).tolist()
    return np.sort(np.asarray(picked, dtype=int))
