"""The project modules a fresh interpreter loads when it imports some modules.

The tests of ``RESULT_MODULES`` (training), ``ROW_MODULES`` (sweep) and ``SUMMARY_MODULES``
(robustness) keep each list equal to a rule over this closure.
"""

from __future__ import annotations

import subprocess
import sys


def project_import_closure(*roots: str) -> set[str]:
    """``cxr_spurious`` modules (package ``__init__`` files left out) that importing
    ``roots`` in a new Python process loads."""
    code = (
        f"import sys\nfor m in {list(roots)!r}: __import__(m)\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('cxr_spurious.')\n"
        "    and getattr(sys.modules[m], '__file__', '') and\n"
        "    not sys.modules[m].__file__.endswith('__init__.py'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())
