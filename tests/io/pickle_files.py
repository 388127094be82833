"""Writing a crafted pickle's bytes under a CheXlocalize-style map name (the loaders' tests)."""

from __future__ import annotations

from pathlib import Path

MAP_NAME = "p1_study1_view1_frontal_Edema_map.pkl"


def write_pickle(tmp_path: Path, data: bytes, name: str = MAP_NAME) -> Path:
    """``data`` written to ``tmp_path / name``; the path."""
    path = tmp_path / name
    path.write_bytes(data)
    return path
