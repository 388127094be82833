"""``on_dask_worker`` answers outside Dask without importing ``distributed`` (0.6 s).

Every pooled map asks it; the answer must stay right on a real worker
(``test_dask_chunks``) and cost nothing elsewhere.
"""

from __future__ import annotations

import subprocess
import sys


def test_outside_dask_the_answer_is_no_and_distributed_stays_unimported() -> None:
    code = (
        "import sys\n"
        "from cxr_spurious.parallel import on_dask_worker\n"
        "assert 'distributed' not in sys.modules, 'imported by the module itself'\n"
        "print(on_dask_worker(), 'distributed' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


def test_with_distributed_imported_but_no_worker_the_answer_is_no() -> None:
    import distributed  # noqa: F401  (the extra is installed in the test environment)

    from cxr_spurious.parallel import on_dask_worker

    assert on_dask_worker() is False
