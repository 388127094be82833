"""The saliency README's export-evaluation command labels the maps with the split they came from.

Before, the command (``kedro run --pipeline localization --env chexlocalize --params
"chexlocalize_dir=...,map_dir=erm.gradcam,gt_segmentations=..."``) left out ``split``, so
the ``chexlocalize`` environment's default ``split=val`` set ``saliency.split: val`` and the
tuning tables labelled the exported maps, made on the base study's ``saliency.split: test``,
as val.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
README = ROOT / "src" / "cxr_spurious" / "pipelines" / "saliency" / "README.md"
COMMAND = re.compile(
    r'kedro run --pipeline localization --env chexlocalize \\\n\s*--params "([^"]*)"'
)


def _runtime_params(text: str) -> dict[str, str]:
    """``--params "k=v,k2=v2"`` as Kedro splits it (on commas, then on the first ``=``)."""
    pairs = [item.partition("=") for item in text.split(",")]
    return {key.strip(): value.strip() for key, _, value in pairs}


def test_the_export_command_gives_the_split_the_maps_were_made_on() -> None:
    commands = COMMAND.findall(README.read_text(encoding="utf-8"))
    assert commands, f"no chexlocalize evaluation command found in {README}"
    base = yaml.safe_load((CONF / "base" / "parameters_saliency.yml").read_text(encoding="utf-8"))
    made_on = base["saliency"]["split"]  # the split the export's maps come from
    assert made_on == "test"  # the base study; the command's label must follow it
    for text in commands:
        runtime = _runtime_params(text)
        assert runtime.get("split") == made_on, text
        loader = ProjectConfigLoader(
            conf_source=str(CONF), env="chexlocalize", runtime_params=runtime, **CONFIG_LOADER_ARGS
        )
        # the label the tuning tables write in their `split` column
        assert loader["parameters"]["saliency"]["split"] == made_on
