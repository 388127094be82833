"""Task name tables: the CheXlocalize probability order derived from the CheXpert columns."""

from __future__ import annotations

from cxr_spurious.tasks import (
    CHEXLOCALIZE_PROB_ORDER,
    CHEXLOCALIZE_TASKS,
    CHEXPERT_OBSERVATIONS,
    task_column,
)

# ``CHEXPERT_TASKS`` of the CheXlocalize code: the order of a heatmap pickle's ``prob``.
DOCUMENTED_PROB_ORDER = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion",
    "Airspace Opacity", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip


def test_prob_order_is_the_documented_chexlocalize_order() -> None:
    assert CHEXLOCALIZE_PROB_ORDER == DOCUMENTED_PROB_ORDER


def test_prob_order_differs_from_the_csv_only_by_the_lesion_opacity_swap() -> None:
    csv = [task_column(name) for name in CHEXPERT_OBSERVATIONS]
    moved = [i for i, (a, b) in enumerate(zip(csv, CHEXLOCALIZE_PROB_ORDER)) if a != b]
    assert [csv[i] for i in moved] == ["Airspace Opacity", "Lung Lesion"]
    assert sorted(csv) == sorted(CHEXLOCALIZE_PROB_ORDER)


def test_localization_tasks_follow_the_prob_order() -> None:
    assert [t for t in CHEXLOCALIZE_PROB_ORDER if t in CHEXLOCALIZE_TASKS] == list(
        CHEXLOCALIZE_TASKS
    )
