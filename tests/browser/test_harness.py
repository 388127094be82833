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
    with serve(command, cwd=tmp_path, env=dict(os.environ), port=port, ready_path="/", log_path=tmp_path / "log", timeout=30) as server:
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
    with pytest.raises(ServerError, match=r"exited with code 3(.|\n)*bad flag --prot"), serve(
        command, cwd=tmp_path, env=dict(os.environ), port=free_port(), ready_path="/", log_path=tmp_path / "log", timeout=30
    ):
        pass


def test_serve_gives_up_after_its_timeout(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    start = time.monotonic()
    with pytest.raises(ServerError, match="did not answer 200 within"), serve(
        command, cwd=tmp_path, env=dict(os.environ), port=free_port(), ready_path="/", log_path=tmp_path / "log", timeout=1
    ):
        pass
    assert time.monotonic() - start < 15


def test_visible_text_skips_scripts_and_styles() -> None:
    dom = "<html><head><style>.a{color:red}</style><script>var x = 'hidden';</script></head><body><h1>Runs</h1><p>erm &amp; box</p><noscript>Enable JS</noscript></body></html>"
    assert visible_text(dom) == "Runs erm & box"


def test_texts_of_class_reads_svg_labels_and_nested_text() -> None:
    dom = (
        '<ul><li class="pipeline-layer-name" data-id="layer-label--raw">raw</li><li class="pipeline-layer-name x">primary</li></ul>'
        '<svg><g class="pipeline-node"><path d="M0 0"></path><text class="pipeline-node__text">build_manifest</text></g>'
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
