"""``bench_kernels_ab.py``: the kernels against an earlier revision, on a tiny generated set.

Against ``HEAD`` the two sides are the same code: every kernel prints a row, the results
agree (the script stops otherwise), and a revision without the module is refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(tmp_path: Path, rev: str) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "set"
    folder.mkdir(exist_ok=True)
    return subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_kernels_ab.py"),
            "--rev",
            rev,
            "--dir",
            str(folder),
            "--n",
            "3",
            "--maps",
            "6",
            "--rounds",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_against_head_every_kernel_prints_a_row(tmp_path: Path) -> None:
    done = _run(tmp_path, "HEAD")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "\n6 maps, 1 rounds; earlier kernels: HEAD\n" in out, out  # after the generator's line
    for kernel in (
        "cell bounds",
        "exact extremes",
        "Otsu mask runs",
        r"tuning counts \(7 thresholds\)",
        "histogram",
    ):
        assert re.search(rf"^{kernel}\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.MULTILINE), out


def test_a_revision_without_the_module_is_refused(tmp_path: Path) -> None:
    done = _run(tmp_path, "no-such-revision")
    assert done.returncode != 0
    assert "no-such-revision" in done.stderr
