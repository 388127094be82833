"""Real servers on loopback and headless Chromium, for the browser tests.

Servers (``kedro viz run``, ``mlflow ui``) start in their own process group and are
stopped by signalling the whole group: both spawn child processes (uvicorn workers,
multiprocessing helpers) that keep the port open if only the parent is killed.

Chromium is driven through its command line (``--dump-dom`` for the rendered DOM,
``--screenshot`` for a PNG), or, where a page settles on wall-clock time that virtual time
does not wait for (work in a web worker), through the DevTools protocol over a pipe
(``settled_page``); no browser-automation package is needed. Every call gets a fresh
``--user-data-dir``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.conftest import DATA_LAYERS

CHROMIUM_CANDIDATES: tuple[str, ...] = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WINDOW_SIZE = "1600,1000"
REPO = Path(__file__).resolve().parents[2]


class ServerError(RuntimeError):
    """A server did not come up (or did not go away) in time; the message holds its log."""


@dataclass(frozen=True)
class Server:
    """A server process started by :func:`serve`."""

    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log_path: Path


def free_port(host: str = "127.0.0.1", highest: int = 49151, attempts: int = 200) -> int:
    """A TCP port on ``host`` that nothing listens on right now, at most ``highest``.

    The operating system picks the port; kedro-viz refuses ports above 49151 (the IANA
    dynamic range), so picks above ``highest`` are discarded.

    Args:
        host: Interface to bind.
        highest: Largest acceptable port number.
        attempts: Upper bound on the number of picks.

    Returns:
        The port number.

    Raises:
        ServerError: No acceptable port after ``attempts`` picks.
    """
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port <= highest:
            return port
    raise ServerError(f"no free port <= {highest} on {host} after {attempts} attempts")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    ``SO_REUSEADDR`` (which uvicorn and ``http.server`` set too) ignores connections left in
    TIME_WAIT by the browser, so only a process still listening makes the port busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET on ``url``, or ``None`` when nothing answers.

    Args:
        url: Address to fetch.
        timeout: Seconds to wait for the answer.

    Returns:
        The status code (also for 4xx/5xx answers), or ``None`` on a connection error.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_for_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float, interval: float = 0.5
) -> float:
    """Poll ``url`` until it answers 200, the process exits, or ``timeout`` passes.

    Args:
        url: Address to poll.
        proc: The server process; polling stops early if it exits.
        timeout: Upper bound in seconds.
        interval: Pause between attempts in seconds.

    Returns:
        Seconds it took until the server answered.

    Raises:
        ServerError: The process exited, or the server did not answer within ``timeout``.
    """
    start = time.monotonic()
    attempts = max(1, int(timeout / interval))
    for _ in range(attempts):
        if http_status(url, timeout=min(2.0, timeout)) == 200:
            return time.monotonic() - start
        if proc.poll() is not None:
            raise ServerError(f"server exited with code {proc.returncode} before answering {url}")
        if time.monotonic() - start > timeout:
            break
        time.sleep(interval)
    raise ServerError(f"{url} did not answer 200 within {timeout:.0f} s")


def stop_process_group(
    proc: subprocess.Popen[bytes], port: int | None = None, grace: float = 10.0
) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children.

    Sends SIGTERM to the whole process group, waits (at most ``grace`` seconds) until the
    leader has exited and ``port`` can be bound again, then sends SIGKILL to the group to
    sweep up any child that ignored SIGTERM.

    Args:
        proc: The group leader.
        port: The port the server listened on, checked to be free afterwards.
        grace: Seconds between SIGTERM and SIGKILL.

    Raises:
        ServerError: The port is still taken after SIGKILL.
    """
    pgid = proc.pid  # a session leader's process-group id is its pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not (
        proc.poll() is not None and (port is None or port_is_free(port))
    ):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while port is not None and not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if port is not None and not port_is_free(port):
        raise ServerError(f"port {port} still in use after killing process group {pgid}")


@contextlib.contextmanager
def serve(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    port: int,
    ready_path: str,
    log_path: Path,
    timeout: float = 90.0,
) -> Iterator[Server]:
    """Run a server in its own process group for the duration of a ``with`` block.

    Args:
        command: Command line of the server (already bound to ``127.0.0.1:port``).
        cwd: Working directory.
        env: Environment of the server process.
        port: The port in ``command``.
        ready_path: Path (e.g. ``/`` or ``/health``) that answers 200 once it is ready.
        log_path: File receiving the server's stdout and stderr.
        timeout: Seconds to wait for the server to come up.

    Yields:
        The running :class:`Server`.

    Raises:
        ServerError: The server did not come up; the message ends with its log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_http(url + ready_path, proc, timeout=timeout)
        except ServerError as exc:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise ServerError(f"{exc}\n--- {log_path} ---\n{tail}") from None
        yield Server(proc=proc, port=port, url=url, log_path=log_path)
    finally:
        stop_process_group(proc, port)


def find_chromium() -> str | None:
    """Path of the Chromium binary (Debian's ``chromium`` package), or ``None``."""
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def require_chromium() -> str:
    """Chromium's path; skip the test without it, except in CI where it must exist.

    ``make test`` installs Chromium (``scripts/install_chromium.sh``), so on CI (the ``CI``
    environment variable is set) a missing browser is a failure, not a skip.
    """
    path = find_chromium()
    if path is not None:
        return path
    message = (
        "chromium not found (install Debian's `chromium` package: bash scripts/install_chromium.sh)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def _chromium(
    binary: str, args: Sequence[str], profile: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a fresh profile folder."""
    profile.mkdir(parents=True, exist_ok=False)
    command = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW_SIZE}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _wait_for_file(path: Path, wait_s: float) -> bool:
    """True once ``path`` is a non-empty file, polling for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        if path.is_file() and path.stat().st_size > 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def dump_dom(
    binary: str,
    url: str,
    profile: Path,
    budget_ms: int = 15000,
    timeout: float = 60.0,
    attempts: int = 2,
) -> str:
    """The DOM of ``url`` after its JavaScript ran for ``budget_ms`` of virtual time.

    Headless Chromium occasionally exits 0 without output; such a run is repeated (with
    a fresh profile) up to ``attempts`` times in all before the call fails.

    Args:
        binary: Chromium executable.
        url: Page to load (hash routes such as ``#/experiments/1`` are fine).
        profile: A folder that does not exist yet, used as ``--user-data-dir`` (later
            attempts use ``<profile>-retry<k>``).
        budget_ms: Virtual time the page gets to render (network waits advance it).
        timeout: Wall-clock bound in seconds per attempt.
        attempts: Chromium runs allowed (at least 1).

    Returns:
        The serialised DOM (HTML).

    Raises:
        AssertionError: Every attempt failed or printed nothing.
    """
    failures: list[str] = []
    for attempt in range(max(1, attempts)):
        run_profile = (
            profile if attempt == 0 else profile.with_name(f"{profile.name}-retry{attempt}")
        )
        proc = _chromium(
            binary, [f"--virtual-time-budget={budget_ms}", "--dump-dom", url], run_profile, timeout
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout
        failures.append(
            f"attempt {attempt + 1}: exit {proc.returncode}, "
            f"{len(proc.stdout)} chars on stdout\n{proc.stderr[-1500:]}"
        )
    raise AssertionError(f"chromium --dump-dom {url} failed:\n" + "\n".join(failures))


def screenshot(
    binary: str,
    url: str,
    out_png: Path,
    profile: Path,
    budget_ms: int = 15000,
    timeout: float = 60.0,
    attempts: int = 2,
    settle_s: float = 5.0,
) -> Path:
    """Save a ``WINDOW_SIZE`` PNG screenshot of ``url`` after ``budget_ms`` of rendering.

    Chromium writes into a scratch file next to the profile; the PNG is checked, then
    copied beside ``out_png`` and renamed onto it, so ``out_png`` is never half-written.
    Headless Chromium has been seen to exit 0 and report "N bytes written to file" while
    the file is missing a moment later (it happened once on CI); the file is polled for a
    few seconds and the run repeated with a fresh profile up to ``attempts`` times in all.

    Args:
        binary: Chromium executable.
        url: Page to load.
        out_png: Where to write the PNG (parent folders are created).
        profile: A folder that does not exist yet, used as ``--user-data-dir`` (later
            attempts use ``<profile>-retry<k>``).
        budget_ms: Virtual time the page gets to render.
        timeout: Wall-clock bound in seconds per attempt.
        attempts: Chromium runs allowed (at least 1).
        settle_s: How long to wait for the file after Chromium exited 0.

    Returns:
        ``out_png``.

    Raises:
        AssertionError: No attempt produced a PNG.
    """
    out_png.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(max(1, attempts)):
        run_profile = (
            profile if attempt == 0 else profile.with_name(f"{profile.name}-retry{attempt}")
        )
        scratch = run_profile.with_name(f"{run_profile.name}.png")
        scratch.unlink(missing_ok=True)
        proc = _chromium(
            binary,
            [f"--virtual-time-budget={budget_ms}", f"--screenshot={scratch}", url],
            run_profile,
            timeout,
        )
        if proc.returncode == 0 and _wait_for_file(scratch, wait_s=settle_s):
            assert scratch.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", (
                f"{scratch} (screenshot of {url}) is not a PNG"
            )
            partial = out_png.with_name(f".{out_png.name}.partial")
            shutil.copyfile(scratch, partial)
            os.replace(partial, out_png)
            return out_png
        failures.append(
            f"attempt {attempt + 1}: exit {proc.returncode}, "
            f"file present: {scratch.is_file()}\n{proc.stderr[-1500:]}"
        )
    raise AssertionError(f"chromium --screenshot {url} wrote no PNG:\n" + "\n".join(failures))


class DevToolsError(AssertionError):
    """A DevTools protocol command failed (its ``code`` and ``message`` in the text)."""


#: Errors of an evaluation that met a navigation (the page replaced its document): the
#: page is read again at the next poll.
_NAVIGATING = ("navigated or closed", "Execution context was destroyed", "Cannot find context")


class _DevToolsPipe:
    """Chromium with ``--remote-debugging-pipe``: DevTools protocol commands go to its file
    descriptor 3, replies come from 4, each a JSON text ended by a NUL byte."""

    def __init__(self, binary: str, profile: Path, url: str = "about:blank") -> None:
        profile.mkdir(parents=True, exist_ok=False)
        to_chromium, commands = os.pipe()
        replies, from_chromium = os.pipe()
        # above 4, so that placing them on 3 and 4 in the child cannot overwrite one another
        child_in = fcntl.fcntl(to_chromium, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_chromium, fcntl.F_DUPFD, 10)
        os.close(to_chromium)
        os.close(from_chromium)

        def on_3_and_4() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW_SIZE}",
            "--remote-debugging-pipe",
            url,
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=on_3_and_4,  # only dup2 in the child: no locks taken
            pass_fds=(3, 4, child_in, child_out),
        )
        os.close(child_in)
        os.close(child_out)
        self._out = os.fdopen(commands, "wb", buffering=0)
        self._in = os.fdopen(replies, "rb", buffering=0)
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events in between are skipped)."""
        self._id += 1
        message: dict = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._out.write(json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = self._in.read(1 << 16)
                if not chunk:
                    raise AssertionError(f"chromium closed the DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise DevToolsError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str, session: str) -> object:
        """The value of a JavaScript expression in the page."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> str:
        """Close the browser; its standard error output (the tail)."""
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self._out.close()
        self._in.close()
        return err.decode(errors="replace")[-1500:]


def settled_page(
    binary: str,
    url: str,
    profile: Path,
    ready: str,
    *,
    out_png: Path | None = None,
    timeout: float = 180.0,
    steady_s: float = 2.0,
) -> str:
    """The DOM of ``url`` once the JavaScript expression ``ready`` is true and the page
    has not changed for ``steady_s`` seconds of wall-clock time; a screenshot of that same
    moment written to ``out_png`` when given (never half-written).

    Virtual time (``dump_dom``) stops waiting when the page's own thread is idle, so a
    layout computed in a web worker may not be done when the DOM is read, more often the
    busier the machine; this polls the live page instead, up to ``timeout`` seconds.

    Raises:
        AssertionError: ``ready`` did not hold steadily within ``timeout`` (the message has
            what the page showed last).
    """
    browser = _DevToolsPipe(binary, profile)
    try:
        pages = [t for t in browser.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        assert pages, "headless chromium opened no page"
        session = browser.call(
            "Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True}
        )["sessionId"]
        # the page gets all of WINDOW_SIZE, as with --screenshot (the window's frame aside)
        width, height = (int(v) for v in WINDOW_SIZE.split(","))
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        browser.call("Page.navigate", {"url": url}, session)
        deadline = time.monotonic() + timeout
        dom, steady_since = "", None
        # while the page loads there may be no document element yet, or ``ready`` throws
        probe = (
            "(() => { const html = document.documentElement ?"
            " document.documentElement.outerHTML : '';"
            f" try {{ return [Boolean({ready}), html]; }}"
            " catch (e) { return [false, html]; } })()"
        )
        while time.monotonic() < deadline:
            try:
                is_ready, now_dom = browser.evaluate(probe, session)  # type: ignore[misc]
            except DevToolsError as err:
                if not any(text in str(err) for text in _NAVIGATING):
                    raise
                is_ready, now_dom = False, ""
            if is_ready and now_dom == dom:
                steady_since = steady_since or time.monotonic()
                if time.monotonic() - steady_since >= steady_s:
                    break
            else:
                steady_since = None
            dom = now_dom
            time.sleep(0.5)
        else:
            raise AssertionError(
                f"{url} was not steadily ready ({ready}) within {timeout:g} s; last DOM "
                f"(start): {dom[:1500]}"
            )
        if out_png is not None:
            png = base64.b64decode(browser.call("Page.captureScreenshot", {}, session)["data"])
            assert png[:8] == b"\x89PNG\r\n\x1a\n", f"screenshot of {url} is not a PNG"
            out_png.parent.mkdir(parents=True, exist_ok=True)
            partial = out_png.with_name(f".{out_png.name}.partial")
            partial.write_bytes(png)
            os.replace(partial, out_png)
        return dom
    finally:
        browser.close()


class _TextExtractor(HTMLParser):
    """Collects text nodes, skipping ``<script>``, ``<style>`` and ``<noscript>``."""

    _SKIP = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping and data.strip():
            self.parts.append(data.strip())


def visible_text(dom: str) -> str:
    """The text a person can read in ``dom``: text nodes joined by single spaces.

    Args:
        dom: HTML, e.g. from :func:`dump_dom`.

    Returns:
        Text content without scripts, styles or markup.
    """
    parser = _TextExtractor()
    parser.feed(dom)
    parser.close()
    return " ".join(parser.parts)


def artifacts_dir(repo: Path) -> Path:
    """``test-artifacts/browser/`` in the repository (gitignored), created if needed."""
    out = repo / "test-artifacts" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


SCREENSHOTS_ENV = "CXR_UPDATE_SCREENSHOTS"


def publish_screenshot(png: Path, repo: Path = REPO) -> Path | None:
    """Copy ``png`` to the README's ``docs/screenshots/`` when ``CXR_UPDATE_SCREENSHOTS=1``.

    A plain test run leaves the tracked screenshots alone (its PNGs stay under
    ``test-artifacts/browser/``); ``make screenshots`` sets the variable.

    Returns:
        The published path, or None when the variable is not set.
    """
    if os.environ.get(SCREENSHOTS_ENV) != "1":
        return None
    target = repo / "docs" / "screenshots" / png.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, target)
    return target


class _ClassTextExtractor(HTMLParser):
    """Collects the text inside every element carrying a given CSS class."""

    _VOID = frozenset(
        {
            "area",
            "base",
            "br",
            "col",
            "embed",
            "hr",
            "img",
            "input",
            "link",
            "meta",
            "source",
            "track",
            "wbr",
        }
    )

    def __init__(self, css_class: str) -> None:
        super().__init__(convert_charrefs=True)
        self.css_class = css_class
        self.found: list[str] = []
        self._open: list[tuple[bool, list[str]]] = []  # (element has the class, its text parts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        self._open.append((self.css_class in classes, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        return

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID or not self._open:
            return
        matched, parts = self._open.pop()
        text = " ".join(parts)
        if matched:
            self.found.append(text)
        if self._open and text:
            self._open[-1][1].append(text)

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self._open[-1][1].append(data.strip())


def texts_of_class(dom: str, css_class: str) -> list[str]:
    """Text of each element whose ``class`` attribute contains ``css_class``, in page order
    of their closing tags.

    Args:
        dom: HTML, e.g. from :func:`dump_dom`.
        css_class: One CSS class name (e.g. kedro-viz's ``pipeline-node__text``).

    Returns:
        One string per matching element (its descendants' text joined by spaces).
    """
    parser = _ClassTextExtractor(css_class)
    parser.feed(dom)
    parser.close()
    return parser.found


def make_project_copy(root: Path) -> Path:
    """A throwaway Kedro project under ``root`` for module-scoped servers.

    Same layout as the ``kedro_project`` fixture of ``tests/conftest.py`` (which is
    function-scoped): configuration without ``conf/local``, empty data layers, plus the
    empty ``src`` folder (see ``viz_project``).
    """
    project = root / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copy(REPO / ".telemetry", project / ".telemetry")
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()
    for layer in DATA_LAYERS:
        (project / "data" / layer).mkdir(parents=True)
    return project
