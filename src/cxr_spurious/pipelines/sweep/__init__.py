"""The shortcut sweep (issue 17): a grid of models, their reliance on planted artefacts,
and whether saliency detects it (README.md in this folder)."""

from cxr_spurious.pipelines.sweep.pipeline import create_cell_template, create_pipeline

__all__ = ["create_cell_template", "create_pipeline"]
