"""The study report in headless Chromium, opened from disk with the network off.

The page is built from small synthetic inputs (``tests/report/synthetic.py``), not from a
Kedro run. Chromium runs with every host resolved to nothing and a dead proxy for every
URL, loopback included, so anything the page tried to fetch would fail; a control page
that loads an image from a loopback server shows that it does fail under those flags (and
loads without them).
For the checks, a copy of the page gets a small inline script that, once the page has
loaded, writes what the browser rendered (section ids, each image's ``naturalWidth``) into
the DOM that ``--dump-dom`` prints. The screenshot (of the page itself, no probe) is
written to ``test-artifacts/browser/report.png``, and to ``docs/screenshots/report.png`` by
``make screenshots``; ``report_comparison.png`` is the page scrolled to its comparison
section on (the comparison and sweep tables).
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from tests.browser.harness import (
    CHROMIUM_FLAGS,
    REPO,
    artifacts_dir,
    free_port,
    publish_screenshot,
)
from tests.report import synthetic

from cxr_spurious.report.study import SECTIONS, build_study_report

pytestmark = [pytest.mark.browser]

DEAD_PORT_HOST = "127.0.0.1"
SCREENSHOT_SIZE = "1280,1600"
PROBE = """<script>
window.addEventListener("load", () => {
  const out = {
    sections: [...document.querySelectorAll("section")].map((s) => s.id),
    tops: Object.fromEntries([...document.querySelectorAll("section")].map(
      (s) => [s.id, Math.round(s.getBoundingClientRect().top + window.scrollY)])),
    imgs: [...document.images].map((i) => ({alt: i.alt, complete: i.complete,
                                            width: i.naturalWidth})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _offline_flags(dead_port: int) -> list[str]:
    """Chromium flags that leave a page no network: no name resolves, every URL is proxied
    to a closed port (``<-loopback>`` removes the implicit bypass for localhost)."""
    return [
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--proxy-server=http://{DEAD_PORT_HOST}:{dead_port}",
        "--proxy-bypass-list=<-loopback>",
    ]


def _run(chromium: str, args: list[str], profile: Path, size: str = "1280,900") -> str:
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _probe(chromium: str, page: Path, profile: Path, dead_port: int | None) -> dict:
    """What Chromium rendered of ``page``; offline unless ``dead_port`` is None."""
    probed = page.with_name(f"probe-{page.name}")
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    offline = [] if dead_port is None else _offline_flags(dead_port)
    dom = _run(
        chromium, [*offline, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], profile
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; DOM tail: {dom[-1500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture
def loopback_png(tmp_path: Path) -> Iterator[str]:
    """URL of a PNG served on loopback (reachable without the offline flags)."""
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "dot.png").write_bytes(synthetic.png("served"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/dot.png"
    finally:
        server.shutdown()
        server.server_close()


def test_report_renders_offline_every_section_and_image(chromium, tmp_path, loopback_png):
    dead_port = free_port()
    page = tmp_path / "report.html"
    page.write_text(build_study_report(synthetic.inputs()), encoding="utf-8")

    # control: under the same flags an image from a (running) loopback server does not load
    control = tmp_path / "control.html"
    control.write_text(
        f'<html><body><img alt="net" src="{loopback_png}"></body></html>', encoding="utf-8"
    )
    online = _probe(chromium, control, tmp_path / "profile-online", None)
    assert online["imgs"][0]["width"] > 0  # the server is reachable without the flags
    seen = _probe(chromium, control, tmp_path / "profile-control", dead_port)
    assert seen["imgs"] == [{"alt": "net", "complete": True, "width": 0}]

    seen = _probe(chromium, page, tmp_path / "profile-report", dead_port)
    assert seen["sections"] == [key for key, _ in SECTIONS]
    assert len(seen["imgs"]) == 3 + len(synthetic.MODELS)
    broken = [img["alt"] for img in seen["imgs"] if not img["width"] > 0]
    assert not broken, f"images not decoded: {broken}"

    # the top of the page; and from the comparison section on (the comparison and sweep
    # tables): a window tall enough to hold it, cut at the section's top as the probe saw it
    # (same width, so the same layout)
    width, height = (int(v) for v in SCREENSHOT_SIZE.split(","))
    top = seen["tops"]["comparison"]
    assert top > height  # below the first screenshot
    for name, window, box in (
        ("report.png", (width, height), None),
        ("report_comparison.png", (width, top + height), (0, top, width, top + height)),
    ):
        shot = tmp_path / name
        _run(
            chromium,
            [
                *_offline_flags(dead_port),
                "--virtual-time-budget=3000",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            tmp_path / f"profile-{name}",
            size=f"{window[0]},{window[1]}",
        )
        with Image.open(shot) as image:
            assert image.size == window
            view = image.crop(box) if box else image.copy()
        assert view.size == (width, height)
        assert len(view.convert("L").getcolors(maxcolors=1 << 16) or ()) > 16, f"blank {name}"
        view.save(artifacts_dir(REPO) / name)
        publish_screenshot(artifacts_dir(REPO) / name)
