"""Import rules of the library: read every module under ``src/cxr_spurious`` with ``ast``.

* only the wiring (``pipelines/``, ``pipeline_registry.py``, ``settings.py``, ``hooks.py``)
  imports ``cxr_spurious.pipelines``;
* ``robustness`` does not import ``debiasing`` (shared manifest helpers live in
  ``data/contract.py``);
* ``sources/adapters`` does not import ``phantom`` (the ``attributes.csv`` header lives in
  ``data/contract.py``);
* no library module loads a ``cxr_spurious`` module with ``importlib.import_module`` except
  the adapter registry (``sources/adapters/base.py``, a name -> module table); everything else
  is a plain import a reader can follow.

Imports inside functions and relative imports count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "cxr_spurious"
WIRING_FILES = frozenset({"pipeline_registry.py", "settings.py", "hooks.py"})
DYNAMIC_IMPORT_ALLOWED = frozenset({"sources/adapters/base.py"})


def _module_name(rel: Path) -> str:
    parts = ["cxr_spurious", *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(rel: Path) -> str:
    name = _module_name(rel)
    return name if rel.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(source: str, rel: Path) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` of every import statement (``from a import b``
    yields ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(rel).split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def dynamic_imports(source: str) -> Iterator[tuple[int, str]]:
    """``(line, argument)`` of every ``import_module(...)`` / ``__import__(...)`` call
    whose argument is not a literal outside ``cxr_spurious`` (``?`` when not a literal)."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = (
            func.attr
            if isinstance(func, ast.Attribute)
            else func.id
            if isinstance(func, ast.Name)
            else ""
        )
        if name not in {"import_module", "__import__"}:
            continue
        arg = node.args[0]
        target = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"
        if target == "?" or target.startswith("cxr_spurious") or target.startswith("."):
            yield node.lineno, target


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(rel: Path, source: str) -> list[str]:
    """Every broken rule of one module (``rel``: its path under ``src/cxr_spurious``)."""
    where = rel.as_posix()
    wiring = rel.parts[0] == "pipelines" or where in WIRING_FILES
    rules = [
        ("imports the wiring", "cxr_spurious.pipelines", not wiring),
        ("robustness imports debiasing", "cxr_spurious.debiasing", rel.parts[0] == "robustness"),
        (
            "an adapter imports the phantom generator",
            "cxr_spurious.phantom",
            rel.parts[:2] == ("sources", "adapters"),
        ),
    ]
    out: dict[tuple[int, str], str] = {}
    for line, module in imported_modules(source, rel):
        for rule, package, applies in rules:
            if applies and _within(module, package):
                out.setdefault((line, rule), f"{where}:{line} {rule} ({module})")
    if not wiring and where not in DYNAMIC_IMPORT_ALLOWED:
        for line, target in dynamic_imports(source):
            out[(line, "import_module")] = (
                f"{where}:{line} loads {target!r} with import_module; use a plain import"
            )
    return [out[k] for k in sorted(out)]


def _library_files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_package_is_found() -> None:
    files = _library_files()
    assert len(files) > 50 and (PKG / "sources" / "contract.py") in files


def test_library_follows_the_import_rules() -> None:
    found = [
        v
        for p in _library_files()
        for v in violations(p.relative_to(PKG), p.read_text(encoding="utf-8"))
    ]
    assert not found, "import rule(s) broken:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("path", "source", "expected"),
    [
        (
            "training/distributed.py",
            "from cxr_spurious.pipelines.training import nodes\n",
            "imports the wiring",
        ),
        (
            "training/distributed.py",
            "def f():\n    import cxr_spurious.pipelines.training.nodes\n",
            "imports the wiring",
        ),
        ("datasets/x.py", "from ..pipelines.training import nodes\n", "imports the wiring"),
        (
            "robustness/evaluation.py",
            "from cxr_spurious.debiasing.groups import bin_ages\n",
            "robustness imports debiasing",
        ),
        (
            "robustness/evaluation.py",
            "from ..debiasing import features\n",
            "robustness imports debiasing",
        ),
        (
            "sources/adapters/chexlocalize.py",
            "from cxr_spurious.phantom.writer import X\n",
            "imports the phantom",
        ),
        (
            "sources/adapters/chexlocalize.py",
            "from cxr_spurious import phantom\n",
            "imports the phantom",
        ),
        (
            "training/objectives.py",
            "import importlib\nimportlib.import_module('cxr_spurious.debiasing.objectives')\n",
            "import_module",
        ),
        (
            "training/objectives.py",
            "from importlib import import_module\nimport_module(name)\n",
            "import_module",
        ),
    ],
)
def test_the_rules_catch_a_violation(path: str, source: str, expected: str) -> None:
    found = violations(Path(path), source)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("pipelines/training/pipeline.py", "from cxr_spurious.pipelines.training import nodes\n"),
        ("pipeline_registry.py", "from cxr_spurious.pipelines import training\n"),
        ("sources/adapters/base.py", "import importlib\nimportlib.import_module(module_name)\n"),
        ("robustness/evaluation.py", "from cxr_spurious.sources.contract import bin_ages\n"),
        ("io/x.py", "import importlib\nimportlib.import_module('pycocotools.mask')\n"),
        ("datasets/x.py", "from .pipelines_io import x\n"),
    ],
)
def test_the_rules_allow_the_exceptions(path: str, source: str) -> None:
    assert violations(Path(path), source) == []
