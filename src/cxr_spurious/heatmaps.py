"""``HeatmapSet``: saliency maps of one model and method, the saliency -> localization contract.

``maps`` holds one float map per (image, task) at map resolution (any (h, w), e.g. 12x12
for Grad-CAM or 96x96 for a dense model); ``index`` has one row per map:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError

INDEX_COLUMNS: tuple[str, ...] = ("image_id", "task", "prob", "gt", "cxr_w", "cxr_h", "model", "method")


@dataclass
class HeatmapSet:
    """Maps (n, h, w) aligned row for row with ``index``."""

    index: pd.DataFrame
    maps: np.ndarray

    def __post_init__(self) -> None:
        missing = [c for c in INDEX_COLUMNS if c not in self.index.columns]
        if missing:
            raise ContractError(f"HeatmapSet index lacks column(s) {missing}; expected {list(INDEX_COLUMNS)}")
        if self.maps.ndim != 3 or self.maps.shape[0] != len(self.index):
            raise ContractError(f"HeatmapSet maps must be (n, h, w) with n = {len(self.index)} rows, got {self.maps.shape}")
        keys = self.index["image_id"].astype(str) + "|" + self.index["task"].astype(str)
        if keys.duplicated().any():
            raise ContractError(f"HeatmapSet has duplicate (image_id, task) rows: {list(keys[keys.duplicated()][:3])}")

    def __len__(self) -> int:
        return len(self.index)

    def select(self, mask: np.ndarray | pd.Series) -> HeatmapSet:
        """Rows where ``mask`` is true, as a new ``HeatmapSet``."""
        m = np.asarray(mask, dtype=bool)
        return HeatmapSet(self.index.loc[m].reset_index(drop=True), self.maps[m])
