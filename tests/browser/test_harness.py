"""The browser-test harness itself: ports, process groups, DOM text, the CI rule."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from tests.browser import harness
from tests.browser.harness import (
    ServerError,
    free_port,
    port_is_free,
    serve,
    texts_of_class,
    visible_text,
)

# A parent that never listens and a child (same process group) that serves HTTP: killing
# only the parent would leave the port taken, as `kedro viz run` does.
PARENT_WITH_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "http.server", sys.argv[1], "--bind", "127.0.0.1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
open(sys.argv[2], "w").write(str(child.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_free_port_is_bindable_and_in_kedro_viz_range() -> None:
    port = free_port()
    assert 0 < port <= 49151
    assert port_is_free(port)


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to check child processes")
def test_serve_stops_the_whole_process_group(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "child.pid"
    command = [sys.executable, "-c", PARENT_WITH_CHILD, str(port), str(pid_file)]
    with serve(
        command,
        cwd=tmp_path,
        env=dict(os.environ),
        port=port,
        ready_path="/",
        log_path=tmp_path / "log",
        timeout=30,
    ) as server:
        child = int(pid_file.read_text())
        assert harness.http_status(server.url + "/") == 200
        assert _alive(child) and not port_is_free(port)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child process survived the server's stop"
    assert port_is_free(port)
    assert harness.http_status(f"http://127.0.0.1:{port}/", timeout=1) is None


def test_serve_reports_a_server_that_dies_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('bad flag --prot'); sys.exit(3)"]
    with (
        pytest.raises(ServerError, match=r"exited with code 3(.|\n)*bad flag --prot"),
        serve(
            command,
            cwd=tmp_path,
            env=dict(os.environ),
            port=free_port(),
            ready_path="/",
            log_path=tmp_path / "log",
            timeout=30,
        ),
    ):
        pass


def test_serve_gives_up_after_its_timeout(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    with (
        pytest.raises(ServerError, match="did not answer 200 within"),
        serve(
            command,
            cwd=tmp_path,
            env=dict(os.environ),
            port=free_port(),
            ready_path="/",
            log_path=tmp_path / "log",
            timeout=1,
        ),
    ):
        pass
    assert time.monotonic() - start < 15


def test_visible_text_skips_scripts_and_styles() -> None:
    dom = (
        "<html><head><style>.a{color:red}</style><script>var x = 'hidden';</script></head>"
        "<body><h1>Runs</h1><p>erm &amp; box</p><noscript>Enable JS</noscript></body></html>"
    )
    assert visible_text(dom) == "Runs erm & box"


def test_texts_of_class_reads_svg_labels_and_nested_text() -> None:
    dom = (
        '<ul><li class="pipeline-layer-name" data-id="layer-label--raw">raw</li>'
        '<li class="pipeline-layer-name x">primary</li></ul>'
        '<svg><g class="pipeline-node"><path d="M0 0"></path>'
        '<text class="pipeline-node__text">build_manifest</text></g>'
        '<g class="pipeline-node"><rect/><text class="pipeline-node__text">erm</text></g></svg>'
        '<div class="row"><span>test_auroc</span><input type="checkbox"><b>0.81</b></div>'
    )
    assert texts_of_class(dom, "pipeline-layer-name") == ["raw", "primary"]
    assert texts_of_class(dom, "pipeline-node__text") == ["build_manifest", "erm"]
    assert texts_of_class(dom, "row") == ["test_auroc 0.81"]
    assert texts_of_class(dom, "pipeline-node") == ["build_manifest", "erm"]


def test_missing_chromium_skips_locally_but_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "find_chromium", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        harness.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        harness.require_chromium()


# A stand-in for Chromium: counts its runs in a file and only from run ``ok_from`` on does
# its job (prints a DOM for --dump-dom, writes a PNG for --screenshot=PATH); earlier runs
# exit 0 and do nothing, the failure headless Chromium has shown on CI.
FAKE_CHROMIUM = """#!{python}
import sys
from pathlib import Path
counter = Path({counter!r})
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if runs < {ok_from}:
    sys.exit(0)
for arg in sys.argv[1:]:
    if arg == "--dump-dom":
        print("<html><body>rendered</body></html>")
    if arg.startswith("--screenshot="):
        Path(arg.split("=", 1)[1]).write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(64))
"""


def _fake_chromium(tmp_path: Path, ok_from: int) -> tuple[str, Path]:
    """An executable fake Chromium that succeeds from its ``ok_from``-th run; its counter."""
    counter = tmp_path / "runs.txt"
    script = tmp_path / "fake-chromium"
    script.write_text(
        FAKE_CHROMIUM.format(python=sys.executable, counter=str(counter), ok_from=ok_from)
    )
    script.chmod(0o755)
    return str(script), counter


def test_screenshot_retries_a_run_that_wrote_nothing(tmp_path: Path) -> None:
    binary, counter = _fake_chromium(tmp_path, ok_from=2)
    out = tmp_path / "artifacts" / "page.png"
    out.parent.mkdir()
    out.write_bytes(b"stale")
    assert (
        harness.screenshot(binary, "http://127.0.0.1:1/", out, tmp_path / "profile", timeout=30)
        == out
    )
    assert counter.read_text() == "2"
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in out.parent.iterdir()) == ["page.png"]  # no partial file left


def test_screenshot_fails_after_its_attempts_and_keeps_the_old_file(tmp_path: Path) -> None:
    binary, counter = _fake_chromium(tmp_path, ok_from=99)
    out = tmp_path / "page.png"
    out.write_bytes(b"previous screenshot")
    with pytest.raises(
        AssertionError, match=r"wrote no PNG(.|\n)*attempt 2: exit 0, file present: False"
    ):
        harness.screenshot(
            binary,
            "http://127.0.0.1:1/",
            out,
            tmp_path / "profile",
            timeout=30,
            attempts=2,
            settle_s=0.5,
        )
    assert counter.read_text() == "2"
    assert out.read_bytes() == b"previous screenshot"


def test_dump_dom_retries_an_empty_answer(tmp_path: Path) -> None:
    binary, counter = _fake_chromium(tmp_path, ok_from=2)
    dom = harness.dump_dom(binary, "http://127.0.0.1:1/", tmp_path / "profile", timeout=30)
    assert visible_text(dom) == "rendered"
    assert counter.read_text() == "2"
    (tmp_path / "never").mkdir()
    never, _ = _fake_chromium(tmp_path / "never", ok_from=99)
    with pytest.raises(AssertionError, match="attempt 1: exit 0, 0 chars on stdout"):
        harness.dump_dom(never, "http://127.0.0.1:1/", tmp_path / "p2", attempts=1)


def test_screenshots_reach_docs_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = tmp_path / "shot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    monkeypatch.delenv(harness.SCREENSHOTS_ENV, raising=False)
    assert harness.publish_screenshot(png, repo=tmp_path) is None
    assert not (tmp_path / "docs").exists()
    monkeypatch.setenv(harness.SCREENSHOTS_ENV, "1")
    target = harness.publish_screenshot(png, repo=tmp_path)
    assert target == tmp_path / "docs" / "screenshots" / "shot.png"
    assert target.read_bytes() == png.read_bytes()
