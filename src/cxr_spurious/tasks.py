"""Task (pathology) names used across sources, and the mappings between spellings."""

from __future__ import annotations

# CheXpert CSV observation columns, in file order.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# The header of CheXpert train.csv / valid.csv, exactly.
CHEXPERT_HEADER: tuple[str, ...] = (
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    *CHEXPERT_OBSERVATIONS,
)

# The 10 CheXlocalize localization tasks.
CHEXLOCALIZE_TASKS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Airspace Opacity",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
)

# Manifest pathology columns use CheXlocalize spellings ("Airspace Opacity").
CSV_TO_TASK = {"Lung Opacity": "Airspace Opacity"}
TASK_TO_CSV = {v: k for k, v in CSV_TO_TASK.items()}


def _lesion_before_opacity(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with "Lung Lesion" and "Airspace Opacity" trading places."""
    out = list(names)
    i, j = out.index("Airspace Opacity"), out.index("Lung Lesion")
    out[i], out[j] = out[j], out[i]
    return tuple(out)


# Order of the 14-vector ``prob`` in CheXlocalize heatmap pickles (``CHEXPERT_TASKS`` of the
# CheXlocalize code): the CheXpert observations in task spelling, with Lesion and Opacity
# swapped with respect to the CheXpert CSV.
CHEXLOCALIZE_PROB_ORDER: tuple[str, ...] = _lesion_before_opacity(
    tuple(CSV_TO_TASK.get(name, name) for name in CHEXPERT_OBSERVATIONS)
)

# Pathologies the phantom generator draws (a subset of the CheXlocalize tasks).
PHANTOM_TASKS: tuple[str, ...] = (
    "Pneumothorax",
    "Pleural Effusion",
    "Lung Lesion",
    "Cardiomegaly",
    "Airspace Opacity",
)

# Spurious objects the phantom draws masks for.
SPURIOUS_OBJECTS: tuple[str, ...] = ("Chest Tube", "Laterality Marker", "Support Device")


def task_column(name: str) -> str:
    """Canonical manifest column for a pathology name (CSV spelling -> task spelling)."""
    return CSV_TO_TASK.get(name, name)
