"""The phantom CXR generator: the project's embedded default data set.

Synthetic frontal chest radiographs with exact pathology outlines, spurious objects with
their own masks (a chest tube correlated with pneumothorax, a site laterality marker,
support devices), patient demographics, patient-disjoint splits with per-split
confounding, counterfactual renders (also paired ``with_<kind>`` artefact renders for the
shortcut sweep, ``phantom/artefacts.py``) and a simulated human benchmark, written in the
CheXpert / CheXlocalize on-disk formats.

    from cxr_spurious.phantom import PhantomConfig, generate_phantom, example_grid
    cfg = PhantomConfig.from_dict({"n_images": 400})
    generate_phantom(cfg, "data/01_raw/phantom", seed=0, n_jobs=2)
"""

from cxr_spurious.phantom.artefacts import ARTEFACT_KINDS, render_name
from cxr_spurious.phantom.cohort import ImageRecord, build_cohort
from cxr_spurious.phantom.config import PhantomConfig
from cxr_spurious.phantom.figures import example_grid
from cxr_spurious.phantom.render import (
    RenderedImage,
    RenderSpec,
    lung_mask,
    render_image,
    render_versions,
)
from cxr_spurious.phantom.writer import PHANTOM_VERSION, generate_phantom

__all__ = [
    "ARTEFACT_KINDS",
    "PHANTOM_VERSION",
    "ImageRecord",
    "PhantomConfig",
    "RenderSpec",
    "RenderedImage",
    "build_cohort",
    "example_grid",
    "generate_phantom",
    "lung_mask",
    "render_image",
    "render_name",
    "render_versions",
]
