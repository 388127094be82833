"""On a CPU-only clean clone the only skips are CUDA-only tests, each marked ``cuda``.

A broken import of the project's own code must fail, not skip, and no test may read data
from outside the repository (``/work/shared`` or ``../shared``), where a user's clone has none.
An expected failure is a skip too (``xfail``; ``xfail_strict`` in pyproject.toml makes an
unexpected pass fail), so the guard sees every way a test can avoid running: ``skip(...)``
(also a bare ``skip`` imported from pytest), ``mark.skip`` / ``mark.skipif`` (with or
without arguments), ``xfail``, ``importorskip``, ``unittest.skip*`` and ``raise SkipTest``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests import conftest

TESTS = Path(__file__).resolve().parents[1]
# Platform guards that never skip on the Linux CPU machines the project supports, and the
# browser harness (skips without Chromium locally, fails on CI; `make test` installs it).
ALLOWED_SKIPS = {
    ("browser/harness.py", "pytest.skip(message)"),
    ("browser/test_harness.py", 'Path("/proc").is_dir()'),
    ("localization/test_fast_kernels.py", "glibc"),
    ("data_contract/test_cache_faults.py", 'Path("/proc/self/stat").exists()'),
}
SKIP_CALL = re.compile(
    r"\bskip\(|\.skipif\b|mark\.skip\b|\bxfail\b|importorskip\(|unittest\.skip"
    r"|\bskip(?:If|Unless)\(|raise\s+(?:\w+\.)*(?:SkipTest|skip\.Exception)\b"
)
OWN_IMPORTORSKIP = re.compile(r"importorskip\(\s*[\"']cxr_spurious")
# a path built into ../shared or /work/shared (mentions in prose are fine)
OUTSIDE_DATA = re.compile(r"Path\(\s*[\"'][^\"']*shared|/\s*[\"']shared[\"']")


def _test_sources(root: Path = TESTS) -> list[tuple[str, list[str]]]:
    own = {Path(__file__).resolve(), Path(conftest.__file__).resolve()}
    return [
        (path.relative_to(root).as_posix(), path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
        if path.resolve() not in own and "fixtures" not in path.relative_to(root).parts[:1]
    ]


def test_no_importorskip_of_the_project_and_no_data_outside_the_repo() -> None:
    bad = [
        f"{name}:{i}: {line.strip()}"
        for name, lines in _test_sources()
        for i, line in enumerate(lines, start=1)
        if OWN_IMPORTORSKIP.search(line) or OUTSIDE_DATA.search(line)
    ]
    assert not bad, (
        "import the project's modules plainly and read tests/fixtures only:\n" + "\n".join(bad)
    )


def _unlisted_skips(sources: list[tuple[str, list[str]]]) -> list[str]:
    """``file:line: text`` of each skip that is neither CUDA-only nor in ``ALLOWED_SKIPS``."""
    bad = []
    for name, lines in sources:
        for i, line in enumerate(lines, start=1):
            if not SKIP_CALL.search(line) or line.lstrip().startswith("#"):
                continue
            near = lines[max(0, i - 4) : i + 3]
            if any("@pytest.mark.cuda" in other for other in near):
                continue
            statement = " ".join(lines[i - 1 : i + 2])  # a call wrapped by the formatter
            if any(name == f and needle in statement for f, needle in ALLOWED_SKIPS):
                continue
            bad.append(f"{name}:{i}: {line.strip()}")
    return bad


def test_every_skip_is_cuda_only_or_a_listed_platform_guard() -> None:
    bad = _unlisted_skips(_test_sources())
    assert not bad, (
        "skips that are neither CUDA-only (@pytest.mark.cuda) nor listed:\n" + "\n".join(bad)
    )


# Each way a test can avoid running, as it would appear in a test file (line 3 of the file).
SKIPPING_LINES = [
    "@pytest.mark.skip",
    '@pytest.mark.skip(reason="later")',
    "@pytest.mark.skipif(sys.platform == 'win32', reason='posix')",
    "@pytest.mark.xfail",
    '@pytest.mark.xfail(reason="known bug", strict=False)',
    "pytestmark = pytest.mark.skip",
    "pytestmark = [pytest.mark.xfail]",
    '    pytest.skip("no data")',
    '    skip("no data")  # from pytest import skip',
    '    pytest.xfail("known bug")',
    '    xfail("known bug")',
    'torch = pytest.importorskip("torch")',
    '@unittest.skip("later")',
    '@unittest.skipIf(True, "later")',
    '@unittest.skipUnless(False, "later")',
    '@skipIf(True, "later")',
    '    raise unittest.SkipTest("later")',
    '    raise SkipTest("later")',
    '    raise pytest.skip.Exception("later")',
]
# Lines that only mention skipping.
HARMLESS_LINES = [
    "def _skip_rows(frame):",
    "rows = frame.iloc[n_skip:]",
    "    with pytest.raises(pytest.skip.Exception, match='chromium not found'):",
    '# pytest.skip("a comment")',
]


@pytest.mark.parametrize("line", SKIPPING_LINES)
def test_the_guard_sees_every_way_to_skip(tmp_path: Path, line: str) -> None:
    test_file = tmp_path / "pkg" / "test_fake.py"
    test_file.parent.mkdir()
    test_file.write_text(f"import pytest\n\n{line}\ndef test_x():\n    pass\n", encoding="utf-8")
    assert _unlisted_skips(_test_sources(tmp_path)) == [f"pkg/test_fake.py:3: {line.strip()}"]


@pytest.mark.parametrize("line", HARMLESS_LINES)
def test_the_guard_ignores_lines_that_do_not_skip(tmp_path: Path, line: str) -> None:
    (tmp_path / "test_fake.py").write_text(f"import pytest\n\n{line}\n", encoding="utf-8")
    assert _unlisted_skips(_test_sources(tmp_path)) == []


def test_a_cuda_marked_skip_passes_the_guard(tmp_path: Path) -> None:
    (tmp_path / "test_fake.py").write_text(
        "import pytest\n\n@pytest.mark.cuda\n@pytest.mark.skipif(True, reason='x')\n"
        "def test_x():\n    pass\n",
        encoding="utf-8",
    )
    assert _unlisted_skips(_test_sources(tmp_path)) == []


def test_xfail_is_strict() -> None:
    """An ``xfail`` that passes must fail the run, not pass quietly as XPASS."""
    import tomllib

    root = TESTS.parent
    options = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert options["tool"]["pytest"]["ini_options"]["xfail_strict"] is True


class _Item:
    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.added: list[pytest.MarkDecorator] = []

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name == "cuda" and self.cuda else None

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.added.append(marker)


@pytest.mark.parametrize("has_cuda", [False, True])
def test_cuda_marked_tests_skip_only_without_a_device(
    monkeypatch: pytest.MonkeyPatch, has_cuda: bool
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    gpu, cpu = _Item(cuda=True), _Item(cuda=False)
    conftest.pytest_collection_modifyitems(None, [gpu, cpu])  # type: ignore[arg-type]
    assert cpu.added == []
    if has_cuda:
        assert gpu.added == []
    else:
        assert [m.mark.name for m in gpu.added] == ["skip"]
        assert "CUDA-only" in gpu.added[0].kwargs["reason"]
