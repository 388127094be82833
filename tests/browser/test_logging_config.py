"""``conf/logging.yml``: Kedro accepts it and it sets the levels users rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import kedro_env

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, logging
from kedro.framework.project import LOGGING  # configures logging from conf/logging.yml
names = ["cxr_spurious.pipelines.ingestion.nodes", "kedro.runner", "mlflow.store.db.utils",
         "alembic.runtime.migration", "urllib3.connectionpool", "matplotlib.font_manager",
         "PIL.PngImagePlugin", "kedro_viz.server"]
root = logging.getLogger()
print(json.dumps({
    "levels": {n: logging.getLevelName(logging.getLogger(n).getEffectiveLevel()) for n in names},
    "handlers": [type(h).__module__ + "." + type(h).__name__ for h in root.handlers],
}))
"""


def test_kedro_loads_project_logging_config() -> None:
    env = kedro_env()
    env.pop("KEDRO_LOGGING_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    levels = result["levels"]
    assert levels["cxr_spurious.pipelines.ingestion.nodes"] == "INFO"
    assert levels["kedro.runner"] == "INFO"
    noisy = {
        name: level
        for name, level in levels.items()
        if not name.startswith(("cxr_spurious", "kedro."))
    }
    assert set(noisy.values()) == {"WARNING"}, noisy
    assert result["handlers"] == ["kedro.logging.RichHandler"]
