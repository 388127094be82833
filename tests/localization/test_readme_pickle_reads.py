"""The localization README's "Speed" section states how often a pickle is read, as measured.

Before, it said "pickles are read once for the index and once for the pass", against its
own "Data contract", ``docs/ARCHITECTURE.md`` and ``localization.evaluate`` (a folder not
indexed yet is indexed by the evaluation pass: each pickle is read once).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cxr_spurious.io import chexlocalize as cio
from cxr_spurious.localization.evaluate import evaluate_heatmap_set

from .test_single_read import GRID, _folder, reads  # noqa: F401 (``reads`` is a fixture)

README = (
    Path(__file__).resolve().parents[2]
    / "src"
    / "cxr_spurious"
    / "pipelines"
    / "localization"
    / "README.md"
)


def _speed_bullet_on_pickles() -> str:
    """The bullet of the README's ``## Speed`` section that says how pickles are read."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Speed\n", 1)[1].split("\n## ", 1)[0]
    bullets = [" ".join(b.split()) for b in section.split("\n- ")[1:]]
    about = [b for b in bullets if "pickle" in b and "read" in b]
    assert about, f"no bullet on reading pickles in the Speed section of {README}"
    return about[0]


def test_the_speed_section_states_the_measured_reads(tmp_path, reads) -> None:  # noqa: F811
    folder, gt = _folder(tmp_path)
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)  # what the dataset returns
    listing = list(reads)
    evaluate_heatmap_set(lazy, gt, tuning_grid=GRID, progress=False, workers=1)
    per_file = Counter(reads[len(listing) :])
    # measured: the listing reads the first file only, the pass each file once
    assert listing == [str(lazy.paths[0])]
    assert per_file == Counter(str(p) for p in lazy.paths)
    bullet = _speed_bullet_on_pickles()
    assert "reads each pickle once" in bullet, bullet
    assert "once for the index and once for the pass" not in bullet, bullet
