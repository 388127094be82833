"""``docs/ARCHITECTURE.md`` describes the tree and the pipelines as they are.

* Every folder of the package that holds Python modules (``__pycache__`` aside; the
  implicit namespace package ``training/`` included) is named in the doc as
  ``<folder>/`` (relative to ``src/cxr_spurious/``), and every top-level module as
  ``<name>.py``.
* Every backticked path the doc names exists: a token with a ``/`` under
  ``src/cxr_spurious/`` or the repository root (generated files under Kedro's
  ``data/NN_layer/`` folders aside), a bare ``<name>.py`` somewhere in the repository, and a
  dotted ``cxr_spurious...`` name as a package, module or name defined in that module.
* The Mermaid data-flow picture has one node per stage (folder under ``pipelines/``) and an
  edge ``a -> b`` exactly where stage ``a`` writes a dataset that stage ``b`` reads, labelled
  with exactly those datasets (``{m}`` standing for each of ``STUDY_MODELS``).
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path

import pytest

from cxr_spurious.variants import STUDY_MODELS

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "src" / "cxr_spurious"
DOC = REPO / "docs" / "ARCHITECTURE.md"
PKG_PREFIX = "src/cxr_spurious/"

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
PATH_TOKEN = re.compile(r"[\w.\-/]+")
PY_NAME = re.compile(r"\w+\.py")
DOTTED = re.compile(r"cxr_spurious(?:\.\w+)+")
# Files a run writes (data/01_raw ... data/08_reporting): named in the doc, absent in a clone.
GENERATED = re.compile(r"data/\d\d_\w+(?:/.*)?")
SEARCHED = ("src", "tests", "benchmarks", "scripts", "notebooks")

MERMAID = re.compile(r"^```mermaid\n(.*?)^```", re.MULTILINE | re.DOTALL)
NODE = re.compile(r'(\w+)\["[^"]*"\]')
EDGE = re.compile(r'(\w+) -->\|"([^"]*)"\| (\w+)')


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _spans() -> list[str]:
    """Backticked code spans outside fenced blocks (a span may wrap a line)."""
    prose = FENCE.sub("", _doc())
    assert prose.count("`") % 2 == 0, "docs/ARCHITECTURE.md has an unpaired backtick"
    return [" ".join(s.split()) for s in SPAN.findall(prose)]


def _path_tokens() -> list[str]:
    return [s for s in _spans() if "/" in s and PATH_TOKEN.fullmatch(s)]


def _code_folders() -> list[str]:
    """Folders of the package holding Python modules, relative, with a trailing slash."""
    return sorted(
        f"{d.relative_to(PKG).as_posix()}/"
        for d in PKG.rglob("*")
        if d.is_dir() and "__pycache__" not in d.parts and any(d.glob("*.py"))
    )


def test_every_package_folder_and_top_level_module_is_described() -> None:
    named = {t.removeprefix(PKG_PREFIX) for t in _path_tokens() if t.endswith("/")}
    missing = [f for f in _code_folders() if f not in named]
    assert not missing, (
        f"docs/ARCHITECTURE.md does not describe the folder(s) {missing} "
        f"(write each as `<folder>/`, relative to {PKG_PREFIX})"
    )
    spans = set(_spans())
    modules = sorted(p.name for p in PKG.glob("*.py"))
    missing = [m for m in modules if m not in spans]
    assert not missing, f"docs/ARCHITECTURE.md does not describe the module(s) {missing}"


def _path_exists(token: str) -> bool:
    if GENERATED.fullmatch(token):
        return True
    for base in [REPO] if token.startswith(PKG_PREFIX) else [PKG, REPO]:
        target = base / token
        if target.is_dir() if token.endswith("/") else target.exists():
            return True
    return False


def test_every_named_path_exists() -> None:
    bad = sorted({t for t in _path_tokens() if not _path_exists(t)})
    assert not bad, (
        f"docs/ARCHITECTURE.md names path(s) that exist neither under {PKG_PREFIX} nor under "
        f"the repository root: {bad}"
    )


@cache
def _python_file_names() -> frozenset[str]:
    names = {p.name for p in REPO.glob("*.py")}
    for folder in SEARCHED:
        names |= {p.name for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts}
    return frozenset(names)


def test_every_named_module_file_exists() -> None:
    bad = sorted({s for s in _spans() if PY_NAME.fullmatch(s) and s not in _python_file_names()})
    assert not bad, f"docs/ARCHITECTURE.md names module file(s) that do not exist: {bad}"


def _defined_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _resolves(dotted: str) -> bool:
    """A package, a module, or a name (``Class`` / ``Class.member``) defined in one."""
    parts = dotted.split(".")[1:]
    path = PKG
    while parts and (path / parts[0]).is_dir():
        path = path / parts.pop(0)
    if not parts:
        return True
    module = path / f"{parts[0]}.py"
    if module.is_file():
        parts.pop(0)
    else:
        module = path / "__init__.py"
    if not parts:
        return True
    if not module.is_file() or len(parts) > 2:
        return False
    body = ast.parse(module.read_text(encoding="utf-8")).body
    if parts[0] not in _defined_names(body):
        return False
    if len(parts) == 1:
        return True
    classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == parts[0]]
    return any(parts[1] in _defined_names(c.body) for c in classes)


def test_every_named_cxr_spurious_name_exists() -> None:
    bad = sorted({s for s in _spans() if DOTTED.fullmatch(s) and not _resolves(s)})
    assert not bad, f"docs/ARCHITECTURE.md names module(s) or name(s) that do not exist: {bad}"


def _stages() -> list[str]:
    return sorted(p.parent.name for p in (PKG / "pipelines").glob("*/pipeline.py"))


@cache
def _exchanged() -> dict[tuple[str, str], frozenset[str]]:
    """Datasets each stage writes and another stage reads, from the pipelines themselves."""
    pipes = {
        s: importlib.import_module(f"cxr_spurious.pipelines.{s}.pipeline").create_pipeline()
        for s in _stages()
    }
    out = {}
    for a, left in pipes.items():
        for b, right in pipes.items():
            shared = left.all_outputs() & {i for i in right.inputs() if not i.startswith("params")}
            if a != b and shared:
                out[(a, b)] = frozenset(shared)
    return out


def _picture() -> tuple[set[str], dict[tuple[str, str], frozenset[str]]]:
    blocks = MERMAID.findall(_doc())
    assert len(blocks) == 1, f"expected one ```mermaid block, found {len(blocks)}"
    nodes: set[str] = set()
    edges: dict[tuple[str, str], frozenset[str]] = {}
    lines = [line.strip() for line in blocks[0].splitlines()]
    assert lines[0] == "flowchart LR", f"the picture must start with 'flowchart LR': {lines[0]!r}"
    for line in filter(None, lines[1:]):
        if node := NODE.fullmatch(line):
            nodes.add(node.group(1))
        elif edge := EDGE.fullmatch(line):
            a, label, b = edge.groups()
            assert (a, b) not in edges, f"edge {a} -> {b} drawn twice"
            names = [n.strip() for n in label.split(",")]
            expanded = {n.replace("{m}", m) for n in names for m in STUDY_MODELS}
            edges[(a, b)] = frozenset(expanded)
        else:
            pytest.fail(
                f'unparsed line in the picture (use id["label"] or a -->|"x, y"| b): {line}'
            )
    return nodes, edges


def test_picture_has_one_node_per_stage() -> None:
    nodes, edges = _picture()
    stages = set(_stages())
    assert nodes == stages, (
        f"picture nodes {sorted(nodes)} differ from the stages {sorted(stages)}: "
        f"missing {sorted(stages - nodes)}, unknown {sorted(nodes - stages)}"
    )
    undeclared = {n for pair in edges for n in pair} - nodes
    assert not undeclared, f"edges use undeclared node(s) {sorted(undeclared)}"


def test_picture_edges_are_the_pipelines_data_flow() -> None:
    _, drawn = _picture()
    real = _exchanged()
    missing = {f"{a} -> {b}": sorted(real[(a, b)]) for a, b in sorted(real.keys() - drawn.keys())}
    assert not missing, f"the picture lacks the edge(s) {missing}"
    extra = sorted(f"{a} -> {b}" for a, b in drawn.keys() - real.keys())
    assert not extra, f"the picture draws edge(s) no dataset flows along: {extra}"
    wrong = {
        f"{a} -> {b}": {
            "drawn only": sorted(drawn[(a, b)] - names),
            "not drawn": sorted(names - drawn[(a, b)]),
        }
        for (a, b), names in sorted(real.items())
        if drawn[(a, b)] != names
    }
    assert not wrong, f"edge labels differ from the datasets the stages exchange: {wrong}"
